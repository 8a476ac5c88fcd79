//! What the daemon keeps across a restart, on disk: the connection table
//! (`state_dir/connections.json`), so limits keep counting the connections that are still open,
//! and who is behind each exec session (`state_dir/exec-identities.json`), so a lock of that
//! user still ends it.
//!
//! Writes stay off the request path: the state actor marks the table dirty, hands a copy over
//! at most every [`FLUSH_EVERY`] (a pointer per connection: connections are shared until
//! changed), and a writer thread serialises and writes the latest copy (older pending copies
//! are superseded). A crash can lose at most that interval plus one write; the sweep after a
//! restart releases connections that ended meanwhile.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

/// Longest delay between a change and its write.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

struct Slot<T> {
    pending: Option<T>,
    closed: bool,
}

/// Where a table lives, what it is called in logs, and the thread writing it.
pub struct Persist<T> {
    path: PathBuf,
    what: &'static str,
    slot: Arc<(Mutex<Slot<T>>, Condvar)>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn write_atomically(path: &Path, what: &str, bytes: &[u8]) {
    let attempt = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = attempt() {
        // Enforcement goes on in memory; only restart continuity is at stake.
        tracing::error!(path = %path.display(), error = %e, "cannot save the {what}");
    }
}

impl<T: Serialize + DeserializeOwned + Default + Clone + Send + 'static> Persist<T> {
    /// Keeps the `what` (for logs) at `path`.
    pub fn start(path: PathBuf, what: &'static str) -> Self {
        let slot: Arc<(Mutex<Slot<T>>, Condvar)> = Arc::new((
            Mutex::new(Slot {
                pending: None,
                closed: false,
            }),
            Condvar::new(),
        ));
        let (s, p) = (slot.clone(), path.clone());
        let writer = std::thread::Builder::new()
            .name("enforcerd-state".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                loop {
                    let table = {
                        let mut slot = lock.lock().unwrap();
                        while slot.pending.is_none() && !slot.closed {
                            slot = cv.wait(slot).unwrap();
                        }
                        match slot.pending.take() {
                            Some(r) => r,
                            None => return,
                        }
                    };
                    let bytes = serde_json::to_vec(&table).expect("tables serialise");
                    // What it shared (the registry's connections) is the actor's alone again.
                    drop(table);
                    write_atomically(&p, what, &bytes);
                }
            })
            .expect("spawn state writer thread");
        Persist {
            path,
            what,
            slot,
            writer: Some(writer),
        }
    }

    /// Loads the table; a missing file is an empty table, a corrupt one is set aside (and
    /// reported) rather than blocking start-up.
    pub fn load(&self) -> T {
        let what = self.what;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the {what}; starting empty");
                return T::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                let aside = self.path.with_extension("json.corrupt");
                let _ = std::fs::rename(&self.path, &aside);
                tracing::error!(path = %self.path.display(), moved_to = %aside.display(), error = %e,
                    "corrupt {what} set aside; starting empty");
                T::default()
            }
        }
    }

    /// Queues the current table for writing (replacing any copy not yet written).
    pub fn submit(&self, table: &T) {
        let (lock, cv) = &*self.slot;
        lock.lock().unwrap().pending = Some(table.clone());
        cv.notify_one();
    }

    /// Writes the table now and stops the writer (clean shutdown).
    pub fn finish(mut self, table: &T) {
        {
            let (lock, cv) = &*self.slot;
            let mut slot = lock.lock().unwrap();
            slot.pending = None;
            slot.closed = true;
            cv.notify_one();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        write_atomically(
            &self.path,
            self.what,
            &serde_json::to_vec(table).expect("tables serialise"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conn::{Registry, tests::conn};

    fn at(dir: &Path) -> Persist<Registry> {
        Persist::start(dir.join("connections.json"), "connection table")
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = at(dir.path());
        assert!(p.load().is_empty());
        let mut r = Registry::default();
        r.insert(conn("alice", 10, "10.0.0.1:1"));
        p.submit(&r);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.load() != r {
            assert!(
                std::time::Instant::now() < deadline,
                "writer thread did not write"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        r.insert(conn("bob", 11, "10.0.0.1:2"));
        p.finish(&r);
        let p = at(dir.path());
        assert_eq!(p.load(), r, "finish writes synchronously");
        std::fs::write(dir.path().join("connections.json"), "{not json").unwrap();
        assert!(p.load().is_empty());
        assert!(dir.path().join("connections.json.corrupt").exists());
    }
}
