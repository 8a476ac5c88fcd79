//! `kubectl exec` sessions recorded from the containerd shim's side of the pty (or of the
//! exec's pipes), on real containerd and runc, through the CRI stream the kubelet uses: the
//! recording holds exactly the bytes the client received, the keystrokes and window size,
//! the pod's fields in its header, and plays and is watched live like an SSH session's.

use std::time::Duration;

use enforcer_tests::{
    TestDaemon,
    casts::{json_lines, play_raw, watch},
    containerd::containerd_installed,
    exec_stream::ExecStream,
    kube_bed::{Bed, T, wait_listed},
    require_root,
    ssh::wait_until,
};
use serde_json::Value;

/// The recording of session `id` once it has ended (and the recorder has closed it).
fn ended_recording(d: &TestDaemon, id: u64) -> Value {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(15), || {
        found = d
            .recordings()
            .into_iter()
            .find(|r| r["id"] == id && r["live"] == false);
        found.is_some()
    });
    assert!(ok, "no ended recording of {id}: {:#?}", d.recordings());
    found.unwrap()
}

/// Concatenated data of the events with `code` ("o" output, "i" input).
fn stream(lines: &[Value], code: &str) -> String {
    lines
        .iter()
        .skip(1)
        .filter(|l| l[1] == code)
        .map(|l| l[2].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_tty_exec_is_recorded_as_the_client_received_it_and_watched_live() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("rec");
    let d = bed.daemon();
    let cri = bed.cri();
    let status = d.status();
    let hooks = status.features.iter().find(|f| f.name == "exec_io_hooks");
    assert!(
        hooks.is_some_and(|f| f.supported && f.detail.contains("containerd-shim-runc-v2")),
        "{hooks:?}"
    );

    // `kubectl exec -it web -- sh`: the client sizes its terminal first, as kubectl does.
    let sh = ExecStream::connect(&cri.exec(&bed.cid, &["sh"], true, true));
    sh.resize(101, 31);
    assert!(sh.read_until("# ", T), "no prompt: {:?}", sh.output_text());
    let pid = bed.wait_exec(&["sh"]);
    let id = wait_listed(&d, pid)["sessions"][0]["id"].as_u64().unwrap();
    sh.send_stdin("echo rec-$((6*7))\n");
    assert!(sh.read_until("rec-42", T), "{:?}", sh.output_text());

    // Watched live by an operator while it runs.
    let live = d.recordings().into_iter().find(|r| r["id"] == id);
    assert_eq!(
        live.as_ref().map(|r| r["live"].clone()),
        Some(Value::Bool(true)),
        "{live:#?}"
    );
    let (mut watch, seen) = watch(&d, id);
    assert!(
        wait_until(T, || seen.lock().unwrap().contains("rec-42")),
        "watch did not show the screen so far: {:?}",
        seen.lock().unwrap()
    );
    sh.send_stdin("i=0; while [ $i -lt 400 ]; do echo line-$i-abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done; echo done-$((2*3))\n");
    assert!(sh.read_until("done-6", T), "{:?}", sh.output_text());
    assert!(
        wait_until(T, || seen.lock().unwrap().contains("done-6")),
        "watch did not show live output: {:?}",
        seen.lock().unwrap()
    );
    sh.send_stdin("exit\n");
    assert_eq!(sh.wait_exit(T), Some(0));
    assert!(
        wait_until(Duration::from_secs(10), || watch
            .try_wait()
            .unwrap()
            .is_some()),
        "watch did not end with the session"
    );

    let info = ended_recording(&d, id);
    assert_eq!(info["kind"], "kube_exec", "{info:#}");
    assert_eq!(info["command"], "sh", "{info:#}");
    std::thread::sleep(Duration::from_millis(2500));
    let lines = json_lines(std::path::Path::new(info["path"].as_str().unwrap()));
    let h = &lines[0];
    let k = &h["enforcer"]["kube"];
    assert_eq!(k["namespace"], "team-a", "{h:#}");
    assert_eq!(k["pod"], "web", "{h:#}");
    assert_eq!(k["pod_uid"], bed.pod.uid.as_str(), "{h:#}");
    assert_eq!(k["container"], "main", "{h:#}");
    assert_eq!(k["container_id"], bed.cid.as_str(), "{h:#}");
    assert_eq!(k["node"], bed.node.as_str(), "{h:#}");
    assert_eq!(
        k["exec_id"].as_str().map(str::len).unwrap_or(0) > 0,
        true,
        "{h:#}"
    );
    assert_eq!(h["enforcer"]["kind"], "kube_exec", "{h:#}");
    assert!(
        info["path"].as_str().unwrap().contains("/kube-exec/"),
        "{info:#}"
    );

    // Every byte the client received, the prompt before containerd reported the exec included,
    // and nothing else.
    let received = sh.output();
    let played = play_raw(&d, id);
    assert_eq!(
        String::from_utf8_lossy(&played),
        String::from_utf8_lossy(&received),
        "recording differs from what the client received"
    );
    assert!(
        stream(&lines, "i").contains("echo rec-$((6*7))\r")
            || stream(&lines, "i").contains("echo rec-$((6*7))\n"),
        "keystrokes: {:?}",
        stream(&lines, "i")
    );
    assert!(
        lines.iter().any(|l| l[1] == "r" && l[2] == "101x31"),
        "window size not recorded: {:?}",
        &lines[..lines.len().min(5)]
    );
    // The kernel filed nothing it could not hand over.
    assert!(
        !lines.iter().any(|l| l[1] == "m"),
        "loss markers in a quiet recording"
    );
}

#[test]
fn a_piped_exec_is_recorded_with_its_stdout_and_stderr() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("recp");
    let d = bed.daemon();
    let cri = bed.cri();
    // `kubectl exec web -- sh -c …`: no tty, stdout and stderr on pipes.
    let script = "sleep 1; echo piped-out-$((3*3)); echo piped-err-$((4*4)) >&2; sleep 1";
    let ex = ExecStream::connect(&cri.exec(&bed.cid, &["sh", "-c", script], false, false));
    let pid = bed.wait_exec(&["sh", "-c", script]);
    let id = wait_listed(&d, pid)["sessions"][0]["id"].as_u64().unwrap();
    assert_eq!(ex.wait_exit(T), Some(0));
    assert!(ex.output_text().contains("piped-out-9"));
    let info = ended_recording(&d, id);
    std::thread::sleep(Duration::from_millis(2500));
    let lines = json_lines(std::path::Path::new(info["path"].as_str().unwrap()));
    let out = stream(&lines, "o");
    assert!(
        out.contains("piped-out-9\n"),
        "stdout not recorded: {out:?}"
    );
    assert!(
        out.contains("piped-err-16\n"),
        "stderr not recorded: {out:?}"
    );
    assert_eq!(lines[0]["enforcer"]["tty"], Value::Null, "{:#}", lines[0]);
}

