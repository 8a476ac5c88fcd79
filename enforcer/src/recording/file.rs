//! One open recording: its asciicast file, the decoders of its two directions, and the live
//! watchers fed from it.

use std::{
    borrow::Cow,
    fs::OpenOptions,
    io,
    num::NonZeroU16,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Instant,
};

use enforcer_common::io::{DIR_INPUT, DIR_OUTPUT, IO_PTY};

use super::{
    cast::{self, Header, Meta, Utf8Stream},
    header,
    recorder::{RecorderStats, StartRecording, WatchFrame, add},
    store::Stored,
};
use crate::lines::{LineFile, WriteFailure};

/// Output replayed to build the screen a new watcher sees first.
const SCREEN_REPLAY: usize = 4 << 20;
/// Event lines collected before they are written to the file.
const BUFFER: usize = 256 << 10;
/// What the buffer is allocated with when lines arrive: room for a full buffer and the event
/// that overflows it, so a stream never reallocates.
const BUFFER_CAPACITY: usize = BUFFER + (64 << 10);

/// What the recorder hands a recording: borrowed from the data ring, or owned while it waits
/// for its session.
pub(super) enum Item<'a> {
    Data {
        boot_ns: u64,
        dir: u32,
        bytes: Cow<'a, [u8]>,
    },
    Resize {
        boot_ns: u64,
        cols: u16,
        rows: u16,
    },
    Lost {
        bytes: u64,
    },
}

impl Item<'_> {
    /// The same item, no longer borrowing from the data ring.
    pub(super) fn into_owned(self) -> Item<'static> {
        match self {
            Item::Data {
                boot_ns,
                dir,
                bytes,
            } => Item::Data {
                boot_ns,
                dir,
                bytes: Cow::Owned(bytes.into_owned()),
            },
            Item::Resize {
                boot_ns,
                cols,
                rows,
            } => Item::Resize {
                boot_ns,
                cols,
                rows,
            },
            Item::Lost { bytes } => Item::Lost { bytes },
        }
    }

    /// Kernel time, to put parked items in order (loss markers last).
    pub(super) fn time(&self) -> u64 {
        match self {
            Item::Data { boot_ns, .. } | Item::Resize { boot_ns, .. } => *boot_ns,
            Item::Lost { .. } => u64::MAX,
        }
    }
}

/// Session bytes whose lines could not be written (disk full, I/O error): marked with an "m"
/// event once writing works again.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// Recording time of the first lost line.
    at: f64,
    bytes: u64,
    why: WriteFailure,
}

pub(super) struct Recording {
    pub(super) path: PathBuf,
    file: LineFile,
    /// Event lines not yet written to `file`.
    buf: Vec<u8>,
    /// Session bytes in `buf`, and the time of its first line.
    buf_bytes: u64,
    buf_start: Option<f64>,
    gap: Option<Gap>,
    start_ns: u64,
    pty: bool,
    /// Input of a session without a pty (its stdin) is written (`recording.exec_stdin`).
    record_stdin: bool,
    size: (u16, u16),
    output: Utf8Stream,
    input: Utf8Stream,
    watchers: Vec<tokio::sync::mpsc::Sender<WatchFrame>>,
    screen: Option<vt100::Parser>,
    /// When the session's end was reported plus a grace period for its last bytes.
    pub(super) ends_at: Option<Instant>,
}

