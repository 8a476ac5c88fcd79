//! Config reload end to end (real daemon, real sshd): `enforcerctl reload` and SIGHUP apply a
//! new file to live connections without dropping them, refuse a bad one whole, and audit both.

use std::{
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, require_root,
    ssh::{PtySsh, runtime, russh_exec_all, russh_login, wait_until},
};
use nix::{sys::signal::Signal, unistd::Pid};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `config_reloaded` / `config_reload_failed` records so far.
fn reloads(d: &TestDaemon) -> Vec<serde_json::Value> {
    d.audit()
        .into_iter()
        .filter(|v| {
            v["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("config_reload"))
        })
        .collect()
}

fn change<'a>(rec: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    rec["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {rec:#}"))
        .iter()
        .find(|c| c["key"] == key)
        .unwrap_or_else(|| panic!("{key} not among the changes of {rec:#}"))
}

#[test]
fn a_lowered_idle_timeout_cuts_a_live_session_after_enforcerctl_reload() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"10m\"\nwarn_before = \"0\"\n");
    let ru = TestUser::create("ra");
    let sshd = TestSshd::start(d.pam(), &[&ru], "");
    let mut pty = PtySsh::open(&sshd, &ru);
    let idle_from = Instant::now();
    let conn_id = d.sessions()[0]["id"].clone();
    std::thread::sleep(Duration::from_secs(1));
    d.edit_config("[idle]\ntimeout = \"3s\"\n");
    let out = d.ctl_ok(&["reload"]);
    assert!(
        out.starts_with(&format!("reloaded {}: 1 change\n", d.config_path.display())),
        "{out}"
    );
    assert!(out.contains("  idle.timeout: \"10m\" → \"3s\""), "{out}");
    assert!(pty.is_open(), "the reload itself cut the session");
    assert_eq!(d.sessions()[0]["id"], conn_id, "the connection was kept");
    assert!(
        pty.wait_closed(Duration::from_secs(5)),
        "not cut under the new timeout: {}",
        pty.output()
    );
    let cut = idle_from.elapsed();
    assert!(
        cut >= Duration::from_millis(2500) && cut <= Duration::from_millis(5000),
        "cut {cut:?} after the last keystroke, new timeout 3s"
    );
    assert!(
        pty.output().contains("(limit 3s)"),
        "the user is told the new limit: {}",
        pty.output()
    );
    let rec = d.wait_audit("reloaded", |v| v["event"] == "config_reloaded");
    assert_eq!(rec["trigger"], "enforcerctl");
    assert_eq!(rec["by_uid"], 0);
    assert_eq!(rec["config_path"], d.config_path.display().to_string());
    let c = change(&rec, "idle.timeout");
    assert_eq!(
        (&c["old"], &c["new"]),
        (&"\"10m\"".into(), &"\"3s\"".into())
    );
    let idle = d.wait_audit("idle cut", |v| v["event"] == "idle_timeout");
    assert_eq!(idle["conn_id"], conn_id);
}

#[test]
fn lowered_session_limits_apply_to_new_channels_of_a_live_connection() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let rb = TestUser::create("rb");
    let sshd = TestSshd::start(d.pam(), &[&rb], "");
    let rt = runtime();
    let handle = Arc::new(
        rt.block_on(russh_login(sshd.port, &rb.name, &rb.key))
            .unwrap(),
    );
    // Two sessions that outlive both reloads.
    let long = rt.spawn({
        let handle = handle.clone();
        async move {
            let commands = [
                "echo long-a; sleep 12".into(),
                "echo long-b; sleep 12".into(),
            ];
            russh_exec_all(&handle, &commands).await
        }
    });
    assert!(
        wait_until(Duration::from_secs(5), || d
            .sessions()
            .first()
            .is_some_and(|c| c["sessions"].as_array().unwrap().len() == 2)),
        "{:#?}",
        d.sessions()
    );
    let conn_id = d.sessions()[0]["id"].clone();

    // Per connection: 2 live + at most 1 more.
    d.edit_config("[limits]\nmax_sessions_per_connection = 3\n");
    d.ctl_ok(&["reload"]);
    let new: Vec<String> = (0..3).map(|i| format!("echo new-{i}; sleep 1")).collect();
    let outcomes = rt.block_on(russh_exec_all(&handle, &new));
    let ran = outcomes
        .iter()
        .filter(|o| o.stdout.contains("new-"))
        .count();
    assert_eq!(ran, 1, "{outcomes:#?}");
    assert!(
        outcomes.iter().any(|o| o.stderr.contains(
            "enforcer: session refused: this connection already has 3 of 3 allowed sessions"
        )),
        "{outcomes:#?}"
    );

    // Per user, through a rule: 2 live, limit 2.
    d.edit_config(&format!(
        "[[rules]]\nusers = [\"{}\"]\nmax_sessions_per_user = 2\n",
        rb.name
    ));
    let out = d.ctl_ok(&["reload"]);
    assert!(
        out.contains("rules[0].max_sessions_per_user: (unset) → 2"),
        "{out}"
    );
    let outcomes = rt.block_on(russh_exec_all(&handle, &["echo late; sleep 1".into()]));
    assert!(!outcomes[0].stdout.contains("late"), "{outcomes:#?}");
    assert!(
        outcomes[0].stderr.contains(&format!(
            "user {} already has 2 of 2 allowed sessions",
            rb.name
        )),
        "{outcomes:#?}"
    );
    let refused = d.wait_audit("user refusal", |v| {
        v["event"] == "session_refused" && v["reason"] == "max_sessions_per_user"
    });
    assert_eq!(refused["limit"], 2);

    // The sessions that were live before the reloads ran to their end, on the same connection.
    let long = rt.block_on(long).unwrap();
    for o in &long {
        assert!(o.stdout.contains("long-"), "{long:#?}");
        assert_eq!(o.exit_status, Some(0), "{long:#?}");
    }
    assert_eq!(d.sessions()[0]["id"], conn_id);
    assert_eq!(reloads(&d).len(), 2);
}

