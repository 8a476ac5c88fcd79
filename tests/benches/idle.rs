//! `cargo xtask bench idle [SESSIONS]`: the daemon's cost of keeping SESSIONS (default 10 000)
//! idle SSH sessions under watch.
//!
//! Each session is real to the kernel: a stand-in sshd monitor (`enf-stand-in`) is admitted over
//! the PAM socket exactly as pam_enforcer does it (`account`, then `open_session`), then forks
//! its per-connection child, which forks the session leader: setsid(), then exec of
//! `/bin/sleep`. The leader's stdio are pipes to that child, which writes one byte of "input"
//! into them, so each session has a channel with an idle clock in the kernel and an open
//! recording, as an sshd exec session would. The same daemon is measured with no sessions first
//! (baseline), then with all of them, idle: CPU time per second, resident memory without the
//! mapped BPF rings, and the state actor's sweeps as the daemon times them itself.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_proto::{Admission, Client, PamSession, Reply, Request, StatusReport, SweepStatus};
use enforcer_tests::{
    TestDaemon, TestUser, bin,
    daemon::account_request,
    procs::{RaisedSysctl, Resident, cpu_time, kill_tree, resident},
    require_root,
    ssh::wait_until,
    stats::{ms, summarize},
};
use nix::{sys::signal::Signal, unistd::Pid};

const DEFAULT_SESSIONS: usize = 10_000;
const MEASURE: Duration = Duration::from_secs(20);
/// Processes per session: monitor, its per-connection child, the leader.
const PROCS_PER_SESSION: usize = 3;

/// One measurement window on the daemon.
struct Sample {
    cpu: Duration,
    mem: Resident,
    /// Sweep counters at the start and end of the window.
    sweeps: (Vec<SweepStatus>, Vec<SweepStatus>),
    status: StatusReport,
}

fn measure(d: &TestDaemon) -> Sample {
    let pid = d.pid();
    let before = d.status().sweeps;
    let t0 = cpu_time(pid);
    std::thread::sleep(MEASURE);
    let cpu = cpu_time(pid) - t0;
    let mem = resident(pid);
    let status = d.status();
    Sample {
        cpu,
        mem,
        sweeps: (before, status.sweeps.clone()),
        status,
    }
}

impl Sample {
    fn cpu_per_sec(&self) -> Duration {
        self.cpu.div_f64(MEASURE.as_secs_f64())
    }

    /// A sweep over the window: "mean / max ms" in wall time, then in CPU time (mean per run in
    /// the window, skipped idle ticks included; max since the daemon started).
    fn sweep(&self, name: &str) -> String {
        let find = |v: &[SweepStatus]| v.iter().find(|s| s.name == name).cloned();
        let (Some(a), Some(b)) = (find(&self.sweeps.0), find(&self.sweeps.1)) else {
            return "-".into();
        };
        let runs = (b.runs - a.runs).max(1) as f64;
        let mean = |x: u64, y: u64| (y - x) as f64 / runs / 1e3;
        format!(
            "{:.2} / {:.2} ms (CPU {:.2} / {:.2} ms)",
            mean(a.total_us, b.total_us),
            b.max_us as f64 / 1e3,
            mean(a.total_cpu_us, b.total_cpu_us),
            b.max_cpu_us as f64 / 1e3
        )
    }

    fn map_entries(&self, name: &str) -> u64 {
        let m = self.status.maps.iter().find(|m| m.name == name);
        m.and_then(|m| m.entries).unwrap_or(0)
    }
}

fn pam_call(d: &TestDaemon, req: &Request) -> Reply {
    Client::connect(&d.pam_socket, Duration::from_secs(5))
        .and_then(|mut c| c.call(req))
        .unwrap_or_else(|e| panic!("PAM request: {e}\n{}", d.log()))
}

