//! `[metrics] listen`: a real Prometheus server scrapes enforcerd while real SSH logins happen,
//! the shipped alert rules pass promtool and fire on a drop, and a hostile local user cannot
//! slow logins down or make the daemon hold connections through the metrics port.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use enforcer_proto::{Admission, Reply};
use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    hostile::open_fds,
    http,
    prometheus::{PROMETHEUS, PROMTOOL, TestPrometheus, require_tool},
    require_root,
    ssh::{HeldSsh, run, wait_until},
    sshd::free_port,
};

const SCRAPER: &str = env!("CARGO_BIN_EXE_enf-scraper");

/// A daemon serving metrics on a free loopback port.
fn daemon_with_metrics(extra: &str) -> (TestDaemon, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = TestDaemon::start(&format!("[metrics]\nlisten = \"{addr}\"\n{extra}"));
    (d, addr)
}

fn alert_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/enforcer-alerts.yml")
}

#[test]
fn prometheus_scrapes_logins_sessions_refusals_and_pam_latency() {
    if !require_root() || !require_tool(PROMETHEUS) {
        return;
    }
    let (d, addr) = daemon_with_metrics("");
    let user = TestUser::create("pm");
    let sshd = TestSshd::start(d.pam(), &[&user], "");
    let prom = TestPrometheus::start(addr);
    let wait = Duration::from_secs(20);
    prom.wait_value("up{job=\"enforcer\"}", 1.0, wait);

    // One login held open: the gauges see it.
    let held = HeldSsh::open(&sshd, &user);
    prom.wait_value("enforcer_connections{state=\"open\"}", 1.0, wait);
    prom.wait_value("enforcer_sessions{kind=\"exec\"}", 1.0, wait);
    held.close();
    d.wait_audit("logout", |v| {
        v["event"] == "connection_closed" && v["user"] == user.name.as_str()
    });
    prom.wait_value("enforcer_connections{state=\"open\"}", 0.0, wait);
    prom.wait_value(
        "enforcer_connections_closed_total{reason=\"logout\"}",
        1.0,
        wait,
    );
    prom.wait_value(
        "enforcer_pam_decisions_total{outcome=\"admitted\"}",
        1.0,
        wait,
    );
    prom.wait_value("enforcer_pam_decision_seconds_count", 1.0, wait);
    prom.wait_value(
        "enforcer_events_total{name=\"connections_admitted\"}",
        1.0,
        wait,
    );

    // A refused login, by reason.
    d.ctl_ok(&["lock", "user", &user.name, "--reason", "metrics test"]);
    let out = run(sshd.ssh(&user, "true"));
    assert_eq!(out.status.code(), Some(255), "locked user logged in");
    prom.wait_value(
        "enforcer_connections_refused_total{reason=\"user_locked\"}",
        1.0,
        wait,
    );
    prom.wait_value(
        "enforcer_pam_decisions_total{outcome=\"refused\"}",
        1.0,
        wait,
    );
    prom.wait_value("enforcer_pam_decision_seconds_count", 2.0, wait);
    // The decisions took what a decision takes, not the module's 3 s timeout.
    let sum = prom.query("enforcer_pam_decision_seconds_sum");
    assert!(
        sum.len() == 1 && sum[0].1 < 1.0,
        "PAM decision time {sum:?}"
    );

    // Every drop counter of `enforcerctl status` is a series (zero ones too, so alerts on
    // increase() see the first loss).
    let status = d.status();
    let drops = prom.query("enforcer_dropped_total");
    for name in status.dropped.keys() {
        assert!(
            drops.iter().any(|(m, _)| m["name"] == name.as_str()),
            "{name} not scraped: {drops:?}"
        );
    }
    let recorded = prom.query("enforcer_events_total{name=\"recording_bytes\"}");
    assert_eq!(recorded.len(), 1, "recording bytes not scraped");
}

