//! The state actor: the single owner of the daemon's model. Control requests and kernel events
//! are applied here one at a time, which is what makes admission decisions atomic.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use enforcer_proto::{
    ConnectionInfo, ErrorKind, ErrorReply, FeatureProbe, Reply, Request, Response, StatusReport,
};
use time::OffsetDateTime;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    DaemonInfo,
    admission::CloseReason,
    idle::{IDLE_EVERY, PendingKill},
    lockout::{self, LockFiles},
    persist::{FLUSH_EVERY, Persist},
};
use crate::{
    audit::{AuditRecord, AuditSink},
    bpf::{BpfHandle, KernelEvent},
    config::Config,
    control::{Peer, authorize},
    core::conn::Registry,
    locks::LockStore,
    recording::{RecorderHandle, WatchFrame},
};

/// How often connections whose sshd monitor vanished unnoticed are released. A backstop: the
/// kernel reports every monitor's exit, and an event it had to drop is counted; checking each
/// monitor in /proc costs ~10 µs of kernel time, so not every second.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub(super) enum Msg {
    Request {
        req: Request,
        peer: Peer,
        reply: oneshot::Sender<Response>,
    },
    Stream {
        req: Request,
        peer: Peer,
        reply: oneshot::Sender<Result<Stream, ErrorReply>>,
    },
    /// The lock directory as just read (see `lockout::watch`).
    LockFiles(LockFiles),
    Shutdown(oneshot::Sender<()>),
}

/// What a streaming request (play, watch) is answered from.
pub enum Stream {
    /// A recording file, sent as it is on disk.
    File(std::path::PathBuf),
    /// A live session's frames until it ends.
    Live(mpsc::Receiver<WatchFrame>),
}

/// Cloneable access to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Msg>,
}

