//! `cargo xtask bench recording`: what recording costs a session, against the tools people use
//! for it, and how much output it can take without losing a byte.
//!
//! Part 1 — real pty sessions through sshd: `cat` of a text file (what terminal output looks
//! like), timed inside the session, with enforcer's recording off, on, and with the session
//! recorded instead by tlog-rec-session, script(1) or `asciinema rec` (enforcer recording off).
//! Variants alternate over rounds; medians are reported with bytes written per byte of output,
//! and on/off is judged on the median of per-round ratios (variants of a round run back to back).
//! Less noisy than wall time here: the session's CPU (every process of it, sshd's included),
//! enforcerd's CPU per MB of output, and the BPF run time of the daemon's programs per MB.
//!
//! Part 2 — loss at a given rate: the pty path here is far slower than the recorder, so exec
//! sessions (`ssh host 'yes … | pv -L RATE'`, stdout through a pipe that sshd reads) carry the
//! output, with the cheapest cipher (aes128-gcm); sshd's encryption on this machine caps the
//! achieved rate. Lost bytes come from the kernel's per-channel loss count; enforcerd's CPU and
//! the programs' BPF run time per MB are reported next to them. (The kernel sees session bytes
//! where sshd's own code reads them, so no stand-in for sshd can drive this path.)

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Pam, TestDaemon, TestSshd, TestUser,
    bpfstats::{self, DaemonPrograms, Runs},
    cgroup::CpuCgroup,
    procs::{cpu_time, descendants},
    require_root,
    ssh::wait_until,
    stats::{median, ratio_range},
};

const FILE_BYTES: usize = 64 << 20;
const ROUNDS: usize = 21;
const PEER_ROUNDS: usize = 3;

