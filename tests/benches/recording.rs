//! `cargo xtask bench recording`: what recording costs a session, against the tools people use
//! for it, and how much output it can take without losing a byte.
//!
//! Part 1 — real pty sessions through sshd: `cat` of a text file (what terminal output looks
//! like), timed inside the session, with enforcer's recording off, on, and with the session
//! recorded instead by tlog-rec-session, script(1) or `asciinema rec` (enforcer recording off).
//! Variants alternate over rounds; medians are reported with bytes written per byte of output,
//! and on/off is judged on the median of per-round ratios (variants of a round run back to back).
//!
//! Part 2 — loss at a given rate: the pty path here is far slower than the recorder, and sshd's
//! encryption caps exec sessions too, so the recording path is driven directly: a stand-in
//! connection admitted over the PAM protocol (like the idle benchmark), whose direct child reads
//! the session's stdout pipe with read(2) exactly as sshd's per-connection process does, fed by
//! `pv -L RATE`. Lost bytes come from the kernel's per-channel loss count.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Pam, TestDaemon, TestSshd, TestUser, procs::cpu_time, require_root, ssh::wait_until,
    stats::median,
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

/// CPU time of every task on the machine so far (cgroup v1 cpuacct, or v2's root cpu.stat).
fn machine_cpu() -> Option<Duration> {
    if let Ok(ns) = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/cpuacct.usage") {
        return Some(Duration::from_nanos(ns.trim().parse().ok()?));
    }
    let stat = std::fs::read_to_string("/sys/fs/cgroup/cpu.stat").ok()?;
    let us = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
    Some(Duration::from_micros(us.trim().parse().ok()?))
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
    // CPU of a whole run with recording off (every task on the machine), and enforcerd's
    // own CPU for a recorded run: what recording costs next to what the session itself costs.
    let mut machine_cpu_off = Vec::new();
    let mut daemon_cpu_on = Vec::new();
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
            sync();
            // Let the fresh daemon and sshd finish starting up before the clock runs.
            std::thread::sleep(Duration::from_millis(300));
            let (machine0, daemon0) = (machine_cpu(), cpu_time(d.pid()));
            let (t, got) = timed(&sshd, user, &cat, &elapsed);
            received = got;
            times[variant].push(t);
            if variant == OFF {
                if let (Some(a), Some(b)) = (machine0, machine_cpu()) {
                    machine_cpu_off.push(b - a);
                }
            }
            if variant == ON {
                wait_until(Duration::from_secs(5), || {
                    d.recordings().iter().all(|r| r["live"] == false)
                });
                daemon_cpu_on.push(cpu_time(d.pid()) - daemon0);
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
    if !machine_cpu_off.is_empty() {
        let (session, recorder) = (median(machine_cpu_off), median(daemon_cpu_on));
        println!(
            "CPU per run (medians): the session with recording off {:.2} s (all tasks); enforcerd recording it {:.3} s = {:.1} % of that",
            session.as_secs_f64(),
            recorder.as_secs_f64(),
            recorder.as_secs_f64() / session.as_secs_f64() * 100.0
        );
    }
    println!(
        "faster than every peer: {}",
        if faster {
            "yes — MET"
        } else {
            "no — NOT MET"
        }
    );
}

/// Drives the recording path at `rate` (bytes/s; 0 = unlimited) for `bytes`; returns (elapsed,
/// bytes lost, recording size).
fn drive(
    d: &TestDaemon,
    user: &TestUser,
    work: &Path,
    rate: u64,
    bytes: u64,
) -> (Duration, u64, u64) {
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
    let aux = work.join("aux.sh");
    // The stand-in for sshd's per-connection process: it reads the session's stdout pipe.
    std::fs::write(
        &aux,
        format!(
            "exec cat > /dev/null < <(exec setsid bash {})\n",
            generator.display()
        ),
    )
    .unwrap();
    let lost_before = d.status().dropped["drop_recording_bytes_lost"];
    let mut monitor = Command::new("bash")
        .arg("-c")
        // `; exit`: bash would otherwise exec the last command in place of the monitor.
        .arg(format!("read go; bash {}; exit", aux.display()))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    d.admit_stand_in(user, monitor.id());
    let start = Instant::now();
    monitor.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert!(monitor.wait().unwrap().success());
    let elapsed = start.elapsed();
    // The recorder may still be writing what the kernel handed it; give it time to finish.
    std::thread::sleep(Duration::from_secs(3));
    let lost = d.status().dropped["drop_recording_bytes_lost"] - lost_before;
    let size = d
        .recordings()
        .last()
        .map_or(0, |r| r["size_bytes"].as_u64().unwrap());
    (elapsed, lost, size)
}

fn rates_part(user: &TestUser, work: &Path) {
    let d = TestDaemon::start("");
    println!(
        "## bench recording, part 2: loss by output rate (session stdout read by sshd's stand-in, recording on)"
    );
    println!("| target rate | achieved | output | bytes lost | recording bytes per output byte |");
    println!("| --- | --- | --- | --- | --- |");
    let mut worst_ok = 0.0;
    for rate_mb in [10u64, 50, 100, 200, 400, 0] {
        let bytes = if rate_mb == 0 {
            1000 << 20
        } else {
            (rate_mb << 20) * 3 / 2
        }
        .max(30 << 20);
        let (t, lost, size) = drive(&d, user, work, rate_mb << 20, bytes);
        let achieved = bytes as f64 / t.as_secs_f64() / 1e6;
        if lost == 0 {
            worst_ok = f64::max(worst_ok, achieved);
        }
        let target = if rate_mb == 0 {
            "unlimited".to_owned()
        } else {
            format!("{rate_mb} MiB/s")
        };
        println!(
            "| {target} | {achieved:.0} MB/s | {} MB | {lost} | {:.3} |",
            bytes >> 20,
            size as f64 / bytes as f64
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
