//! SSH connections: one per authenticated TCP connection, keyed by sshd's privileged monitor
//! process (pid + start time, since pids are reused).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use enforcer_proto::{AuthIdentity, ConnectionInfo, Endpoint};

use super::{
    forward::Forward,
    session::{Session, Sessions},
};
use crate::config::Dur;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A process, unambiguously: pid plus start time in clock ticks since boot (/proc stat field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcKey {
    pub pid: u32,
    pub start_ticks: u64,
}

/// Between PAM acct_mgmt (slot reserved) and open_session (live).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    Pending,
    Open,
}

/// One admitted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub id: u64,
    pub user: String,
    pub uid: Option<u32>,
    /// The account NSS maps `user` to (its name for the uid), when it differs: fleet slots
    /// and `[[rules]]` go by the account, so its other names share its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The user's groups when admitted: `[[rules]]` match them, at a reload too.
    #[serde(default)]
    pub groups: Vec<String>,
    pub monitor: ProcKey,
    pub state: ConnState,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub rhost: Option<String>,
    pub service: String,
    #[serde(with = "time::serde::rfc3339")]
    pub admitted_at: OffsetDateTime,
    pub auth: Option<AuthIdentity>,
    /// Idle timeout that applies (after `[[rules]]`); zero = never cut.
    #[serde(default)]
    pub idle_timeout: Dur,
    /// When the user was last warned of the idle cut-off (cleared by activity).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub idle_warned_at: Option<OffsetDateTime>,
    /// Live sessions (channels), by session id.
    #[serde(default)]
    pub sessions: Sessions,
    /// Live forwarding channels, by socket inode.
    #[serde(default)]
    pub forwards: BTreeMap<u64, Forward>,
    /// When a forward last opened or closed: a tunnel whose every request is a short TCP
    /// connection may never be caught open by the idle sweep.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub forward_event_at: Option<OffsetDateTime>,
    /// Limits apply to it: false when `[kubernetes] gate_ssh` admitted it while the node's
    /// enforcement label was absent (no connection, session or idle limit for its lifetime).
    #[serde(default = "enforced_by_default")]
    pub enforced: bool,
}

fn enforced_by_default() -> bool {
    true
}

impl Connection {
    /// A connection just seen at PAM: nothing known yet beyond who and which monitor.
    pub fn pending(
        user: &str,
        uid: Option<u32>,
        monitor: ProcKey,
        idle_timeout: Dur,
        now: OffsetDateTime,
    ) -> Self {
        Connection {
            id: 0,
            user: user.to_owned(),
            uid,
            account: None,
            groups: Vec::new(),
            monitor,
            state: ConnState::Pending,
            client: None,
            server: None,
            rhost: None,
            service: String::new(),
            admitted_at: now,
            auth: None,
            idle_timeout,
            idle_warned_at: None,
            sessions: Default::default(),
            forwards: Default::default(),
            forward_event_at: None,
            enforced: true,
        }
    }

    /// The account's name (fleet slots are keyed by it): NSS's name for the uid, else `user`.
    pub fn account(&self) -> &str {
        self.account.as_deref().unwrap_or(&self.user)
    }

