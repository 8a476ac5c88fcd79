//! The fleet when etcd fails: one member or all of them stopped (best_effort and strict), a
//! node cut off while a lock is made, and the raft leader killed under racing logins.

use std::{sync::Mutex, time::Duration};

use enforcer_tests::{
    TestUser,
    etcd::EtcdCluster,
    fleet::{fleet, fleet_feature, node, node_on, race_logins, wait_registered},
    require_root,
    ssh::{HeldSsh, wait_until},
};

/// The tests start many processes: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

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
    let c = node_on(&cluster.member_toml(2), "node-c", &[&ivy], "");
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
fn killing_the_etcd_leader_keeps_fleet_limits_exact_and_locks_flowing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let lena = TestUser::create("fl");
    let nodes = fleet(&cluster, &[&lena], "max_connections_per_user = 3\n");
    wait_registered(&cluster, &nodes);
    let slot_target = |n: &enforcer_tests::fleet::Node| {
        fleet_feature(&n.daemon)["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let leader = cluster.leader().expect("the cluster has a leader");
    let at_leader = format!(
        "slot transactions to the leader at {}",
        cluster.endpoints()[leader]
    );
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(5), || slot_target(n)
                .contains(&at_leader)),
            "{}: {}",
            n.name,
            slot_target(n)
        );
    }
    let first = HeldSsh::open(&nodes[0].sshd, &lena);

    // kill -9 of the leader; the other two elect a new one.
    cluster.stop_member(leader);
    cluster.wait_healthy(Duration::from_secs(20));
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader);

    // Six logins racing over the three nodes at limit 3, one slot held: exactly two more.
    let (mut held, refusals) = race_logins(&nodes, &lena, 6);
    held.push(first);
    assert_eq!(
        held.len(),
        3,
        "after the leader's death, fleet limit 3 admitted another number; refusals: {refusals:#?}\n{}",
        nodes[0].daemon.log()
    );
    assert!(
        refusals.iter().all(|e| e.contains("across the fleet")),
        "a refusal for another reason: {refusals:#?}"
    );
    // Refused logins' keys are deleted right after their refusal.
    assert!(
        cluster.wait_keys(
            &format!("/enforcer/slots/{}/", lena.name),
            3,
            Duration::from_secs(5)
        ),
        "{:?}",
        cluster.keys("/enforcer/slots/")
    );
    // Every node found the new leader (its slot transaction to the old one failed).
    let at_new = format!(
        "slot transactions to the leader at {}",
        cluster.endpoints()[new_leader]
    );
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(5), || slot_target(n).contains(&at_new)),
            "{}: {}",
            n.name,
            slot_target(n)
        );
    }

    // Locks still reach every node: a lock on C ends lena's connections on A and B.
    nodes[2].daemon.ctl_ok(&["lock", "user", &lena.name]);
    assert!(
        wait_until(Duration::from_secs(2), || held
            .iter_mut()
            .all(|h| h.exited())),
        "a connection outlived the lock after the leader changed"
    );
    assert!(
        wait_until(Duration::from_secs(10), || cluster
            .keys(&format!("/enforcer/slots/{}/", lena.name))
            .is_empty()),
        "slots left after the lock: {:?}",
        cluster.keys("/enforcer/slots/")
    );
    // The killed member rejoins.
    cluster.start_member(leader);
    cluster.wait_healthy(Duration::from_secs(20));
}
