//! The Kubernetes user behind a `kubectl exec`, end to end: the admission webhook (the real
//! `enforcerd webhook`, over TLS) allows the exec and leaves its grant in a real etcd; the
//! kubelet's CRI calls start it in a real containerd; the node matches the exec session to the
//! grant, audits `exec_identified` with `kube_user` and `kube_groups`, and a fleet lock of that
//! user ends the session; so does a node-only lock of a service account by its Kubernetes name
//! (`system:serviceaccount:NS:NAME`). An exec the webhook never saw is audited as such. An
//! exec is recorded whole while etcd is slow to answer who it is. A fleet lock ends the user's
//! execs on two nodes, and after an enforcerd restart.

use enforcer_tests::{
    casts::{json_lines, play_raw},
    containerd::containerd_installed,
    daemon::TestDaemon,
    etcd::EtcdCluster,
    exec_stream::ExecStream,
    kube_bed::{Bed, exec_entries},
    require_root,
    ssh::wait_until,
    webhook::{Exec, Webhook},
};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

/// A node (containerd, pod, enforcerd with `[fleet]` and `fleet` keys more) on a one-member
/// etcd, and the webhook.
fn node_with_webhook(tag: &str, fleet: &str) -> (EtcdCluster, Bed, TestDaemon, Webhook) {
    let cluster = EtcdCluster::start(1);
    let bed = Bed::new(tag);
    let d = bed.daemon_connected(&format!(
        "[fleet]\netcd_endpoints = {}\nnode_name = \"{}\"\n{fleet}",
        cluster.endpoints_toml(),
        bed.node
    ));
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    (cluster, bed, d, hook)
}

/// Waits for the `session_ended` of exec `command` and checks a lock of `kube_user` ended it.
fn ended_by_lock(d: &TestDaemon, command: &str, kube_user: &str) {
    let ended = d.wait_audit(&format!("session_ended of {command}"), |r| {
        r["event"] == "session_ended" && r["command"] == command
    });
    assert_eq!(
        (&ended["reason"], &ended["kube_user"]),
        (&"user_locked".into(), &kube_user.into()),
        "{ended:#}"
    );
}

#[test]
fn exec_sessions_carry_the_kubernetes_user_and_a_lock_of_the_user_ends_them() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let (cluster, bed, d, hook) = node_with_webhook("kid", "");
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
    ended_by_lock(&d, "sh", "alice@example.com");
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
    ended_by_lock(&d, "sleep 4712", robot);
    assert!(!other.is_closed(), "the unidentified exec was ended too");
    assert_eq!(exec_entries(&d).len(), 1);
    // Her grant stops counting once the session ended.
    assert!(
        cluster.wait_keys("/enforcer/exec-grants/alice@example.com/", 0, T),
        "{:?}",
        cluster.keys("/enforcer/exec-grants/")
    );
    // Her session's recording names her (written into its header once the node knew), and
    // holds what her shell printed before that.
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

/// `lock user NAME` on one node ends that Kubernetes user's exec sessions on every node (here
/// two, each with its own containerd and enforcerd), and nobody else's.
#[test]
fn a_fleet_lock_ends_the_users_exec_sessions_on_two_nodes() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let beds = [Bed::new("k2a"), Bed::new("k2b")];
    let daemons: Vec<_> = beds
        .iter()
        .map(|b| {
            b.daemon_connected(&format!(
                "[fleet]\netcd_endpoints = {}\nnode_name = \"{}\"\n",
                cluster.endpoints_toml(),
                b.node
            ))
        })
        .collect();
    let hook = Webhook::start(&cluster.endpoints_toml(), "");
    // alice runs one exec on each node, bob one on the second.
    let runs = [
        ("k2-1", "alice", 0, "sleep 5101"),
        ("k2-2", "alice", 1, "sleep 5102"),
        ("k2-3", "bob", 1, "sleep 5103"),
    ];
    let mut streams = Vec::new();
    for (uid, user, node, command) in runs {
        let argv: Vec<&str> = command.split(' ').collect();
        let review = Exec {
            uid,
            user,
            groups: &["system:authenticated"],
            namespace: "team-a",
            pod: "web",
            container: "main",
            command: &argv,
            tty: false,
        };
        assert_eq!(hook.review(&review.body())["response"]["allowed"], true);
        let b = &beds[node];
        streams.push(ExecStream::connect(
            &b.cri().exec(&b.cid, &argv, false, false),
        ));
        let found = daemons[node].wait_audit("exec_identified", |r| {
            r["event"] == "exec_identified" && r["command"] == command
        });
        assert_eq!(found["kube_user"], user, "{found:#}");
    }
    let locked = std::time::Instant::now();
    daemons[0].ctl_ok(&["lock", "user", "alice", "--force", "--reason", "offboarded"]);
    assert!(
        wait_until(T, || streams[0].is_closed() && streams[1].is_closed()),
        "alice's execs still open: node A {}, node B {}\n{}",
        !streams[0].is_closed(),
        !streams[1].is_closed(),
        daemons[1].log()
    );
    let took = locked.elapsed();
    for (node, command) in [(0, "sleep 5101"), (1, "sleep 5102")] {
        ended_by_lock(&daemons[node], command, "alice");
    }
    assert!(
        !streams[2].is_closed(),
        "bob's exec was ended by alice's lock"
    );
    assert_eq!(exec_entries(&daemons[1]).len(), 1);
    eprintln!("alice's execs on two nodes ended {took:?} after the lock");
}