impl Recording {
    /// Creates `<dir>/<date>/<user>/session-<id>.cast` (owner-only) and writes its header.
    pub(super) fn create(
        dir: &Path,
        s: &StartRecording,
        (cols, rows): (u16, u16),
    ) -> io::Result<(Recording, Stored)> {
        let path = path_of(dir, s);
        let dir = path.parent().expect("path_of has parents");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| with_path(e, dir))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| with_path(e, &path))?;
        let (mut file, _) = LineFile::new(file).map_err(|e| with_path(e, &path))?;
        let header = Header {
            version: 2,
            width: cols,
            height: rows,
            timestamp: s.started_at.unix_timestamp(),
            command: s.command.clone(),
            title: Some(match &s.kube {
                Some(k) => format!(
                    "kubectl exec {}/{} ({}) session {}",
                    k.namespace, k.pod, k.container, s.session_id
                ),
                None => format!(
                    "{}@{} session {}",
                    s.user,
                    s.client.clone().unwrap_or_default(),
                    s.session_id
                ),
            }),
            env: s.env.clone(),
            enforcer: Meta {
                session_id: s.session_id,
                conn_id: s.conn_id,
                user: s.user.clone(),
                uid: s.uid,
                kind: s.kind.clone(),
                tty: s.tty.clone(),
                client: s.client.clone(),
                started: crate::core::rfc3339(s.started_at),
                kube: s.kube.clone(),
            },
        };
        // Written at once: the recording is listable (and playable) from its first moment;
        // with room for the user still to come (see `header`).
        let pad = if s.identity_pending {
            header::RESERVE
        } else {
            0
        };
        let header_line = header::line(&header, pad);
        if let Err(e) = file.append(&header_line) {
            // A file without its header is no recording: leave nothing behind.
            let _ = std::fs::remove_file(&path);
            return Err(with_path(e, &path));
        }
        let stored = Stored {
            path: path.clone(),
            header,
            size: header_line.len() as u64,
            duration: None,
        };
        Ok((Recording::new(path, file, s, (cols, rows)), stored))
    }

    /// Reopens the recording of a session that was live when enforcerd stopped (crash,
    /// restart): a half line left by a crash is cut off, and an "m" marker at the last recorded
    /// moment says for how long the session went unrecorded.
    pub(super) fn resume(
        dir: &Path,
        s: &StartRecording,
        size: (u16, u16),
        kernel_continuous: bool,
    ) -> io::Result<(Recording, Stored)> {
        let path = path_of(dir, s);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| with_path(e, &path))?;
        let (file, cut) = LineFile::new(file).map_err(|e| with_path(e, &path))?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), bytes = cut, "recording ended in a half line (crash); cut back to its last whole line");
        }
        let stored = super::store::load(path.clone()).ok_or_else(|| {
            with_path(
                io::Error::new(io::ErrorKind::InvalidData, "no readable asciicast header"),
                &path,
            )
        })?;
        let last = stored.duration.unwrap_or(0.0);
        let mut r = Recording::new(path, file, s, size);
        let text = if kernel_continuous {
            // The pinned ring kept what the session wrote meanwhile; only what the old daemon
            // had taken from it but not yet written is gone.
            "enforcer: enforcerd restarted after this point; the kernel kept capturing, so at most 0.1 s of output may be missing".to_owned()
        } else {
            let down = (r.time(crate::host::boot_ns()) - last).max(0.0);
            format!("enforcer: not recorded for up to {down:.1} s here (enforcerd was down)")
        };
        cast::write_event(&mut r.buf, last, "m", &text);
        r.buf_start = Some(last);
        Ok((r, stored))
    }

    fn new(path: PathBuf, file: LineFile, s: &StartRecording, (cols, rows): (u16, u16)) -> Self {
        Recording {
            path,
            file,
            // Allocated when lines arrive, given back when they stop (see `tick`).
            buf: Vec::new(),
            buf_bytes: 0,
            buf_start: None,
            gap: None,
            start_ns: s.started_boot_ns,
            pty: s.keys.iter().any(|k| k.object & IO_PTY != 0),
            record_stdin: s.record_stdin,
            size: (cols, rows),
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
            watchers: Vec::new(),
            screen: None,
            ends_at: None,
        }
    }

    /// Seconds since the session started.
    fn time(&self, boot_ns: u64) -> f64 {
        boot_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// Writes an `"m"` marker line at kernel time `boot_ns`.
    pub(super) fn marker(&mut self, boot_ns: u64, text: &str, stats: &RecorderStats) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(BUFFER_CAPACITY);
        }
        let t = self.time(boot_ns.max(self.start_ns));
        self.buf_start.get_or_insert(t);
        cast::write_event(&mut self.buf, t, "m", text);
        if self.buf.len() >= BUFFER {
            self.flush(stats);
        }
    }

    /// Appends one item and passes it on to the watchers.
    pub(super) fn write(&mut self, item: Item, stats: &RecorderStats) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(BUFFER_CAPACITY);
        }
        let mut frame = None;
        if self.buf_start.is_none() {
            self.buf_start = Some(match &item {
                Item::Data { boot_ns, .. } | Item::Resize { boot_ns, .. } => self.time(*boot_ns),
                Item::Lost { .. } => self.time(self.start_ns.max(crate::host::boot_ns())),
            });
        }
        if let Item::Data { bytes, .. } = &item {
            self.buf_bytes += bytes.len() as u64;
        }
        match item {
            Item::Data {
                boot_ns,
                dir: DIR_OUTPUT,
                bytes,
            } => {
                let t = self.time(boot_ns);
                let d = self.output.push(&bytes);
                cast::write_output(&mut self.buf, t, &d);
                if let Some(screen) = self.screen.as_mut() {
                    screen.process(&bytes);
                }
                if !self.watchers.is_empty() {
                    frame = Some(WatchFrame::Output(bytes.into_owned()));
                }
            }
            // The kernel sends a pipe session's input for transfer parsing; recorded only when
            // asked for.
            Item::Data { dir: DIR_INPUT, .. } if !self.pty && !self.record_stdin => {}
            Item::Data {
                boot_ns,
                dir: DIR_INPUT,
                bytes,
            } => {
                let t = self.time(boot_ns);
                let text = self.input.push(&bytes).text;
                if !text.is_empty() {
                    cast::write_event(&mut self.buf, t, "i", &text);
                }
            }
            Item::Data { .. } => {}
            Item::Resize {
                boot_ns,
                cols,
                rows,
            } => {
                self.size = (cols, rows);
                let t = self.time(boot_ns);
                cast::write_event(&mut self.buf, t, "r", &format!("{cols}x{rows}"));
                if let (Some(screen), Some((rows, cols))) =
                    (self.screen.as_mut(), nonzero(rows, cols))
                {
                    screen.set_size(rows, cols);
                }
                frame = Some(WatchFrame::Resize { cols, rows });
            }
            Item::Lost { bytes } => {
                let t = self.time(self.start_ns.max(crate::host::boot_ns()));
                let text = cast::lost_text(bytes);
                cast::write_event(&mut self.buf, t, "m", &text);
                frame = Some(WatchFrame::Lost(bytes));
            }
        }
        if self.buf.len() >= BUFFER {
            self.flush(stats);
        }
        if let Some(f) = frame {
            self.send(f, stats);
        }
    }

    fn send(&mut self, frame: WatchFrame, stats: &RecorderStats) {
        self.watchers.retain(|w| !w.is_closed());
        // Copies for all but the last watcher, which takes the frame itself.
        if let Some((last, rest)) = self.watchers.split_last() {
            for w in rest {
                if w.try_send(frame.clone()).is_err() {
                    add(&stats.watch_frames_dropped, 1);
                }
            }
            if last.try_send(frame).is_err() {
                add(&stats.watch_frames_dropped, 1);
            }
        }
        if self.watchers.is_empty() {
            self.screen = None;
        }
    }

    /// The recorder's periodic flush: writes what arrived since the last one, and gives the
    /// buffer back when nothing did (an idle session must not hold a buffer; with thousands of
    /// sessions that is most of the daemon's memory).
    pub(super) fn tick(&mut self, stats: &RecorderStats) {
        if self.buf.is_empty() && self.gap.is_none() {
            self.buf = Vec::new();
            return;
        }
        self.flush(stats);
    }

    /// Makes what was written so far visible to readers of the file. A failed write loses the buffered lines but never leaves a half line; the loss is
    /// counted and marked ("m") in front of the next lines that can be written.
    pub(super) fn flush(&mut self, stats: &RecorderStats) {
        if self.buf.is_empty() && self.gap.is_none() {
            return;
        }
        let result = match self.gap {
            Some(g) => {
                let mut lines = Vec::with_capacity(self.buf.len() + 96);
                let text = format!("{} ({})", cast::lost_text(g.bytes), loss_cause(g.why));
                cast::write_event(&mut lines, g.at, "m", &text);
                lines.extend_from_slice(&self.buf);
                self.file.append(&lines)
            }
            None => self.file.append(&self.buf),
        };
        match result {
            Ok(()) => self.gap = None,
            Err(e) => {
                let why = WriteFailure::of(&e);
                add(&stats.write_errors, 1);
                add(
                    match why {
                        WriteFailure::DiskFull => &stats.bytes_lost_disk_full,
                        WriteFailure::Io => &stats.bytes_lost_write_error,
                    },
                    self.buf_bytes,
                );
                if self.gap.is_none() {
                    tracing::error!(path = %self.path.display(), error = %e, "recording write failed; the gap is marked once writing works again");
                }
                let at = self.buf_start.unwrap_or(0.0);
                let g = self.gap.get_or_insert(Gap { at, bytes: 0, why });
                g.bytes += self.buf_bytes;
                g.why = why;
            }
        }
        self.buf.clear();
        self.buf_bytes = 0;
        self.buf_start = None;
    }

    /// Adds a live watcher: a pty session's current screen first, then what follows.
    pub(super) fn watch(
        &mut self,
        frames: tokio::sync::mpsc::Sender<WatchFrame>,
        stats: &RecorderStats,
    ) {
        if self.pty {
            if self.screen.is_none() {
                self.flush(stats);
                self.screen = Some(replay_screen(&self.path, self.size));
            }
            let screen = self.screen.as_ref().expect("just built");
            let _ = frames.try_send(WatchFrame::Resize {
                cols: self.size.0,
                rows: self.size.1,
            });
            let _ = frames.try_send(WatchFrame::Output(
                screen.screen().state_formatted().into_bytes(),
            ));
        }
        self.watchers.push(frames);
    }

    /// Writes what the decoder still holds, flushes, and tells the watchers it is over.
    /// Returns the final size and duration (for the index).
    pub(super) fn close(mut self, stats: &RecorderStats) -> (u64, f64) {
        let t = self.time(crate::host::boot_ns());
        cast::write_output(&mut self.buf, t, &self.output.finish());
        self.flush(stats);
        for w in &self.watchers {
            let _ = w.try_send(WatchFrame::End);
        }
        let size = self.file.len();
        (size, t)
    }
}

