//! `cargo xtask bench kube`: what enforcerd costs a `kubectl exec`'s start, through the CRI
//! exactly as the kubelet asks (Exec, then the `v4.channel.k8s.io` stream to containerd's
//! streaming server), on a private containerd with one pod.
//!
//! Part 1, start latency. One sample: from the CRI Exec call to the exec's exit status on the
//! stream, for `echo ready` without a tty. Each round runs three variants in rotating order:
//! off (no enforcerd), on (enforcerd with `[kubernetes]` on a labeled node, following
//! containerd: each exec is tracked, admitted against a limit, listed, audited and recorded
//! through the shim's probes) and on without the shim's probes (`shim_binaries = []`). The
//! ratio is the median over rounds of each round's off/on (of the round medians): 1.0 = free,
//! target ≥ 0.95; the table also shows each variant's median over all rounds. The A/A line
//! compares off rounds with each other: the noise floor. BPF run-time stats of the on rounds
//! say what the kernel side runs per exec.
//!
//! Part 2, recording: `yes … | head -c 16 MB` through a tty exec (the bytes cross the shim's
//! pty master, where they are recorded), timed from the Exec call to the exit status with all
//! output received; rounds alternate enforcerd with `[recording] enabled = false` and `true`
//! (both following containerd). The ratio is on/off throughput (1.0 = free); the recording's
//! loss counter must stay 0 and the recording must hold every byte.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use enforcer_tests::{
    bpfstats::{self, Runs},
    containerd::containerd_installed,
    exec_stream::ExecStream,
    kube_bed::Bed,
    require_root,
    stats::{median, ms, ratio_range},
};

const PER_ROUND: usize = 50;
const ROUNDS: usize = 8;

