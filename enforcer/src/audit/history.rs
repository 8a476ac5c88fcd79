//! `enforcerctl history`: ended connections read back from the audit log. Every
//! `connection_closed` record carries the connection (user, client, identity), why it ended and
//! how long it lasted, so one record per connection is enough.

use std::{
    collections::VecDeque,
    io::BufRead,
    path::{Path, PathBuf},
    time::Duration,
};

use enforcer_proto::{HistoryEntry, HistoryQuery};
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::core::rfc3339;

/// At most this many entries (the newest) are answered.
pub const MAX_ENTRIES: usize = 10_000;

/// Why the history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "cannot read the audit log {}: {source}; check audit.path in the daemon's config",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "since {0:?} is not an RFC 3339 time; enforcerctl accepts e.g. 2h, yesterday or 2026-11-23"
    )]
    Since(String),
}

/// The fields of a `connection_closed` record that history shows.
#[derive(Deserialize)]
struct Closed {
    event: String,
    time: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    conn_id: u64,
    client_addr: Option<String>,
    rhost: Option<String>,
    reason: Option<String>,
    duration_secs: Option<f64>,
    key_fingerprint: Option<String>,
    cert_key_id: Option<String>,
}

/// Ended connections in audit log `lines` (oldest first) that match `user` and ended at or
/// after `since`: the newest [`MAX_ENTRIES`], newest first. Lines that are not such records
/// (other events, damaged lines) are skipped.
pub fn from_lines<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    user: Option<&str>,
    since: Option<OffsetDateTime>,
) -> Vec<HistoryEntry> {
    let mut kept = VecDeque::new();
    for line in lines {
        // Most lines are execs: skip them without parsing.
        if !line.contains("\"connection_closed\"") {
            continue;
        }
        let Ok(rec) = serde_json::from_str::<Closed>(line) else {
            continue;
        };
        if rec.event != "connection_closed" {
            continue;
        }
        let Ok(logout) = OffsetDateTime::parse(&rec.time, &Rfc3339) else {
            continue;
        };
        if user.is_some_and(|u| u != rec.user) || since.is_some_and(|s| logout < s) {
            continue;
        }
        let duration = rec.duration_secs.unwrap_or(0.0).max(0.0);
        let login = logout - Duration::from_secs_f64(duration);
        if kept.len() == MAX_ENTRIES {
            kept.pop_front();
        }
        kept.push_back(HistoryEntry {
            conn_id: rec.conn_id,
            user: rec.user,
            client: rec.client_addr.or(rec.rhost),
            login: rfc3339(login),
            logout: rfc3339(logout),
            duration_secs: duration,
            reason: rec.reason,
            identity: rec
                .cert_key_id
                .map(|k| format!("cert {k:?}"))
                .or(rec.key_fingerprint),
        });
    }
    kept.into_iter().rev().collect()
}

/// Reads the audit log at `path` (blocking: run it off the async workers).
pub fn read(path: &Path, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, HistoryError> {
    let since = query
        .since
        .as_deref()
        .map(|s| OffsetDateTime::parse(s, &Rfc3339).map_err(|_| HistoryError::Since(s.into())))
        .transpose()?;
    let err = |source| HistoryError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    let mut out = Vec::new();
    // In batches, so memory stays bounded whatever the log's size.
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
        if n > 0 {
            if let Ok(line) = std::str::from_utf8(&buf) {
                if line.contains("\"connection_closed\"") {
                    lines.push(line.to_owned());
                }
            }
        }
        if n == 0 || lines.len() >= 4096 {
            let batch = from_lines(
                lines.iter().map(String::as_str),
                query.user.as_deref(),
                since,
            );
            // Each batch comes newest first; keep the newest overall.
            out.splice(0..0, batch);
            out.truncate(MAX_ENTRIES);
            lines.clear();
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"time":"2026-11-23T10:00:00Z","event":"connection_admitted","user":"alice","conn_id":1}
{"time":"2026-11-23T10:00:01Z","event":"exec","user":"alice","conn_id":1,"argv":["connection_closed"]}
{"time":"2026-11-23T11:00:00Z","event":"connection_closed","user":"alice","conn_id":1,"client_addr":"10.0.0.1","reason":"logout","duration_secs":3600.0,"key_fingerprint":"SHA256:abc"}
not json "connection_closed"
{"time":"2026-11-23T12:00:00Z","event":"connection_closed","user":"bob","conn_id":2,"rhost":"host.example","reason":"idle_timeout","duration_secs":900.5,"cert_key_id":"bob@corp"}
{"time":"2026-11-23T13:00:00Z","event":"connection_closed","user":"alice","conn_id":3,"reason":"user_locked","duration_secs":60.0}
"#;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn ended_connections_newest_first_with_login_time() {
        let h = from_lines(LOG.lines(), None, None);
        let ids: Vec<u64> = h.iter().map(|e| e.conn_id).collect();
        assert_eq!(ids, [3, 2, 1]);
        let alice = &h[2];
        assert_eq!(alice.login, "2026-11-23T10:00:00Z");
        assert_eq!(alice.logout, "2026-11-23T11:00:00Z");
        assert_eq!(alice.client.as_deref(), Some("10.0.0.1"));
        assert_eq!(alice.identity.as_deref(), Some("SHA256:abc"));
        assert_eq!(alice.reason.as_deref(), Some("logout"));
        let bob = &h[1];
        assert_eq!(bob.client.as_deref(), Some("host.example"));
        assert_eq!(bob.identity.as_deref(), Some("cert \"bob@corp\""));
        assert_eq!(bob.duration_secs, 900.5);
    }

    #[test]
    fn filters_by_user_and_by_end_time() {
        let alice: Vec<u64> = from_lines(LOG.lines(), Some("alice"), None)
            .iter()
            .map(|e| e.conn_id)
            .collect();
        assert_eq!(alice, [3, 1]);
        // Live at or after 11:30: ended then or later.
        let since: Vec<u64> = from_lines(LOG.lines(), None, Some(at("2026-11-23T11:30:00Z")))
            .iter()
            .map(|e| e.conn_id)
            .collect();
        assert_eq!(since, [3, 2]);
    }

    #[test]
    fn reads_a_file_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut text = String::new();
        for i in 0..(MAX_ENTRIES + 5000) {
            text.push_str(&format!(
                "{{\"time\":\"2026-11-23T10:00:00Z\",\"event\":\"connection_closed\",\"user\":\"u\",\"conn_id\":{i}}}\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        let h = read(&path, &HistoryQuery::default()).unwrap();
        assert_eq!(h.len(), MAX_ENTRIES);
        assert_eq!(h[0].conn_id, (MAX_ENTRIES + 4999) as u64);
        assert_eq!(h.last().unwrap().conn_id, 5000);
        let e = read(
            &path,
            &HistoryQuery {
                user: None,
                since: Some("2h".into()),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        let e = read(&dir.path().join("nope"), &HistoryQuery::default()).unwrap_err();
        assert!(e.to_string().contains("audit.path"), "{e}");
    }
}
