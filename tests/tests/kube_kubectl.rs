//! The real `kubectl exec -it` (Debian's kubectl 1.20) end to end, on its own terminal, against
//! real containerd and runc: the apiserver stand-in serves the pod and proxies kubectl's
//! SPDY/3.1 upgrade to the streaming URL containerd's CRI `Exec` returned, as the apiserver and
//! kubelet do. On a labeled node enforcerd lists the shell as a `kube_exec` session, records
//! what kubectl showed, refuses execs over the pod limit or in a locked namespace with its
//! reason on kubectl's terminal, and `kill session` makes kubectl return.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use enforcer_tests::{
    TestDaemon,
    casts::play_raw,
    containerd::containerd_installed,
    cri::Pod,
    http,
    kube::kubectl_command,
    kube_api::KubeApi,
    kube_bed::{Bed, T, alive, exec_entries, wait_listed},
    pty::PtyChild,
    require_root,
    ssh::wait_until,
};
use serde_json::Value;

/// The terminal kubectl runs on.
const COLS: u16 = 120;
const ROWS: u16 = 40;

/// The bed's pod `team-a/web` (container `main`) served by the stand-in.
fn serve_pod(bed: &Bed) {
    bed.api
        .pods()
        .add(&bed.pod, &[("main", bed.cid.as_str())], &bed.ctrd.socket);
}

/// `kubectl exec -it -n team-a web -c main -- CMD…` on a terminal of its own.
fn kubectl_it(bed: &Bed, cmd: &[&str]) -> PtyChild {
    let mut args = vec!["exec", "-it", "-n", "team-a", "web", "-c", "main", "--"];
    args.extend_from_slice(cmd);
    let c = kubectl_command(&bed.kc.path().join("kubeconfig"), bed.kc.path(), &args);
    PtyChild::spawn(c, COLS, ROWS).expect("kubectl on a pty")
}

/// What to print when an assertion fails: kubectl's terminal, the stand-in's view, the daemon.
fn why(k: &PtyChild, bed: &Bed, d: &TestDaemon) -> String {
    format!(
        "kubectl's terminal:\n{:?}\nstand-in requests: {:#?}\nexec upgrades: {:#?}\naudit: {:#?}\nenforcerd log:\n{}",
        k.output_text(),
        bed.api.requests(),
        bed.api.pods().upgrades(),
        d.audit(),
        d.log()
    )
}

/// Busybox ash's prompt for root in `/`.
const PROMPT: &str = "/ # ";

/// Waits for the remote shell's prompt: kubectl has put its terminal in raw mode by then, so
/// what is typed next is echoed by the exec's pty only (typed earlier, the local terminal would
/// echo it too).
fn wait_prompt(k: &PtyChild, bed: &Bed, d: &TestDaemon) {
    assert!(k.wait_for(PROMPT, T), "no prompt: {}", why(k, bed, d));
}

/// A kubectl shell in the pod that has answered.
fn kubectl_shell(bed: &Bed, d: &TestDaemon) -> PtyChild {
    let k = kubectl_it(bed, &["sh"]);
    wait_prompt(&k, bed, d);
    k.type_text("echo ready-$((20+1))\r");
    assert!(k.wait_for("ready-21", T), "shell: {}", why(&k, bed, d));
    k
}

/// Waits for kubectl to exit; its exit code (panics if it runs on).
fn exit_code(k: &mut PtyChild, within: Duration, bed: &Bed, d: &TestDaemon) -> i32 {
    let st = k.wait_exit(within);
    let Some(st) = st else {
        panic!("kubectl still runs after {within:?}: {}", why(k, bed, d));
    };
    st.code()
        .unwrap_or_else(|| panic!("kubectl killed by a signal ({st}): {}", why(k, bed, d)))
}

/// `kubectl exec -it` of a command whose first instruction would print: kubectl shows
/// `message`, fails, and the command never ran (the kernel held it until the refusal).
fn kubectl_refused(bed: &Bed, d: &TestDaemon, message: &str) {
    let mut refused = kubectl_it(bed, &["sh", "-c", "echo ran-$((6*7)); sleep 30"]);
    assert!(refused.wait_for(message, T), "{}", why(&refused, bed, d));
    let code = exit_code(&mut refused, T, bed, d);
    assert_ne!(code, 0, "{}", why(&refused, bed, d));
    assert!(
        !refused.output_text().contains("ran-42"),
        "the refused command ran: {}",
        why(&refused, bed, d)
    );
}

