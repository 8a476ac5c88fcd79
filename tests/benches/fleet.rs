//! `cargo xtask bench fleet`: the fleet on a real 3-member etcd cluster (loopback, data in
//! /dev/shm) with three enforcerd nodes and their sshd on this machine:
//! - lock propagation: from `enforcerctl lock user` on node A to the user's SSH connections on
//!   B and C ended, p50/p99 over rounds;
//! - admission (PAM account round trip) with a fleet-wide slot vs a local-only user, p50/p99;
//! - etcd writes per connection: the store revision's growth per login + logout with a
//!   fleet-wide limit (registration, slot, their deletes).
//! Not yet here: the scale run of hundreds of simulated nodes.

use std::time::{Duration, Instant};

use enforcer_proto::{Admission, PamSession, Reply, Request};
use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    etcd::EtcdCluster,
    require_root,
    ssh::{HeldSsh, wait_until},
};

const ROUNDS: usize = 15;
const ADMISSIONS: usize = 200;

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn show(what: &str, mut t: Vec<Duration>) {
    t.sort();
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms (n = {})",
        pct(&t, 0.5).as_secs_f64() * 1e3,
        pct(&t, 0.99).as_secs_f64() * 1e3,
        t.len()
    );
}

fn revision(cluster: &EtcdCluster) -> i64 {
    let out = cluster.ctl(&["get", "/enforcer-test/health", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

fn main() {
    if !require_root() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let user = TestUser::create("bf");
    let local = TestUser::create("bl");
    let nodes: Vec<(TestDaemon, TestSshd)> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| {
            let d = TestDaemon::start(&format!(
                "[locks]\nall_processes = false\n[fleet]\netcd_endpoints = {}\nnode_name = \"{n}\"\n\
                 max_connections_per_user = 1000\n[[rules]]\nusers = [\"{}\"]\nfleet_max_connections_per_user = 0\n",
                cluster.endpoints_toml(),
                local.name
            ));
            let s = TestSshd::start(d.pam(), &[&user, &local], "");
            (d, s)
        })
        .collect();
    assert!(wait_until(Duration::from_secs(15), || cluster
        .keys("/enforcer/nodes/")
        .len()
        == 3));
    std::thread::sleep(Duration::from_millis(500));

    let mut lock = Vec::new();
    for _ in 0..ROUNDS {
        let mut b = HeldSsh::open(&nodes[1].1, &user);
        let mut c = HeldSsh::open(&nodes[2].1, &user);
        let t = Instant::now();
        nodes[0].0.ctl_ok(&["lock", "user", &user.name]);
        assert!(wait_until(Duration::from_secs(10), || b.exited() && c.exited()));
        lock.push(t.elapsed());
        nodes[0].0.ctl_ok(&["unlock", "user", &user.name]);
        assert!(wait_until(Duration::from_secs(10), || HeldSsh::try_open(
            &nodes[2].1,
            &user
        )
        .is_ok()));
    }
    show("lock on A → connections on B and C ended", lock);

    let d = &nodes[0].0;
    let measure = |u: &TestUser| {
        let mut times = Vec::new();
        for _ in 0..ADMISSIONS {
            let mut child = std::process::Command::new("/bin/sleep")
                .arg("600")
                .spawn()
                .unwrap();
            let pid = child.id();
            let t = Instant::now();
            let reply = d.account(&u.name, pid);
            times.push(t.elapsed());
            assert!(
                matches!(reply, Reply::Admission(Admission::Admitted { .. })),
                "{reply:?}"
            );
            d.call(&Request::PamCloseSession(PamSession {
                user: u.name.clone(),
                pid,
                conn_id: None,
                auth_info: None,
            }));
            let _ = child.kill();
            let _ = child.wait();
        }
        times
    };
    show("admission, local limits only", measure(&local));
    show("admission with a fleet-wide slot", measure(&user));

    let before = revision(&cluster);
    let n = 20;
    for _ in 0..n {
        HeldSsh::open(&nodes[1].1, &user).close();
    }
    // Let the deletes land.
    assert!(wait_until(Duration::from_secs(10), || cluster
        .keys(&format!("/enforcer/slots/{}/", user.name))
        .is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    let writes = (revision(&cluster) - before) as f64 / n as f64;
    println!("etcd writes (revisions) per SSH connection with a fleet limit: {writes:.1}");
}
