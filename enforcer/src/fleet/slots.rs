//! Fleet-wide connection slots, exact: a slot is a key `<prefix>/slots/<user>/<node>/<conn>`
//! under the node's lease. ONE transaction puts the login's key and counts the user's keys;
//! the login holds a slot when the count is within the limit, else it deletes its key
//! (`core::fleet::slot_decision` says why that is exact). No compare, no retry: logins of one
//! user racing over many nodes cost one round trip each instead of one round per winner, and
//! an admission never reads before it writes. A slot is freed by deleting its key at logout,
//! or by etcd when the node's lease expires (its node died).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Notify, mpsc, watch};

use super::{ClientRx, FleetEvent, Health, Write, client::Leader};
pub use crate::core::fleet::book::{EarlySlot, SlotOutcome};
use crate::core::fleet::{Keys, early_slot_wanted};

/// A request for a slot: `key` under `prefix` (the user's slots of one kind).
pub(super) struct Acquire {
    pub prefix: String,
    pub key: String,
    pub tag: SlotTag,
    /// `None`: the limit is not known yet (an early slot): the outcome is the count.
    pub limit: Option<u32>,
    pub deadline: Duration,
}

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTag {
    /// A connection (`[fleet] max_connections_per_user`), by its id.
    Connection(u64),
    /// A session (`[fleet] max_sessions_per_user`): connection id, session id.
    Session(u64, u64),
    /// A connection's, taken as its account request arrived ([`EarlySlot`]), by its number.
    Early(u64),
}

pub(super) struct SlotTask {
    pub client: ClientRx,
    /// The client on the leader's endpoint, tried first (see [`super::client::Leader`]).
    pub leader: watch::Receiver<Option<Leader>>,
    /// Asks for the leader to be looked up again.
    pub leader_again: Arc<Notify>,
    pub keys: Arc<Keys>,
    pub lease: watch::Receiver<i64>,
    pub health: Arc<Health>,
    pub events: mpsc::Sender<FleetEvent>,
    pub requests: mpsc::UnboundedReceiver<Acquire>,
    pub writes: mpsc::UnboundedSender<Write>,
}

pub(super) fn start(mut task: SlotTask) {
    tokio::spawn(async move {
        while let Some(req) = task.requests.recv().await {
            // Each request in its own task: one slow answer delays no other login.
            let client = task.client.borrow().clone();
            let leader = task.leader.borrow().clone();
            let again = task.leader_again.clone();
            let lease = *task.lease.borrow();
            let (keys, health, events, writes) = (
                task.keys.clone(),
                task.health.clone(),
                task.events.clone(),
                task.writes.clone(),
            );
            tokio::spawn(async move {
                let tag = req.tag;
                let outcome = match (client, lease) {
                    (None, _) => SlotOutcome::Unreachable("not connected to etcd yet".into()),
                    (_, 0) => SlotOutcome::Unreachable("this node holds no etcd lease".into()),
                    (Some(c), lease) => {
                        let deadline = req.deadline;
                        let clients = Clients {
                            all: c,
                            leader,
                            again,
                        };
                        let asked = std::time::Instant::now();
                        let answer = tokio::time::timeout(
                            deadline,
                            take_retrying(clients, &keys, &req, lease),
                        )
                        .await;
                        let txn_us = asked.elapsed().as_micros() as u64;
                        tracing::debug!(
                            early = req.tag.early(),
                            txn_us,
                            "slot transaction answered"
                        );
                        match answer {
                            Ok(Ok(o)) => {
                                health.contact();
                                o
                            }
                            Ok(Err(e)) => SlotOutcome::Unreachable(e),
                            Err(_) => {
                                SlotOutcome::Unreachable(format!("no answer within {deadline:?}"))
                            }
                        }
                    }
                };
                // A refused or unanswered request may still have put its key (a timed-out
                // transaction can commit): delete it, retried until etcd answers, or it would
                // hold a slot until this node's lease ends. An early slot's key is the actor's
                // to keep or delete, once it knows the login.
                let write = match outcome {
                    SlotOutcome::Taken => Some(Write::Remember(req.key.clone(), slot_value(&keys))),
                    SlotOutcome::Counted(_) => None,
                    _ => Some(Write::Delete(req.key.clone())),
                };
                if let Some(w) = write {
                    let _ = writes.send(w);
                }
                if matches!(outcome, SlotOutcome::Unreachable(_)) {
                    // The abandoned transaction may reach etcd after that delete (it went
                    // over another connection): delete once more when it cannot be pending.
                    let (writes, key) = (writes.clone(), req.key.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(LATE_COMMIT).await;
                        let _ = writes.send(Write::Delete(key));
                    });
                }
                let _ = events.send(FleetEvent::Slot { tag, outcome }).await;
            });
        }
    });
}

