//! What an operator sees: `enforcerctl status` (policy in force, what logins meet while the
//! daemon is down), `sessions` (idle clocks, lingering processes, `--user`, local times),
//! `history` (ended connections from the audit log), and what each SSH client shows of a
//! refusal — all against a real daemon and the real sshd.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use enforcer_tests::{
    TestDaemon, TestGroup, TestSshd, TestUser, procs, require_root,
    ssh::{HeldSsh, run, wait_until},
    users::unique_name,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table row of `text` whose first cell is `first`, as its cells.
fn row(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
}

/// An RFC 3339 time as `date` shows it in local time to the second: what tables must show.
fn local(rfc3339: &str) -> String {
    let out = Command::new("date")
        .args(["-d", rfc3339, "+%F %T"])
        .output()
        .unwrap();
    stdout(&out).trim().to_owned()
}

fn at(rfc3339: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(rfc3339.as_str().unwrap(), &Rfc3339).unwrap()
}

/// A PAM service file removed (by path) when dropped.
struct PamFile(std::path::PathBuf);

impl Drop for PamFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn status_shows_the_policy_in_force_and_what_logins_meet_while_enforcerd_is_down() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start(
        "[limits]\nmax_sessions_per_user = 3\n[idle]\ntimeout = \"10m\"\n\
         [[rules]]\nusers = [\"opsy\"]\nidle_timeout = \"5m\"\n",
    );
    let user = TestUser::create("vs");
    let sshd = TestSshd::start(d.pam(), &[&user], "");
    // A second service whose module line fails open, and one with a typo in its arguments.
    let open = PamFile(std::path::Path::new("/etc/pam.d").join(unique_name("vsopen")));
    std::fs::write(
        &open.0,
        "account [success=1 default=ignore] pam_succeed_if.so quiet service notin sshd\n\
         account required pam_enforcer.so socket=/run/enforcer/pam.sock fail=open\n\
         account required pam_enforcer.so fial=open\n",
    )
    .unwrap();

    let text = d.ctl_ok(&["status"]);
    assert_eq!(row(&text, "limits.max_sessions_per_user")[1], "3");
    assert_eq!(
        row(&text, "limits.max_connections_per_user")[1..],
        ["0", "(unlimited)"]
    );
    assert_eq!(row(&text, "idle.timeout")[1], "10m");
    assert_eq!(row(&text, "recording.enabled")[1], "true");
    assert_eq!(
        row(&text, "rules[0]")[1..].join(" "),
        "users opsy: idle_timeout 5m"
    );
    let pam_line = |file: &str, line: usize| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{file}:{line}:")))
            .unwrap_or_else(|| panic!("no fail mode for {file}:{line} in\n{text}"))
            .to_owned()
    };
    let sshd_pam = format!("/etc/pam.d/{}", sshd.service);
    assert!(
        pam_line(&sshd_pam, 2)
            .contains("fail=closed: SSH logins are REFUSED while enforcerd is down")
    );
    let open_file = open.0.display().to_string();
    assert!(pam_line(&open_file, 2).contains("ADMITTED UNCHECKED"));
    assert!(pam_line(&open_file, 3).contains("\"fial=open\": every SSH login is REFUSED"));

    let v = d.ctl_json(&["status"]);
    assert_eq!(v["policy"]["limits"]["max_sessions_per_user"], 3);
    assert_eq!(v["policy"]["idle"]["timeout"], "10m");
    assert_eq!(v["policy"]["rules"][0]["users"][0], "opsy");
    let hooks = v["pam_account_hooks"].as_array().unwrap();
    let hook = |file: &str| hooks.iter().find(|h| h["file"] == file).cloned();
    assert_eq!(hook(&sshd_pam).unwrap()["fail"], "closed");
    assert_eq!(hook(&open_file).unwrap()["fail"], "open");
    // Still RFC 3339 in JSON.
    assert!(at(&v["started_at"]) <= OffsetDateTime::now_utc());
}

