//! File-transfer sessions in the recorder (`recording.file_transfers`): their bytes go to a
//! protocol parser whose files are audited (`file_transfer`), instead of into the recording.
//!
//! A session whose command is a transfer is held back until the state actor says whether its
//! leader really executed the transfer program (and nothing else runs in the session): held
//! bytes are then written or parsed. Should another program run in the session later, the
//! recording resumes from that program's exec, from the bytes retained meanwhile: hiding a
//! shell behind a transfer command gains nothing.

use std::{collections::VecDeque, time::Instant};

use enforcer_common::io::DIR_INPUT;

use super::file::Item;
use crate::{
    audit::{AuditRecord, AuditSink},
    core::transfer::{FileTransfer, FileTransfers, Parser, TransferPlan},
};

/// Bytes held while the state actor decides, at most. Per session: a user's sessions are
/// capped by the session limits. A legacy `scp -f` streams its file right after one ack, and
/// the recorder reads the data ring in batches of up to 1 MiB (the kernel wakes it there)
/// before it reads the actor's word: held data must fit several such batches. (At 256 KiB a
/// 5 MiB download on a loaded machine overflowed before the word came, and was recorded in
/// full without its `file_transfer`: seen in a full test run.)
const HOLD_MAX: usize = 4 << 20;
/// What each held item counts for beyond its bytes (its bookkeeping), so that a flood of tiny
/// writes cannot hold much more memory than [`HOLD_MAX`].
const HOLD_ITEM_COST: usize = 128;
/// Bytes of a parsed session retained to be written should something else run in it: the
/// exec event reaches the recorder milliseconds later. Beyond this, a loss marker.
const RETAIN_MAX: usize = 1 << 20;
/// How long bytes are held before the session is recorded in full anyway.
pub(super) const HOLD_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// What the state actor tells the recorder about a transfer session.
#[derive(Debug, Clone)]
pub struct TransferStart {
    pub plan: TransferPlan,
    pub mode: FileTransfers,
    /// The connection's and session's fields for the `file_transfer` records.
    pub audit: AuditRecord,
}

enum Phase {
    /// Until the leader executes the program.
    Held {
        items: Vec<Item<'static>>,
        bytes: usize,
    },
    /// Bytes parsed (`None`: file_transfers = off, nothing audited) and, unless mode is
    /// full, retained instead of recorded.
    Parsing {
        parser: Option<Box<Parser>>,
        retained: VecDeque<Item<'static>>,
        retained_bytes: usize,
        /// (time, bytes) of data pushed out of `retained`.
        evicted: VecDeque<(u64, u64)>,
    },
}

/// What the recording gets from a transfer session's step.
pub(super) enum Out {
    Item(Item<'static>),
    Marker(u64, String),
}

pub(super) struct TransferSession {
    start: TransferStart,
    phase: Phase,
    pub(super) since: Instant,
}

impl TransferSession {
    pub(super) fn new(start: TransferStart) -> Self {
        TransferSession {
            start,
            phase: Phase::Held {
                items: Vec::new(),
                bytes: 0,
            },
            since: Instant::now(),
        }
    }

    /// Whether bytes are still held (and for how long: see [`HOLD_TTL`]).
    pub(super) fn held(&self) -> bool {
        matches!(self.phase, Phase::Held { .. })
    }

