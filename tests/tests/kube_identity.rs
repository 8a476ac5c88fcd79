//! The Kubernetes user behind a `kubectl exec`, end to end: the admission webhook (the real
//! `enforcerd webhook`, over TLS) allows the exec and leaves its grant in a real etcd; the
//! kubelet's CRI calls start it in a real containerd; the node matches the exec session to the
//! grant, audits `exec_identified` with `kube_user` and `kube_groups`, and a fleet lock of that
//! user ends the session; so does a node-only lock of a service account by its Kubernetes name
//! (`system:serviceaccount:NS:NAME`). An exec the webhook never saw is audited as such.

use enforcer_tests::{
    containerd::containerd_installed,
    etcd::EtcdCluster,
    exec_stream::ExecStream,
    kube_bed::{Bed, exec_entries},
    require_root,
    ssh::wait_until,
    webhook::{Exec, Webhook},
};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

#[test]
fn exec_sessions_carry_the_kubernetes_user_and_a_lock_of_the_user_ends_them() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let bed = Bed::new("kid");
    let d = bed.daemon_connected(&format!(
        "[fleet]\netcd_endpoints = {}\nnode_name = \"{}\"\n",
        cluster.endpoints_toml(),
        bed.node
    ));
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    // `kubectl exec -it web -c main -- sh` by alice: the apiserver asks the webhook, then the
    // kubelet makes the exec.
    let review = Exec {
        uid: "kid-1",
        user: "alice@example.com",
        groups: &["dev", "system:authenticated"],
        namespace: "team-a",
        pod: "web",
        container: "main",
        command: &["sh"],
        tty: true,
    };
    let answer = hook.review(&review.body());
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let sh = bed.shell();
    let found = d.wait_audit("exec_identified", |r| {
        r["event"] == "exec_identified" && r["command"] == "sh"
    });
    assert_eq!(found["kube_user"], "alice@example.com", "{found:#}");
    assert_eq!(
        found["kube_groups"],
        serde_json::json!(["dev", "system:authenticated"])
    );
    assert!(found.get("reason").is_none(), "{found:#}");
    assert_eq!(
        (&found["namespace"], &found["pod"]),
        (&"team-a".into(), &"web".into())
    );
    // Claimed: gone from the pod's unmatched grants; the user's grant names the session and
    // lives on this node's lease.
    assert!(
        cluster
            .keys("/enforcer/exec-grants-by-pod/team-a/web/")
            .is_empty()
    );
    let grant: serde_json::Value = serde_json::from_str(
        cluster
            .ctl(&[
                "get",
                "--print-value-only",
                "/enforcer/exec-grants/alice@example.com/kid-1",
            ])
            .trim(),
    )
    .unwrap();
    assert_eq!(grant["matched"]["node"], bed.node.as_str(), "{grant:#}");
    assert_eq!(grant["matched"]["exec_id"], found["exec_id"], "{grant:#}");

    // An exec the webhook never saw (made on the node, or while the webhook was skipped).
    let other = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sleep", "4711"], false, false));
    let unknown = d.wait_audit("unidentified exec", |r| {
        r["event"] == "exec_identified" && r["command"] == "sleep 4711"
    });
    assert_eq!(unknown["reason"], "exec_grant_not_found", "{unknown:#}");
    assert!(unknown.get("kube_user").is_none());

    // A service account's exec (`system:serviceaccount:…`: a Kubernetes name with `:`).
    let robot = "system:serviceaccount:ci:deployer";
    let robot_review = Exec {
        uid: "kid-sa",
        user: robot,
        groups: &["system:serviceaccounts"],
        command: &["sleep", "4712"],
        tty: false,
        ..review
    };
    assert_eq!(
        hook.review(&robot_review.body())["response"]["allowed"],
        true
    );
    let ci = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sleep", "4712"], false, false));
    let found = d.wait_audit("the service account's exec identified", |r| {
        r["event"] == "exec_identified" && r["command"] == "sleep 4712"
    });
    assert_eq!(found["kube_user"], robot, "{found:#}");

    // A fleet lock of alice (not an account on the node: --force) ends her session, only hers.
    d.ctl_ok(&[
        "lock",
        "user",
        "alice@example.com",
        "--force",
        "--reason",
        "offboarded",
    ]);
    assert!(
        wait_until(T, || sh.is_closed()),
        "alice's exec still open\n{}",
        d.log()
    );
    let killed = d.wait_audit("session_killed", |r| {
        r["event"] == "session_killed" && r["reason"] == "user_locked"
    });
    assert_eq!(killed["kube_user"], "alice@example.com", "{killed:#}");
    let ended = d.wait_audit("session_ended", |r| {
        r["event"] == "session_ended" && r["command"] == "sh"
    });
    assert_eq!(ended["reason"], "user_locked", "{ended:#}");
    assert_eq!(ended["kube_user"], "alice@example.com");
    assert!(!other.is_closed(), "the unidentified exec was ended too");
    assert!(
        !ci.is_closed(),
        "the service account's exec was ended by alice's lock"
    );
    assert_eq!(exec_entries(&d).len(), 2);
    // A node-only lock of the service account, by its Kubernetes name, ends its exec.
    d.ctl_ok(&[
        "lock",
        "user",
        robot,
        "--force",
        "--local",
        "--reason",
        "leaked token",
    ]);
    assert!(
        wait_until(T, || ci.is_closed()),
        "the service account's exec still open"
    );
    let ended = d.wait_audit("the service account's session_ended", |r| {
        r["event"] == "session_ended" && r["command"] == "sleep 4712"
    });
    assert_eq!(
        (&ended["reason"], &ended["kube_user"]),
        (&"user_locked".into(), &robot.into()),
        "{ended:#}"
    );
    assert!(!other.is_closed(), "the unidentified exec was ended too");
    assert_eq!(exec_entries(&d).len(), 1);
    // Her grant stops counting once the session ended.
    assert!(
        cluster.wait_keys("/enforcer/exec-grants/alice@example.com/", 0, T),
        "{:?}",
        cluster.keys("/enforcer/exec-grants/")
    );
    // And the webhook refuses her next exec.
    let again = hook.review(
        &Exec {
            uid: "kid-2",
            ..review
        }
        .body(),
    );
    assert_eq!(again["response"]["allowed"], false, "{again}");
    drop(other);
}
