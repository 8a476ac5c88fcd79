//! `cargo xtask bench pam`: what pam_enforcer costs a login.
//!
//! 1. Decision round trip over the control socket, as the module does it (fresh connection +
//!    one request): PAM account (admit) and close, against the cheapest request (`sessions`)
//!    on the same daemon as baseline.
//! 2. `ssh host true` wall time through an sshd with the module vs one without. A second sshd
//!    without the module (A/A control) shows how much of the difference is noise.
//! 3. Hostile: the same decisions while an unprivileged user holds (tries to hold) 2 000 control
//!    connections, half slow-loris, half announcing oversized frames, and another lists 10 000
//!    recordings in a loop; PAM p99, daemon RSS and refused logins against the quiet run.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_proto::{Admission, Client, PamAccount, PamSession, Reply, Request};
use enforcer_tests::{
    Pam, TestDaemon, TestSshd, TestUser,
    hostile::{self, fake_recordings, rss_kib},
    require_root,
    stats::{Summary, ms, summarize, us},
};

const WARMUP: usize = 200;
const DECISIONS: usize = 3000;
const LOGINS: usize = 100;
const HOSTILE_LOGINS: usize = 20;
const RECORDINGS: u64 = 10_000;
const HOSTILE: &str = env!("CARGO_BIN_EXE_enf-hostile");

/// One request on a fresh connection; `None` when it failed or timed out (a refused login).
fn call(socket: &std::path::Path, req: &Request) -> (Duration, Option<Reply>) {
    let start = Instant::now();
    let reply = Client::connect(socket, Duration::from_secs(2)).and_then(|mut c| c.call(req));
    (start.elapsed(), reply.ok())
}

