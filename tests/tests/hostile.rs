//! What an unprivileged local user can do to enforcerd through its control socket (issue 11):
//! each attack run the way it was reported, as a test user, against a real daemon.

use std::{
    os::{
        fd::AsRawFd,
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    time::{Duration, Instant},
};

use enforcer_proto::{Client, Reply, Request};
use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    hostile::{self, fake_recordings, open_fds, rss_kib},
    require_root,
    ssh::wait_until,
};

const HOSTILE: &str = env!("CARGO_BIN_EXE_enf-hostile");

fn dropped(d: &TestDaemon, reason: &str) -> u64 {
    d.status().dropped.get(reason).copied().unwrap_or(0)
}

/// An ssh login through the module (the default fail=closed, as packaged) succeeds.
fn login_works(sshd: &TestSshd, user: &TestUser) {
    let out = sshd.ssh(user, "true").output().unwrap();
    assert!(
        out.status.success(),
        "login refused while under attack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (up to 20 s) until `cond` holds.
fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(20), cond),
        "never happened: {what}"
    );
}

#[test]
fn idle_connection_flood_does_not_exhaust_fds_or_refuse_logins() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let attacker = TestUser::create("hfa");
    let victim = TestUser::create("hfv");
    let sshd = TestSshd::start(d.pam(), &[&victim], "");
    let before = open_fds(d.pid());

    let flood = hostile::spawn(HOSTILE, &attacker, &d.socket, "idle", 1100, 8.0);
    eventually("the per-uid cap refuses the flood", || {
        dropped(&d, "drop_control_per_uid_cap") > 100
    });
    // The daemon holds the uid's cap, not 1100 fds.
    let held = open_fds(d.pid()).saturating_sub(before);
    assert!(held <= 40, "daemon holds {held} more fds under the flood");
    login_works(&sshd, &victim);
    // Another unprivileged user and root are still answered.
    let ctl = d.ctl_as(&victim, &["status"]);
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let s = d.status();
    assert!(
        s.events["control_connections_non_root"] <= 32,
        "{:?}",
        s.events
    );
    let report = hostile::finish(flood);
    assert!(
        report["closed_by_daemon"].as_u64().unwrap() > 100,
        "{report}"
    );
}

#[test]
fn oversized_frame_headers_buy_no_memory() {
    if !require_root() {
        return;
    }
    // Caps wide enough that the frame limit, not the connection cap, is what is tested.
    let d = TestDaemon::start("[control]\nmax_connections_per_uid = 200\n");
    let attacker = TestUser::create("hoa");
    let base = rss_kib(d.pid());
    let peer = hostile::spawn(HOSTILE, &attacker, &d.socket, "oversize", 150, 4.0);
    let mut peak = base;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(d.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = hostile::finish(peer);
    assert!(
        peak - base < 32 << 10,
        "RSS grew {} MiB under 150 oversized frames ({report})",
        (peak - base) >> 10
    );
    assert!(dropped(&d, "drop_control_frame_too_large") >= 150);
    // Root may still send large frames (a real request is answered).
    assert!(matches!(d.call(&Request::Status), Reply::Status(_)));
}

#[test]
fn slow_loris_and_idle_peers_are_cut_root_is_not() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[control]\nread_timeout = \"1s\"\nidle_timeout = \"2s\"\n");
    let attacker = TestUser::create("hla");
    let mut root = Client::connect(&d.socket, Duration::from_secs(5)).unwrap();
    let loris = hostile::spawn(HOSTILE, &attacker, &d.socket, "loris", 5, 4.5);
    let idle = hostile::spawn(HOSTILE, &attacker, &d.socket, "idle", 5, 4.5);
    let (loris, idle) = (hostile::finish(loris), hostile::finish(idle));
    // Cut after 1 s (loris) and 2 s (idle), then reconnected: several cuts per connection.
    assert!(loris["closed_by_daemon"].as_u64().unwrap() >= 10, "{loris}");
    assert!(idle["closed_by_daemon"].as_u64().unwrap() >= 5, "{idle}");
    assert!(dropped(&d, "drop_control_read_timeout") >= 10);
    assert!(dropped(&d, "drop_control_idle_timeout") >= 5);
    // Root's connection, idle for as long, still works.
    assert!(matches!(
        root.call(&Request::Status).unwrap(),
        Reply::Status(_)
    ));
}

#[test]
fn denial_flood_is_audited_once_then_aggregated() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let attacker = TestUser::create("hda");
    let peer = hostile::finish(hostile::spawn(
        HOSTILE, &attacker, &d.socket, "deny", 1, 3.0,
    ));
    let requests = peer["requests"].as_u64().unwrap();
    assert!(requests > 100, "{peer}");
    let s = d.status();
    assert!(s.events["requests_denied"] >= requests, "{:?}", s.events);
    let mine = |v: &serde_json::Value| v["by_uid"] == attacker.uid;
    let lines = d
        .audit()
        .iter()
        .filter(|v| v["event"] == "request_denied" && mine(v))
        .count();
    assert_eq!(lines, 1, "one audited denial, the rest aggregated");
    let summary = d.wait_audit("aggregated denials", |v| {
        v["event"] == "requests_denied" && mine(v)
    });
    assert!(
        summary["count"].as_u64().unwrap() + 1 >= requests,
        "{summary}"
    );
}

