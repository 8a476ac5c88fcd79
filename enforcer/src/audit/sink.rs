//! Writing audit records: a dedicated thread appends JSON lines (one write(2) per line, so lines
//! never interleave) and forwards to journald. Producers never block; overflow is counted.
//! A failed write leaves no half line (see [`crate::lines`]); once writing works again an
//! `audit_records_lost` record says how many records were lost, since when and why.

use std::{
    fs::OpenOptions,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::AtomicUsize,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Sender},
    },
};

use time::OffsetDateTime;

use super::{AuditEvent, AuditReason, AuditRecord};
use crate::lines::{LineFile, WriteFailure};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const BACKLOG: usize = 65536;

/// Audit log failures at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {}: {source}; check audit.path and that its directory is writable by root", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the sink did, for `enforcerctl status`.
#[derive(Debug, Default)]
pub struct AuditCounters {
    pub written: AtomicU64,
    /// Records dropped because the writer fell 65 536 records behind.
    pub dropped_backlog: AtomicU64,
    /// Records that could not be written to the file because it was full.
    pub lost_disk_full: AtomicU64,
    /// Records that could not be written to the file for another reason.
    pub write_errors: AtomicU64,
    pub journald_errors: AtomicU64,
}

/// Handle to the writer thread. Dropping every handle stops the thread after it drains.
#[derive(Clone)]
pub struct AuditSink {
    tx: Sender<AuditRecord>,
    /// Records queued and not yet written. The queue is unbounded in type (a bounded std
    /// channel preallocates every slot: 50 MB for this backlog) and bounded by this count.
    queued: Arc<AtomicUsize>,
    pub counters: Arc<AuditCounters>,
    /// Every record queued, by event and reason (the metrics read it).
    pub tally: Arc<super::AuditTally>,
    pub journald: bool,
}

struct Writer {
    path: PathBuf,
    file: LineFile,
    inode: u64,
    /// Records not written since the last successful write: (count, since, last reason).
    lost: Option<(u64, OffsetDateTime, WriteFailure)>,
}

fn open(path: &Path) -> Result<(LineFile, u64), AuditError> {
    let err = |source| AuditError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(err)?;
    let inode = file.metadata().map_err(err)?.ino();
    let (file, cut) = LineFile::new(file).map_err(err)?;
    if cut > 0 {
        tracing::warn!(path = %path.display(), bytes = cut, "audit log ended in a half line (crash); cut back to its last whole line");
    }
    Ok((file, inode))
}

impl Writer {
    /// Reopens the file when it was rotated away (logrotate without copytruncate).
    fn reopen_if_rotated(&mut self) {
        let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        if current != Some(self.inode) {
            match open(&self.path) {
                Ok((f, ino)) => (self.file, self.inode) = (f, ino),
                Err(e) => tracing::error!(error = %e, "audit log reopen failed"),
            }
        }
    }

    /// Appends one record line, preceded by an `audit_records_lost` record when earlier
    /// records could not be written.
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.reopen_if_rotated();
        if let Some((n, since, why)) = self.lost {
            let reason = match why {
                WriteFailure::DiskFull => AuditReason::DiskFull,
                WriteFailure::Io => AuditReason::WriteError,
            };
            let mut rec = AuditRecord::new(AuditEvent::AuditRecordsLost, OffsetDateTime::now_utc())
                .reason(
                    reason,
                    Some(format!(
                        "{n} audit records could not be written to {}",
                        self.path.display()
                    )),
                );
            rec.lost = Some(n);
            rec.since = Some(crate::core::rfc3339(since));
            let mut lines = serde_json::to_vec(&rec).expect("audit record serialises");
            lines.push(b'\n');
            lines.extend_from_slice(line);
            self.file.append(&lines)?;
            self.lost = None;
            return Ok(());
        }
        self.file.append(line)
    }

    /// Counts a record that could not be written.
    fn lose(&mut self, e: &std::io::Error, counters: &AuditCounters) {
        let why = WriteFailure::of(e);
        match why {
            WriteFailure::DiskFull => &counters.lost_disk_full,
            WriteFailure::Io => &counters.write_errors,
        }
        .fetch_add(1, Ordering::Relaxed);
        let (n, since, _) = self.lost.unwrap_or((0, OffsetDateTime::now_utc(), why));
        self.lost = Some((n + 1, since, why));
    }
}