    /// Takes one item of the session. Returns it when it belongs in the recording now; `None`
    /// when held, parsed or retained. `Err(items)`: too much held, record in full.
    pub(super) fn take<'a>(
        &mut self,
        item: Item<'a>,
        audit: &AuditSink,
    ) -> Result<Option<Item<'a>>, Vec<Out>> {
        let full = self.start.mode == FileTransfers::Full;
        match &mut self.phase {
            Phase::Held { items, bytes } => {
                *bytes += data_len(&item) + HOLD_ITEM_COST;
                items.push(item.into_owned());
                if *bytes > HOLD_MAX {
                    return Err(self.release());
                }
                Ok(None)
            }
            Phase::Parsing { parser, .. } => {
                let mut found = Vec::new();
                match (&item, parser.as_mut()) {
                    (Item::Data { dir, bytes, .. }, Some(p)) => {
                        p.feed(*dir == DIR_INPUT, bytes, &mut found)
                    }
                    (Item::Lost { bytes }, Some(p)) => p.lost(*bytes),
                    _ => {}
                }
                self.emit(found, audit);
                if full || matches!(item, Item::Resize { .. }) {
                    return Ok(Some(item));
                }
                let Phase::Parsing {
                    retained,
                    retained_bytes,
                    evicted,
                    ..
                } = &mut self.phase
                else {
                    return Ok(None);
                };
                *retained_bytes += data_len(&item);
                retained.push_back(item.into_owned());
                while *retained_bytes > RETAIN_MAX {
                    let Some(old) = retained.pop_front() else {
                        break;
                    };
                    let n = data_len(&old);
                    *retained_bytes -= n;
                    if evicted.len() >= 1 << 16 {
                        evicted.pop_front();
                    }
                    evicted.push_back((old.time(), n as u64));
                }
                Ok(None)
            }
        }
    }

    /// The leader executed the transfer program at `boot_ns`: what was held before goes to
    /// the recording, what came after to the parser.
    pub(super) fn started(&mut self, boot_ns: u64, audit: &AuditSink) -> Vec<Out> {
        let Phase::Held { items, .. } = self.take_phase() else {
            return Vec::new();
        };
        let parser = (self.start.mode != FileTransfers::Off)
            .then(|| Box::new(Parser::new(&self.start.plan)));
        self.phase = Phase::Parsing {
            parser,
            retained: VecDeque::new(),
            retained_bytes: 0,
            evicted: VecDeque::new(),
        };
        let protocol = serde_json::to_value(self.start.plan.protocol).ok();
        let protocol = protocol
            .as_ref()
            .and_then(|v| v.as_str())
            .unwrap_or("transfer");
        let text = match self.start.mode {
            FileTransfers::Metadata => format!(
                "enforcer: {protocol} file transfer: contents not recorded, files in the audit log (file_transfer)"
            ),
            FileTransfers::Off => format!(
                "enforcer: {protocol} file transfer: not recorded (recording.file_transfers = \"off\")"
            ),
            FileTransfers::Full => format!(
                "enforcer: {protocol} file transfer: recorded in full, files also in the audit log"
            ),
        };
        let mut out = Vec::new();
        let mut after = Vec::new();
        for item in items {
            if item.time() < boot_ns {
                out.push(Out::Item(item));
            } else {
                after.push(item);
            }
        }
        out.push(Out::Marker(boot_ns, text));
        for item in after {
            match self.take(item, audit) {
                Ok(Some(i)) => out.push(Out::Item(i.into_owned())),
                Ok(None) => {}
                Err(more) => out.extend(more),
            }
        }
        out
    }

    /// Not a transfer after all, or no longer (another program ran at `since_ns`, the leader
    /// executed something else, or the program ended): files seen so far are audited, and the
    /// recording gets everything from `since_ns` on that it does not have yet.
    pub(super) fn abort(
        mut self,
        since_ns: u64,
        program_ended: bool,
        audit: &AuditSink,
    ) -> Vec<Out> {
        match self.take_phase() {
            Phase::Held { items, .. } => items.into_iter().map(Out::Item).collect(),
            Phase::Parsing {
                parser,
                retained,
                evicted,
                ..
            } => {
                if let Some(p) = parser {
                    let mut found = Vec::new();
                    (*p).finish(&mut found);
                    self.emit(found, audit);
                }
                if self.start.mode == FileTransfers::Full {
                    return Vec::new();
                }
                let text = if program_ended {
                    "enforcer: the file-transfer program ended: recorded in full from here"
                } else {
                    "enforcer: another program ran in this file-transfer session: recorded in full from here"
                };
                let mut out = vec![Out::Marker(since_ns, text.into())];
                let lost: u64 = evicted
                    .iter()
                    .filter(|(t, _)| *t >= since_ns)
                    .map(|(_, n)| n)
                    .sum();
                if lost > 0 {
                    out.push(Out::Item(Item::Lost { bytes: lost }));
                }
                out.extend(
                    retained
                        .into_iter()
                        .filter(|i| i.time() >= since_ns)
                        .map(Out::Item),
                );
                out
            }
        }
    }

    /// The session ended: open files are audited as incomplete; held bytes are recorded.
    pub(super) fn finish(mut self, audit: &AuditSink) -> Vec<Out> {
        let phase = self.take_phase();
        match phase {
            Phase::Held { items, .. } => items.into_iter().map(Out::Item).collect(),
            Phase::Parsing { parser, .. } => {
                if let Some(p) = parser {
                    let mut found = Vec::new();
                    (*p).finish(&mut found);
                    self.emit(found, audit);
                }
                Vec::new()
            }
        }
    }

    /// The phase, leaving an empty one in its place.
    fn take_phase(&mut self) -> Phase {
        std::mem::replace(
            &mut self.phase,
            Phase::Held {
                items: Vec::new(),
                bytes: 0,
            },
        )
    }

    fn release(&mut self) -> Vec<Out> {
        match self.take_phase() {
            Phase::Held { items, .. } => items.into_iter().map(Out::Item).collect(),
            other => {
                self.phase = other;
                Vec::new()
            }
        }
    }

    fn emit(&self, files: Vec<FileTransfer>, audit: &AuditSink) {
        for f in files {
            let mut rec = self.start.audit.clone();
            rec.time = crate::core::rfc3339(time::OffsetDateTime::now_utc());
            rec.file_transfer(&f);
            audit.record(rec);
        }
    }
}

