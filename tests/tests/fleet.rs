//! The fleet on real servers: a 3-member etcd cluster on loopback and three enforcerd nodes on
//! this machine, each with its own pin dir, sockets and sshd. Locks made on one node end
//! sessions on the others, fleet-wide limits are exact under racing logins, a dead node
//! vanishes with its sessions and slots, and an etcd outage meets best_effort or strict.
//!
//! Every node shares this host, so `locks.all_processes` is off: a node's uid sweep would end
//! the other nodes' sessions and hide whether the lock reached them.

use std::{
    sync::{Arc, Barrier, Mutex},
    time::{Duration, Instant},
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    etcd::EtcdCluster,
    require_root,
    ssh::{HeldSsh, wait_until},
};

/// The tests start many processes and some measure time: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const LEASE_TTL_SECS: u64 = 3;

struct Node {
    name: String,
    daemon: TestDaemon,
    sshd: TestSshd,
}

fn node(cluster: &EtcdCluster, name: &str, users: &[&TestUser], fleet_extra: &str) -> Node {
    let daemon = TestDaemon::start(&format!(
        "[locks]\nall_processes = false\n\
         [fleet]\netcd_endpoints = {}\nnode_name = \"{name}\"\nlease_ttl = \"{LEASE_TTL_SECS}s\"\n{fleet_extra}\n",
        cluster.endpoints_toml()
    ));
    let sshd = TestSshd::start(daemon.pam(), users, "");
    Node {
        name: name.into(),
        daemon,
        sshd,
    }
}

fn fleet(cluster: &EtcdCluster, users: &[&TestUser], fleet_extra: &str) -> Vec<Node> {
    ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| node(cluster, n, users, fleet_extra))
        .collect()
}

/// Waits until every node is registered in etcd (its lease granted, its lock watch up).
fn wait_registered(cluster: &EtcdCluster, nodes: &[Node]) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            let keys = cluster.keys("/enforcer/nodes/");
            nodes
                .iter()
                .all(|n| keys.iter().any(|k| k.ends_with(&n.name)))
        }),
        "nodes not registered: {:?}\n{}",
        cluster.keys("/enforcer/"),
        nodes[0].daemon.log()
    );
    // The lock watch follows the lease by milliseconds.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_lock_on_one_node_ends_sessions_on_the_others_within_a_second() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let alice = TestUser::create("fa");
    let bob = TestUser::create("fb");
    let nodes = fleet(&cluster, &[&alice, &bob], "");
    wait_registered(&cluster, &nodes);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut on_b = HeldSsh::open(&b.sshd, &alice);
    let mut on_c = HeldSsh::open(&c.sshd, &alice);
    let mut bystander = HeldSsh::open(&c.sshd, &bob);
    let t0 = Instant::now();
    let out = a
        .daemon
        .ctl_ok(&["lock", "user", &alice.name, "--reason", "left the company"]);
    assert!(out.contains("on every node"), "{out}");
    let ended = wait_until(Duration::from_secs(5), || on_b.exited() && on_c.exited());
    let took = t0.elapsed();
    assert!(
        ended,
        "the lock did not end alice's sessions on B and C:\n{}",
        b.daemon.log()
    );
    assert!(
        took < Duration::from_secs(1),
        "lock propagation took {took:?} (> 1 s)"
    );
    eprintln!("lock on A → sessions on B and C ended in {took:?}");
    assert!(!bystander.exited(), "bob's session on C was ended too");

    // New logins are refused everywhere, with the reason; B's view is current.
    for n in &nodes {
        let refused = HeldSsh::try_open(&n.sshd, &alice)
            .err()
            .unwrap_or_else(|| panic!("alice could log in on {} while locked fleet-wide", n.name));
        assert!(
            refused.contains("left the company"),
            "{}: {refused}",
            n.name
        );
    }
    let locks = b.daemon.ctl_json(&["locks"]);
    let lock = locks
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["user"] == alice.name.as_str())
        .unwrap_or_else(|| panic!("B does not list alice's lock: {locks}"));
    assert_eq!(lock["origin"], "fleet");
    assert_eq!(lock["node"], "node-a");
    assert_eq!(lock["current"], true);
    a.daemon.wait_audit("lock", |v| {
        v["event"] == "lock" && v["user"] == alice.name.as_str()
    });
    // --local still makes a node-only lock; a second fleet lock needs --replace.
    let again = a.daemon.ctl(&["lock", "user", &alice.name]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));

    a.daemon.ctl_ok(&["unlock", "user", &alice.name]);
    assert!(
        wait_until(Duration::from_secs(5), || HeldSsh::try_open(
            &c.sshd, &alice
        )
        .is_ok()),
        "alice still refused on C after the fleet unlock"
    );

    // A node lock refuses every login there, and only there.
    a.daemon
        .ctl_ok(&["lock", "node", "node-c", "--reason", "maintenance"]);
    assert!(wait_until(Duration::from_secs(5), || {
        HeldSsh::try_open(&c.sshd, &bob).is_err_and(|e| e.contains("maintenance"))
    }));
    let _ok = HeldSsh::open(&b.sshd, &bob);
    c.daemon
        .wait_audit("node_locked", |v| v["reason"] == "node_locked");
    a.daemon.ctl_ok(&["unlock", "node", "node-c"]);
    assert!(wait_until(Duration::from_secs(5), || HeldSsh::try_open(
        &c.sshd, &bob
    )
    .is_ok()));
    drop(bystander);
}

