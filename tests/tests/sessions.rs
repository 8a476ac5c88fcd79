//! Sessions inside connections, end to end: kernel session tracking under the real sshd, limits
//! enforced at exec, the command log, and terminating sessions.

use std::time::Duration;

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, procs, require_root,
    ssh::{HeldSsh, run, runtime, russh_exec_all, russh_login, wait_until},
};

/// The sessions of the only connection.
fn sessions_of_only_conn(d: &TestDaemon) -> Vec<serde_json::Value> {
    let conns = d.sessions();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    conns[0]["sessions"].as_array().unwrap().clone()
}

#[test]
fn five_channels_under_a_limit_of_three_run_exactly_three() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_sessions_per_connection = 3\n");
    let ana = TestUser::create("sa");
    let sshd = TestSshd::start(d.pam(), &[&ana], "");
    let outcomes = runtime().block_on(async {
        let handle = russh_login(sshd.port, &ana.name, &ana.key).await.unwrap();
        let commands: Vec<String> = (0..5).map(|i| format!("echo ran-{i}; sleep 3")).collect();
        russh_exec_all(&handle, &commands).await
    });
    let ran: Vec<_> = outcomes
        .iter()
        .filter(|o| o.stdout.contains("ran-"))
        .collect();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.stdout.contains("ran-"))
        .collect();
    assert_eq!(ran.len(), 3, "{outcomes:#?}");
    assert!(
        ran.iter().all(|o| o.exit_status == Some(0)),
        "{outcomes:#?}"
    );
    for o in &refused {
        assert!(
            o.stdout.is_empty(),
            "a refused session ran something: {o:?}"
        );
        assert!(
            o.stderr.contains(
                "enforcer: session refused: this connection already has 3 of 3 allowed sessions"
            ),
            "the reason reaches the channel: {o:?}"
        );
        assert_eq!(o.exit_signal.as_deref(), Some("KILL"), "{o:?}");
    }
    let refusals: Vec<_> = d
        .audit()
        .into_iter()
        .filter(|v| v["event"] == "session_refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    for r in &refusals {
        assert_eq!(r["reason"], "max_sessions_per_connection");
        assert_eq!(r["limit"], 3);
        assert_eq!(r["user"], ana.name.as_str());
    }
    // No refused session's command got as far as an exec that was not killed.
    assert!(
        d.audit()
            .iter()
            .filter(|v| v["event"] == "exec"
                && v["argv"][2]
                    .as_str()
                    .is_some_and(|c| c.starts_with("echo ran-")))
            .all(|v| v["reason"].is_null() || v["reason"] == "killed_at_exec_session_refused")
    );
    assert_eq!(
        d.status().dropped.values().sum::<u64>(),
        0,
        "{:?}",
        d.status().dropped
    );
}

#[test]
fn per_user_session_limit_spans_connections() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_sessions_per_user = 2\n");
    let bo = TestUser::create("sb");
    let sshd = TestSshd::start(d.pam(), &[&bo], "");
    let _first = HeldSsh::open(&sshd, &bo);
    let outcomes = runtime().block_on(async {
        let handle = russh_login(sshd.port, &bo.name, &bo.key).await.unwrap();
        russh_exec_all(
            &handle,
            &["echo one; sleep 2".into(), "echo two; sleep 2".into()],
        )
        .await
    });
    let ran = outcomes
        .iter()
        .filter(|o| o.stdout.contains("one") || o.stdout.contains("two"))
        .count();
    assert_eq!(ran, 1, "{outcomes:#?}");
    let refused = outcomes.iter().find(|o| o.stdout.is_empty()).unwrap();
    assert!(
        refused.stderr.contains(&format!(
            "user {} already has 2 of 2 allowed sessions",
            bo.name
        )),
        "{refused:?}"
    );
    let r = d.wait_audit("refusal", |v| v["event"] == "session_refused");
    assert_eq!(r["reason"], "max_sessions_per_user");
}

#[test]
fn a_double_forked_setsid_process_stays_in_its_session_and_dies_with_it() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let cy = TestUser::create("sc");
    let sshd = TestSshd::start(d.pam(), &[&cy], "");
    let marker = procs::shared_dir();
    let pidfile = marker.path().join("escaped.pid");
    // Subshell fork → setsid → exec: re-parented to init, a new POSIX session, no tty.
    let escape = format!(
        "(setsid sh -c 'echo $$ > {p}; exec sleep 600' < /dev/null > /dev/null 2>&1 &); echo enforcer-ready; exec sleep 600",
        p = pidfile.display()
    );
    let held = HeldSsh::try_open_cmd(sshd.ssh(&cy, &escape)).unwrap();
    let escaped = procs::read_pid(&pidfile);
    let stat = std::fs::read_to_string(format!("/proc/{escaped}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[1], "1", "re-parented to init");
    assert_eq!(fields[3], escaped.to_string(), "its own POSIX session");

    let sessions = sessions_of_only_conn(&d);
    assert_eq!(
        sessions.len(),
        1,
        "the escape did not start a new enforcer session: {sessions:#?}"
    );
    let s = &sessions[0];
    let pids: Vec<u32> = s["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert!(
        pids.contains(&escaped),
        "escaped pid {escaped} not under its session: {s}"
    );
    assert_eq!(s["kind"], "exec");
    assert!(s["processes"].as_u64().unwrap() >= 2);

    let id = s["id"].as_u64().unwrap().to_string();
    let out = d.ctl_ok(&["kill", "session", &id]);
    assert!(out.contains(&format!("killed session {id}")), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || !procs::alive(escaped)),
        "escaped process survived kill session"
    );
    let killed = d.wait_audit("kill", |v| v["event"] == "session_killed");
    assert_eq!(
        (killed["by_uid"].as_u64(), killed["session_id"].as_u64()),
        (Some(0), Some(id.parse().unwrap()))
    );
    assert!(killed["processes"].as_u64().unwrap() >= 2);
    drop(held);
}

