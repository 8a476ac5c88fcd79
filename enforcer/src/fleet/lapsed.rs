//! Grants no exec matched: the admission webhook allowed an exec or attach on one of this
//! node's pods, and no exec session here claimed its grant before the grant's lease expired
//! (an attach, an exec the kubelet failed to start, a command the node saw otherwise). The
//! node watches the deletes of every grant key (`core::kube::admission::lapsed_grants` tells
//! a lapse from a claim) and reports each lapse on a pod containerd runs here; the state actor
//! audits it as `exec_grant_unmatched`.
//!
//! Every node with `[kubernetes]` sees every grant's deletes (no values of puts; a grant is
//! at most a few KiB, `ExecGrant::bounded`). Whether a lapsed grant's pod runs here comes from
//! one listing of this node's pods, made again only when it is older than the grant: about
//! one containerd call per lease expiry with lapses, on every node.
//!
//! All the grants of one lease go in one revision, which etcd sends as one watch message: read
//! up to [`MESSAGE_MAX`] (thousands of the largest grants). Should one still not be readable,
//! the watch starts again from etcd's current revision after [`STUCK_MAX`] tries rather than
//! retrying forever: lapses in the revisions skipped go unaudited, and that is logged as an
//! error with the range.

use std::{path::PathBuf, sync::Arc, time::Duration};

use containerd_client::tonic::Code;
use etcd_client::{EventType, GetOptions, WatchFilterType, WatchOptions};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::mpsc;

use super::{ClientRx, FleetEvent, client_of, timed};
use crate::{
    core::{
        fleet::Keys,
        kube::admission::{GrantDelete, lapsed_grants},
    },
    kube::PodsHere,
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

/// The largest watch message read (the client's default, 4 MiB, is a few hundred of the
/// largest grants with their values).
const MESSAGE_MAX: usize = 64 << 20;
/// Tries at one revision before it is skipped.
const STUCK_MAX: u32 = 5;
/// Backoff between tries: doubling from 200 ms to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a watch stream ended.
enum Followed {
    /// Broken or canceled: watched again from the last revision read.
    Ended,
    /// etcd sent a message too large to read.
    Unreadable,
    /// The daemon is gone.
    Gone,
}

impl LapsedTask {
    async fn run(mut self) {
        let Some(mut client) = client_of(&mut self.client).await else {
            return;
        };
        let mut pods = PodsHere::new(self.containerd.clone());
        let mut watch = client.watch_client().max_decoding_message_size(MESSAGE_MAX);
        // The last revision read (from the first watch's start on); resumed after it.
        let mut rev: Option<i64> = None;
        let (mut backoff, mut stuck) = (BACKOFF_MIN, 0u32);
        loop {
            let mut options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_filters([WatchFilterType::NoPut]);
            if let Some(r) = rev {
                options = options.with_start_revision(r + 1);
            }
            let before = rev;
            let unreadable =
                match timed(watch.watch(self.keys.exec_grants_all(), Some(options))).await {
                    Ok(mut stream) => match self.follow(&mut stream, &mut rev, &mut pods).await {
                        Followed::Gone => return,
                        Followed::Ended => false,
                        Followed::Unreadable => true,
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot watch exec grants yet");
                        false
                    }
                };
            if rev != before {
                (backoff, stuck) = (BACKOFF_MIN, 0);
            }
            // Only a message etcd sent but this node cannot read counts (not an outage).
            if unreadable && let Some(r) = rev {
                stuck += 1;
                if stuck >= STUCK_MAX {
                    // Where the unreadable message is cannot be known: watched again from now.
                    let now = timed(client.get(
                        self.keys.exec_grants_all(),
                        Some(GetOptions::new().with_count_only()),
                    ))
                    .await
                    .ok()
                    .and_then(|g| g.header().map(|h| h.revision()));
                    if let Some(now) = now {
                        tracing::error!(
                            from = r + 1,
                            to = now,
                            tries = stuck,
                            "exec grant revisions cannot be read; skipped: lapsed grants in them are not audited"
                        );
                        rev = Some(now);
                        stuck = 0;
                    }
                }
            }
            tracing::debug!(retry_in = ?backoff, "exec grant watch ended; resuming");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Reads `stream` until it ends, advancing `rev`.
    async fn follow(
        &mut self,
        stream: &mut etcd_client::WatchStream,
        rev: &mut Option<i64>,
        pods: &mut PodsHere,
    ) -> Followed {
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Followed::Ended,
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == Code::OutOfRange => {
                    tracing::warn!(error = %s, "an exec grant watch message is too large");
                    return Followed::Unreadable;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "exec grant watch failed");
                    return Followed::Ended;
                }
            };
            if msg.created() && rev.is_none() {
                // Resumed from here should the stream break before any delete.
                *rev = msg.header().map(|h| h.revision());
            }
            if msg.compact_revision() > 0 {
                tracing::warn!(
                    compacted = msg.compact_revision(),
                    "exec grant history compacted; lapses meanwhile are not audited"
                );
                *rev = Some(msg.compact_revision() - 1);
                return Followed::Ended;
            }
            if msg.canceled() {
                return Followed::Ended;
            }
            let mut deletes = Vec::new();
            for e in msg.events() {
                if e.event_type() != EventType::Delete {
                    continue;
                }
                let Some(kv) = e.kv() else { continue };
                *rev = Some(rev.map_or(kv.mod_revision(), |r| r.max(kv.mod_revision())));
                match (kv.key_str(), e.prev_kv()) {
                    (Ok(key), Some(prev)) => deletes.push(GrantDelete {
                        revision: kv.mod_revision(),
                        key,
                        value: prev.value(),
                    }),
                    _ => {
                        tracing::warn!(
                            revision = kv.mod_revision(),
                            "an exec grant delete without its key or value (compacted?); not checked for a lapse"
                        )
                    }
                }
            }
            for g in lapsed_grants(&self.keys, &deletes) {
                let known_at = OffsetDateTime::parse(&g.time, &Rfc3339)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc());
                match pods.has(&g.namespace, &g.pod, known_at).await {
                    Ok(false) => {}
                    Ok(true) => {
                        if self.events.send(FleetEvent::GrantLapsed(g)).await.is_err() {
                            return Followed::Gone;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(review = %g.review, namespace = %g.namespace, pod = %g.pod, error = %e, "cannot tell whether an unmatched exec grant's pod runs here")
                    }
                }
            }
        }
    }
}
