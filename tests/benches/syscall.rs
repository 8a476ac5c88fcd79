//! `cargo xtask bench syscall`: what enforcerd costs the syscalls of every process on the host.
//!
//! Workloads, both run through `enf-syscall-loop` (tests/src/bin), which reports wall and CPU
//! (getrusage: the scheduler's exact run time, which includes the BPF programs run on the
//! process's behalf):
//! - dd: `dd if=/dev/zero of=/dev/null bs=1 count=1000000`, 2 M read/write syscalls;
//! - mixed: per iteration a 1-byte write+read on a pipe and on a socket pair, stat(), getpid().
//!
//! Modes, for a root process in no SSH session (untracked): enforcerd off (no daemon and its
//! pins removed, checked with bpftool), on and idle, on with 50 live recorded pty sessions
//! elsewhere (each printing a line a second); and the same workloads inside an SSH session of
//! the private sshd, tracked (daemon on) or not (daemon off, an sshd without the module).
//! Rounds alternate off-first and off-last; each mode is judged by the median over rounds of
//! the ratio off/mode (time, so 1.0 = free, 0.73 = 27 % slower) within a round, next to the A/A
//! spread of off rounds against their neighbours. BPF stats (run_cnt, run_time_ns) come from
//! separate runs with stats enabled, since collecting them costs time on every program run.

use std::{
    collections::BTreeMap,
    process::{Command, Output},
    time::Duration,
};

use enforcer_tests::{
    Pam, TestDaemon, TestSshd, TestUser,
    bpfstats::{self, DaemonPrograms, Runs},
    require_root,
    ssh::{PtySsh, wait_until},
    stats::{median_f64, ratio_range},
};

const DD_COUNT: u64 = 1_000_000;
const MIXED_ITERS: u64 = 200_000;
const ROUNDS: usize = 8;
const SESSIONS: usize = 50;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Work {
    Dd,
    Mixed,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Off,
    Idle,
    Busy,
    SessionOff,
    SessionOn,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Off => "untracked, enforcerd off",
            Mode::Idle => "untracked, enforcerd on, idle",
            Mode::Busy => "untracked, enforcerd on, 50 recorded sessions",
            Mode::SessionOff => "in an SSH session, enforcerd off",
            Mode::SessionOn => "in a tracked SSH session",
        }
    }

    /// The mode this one is compared with.
    fn baseline(self) -> Mode {
        match self {
            Mode::SessionOff | Mode::SessionOn => Mode::SessionOff,
            _ => Mode::Off,
        }
    }
}

impl Work {
    fn args(self) -> Vec<String> {
        let v = match self {
            Work::Dd => vec![
                "run".to_owned(),
                "dd".into(),
                "if=/dev/zero".into(),
                "of=/dev/null".into(),
                "bs=1".into(),
                format!("count={DD_COUNT}"),
                "status=none".into(),
            ],
            Work::Mixed => vec!["mixed".to_owned(), MIXED_ITERS.to_string()],
        };
        [env!("CARGO_BIN_EXE_enf-syscall-loop").to_owned()]
            .into_iter()
            .chain(v)
            .collect()
    }

    fn syscalls(self) -> u64 {
        match self {
            Work::Dd => 2 * DD_COUNT,
            Work::Mixed => 6 * MIXED_ITERS,
        }
    }
}

/// Seconds of one run.
#[derive(Clone, Copy, Debug)]
struct Timing {
    wall: f64,
    cpu: f64,
}

fn parse(out: &Output) -> Timing {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| -> f64 {
        let v = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in {text:?}"));
        v.parse::<f64>().unwrap() / 1e9
    };
    Timing {
        wall: field("wall_ns"),
        cpu: field("cpu_ns"),
    }
}

