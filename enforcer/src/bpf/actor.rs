//! The task that owns the aya object (lockc-style): maps are read and written only here, and the
//! ring buffer is drained here. Dropping it detaches every program.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use enforcer_common::{counters::Counter, tasks::TrackedTask};
use enforcer_proto::{FeatureProbe, MapStatus, ProgramStatus};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{BpfError, BpfSettings, KernelEvent, events, loader};

/// Kernel-side state for `enforcerctl status`.
#[derive(Debug, Clone)]
pub struct BpfSnapshot {
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub features: Vec<FeatureProbe>,
    /// Non-drop counters by name (kernel counters and the daemon's own).
    pub events: BTreeMap<String, u64>,
    /// Drop counters by reason.
    pub dropped: BTreeMap<String, u64>,
}

enum Command {
    Snapshot(oneshot::Sender<Result<BpfSnapshot, BpfError>>),
    Track { tid: u32, task: TrackedTask, reply: oneshot::Sender<Result<(), BpfError>> },
    Untrack { tid: u32, reply: oneshot::Sender<Result<(), BpfError>> },
    Shutdown(oneshot::Sender<()>),
}

/// Cheap, cloneable access to the actor.
#[derive(Clone)]
pub struct BpfHandle {
    tx: mpsc::Sender<Command>,
}

impl BpfHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, BpfError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| BpfError::ActorGone)?;
        rx.await.map_err(|_| BpfError::ActorGone)
    }

    /// Programs, maps, probes and counters.
    pub async fn snapshot(&self) -> Result<BpfSnapshot, BpfError> {
        self.ask(Command::Snapshot).await?
    }

    /// Starts tracking a task (and, through the kernel, everything it creates from now on).
    pub async fn track(&self, tid: u32, task: TrackedTask) -> Result<(), BpfError> {
        self.ask(|reply| Command::Track { tid, task, reply }).await?
    }

    /// Stops tracking one task (its descendants keep their own entries).
    pub async fn untrack(&self, tid: u32) -> Result<(), BpfError> {
        self.ask(|reply| Command::Untrack { tid, reply }).await?
    }

    /// Detaches everything and stops the actor; returns once the kernel objects are released.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

struct Actor {
    /// Held for its programs and links: dropping it detaches them.
    _ebpf: Ebpf,
    programs: Vec<ProgramStatus>,
    features: Vec<FeatureProbe>,
    settings: BpfSettings,
    counters: PerCpuArray<MapData, u64>,
    tasks: HashMap<MapData, u32, TrackedTask>,
    received: u64,
    malformed: u64,
    /// Events the daemon could not take (its queue was full or closed).
    undelivered: u64,
}

/// Loads and attaches the BPF object and spawns the actor. Kernel events go to `events`.
pub fn start(
    settings: BpfSettings,
    events: mpsc::Sender<KernelEvent>,
) -> Result<(BpfHandle, JoinHandle<()>), BpfError> {
    let loader::Loaded { mut ebpf, programs, features } = loader::load(loader::OBJECT, &settings)?;
    let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(BpfError::MissingMap(name));
    let ring = RingBuf::try_from(take(&mut ebpf, "ENF_EVENTS")?)
        .map_err(|source| BpfError::Map { name: "ENF_EVENTS", source })?;
    let counters = PerCpuArray::try_from(take(&mut ebpf, "ENF_COUNTERS")?)
        .map_err(|source| BpfError::Map { name: "ENF_COUNTERS", source })?;
    let tasks = HashMap::try_from(take(&mut ebpf, "ENF_TASKS")?)
        .map_err(|source| BpfError::Map { name: "ENF_TASKS", source })?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| BpfError::Map { name: "ENF_EVENTS", source: std::io::Error::from(e).into() })?;
    let (tx, rx) = mpsc::channel(64);
    let actor = Actor {
        _ebpf: ebpf,
        programs,
        features,
        settings,
        counters,
        tasks,
        received: 0,
        malformed: 0,
        undelivered: 0,
    };
    let join = tokio::spawn(actor.run(rx, ring, events));
    Ok((BpfHandle { tx }, join))
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut ring: AsyncFd<RingBuf<MapData>>,
        events: mpsc::Sender<KernelEvent>,
    ) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown(ack)) => {
                        drop(ring);
                        drop(self);
                        tracing::info!("BPF programs detached");
                        let _ = ack.send(());
                        return;
                    }
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                guard = ring.readable_mut() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::error!(error = %e, "ring buffer poll failed; kernel events stop");
                            return;
                        }
                    };
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        self.received += 1;
                        match events::decode(&item) {
                            Ok(ev) => batch.push(ev),
                            Err(e) => {
                                self.malformed += 1;
                                tracing::warn!(error = %e, "malformed kernel event");
                            }
                        }
                    }
                    guard.clear_ready();
                    for ev in batch.drain(..) {
                        // Never wait on the daemon: it waits on us (snapshots, map updates).
                        // A full queue is a counted drop; the daemon's periodic sweep
                        // reconciles any connection whose end it missed.
                        if events.try_send(ev).is_err() {
                            self.undelivered += 1;
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Track { tid, task, reply } => {
                let r = self.tasks.insert(tid, task, 0);
                let _ = reply.send(r.map_err(|source| BpfError::Map { name: "ENF_TASKS", source }));
            }
            Command::Untrack { tid, reply } => {
                let r = match self.tasks.remove(&tid) {
                    Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    other => other,
                };
                let _ = reply.send(r.map_err(|source| BpfError::Map { name: "ENF_TASKS", source }));
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn snapshot(&self) -> Result<BpfSnapshot, BpfError> {
        let mut events = BTreeMap::new();
        let mut dropped = BTreeMap::new();
        for c in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(c as u32), 0)
                .map_err(|source| BpfError::Map { name: "ENF_COUNTERS", source })?;
            let total: u64 = per_cpu.iter().sum();
            if c.is_drop() { &mut dropped } else { &mut events }.insert(c.name().to_owned(), total);
        }
        events.insert("events_received".into(), self.received);
        dropped.insert("drop_events_malformed".into(), self.malformed);
        dropped.insert("drop_daemon_backlog".into(), self.undelivered);
        let tracked = self.tasks.keys().filter(Result::is_ok).count() as u64;
        let maps = vec![
            MapStatus {
                name: "ENF_EVENTS".into(),
                kind: "ringbuf".into(),
                max_entries: self.settings.ring_buffer_bytes,
                entries: None,
            },
            MapStatus {
                name: "ENF_COUNTERS".into(),
                kind: "percpu_array".into(),
                max_entries: enforcer_common::counters::COUNTER_SLOTS,
                entries: Some(Counter::ALL.len() as u64),
            },
            MapStatus {
                name: "ENF_TASKS".into(),
                kind: "hash".into(),
                max_entries: self.settings.max_tracked_tasks,
                entries: Some(tracked),
            },
        ];
        Ok(BpfSnapshot {
            programs: self.programs.clone(),
            maps,
            features: self.features.clone(),
            events,
            dropped,
        })
    }
}