/// Found by attack: a pod whose own process has a tty (the shim holds its pty master, like an
/// exec's) writes without pause. Its bytes are nobody's session, and before an exec is
/// reported the kernel cannot tell the two apart; without a bound they would stream through
/// the data ring into the recorder all day, crowding out real sessions' bytes.
#[test]
fn a_pods_own_flooding_tty_does_not_reach_the_recorder() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("flood");
    let d = bed.daemon();
    let cri = bed.cri();
    let noisy = cri.start_container_with(
        &bed.pod,
        "noisy",
        &[
            "/bin/sh",
            "-c",
            "while :; do echo flood-flood-flood-flood-flood-flood; done",
        ],
        true,
    );
    assert!(cri.container_pid(&noisy) > 0);
    std::thread::sleep(Duration::from_secs(3));
    // Meanwhile an exec records as usual.
    let sh = ExecStream::connect(&cri.exec(&bed.cid, &["sh"], true, true));
    assert!(sh.read_until("# ", T), "no prompt: {:?}", sh.output_text());
    let pid = bed.wait_exec(&["sh"]);
    let id = wait_listed(&d, pid)["sessions"][0]["id"].as_u64().unwrap();
    sh.send_stdin("echo beside-$((5*5))\nexit\n");
    assert_eq!(sh.wait_exit(T), Some(0));
    let info = ended_recording(&d, id);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        String::from_utf8_lossy(&play_raw(&d, id)),
        String::from_utf8_lossy(&sh.output()),
    );
    let lines = json_lines(std::path::Path::new(info["path"].as_str().unwrap()));
    assert!(
        !stream(&lines, "o").contains("flood"),
        "the pod's bytes in an exec's recording"
    );
    // ~4 s of flooding (tens of MB through the pty) reached the recorder as at most one
    // allowance of unclaimed bytes.
    let s = d.status();
    let recorded = s.events["recording_bytes"];
    assert!(
        recorded < 256 << 10,
        "{recorded} bytes reached the recorder (allowance {} per pty)",
        64 << 10
    );
}

