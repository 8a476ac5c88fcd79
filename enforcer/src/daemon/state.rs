//! The state actor: the single owner of the daemon's model. Control requests and kernel events
//! are applied here one at a time, which is what makes admission decisions atomic.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use enforcer_proto::{ConnectionInfo, ErrorKind, ErrorReply, Reply, Request, Response};
use time::OffsetDateTime;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

pub use super::handle::{StateHandle, Stream};
use super::{
    DaemonInfo,
    admission::CloseReason,
    handle::Msg,
    idle::{IDLE_EVERY, PendingKill},
    lockout,
    persist::{FLUSH_EVERY, Persist},
    status::{SweepTimer, Sweeps},
};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord, AuditSink},
    bpf::{BpfHandle, KernelEvent},
    config::Config,
    control::{ControlStats, Peer, SharedSettings},
    core::{conn::Registry, control::DenialLimiter},
    host::UserIdentity,
    locks::LockStore,
    recording::{RecorderHandle, RecordingIndex},
};

/// How often connections whose sshd monitor vanished unnoticed are released. A backstop: the
/// kernel reports every monitor's exit, and an event it had to drop is counted; checking each
/// monitor in /proc costs ~10 µs of kernel time, so not every second.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(5);

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
    /// Written by background threads; `None` only while shutting down.
    pub persist: Option<Persist<Registry>>,
    pub persist_identities: Option<Persist<super::kube_identity::ExecIdentities>>,
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
    /// The uploader's counters, when `[recording.store]` ships recordings.
    pub store: Option<Arc<crate::store::StoreStats>>,
    /// Released connections whose processes may still run, by id (see `lockout`).
    pub lingering: HashMap<u64, ConnectionInfo>,
    /// Users under an active lock.
    pub locked: HashMap<String, lockout::Locked>,
    /// The uids last written to the kernel's `ENF_LOCKED`; `None` until the first write (the
    /// pinned map may hold a previous run's).
    pub kernel_locked: Option<Vec<u32>>,
    /// When a lock or unlock request last changed the directory (older reads are stale).
    pub locks_changed_at: tokio::time::Instant,
    /// Every recording on disk, for `play` lookups without reading files here.
    pub recordings: RecordingIndex,
    /// Connections the control socket closed, per reason (shown in status).
    pub control: Arc<ControlStats>,
    /// The control sockets' settings in force (a reload replaces them).
    pub control_settings: Arc<SharedSettings>,
    /// The lock directory the watcher reads (a reload may move it).
    pub lock_dir: watch::Sender<LockStore>,
    pub denials: DenialLimiter,
    /// The last BPF snapshot and when it was taken: unprivileged `status` requests are served
    /// from it (see `status::SNAPSHOT_REUSE`), so a loop of them cannot keep the BPF actor
    /// walking its maps while logins wait.
    pub snapshot: Option<(Instant, crate::bpf::BpfSnapshot)>,
    /// The last view of live tracked processes and when it was taken (see `sessions::processes`).
    pub process_view: Option<(Instant, Arc<ProcessView>)>,
    /// Each connection's last activity that counts for its idle timeout (see `check_idle`).
    pub idle_since: HashMap<u64, OffsetDateTime>,
    /// How long the periodic jobs below take (shown in status).
    pub sweeps: Sweeps,
    /// Sessions whose command is a file transfer, by session id (see `transfers`).
    pub transfers: HashMap<u64, super::transfers::TransferWatch>,
    /// A connection was released since the idle check last read the kernel's activity: its
    /// channels' entries are left for that check to remove (reading them per release would walk
    /// the whole map each time).
    pub activity_orphans: bool,
    /// When the idle check next has something to do.
    pub idle_schedule: crate::core::idle::Schedule,
    /// When the sweep for ended monitors reads the kernel's task table.
    pub monitor_sweep: crate::core::sweep::MonitorSweep,
    /// Connections whose monitor the kernel could not be told to track (a full table): their
    /// end is only seen by the sweep, in /proc.
    pub unregistered: std::collections::HashSet<u64>,
    /// `[fleet]` on: the etcd tasks, and what the actor knows of the fleet (see `fleet`).
    pub fleet: Option<crate::fleet::FleetHandle>,
    pub fleet_state: super::fleet::FleetState,
    /// `[kubernetes]` on: this node's enforcement label (see `kube`).
    pub kube: Option<super::kube::KubeState>,
    /// `kubectl exec` sessions found through containerd (see `kube_exec`).
    pub kube_exec: super::kube_exec::ExecState,
}