/// Runs `body` in a pty session and returns (inner elapsed time, bytes the client received).
fn timed(sshd: &TestSshd, user: &TestUser, body: &str, elapsed_file: &Path) -> (Duration, u64) {
    let _ = std::fs::remove_file(elapsed_file);
    let script = format!(
        "stty -echo; s=$(date +%s%N); {body}; e=$(date +%s%N); echo $((e-s)) > {}",
        elapsed_file.display()
    );
    let out = sshd.ssh_with(user, &["-tt"], &script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns: u64 = std::fs::read_to_string(elapsed_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (Duration::from_nanos(ns), out.stdout.len() as u64)
}

/// Writes dirty pages back so the next run does not pay for the previous one's files.
fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

fn size_of_files(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The machine setup tlog expects (a utmp file, a lock directory users can write); undone on drop.
struct TlogSetup {
    created_utmp: bool,
    tlog_dir_mode: Option<u32>,
}

impl TlogSetup {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let utmp = Path::new("/run/utmp");
        let created_utmp = !utmp.exists();
        if created_utmp {
            assert!(
                Command::new("install")
                    .args([
                        "-m",
                        "0664",
                        "-o",
                        "root",
                        "-g",
                        "utmp",
                        "/dev/null",
                        "/run/utmp"
                    ])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let dir = Path::new("/run/tlog");
        std::fs::create_dir_all(dir).unwrap();
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        TlogSetup {
            created_utmp,
            tlog_dir_mode: Some(mode),
        }
    }
}

impl Drop for TlogSetup {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(mode) = self.tlog_dir_mode {
            let _ = std::fs::set_permissions("/run/tlog", std::fs::Permissions::from_mode(mode));
        }
        if self.created_utmp {
            let _ = std::fs::remove_file("/run/utmp");
        }
    }
}

fn sessions_part(user: &TestUser, work: &Path) {
    let data = work.join("data.txt");
    let line = "enforcer recording benchmark: 0123456789 abcdefghijklmnopqrstuvwxyz ✓ ─┼─\n";
    std::fs::write(
        &data,
        &line.repeat(FILE_BYTES / line.len() + 1).as_bytes()[..FILE_BYTES],
    )
    .unwrap();
    let elapsed = work.join("elapsed");
    let _tlog = TlogSetup::new();
    let tlog_conf = format!(
        r#"{{"shell":"/bin/sh","writer":"file","file":{{"path":"{}"}}}}"#,
        work.join("tlog.log").display()
    );
    let cat = format!("cat {}", data.display());
    let peers: Vec<(&str, String, Vec<PathBuf>)> = vec![
        (
            "tlog-rec-session",
            format!("TLOG_REC_SESSION_CONF_TEXT='{tlog_conf}' tlog-rec-session -c '{cat}'"),
            vec![work.join("tlog.log")],
        ),
        (
            "script -T",
            format!(
                "script -q -T {} -c '{cat}' {}",
                work.join("script.timing").display(),
                work.join("script.out").display()
            ),
            vec![work.join("script.out"), work.join("script.timing")],
        ),
        (
            "asciinema rec",
            format!(
                "asciinema rec -q --overwrite -c '{cat}' {}",
                work.join("asciinema.cast").display()
            ),
            vec![work.join("asciinema.cast")],
        ),
    ];
    // Variants 0 (off), 1 (on) and 2 (off again: the A/A control that shows the noise) each
    // get a fresh daemon and sshd, in an order that rotates over rounds. The peers run after,
    // under a daemon with recording off, so their files' writeback does not land on enforcer's
    // runs; every run starts after a sync for the same reason.
    const OFF: usize = 0;
    const ON: usize = 1;
    const CONTROL: usize = 2;
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); 3 + peers.len()];
    let mut disk: Vec<u64> = vec![0; 3 + peers.len()];
    let mut received = 0;
    let mut lost_on = 0;
    // Per variant and round: CPU of the session (all of its processes, sshd's included: the
    // sshd listener runs in a cgroup of its own) and of enforcerd; BPF runs of the daemon's
    // programs (stats on for every variant alike: they cost ~25 ns per program run).
    let mut session_cpu: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut daemon_cpu: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut bpf: Vec<BTreeMap<String, Runs>> = vec![BTreeMap::new(); 3];
    for round in 0..ROUNDS {
        for variant in [OFF, ON, CONTROL]
            .into_iter()
            .cycle()
            .skip(round % 3)
            .take(3)
        {
            let d = TestDaemon::start(&format!("[recording]\nenabled = {}\n", variant == ON));
            let sshd = TestSshd::start(
                Pam::Enforcer(format!("socket={}", d.pam_socket.display())),
                &[user],
                "",
            );
            let (progs, group) = (DaemonPrograms::of(&d), CpuCgroup::create());
            group.adopt(sshd.pid());
            sync();
            // Let the fresh daemon and sshd finish starting up before the clock runs.
            std::thread::sleep(Duration::from_millis(300));
            let (session0, daemon0) = (group.cpu(), cpu_time(d.pid()));
            let ((t, got), runs) = progs.measure(|| {
                let r = timed(&sshd, user, &cat, &elapsed);
                wait_until(Duration::from_secs(5), || {
                    d.recordings().iter().all(|r| r["live"] == false)
                });
                r
            });
            received = got;
            times[variant].push(t);
            wait_until(Duration::from_secs(5), || {
                descendants(sshd.pid()).is_empty()
            });
            session_cpu[variant].push(group.cpu() - session0);
            daemon_cpu[variant].push(cpu_time(d.pid()) - daemon0);
            bpfstats::accumulate(&mut bpf[variant], &runs);
            if variant == ON {
                disk[ON] = d
                    .recordings()
                    .iter()
                    .map(|r| r["size_bytes"].as_u64().unwrap())
                    .max()
                    .unwrap_or(0);
                lost_on += d.status().dropped["drop_recording_bytes_lost"];
            }
        }
    }
    for _ in 0..PEER_ROUNDS {
        let d = TestDaemon::start("[recording]\nenabled = false\n");
        let sshd = TestSshd::start(
            Pam::Enforcer(format!("socket={}", d.pam_socket.display())),
            &[user],
            "",
        );
        for (i, (_, body, files)) in peers.iter().enumerate() {
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            sync();
            times[3 + i].push(timed(&sshd, user, body, &elapsed).0);
            disk[3 + i] = size_of_files(files);
        }
    }
    let spread: Vec<String> = times
        .iter()
        .map(|t| {
            let (min, max) = (t.iter().min().unwrap(), t.iter().max().unwrap());
            format!("{:.2}–{:.2} s", min.as_secs_f64(), max.as_secs_f64())
        })
        .collect();
    // Variants of one round run back to back, so their ratio cancels slow drifts of the machine.
    let paired = |a: usize, b: usize| {
        let mut r: Vec<f64> = times[a]
            .iter()
            .zip(&times[b])
            .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let (paired_ratio, paired_noise) = (paired(OFF, ON), paired(OFF, CONTROL));
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let mbps = |t: Duration| FILE_BYTES as f64 / t.as_secs_f64() / 1e6;
    println!(
        "## bench recording, part 1: `cat` of {} MB of text through an ssh pty session (medians of {ROUNDS} rounds, peers {PEER_ROUNDS})",
        FILE_BYTES >> 20
    );
    println!(
        "| variant | time | range | throughput | throughput / recording off | bytes on disk per output byte |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let names: Vec<&str> = [
        "enforcer, recording off",
        "enforcer, recording on",
        "enforcer, recording off (A/A control)",
    ]
    .into_iter()
    .chain(peers.iter().map(|p| p.0))
    .collect();
    for (i, name) in names.iter().enumerate() {
        let per_byte = if i == OFF || i == CONTROL {
            "-".to_owned()
        } else {
            format!("{:.3}", disk[i] as f64 / FILE_BYTES as f64)
        };
        println!(
            "| {name} | {:.2} s | {} | {:.1} MB/s | {:.3} | {per_byte} |",
            medians[i].as_secs_f64(),
            spread[i],
            mbps(medians[i]),
            medians[0].as_secs_f64() / medians[i].as_secs_f64()
        );
    }
    let ratio = medians[OFF].as_secs_f64() / medians[ON].as_secs_f64();
    let noise = medians[OFF].as_secs_f64() / medians[CONTROL].as_secs_f64();
    let faster = (3..names.len()).all(|i| medians[ON] < medians[i]);
    println!();
    println!(
        "client received {received} bytes per run (pty adds \\r to each \\n); bytes lost by enforcer over all recorded runs: {lost_on}"
    );
    println!(
        "recording on/off, median of per-round ratios: {paired_ratio:.3} (target ≥ 0.95; A/A control off/off: {paired_noise:.3}) — {}",
        if paired_ratio >= 0.95 {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!("recording on/off, ratio of medians: {ratio:.3} (A/A control: {noise:.3})");
    let mb = FILE_BYTES as f64 / 1e6;
    let bpf_mb = |i: usize| bpfstats::total(&bpf[i]).ns as f64 / (mb * ROUNDS as f64);
    println!();
    println!(
        "| variant | session CPU | off/variant CPU, per round: median (min–max) | enforcerd CPU per MB | BPF ns per MB | BPF calls per MB |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, name) in names.iter().take(3).enumerate() {
        let r: Vec<f64> = session_cpu[OFF]
            .iter()
            .zip(&session_cpu[i])
            .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
            .collect();
        let calls = bpfstats::total(&bpf[i]).cnt as f64 / (mb * ROUNDS as f64);
        println!(
            "| {name} | {:.3} s | {} | {:.2} ms | {:.0} | {calls:.0} |",
            median(session_cpu[i].clone()).as_secs_f64(),
            ratio_range(r),
            median(daemon_cpu[i].clone()).as_secs_f64() * 1e3 / mb,
            bpf_mb(i),
        );
    }
    println!(
        "(session CPU: every process of the ssh session, sshd's included; BPF: the daemon's programs over each run, every process's syscalls on the host included, so off shows what the programs cost with recording off)"
    );
    let (session, recorder) = (
        median(session_cpu[OFF].clone()),
        median(daemon_cpu[ON].clone()),
    );
    println!(
        "enforcerd recording a run: {:.3} s of CPU = {:.1} % of the session's with recording off; recording's own BPF time (on − off): {:.0} ns per MB",
        recorder.as_secs_f64(),
        recorder.as_secs_f64() / session.as_secs_f64() * 100.0,
        bpf_mb(ON) - bpf_mb(OFF)
    );
    println!(
        "faster than every peer: {}",
        if faster {
            "yes — MET"
        } else {
            "no — NOT MET"
        }
    );
}

/// What one driven run cost and lost.
struct Driven {
    elapsed: Duration,
    lost: u64,
    recording_size: u64,
    daemon_cpu: Duration,
    /// The daemon's programs while the output flowed.
    bpf: Runs,
}

/// An exec session of `sshd` writing `bytes` of output at `rate` (bytes/s; 0 = unlimited).
fn drive(
    d: &TestDaemon,
    sshd: &TestSshd,
    user: &TestUser,
    work: &Path,
    rate: u64,
    bytes: u64,
) -> Driven {
    let generator = work.join("gen.sh");
    let limit = if rate == 0 {
        String::new()
    } else {
        format!("-L {rate}")
    };
    std::fs::write(
        &generator,
        format!("yes 'enforcer recording benchmark line: 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c {bytes} | pv -q {limit}\n"),
    )
    .unwrap();
    let lost_before = d.status().dropped["drop_recording_bytes_lost"];
    let daemon0 = cpu_time(d.pid());
    let mut session = sshd.ssh_with(
        user,
        &["-c", "aes128-gcm@openssh.com", "-o", "LogLevel=ERROR"],
        &format!("bash {}", generator.display()),
    );
    session.stdout(Stdio::null());
    let (elapsed, runs) = DaemonPrograms::of(d).measure(|| {
        let start = Instant::now();
        assert!(session.status().unwrap().success());
        start.elapsed()
    });
    // The recorder may still be writing what the kernel handed it; give it time to finish.
    std::thread::sleep(Duration::from_secs(3));
    let lost = d.status().dropped["drop_recording_bytes_lost"] - lost_before;
    let recording_size = d
        .recordings()
        .last()
        .map_or(0, |r| r["size_bytes"].as_u64().unwrap());
    Driven {
        elapsed,
        lost,
        recording_size,
        daemon_cpu: cpu_time(d.pid()) - daemon0,
        bpf: bpfstats::total(&runs),
    }
}

fn rates_part(user: &TestUser, work: &Path) {
    let d = TestDaemon::start("");
    let sshd = TestSshd::start(d.pam(), &[user], "");
    println!(
        "## bench recording, part 2: loss by output rate (ssh exec sessions, stdout through sshd, recording on)"
    );
    println!(
        "| target rate | achieved | output | bytes lost | recording bytes per output byte | enforcerd CPU per MB | BPF ns per MB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut worst_ok = 0.0;
    for rate_mb in [10u64, 50, 100, 200, 400, 0] {
        let bytes = if rate_mb == 0 {
            1000 << 20
        } else {
            (rate_mb << 20) * 3 / 2
        }
        .max(30 << 20);
        let r = drive(&d, &sshd, user, work, rate_mb << 20, bytes);
        let (mb, lost) = (bytes as f64 / 1e6, r.lost);
        let achieved = mb / r.elapsed.as_secs_f64();
        // A recording smaller than the output (asciicast adds ~1.5 %) lost bytes the kernel
        // never saw: that counts as loss too.
        let complete = r.recording_size >= bytes;
        if lost == 0 && complete {
            worst_ok = f64::max(worst_ok, achieved);
        } else if !complete {
            println!(
                "(recording of {} bytes for {bytes} bytes of output: INCOMPLETE)",
                r.recording_size
            );
        }
        let target = if rate_mb == 0 {
            "unlimited".to_owned()
        } else {
            format!("{rate_mb} MiB/s")
        };
        println!(
            "| {target} | {achieved:.0} MB/s | {} MB | {lost} | {:.3} | {:.2} ms | {:.0} |",
            bytes >> 20,
            r.recording_size as f64 / bytes as f64,
            r.daemon_cpu.as_secs_f64() * 1e3 / mb,
            r.bpf.ns as f64 / mb
        );
    }
    println!();
    println!(
        "highest rate recorded without losing a byte: {worst_ok:.0} MB/s (target: 0 lost up to 100 MB/s)"
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let user = TestUser::create("br");
    user.join_group_named("utmp");
    let work = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // `cargo xtask bench recording [sessions] [rates]`: both parts unless some are named.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| named.is_empty() || named.iter().any(|a| a == part);
    if wanted("sessions") {
        sessions_part(&user, work.path());
        println!();
    }
    if wanted("rates") {
        rates_part(&user, work.path());
    }
}
