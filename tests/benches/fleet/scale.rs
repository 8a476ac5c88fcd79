//! The scale run: `nodes` simulated nodes in this process, each the daemon's own fleet edge
//! (`enforcer::fleet::FleetHandle`: its own etcd client, one lease kept alive, `conns`
//! connections registered under it, the fleet-lock watch), against the real 3-member cluster.
//! It measures what etcd carries (CPU of its members, memory, database size, revisions) at
//! rest, under login churn and for a lock fanned out to every watch, and projects that to a
//! larger fleet (README "Fleet at scale").

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use enforcer::{
    config::FleetConfig,
    core::fleet::{FleetLock, LockTarget},
    fleet::{FleetEvent, FleetHandle, FleetStart, SlotOutcome},
};
use enforcer_proto::{FleetConnection, FleetSession};
use enforcer_tests::{etcd::EtcdCluster, procs};
use etcd_client::{Client, GetOptions};
use tokio::sync::mpsc;

/// What the run is asked for.
pub struct Scale {
    pub nodes: usize,
    pub conns: usize,
}

/// The current lock round: its user, when it was written, each node's delay to see it.
type Round = Arc<Mutex<Option<(String, Instant, Vec<Duration>)>>>;

/// etcd's members, summed: CPU time, RSS, database size.
struct EtcdLoad {
    cpu: Duration,
    rss_kib: u64,
    db_bytes: u64,
    revision: i64,
}

fn load(cluster: &EtcdCluster) -> EtcdLoad {
    let pids = cluster.member_pids();
    let st: serde_json::Value =
        serde_json::from_str(&cluster.ctl(&["endpoint", "status", "-w", "json"])).unwrap();
    let db_bytes = st
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Status"]["dbSize"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    EtcdLoad {
        cpu: pids.iter().map(|p| procs::cpu_time(*p)).sum(),
        rss_kib: pids.iter().map(|p| procs::resident(*p).total_kib).sum(),
        db_bytes,
        revision: crate::revision(cluster),
    }
}

fn conn(node: &str, id: u64) -> FleetConnection {
    FleetConnection {
        node: node.to_owned(),
        id,
        user: format!("user{}", id % 50),
        client: Some("10.20.30.40:51234".into()),
        since: "2026-12-02T10:00:00Z".into(),
        sessions: vec![FleetSession {
            id: id * 10,
            kind: "shell".into(),
            tty: Some("/dev/pts/3".into()),
            command: None,
        }],
    }
}

async fn count(c: &mut Client, prefix: &str) -> i64 {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .map(|r| r.count())
    .unwrap_or(-1)
}

