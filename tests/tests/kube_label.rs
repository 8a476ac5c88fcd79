//! `[kubernetes]` label gating end to end: enforcerd watches its Node on a loopback stand-in
//! for the apiserver (real list/watch wire format, reached through a kubeconfig by the kube
//! crate), shows and audits the label, resumes its watch when the apiserver restarts, and with
//! `gate_ssh` admits SSH logins without limits only while the label is absent.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, bin,
    daemon::check_config,
    kube_api::KubeApi,
    require_root,
    ssh::{HeldSsh, wait_until},
};

const LABEL: (&str, &str) = ("enforcer.dev/enforce", "true");

/// A node name of this test process's own (several tests run side by side).
fn node_name(tag: &str) -> String {
    format!("kn-{tag}-{}", std::process::id())
}

/// A kubeconfig for `api`, in a directory of its own.
fn kubeconfig(api: &KubeApi) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    api.write_kubeconfig(&dir.path().join("kubeconfig"))
        .unwrap();
    dir
}

/// A daemon watching `node` through the kubeconfig in `kc`, with `extra` TOML keys in
/// `[kubernetes]` and `more` sections after it.
fn start(kc: &tempfile::TempDir, node: &str, extra: &str, more: &str) -> TestDaemon {
    TestDaemon::start(&format!(
        "[kubernetes]\nenabled = true\nnode_name = \"{node}\"\nkubeconfig = \"{}\"\n{extra}{more}",
        kc.path().join("kubeconfig").display()
    ))
}

/// A daemon watching `node` on `api` (see [`start`]).
fn daemon(api: &KubeApi, node: &str, extra: &str, more: &str) -> (TestDaemon, tempfile::TempDir) {
    let kc = kubeconfig(api);
    (start(&kc, node, extra, more), kc)
}

/// The `kubernetes` feature line of `enforcerctl status`: (enforcing, detail).
fn feature(d: &TestDaemon) -> (bool, String) {
    let status = d.status();
    let f = status
        .features
        .iter()
        .find(|f| f.name == "kubernetes")
        .unwrap_or_else(|| panic!("no kubernetes feature in {:?}", status.features));
    (f.supported, f.detail.clone())
}

/// Waits (10 s at most) until the feature line says `state` ("present", "absent") and returns
/// how long that took.
fn wait_state(d: &TestDaemon, state: &str) -> Duration {
    let t0 = Instant::now();
    let want = format!(" {state} since ");
    assert!(
        wait_until(Duration::from_secs(10), || feature(d).1.contains(&want)),
        "label never became {state}: {:?}\n{}",
        feature(d),
        d.log()
    );
    t0.elapsed()
}

fn label_changes(d: &TestDaemon) -> Vec<serde_json::Value> {
    d.audit()
        .into_iter()
        .filter(|v| v["event"] == "kube_label_changed")
        .collect()
}