#[test]
fn commands_are_logged_with_argv_cwd_and_exit_status() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let di = TestUser::create("sd");
    let sshd = TestSshd::start(d.pam(), &[&di], "");
    let out = run(sshd.ssh(
        &di,
        "cd /tmp && sh -c 'exit 7'; ls /nonexistent-enforcer-dir; true",
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sh = d.wait_audit("sh exec", |v| {
        v["event"] == "exec" && v["argv"] == serde_json::json!(["sh", "-c", "exit 7"])
    });
    assert_eq!(sh["cwd"], "/tmp");
    assert_eq!(sh["user"], di.name.as_str());
    assert_eq!(sh["uid"], di.uid);
    assert!(sh["session_id"].as_u64().unwrap() > 0);
    assert!(sh["ppid"].as_u64().unwrap() > 1);
    assert_eq!(sh["filename"], "/usr/bin/sh");
    let sh_exit = d.wait_audit("sh exit", |v| v["event"] == "exit" && v["pid"] == sh["pid"]);
    assert_eq!(sh_exit["exit_code"], 7);
    let ls = d.wait_audit("ls exec", |v| v["event"] == "exec" && v["argv"][0] == "ls");
    let ls_exit = d.wait_audit("ls exit", |v| v["event"] == "exit" && v["pid"] == ls["pid"]);
    assert_eq!(ls_exit["exit_code"], 2);
    let ended = d.wait_audit("end", |v| v["event"] == "session_ended");
    assert_eq!(ended["kind"], "exec");
    assert!(ended["commands"].as_u64().unwrap() >= 3);
}

#[test]
fn long_argv_is_cut_and_marked() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let ed = TestUser::create("se");
    let sshd = TestSshd::start(d.pam(), &[&ed], "");
    let long = "x".repeat(3000);
    assert!(
        run(sshd.ssh(&ed, &format!("/bin/echo {long} > /dev/null")))
            .status
            .success()
    );
    let echo = d.wait_audit("echo", |v| {
        v["event"] == "exec" && v["argv"][0] == "/bin/echo"
    });
    assert_eq!(echo["argv_truncated"], true);
    assert!(echo["argv"][1].as_str().unwrap().len() < 1024);
}

#[test]
fn a_thousand_short_commands_are_all_logged_or_counted() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let fy = TestUser::create("sf");
    let sshd = TestSshd::start(d.pam(), &[&fy], "");
    let out = run(sshd.ssh(
        &fy,
        "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done",
    ));
    assert!(out.status.success());
    let count = |d: &TestDaemon| {
        d.audit()
            .iter()
            .filter(|v| v["event"] == "exec" && v["argv"] == serde_json::json!(["/bin/true"]))
            .count() as u64
    };
    wait_until(Duration::from_secs(10), || count(&d) >= 1000);
    let logged = count(&d);
    let dropped: u64 = d.status().dropped.values().sum();
    assert!(
        logged + dropped >= 1000,
        "{logged} logged, {dropped} counted as dropped: {:?}",
        d.status().dropped
    );
    assert_eq!(
        logged,
        1000,
        "nothing should be lost at this rate (drops: {:?})",
        d.status().dropped
    );
}

#[test]
fn kill_connection_ends_everything_including_nohup() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let gi = TestUser::create("sg");
    let sshd = TestSshd::start(d.pam(), &[&gi], "");
    let marker = procs::shared_dir();
    let pidfile = marker.path().join("nohup.pid");
    let cmd = format!(
        "nohup sh -c 'echo $$ > {}; exec sleep 600' >/dev/null 2>&1 & echo enforcer-ready; exec sleep 600",
        pidfile.display()
    );
    let held = HeldSsh::try_open_cmd(sshd.ssh(&gi, &cmd)).unwrap();
    let nohup = procs::read_pid(&pidfile);
    let conn = d.sessions()[0]["id"].as_u64().unwrap();
    let monitor = d.sessions()[0]["monitor_pid"].as_u64().unwrap() as u32;
    d.ctl_ok(&["kill", "connection", &conn.to_string()]);
    assert!(wait_until(Duration::from_secs(5), || !procs::alive(nohup)
        && !procs::alive(monitor)));
    assert!(wait_until(Duration::from_secs(5), || d
        .sessions()
        .is_empty()));
    let closed = d.wait_audit("close", |v| v["event"] == "connection_closed");
    assert_eq!(closed["reason"], "killed");
    let killed = d.wait_audit("kill", |v| v["event"] == "connection_killed");
    assert_eq!(killed["by_uid"], 0);
    drop(held);
}

