//! `cargo xtask bench idle`: the daemon's cost of keeping 2 000 idle sessions under watch.
//!
//! Each session is real to the kernel: a stand-in "monitor" process is admitted over the PAM
//! protocol like sshd's, then forks a helper whose child calls setsid() — a session exactly as
//! sshd's channels are. The same daemon is measured with no sessions first (baseline), then
//! with all of them, idle: CPU time per second and per idle sweep (the idle clocks are checked
//! every 250 ms; monitors are checked in /proc every 5 s), and resident memory.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{TestDaemon, TestUser, procs::cpu_time, require_root, ssh::wait_until};

const SESSIONS: usize = 2000;
const MEASURE: Duration = Duration::from_secs(20);

/// RSS of a process in KiB.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn measure(pid: u32) -> (Duration, u64) {
    let t0 = cpu_time(pid);
    std::thread::sleep(MEASURE);
    (cpu_time(pid) - t0, rss(pid))
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"1h\"\nwarn_before = \"0\"\n");
    let user = TestUser::create("bi");
    let pid = d.pid();
    let (base_cpu, base_rss) = measure(pid);

    let start = Instant::now();
    let mut monitors: Vec<Child> = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let mut m = Command::new("sh")
            .arg("-c")
            .arg("read go; sh -c 'setsid sleep 3600 </dev/null >/dev/null 2>&1 & wait' & wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        d.admit_stand_in(&user, m.id());
        m.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        monitors.push(m);
    }
    let ready = wait_until(Duration::from_secs(120), || {
        d.status().events["sessions_active"] >= SESSIONS as u64
    });
    assert!(
        ready,
        "only {} sessions registered",
        d.status().events["sessions_active"]
    );
    let setup = start.elapsed();
    let (cpu, rss) = measure(pid);
    let s = d.status();

    let per = |cpu: Duration, n: f64| format!("{:.2} ms", cpu.as_secs_f64() * 1e3 / n);
    let secs = MEASURE.as_secs_f64();
    println!(
        "## bench idle ({SESSIONS} idle tracked sessions, {}s measured each way)",
        MEASURE.as_secs()
    );
    println!("| | daemon CPU per second | per idle sweep (4/s) | RSS |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| no sessions (baseline) | {} | {} | {:.1} MiB |",
        per(base_cpu, secs),
        per(base_cpu, secs * 4.0),
        base_rss as f64 / 1024.0
    );
    println!(
        "| {SESSIONS} idle sessions | {} | {} | {:.1} MiB |",
        per(cpu, secs),
        per(cpu, secs * 4.0),
        rss as f64 / 1024.0
    );
    println!();
    println!(
        "CPU share: {:.2}% of one core (baseline {:.2}%); RSS ratio {:.2}; {} tracked tasks; setup {:.1}s; dropped events {}",
        cpu.as_secs_f64() / secs * 100.0,
        base_cpu.as_secs_f64() / secs * 100.0,
        rss as f64 / base_rss as f64,
        s.maps
            .iter()
            .find(|m| m.name == "ENF_TASKS")
            .and_then(|m| m.entries)
            .unwrap_or(0),
        setup.as_secs_f64(),
        s.dropped.values().sum::<u64>()
    );
    for mut m in monitors {
        enforcer_tests::procs::kill_tree(m.id());
        let _ = m.wait();
    }
}
