//! SSH connection control under the real sshd: pam_enforcer.so + enforcerd, end to end.

use std::{
    os::unix::net::UnixListener,
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Pam, TestDaemon, TestGroup, TestSshd, TestUser, procs, require_root,
    ssh::{HeldSsh, run, runtime, russh_login, wait_until},
};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn per_user_limit_refuses_the_third_login_with_the_message_and_a_close_frees_the_slot() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_connections_per_user = 2\n");
    let alice = TestUser::create("a");
    let bob = TestUser::create("b");
    let sshd = TestSshd::start(d.pam(), &[&alice, &bob], "");

    let first = HeldSsh::open(&sshd, &alice);
    let _second = HeldSsh::open(&sshd, &alice);
    let out = run(sshd.ssh(&alice, "true"));
    assert_eq!(out.status.code(), Some(255), "third login must fail");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "user {} already has 2 of 2 allowed SSH connections open",
            alice.name
        )),
        "{err}"
    );
    // Other users are not affected.
    assert!(run(sshd.ssh(&bob, "true")).status.success());

    let refused = d.wait_audit("refusal", |v| {
        v["event"] == "connection_refused" && v["user"] == alice.name.as_str()
    });
    assert_eq!(refused["reason"], "max_connections_per_user");
    assert_eq!(refused["client_addr"], "127.0.0.1");
    assert_eq!(refused["server_port"], sshd.port);
    assert!(refused["message"].as_str().unwrap().contains("2 of 2"));

    first.close();
    assert!(
        wait_until(Duration::from_secs(5), || run(sshd.ssh(&alice, "true"))
            .status
            .success()),
        "slot not released after disconnect:\n{}",
        d.log()
    );
    let closed = d.wait_audit("close", |v| {
        v["event"] == "connection_closed" && v["user"] == alice.name.as_str()
    });
    assert_eq!(closed["reason"], "logout");
    assert!(closed["duration_secs"].as_f64().unwrap() > 0.0);
}

#[test]
fn per_source_limit_counts_addresses_across_users() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_connections_per_source = 2\n");
    let users: Vec<TestUser> = (0..3).map(|_| TestUser::create("s")).collect();
    let refs: Vec<&TestUser> = users.iter().collect();
    let sshd = TestSshd::start(d.pam(), &refs, "");

    let _a = HeldSsh::open(&sshd, &users[0]);
    let _b = HeldSsh::open(&sshd, &users[1]);
    let out = run(sshd.ssh(&users[2], "true"));
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("2 of 2 allowed SSH connections from 127.0.0.1 are already open"),
        "{}",
        stderr(&out)
    );
    // The same user from another source address (127.0.0.2 is loopback too) is admitted.
    let out = run(sshd.ssh_with(&users[2], &["-b", "127.0.0.2"], "true"));
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = d.wait_audit("refusal", |v| v["event"] == "connection_refused");
    assert_eq!(refused["reason"], "max_connections_per_source");
}

#[test]
fn lock_refuses_with_its_reason_survives_restart_and_unlock_admits() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("");
    let carol = TestUser::create("c");
    let sshd = TestSshd::start(d.pam(), &[&carol], "");
    assert!(run(sshd.ssh(&carol, "true")).status.success());

    let out = d.ctl_ok(&["lock", "user", &carol.name, "--reason", "incident 7"]);
    assert!(out.contains("locked user"), "{out}");
    let locks = d.ctl_json(&["locks"]);
    assert_eq!(locks[0]["user"], carol.name.as_str());
    assert_eq!(locks[0]["reason"], "incident 7");
    assert_eq!(locks[0]["active"], true);
    assert!(locks[0]["by"].as_str().unwrap().contains("uid 0"));

    let out = run(sshd.ssh(&carol, "true"));
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains(&format!("account {} is locked: incident 7", carol.name)),
        "{}",
        stderr(&out)
    );

    d.restart();
    let out = run(sshd.ssh(&carol, "true"));
    assert_eq!(out.status.code(), Some(255), "lock lost across restart");

    d.ctl_ok(&["unlock", "user", &carol.name]);
    let out = run(sshd.ssh(&carol, "true"));
    assert!(out.status.success(), "{}", stderr(&out));
    let unlock = d.ctl(&["unlock", "user", &carol.name]);
    assert!(!unlock.status.success() && stderr(&unlock).contains("not locked"));

    let events: Vec<String> = d
        .audit()
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    for e in ["lock", "connection_refused", "unlock"] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    let lock = d.wait_audit("lock", |v| v["event"] == "lock");
    assert_eq!(
        (lock["by_uid"].as_u64(), lock["user"].as_str()),
        (Some(0), Some(carol.name.as_str()))
    );
}

