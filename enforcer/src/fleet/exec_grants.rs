//! Which Kubernetes user is behind an exec session: the admission webhook left a grant for
//! every exec it allowed (`crate::webhook`); the node reads the pod's unmatched grants, picks
//! the one the session is (`core::kube::admission::match_grant`: never a guess), and claims it
//! in one transaction (deleting its by-pod key, so no other exec takes it). The user's grant
//! key then lives under this node's lease until the session ends, so it keeps counting against
//! the user's fleet-wide exec limit while the session lives — and no longer.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio::sync::mpsc;

use super::{ClientRx, FleetEvent, Write, timed};
use crate::core::{
    fleet::Keys,
    kube::admission::{ExecGrant, GrantMatch, GrantMatched, GrantQuery, match_grant},
};

/// No new read of the pod's grants starts after this: the answer comes within it plus one
/// claim. A claim already sent is waited for (its own call timeout): giving up on one etcd
/// may have committed would leave a grant taken by nobody.
const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// A request to identify exec session `session` (containerd's `exec_id`).
pub(super) struct Identify {
    pub session: u64,
    pub exec_id: String,
    pub query: GrantQuery,
}

/// Who an exec session turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Its grant, now claimed by this node.
    Identified(ExecGrant),
    /// No unmatched grant fits.
    NoGrant,
    /// This many fit alike.
    Ambiguous(usize),
    /// etcd did not answer (the text says why).
    Unreachable(String),
}

pub(super) struct IdentifyTask {
    pub client: ClientRx,
    pub keys: Arc<Keys>,
    pub events: mpsc::Sender<FleetEvent>,
    pub writes: mpsc::UnboundedSender<Write>,
    pub requests: mpsc::UnboundedReceiver<Identify>,
}

pub(super) fn start(mut task: IdentifyTask) {
    tokio::spawn(async move {
        while let Some(req) = task.requests.recv().await {
            let client = task.client.borrow().clone();
            let (keys, events, writes) =
                (task.keys.clone(), task.events.clone(), task.writes.clone());
            tokio::spawn(async move {
                let outcome = match client {
                    None => GrantOutcome::Unreachable("not connected to etcd yet".into()),
                    Some(mut c) => identify(&mut c, &keys, &req)
                        .await
                        .unwrap_or_else(GrantOutcome::Unreachable),
                };
                if let GrantOutcome::Identified(g) = &outcome {
                    // Under this node's lease from now on (re-put on a new lease; deleted at
                    // the session's end).
                    let _ = writes.send(Write::exec_grant(&keys, g));
                }
                let _ = events
                    .send(FleetEvent::ExecIdentified {
                        session: req.session,
                        outcome,
                    })
                    .await;
            });
        }
    });
}

/// Reads the pod's grants, matches, claims. A grant another exec claimed between the read and
/// the claim is not this one's: matched again without it.
async fn identify(
    c: &mut etcd_client::Client,
    keys: &Keys,
    req: &Identify,
) -> Result<GrantOutcome, String> {
    let q = &req.query;
    let prefix = keys.exec_grants_of_pod(&q.namespace, &q.pod);
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    for _ in 0..3 {
        let read = c.get(prefix.as_str(), Some(GetOptions::new().with_prefix()));
        let got = match tokio::time::timeout_at(deadline, timed(read)).await {
            Ok(got) => got?,
            Err(_) => return Err(format!("no answer within {READ_DEADLINE:?}")),
        };
        let (grant_keys, mut grants): (Vec<&str>, Vec<ExecGrant>) = got
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                serde_json::from_slice(kv.value()).ok().map(|g| (key, g))
            })
            .unzip();
        let i = match match_grant(&grants, q) {
            GrantMatch::One(i) => i,
            GrantMatch::NoGrant => return Ok(GrantOutcome::NoGrant),
            GrantMatch::Ambiguous(n) => return Ok(GrantOutcome::Ambiguous(n)),
        };
        let key = grant_keys[i];
        let claim = Txn::new()
            .when([Compare::version(key, CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key, None)]);
        if timed(c.txn(claim)).await?.succeeded() {
            let mut grant = grants.swap_remove(i);
            grant.matched = Some(GrantMatched {
                node: keys.node.clone(),
                exec_id: req.exec_id.clone(),
                session: req.session,
            });
            return Ok(GrantOutcome::Identified(grant));
        }
    }
    Ok(GrantOutcome::NoGrant)
}
