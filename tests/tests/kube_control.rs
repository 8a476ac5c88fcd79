//! Control of `kubectl exec` sessions on a labeled node, on real containerd and runc with execs
//! made through the CRI as the kubelet makes them: a per-pod limit with execs racing for it,
//! pod and namespace locks (kept across a restart), the idle cut (and a user in the container
//! who `touch`es their terminal to look busy), and the label's removal lifting all of it. Every
//! refused or ended exec's client reads why on its own stream; the pod's processes run on.

use std::time::Duration;

use enforcer_tests::{
    containerd::containerd_installed,
    exec_stream::ExecStream,
    kube_bed::{Bed, LABEL, T, alive, exec_entries, pids_running, wait_listed},
    require_root,
    ssh::wait_until,
};
use serde_json::Value;

/// Audit records of `event` with `reason`.
fn audited(d: &enforcer_tests::TestDaemon, event: &str, reason: &str) -> Vec<Value> {
    d.audit_events(event)
        .into_iter()
        .filter(|r| r["reason"] == reason)
        .collect()
}

/// Found by trying: runc returns, and containerd reports an exec, only once the command has
/// exec'd, so a refusal used to land a few ms into the command's run — long enough for a
/// `touch` to leave its file. The kernel now holds the command before its first instruction.
#[test]
fn a_refused_exec_never_runs_its_command() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("norun");
    let d = bed.daemon_connected("max_exec_sessions_per_pod = 1\n");
    let first = bed.shell();
    bed.check_refusals_never_run(&d, first, "/tmp/ran-4711", 3);
    assert_eq!(
        audited(&d, "session_refused", "max_exec_sessions_per_pod").len(),
        3
    );
    // Every admitted exec is held at its command's exec (the shell and this `touch`); a
    // refused one too, unless it is killed before it gets there (containerd's report can come
    // before the exec).
    assert!(
        d.status().events["kube_execs_held"] >= 2,
        "{}",
        d.ctl_ok(&["status"])
    );
    let stopped = pids_running(&["sh"])
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
        })
        .count();
    assert_eq!(stopped, 0, "a held exec was left stopped");
}

/// The other half of the hold: a command that double-forks in its first millisecond used to
/// leave a grandchild nobody followed (reparented to the shim before containerd's report
/// reached enforcerd). Held until it is followed, everything it starts is the session's.
#[test]
fn an_exec_that_double_forks_at_once_cannot_escape_its_session() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("dfork");
    let d = bed.daemon_connected("");
    let cmd = ["/bin/sh", "-c", "(/bin/sleep 4343 &); exec /bin/sleep 4344"];
    let _s = ExecStream::connect(&bed.cri().exec(&bed.cid, &cmd, false, false));
    let root = bed.wait_exec(&["/bin/sleep", "4344"]);
    let entry = wait_listed(&d, root);
    let escaped = pids_running(&["/bin/sleep", "4343"]);
    assert_eq!(escaped.len(), 1, "{escaped:?}");
    let id = entry["sessions"][0]["id"].as_u64().unwrap();
    d.ctl_ok(&["kill", "session", &id.to_string()]);
    assert!(
        wait_until(T, || !alive(root) && !alive(escaped[0])),
        "the double-forked sleep escaped its session\n{}",
        d.log()
    );
    assert!(alive(bed.main_pid), "the pod's own process was killed");
}

