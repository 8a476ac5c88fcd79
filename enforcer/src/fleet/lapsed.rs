//! Grants no exec matched: the admission webhook allowed an exec or attach on one of this
//! node's pods, and no exec session here claimed its grant before the grant's lease expired
//! (an attach, an exec the kubelet failed to start, a command the node saw otherwise). The
//! node watches the deletes of every grant key (`core::kube::admission::lapsed_grants` tells
//! a lapse from a claim) and reports each lapse on a pod containerd runs here; the state actor
//! audits it as `exec_grant_unmatched`.
//!
//! Every node with `[kubernetes]` sees every grant's deletes (a few hundred bytes each, no
//! values of puts); only a lapse costs a containerd call, and only on the node it concerns.

use std::{path::PathBuf, sync::Arc, time::Duration};

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use tokio::sync::mpsc;

use super::{ClientRx, FleetEvent, client_of, timed};
use crate::core::{
    fleet::Keys,
    kube::admission::{GrantDelete, lapsed_grants},
};

pub(super) struct LapsedTask {
    pub client: ClientRx,
    pub keys: Arc<Keys>,
    pub events: mpsc::Sender<FleetEvent>,
    /// containerd's socket: which pods run here.
    pub containerd: PathBuf,
}

pub(super) fn start(task: LapsedTask) {
    tokio::spawn(task.run());
}

impl LapsedTask {
    async fn run(mut self) {
        let Some(mut client) = client_of(&mut self.client).await else {
            return;
        };
        // From the first watch on; resumed after the last revision seen.
        let mut rev: Option<i64> = None;
        loop {
            let mut options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_filters([WatchFilterType::NoPut]);
            if let Some(r) = rev {
                options = options.with_start_revision(r + 1);
            }
            let watched = client.watch(self.keys.exec_grants_all(), Some(options));
            let mut stream = match timed(watched).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch exec grants yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => break,
                };
                if msg.compact_revision() > 0 {
                    // Lapses in the compacted history are not reported.
                    tracing::warn!(
                        compacted = msg.compact_revision(),
                        "exec grant history compacted; lapses meanwhile are not audited"
                    );
                    rev = Some(msg.compact_revision() - 1);
                    break;
                }
                if msg.canceled() {
                    break;
                }
                let deletes: Vec<GrantDelete> = msg
                    .events()
                    .iter()
                    .filter(|e| e.event_type() == EventType::Delete)
                    .filter_map(|e| {
                        let (kv, prev) = (e.kv()?, e.prev_kv()?);
                        Some(GrantDelete {
                            revision: kv.mod_revision(),
                            key: kv.key_str().ok()?,
                            value: prev.value(),
                        })
                    })
                    .collect();
                if let Some(max) = deletes.iter().map(|d| d.revision).max() {
                    rev = Some(rev.map_or(max, |r| r.max(max)));
                }
                for g in lapsed_grants(&self.keys, &deletes) {
                    let here = crate::kube::has_pod(&self.containerd, &g.namespace, &g.pod).await;
                    match here {
                        Ok(false) => {}
                        Ok(true) => {
                            if self.events.send(FleetEvent::GrantLapsed(g)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(review = %g.review, namespace = %g.namespace, pod = %g.pod, error = %e, "cannot tell whether an unmatched exec grant's pod runs here")
                        }
                    }
                }
            }
            tracing::debug!("exec grant watch ended; resuming");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
