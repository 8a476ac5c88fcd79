//! Locks on disk: `locks.dir/<user>`, one file per locked user. Files may be written by
//! `enforcerctl lock` (through the daemon) or dropped by configuration management.

use std::{
    io::{Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use time::OffsetDateTime;

use crate::core::lock::{self, Entry, Lock, check_user_name};

/// Larger lock files are not read (they still lock).
const MAX_LOCK_FILE: u64 = 64 << 10;

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
    /// What a name must look like (user names; pod and namespace lock names).
    check: fn(&str) -> Result<(), String>,
}

fn mtime(meta: &std::fs::Metadata) -> Option<OffsetDateTime> {
    meta.modified().ok().map(OffsetDateTime::from)
}

/// Reads one entry without following a symlink or blocking on a FIFO; `None` when absent.
/// Whatever else is there locks `user`.
fn read_entry(path: &Path, user: &str) -> Option<Lock> {
    let lstat = || std::fs::symlink_metadata(path).ok();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let at = lstat().as_ref().and_then(mtime);
            return Some(Lock::unreadable(
                user,
                "is a symbolic link (not followed)",
                at,
            ));
        }
        Err(e) => {
            return Some(Lock::unreadable(
                user,
                &format!("cannot be read ({e})"),
                None,
            ));
        }
    };
    let Ok(meta) = file.metadata() else {
        return Some(Lock::unreadable(user, "cannot be examined", None));
    };
    if !meta.is_file() {
        return Some(Lock::unreadable(
            user,
            "is not a regular file",
            mtime(&meta),
        ));
    }
    if meta.len() > MAX_LOCK_FILE {
        return Some(Lock::unreadable(
            user,
            "is larger than 64 KiB",
            mtime(&meta),
        ));
    }
    let mut bytes = Vec::new();
    if let Err(e) = Read::by_ref(&mut file)
        .take(MAX_LOCK_FILE)
        .read_to_end(&mut bytes)
    {
        return Some(Lock::unreadable(
            user,
            &format!("cannot be read ({e})"),
            mtime(&meta),
        ));
    }
    Some(Lock::parse(user, &bytes, mtime(&meta)))
}

impl LockStore {
    /// A directory of user locks.
    pub fn new(dir: &Path) -> Self {
        Self::with_names(dir, check_user_name)
    }

    /// A directory whose entries are named as `check` allows.
    pub fn with_names(dir: &Path, check: fn(&str) -> Result<(), String>) -> Self {
        Self {
            dir: dir.to_owned(),
            check,
        }
    }

    fn path(&self, user: &str) -> Result<PathBuf, LockError> {
        (self.check)(user).map_err(LockError::BadName)?;
        Ok(self.dir.join(user))
    }

    /// The lock of `user`, read from disk now (so a file dropped a moment ago counts).
    pub fn get(&self, user: &str) -> Option<Lock> {
        read_entry(&self.path(user).ok()?, user)
    }

    /// Every entry of the directory: locks, and names that cannot be user names (e.g. editor
    /// backups), which lock nobody and say so.
    pub fn list(&self) -> Vec<Lock> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut locks: Vec<Lock> = dir
            .filter_map(Result::ok)
            .filter_map(
                |e| match lock::entry(e.file_name().as_bytes(), self.check) {
                    Entry::User(name) => read_entry(&e.path(), &name),
                    Entry::Invalid(name) => Some(Lock::invalid_name(&name)),
                    Entry::Ignored => None,
                },
            )
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
        let listed: Vec<_> = store
            .list()
            .into_iter()
            .map(|l| (l.user, l.valid_name))
            .collect();
        assert_eq!(
            listed,
            [
                ("alice".into(), true),
                ("bob".into(), true),
                ("bob~".into(), false)
            ]
        );
        assert!(store.remove("alice").unwrap());
        assert!(!store.remove("alice").unwrap());
    }

    #[test]
    fn symlinks_fifos_and_binary_files_lock_without_being_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LockStore::new(dir.path());
        let target = dir.path().join("target.toml");
        std::fs::write(&target, "reason = \"from the target\"\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("sym")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(dir.path().join("bin"), b"\xff\xfe\x00").unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        let now = OffsetDateTime::now_utc();
        for (user, why) in [
            ("sym", "symbolic link"),
            ("fifo", "not a regular file"),
            ("bin", "not UTF-8"),
            ("dir", "not a regular file"),
        ] {
            let l = store.get(user).unwrap();
            assert!(l.active(now), "{user}");
            assert_eq!(l.reason, None, "{user}: the target is never read");
            assert!(l.error.as_deref().unwrap().contains(why), "{user}: {l:?}");
        }
        let listed: Vec<_> = store.list().into_iter().map(|l| l.user).collect();
        assert_eq!(listed, ["bin", "dir", "fifo", "sym", "target.toml"]);
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
