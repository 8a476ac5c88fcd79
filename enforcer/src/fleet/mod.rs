//! The fleet's edge: every etcd call enforcerd makes, in tasks of their own. The state actor
//! never waits on etcd: it sends [`FleetHandle`] commands (which never block) and gets the
//! results back as [`FleetEvent`]s on its priority lane; `enforcerctl` lock requests and fleet
//! listings are answered from here straight to the caller. Decisions stay in `core::fleet`.
//!
//! Tasks: `client` (connecting), `lease` (the node's one lease, its node key, and the ordered
//! writer of session and slot keys under it), `watch` (fleet locks: watch, resume, local copy),
//! `slots` (fleet-wide admission), `ops` (locks and listings for enforcerctl), `exec_grants`
//! (the Kubernetes user behind an exec session, from the admission webhook's grants), `lapsed`
//! (grants no exec session matched).

mod client;
mod exec_grants;
mod lapsed;
mod lease;
mod ops;
mod slots;
mod watch;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use enforcer_proto::{FleetConnection, NodeInfo};
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::{
    config::FleetConfig,
    core::{
        fleet::{FleetLock, Keys, LockTarget},
        kube::admission::{ExecGrant, GrantQuery},
    },
};

pub use exec_grants::GrantOutcome;
pub use slots::{EarlySlot, SlotOutcome, SlotTag};

/// What a fleet operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(
        "etcd cannot be reached ({0}); check [fleet] etcd_endpoints and that etcd runs, or use \
         --local for a lock of this node only"
    )]
    Unreachable(String),
    #[error("{0}; use --replace to change its reason and expiry")]
    AlreadyLocked(String),
    #[error("cannot read the TLS file {path}: {source}; check [fleet] ca, cert and key")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the fleet tells the state actor.
#[derive(Debug)]
pub enum FleetEvent {
    /// Every fleet lock in force as this node now knows it, each user lock with the uid NSS
    /// gives its user here.
    Locks(Vec<(FleetLock, Option<u32>)>),
    /// The outcome of [`FleetHandle::acquire`] or [`FleetHandle::acquire_session`].
    Slot { tag: SlotTag, outcome: SlotOutcome },
    /// Who exec session `session` is ([`FleetHandle::identify_exec`]).
    ExecIdentified { session: u64, outcome: GrantOutcome },
    /// An exec grant for a pod of this node expired unmatched.
    GrantLapsed(ExecGrant),
}

/// Commands the writer task applies in order (keys under the node's lease).
#[derive(Debug)]
enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    /// A key already written (a slot taken by its transaction): kept to be written again
    /// under a new lease.
    Remember(String, Vec<u8>),
}

impl Write {
    /// Puts the user's key of exec grant `g` (one a node matched) under the node's lease.
    fn exec_grant(keys: &Keys, g: &crate::core::kube::admission::ExecGrant) -> Self {
        let value = serde_json::to_vec(g).unwrap_or_default();
        Write::Put(keys.exec_grant(&g.user, &g.review), value)
    }
}

/// How this node's view of the fleet stands (shared, lock-free for the actor).
#[derive(Debug, Default)]
struct Health {
    /// Last successful answer from etcd (keep-alive, watch, any call).
    last_contact: Mutex<Option<Instant>>,
    /// The lock watch is established (its events are reaching us).
    watching: AtomicBool,
    /// The node holds a lease (its keys can be written).
    leased: AtomicBool,
}

impl Health {
    fn contact(&self) {
        if let Ok(mut t) = self.last_contact.lock() {
            *t = Some(Instant::now());
        }
    }
}

/// How long an admission waits for its fleet-wide slot (pam_enforcer waits 2 s by default).
pub const SLOT_DEADLINE: Duration = Duration::from_millis(1500);

/// Cloneable access to the fleet tasks. Every method returns at once.
#[derive(Clone)]
pub struct FleetHandle {
    keys: Arc<Keys>,
    writes: mpsc::UnboundedSender<Write>,
    acquire: mpsc::UnboundedSender<slots::Acquire>,
    identify: mpsc::UnboundedSender<exec_grants::Identify>,
    ops: mpsc::UnboundedSender<ops::Op>,
    health: Arc<Health>,
    /// The leader as last looked up (what the slot task uses).
    leader: tokio_watch::Receiver<Option<client::Leader>>,
    /// Slots taken as account requests arrive ([`FleetHandle::take_slot_early`]).
    early: Arc<slots::EarlySlots>,
}

/// Everything the fleet tasks need at start.
pub struct FleetStart {
    pub config: FleetConfig,
    /// `[fleet] node_name`, or the host name.
    pub node: String,
    pub version: String,
    /// Where the local copy of the fleet locks is kept (`state_dir/fleet-locks.json`).
    pub local_copy: PathBuf,
    /// The runtime slot transactions (and the leader's connection) run on: the one that
    /// decides logins, so a slot's round trip wakes no other thread. `None`: the current one.
    pub decisions: Option<tokio::runtime::Handle>,
    /// With `[kubernetes]`: containerd's socket, to report the grants of this node's pods that
    /// no exec matched.
    pub containerd: Option<PathBuf>,
}

