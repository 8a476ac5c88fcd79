//! Connection admission: what the PAM module's three hooks do, and releasing a connection when
//! its sshd monitor ends (close_session, kernel exit event, or the sweep).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use enforcer_common::{
    limits::ConnEntry,
    tasks::{TASK_CONN_ROOT, TrackedTask},
};
use enforcer_proto::{Admission, ErrorKind, ErrorReply, PamAccount, PamSession};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::tasks::{ns_to_ticks, ticks_to_ns},
    core::{
        conn::{ConnState, Connection, ProcKey},
        identity::{parse_auth_info, parse_ssh_connection},
        policy::{self, EffectiveLimits, Who},
    },
    host,
};

/// Why a connection ended (audit `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// PAM close_session: the client disconnected normally.
    Logout,
    /// The monitor process exited without close_session (crash, kill -9).
    MonitorExited,
    /// The monitor was found gone by the sweep (e.g. while enforcerd was down).
    MonitorGone,
    /// Terminated with `enforcerctl kill connection`.
    Killed,
    /// Terminated after `idle.timeout` without activity.
    IdleTimeout,
    /// Terminated because its user was locked.
    UserLocked,
}

impl CloseReason {
    fn reason(self) -> AuditReason {
        match self {
            CloseReason::Logout => AuditReason::Logout,
            CloseReason::MonitorExited => AuditReason::MonitorExited,
            CloseReason::MonitorGone => AuditReason::MonitorGone,
            CloseReason::Killed => AuditReason::Killed,
            CloseReason::IdleTimeout => AuditReason::IdleTimeout,
            CloseReason::UserLocked => AuditReason::UserLocked,
        }
    }
}

fn no_such_process(pid: u32) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::BadRequest,
        format!("process {pid} does not exist (is the caller sshd's monitor?)"),
    )
}

/// Client and server of the connection: from the monitor's own TCP socket, else from
/// SSH_CONNECTION, else the client from PAM_RHOST when it is an address.
fn endpoints(req: &PamAccount) -> (Option<SocketAddr>, Option<SocketAddr>) {
    if let Some((c, s)) = host::tcp_endpoints(req.pid) {
        return (Some(c), Some(s));
    }
    if let Some((c, s)) = req.ssh_connection.as_deref().and_then(parse_ssh_connection) {
        return (Some(c), Some(s));
    }
    let client = req
        .rhost
        .as_deref()
        .and_then(|h| h.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 0));
    (client, None)
}

/// What an account request comes to.
pub(super) enum Admit {
    Decided(Admission),
    /// Admitted here; waiting for a fleet-wide slot for this connection.
    AwaitingSlot(u64),
}

/// Marks a uid unknown to NSS in the kernel's connection entry (no per-user session limit).
pub(super) const NO_UID: u32 = u32::MAX;

impl State {
    /// Limits of `user` from their NSS identity (`None`: unknown to NSS).
    pub(super) fn limits_with(
        &self,
        user: &str,
        ident: Option<&host::UserIdentity>,
    ) -> (Option<u32>, EffectiveLimits) {
        let who = match ident {
            Some(i) => Who {
                user,
                account: &i.account,
                groups: &i.groups,
            },
            None => Who::named(user, &[]),
        };
        (
            ident.as_ref().map(|i| i.uid),
            policy::effective_limits(&self.config, who),
        )
    }