/// An exec in a pod enforcerd knows is admitted from the kernel's hold, before containerd
/// reports it (that report comes a few ms after the command runs, and waiting for it was most
/// of what enforcement added to an exec's start). Commands that end before the report are
/// still audited in order — `session_started` with the exec id and command, what ran, the end
/// with its status — and recorded whole. containerd may report an exec before enforcerd has
/// read the kernel's hold (runc returns while the command is held; seen in a full run, where
/// other tests' daemons shared the CPUs): that exec is decided from the report, so execs are
/// made until three were admitted early.
#[test]
fn execs_admitted_before_containerds_report_are_audited_in_order_and_recorded() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("early");
    let d = bed.daemon_connected("");
    let cri = bed.cri();
    const EARLY: usize = 3;
    let early = || {
        d.log()
            .matches("held exec admitted before containerd's report")
            .count()
    };
    let mut made = 0;
    for i in 0..12 {
        if i >= 5 && early() >= EARLY {
            break;
        }
        made += 1;
        // Ends within a millisecond of running: before containerd's report, most of the time.
        let script = format!("echo quick-{i}; exit {}", i + 3);
        let ex = ExecStream::connect(&cri.exec(&bed.cid, &["sh", "-c", &script], false, false));
        assert_eq!(ex.wait_exit(T), Some(i as i32 + 3));
        let command = format!("sh -c {script}");
        let ended = d.wait_audit("session_ended", |r| {
            r["event"] == "session_ended" && r["command"] == command.as_str()
        });
        let exec_id = ended["exec_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(exec_id.len(), 64, "{ended:#}");
        assert_eq!(ended["exit_code"], i + 3, "{ended:#}");
        let session = ended["session_id"].clone();
        let records: Vec<Value> = d
            .audit()
            .into_iter()
            .filter(|r| r["session_id"] == session && r["kind"] == "kube_exec")
            .collect();
        let events: Vec<&str> = records
            .iter()
            .map(|r| r["event"].as_str().unwrap())
            .collect();
        assert_eq!(events.first(), Some(&"session_started"), "{records:#?}");
        assert_eq!(events.last(), Some(&"session_ended"), "{records:#?}");
        assert!(
            records
                .iter()
                .all(|r| r["exec_id"] == exec_id.as_str() && r["command"] == command.as_str()),
            "{records:#?}"
        );
        // Bytes the ring still held when the session ended are added after it (as for the
        // piped exec above).
        let info = ended_recording(&d, session.as_u64().unwrap());
        let path = std::path::PathBuf::from(info["path"].as_str().unwrap());
        let mut lines = Vec::new();
        wait_until(Duration::from_secs(5), || {
            lines = json_lines(&path);
            !stream(&lines, "o").is_empty()
        });
        assert_eq!(
            stream(&lines, "o"),
            format!("quick-{i}\n"),
            "{lines:#?}\n{}",
            d.log()
        );
    }
    let early = early();
    assert!(
        early >= EARLY,
        "{early} of {made} admitted early:\n{}",
        d.log()
    );
    let status = d.status();
    assert_eq!(
        status.events["sessions_started"],
        made as u64,
        "{}",
        d.ctl_ok(&["status"])
    );
    // Each hold is timed, from the kernel's stop to the resume (`status`, what `bench kube`
    // reports): a wall time per exec, and never a clock mix-up's seconds.
    let holds = status
        .sweeps
        .iter()
        .find(|w| w.name == "kube_exec_hold")
        .expect("status times the holds");
    assert!(
        holds.runs >= early as u64 && holds.total_us > 0 && holds.max_us < 2_000_000,
        "{holds:?}"
    );
    let text = d.ctl_ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("  kube_exec_hold") && l.contains("per exec")),
        "{text}"
    );
}

/// What a command wrote just before it exited is recorded even when the shim reads it after
/// enforcerd has ended the session: found in a full run, where a busy machine delayed the
/// shim's goroutine past the exit and a quick exec's whole output was lost. Here the shim is
/// stopped from before the command writes until well after the session ended.
#[test]
fn output_the_shim_reads_after_the_session_ended_is_recorded() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("late");
    let d = bed.daemon_connected("");
    let cri = bed.cri();
    // It writes once the shim is stopped (the test drops the file then), and exits.
    let go = "/tmp/write-late";
    let dropped = format!("/proc/{}/root{go}", bed.main_pid);
    let _ = std::fs::remove_file(&dropped);
    let script = format!("while [ ! -e {go} ]; do sleep 0.05; done; echo late-output; exit 4");
    let cmd = ["sh", "-c", script.as_str()];
    let ex = ExecStream::connect(&cri.exec(&bed.cid, &cmd, false, false));
    let pid = bed.wait_exec(&cmd);
    let listed = wait_listed(&d, pid);
    let session = listed["sessions"][0]["id"].as_u64().unwrap();
    let shim = nix::unistd::Pid::from_raw(bed.shim as i32);
    nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::fs::write(&dropped, "").unwrap();
    let ended = wait_until(T, || {
        d.audit_events("session_ended")
            .iter()
            .any(|r| r["session_id"] == session)
    });
    // Longer than the kernel's report of the exit takes to reach the recorder.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGCONT).unwrap();
    let _ = std::fs::remove_file(&dropped);
    assert!(
        ended,
        "the session did not end while the shim was stopped\n{}",
        d.log()
    );
    assert_eq!(ex.wait_exit(T), Some(4), "{:?}", ex.output_text());
    assert_eq!(ex.output_text(), "late-output\n");
    let info = ended_recording(&d, session);
    let lines = json_lines(std::path::Path::new(info["path"].as_str().unwrap()));
    assert_eq!(
        stream(&lines, "o"),
        "late-output\n",
        "{lines:#?}\n{}",
        d.log()
    );
}