#[test]
fn lock_with_ttl_expires_on_its_own() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let dave = TestUser::create("d");
    let sshd = TestSshd::start(d.pam(), &[&dave], "");
    let out = d.ctl_ok(&["lock", "user", &dave.name, "--ttl", "2s"]);
    assert!(out.contains("until"), "{out}");
    let refused = run(sshd.ssh(&dave, "true"));
    assert_eq!(refused.status.code(), Some(255));
    assert!(stderr(&refused).contains("(until "), "{}", stderr(&refused));
    std::thread::sleep(Duration::from_millis(2200));
    assert!(run(sshd.ssh(&dave, "true")).status.success());
    assert_eq!(
        d.ctl_json(&["locks"])[0]["active"],
        false,
        "expired lock is shown as such"
    );
}

#[test]
fn lock_files_dropped_by_hand_lock_and_garbage_still_locks() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let erin = TestUser::create("e");
    let sshd = TestSshd::start(d.pam(), &[&erin], "");
    let locks = d.dir.path().join("locks.d");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(
        locks.join(&erin.name),
        "reason = \"dropped by config management\"\n",
    )
    .unwrap();
    let out = run(sshd.ssh(&erin, "true"));
    assert!(
        stderr(&out).contains("dropped by config management"),
        "{}",
        stderr(&out)
    );
    std::fs::write(locks.join(&erin.name), "not = valid = toml").unwrap();
    assert_eq!(
        run(sshd.ssh(&erin, "true")).status.code(),
        Some(255),
        "unparseable lock must still lock"
    );
    assert!(
        d.ctl_json(&["locks"])[0]["error"]
            .as_str()
            .unwrap()
            .contains("locking anyway")
    );
    std::fs::remove_file(locks.join(&erin.name)).unwrap();
    assert!(run(sshd.ssh(&erin, "true")).status.success());
}

/// sshd with the module while the daemon is down or hung: fail=closed refuses, fail=open
/// admits, and neither holds the login longer than the module's timeout.
#[test]
fn unreachable_daemon_follows_the_fail_mode_within_the_timeout() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.sock");
    let hung = dir.path().join("hung.sock");
    // Accepts connections (kernel backlog) but never answers.
    let _listener = UnixListener::bind(&hung).unwrap();
    let user = TestUser::create("f");
    let timeout_ms = 1500u64;
    for (socket, hangs) in [(&absent, false), (&hung, true)] {
        for fail in ["closed", "open"] {
            let args = format!(
                "socket={} timeout_ms={timeout_ms} fail={fail}",
                socket.display()
            );
            let sshd = TestSshd::start(Pam::Enforcer(args), &[&user], "");
            let start = Instant::now();
            let out = run(sshd.ssh(&user, "true"));
            let took = start.elapsed();
            let what = format!(
                "fail={fail} with {} daemon",
                if hangs { "a hung" } else { "no" }
            );
            if fail == "closed" {
                assert_eq!(out.status.code(), Some(255), "{what}: must refuse");
                assert!(
                    stderr(&out).contains("session policy service is unavailable"),
                    "{what}: {}",
                    stderr(&out)
                );
            } else {
                assert!(out.status.success(), "{what}: must admit: {}", stderr(&out));
            }
            // acct_mgmt waits at most timeout_ms (open/close_session too, when they run).
            let hooks = if fail == "open" { 3 } else { 1 };
            let bound = Duration::from_millis(timeout_ms * hooks + 3000);
            assert!(took < bound, "{what}: login took {took:?}, bound {bound:?}");
            if hangs {
                assert!(
                    took >= Duration::from_millis(timeout_ms),
                    "{what}: gave up after {took:?}, before its timeout"
                );
            }
        }
    }
}

#[test]
fn crash_of_the_sshd_monitor_releases_the_slot() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_connections_per_user = 1\n");
    let gus = TestUser::create("g");
    let sshd = TestSshd::start(d.pam(), &[&gus], "");
    let held = HeldSsh::open(&sshd, &gus);
    assert_eq!(run(sshd.ssh(&gus, "true")).status.code(), Some(255));
    let sessions = d.sessions();
    assert_eq!(sessions.len(), 1);
    let monitor = sessions[0]["monitor_pid"].as_u64().unwrap() as u32;
    assert!(procs::alive(monitor));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || d.sessions().is_empty()),
        "slot kept after kill -9:\n{}",
        d.log()
    );
    let closed = d.wait_audit("close", |v| v["event"] == "connection_closed");
    assert_eq!(
        closed["reason"], "monitor_exited",
        "the kernel exit event, not the sweep, released it"
    );
    assert!(run(sshd.ssh(&gus, "true")).status.success());
    drop(held);
}

