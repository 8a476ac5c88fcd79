//! The fleet on real servers: a 3-member etcd cluster on loopback and three enforcerd nodes on
//! this machine, each with its own pin dir, sockets and sshd. Locks made on one node end
//! sessions on the others, fleet-wide limits are exact under racing logins, a dead node
//! vanishes with its sessions and slots, TLS with client certificates. etcd's own failures
//! are in `fleet_faults.rs`; admission latency is in `cargo xtask bench fleet`.

use std::{
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use enforcer_proto::{Admission, Reply};
use enforcer_tests::{
    TestDaemon, TestUser,
    etcd::EtcdCluster,
    fleet::{LEASE_TTL_SECS, fleet, fleet_feature, node, race_logins, wait_registered},
    require_root,
    ssh::{HeldSsh, wait_until},
    users::Alias,
};

/// The tests start many processes: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

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

    let (mut held, refusals) = race_logins(&nodes, &carol, 30);
    let admitted = held.len();
    assert_eq!(
        admitted, 5,
        "admitted {admitted} of 30 at fleet limit 5; refusals: {refusals:#?}"
    );
    assert!(
        refusals.iter().all(|e| e.contains("across the fleet")),
        "a refusal for another reason: {refusals:#?}"
    );
    // The 25 refused logins' keys are deleted right after their refusal.
    assert!(
        cluster.wait_keys(
            &format!("/enforcer/slots/{}/", carol.name),
            5,
            Duration::from_secs(5)
        ),
        "{:?}",
        cluster.keys("/enforcer/slots/")
    );
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
    // A refused login leaves nothing in the kernel (it was registered there while etcd was
    // asked): the nodes' connection maps hold the 5 admitted ones.
    let in_kernel: u64 = nodes
        .iter()
        .map(|n| {
            let status = n.daemon.ctl_json(&["status"]);
            let maps = status["maps"].as_array().unwrap().clone();
            let conns = maps.iter().find(|m| m["name"] == "ENF_CONNS").unwrap();
            conns["entries"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        in_kernel, 5,
        "connections left in the kernel by refused logins"
    );

    // Logout frees the slots at once.
    held.clear();
    assert!(
        wait_until(Duration::from_secs(10), || cluster
            .keys(&format!("/enforcer/slots/{}/", carol.name))
            .is_empty()),
        "slots not freed at logout: {:?}",
        cluster.keys("/enforcer/slots/")
    );
    let _again = HeldSsh::open(&nodes[1].sshd, &carol);
}

/// A connection slot is taken as the account request arrives, while NSS and the node decide
/// (the login then waits for the slower of the two, not for both). Only an admitted login
/// under a fleet limit keeps it: a login refused on the node, or one with no fleet limit of
/// its own, leaves no key once its transaction answered.
#[test]
fn slots_taken_as_requests_arrive_stay_only_with_admitted_logins() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let dave = TestUser::create("fd");
    let erin = TestUser::create("fe");
    let limits = format!(
        "max_connections_per_user = 3\n[[rules]]\nusers = [\"{}\"]\nfleet_max_connections_per_user = 0\n",
        erin.name
    );
    let nodes = [node(&cluster, "node-a", &[], &limits)];
    wait_registered(&cluster, &nodes);
    let d = &nodes[0].daemon;
    let slots = |u: &TestUser| format!("/enforcer/slots/{}/", u.name);
    let mut monitors = Vec::new();
    let mut login = |u: &TestUser| {
        let m = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let reply = d.account(&u.name, m.id());
        monitors.push(m);
        reply
    };
    let admitted = |r: &Reply| matches!(r, Reply::Admission(Admission::Admitted { .. }));
    // Admitted under the limit: its slot is the one taken as the request arrived.
    let r = login(&dave);
    assert!(admitted(&r), "{r:?}");
    assert!(cluster.wait_keys(&slots(&dave), 1, Duration::from_secs(5)));
    let kept = cluster.keys(&slots(&dave));
    assert!(kept[0].contains("/node-a/early-"), "{kept:?}");
    // No fleet limit of erin's own, and refused here (a node-only lock of dave): admitted and
    // refused, with no key left after the transactions' deadline (1.5 s).
    let r = login(&erin);
    assert!(admitted(&r), "{r:?}");
    d.ctl_ok(&["lock", "user", &dave.name, "--force", "--local"]);
    let r = login(&dave);
    assert!(
        matches!(&r, Reply::Admission(Admission::Refused { reason, .. }) if reason == "user_locked"),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(cluster.keys(&slots(&erin)), Vec::<String>::new());
    // The lock ended dave's first connection too: its slot went with it.
    assert_eq!(cluster.keys(&slots(&dave)), Vec::<String>::new());
    for mut m in monitors {
        let _ = m.kill();
        let _ = m.wait();
    }
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
    let fleet = fleet_feature(&bare);
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
    assert!(cluster.wait_keys(
        &format!("/enforcer/session-slots/{}/", kim.name),
        2,
        Duration::from_secs(5)
    ));
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
    // The refused session's key is deleted right after its refusal.
    assert!(
        cluster.wait_keys(
            &format!("/enforcer/session-slots/{}/", kim.name),
            2,
            Duration::from_secs(5)
        ),
        "{:?}",
        cluster.keys("/enforcer/session-slots/")
    );
    // A session that ends frees its slot.
    drop(_two);
    assert!(cluster.wait_keys(
        &format!("/enforcer/session-slots/{}/", kim.name),
        1,
        Duration::from_secs(10)
    ));
    let _three = HeldSsh::open(&nodes[0].sshd, &kim);
}

/// Found in review: fleet slots were keyed by the name typed at login (`slots/<name>/`) and
/// `[[rules]]` matched that name, so a second passwd entry with the account's uid was neither
/// under the account's rule nor counted with its slots: one more fleet-wide limit per name.
/// Slots and rules now go by the account (NSS's name for the uid).
#[test]
fn the_fleet_limit_counts_every_name_of_the_account() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let owner = TestUser::create("fa");
    let alias = Alias::of(&owner, "faa");
    // The limit is the owner's rule only: the alias must be under it by its account.
    let rule = format!(
        "[[rules]]\nusers = [\"{}\"]\nfleet_max_connections_per_user = 1\n",
        owner.name
    );
    let nodes = [
        node(&cluster, "node-a", &[], &rule),
        node(&cluster, "node-b", &[], &rule),
    ];
    wait_registered(&cluster, &nodes);
    let monitor = || {
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = monitor();
    let reply = nodes[0].daemon.account(&owner.name, first.id());
    assert!(
        matches!(reply, Reply::Admission(Admission::Admitted { .. })),
        "{reply:?}"
    );
    let mut second = monitor();
    let reply = nodes[1].daemon.account(&alias.0, second.id());
    assert!(
        matches!(&reply, Reply::Admission(Admission::Refused { reason, .. }) if reason == "fleet_max_connections_per_user"),
        "the account's second connection, under another name on another node: {reply:?}"
    );
    // One slot, under the account's name; none under the alias (the slot taken under it as
    // the request arrived is deleted once it answered: it never counted for the account).
    assert!(
        cluster.wait_keys(
            &format!("/enforcer/slots/{}/", owner.name),
            1,
            Duration::from_secs(5)
        ),
        "{:?}",
        cluster.keys("/enforcer/slots/")
    );
    assert!(
        cluster.wait_keys(
            &format!("/enforcer/slots/{}/", alias.0),
            0,
            Duration::from_secs(5)
        ),
        "{:?}",
        cluster.keys("/enforcer/slots/")
    );
    for c in [&mut first, &mut second] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
