//! Connection admission: what the PAM module's three hooks do, and releasing a connection when
//! its sshd monitor ends (close_session, kernel exit event, or the sweep).

use std::net::{IpAddr, SocketAddr};

use enforcer_common::tasks::{TASK_CONN_ROOT, TrackedTask};
use enforcer_proto::{Admission, ErrorKind, ErrorReply, PamAccount, PamSession};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::AuditRecord,
    core::{
        conn::{ConnState, Connection, ProcKey},
        identity::{parse_auth_info, parse_ssh_connection},
        policy,
    },
    host,
};

/// Why a connection ended (audit `reason`).
#[derive(Debug, Clone, Copy)]
pub(super) enum CloseReason {
    /// PAM close_session: the client disconnected normally.
    Logout,
    /// The monitor process exited without close_session (crash, kill -9).
    MonitorExited,
    /// The monitor was found gone by the sweep (e.g. while enforcerd was down).
    MonitorGone,
}

impl CloseReason {
    fn code(self) -> &'static str {
        match self {
            CloseReason::Logout => "logout",
            CloseReason::MonitorExited => "monitor_exited",
            CloseReason::MonitorGone => "monitor_gone",
        }
    }
}

fn no_such_process(pid: u32) -> ErrorReply {
    ErrorReply::new(ErrorKind::BadRequest, format!("process {pid} does not exist (is the caller sshd's monitor?)"))
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
    let client = req.rhost.as_deref().and_then(|h| h.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, 0));
    (client, None)
}

impl State {
    /// PAM acct_mgmt: decide and, when admitted, reserve the slot and start tracking the monitor.
    pub(super) async fn pam_account(&mut self, req: PamAccount) -> Result<Admission, ErrorReply> {
        let now = OffsetDateTime::now_utc();
        let monitor = host::proc_key(req.pid).ok_or_else(|| no_such_process(req.pid))?;
        if let Some(c) = self.registry.by_monitor(monitor) {
            // acct_mgmt asked twice on one connection: same answer, no second slot.
            return Ok(Admission::Admitted { conn_id: c.id });
        }
        let ident = host::user_identity(&req.user);
        let groups = ident.as_ref().map(|i| i.groups.as_slice()).unwrap_or_default();
        let limits = policy::effective_limits(&self.config, &req.user, groups);
        let (client, server) = endpoints(&req);
        let conn = Connection {
            id: 0,
            user: req.user.clone(),
            uid: ident.as_ref().map(|i| i.uid),
            monitor,
            state: ConnState::Pending,
            client,
            server,
            rhost: req.rhost.clone(),
            service: req.service.clone(),
            admitted_at: now,
            auth: req.auth_info.as_deref().and_then(parse_auth_info),
        };
        let lock = self.locks.get(&req.user).filter(|l| l.active(now));
        if let Err(refusal) = policy::admit(&self.registry, &req.user, conn.source_ip(), &limits, lock.as_ref()) {
            self.counters.connections_refused += 1;
            let message = refusal.message(&req.user);
            let mut rec = AuditRecord::new("connection_refused", now)
                .with_conn(&conn)
                .reason(refusal.code(), Some(message.clone()));
            rec.conn_id = None;
            self.audit.record(rec);
            return Ok(Admission::Refused { reason: refusal.code().into(), message });
        }
        let id = self.registry.insert(conn);
        self.track_monitor(id, monitor).await;
        self.dirty = true;
        Ok(Admission::Admitted { conn_id: id })
    }

    /// Makes the kernel follow the monitor and everything it starts.
    async fn track_monitor(&self, conn_id: u64, monitor: ProcKey) {
        let task = TrackedTask { conn_id, session_id: 0, flags: TASK_CONN_ROOT, _pad: 0 };
        if let Err(e) = self.bpf.track(monitor.pid, task).await {
            // The sweep still notices the monitor's end; session tracking for it is lost.
            tracing::error!(conn = conn_id, pid = monitor.pid, error = %e, "cannot track sshd monitor in the kernel");
        }
    }

    /// PAM open_session: the connection is live; sshd has now exposed the key or certificate.
    pub(super) async fn pam_open(&mut self, req: PamSession) -> Result<(), ErrorReply> {
        let now = OffsetDateTime::now_utc();
        let monitor = host::proc_key(req.pid).ok_or_else(|| no_such_process(req.pid))?;
        let auth = req.auth_info.as_deref().and_then(parse_auth_info);
        let id = match self.registry.by_monitor(monitor) {
            Some(c) => c.id,
            None => {
                // No acct_mgmt reached us (module only in the session stack): record it anyway.
                let ident = host::user_identity(&req.user);
                let (client, server) = host::tcp_endpoints(req.pid).unzip();
                let conn = Connection {
                    id: 0,
                    user: req.user.clone(),
                    uid: ident.map(|i| i.uid),
                    monitor,
                    state: ConnState::Pending,
                    client,
                    server,
                    rhost: None,
                    service: String::new(),
                    admitted_at: now,
                    auth: None,
                };
                let id = self.registry.insert(conn);
                self.track_monitor(id, monitor).await;
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
        let rec = AuditRecord::new("connection_admitted", now).with_conn(conn);
        self.audit.record(rec);
        self.dirty = true;
        Ok(())
    }

    /// PAM close_session.
    pub(super) fn pam_close(&mut self, req: PamSession) {
        if let Some(id) = self.registry.by_monitor_pid(req.pid).map(|c| c.id) {
            self.release(id, CloseReason::Logout);
        }
    }

    /// The kernel saw a registered monitor's process end.
    pub(super) fn on_monitor_exit(&mut self, conn_id: u64, pid: u32) {
        if self.registry.get(conn_id).is_some_and(|c| c.monitor.pid == pid) {
            self.release(conn_id, CloseReason::MonitorExited);
        }
    }

    /// Releases connections whose monitor is gone without us hearing of it (a dropped event, or
    /// an exit while the daemon was down).
    pub(super) fn sweep(&mut self) {
        let gone: Vec<u64> = self.registry.iter().filter(|c| !host::alive(c.monitor)).map(|c| c.id).collect();
        for id in gone {
            self.release(id, CloseReason::MonitorGone);
        }
    }

    /// After a restart: keep the connections whose monitor still runs (tracking it again),
    /// release the others.
    pub(super) async fn restore(&mut self) {
        self.sweep();
        let live: Vec<(u64, ProcKey)> = self.registry.iter().map(|c| (c.id, c.monitor)).collect();
        for (id, monitor) in &live {
            self.track_monitor(*id, *monitor).await;
        }
        if !live.is_empty() {
            tracing::info!(connections = live.len(), "restored live connections");
        }
        self.dirty = true;
    }

    pub(super) fn release(&mut self, id: u64, why: CloseReason) {
        let Some(conn) = self.registry.remove(id) else { return };
        let now = OffsetDateTime::now_utc();
        self.counters.connections_closed += 1;
        let mut rec = AuditRecord::new("connection_closed", now).with_conn(&conn).reason(why.code(), None);
        rec.duration_secs = Some((now - conn.admitted_at).as_seconds_f64().max(0.0));
        self.audit.record(rec);
        self.dirty = true;
    }
}