/// Start latencies of `PER_ROUND` execs, one after the other.
fn round(bed: &Bed) -> Vec<Duration> {
    let cri = bed.cri();
    (0..PER_ROUND)
        .map(|_| {
            let t = Instant::now();
            let s = ExecStream::connect(&cri.exec(&bed.cid, &["echo", "ready"], false, false));
            assert_eq!(
                s.wait_exit(Duration::from_secs(20)),
                Some(0),
                "{:?}",
                s.status()
            );
            let d = t.elapsed();
            assert!(s.output_text().contains("ready"), "{:?}", s.output_text());
            d
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("bench");
    // Warm-up: image layers, the shim's first exec.
    round(&bed);
    // `cargo xtask bench kube start|recording` runs one part only.
    let only = |part: &str| std::env::args().any(|a| a == part);
    if !only("recording") {
        start(&bed);
    }
    if !only("start") {
        recording(&bed);
    }
}

/// What enforcerd measured of its holds over a round (`status`, `kube_exec_hold`): execs
/// decided from the hold, and the total time their commands were stopped (kernel's stop to
/// enforcerd's resume) and the actor's CPU time for them.
#[derive(Default, Clone, Copy)]
struct Holds {
    n: u64,
    wall_us: u64,
    max_us: u64,
    cpu_us: u64,
}

impl Holds {
    fn of(d: &enforcer_tests::TestDaemon) -> Holds {
        let s = d.status();
        let h = s
            .sweeps
            .iter()
            .find(|w| w.name == "kube_exec_hold")
            .expect("status times kube_exec_hold");
        Holds {
            n: h.runs,
            wall_us: h.total_us,
            max_us: h.max_us,
            cpu_us: h.total_cpu_us,
        }
    }

    fn add(&mut self, o: Holds) {
        self.n += o.n;
        self.wall_us += o.wall_us;
        self.max_us = self.max_us.max(o.max_us);
        self.cpu_us += o.cpu_us;
    }

    /// Mean hold per exec decided from it.
    fn mean(&self) -> Duration {
        Duration::from_micros(self.wall_us.checked_div(self.n).unwrap_or(0))
    }
}

/// One round with enforcerd on (`more`: extra `[kubernetes]` keys): the round's median, the
/// BPF programs' runs, (audited, unfollowed) exec sessions and the holds.
fn on_round(bed: &Bed, more: &str) -> (Duration, BTreeMap<String, Runs>, usize, usize, Holds) {
    let d = bed.daemon_connected(&format!("max_exec_sessions_per_pod = 100\n{more}"));
    let (times, runs) = bpfstats::DaemonPrograms::of(&d).measure(|| round(bed));
    let ended = || -> Vec<serde_json::Value> {
        d.audit()
            .into_iter()
            .filter(|a| a["event"] == "session_ended" && a["kind"] == "kube_exec")
            .collect()
    };
    // containerd's last reports of the round reach enforcerd after the execs ended.
    enforcer_tests::ssh::wait_until(Duration::from_secs(10), || ended().len() >= PER_ROUND);
    let ended = ended();
    let unfollowed = ended.iter().filter(|a| a["command"].is_null()).count();
    (median(times), runs, ended.len(), unfollowed, Holds::of(&d))
}

/// Part 1: exec start latency, enforcerd off, on, and on without the shim's probes (no exec
/// recording); the order rotates each round.
fn start(bed: &Bed) {
    let (mut off, mut on, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut audited, mut unfollowed) = (0, 0);
    let mut bpf = BTreeMap::new();
    let mut holds = Holds::default();
    for r in 0..ROUNDS {
        for v in 0..3 {
            match (r + v) % 3 {
                0 => off.push(median(round(bed))),
                1 => {
                    let (m, runs, a, u, h) = on_round(bed, "");
                    bpfstats::accumulate(&mut bpf, &runs);
                    holds.add(h);
                    (audited, unfollowed) = (audited + a, unfollowed + u);
                    on.push(m);
                }
                _ => bare.push(on_round(bed, "shim_binaries = []\n").0),
            }
        }
    }
    let ratios = |x: &[Duration]| -> Vec<f64> {
        off.iter()
            .zip(x)
            .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
            .collect()
    };
    let aa: Vec<f64> = off
        .windows(2)
        .map(|w| w[0].as_secs_f64() / w[1].as_secs_f64())
        .collect();
    println!(
        "## bench kube ({PER_ROUND} execs of `echo ready` per round through the CRI, {ROUNDS} rounds, round medians)"
    );
    println!("| variant | exec start → exit, median of rounds | off/on |");
    println!("| --- | --- | --- |");
    println!(
        "| off (no enforcerd) | {} | 1.000 |",
        ms(median(off.clone()))
    );
    println!(
        "| on (enforcerd following containerd, label present, exec recording) | {} | {} |",
        ms(median(on.clone())),
        ratio_range(ratios(&on))
    );
    println!(
        "| on without the shim's probes (`shim_binaries = []`: no exec recording) | {} | {} |",
        ms(median(bare.clone())),
        ratio_range(ratios(&bare))
    );
    println!();
    println!("A/A (off round / next off round): {}", ratio_range(aa));
    println!(
        "exec sessions audited while on: {audited} of {} ({unfollowed} over before containerd's report reached enforcerd: audited without their commands)",
        ROUNDS * PER_ROUND
    );
    println!();
    println!(
        "BPF programs while on (kernel run-time stats; a uprobe's trap is not in run_time_ns):"
    );
    print!(
        "{}",
        bpfstats::table(&bpf, (ROUNDS * PER_ROUND) as f64, "exec")
    );
    // What enforcement adds to an exec's start, measured where it happens rather than in the
    // rounds' wall time (whose own spread, the A/A line, is wider than the effect): the time
    // the command was stopped for enforcerd's decision, and the BPF programs' run time per exec
    // (all of it, on the exec's path or not: an upper bound; the shim probes' traps come on
    // top, see README).
    let execs = (ROUNDS * PER_ROUND) as f64;
    let bpf_per_exec =
        Duration::from_secs_f64(bpf.values().map(|r| r.ns as f64).sum::<f64>() / execs / 1e9);
    let hits: u64 = bpf
        .iter()
        .filter(|(name, _)| name.starts_with("enf_shim_"))
        .map(|(_, r)| r.cnt)
        .sum();
    let base = median(off.clone());
    let added = holds.mean() + bpf_per_exec;
    println!(
        "holds decided from the kernel's hold: {} of {} execs; command stopped {} on average \
         (max {}), enforcerd's CPU {} per exec",
        holds.n,
        ROUNDS * PER_ROUND,
        ms(holds.mean()),
        ms(Duration::from_micros(holds.max_us)),
        ms(Duration::from_micros(
            holds.cpu_us.checked_div(holds.n).unwrap_or(0)
        )),
    );
    println!("shim probe hits per exec start: {:.1}", hits as f64 / execs);
    println!(
        "measured cost on the exec's path: hold {} + BPF {} = {} per exec; off / (off + that) = {:.3}",
        ms(holds.mean()),
        ms(bpf_per_exec),
        ms(added),
        base.as_secs_f64() / (base + added).as_secs_f64()
    );
    let ratios = ratios(&on);
    let ratio = enforcer_tests::stats::median_f64(ratios);
    println!(
        "start latency ratio off/on: {ratio:.3} (target ≥ 0.95) — {}",
        if ratio >= 0.95 { "met" } else { "NOT met" }
    );
}

/// Bytes each part-2 exec writes through its pty.
const TTY_BYTES: usize = 16 << 20;
const TTY_ROUNDS: usize = 6;
const TTY_PER_ROUND: usize = 3;

/// Seconds for one tty exec that writes `TTY_BYTES` of text, all of it received.
fn tty_exec(bed: &Bed) -> Duration {
    let cri = bed.cri();
    let cmd = format!("yes abcdefghijklmnopqrstuvwxyz-0123456789 | head -c {TTY_BYTES}");
    let t = Instant::now();
    // As `kubectl exec -it`: a tty with stdin.
    let s = ExecStream::connect(&cri.exec(&bed.cid, &["sh", "-c", &cmd], true, true));
    assert_eq!(
        s.wait_exit(Duration::from_secs(120)),
        Some(0),
        "{:?} after {} bytes",
        s.status(),
        s.output().len()
    );
    let d = t.elapsed();
    // The pty turns each \n into \r\n.
    assert!(
        s.output().len() >= TTY_BYTES,
        "{} bytes received",
        s.output().len()
    );
    d
}

fn recording(bed: &Bed) {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut lost, mut recorded) = (0u64, 0u64);
    for r in 0..TTY_ROUNDS * 2 {
        let recording_on = r % 2 == 1;
        let d = bed.daemon_connected(&format!("[recording]\nenabled = {recording_on}\n"));
        let times: Vec<Duration> = (0..TTY_PER_ROUND).map(|_| tty_exec(bed)).collect();
        if recording_on {
            on.push(median(times));
            // The last recording drains and closes a grace period after its session.
            std::thread::sleep(Duration::from_secs(3));
            let s = d.status();
            lost += s.dropped["drop_recording_bytes_lost"];
            recorded += s.events["recording_bytes"];
        } else {
            off.push(median(times));
        }
    }
    let mbps = |d: &Duration| TTY_BYTES as f64 / 1e6 / d.as_secs_f64();
    let ratios: Vec<f64> = off
        .iter()
        .zip(&on)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    let aa: Vec<f64> = off
        .windows(2)
        .map(|w| w[0].as_secs_f64() / w[1].as_secs_f64())
        .collect();
    println!();
    println!(
        "## bench kube, part 2: {} MB of text through a tty exec ({TTY_PER_ROUND} per round, {TTY_ROUNDS} rounds each, round medians)",
        TTY_BYTES >> 20
    );
    println!("| variant | time | throughput | on/off throughput |");
    println!("| --- | --- | --- | --- |");
    let off_m = median(off.clone());
    let on_m = median(on.clone());
    println!(
        "| recording off | {} | {:.1} MB/s | 1.000 |",
        ms(off_m),
        mbps(&off_m)
    );
    println!(
        "| recording on | {} | {:.1} MB/s | {} |",
        ms(on_m),
        mbps(&on_m),
        ratio_range(ratios)
    );
    println!();
    println!(
        "A/A (recording-off round / next recording-off round): {}",
        ratio_range(aa)
    );
    let sent = (TTY_ROUNDS * TTY_PER_ROUND * TTY_BYTES) as u64;
    println!(
        "recorded: {recorded} bytes for {sent} written ({:.3} of them; the pty adds a \\r per line), lost: {lost}",
        recorded as f64 / sent as f64
    );
}
