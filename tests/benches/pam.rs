//! `cargo xtask bench pam`: what pam_enforcer costs a login.
//!
//! 1. Decision round trip over the control socket, as the module does it (fresh connection +
//!    one request): PAM account (admit) and close, against the cheapest request (`sessions`)
//!    on the same daemon as baseline.
//! 2. `ssh host true` wall time through an sshd with the module vs one without. A second sshd
//!    without the module (A/A control) shows how much of the difference is noise.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_proto::{Admission, Client, PamAccount, PamSession, Reply, Request};
use enforcer_tests::{
    Pam, TestDaemon, TestSshd, TestUser, require_root,
    stats::{Summary, ms, summarize, us},
};

const WARMUP: usize = 200;
const DECISIONS: usize = 3000;
const LOGINS: usize = 100;

fn call(d: &TestDaemon, req: &Request) -> (Duration, Reply) {
    let start = Instant::now();
    let reply = Client::connect(&d.socket, Duration::from_secs(2))
        .unwrap()
        .call(req)
        .unwrap();
    (start.elapsed(), reply)
}

fn decisions(d: &TestDaemon, user: &TestUser) -> [Summary; 3] {
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
    for i in 0..WARMUP + DECISIONS {
        let (b, _) = call(d, &Request::Sessions);
        let (a, reply) = call(d, &account);
        assert!(
            matches!(reply, Reply::Admission(Admission::Admitted { .. })),
            "{reply:?}"
        );
        let (c, _) = call(d, &close);
        if i >= WARMUP {
            base.push(b);
            admit.push(a);
            release.push(c);
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    [summarize(base), summarize(admit), summarize(release)]
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_connections_per_user = 0\n");
    let user = TestUser::create("bench");
    let [base, admit, release] = decisions(&d, &user);

    let variants = [
        (
            "without module (A)",
            TestSshd::start(Pam::Without, &[&user], ""),
        ),
        (
            "without module (A', control)",
            TestSshd::start(Pam::Without, &[&user], ""),
        ),
        (
            "with module",
            TestSshd::start(
                Pam::Enforcer(format!("socket={} timeout_ms=2000", d.socket.display())),
                &[&user],
                "",
            ),
        ),
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
}