impl FleetHandle {
    /// Starts the fleet tasks on the current runtime (slots: see [`FleetStart::decisions`]);
    /// events for the actor go to `events`.
    pub fn start(start: FleetStart, events: mpsc::Sender<FleetEvent>) -> Result<Self, FleetError> {
        let keys = Arc::new(Keys::new(&start.config.prefix, &start.node));
        let health = Arc::new(Health::default());
        let options = client::options(&start.config)?;
        let (client_tx, client_rx) = tokio_watch::channel(None);
        client::connect(
            start.config.etcd_endpoints.clone(),
            options.clone(),
            client_tx,
        );
        let (leader_tx, leader_rx) = tokio_watch::channel(None);
        let leader_again = Arc::new(tokio::sync::Notify::new());
        let decisions = start
            .decisions
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let on_decisions = decisions.enter(); // dropped below, in order
        client::follow_leader(
            start.config.etcd_endpoints.clone(),
            options,
            leader_tx,
            leader_again.clone(),
        );
        drop(on_decisions);
        let (writes, writes_rx) = mpsc::unbounded_channel();
        let (lease_tx, lease_rx) = tokio_watch::channel(0i64);
        lease::start(lease::LeaseTask {
            client: client_rx.clone(),
            keys: keys.clone(),
            ttl: start.config.lease_ttl.0,
            version: start.version,
            health: health.clone(),
            lease: lease_tx,
            writes: writes_rx,
        });
        watch::start(watch::WatchTask {
            client: client_rx.clone(),
            keys: keys.clone(),
            health: health.clone(),
            events: events.clone(),
            local_copy: start.local_copy,
        });
        let (identify, identify_rx) = mpsc::unbounded_channel();
        exec_grants::start(exec_grants::IdentifyTask {
            client: client_rx.clone(),
            keys: keys.clone(),
            events: events.clone(),
            writes: writes.clone(),
            requests: identify_rx,
        });
        if let Some(containerd) = start.containerd {
            lapsed::start(lapsed::LapsedTask {
                client: client_rx.clone(),
                keys: keys.clone(),
                events: events.clone(),
                containerd,
            });
        }
        let (acquire, acquire_rx) = mpsc::unbounded_channel();
        let on_decisions = decisions.enter();
        slots::start(slots::SlotTask {
            client: client_rx.clone(),
            leader: leader_rx.clone(),
            leader_again,
            keys: keys.clone(),
            lease: lease_rx,
            health: health.clone(),
            events,
            requests: acquire_rx,
            writes: writes.clone(),
        });
        drop(on_decisions);
        let (ops, ops_rx) = mpsc::unbounded_channel();
        ops::start(client_rx, keys.clone(), health.clone(), ops_rx);
        Ok(FleetHandle {
            keys,
            writes,
            acquire,
            identify,
            ops,
            health,
            leader: leader_rx,
            early: Arc::new(slots::EarlySlots {
                run: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                next: Default::default(),
                config: Default::default(),
            }),
        })
    }

    /// This node's name in the fleet.
    pub fn node(&self) -> &str {
        &self.keys.node
    }

    /// How long ago etcd last answered (keep-alive, lock watch, any call); `None`: never since
    /// start. A broken lock watch resumes from its last revision, so nothing is missed
    /// meanwhile: the view ages like the contact.
    pub fn view_age(&self) -> Option<Duration> {
        let t = *self.health.last_contact.lock().ok()?;
        t.map(|t| t.elapsed())
    }

    /// Whether the lock watch is established now (and the node holds its lease).
    pub fn watching(&self) -> (bool, bool) {
        (
            self.health.watching.load(Ordering::Relaxed),
            self.health.leased.load(Ordering::Relaxed),
        )
    }

    /// The etcd endpoint slot transactions go to, and the raft term it was found leading in
    /// (`None`: no leader known, any member is asked).
    pub fn slot_endpoint(&self) -> Option<(String, u64)> {
        let leader = self.leader.borrow();
        leader.as_ref().map(|l| (l.endpoint.clone(), l.term))
    }

    /// Takes a fleet-wide connection slot of `user` for `conn_id` (limit `limit`); the outcome
    /// comes back as [`FleetEvent::Slot`] within `deadline`. Returns the slot's key.
    pub fn acquire(&self, user: &str, conn_id: u64, limit: u32, deadline: Duration) -> String {
        let key = self.keys.slot(user, conn_id);
        let _ = self.acquire.send(slots::Acquire {
            prefix: self.keys.slots_of(user),
            key: key.clone(),
            tag: SlotTag::Connection(conn_id),
            limit: Some(limit),
            deadline,
        });
        key
    }