#[test]
fn thirty_logins_over_three_nodes_at_fleet_limit_five_admit_exactly_five() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let carol = TestUser::create("fc");
    let nodes = fleet(&cluster, &[&carol], "max_connections_per_user = 5\n");
    wait_registered(&cluster, &nodes);
    // The empty-prefix case first: no slot of carol's exists yet.
    assert!(
        cluster
            .keys(&format!("/enforcer/slots/{}/", carol.name))
            .is_empty()
    );

    let barrier = Arc::new(Barrier::new(30));
    let held = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for i in 0..30 {
            let (sshd, user) = (&nodes[i % 3].sshd, &carol);
            let (barrier, held, refused) = (barrier.clone(), held.clone(), refused.clone());
            s.spawn(move || {
                barrier.wait();
                match HeldSsh::try_open(sshd, user) {
                    Ok(h) => held.lock().unwrap().push(h),
                    Err(e) => refused.lock().unwrap().push(e),
                }
            });
        }
    });
    let admitted = held.lock().unwrap().len();
    let refusals = refused.lock().unwrap().clone();
    assert_eq!(
        admitted, 5,
        "admitted {admitted} of 30 at fleet limit 5; refusals: {refusals:#?}"
    );
    assert!(
        refusals.iter().all(|e| e.contains("across the fleet")),
        "a refusal for another reason: {refusals:#?}"
    );
    let slots = cluster.keys(&format!("/enforcer/slots/{}/", carol.name));
    assert_eq!(slots.len(), 5, "{slots:?}");
    let refused_audit: usize = nodes
        .iter()
        .map(|n| {
            n.daemon
                .audit()
                .iter()
                .filter(|v| v["reason"] == "fleet_max_connections_per_user")
                .count()
        })
        .sum();
    assert_eq!(refused_audit, 25);

    // Logout frees the slots at once.
    held.lock().unwrap().clear();
    assert!(
        wait_until(Duration::from_secs(10), || cluster
            .keys(&format!("/enforcer/slots/{}/", carol.name))
            .is_empty()),
        "slots not freed at logout: {:?}",
        cluster.keys("/enforcer/slots/")
    );
    let _again = HeldSsh::open(&nodes[1].sshd, &carol);
}