#[test]
fn fifty_concurrent_logins_at_limit_five_admit_exactly_five() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_connections_per_user = 5\n");
    let hal = TestUser::create("h");
    let sshd = TestSshd::start(d.pam(), &[&hal], "");
    let rt = runtime();
    let (admitted, refused) = rt.block_on(async {
        let logins = (0..50).map(|_| {
            let (port, user, key) = (sshd.port, hal.name.clone(), hal.key.clone());
            tokio::spawn(async move { russh_login(port, &user, &key).await })
        });
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for login in futures_join(logins.collect()).await {
            match login {
                Ok(handle) => admitted.push(handle),
                Err(why) => refused.push(why),
            }
        }
        (admitted, refused)
    });
    assert_eq!(
        admitted.len(),
        5,
        "refusals: {:?}",
        &refused[..refused.len().min(3)]
    );
    assert!(
        refused.iter().any(|r| r.contains("5 of 5 allowed")),
        "refused logins carry the message: {:?}",
        refused.first()
    );
    assert!(wait_until(Duration::from_secs(5), || d.sessions().len() == 5));
    let refusals = d
        .audit()
        .iter()
        .filter(|v| v["event"] == "connection_refused")
        .count();
    assert_eq!(refusals, 45);
    drop(admitted);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn sessions_and_audit_show_who_is_behind_the_key() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let ida = TestUser::create("i");
    let sshd = TestSshd::start(d.pam(), &[&ida], "");
    let held = HeldSsh::open(&sshd, &ida);
    let s = &d.sessions()[0];
    assert_eq!(s["user"], ida.name.as_str());
    assert_eq!(s["uid"], ida.uid);
    assert_eq!(s["state"], "open");
    assert_eq!(s["client"]["addr"], "127.0.0.1");
    assert!(s["client"]["port"].as_u64().unwrap() > 0);
    assert_eq!(s["server"]["port"], sshd.port);
    assert_eq!(s["service"], sshd.service.as_str());
    assert_eq!(s["auth"]["method"], "publickey");
    assert_eq!(s["auth"]["key_type"], "ssh-ed25519");
    assert_eq!(s["auth"]["key_fingerprint"], ida.fingerprint().as_str());
    assert!(procs::alive(s["monitor_pid"].as_u64().unwrap() as u32));
    let text = d.ctl_ok(&["sessions"]);
    assert!(
        text.contains(&ida.name) && text.contains(&ida.fingerprint()),
        "{text}"
    );

    let admitted = d.wait_audit("admission", |v| v["event"] == "connection_admitted");
    assert_eq!(admitted["key_fingerprint"], ida.fingerprint().as_str());
    assert_eq!(admitted["auth_method"], "publickey");
    assert_eq!(admitted["uid"], ida.uid);
    assert_eq!(admitted["monitor_pid"], s["monitor_pid"]);
    assert_eq!(admitted["client_port"], s["client"]["port"]);
    assert!(admitted["time"].as_str().unwrap().ends_with('Z'));
    held.close();
    assert!(wait_until(Duration::from_secs(5), || d
        .sessions()
        .is_empty()));
}

#[test]
fn certificate_logins_record_the_key_id() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let jo = TestUser::create("j");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success());
    let _cert = jo.certify(&ca, "jo@corp ticket-123");
    let extra = format!("TrustedUserCAKeys {}.pub\n", ca.display());
    // No authorized key: only the certificate can log in.
    let sshd = TestSshd::start(d.pam(), &[], &extra);
    let held = HeldSsh::try_open_cmd(sshd.ssh(&jo, "echo enforcer-ready; exec sleep 600"))
        .unwrap_or_else(|e| panic!("certificate login failed: {e}\n{}", sshd.log()));
    let s = &d.sessions()[0];
    assert_eq!(s["auth"]["key_type"], "ssh-ed25519-cert-v01@openssh.com");
    assert_eq!(s["auth"]["cert_key_id"], "jo@corp ticket-123");
    assert_eq!(s["auth"]["cert_serial"], 77);
    let admitted = d.wait_audit("admission", |v| v["event"] == "connection_admitted");
    assert_eq!(admitted["cert_key_id"], "jo@corp ticket-123");
    assert_eq!(admitted["cert_principals"], serde_json::json!([jo.name]));
    held.close();
}

#[test]
fn limits_keep_counting_across_a_daemon_restart() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("[limits]\nmax_connections_per_user = 1\n");
    let kim = TestUser::create("k");
    let sshd = TestSshd::start(d.pam(), &[&kim], "");
    let held = HeldSsh::open(&sshd, &kim);
    d.restart();
    assert_eq!(d.sessions().len(), 1, "connection table restored");
    assert_eq!(
        run(sshd.ssh(&kim, "true")).status.code(),
        Some(255),
        "limit forgotten across restart"
    );
    // The restarted daemon tracks the monitor again: a disconnect still frees the slot.
    held.close();
    assert!(wait_until(Duration::from_secs(5), || run(
        sshd.ssh(&kim, "true")
    )
    .status
    .success()));
}

