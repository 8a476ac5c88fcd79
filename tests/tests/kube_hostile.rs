//! A local user against the exec hold. Found by reading the kernel side: any program named
//! `runc` run with an `exec` argument was taken for containerd's runc, and every task it
//! forked was marked in an LRU map of 8 192 entries — so an unprivileged user with a fake
//! `runc` and thousands of threads could fill the map and crowd out genuine runc marks, and
//! real execs would run before enforcerd decided on them (before the fix: 7 977 of the user's
//! 9 001 tasks marked, the map full). Root in a pod (uid 0 on the host without a user
//! namespace) could do the same (found by review). Only the host's root's runc, in the host's
//! pid namespace, is marked now.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
};

use enforcer_tests::{
    TestUser,
    containerd::containerd_installed,
    exec_stream::ExecStream,
    kube_bed::{Bed, T},
    require_root,
    ssh::wait_until,
};

/// More tasks than `ENF_RUNC_EXECS` holds.
const THREADS: usize = 9_000;

/// Task ids in the pinned `ENF_RUNC_EXECS` of the daemon whose pins are in `pin_dir`.
fn marked_tasks(pin_dir: &Path) -> Vec<u32> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("ENF_RUNC_EXECS"))
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool map dump: {out:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .iter()
        .map(|e| {
            // Without BTF for the map, keys are byte strings ("0x2a", …), little endian.
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .unwrap_or_else(|| panic!("key of {e}"))
                .iter()
                .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16))
                .collect::<Result<_, _>>()
                .unwrap();
            u32::from_le_bytes(bytes[..4].try_into().unwrap())
        })
        .collect()
}

#[test]
fn a_users_fake_runc_marks_nothing_and_real_execs_stay_held() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("fakerunc");
    let d = bed.daemon_connected("max_exec_sessions_per_pod = 1\n");
    let user = TestUser::create("frunc");
    let (dir, runc) = fake_runc();
    let (mut fake, tids) = start_fake(user.command(&runc), |pid| pid);
    assert_no_marks(&d, &tids);

    // With the user's tasks all alive, the hold works as ever: a refused exec's command never
    // runs, an admitted one runs once decided.
    let first = bed.shell();
    let held_before = d.status().events["kube_execs_held"];
    bed.check_refusals_never_run(&d, first, "/tmp/ran-fake-runc", 1);
    assert!(
        d.status().events["kube_execs_held"] > held_before,
        "{}",
        d.ctl_ok(&["status"])
    );
    drop(fake.stdin.take());
    assert!(fake.wait().unwrap().success());
    drop(dir);
}

/// Root in a container without a user namespace is uid 0 on the host as well: the same fake,
/// run as root inside the pod's pid namespace, marks nothing either.
#[test]
fn root_in_a_pod_cannot_fake_runc_either() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("podrunc");
    let d = bed.daemon_connected("");
    let (dir, runc) = fake_runc();
    let mut nsenter = Command::new("nsenter");
    nsenter
        .arg("-t")
        .arg(bed.main_pid.to_string())
        .args(["--pid", "--"])
        .arg(&runc);
    // nsenter forks into the namespace: the fake is its child.
    let (mut fake, tids) = start_fake(nsenter, |nsenter_pid| {
        std::fs::read_to_string(format!("/proc/{nsenter_pid}/task/{nsenter_pid}/children"))
            .unwrap()
            .split_whitespace()
            .next()
            .expect("nsenter's child")
            .parse()
            .unwrap()
    });
    assert_no_marks(&d, &tids);
    drop(fake.stdin.take());
    assert!(fake.wait().unwrap().success());
    drop(dir);
}

/// A directory anyone may enter with the fake runc in it, named `runc`.
fn fake_runc() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("enf-fake-runc-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runc = dir.path().join("runc");
    std::fs::copy(env!("CARGO_BIN_EXE_enf-fake-runc"), &runc).unwrap();
    std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, runc)
}

