//! The node's one lease (not one per session: shared/DESIGN.md part E), its node key, and the
//! writer of everything under the lease: live connections and fleet-wide slots. Writes are
//! applied in order (a connection's put never overtakes its delete). When the lease is lost
//! (etcd unreachable for longer than its TTL), a new one is granted and every key this node
//! holds is written again under it.

use std::{collections::BTreeMap, sync::Arc, sync::atomic::Ordering, time::Duration};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::{ClientRx, Health, Write, client_of, timed};
use crate::core::{
    fleet::{Keys, NodeValue},
    rfc3339,
};

/// Most operations per etcd transaction (etcd's default `--max-txn-ops` is 128).
const BATCH: usize = 100;

pub(super) struct LeaseTask {
    pub client: ClientRx,
    pub keys: Arc<Keys>,
    pub ttl: Duration,
    pub version: String,
    pub health: Arc<Health>,
    /// The lease in force (0: none).
    pub lease: watch::Sender<i64>,
    pub writes: mpsc::UnboundedReceiver<Write>,
}

pub(super) fn start(task: LeaseTask) {
    tokio::spawn(task.run());
}

impl LeaseTask {
    async fn run(mut self) {
        let Some(mut client) = client_of(&mut self.client).await else {
            return;
        };
        let started = rfc3339(OffsetDateTime::now_utc());
        // Every key this node holds under its lease, as last written: written again under a
        // new lease.
        let mut held: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let ttl_secs = self.ttl.as_secs().max(2) as i64;
        loop {
            let lease = match timed(client.lease_grant(ttl_secs, None)).await {
                Ok(r) => r.id(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot grant the node's lease yet");
                    self.pending(&mut held);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.health.contact();
            // Everything held, under the new lease, with the node key.
            self.pending(&mut held);
            let node = self.node_value(&started, lease);
            let mut all: Vec<(String, Vec<u8>)> =
                held.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            all.push((self.keys.node_key(), node));
            if let Err(e) = put_all(&mut client, &all, lease).await {
                tracing::warn!(error = %e, "cannot register this node in etcd; retrying");
                continue;
            }
            self.health.leased.store(true, Ordering::Relaxed);
            let _ = self.lease.send(lease);
            tracing::info!(lease, keys = held.len(), "node registered in etcd");
            self.keep(&mut client, lease, &mut held).await;
            self.health.leased.store(false, Ordering::Relaxed);
            let _ = self.lease.send(0);
            tracing::warn!(lease, "the node's etcd lease was lost; registering again");
        }
    }

    fn node_value(&self, started: &str, lease: i64) -> Vec<u8> {
        serde_json::to_vec(&NodeValue {
            version: self.version.clone(),
            started: started.to_owned(),
            registered: rfc3339(OffsetDateTime::now_utc()),
            lease,
        })
        .unwrap_or_default()
    }

    /// Takes the queued writes into `held` (for when they cannot be written now).
    fn pending(&mut self, held: &mut BTreeMap<String, Vec<u8>>) {
        while let Ok(w) = self.writes.try_recv() {
            match w {
                Write::Put(k, v) => {
                    held.insert(k, v);
                }
                Write::Delete(k) => {
                    held.remove(&k);
                }
                Write::Remember(k, v) => {
                    held.insert(k, v);
                }
            }
        }
    }

    /// Keeps `lease` alive and applies writes under it until it is lost.
    async fn keep(
        &mut self,
        client: &mut Client,
        lease: i64,
        held: &mut BTreeMap<String, Vec<u8>>,
    ) {
        let beat = self.ttl / 3;
        let mut tick = tokio::time::interval(beat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut keeper = None;
        let mut last_ok = tokio::time::Instant::now();
        // Keys whose last write failed: written again from `held` at the next beat.
        let mut retry: std::collections::BTreeSet<String> = Default::default();
        loop {
            tokio::select! {
                w = self.writes.recv() => {
                    let Some(w) = w else { return };
                    let mut batch = vec![w];
                    while batch.len() < BATCH {
                        match self.writes.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    let keys = apply(held, batch);
                    self.write(client, held, keys, lease, &mut retry).await;
                }
                _ = tick.tick() => {
                    if !retry.is_empty() {
                        let keys = std::mem::take(&mut retry).into_iter().collect();
                        self.write(client, held, keys, lease, &mut retry).await;
                    }
                    if keeper.is_none() {
                        keeper = timed(client.lease_keep_alive(lease)).await.ok();
                    }
                    let Some((k, stream)) = keeper.as_mut() else {
                        if last_ok.elapsed() > self.ttl { return; }
                        continue;
                    };
                    let answer = match k.keep_alive().await {
                        Ok(()) => timed(stream.message()).await,
                        Err(e) => Err(e.to_string()),
                    };
                    match answer {
                        Ok(Some(r)) if r.ttl() > 0 => {
                            last_ok = tokio::time::Instant::now();
                            self.health.contact();
                        }
                        Ok(Some(_)) => return, // expired: etcd deleted our keys
                        Ok(None) | Err(_) => {
                            keeper = None;
                            if last_ok.elapsed() > self.ttl { return; }
                        }
                    }
                }
            }
        }
    }
}

impl LeaseTask {
    /// Writes `keys` as `held` has them (absent: deleted); failed ones go to `retry`.
    async fn write(
        &self,
        client: &mut Client,
        held: &BTreeMap<String, Vec<u8>>,
        keys: Vec<String>,
        lease: i64,
        retry: &mut std::collections::BTreeSet<String>,
    ) {
        if keys.is_empty() {
            return;
        }
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| match held.get(k) {
                Some(v) => TxnOp::put(
                    k.clone(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                None => TxnOp::delete(k.clone(), None),
            })
            .collect();
        match timed(client.txn(Txn::new().and_then(ops))).await {
            Ok(_) => self.health.contact(),
            Err(e) => {
                tracing::warn!(error = %e, keys = keys.len(), "cannot write live sessions to etcd; retrying");
                retry.extend(keys);
            }
        }
    }
}

/// Applies `batch` to `held`; returns the keys to write (each once: etcd refuses a transaction
/// that names a key twice).
fn apply(held: &mut BTreeMap<String, Vec<u8>>, batch: Vec<Write>) -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for w in batch {
        match w {
            Write::Put(k, v) => {
                held.insert(k.clone(), v);
                keys.insert(k);
            }
            Write::Delete(k) => {
                held.remove(&k);
                keys.insert(k);
            }
            Write::Remember(k, v) => {
                held.insert(k, v);
            }
        }
    }
    keys.into_iter().collect()
}

/// Puts every key under `lease`, in transactions of at most [`BATCH`].
async fn put_all(client: &mut Client, all: &[(String, Vec<u8>)], lease: i64) -> Result<(), String> {
    for chunk in all.chunks(BATCH) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| {
                TxnOp::put(
                    k.clone(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        timed(client.txn(Txn::new().and_then(ops))).await?;
    }
    Ok(())
}