#[test]
fn kubectl_exec_it_runs_a_shell_listed_recorded_and_ended_by_exit() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("kctl");
    serve_pod(&bed);
    let d = bed.daemon_connected("");
    let mut k = kubectl_it(&bed, &["sh"]);
    wait_prompt(&k, &bed, &d);
    k.type_text("echo hi-$((40+2))\r");
    assert!(k.wait_for("hi-42", T), "{}", why(&k, &bed, &d));
    // kubectl sized the exec's terminal as its own (its resize channel, through the proxy).
    k.type_text("stty size\r");
    assert!(
        k.wait_for(&format!("{ROWS} {COLS}"), T),
        "{}",
        why(&k, &bed, &d)
    );

    // What kubectl asked and containerd answered: SPDY/3.1, v4.channel.k8s.io.
    let ups = bed.api.pods().upgrades();
    assert_eq!(ups.len(), 1, "{ups:#?}");
    let up = &ups[0];
    assert!(
        up.request
            .starts_with("POST /api/v1/namespaces/team-a/pods/web/exec?"),
        "{up:#?}"
    );
    for q in [
        "command=sh",
        "container=main",
        "stdin=true",
        "stdout=true",
        "tty=true",
    ] {
        assert!(up.request.contains(q), "{q} not in {up:#?}");
    }
    assert!(!up.request.contains("stderr=true"), "{up:#?}");
    let has = |lines: &[String], want: &str| lines.iter().any(|l| l.eq_ignore_ascii_case(want));
    assert!(has(&up.request_headers, "Upgrade: SPDY/3.1"), "{up:#?}");
    assert!(
        has(
            &up.request_headers,
            "X-Stream-Protocol-Version: v4.channel.k8s.io"
        ),
        "{up:#?}"
    );
    assert!(
        up.response
            .first()
            .is_some_and(|s| s.starts_with("HTTP/1.1 101")),
        "{up:#?}"
    );
    assert!(
        has(&up.response, "X-Stream-Protocol-Version: v4.channel.k8s.io"),
        "{up:#?}"
    );
    let gets = bed
        .api
        .requests()
        .iter()
        .filter(|r| *r == "GET /api/v1/namespaces/team-a/pods/web")
        .count();
    assert_eq!(
        gets,
        1,
        "kubectl reads the pod first: {:#?}",
        bed.api.requests()
    );

    // enforcerd's view: a kube_exec session of the pod's container.
    let pid = bed.wait_exec(&["sh"]);
    // Listed from containerd's report, which can come while runc's init has not yet exec'd
    // the command (listed with an empty command until then: seen in a full run).
    let mut e = wait_listed(&d, pid);
    assert!(
        wait_until(T, || {
            e = wait_listed(&d, pid);
            e["kube"]["command"] != ""
        }),
        "{e:#}"
    );
    assert_eq!(e["kind"], "kube_exec", "{e:#}");
    let kube = &e["kube"];
    assert_eq!(kube["namespace"], "team-a", "{e:#}");
    assert_eq!(kube["pod"], "web", "{e:#}");
    assert_eq!(kube["pod_uid"], bed.pod.uid.as_str(), "{e:#}");
    assert_eq!(kube["container"], "main", "{e:#}");
    assert_eq!(kube["container_id"], bed.cid.as_str(), "{e:#}");
    assert_eq!(kube["command"], "sh", "{e:#}");
    assert_eq!(kube["tty"], true, "{e:#}");
    let id = e["sessions"][0]["id"].as_u64().unwrap();
    let exec_id = kube["exec_id"].as_str().unwrap().to_owned();
    assert_eq!(exec_entries(&d).len(), 1, "{:#?}", exec_entries(&d));

    k.type_text("exit\r");
    let code = exit_code(&mut k, T, &bed, &d);
    assert_eq!(code, 0, "{}", why(&k, &bed, &d));
    let ended = d.wait_audit("session_ended of the kubectl shell", |r| {
        r["event"] == "session_ended" && r["exec_id"] == exec_id.as_str()
    });
    assert_eq!(ended["reason"], "exited", "{ended:#}");
    assert_eq!(ended["exit_code"], 0, "{ended:#}");
    assert_eq!(ended["pod"], "web", "{ended:#}");
    assert!(
        wait_until(T, || exec_entries(&d).is_empty()),
        "{:#?}",
        exec_entries(&d)
    );

    // The recording holds what kubectl's terminal showed.
    assert!(
        wait_until(T, || d
            .recordings()
            .iter()
            .any(|r| r["id"] == id && r["live"] == false)),
        "no ended recording of {id}: {:#?}",
        d.recordings()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let shown = k.output_text();
    let played = String::from_utf8_lossy(&play_raw(&d, id)).into_owned();
    assert!(played.contains("hi-42"), "recording: {played:?}");
    assert!(
        played.contains(&format!("{ROWS} {COLS}")),
        "recording: {played:?}"
    );
    assert_eq!(
        played, shown,
        "the recording is not what kubectl's terminal showed"
    );
    assert!(alive(bed.main_pid), "the pod's main process died");
}