/// Baseline, PAM account and PAM close summaries, and how many account requests were not
/// admitted (refused logins).
fn decisions(d: &TestDaemon, user: &TestUser) -> ([Summary; 3], usize) {
    // A stand-in monitor process: admission needs a live pid to key the connection by.
    let mut monitor = Command::new("sleep")
        .arg("3600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = monitor.id();
    let account = Request::PamAccount(PamAccount {
        user: user.name.clone(),
        service: "sshd".into(),
        rhost: Some("127.0.0.1".into()),
        tty: Some("ssh".into()),
        pid,
        ssh_connection: Some("127.0.0.1 40000 127.0.0.1 22".into()),
        auth_info: None,
    });
    let close = Request::PamCloseSession(PamSession {
        user: user.name.clone(),
        pid,
        conn_id: None,
        auth_info: None,
    });
    let (mut base, mut admit, mut release) = (Vec::new(), Vec::new(), Vec::new());
    let mut refused = 0;
    for i in 0..WARMUP + DECISIONS {
        let (b, _) = call(&d.socket, &Request::Sessions);
        // PAM goes where the module goes: the root-only PAM socket.
        let (a, reply) = call(&d.pam_socket, &account);
        if !matches!(reply, Some(Reply::Admission(Admission::Admitted { .. }))) {
            refused += 1;
        }
        let (c, _) = call(&d.pam_socket, &close);
        if i >= WARMUP {
            base.push(b);
            admit.push(a);
            release.push(c);
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    (
        [summarize(base), summarize(admit), summarize(release)],
        refused,
    )
}

/// What the hostile run measured.
struct Hostile {
    decisions: [Summary; 3],
    refused: usize,
    rss_peak_kib: u64,
}

/// Decisions and logins while two unprivileged users attack the control socket.
fn hostile_run(d: &TestDaemon, user: &TestUser, sshd: &TestSshd, lister: &TestUser) -> Hostile {
    let attacker = TestUser::create("bha");
    let secs = 60.0;
    let peers = [
        hostile::spawn(HOSTILE, &attacker, &d.socket, "loris", 1000, secs),
        hostile::spawn(HOSTILE, &attacker, &d.socket, "oversize", 1000, secs),
        hostile::spawn(HOSTILE, lister, &d.socket, "list", 2, secs),
    ];
    std::thread::sleep(Duration::from_secs(3)); // let the attack ramp up
    let pid = d.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let (decisions, mut refused) = decisions(d, user);
    for _ in 0..HOSTILE_LOGINS {
        if !sshd.ssh(user, "true").output().unwrap().status.success() {
            refused += 1;
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss_peak_kib = sampler.join().unwrap();
    for mut peer in peers {
        // By pid: the peer itself (setpriv execs it).
        let _ = peer.kill();
        let _ = peer.wait();
    }
    Hostile {
        decisions,
        refused,
        rss_peak_kib,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let user = TestUser::create("bench");
    let lister = TestUser::create("bhl");
    // 10 000 recordings of the lister, indexed at start.
    let mut d = TestDaemon::start("[limits]\nmax_connections_per_user = 0\n");
    fake_recordings(
        &d.dir.path().join("recordings"),
        &lister.name,
        lister.uid,
        1_000_000,
        RECORDINGS,
    );
    d.restart();
    std::thread::sleep(Duration::from_secs(2)); // the start-up scan
    let ([base, admit, release], quiet_refused) = decisions(&d, &user);
    let quiet_rss_kib = rss_kib(d.pid());

    let variants = [
        (
            "without module (A)",
            TestSshd::start(Pam::Without, &[&user], ""),
        ),
        (
            "without module (A', control)",
            TestSshd::start(Pam::Without, &[&user], ""),
        ),
        ("with module", TestSshd::start(d.pam(), &[&user], "")),
    ];
    let login = |sshd: &TestSshd| {
        let start = Instant::now();
        let out = sshd.ssh(&user, "true").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for round in 0..LOGINS + 5 {
        // Rotate the order each round so drift and caching hit every variant alike.
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let t = login(&variants[i].1);
            if round >= 5 {
                times[i].push(t);
            }
        }
    }
    let logins: Vec<Summary> = times.into_iter().map(summarize).collect();
    let ratio = |a: &Summary, b: &Summary| a.p50.as_secs_f64() / b.p50.as_secs_f64();
    let module_ratio = ratio(&logins[0], &logins[2]);
    let control_ratio = ratio(&logins[0], &logins[1]);

    println!("## bench pam ({DECISIONS} decisions, {LOGINS} logins per sshd)");
    println!("| measure | n | p50 | p99 | mean | p50 / baseline p50 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, s) in [
        ("baseline: `sessions` round trip", base),
        ("PAM account (admit)", admit),
        ("PAM close", release),
    ] {
        let r = s.p50.as_secs_f64() / base.p50.as_secs_f64();
        println!(
            "| {name} | {} | {} | {} | {} | {r:.2} |",
            s.n,
            us(s.p50),
            us(s.p99),
            us(s.mean)
        );
    }
    for ((name, _), s) in variants.iter().zip(&logins) {
        let r = ratio(&logins[0], s);
        println!(
            "| `ssh host true`, {name} | {} | {} | {} | {} | A/this {r:.3} |",
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.mean)
        );
    }
    println!();
    println!("login time ratio, without / with module (p50): {module_ratio:.3}  (target ≥ 0.97)");
    println!("A/A control ratio (noise floor): {control_ratio:.3}");
    println!("PAM account p99: {}  (target < 1 ms)", us(admit.p99));
    let met = module_ratio >= 0.97 && admit.p99 < Duration::from_millis(1);
    println!("targets {}", if met { "MET" } else { "NOT MET" });

    let h = hostile_run(&d, &user, &variants[2].1, &lister);
    let [_, h_admit, h_release] = h.decisions;
    println!();
    println!(
        "## bench pam, hostile: 1000 slow-loris + 1000 oversized-header connections (one uid), \
         `recordings` over {RECORDINGS} in a loop (another uid)"
    );
    println!("| measure | quiet | hostile | hostile / quiet |");
    println!("| --- | --- | --- | --- |");
    for (name, q, x) in [
        ("PAM account", admit, h_admit),
        ("PAM close", release, h_release),
    ] {
        for (stat, a, b) in [("p50", q.p50, x.p50), ("p99", q.p99, x.p99)] {
            let r = b.as_secs_f64() / a.as_secs_f64();
            println!("| {name} {stat} | {} | {} | {r:.2} |", us(a), us(b));
        }
    }
    let growth_kib = h.rss_peak_kib.saturating_sub(quiet_rss_kib);
    println!(
        "| daemon RSS (peak under attack) | {} MiB | {} MiB | +{:.1} MiB |",
        quiet_rss_kib >> 10,
        h.rss_peak_kib >> 10,
        growth_kib as f64 / 1024.0
    );
    let logins = DECISIONS + HOSTILE_LOGINS;
    println!(
        "| refused logins | {quiet_refused} / {DECISIONS} | {} / {logins} | |",
        h.refused
    );
    let s = d.status();
    let control: Vec<String> = s
        .dropped
        .iter()
        .filter(|(k, _)| k.starts_with("drop_control_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!();
    println!("daemon closed: {}", control.join(" "));
    let h_met = h_admit.p99 < Duration::from_millis(1)
        && growth_kib < 32 << 10
        && h.refused == 0
        && quiet_refused == 0;
    println!(
        "hostile: PAM account p99 {} (target < 1 ms), RSS growth {:.1} MiB (target < 32), \
         refused {} (target 0): targets {}",
        us(h_admit.p99),
        growth_kib as f64 / 1024.0,
        h.refused,
        if h_met { "MET" } else { "NOT MET" }
    );
}