/// Starts `cmd` (ending in the fake runc) with `runc`'s arguments and [`THREADS`] threads; once
/// they are all up, returns it with every task id of the fake (whose host pid `host_pid` finds
/// from the spawned process's).
fn start_fake(
    mut cmd: Command,
    host_pid: impl Fn(u32) -> u32,
) -> (std::process::Child, std::collections::HashSet<u32>) {
    let mut fake = cmd
        .args(["--root", "/run/containerd/runc/k8s.io", "exec"])
        .arg(THREADS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(fake.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("ready "), "fake runc said {ready:?}");
    let pid = host_pid(fake.id());
    let tids: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(tids.len() > THREADS, "{} tasks", tids.len());
    (fake, tids)
}

/// None of `tids` is marked as a runc exec's in `d`'s kernel maps.
fn assert_no_marks(d: &enforcer_tests::TestDaemon, tids: &std::collections::HashSet<u32>) {
    let marked = marked_tasks(&d.pin_dir);
    let theirs = marked.iter().filter(|t| tids.contains(t)).count();
    assert_eq!(
        theirs,
        0,
        "{theirs} of the fake's {} tasks marked as runc's ({} marks in all)",
        tids.len(),
        marked.len()
    );
}

/// Found by review: the hold is a SIGSTOP, and a process of the pod that may signal the command
/// ends it — an admitted exec running `kill -CONT -1` in a loop resumed every held command at
/// once, so a refused one ran and what it forked in the background (re-parented to the
/// container's init) was never followed and outlived the refusal. A held command resumed that
/// way is now killed when it forks or execs, until enforcerd lets it go.
#[test]
fn a_pod_that_resumes_held_commands_gains_nothing() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("sigcont");
    let d = bed.daemon_connected("max_exec_sessions_per_pod = 1\n");
    // The pod's one allowed exec, resuming everything it may signal, all the time.
    let looper = ExecStream::connect(&bed.cri().exec(
        &bed.cid,
        &[
            "sh",
            "-c",
            "echo looping; while :; do kill -CONT -1 2>/dev/null; done",
        ],
        false,
        false,
    ));
    assert!(
        looper.read_until("looping", T),
        "{:?}",
        looper.output_text()
    );
    let mark = "/tmp/ran-resumed";
    let seen = format!("/proc/{}/root{mark}", bed.main_pid);
    let _ = std::fs::remove_file(&seen);
    // The loop resumes a held command only when it gets the CPU during the hold (a few ms):
    // on a busy machine that may take more than three execs, so they go on until it has.
    let broken = || d.status().events["kube_exec_holds_broken"];
    let mut attempts = 0;
    while attempts < 3 || (broken() == 0 && attempts < 12) {
        attempts += 1;
        let refused = ExecStream::connect(&bed.cri().exec(
            &bed.cid,
            &[
                "sh",
                "-c",
                &format!("(setsid sleep 4242 &); touch {mark}; sleep 4243"),
            ],
            false,
            false,
        ));
        assert!(
            wait_until(T, || refused.is_closed()),
            "a refused exec went on\n{}",
            d.log()
        );
    }
    // Give anything that escaped time to show.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let escaped: Vec<u32> = ["4242", "4243"]
        .iter()
        .flat_map(|n| enforcer_tests::kube_bed::pids_running(&["sleep", n]))
        .collect();
    assert!(
        escaped.is_empty(),
        "refused commands left {escaped:?} running\n{}",
        d.log()
    );
    assert!(
        !Path::new(&seen).exists(),
        "a refused command ran its touch"
    );
    // Each is audited: refused by the limit once containerd reported it, or for its broken
    // hold when this daemon's kernel program killed it first. (Another test's daemon on this
    // host holds and marks the same execs, and its program may be the one that kills: this
    // daemon then sees an exec that ended before it could be followed.)
    let refusals = d.audit_events("session_refused");
    assert!(
        refusals.iter().all(
            |r| r["reason"] == "max_exec_sessions_per_pod" || r["reason"] == "exec_hold_broken"
        ),
        "{refusals:#?}"
    );
    let unfollowed = d
        .audit_events("session_ended")
        .into_iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("ended before enforcerd could follow it"))
        })
        .count();
    assert_eq!(
        refusals.len() + unfollowed,
        attempts,
        "{refusals:#?}\n{}",
        d.log()
    );
    // The attack happened: a hold was broken by the loop. Kills by this daemon's program:
    // only when a command got to fork before its refusal, and another daemon's program may
    // kill it first, so not asserted.
    assert!(
        broken() > 0,
        "no hold broken in {attempts} execs\n{}",
        d.ctl_ok(&["status"])
    );
    drop(looper);
}