#[test]
fn kubectl_over_the_pod_limit_shows_enforcers_refusal_and_fails() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("kclim");
    serve_pod(&bed);
    let d = bed.daemon_connected("max_exec_sessions_per_pod = 1\n");
    let mut first = kubectl_shell(&bed, &d);
    let pid = bed.wait_exec(&["sh"]);
    let first_exec = wait_listed(&d, pid)["kube"]["exec_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let message = "enforcer: exec refused: pod team-a/web already has 1 of 1 allowed exec sessions";
    kubectl_refused(&bed, &d, message);

    let refused = d.wait_audit("session_refused", |r| r["event"] == "session_refused");
    assert_eq!(
        refused["reason"], "max_exec_sessions_per_pod",
        "{refused:#}"
    );
    assert_eq!(refused["message"], message, "{refused:#}");
    assert_eq!(refused["pod"], "web", "{refused:#}");
    let started = d.audit_events("session_started");
    assert_eq!(
        started.len(),
        1,
        "only the first shell is a session: {started:#?}"
    );
    assert_eq!(started[0]["exec_id"], first_exec.as_str(), "{started:#?}");
    assert_eq!(exec_entries(&d).len(), 1, "{:#?}", exec_entries(&d));

    // The first shell is untouched.
    first.type_text("echo still-$((1+1))\r");
    assert!(first.wait_for("still-2", T), "{}", why(&first, &bed, &d));
    first.type_text("exit\r");
    assert_eq!(
        exit_code(&mut first, T, &bed, &d),
        0,
        "{}",
        why(&first, &bed, &d)
    );
    assert_eq!(
        d.audit_events("session_refused").len(),
        1,
        "{:#?}",
        d.audit()
    );
}

#[test]
fn kubectl_in_a_locked_namespace_is_ended_then_refused_with_the_reason() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("kclock");
    serve_pod(&bed);
    let d = bed.daemon_connected("");
    let mut live = kubectl_shell(&bed, &d);
    let pid = bed.wait_exec(&["sh"]);
    wait_listed(&d, pid);

    d.ctl_ok(&["lock", "namespace", "team-a", "--reason", "incident 7"]);
    assert!(
        live.wait_for(
            "enforcer: exec session ended: namespace team-a is locked",
            T
        ),
        "{}",
        why(&live, &bed, &d)
    );
    assert_ne!(
        exit_code(&mut live, T, &bed, &d),
        0,
        "{}",
        why(&live, &bed, &d)
    );
    assert!(wait_until(T, || !alive(pid)), "the locked shell survived");

    kubectl_refused(
        &bed,
        &d,
        "enforcer: exec refused: namespace team-a is locked",
    );
    let r = d.wait_audit("session_refused", |r| r["event"] == "session_refused");
    assert_eq!(r["reason"], "namespace_locked", "{r:#}");
    assert_eq!(
        d.audit_events("session_started").len(),
        1,
        "{:#?}",
        d.audit()
    );
    assert!(
        wait_until(T, || exec_entries(&d).is_empty()),
        "{:#?}",
        exec_entries(&d)
    );

    // Unlocked: kubectl works again.
    d.ctl_ok(&["unlock", "namespace", "team-a"]);
    let mut back = kubectl_shell(&bed, &d);
    back.type_text("exit\r");
    assert_eq!(
        exit_code(&mut back, T, &bed, &d),
        0,
        "{}",
        why(&back, &bed, &d)
    );
}