    /// PAM acct_mgmt: decide and, when admitted, reserve the slot and start tracking the monitor.
    /// A fleet-wide limit makes the answer wait for etcd ([`Admit::AwaitingSlot`]): the
    /// connection then holds its local slot until `fleet::on_slot` decides.
    pub(super) async fn pam_account(
        &mut self,
        req: PamAccount,
        ident: Option<host::UserIdentity>,
        early: &mut Option<crate::fleet::EarlySlot>,
    ) -> Result<Admit, ErrorReply> {
        let now = OffsetDateTime::now_utc();
        let monitor = host::proc_key(req.pid).ok_or_else(|| no_such_process(req.pid))?;
        if let Some(c) = self.registry.by_monitor(monitor) {
            // acct_mgmt asked twice on one connection: same answer, no second slot.
            return Ok(Admit::Decided(Admission::Admitted { conn_id: c.id }));
        }
        // `[kubernetes] gate_ssh` with the label absent: admitted, audited and tracked, with
        // no limit or lock applied (see core::kube).
        let enforced = self.ssh_enforced();
        let (uid, mut limits) = self.limits_with(&req.user, ident.as_ref());
        if !enforced {
            limits = EffectiveLimits::NONE;
        }
        let (client, server) = endpoints(&req);
        let conn = Connection {
            client,
            server,
            rhost: req.rhost.clone(),
            service: req.service.clone(),
            auth: req.auth_info.as_deref().and_then(parse_auth_info),
            groups: groups_of(ident.as_ref()),
            account: account_of(&req.user, ident.as_ref()),
            enforced,
            ..Connection::pending(&req.user, uid, monitor, limits.idle_timeout, now)
        };
        let lock = self.lock_for(&req.user, uid, now).filter(|_| enforced);
        let decided = match self.fleet_refusal(now).filter(|_| enforced) {
            Some(refusal) => Err(refusal),
            None => policy::admit(
                &self.registry,
                &req.user,
                uid,
                conn.source_ip(),
                &limits,
                lock.as_ref(),
            ),
        };
        if let Err(refusal) = decided {
            return Ok(Admit::Decided(self.refuse(&conn, &refusal, now)));
        }
        self.lift_lock_of(&req.user).await;
        let fleet_limit = self.fleet_limit(&conn);
        let id = self.registry.insert(conn);
        self.dirty = true;
        if let Some(limit) = fleet_limit {
            // etcd takes the slot while the kernel starts following the monitor: the login
            // waits for the slower of the two, not for both. A refusal undoes the kernel's
            // part (`fleet::on_slot`); the monitor is blocked in PAM meanwhile, forking nothing.
            self.fleet_acquire(id, limit, early.take());
            self.admitted(id).await;
            return Ok(Admit::AwaitingSlot(id));
        }
        Ok(Admit::Decided(self.admitted(id).await))
    }

    /// Audits a refused login and says why.
    pub(super) fn refuse(
        &mut self,
        conn: &Connection,
        refusal: &policy::Refusal,
        now: OffsetDateTime,
    ) -> Admission {
        self.counters.connections_refused += 1;
        let message = refusal.message(&conn.user);
        let mut rec = AuditRecord::new(AuditEvent::ConnectionRefused, now)
            .with_conn(conn)
            .reason(refusal.reason(), Some(message.clone()));
        rec.conn_id = None;
        self.audit.record(rec);
        Admission::Refused {
            reason: refusal.code().into(),
            message,
        }
    }

    /// An admitted connection (in the registry): the kernel starts following its monitor.
    /// Released at once if the monitor has already ended.
    pub(super) async fn admitted(&mut self, id: u64) -> Admission {
        let Some(c) = self.registry.get(id) else {
            return Admission::Admitted { conn_id: id };
        };
        // An unenforced connection's sessions count against no per-user limit in the kernel.
        let (monitor, uid, limits) = match c.enforced {
            true => (
                c.monitor,
                c.uid,
                policy::effective_limits(&self.config, c.who()),
            ),
            false => (c.monitor, None, EffectiveLimits::NONE),
        };
        if !self.register_in_kernel(id, monitor, uid, &limits).await {
            self.release(id, CloseReason::MonitorExited).await;
        }
        Admission::Admitted { conn_id: id }
    }

    /// Session limits first (the monitor may fork a channel at once), then the monitor itself:
    /// from here on the kernel follows everything it starts. False when the monitor ended
    /// before the kernel tracked it: no exit event will come for it, and its entry would make
    /// the sweep (which trusts the kernel's table) take it for alive.
    async fn register_in_kernel(
        &mut self,
        conn_id: u64,
        monitor: ProcKey,
        uid: Option<u32>,
        limits: &EffectiveLimits,
    ) -> bool {
        let mut failures = Vec::new();
        if let Err(e) = self.bpf.set_conn(conn_id, conn_entry(0, uid, limits)).await {
            failures.push(e.to_string());
        }
        if let Some(uid) = uid {
            if let Err(e) = self
                .bpf
                .ensure_user(uid, limits.max_sessions_per_user)
                .await
            {
                failures.push(e.to_string());
            }
        }
        let task = TrackedTask {
            conn_id,
            session_id: 0,
            start_ns: ticks_to_ns(monitor.start_ticks),
            flags: TASK_CONN_ROOT,
            _pad: 0,
        };
        if let Err(e) = self.bpf.track(monitor.pid, task).await {
            failures.push(e.to_string());
            // No exit event will come: the sweep looks for this monitor in /proc.
            self.unregistered.insert(conn_id);
        }
        let live = host::alive(monitor);
        if !live {
            if let Err(e) = self.bpf.untrack(monitor.pid).await {
                failures.push(e.to_string());
            }
        }
        for f in failures {
            // The sweep still notices the monitor's end; session limits or tracking for this
            // connection are lost (drop counters say why: e.g. a full map).
            tracing::error!(conn = conn_id, pid = monitor.pid, error = %f, "kernel registration incomplete");
        }
        live
    }

