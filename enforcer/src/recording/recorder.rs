//! The recorder thread: drains `ENF_DATA`, writes each session's bytes into its recording, turns
//! `ENF_LOST` counts into loss markers, and feeds live watchers.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    num::NonZeroU16,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, Sender, TryRecvError},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use enforcer_common::io::{
    DATA_MASKED, DIR_INPUT, DIR_OUTPUT, DIR_RESIZE, DataHeader, IO_PTY, IoKey,
};

pub use crate::bpf::RecorderMaps;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::cast::{self, Header, Meta, Utf8Stream};

/// A session whose channels are now known (its leader exec'd).
#[derive(Debug, Clone)]
pub struct StartRecording {
    pub session_id: u64,
    pub conn_id: u64,
    pub keys: Vec<IoKey>,
    pub user: String,
    pub uid: Option<u32>,
    pub kind: String,
    pub tty: Option<String>,
    pub command: Option<String>,
    pub client: Option<String>,
    pub started_at: OffsetDateTime,
    /// Session start on the kernel's clock (`bpf_ktime_get_boot_ns`): event times count from it.
    pub started_boot_ns: u64,
    /// TERM and SHELL of the session.
    pub env: BTreeMap<String, String>,
}

/// What a live watcher receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFrame {
    Output(Vec<u8>),
    Resize { cols: u16, rows: u16 },
    Lost(u64),
    End,
}

/// Counters for `enforcerctl status`, updated by the recorder thread, read by anyone.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub active: AtomicU64,
    pub bytes_recorded: AtomicU64,
    /// Bytes the kernel could not record (in the recordings as markers).
    pub bytes_lost: AtomicU64,
    /// Bytes of channels no session claimed in time (e.g. an in-process sftp subsystem).
    pub bytes_unattributed: AtomicU64,
    pub write_errors: AtomicU64,
    /// Live frames a slow watcher missed.
    pub watch_frames_dropped: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

enum Command {
    Start(Box<StartRecording>),
    End {
        session_id: u64,
    },
    Watch {
        session_id: u64,
        frames: tokio::sync::mpsc::Sender<WatchFrame>,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Shutdown(Sender<()>),
}

/// Talks to the recorder thread.
#[derive(Clone)]
pub struct RecorderHandle {
    tx: Sender<Command>,
    pub stats: Arc<RecorderStats>,
}

impl RecorderHandle {
    pub fn start_recording(&self, s: StartRecording) {
        let _ = self.tx.send(Command::Start(Box::new(s)));
    }

    pub fn end_recording(&self, session_id: u64) {
        let _ = self.tx.send(Command::End { session_id });
    }

