//! Locks on disk: `locks.dir/<user>`, one file per locked user. Files may be written by
//! `enforcerctl lock` (through the daemon) or dropped by configuration management.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use time::OffsetDateTime;

use crate::core::lock::{Lock, check_user_name};

/// Lock storage failures.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{0}")]
    BadName(String),
    #[error("cannot write lock file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove lock file {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock directory.
#[derive(Debug, Clone)]
pub struct LockStore {
    dir: PathBuf,
}

fn mtime(path: &Path) -> Option<OffsetDateTime> {
    std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()
        .map(OffsetDateTime::from)
}

impl LockStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, user: &str) -> Result<PathBuf, LockError> {
        check_user_name(user).map_err(LockError::BadName)?;
        Ok(self.dir.join(user))
    }

    /// The lock of `user`, read from disk now (so a file dropped a moment ago counts).
    pub fn get(&self, user: &str) -> Option<Lock> {
        let path = self.path(user).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        Some(Lock::parse(user, &text, mtime(&path)))
    }

    /// Every lock file (names that cannot be user names, e.g. editor backups, are skipped).
    pub fn list(&self) -> Vec<Lock> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut locks: Vec<Lock> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| check_user_name(name).is_ok() && !name.ends_with('~'))
            .filter_map(|name| self.get(&name))
            .collect();
        locks.sort_by(|a, b| a.user.cmp(&b.user));
        locks
    }

    /// Writes a lock atomically (temp file + rename; readable by all, writable by root).
    pub fn put(&self, lock: &Lock) -> Result<(), LockError> {
        let path = self.path(&lock.user)?;
        let err = |source| LockError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self.dir.join(format!(".{}.tmp", lock.user));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(lock.to_file().as_bytes()).map_err(err)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Removes a lock; `Ok(false)` when there was none.
    pub fn remove(&self, user: &str) -> Result<bool, LockError> {
        let path = self.path(user)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(LockError::Remove { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = LockStore::new(&dir.path().join("locks.d"));
        assert!(store.get("alice").is_none());
        assert!(store.list().is_empty(), "missing dir = no locks");
        let lock = Lock::new(
            "alice",
            Some("incident".into()),
            None,
            "uid 0".into(),
            OffsetDateTime::now_utc(),
        );
        store.put(&lock).unwrap();
        assert_eq!(
            store.get("alice").unwrap().reason.as_deref(),
            Some("incident")
        );
        std::fs::write(dir.path().join("locks.d/bob"), "").unwrap();
        std::fs::write(dir.path().join("locks.d/bob~"), "").unwrap();
        let users: Vec<_> = store.list().into_iter().map(|l| l.user).collect();
        assert_eq!(users, ["alice", "bob"]);
        assert!(store.remove("alice").unwrap());
        assert!(!store.remove("alice").unwrap());
    }

    #[test]
    fn path_tricks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LockStore::new(dir.path());
        let lock = Lock::new(
            "../passwd",
            None,
            None,
            "uid 0".into(),
            OffsetDateTime::now_utc(),
        );
        assert!(matches!(store.put(&lock), Err(LockError::BadName(_))));
        assert!(store.get("../../etc/passwd").is_none());
    }
}