#[test]
fn rules_override_limits_per_group() {
    if !require_root() {
        return;
    }
    let ops = TestGroup::create("ops");
    let d = TestDaemon::start(&format!(
        "[limits]\nmax_connections_per_user = 1\n[[rules]]\ngroups = [\"{}\"]\nmax_connections_per_user = 2\n",
        ops.name
    ));
    let lee = TestUser::create("l");
    let max = TestUser::create("m");
    lee.join_group(&ops);
    let sshd = TestSshd::start(d.pam(), &[&lee, &max], "");
    let _l1 = HeldSsh::open(&sshd, &lee);
    let _l2 = HeldSsh::open(&sshd, &lee);
    assert_eq!(
        run(sshd.ssh(&lee, "true")).status.code(),
        Some(255),
        "ops members get 2"
    );
    let _m1 = HeldSsh::open(&sshd, &max);
    assert_eq!(
        run(sshd.ssh(&max, "true")).status.code(),
        Some(255),
        "everyone else gets 1"
    );
}

#[test]
fn unprivileged_users_cannot_lock_and_see_only_their_own_connections() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let nia = TestUser::create("n");
    let oz = TestUser::create("o");
    let sshd = TestSshd::start(d.pam(), &[&nia, &oz], "");
    let _n = HeldSsh::open(&sshd, &nia);
    let _o = HeldSsh::open(&sshd, &oz);
    let ctl = |u: &TestUser, args: &[&str]| d.ctl_as(u, args);
    let out = ctl(&nia, &["lock", "user", &oz.name]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    let denied = d.wait_audit("denial", |v| v["event"] == "request_denied");
    assert_eq!(
        (denied["by_uid"].as_u64(), denied["request"].as_str()),
        (Some(nia.uid as u64), Some("lock"))
    );
    let out = ctl(&nia, &["sessions", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mine: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let users: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, [nia.name.as_str()]);
    assert_eq!(d.sessions().len(), 2, "root sees both");
}

/// Audit records also go to journald when its socket exists. This machine kind has no systemd,
/// so the test stands in for journald on its socket (removed afterwards, by path).
#[test]
fn audit_records_reach_journald_with_their_fields() {
    if !require_root() {
        return;
    }
    let socket = std::path::Path::new("/run/systemd/journal/socket");
    if socket.exists() {
        // A real journald runs here; it is not ours to intercept.
        eprintln!("SKIPPED: a real journald owns {}", socket.display());
        assert!(
            std::env::var_os("CI").is_none(),
            "CI machines of this kind have no journald"
        );
        return;
    }
    let dir = socket.parent().unwrap();
    let created_dir = !dir.exists();
    std::fs::create_dir_all(dir).unwrap();
    let journal = std::os::unix::net::UnixDatagram::bind(socket).unwrap();
    struct Cleanup(&'static std::path::Path, bool);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
            if self.1 {
                let _ = std::fs::remove_dir(self.0.parent().unwrap());
            }
        }
    }
    let _cleanup = Cleanup(socket, created_dir);
    journal
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let d = TestDaemon::start_opts("[limits]\nmax_connections_per_user = 1\n", true);
    assert_eq!(
        d.status()
            .features
            .iter()
            .find(|f| f.name == "journald")
            .map(|f| f.supported),
        Some(true)
    );
    let pia = TestUser::create("p");
    let sshd = TestSshd::start(d.pam(), &[&pia], "");
    let _held = HeldSsh::open(&sshd, &pia);
    assert_eq!(run(sshd.ssh(&pia, "true")).status.code(), Some(255));
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !seen
        .iter()
        .any(|e: &String| e.contains("ENFORCER_EVENT=connection_refused"))
    {
        let n = journal
            .recv(&mut buf)
            .expect("journald entry for the refusal");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let refused = seen
        .iter()
        .find(|e| e.contains("ENFORCER_EVENT=connection_refused"))
        .unwrap();
    for field in [
        format!("ENFORCER_USER={}", pia.name),
        "ENFORCER_REASON=max_connections_per_user".into(),
        "ENFORCER_CLIENT_ADDR=127.0.0.1".into(),
        format!("ENFORCER_SERVER_PORT={}", sshd.port),
        "SYSLOG_IDENTIFIER=enforcerd".into(),
        format!("MESSAGE=connection_refused user={}", pia.name),
    ] {
        assert!(
            refused.contains(&field),
            "{field} missing from journald entry:\n{refused}"
        );
    }
    assert!(
        seen.iter()
            .any(|e| e.contains("ENFORCER_EVENT=connection_admitted")
                && e.contains("ENFORCER_KEY_FINGERPRINT=SHA256:"))
    );
}
