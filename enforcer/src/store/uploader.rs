//! The uploader task: ships every recording in the index to the store as one multipart upload,
//! part by part while its session runs, and completes the object once the recording is closed.
//!
//! It runs on its own task and only ever reads the recording files: the recorder thread never
//! waits for it (or for the network), so a store that is down, slow or refusing credentials
//! costs the sessions nothing — bytes just wait in the local file (see `status`: pending bytes,
//! oldest pending recording, last error). Each confirmed part is saved in `state_dir/uploads`,
//! so a restarted daemon (even after `kill -9`) goes on with the next part. When to upload what
//! is decided in `core::upload`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use enforcer_proto::StoreStatus;
use sha2::Digest;
use time::OffsetDateTime;

use super::{
    client::{PartDone, Store, StoreError},
    spool::{Spool, UploadState},
};
use crate::{
    config::StoreConfig,
    core::upload::{self, Spool as SpoolView, Step},
    recording::{RecordingIndex, store::Stored},
};

/// How often the uploader looks at the recordings.
const PASS_EVERY: Duration = Duration::from_millis(500);
/// After a start, recordings the index lists as closed may still be taken up again by the
/// restored sessions: none is completed before this.
const START_SETTLE: Duration = Duration::from_secs(5);
/// Parts one recording may upload in a pass before the others get their turn.
const PARTS_PER_TURN: usize = 4;

/// The uploader's counters, read by `status`.
#[derive(Debug, Default)]
pub struct StoreStats(Mutex<StoreStatus>);

impl StoreStats {
    /// A copy for the status report.
    pub fn report(&self) -> StoreStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_rfc3339() -> String {
    crate::core::rfc3339(OffsetDateTime::now_utc())
}

/// One recording the uploader follows.
struct Tracked {
    st: UploadState,
    failures: u32,
    retry_at: Instant,
    /// When the last part went up (or the upload was first seen).
    last_part: Instant,
    /// Local file length at the last look, and the recording's start (for status).
    len: u64,
    started: String,
}

/// Starts the uploader on the current runtime; it runs until the daemon stops.
pub fn start(
    store: Store,
    cfg: &StoreConfig,
    recording_dir: PathBuf,
    state_dir: &Path,
    index: RecordingIndex,
) -> std::io::Result<(Arc<StoreStats>, tokio::task::JoinHandle<()>)> {
    let spool = Spool::open(state_dir)?;
    let stats = Arc::new(StoreStats::default());
    {
        let mut s = stats.lock();
        s.url = cfg.url.clone();
        s.node = store.node.clone();
    }
    let mut up = Uploader {
        store,
        part_size: cfg.part_size,
        flush_after: cfg.flush_after.0,
        keep_local: cfg.keep_local.0,
        dir: recording_dir,
        spool,
        index,
        stats: stats.clone(),
        tracked: HashMap::new(),
        started: Instant::now(),
    };
    for st in up.spool.load_all() {
        let t = up.track(st);
        tracing::info!(session = t.st.session_id, key = %t.st.key, parts = t.st.parts.len(), "resuming upload");
    }
    let task = tokio::spawn(async move {
        loop {
            up.pass().await;
            tokio::time::sleep(PASS_EVERY).await;
        }
    });
    Ok((stats, task))
}

struct Uploader {
    store: Store,
    part_size: u64,
    flush_after: Duration,
    keep_local: Duration,
    dir: PathBuf,
    spool: Spool,
    index: RecordingIndex,
    stats: Arc<StoreStats>,
    tracked: HashMap<u64, Tracked>,
    started: Instant,
}

impl Uploader {
    fn track(&mut self, st: UploadState) -> &mut Tracked {
        let id = st.session_id;
        self.tracked.entry(id).or_insert(Tracked {
            st,
            failures: 0,
            retry_at: Instant::now(),
            last_part: Instant::now(),
            len: 0,
            started: String::new(),
        })
    }

    /// One look at every recording: upload what is due, complete what is closed, delete what
    /// the store has had for `keep_local`.
    async fn pass(&mut self) {
        let recordings = self.index.snapshot();
        let settled = self.started.elapsed() >= START_SETTLE;
        for (rec, live) in recordings {
            let id = rec.header.enforcer.session_id;
            let Ok(rel) = rec.path.strip_prefix(&self.dir) else {
                continue;
            };
            let key =
                upload::object_key(&self.store.prefix, &self.store.node, &rel.to_string_lossy());
            let t = self.track(UploadState::new(id, rec.path.clone(), key.clone()));
            t.started = rec.header.enforcer.started.clone();
            if t.st.path != rec.path || t.st.key != key {
                // Another recording under a reused id.
                t.st = UploadState::new(id, rec.path.clone(), key);
            }
            if Instant::now() < t.retry_at {
                continue;
            }
            if let Err(e) = self.advance(id, &rec, live, settled).await {
                self.failed(id, e);
            }
        }
        // Recordings no longer in the index (deleted by someone else): forget them.
        let known: std::collections::HashSet<u64> = self
            .index
            .snapshot()
            .iter()
            .map(|(r, _)| r.header.enforcer.session_id)
            .collect();
        let gone: Vec<u64> = self
            .tracked
            .keys()
            .filter(|id| !known.contains(id) && self.index.scanned())
            .copied()
            .collect();
        for id in gone {
            self.tracked.remove(&id);
            self.spool.remove(id);
        }
        self.report();
    }