#[test]
fn kill_session_makes_kubectl_return() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let bed = Bed::new("kckill");
    serve_pod(&bed);
    let d = bed.daemon_connected("");
    let mut k = kubectl_shell(&bed, &d);
    let pid = bed.wait_exec(&["sh"]);
    let id = wait_listed(&d, pid)["sessions"][0]["id"].as_u64().unwrap();

    let t0 = Instant::now();
    d.ctl_ok(&["kill", "session", &id.to_string()]);
    let code = exit_code(&mut k, Duration::from_secs(5), &bed, &d);
    let took = t0.elapsed();
    // SIGKILL, as kubectl reports it: the remote exit code 137 becomes its own.
    assert_eq!(code, 137, "{}", why(&k, &bed, &d));
    assert!(
        k.output_text()
            .contains("command terminated with exit code 137"),
        "{}",
        why(&k, &bed, &d)
    );
    eprintln!("kubectl returned {code} {took:?} after kill session");
    let killed = d.wait_audit("session_killed", |r| r["event"] == "session_killed");
    assert_eq!(killed["reason"], "killed_by_operator", "{killed:#}");
    assert!(!alive(pid), "the killed shell runs on");
    assert!(alive(bed.main_pid), "the pod's main process died");
}

/// One request to the stand-in on a fresh connection: (status, JSON body).
fn request(api: &KubeApi, method: &str, target: &str, headers: &[&str]) -> (u16, Value) {
    let addr = api.url().trim_start_matches("http://").parse().unwrap();
    let (code, body) = http::request(addr, method, target, headers, T).unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// No containerd needed: unknown pods are 404 (kubectl says so), malformed execs are 400
/// Statuses saying what is wrong, and nothing reaches the CRI for them.
#[test]
fn the_stand_in_answers_unknown_pods_and_malformed_execs_as_the_apiserver() {
    let api = KubeApi::start("kc-standin", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let pod = Pod {
        id: "sandbox-0".into(),
        name: "web".into(),
        namespace: "team-a".into(),
        uid: "00000000-0000-4000-8000-000000000042".into(),
        config: Default::default(),
    };
    // A CRI socket that does not exist: any exec reaching it would be a 500.
    let cri = dir.path().join("no-cri.sock");
    api.pods()
        .add(&pod, &[("main", "c1"), ("side", "c2")], &cri);

    let (code, got) = request(&api, "GET", "/api/v1/namespaces/team-a/pods/web", &[]);
    assert_eq!(code, 200, "{got:#}");
    assert_eq!(got["kind"], "Pod", "{got:#}");
    assert_eq!(got["status"]["phase"], "Running", "{got:#}");
    assert_eq!(
        got["status"]["containerStatuses"][1]["containerID"],
        "containerd://c2"
    );
    let (code, got) = request(&api, "GET", "/api/v1/namespaces/team-b/pods/web", &[]);
    assert_eq!(
        (code, got["reason"].as_str()),
        (404, Some("NotFound")),
        "{got:#}"
    );

    let out = kubectl_command(
        &kubeconfig,
        dir.path(),
        &["exec", "-n", "team-a", "nope", "--", "sh"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("pods \"nope\" not found"),
        "{err}\nrequests: {:#?}",
        api.requests()
    );

    let upgrade = ["Connection: Upgrade", "Upgrade: SPDY/3.1"];
    let exec = "/api/v1/namespaces/team-a/pods/web/exec";
    for (query, headers, want) in [
        (
            "container=main&stdin=true&stdout=true&tty=true",
            &upgrade[..],
            "at least 1 command",
        ),
        (
            "command=sh&container=main&stdout=true&stderr=true&tty=true",
            &upgrade[..],
            "tty and stderr",
        ),
        (
            "command=sh&container=main",
            &upgrade[..],
            "at least one of stdin, stdout, stderr",
        ),
        (
            "command=sh&stdout=true",
            &upgrade[..],
            "a container name must be specified",
        ),
        (
            "command=sh&container=db&stdout=true",
            &upgrade[..],
            "container db is not valid",
        ),
        (
            "command=sh&container=main&stdout=maybe",
            &upgrade[..],
            "invalid boolean",
        ),
        (
            "command=sh&container=main&stdout=true",
            &[][..],
            "Upgrade request required",
        ),
    ] {
        let (code, got) = request(&api, "POST", &format!("{exec}?{query}"), headers);
        assert_eq!(code, 400, "{query}: {got:#}");
        assert_eq!(got["kind"], "Status", "{got:#}");
        assert_eq!(got["reason"], "BadRequest", "{got:#}");
        assert!(
            got["message"].as_str().unwrap_or("").contains(want),
            "{query}: {got:#}"
        );
    }
    // A well-formed one reaches the (missing) CRI: an internal error, no upgrade.
    let (code, got) = request(
        &api,
        "POST",
        &format!("{exec}?command=sh&container=main&stdout=true"),
        &upgrade,
    );
    assert_eq!(code, 500, "{got:#}");
    assert!(api.pods().upgrades().is_empty());
}
