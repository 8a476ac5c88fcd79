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
//! Recording of exec sessions is not built yet: its throughput half is reported as such.

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
    println!(
        "recording on/off throughput of `cat` through an exec pty: not measured (exec sessions are not recorded yet)"
    );
}