#[test]
fn five_parallel_execs_at_pod_limit_three_admit_three_and_tell_two_why() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("limit");
    let d = bed.daemon_with("max_exec_sessions_per_pod = 3\n");
    let cri = bed.cri();
    // Five clients at once, as five `kubectl exec -it` racing.
    let urls: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..5)
            .map(|_| s.spawn(|| cri.exec(&bed.cid, &["sh"], true, true)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let streams: Vec<ExecStream> = std::thread::scope(|s| {
        let hs: Vec<_> = urls
            .iter()
            .map(|u| s.spawn(move || ExecStream::connect(u)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let message = "enforcer: exec refused: pod team-a/web already has 3 of 3 allowed exec sessions";
    assert!(
        wait_until(T, || audited(
            &d,
            "session_refused",
            "max_exec_sessions_per_pod"
        )
        .len()
            >= 2),
        "two refusals expected: {:#?}\n{}",
        d.audit(),
        d.log()
    );
    for s in &streams {
        s.send_stdin("echo alive-$((40+2))\n");
    }
    let mut admitted = 0;
    let mut refused = 0;
    for s in &streams {
        assert!(
            wait_until(T, || {
                let out = s.output_text();
                out.contains("alive-42") || (out.contains(message) && s.is_closed())
            }),
            "neither admitted nor refused with the reason: {:?} {:?}",
            s.output_text(),
            s.status()
        );
        if s.output_text().contains("alive-42") {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    assert_eq!((admitted, refused), (3, 2), "exactly the limit is admitted");
    assert_eq!(exec_entries(&d).len(), 3, "{:#?}", exec_entries(&d));
    let refusals = audited(&d, "session_refused", "max_exec_sessions_per_pod");
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    for r in &refusals {
        assert_eq!(r["limit"], 3, "{r:#}");
        assert_eq!(r["pod"], "web", "{r:#}");
        assert_eq!(r["namespace"], "team-a", "{r:#}");
        assert_eq!(r["kind"], "kube_exec", "{r:#}");
        assert_eq!(r["message"], message, "{r:#}");
        // containerd reports an exec once runc's init has exec'd it: the command is named.
        assert_eq!(r["command"], "sh", "{r:#}");
    }
    assert!(
        alive(bed.main_pid) && alive(bed.sandbox_pid),
        "the pod's processes died"
    );

    // Label removed: exec control stops, the fourth exec runs.
    bed.api.set_labels(&[]);
    assert!(
        wait_until(T, || d.ctl_ok(&["status"]).contains("not enforcing")),
        "{}",
        d.ctl_ok(&["status"])
    );
    let fourth = bed.shell();
    assert!(
        wait_until(T, || exec_entries(&d).len() == 4),
        "{:#?}",
        exec_entries(&d)
    );
    // Back: the limit applies again to new execs (the four live ones are left alone).
    bed.api.set_labels(&[LABEL]);
    assert!(wait_until(T, || !d
        .ctl_ok(&["status"])
        .contains("not enforcing")));
    let fifth = ExecStream::connect(&cri.exec(&bed.cid, &["sh"], true, true));
    assert!(fifth.read_until(message, T), "{:?}", fifth.output_text());
    assert!(wait_until(T, || fifth.is_closed()));
    fourth.send_stdin("echo still-$((1+1))\n");
    assert!(fourth.read_until("still-2", T));
}

#[test]
fn locked_namespace_and_pod_end_and_refuse_execs_across_a_restart() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("lock");
    let mut d = bed.daemon();
    let sh = bed.shell();
    assert!(wait_until(T, || exec_entries(&d).len() == 1));

    // Bad names get what to write.
    let bad = d.ctl(&["lock", "pod", "web"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("NAMESPACE/NAME"),
        "{bad:?}"
    );

    d.ctl_ok(&["lock", "namespace", "team-a", "--reason", "incident 42"]);
    assert!(
        sh.read_until(
            "enforcer: exec session ended: namespace team-a is locked",
            T
        ),
        "{:?}",
        sh.output_text()
    );
    assert!(wait_until(T, || sh.is_closed()), "locked exec still open");
    let killed = d.wait_audit("session_killed by the lock", |r| {
        r["event"] == "session_killed" && r["reason"] == "namespace_locked"
    });
    assert_eq!(killed["message"], "incident 42", "{killed:#}");
    assert!(wait_until(T, || exec_entries(&d).is_empty()));
    let ended = d.wait_audit("session_ended", |r| r["event"] == "session_ended");
    assert_eq!(ended["reason"], "namespace_locked", "{ended:#}");

    let refused = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sh"], true, true));
    assert!(
        refused.read_until("enforcer: exec refused: namespace team-a is locked", T),
        "{:?}",
        refused.output_text()
    );
    assert!(wait_until(T, || refused.is_closed()));

    d.ctl_ok(&["lock", "pod", "team-a/web"]);
    let locks: Value = serde_json::from_str(&d.ctl_ok(&["locks", "--json"])).unwrap();
    let names: Vec<(String, String)> = locks
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["target"].as_str().unwrap_or("user").into(),
                l["user"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        names.contains(&("namespace".into(), "team-a".into())),
        "{locks:#}"
    );
    assert!(
        names.contains(&("pod".into(), "team-a/web".into())),
        "{locks:#}"
    );
    let table = d.ctl_ok(&["locks"]);
    assert!(
        table.contains("namespace team-a") && table.contains("pod team-a/web"),
        "{table}"
    );

    // Kept across a restart.
    d.restart();
    d.ctl_ok(&["unlock", "namespace", "team-a"]);
    let still = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sh"], true, true));
    assert!(
        still.read_until("enforcer: exec refused: pod team-a/web is locked", T),
        "{:?}",
        still.output_text()
    );
    d.ctl_ok(&["unlock", "pod", "team-a/web"]);
    let err = d.ctl(&["unlock", "pod", "team-a/web"]);
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("not locked"),
        "{err:?}"
    );
    let back = bed.shell();
    back.send_stdin("echo back-$((3+4))\n");
    assert!(back.read_until("back-7", T));
    assert!(
        alive(bed.main_pid) && alive(bed.sandbox_pid),
        "the pod's processes died"
    );
    assert_eq!(audited(&d, "session_refused", "pod_locked").len(), 1);
    assert_eq!(audited(&d, "session_refused", "namespace_locked").len(), 1);
}

#[test]
fn idle_execs_are_warned_then_cut_and_touching_the_terminal_does_not_count() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("idle");
    let d = bed.daemon_with("idle_timeout = \"20s\"\n[idle]\nwarn_before = \"5s\"\n");
    let typing = bed.shell();
    let idle = bed.shell();
    // A user who keeps their terminal's times fresh instead of typing.
    let toucher = bed.shell();
    toucher.send_stdin("while true; do touch $(tty); sleep 1; done\n");
    // Input through a pipe (`kubectl exec -i`, no tty): the shim's writes count.
    let cat = ExecStream::connect(&bed.cri().exec(&bed.cid, &["cat"], false, true));
    cat.send_stdin("piped-1\n");
    assert!(cat.read_until("piped-1", T));
    assert!(
        wait_until(T, || exec_entries(&d).len() == 4),
        "{:#?}",
        exec_entries(&d)
    );
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(34) {
        n += 1;
        typing.send_stdin(format!("echo tick-{n}\n"));
        cat.send_stdin(format!("pipe-{n}\n"));
        std::thread::sleep(Duration::from_secs(2));
        if idle.is_closed() && toucher.is_closed() {
            break;
        }
    }
    for (name, s) in [("idle", &idle), ("toucher", &toucher)] {
        let out = s.output_text();
        assert!(
            out.contains("this exec session is idle and will be closed in"),
            "{name} not warned: {out:?}"
        );
        assert!(
            out.contains("enforcer: exec session closed after"),
            "{name} not told: {out:?}"
        );
        assert!(wait_until(T, || s.is_closed()), "{name} still open");
    }
    let cut = audited(&d, "idle_timeout", "idle_timeout");
    assert_eq!(cut.len(), 2, "{cut:#?}");
    for r in &cut {
        assert!(r["idle_secs"].as_f64().unwrap() >= 20.0, "{r:#}");
        assert_eq!(r["kind"], "kube_exec", "{r:#}");
    }
    assert!(
        wait_until(T, || pids_running(&["sleep", "1"]).is_empty()),
        "the toucher's loop survived"
    );
    // Those with input live on, unwarned.
    typing.send_stdin("echo alive-$((5+5))\n");
    assert!(typing.read_until("alive-10", T));
    assert!(
        !typing.output_text().contains("is idle"),
        "{:?}",
        typing.output_text()
    );
    cat.send_stdin("pipe-last\n");
    assert!(cat.read_until("pipe-last", T));
    assert!(!cat.is_closed());
    assert_eq!(exec_entries(&d).len(), 2, "{:#?}", exec_entries(&d));
    assert!(alive(bed.main_pid), "the pod's main process died");
}

/// Found with real clients: an exec's shell that `exit`s left its background jobs running in
/// the pod for good; and when the client goes away (kubectl killed), containerd keeps a tty
/// exec's stdin open, so its shell — and what it started — runs on with nobody attached.
/// The first are cut when the exec's own process ends; the second get no input and end at
/// the idle timeout, everything they started with them.
#[test]
fn what_an_exec_leaves_running_is_cut_when_it_exits_or_its_client_goes() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("orph");
    let d = bed.daemon_with("idle_timeout = \"15s\"\n");
    let left = |tag: &str| -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let c = enforcer_tests::containerd::cmdline(*pid);
                c.iter().any(|a| a == "sleep") && c.last().is_some_and(|a| a == tag)
            })
            .collect()
    };

    let sh = bed.shell();
    wait_listed(&d, bed.wait_exec(&["sh"]));
    sh.send_stdin("sleep 4201 >/dev/null 2>&1 &\necho bg-$((1+1))\n");
    assert!(sh.read_until("bg-2", T), "{:?}", sh.output_text());
    assert!(
        wait_until(T, || !left("4201").is_empty()),
        "job not started: {:?}",
        sh.output_text()
    );
    sh.send_stdin("exit\n");
    assert_eq!(sh.wait_exit(T), Some(0));
    assert!(
        wait_until(T, || left("4201").is_empty()),
        "the job outlived its exec: {:?}",
        left("4201")
    );

    let sh = bed.shell();
    let sh_pid = bed.wait_exec(&["sh"]);
    wait_listed(&d, sh_pid);
    sh.send_stdin("(trap '' HUP; exec sleep 4202) &\necho bg-$((2+2))\n");
    assert!(sh.read_until("bg-4", T), "{:?}", sh.output_text());
    assert!(
        wait_until(T, || !left("4202").is_empty()),
        "job not started: {:?}",
        sh.output_text()
    );
    sh.close();
    // Nothing on the node says the client left: the shell waits for input that never comes.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        alive(sh_pid),
        "the shell ended without its client (then this test is moot)"
    );
    assert!(
        wait_until(Duration::from_secs(40), || left("4202").is_empty()
            && !alive(sh_pid)),
        "the shell of an exec whose client went away runs on: job {:?}, shell alive {}",
        left("4202"),
        alive(sh_pid)
    );
    // Its end is written once the kernel reports the shell's exit.
    assert!(
        wait_until(T, || audited(&d, "session_ended", "idle_timeout").len()
            == 1),
        "{:#?}",
        audited(&d, "session_ended", "idle_timeout")
    );

    let cut = audited(&d, "session_killed", "exec_orphans");
    assert_eq!(cut.len(), 1, "{cut:#?}");
    assert!(
        cut[0]["processes"].as_u64() >= Some(1) && cut[0]["pod"] == "web",
        "{cut:#?}"
    );
    assert!(alive(bed.main_pid), "the pod's own process was killed");
}
