//! The state actor's side of the fleet: applying fleet locks, parking a PAM answer until its
//! fleet-wide slot's outcome comes back as a message (the slots themselves: `fleet_slots`),
//! registering live connections, and the view's staleness. Nothing here waits
//! on etcd: `crate::fleet` does the I/O.

use std::collections::{BTreeMap, HashMap};

use enforcer_proto::{
    ErrorKind, ErrorReply, FleetConnection, FleetSession, LockInfo, PamAccount, Reply, Response,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::{admission::Admit, lockout::Locked, state::State};
use crate::{
    audit::{AuditEvent, AuditRecord},
    config::OnUnreachable,
    core::{
        conn::Connection,
        fleet::{self as core_fleet, FleetLock, LockTarget, ViewState},
        lock::Lock,
        policy::Refusal,
    },
    fleet::{FleetEvent, SlotTag},
    host,
};

/// What the actor knows of the fleet.
#[derive(Default)]
pub(super) struct FleetState {
    /// Fleet locks as last heard, with each user's uid here.
    pub locks: BTreeMap<LockTarget, (FleetLock, Option<u32>)>,
    /// Account requests waiting for their slot, by connection.
    pub awaiting: HashMap<u64, oneshot::Sender<Response>>,
    /// Connections holding a fleet-wide slot, with its key.
    pub slots: HashMap<u64, String>,
    /// The slot each connection waits for, and the early slots until both their outcome and
    /// their login's decision are in.
    pub book: crate::core::fleet::book::SlotBook,
    /// Fleet-wide session slots held here (see `fleet_sessions`).
    pub session_slots: super::fleet_sessions::SessionSlots,
    /// The view's state as last audited (`None`: not yet).
    pub audited: Option<ViewState>,
}

/// The answer to a fleet request on a node without `[fleet]`.
pub(super) fn fleet_off() -> ErrorReply {
    ErrorReply::new(
        ErrorKind::BadRequest,
        "this node is not in a fleet: set [fleet] etcd_endpoints in the config and restart enforcerd",
    )
}

/// A group lock asked of a node outside a fleet, or with `--local`.
pub(super) fn group_locks_are_fleet_wide() -> ErrorReply {
    ErrorReply::new(
        ErrorKind::BadRequest,
        "group locks are fleet-wide only (the admission webhook reads them from etcd): \
         set [fleet] etcd_endpoints, and lock without --local",
    )
}

impl State {
    /// Decides an account request, or parks its answer until the fleet-wide slot is decided.
    pub(super) async fn pam_account_or_wait(
        &mut self,
        req: PamAccount,
        identity: Option<host::UserIdentity>,
        mut early: Option<crate::fleet::EarlySlot>,
        reply: oneshot::Sender<Response>,
    ) {
        let decided = self.pam_account(req, identity, &mut early).await;
        if let Some(e) = early {
            // Not this login's slot (refused, no fleet limit, another account name).
            self.drop_early_slot(e);
        }
        match decided {
            Ok(Admit::Decided(a)) => {
                let _ = reply.send(Ok(Reply::Admission(a)));
            }
            Ok(Admit::AwaitingSlot(id)) => {
                self.fleet_state.awaiting.insert(id, reply);
                if let Some(outcome) = self.fleet_state.book.take_ready(id) {
                    self.on_slot(id, outcome).await;
                }
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    pub(super) async fn on_fleet(&mut self, ev: FleetEvent) {
        match ev {
            FleetEvent::Locks(locks) => self.apply_fleet_locks(locks).await,
            FleetEvent::Slot {
                tag: SlotTag::Connection(conn_id),
                outcome,
            } => self.on_slot(conn_id, outcome).await,
            FleetEvent::Slot {
                tag: SlotTag::Session(conn_id, session_id),
                outcome,
            } => self.on_session_slot(conn_id, session_id, outcome),
            FleetEvent::Slot {
                tag: SlotTag::Early(n),
                outcome,
            } => self.on_early_slot(n, outcome).await,
            FleetEvent::ExecIdentified { session, outcome } => {
                self.on_exec_identified(session, outcome).await
            }
            FleetEvent::GrantLapsed(g) => self.on_grant_lapsed(&g),
        }
    }

    /// The view's state now (`Current` without a fleet).
    fn view(&self) -> ViewState {
        match &self.fleet {
            Some(f) => core_fleet::view_state(f.view_age(), self.config.fleet.stale_after.0),
            None => ViewState::Current,
        }
    }

    /// A refusal the fleet imposes on any login here: this node locked, or a stale view in
    /// strict mode.
    pub(super) fn fleet_refusal(&self, now: OffsetDateTime) -> Option<Refusal> {
        self.fleet.as_ref()?;
        let locks: core_fleet::FleetLocks = self
            .fleet_state
            .locks
            .iter()
            .map(|(t, (l, _))| (t.clone(), l.clone()))
            .collect();
        let node = self.fleet.as_ref()?.node().to_owned();
        if let Some(l) = core_fleet::node_lock(&locks, &node, now) {
            return Some(Refusal::NodeLocked {
                node,
                reason: l.value.reason.clone(),
            });
        }
        core_fleet::refuse_when_stale(self.config.fleet.on_unreachable, self.view())
            .then_some(Refusal::FleetUnreachable)
    }

    /// The lock that refuses `user` (uid `uid`) now: a lock file, a fleet lock, or either of
    /// another name NSS maps to the same account.
    pub(super) fn lock_for(
        &self,
        user: &str,
        uid: Option<u32>,
        now: OffsetDateTime,
    ) -> Option<Lock> {
        let fleet = |name: &str| {
            self.fleet_state
                .locks
                .get(&LockTarget::User(name.to_owned()))
                .filter(|(l, _)| l.active(now))
                .map(|(l, _)| l.as_lock())
        };
        if let Some(l) = self.locks.get(user).filter(|l| l.active(now)) {
            return Some(l);
        }
        if let Some(l) = fleet(user) {
            return Some(l);
        }
        // Another spelling NSS maps to a locked account (`ALICE`, `alice@example.com`).
        let uid = uid?;
        let (name, _) = self
            .locked
            .iter()
            .find(|(_, l)| l.account_uid == Some(uid) && l.expires.is_none_or(|e| now < e))?;
        self.locks
            .get(name)
            .filter(|l| l.active(now))
            .or_else(|| fleet(name))
    }

    /// The fleet-wide limit a new connection must take a slot under, if any. None while the
    /// view is stale (best effort: local limits only; strict refused before this).
    pub(super) fn fleet_limit(&self, conn: &Connection) -> Option<u32> {
        self.fleet.as_ref()?;
        if !conn.enforced {
            return None;
        }
        let limit = core_fleet::fleet_connection_limit(&self.config, conn.who());
        (limit > 0 && self.view() == ViewState::Current).then_some(limit)
    }

    /// Undoes the kernel registration of a connection refused for want of a fleet-wide slot
    /// (made while etcd was asked): no process of it is followed, nothing counts against the
    /// user.
    pub(super) async fn unregister_refused(&mut self, conn: &Connection) {
        self.unregistered.remove(&conn.id);
        let mut failures = Vec::new();
        if let Err(e) = self.bpf.untrack(conn.monitor.pid).await {
            failures.push(e.to_string());
        }
        if let Err(e) = self.bpf.remove_conn(conn.id).await {
            failures.push(e.to_string());
        }
        if let Some(uid) = conn.uid
            && !self.registry.iter().any(|c| c.uid == Some(uid))
            && let Err(e) = self.bpf.remove_user(uid).await
        {
            failures.push(e.to_string());
        }
        for f in failures {
            tracing::warn!(conn = conn.id, error = %f, "cannot undo a refused connection's kernel registration");
        }
    }

    /// Called by `release`: frees the connection's slot and its registration.
    pub(super) fn fleet_released(&mut self, conn: &Connection) {
        self.fleet_sessions_released(conn);
        let Some(f) = &self.fleet else { return };
        if let Some(key) = self.fleet_state.slots.remove(&conn.id) {
            f.drop_slot(&key);
        }
        f.remove_connection(conn.id);
    }

    /// Registers (or updates) connection `id` in the fleet's live sessions.
    pub(super) fn fleet_publish(&self, id: u64) {
        let (Some(f), Some(c)) = (&self.fleet, self.registry.get(id)) else {
            return;
        };
        let sessions = self
            .registry
            .sessions_of(id)
            .map(|s| FleetSession {
                id: s.id,
                kind: s.kind.as_str().into(),
                tty: s.tty.clone(),
                command: s.command.clone(),
            })
            .collect();
        f.put_connection(&FleetConnection {
            node: f.node().to_owned(),
            id,
            user: c.user.clone(),
            client: c.client.map(|a| a.to_string()),
            since: crate::core::rfc3339(c.admitted_at),
            sessions,
        });
    }

    /// Applies the fleet locks as just heard: new ones end what they cover at once.
    async fn apply_fleet_locks(&mut self, locks: Vec<(FleetLock, Option<u32>)>) {
        let now = OffsetDateTime::now_utc();
        let previous = std::mem::take(&mut self.fleet_state.locks);
        for (lock, uid) in locks {
            self.fleet_state
                .locks
                .insert(lock.target.clone(), (lock, uid));
        }
        let users: Vec<(String, FleetLock, Option<u32>)> = self
            .fleet_state
            .locks
            .iter()
            .filter_map(|(t, (l, uid))| match t {
                LockTarget::User(u) if l.active(now) => Some((u.clone(), l.clone(), *uid)),
                _ => None,
            })
            .collect();
        for (user, lock, uid) in &users {
            let was = previous
                .get(&lock.target)
                .is_some_and(|(p, _)| p.active(now) && p.value == lock.value);
            let known = self.locked.get(user).copied();
            let account_uid = uid.or_else(|| known.and_then(|l| l.account_uid));
            let sweep_uid = self.all_processes_uid(user, account_uid);
            let lock = lock.as_lock();
            self.locked.insert(
                user.clone(),
                Locked {
                    uid: sweep_uid,
                    account_uid,
                    expires: lock.expires,
                },
            );
            if !was {
                tracing::info!(user, "fleet lock applied");
                self.end_exec_sessions_of(user).await;
                self.lock_out(
                    user,
                    account_uid,
                    sweep_uid.filter(|_| known.is_none()),
                    lock.reason.as_deref(),
                    None,
                );
            }
        }
        // Lifted fleet locks: unless a lock file still locks the user here.
        for (target, _) in previous {
            if let LockTarget::User(u) = target {
                let still = users.iter().any(|(n, _, _)| *n == u)
                    || self.locks.get(&u).is_some_and(|l| l.active(now));
                if !still {
                    self.locked.remove(&u);
                }
            }
        }
        self.sync_locked_uids().await;
    }

    /// Fleet user locks in force, for merging into the lock directory's view.
    pub(super) fn fleet_locked(&self) -> Vec<(String, Locked)> {
        let now = OffsetDateTime::now_utc();
        self.fleet_state
            .locks
            .iter()
            .filter_map(|(t, (l, uid))| match t {
                LockTarget::User(u) if l.active(now) => Some((
                    u.clone(),
                    Locked {
                        uid: self.all_processes_uid(u, *uid),
                        account_uid: *uid,
                        expires: l.as_lock().expires,
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// Fleet locks for `enforcerctl locks`.
    pub(super) fn fleet_lock_infos(&self) -> Vec<LockInfo> {
        let now = OffsetDateTime::now_utc();
        let current = self.view() == ViewState::Current;
        self.fleet_state
            .locks
            .values()
            .map(|(l, _)| {
                let mut info = l.as_lock().info(now);
                info.origin = Some("fleet".into());
                info.target = Some(l.target.kind().into());
                info.node = Some(l.value.node.clone());
                info.current = Some(current);
                info
            })
            .collect()
    }

    /// `status`'s feature `fleet`: this node's name and whether its view is current.
    pub(super) fn fleet_feature(&self) -> Option<enforcer_proto::FeatureProbe> {
        let f = self.fleet.as_ref()?;
        let age = f.view_age();
        let current = self.view() == ViewState::Current;
        let seen = match age {
            Some(a) => format!("etcd answered {:.1} s ago", a.as_secs_f64()),
            None => "etcd has not answered since start".into(),
        };
        let (watching, leased) = f.watching();
        let slots_to = match f.slot_endpoint() {
            Some((endpoint, term)) => format!("the leader at {endpoint} (raft term {term})"),
            None => "any member (no leader known)".into(),
        };
        let seen = format!(
            "{seen}, lock watch {}, lease {}, slot transactions to {slots_to}",
            if watching { "up" } else { "down" },
            if leased { "held" } else { "not held" }
        );
        Some(enforcer_proto::FeatureProbe {
            name: "fleet".into(),
            supported: current,
            detail: format!(
                "node {}: view {} ({seen}; stale_after {}, on_unreachable {}); {} fleet locks, {} fleet-wide slots held here",
                f.node(),
                if current { "current" } else { "STALE" },
                self.config.fleet.stale_after,
                match self.config.fleet.on_unreachable {
                    OnUnreachable::Strict => "strict",
                    OnUnreachable::BestEffort => "best_effort",
                },
                self.fleet_state.locks.len(),
                self.fleet_state.slots.len(),
            ),
        })
    }

    /// Audits the view turning stale or current (checked every 250 ms).
    pub(super) fn check_fleet_view(&mut self) {
        if self.fleet.is_none() {
            return;
        }
        let now_state = self.view();
        let was = self.fleet_state.audited;
        if was == Some(now_state) {
            return;
        }
        if was.is_none() {
            if now_state == ViewState::Current {
                self.fleet_state.audited = Some(now_state); // first contact: nothing to report
                return;
            }
            if !self.fleet_grace_over() {
                return;
            }
        }
        self.fleet_state.audited = Some(now_state);
        let mode = self.config.fleet.on_unreachable;
        let (event, message) = match now_state {
            ViewState::Stale => (
                AuditEvent::FleetViewStale,
                match mode {
                    OnUnreachable::Strict => {
                        "etcd unreachable for longer than fleet.stale_after: new logins are refused (on_unreachable = strict)"
                    }
                    OnUnreachable::BestEffort => {
                        "etcd unreachable for longer than fleet.stale_after: last known fleet locks and local limits apply (on_unreachable = best_effort)"
                    }
                },
            ),
            ViewState::Current => (
                AuditEvent::FleetViewCurrent,
                "etcd reachable again: the fleet view is current",
            ),
        };
        tracing::warn!(event = event.as_str(), "{message}");
        let mut rec = AuditRecord::new(event, OffsetDateTime::now_utc());
        rec.message = Some(message.into());
        self.audit.record(rec);
    }

    /// Whether `stale_after` has passed since the daemon started (a view is stale at start
    /// only once that long went by without etcd).
    fn fleet_grace_over(&self) -> bool {
        self.info.started.elapsed() > self.config.fleet.stale_after.0
    }
}