    /// Uploads due parts of recording `id`, completes it once closed (not `live`, and the
    /// daemon `settled` since its start), deletes it when kept long enough.
    async fn advance(
        &mut self,
        id: u64,
        rec: &Stored,
        live: bool,
        settled: bool,
    ) -> Result<(), StoreError> {
        let ended = !live && settled;
        let t = self.tracked.get(&id).expect("tracked above");
        if let Some(at) = t.st.stored_at {
            if !live {
                let ago = (OffsetDateTime::now_utc().unix_timestamp() - at).max(0) as u64;
                if ended && upload::may_delete(Duration::from_secs(ago), self.keep_local) {
                    let size = t.st.stored_size;
                    self.delete_local(id, &rec.path, size).await;
                }
                return Ok(());
            }
            // Taken up again after a restart: once closed, the whole file goes up again, over
            // the same key.
            tracing::info!(
                session = id,
                "stored recording is being written again; it will be uploaded again"
            );
            self.tracked.get_mut(&id).expect("tracked").st.restart();
        }
        let len = match tokio::fs::metadata(&rec.path).await {
            Ok(m) => m.len(),
            Err(_) => return Ok(()),
        };
        self.tracked.get_mut(&id).expect("tracked").len = len;
        for _ in 0..PARTS_PER_TURN {
            let t = self.tracked.get(&id).expect("tracked above");
            let view = SpoolView {
                uploaded: t.st.uploaded(),
                len,
                parts: t.st.parts.len(),
                ended,
                since_part: t.last_part.elapsed(),
            };
            match upload::next_step(&view, self.part_size, self.flush_after) {
                Step::Wait => return Ok(()),
                Step::Part {
                    from,
                    max,
                    last: _,
                    cut,
                } => {
                    if !self.part(id, rec, from, max, cut).await? {
                        return Ok(());
                    }
                }
                Step::Complete => return self.complete(id, len).await,
            }
        }
        Ok(())
    }

    /// Uploads one part (ending at a line end when `cut`); false when there is not enough for
    /// one yet.
    async fn part(
        &mut self,
        id: u64,
        rec: &Stored,
        from: u64,
        max: u64,
        cut: bool,
    ) -> Result<bool, StoreError> {
        let cut = cut.then_some(self.part_size);
        let (data, sha256) = match read_part(&rec.path, from, max, cut).await {
            Ok(Some(part)) => part,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!(session = id, error = %e, "cannot read recording for upload");
                return Ok(false);
            }
        };
        let upload_id = self.upload_id(id, rec).await?;
        let t = self.tracked.get_mut(&id).expect("tracked");
        let number = t.st.parts.len() as i32 + 1;
        let n = data.len() as u64;
        let etag = self
            .store
            .upload_part(&t.st.key, &upload_id, number, data, &sha256)
            .await?;
        t.st.parts.push(PartDone {
            number,
            etag,
            sha256,
            end: from + n,
        });
        t.last_part = Instant::now();
        t.failures = 0;
        if let Err(e) = self.spool.save(&t.st) {
            tracing::warn!(session = id, error = %e, "cannot save upload state; after a restart this part is sent again");
        }
        tracing::debug!(session = id, part = number, bytes = n, "part stored");
        let mut s = self.stats.lock();
        s.parts_uploaded += 1;
        s.bytes_uploaded += n;
        s.last_success_at = Some(now_rfc3339());
        Ok(true)
    }

    /// The upload id of recording `id`, starting the multipart upload when there is none.
    async fn upload_id(&mut self, id: u64, rec: &Stored) -> Result<String, StoreError> {
        let t = self.tracked.get_mut(&id).expect("tracked");
        if let Some(u) = &t.st.upload_id {
            return Ok(u.clone());
        }
        let m = &rec.header.enforcer;
        let mut meta = HashMap::from([
            ("session-id".to_owned(), m.session_id.to_string()),
            ("conn-id".to_owned(), m.conn_id.to_string()),
            ("node".to_owned(), self.store.node.clone()),
            ("user".to_owned(), m.user.clone()),
            ("start".to_owned(), m.started.clone()),
            ("kind".to_owned(), m.kind.clone()),
        ]);
        if let Some(uid) = m.uid {
            meta.insert("uid".into(), uid.to_string());
        }
        let u = self.store.create(&t.st.key, meta).await?;
        t.st.upload_id = Some(u.clone());
        t.last_part = Instant::now();
        if let Err(e) = self.spool.save(&t.st) {
            tracing::warn!(session = id, error = %e, "cannot save upload state");
        }
        tracing::info!(session = id, key = %t.st.key, "upload started");
        Ok(u)
    }

