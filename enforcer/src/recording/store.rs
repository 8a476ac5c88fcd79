//! Recordings on disk: `recording.dir/<YYYY-MM-DD>/<user>/session-<id>.cast`, root-only.

use std::{
    io::{BufRead, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use enforcer_proto::RecordingInfo;

use super::cast::{self, Header};

/// A recording found on disk.
#[derive(Debug, Clone)]
pub struct Stored {
    pub path: PathBuf,
    pub header: Header,
    pub size: u64,
    /// Time of the last event (seconds from the start).
    pub duration: Option<f64>,
}

/// The longest header line read (a long command, room kept for an exec's user: see
/// `header`).
const HEADER_MAX: u64 = 64 << 10;

fn read_header(path: &Path) -> Option<Header> {
    let f = std::fs::File::open(path).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(f.take(HEADER_MAX))
        .read_until(b'\n', &mut line)
        .ok()?;
    serde_json::from_slice(&line).ok()
}

/// Time of the last complete event line.
pub(super) fn last_time(path: &Path, size: u64) -> Option<f64> {
    let mut f = std::fs::File::open(path).ok()?;
    let from = size.saturating_sub(64 << 10);
    f.seek(SeekFrom::Start(from)).ok()?;
    // Bytes, not a String: the seek may land inside a multi-byte character (that partial first
    // line is skipped anyway).
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(cast::parse_event)
        .map(|e| e.time)
}

/// The recording at `path` with its header, size and last event time.
pub(crate) fn load(path: PathBuf) -> Option<Stored> {
    let size = std::fs::metadata(&path).ok()?.len();
    let header = read_header(&path)?;
    let duration = last_time(&path, size);
    Some(Stored {
        path,
        header,
        size,
        duration,
    })
}

/// Every recording under `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<Stored> {
    let mut out = Vec::new();
    let Ok(days) = std::fs::read_dir(dir) else {
        return out;
    };
    for day in days.flatten() {
        let Ok(users) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for user in users.flatten() {
            let Ok(files) = std::fs::read_dir(user.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                // Regular files only: opening anything else (a FIFO) could wait forever.
                let regular = f.file_type().is_ok_and(|t| t.is_file());
                if regular && name.starts_with("session-") && name.ends_with(".cast") {
                    out.extend(load(f.path()));
                }
            }
        }
    }
    out.sort_by(|a, b| {
        a.header.timestamp.cmp(&b.header.timestamp).then(
            a.header
                .enforcer
                .session_id
                .cmp(&b.header.enforcer.session_id),
        )
    });
    out
}

impl Stored {
    pub fn info(&self, live: bool) -> RecordingInfo {
        let m = &self.header.enforcer;
        RecordingInfo {
            id: m.session_id,
            conn_id: m.conn_id,
            // An exec recording's user is the Kubernetes user, when known.
            user: match (&m.user, m.kube.as_ref().and_then(|k| k.kube_user.as_ref())) {
                (u, Some(k)) if u.is_empty() => k.clone(),
                (u, _) => u.clone(),
            },
            uid: m.uid,
            started: m.started.clone(),
            duration_secs: self.duration,
            live,
            kind: m.kind.clone(),
            command: self.header.command.clone(),
            tty: m.tty.clone(),
            client: m.client.clone(),
            size_bytes: self.size,
            path: self.path.display().to_string(),
            node: None,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::recording::cast::Meta;

    /// A recording as the index holds it, for tests.
    pub(crate) fn stored(id: u64, user: &str, ts: i64) -> Stored {
        Stored {
            path: format!("/r/{user}/session-{id}.cast").into(),
            header: header(id, user, ts),
            size: 10,
            duration: None,
        }
    }

    pub(crate) fn header(id: u64, user: &str, ts: i64) -> Header {
        Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: ts,
            command: None,
            title: None,
            env: Default::default(),
            enforcer: Meta {
                session_id: id,
                conn_id: 1,
                user: user.into(),
                uid: Some(1000),
                kind: "shell".into(),
                tty: Some("pts/1".into()),
                client: None,
                started: "2026-11-23T10:00:00Z".into(),
                kube: None,
            },
        }
    }

    #[test]
    fn finds_recordings_by_id_with_duration() {
        let dir = tempfile::tempdir().unwrap();
        for (id, user, ts) in [(7, "alice", 20), (3, "bob", 10)] {
            let d = dir.path().join("2026-11-23").join(user);
            std::fs::create_dir_all(&d).unwrap();
            let body = format!(
                "{}\n{}\n{}\n",
                serde_json::to_string(&header(id, user, ts)).unwrap(),
                cast::event_line(0.5, "o", "hi"),
                cast::event_line(2.25, "o", "bye")
            );
            std::fs::write(d.join(format!("session-{id}.cast")), body).unwrap();
        }
        std::fs::write(dir.path().join("stray.txt"), "x").unwrap();
        let all = list(dir.path());
        assert_eq!(
            all.iter()
                .map(|r| r.header.enforcer.session_id)
                .collect::<Vec<_>>(),
            [3, 7]
        );
        let r = &all[1];
        assert_eq!(r.duration, Some(2.25));
        assert_eq!(r.info(false).user, "alice");
    }
}