#[test]
fn shipped_alert_rules_pass_promtool_and_fire_on_a_drop() {
    if !require_tool(PROMTOOL) {
        return;
    }
    let rules = alert_rules();
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A drop at minute 3 fires EnforcerDroppedWork with the counter's name; flat counters
    // (and the same counter five minutes later) do not.
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("alerts_test.yml");
    let series = |name: &str| {
        format!("enforcer_dropped_total{{job=\"enforcer\",instance=\"node:9464\",name=\"{name}\"}}")
    };
    std::fs::write(
        &test,
        format!(
            "rule_files: ['{rules}']\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n\
             \x20     - series: '{a}'\n        values: '0 0 0 5 5 5 5 5 5 5 5 5'\n\
             \x20     - series: '{b}'\n        values: '0x11'\n\
             \x20     - series: 'up{{job=\"enforcer\",instance=\"node:9464\"}}'\n        values: '1x11'\n\
             \x20   alert_rule_test:\n\
             \x20     - eval_time: 2m\n        alertname: EnforcerDroppedWork\n        exp_alerts: []\n\
             \x20     - eval_time: 4m\n        alertname: EnforcerDroppedWork\n        exp_alerts:\n\
             \x20         - exp_labels: {{severity: warning, job: enforcer, instance: 'node:9464', name: drop_ringbuf_full}}\n\
             \x20           exp_annotations:\n\
             \x20             summary: 'enforcerd on node:9464 dropped work: drop_ringbuf_full'\n\
             \x20             description: '5 lost in the last 5 minutes (drop_ringbuf_full); see `enforcerctl status` on that host.'\n\
             \x20     - eval_time: 10m\n        alertname: EnforcerDroppedWork\n        exp_alerts: []\n\
             \x20     - eval_time: 10m\n        alertname: EnforcerDown\n        exp_alerts: []\n",
            rules = rules.display(),
            a = series("drop_ringbuf_full"),
            b = series("drop_tasks_map_full"),
        ),
    )
    .unwrap();
    let out = Command::new(PROMTOOL)
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PAM account decision's round trip over the PAM socket, for a new stand-in monitor.
fn pam_round_trip(d: &TestDaemon, user: &TestUser) -> Duration {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let t = Instant::now();
    let reply = d.account(&user.name, child.id());
    let took = t.elapsed();
    assert!(
        matches!(reply, Reply::Admission(Admission::Admitted { .. })),
        "{reply:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    took
}

#[test]
fn a_hostile_local_user_on_the_metrics_port_cannot_slow_logins_or_hold_the_daemon() {
    if !require_root() {
        return;
    }
    let (d, addr) = daemon_with_metrics("");
    let attacker = TestUser::create("mha");
    let victim = TestUser::create("mhv");
    let sshd = TestSshd::start(d.pam(), &[&victim], "");
    let quiet: Vec<Duration> = (0..10).map(|_| pam_round_trip(&d, &victim)).collect();
    let before = open_fds(d.pid());

    let spawn = |mode: &str, count: usize| {
        attacker
            .command(std::path::Path::new(SCRAPER))
            .args([&addr.to_string(), mode, &count.to_string(), "6"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let report = |c: std::process::Child| -> serde_json::Value {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Each attack in turn: scrapes as fast as answered, then half-sent requests.
    let mut attacked = Vec::new();
    let mut reports = Vec::new();
    for (mode, count) in [("scrape", 16), ("loris", 400)] {
        let attacker = spawn(mode, count);
        std::thread::sleep(Duration::from_secs(2));
        // The daemon holds at most its cap of scrape connections, whatever the attacker opens.
        let held = open_fds(d.pid()).saturating_sub(before);
        assert!(held <= 24, "{mode}: daemon holds {held} more fds");
        attacked.extend((0..10).map(|_| pam_round_trip(&d, &victim)));
        let out = run(sshd.ssh(&victim, "true"));
        assert!(
            out.status.success(),
            "{mode}: login refused while the metrics port is flooded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        d.status();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{mode}: status took {:?}",
            t.elapsed()
        );
        reports.push(report(attacker));
    }
    let (flood, loris) = (&reports[0], &reports[1]);
    // Scrapes are answered from the cached body; half-sent requests are cut at the header
    // deadline (2 s), not held.
    assert!(
        flood["answers"].as_u64().unwrap() > 100,
        "scrapes not answered: {flood}"
    );
    assert!(
        loris["closed_by_daemon"].as_u64().unwrap() >= 16,
        "loris connections not cut: {loris}"
    );
    let worst = attacked.iter().max().unwrap();
    let quiet_worst = quiet.iter().max().unwrap();
    assert!(
        *worst < Duration::from_millis(250),
        "PAM decisions slowed by the metrics flood: worst {worst:?} (quiet {quiet_worst:?}); loris {loris}, flood {flood}"
    );
    // Once the attack stops, scrapes are answered again at once.
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            http::get(addr, "/metrics", Duration::from_secs(2)),
            Ok((200, body)) if body.contains("enforcer_dropped_total")
        )),
        "metrics not served after the flood"
    );
    assert!(
        wait_until(Duration::from_secs(5), || open_fds(d.pid()) <= before + 2),
        "daemon kept connections after the flood: {} fds, {before} before",
        open_fds(d.pid())
    );
    eprintln!(
        "PAM decision worst quiet {quiet_worst:?}, under flood {worst:?}; loris {loris}; flood {flood}"
    );
}

#[test]
fn scrape_shows_what_the_daemon_counts_and_other_paths_are_refused() {
    if !require_root() {
        return;
    }
    let (d, addr) = daemon_with_metrics("");
    let user = TestUser::create("ms");
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    d.admit_stand_in(&user, child.id());
    let _ = child.kill();
    let _ = child.wait();
    let scrape = || http::get(addr, "/metrics", Duration::from_secs(5)).unwrap();
    // Numbers are at most a second old.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (_, body) = scrape();
            http::sample(
                &body,
                "enforcer_pam_decisions_total",
                "{outcome=\"admitted\"}",
            ) == Some(1.0)
                && http::sample(
                    &body,
                    "enforcer_connections_closed_total",
                    "{reason=\"monitor_exited\"}",
                )
                .or(http::sample(
                    &body,
                    "enforcer_connections_closed_total",
                    "{reason=\"monitor_gone\"}",
                )) == Some(1.0)
        }),
        "{}",
        scrape().1
    );
    let (status, body) = scrape();
    assert_eq!(status, 200);
    for line in [
        "# TYPE enforcer_pam_decision_seconds histogram",
        "# TYPE enforcer_dropped_total counter",
        "# TYPE enforcer_connections gauge",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    assert_eq!(
        http::sample(
            &body,
            "enforcer_audit_records_total",
            "{event=\"connection_admitted\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(http::get(addr, "/", Duration::from_secs(5)).unwrap().0, 404);
}
