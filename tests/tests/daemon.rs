//! enforcerd foundation, end to end: real BPF load/attach, status, shutdown.

use std::process::Command;

use enforcer_proto::ProgramState;
use enforcer_tests::{TestDaemon, bin, require_root};

#[test]
fn status_lists_attached_programs_probes_and_drop_counters() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let s = d.ctl_json(&["status"]);
    let programs = s["programs"].as_array().unwrap();
    for (name, kind, attach) in [
        ("enf_fork", "tp_btf", "sched_process_fork"),
        ("enf_exec", "tracepoint", "sched/sched_process_exec"),
        ("enf_exit", "tracepoint", "sched/sched_process_exit"),
        ("enf_u_read", "uprobe", "read@plt in /usr/sbin/sshd"),
        ("enf_u_read_ret", "uretprobe", "read@plt in /usr/sbin/sshd"),
        ("enf_u_write", "uprobe", "write@plt in /usr/sbin/sshd"),
        (
            "enf_u_write_ret",
            "uretprobe",
            "write@plt in /usr/sbin/sshd",
        ),
        ("enf_u_ioctl", "uprobe", "ioctl@plt in /usr/sbin/sshd"),
        ("enf_u_setsid", "uretprobe", "setsid@plt in /usr/sbin/sshd"),
        ("enf_u_chdir", "uprobe", "chdir@plt in /usr/sbin/sshd"),
        ("enf_u_connect", "uprobe", "connect@plt in /usr/sbin/sshd"),
        ("enf_u_accept", "uretprobe", "accept@plt in /usr/sbin/sshd"),
        ("enf_u_close", "uprobe", "close@plt in /usr/sbin/sshd"),
    ] {
        let p = programs
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {s}"));
        assert_eq!(p["type"], kind);
        assert_eq!(p["attach_point"], attach);
        assert_eq!(p["state"]["state"], "attached", "{p}");
        assert!(p["id"].as_u64().unwrap() > 0);
    }
    let features = s["features"].as_array().unwrap();
    for f in [
        "fentry",
        "lsm",
        "tp_btf",
        "tracepoint",
        "cgroup_sock_addr",
        "cgroup_skb",
        "bpf_send_signal",
        "uprobe",
        "io_hooks",
    ] {
        let probe = features
            .iter()
            .find(|p| p["name"] == f)
            .unwrap_or_else(|| panic!("probe {f} missing"));
        assert!(
            probe["supported"].is_boolean() && probe["detail"].as_str().unwrap().len() > 3,
            "{probe}"
        );
    }
    // The tracepoint data path must be what this kernel accepts, and sshd's I/O is hooked in
    // sshd alone: no syscall tracepoint is attached.
    let tp = features.iter().find(|p| p["name"] == "tracepoint").unwrap();
    assert_eq!(tp["supported"], true);
    assert!(
        !tp["detail"].as_str().unwrap().contains("syscalls/"),
        "{tp}"
    );
    let io = features.iter().find(|p| p["name"] == "io_hooks").unwrap();
    assert_eq!(io["supported"], true, "{io}");
    assert!(
        programs
            .iter()
            .all(|p| !p["attach_point"].as_str().unwrap().starts_with("syscalls/")),
        "{s}"
    );
    let dropped = s["dropped"].as_object().unwrap();
    for reason in [
        "drop_ringbuf_full",
        "drop_tasks_map_full",
        "drop_read_failed",
        "drop_daemon_backlog",
        "drop_signal_failed",
    ] {
        assert!(
            dropped[reason].is_u64(),
            "drop reason {reason} missing: {s}"
        );
    }
    // The state actor times its periodic jobs.
    let sweeps = s["sweeps"].as_array().unwrap();
    for (name, every) in [("idle_check", 250), ("monitor_sweep", 5000)] {
        let w = sweeps
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("sweep {name} missing: {s}"));
        assert_eq!(w["every_ms"], every);
        for field in [
            "runs",
            "last_us",
            "max_us",
            "total_us",
            "last_cpu_us",
            "max_cpu_us",
            "total_cpu_us",
        ] {
            assert!(w[field].is_u64(), "{name}.{field}: {w}");
        }
    }
    let maps = s["maps"].as_array().unwrap();
    let tasks = maps.iter().find(|m| m["name"] == "ENF_TASKS").unwrap();
    assert_eq!(tasks["max_entries"], 65536);
    assert!(tasks["entries"].is_u64());
    for m in ["ENF_CONNS", "ENF_USERS", "ENF_EVENTS", "ENF_COUNTERS"] {
        assert!(maps.iter().any(|x| x["name"] == m), "map {m} missing");
    }
    // Identity maps are pinned (they survive a restart), in this daemon's own directory.
    assert!(d.pin_dir.join("ENF_TASKS").exists());

    // And the human form shows the same programs.
    let text = d.ctl_ok(&["status"]);
    assert!(
        text.contains("enf_exec")
            && text.contains("attached")
            && text.contains("DROPPED")
            && text.contains("idle_check"),
        "{text}"
    );
}

#[test]
fn execs_on_the_host_reach_the_daemon() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let before = d.status().events["exec_seen"];
    for _ in 0..50 {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    let after = d.status().events["exec_seen"];
    assert!(
        after >= before + 50,
        "exec_seen went from {before} to {after}"
    );
}