/// What pam_enforcer sends for one login (`account`, then `open_session`) with `pid` as the
/// monitor.
fn admit(d: &TestDaemon, user: &str, pid: u32) {
    let account = account_request(user, pid);
    let Reply::Admission(Admission::Admitted { conn_id }) = pam_call(d, &account) else {
        panic!("stand-in monitor {pid} not admitted")
    };
    let open = Request::PamOpenSession(PamSession {
        user: user.to_owned(),
        pid,
        conn_id: Some(conn_id),
        auth_info: None,
    });
    pam_call(d, &open);
}

/// The stand-in connections: killed with everything below them when dropped.
struct StandIns(std::process::Child);

impl Drop for StandIns {
    fn drop(&mut self) {
        kill_tree(self.0.id());
        let _ = self.0.wait();
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let sessions: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_SESSIONS);
    // Room for every process of the bench next to the host's own (restored when done).
    let procs = sessions * PROCS_PER_SESSION;
    let _pid_max = RaisedSysctl::at_least("kernel/pid_max", (procs + 32768) as u64);
    let _threads_max = RaisedSysctl::at_least("kernel/threads-max", (procs + 65536) as u64);
    let tracked = (procs + 4096).next_power_of_two().max(65536);
    // Declared before the daemon, so dropped after it: a daemon stopped first does not have to
    // release every connection before it may exit.
    let mut stand_ins: Option<StandIns> = None;
    let d = TestDaemon::start(&format!(
        "[daemon]\nmax_tracked_tasks = {tracked}\n[idle]\ntimeout = \"1h\"\nwarn_before = \"0\"\n"
    ));
    let user = TestUser::create("bi");
    let base = measure(&d);

