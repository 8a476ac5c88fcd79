//! `cargo xtask bench exec`: what enforcerd costs process creation.
//!
//! A shell loop runs N × /bin/true (fork + exec + exit + wait) and times itself:
//! - baseline: no enforcerd;
//! - host: enforcerd running, the loop not inside a tracked session (every process on the host
//!   pays for the tracepoints; this is the target);
//! - session: the loop inside an SSH session under enforcer (every exec is logged and audited:
//!   the worst case).
//!
//! Rounds alternate baseline and host (the daemon is started and stopped between them); both
//! run with a minimal environment, as sshd gives a session. The spread between baseline rounds
//! is the noise floor. CPU time (user + system of the loop and its children, which includes the
//! BPF programs run on their behalf) is less noisy than wall time on a shared VM.

use std::{process::Command, time::Duration};

use enforcer_tests::{Pam, TestDaemon, TestSshd, TestUser, require_root, stats::median};

const N: u32 = 5_000;
const ROUNDS: usize = 6;

fn script() -> String {
    format!(
        "s=$(date +%s%N); i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done; e=$(date +%s%N); echo $((e-s))"
    )
}

fn parse_ns(out: &std::process::Output) -> Duration {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Duration::from_nanos(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("elapsed ns"),
    )
}

fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (wall, cpu) of the loop run locally.
fn local() -> (Duration, Duration) {
    let before = children_cpu();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    (parse_ns(&out), children_cpu() - before)
}

fn per_exec(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6 / N as f64)
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let user = TestUser::create("bx");
    let (mut base, mut host, mut session) = (Vec::new(), Vec::new(), Vec::new());
    let mut dropped = 0;
    for round in 0..ROUNDS {
        // Alternate which variant goes first.
        let first_base = round % 2 == 0;
        if first_base {
            base.push(local());
        }
        let d = TestDaemon::start("");
        host.push(local());
        let sshd = TestSshd::start(
            Pam::Enforcer(format!("socket={}", d.pam_socket.display())),
            &[&user],
            "",
        );
        session.push(parse_ns(&sshd.ssh(&user, &script()).output().unwrap()));
        dropped += d.status().dropped.values().sum::<u64>();
        drop(sshd);
        drop(d);
        if !first_base {
            base.push(local());
        }
    }
    let wall = |v: &[(Duration, Duration)]| median(v.iter().map(|x| x.0).collect());
    let cpu = |v: &[(Duration, Duration)]| median(v.iter().map(|x| x.1).collect());
    let (bw, bc, hw, hc, sw) = (
        wall(&base),
        cpu(&base),
        wall(&host),
        cpu(&host),
        median(session.clone()),
    );
    let spread = |v: &[(Duration, Duration)], f: fn(&(Duration, Duration)) -> Duration| {
        let xs: Vec<f64> = v.iter().map(|x| f(x).as_secs_f64()).collect();
        xs.iter().cloned().fold(f64::MIN, f64::max) / xs.iter().cloned().fold(f64::MAX, f64::min)
    };
    println!("## bench exec ({N} × fork+exec /bin/true per run, {ROUNDS} rounds, medians)");
    println!(
        "| variant | wall per exec | baseline/variant (wall) | CPU per exec | baseline/variant (CPU) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "| baseline (no enforcerd) | {} | 1.000 | {} | 1.000 |",
        per_exec(bw),
        per_exec(bc)
    );
    println!(
        "| host, enforcerd running | {} | {:.3} | {} | {:.3} |",
        per_exec(hw),
        r(bw, hw),
        per_exec(hc),
        r(bc, hc)
    );
    println!(
        "| inside a tracked SSH session (every exec audited) | {} | {:.3} | – | – |",
        per_exec(sw),
        r(bw, sw)
    );
    println!();
    println!(
        "noise floor (max/min over baseline rounds): wall {:.3}, CPU {:.3}",
        spread(&base, |x| x.0),
        spread(&base, |x| x.1)
    );
    println!("events dropped over all rounds: {dropped}");
    let ratio = r(bw, hw);
    println!(
        "host ratio baseline/enforcerd (wall): {ratio:.3}  (target ≥ 0.97) — {}",
        if ratio >= 0.97 { "MET" } else { "NOT MET" }
    );
}
