//! `cargo xtask bench fleet`: the fleet on a real 3-member etcd cluster (loopback, data in
//! /dev/shm) with three enforcerd nodes and their sshd on this machine:
//! - lock propagation: from `enforcerctl lock user` on node A to the user's SSH connections on
//!   B and C ended, p50/p99 over rounds;
//! - admission (PAM account round trip) with a fleet-wide slot vs a local-only user, p50/p99,
//!   and the fleet admission split into etcd's transaction, the daemon's share and the
//!   socket's, from the node's timing lines (`split.rs`); the same admissions again against a
//!   one-member etcd (no replica sharing the machine's 2 vCPUs);
//! - etcd writes per connection: the store revision's growth per login + logout with a
//!   fleet-wide limit (registration, slot, their deletes).
//! - the scale run (`scale.rs`): hundreds of simulated nodes against the real cluster, and
//!   README's projection from it. `cargo xtask bench fleet scale [NODES [CONNS]]` runs only it
//!   (default 300 nodes × 100 connections); `cargo xtask bench fleet nodes` only the three
//!   real nodes.

mod floor;
mod scale;
mod split;

use std::time::{Duration, Instant};

use enforcer_proto::{Admission, Client, PamSession, Reply, Request};
use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    daemon::account_request,
    etcd::EtcdCluster,
    require_root,
    ssh::{HeldSsh, wait_until},
};

const ROUNDS: usize = 15;
const ADMISSIONS: usize = 1000;
/// The idle pause before each step of the paced admission run.
const PACE: Duration = Duration::from_millis(20);

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

/// One request on a fresh connection to the PAM socket, as pam_enforcer sends it (the public
/// socket's connections are served by lower-priority threads).
fn pam_call(d: &TestDaemon, req: &Request) -> Reply {
    Client::connect(&d.pam_socket, Duration::from_secs(5))
        .unwrap()
        .call(req)
        .unwrap()
}

/// One PAM account round trip for a fresh process of `u` (then its close, untimed).
fn admit(d: &TestDaemon, u: &TestUser) -> Duration {
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    let reply = pam_call(d, &account_request(&u.name, pid));
    let took = t.elapsed();
    assert!(
        matches!(reply, Reply::Admission(Admission::Admitted { .. })),
        "{reply:?}"
    );
    pam_call(
        d,
        &Request::PamCloseSession(PamSession {
            user: u.name.clone(),
            pid,
            conn_id: None,
            auth_info: None,
        }),
    );
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// The cluster's store revision (every write raises it by one).
pub(crate) fn revision(cluster: &EtcdCluster) -> i64 {
    let out = cluster.ctl(&["get", "/enforcer-test/health", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    // Hundreds of simulated nodes hold thousands of connections (and so do etcd's members,
    // which inherit the limit).
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 65536, 65536);
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg =
        |i: usize, default: usize| named.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let scale = scale::Scale {
        nodes: arg(1, 300),
        conns: arg(2, 100),
    };
    // SAFETY: no other thread yet. The nodes' daemons inherit it (see `split`).
    unsafe { std::env::set_var("ENFORCER_TEST_DAEMON_LOG", split::LOG_FILTER) };
    let only = named.first().map(String::as_str);
    if only != Some("scale") {
        three_nodes();
        one_member();
    }
    if only != Some("nodes") {
        scale::run(&EtcdCluster::start(3), &scale);
    }
}

/// A node on `cluster` where every user has a (high) fleet-wide connection limit but
/// `local_user`, who has local limits only.
fn start_node(cluster: &EtcdCluster, name: &str, local_user: &TestUser) -> TestDaemon {
    TestDaemon::start(&format!(
        "[locks]\nall_processes = false\n[fleet]\netcd_endpoints = {}\nnode_name = \"{name}\"\n\
         max_connections_per_user = 1000\n[[rules]]\nusers = [\"{}\"]\nfleet_max_connections_per_user = 0\n",
        cluster.endpoints_toml(),
        local_user.name
    ))
}

/// Three real nodes (enforcerd + sshd each): lock propagation, admission against etcd's floor,
/// writes per connection.
fn three_nodes() {
    let cluster = EtcdCluster::start(3);
    let user = TestUser::create("bf");
    let local_user = TestUser::create("bl");
    let nodes: Vec<(TestDaemon, TestSshd)> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| {
            let d = start_node(&cluster, n, &local_user);
            let s = TestSshd::start(d.pam(), &[&user, &local_user], "");
            (d, s)
        })
        .collect();
    assert!(wait_until(Duration::from_secs(15), || cluster
        .keys("/enforcer/nodes/")
        .len()
        == 3));
    std::thread::sleep(Duration::from_millis(500));

    println!("## three-member etcd, three nodes");
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
    let mut floor = floor::Floor::connect(&cluster.endpoints());
    // Back to back (each thread stays warm), then paced like sporadic logins (each step after
    // an idle pause: threads and vCPUs wake up on the path, as a real node's would).
    for pace in [Duration::ZERO, PACE] {
        admissions(d, (&user, &local_user), &mut floor, pace);
    }
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

/// The same admissions against a one-member etcd: a commit with no replica to reach or to wake
/// on these 2 vCPUs. A lower bound of etcd's part, not a cluster: a real one adds a round trip
/// to a follower (on machines of its own) to each commit.
fn one_member() {
    let cluster = EtcdCluster::start(1);
    let user = TestUser::create("bg");
    let local_user = TestUser::create("bm");
    let d = start_node(&cluster, "node-m", &local_user);
    assert!(wait_until(Duration::from_secs(15), || cluster
        .keys("/enforcer/nodes/")
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(500));
    let mut floor = floor::Floor::connect(&cluster.endpoints());
    println!("## one-member etcd");
    for pace in [Duration::ZERO, PACE] {
        admissions(&d, (&user, &local_user), &mut floor, pace);
    }
}

/// Admissions of `users.0` (a fleet-wide slot) and `users.1` (local limits only) on node `d`,
/// interleaved with etcd's floor so the machine's noise falls on every variant alike; `pace`
/// idle before each step.
fn admissions(
    d: &TestDaemon,
    users: (&TestUser, &TestUser),
    floor: &mut floor::Floor,
    pace: Duration,
) {
    let (mut fleet, mut local, mut raw, mut raw_leader) = (vec![], vec![], vec![], vec![]);
    let logged = d.log().len();
    for _ in 0..ADMISSIONS {
        std::thread::sleep(pace);
        fleet.push(admit(d, users.0));
        std::thread::sleep(pace);
        local.push(admit(d, users.1));
        std::thread::sleep(pace);
        raw.push(floor.slot(false));
        std::thread::sleep(pace);
        raw_leader.push(floor.slot(true));
    }
    let how = match pace.is_zero() {
        true => "back to back".to_owned(),
        false => format!("paced, {} ms idle before each", pace.as_millis()),
    };
    println!("### admissions, {how}");
    show("admission, local limits only", local);
    let daemon = split::from_log(&d.log()[logged..]);
    show("admission with a fleet-wide slot", fleet.clone());
    split::show(&fleet, &daemon);
    show(
        "etcd floor: the slot transaction alone, client on every member",
        raw,
    );
    show(
        "etcd floor: the slot transaction alone, client on the leader",
        raw_leader,
    );
}