    /// PAM open_session: the connection is live; sshd has now exposed the key or certificate.
    pub(super) async fn pam_open(
        &mut self,
        req: PamSession,
        ident: Option<host::UserIdentity>,
    ) -> Result<(), ErrorReply> {
        let now = OffsetDateTime::now_utc();
        let monitor = host::proc_key(req.pid).ok_or_else(|| no_such_process(req.pid))?;
        let auth = req.auth_info.as_deref().and_then(parse_auth_info);
        let id = match self.registry.by_monitor(monitor) {
            Some(c) => c.id,
            None => {
                // No acct_mgmt reached us (module only in the session stack): record it anyway.
                let (uid, limits) = self.limits_with(&req.user, ident.as_ref());
                let (client, server) = host::tcp_endpoints(req.pid).unzip();
                let conn = Connection {
                    client,
                    server,
                    groups: groups_of(ident.as_ref()),
                    account: account_of(&req.user, ident.as_ref()),
                    ..Connection::pending(&req.user, uid, monitor, limits.idle_timeout, now)
                };
                let id = self.registry.insert(conn);
                if !self.register_in_kernel(id, monitor, uid, &limits).await {
                    self.release(id, CloseReason::MonitorExited).await;
                    return Err(no_such_process(req.pid));
                }
                id
            }
        };
        let conn = self.registry.get_mut(id).expect("just found");
        if conn.state == ConnState::Open {
            return Ok(());
        }
        conn.state = ConnState::Open;
        if auth.is_some() {
            conn.auth = auth;
        }
        self.counters.connections_admitted += 1;
        let mut rec = AuditRecord::new(AuditEvent::ConnectionAdmitted, now).with_conn(conn);
        if self.config.kubernetes.enabled && self.config.kubernetes.gate_ssh {
            rec.enforcing = Some(conn.enforced);
        }
        self.audit.record(rec);
        self.dirty = true;
        self.fleet_publish(id);
        Ok(())
    }

    /// PAM close_session.
    pub(super) async fn pam_close(&mut self, req: PamSession) {
        if let Some(id) = self.registry.by_monitor_pid(req.pid).map(|c| c.id) {
            // sshd may get to close the session of a connection we are ending (idle, lock,
            // kill) once its sessions died: the reason is still ours.
            let why = self
                .terminating
                .get(&id)
                .copied()
                .unwrap_or(CloseReason::Logout);
            self.release(id, why).await;
        }
    }

    /// The kernel saw a registered monitor's process end.
    pub(super) async fn on_monitor_exit(&mut self, conn_id: u64, pid: u32) {
        if self
            .registry
            .get(conn_id)
            .is_some_and(|c| c.monitor.pid == pid)
        {
            self.release_ended(conn_id, CloseReason::MonitorExited)
                .await;
        }
    }

    /// Releases a connection whose monitor ended: for the reason it was being terminated, if
    /// it was, else `otherwise`.
    async fn release_ended(&mut self, id: u64, otherwise: CloseReason) {
        let why = self.terminating.get(&id).copied().unwrap_or(otherwise);
        self.release(id, why).await;
    }