    /// Who `[[rules]]` look at for this connection.
    pub fn who(&self) -> super::policy::Who<'_> {
        super::policy::Who {
            user: &self.user,
            account: self.account(),
            groups: &self.groups,
        }
    }

    /// The address per-source limits count by.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.client.map(|c| super::identity::canonical_ip(c.ip()))
    }

    pub fn info(&self) -> ConnectionInfo {
        let ep = |a: &SocketAddr| Endpoint {
            addr: a.ip().to_string(),
            port: a.port(),
        };
        ConnectionInfo {
            id: self.id,
            kind: Default::default(),
            kube: None,
            user: self.user.clone(),
            uid: self.uid,
            state: match self.state {
                ConnState::Pending => "pending",
                ConnState::Open => "open",
            }
            .into(),
            client: self.client.as_ref().map(ep),
            server: self.server.as_ref().map(ep),
            rhost: self.rhost.clone(),
            service: self.service.clone(),
            monitor_pid: self.monitor.pid,
            since: super::rfc3339(self.admitted_at),
            auth: self.auth.clone(),
            sessions: Vec::new(),
            forwards: self
                .forwards
                .values()
                .map(|f| enforcer_proto::ForwardInfo {
                    forward: f.kind.name().into(),
                    target: f.target.clone(),
                    opened: super::rfc3339(f.opened_at),
                    last_activity: super::rfc3339(f.last_activity),
                    bytes_in: f.bytes_in,
                    bytes_out: f.bytes_out,
                })
                .collect(),
            idle_since: None,
            idle_cut_at: None,
        }
    }
}

/// All live connections and their sessions. Serialisable: it is the daemon's persistent state.
/// A connection's id and monitor never change once it is in here.
///
/// Connections are shared (`Arc`), so a copy of the table costs a pointer per connection: the
/// copy handed to the writer thread is serialised there, not on the state actor (10 000
/// connections are ~6 MB of JSON). A connection changed while a copy exists is copied then.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "RegistryFile")]
pub struct Registry {
    #[serde(serialize_with = "shared_conns")]
    conns: BTreeMap<u64, Arc<Connection>>,
    /// Next id to hand out; ids are never reused, across restarts too.
    next_id: u64,
    #[serde(default)]
    next_session_id: u64,
    /// Connection id by monitor: every PAM request looks its connection up by monitor, and a
    /// scan of 10 000 connections per request adds up. Rebuilt when the table is loaded.
    #[serde(skip)]
    monitors: BTreeMap<ProcKey, u64>,
    /// Bumped whenever a connection or a session comes or goes (see [`Registry::changes`]).
    #[serde(skip)]
    changes: u64,
}

fn shared_conns<S: serde::Serializer>(
    conns: &BTreeMap<u64, Arc<Connection>>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.collect_map(conns.iter().map(|(id, c)| (id, &**c)))
}

/// Equal tables hold the same connections and hand out the same ids next.
impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        (self.next_id, self.next_session_id, &self.conns)
            == (other.next_id, other.next_session_id, &other.conns)
    }
}

impl Eq for Registry {}

/// [`Registry`] as stored.
#[derive(Deserialize)]
struct RegistryFile {
    conns: BTreeMap<u64, Connection>,
    next_id: u64,
    #[serde(default)]
    next_session_id: u64,
}

impl From<RegistryFile> for Registry {
    fn from(f: RegistryFile) -> Self {
        Registry {
            monitors: f.conns.values().map(|c| (c.monitor, c.id)).collect(),
            conns: f
                .conns
                .into_iter()
                .map(|(id, c)| (id, Arc::new(c)))
                .collect(),
            next_id: f.next_id,
            next_session_id: f.next_session_id,
            changes: 0,
        }
    }
}

impl Registry {
    /// Adds a connection, assigning its id.
    pub fn insert(&mut self, mut conn: Connection) -> u64 {
        self.next_id = self.next_id.max(1);
        conn.id = self.next_id;
        self.next_id += 1;
        self.monitors.insert(conn.monitor, conn.id);
        self.conns.insert(conn.id, Arc::new(conn));
        self.changes += 1;
        self.next_id - 1
    }

    /// A fresh id from the connection ids, for an identity the kernel tracks outside any
    /// connection (a `kubectl exec` session's processes): it never collides with one.
    pub fn reserve_conn_id(&mut self) -> u64 {
        self.next_id = self.next_id.max(1);
        self.next_id += 1;
        self.next_id - 1
    }

