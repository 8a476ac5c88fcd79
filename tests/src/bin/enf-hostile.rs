//! A hostile local peer of the control socket, run by tests and `bench pam` as an unprivileged
//! user: `enf-hostile SOCKET MODE COUNT SECS`. It keeps (tries to keep) COUNT connections in
//! MODE for SECS seconds, reconnecting whenever the daemon closes one, then prints one JSON
//! line of what it achieved.
//!
//! Modes: `idle` (connect, send nothing), `loris` (2 bytes of a header, then nothing),
//! `oversize` (a header announcing 16 MiB, then 1 MiB of its body, then nothing), `deny`
//! (root-only requests as fast as the daemon answers, COUNT connections), `list` (`recordings`
//! in a loop).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use enforcer_proto::{
    Request,
    frame::{MAX_FRAME, encode, read_frame_async},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

#[derive(Default)]
struct Stats {
    /// Connections open right now, and the most seen at once.
    open: AtomicU64,
    peak: AtomicU64,
    connects: AtomicU64,
    connect_errors: AtomicU64,
    /// Connections the daemon closed (or answered with an error frame and closed).
    closed_by_daemon: AtomicU64,
    requests: AtomicU64,
}

fn payload(mode: &str) -> Vec<u8> {
    match mode {
        "idle" => Vec::new(),
        "loris" => vec![0, 0],
        "oversize" => {
            // Body bytes make a buffer sized by the header resident, not just reserved.
            let mut v = MAX_FRAME.to_be_bytes().to_vec();
            v.extend(std::iter::repeat_n(b' ', 1 << 20));
            v
        }
        other => panic!("unknown mode {other}"),
    }
}

/// A new connection, retried every 100 ms; `None` once `end` has passed.
async fn connect(socket: &str, end: Instant, stats: &Stats) -> Option<UnixStream> {
    while Instant::now() < end {
        match UnixStream::connect(socket).await {
            Ok(s) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                return Some(s);
            }
            Err(_) => {
                stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

/// Holds one connection in `mode` until `end`, reconnecting when it is closed.
async fn hold(socket: String, mode: String, end: Instant, stats: Arc<Stats>) {
    let bytes = payload(&mode);
    while let Some(mut s) = connect(&socket, end, &stats).await {
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(open, Ordering::Relaxed);
        if s.write_all(&bytes).await.is_ok() {
            let mut buf = [0u8; 512];
            let left = end.saturating_duration_since(Instant::now());
            // Anything from the daemon (an error line, EOF) means it dropped us.
            if let Ok(Ok(_)) = tokio::time::timeout(left, s.read(&mut buf)).await {
                stats.closed_by_daemon.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `req` over and over until `end`, reconnecting when closed.
async fn repeat(socket: String, req: Request, end: Instant, stats: Arc<Stats>) {
    let frame = encode(&req).unwrap();
    while let Some(mut s) = connect(&socket, end, &stats).await {
        while Instant::now() < end {
            if s.write_all(&frame).await.is_err() {
                break;
            }
            match read_frame_async::<serde_json::Value>(&mut s, MAX_FRAME).await {
                Ok(Some(_)) => stats.requests.fetch_add(1, Ordering::Relaxed),
                _ => break,
            };
        }
        stats.closed_by_daemon.fetch_add(1, Ordering::Relaxed);
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, mode, count, secs] = &args[..] else {
        eprintln!("usage: enf-hostile SOCKET idle|loris|oversize|deny|list COUNT SECS");
        std::process::exit(2);
    };
    raise_fd_limit();
    let count: usize = count.parse().unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (socket, stats) = (socket.clone(), stats.clone());
        tasks.push(match mode.as_str() {
            "deny" => tokio::spawn(repeat(
                socket,
                Request::Unlock {
                    user: "root".into(),
                },
                end,
                stats,
            )),
            "list" => tokio::spawn(repeat(
                socket,
                Request::Recordings {
                    user: None,
                    since: None,
                },
                end,
                stats,
            )),
            _ => tokio::spawn(hold(socket, mode.clone(), end, stats)),
        });
    }
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
            "requests": g(&stats.requests),
        })
    );
}