/// Logs in and leaves a nohup'd process behind; returns its pid.
fn leave_behind(sshd: &TestSshd, user: &TestUser) -> u32 {
    let dir = procs::shared_dir();
    let file = dir.path().join("pid");
    let cmd = format!(
        "nohup sh -c 'echo $$ > {}; exec sleep 600' >/dev/null 2>&1 </dev/null &",
        file.display()
    );
    assert!(run(sshd.ssh(user, &cmd)).status.success());
    procs::read_pid(&file)
}

#[test]
fn sessions_show_idle_clocks_lingering_processes_local_times_and_filter_by_user() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"10m\"\n");
    let alice = TestUser::create("vsa");
    let bob = TestUser::create("vsb");
    let sshd = TestSshd::start(d.pam(), &[&alice, &bob], "");
    let left = leave_behind(&sshd, &alice);
    let _a = HeldSsh::open(&sshd, &alice);
    let _b = HeldSsh::open(&sshd, &bob);
    let alice_only = || d.ctl_json(&["sessions", "--user", &alice.name]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v = alice_only();
            let conns = v.as_array().unwrap();
            conns.iter().any(|c| c["state"] == "lingering")
                && conns
                    .iter()
                    .any(|c| c["state"] == "open" && c["idle_cut_at"].is_string())
        }),
        "{}",
        alice_only()
    );
    let v = alice_only();
    let conns = v.as_array().unwrap();
    assert!(
        conns.iter().all(|c| c["user"] == alice.name.as_str()),
        "{v}"
    );
    let open = conns.iter().find(|c| c["state"] == "open").unwrap();
    assert_eq!(
        at(&open["idle_cut_at"]) - at(&open["idle_since"]),
        time::Duration::minutes(10),
        "{open}"
    );

    let text = d.ctl_ok(&["sessions", "--user", &alice.name]);
    assert!(!text.contains(&bob.name), "{text}");
    let id = open["id"].to_string();
    let conn_row = row(&text, &id).join(" ");
    // SINCE in local time to the second, then IDLE with the time left.
    let since = local(open["since"].as_str().unwrap());
    assert!(conn_row.contains(&since), "{since:?} not in {conn_row:?}");
    assert!(
        conn_row.contains("(cut in 9m") || conn_row.contains("(cut in 10m"),
        "{conn_row}"
    );
    let lingering = text
        .lines()
        .find(|l| l.contains("lingering") && l.contains(&left.to_string()))
        .unwrap_or_else(|| panic!("lingering process {left} not listed:\n{text}"));
    assert!(
        lingering
            .split_whitespace()
            .any(|c| c.split(',').any(|p| p == left.to_string()))
    );

    // Unprivileged: only their own, whatever --user says.
    let out = d.ctl_as(&bob, &["sessions", "--user", &alice.name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no live connections\n");
}

#[test]
fn history_lists_ended_connections_to_root_and_auditors_only() {
    if !require_root() {
        return;
    }
    let auditors = TestGroup::create("vha");
    let d = TestDaemon::start(&format!(
        "[access]\nauditor_group = \"{}\"\n",
        auditors.name
    ));
    let alice = TestUser::create("vhu");
    let bob = TestUser::create("vhb");
    let auditor = TestUser::create("vhx");
    auditor.join_group(&auditors);
    let sshd = TestSshd::start(d.pam(), &[&alice, &bob], "");
    for _ in 0..2 {
        assert!(run(sshd.ssh(&alice, "true")).status.success());
    }
    assert!(run(sshd.ssh(&bob, "true")).status.success());
    assert!(wait_until(Duration::from_secs(10), || {
        d.audit()
            .iter()
            .filter(|v| v["event"] == "connection_closed")
            .count()
            == 3
    }));

    let v = d.ctl_json(&["history", "--user", &alice.name]);
    let h = v.as_array().unwrap();
    assert_eq!(h.len(), 2, "{v}");
    assert!(
        h[0]["conn_id"].as_u64() > h[1]["conn_id"].as_u64(),
        "newest first: {v}"
    );
    for e in h {
        assert_eq!(e["user"], alice.name.as_str());
        assert_eq!(e["reason"], "logout");
        assert_eq!(e["client"], "127.0.0.1");
        assert_eq!(e["identity"], alice.fingerprint().as_str());
        assert!(at(&e["login"]) <= at(&e["logout"]), "{e}");
    }
    let text = d.ctl_ok(&["history", "--since", "1h"]);
    assert_eq!(
        text.lines().count(),
        4,
        "header and three connections:\n{text}"
    );
    let newest = &h[0];
    let cells = row(&text, &alice.name).join(" ");
    assert!(
        cells.contains(&local(newest["logout"].as_str().unwrap())),
        "{cells}"
    );
    assert_eq!(
        d.ctl_ok(&["history", "--since", "2099-01-01"]),
        "no ended connections in the audit log\n"
    );
    let bad = d.ctl(&["history", "--since", "last week"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("yesterday"), "{}", stderr(&bad));

    // Auditors read it; other users are refused in one line, and the denial is audited.
    let out = d.ctl_as(&auditor, &["history", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let denied = d.ctl_as(&bob, &["history"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("permission denied"),
        "{}",
        stderr(&denied)
    );
    assert_eq!(stderr(&denied).lines().count(), 1);
    d.wait_audit("denial", |v| {
        v["event"] == "request_denied" && v["request"] == "history" && v["by_uid"] == bob.uid
    });
}

/// A client command for `program` (scp or sftp) as `user` against `sshd`, with `extra` options.
fn file_client(program: &str, sshd: &TestSshd, user: &TestUser, extra: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(&user.key)
        .args(extra)
        .args(["-P", &sshd.port.to_string()])
        .stdin(Stdio::null());
    c
}

#[test]
fn refusal_reasons_as_each_client_shows_them() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_sessions_per_user = 1\n");
    let user = TestUser::create("vr");
    let sshd = TestSshd::start(d.pam(), &[&user], "");
    let target = format!("{}@127.0.0.1", user.name);

    // A session refused by a limit: its reason is session output, shown even with -q.
    let held = HeldSsh::open(&sshd, &user);
    let why = format!(
        "enforcer: session refused: user {} already has 1 of 1 allowed sessions",
        user.name
    );
    for opts in [&[][..], &["-q"][..]] {
        let out = run(sshd.ssh_with(&user, opts, "true"));
        assert_eq!(out.status.code(), Some(255), "{opts:?}");
        assert!(
            stderr(&out).contains(&why),
            "ssh {opts:?}: {}",
            stderr(&out)
        );
    }
    // sftp is a subsystem: sshd discards a subsystem's stderr, so sftp (and scp, which uses
    // the SFTP protocol) only says the connection closed; the audit log has the reason.
    let out = file_client("sftp", &sshd, &user, &["-q"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        !stderr(&out).contains("enforcer:") && stderr(&out).contains("Connection closed"),
        "{}",
        stderr(&out)
    );
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || d
        .sessions()
        .is_empty()));

    // A login refused at PAM account: sshd sends the reason as the SSH banner, which OpenSSH
    // prints at LogLevel INFO (the default) and hides below it (-q).
    d.ctl_ok(&["lock", "user", &user.name, "--reason", "views test"]);
    let why = format!(
        "enforcer: login refused: account {} is locked: views test",
        user.name
    );
    let out = run(sshd.ssh(&user, "true"));
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains(&why), "{}", stderr(&out));
    let out = run(sshd.ssh_with(&user, &["-q"], "true"));
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr(&out),
        "",
        "ssh -q printed something: update README's table"
    );
    let dest = format!("{target}:/etc/hostname");
    let out = file_client("scp", &sshd, &user, &[])
        .args([&dest, "/dev/null"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains(&why), "scp: {}", stderr(&out));
    let out = file_client("sftp", &sshd, &user, &[])
        .arg(&target)
        .output()
        .unwrap();
    assert!(stderr(&out).contains(&why), "sftp: {}", stderr(&out));
    d.wait_audit("refusal", |v| {
        v["event"] == "connection_refused" && v["reason"] == "user_locked"
    });
}
