//! The recorder thread: drains `ENF_DATA`, writes each session's bytes into its recording, turns
//! `ENF_LOST` counts into loss markers, and feeds live watchers.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, TryRecvError},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use enforcer_common::io::{DATA_MASKED, DIR_RESIZE, DataHeader, IoKey};
use nix::sys::eventfd::{EfdFlags, EventFd};

pub use crate::bpf::RecorderMaps;
use time::OffsetDateTime;

use super::{
    RecordingIndex,
    file::{Item, Recording},
    transfer::{TransferSession, TransferStart},
};
use crate::audit::AuditSink;

mod handle;
mod identity;
mod transfers;

use handle::Command;
pub use handle::RecorderHandle;

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
    /// Input of a session without a pty is written too (`recording.exec_stdin`).
    pub record_stdin: bool,
    /// The session's command is a file transfer (see `recording::transfer`).
    pub transfer: Option<TransferStart>,
    /// Set when the session was live before enforcerd restarted: its recording is reopened
    /// and marked rather than created.
    pub resume: Option<Resume>,
    /// A `kubectl exec` session's pod and exec.
    pub kube: Option<super::cast::KubeMeta>,
    /// The Kubernetes user behind it is still being found out: the header keeps room for
    /// them and is rewritten by [`RecorderHandle::identified`].
    pub identity_pending: bool,
}

/// How a recording is taken up again after a restart.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    /// The kernel programs stayed attached while enforcerd was down (their data waited in the
    /// pinned ring), so only what the old daemon had not yet written is missing.
    pub kernel_continuous: bool,
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
    /// Failed writes to recording files.
    pub write_errors: AtomicU64,
    /// Session bytes whose lines could not be written: filesystem full, other write errors
    /// (marked in the recordings).
    pub bytes_lost_disk_full: AtomicU64,
    pub bytes_lost_write_error: AtomicU64,
    /// Live frames a slow watcher missed.
    pub watch_frames_dropped: AtomicU64,
}

pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Starts the recorder thread, writing under `dir` and keeping `index` current.
pub fn start(
    maps: RecorderMaps,
    dir: PathBuf,
    index: RecordingIndex,
    audit: AuditSink,
) -> std::io::Result<RecorderHandle> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let stats = Arc::new(RecorderStats::default());
    let recorder = Recorder {
        dir,
        lost: maps.lost,
        by_key: HashMap::new(),
        recordings: HashMap::new(),
        pending: HashMap::new(),
        sizes: HashMap::new(),
        lost_seen: HashMap::new(),
        stats: stats.clone(),
        index,
        transfers: HashMap::new(),
        held: HashMap::new(),
        audit,
    };
    let thread_wake = wake.clone();
    std::thread::Builder::new()
        .name("enforcerd-rec".into())
        .spawn(move || recorder.run(maps.data, rx, thread_wake))?;
    Ok(RecorderHandle { tx, wake, stats })
}

/// Bytes that arrived before their session was known.
struct Pending {
    items: Vec<Item<'static>>,
    bytes: usize,
    since: Instant,
}

