//! The Kubernetes user behind a `kubectl exec`, end to end: the admission webhook (the real
//! `enforcerd webhook`, over TLS) allows the exec and leaves its grant in a real etcd; the
//! kubelet's CRI calls start it in a real containerd; the node matches the exec session to the
//! grant, audits `exec_identified` with `kube_user` and `kube_groups`, and a fleet lock of that
//! user ends the session; so does a node-only lock of a service account by its Kubernetes name
//! (`system:serviceaccount:NS:NAME`). An exec the webhook never saw is audited as such.

use enforcer_tests::{
    casts::{json_lines, play_raw},
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
    // Her session's recording names her, and holds what her shell printed before the node
    // knew who she was (it waits for the answer; her bytes meanwhile are kept).
    let mut rec = None;
    assert!(
        wait_until(T, || {
            rec = d
                .recordings()
                .into_iter()
                .find(|r| r["command"] == "sh" && r["live"] == false);
            rec.is_some()
        }),
        "{:#?}",
        d.recordings()
    );
    let rec = rec.unwrap();
    assert_eq!(rec["user"], "alice@example.com", "{rec:#}");
    let header = &json_lines(std::path::Path::new(rec["path"].as_str().unwrap()))[0];
    assert_eq!(
        header["enforcer"]["kube"]["kube_groups"],
        serde_json::json!(["dev", "system:authenticated"]),
        "{header:#}"
    );
    let played = String::from_utf8_lossy(&play_raw(&d, rec["id"].as_u64().unwrap())).into_owned();
    assert!(played.contains("ready-21"), "{played:?}");

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

/// Grants no exec session matched are audited when they expire, by the node running the pod:
/// an exec that never started, an attach. Not reported: a claimed grant, a refused exec's
/// (the webhook takes it back), a grant for a pod of another node.
#[test]
fn grants_no_exec_matched_are_audited_by_the_pods_node() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let bed = Bed::new("kgu");
    let d = bed.daemon_connected(&format!(
        "[fleet]\netcd_endpoints = {}\nnode_name = \"{}\"\n",
        cluster.endpoints_toml(),
        bed.node
    ));
    let hook = Webhook::start(
        &cluster.endpoints_toml(),
        // Long enough for a slow exec start to be claimed (a first run after a build was not,
        // at 3 s).
        "grant_ttl = \"8s\"\n[kubernetes]\nmax_exec_sessions_per_user = 1\n",
    );
    let exec = |uid, user, pod, command| Exec {
        uid,
        user,
        groups: &["dev"],
        namespace: "team-a",
        pod,
        container: "main",
        command,
        tty: false,
    };
    let allowed = |body: String| hook.review(&body)["response"]["allowed"] == true;
    // Runs: claimed.
    assert!(allowed(
        exec("g-run", "frank", "web", &["sleep", "4713"]).body()
    ));
    let run = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sleep", "4713"], false, false));
    d.wait_audit("frank's exec identified", |r| {
        r["event"] == "exec_identified" && r["kube_user"] == "frank"
    });
    // Never started; an attach; a pod elsewhere; refused (grace is at her limit of 1).
    assert!(allowed(exec("g-never", "erin", "web", &["ls"]).body()));
    assert!(allowed(exec("g-attach", "carol", "web", &[]).review(
        "attach",
        "PodAttachOptions",
        "CONNECT"
    )));
    assert!(allowed(exec("g-away", "dave", "elsewhere", &["ls"]).body()));
    assert!(allowed(exec("g-grace", "grace", "web", &["ls"]).body()));
    assert!(!allowed(exec("g-refused", "grace", "web", &["id"]).body()));

    let unmatched = |d: &enforcer_tests::TestDaemon| -> Vec<serde_json::Value> {
        d.audit()
            .into_iter()
            .filter(|r| r["event"] == "exec_grant_unmatched")
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || unmatched(&d).len() >= 3),
        "{:#?}\n{}",
        unmatched(&d),
        d.log()
    );
    // The webhook's lease took every unclaimed grant at once: nothing more comes.
    std::thread::sleep(Duration::from_secs(2));
    let found = unmatched(&d);
    let mut reviews: Vec<&str> = found
        .iter()
        .map(|r| r["review"].as_str().unwrap())
        .collect();
    reviews.sort();
    assert_eq!(reviews, ["g-attach", "g-grace", "g-never"], "{found:#?}");
    let never = found.iter().find(|r| r["review"] == "g-never").unwrap();
    assert_eq!(
        (
            &never["kube_user"],
            &never["kube_groups"],
            &never["namespace"],
            &never["pod"]
        ),
        (
            &"erin".into(),
            &serde_json::json!(["dev"]),
            &"team-a".into(),
            &"web".into()
        ),
        "{never:#}"
    );
    assert_eq!(
        (&never["container"], &never["command"]),
        (&"main".into(), &"ls".into())
    );
    assert_eq!(never["node"], bed.node.as_str());
    assert!(never["since"].is_string(), "{never:#}");
    let attach = found.iter().find(|r| r["review"] == "g-attach").unwrap();
    assert!(
        attach["message"].as_str().unwrap().contains("an attach"),
        "{attach:#}"
    );
    // The claimed grant still counts (its session lives).
    assert!(!run.is_closed());
    assert_eq!(cluster.keys("/enforcer/exec-grants/frank/").len(), 1);
}
