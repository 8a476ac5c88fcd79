//! Idle termination and lock-out of live sessions, end to end under the real sshd.

use std::time::{Duration, Instant};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, procs, require_root,
    ssh::{HeldSsh, PtySsh, run, runtime, russh_exec_all, russh_login, wait_until},
};

#[test]
fn an_idle_pty_session_is_warned_then_cut_at_the_timeout_with_its_nohup_processes() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"4s\"\nwarn_before = \"2s\"\n");
    let ivy = TestUser::create("ia");
    let sshd = TestSshd::start(d.pam(), &[&ivy], "");
    let marker = procs::shared_dir();
    let pidfile = marker.path().join("nohup.pid");
    let mut pty = PtySsh::open(&sshd, &ivy);
    pty.type_text(&format!(
        "nohup sleep 600 >/dev/null 2>&1 & echo $! > {}\n",
        pidfile.display()
    ));
    let nohup = procs::read_pid(&pidfile);
    // Last keystroke: now.
    let idle_from = Instant::now();
    assert!(
        pty.wait_for("will be closed in", Duration::from_secs(4)),
        "no warning: {}",
        pty.output()
    );
    let warned = idle_from.elapsed();
    assert!(
        warned >= Duration::from_millis(1500) && warned < Duration::from_millis(3000),
        "warned after {warned:?}"
    );
    assert!(
        pty.wait_closed(Duration::from_secs(5)),
        "not cut: {}",
        pty.output()
    );
    let cut = idle_from.elapsed();
    assert!(
        cut >= Duration::from_millis(3000) && cut <= Duration::from_millis(5000),
        "cut after {cut:?}, timeout 4s ± 1s"
    );
    assert!(
        pty.output().contains("enforcer: connection closed after"),
        "{}",
        pty.output()
    );
    assert!(
        wait_until(Duration::from_secs(3), || !procs::alive(nohup)),
        "nohup'd process survived the idle cut"
    );
    let rec = d.wait_audit("idle", |v| v["event"] == "idle_timeout");
    assert_eq!(rec["user"], ivy.name.as_str());
    let idle = rec["idle_secs"].as_f64().unwrap();
    assert!((3.5..5.0).contains(&idle), "idle_secs {idle}");
    let closed = d.wait_audit("close", |v| v["event"] == "connection_closed");
    assert_eq!(closed["reason"], "idle_timeout");
}

#[test]
fn typing_resets_the_idle_clock() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"3s\"\nwarn_before = \"0\"\n");
    let jan = TestUser::create("ib");
    let sshd = TestSshd::start(d.pam(), &[&jan], "");
    let mut pty = PtySsh::open(&sshd, &jan);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        pty.type_text(" ");
    }
    assert!(
        pty.is_open(),
        "cut although the user kept typing: {}",
        pty.output()
    );
    let last = Instant::now();
    assert!(pty.wait_closed(Duration::from_secs(5)));
    let after = last.elapsed();
    assert!(
        after >= Duration::from_millis(2000) && after <= Duration::from_millis(4000),
        "cut {after:?} after the last keystroke"
    );
}

#[test]
fn with_activity_any_output_keeps_a_session_alive_and_with_input_it_does_not() {
    if !require_root() {
        return;
    }
    for (mode, survives) in [("any", true), ("input", false)] {
        let d = TestDaemon::start(&format!(
            "[idle]\ntimeout = \"3s\"\nwarn_before = \"0\"\nactivity = \"{mode}\"\n"
        ));
        let kit = TestUser::create("ic");
        let sshd = TestSshd::start(d.pam(), &[&kit], "");
        let mut pty = PtySsh::open(&sshd, &kit);
        pty.type_text("while true; do echo tick; sleep 0.5; done\n");
        std::thread::sleep(Duration::from_secs(6));
        assert_eq!(
            pty.is_open(),
            survives,
            "activity = {mode}: {}",
            pty.output()
        );
    }
}

#[test]
fn idle_non_pty_sessions_are_cut_too() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"3s\"\nwarn_before = \"0\"\n");
    let lu = TestUser::create("id");
    let sshd = TestSshd::start(d.pam(), &[&lu], "");
    let start = Instant::now();
    let out = run(sshd.ssh(&lu, "sleep 60"));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "exec session not cut: {took:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("enforcer: connection closed after"),
        "{:?}",
        out
    );
}

