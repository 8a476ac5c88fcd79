//! Fleet-wide connection slots, exact: a slot is a key `<prefix>/slots/<user>/<node>/<conn>`
//! under the node's lease, taken in ONE transaction that fails if any key under the user's
//! slot prefix was created or changed since the slots were counted. So N logins racing over
//! any number of nodes at limit L take exactly L slots; a loser counts again. An empty prefix
//! compares as revision 0, which is below any read revision: the first slot is taken the same
//! way (and two first logins still race on it: one transaction wins). A slot is freed by
//! deleting its key at logout, or by etcd when the node's lease expires (its node died).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Notify, mpsc, watch};

use super::{ClientRx, FleetEvent, Health, Write, client::Leader};
use crate::core::fleet::{Keys, slot_free};

/// A request for a slot: `key` under `prefix` (the user's slots of one kind).
pub(super) struct Acquire {
    pub prefix: String,
    pub key: String,
    pub tag: SlotTag,
    pub limit: u32,
    pub deadline: Duration,
}

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTag {
    /// A connection (`[fleet] max_connections_per_user`), by its id.
    Connection(u64),
    /// A session (`[fleet] max_sessions_per_user`): connection id, session id.
    Session(u64, u64),
}

/// What became of a slot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// The slot is this connection's.
    Taken,
    /// `held` slots (≥ the limit) are taken across the fleet.
    Full { held: usize },
    /// etcd could not be asked in time (the text says why).
    Unreachable(String),
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
    let counts: Counts = Arc::default();
    tokio::spawn(async move {
        while let Some(req) = task.requests.recv().await {
            // Each request in its own task: one slow answer delays no other login.
            let client = task.client.borrow().clone();
            let leader = task.leader.borrow().clone();
            let again = task.leader_again.clone();
            let lease = *task.lease.borrow();
            let counts = counts.clone();
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
                        let clients = Clients { all: c, leader, again };
                        match tokio::time::timeout(
                            deadline,
                            take_retrying(clients, &keys, &req, lease, &counts),
                        )
                        .await
                        {
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
                if outcome == SlotOutcome::Taken {
                    let _ = writes.send(Write::Remember(req.key.clone(), slot_value(&keys)));
                }
                let _ = events.send(FleetEvent::Slot { tag, outcome }).await;
            });
        }
    });
}

fn slot_value(keys: &Keys) -> Vec<u8> {
    keys.node.as_bytes().to_vec()
}

/// Each user's slot count as last seen, with the revision it was counted at. A count that is
/// still valid (nothing under the prefix created or changed since) lets an admission take its
/// slot in one round trip; a stale one only costs a retry, since the transaction compares.
/// Deleted slots make a count too high, never too low: before refusing, it is counted anew.
pub(super) type Counts = Arc<Mutex<HashMap<String, (usize, i64)>>>;

/// Most users whose count is remembered (the cache is cleared beyond).
const COUNTS_MAX: usize = 10_000;

/// Counts the user's slots (or trusts the remembered count) and takes one in a transaction
/// that succeeds only if nothing under the prefix was created or changed since that count;
/// when something was, the same transaction returns the new count and it tries again. Also
/// returns the raft term of the last answer.
async fn take(
    client: &mut etcd_client::Client,
    keys: &Keys,
    req: &Acquire,
    lease: i64,
    counts: &Counts,
) -> Result<(SlotOutcome, Option<u64>), String> {
    let (prefix, key) = (req.prefix.clone(), req.key.clone());
    let count_only = || GetOptions::new().with_prefix().with_count_only();
    let mut known = counts.lock().ok().and_then(|c| c.get(&prefix).copied());
    let mut term = None;
    loop {
        let (held, rev, fresh) = match known.take() {
            Some((held, rev)) => (held, rev, false),
            None => {
                let counted = client
                    .get(prefix.clone(), Some(count_only()))
                    .await
                    .map_err(|e| e.to_string())?;
                let rev = counted.header().map(|h| h.revision()).unwrap_or(0);
                term = counted.header().map(|h| h.raft_term());
                (counted.count().max(0) as usize, rev, true)
            }
        };
        if !slot_free(held, req.limit) {
            if fresh {
                remember(counts, &prefix, held, rev);
                return Ok((SlotOutcome::Full { held }, term));
            }
            continue; // a remembered count: count anew before refusing
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(prefix.clone(), CompareOp::Less, rev + 1).with_prefix()])
            .and_then([TxnOp::put(
                key.clone(),
                slot_value(keys),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(prefix.clone(), Some(count_only()))]);
        let done = client.txn(txn).await.map_err(|e| e.to_string())?;
        let now_rev = done.header().map(|h| h.revision()).unwrap_or(0);
        term = done.header().map(|h| h.raft_term());
        if done.succeeded() {
            remember(counts, &prefix, held + 1, now_rev);
            return Ok((SlotOutcome::Taken, term));
        }
        // The prefix changed: the transaction's own read says how many there are now.
        let recount = done.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.count().max(0) as usize),
            _ => None,
        });
        known = recount.map(|c| (c, now_rev));
        tracing::trace!(key, "slot prefix changed; counting again");
    }
}

/// [`take`], again after an error until the caller's deadline: with one etcd member down the
/// client may still send a request to it before it learns to avoid it.
async fn take_retrying(
    mut clients: Clients,
    keys: &Keys,
    req: &Acquire,
    lease: i64,
    counts: &Counts,
) -> Result<SlotOutcome, String> {
    let mut leader = clients.leader.take();
    loop {
        // The leader's client first; after a failure, any member (and look the leader up again).
        let (client, term) = match leader.as_mut() {
            Some(l) => (&mut l.client, Some(l.term)),
            None => (&mut clients.all, None),
        };
        match take(client, keys, req, lease, counts).await {
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

fn remember(counts: &Counts, prefix: &str, held: usize, rev: i64) {
    if let Ok(mut c) = counts.lock() {
        if c.len() >= COUNTS_MAX {
            c.clear();
        }
        c.insert(prefix.to_owned(), (held, rev));
    }
}