#[test]
fn a_bad_config_is_refused_whole_audited_and_the_running_one_stays() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_connections_per_user = 1\n");
    let rc = TestUser::create("rc");
    let sshd = TestSshd::start(d.pam(), &[&rc], "");
    // With one connection open, is a second one admitted? (Each check starts from none.)
    let second_login_admitted = || {
        assert!(wait_until(Duration::from_secs(10), || d
            .sessions()
            .is_empty()));
        runtime().block_on(async {
            let _first = russh_login(sshd.port, &rc.name, &rc.key).await.unwrap();
            russh_login(sshd.port, &rc.name, &rc.key).await.is_ok()
        })
    };
    assert!(!second_login_admitted());
    let good = std::fs::read_to_string(&d.config_path).unwrap();

    // Not TOML enforcer knows: the key and line are named, the running config stays.
    d.edit_config("[limits]\nmax_conections_per_user = 5\n");
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("max_conections_per_user") && err.contains("the running config stays"),
        "{err}"
    );
    let rec = d.wait_audit("failed reload", |v| v["event"] == "config_reload_failed");
    assert_eq!(rec["reason"], "invalid_config");
    assert_eq!(rec["by_uid"], 0);
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .contains("max_conections_per_user")
    );

    // Valid, but with a key only a restart applies: nothing of it is applied.
    std::fs::write(&d.config_path, &good).unwrap();
    d.edit_config(
        "[limits]\nmax_connections_per_user = 5\n[daemon]\nring_buffer_bytes = 8388608\n",
    );
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "daemon.ring_buffer_bytes (4194304 → 8388608) cannot change while enforcerd runs"
        ) && err.contains("systemctl restart enforcerd"),
        "{err}"
    );
    assert!(
        !second_login_admitted(),
        "the refused file's limit was applied"
    );
    let rec = d.wait_audit("needs restart", |v| v["reason"] == "needs_restart");
    assert_eq!(rec["event"], "config_reload_failed");
    let keys: Vec<&str> = rec["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["daemon.ring_buffer_bytes"]);

    // Only root may reload; a denial is audited.
    let out = d.ctl_as(&rc, &["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    d.wait_audit("denied reload", |v| {
        v["event"] == "request_denied" && v["request"] == "reload"
    });

    // The same file without the restart-only key applies.
    d.edit_config("[daemon]\nring_buffer_bytes = 4194304\n");
    let out = d.ctl_ok(&["reload"]);
    assert!(
        out.contains("limits.max_connections_per_user: 1 → 5"),
        "{out}"
    );
    assert!(second_login_admitted());
}

#[test]
fn sighup_reloads_the_same_way_and_survives_a_bad_file() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"10m\"\nwarn_before = \"0\"\n");
    let rd = TestUser::create("rd");
    let sshd = TestSshd::start(d.pam(), &[&rd], "");
    let hup = || nix::sys::signal::kill(Pid::from_raw(d.pid() as i32), Signal::SIGHUP).unwrap();

    // A broken file: audited, the daemon runs on as it was.
    let good = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(&d.config_path, "[idle\n").unwrap();
    hup();
    let rec = d.wait_audit("failed reload", |v| v["event"] == "config_reload_failed");
    assert_eq!(rec["trigger"], "sighup");
    assert_eq!(rec["reason"], "invalid_config");
    assert!(rec.get("by_uid").is_none(), "{rec:#}");
    d.status();

    std::fs::write(&d.config_path, &good).unwrap();
    let mut pty = PtySsh::open(&sshd, &rd);
    let idle_from = Instant::now();
    d.edit_config("[idle]\ntimeout = \"3s\"\n");
    hup();
    let rec = d.wait_audit("reload", |v| v["event"] == "config_reloaded");
    assert_eq!(rec["trigger"], "sighup");
    assert_eq!(change(&rec, "idle.timeout")["new"], "\"3s\"");
    assert!(
        pty.wait_closed(Duration::from_secs(6)),
        "not cut under the new timeout: {}",
        pty.output()
    );
    let cut = idle_from.elapsed();
    assert!(
        cut >= Duration::from_millis(2500) && cut <= Duration::from_millis(5000),
        "cut {cut:?} after the last keystroke"
    );
    d.status();
}

#[test]
fn access_and_lock_directory_changes_apply_without_a_restart() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let re = TestUser::create("re");
    let auditors = enforcer_tests::TestGroup::create("rg");
    re.join_group(&auditors);
    let sshd = TestSshd::start(d.pam(), &[&re], "");
    assert_eq!(
        d.ctl_as(&re, &["locks"]).status.code(),
        Some(1),
        "not an auditor yet"
    );

    let moved = d.dir.path().join("locks.moved");
    std::fs::create_dir_all(&moved).unwrap();
    d.edit_config(&format!(
        "[access]\nauditor_group = \"{}\"\n[locks]\ndir = \"{}\"\n",
        auditors.name,
        moved.display()
    ));
    let out = d.ctl_ok(&["reload"]);
    assert!(
        out.contains("access.auditor_group") && out.contains("locks.dir"),
        "{out}"
    );
    let out = d.ctl_as(&re, &["locks"]);
    assert!(
        out.status.success(),
        "auditor after the reload: {}",
        stderr(&out)
    );

    // A lock dropped into the new directory refuses the login.
    std::fs::write(moved.join(&re.name), "reason = \"moved dir\"\n").unwrap();
    let out = enforcer_tests::ssh::run(sshd.ssh(&re, "true"));
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("moved dir"), "{}", stderr(&out));
}