    /// Releases connections whose monitor is gone without us hearing of it (a dropped event, or
    /// an exit while the daemon was down). The kernel drops a task's entry from its table when
    /// the task exits, also when the exit event is lost: a monitor still in the table with its
    /// start time is alive. Only the others are looked up in /proc (reading /proc for every
    /// monitor would cost ~20 µs each, 200 ms for 10 000 connections, with logins waiting).
    /// The table itself is read only when `core::conn::MonitorSweep` says so.
    pub(super) async fn sweep(&mut self) {
        let drops = match self.bpf.drops().await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the drop counters");
                None
            }
        };
        let unsure = !self.lingering.is_empty() || !self.unregistered.is_empty();
        let census = drops.is_none_or(|d| self.monitor_sweep.census_needed(d, unsure));
        if census {
            let tasks = self.bpf.census().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "task census failed; every monitor is looked up in /proc");
                Vec::new()
            });
            let tracked: HashMap<u32, u64> = tasks
                .iter()
                .filter(|(_, t)| t.flags & TASK_CONN_ROOT != 0)
                .map(|(tid, t)| (*tid, ns_to_ticks(t.start_ns)))
                .collect();
            self.release_gone_monitors(&tracked).await;
            self.forget_ended_lingering(&tasks);
        }
        if let Some(d) = drops {
            self.monitor_sweep.done(d, census);
        }
    }

    /// Releases connections whose monitor is neither in `tracked` (see [`State::sweep`]) nor
    /// alive in /proc.
    pub(super) async fn release_gone_monitors(&mut self, tracked: &HashMap<u32, u64>) {
        let gone: Vec<u64> = self
            .registry
            .untracked_monitors(tracked)
            .into_iter()
            .filter(|(_, monitor)| !host::alive(*monitor))
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            self.release_ended(id, CloseReason::MonitorGone).await;
        }
    }

    /// Forgets released connections none of whose processes is left (`tasks`: the census).
    fn forget_ended_lingering(&mut self, tasks: &[(u32, TrackedTask)]) {
        if self.lingering.is_empty() {
            return;
        }
        let live = host::process_ids();
        let with_tasks: HashSet<u64> = tasks
            .iter()
            .filter(|(tid, _)| live.contains(tid))
            .map(|(_, t)| t.conn_id)
            .collect();
        self.lingering.retain(|id, _| with_tasks.contains(id));
    }

    pub(super) async fn release(&mut self, id: u64, why: CloseReason) {
        let Some(conn) = self.registry.remove(id) else {
            return;
        };
        self.terminating.remove(&id);
        self.unregistered.remove(&id);
        self.fleet_released(&conn);
        // Processes it leaves running (nohup, setsid, double fork) keep its identity: shown
        // and killable as lingering until none is left (the sweep forgets it then).
        self.lingering
            .insert(id, super::lockout::lingering_info(conn.info()));
        for session_id in conn.sessions.keys() {
            self.end_recording(session_id);
        }
        if let Err(e) = self.bpf.remove_conn(id).await {
            tracing::warn!(conn = id, error = %e, "cannot remove connection from the kernel");
        }
        // Its channels' idle clocks go with the next idle check.
        self.activity_orphans = true;
        if let Some(uid) = conn.uid {
            if !self.registry.iter().any(|c| c.uid == Some(uid)) {
                if let Err(e) = self.bpf.remove_user(uid).await {
                    tracing::warn!(uid, error = %e, "cannot remove user from the kernel");
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        self.close_forwards(&conn, now);
        self.counters.connections_closed += 1;
        let mut rec = AuditRecord::new(AuditEvent::ConnectionClosed, now)
            .with_conn(&conn)
            .reason(why.reason(), None);
        rec.duration_secs = Some((now - conn.admitted_at).as_seconds_f64().max(0.0));
        self.audit.record(rec);
        self.dirty = true;
    }
}

/// The groups `[[rules]]` match a connection by (none when NSS does not know the user).
pub(super) fn groups_of(ident: Option<&host::UserIdentity>) -> Vec<String> {
    ident.map(|i| i.groups.clone()).unwrap_or_default()
}

/// The account behind `user` when NSS names it otherwise (see [`Connection::account`]).
pub(super) fn account_of(user: &str, ident: Option<&host::UserIdentity>) -> Option<String> {
    ident.map(|i| i.account.clone()).filter(|a| a != user)
}

/// A connection's kernel entry: its live sessions and the limit they count against.
pub(super) fn conn_entry(sessions: u64, uid: Option<u32>, limits: &EffectiveLimits) -> ConnEntry {
    ConnEntry {
        sessions,
        max_sessions: limits.max_sessions_per_connection,
        uid: uid.unwrap_or(NO_UID),
    }
}