impl StateHandle {
    /// Authorises and applies a request; returns its answer.
    pub async fn request(&self, req: Request, peer: Peer) -> Response {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Request { req, peer, reply })
            .await
            .is_err()
        {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Authorises a streaming request (play, watch) and opens what it streams.
    pub async fn stream(&self, req: Request, peer: Peer) -> Result<Stream, ErrorReply> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Stream { req, peer, reply })
            .await
            .is_err()
        {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Stops the actor after the requests already queued.
    pub async fn shutdown(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn shutting_down() -> ErrorReply {
    ErrorReply::new(
        ErrorKind::Internal,
        "enforcerd is shutting down; retry once it is back",
    )
}

/// Daemon-side counters shown in status.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub connections_admitted: u64,
    pub connections_refused: u64,
    pub connections_closed: u64,
    pub requests_denied: u64,
    pub sessions_started: u64,
    pub sessions_refused: u64,
    pub commands: u64,
}

pub(super) struct State {
    pub config: Config,
    pub info: DaemonInfo,
    pub bpf: BpfHandle,
    pub registry: Registry,
    pub locks: LockStore,
    pub audit: AuditSink,
    /// Written by a background thread; `None` only while shutting down.
    pub persist: Option<Persist>,
    /// The registry changed since it was last handed to `persist`.
    pub dirty: bool,
    pub counters: Counters,
    /// Refused sessions waiting to be told why: (connection, leader task id) → message.
    pub refusals: HashMap<(u64, u32), String>,
    /// Connections being terminated, and why (the close reason once their monitor is gone).
    pub terminating: HashMap<u64, CloseReason>,
    /// Connections told why they end, waiting for the message to reach the client.
    pub pending_kills: Vec<PendingKill>,
    /// `None` when recording is off.
    pub recorder: Option<RecorderHandle>,
    /// Released connections whose processes may still run, by id (see `lockout`).
    pub lingering: HashMap<u64, ConnectionInfo>,
    /// Users under an active lock.
    pub locked: HashMap<String, lockout::Locked>,
    /// The uids last written to the kernel's `ENF_LOCKED`; `None` until the first write (the
    /// pinned map may hold a previous run's).
    pub kernel_locked: Option<Vec<u32>>,
    /// When a lock or unlock request last changed the directory (older reads are stale).
    pub locks_changed_at: tokio::time::Instant,
}

/// Spawns the state actor (after restoring the connection table).
pub(super) async fn start(
    config: Config,
    info: DaemonInfo,
    bpf: BpfHandle,
    audit: AuditSink,
    recorder: Option<RecorderHandle>,
    events: mpsc::Receiver<KernelEvent>,
) -> (StateHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let persist = Persist::start(&config.daemon.state_dir);
    let registry = persist.load();
    let locks = LockStore::new(&config.locks.dir);
    let started = tokio::time::Instant::now();
    lockout::watch(locks.clone(), tx.clone());
    let mut state = State {
        config,
        info,
        bpf,
        registry,
        locks,
        audit,
        persist: Some(persist),
        dirty: false,
        counters: Counters::default(),
        refusals: HashMap::new(),
        terminating: HashMap::new(),
        pending_kills: Vec::new(),
        recorder,
        lingering: HashMap::new(),
        locked: HashMap::new(),
        kernel_locked: None,
        locks_changed_at: started,
    };
    state.restore().await;
    (StateHandle { tx }, tokio::spawn(state.run(rx, events)))
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut events: mpsc::Receiver<KernelEvent>) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = tokio::time::interval(IDLE_EVERY);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Request { req, peer, reply }) => {
                        let resp = self.handle(req, &peer).await;
                        let _ = reply.send(resp);
                    }
                    Some(Msg::Stream { req, peer, reply }) => {
                        let resp = self.open_stream(req, &peer).await;
                        let _ = reply.send(resp);
                    }
                    Some(Msg::LockFiles(files)) => self.apply_lock_files(files).await,
                    Some(Msg::Shutdown(ack)) => {
                        if let Some(p) = self.persist.take() {
                            p.finish(&self.registry);
                        }
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                },
                Some(ev) = events.recv() => self.on_kernel_event(ev).await,
                _ = sweep.tick() => self.sweep().await,
                _ = idle.tick() => {
                    self.lift_expired_locks().await;
                    self.check_idle().await;
                }
                _ = tokio::time::sleep_until(self.next_kill().unwrap_or_else(far_future)), if !self.pending_kills.is_empty() => {
                    self.run_due_kills();
                }
                _ = flush.tick(), if self.dirty => {
                    if let Some(p) = &self.persist {
                        p.submit(&self.registry);
                    }
                    self.dirty = false;
                }
            }
        }
    }

    /// Checks `req` against the peer's role, auditing a denial.
    pub(super) fn check(&mut self, req: &Request, peer: &Peer) -> Result<(), ErrorReply> {
        authorize(peer.role, req).map_err(|denied| self.denied(req, peer, denied))
    }

    /// Records a denied request and returns the denial.
    pub(super) fn denied(&mut self, req: &Request, peer: &Peer, denied: ErrorReply) -> ErrorReply {
        self.counters.requests_denied += 1;
        let mut rec = AuditRecord::new("request_denied", OffsetDateTime::now_utc())
            .by(peer.uid, peer.pid)
            .reason("permission_denied", Some(denied.message.clone()));
        rec.request = Some(op_name(req).into());
        self.audit.record(rec);
        denied
    }

    async fn handle(&mut self, req: Request, peer: &Peer) -> Response {
        self.check(&req, peer)?;
        match req {
            Request::Status => self.status().await.map(|s| Reply::Status(Box::new(s))),
            Request::PamAccount(r) => self.pam_account(r).await.map(Reply::Admission),
            Request::PamOpenSession(r) => self.pam_open(r).await.map(|_| Reply::Done),
            Request::PamCloseSession(r) => {
                self.pam_close(r).await;
                Ok(Reply::Done)
            }
            Request::Sessions => Ok(Reply::Sessions(self.list(peer).await)),
            Request::KillSession { id } => self
                .kill_session(id, peer)
                .await
                .map(|processes| Reply::Killed { processes }),
            Request::KillConnection { id } => {
                let rec = AuditRecord::new("connection_killed", OffsetDateTime::now_utc())
                    .by(peer.uid, peer.pid)
                    .reason("killed_by_operator", None);
                self.kill_connection(id, CloseReason::Killed, rec)
                    .await
                    .map(|processes| Reply::Killed { processes })
            }
            Request::Lock(r) => self.lock(r, peer).await.map(Reply::Locked),
            Request::Unlock { user } => self.unlock(&user, peer).await.map(|_| Reply::Done),
            Request::Locks => Ok(Reply::Locks(self.list_locks())),
            Request::Recordings { user, since } => self
                .list_recordings(peer, user.as_deref(), since.as_deref())
                .map(Reply::Recordings),
            Request::Play { .. } | Request::Watch { .. } => Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "play and watch answer with a stream of frames; use enforcerctl play/watch",
            )),
        }
    }

    async fn on_kernel_event(&mut self, ev: KernelEvent) {
        tracing::trace!(?ev, "kernel event");
        match ev {
            KernelEvent::Exec(exec) => self.on_exec(*exec),
            KernelEvent::Exit {
                origin,
                status,
                flags,
                ..
            } => self.on_exit(origin, status, flags).await,
            KernelEvent::Session {
                origin,
                start_ns,
                refused,
                ..
            } => self.on_session(origin, start_ns, refused),
            KernelEvent::Stopped { origin } => self.on_stopped(origin),
        }
    }

    async fn status(&self) -> Result<StatusReport, ErrorReply> {
        let snap = self.bpf.snapshot().await.map_err(|e| {
            tracing::error!(error = %e, "BPF snapshot failed");
            ErrorReply::new(ErrorKind::Internal, format!("{e}"))
        })?;
        let mut events = snap.events;
        let mut dropped = snap.dropped;
        let c = &self.counters;
        events.insert("connections_active".into(), self.registry.len() as u64);
        events.insert("connections_admitted".into(), c.connections_admitted);
        events.insert("connections_refused".into(), c.connections_refused);
        events.insert("connections_closed".into(), c.connections_closed);
        events.insert("connections_lingering".into(), self.lingering.len() as u64);
        events.insert("users_locked".into(), self.locked.len() as u64);
        events.insert("requests_denied".into(), c.requests_denied);
        events.insert(
            "sessions_active".into(),
            self.registry.sessions().count() as u64,
        );
        events.insert("sessions_started".into(), c.sessions_started);
        events.insert("sessions_refused".into(), c.sessions_refused);
        events.insert("commands_logged".into(), c.commands);
        let a = &self.audit.counters;
        events.insert(
            "audit_records_written".into(),
            a.written.load(Ordering::Relaxed),
        );
        dropped.insert(
            "drop_audit_backlog".into(),
            a.dropped_backlog.load(Ordering::Relaxed),
        );
        dropped.insert(
            "drop_audit_disk_full".into(),
            a.lost_disk_full.load(Ordering::Relaxed),
        );
        dropped.insert(
            "drop_audit_write_failed".into(),
            a.write_errors.load(Ordering::Relaxed),
        );
        dropped.insert(
            "drop_audit_journald_failed".into(),
            a.journald_errors.load(Ordering::Relaxed),
        );
        if let Some(r) = &self.recorder {
            let s = &r.stats;
            let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            events.insert("recordings_active".into(), get(&s.active));
            events.insert("recording_bytes".into(), get(&s.bytes_recorded));
            events.insert(
                "recording_bytes_unattributed".into(),
                get(&s.bytes_unattributed),
            );
            dropped.insert("drop_recording_bytes_lost".into(), get(&s.bytes_lost));
            dropped.insert("drop_recording_write_failed".into(), get(&s.write_errors));
            dropped.insert(
                "drop_recording_bytes_disk_full".into(),
                get(&s.bytes_lost_disk_full),
            );
            dropped.insert(
                "drop_recording_bytes_write_failed".into(),
                get(&s.bytes_lost_write_error),
            );
            dropped.insert("drop_watch_frames".into(), get(&s.watch_frames_dropped));
        }
        let mut features = snap.features;
        features.push(FeatureProbe {
            name: "journald".into(),
            supported: self.audit.journald,
            detail: if self.audit.journald {
                "audit records also sent to journald".into()
            } else {
                "off (audit.journald = false or no /run/systemd/journal/socket)".into()
            },
        });
        Ok(StatusReport {
            version: self.info.version.into(),
            pid: self.info.pid,
            started_at: crate::core::rfc3339(self.info.started_at),
            uptime_secs: self.info.started.elapsed().as_secs(),
            kernel: self.info.kernel.clone(),
            config_path: self
                .info
                .config_path
                .as_ref()
                .map(|p| p.display().to_string()),
            socket: self.config.daemon.socket.display().to_string(),
            programs: snap.programs,
            maps: snap.maps,
            features,
            events,
            dropped,
        })
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400)
}

/// The snake_case name of a request, for the audit log.
fn op_name(req: &Request) -> &'static str {
    match req {
        Request::Status => "status",
        Request::PamAccount(_) => "pam_account",
        Request::PamOpenSession(_) => "pam_open_session",
        Request::PamCloseSession(_) => "pam_close_session",
        Request::Sessions => "sessions",
        Request::Lock(_) => "lock",
        Request::Unlock { .. } => "unlock",
        Request::Locks => "locks",
        Request::KillSession { .. } => "kill_session",
        Request::KillConnection { .. } => "kill_connection",
        Request::Recordings { .. } => "recordings",
        Request::Play { .. } => "play",
        Request::Watch { .. } => "watch",
    }
}