fn data_len(item: &Item) -> usize {
    match item {
        Item::Data { bytes, .. } => bytes.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use enforcer_common::io::DIR_OUTPUT;

    use super::*;
    use crate::core::{audit::AuditEvent, transfer};

    fn data(boot_ns: u64, dir: u32, bytes: &[u8]) -> Item<'static> {
        Item::Data {
            boot_ns,
            dir,
            bytes: Cow::Owned(bytes.to_vec()),
        }
    }

    fn session(mode: FileTransfers) -> TransferSession {
        TransferSession::new(TransferStart {
            plan: transfer::plan("/usr/lib/openssh/sftp-server").unwrap(),
            mode,
            audit: AuditRecord::new(AuditEvent::FileTransfer, time::OffsetDateTime::UNIX_EPOCH),
        })
    }

    fn times(out: &[Out]) -> Vec<(u64, bool)> {
        out.iter()
            .map(|o| match o {
                Out::Item(i) => (i.time(), false),
                Out::Marker(t, _) => (*t, true),
            })
            .collect()
    }

    #[test]
    fn held_until_the_program_runs_then_parsed_and_replayed_if_something_else_runs() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditSink::start(&dir.path().join("audit.log"), false).unwrap();
        let mut t = session(FileTransfers::Metadata);
        // Before the exec at 100: the shell's; after: sftp's.
        assert!(matches!(
            t.take(data(50, DIR_OUTPUT, b"motd"), &audit),
            Ok(None)
        ));
        assert!(matches!(
            t.take(data(150, DIR_INPUT, b"\0\0\0\x05\x01\0\0\0\x03"), &audit),
            Ok(None)
        ));
        let out = t.started(100, &audit);
        assert_eq!(
            times(&out),
            vec![(50, false), (100, true)],
            "held bytes before the exec recorded, then the marker"
        );
        // Parsed, not recorded.
        assert!(matches!(
            t.take(data(200, DIR_OUTPUT, b"x"), &audit),
            Ok(None)
        ));
        assert!(matches!(
            t.take(data(300, DIR_OUTPUT, b"shell output"), &audit),
            Ok(None)
        ));
        // A program exec'd at 250: everything from then on is recorded after a marker.
        let out = t.abort(250, false, &audit);
        assert_eq!(times(&out), vec![(250, true), (300, false)]);
    }

    #[test]
    fn a_legacy_scp_download_streaming_before_the_word_comes_is_still_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditSink::start(&dir.path().join("audit.log"), false).unwrap();
        let mut t = TransferSession::new(TransferStart {
            plan: transfer::plan("scp -f /tmp/payload.bin").unwrap(),
            mode: FileTransfers::Metadata,
            audit: AuditRecord::new(AuditEvent::FileTransfer, time::OffsetDateTime::UNIX_EPOCH),
        });
        // scp at 100: its header, then two of the recorder's read batches of file data, all
        // before the state actor's word reaches the recorder.
        let mut at = 100;
        let mut stream = vec![data(at, DIR_OUTPUT, b"C0644 2097152 payload.bin\n")];
        for _ in 0..32 {
            at += 1;
            stream.push(data(at, DIR_OUTPUT, &[b'x'; 64 << 10]));
        }
        for item in stream {
            assert!(matches!(t.take(item, &audit), Ok(None)), "released at {at}");
        }
        let out = t.started(100, &audit);
        assert_eq!(times(&out), vec![(100, true)], "parsed, not recorded");
    }

    #[test]
    fn too_much_held_is_recorded_in_full_and_full_mode_records_everything() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditSink::start(&dir.path().join("audit.log"), false).unwrap();
        let mut t = session(FileTransfers::Metadata);
        let big = vec![0u8; HOLD_MAX + 1];
        match t.take(data(1, DIR_OUTPUT, &big), &audit) {
            Err(out) => assert_eq!(times(&out), vec![(1, false)]),
            Ok(_) => panic!("held past HOLD_MAX"),
        }
        // A flood of one-byte writes is released long before a million of them are held.
        let mut t = session(FileTransfers::Metadata);
        let held = (0..HOLD_MAX as u64)
            .take_while(|&i| matches!(t.take(data(i, DIR_OUTPUT, b"x"), &audit), Ok(None)))
            .count();
        assert!(
            held <= HOLD_MAX / HOLD_ITEM_COST,
            "{held} one-byte items held"
        );
        let mut t = session(FileTransfers::Full);
        t.started(0, &audit);
        assert!(matches!(
            t.take(data(5, DIR_OUTPUT, b"x"), &audit),
            Ok(Some(_))
        ));
    }
}
