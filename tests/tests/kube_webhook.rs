//! `enforcerd webhook`, the apiserver's validating admission webhook for `kubectl exec` and
//! `attach`, over real TLS (certificate for 127.0.0.1, checked by curl against its CA) on a
//! real etcd: reviews as the apiserver sends them are allowed with a grant in etcd, or denied
//! with the reason the kubectl user reads — user locked, group locked (`enforcerctl lock
//! group` on a fleet node), fleet-wide per-user exec limit reached. Bad input gets a clear
//! error and never stops the webhook; etcd down gets HTTP 500 (`failurePolicy` applies).

use std::time::Duration;

use enforcer_tests::{
    TestDaemon,
    etcd::EtcdCluster,
    require_root,
    ssh::wait_until,
    webhook::{Exec, Webhook},
};

const SH: &[&str] = &["sh"];

fn exec<'a>(uid: &'a str, user: &'a str, groups: &'a [&'a str]) -> Exec<'a> {
    Exec {
        uid,
        user,
        groups,
        namespace: "team-a",
        pod: "web-0",
        container: "app",
        command: SH,
        tty: true,
    }
}

fn allowed(review: &serde_json::Value, uid: &str) -> bool {
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(
        review["response"]["uid"], uid,
        "the answer names its request"
    );
    review["response"]["allowed"].as_bool().unwrap()
}

fn message(review: &serde_json::Value) -> String {
    assert_eq!(review["response"]["status"]["code"], 403, "{review}");
    review["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn allowed_execs_leave_grants_and_the_per_user_limit_is_exact() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let hook = Webhook::start(
        &cluster.endpoints_toml(),
        "[kubernetes]\nmax_exec_sessions_per_user = 2\n",
    );
    let groups = ["dev", "system:authenticated"];
    let first = hook.review(&exec("r-1", "alice@example.com", &groups).body());
    assert!(allowed(&first, "r-1"), "{first}");
    // The grant: who, where, what.
    let value = cluster.ctl(&[
        "get",
        "--print-value-only",
        "/enforcer/exec-grants/alice@example.com/r-1",
    ]);
    let grant: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(grant["user"], "alice@example.com");
    assert_eq!(grant["user_uid"], "alice@example.com-uid");
    assert_eq!(grant["groups"], serde_json::json!(groups));
    assert_eq!(
        (&grant["namespace"], &grant["pod"], &grant["container"]),
        (&"team-a".into(), &"web-0".into(), &"app".into())
    );
    assert_eq!(grant["command"], serde_json::json!(["sh"]));
    assert_eq!(
        (&grant["tty"], &grant["subresource"]),
        (&true.into(), &"exec".into())
    );
    // An attach counts as well.
    let attach =
        exec("r-2", "alice@example.com", &groups).review("attach", "PodAttachOptions", "CONNECT");
    assert!(allowed(&hook.review(&attach), "r-2"));
    // The third is over the limit: denied, told why, and leaves no grant.
    let third = hook.review(&exec("r-3", "alice@example.com", &groups).body());
    assert!(!allowed(&third, "r-3"));
    assert_eq!(
        message(&third),
        "enforcer: exec refused: user alice@example.com already has 2 of 2 exec sessions allowed across the fleet"
    );
    assert_eq!(
        cluster
            .keys("/enforcer/exec-grants/alice@example.com/")
            .len(),
        2
    );
    // Another user is not counted with alice.
    assert!(allowed(
        &hook.review(&exec("r-4", "bob", &[]).body()),
        "r-4"
    ));

    // Racing reviews of one user at the limit: exactly the limit allowed.
    let racing: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let hook = &hook;
                s.spawn(move || {
                    let uid = format!("race-{i}");
                    allowed(&hook.review(&exec(&uid, "carol", &[]).body()), &uid)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        racing.iter().filter(|a| **a).count(),
        2,
        "8 racing reviews at limit 2: {racing:?}"
    );
    assert!(cluster.wait_keys("/enforcer/exec-grants/carol/", 2, Duration::from_secs(5)));
}

#[test]
fn locked_users_and_groups_are_refused_with_the_reason() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let node = TestDaemon::start(&format!(
        "[fleet]\netcd_endpoints = {}\nnode_name = \"node-a\"\n",
        cluster.endpoints_toml()
    ));
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    // A Kubernetes user is no account on the node: `--force`.
    node.ctl_ok(&[
        "lock",
        "user",
        "mallory",
        "--force",
        "--reason",
        "ticket 42",
    ]);
    let r = hook.review(&exec("l-1", "mallory", &["dev"]).body());
    assert!(!allowed(&r, "l-1"));
    assert_eq!(
        message(&r),
        "enforcer: exec refused: user mallory is locked: ticket 42"
    );

    let out = node.ctl_ok(&["lock", "group", "contractors", "--reason", "incident 7"]);
    assert!(
        out.contains("locked group contractors on every node"),
        "{out}"
    );
    assert_eq!(
        cluster.keys("/enforcer/locks/group/"),
        ["/enforcer/locks/group/contractors"]
    );
    let groups = ["system:authenticated", "contractors"];
    let r = hook.review(&exec("l-2", "dave", &groups).body());
    assert!(!allowed(&r, "l-2"));
    assert_eq!(
        message(&r),
        "enforcer: exec refused: group contractors of user dave is locked: incident 7"
    );
    // Found by review: one read per group in the transaction made a user in more groups than
    // etcd allows operations per transaction (128) get HTTP 500 for every exec.
    let many: Vec<String> = (0..300).map(|i| format!("team-{i}")).collect();
    let mut many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = hook.review(&exec("l-many", "frank", &many_refs).body());
    assert!(allowed(&r, "l-many"), "{r}");
    many_refs.push("contractors");
    let r = hook.review(&exec("l-many-2", "frank", &many_refs).body());
    assert!(!allowed(&r, "l-many-2"));
    assert!(
        message(&r).contains("group contractors of user frank is locked"),
        "{r}"
    );
    // Outside the group: allowed.
    assert!(allowed(
        &hook.review(&exec("l-3", "erin", &["dev"]).body()),
        "l-3"
    ));
    // Refusals leave no grant.
    assert!(cluster.keys("/enforcer/exec-grants/dave/").is_empty());
    assert!(cluster.keys("/enforcer/exec-grants/mallory/").is_empty());
    // Unlocked: allowed again.
    node.ctl_ok(&["unlock", "group", "contractors"]);
    assert!(allowed(
        &hook.review(&exec("l-4", "dave", &groups).body()),
        "l-4"
    ));
    fails_saying(
        node.ctl(&["unlock", "group", "contractors"]),
        "group contractors is not locked",
    );
    // A group lock is the fleet's only (the webhook reads etcd): `--local` is refused, and so
    // is a node outside a fleet, each saying what to do.
    fails_saying(
        node.ctl(&["lock", "group", "ops", "--local"]),
        "group locks are fleet-wide only",
    );
    let alone = TestDaemon::start("");
    fails_saying(
        alone.ctl(&["lock", "group", "ops"]),
        "group locks are fleet-wide only",
    );
}

/// An enforcerctl run that failed with `says` on its stderr.
fn fails_saying(out: std::process::Output, says: &str) {
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(says),
        "{out:?}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_never_stops_the_webhook() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    let (code, text) = hook.call("POST", "{not json");
    assert_eq!(code, 400);
    assert!(
        text.contains("not an AdmissionReview (admission.k8s.io/v1)"),
        "{text}"
    );
    let (code, text) = hook.call(
        "POST",
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    );
    assert_eq!(code, 400);
    assert!(text.contains("has no request"), "{text}");
    let (code, text) = hook.call("GET", "");
    assert_eq!(code, 405);
    assert!(text.contains("POST an AdmissionReview"), "{text}");
    let (code, _) = hook.call("POST", &"x".repeat(70 * 1024));
    assert_eq!(code, 413);
    // A review the webhook is not for (a misconfigured ValidatingWebhookConfiguration): denied
    // with the fix.
    let create = exec("b-1", "alice", &[]).review("", "Pod", "CREATE");
    let r = hook.review(&create);
    assert!(!allowed(&r, "b-1"));
    assert!(
        message(&r).contains("CONNECT of pods/exec and pods/attach only, not CREATE of pods"),
        "{r}"
    );
    let nobody = exec("b-2", "", &[]).body();
    let r = hook.review(&nobody);
    assert!(!allowed(&r, "b-2"));
    assert_eq!(message(&r), "the review has no userInfo.username");
    // Plain HTTP on the TLS port: the connection fails, the webhook goes on.
    let plain = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/validate", hook.port))
        .output()
        .unwrap();
    assert!(!plain.status.success());
    // Still serving, never panicked.
    assert!(allowed(
        &hook.review(&exec("b-3", "alice", &[]).body()),
        "b-3"
    ));
    assert!(!hook.log_text().contains("panicked"), "{}", hook.log_text());
}

#[test]
fn etcd_down_is_an_error_for_the_failure_policy() {
    if !require_root() {
        return;
    }
    let mut cluster = EtcdCluster::start(1);
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    assert!(allowed(
        &hook.review(&exec("e-1", "alice", &[]).body()),
        "e-1"
    ));
    cluster.stop_member(0);
    let (code, text) = hook.call("POST", &exec("e-2", "alice", &[]).body());
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("etcd did not answer"), "{text}");
    assert!(text.contains("failurePolicy"), "{text}");
    // Back: answered again.
    cluster.start_member(0);
    cluster.wait_healthy(Duration::from_secs(15));
    assert!(wait_until(Duration::from_secs(15), || {
        hook.call("POST", &exec("e-3", "alice", &[]).body()).0 == 200
    }));
}

/// Found by review: the webhook took any client, so anything that reaches its port could write
/// grants — counting against another user's limit, or making an exec's identity ambiguous.
/// With `[webhook] client_ca` only the apiserver's client certificate gets a TLS session.
#[test]
fn with_client_ca_only_a_client_certificate_it_issued_may_post_reviews() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let hook = Webhook::start_mtls(&cluster.endpoints_toml(), "");
    let forged = exec("m-1", "alice", &[]).body();
    let refused = hook.try_call("POST", &forged, false);
    assert!(
        refused.is_err(),
        "a review without a client certificate was answered: {refused:?}"
    );
    assert!(
        cluster.keys("/enforcer/exec-grants/").is_empty(),
        "a grant was written"
    );
    assert!(allowed(
        &hook.review(&exec("m-2", "alice", &[]).body()),
        "m-2"
    ));
    assert_eq!(cluster.keys("/enforcer/exec-grants/alice/").len(), 1);
}