#[test]
fn idle_tracking_survives_a_daemon_restart() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("[idle]\ntimeout = \"6s\"\nwarn_before = \"0\"\n");
    let mo = TestUser::create("ie");
    let sshd = TestSshd::start(d.pam(), &[&mo], "");
    let mut pty = PtySsh::open(&sshd, &mo);
    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    d.restart();
    assert!(pty.wait_closed(Duration::from_secs(8)));
    let cut = idle_from.elapsed();
    assert!(
        cut >= Duration::from_secs(5) && cut <= Duration::from_secs(7),
        "cut {cut:?} after the last input (timeout 6s, restart in between)"
    );
}

#[test]
fn lock_kills_every_session_of_the_user_at_once_and_spares_others() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let ned = TestUser::create("if");
    let oli = TestUser::create("ig");
    let sshd = TestSshd::start(d.pam(), &[&ned, &oli], "");
    let other = HeldSsh::open(&sshd, &oli);
    let pty = PtySsh::open(&sshd, &ned);
    let rt = runtime();
    let handle = rt
        .block_on(russh_login(sshd.port, &ned.name, &ned.key))
        .unwrap();
    let channels = rt.spawn(async move {
        russh_exec_all(&handle, &["sleep 600".into(), "sleep 600".into()]).await
    });
    // Two connections, three sessions.
    assert!(wait_until(Duration::from_secs(5), || {
        d.sessions()
            .iter()
            .filter(|c| c["user"] == ned.name.as_str())
            .map(|c| c["sessions"].as_array().unwrap().len())
            .sum::<usize>()
            == 3
    }));
    let start = Instant::now();
    d.ctl_ok(&["lock", "user", &ned.name, "--reason", "offboarded"]);
    let all_gone = wait_until(Duration::from_secs(1), || {
        procs::uid_processes(ned.uid).is_empty()
    });
    let took = start.elapsed();
    assert!(
        all_gone,
        "processes of the locked user still alive after {took:?}: {:?}\n{}",
        procs::uid_processes(ned.uid),
        d.log()
    );
    assert!(
        pty.wait_for(
            &format!("account {} is locked: offboarded", ned.name),
            Duration::from_secs(2)
        ),
        "{}",
        pty.output()
    );
    let outcomes = rt.block_on(channels).unwrap();
    // Sessions die at once and sshd a moment later, so sshd may still report how each ended:
    // killed (by signal, or 137 from a shell whose child was killed).
    assert!(
        outcomes
            .iter()
            .all(|o| o.exit_signal.as_deref() == Some("KILL")
                || o.exit_status.is_none_or(|s| s == 137)),
        "{outcomes:?}"
    );
    assert!(
        !procs::uid_processes(oli.uid).is_empty(),
        "the other user's session was hit"
    );
    assert_eq!(
        run(sshd.ssh(&ned, "true")).status.code(),
        Some(255),
        "new logins stay refused"
    );
    let killed = || -> Vec<_> {
        d.audit()
            .into_iter()
            .filter(|v| v["event"] == "connection_killed")
            .collect()
    };
    // Recorded once each kill completes, after the connections' grace.
    assert!(
        wait_until(Duration::from_secs(3), || killed().len() == 2),
        "{:#?}\n{}",
        d.audit(),
        d.log()
    );
    let killed = killed();
    assert!(
        killed
            .iter()
            .all(|k| k["reason"] == "user_locked" && k["by_uid"] == 0)
    );
    drop(other);
}

#[test]
fn a_lock_file_dropped_in_the_directory_takes_effect() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let pat = TestUser::create("ih");
    let sshd = TestSshd::start(d.pam(), &[&pat], "");
    let mut pty = PtySsh::open(&sshd, &pat);
    let locks = d.dir.path().join("locks.d");
    std::fs::create_dir_all(&locks).unwrap();
    let start = Instant::now();
    std::fs::write(
        locks.join(&pat.name),
        "reason = \"dropped by config management\"\n",
    )
    .unwrap();
    assert!(pty.wait_closed(Duration::from_secs(3)), "lock file ignored");
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        pty.output().contains("dropped by config management"),
        "{}",
        pty.output()
    );
    assert_eq!(run(sshd.ssh(&pat, "true")).status.code(), Some(255));
    let killed = d.wait_audit("kill", |v| v["event"] == "connection_killed");
    assert_eq!(killed["reason"], "user_locked");
    assert!(killed["by_uid"].is_null(), "nobody asked: a file did");
}
