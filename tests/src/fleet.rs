//! A fleet on this machine for the fleet tests: enforcerd nodes (own pin dir, sockets and
//! sshd each) on a real etcd cluster.

use std::{
    sync::{Barrier, Mutex},
    time::Duration,
};

use crate::{
    TestDaemon, TestSshd, TestUser,
    etcd::EtcdCluster,
    ssh::{HeldSsh, wait_until},
};

/// The nodes' lease TTL: short, so a dead node vanishes within the test.
pub const LEASE_TTL_SECS: u64 = 3;

/// One node: its daemon and its sshd.
pub struct Node {
    pub name: String,
    pub daemon: TestDaemon,
    pub sshd: TestSshd,
}

/// Every node shares this host, so `locks.all_processes` is off: a node's uid sweep would end
/// the other nodes' sessions and hide whether the lock reached them.
pub fn node(cluster: &EtcdCluster, name: &str, users: &[&TestUser], fleet_extra: &str) -> Node {
    node_on(&cluster.endpoints_toml(), name, users, fleet_extra)
}

/// A node that reaches etcd through `endpoints` (TOML list) only.
pub fn node_on(endpoints: &str, name: &str, users: &[&TestUser], fleet_extra: &str) -> Node {
    let daemon = TestDaemon::start(&format!(
        "[locks]\nall_processes = false\n\
         [fleet]\netcd_endpoints = {endpoints}\nnode_name = \"{name}\"\nlease_ttl = \"{LEASE_TTL_SECS}s\"\n{fleet_extra}\n"
    ));
    let sshd = TestSshd::start(daemon.pam(), users, "");
    Node {
        name: name.into(),
        daemon,
        sshd,
    }
}

/// Nodes A, B and C.
pub fn fleet(cluster: &EtcdCluster, users: &[&TestUser], fleet_extra: &str) -> Vec<Node> {
    ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| node(cluster, n, users, fleet_extra))
        .collect()
}

/// Waits until every node is registered in etcd (its lease granted, its lock watch up).
pub fn wait_registered(cluster: &EtcdCluster, nodes: &[Node]) {
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

/// The node's `fleet` feature in `enforcerctl status`.
pub fn fleet_feature(daemon: &TestDaemon) -> serde_json::Value {
    daemon.ctl_json(&["status"])["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "fleet")
        .cloned()
        .expect("status has the fleet feature")
}

/// `n` logins of `user` started at once, spread over `nodes` in turn: the connections held and
/// the refusals (ssh's stderr).
pub fn race_logins(nodes: &[Node], user: &TestUser, n: usize) -> (Vec<HeldSsh>, Vec<String>) {
    let barrier = Barrier::new(n);
    let (held, refused) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for i in 0..n {
            let (sshd, barrier, held, refused) =
                (&nodes[i % nodes.len()].sshd, &barrier, &held, &refused);
            s.spawn(move || {
                barrier.wait();
                match HeldSsh::try_open(sshd, user) {
                    Ok(h) => held.lock().unwrap().push(h),
                    Err(e) => refused.lock().unwrap().push(e),
                }
            });
        }
    });
    (held.into_inner().unwrap(), refused.into_inner().unwrap())
}