    let start = Instant::now();
    let spawner = stand_ins.insert(StandIns(
        Command::new(bin("enf-stand-in"))
            .arg(sessions.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut admissions = Vec::with_capacity(sessions);
    let lines = BufReader::new(spawner.0.stdout.take().unwrap()).lines();
    for line in lines.take(sessions) {
        let pid: u32 = line.unwrap().trim().parse().unwrap();
        let t = Instant::now();
        admit(&d, &user.name, pid);
        admissions.push(t.elapsed());
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).unwrap();
    }
    assert_eq!(admissions.len(), sessions, "enf-stand-in forked too few");
    let admitted = start.elapsed();
    let ready = wait_until(Duration::from_secs(300), || {
        d.try_status().is_ok_and(|s| {
            s.events["sessions_active"] >= sessions as u64
                && s.events.get("recordings_active").copied().unwrap_or(0) >= sessions as u64
        })
    });
    let setup = start.elapsed();
    let s = d.status();
    assert!(
        ready,
        "after {:.0} s: {} sessions, {} recordings",
        setup.as_secs_f64(),
        s.events["sessions_active"],
        s.events.get("recordings_active").copied().unwrap_or(0)
    );
    // Let the start-up work (exec records, recording headers) drain before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let full = measure(&d);
    // A full idle check over every connection (a root `sessions` listing forces one, to show
    // each session's latest activity), as when a cut or warning comes due.
    let idle_totals = |d: &TestDaemon| {
        let s = d.status().sweeps;
        let w = s.iter().find(|w| w.name == "idle_check").cloned().unwrap();
        (w.total_us, w.total_cpu_us)
    };
    // Ticks meanwhile find nothing due: microseconds each.
    let mut checks: Vec<(Duration, Duration)> = (0..5)
        .map(|_| {
            let (wall, cpu) = idle_totals(&d);
            d.call(&Request::Sessions);
            let (wall2, cpu2) = idle_totals(&d);
            (
                Duration::from_micros(wall2 - wall),
                Duration::from_micros(cpu2 - cpu),
            )
        })
        .collect();
    checks.sort();
    // The periodic check over every connection, as after each login or session end (the table
    // changed): one more login at a time, then the ticks of the next 400 ms.
    let mut more = StandIns(
        Command::new(bin("enf-stand-in"))
            .arg("5")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let more_pids = BufReader::new(more.0.stdout.take().unwrap()).lines();
    let mut periodic: Vec<(Duration, Duration)> = more_pids
        .map(|pid| {
            let (wall, cpu) = idle_totals(&d);
            admit(&d, &user.name, pid.unwrap().trim().parse().unwrap());
            std::thread::sleep(Duration::from_millis(400));
            let (wall2, cpu2) = idle_totals(&d);
            (
                Duration::from_micros(wall2 - wall),
                Duration::from_micros(cpu2 - cpu),
            )
        })
        .collect();
    periodic.sort();
    drop(more);

    println!(
        "## bench idle ({sessions} idle tracked sessions, {}s measured each way)",
        MEASURE.as_secs()
    );
    println!(
        "| | daemon CPU per second | idle_check mean / max | monitor_sweep mean / max | RSS without rings | RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (label, x) in [
        ("no sessions (baseline)".to_owned(), &base),
        (format!("{sessions} idle sessions"), &full),
    ] {
        println!(
            "| {label} | {} ({:.2}% of a core) | {} | {} | {} | {} |",
            ms(x.cpu_per_sec()),
            x.cpu_per_sec().as_secs_f64() * 100.0,
            x.sweep("idle_check"),
            x.sweep("monitor_sweep"),
            mib(x.mem.own_kib()),
            mib(x.mem.total_kib),
        );
    }
    println!();
    let extra = full.cpu_per_sec().saturating_sub(base.cpu_per_sec());
    println!(
        "CPU: +{} per second with sessions ({:.1}x the baseline); RSS without rings +{}",
        ms(extra),
        full.cpu_per_sec().as_secs_f64() / base.cpu_per_sec().as_secs_f64().max(1e-9),
        mib(full.mem.own_kib().saturating_sub(base.mem.own_kib())),
    );
    let rings: Vec<String> = full
        .mem
        .bpf_maps
        .iter()
        .map(|(size, perms, offset, rss)| format!("{size} KiB {perms} @{offset}: {rss} KiB"))
        .collect();
    println!(
        "Subtracted (anon_inode:bpf-map, the two rings): {} = {}",
        rings.join(", "),
        mib(full.mem.bpf_map_kib)
    );
    for (what, runs) in [
        ("after a login (the table changed)", &periodic),
        (
            "forced by a `sessions` listing, sessions' activity updated",
            &checks,
        ),
    ] {
        let median = runs[runs.len() / 2];
        println!(
            "Full idle check over {sessions} connections, {what}, 5 runs: median {} (CPU {}), slowest {} (CPU {})",
            ms(median.0),
            ms(median.1),
            ms(runs[runs.len() - 1].0),
            ms(runs[runs.len() - 1].1),
        );
    }
    let a = summarize(admissions);
    println!(
        "Admission over the PAM socket (account + open_session): {sessions} in {:.1} s ({:.0}/s), p50 {}, p99 {}; all sessions registered after {:.1} s",
        admitted.as_secs_f64(),
        sessions as f64 / admitted.as_secs_f64(),
        ms(a.p50),
        ms(a.p99),
        setup.as_secs_f64(),
    );
    println!(
        "Tracked tasks {}, activity entries {}, recordings {}; dropped events {}",
        full.map_entries("ENF_TASKS"),
        full.map_entries("ENF_ACTIVITY"),
        full.status
            .events
            .get("recordings_active")
            .copied()
            .unwrap_or(0),
        full.status.dropped.values().sum::<u64>(),
    );

    // All at once, as after a network outage: how long until every connection is released.
    let teardown = Instant::now();
    drop(stand_ins.take());
    let released = wait_until(Duration::from_secs(600), || {
        d.try_status()
            .is_ok_and(|s| s.events["connections_active"] == 0)
    });
    println!(
        "All {sessions} processes trees killed at once: connections released after {:.1} s{}",
        teardown.elapsed().as_secs_f64(),
        if released {
            ""
        } else {
            " (NOT ALL within 600 s)"
        },
    );
}
