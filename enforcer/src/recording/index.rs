//! The recordings index: what `recordings` lists and `play` looks up, kept in memory so neither
//! reads files on the state actor. Built by a background scan at start, kept current by the
//! recorder as recordings start and end.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use enforcer_proto::RecordingInfo;

use super::store::{self, Stored};

#[derive(Debug, Clone)]
struct Entry {
    stored: Stored,
    /// Being written by this daemon's recorder.
    live: bool,
    /// Its header is still to be rewritten (an exec's Kubernetes user is being found out).
    header_pending: bool,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RecordingIndex {
    entries: Arc<RwLock<HashMap<u64, Entry>>>,
    scanned: Arc<AtomicBool>,
}

impl RecordingIndex {
    /// An index filled by a background scan of `dir` (entries the recorder adds meanwhile win).
    pub fn scan(dir: &Path) -> Self {
        let index = Self::default();
        let (me, dir) = (index.clone(), dir.to_owned());
        let spawned = std::thread::Builder::new()
            .name("enforcerd-scan".into())
            .spawn(move || {
                let found = store::list(&dir);
                let n = found.len();
                {
                    let mut e = me.write();
                    for stored in found {
                        let id = stored.header.enforcer.session_id;
                        e.entry(id).or_insert(Entry {
                            stored,
                            live: false,
                            header_pending: false,
                        });
                    }
                }
                me.scanned.store(true, Ordering::Release);
                tracing::info!(recordings = n, dir = %dir.display(), "recordings indexed");
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the recordings scan; only new recordings are listed");
            index.scanned.store(true, Ordering::Release);
        }
        index
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the start-up scan has finished (until then older recordings may be missing).
    pub fn scanned(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }

    /// A recording the recorder just created (`header_pending`: its header will change).
    pub fn started(&self, stored: Stored, header_pending: bool) {
        let id = stored.header.enforcer.session_id;
        self.write().insert(
            id,
            Entry {
                stored,
                live: true,
                header_pending,
            },
        );
    }

    /// The header of recording `id` is final (`header`: as rewritten; `None`: as it was).
    pub fn header_settled(&self, id: u64, header: Option<super::cast::Header>) {
        if let Some(e) = self.write().get_mut(&id) {
            e.header_pending = false;
            if let Some(h) = header {
                e.stored.header = h;
            }
        }
    }

    /// A recording the recorder closed, with its final size and duration.
    pub fn ended(&self, id: u64, size: u64, duration: Option<f64>) {
        if let Some(e) = self.write().get_mut(&id) {
            e.live = false;
            e.stored.size = size;
            e.stored.duration = duration;
        }
    }

    /// Every recording with whether it is being written, for the uploader (`[recording.store]`);
    /// not those whose header is still to change (uploaded once it is final, so the stored
    /// copy has it).
    pub fn snapshot(&self) -> Vec<(Stored, bool)> {
        self.read()
            .values()
            .filter(|e| !e.header_pending)
            .map(|e| (e.stored.clone(), e.live))
            .collect()
    }

    /// Forgets a recording whose local file was deleted (it is in the store).
    pub fn remove(&self, id: u64) {
        self.write().remove(&id);
    }

    /// The recording of session `id`.
    pub fn find(&self, id: u64) -> Option<Stored> {
        self.read().get(&id).map(|e| e.stored.clone())
    }

    /// The recordings `keep` accepts, oldest first.
    pub fn list(&self, keep: impl Fn(&Stored) -> bool) -> Vec<RecordingInfo> {
        let mut out: Vec<(i64, u64, RecordingInfo)> = self
            .read()
            .values()
            .filter(|e| keep(&e.stored))
            .map(|e| {
                let h = &e.stored.header;
                (h.timestamp, h.enforcer.session_id, e.stored.info(e.live))
            })
            .collect();
        out.sort_by_key(|(t, id, _)| (*t, *id));
        out.into_iter().map(|(_, _, info)| info).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_updates_win_over_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let index = RecordingIndex::scan(dir.path());
        while !index.scanned() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(index.list(|_| true).is_empty());
        let stored = store::tests::stored(7, "alice", 20);
        index.started(stored, false);
        assert!(index.list(|_| true)[0].live);
        index.ended(7, 99, Some(1.5));
        let l = index.list(|_| true);
        assert_eq!(
            (l[0].live, l[0].size_bytes, l[0].duration_secs),
            (false, 99, Some(1.5))
        );
        assert!(index.find(7).is_some());
        assert!(index.find(8).is_none());
        assert!(index.list(|s| s.header.enforcer.user == "bob").is_empty());
    }

    #[test]
    fn a_recording_is_not_uploaded_while_its_header_is_pending() {
        let index = RecordingIndex::default();
        index.started(store::tests::stored(9, "", 20), true);
        // Listed (and playable) at once, not handed to the uploader.
        assert_eq!(index.list(|_| true).len(), 1);
        assert!(index.snapshot().is_empty());
        let mut h = store::tests::header(9, "carol", 20);
        h.title = Some("rewritten".into());
        index.header_settled(9, Some(h.clone()));
        let snap = index.snapshot();
        assert_eq!((snap.len(), snap[0].1), (1, true));
        assert_eq!(snap[0].0.header, h);
        assert_eq!(index.list(|_| true)[0].user, "carol");
    }
}
