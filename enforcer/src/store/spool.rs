//! What the uploader remembers across restarts: per recording, the object key, the multipart
//! upload id and the parts the store confirmed (`state_dir/uploads/<session id>.json`, written
//! atomically after every confirmed part). The recording file itself is the spool: parts are
//! read from it, so nothing else needs keeping.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::client::PartDone;

/// One recording's upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub session_id: u64,
    /// The local recording.
    pub path: PathBuf,
    pub key: String,
    /// The multipart upload under way; `None` before it is created.
    pub upload_id: Option<String>,
    pub parts: Vec<PartDone>,
    /// When the store confirmed the complete object (Unix seconds); the local file may go
    /// `keep_local` after it.
    pub stored_at: Option<i64>,
    /// Size of the complete object.
    #[serde(default)]
    pub stored_size: u64,
}

impl UploadState {
    /// A recording nothing of which is in the store yet.
    pub fn new(session_id: u64, path: PathBuf, key: String) -> Self {
        Self {
            session_id,
            path,
            key,
            upload_id: None,
            parts: Vec::new(),
            stored_at: None,
            stored_size: 0,
        }
    }

    /// Bytes of the file in confirmed parts.
    pub fn uploaded(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.end)
    }

    /// Forgets the upload (gone from the store, or the file changed after it was stored).
    pub fn restart(&mut self) {
        self.upload_id = None;
        self.parts.clear();
        self.stored_at = None;
        self.stored_size = 0;
    }
}

/// The directory of upload states.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// `state_dir/uploads`, created root-only.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("uploads");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Self { dir })
    }

    fn file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every saved state (unreadable ones are logged and skipped: that upload starts over).
    pub fn load_all(&self) -> Vec<UploadState> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => out.push(s),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable upload state; that recording is uploaded again");
                }
            }
        }
        out
    }

    /// Saves `s` (write to a temporary file, fsync, rename).
    pub fn save(&self, s: &UploadState) -> io::Result<()> {
        use std::io::Write;
        let path = self.file(s.session_id);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(s).map_err(io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// Forgets recording `id`.
    pub fn remove(&self, id: u64) {
        let _ = std::fs::remove_file(self.file(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut s = UploadState::new(7, "/r/a.cast".into(), "p/n/a.cast".into());
        s.upload_id = Some("u1".into());
        s.parts.push(PartDone {
            number: 1,
            etag: "e".into(),
            sha256: "h".into(),
            end: 5 << 20,
        });
        spool.save(&s).unwrap();
        std::fs::write(dir.path().join("uploads/bad.json"), "{").unwrap();
        let back = Spool::open(dir.path()).unwrap().load_all();
        assert_eq!(back, vec![s.clone()]);
        assert_eq!(back[0].uploaded(), 5 << 20);
        spool.remove(7);
        assert!(spool.load_all().is_empty());
    }
}