/// Live tracked processes by (connection id, kernel session id).
pub(super) type ProcessView = HashMap<(u64, u64), Vec<u32>>;

/// What the actor is given at start besides the config.
pub(super) struct Parts {
    pub fleet: Option<crate::fleet::FleetHandle>,
    pub fleet_events: Option<mpsc::Receiver<crate::fleet::FleetEvent>>,
    /// `[kubernetes]` on: the Node's name and its watch's events.
    pub kube: Option<(String, mpsc::Receiver<crate::kube::NodeEvent>)>,
    /// `[kubernetes]` on: containerd's exec processes.
    pub containerd: Option<mpsc::Receiver<crate::kube::ContainerdEvent>>,
    pub info: DaemonInfo,
    pub bpf: BpfHandle,
    pub audit: AuditSink,
    pub recorder: Option<RecorderHandle>,
    pub store: Option<Arc<crate::store::StoreStats>>,
    pub recordings: RecordingIndex,
    pub control: Arc<ControlStats>,
    pub control_settings: Arc<SharedSettings>,
}

/// Spawns the state actor (after restoring the connection table).
pub(super) async fn start(
    config: Config,
    parts: Parts,
    events: mpsc::Receiver<KernelEvent>,
) -> (StateHandle, JoinHandle<()>) {
    let Parts {
        fleet,
        fleet_events,
        kube,
        containerd,
        info,
        bpf,
        audit,
        recorder,
        store,
        recordings,
        control,
        control_settings,
    } = parts;
    let (tx, rx) = mpsc::channel(256);
    let (pam_tx, pam_rx) = mpsc::channel(256);
    let persist = Persist::start(
        config.daemon.state_dir.join("connections.json"),
        "connection table",
    );
    let registry = persist.load();
    let persist_identities = Persist::start(
        config.daemon.state_dir.join("exec-identities.json"),
        "exec identities",
    );
    let identities = persist_identities.load();
    let locks = LockStore::new(&config.locks.dir);
    let started = tokio::time::Instant::now();
    // The watcher's reads reach the actor on the priority lane: a flood of public requests
    // must not delay a lock dropped into the directory.
    let (lock_dir, lock_dir_rx) = watch::channel(locks.clone());
    lockout::watch(lock_dir_rx, pam_tx.clone());
    if let Some(events) = fleet_events {
        super::handle::forward(events, pam_tx.clone(), Msg::Fleet);
    }
    if let Some(f) = &fleet {
        f.set_early_config(Arc::new(config.clone()));
    }
    let kube = kube.map(|(node, events)| {
        super::handle::forward(events, pam_tx.clone(), Msg::Kube);
        let selector = config.kubernetes.selector();
        super::kube::KubeState::new(node, selector, OffsetDateTime::now_utc())
    });
    if let Some(events) = containerd {
        // The priority lane: the sooner the kernel follows an exec, the less it can fork
        // untracked.
        super::handle::forward(events, pam_tx.clone(), Msg::Containerd);
    }
    let config_path = info.config_path.as_deref().map(Arc::from);
    let mut state = State {
        config,
        info,
        bpf,
        registry,
        locks,
        audit,
        persist: Some(persist),
        persist_identities: Some(persist_identities),
        dirty: false,
        counters: Counters::default(),
        refusals: HashMap::new(),
        terminating: HashMap::new(),
        pending_kills: Vec::new(),
        recorder,
        store,
        lingering: HashMap::new(),
        locked: HashMap::new(),
        kernel_locked: None,
        locks_changed_at: started,
        recordings,
        control,
        control_settings,
        lock_dir,
        denials: DenialLimiter::default(),
        snapshot: None,
        process_view: None,
        idle_since: HashMap::new(),
        sweeps: Sweeps::default(),
        transfers: HashMap::new(),
        activity_orphans: true,
        idle_schedule: Default::default(),
        monitor_sweep: Default::default(),
        unregistered: Default::default(),
        fleet,
        fleet_state: Default::default(),
        kube,
        kube_exec: super::kube_exec::ExecState {
            identities,
            ..Default::default()
        },
    };
    state.restore().await;
    state.sync_exec_hold(false).await;
    let handle = StateHandle {
        tx,
        pam_tx,
        config_path,
    };
    (handle, tokio::spawn(state.run(pam_rx, rx, events)))
}

