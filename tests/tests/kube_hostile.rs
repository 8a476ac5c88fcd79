//! A local user against the exec hold. Found by reading the kernel side: any program named
//! `runc` run with an `exec` argument was taken for containerd's runc, and every task it
//! forked was marked in an LRU map of 8 192 entries — so an unprivileged user with a fake
//! `runc` and thousands of threads could fill the map and crowd out genuine runc marks, and
//! real execs would run before enforcerd decided on them (before the fix: 7 977 of the user's
//! 9 001 tasks marked, the map full). Only root's runc is marked now.

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
    kube_bed::{Bed, T, exec_entries},
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
    let dir = tempfile::Builder::new()
        .prefix("enf-fake-runc-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runc = dir.path().join("runc");
    std::fs::copy(env!("CARGO_BIN_EXE_enf-fake-runc"), &runc).unwrap();
    std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut fake = user
        .command(&runc)
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
    let fields: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"ready"), "fake runc said {ready:?}");
    let pid: u32 = fields[1].parse().unwrap();
    let tids: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(tids.len() > THREADS, "{} tasks", tids.len());

    let marked = marked_tasks(&d.pin_dir);
    let theirs = marked.iter().filter(|t| tids.contains(t)).count();
    assert_eq!(
        theirs,
        0,
        "{theirs} of the user's {} tasks marked as runc's ({} marks in all)",
        tids.len(),
        marked.len()
    );

    // With the user's tasks all alive, the hold works as ever: a refused exec's command never
    // runs, an admitted one runs once decided.
    let first = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sh"], true, true));
    first.send_stdin("echo up-$((1+1))\n");
    assert!(first.read_until("up-2", T), "{:?}", first.output_text());
    let held_before = d.status().events["kube_execs_held"];
    let mark = "/tmp/ran-fake-runc";
    let seen = format!("/proc/{}/root{mark}", bed.main_pid);
    let _ = std::fs::remove_file(&seen);
    let refused = ExecStream::connect(
        &bed.cri()
            .exec(&bed.cid, &["/bin/touch", mark], false, false),
    );
    assert!(
        wait_until(T, || String::from_utf8_lossy(&refused.stderr())
            .contains("enforcer: exec refused: pod team-a/web already has 1 of 1")),
        "stderr {:?}\n{}",
        String::from_utf8_lossy(&refused.stderr()),
        d.log()
    );
    assert!(wait_until(T, || refused.is_closed()));
    assert!(!Path::new(&seen).exists(), "the refused command ran");
    first.send_stdin("exit\n");
    assert!(wait_until(T, || exec_entries(&d).is_empty()));
    let ran = ExecStream::connect(
        &bed.cri()
            .exec(&bed.cid, &["/bin/touch", mark], false, false),
    );
    assert_eq!(ran.wait_exit(T), Some(0), "{}", d.log());
    assert!(Path::new(&seen).exists());
    assert!(
        d.status().events["kube_execs_held"] > held_before,
        "{}",
        d.ctl_ok(&["status"])
    );
    drop(fake.stdin.take());
    assert!(fake.wait().unwrap().success());
}
