//! `cargo xtask bench lock`: how long from `enforcerctl lock user` to no process of the user
//! left on the node, with three sessions over two SSH connections (a pty shell, and a second
//! connection with two exec channels), p50/p99 over rounds.
//!
//! Baselines measured in the same run, same setup: the kernel's floor (the bench SIGKILLs the
//! user's processes itself and waits until none is left) and `enforcerctl status` (the round
//! trip any enforcerctl call costs). Target: lock p99 under 1 s.

use std::time::{Duration, Instant};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, procs, require_root,
    ssh::{PtySsh, runtime, russh_exec_all, russh_login, wait_until},
    stats::{ms, summarize},
};

const ROUNDS: usize = 15;

/// Logs the user in: a pty shell, and a second connection with two `sleep` channels; returns
/// once the daemon sees three sessions.
fn three_sessions(
    d: &TestDaemon,
    sshd: &TestSshd,
    user: &TestUser,
    rt: &tokio::runtime::Runtime,
) -> PtySsh {
    let pty = PtySsh::open(sshd, user);
    let handle = rt
        .block_on(russh_login(sshd.port, &user.name, &user.key))
        .unwrap();
    rt.spawn(
        async move { russh_exec_all(&handle, &["sleep 600".into(), "sleep 600".into()]).await },
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            d.sessions()
                .iter()
                .filter(|c| c["user"] == user.name.as_str())
                .map(|c| c["sessions"].as_array().unwrap().len())
                .sum::<usize>()
                == 3
        }),
        "sessions did not start"
    );
    pty
}

/// Time until no process of `uid` is left, polled every 200 µs.
fn until_none(uid: u32, start: Instant) -> Duration {
    let deadline = start + Duration::from_secs(10);
    while !procs::uid_processes(uid).is_empty() {
        assert!(Instant::now() < deadline, "processes of uid {uid} survive");
        std::thread::sleep(Duration::from_micros(200));
    }
    start.elapsed()
}

/// The floor: SIGKILL every process of `uid` from here, pass after pass, until none is left.
fn kill_all(uid: u32, start: Instant) -> Duration {
    loop {
        let victims = procs::uid_processes(uid);
        if victims.is_empty() {
            return start.elapsed();
        }
        for p in victims {
            // SAFETY: plain syscall on a test user's process.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let user = TestUser::create("bl");
    let sshd = TestSshd::start(d.pam(), &[&user], "");
    let rt = runtime();
    let (mut lock, mut floor, mut status) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let _pty = three_sessions(&d, &sshd, &user, &rt);
        let start = Instant::now();
        floor.push(kill_all(user.uid, start));
        // Let the daemon release both connections before the next login.
        assert!(wait_until(Duration::from_secs(10), || d
            .sessions()
            .is_empty()));

        let _pty = three_sessions(&d, &sshd, &user, &rt);
        let start = Instant::now();
        d.ctl_ok(&["status"]);
        status.push(start.elapsed());
        let start = Instant::now();
        d.ctl_ok(&["lock", "user", &user.name, "--reason", "bench"]);
        lock.push(until_none(user.uid, start));
        assert!(wait_until(Duration::from_secs(10), || d
            .sessions()
            .is_empty()));
        d.ctl_ok(&["unlock", "user", &user.name]);
    }
    let (l, f, s) = (summarize(lock), summarize(floor), summarize(status));
    println!("## bench lock (3 sessions over 2 connections, {ROUNDS} rounds)");
    println!("| from … to no process of the user left | p50 | p99 |");
    println!("| --- | --- | --- |");
    println!(
        "| `enforcerctl lock user` | {} | {} |",
        ms(l.p50),
        ms(l.p99)
    );
    println!(
        "| SIGKILL of every process by the bench (kernel floor) | {} | {} |",
        ms(f.p50),
        ms(f.p99)
    );
    println!(
        "| `enforcerctl status` round trip (no kill) | {} | {} |",
        ms(s.p50),
        ms(s.p99)
    );
    println!();
    println!(
        "lock / floor: p50 {:.1}×, p99 {:.1}×; lock p99 {} the 1 s target",
        l.p50.as_secs_f64() / f.p50.as_secs_f64(),
        l.p99.as_secs_f64() / f.p99.as_secs_f64(),
        if l.p99 < Duration::from_secs(1) {
            "meets"
        } else {
            "MISSES"
        }
    );
}
