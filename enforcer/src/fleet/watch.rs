//! Fleet locks: every node watches `<prefix>/locks/`. The watch is opened BEFORE the locks in
//! force are read (events at or below the read's revision are skipped), and after a
//! disconnect it resumes from the last revision seen, so no lock made meanwhile is missed; if
//! etcd compacted that history, everything is read again. Every change is handed to the state
//! actor at once and kept in a local copy (`state_dir/fleet-locks.json`), which the node
//! applies at start and keeps applying while etcd cannot be reached.

use std::{path::PathBuf, sync::Arc, sync::atomic::Ordering, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{ClientRx, FleetEvent, Health, client_of, timed};
use crate::{
    core::fleet::{FleetLock, FleetLocks, Keys, LockTarget, LockValue},
    host,
};

pub(super) struct WatchTask {
    pub client: ClientRx,
    pub keys: Arc<Keys>,
    pub health: Arc<Health>,
    pub events: mpsc::Sender<FleetEvent>,
    pub local_copy: PathBuf,
}

/// The local copy's format.
#[derive(Serialize, Deserialize, Default)]
struct LocalCopy {
    /// The etcd revision the copy is complete up to.
    revision: i64,
    users: Vec<(String, LockValue)>,
    nodes: Vec<(String, LockValue)>,
}

pub(super) fn start(task: WatchTask) {
    tokio::spawn(task.run());
}

impl WatchTask {
    async fn run(mut self) {
        let (mut locks, mut rev) = self.load().await;
        if !locks.is_empty() {
            tracing::info!(
                locks = locks.len(),
                "fleet locks from the local copy applied"
            );
        }
        // A restarted node applies what it knew at once, before etcd answers.
        if !self.publish(&locks).await {
            return;
        }
        let Some(mut client) = client_of(&mut self.client).await else {
            return;
        };
        let mut synced = false;
        loop {
            let mut options = WatchOptions::new().with_prefix().with_progress_notify();
            if synced {
                options = options.with_start_revision(rev + 1);
            }
            let mut stream = match timed(client.watch(self.keys.locks(), Some(options))).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch fleet locks yet");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            if !synced {
                // Subscribed first; now the locks in force.
                let got = client.get(self.keys.locks(), Some(GetOptions::new().with_prefix()));
                match timed(got).await {
                    Ok(r) => {
                        rev = r.header().map(|h| h.revision()).unwrap_or(0);
                        locks = r
                            .kvs()
                            .iter()
                            .filter_map(|kv| {
                                let t = self.keys.lock_target(kv.key())?;
                                Some((t.clone(), FleetLock::decode(t, kv.value())))
                            })
                            .collect();
                        synced = true;
                        self.changed(&locks, rev).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read fleet locks yet");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
            self.health.watching.store(true, Ordering::Relaxed);
            self.health.contact();
            tracing::info!(revision = rev, locks = locks.len(), "watching fleet locks");
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => break,
                };
                self.health.contact();
                if msg.compact_revision() > 0 {
                    tracing::warn!(
                        revision = rev,
                        compacted = msg.compact_revision(),
                        "fleet lock history compacted; reading every lock again"
                    );
                    synced = false;
                    break;
                }
                if msg.canceled() {
                    break;
                }
                let mut changed = false;
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if kv.mod_revision() <= rev {
                        continue; // already in what we read
                    }
                    let Some(target) = self.keys.lock_target(kv.key()) else {
                        continue;
                    };
                    match ev.event_type() {
                        EventType::Put => {
                            locks.insert(target.clone(), FleetLock::decode(target, kv.value()));
                        }
                        EventType::Delete => {
                            locks.remove(&target);
                        }
                    }
                    changed = true;
                }
                // Only the events' own revisions move `rev`: a response's header revision is
                // the member's store revision, and events up to it may still be on their way
                // (a watch from an old revision on a member that just caught up).
                if let Some(max) = msg
                    .events()
                    .iter()
                    .filter_map(|e| e.kv())
                    .map(|kv| kv.mod_revision())
                    .max()
                {
                    rev = rev.max(max);
                }
                if changed {
                    self.changed(&locks, rev).await;
                }
            }
            self.health.watching.store(false, Ordering::Relaxed);
            tracing::warn!(
                revision = rev,
                "fleet lock watch ended; resuming from the last revision"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Hands the locks to the actor and keeps the local copy.
    async fn changed(&self, locks: &FleetLocks, rev: i64) {
        self.publish(locks).await;
        let copy = LocalCopy {
            revision: rev,
            users: by_kind(locks, true),
            nodes: by_kind(locks, false),
        };
        let path = self.local_copy.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let text = serde_json::to_vec(&copy).unwrap_or_default();
            let tmp = path.with_extension("json.tmp");
            let dir = path.parent().map(std::fs::create_dir_all).transpose();
            let written = dir.and_then(|_| std::fs::write(&tmp, text)).and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                tracing::error!(path = %path.display(), error = %e, "cannot keep the local copy of fleet locks");
            }
        })
        .await;
    }

    /// Sends every lock to the actor with its user's uid (NSS, on the blocking pool); false
    /// once the actor is gone.
    async fn publish(&self, locks: &FleetLocks) -> bool {
        let list: Vec<FleetLock> = locks.values().cloned().collect();
        let resolved = tokio::task::spawn_blocking(move || {
            list.into_iter()
                .map(|l| {
                    let uid = match &l.target {
                        LockTarget::User(u) => host::user_identity(u).map(|i| i.uid),
                        LockTarget::Node(_) | LockTarget::Group(_) => None,
                    };
                    (l, uid)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        self.events.send(FleetEvent::Locks(resolved)).await.is_ok()
    }

    /// The local copy (empty when there is none or it cannot be read).
    async fn load(&self) -> (FleetLocks, i64) {
        let path = self.local_copy.clone();
        let copy: LocalCopy = tokio::task::spawn_blocking(move || {
            std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let mut locks = FleetLocks::new();
        for (name, value) in copy.users {
            let t = LockTarget::User(name);
            locks.insert(t.clone(), FleetLock { target: t, value });
        }
        for (name, value) in copy.nodes {
            let t = LockTarget::Node(name);
            locks.insert(t.clone(), FleetLock { target: t, value });
        }
        (locks, copy.revision)
    }
}

fn by_kind(locks: &FleetLocks, users: bool) -> Vec<(String, LockValue)> {
    locks
        .values()
        .filter(|l| matches!(l.target, LockTarget::User(_)) == users)
        .map(|l| (l.target.name().to_owned(), l.value.clone()))
        .collect()
}