/// How long bytes wait for their session, and how many may wait per channel.
const PENDING_TTL: Duration = Duration::from_secs(5);
const PENDING_MAX: usize = 4 << 20;
/// A session's last output may still be in the data ring when its end is reported.
const END_GRACE: Duration = Duration::from_secs(2);
struct Recorder {
    dir: PathBuf,
    lost: BpfHashMap<MapData, IoKey, u64>,
    by_key: HashMap<IoKey, u64>,
    recordings: HashMap<u64, Recording>,
    pending: HashMap<IoKey, Pending>,
    /// Latest window size per pty (set by sshd before the session's shell starts).
    sizes: HashMap<IoKey, (u16, u16)>,
    lost_seen: HashMap<IoKey, u64>,
    stats: Arc<RecorderStats>,
    index: RecordingIndex,
    /// Sessions whose command is a file transfer.
    transfers: HashMap<u64, TransferSession>,
    /// Recordings whose header waits for the Kubernetes user (open or already closed).
    held: HashMap<u64, super::header::Held>,
    /// Where their `file_transfer` records go.
    audit: AuditSink,
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
    /// The ring is not a field so that its items can be written while borrowed from it.
    fn run(mut self, mut ring: RingBuf<MapData>, commands: Receiver<Command>, wake: Arc<EventFd>) {
        batch_scheduling();
        let mut last_flush = Instant::now();
        let mut last_lost = Instant::now();
        // Whether the last drain found data: while data flows, a short timer picks up what the
        // programs did not wake us for (see `wake_flags` in enforcer-ebpf); otherwise we sleep
        // until woken or until the housekeeping below is due.
        let mut flowing = false;
        loop {
            let mut pfds = [ring.as_raw_fd(), wake.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            let timeout = if flowing { 20 } else { 250 };
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout) };
            // Non-blocking: resets the count if a command woke us.
            let _ = wake.read();
            flowing = self.drain(&mut ring) > 0;
            loop {
                match commands.try_recv() {
                    Ok(Command::Shutdown(ack)) => {
                        self.drain(&mut ring);
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
            if !flowing || last_flush.elapsed() >= Duration::from_millis(100) {
                // Streamed while the session runs: readers see at most 100 ms of delay, and
                // everything once the stream pauses.
                for r in self.recordings.values_mut() {
                    r.tick(&self.stats);
                }
                last_flush = Instant::now();
            }
        }
    }

    /// Handles everything in the ring; returns how many records there were.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            if let Some((h, payload)) = parse(&item) {
                self.handle(h, payload);
            }
        }
        n
    }

    fn handle(&mut self, h: DataHeader, payload: &[u8]) {
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
            // Masked input: the kernel sent only how many bytes were typed.
            let bytes = if h.flags & DATA_MASKED != 0 {
                Cow::Owned(vec![b'*'; h.len as usize])
            } else {
                Cow::Borrowed(payload)
            };
            add(&self.stats.bytes_recorded, bytes.len() as u64);
            Item::Data {
                boot_ns: h.boot_ns,
                dir: h.dir,
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
        p.items.push(item.into_owned());
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
            self.forget(&k);
        }
        let ended: Vec<u64> = self
            .recordings
            .iter()
            .filter(|(_, r)| r.ends_at.is_some_and(|t| Instant::now() >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            self.close(id);
        }
        self.expire_held_transfers();
        self.expire_held_headers();
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
            Command::TransferStarted {
                session_id,
                boot_ns,
            } => self.transfer_started(session_id, boot_ns),
            Command::TransferAborted {
                session_id,
                since_ns,
                program_ended,
            } => self.transfer_aborted(session_id, since_ns, program_ended),
            Command::Identified { session_id, who } => self.identified(session_id, who),
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn begin(&mut self, s: StartRecording) {
        let size = s
            .keys
            .iter()
            .find_map(|k| self.sizes.get(k).copied())
            .unwrap_or((80, 24));
        let opened = match s.resume {
            Some(r) => Recording::resume(&self.dir, &s, size, r.kernel_continuous).or_else(|e| {
                tracing::warn!(session = s.session_id, error = %e, "cannot reopen recording; starting a new one");
                Recording::create(&self.dir, &s, size)
            }),
            None => Recording::create(&self.dir, &s, size),
        };
        match opened {
            Ok((r, stored)) => {
                self.recordings.insert(s.session_id, r);
                if let Some(t) = s.transfer.clone() {
                    self.transfers.insert(s.session_id, TransferSession::new(t));
                }
                let hold = s.identity_pending && s.resume.is_none();
                if hold {
                    self.hold_header(s.session_id, &stored);
                }
                self.index.started(stored, hold);
            }
            Err(e) => {
                add(&self.stats.write_errors, 1);
                tracing::error!(session = s.session_id, error = %e, "cannot create recording; set recording.dir to a writable directory");
                return;
            }
        }
        self.stats
            .active
            .store(self.recordings.len() as u64, Ordering::Relaxed);
        // What arrived before (motd, the shell's first prompt), in kernel order.
        let mut parked: Vec<(u64, Item)> = Vec::new();
        for k in &s.keys {
            self.by_key.insert(*k, s.session_id);
            if let Some(p) = self.pending.remove(k) {
                // Bytes of a channel nobody had claimed (connection 0: an exec's pty before
                // containerd reported it) are this session's only from its start: before, the
                // pty was an earlier session's.
                let unclaimed = k.conn_id == 0;
                parked.extend(
                    p.items
                        .into_iter()
                        .filter(|i| !unclaimed || i.time() >= s.started_boot_ns)
                        .map(|i| (i.time(), i)),
                );
            }
        }
        parked.sort_by_key(|(t, _)| *t);
        for (_, item) in parked {
            self.write(s.session_id, item);
        }
    }

    fn write(&mut self, id: u64, item: Item) {
        let Some(item) = self.through_transfer(id, item) else {
            return;
        };
        if let Some(r) = self.recordings.get_mut(&id) {
            r.write(item, &self.stats);
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
        r.watch(frames, &self.stats);
        Ok(())
    }

    fn close(&mut self, id: u64) {
        if !self.recordings.contains_key(&id) {
            return;
        }
        // The channels' last losses still belong in this recording.
        self.collect_lost();
        self.finish_transfer(id);
        let Some(r) = self.recordings.remove(&id) else {
            return;
        };
        let (size, duration) = r.close(&self.stats);
        self.index.ended(id, size, Some(duration));
        self.stats
            .active
            .store(self.recordings.len() as u64, Ordering::Relaxed);
        let keys: Vec<IoKey> = self
            .by_key
            .iter()
            .filter(|(_, s)| **s == id)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.by_key.remove(&k);
            self.forget(&k);
        }
    }

    /// Drops what is kept per channel (window size, loss counts here and in the kernel) once
    /// nothing will be written for it any more.
    fn forget(&mut self, key: &IoKey) {
        self.sizes.remove(key);
        self.lost_seen.remove(key);
        let _ = self.lost.remove(key);
    }
}

/// Recording is throughput work that must not steal the CPU from the sessions it records at
/// each wakeup: SCHED_BATCH keeps the thread's fair share but not its wakeup preemption.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "recorder stays on the default scheduling policy");
    }
}