    /// Takes a fleet-wide session slot of `user` for session `session_id` of `conn_id`.
    pub fn acquire_session(
        &self,
        user: &str,
        conn_id: u64,
        session_id: u64,
        limit: u32,
        deadline: Duration,
    ) {
        let _ = self.acquire.send(slots::Acquire {
            prefix: self.keys.session_slots_of(user),
            key: self.keys.session_slot(user, session_id),
            tag: SlotTag::Session(conn_id, session_id),
            limit: Some(limit),
            deadline,
        });
    }

    /// Frees the session slot taken for `session_id`.
    pub fn release_session(&self, user: &str, session_id: u64) {
        self.drop_slot(&self.keys.session_slot(user, session_id));
    }

    /// Frees the slot taken for `conn_id` ([`FleetHandle::acquire`]).
    pub fn release(&self, user: &str, conn_id: u64) {
        self.drop_slot(&self.keys.slot(user, conn_id));
    }

    /// Registers (or updates) a live connection under the node's lease.
    pub fn put_connection(&self, conn: &FleetConnection) {
        let value = serde_json::to_vec(conn).unwrap_or_default();
        let _ = self
            .writes
            .send(Write::Put(self.keys.session(conn.id), value));
    }

    /// Removes a connection that ended.
    pub fn remove_connection(&self, conn_id: u64) {
        let _ = self.writes.send(Write::Delete(self.keys.session(conn_id)));
    }

    /// Finds and claims the admission webhook's grant of exec session `session` (containerd's
    /// `exec_id`); the outcome comes back as [`FleetEvent::ExecIdentified`].
    pub fn identify_exec(&self, session: u64, exec_id: &str, query: GrantQuery) {
        let _ = self.identify.send(exec_grants::Identify {
            session,
            exec_id: exec_id.to_owned(),
            query,
        });
    }

    /// Grant `g` of an exec session found again after a restart counts against its user under
    /// this node's lease from now on (the old lease may be gone with the old daemon).
    pub fn keep_exec_grant(&self, g: &crate::core::kube::admission::ExecGrant) {
        let _ = self.writes.send(Write::exec_grant(&self.keys, g));
    }

    /// The exec session of `user`'s grant `review` ended: its grant stops counting.
    pub fn release_exec_grant(&self, user: &str, review: &str) {
        let _ = self
            .writes
            .send(Write::Delete(self.keys.exec_grant(user, review)));
    }

    /// Writes a fleet lock (`replace`: over an active one).
    pub async fn lock(&self, lock: FleetLock, replace: bool) -> Result<(), FleetError> {
        self.op(|reply| ops::Op::Lock {
            lock,
            replace,
            reply,
        })
        .await?
    }

    /// Deletes a fleet lock; false when there was none.
    pub async fn unlock(&self, target: LockTarget) -> Result<bool, FleetError> {
        self.op(|reply| ops::Op::Unlock { target, reply }).await?
    }

    /// Every node's registered connections.
    pub async fn sessions(&self) -> Result<Vec<FleetConnection>, FleetError> {
        self.op(|reply| ops::Op::Sessions { reply }).await?
    }

    /// Every node of the fleet.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, FleetError> {
        self.op(|reply| ops::Op::Nodes { reply }).await?
    }

    async fn op<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, FleetError>>) -> ops::Op,
    ) -> Result<Result<T, FleetError>, FleetError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(make(tx))
            .map_err(|_| FleetError::Unreachable("the fleet task has ended".into()))?;
        rx.await
            .map_err(|_| FleetError::Unreachable("the fleet task has ended".into()))
    }
}

/// The node's name: `[fleet] node_name`, else the host name.
pub fn node_name(config: &FleetConfig) -> String {
    crate::host::node_name(&config.node_name)
}

/// Bounds every etcd call: a hung member must not hold a task forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd connect options from `[fleet]` (TLS, user), for a client of the caller's own (the
/// admission webhook's).
pub fn connect_options(config: &FleetConfig) -> Result<etcd_client::ConnectOptions, FleetError> {
    client::options(config)
}

/// A client on `endpoints`, connected in the background (retried every second): `None` until
/// then.
pub fn connect_in_background(
    endpoints: Vec<String>,
    options: etcd_client::ConnectOptions,
) -> tokio_watch::Receiver<Option<etcd_client::Client>> {
    let (tx, rx) = tokio_watch::channel(None);
    client::connect(endpoints, options, tx);
    rx
}

/// `call` with [`CALL_TIMEOUT`], its error as text.
pub(crate) async fn timed<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The connected client, if any (`None` until the first connect succeeds).
type ClientRx = tokio_watch::Receiver<Option<etcd_client::Client>>;

/// The current client, waiting for the first connection.
async fn client_of(rx: &mut ClientRx) -> Option<etcd_client::Client> {
    loop {
        if let Some(c) = rx.borrow().clone() {
            return Some(c);
        }
        rx.changed().await.ok()?;
    }
}