    /// `id` is in use (an exec session's identity found in the kernel after a restart): never
    /// handed out again.
    pub fn conn_id_in_use(&mut self, id: u64) {
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    /// A fresh session id (a `kubectl exec` session's), from the ids SSH sessions get.
    pub fn reserve_session_id(&mut self) -> u64 {
        self.next_session_id = self.next_session_id.max(1);
        self.next_session_id += 1;
        self.next_session_id - 1
    }

    pub fn get(&self, id: u64) -> Option<&Connection> {
        self.conns.get(&id).map(Arc::as_ref)
    }

    /// The connection to change (copied first if a copy of the table still shares it).
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Connection> {
        self.conns.get_mut(&id).map(Arc::make_mut)
    }

    /// Removes a connection and its sessions.
    pub fn remove(&mut self, id: u64) -> Option<Connection> {
        let conn = self.conns.remove(&id)?;
        self.changes += 1;
        if self.monitors.get(&conn.monitor) == Some(&id) {
            self.monitors.remove(&conn.monitor);
        }
        Some(Arc::unwrap_or_clone(conn))
    }

    /// Adds a session to its connection, assigning its id (never reused); `None` when the
    /// connection is unknown.
    pub fn add_session(&mut self, mut session: Session) -> Option<u64> {
        let conn = Arc::make_mut(self.conns.get_mut(&session.conn_id)?);
        self.next_session_id = self.next_session_id.max(1);
        session.id = self.next_session_id;
        self.next_session_id += 1;
        conn.sessions.insert(session);
        self.changes += 1;
        Some(self.next_session_id - 1)
    }

    /// A session by id, whatever its connection.
    pub fn session(&self, id: u64) -> Option<&Session> {
        self.conns.values().find_map(|c| c.sessions.get(id))
    }

    /// The session the kernel knows as `kernel_id` in connection `conn_id`.
    pub fn session_by_kernel(&self, conn_id: u64, kernel_id: u64) -> Option<&Session> {
        self.conns
            .get(&conn_id)?
            .sessions
            .values()
            .find(|s| s.kernel_id == kernel_id)
    }

    pub fn session_by_kernel_mut(&mut self, conn_id: u64, kernel_id: u64) -> Option<&mut Session> {
        self.session_by_kernel(conn_id, kernel_id)?;
        self.get_mut(conn_id)?
            .sessions
            .values_mut()
            .find(|s| s.kernel_id == kernel_id)
    }

    /// Removes the session of `conn_id` whose leader is kernel task `kernel_id`.
    pub fn remove_session_by_kernel(&mut self, conn_id: u64, kernel_id: u64) -> Option<Session> {
        let id = self.session_by_kernel(conn_id, kernel_id)?.id;
        self.changes += 1;
        self.get_mut(conn_id)?.sessions.remove(id)
    }

    pub fn remove_session(&mut self, id: u64) -> Option<Session> {
        let conn_id = self.session(id)?.conn_id;
        self.changes += 1;
        self.get_mut(conn_id)?.sessions.remove(id)
    }

    /// A count that moves whenever a connection or a session is added or removed: anything
    /// derived from the table's shape (the idle schedule) is stale once it moved.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.conns.values().flat_map(|c| c.sessions.values())
    }

    pub fn sessions_of(&self, conn_id: u64) -> impl Iterator<Item = &Session> {
        self.conns
            .get(&conn_id)
            .into_iter()
            .flat_map(|c| c.sessions.values())
    }

    /// The connection whose monitor is this process.
    pub fn by_monitor(&self, key: ProcKey) -> Option<&Connection> {
        self.get(*self.monitors.get(&key)?)
    }