impl AuditSink {
    /// Opens the log (creating it 0640) and starts the writer thread. journald is used when
    /// `journald` is set and its socket exists.
    pub fn start(path: &Path, journald: bool) -> Result<Self, AuditError> {
        let (file, inode) = open(path)?;
        let journald = journald && Path::new(JOURNAL_SOCKET).exists();
        let (tx, rx) = mpsc::channel::<AuditRecord>();
        let counters = Arc::new(AuditCounters::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let (c, q) = (counters.clone(), queued.clone());
        let mut writer = Writer {
            path: path.to_owned(),
            file,
            inode,
            lost: None,
        };
        std::thread::Builder::new()
            .name("enforcerd-audit".into())
            .spawn(move || {
                for rec in rx {
                    q.fetch_sub(1, Ordering::Relaxed);
                    let mut line = serde_json::to_vec(&rec).expect("audit record serialises");
                    line.push(b'\n');
                    match writer.write(&line) {
                        Ok(()) => {
                            c.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if writer.lost.is_none() {
                                tracing::error!(error = %e, event = rec.event.as_str(), "audit write failed; records are counted as lost until writing works again");
                            }
                            writer.lose(&e, &c);
                        }
                    }
                    if journald && send_journald(&rec).is_err() {
                        c.journald_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|source| AuditError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditSink {
            tx,
            queued,
            counters,
            tally: Arc::default(),
            journald,
        })
    }

    /// Queues a record; never blocks the caller.
    pub fn record(&self, rec: AuditRecord) {
        tracing::debug!(
            event = rec.event.as_str(),
            user = rec.user,
            conn = rec.conn_id,
            reason = rec.reason.map(|r| r.as_str()),
            "audit"
        );
        // Counted as an event even when the writer cannot keep up (that loss is counted too).
        self.tally.count(&rec);
        if self.queued.load(Ordering::Relaxed) >= BACKLOG {
            self.counters
                .dropped_backlog
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                event = rec.event.as_str(),
                "audit writer backlog full; record dropped"
            );
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(rec).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// journald entry: MESSAGE is the summary, every JSON field becomes `ENFORCER_<NAME>`.
fn send_journald(rec: &AuditRecord) -> Result<(), libsystemd::errors::SdError> {
    let serde_json::Value::Object(fields) = serde_json::to_value(rec).unwrap_or_default() else {
        return Ok(());
    };
    let vars = fields.into_iter().map(|(k, v)| {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        (format!("ENFORCER_{}", k.to_uppercase()), v)
    });
    let vars = vars.chain([("SYSLOG_IDENTIFIER".to_owned(), "enforcerd".to_owned())]);
    libsystemd::logging::journal_send(libsystemd::logging::Priority::Notice, &rec.summary(), vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn wait_written(sink: &AuditSink, n: u64) {
        for _ in 0..200 {
            if sink.counters.written.load(Ordering::Relaxed) >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("audit writer did not write {n} records");
    }

    #[test]
    fn writes_json_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/audit.jsonl");
        let sink = AuditSink::start(&path, false).unwrap();
        sink.record(AuditRecord::new(
            AuditEvent::Lock,
            OffsetDateTime::UNIX_EPOCH,
        ));
        wait_written(&sink, 1);
        std::fs::rename(&path, dir.path().join("log/audit.jsonl.1")).unwrap();
        sink.record(AuditRecord::new(
            AuditEvent::Unlock,
            OffsetDateTime::UNIX_EPOCH,
        ));
        wait_written(&sink, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "unlock", "new file after rotation");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