    /// Completes the object and confirms it has every byte of the local file.
    async fn complete(&mut self, id: u64, len: u64) -> Result<(), StoreError> {
        let t = self.tracked.get_mut(&id).expect("tracked");
        let upload_id = t.st.upload_id.clone().unwrap_or_default();
        match self
            .store
            .complete(&t.st.key, &upload_id, &t.st.parts)
            .await
        {
            Ok(()) => {}
            // Completed before a crash, not yet saved as such: the HEAD below decides.
            Err(e) if e.upload_gone() => {}
            Err(e) => return Err(e),
        }
        let head = match self.store.head(&t.st.key).await {
            Ok(h) => h,
            Err(e) if e.not_found() => {
                t.st.restart();
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if head.size != len as i64 {
            t.st.restart();
            return Err(StoreError::Mismatch {
                bucket: self.store.bucket.clone(),
                key: t.st.key.clone(),
                got: head.size,
                want: len,
            });
        }
        t.st.stored_at = Some(OffsetDateTime::now_utc().unix_timestamp());
        t.st.stored_size = len;
        t.failures = 0;
        if let Err(e) = self.spool.save(&t.st) {
            tracing::warn!(session = id, error = %e, "cannot save upload state");
        }
        tracing::info!(session = id, key = %t.st.key, bytes = len, "recording stored");
        let mut s = self.stats.lock();
        s.objects_stored += 1;
        s.last_success_at = Some(now_rfc3339());
        Ok(())
    }

    /// Deletes the local copy if it is still exactly what the store confirmed.
    async fn delete_local(&mut self, id: u64, path: &Path, stored_size: u64) {
        let len = tokio::fs::metadata(path).await.map(|m| m.len()).ok();
        if len != Some(stored_size) {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.st.restart();
            }
            return;
        }
        match tokio::fs::remove_file(path).await {
            Ok(()) => {
                tracing::info!(session = id, path = %path.display(), "local recording deleted; the store has it");
                self.index.remove(id);
                self.tracked.remove(&id);
                self.spool.remove(id);
                self.stats.lock().local_deleted += 1;
            }
            Err(e) => tracing::warn!(session = id, error = %e, "cannot delete stored recording"),
        }
    }

    fn failed(&mut self, id: u64, e: StoreError) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        if e.upload_gone() {
            t.st.restart();
        }
        t.failures += 1;
        let wait = upload::backoff(t.failures);
        t.retry_at = Instant::now() + wait;
        tracing::warn!(session = id, error = %e, retry_in = ?wait, "store upload failed");
        let mut s = self.stats.lock();
        s.errors += 1;
        s.last_error = Some(e.to_string());
        s.last_error_at = Some(now_rfc3339());
    }

    /// Pending bytes and the oldest pending recording, for `status`.
    fn report(&self) {
        let pending = self.tracked.values().filter(|t| t.st.stored_at.is_none());
        let (mut bytes, mut n, mut oldest): (u64, u64, Option<(&str, u64)>) = (0, 0, None);
        for t in pending {
            bytes += t.len.saturating_sub(t.st.uploaded());
            n += 1;
            if oldest.is_none_or(|(s, _)| t.started.as_str() < s) {
                oldest = Some((&t.started, t.st.session_id));
            }
        }
        let mut s = self.stats.lock();
        s.pending_bytes = bytes;
        s.pending_recordings = n;
        s.oldest_pending_id = oldest.map(|(_, id)| id);
        s.oldest_pending_started = oldest.map(|(t, _)| t.to_owned());
    }
}

/// Reads a part: at most `max` bytes of `path` from `from`, cut at a line end for `cut`
/// (`part_size`; `None`: taken whole), with its base64 SHA-256. `None`: not enough for a part
/// yet. Off the runtime's workers (reading and hashing 8 MiB takes tens of ms).
async fn read_part(
    path: &Path,
    from: u64,
    max: u64,
    cut: Option<u64>,
) -> std::io::Result<Option<(Vec<u8>, String)>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; max as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], from + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        if let Some(part_size) = cut {
            match upload::cut(&buf, part_size) {
                Some(end) => buf.truncate(end),
                None => return Ok(None),
            }
        }
        let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&buf));
        Ok(Some((buf, sha)))
    })
    .await
    .map_err(std::io::Error::other)?
}