/// Waits until `prefix` holds `want` keys; the time it took.
fn wait_count(rt: &tokio::runtime::Runtime, c: &mut Client, prefix: &str, want: i64) -> Duration {
    let t = Instant::now();
    rt.block_on(async {
        while count(c, prefix).await != want {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "{prefix}: {} keys, not {want}, after 300 s",
                count(c, prefix).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    t.elapsed()
}

pub fn run(cluster: &EtcdCluster, s: &Scale) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut probe = rt
        .block_on(Client::connect(cluster.endpoints(), None))
        .unwrap();
    let idle = load(cluster);
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let idle_cpu = (load(cluster).cpu - idle.cpu).as_secs_f64() / window.as_secs_f64();
    let round: Round = Arc::default();
    let taken = Arc::new(AtomicU64::new(0));
    let lease_ttl = FleetConfig::default().lease_ttl.0;

    // The nodes: registered (node key under its lease, lock watch established).
    let t = Instant::now();
    let handles: Vec<FleetHandle> = (0..s.nodes)
        .map(|i| {
            let node = format!("sim-{i:05}");
            let config = FleetConfig {
                etcd_endpoints: cluster.endpoints(),
                node_name: node.clone(),
                ..Default::default()
            };
            let (tx, rx) = mpsc::channel(16);
            let _guard = rt.enter();
            let h = FleetHandle::start(
                FleetStart {
                    config,
                    node,
                    version: "bench".into(),
                    local_copy: dir.path().join(format!("{i}.json")),
                    decisions: None,
                    containerd: None,
                },
                tx,
            )
            .unwrap();
            rt.spawn(see_events(rx, round.clone(), taken.clone()));
            h
        })
        .collect();
    let _ = wait_count(&rt, &mut probe, "/enforcer/nodes/", s.nodes as i64);
    let all_watching = || handles.iter().all(|h| h.watching() == (true, true));
    while !all_watching() {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "scale: {} nodes registered and watching in {:.1} s",
        s.nodes,
        t.elapsed().as_secs_f64()
    );

    // Their connections.
    let before = load(cluster);
    let t = Instant::now();
    for h in &handles {
        for id in 0..s.conns as u64 {
            h.put_connection(&conn(h.node(), id));
        }
    }
    let keys = (s.nodes * s.conns) as i64;
    wait_count(&rt, &mut probe, "/enforcer/sessions/", keys);
    let registered = load(cluster);
    println!(
        "scale: {keys} connections registered in {:.1} s: {:.2} revisions per connection, \
         etcd CPU {:.0} µs per connection",
        t.elapsed().as_secs_f64(),
        (registered.revision - before.revision) as f64 / keys as f64,
        (registered.cpu - before.cpu).as_secs_f64() * 1e6 / keys as f64,
    );

    // At rest: keep-alives only.
    let a = load(cluster);
    std::thread::sleep(window);
    let b = load(cluster);
    let beats = s.nodes as f64 * window.as_secs_f64() / (lease_ttl / 3).as_secs_f64();
    let rest_cpu = (b.cpu - a.cpu).as_secs_f64() / window.as_secs_f64() - idle_cpu;
    println!(
        "scale: at rest: etcd CPU {:.1} ms/s for the nodes (above {:.1} ms/s of the idle \
         cluster), {:.2} revisions/s, ~{:.0} lease keep-alives/s",
        rest_cpu * 1e3,
        idle_cpu * 1e3,
        (b.revision - a.revision) as f64 / window.as_secs_f64(),
        beats / window.as_secs_f64()
    );

    // Login churn, as the daemon does it: a fleet-wide slot taken (its answer awaited), the
    // connection registered; at logout both deleted.
    let (logins, batch) = (2000u64, 100u64);
    let c0 = load(cluster);
    let t = Instant::now();
    for b in 0..logins / batch {
        let ids = (b * batch..(b + 1) * batch)
            .map(|n| (&handles[n as usize % handles.len()], 1_000_000 + n));
        for (h, id) in ids.clone() {
            h.acquire("churn", id, 1_000_000, Duration::from_secs(2));
            h.put_connection(&conn(h.node(), id));
        }
        while taken.load(Ordering::Relaxed) < (b + 1) * batch {
            std::thread::sleep(Duration::from_millis(1));
        }
        for (h, id) in ids {
            h.release("churn", id);
            h.remove_connection(id);
        }
    }
    wait_count(&rt, &mut probe, "/enforcer/sessions/", keys);
    wait_count(&rt, &mut probe, "/enforcer/slots/churn/", 0);
    let c1 = load(cluster);
    println!(
        "scale: churn: {logins} logins in {:.1} s: {:.2} revisions per login, etcd CPU {:.0} µs \
         per login",
        t.elapsed().as_secs_f64(),
        (c1.revision - c0.revision) as f64 / logins as f64,
        (c1.cpu - c0.cpu).as_secs_f64() * 1e6 / logins as f64
    );

    // Lock fan-out: one lock written, seen by every node's watch.
    let mut delays = Vec::new();
    let mut lasts = Vec::new();
    let f0 = load(cluster);
    let rounds = 10;
    for r in 0..rounds {
        let user = format!("simlock{r}");
        *round.lock().unwrap() = Some((user.clone(), Instant::now(), Vec::new()));
        let lock = FleetLock::new(
            LockTarget::User(user.clone()),
            Some("bench".into()),
            None,
            "bench".into(),
            handles[0].node(),
            time::OffsetDateTime::now_utc(),
        );
        rt.block_on(handles[0].lock(lock, false)).unwrap();
        let t = Instant::now();
        loop {
            let seen = round.lock().unwrap().as_ref().unwrap().2.len();
            if seen == s.nodes {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{seen} of {} nodes saw the lock",
                s.nodes
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (_, _, mut d) = round.lock().unwrap().take().unwrap();
        d.sort();
        lasts.push(*d.last().unwrap());
        delays.extend(d);
        rt.block_on(handles[0].unlock(LockTarget::User(user)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let f1 = load(cluster);
    delays.sort();
    lasts.sort();
    let pick = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "scale: lock seen by each of {} nodes: p50 {:.1} ms, p99 {:.1} ms; by the last node: median {:.1} ms, max {:.1} ms; \
         etcd CPU per lock + unlock {:.1} ms",
        s.nodes,
        pick(&delays, 0.5),
        pick(&delays, 0.99),
        pick(&lasts, 0.5),
        pick(&lasts, 1.0),
        (f1.cpu - f0.cpu).as_secs_f64() * 1e3 / rounds as f64
    );

    let own = procs::resident(std::process::id()).total_kib;
    println!(
        "scale: etcd (3 members, summed) RSS {:.0} MiB with the nodes vs {:.0} MiB idle; database {:.1} MiB vs {:.1} MiB; \
         this process (all simulated nodes) {:.0} MiB",
        registered.rss_kib as f64 / 1024.0,
        idle.rss_kib as f64 / 1024.0,
        registered.db_bytes as f64 / 1048576.0,
        idle.db_bytes as f64 / 1048576.0,
        own as f64 / 1024.0
    );
    project(s, &idle, &registered, rest_cpu, &c0, &c1, logins);
    drop(handles);
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// Each node's events: the delay at which it first saw the current round's lock; slots taken.
async fn see_events(mut rx: mpsc::Receiver<FleetEvent>, round: Round, taken: Arc<AtomicU64>) {
    while let Some(ev) = rx.recv().await {
        let locks = match ev {
            FleetEvent::Locks(locks) => locks,
            FleetEvent::Slot { outcome, .. } => {
                assert_eq!(outcome, SlotOutcome::Taken, "a churn login's slot");
                taken.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // No pods on the simulated nodes: no exec to identify, no grant of theirs.
            FleetEvent::ExecIdentified { .. } | FleetEvent::GrantLapsed(_) => continue,
        };
        let mut r = round.lock().unwrap();
        if let Some((user, at, seen)) = r.as_mut()
            && locks.iter().any(|(l, _)| l.target.name() == user)
        {
            seen.push(at.elapsed());
        }
    }
}

/// Linear projection to 10 000 nodes × 100 connections from the measured per-key and per-node
/// costs (printed with the assumptions).
fn project(
    s: &Scale,
    idle: &EtcdLoad,
    registered: &EtcdLoad,
    rest_cpu: f64,
    c0: &EtcdLoad,
    c1: &EtcdLoad,
    logins: u64,
) {
    let (nodes, conns) = (10_000f64, 100f64);
    let keys = (s.nodes * (s.conns + 1)) as f64;
    let db_per_key = (registered.db_bytes.saturating_sub(idle.db_bytes)) as f64 / keys;
    let rss_per_key = (registered.rss_kib.saturating_sub(idle.rss_kib)) as f64 * 1024.0 / keys;
    let rest_per_node = rest_cpu / s.nodes as f64;
    let cpu_per_login = (c1.cpu - c0.cpu).as_secs_f64() / logins as f64;
    let revs_per_login = (c1.revision - c0.revision) as f64 / logins as f64;
    // Assumed: every connection lasts an hour on average, so the fleet logs in
    // nodes × conns / 3600 times a second.
    let login_rate = nodes * conns / 3600.0;
    let proj_keys = nodes * (conns + 1.0);
    println!(
        "projection for 10 000 nodes × 100 connections (linear in what was measured; logins: \
         each connection lasting 1 h → {login_rate:.0}/s):\n  keys {proj_keys:.0} (twice as many \
         with a fleet limit: a slot each); database ≈ {:.0} MiB ({db_per_key:.0} B/key); etcd RSS \
         ≈ {:.0} MiB per member ({rss_per_key:.0} B/key over 3 members);\n  at rest ≈ {:.2} CPU cores summed \
         over the members ({:.0} µs/s per node: keep-alives every {:?}); logins ≈ {:.2} cores, \
         {:.0} revisions/s",
        db_per_key * proj_keys / 1048576.0,
        rss_per_key * proj_keys / 3.0 / 1048576.0,
        rest_per_node * nodes,
        rest_per_node * 1e6,
        FleetConfig::default().lease_ttl.0 / 3,
        cpu_per_login * login_rate,
        revs_per_login * login_rate
    );
}
