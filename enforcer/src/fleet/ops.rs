//! What `enforcerctl` asks of the fleet: writing and deleting locks, listing every node's
//! sessions and the nodes. Each runs in a task of its own, answered straight to the caller.

use std::sync::Arc;

use enforcer_proto::{FleetConnection, NodeInfo};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{ClientRx, FleetError, Health, timed};
use crate::core::fleet::{FleetLock, Keys, LockTarget, NodeValue};

type Reply<T> = oneshot::Sender<Result<T, FleetError>>;

pub(super) enum Op {
    Lock {
        lock: FleetLock,
        replace: bool,
        reply: Reply<()>,
    },
    Unlock {
        target: LockTarget,
        reply: Reply<bool>,
    },
    Sessions {
        reply: Reply<Vec<FleetConnection>>,
    },
    Nodes {
        reply: Reply<Vec<NodeInfo>>,
    },
}

pub(super) fn start(
    client: ClientRx,
    keys: Arc<Keys>,
    health: Arc<Health>,
    mut ops: mpsc::UnboundedReceiver<Op>,
) {
    tokio::spawn(async move {
        while let Some(op) = ops.recv().await {
            let client = client.borrow().clone();
            let (keys, health) = (keys.clone(), health.clone());
            tokio::spawn(async move {
                let Some(mut c) = client else {
                    let e = || FleetError::Unreachable("not connected to etcd yet".into());
                    match op {
                        Op::Lock { reply, .. } => drop(reply.send(Err(e()))),
                        Op::Unlock { reply, .. } => drop(reply.send(Err(e()))),
                        Op::Sessions { reply } => drop(reply.send(Err(e()))),
                        Op::Nodes { reply } => drop(reply.send(Err(e()))),
                    }
                    return;
                };
                let ok = match op {
                    Op::Lock {
                        lock,
                        replace,
                        reply,
                    } => {
                        let r = retrying(&mut c, |mut c| {
                            let (keys, lock) = (keys.clone(), lock.clone());
                            async move { lock_one(&mut c, &keys, lock, replace).await }
                        })
                        .await;
                        let ok = !matches!(r, Err(FleetError::Unreachable(_)));
                        let _ = reply.send(r);
                        ok
                    }
                    Op::Unlock { target, reply } => {
                        let r = retrying(&mut c, |mut c| {
                            let key = keys.lock(&target);
                            async move {
                                timed(c.delete(key, None))
                                    .await
                                    .map(|d| d.deleted() > 0)
                                    .map_err(FleetError::Unreachable)
                            }
                        })
                        .await;
                        let ok = r.is_ok();
                        let _ = reply.send(r);
                        ok
                    }
                    Op::Sessions { reply } => {
                        let r = retrying(&mut c, |mut c| {
                            let keys = keys.clone();
                            async move { sessions(&mut c, &keys).await }
                        })
                        .await;
                        let ok = r.is_ok();
                        let _ = reply.send(r);
                        ok
                    }
                    Op::Nodes { reply } => {
                        let r = retrying(&mut c, |mut c| {
                            let keys = keys.clone();
                            async move { nodes(&mut c, &keys).await }
                        })
                        .await;
                        let ok = r.is_ok();
                        let _ = reply.send(r);
                        ok
                    }
                };
                if ok {
                    health.contact();
                }
            });
        }
    });
}

/// How long an operation is tried again after etcd could not be reached: with one member
/// down the client may still send a request to it before it learns to avoid it.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_millis(2500);

/// Runs `op` on a clone of `client`, again while it fails as unreachable, for [`RETRY_FOR`].
async fn retrying<T, F, Fut>(client: &mut etcd_client::Client, mut op: F) -> Result<T, FleetError>
where
    F: FnMut(etcd_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, FleetError>>,
{
    let start = std::time::Instant::now();
    loop {
        match op(client.clone()).await {
            Err(FleetError::Unreachable(e)) if start.elapsed() < RETRY_FOR => {
                tracing::debug!(error = %e, "etcd request failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Writes a lock: created if there is none; over an existing one only with `replace` or when
/// that one has expired.
async fn lock_one(
    c: &mut etcd_client::Client,
    keys: &Keys,
    lock: FleetLock,
    replace: bool,
) -> Result<(), FleetError> {
    let key = keys.lock(&lock.target);
    let value = lock.encode();
    let unreachable = FleetError::Unreachable;
    if replace {
        timed(c.put(key, value, None)).await.map_err(unreachable)?;
        return Ok(());
    }
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value.clone(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let done = timed(c.txn(txn)).await.map_err(unreachable)?;
    if done.succeeded() {
        return Ok(());
    }
    let existing = done
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .map(|v| FleetLock::decode(lock.target.clone(), &v));
    match existing {
        Some(e) if e.active(OffsetDateTime::now_utc()) => {
            let what = match &lock.target {
                LockTarget::User(_) => e.as_lock().refusal_message().replace("account", "user"),
                LockTarget::Node(n) => format!("node {n} is locked"),
                LockTarget::Group(g) => format!("group {g} is locked"),
            };
            Err(FleetError::AlreadyLocked(format!("{what} (fleet-wide)")))
        }
        // Expired (or gone meanwhile): replace it.
        _ => {
            timed(c.put(key, value, None)).await.map_err(unreachable)?;
            Ok(())
        }
    }
}

async fn sessions(
    c: &mut etcd_client::Client,
    keys: &Keys,
) -> Result<Vec<FleetConnection>, FleetError> {
    let r = timed(c.get(keys.sessions(), Some(GetOptions::new().with_prefix())))
        .await
        .map_err(FleetError::Unreachable)?;
    Ok(r.kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

async fn nodes(c: &mut etcd_client::Client, keys: &Keys) -> Result<Vec<NodeInfo>, FleetError> {
    let got = timed(c.get(keys.nodes(), Some(GetOptions::new().with_prefix())))
        .await
        .map_err(FleetError::Unreachable)?;
    let mut per_node: std::collections::HashMap<String, u64> = Default::default();
    for conn in sessions(c, keys).await? {
        *per_node.entry(conn.node).or_default() += 1;
    }
    let listed: Vec<(String, NodeValue)> = got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(&keys.nodes())?.to_owned();
            Some((name, serde_json::from_slice::<NodeValue>(kv.value()).ok()?))
        })
        .collect();
    // One lease lookup per node, a few dozen at a time (a large fleet lists in seconds).
    let out = futures_util::stream::iter(listed)
        .map(|(name, v)| {
            let mut c = c.clone();
            let connections = per_node.get(&name).copied().unwrap_or(0);
            async move {
                let last_seen = last_keep_alive(&mut c, v.lease)
                    .await
                    .unwrap_or(v.registered);
                NodeInfo {
                    name,
                    version: v.version,
                    started: v.started,
                    last_seen,
                    connections,
                }
            }
        })
        .buffered(32)
        .collect()
        .await;
    Ok(out)
}

/// When the lease was last kept alive (to the second): a keep-alive resets its TTL to the
/// granted one, so it happened `granted - remaining` seconds ago.
async fn last_keep_alive(c: &mut etcd_client::Client, lease: i64) -> Option<String> {
    let r = timed(c.lease_time_to_live(lease, None)).await.ok()?;
    let ago = (r.granted_ttl() - r.ttl()).max(0);
    (r.ttl() > 0)
        .then(|| crate::core::rfc3339(OffsetDateTime::now_utc() - time::Duration::seconds(ago)))
}