/// Who is behind an exec session outlives an enforcerd restart: the session found again is
/// still counted against its user (its grant under the new run's lease, the old one expired)
/// and a lock of that user still ends it.
#[test]
fn an_exec_keeps_its_kubernetes_user_across_a_daemon_restart() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let (cluster, bed, mut d, hook) = node_with_webhook("krs", "lease_ttl = \"3s\"\n");
    let review = Exec {
        uid: "krs-1",
        user: "erin",
        groups: &["ops"],
        namespace: "team-a",
        pod: "web",
        container: "main",
        command: &["sleep", "4801"],
        tty: false,
    };
    assert_eq!(hook.review(&review.body())["response"]["allowed"], true);
    let exec = ExecStream::connect(&bed.cri().exec(&bed.cid, &["sleep", "4801"], false, false));
    let found = d.wait_audit("exec_identified", |r| {
        r["event"] == "exec_identified" && r["command"] == "sleep 4801"
    });
    assert_eq!(found["kube_user"], "erin", "{found:#}");
    d.restart();
    assert!(
        wait_until(T, || exec_entries(&d).len() == 1),
        "the exec was not found again: {:?}",
        exec_entries(&d)
    );
    // The old run's lease has expired: the grant still counts, under the new one.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        cluster.keys("/enforcer/exec-grants/erin/"),
        ["/enforcer/exec-grants/erin/krs-1"],
        "the grant of the session found again"
    );
    assert!(!exec.is_closed());
    d.ctl_ok(&["lock", "user", "erin", "--force", "--reason", "left"]);
    assert!(
        wait_until(T, || exec.is_closed()),
        "erin's exec outlived her lock after a restart\n{}",
        d.log()
    );
    ended_by_lock(&d, "sleep 4801", "erin");
    assert!(cluster.wait_keys("/enforcer/exec-grants/erin/", 0, T));
}

