//! A hostile client of enforcerd's metrics endpoint, run by the metrics test as an
//! unprivileged user: `enf-scraper ADDR MODE COUNT SECS` keeps COUNT connections in MODE for
//! SECS seconds, then prints one JSON line of what it achieved.
//!
//! Modes: `loris` (half a request line, then nothing; reconnect when closed), `scrape`
//! (`GET /metrics` as fast as answered).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[derive(Default)]
struct Stats {
    open: AtomicU64,
    peak: AtomicU64,
    connects: AtomicU64,
    connect_errors: AtomicU64,
    closed_by_daemon: AtomicU64,
    answers: AtomicU64,
}

async fn connect(addr: &str, end: Instant, stats: &Stats) -> Option<TcpStream> {
    while Instant::now() < end {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                return Some(s);
            }
            Err(_) => {
                stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    None
}

async fn loris(addr: String, end: Instant, stats: Arc<Stats>) {
    while let Some(mut s) = connect(&addr, end, &stats).await {
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(open, Ordering::Relaxed);
        if s.write_all(b"GET /met").await.is_ok() {
            let mut buf = [0u8; 512];
            let left = end.saturating_duration_since(Instant::now());
            if let Ok(Ok(_)) = tokio::time::timeout(left, s.read(&mut buf)).await {
                stats.closed_by_daemon.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn scrape(addr: String, end: Instant, stats: Arc<Stats>) {
    while let Some(mut s) = connect(&addr, end, &stats).await {
        let mut body = Vec::new();
        let ok = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.is_ok()
            && s.read_to_end(&mut body).await.is_ok();
        // "HTTP/1.0 200 OK" (hyper answers in the request's version).
        if ok && body.get(8..13) == Some(b" 200 ") {
            stats.answers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, mode, count, secs] = &args[..] else {
        eprintln!("usage: enf-scraper ADDR loris|scrape COUNT SECS");
        std::process::exit(2);
    };
    let count: usize = count.parse().unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let stats = Arc::new(Stats::default());
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (addr, stats) = (addr.clone(), stats.clone());
            match mode.as_str() {
                "loris" => tokio::spawn(loris(addr, end, stats)),
                "scrape" => tokio::spawn(scrape(addr, end, stats)),
                other => panic!("unknown mode {other}"),
            }
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "peak_open": g(&stats.peak),
            "connects": g(&stats.connects),
            "connect_errors": g(&stats.connect_errors),
            "closed_by_daemon": g(&stats.closed_by_daemon),
            "answers": g(&stats.answers),
        })
    );
}