fn loaded(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

/// The programs are pinned: SIGTERM (restart, upgrade) and a crash leave them attached, the
/// next daemon adopts them, and only `enforcerd --detach` (uninstall) removes them.
#[test]
fn programs_stay_attached_across_sigterm_and_kill_9_until_detach() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("");
    let ids: Vec<u32> = d.status().programs.iter().filter_map(|p| p.id).collect();
    // fork, exec, exit, signal_generate and the 10 uprobes on sshd's calls.
    assert_eq!(ids.len(), 14, "every data-path program is attached");
    assert!(
        d.status()
            .programs
            .iter()
            .all(|p| p.state == ProgramState::Attached)
    );
    assert!(ids.iter().all(|id| loaded(*id)));
    let (continuous, why) = d.continuity();
    assert!(!continuous && why.contains("no pinned programs"), "{why}");

    let st = d.stop();
    assert!(st.success(), "enforcerd exited with {st}:\n{}", d.log());
    assert!(!d.socket.exists(), "socket file left behind");
    assert!(!d.pam_socket.exists(), "PAM socket file left behind");
    for id in &ids {
        assert!(loaded(*id), "program {id} detached by SIGTERM");
    }
    assert!(
        d.log().contains("BPF programs stay attached"),
        "{}",
        d.log()
    );
    d.start_again();
    let again: Vec<u32> = d.status().programs.iter().filter_map(|p| p.id).collect();
    assert_eq!(again, ids, "the running programs are adopted, not replaced");
    assert!(d.continuity().0, "{:?}", d.continuity());

    d.kill9();
    for id in &ids {
        assert!(loaded(*id), "program {id} detached by a crash");
    }
    d.start_again();
    assert_eq!(
        d.status()
            .programs
            .iter()
            .filter_map(|p| p.id)
            .collect::<Vec<_>>(),
        ids
    );
    assert!(d.continuity().0, "{:?}", d.continuity());

    d.stop();
    let out = Command::new(enforcer_tests::bin("enforcerd"))
        .arg("--config")
        .arg(&d.config_path)
        .arg("--detach")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!d.pin_dir.exists(), "--detach removes the pin directory");
    // The kernel frees detached programs asynchronously.
    let gone = enforcer_tests::ssh::wait_until(std::time::Duration::from_secs(10), || {
        ids.iter().all(|id| !loaded(*id))
    });
    assert!(gone, "programs still loaded after --detach");
}

/// Another build (here: other load settings, same map layouts) replaces the pinned programs:
/// the new ones are attached, take over through ENF_GEN, then the old ones are detached. Live
/// sessions keep their kernel identity and counts; status calls that continuous.
#[test]
fn another_build_replaces_the_pinned_programs_without_losing_sessions() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("");
    let rb = enforcer_tests::TestUser::create("db");
    let sshd = enforcer_tests::TestSshd::start(d.pam(), &[&rb], "");
    let held = enforcer_tests::ssh::HeldSsh::open(&sshd, &rb);
    let old: Vec<u32> = d.status().programs.iter().filter_map(|p| p.id).collect();
    d.stop();
    let mut config: toml::Table = std::fs::read_to_string(&d.config_path)
        .unwrap()
        .parse()
        .unwrap();
    config["recording"]
        .as_table_mut()
        .unwrap()
        .insert("mask_echo_off_input".into(), false.into());
    std::fs::write(&d.config_path, toml::to_string(&config).unwrap()).unwrap();
    d.start_again();
    let new: Vec<u32> = d.status().programs.iter().filter_map(|p| p.id).collect();
    assert_eq!(new.len(), 14);
    assert!(new.iter().all(|id| !old.contains(id)), "{old:?} {new:?}");
    let (continuous, why) = d.continuity();
    assert!(continuous && why.contains("another build"), "{why}");
    let gone = enforcer_tests::ssh::wait_until(std::time::Duration::from_secs(10), || {
        old.iter().all(|id| !loaded(*id))
    });
    assert!(gone, "the old generation is still loaded");
    let generations = std::fs::read_dir(&d.pin_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("links-"))
        .count();
    assert_eq!(generations, 1);
    // The held connection is still tracked across the replacement.
    let conns = d.sessions();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    drop(held);
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let out = Command::new(bin("enforcerd"))
        .arg("--config")
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another enforcerd already serves"), "{err}");
    // The first one is unharmed.
    d.status();
}

#[test]
fn enforcerctl_without_a_daemon_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = Command::new(bin("enforcerctl"))
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("not running") && err.contains("start it with `systemctl start enforcerd`"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn argument_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    for args in [
        &["status", "--bogus"][..],
        &["lock", "user"],
        &["statsu"],
        &[],
    ] {
        let out = Command::new(bin("enforcerctl"))
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with("enforcerctl: "), "{err}");
        assert!(
            err.contains("--help`"),
            "{args:?}: says where the help is: {err}"
        );
    }
    let out = Command::new(bin("enforcerd"))
        .arg("--bogus")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "enforcerd too: {err}");
}

#[test]
fn bad_config_names_the_key_and_line() {
    let (ok, err) = enforcer_tests::daemon::check_config(
        "[limits]\nmax_connections_per_user = 2\nmax_sesions = 1\n",
    );
    assert!(!ok);
    assert!(
        err.contains("max_sesions") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn shipped_example_config_passes_check_config() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/enforcer.toml");
    let out = Command::new(bin("enforcerd"))
        .arg("--config")
        .arg(&example)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config OK");
}

#[test]
fn enforcerd_refuses_to_run_unprivileged() {
    if !require_root() {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("enforcerd"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
}