/// `<dir>/<date>/<user>/session-<id>.cast`
/// Where exec sessions' recordings go: they have no user on the node.
const KUBE_EXEC_DIR: &str = "kube-exec";

fn path_of(dir: &Path, s: &StartRecording) -> PathBuf {
    let who = match s.user.is_empty() {
        true => KUBE_EXEC_DIR,
        false => &s.user,
    };
    dir.join(format!("{}", s.started_at.date()))
        .join(who)
        .join(format!("session-{}.cast", s.session_id))
}

fn loss_cause(why: WriteFailure) -> &'static str {
    match why {
        WriteFailure::DiskFull => "recording.dir was full",
        WriteFailure::Io => "write error in recording.dir",
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn nonzero(rows: u16, cols: u16) -> Option<(NonZeroU16, NonZeroU16)> {
    Some((NonZeroU16::new(rows)?, NonZeroU16::new(cols)?))
}

/// The screen as it is now: the recording's recent output run through a terminal emulator.
fn replay_screen(path: &Path, (cols, rows): (u16, u16)) -> vt100::Parser {
    let (rows, cols) = nonzero(rows, cols)
        .or_else(|| nonzero(24, 80))
        .expect("24x80 is non-zero");
    let mut parser = vt100::Parser::new(rows, cols, 0);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let events: Vec<cast::Event> = text.lines().skip(1).filter_map(cast::parse_event).collect();
    let output = cast::exact_output(&events);
    let mut total = 0;
    let start = output.iter().rposition(|(_, b)| {
        total += b.len();
        total > SCREEN_REPLAY
    });
    for (_, bytes) in &output[start.map_or(0, |s| s + 1)..] {
        parser.process(bytes);
    }
    parser
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