#[test]
fn a_dead_node_vanishes_with_its_sessions_and_slots_after_the_lease_ttl() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let dave = TestUser::create("fd");
    let mut nodes = fleet(&cluster, &[&dave], "max_connections_per_user = 2\n");
    wait_registered(&cluster, &nodes);
    let first = HeldSsh::open(&nodes[2].sshd, &dave);
    let second = HeldSsh::open(&nodes[2].sshd, &dave);
    assert!(
        HeldSsh::try_open(&nodes[0].sshd, &dave).is_err(),
        "a third login passed limit 2"
    );

    // Every node sees C's sessions, with C's name; and the three nodes.
    let a = &nodes[0].daemon;
    let fleet_sessions = |d: &TestDaemon| -> Vec<serde_json::Value> {
        d.ctl_json(&["sessions", "--fleet"])
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(
        wait_until(Duration::from_secs(5), || fleet_sessions(a)
            .iter()
            .filter(|c| c["node"] == "node-c" && c["user"] == dave.name.as_str())
            .count()
            == 2),
        "A does not list C's two connections: {:#?}",
        fleet_sessions(a)
    );
    let listed = nodes[0].daemon.ctl_ok(&["sessions", "--fleet"]);
    assert!(
        listed.contains("node-c") && listed.contains(&dave.name),
        "{listed}"
    );
    let names: Vec<String> = a
        .ctl_json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);

    // kill -9 C's daemon and sshd: its lease expires, its keys go with it.
    let t0 = Instant::now();
    nodes[2].daemon.kill9();
    nodes[2].sshd.kill9();
    drop((first, second));
    assert!(
        wait_until(Duration::from_secs(LEASE_TTL_SECS * 3 + 5), || {
            cluster.keys("/enforcer/sessions/node-c/").is_empty()
                && cluster
                    .keys(&format!("/enforcer/slots/{}/", dave.name))
                    .is_empty()
                && cluster.keys("/enforcer/nodes/node-c").is_empty()
        }),
        "C's keys outlived its lease: {:?}",
        cluster.keys("/enforcer/")
    );
    eprintln!(
        "dead node gone from etcd {:?} after kill -9 (lease TTL {LEASE_TTL_SECS} s)",
        t0.elapsed()
    );
    assert!(
        fleet_sessions(&nodes[0].daemon)
            .iter()
            .all(|c| c["node"] != "node-c")
    );
    // Its slots are free: two logins elsewhere.
    let _x = HeldSsh::open(&nodes[0].sshd, &dave);
    let _y = HeldSsh::open(&nodes[1].sshd, &dave);
    nodes.pop(); // its daemon is already dead
}

#[test]
fn etcd_down_best_effort_keeps_known_locks_and_strict_refuses() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let erin = TestUser::create("fe");
    let frank = TestUser::create("ff");
    let best = node(
        &cluster,
        "node-a",
        &[&erin, &frank],
        "stale_after = \"2s\"\n",
    );
    let strict = node(
        &cluster,
        "node-b",
        &[&erin, &frank],
        "stale_after = \"2s\"\non_unreachable = \"strict\"\n",
    );
    let mut nodes = [best, strict];
    wait_registered(&cluster, &nodes);
    let (best, strict) = (&nodes[0], &nodes[1]);
    best.daemon.ctl_ok(&["lock", "user", &erin.name]);
    assert!(wait_until(Duration::from_secs(5), || HeldSsh::try_open(
        &strict.sshd,
        &erin
    )
    .is_err()));

    // One member down: everything works.
    cluster.stop_member(0);
    let _f = HeldSsh::open(&strict.sshd, &frank);
    assert!(HeldSsh::try_open(&best.sshd, &erin).is_err());

    // All down, for longer than stale_after.
    cluster.stop_member(1);
    cluster.stop_member(2);
    std::thread::sleep(Duration::from_secs(4));
    // best_effort: the last known lock still refuses erin; frank logs in (local limits only).
    assert!(
        HeldSsh::try_open(&best.sshd, &erin).is_err(),
        "best_effort forgot the lock"
    );
    let _f2 = HeldSsh::open(&best.sshd, &frank);
    // strict: every new login refused.
    let refused = HeldSsh::try_open(&strict.sshd, &frank)
        .err()
        .expect("strict admitted a login with etcd down");
    assert!(refused.contains("cannot be reached"), "{refused}");
    for n in &nodes {
        n.daemon
            .wait_audit("fleet_view_stale", |v| v["event"] == "fleet_view_stale");
    }
    let locks = best.daemon.ctl_json(&["locks"]);
    assert!(
        locks
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["user"] == erin.name.as_str() && l["current"] == false)
    );

    // The locks survive a restart of a node while etcd is down (local copy).
    nodes[0].daemon.restart();
    assert!(
        HeldSsh::try_open(&nodes[0].sshd, &erin).is_err(),
        "the local copy did not survive a restart"
    );

    // etcd back: the view is current again, strict admits again.
    for i in 0..3 {
        cluster.start_member(i);
    }
    cluster.wait_healthy(Duration::from_secs(30));
    nodes[1]
        .daemon
        .wait_audit("fleet_view_current", |v| v["event"] == "fleet_view_current");
    let _back = HeldSsh::open(&nodes[1].sshd, &frank);
}

