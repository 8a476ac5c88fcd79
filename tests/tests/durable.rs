//! Nothing recorded is lost or corrupted by a restart or a full disk: recordings resume in the
//! same file after `kill -9` (with a marker), and a full filesystem leaves whole lines, a marked
//! gap and per-reason counts.

use std::{process::Stdio, time::Duration};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    casts::{SmallFs, ended_recording, json_lines, markers, play_raw},
    require_root,
    ssh::wait_until,
};

/// Starts `cmd` over ssh and waits until its recording holds `seen`: (ssh, recording path).
fn session_recorded_up_to(
    d: &TestDaemon,
    sshd: &TestSshd,
    user: &TestUser,
    cmd: &str,
    seen: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let child = sshd
        .ssh(user, cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut path = None;
    let ok = wait_until(Duration::from_secs(10), || {
        path = d
            .recordings()
            .into_iter()
            .find(|r| r["user"] == user.name.as_str())
            .map(|r| std::path::PathBuf::from(r["path"].as_str().unwrap()));
        path.as_ref()
            .is_some_and(|p| std::fs::read_to_string(p).unwrap().contains(seen))
    });
    assert!(
        ok,
        "{seen:?} never reached the recording: {:#?}",
        d.recordings()
    );
    (child, path.unwrap())
}

#[test]
fn a_recording_resumes_in_the_same_file_after_kill_9() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::start("");
    let rk = TestUser::create("rk");
    let sshd = TestSshd::start(d.pam(), &[&rk], "");
    let (mut child, path) = session_recorded_up_to(
        &d,
        &sshd,
        &rk,
        "for i in $(seq 1 80); do echo tick-$i; sleep 0.1; done",
        "tick-5\\",
    );
    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    d.start_again();
    let live: Vec<_> = d
        .recordings()
        .into_iter()
        .filter(|r| r["user"] == rk.name.as_str())
        .collect();
    assert_eq!(live.len(), 1, "{live:#?}");
    assert_eq!(live[0]["live"], true);
    assert!(child.wait().unwrap().success());
    let rec = ended_recording(&d, &rk);
    assert_eq!(
        std::path::PathBuf::from(rec["path"].as_str().unwrap()),
        path.clone(),
        "same file"
    );
    let lines = json_lines(&path);
    let m = markers(&lines);
    assert!(
        m.iter().any(|t| t.contains("enforcerd restarted")),
        "no restart marker: {m:?}"
    );
    let played = String::from_utf8(play_raw(&d, rec["id"].as_u64().unwrap())).unwrap();
    assert!(
        played.contains("tick-80"),
        "recording stopped at the crash: {played}"
    );
    // The pinned ring kept what the session wrote while no daemon ran.
    assert!(played.contains("tick-30"), "{played}");
}

#[test]
fn a_full_disk_leaves_whole_lines_and_marks_and_counts_the_gap() {
    if !require_root() {
        return;
    }
    let fs = SmallFs::mount("8m");
    let p = fs.0.path();
    let d = TestDaemon::start(&format!(
        "[recording]\ndir = \"{r}\"\n[audit]\npath = \"{a}\"\n",
        r = p.join("rec").display(),
        a = p.join("audit.jsonl").display()
    ));
    let rf = TestUser::create("rf");
    let sshd = TestSshd::start(d.pam(), &[&rf], "");
    // Long lines, and a command per line so the audit log is written too.
    let (mut child, path) = session_recorded_up_to(
        &d,
        &sshd,
        &rf,
        "for i in $(seq 1 60); do echo line-$i-$(printf '%0300d' 0); /bin/true; sleep 0.1; done",
        "line-3-",
    );
    fs.fill();
    std::thread::sleep(Duration::from_secs(2));
    fs.free();
    assert!(child.wait().unwrap().success());
    let rec = ended_recording(&d, &rf);
    let lines = json_lines(&path);
    let m = markers(&lines);
    assert!(
        m.iter()
            .any(|t| t.contains("bytes lost here") && t.contains("full")),
        "no disk-full marker: {m:?}"
    );
    let id = rec["id"].as_u64().unwrap();
    let played = String::from_utf8(play_raw(&d, id)).unwrap();
    assert!(played.contains("line-60-"), "recording stopped at the gap");
    // `play` shows the gap where it is (raw play gives only the exact output).
    let shown = d.ctl_ok(&["play", &id.to_string(), "--speed", "100"]);
    assert!(
        shown.contains("[enforcer: ") && shown.contains("recording.dir was full"),
        "{shown}"
    );
    let s = d.status();
    assert!(
        s.dropped["drop_recording_bytes_disk_full"] > 0,
        "{:?}",
        s.dropped
    );
    assert!(s.dropped["drop_audit_disk_full"] > 0, "{:?}", s.dropped);
    let audit = json_lines(&p.join("audit.jsonl"));
    let lost = audit
        .iter()
        .find(|v| v["event"] == "audit_records_lost")
        .expect("the audit gap is recorded");
    assert_eq!(lost["reason"], "disk_full");
    assert!(
        lost["lost"].as_u64().unwrap() > 0 && lost["since"].is_string(),
        "{lost}"
    );
    drop(d);
}