#[test]
fn removing_and_adding_the_label_switches_enforcement_within_seconds() {
    if !require_root() {
        return;
    }
    let node = node_name("flip");
    let api = KubeApi::start(&node, &[LABEL, ("kubernetes.io/os", "linux")]).unwrap();
    let (d, _kc) = daemon(&api, &node, "", "");
    wait_state(&d, "present");
    let (enforcing, detail) = feature(&d);
    assert!(enforcing, "{detail}");
    assert!(
        detail.contains(&format!("node {node}"))
            && detail.contains("label enforcer.dev/enforce=true")
            && detail.contains(": enforcing;"),
        "{detail}"
    );
    let first = d.wait_audit("label seen present", |v| {
        v["event"] == "kube_label_changed" && v["enforcing"] == true
    });
    assert_eq!(first["node"], node.as_str());
    assert_eq!(first["label"], "enforcer.dev/enforce=true");

    // Another label's value does not matter; the label's does.
    api.set_labels(&[
        ("enforcer.dev/enforce", "false"),
        ("kubernetes.io/os", "linux"),
    ]);
    let took = wait_state(&d, "absent");
    eprintln!("label removed → status not enforcing after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (enforcing, detail) = feature(&d);
    assert!(!enforcing && detail.contains("not enforcing"), "{detail}");
    let off = d.wait_audit("label removed", |v| {
        v["event"] == "kube_label_changed" && v["enforcing"] == false
    });
    assert_eq!(off["node"], node.as_str());
    assert_eq!(
        off["message"],
        "label enforcer.dev/enforce=true: present → absent"
    );

    api.set_labels(&[LABEL]);
    let took = wait_state(&d, "present");
    eprintln!("label back → status enforcing after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(feature(&d).0);
    assert!(wait_until(Duration::from_secs(5), || label_changes(&d)
        .len()
        == 3));
    // Labels set again unchanged are not changes.
    api.set_labels(&[LABEL, ("other", "x")]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(label_changes(&d).len(), 3, "{:#?}", label_changes(&d));
    // The watch is one list and one watch: no polling.
    let lists = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/nodes?") && !r.contains("watch=true"))
        .count();
    assert_eq!((lists, api.watches()), (1, 1), "{:#?}", api.requests());
    // A deleted Node is not an absent label: enforcement stays on (fail closed).
    api.delete_node();
    wait_state(&d, "node_missing");
    assert!(feature(&d).0);
}

#[test]
fn the_watch_resumes_after_the_apiserver_restarts() {
    if !require_root() {
        return;
    }
    let node = node_name("restart");
    let api = KubeApi::start(&node, &[LABEL]).unwrap();
    let (d, _kc) = daemon(&api, &node, "", "");
    wait_state(&d, "present");
    // Down for a second, and the label removed meanwhile: the resumed watch replays it.
    api.restart(Duration::from_secs(1)).unwrap();
    api.set_labels(&[]);
    let took = wait_state(&d, "absent");
    eprintln!("apiserver restarted → label removal seen after {took:?}");
    assert!(
        api.watches() >= 2,
        "the watch reconnected: {:#?}",
        api.requests()
    );
    // Dropped again while idle: later changes still arrive.
    api.restart(Duration::from_millis(200)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    api.set_labels(&[LABEL]);
    let took = wait_state(&d, "present");
    eprintln!("second restart → label back seen after {took:?}");
    assert_eq!(label_changes(&d).len(), 3, "{:#?}", label_changes(&d));
}

#[test]
fn without_an_answer_enforcement_stays_on_and_the_error_is_shown() {
    if !require_root() {
        return;
    }
    let node = node_name("down");
    let api = KubeApi::start(&node, &[]).unwrap();
    let kc = kubeconfig(&api);
    drop(api); // nothing listens on its port any more
    let d = start(&kc, &node, "", "");
    assert!(
        wait_until(Duration::from_secs(10), || feature(&d)
            .1
            .contains("last error at")),
        "{:?}",
        feature(&d)
    );
    let (enforcing, detail) = feature(&d);
    assert!(enforcing && detail.contains(" unknown since "), "{detail}");
    assert!(label_changes(&d).is_empty());
}

#[test]
fn gate_ssh_admits_over_the_limit_only_while_the_label_is_absent() {
    if !require_root() {
        return;
    }
    let node = node_name("ssh");
    let api = KubeApi::start(&node, &[]).unwrap();
    let (d, _kc) = daemon(
        &api,
        &node,
        "gate_ssh = true\n",
        "[limits]\nmax_connections_per_user = 1\n",
    );
    wait_state(&d, "absent");
    assert!(feature(&d).1.contains("SSH not enforced (gate_ssh)"));
    let kim = TestUser::create("kg");
    let sshd = TestSshd::start(d.pam(), &[&kim], "");
    let first = HeldSsh::open(&sshd, &kim);
    let second = HeldSsh::try_open(&sshd, &kim);
    assert!(second.is_ok(), "over the limit, label absent: admitted");
    let admitted: Vec<_> = d
        .audit()
        .into_iter()
        .filter(|v| v["event"] == "connection_admitted")
        .collect();
    assert_eq!(admitted.len(), 2, "still audited: {admitted:#?}");
    assert!(
        admitted.iter().all(|v| v["enforcing"] == false),
        "{admitted:#?}"
    );

    api.set_labels(&[LABEL]);
    wait_state(&d, "present");
    let refused = HeldSsh::try_open(&sshd, &kim);
    let err = refused
        .err()
        .expect("label present: over the limit is refused");
    assert!(err.contains("allowed SSH connections"), "{err}");
    d.wait_audit("refusal", |v| {
        v["event"] == "connection_refused" && v["reason"] == "max_connections_per_user"
    });
    drop((first, second));
}

#[test]
fn gate_ssh_off_keeps_ssh_enforced_without_the_label() {
    if !require_root() {
        return;
    }
    let node = node_name("nogate");
    let api = KubeApi::start(&node, &[]).unwrap();
    let (d, _kc) = daemon(&api, &node, "", "[limits]\nmax_connections_per_user = 1\n");
    wait_state(&d, "absent");
    let kim = TestUser::create("kn");
    let sshd = TestSshd::start(d.pam(), &[&kim], "");
    let _first = HeldSsh::open(&sshd, &kim);
    assert!(
        HeldSsh::try_open(&sshd, &kim).is_err(),
        "SSH always enforced"
    );
}

#[test]
fn bad_kubernetes_config_is_refused_naming_the_key() {
    let (ok, err) = check_config("[kubernetes]\nenabled = true\nlabel = \"enforcer.dev/=on\"\n");
    assert!(!ok);
    assert!(
        err.contains("kubernetes.label") && err.contains("name part"),
        "{err}"
    );
    let (ok, err) = check_config("[kubernetes]\nenabled = true\n\ngate_sssh = true\n");
    assert!(!ok);
    assert!(err.contains("gate_sssh") && err.contains("line 4"), "{err}");
    let (ok, err) = check_config("[kubernetes]\nidle_timeout = \"soon\"\n");
    assert!(!ok && err.contains("\"15m\""), "{err}");
    let (ok, err) = check_config("[kubernetes]\nenabled = true\nlabel = \"enforce\"\n");
    assert!(ok, "a bare key is a label: {err}");
}

#[test]
fn an_unusable_kubeconfig_stops_the_start_with_what_to_do() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = \"{d}/s.sock\"\npam_socket = \"{d}/p.sock\"\nstate_dir = \"{d}/st\"\n\
             bpf_pin_dir = \"/sys/fs/bpf/enf-kube-bad-{pid}\"\n[audit]\npath = \"{d}/a.jsonl\"\n\
             journald = false\n[recording]\ndir = \"{d}/rec\"\n[kubernetes]\nenabled = true\nkubeconfig = \"{d}/missing\"\n",
            d = dir.path().display(),
            pid = std::process::id()
        ),
    )
    .unwrap();
    let out = Command::new(bin("enforcerd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/enf-kube-bad-{}", std::process::id()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kubernetes.kubeconfig") && err.contains("missing"),
        "{err}"
    );
}