/// Found by review: reading the body had no deadline, so a client that sent headers and then
/// nothing held one of the bounded connections for ever (enough of them, and with
/// `failurePolicy: Fail` no exec in the cluster could start).
#[test]
fn a_client_that_never_sends_its_body_is_cut_and_holds_up_nothing() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    // Headers announcing a body that never comes, over TLS (openssl s_client keeps reading
    // the socket while its stdin stays open and silent).
    let mut stalled = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{}", hook.port))
        .arg("-CAfile")
        .arg(hook.ca())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = stalled.stdin.take().unwrap();
    std::io::Write::write_all(
        &mut stdin,
        b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut stdout = stalled.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.windows(3).any(|w| w == b"408") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    // Served meanwhile.
    assert!(allowed(
        &hook.review(&exec("s-1", "alice", &[]).body()),
        "s-1"
    ));
    assert!(
        wait_until(Duration::from_secs(20), || reader.is_finished()),
        "the stalled request was never answered"
    );
    let out = reader.join().unwrap();
    drop(stdin);
    let _ = stalled.kill();
    let _ = stalled.wait();
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the stalled request held its connection {took:?}"
    );
}

/// Connections that never send anything (no TLS handshake, or a handshake and then no
/// request) are closed within seconds, so even more of them than the webhook serves at once
/// (256) only delay a review, never stop it: with `failurePolicy: Fail`, a webhook held up by
/// idle sockets would refuse every exec in the cluster.
#[test]
fn idle_connections_are_closed_and_a_flood_of_them_only_delays_reviews() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    let addr = format!("127.0.0.1:{}", hook.port);
    let started = std::time::Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // A TLS session that asks nothing.
    let mut handshaken = std::process::Command::new("openssl")
        .args([
            "s_client", "-quiet", "-ign_eof", "-connect", &addr, "-CAfile",
        ])
        .arg(hook.ca())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        allowed(&hook.review(&exec("f-1", "alice", &[]).body()), "f-1"),
        "a review behind 300 idle connections"
    );
    let answered = started.elapsed();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(std::io::Read::read(&mut s, &mut b), Ok(0)),
            "an idle connection was left open"
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || matches!(
            handshaken.try_wait(),
            Ok(Some(_))
        )),
        "a TLS session without a request was left open"
    );
    let closed = started.elapsed();
    assert!(
        closed < Duration::from_secs(15),
        "idle connections held for {closed:?} (review answered after {answered:?})"
    );
    // It was a TLS session (the handshake completed and the certificate verified), closed by
    // the webhook, not a connection that failed.
    let mut said = String::new();
    std::io::Read::read_to_string(&mut handshaken.stderr.take().unwrap(), &mut said).unwrap();
    assert!(said.contains("verify return:1"), "openssl said: {said}");
    drop(handshaken.stdin.take());
}