/// Runs `work` here, as root, with the minimal environment sshd gives a session.
fn local(work: Work) -> Timing {
    let a = work.args();
    parse(
        &Command::new(&a[0])
            .args(&a[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap(),
    )
}

fn in_session(sshd: &TestSshd, user: &TestUser, work: Work) -> Timing {
    parse(&sshd.ssh(user, &work.args().join(" ")).output().unwrap())
}

/// What a run of the bench collected.
#[derive(Default)]
struct Results {
    /// Per (work, mode): one timing per round, in round order.
    times: BTreeMap<(Work, Mode), Vec<Timing>>,
    /// Per (work, mode): BPF runs summed over rounds, and how many runs that was.
    bpf: BTreeMap<(Work, Mode), (BTreeMap<String, Runs>, u32)>,
    /// dd CPU of the stats runs (on idle), to show what collecting stats costs.
    dd_cpu_stats_on: Vec<f64>,
    /// Sum of the daemons' drop counters (events or bytes lost) at the end of their rounds.
    dropped: u64,
    /// Rounds whose off runs saw another daemon's `enf_` programs loaded.
    foreign: Vec<(usize, Vec<u32>)>,
}

impl Results {
    fn time(&mut self, work: Work, mode: Mode, t: Timing) {
        self.times.entry((work, mode)).or_default().push(t);
    }

    /// A timed run, then a second one with BPF stats on for the programs' share.
    fn measured(
        &mut self,
        progs: &DaemonPrograms,
        work: Work,
        mode: Mode,
        run: impl Fn() -> Timing,
    ) {
        self.time(work, mode, run());
        let (t, runs) = progs.measure(&run);
        if (work, mode) == (Work::Dd, Mode::Idle) {
            self.dd_cpu_stats_on.push(t.cpu);
        }
        let e = self.bpf.entry((work, mode)).or_default();
        bpfstats::accumulate(&mut e.0, &runs);
        e.1 += 1;
    }
}

fn off_block(r: &mut Results, round: usize, plain: &TestSshd, user: &TestUser) {
    let foreign = bpfstats::foreign_enf_programs(&[]);
    if !foreign.is_empty() {
        r.foreign.push((round, foreign));
    }
    for work in [Work::Dd, Work::Mixed] {
        let t = local(work);
        r.time(work, Mode::Off, t);
        let t = in_session(plain, user, work);
        r.time(work, Mode::SessionOff, t);
    }
}

/// 50 pty sessions of `user`, each printing a line about every second (bash's `read -t 1`
/// waits without forking a `sleep` per line).
fn open_busy_sessions(sshd: &TestSshd, user: &TestUser) -> Vec<PtySsh> {
    let mut ptys: Vec<PtySsh> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    (0..SESSIONS / 10)
                        .map(|_| PtySsh::open(sshd, user))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    for p in &mut ptys {
        p.type_text(
            "exec bash --norc --noprofile -c 'while :; do echo tick-$((20+22)); read -t 1 x; done'\n",
        );
    }
    for p in &ptys {
        assert!(
            p.wait_for("tick-42", Duration::from_secs(20)),
            "session does not print: {}",
            p.output()
        );
    }
    ptys
}

fn on_block(r: &mut Results, round: usize, user: &TestUser) {
    let d = TestDaemon::start("");
    let progs = DaemonPrograms::of(&d);
    let sshd = TestSshd::start(d.pam(), &[user], "");
    // Let the fresh daemon finish starting up before the clock runs.
    std::thread::sleep(Duration::from_millis(500));
    for work in [Work::Dd, Work::Mixed] {
        r.measured(&progs, work, Mode::Idle, || local(work));
        r.measured(&progs, work, Mode::SessionOn, || {
            in_session(&sshd, user, work)
        });
    }
    let ptys = open_busy_sessions(&sshd, user);
    let live = wait_until(Duration::from_secs(20), || {
        d.status().events["sessions_active"] >= SESSIONS as u64
            && d.recordings().iter().filter(|x| x["live"] == true).count() >= SESSIONS
    });
    assert!(live, "the daemon does not see {SESSIONS} recorded sessions");
    if round == 0 {
        let s = d.status();
        println!(
            "(round 0: {} connections, {} sessions active, {} live recordings)",
            s.events["connections_active"],
            s.events["sessions_active"],
            d.recordings().iter().filter(|x| x["live"] == true).count()
        );
    }
    for work in [Work::Dd, Work::Mixed] {
        r.measured(&progs, work, Mode::Busy, || local(work));
    }
    r.dropped += d.status().dropped.values().sum::<u64>();
    drop(ptys);
    drop(sshd);
    drop(d);
    assert!(
        progs.wait_unloaded(),
        "programs of the stopped daemon are still loaded (its pins were removed)"
    );
}

/// Median (min–max) of per-round ratios baseline/mode; for a baseline itself, the A/A spread:
/// each round against the next.
fn ratios(r: &Results, work: Work, mode: Mode, f: fn(&Timing) -> f64) -> String {
    let base = &r.times[&(work, mode.baseline())];
    let v: Vec<f64> = if mode == mode.baseline() {
        base.windows(2).map(|w| f(&w[0]) / f(&w[1])).collect()
    } else {
        let t = &r.times[&(work, mode)];
        base.iter().zip(t).map(|(b, t)| f(b) / f(t)).collect()
    };
    let s = ratio_range(v);
    if mode == mode.baseline() {
        format!("A/A {s}")
    } else {
        s
    }
}

fn report(r: &Results) {
    let modes = [
        Mode::Off,
        Mode::Idle,
        Mode::Busy,
        Mode::SessionOff,
        Mode::SessionOn,
    ];
    for work in [Work::Dd, Work::Mixed] {
        let (what, per, unit) = match work {
            Work::Dd => ("dd bs=1, 2 M read/write syscalls", 2 * DD_COUNT, "syscall"),
            Work::Mixed => (
                "mixed loop (pipe and socketpair 1-byte write+read, stat, getpid)",
                MIXED_ITERS,
                "iteration (6 syscalls)",
            ),
        };
        println!("\n### {what}, {ROUNDS} rounds");
        println!(
            "| mode | CPU ns per {unit} | wall ns per {unit} | ratio off/mode, CPU: median (min–max) | ratio, wall | BPF ns per syscall |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for mode in modes {
            let t = &r.times[&(work, mode)];
            let ns =
                |f: fn(&Timing) -> f64| median_f64(t.iter().map(f).collect()) * 1e9 / per as f64;
            let bpf = r
                .bpf
                .get(&(work, mode))
                .map_or("–".to_owned(), |(runs, n)| {
                    let calls = work.syscalls() as f64 * *n as f64;
                    format!("{:.1}", bpfstats::total(runs).ns as f64 / calls)
                });
            println!(
                "| {} | {:.1} | {:.1} | {} | {} | {bpf} |",
                mode.label(),
                ns(|t| t.cpu),
                ns(|t| t.wall),
                ratios(r, work, mode, |t| t.cpu),
                ratios(r, work, mode, |t| t.wall),
            );
        }
    }
    for mode in [Mode::Idle, Mode::Busy, Mode::SessionOn] {
        let (runs, n) = &r.bpf[&(Work::Dd, mode)];
        println!(
            "\n### BPF programs during dd ({}), {n} runs of {} syscalls; counts include every other process's calls meanwhile",
            mode.label(),
            Work::Dd.syscalls()
        );
        print!(
            "{}",
            bpfstats::table(runs, (Work::Dd.syscalls() * *n as u64) as f64, "dd syscall")
        );
    }
    let cpu = |m: Mode| median_f64(r.times[&(Work::Dd, m)].iter().map(|t| t.cpu).collect());
    println!(
        "\nAn untracked syscall pays {:.0} ns of CPU with enforcerd idle ({:.0} ns with 50 sessions) — dd: (on − off) / 2 M",
        (cpu(Mode::Idle) - cpu(Mode::Off)) * 1e9 / Work::Dd.syscalls() as f64,
        (cpu(Mode::Busy) - cpu(Mode::Off)) * 1e9 / Work::Dd.syscalls() as f64,
    );
    println!(
        "Collecting BPF stats itself: dd CPU with stats on / off (on idle): {:.3}",
        median_f64(r.dd_cpu_stats_on.clone()) / cpu(Mode::Idle)
    );
    let ratio = median_f64(
        r.times[&(Work::Dd, Mode::Off)]
            .iter()
            .zip(&r.times[&(Work::Dd, Mode::Idle)])
            .map(|(b, t)| b.cpu / t.cpu)
            .collect(),
    );
    println!(
        "untracked dd ratio off/on idle (CPU): {ratio:.3} (target ≥ 0.97) — {}",
        if ratio >= 0.97 { "MET" } else { "NOT MET" }
    );
    println!(
        "events and bytes the daemons dropped, all rounds: {}",
        r.dropped
    );
    if r.foreign.is_empty() {
        println!("No other enforcer programs were loaded during the off runs.");
    }
    for (round, ids) in &r.foreign {
        println!(
            "WARNING: round {round}'s off runs had another daemon's enf_ programs loaded (ids {ids:?}): not a clean baseline"
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let user = TestUser::create("bs");
    // The in-session baseline: an sshd without pam_enforcer, used while no daemon runs.
    let plain = TestSshd::start(Pam::Without, &[&user], "");
    let mut r = Results::default();
    let start = std::time::Instant::now();
    for round in 0..ROUNDS {
        let off_first = round % 2 == 0;
        if off_first {
            off_block(&mut r, round, &plain, &user);
        }
        on_block(&mut r, round, &user);
        if !off_first {
            off_block(&mut r, round, &plain, &user);
        }
    }
    println!("## bench syscall (alternating rounds; ratio = off time / mode time, 1.000 = free)");
    report(&r);
    println!(
        "Off runs: the programs of each stopped daemon were checked unloaded with bpftool. Bench took {:.0} s.",
        start.elapsed().as_secs_f64()
    );
}