#[test]
fn large_or_blocking_recordings_dir_does_not_stall_logins() {
    if !require_root() {
        return;
    }
    let attacker = TestUser::create("hra");
    let victim = TestUser::create("hrv");
    // The daemon's directory exists before it starts: fill its recordings first.
    let d = {
        let d = TestDaemon::start("");
        let dir = d.dir.path().join("recordings");
        fake_recordings(&dir, &attacker.name, attacker.uid, 1_000_000, 10_000);
        // A recording file that blocks whoever opens it (as a hung filesystem would).
        let fifo = dir
            .join("2026-11-23")
            .join(&attacker.name)
            .join("session-1.cast");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut d = d;
        d.restart();
        d
    };
    let sshd = TestSshd::start(d.pam(), &[&victim], "");
    eventually("the start-up scan indexed 10 000 recordings", || {
        let listed = Client::connect(&d.socket, Duration::from_secs(5)).and_then(|mut c| {
            c.call(&Request::Recordings {
                user: None,
                since: None,
            })
        });
        matches!(listed, Ok(Reply::Recordings(r)) if r.len() == 10_000)
    });
    let lister = hostile::spawn(HOSTILE, &attacker, &d.socket, "list", 2, 6.0);
    for _ in 0..5 {
        login_works(&sshd, &victim);
    }
    // play looks the recording up in the index; the file is read by the connection's task.
    let play = d.ctl_as(&attacker, &["play", "1000042", "--raw"]);
    assert!(
        play.status.success(),
        "{}",
        String::from_utf8_lossy(&play.stderr)
    );
    let report = hostile::finish(lister);
    assert!(report["requests"].as_u64().unwrap() >= 2, "{report}");
}

#[test]
fn pam_socket_is_root_only() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let mode = std::fs::metadata(&d.pam_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let user = TestUser::create("hpa");
    // enforcerctl pointed at the PAM socket cannot even connect.
    let mut c = user.command(&enforcer_tests::bin("enforcerctl"));
    let out = c
        .arg("--socket")
        .arg(&d.pam_socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Root's requests on it are answered.
    let mut root = Client::connect(&d.pam_socket, Duration::from_secs(5)).unwrap();
    assert!(matches!(
        root.call(&Request::Status).unwrap(),
        Reply::Status(_)
    ));
}

/// The `/dev/pts` entries that exist now.
fn ptys() -> std::collections::HashSet<String> {
    std::fs::read_dir("/dev/pts")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

/// Found by review: a refused session's leader is told why on its stderr — the channel's
/// terminal, which its user owns — and the daemon's state actor did that itself, waiting up to
/// 100 ms for room and then writing with a blocking write. A user who stops the output of
/// each new terminal (`tcflow(TCOOFF)`, what Ctrl-S does) before asking for its command stalled
/// every decision 100 ms per refused channel (and could block a write for good by starting the
/// output between the wait and the write). Each of ten such refusals is still killed, and the
/// daemon keeps answering meanwhile.
#[test]
fn refusals_on_terminals_with_stopped_output_do_not_stall_the_daemon() {
    if !require_root() {
        return;
    }
    const REFUSALS: usize = 10;
    let d = TestDaemon::start("[limits]\nmax_sessions_per_connection = 1\n");
    let ana = TestUser::create("stal");
    let sshd = TestSshd::start(d.pam(), &[&ana], "");
    let rt = enforcer_tests::ssh::runtime();
    let handle = rt
        .block_on(enforcer_tests::ssh::russh_login(
            sshd.port, &ana.name, &ana.key,
        ))
        .unwrap();
    // The one session the connection may have.
    let first = rt.block_on(handle.channel_open_session()).unwrap();
    rt.block_on(first.exec(true, "sleep 600".as_bytes()))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        d.sessions()
            .first()
            .is_some_and(|c| c["sessions"].as_array().is_some_and(|s| s.len() == 1))
    }));
    // Channels with a terminal whose output is stopped, each then asked for a command.
    let mut stopped = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..REFUSALS {
        let before = ptys();
        let mut ch = rt.block_on(handle.channel_open_session()).unwrap();
        rt.block_on(ch.request_pty(true, "xterm", 80, 24, 0, 0, &[]))
            .unwrap();
        assert!(matches!(
            rt.block_on(ch.wait()),
            Some(russh::ChannelMsg::Success)
        ));
        let new = ptys().difference(&before).next().cloned().expect("its pty");
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(format!("/dev/pts/{new}"))
            .unwrap();
        // SAFETY: tcflow on an fd we own.
        assert_eq!(unsafe { libc::tcflow(tty.as_raw_fd(), libc::TCOOFF) }, 0);
        stopped.push(tty);
        channels.push(ch);
    }
    for ch in &channels {
        rt.block_on(ch.exec(false, "echo should-not-run".as_bytes()))
            .unwrap();
    }
    // The daemon answers throughout. Before, each refusal held it for tell's full 100 ms wait:
    // as many status requests took that long as there were refusals.
    let mut stalled = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        d.status();
        if t.elapsed() >= Duration::from_millis(90) {
            stalled.push(t.elapsed());
        }
    }
    assert!(
        stalled.len() < REFUSALS / 3,
        "{} status requests took 90 ms or more while {REFUSALS} refusals were told: {stalled:?}",
        stalled.len()
    );
    // Every refused channel ends (its leader killed although its message could not be
    // written), and nothing ran.
    for mut ch in channels {
        let mut out = Vec::new();
        let closed = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(msg) = ch.wait().await {
                    match msg {
                        russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                        russh::ChannelMsg::Close => return true,
                        _ => {}
                    }
                }
                true
            })
            .await
        });
        assert_eq!(closed, Ok(true), "a refused channel was never ended");
        assert!(!String::from_utf8_lossy(&out).contains("should-not-run"));
    }
    assert_eq!(
        d.audit_events("session_refused").len(),
        REFUSALS,
        "{}",
        d.log()
    );
    drop(stopped);
    rt.block_on(first.close()).unwrap();
}