impl SlotTag {
    /// An early slot's number.
    pub fn early(self) -> Option<u64> {
        match self {
            SlotTag::Early(n) => Some(n),
            _ => None,
        }
    }
}

impl super::FleetHandle {
    /// Takes a connection slot of `user` now, before the login is decided (see [`EarlySlot`]);
    /// `None` when no login can have a fleet-wide connection limit. The outcome comes back as
    /// [`FleetEvent::Slot`] with [`SlotTag::Early`] within `deadline`.
    pub fn take_slot_early(&self, user: &str, deadline: Duration) -> Option<EarlySlot> {
        let config = self.early.config.read().ok()?.clone()?;
        if !early_slot_wanted(&config, user) {
            return None;
        }
        let n = self.early.next.fetch_add(1, Ordering::Relaxed);
        let key = self.keys.early_slot(user, self.early.run, n);
        let _ = self.acquire.send(Acquire {
            prefix: self.keys.slots_of(user),
            key: key.clone(),
            tag: SlotTag::Early(n),
            limit: None,
            deadline,
        });
        Some(EarlySlot {
            n,
            user: user.to_owned(),
            key,
        })
    }

    /// The config early slots are judged by (`core::fleet::early_slot_wanted`): set at start
    /// and at each reload.
    pub fn set_early_config(&self, config: Arc<crate::config::Config>) {
        if let Ok(mut c) = self.early.config.write() {
            *c = Some(config);
        }
    }

    /// Keeps slot `key`, put by its transaction, under the node's lease (again under a new one).
    pub fn keep_slot(&self, key: &str) {
        let _ = self
            .writes
            .send(Write::Remember(key.to_owned(), slot_value(&self.keys)));
    }

    /// Frees slot `key`.
    pub fn drop_slot(&self, key: &str) {
        let _ = self.writes.send(Write::Delete(key.to_owned()));
    }
}

/// What early slots share between the daemon's tasks.
#[derive(Debug)]
pub(super) struct EarlySlots {
    /// This daemon run (its start, in ns): its early keys differ from an earlier run's.
    pub run: u64,
    pub next: AtomicU64,
    pub config: std::sync::RwLock<Option<Arc<crate::config::Config>>>,
}

/// How long after its deadline an abandoned slot transaction could still commit (etcd gives
/// up on a proposal after about 7 s).
const LATE_COMMIT: Duration = Duration::from_secs(10);

fn slot_value(keys: &Keys) -> Vec<u8> {
    keys.node.as_bytes().to_vec()
}

/// Puts the slot's key and counts the user's keys in one transaction, then decides
/// ([`crate::core::fleet::slot_decision`]). Also returns the raft term of the answer.
async fn take(
    client: &mut etcd_client::Client,
    keys: &Keys,
    req: &Acquire,
    lease: i64,
) -> Result<(SlotOutcome, Option<u64>), String> {
    let txn = Txn::new().and_then([
        TxnOp::put(
            req.key.clone(),
            slot_value(keys),
            Some(PutOptions::new().with_lease(lease)),
        ),
        TxnOp::get(
            req.prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        ),
    ]);
    let done = client.txn(txn).await.map_err(|e| e.to_string())?;
    let term = done.header().map(|h| h.raft_term());
    let count = done
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.count()),
            _ => None,
        })
        .ok_or("etcd's answer to the slot transaction has no count")?;
    let outcome = match req.limit {
        None => SlotOutcome::Counted(count),
        Some(limit) => SlotOutcome::decided(count, limit),
    };
    Ok((outcome, term))
}

/// [`take`], again after an error until the caller's deadline: with one etcd member down the
/// client may still send a request to it before it learns to avoid it.
async fn take_retrying(
    mut clients: Clients,
    keys: &Keys,
    req: &Acquire,
    lease: i64,
) -> Result<SlotOutcome, String> {
    let mut leader = clients.leader.take();
    loop {
        // The leader's client first; after a failure, any member (and look the leader up again).
        let (client, term) = match leader.as_mut() {
            Some(l) => (&mut l.client, Some(l.term)),
            None => (&mut clients.all, None),
        };
        match take(client, keys, req, lease).await {
            Err(e) => {
                tracing::debug!(key = req.key, error = %e, "slot request failed; retrying");
                if leader.take().is_some() {
                    clients.again.notify_one();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((outcome, seen)) => {
                if term.is_some() && seen != term {
                    clients.again.notify_one(); // another term: the leader may have changed
                }
                return Ok(outcome);
            }
        }
    }
}

/// The clients a slot request may use.
struct Clients {
    all: etcd_client::Client,
    leader: Option<Leader>,
    again: Arc<Notify>,
}
