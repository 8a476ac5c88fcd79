//! The task that owns the aya object (lockc-style): maps are read and written only here, and the
//! ring buffer is drained here. Dropping it leaves the programs attached: their links and maps
//! are pinned (see `links.rs`).

use std::{collections::BTreeMap, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
};
use enforcer_common::{
    io::{Activity, IoKey},
    limits::{ConnEntry, UserEntry},
    tasks::{TASK_CONN_ROOT, TrackedTask},
};
use enforcer_proto::{FeatureProbe, MapStatus, ProgramStatus};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    BpfError, BpfSettings, KernelEvent, RecorderMaps, batch, events, loader,
    tasks::{self, KillTarget, Tasks},
};

mod exec;
mod forget;
mod snapshot;

/// BPF_NOEXIST: insert only when the key is absent.
const NOEXIST: u64 = 1;

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

type Reply<T> = oneshot::Sender<Result<T, BpfError>>;

enum Command {
    Snapshot(Reply<BpfSnapshot>),
    Drops(Reply<u64>),
    Track {
        tid: u32,
        task: TrackedTask,
        reply: Reply<()>,
    },
    Untrack {
        tid: u32,
        reply: Reply<()>,
    },
    SetExecChannels {
        conn_id: u64,
        objects: Vec<u64>,
        reply: Reply<()>,
    },
    RemoveExecChannels {
        conn_id: u64,
        objects: Vec<u64>,
        reply: Reply<()>,
    },
    RetainExecChannels {
        keep: Vec<u64>,
        reply: Reply<usize>,
    },
    HoldExecs {
        on: bool,
        reply: Reply<()>,
    },
    SetConn {
        conn_id: u64,
        entry: ConnEntry,
        reply: Reply<()>,
    },
    RemoveConn {
        conn_id: u64,
        reply: Reply<()>,
    },
    EnsureUser {
        uid: u32,
        max_sessions: u32,
        reply: Reply<()>,
    },
    SetUser {
        uid: u32,
        entry: UserEntry,
        reply: Reply<()>,
    },
    RemoveUser {
        uid: u32,
        reply: Reply<()>,
    },
    Census(Reply<Vec<(u32, TrackedTask)>>),
    Activity(Reply<Vec<(IoKey, Activity)>>),
    ForgetActivity {
        keys: Vec<IoKey>,
        reply: Reply<()>,
    },
    KillPass {
        target: KillTarget,
        reply: Reply<Vec<u32>>,
    },
    SetLocked {
        uids: Vec<u32>,
        reply: Reply<()>,
    },
    IsLocked {
        uid: u32,
        reply: Reply<bool>,
    },
    Validate {
        roots: Vec<u32>,
        reply: Reply<(usize, usize)>,
    },
    Adopt {
        roots: Vec<u32>,
        reply: Reply<usize>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Cheap, cloneable access to the actor.
#[derive(Clone)]
pub struct BpfHandle {
    tx: mpsc::Sender<Command>,
    /// Whether the kernel side ran on without a gap since the previous daemon.
    pub continuity: super::Continuity,
}

impl BpfHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, BpfError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| BpfError::ActorGone)?;
        rx.await.map_err(|_| BpfError::ActorGone)?
    }

    /// Programs, maps, probes and counters.
    pub async fn snapshot(&self) -> Result<BpfSnapshot, BpfError> {
        self.ask(Command::Snapshot).await
    }

    /// Kernel events lost so far, every reason together (see `enforcerctl status`).
    pub async fn drops(&self) -> Result<u64, BpfError> {
        self.ask(Command::Drops).await
    }

    /// Starts tracking a task (and, through the kernel, everything it creates from now on).
    pub async fn track(&self, tid: u32, task: TrackedTask) -> Result<(), BpfError> {
        self.ask(|reply| Command::Track { tid, task, reply }).await
    }

    /// Stops tracking a task that ended before the kernel could see it end.
    pub async fn untrack(&self, tid: u32) -> Result<(), BpfError> {
        self.ask(|reply| Command::Untrack { tid, reply }).await
    }

    /// Registers an admitted connection's session limit.
    pub async fn set_conn(&self, conn_id: u64, entry: ConnEntry) -> Result<(), BpfError> {
        self.ask(|reply| Command::SetConn {
            conn_id,
            entry,
            reply,
        })
        .await
    }

    pub async fn remove_conn(&self, conn_id: u64) -> Result<(), BpfError> {
        self.ask(|reply| Command::RemoveConn { conn_id, reply })
            .await
    }

    /// Registers a user's session limit unless the user already has an entry (whose live count
    /// must not be reset).
    pub async fn ensure_user(&self, uid: u32, max_sessions: u32) -> Result<(), BpfError> {
        self.ask(|reply| Command::EnsureUser {
            uid,
            max_sessions,
            reply,
        })
        .await
    }

    /// Overwrites a user's entry (restore after restart).
    pub async fn set_user(&self, uid: u32, entry: UserEntry) -> Result<(), BpfError> {
        self.ask(|reply| Command::SetUser { uid, entry, reply })
            .await
    }

    pub async fn remove_user(&self, uid: u32) -> Result<(), BpfError> {
        self.ask(|reply| Command::RemoveUser { uid, reply }).await
    }

    /// Every tracked task.
    pub async fn census(&self) -> Result<Vec<(u32, TrackedTask)>, BpfError> {
        self.ask(Command::Census).await
    }

    /// Last input/output of every session channel.
    pub async fn activity(&self) -> Result<Vec<(IoKey, Activity)>, BpfError> {
        self.ask(Command::Activity).await
    }

    /// Records the shim's side of these exec channels under `conn_id` (an exec session's kernel
    /// identity) from now on.
    pub async fn set_exec_channels(&self, conn_id: u64, objects: Vec<u64>) -> Result<(), BpfError> {
        self.ask(|reply| Command::SetExecChannels {
            conn_id,
            objects,
            reply,
        })
        .await
    }

    /// Stops recording these exec channels of `conn_id` (its session ended); one filed under
    /// another session since stays.
    pub async fn remove_exec_channels(
        &self,
        conn_id: u64,
        objects: Vec<u64>,
    ) -> Result<(), BpfError> {
        self.ask(|reply| Command::RemoveExecChannels {
            conn_id,
            objects,
            reply,
        })
        .await
    }

    /// Drops every exec channel but `keep` (those of sessions that ended while no enforcerd
    /// ran): how many.
    pub async fn retain_exec_channels(&self, keep: Vec<u64>) -> Result<usize, BpfError> {
        self.ask(|reply| Command::RetainExecChannels { keep, reply })
            .await
    }

    /// Whether the kernel stops `kubectl exec` commands before their first instruction until
    /// enforcerd resumes or refuses them (`ENF_HOLD_EXECS`).
    pub async fn hold_execs(&self, on: bool) -> Result<(), BpfError> {
        self.ask(|reply| Command::HoldExecs { on, reply }).await
    }

    /// Drops activity entries (of connections that ended).
    pub async fn forget_activity(&self, keys: Vec<IoKey>) -> Result<(), BpfError> {
        self.ask(|reply| Command::ForgetActivity { keys, reply })
            .await
    }

    /// Kills every task of a session or connection, repeating until none is left (a task that
    /// forks meanwhile is caught by the next pass; its child cannot exec). Returns how many
    /// tasks were signalled.
    /// The passes run here, in the caller's task: the actor only does one pass per request and
    /// stays free for everything else while SIGKILLs land.
    pub async fn kill(&self, target: KillTarget) -> Result<usize, BpfError> {
        let mut signalled = std::collections::HashSet::new();
        for _ in 0..KILL_PASSES {
            let pass = self
                .ask(|reply| Command::KillPass { target, reply })
                .await?;
            if pass.is_empty() {
                return Ok(signalled.len());
            }
            signalled.extend(pass);
            // Give SIGKILL time to land; the exit tracepoint then removes the entries.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::error!(?target, "tasks still alive after {KILL_PASSES} kill passes");
        Ok(signalled.len())
    }

    /// Makes `ENF_LOCKED` exactly `uids`: their processes die at exec and fork from now on.
    pub async fn set_locked(&self, uids: Vec<u32>) -> Result<(), BpfError> {
        self.ask(|reply| Command::SetLocked { uids, reply }).await
    }

    /// Whether `uid` is in the kernel's locked set now.
    pub async fn is_locked(&self, uid: u32) -> Result<bool, BpfError> {
        self.ask(|reply| Command::IsLocked { uid, reply }).await
    }

    /// Drops entries of tasks that ended while the daemon was down and adopts descendants of
    /// `roots` created meanwhile: (removed, adopted).
    pub async fn validate(&self, roots: Vec<u32>) -> Result<(usize, usize), BpfError> {
        self.ask(|reply| Command::Validate { roots, reply }).await
    }

    /// Tracks the live descendants of `roots` the table lacks (forked before a root was
    /// tracked), with their parent's identity: how many.
    pub async fn adopt(&self, roots: Vec<u32>) -> Result<usize, BpfError> {
        self.ask(|reply| Command::Adopt { roots, reply }).await
    }

    /// Stops the actor and releases this daemon's handles; the pinned programs stay attached.
    pub async fn shutdown(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Actor {
    /// Held for its programs (their links are pinned: dropping it detaches nothing), and to
    /// hook sshd executables as they show up.
    ebpf: Ebpf,
    io: loader::IoPath,
    programs: Vec<ProgramStatus>,
    features: Vec<FeatureProbe>,
    settings: BpfSettings,
    counters: PerCpuArray<MapData, u64>,
    tasks: Tasks,
    conns: HashMap<MapData, u64, ConnEntry>,
    users: HashMap<MapData, u32, UserEntry>,
    locked: HashMap<MapData, u32, u32>,
    activity: HashMap<MapData, IoKey, Activity>,
    forwards: HashMap<MapData, u64, u64>,
    fwd_count: HashMap<MapData, u64, u64>,
    fwd_activity: HashMap<MapData, IoKey, Activity>,
    /// `ENF_EXEC_CHANS`: exec channel object → exec session's kernel identity.
    exec_channels: HashMap<MapData, u64, u64>,
    /// `ENF_UNCLAIMED`: bytes of exec ptys recorded before they were claimed.
    unclaimed: HashMap<MapData, u64, u64>,
    /// `ENF_HOLD_EXECS`: whether exec commands wait for enforcerd.
    hold_execs: Array<MapData, u32>,
    /// containerd shims' probes (status only: they are pinned).
    shim: super::hooks::UprobeHooks,
    received: u64,
    malformed: u64,
    /// Events the daemon could not take (its queue was full or closed).
    undelivered: u64,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

/// Loads and attaches the BPF object and spawns the actor. Kernel events go to `events`; the
/// recording maps are handed back for the recorder thread to own.
pub fn start(
    settings: BpfSettings,
    events: mpsc::Sender<KernelEvent>,
) -> Result<(BpfHandle, JoinHandle<()>, RecorderMaps), BpfError> {
    let loader::Loaded {
        mut ebpf,
        programs,
        features,
        continuity,
        io,
        shim,
    } = loader::load(loader::OBJECT, &settings)?;
    let mut take = |name: &'static str| ebpf.take_map(name).ok_or(BpfError::MissingMap(name));
    let ring = RingBuf::try_from(take("ENF_EVENTS")?).map_err(map_err("ENF_EVENTS"))?;
    let counters = PerCpuArray::try_from(take("ENF_COUNTERS")?).map_err(map_err("ENF_COUNTERS"))?;
    let tasks = HashMap::try_from(take("ENF_TASKS")?).map_err(map_err("ENF_TASKS"))?;
    let conns = HashMap::try_from(take("ENF_CONNS")?).map_err(map_err("ENF_CONNS"))?;
    let users = HashMap::try_from(take("ENF_USERS")?).map_err(map_err("ENF_USERS"))?;
    let locked = HashMap::try_from(take("ENF_LOCKED")?).map_err(map_err("ENF_LOCKED"))?;
    let activity = HashMap::try_from(take("ENF_ACTIVITY")?).map_err(map_err("ENF_ACTIVITY"))?;
    let forwards = HashMap::try_from(take("ENF_FORWARDS")?).map_err(map_err("ENF_FORWARDS"))?;
    let fwd_count = HashMap::try_from(take("ENF_FWD_COUNT")?).map_err(map_err("ENF_FWD_COUNT"))?;
    let fwd_activity =
        HashMap::try_from(take("ENF_FWD_ACTIVITY")?).map_err(map_err("ENF_FWD_ACTIVITY"))?;
    let exec_channels =
        HashMap::try_from(take("ENF_EXEC_CHANS")?).map_err(map_err("ENF_EXEC_CHANS"))?;
    let unclaimed = HashMap::try_from(take("ENF_UNCLAIMED")?).map_err(map_err("ENF_UNCLAIMED"))?;
    let hold_execs = Array::try_from(take("ENF_HOLD_EXECS")?).map_err(map_err("ENF_HOLD_EXECS"))?;
    let recorder_maps = RecorderMaps {
        data: RingBuf::try_from(take("ENF_DATA")?).map_err(map_err("ENF_DATA"))?,
        lost: HashMap::try_from(take("ENF_LOST")?).map_err(map_err("ENF_LOST"))?,
    };
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| BpfError::Map {
            name: "ENF_EVENTS",
            source: std::io::Error::from(e).into(),
        })?;
    let (tx, rx) = mpsc::channel(64);
    let mut actor = Actor {
        ebpf,
        io,
        programs,
        features,
        settings,
        counters,
        tasks,
        conns,
        users,
        locked,
        activity,
        forwards,
        fwd_count,
        fwd_activity,
        exec_channels,
        unclaimed,
        hold_execs,
        shim,
        received: 0,
        malformed: 0,
        undelivered: 0,
    };
    // Connections that outlived the previous daemon: their sshd may be a file this generation
    // has not hooked yet (another build, or an sshd upgraded since).
    for (tid, task) in tasks::census(&actor.tasks) {
        if task.flags & TASK_CONN_ROOT != 0 {
            actor.hook_root(tid);
        }
    }
    let join = tokio::spawn(actor.run(rx, ring, events));
    Ok((BpfHandle { tx, continuity }, join, recorder_maps))
}

/// Kill passes before giving up on a session that keeps producing tasks.
const KILL_PASSES: usize = 100;

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut ring: AsyncFd<RingBuf<MapData>>,
        events: mpsc::Sender<KernelEvent>,
    ) {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown(ack)) => {
                        drop(ring);
                        drop(self);
                        tracing::info!("BPF programs stay attached (pinned); `enforcerd --detach` removes them");
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
                            // Never wait on the daemon: it waits on us (snapshots, map
                            // updates). A full queue is a counted drop; the daemon's sweep
                            // reconciles any connection whose end it missed.
                            Ok(ev) => {
                                let ev = events::resolve_accepted(ev);
                                if events.try_send(ev).is_err() {
                                    self.undelivered += 1;
                                }
                            }
                            Err(e) => {
                                self.malformed += 1;
                                tracing::warn!(error = %e, "malformed kernel event");
                            }
                        }
                    }
                    guard.clear_ready();
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Drops(reply) => {
                let _ = reply.send(self.drops());
            }
            Command::Track { tid, task, reply } => {
                if task.flags & TASK_CONN_ROOT != 0 {
                    // Before the answer: sshd forks the connection's processes after it.
                    self.hook_root(tid);
                }
                let _ = reply.send(
                    self.tasks
                        .insert(tid, task, 0)
                        .map_err(map_err("ENF_TASKS")),
                );
            }
            Command::SetExecChannels {
                conn_id,
                objects,
                reply,
            } => {
                let _ = reply.send(self.set_exec_channels(conn_id, &objects));
            }
            Command::RemoveExecChannels {
                conn_id,
                objects,
                reply,
            } => {
                self.remove_exec_channels(Some(conn_id), &objects);
                let _ = reply.send(Ok(()));
            }
            Command::RetainExecChannels { keep, reply } => {
                let _ = reply.send(self.retain_exec_channels(&keep));
            }
            Command::HoldExecs { on, reply } => {
                let _ = reply.send(
                    self.hold_execs
                        .set(0, u32::from(on), 0)
                        .map_err(map_err("ENF_HOLD_EXECS")),
                );
            }
            Command::Untrack { tid, reply } => {
                let _ =
                    reply.send(absent_ok(self.tasks.remove(&tid)).map_err(map_err("ENF_TASKS")));
            }
            Command::SetConn {
                conn_id,
                entry,
                reply,
            } => {
                let _ = reply.send(
                    self.conns
                        .insert(conn_id, entry, 0)
                        .map_err(map_err("ENF_CONNS")),
                );
            }
            Command::RemoveConn { conn_id, reply } => {
                self.forget_forwards(conn_id);
                let _ = reply
                    .send(absent_ok(self.conns.remove(&conn_id)).map_err(map_err("ENF_CONNS")));
            }
            Command::EnsureUser {
                uid,
                max_sessions,
                reply,
            } => {
                let entry = UserEntry {
                    sessions: 0,
                    max_sessions,
                    _pad: 0,
                };
                let r = match self.users.insert(uid, entry, NOEXIST) {
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                    {
                        Ok(())
                    }
                    other => other,
                };
                let _ = reply.send(r.map_err(map_err("ENF_USERS")));
            }
            Command::SetUser { uid, entry, reply } => {
                let _ = reply.send(
                    self.users
                        .insert(uid, entry, 0)
                        .map_err(map_err("ENF_USERS")),
                );
            }
            Command::RemoveUser { uid, reply } => {
                let _ =
                    reply.send(absent_ok(self.users.remove(&uid)).map_err(map_err("ENF_USERS")));
            }
            Command::Census(reply) => {
                let _ = reply.send(Ok(tasks::census(&self.tasks)));
            }
            Command::Activity(reply) => {
                let sessions = batch::entries(&self.activity).map_err(map_err("ENF_ACTIVITY"));
                let forwards =
                    batch::entries(&self.fwd_activity).map_err(map_err("ENF_FWD_ACTIVITY"));
                let _ = reply.send(sessions.and_then(|mut s| {
                    s.extend(forwards?);
                    Ok(s)
                }));
            }
            Command::ForgetActivity { keys, reply } => {
                self.forget_activity(keys);
                let _ = reply.send(Ok(()));
            }
            Command::KillPass { target, reply } => {
                let _ = reply.send(Ok(tasks::kill_pass(&mut self.tasks, target)));
            }
            Command::SetLocked { uids, reply } => {
                let _ = reply.send(self.set_locked(&uids).map_err(map_err("ENF_LOCKED")));
            }
            Command::IsLocked { uid, reply } => {
                let _ = reply.send(Ok(self.locked.get(&uid, 0).is_ok()));
            }
            Command::Validate { roots, reply } => {
                let _ = reply.send(Ok(tasks::validate(&mut self.tasks, &roots)));
            }
            Command::Adopt { roots, reply } => {
                let _ = reply.send(Ok(tasks::adopt_descendants(&mut self.tasks, &roots)));
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Hooks the sshd executable a connection's root runs (sshd_hooks.rs).
    fn hook_root(&mut self, pid: u32) {
        if let loader::IoPath::Sshd(hooks) = &mut self.io {
            hooks.hook_process(&mut self.ebpf, pid);
        }
    }

    fn set_locked(&mut self, uids: &[u32]) -> Result<(), MapError> {
        let stale: Vec<u32> = self
            .locked
            .keys()
            .filter_map(Result::ok)
            .filter(|u| !uids.contains(u))
            .collect();
        for uid in stale {
            absent_ok(self.locked.remove(&uid))?;
        }
        for &uid in uids {
            self.locked.insert(uid, 1, 0)?;
        }
        Ok(())
    }
}

/// Removing an absent key is not an error.
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