impl State {
    async fn run(
        mut self,
        mut pam: mpsc::Receiver<Msg>,
        mut rx: mpsc::Receiver<Msg>,
        mut events: mpsc::Receiver<KernelEvent>,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = tokio::time::interval(IDLE_EVERY);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut denials = tokio::time::interval(Duration::from_secs(1));
        denials.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // PAM first: whatever waits on the PAM lane is served before anything else, so a
            // login waits for at most the one message being handled when it arrived. The rest
            // stay fairly (randomly) polled: a `biased` order would let a flood of public
            // requests starve kernel events and the lock and idle timers.
            while let Ok(msg) = pam.try_recv() {
                if self.on_msg(msg).await {
                    return;
                }
            }
            tokio::select! {
                Some(msg) = pam.recv() => {
                    if self.on_msg(msg).await {
                        return;
                    }
                }
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        if self.on_msg(msg).await {
                            return;
                        }
                    }
                    None => return,
                },
                Some(ev) = events.recv() => self.on_kernel_event(ev).await,
                _ = denials.tick() => self.flush_denials(),
                _ = sweep.tick() => {
                    let t = SweepTimer::start();
                    self.sweep().await;
                    self.sweeps.monitors.record(t);
                }
                _ = idle.tick() => {
                    self.lift_expired_locks().await;
                    self.check_fleet_view();
                    self.check_idle(false).await;
                    self.check_exec_idle();
                    self.release_overdue_holds().await;
                    self.drop_ended_exec_channels(false).await;
                    self.ask_again_due();
                }
                _ = tokio::time::sleep_until(self.next_kill().unwrap_or_else(far_future)), if !self.pending_kills.is_empty() => {
                    self.run_due_kills();
                }
                _ = flush.tick(), if self.dirty || self.kube_exec.identities_dirty => {
                    if let (true, Some(p)) = (self.dirty, &self.persist) {
                        p.submit(&self.registry);
                    }
                    if let (true, Some(p)) = (self.kube_exec.identities_dirty, &self.persist_identities) {
                        p.submit(&self.kube_exec.identities);
                    }
                    self.dirty = false;
                    self.kube_exec.identities_dirty = false;
                }
            }
        }
    }

    /// Applies one message; true when the actor must stop.
    async fn on_msg(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Request {
                req: Request::PamAccount(r),
                peer,
                identity,
                early,
                reply,
            } => {
                let req = Request::PamAccount(r);
                if let Err(e) = self.check(&req, &peer) {
                    if let Some(e) = early {
                        self.drop_early_slot(e);
                    }
                    let _ = reply.send(Err(e));
                    return false;
                }
                let Request::PamAccount(r) = req else {
                    unreachable!()
                };
                self.pam_account_or_wait(r, identity, early, reply).await;
            }
            Msg::Fleet(ev) => self.on_fleet(ev).await,
            Msg::Kube(ev) => {
                self.on_kube(ev);
                self.sync_exec_hold(false).await;
            }
            Msg::Containerd(ev) => self.on_containerd(ev).await,
            Msg::Request {
                req,
                peer,
                identity,
                early,
                reply,
            } => {
                // Only an account request takes a slot early (the arm above).
                if let Some(e) = early {
                    self.drop_early_slot(e);
                }
                let resp = self.handle(req, &peer, identity).await;
                let _ = reply.send(resp);
            }
            Msg::Stream { req, peer, reply } => {
                let resp = self.open_stream(req, &peer).await;
                let _ = reply.send(resp);
            }
            Msg::Denied { req, peer, denied } => {
                self.denied(&req, &peer, denied);
            }
            Msg::LockFiles(files) => self.apply_lock_files(files).await,
            Msg::Metrics(reply) => {
                let _ = reply.send(self.metrics_view().await);
            }
            Msg::Reload {
                loaded,
                trigger,
                peer,
                reply,
            } => {
                let resp = self.reload(*loaded, trigger, peer.as_ref()).await;
                let _ = reply.send(resp.map(Reply::Reloaded));
            }
            Msg::Shutdown(ack) => {
                self.sync_exec_hold(true).await;
                self.drop_ended_exec_channels(true).await;
                if let Some(p) = self.persist.take() {
                    p.finish(&self.registry);
                }
                if let Some(p) = self.persist_identities.take() {
                    p.finish(&self.kube_exec.identities);
                }
                let _ = ack.send(());
                return true;
            }
        }
        false
    }

    async fn handle(
        &mut self,
        req: Request,
        peer: &Peer,
        identity: Option<UserIdentity>,
    ) -> Response {
        self.check(&req, peer)?;
        match req {
            Request::Status => self
                .status(peer.role != crate::control::Role::User)
                .await
                .map(|s| Reply::Status(Box::new(s))),
            // Taken by `on_msg` (its answer may wait for a fleet-wide slot).
            Request::PamAccount(_) => Err(ErrorKind::Internal).map_err(|k| {
                ErrorReply::new(
                    k,
                    "account request on the wrong path; this is a bug, please report it",
                )
            }),
            Request::PamOpenSession(r) => self.pam_open(r, identity).await.map(|_| Reply::Done),
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
                let rec = AuditRecord::new(AuditEvent::ConnectionKilled, OffsetDateTime::now_utc())
                    .by(peer.uid, peer.pid)
                    .reason(AuditReason::KilledByOperator, None);
                self.kill_connection(id, CloseReason::Killed, rec)
                    .await
                    .map(|processes| Reply::Killed { processes })
            }
            Request::Lock(r) if r.kube.is_some() => {
                self.lock_exec(r, peer).await.map(Reply::Locked)
            }
            Request::Lock(r) => self.lock(r, peer, identity).await.map(Reply::Locked),
            Request::Unlock { user } => self.unlock(&user, peer).await.map(|_| Reply::Done),
            Request::UnlockTarget(u) if u.kube.is_some() => {
                self.unlock_exec(&u, peer).map(|_| Reply::Done)
            }
            Request::UnlockTarget(u) if u.group => Err(super::fleet::group_locks_are_fleet_wide()),
            Request::UnlockTarget(u) if !u.node => {
                self.unlock(&u.name, peer).await.map(|_| Reply::Done)
            }
            // Fleet requests are answered by the connection task; here only without a fleet.
            Request::UnlockTarget(_) | Request::FleetSessions | Request::Nodes => {
                Err(super::fleet::fleet_off())
            }
            Request::Locks => Ok(Reply::Locks(self.list_locks())),
            // Answered by the connection task from the index (never on the actor).
            Request::Recordings { user, since } => {
                super::recordings::list(&self.recordings, peer, user.as_deref(), since.as_deref())
                    .map(Reply::Recordings)
            }
            // Read from the store by the connection task (never on the actor).
            Request::StoreRecordings { .. } => Err(ErrorReply::new(
                ErrorKind::Internal,
                "store listings are answered by the connection task; this is a bug, please report it",
            )),
            // Read from the audit log by the connection task (never on the actor).
            Request::History(_) => Err(ErrorReply::new(
                ErrorKind::Internal,
                "history is read by the connection task; this is a bug, please report it",
            )),
            Request::Play { .. } | Request::Watch { .. } => Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "play and watch answer with a stream of frames; use enforcerctl play/watch",
            )),
            // Root's reloads come as `Msg::Reload`, with the file already read.
            Request::Reload => Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "reload is sent by the connection task; use enforcerctl reload",
            )),
        }
    }

    async fn on_kernel_event(&mut self, ev: KernelEvent) {
        tracing::trace!(?ev, "kernel event");
        match ev {
            KernelEvent::Exec(exec) => self.on_exec(*exec).await,
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
            KernelEvent::ExecHeld { origin } => self.on_exec_held(origin.pid, origin.boot_ns).await,
            KernelEvent::HoldBroken { root } => self.on_hold_broken(root),
            KernelEvent::Forward {
                origin,
                ino,
                change,
            } => self.on_forward(origin, ino, change),
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400)
}