    /// Subscribes to a live session: the current screen first, then what follows.
    pub async fn watch(
        &self,
        session_id: u64,
        frames: tokio::sync::mpsc::Sender<WatchFrame>,
    ) -> Result<(), String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Watch {
                session_id,
                frames,
                reply,
            })
            .map_err(|_| "the recorder has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the recorder has stopped".to_owned())?
    }

    /// Flushes and closes every recording.
    pub fn shutdown(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// Starts the recorder thread, writing under `dir`.
pub fn start(maps: RecorderMaps, dir: PathBuf) -> RecorderHandle {
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(RecorderStats::default());
    let recorder = Recorder {
        dir,
        ring: maps.data,
        lost: maps.lost,
        by_key: HashMap::new(),
        recordings: HashMap::new(),
        pending: HashMap::new(),
        sizes: HashMap::new(),
        lost_seen: HashMap::new(),
        stats: stats.clone(),
    };
    std::thread::Builder::new()
        .name("enforcerd-rec".into())
        .spawn(move || recorder.run(rx))
        .expect("spawn recorder thread");
    RecorderHandle { tx, stats }
}

/// Bytes that arrived before their session was known.
enum Item {
    Data {
        boot_ns: u64,
        dir: u32,
        masked: bool,
        bytes: Vec<u8>,
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

struct Pending {
    items: Vec<Item>,
    bytes: usize,
    since: Instant,
}

/// How long bytes wait for their session, and how many may wait per channel.
const PENDING_TTL: Duration = Duration::from_secs(5);
const PENDING_MAX: usize = 4 << 20;
/// A session's last output may still be in the data ring when its end is reported.
const END_GRACE: Duration = Duration::from_secs(2);
/// Output replayed to build the screen a new watcher sees first.
const SCREEN_REPLAY: usize = 4 << 20;

struct Recording {
    session_id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    start_ns: u64,
    pty: bool,
    size: (u16, u16),
    output: Utf8Stream,
    input: Utf8Stream,
    watchers: Vec<tokio::sync::mpsc::Sender<WatchFrame>>,
    screen: Option<vt100::Parser>,
    ends_at: Option<Instant>,
}

struct Recorder {
    dir: PathBuf,
    ring: RingBuf<MapData>,
    lost: BpfHashMap<MapData, IoKey, u64>,
    by_key: HashMap<IoKey, u64>,
    recordings: HashMap<u64, Recording>,
    pending: HashMap<IoKey, Pending>,
    /// Latest window size per pty (set by sshd before the session's shell starts).
    sizes: HashMap<IoKey, (u16, u16)>,
    lost_seen: HashMap<IoKey, u64>,
    stats: Arc<RecorderStats>,
}

fn parse(item: &[u8]) -> Option<(DataHeader, &[u8])> {
    if item.len() < size_of::<DataHeader>() {
        return None;
    }
    // SAFETY: length checked; DataHeader is plain `#[repr(C)]` data.
    let h: DataHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    let payload = if h.flags & DATA_MASKED != 0 {
        &[][..]
    } else {
        item.get(size_of::<DataHeader>()..size_of::<DataHeader>() + h.len as usize)?
    };
    Some((h, payload))
}

impl Recorder {
    fn run(mut self, commands: Receiver<Command>) {
        let mut last_flush = Instant::now();
        let mut last_lost = Instant::now();
        loop {
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            self.drain();
            loop {
                match commands.try_recv() {
                    Ok(Command::Shutdown(ack)) => {
                        self.drain();
                        let ids: Vec<u64> = self.recordings.keys().copied().collect();
                        for id in ids {
                            self.close(id);
                        }
                        let _ = ack.send(());
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if last_lost.elapsed() >= Duration::from_millis(250) {
                self.collect_lost();
                self.expire();
                last_lost = Instant::now();
            }
            if last_flush.elapsed() >= Duration::from_millis(100) {
                // Streamed while the session runs: readers see at most 100 ms of delay.
                for r in self.recordings.values_mut() {
                    if let Err(e) = r.out.flush() {
                        add(&self.stats.write_errors, 1);
                        tracing::error!(path = %r.path.display(), error = %e, "recording write failed");
                    }
                }
                last_flush = Instant::now();
            }
        }
    }

    fn drain(&mut self) {
        let mut items = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some((h, payload)) = parse(&item) {
                items.push((h, payload.to_vec()));
            }
        }
        for (h, payload) in items {
            self.handle(h, payload);
        }
    }

    fn handle(&mut self, h: DataHeader, payload: Vec<u8>) {
        let item = if h.dir == DIR_RESIZE {
            // A client without a terminal reports 0x0: nothing to size a player by.
            if h.cols == 0 || h.rows == 0 {
                return;
            }
            self.sizes.insert(h.key, (h.cols, h.rows));
            Item::Resize {
                boot_ns: h.boot_ns,
                cols: h.cols,
                rows: h.rows,
            }
        } else {
            let masked = h.flags & DATA_MASKED != 0;
            let bytes = if masked {
                vec![b'*'; h.len as usize]
            } else {
                payload
            };
            add(&self.stats.bytes_recorded, bytes.len() as u64);
            Item::Data {
                boot_ns: h.boot_ns,
                dir: h.dir,
                masked,
                bytes,
            }
        };
        match self.by_key.get(&h.key).copied() {
            Some(id) => self.write(id, item),
            None => self.park(h.key, item),
        }
    }

    fn park(&mut self, key: IoKey, item: Item) {
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            items: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        });
        if let Item::Data { bytes, .. } = &item {
            if p.bytes + bytes.len() > PENDING_MAX {
                add(&self.stats.bytes_unattributed, bytes.len() as u64);
                return;
            }
            p.bytes += bytes.len();
        }
        p.items.push(item);
    }

    fn expire(&mut self) {
        let stale: Vec<IoKey> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() > PENDING_TTL)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(p) = self.pending.remove(&k) {
                add(&self.stats.bytes_unattributed, p.bytes as u64);
            }
            self.sizes.remove(&k);
            self.lost_seen.remove(&k);
            let _ = self.lost.remove(&k);
        }
        let ended: Vec<u64> = self
            .recordings
            .values()
            .filter(|r| r.ends_at.is_some_and(|t| Instant::now() >= t))
            .map(|r| r.session_id)
            .collect();
        for id in ended {
            self.close(id);
        }
    }

    /// Turns the kernel's per-channel loss counts into markers in the recordings.
    fn collect_lost(&mut self) {
        let counts: Vec<(IoKey, u64)> = self.lost.iter().filter_map(Result::ok).collect();
        for (key, total) in counts {
            let seen = self.lost_seen.insert(key, total).unwrap_or(0);
            if total <= seen {
                continue;
            }
            let delta = total - seen;
            add(&self.stats.bytes_lost, delta);
            match self.by_key.get(&key).copied() {
                Some(id) => self.write(id, Item::Lost { bytes: delta }),
                None => self.park(key, Item::Lost { bytes: delta }),
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start(s) => self.begin(*s),
            Command::End { session_id } => {
                if let Some(r) = self.recordings.get_mut(&session_id) {
                    r.ends_at = Some(Instant::now() + END_GRACE);
                }
            }
            Command::Watch {
                session_id,
                frames,
                reply,
            } => {
                let _ = reply.send(self.watch(session_id, frames));
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn begin(&mut self, s: StartRecording) {
        let (cols, rows) = s
            .keys
            .iter()
            .find_map(|k| self.sizes.get(k).copied())
            .unwrap_or((80, 24));
        let date = s.started_at.date();
        let dir = self.dir.join(format!("{date}")).join(&s.user);
        let path = dir.join(format!("session-{}.cast", s.session_id));
        let opened = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|_| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
            });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                add(&self.stats.write_errors, 1);
                tracing::error!(path = %path.display(), error = %e, "cannot create recording; set recording.dir to a writable directory");
                return;
            }
        };
        let header = Header {
            version: 2,
            width: cols,
            height: rows,
            timestamp: s.started_at.unix_timestamp(),
            command: s.command.clone(),
            title: Some(format!(
                "{}@{} session {}",
                s.user,
                s.client.clone().unwrap_or_default(),
                s.session_id
            )),
            env: s.env.clone(),
            enforcer: Meta {
                session_id: s.session_id,
                conn_id: s.conn_id,
                user: s.user.clone(),
                uid: s.uid,
                kind: s.kind.clone(),
                tty: s.tty.clone(),
                client: s.client.clone(),
                started: s.started_at.format(&Rfc3339).unwrap_or_default(),
            },
        };
        let mut out = BufWriter::with_capacity(256 << 10, file);
        // Flushed at once: the recording is listable (and playable) from its first moment.
        let header_line = serde_json::to_string(&header).expect("header serialises");
        if let Err(e) = writeln!(out, "{header_line}").and_then(|_| out.flush()) {
            add(&self.stats.write_errors, 1);
            tracing::error!(path = %path.display(), error = %e, "recording write failed");
        }
        let pty = s.keys.iter().any(|k| k.object & IO_PTY != 0);
        self.recordings.insert(
            s.session_id,
            Recording {
                session_id: s.session_id,
                path,
                out,
                start_ns: s.started_boot_ns,
                pty,
                size: (cols, rows),
                output: Utf8Stream::default(),
                input: Utf8Stream::default(),
                watchers: Vec::new(),
                screen: None,
                ends_at: None,
            },
        );
        self.stats
            .active
            .store(self.recordings.len() as u64, Ordering::Relaxed);
        // What arrived before (motd, the shell's first prompt), in kernel order.
        let mut parked: Vec<(u64, Item)> = Vec::new();
        for k in &s.keys {
            self.by_key.insert(*k, s.session_id);
            if let Some(p) = self.pending.remove(k) {
                parked.extend(p.items.into_iter().map(|i| (item_time(&i), i)));
            }
        }
        parked.sort_by_key(|(t, _)| *t);
        for (_, item) in parked {
            self.write(s.session_id, item);
        }
    }

    fn write(&mut self, id: u64, item: Item) {
        let Some(r) = self.recordings.get_mut(&id) else {
            return;
        };
        let start = r.start_ns;
        let t = |ns: u64| ns.saturating_sub(start) as f64 / 1e9;
        let mut lines = Vec::new();
        let mut frame = None;
        match item {
            Item::Data {
                boot_ns,
                dir: DIR_OUTPUT,
                bytes,
                ..
            } => {
                let d = r.output.push(&bytes);
                lines = cast::output_lines(t(boot_ns), &d);
                if let Some(screen) = r.screen.as_mut() {
                    screen.process(&bytes);
                }
                frame = Some(WatchFrame::Output(bytes));
            }
            Item::Data {
                boot_ns,
                dir: DIR_INPUT,
                masked,
                bytes,
            } => {
                let text = if masked {
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    r.input.push(&bytes).text
                };
                if !text.is_empty() {
                    lines.push(cast::event_line(t(boot_ns), "i", &text));
                }
            }
            Item::Data { .. } => {}
            Item::Resize {
                boot_ns,
                cols,
                rows,
            } => {
                r.size = (cols, rows);
                lines.push(cast::event_line(t(boot_ns), "r", &format!("{cols}x{rows}")));
                if let (Some(screen), Some((rows, cols))) = (r.screen.as_mut(), nonzero(rows, cols))
                {
                    screen.set_size(rows, cols);
                }
                frame = Some(WatchFrame::Resize { cols, rows });
            }
            Item::Lost { bytes } => {
                let now = start.max(crate::host::boot_ns());
                lines.push(cast::event_line(
                    t(now),
                    "m",
                    &format!("enforcer: {bytes} bytes lost here"),
                ));
                frame = Some(WatchFrame::Lost(bytes));
            }
        }
        for line in lines {
            if writeln!(r.out, "{line}").is_err() {
                add(&self.stats.write_errors, 1);
            }
        }
        if let Some(f) = frame {
            r.watchers.retain(|w| !w.is_closed());
            for w in &r.watchers {
                if w.try_send(f.clone()).is_err() {
                    add(&self.stats.watch_frames_dropped, 1);
                }
            }
            if r.watchers.is_empty() {
                r.screen = None;
            }
        }
    }

    fn watch(
        &mut self,
        id: u64,
        frames: tokio::sync::mpsc::Sender<WatchFrame>,
    ) -> Result<(), String> {
        let Some(r) = self.recordings.get_mut(&id) else {
            return Err(format!(
                "session {id} is not being recorded live; use `enforcerctl play {id}`"
            ));
        };
        if r.pty {
            if r.screen.is_none() {
                let _ = r.out.flush();
                r.screen = Some(replay_screen(&r.path, r.size));
            }
            let screen = r.screen.as_ref().expect("just built");
            let _ = frames.try_send(WatchFrame::Resize {
                cols: r.size.0,
                rows: r.size.1,
            });
            let _ = frames.try_send(WatchFrame::Output(
                screen.screen().state_formatted().into_bytes(),
            ));
        }
        r.watchers.push(frames);
        Ok(())
    }

    fn close(&mut self, id: u64) {
        let Some(mut r) = self.recordings.remove(&id) else {
            return;
        };
        let end = crate::host::boot_ns();
        let t = end.saturating_sub(r.start_ns) as f64 / 1e9;
        for line in cast::output_lines(t, &r.output.finish()) {
            let _ = writeln!(r.out, "{line}");
        }
        if r.out.flush().is_err() {
            add(&self.stats.write_errors, 1);
        }
        self.stats
            .active
            .store(self.recordings.len() as u64, Ordering::Relaxed);
        for w in &r.watchers {
            let _ = w.try_send(WatchFrame::End);
        }
        self.by_key.retain(|_, s| *s != id);
    }
}

fn nonzero(rows: u16, cols: u16) -> Option<(NonZeroU16, NonZeroU16)> {
    Some((NonZeroU16::new(rows)?, NonZeroU16::new(cols)?))
}

fn item_time(i: &Item) -> u64 {
    match i {
        Item::Data { boot_ns, .. } | Item::Resize { boot_ns, .. } => *boot_ns,
        Item::Lost { .. } => u64::MAX,
    }
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