#[test]
fn session_tracking_survives_a_daemon_restart() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("[limits]\nmax_sessions_per_connection = 1\n");
    let ha = TestUser::create("sh");
    let sshd = TestSshd::start(d.pam(), &[&ha], "");
    let marker = procs::shared_dir();
    let go = marker.path().join("go");
    let pidfile = marker.path().join("late.pid");
    // After the restart the session forks a new process: it must still carry the identity.
    let cmd = format!(
        "echo enforcer-ready; while [ ! -e {go} ]; do sleep 0.1; done; sh -c 'echo $$ > {p}; exec sleep 600' & exec sleep 600",
        go = go.display(),
        p = pidfile.display()
    );
    let held = HeldSsh::try_open_cmd(sshd.ssh(&ha, &cmd)).unwrap();
    let before = sessions_of_only_conn(&d);
    d.restart();
    let after = sessions_of_only_conn(&d);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], before[0]["id"]);
    std::fs::write(&go, "").unwrap();
    let late = procs::read_pid(&pidfile);
    assert!(
        wait_until(Duration::from_secs(3), || {
            sessions_of_only_conn(&d)[0]["pids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_u64() == Some(late as u64))
        }),
        "process forked after the restart is not tracked"
    );
    let id = after[0]["id"].as_u64().unwrap().to_string();
    d.ctl_ok(&["kill", "session", &id]);
    assert!(wait_until(Duration::from_secs(5), || !procs::alive(late)));
    drop(held);
}

#[test]
fn a_refused_pty_session_shows_the_reason_on_the_terminal() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_sessions_per_user = 1\n");
    let jo = TestUser::create("sj");
    let sshd = TestSshd::start(d.pam(), &[&jo], "");
    let _held = HeldSsh::open(&sshd, &jo);
    let out = run(sshd.ssh_with(&jo, &["-tt"], "echo should-not-run"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("should-not-run"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "enforcer: session refused: user {} already has 1 of 1 allowed sessions",
            jo.name
        )),
        "the reason reaches the terminal: {stdout:?} / {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn client_address_comes_from_the_socket_even_when_rhost_is_a_name() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let ka = TestUser::create("sk");
    // UseDNS yes: PAM_RHOST becomes the peer's host name ("localhost").
    let sshd = TestSshd::start(d.pam(), &[&ka], "UseDNS yes\n");
    let _held = HeldSsh::open(&sshd, &ka);
    let c = &d.sessions()[0];
    assert_eq!(c["rhost"], "localhost", "{c}");
    assert_eq!(c["client"]["addr"], "127.0.0.1");
    assert_eq!(c["server"]["addr"], "127.0.0.1");
    assert_eq!(c["server"]["port"], sshd.port);
}

/// While enforcerd is down (here: killed), the pinned programs go on counting and enforcing: a
/// session over its connection's limit is stopped before it runs anything of the user's, and
/// the next daemon, reading what the kernel queued meanwhile, tells it why and ends it.
#[test]
fn session_limits_hold_while_enforcerd_is_down() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("[limits]\nmax_sessions_per_connection = 1\n");
    let kd = TestUser::create("sk");
    let sshd = TestSshd::start(d.pam(), &[&kd], "");
    let rt = runtime();
    let handle = rt
        .block_on(russh_login(sshd.port, &kd.name, &kd.key))
        .unwrap();
    // The connection table is saved within 200 ms of a change; a crash before that loses it.
    let table = d.dir.path().join("state/connections.json");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&table).is_ok_and(|t| t.contains(&kd.name))
    }));
    d.kill9();
    let commands: Vec<String> = (0..2).map(|i| format!("echo ran-{i}; sleep 4")).collect();
    let run = rt.spawn(async move { russh_exec_all(&handle, &commands).await });
    std::thread::sleep(Duration::from_secs(2));
    d.start_again();
    let live = sessions_of_only_conn(&d);
    assert_eq!(live.len(), 1, "sessions started while down: {live:#?}");
    let outcomes = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), run).await })
        .expect("the refused session was never ended after the restart")
        .unwrap();
    let ran = outcomes
        .iter()
        .filter(|o| o.stdout.contains("ran-"))
        .count();
    assert_eq!(
        ran, 1,
        "a session over the limit ran while enforcerd was down: {outcomes:#?}"
    );
    let refused = outcomes
        .iter()
        .find(|o| !o.stdout.contains("ran-"))
        .unwrap();
    assert_eq!(refused.exit_signal.as_deref(), Some("KILL"), "{refused:?}");
    assert!(d.continuity().0, "{:?}", d.continuity());
}