#[test]
fn admission_with_a_fleet_limit_stays_within_five_ms_of_a_local_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    use enforcer_proto::{Admission, PamSession, Reply, Request};
    let cluster = EtcdCluster::start(3);
    let gina = TestUser::create("fg");
    let hank = TestUser::create("fh");
    // gina counts against a fleet limit; hank (rule: 0) only locally.
    let d = TestDaemon::start(&format!(
        "[fleet]\netcd_endpoints = {}\nnode_name = \"node-a\"\nmax_connections_per_user = 1000\n\
         [[rules]]\nusers = [\"{}\"]\nfleet_max_connections_per_user = 0\n",
        cluster.endpoints_toml(),
        hank.name
    ));
    assert!(wait_until(Duration::from_secs(15), || !cluster
        .keys("/enforcer/nodes/")
        .is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    let mut stand_ins: Vec<std::process::Child> = Vec::new();
    let mut measure = |user: &TestUser, n: usize| -> Vec<Duration> {
        let mut times = Vec::new();
        for _ in 0..n {
            let child = std::process::Command::new("/bin/sleep")
                .arg("600")
                .spawn()
                .unwrap();
            let pid = child.id();
            stand_ins.push(child);
            let t = Instant::now();
            let reply = d.account(&user.name, pid);
            times.push(t.elapsed());
            assert!(
                matches!(reply, Reply::Admission(Admission::Admitted { .. })),
                "{reply:?}"
            );
            d.call(&Request::PamCloseSession(PamSession {
                user: user.name.clone(),
                pid,
                conn_id: None,
                auth_info: None,
            }));
        }
        times.sort();
        times
    };
    let p = |t: &[Duration], q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    let local = measure(&hank, 100);
    let fleet = measure(&gina, 100);
    eprintln!(
        "admission p50/p99: local {:?}/{:?}, with a fleet-wide slot {:?}/{:?}",
        p(&local, 0.5),
        p(&local, 0.99),
        p(&fleet, 0.5),
        p(&fleet, 0.99)
    );
    assert!(
        p(&fleet, 0.99) < p(&local, 0.99) + Duration::from_millis(5),
        "fleet admission p99 {:?} vs local {:?}",
        p(&fleet, 0.99),
        p(&local, 0.99)
    );
    // Every slot was freed at close.
    assert!(wait_until(Duration::from_secs(5), || cluster
        .keys(&format!("/enforcer/slots/{}/", gina.name))
        .is_empty()));
    for mut c in stand_ins {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_lock_made_while_a_node_was_cut_off_takes_effect_when_it_reconnects() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let ivy = TestUser::create("fi");
    let a = node(&cluster, "node-a", &[&ivy], "");
    // C reaches etcd only through member 2: stopping that member cuts C off, while the
    // cluster (members 0 and 1) goes on taking locks.
    let c = {
        let daemon = TestDaemon::start(&format!(
            "[locks]\nall_processes = false\n[fleet]\netcd_endpoints = {}\nnode_name = \"node-c\"\n\
             lease_ttl = \"{LEASE_TTL_SECS}s\"\n",
            cluster.member_toml(2)
        ));
        let sshd = TestSshd::start(daemon.pam(), &[&ivy], "");
        Node {
            name: "node-c".into(),
            daemon,
            sshd,
        }
    };
    let nodes = [a, c];
    wait_registered(&cluster, &nodes);
    let mut on_c = HeldSsh::open(&nodes[1].sshd, &ivy);
    cluster.stop_member(2);
    // Members 0 and 1 elect a leader if 2 was it.
    cluster.wait_healthy(Duration::from_secs(20));
    nodes[0].daemon.ctl_ok(&[
        "lock",
        "user",
        &ivy.name,
        "--reason",
        "made while C was away",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!on_c.exited(), "C cannot have heard of the lock yet");
    cluster.start_member(2);
    assert!(
        wait_until(Duration::from_secs(20), || on_c.exited()),
        "C did not apply the lock made while it was cut off:\n{}",
        nodes[1].daemon.log()
    );
    let refused = HeldSsh::try_open(&nodes[1].sshd, &ivy)
        .err()
        .expect("ivy logged in on C");
    assert!(refused.contains("made while C was away"), "{refused}");
}

#[test]
fn tls_with_client_certificates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start_tls(3);
    let tls = cluster.tls.as_ref().unwrap();
    let jack = TestUser::create("fj");
    let a = node(&cluster, "node-a", &[&jack], &tls.fleet_toml());
    let nodes = [a];
    wait_registered(&cluster, &nodes);
    let mut held = HeldSsh::open(&nodes[0].sshd, &jack);
    assert!(wait_until(Duration::from_secs(5), || {
        !cluster.keys("/enforcer/sessions/node-a/").is_empty()
    }));
    nodes[0].daemon.ctl_ok(&["lock", "user", &jack.name]);
    assert!(wait_until(Duration::from_secs(5), || held.exited()));
    assert!(!cluster.keys("/enforcer/locks/user/").is_empty());
    // Without a client certificate etcd refuses the node: its view never becomes current.
    let bare = TestDaemon::start(&format!(
        "[fleet]\netcd_endpoints = {}\nnode_name = \"node-x\"\nca = \"{}\"\nstale_after = \"2s\"\non_unreachable = \"strict\"\n",
        cluster.endpoints_toml(),
        tls.ca.display()
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert!(cluster.keys("/enforcer/nodes/node-x").is_empty());
    let status = bare.ctl_json(&["status"]);
    let fleet = status["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "fleet")
        .cloned()
        .expect("status has the fleet feature");
    assert_eq!(fleet["supported"], false, "{fleet}");
}

#[test]
fn sessions_over_the_fleet_session_limit_are_ended_at_their_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let kim = TestUser::create("fk");
    let a = node(&cluster, "node-a", &[&kim], "max_sessions_per_user = 2\n");
    let b = node(&cluster, "node-b", &[&kim], "max_sessions_per_user = 2\n");
    let nodes = [a, b];
    wait_registered(&cluster, &nodes);
    let _one = HeldSsh::open(&nodes[0].sshd, &kim);
    let _two = HeldSsh::open(&nodes[1].sshd, &kim);
    assert!(wait_until(Duration::from_secs(5), || {
        cluster
            .keys(&format!("/enforcer/session-slots/{}/", kim.name))
            .len()
            == 2
    }));
    // The third session, on either node, is ended right after it starts.
    let third = HeldSsh::try_open_cmd(
        nodes[0]
            .sshd
            .ssh(&kim, "sleep 1; echo enforcer-ready; exec sleep 600"),
    );
    // Told why on its stderr.
    let err = third.err().expect("a third session ran at fleet limit 2");
    assert!(err.contains("across the fleet"), "{err}");
    nodes[0].daemon.wait_audit("session refused", |v| {
        v["event"] == "session_refused" && v["reason"] == "fleet_max_sessions_per_user"
    });
    assert_eq!(
        cluster
            .keys(&format!("/enforcer/session-slots/{}/", kim.name))
            .len(),
        2
    );
    // A session that ends frees its slot.
    drop(_two);
    assert!(wait_until(Duration::from_secs(10), || {
        cluster
            .keys(&format!("/enforcer/session-slots/{}/", kim.name))
            .len()
            == 1
    }));
    let _three = HeldSsh::open(&nodes[0].sshd, &kim);
}