/// The user behind an exec comes from etcd a moment after the exec starts, and its bytes never
/// wait for it (a tty exec: recorded byte for byte). Found in review: with the recording held back until the answer, an exec that
/// printed over 4 MiB while etcd was slow lost the rest, with no loss marker; and an exec that
/// ended before the answer got no `kube_user` anywhere. Found in CI: an exec whose first ask
/// met etcd stalled longer than a read waits (3 s) stayed without its user for good — counted
/// against no one, not ended by a lock of the user. Here etcd stays stopped until every ask
/// has failed once, then answers the asks made again.
#[test]
fn an_exec_is_recorded_whole_while_etcd_is_slow_to_say_who_it_is() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let (cluster, bed, d, hook) = node_with_webhook("kslow", "");
    const BIG: usize = 6_000_000;
    let script = format!("head -c {BIG} /dev/zero | tr '\\0' x; echo; echo done-77");
    let big = ["sh", "-c", script.as_str()];
    // Lives long enough for its command to be seen, ends long before etcd answers (`; true`:
    // sh would exec its last command, and the session's command could become `sleep 0.2`).
    let quick = ["sh", "-c", "echo quick-5; sleep 0.2; true"];
    // Lives on: once etcd says it is carol's, a lock of carol ends it.
    let long = ["sleep", "4803"];
    for (uid, command, tty) in [
        ("kslow-1", &big[..], true),
        ("kslow-2", &quick[..], false),
        ("kslow-3", &long[..], false),
    ] {
        let review = Exec {
            uid,
            user: "carol",
            groups: &["ops"],
            namespace: "team-a",
            pod: "web",
            container: "main",
            command,
            tty,
        };
        assert_eq!(hook.review(&review.body())["response"]["allowed"], true);
    }
    // etcd stalls (a loaded cluster) while the execs run: one prints 6 MB, one ends at once.
    let members = cluster.member_pids();
    let signal_all = |sig| {
        for p in &members {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), sig).unwrap();
        }
    };
    signal_all(nix::sys::signal::Signal::SIGSTOP);
    let out = ExecStream::connect(&bed.cri().exec(&bed.cid, &big, true, true));
    let short = ExecStream::connect(&bed.cri().exec(&bed.cid, &quick, false, false));
    let sleeper = ExecStream::connect(&bed.cri().exec(&bed.cid, &long, false, false));
    let printed = out.read_until("done-77", T);
    let ended = d.wait_audit("the quick exec's session_ended", |r| {
        r["event"] == "session_ended" && r["command"] == quick.join(" ")
    });
    let commands = [big.join(" "), quick.join(" "), long.join(" ")];
    for command in &commands {
        let silent = d.wait_audit("an ask etcd did not answer", |r| {
            r["event"] == "exec_identified" && r["command"] == command.as_str()
        });
        assert_eq!(silent["reason"], "fleet_unreachable", "{silent:#}");
        assert!(silent.get("kube_user").is_none(), "{silent:#}");
    }
    signal_all(nix::sys::signal::Signal::SIGCONT);
    assert!(printed, "{} bytes", out.output().len());
    assert!(ended.get("kube_user").is_none(), "{ended:#}");
    assert!(short.wait_exit(T).is_some());
    // Asked again once etcd is back (within the backoff's 1–2 s): each is carol's.
    for command in &commands {
        let found = d.wait_audit("exec_identified with a user", |r| {
            r["event"] == "exec_identified"
                && r["command"] == command.as_str()
                && r.get("reason").is_none()
        });
        assert_eq!(found["kube_user"], "carol", "{found:#}");
    }
    // The ended ones' grants stop counting: one session ended before the answer, the other
    // after it; the sleeper's still counts.
    assert!(out.wait_exit(T).is_some());
    assert!(
        cluster.wait_keys("/enforcer/exec-grants/carol/", 1, T),
        "{:?}",
        cluster.keys("/enforcer/exec-grants/")
    );
    // The big exec's recording holds every byte, and its header (rewritten in place) names
    // carol; the quick one's too.
    let mut recs = Vec::new();
    assert!(
        wait_until(T, || {
            recs = d
                .recordings()
                .into_iter()
                .filter(|r| r["kind"] == "kube_exec" && r["live"] == false)
                .collect();
            recs.len() == 2 && recs.iter().all(|r| r["user"] == "carol")
        }),
        "{recs:#?}"
    );
    for r in &recs {
        let lines = json_lines(std::path::Path::new(r["path"].as_str().unwrap()));
        let kube = &lines[0]["enforcer"]["kube"];
        assert_eq!(
            (&kube["kube_user"], &kube["kube_groups"]),
            (&"carol".into(), &serde_json::json!(["ops"])),
            "{:#}",
            lines[0]
        );
        assert!(
            !lines.iter().any(|l| l[1] == "m"),
            "a marker (loss?) in the recording: {:?}",
            lines.iter().filter(|l| l[1] == "m").collect::<Vec<_>>()
        );
    }
    let big_rec = recs.iter().find(|r| r["command"] == big.join(" ")).unwrap();
    let played = play_raw(&d, big_rec["id"].as_u64().unwrap());
    assert_eq!(
        played.iter().filter(|&&b| b == b'x').count(),
        BIG,
        "{} bytes played\n{}",
        played.len(),
        d.ctl_ok(&["status"])
    );
    assert!(String::from_utf8_lossy(&played).contains("done-77"));
    // Identified late, the live one is still carol's: her lock ends it.
    d.ctl_ok(&["lock", "user", "carol", "--force", "--reason", "left"]);
    ended_by_lock(&d, &long.join(" "), "carol");
    assert!(sleeper.wait_exit(T).is_some());
    assert!(cluster.wait_keys("/enforcer/exec-grants/carol/", 0, T));
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
