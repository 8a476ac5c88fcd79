//! `cargo xtask bench kube`: what enforcerd costs a `kubectl exec`'s start, through the CRI
//! exactly as the kubelet asks (Exec, then the `v4.channel.k8s.io` stream to containerd's
//! streaming server), on a private containerd with one pod.
//!
//! One sample: from the CRI Exec call to the exec's exit status on the stream, for
//! `echo ready` without a tty. Rounds alternate: off (no enforcerd) and on (enforcerd with
//! `[kubernetes]` on a labeled node, following containerd: each exec is tracked, admitted
//! against a limit, listed and audited). The ratio is off/on of the medians: 1.0 = free,
//! target ≥ 0.95. The A/A line compares off rounds with each other: the noise floor.
//!
//!
//! Part 2, recording: `yes … | head -c 16 MB` through a tty exec (the bytes cross the shim's
//! pty master, where they are recorded), timed from the Exec call to the exit status with all
//! output received; rounds alternate enforcerd with `[recording] enabled = false` and `true`
//! (both following containerd). The ratio is on/off throughput (1.0 = free); the recording's
//! loss counter must stay 0 and the recording must hold every byte.

use std::time::{Duration, Instant};

use enforcer_tests::{
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
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut audited, mut unfollowed) = (0, 0);
    for r in 0..ROUNDS {
        let first_off = r % 2 == 0;
        if first_off {
            off.push(median(round(&bed)));
        }
        let d = bed.daemon_with("max_exec_sessions_per_pod = 100\n");
        // The daemon is connected to containerd before the round starts.
        assert!(
            enforcer_tests::ssh::wait_until(Duration::from_secs(15), || d
                .ctl_ok(&["status"])
                .contains("containerd connected")),
            "{}",
            d.ctl_ok(&["status"])
        );
        on.push(median(round(&bed)));
        let ended_execs = || {
            d.audit()
                .into_iter()
                .filter(|a| a["event"] == "session_ended" && a["kind"] == "kube_exec")
                .count()
        };
        // containerd's last reports of the round reach enforcerd after the execs ended.
        enforcer_tests::ssh::wait_until(Duration::from_secs(10), || ended_execs() >= PER_ROUND);
        let ended: Vec<_> = d
            .audit()
            .into_iter()
            .filter(|a| a["event"] == "session_ended" && a["kind"] == "kube_exec")
            .collect();
        audited += ended.len();
        unfollowed += ended.iter().filter(|a| a["command"].is_null()).count();
        drop(d);
        if !first_off {
            off.push(median(round(&bed)));
        }
    }
    let ratios: Vec<f64> = off
        .iter()
        .zip(&on)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
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
        "| on (enforcerd following containerd, label present) | {} | {} |",
        ms(median(on.clone())),
        ratio_range(ratios.clone())
    );
    println!();
    println!("A/A (off round / next off round): {}", ratio_range(aa));
    println!(
        "exec sessions audited while on: {audited} of {} ({unfollowed} over before containerd's report reached enforcerd: audited without their commands)",
        ROUNDS * PER_ROUND
    );
    let ratio = enforcer_tests::stats::median_f64(ratios);
    println!(
        "start latency ratio off/on: {ratio:.3} (target ≥ 0.95) — {}",
        if ratio >= 0.95 { "met" } else { "NOT met" }
    );
    recording(&bed);
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
    let s = ExecStream::connect(&cri.exec(&bed.cid, &["sh", "-c", &cmd], true, false));
    assert_eq!(s.wait_exit(Duration::from_secs(120)), Some(0), "{:?}", s.status());
    let d = t.elapsed();
    // The pty turns each \n into \r\n.
    assert!(s.output().len() >= TTY_BYTES, "{} bytes received", s.output().len());
    d
}

fn recording(bed: &Bed) {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut lost, mut recorded) = (0u64, 0u64);
    for r in 0..TTY_ROUNDS * 2 {
        let recording_on = r % 2 == 1;
        let d = bed.daemon_with(&format!(
            "[recording]\nenabled = {recording_on}\n"
        ));
        assert!(
            enforcer_tests::ssh::wait_until(Duration::from_secs(15), || d
                .ctl_ok(&["status"])
                .contains("containerd connected")),
            "{}",
            d.ctl_ok(&["status"])
        );
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
    let ratios: Vec<f64> = off.iter().zip(&on).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
    let aa: Vec<f64> = off.windows(2).map(|w| w[0].as_secs_f64() / w[1].as_secs_f64()).collect();
    println!();
    println!(
        "## bench kube, part 2: {} MB of text through a tty exec ({TTY_PER_ROUND} per round, {TTY_ROUNDS} rounds each, round medians)",
        TTY_BYTES >> 20
    );
    println!("| variant | time | throughput | on/off throughput |");
    println!("| --- | --- | --- | --- |");
    let off_m = median(off.clone());
    let on_m = median(on.clone());
    println!("| recording off | {} | {:.1} MB/s | 1.000 |", ms(off_m), mbps(&off_m));
    println!(
        "| recording on | {} | {:.1} MB/s | {} |",
        ms(on_m),
        mbps(&on_m),
        ratio_range(ratios)
    );
    println!();
    println!("A/A (recording-off round / next recording-off round): {}", ratio_range(aa));
    let sent = (TTY_ROUNDS * TTY_PER_ROUND * TTY_BYTES) as u64;
    println!(
        "recorded: {recorded} bytes for {sent} written ({:.3} of them; the pty adds a \\r per line), lost: {lost}",
        recorded as f64 / sent as f64
    );
}