    /// The connection whose monitor has this pid (whatever its start time).
    pub fn by_monitor_pid(&self, pid: u32) -> Option<&Connection> {
        let any_start = ProcKey {
            pid,
            start_ticks: 0,
        }..=ProcKey {
            pid,
            start_ticks: u64::MAX,
        };
        let (_, id) = self.monitors.range(any_start).next()?;
        self.get(*id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values().map(Arc::as_ref)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections whose monitor is not among `tracked` (task id → start time in clock ticks):
    /// the only ones whose monitor may have ended unnoticed.
    pub fn untracked_monitors(&self, tracked: &HashMap<u32, u64>) -> Vec<(u64, ProcKey)> {
        self.conns
            .values()
            .filter(|c| tracked.get(&c.monitor.pid) != Some(&c.monitor.start_ticks))
            .map(|c| (c.id, c.monitor))
            .collect()
    }

    /// Connections (pending ones included: they hold a slot) of one account: under the name
    /// `user`, or under any other name NSS gives the same `uid` (`ALICE`, a second passwd entry
    /// with that uid) — else every spelling would bring a limit's worth of connections.
    pub fn count_user(&self, user: &str, uid: Option<u32>) -> u32 {
        self.conns
            .values()
            .filter(|c| c.user == user || (uid.is_some() && c.uid == uid))
            .count() as u32
    }

    /// Connections from one client address.
    pub fn count_source(&self, ip: IpAddr) -> u32 {
        let ip = super::identity::canonical_ip(ip);
        self.conns
            .values()
            .filter(|c| c.source_ip() == Some(ip))
            .count() as u32
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn conn(user: &str, pid: u32, client: &str) -> Connection {
        Connection {
            id: 0,
            user: user.into(),
            uid: Some(1000),
            groups: Vec::new(),
            monitor: ProcKey {
                pid,
                start_ticks: 100 + pid as u64,
            },
            account: None,
            state: ConnState::Pending,
            client: Some(client.parse().unwrap()),
            server: Some("127.0.0.1:22".parse().unwrap()),
            rhost: None,
            service: "sshd".into(),
            admitted_at: OffsetDateTime::UNIX_EPOCH,
            auth: None,
            idle_timeout: Dur::ZERO,
            idle_warned_at: None,
            sessions: Sessions::default(),
            forwards: BTreeMap::new(),
            forward_event_at: None,
            enforced: true,
        }
    }

    #[test]
    fn ids_are_unique_and_never_reused() {
        let mut r = Registry::default();
        let a = r.insert(conn("alice", 10, "10.0.0.1:1000"));
        let b = r.insert(conn("alice", 11, "10.0.0.1:1001"));
        assert_ne!(a, b);
        r.remove(b);
        let c = r.insert(conn("bob", 12, "10.0.0.2:1000"));
        assert!(c > b);
        // Persisted and reloaded: the counter survives.
        let back: Registry = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn reserved_ids_are_never_handed_out_again() {
        let mut r = Registry::default();
        let a = r.insert(conn("alice", 10, "10.0.0.1:1000"));
        let k = r.reserve_conn_id();
        let b = r.insert(conn("alice", 11, "10.0.0.1:1001"));
        assert!(a < k && k < b);
        let s = r.reserve_session_id();
        let t = r.add_session(session(b, 77)).unwrap();
        assert!(s < t);
    }

    #[test]
    fn counts_by_user_and_source() {
        let mut r = Registry::default();
        r.insert(conn("alice", 10, "10.0.0.1:1000"));
        r.insert(conn("alice", 11, "10.0.0.2:1000"));
        r.insert(conn("bob", 12, "[::ffff:10.0.0.1]:1000"));
        assert_eq!(r.count_user("alice", None), 2);
        assert_eq!(r.count_user("carol", None), 0);
        assert_eq!(
            r.count_source("10.0.0.1".parse().unwrap()),
            2,
            "mapped v6 is the same source"
        );
    }

    pub fn forward() -> Forward {
        Forward {
            kind: crate::core::forward::ForwardKind::DirectTcpip,
            target: "127.0.0.1:80".into(),
            opened_at: OffsetDateTime::UNIX_EPOCH,
            last_activity: OffsetDateTime::UNIX_EPOCH,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    pub fn session(conn_id: u64, kernel_id: u64) -> Session {
        Session {
            id: 0,
            conn_id,
            kernel_id,
            leader_pid: kernel_id as u32,
            leader_start_ns: 1,
            started_at: OffsetDateTime::UNIX_EPOCH,
            last_activity: OffsetDateTime::UNIX_EPOCH,
            kind: crate::core::session::SessionKind::Starting,
            tty: None,
            command: None,
            commands: 0,
            channels: Vec::new(),
            started_boot_ns: 0,
        }
    }

    #[test]
    fn sessions_belong_to_their_connection_and_leave_with_it() {
        let mut r = Registry::default();
        let a = r.insert(conn("alice", 10, "10.0.0.1:1"));
        let b = r.insert(conn("bob", 11, "10.0.0.2:1"));
        let s1 = r.add_session(session(a, 100)).unwrap();
        let s2 = r.add_session(session(b, 100)).unwrap();
        assert_ne!(s1, s2, "ids are global");
        assert!(
            r.add_session(session(99, 1)).is_none(),
            "unknown connection"
        );
        assert_eq!(r.session_by_kernel(a, 100).map(|s| s.id), Some(s1));
        assert_eq!(
            r.session_by_kernel(b, 100).map(|s| s.id),
            Some(s2),
            "same leader id, other connection"
        );
        assert_eq!(r.sessions().count(), 2);
        let back: Registry = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        r.remove(a);
        assert!(r.session(s1).is_none());
        assert_eq!(r.sessions_of(b).count(), 1);
        assert_eq!(r.remove_session(s2).map(|s| s.id), Some(s2));
    }

    #[test]
    fn lookup_by_monitor_requires_the_same_start_time() {
        let mut r = Registry::default();
        let id = r.insert(conn("alice", 10, "10.0.0.1:1000"));
        let key = r.get(id).unwrap().monitor;
        assert_eq!(r.by_monitor(key).map(|c| c.id), Some(id));
        assert!(
            r.by_monitor(ProcKey {
                pid: 10,
                start_ticks: 1
            })
            .is_none(),
            "reused pid"
        );
        assert_eq!(r.by_monitor_pid(10).map(|c| c.id), Some(id));
        assert!(r.by_monitor_pid(9).is_none() && r.by_monitor_pid(11).is_none());
        // The index is rebuilt when the table is loaded, and follows removals.
        let back: Registry = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.by_monitor(key).map(|c| c.id), Some(id));
        r.remove(id);
        assert!(r.by_monitor(key).is_none() && r.by_monitor_pid(10).is_none());
    }

    #[test]
    fn a_copy_of_the_table_keeps_what_it_had() {
        let mut r = Registry::default();
        let id = r.insert(conn("alice", 10, "10.0.0.1:1"));
        let copy = r.clone();
        r.get_mut(id).unwrap().user = "bob".into();
        r.add_session(session(id, 100)).unwrap();
        assert_eq!(copy.get(id).unwrap().user, "alice");
        assert_eq!(copy.sessions_of(id).count(), 0);
        assert_eq!(r.get(id).unwrap().user, "bob");
        assert_eq!(
            serde_json::to_value(&copy).unwrap()["conns"][id.to_string()]["user"],
            "alice"
        );
    }

    #[test]
    fn monitors_missing_from_the_kernel_table_are_the_ones_to_check() {
        let mut r = Registry::default();
        let a = r.insert(conn("alice", 10, "10.0.0.1:1"));
        let b = r.insert(conn("bob", 11, "10.0.0.1:2"));
        let c = r.insert(conn("carol", 12, "10.0.0.1:3"));
        let key = |id| r.get(id).unwrap().monitor;
        // a tracked as it is; b's pid tracked with another start time (reused); c not at all.
        let tracked = HashMap::from([(10, key(a).start_ticks), (11, 1)]);
        assert_eq!(
            r.untracked_monitors(&tracked),
            vec![(b, key(b)), (c, key(c))]
        );
    }
}
