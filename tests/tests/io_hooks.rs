//! Where the kernel sees sshd's I/O and session starts (issue 12). By default: uprobes on sshd's
//! own calls, so a process outside every session runs no enforcer program on its reads and
//! writes. The syscall-tracepoint fallback still records, and says what it costs. An sshd under
//! another name is hooked when it brings its first connection; nothing else ever is.

use std::{io::Write, path::Path, process::Command, time::Duration};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    bpfstats::DaemonPrograms,
    casts::{ended_recording, play_raw},
    procs, require_root,
    ssh::{run, wait_until},
};

/// `dd bs=1` of `count` bytes: 2 × `count` read/write syscalls, by a process in no session.
fn dd(count: u32) {
    let st = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
        .arg(format!("count={count}"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs of each of `d`'s programs (by name) while `f` runs.
fn runs_during(d: &TestDaemon, f: impl FnOnce()) -> Vec<(String, u64)> {
    let ((), ran) = DaemonPrograms::of(d).measure(f);
    ran.into_iter().map(|(name, r)| (name, r.cnt)).collect()
}

fn feature(d: &TestDaemon, name: &str) -> serde_json::Value {
    let s = d.ctl_json(&["status"]);
    s["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no feature {name}: {s}"))
        .clone()
}

#[test]
fn a_process_outside_sessions_runs_no_enforcer_program_on_its_reads_and_writes() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let ran = runs_during(&d, || dd(200_000));
    // 400 000 syscalls. The I/O programs run only in sshd processes (other tests' sshds may
    // be busy meanwhile); the rest only on fork, exec and exit anywhere on the host.
    let io: u64 = ran
        .iter()
        .filter(|(n, _)| n.starts_with("enf_u_"))
        .map(|r| r.1)
        .sum();
    let total: u64 = ran.iter().map(|r| r.1).sum();
    assert!(
        io < 2_000,
        "sshd I/O programs ran for an untracked dd: {ran:?}"
    );
    assert!(
        total < 20_000,
        "programs ran per syscall of an untracked dd: {ran:?}"
    );
    assert!(
        ran.iter()
            .all(|(n, _)| !n.starts_with("enf_read") && !n.starts_with("enf_write")),
        "syscall tracepoints attached: {ran:?}"
    );
}

#[test]
fn the_syscall_fallback_records_and_says_that_every_process_pays() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[daemon]\nio_hooks = \"syscalls\"\n");
    let io = feature(&d, "io_hooks");
    assert_eq!(io["supported"], false, "{io}");
    assert!(
        io["detail"].as_str().unwrap().contains("every process"),
        "{io}"
    );
    // The same measurement as above sees this path's cost: one run per read and per write.
    let ran = runs_during(&d, || dd(100_000));
    let rw: u64 = ran
        .iter()
        .filter(|(n, _)| ["enf_read", "enf_write"].contains(&n.as_str()))
        .map(|r| r.1)
        .sum();
    assert!(rw >= 200_000, "{ran:?}");
    assert!(ran.iter().all(|(n, _)| !n.starts_with("enf_u_")), "{ran:?}");

    let u = TestUser::create("fb");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    assert!(
        run(sshd.ssh(&u, "echo fallback-$((6*7))-recorded"))
            .status
            .success()
    );
    let rec = ended_recording(&d, &u);
    let played = String::from_utf8(play_raw(&d, rec["id"].as_u64().unwrap())).unwrap();
    assert!(played.contains("fallback-42-recorded\n"), "{played:?}");
}

#[test]
fn an_sshd_under_another_name_is_hooked_when_it_brings_its_first_connection() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[daemon]\nsshd_binaries = []\n");
    let io = feature(&d, "io_hooks");
    assert!(io["detail"].as_str().unwrap().contains("none yet"), "{io}");

    // A connection whose root is not sshd (a stand-in shell) hooks nothing: a probe in another
    // program would cost every process that runs it.
    let u = TestUser::create("cp");
    let mut stand_in = Command::new("sleep").arg("600").spawn().unwrap();
    d.admit_stand_in(&u, stand_in.id());
    let io = feature(&d, "io_hooks");
    assert!(io["detail"].as_str().unwrap().contains("none yet"), "{io}");
    let _ = stand_in.kill();
    let _ = stand_in.wait();

    // A copy of sshd is another file: hooked when its first connection is admitted, before
    // sshd forks the process that moves the session's bytes.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sshd-copy");
    std::fs::copy("/usr/sbin/sshd", &copy).unwrap();
    let sshd = TestSshd::start_from(&copy, d.pam(), &[&u], "");
    assert!(
        run(sshd.ssh(&u, "echo copy-$((6*7))-recorded"))
            .status
            .success()
    );
    let rec = ended_recording(&d, &u);
    let played = String::from_utf8(play_raw(&d, rec["id"].as_u64().unwrap())).unwrap();
    assert!(played.contains("copy-42-recorded\n"), "{played:?}");
    let io = feature(&d, "io_hooks");
    assert_eq!(io["supported"], true, "{io}");
    assert!(
        io["detail"]
            .as_str()
            .unwrap()
            .contains(&copy.display().to_string()),
        "{io}"
    );
}

#[test]
fn a_program_that_calls_setsid_itself_starts_a_session_at_its_exec_within_the_limit() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[limits]\nmax_sessions_per_connection = 1\n");
    let u = TestUser::create("ss");
    let dir = tempfile::tempdir().unwrap();
    let p = |n: u32| dir.path().join(format!("leader{n}"));
    // A stand-in monitor whose children start two sessions with setsid(1): setsid() runs in
    // code no hook watches, so each session starts at the exec that follows. One fits.
    let script = format!(
        "read go; for n in 1 2; do (setsid sh -c \"echo \\$\\$ > {d}/leader$n; exec sleep 600\" \
         </dev/null >/dev/null 2>&1 &); done; exec sleep 600",
        d = dir.path().display()
    );
    let mut monitor = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    d.admit_stand_in(&u, monitor.id());
    monitor.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let started = |path: &Path| path.exists();
    assert!(
        wait_until(Duration::from_secs(10), || started(&p(1)) || started(&p(2))),
        "no session leader ran"
    );
    std::thread::sleep(Duration::from_millis(500));
    let ran: Vec<u32> = [1, 2]
        .into_iter()
        .filter(|n| started(&p(*n)))
        .map(|n| procs::read_pid(&p(n)))
        .collect();
    let sessions = d.sessions();
    for pid in &ran {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    procs::kill_tree(monitor.id());
    let _ = monitor.wait();
    assert_eq!(ran.len(), 1, "both sessions ran under a limit of one");
    let count: usize = sessions
        .iter()
        .map(|c| c["sessions"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(count, 1, "{sessions:#?}");
}
