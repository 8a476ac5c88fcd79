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
        ("enf_setsid", "tracepoint", "syscalls/sys_exit_setsid"),
        ("enf_chdir", "tracepoint", "syscalls/sys_enter_chdir"),
        ("enf_write", "tracepoint", "syscalls/sys_enter_write"),
        ("enf_read", "tracepoint", "syscalls/sys_enter_read"),
        ("enf_read_ret", "tracepoint", "syscalls/sys_exit_read"),
        ("enf_write_ret", "tracepoint", "syscalls/sys_exit_write"),
        ("enf_ioctl", "tracepoint", "syscalls/sys_enter_ioctl"),
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
    // The tracepoint data path must be what this kernel accepts.
    let tp = features.iter().find(|p| p["name"] == "tracepoint").unwrap();
    assert_eq!(tp["supported"], true);
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
        text.contains("enf_exec") && text.contains("attached") && text.contains("DROPPED"),
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

#[test]
fn sigterm_detaches_every_program_and_removes_the_socket() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("");
    let ids: Vec<u32> = d.status().programs.iter().filter_map(|p| p.id).collect();
    assert_eq!(ids.len(), 10, "every data-path program is attached");
    assert!(
        d.status()
            .programs
            .iter()
            .all(|p| p.state == ProgramState::Attached)
    );
    for id in &ids {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "program {id} should be loaded while the daemon runs"
        );
    }
    let st = d.stop();
    assert!(st.success(), "enforcerd exited with {st}:\n{}", d.log());
    for id in &ids {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "program {id} still loaded after SIGTERM:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(!d.socket.exists(), "socket file left behind");
    assert!(!d.pam_socket.exists(), "PAM socket file left behind");
    // Pins stay for the next start (the test harness removes them afterwards).
    assert!(d.pin_dir.join("ENF_TASKS").exists());
    assert!(d.log().contains("BPF programs detached"), "{}", d.log());
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
        err.contains("not running") && err.contains("start it with"),
        "{err}"
    );
}

#[test]
fn bad_config_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_connections_per_user = 2\nmax_sesions = 1\n",
    )
    .unwrap();
    let out = Command::new(bin("enforcerd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
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
