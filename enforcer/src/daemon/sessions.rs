//! Sessions inside connections, from kernel events: start/refusal, the commands run, their
//! exits, and terminating a session or a whole connection on request.

use std::{collections::HashMap, sync::Arc};

use enforcer_common::tasks::{TASK_CONN_ROOT, TASK_SESSION_LEADER};
use enforcer_proto::{ConnectionInfo, ErrorKind, ErrorReply, SessionInfo};
use time::OffsetDateTime;

use super::{
    admission::CloseReason,
    lockout::kill_and_audit,
    state::{ProcessView, State},
};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::{EventOrigin, Exec, KillTarget, KilledAtExec, SessionLimit},
    control::{Peer, Role},
    core::rfc3339,
    core::session::{ExitStatus, Session, SessionKind, classify},
    host,
};

fn not_found(what: &str, id: u64) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotFound,
        format!("no live {what} {id}; see `enforcerctl sessions`"),
    )
}

impl State {
    /// A record about `origin`'s connection, with its session when known.
    fn record(&self, event: AuditEvent, origin: &EventOrigin) -> AuditRecord {
        let mut rec = AuditRecord::new(event, OffsetDateTime::now_utc());
        if let Some(c) = self.registry.get(origin.conn_id) {
            rec = rec.with_conn(c);
        } else {
            rec.conn_id = Some(origin.conn_id);
        }
        if let Some(s) = self
            .registry
            .session_by_kernel(origin.conn_id, origin.session_id)
        {
            rec = rec.with_session(s);
        }
        rec.pid = Some(origin.pid);
        rec
    }

    pub(super) fn on_session(
        &mut self,
        origin: EventOrigin,
        start_ns: u64,
        refused: Option<(SessionLimit, u32)>,
    ) {
        let now = OffsetDateTime::now_utc();
        if let Some((which, limit)) = refused {
            self.counters.sessions_refused += 1;
            let user = self
                .registry
                .get(origin.conn_id)
                .map(|c| c.user.clone())
                .unwrap_or_default();
            let (code, what) = match which {
                SessionLimit::PerConnection => (
                    AuditReason::MaxSessionsPerConnection,
                    format!("this connection already has {limit} of {limit} allowed sessions"),
                ),
                SessionLimit::PerUser => (
                    AuditReason::MaxSessionsPerUser,
                    format!("user {user} already has {limit} of {limit} allowed sessions"),
                ),
            };
            let message = format!("enforcer: session refused: {what}");
            let mut rec = self
                .record(AuditEvent::SessionRefused, &origin)
                .reason(code, Some(message.clone()));
            rec.limit = Some(limit);
            self.audit.record(rec);
            self.refusals.insert((origin.conn_id, origin.tid), message);
            return;
        }
        self.counters.sessions_started += 1;
        let session = Session {
            id: 0,
            conn_id: origin.conn_id,
            kernel_id: origin.session_id,
            leader_pid: origin.pid,
            leader_start_ns: start_ns,
            started_at: now,
            last_activity: now,
            kind: SessionKind::Starting,
            tty: None,
            command: None,
            commands: 0,
            channels: Vec::new(),
            started_boot_ns: origin.boot_ns,
        };
        let Some(session_id) = self.registry.add_session(session) else {
            tracing::debug!(
                conn = origin.conn_id,
                "session of a connection that is gone"
            );
            return;
        };
        self.fleet_session_started(origin.conn_id, session_id);
        self.dirty = true;
        self.audit
            .record(self.record(AuditEvent::SessionStarted, &origin));
        self.fleet_publish(origin.conn_id);
    }

    pub(super) async fn on_exec(&mut self, exec: Exec) {
        let origin = exec.origin;
        if self.kube_exec_command(&exec).await {
            return;
        }
        if origin.session_id == 0 {
            // sshd's own processes (re-exec, helpers) before any session.
            return;
        }
        self.counters.commands += 1;
        if let Some(s) = self
            .registry
            .session_by_kernel_mut(origin.conn_id, origin.session_id)
        {
            s.commands += 1;
            s.last_activity = OffsetDateTime::now_utc();
            let first = s.kind == SessionKind::Starting && origin.pid == s.leader_pid;
            if first {
                (s.kind, s.command) = classify(&exec.argv);
                s.tty = exec.tty.clone();
                s.channels = channel_objects(&exec);
            }
            let (session_id, leader_pid) = (s.id, s.leader_pid);
            self.dirty = true;
            if first {
                self.start_recording(origin.conn_id, session_id, None);
            }
            // The shell's exec of the session's command, or the command run directly.
            self.transfer_exec(session_id, leader_pid, &exec, first)
                .await;
        }
        let mut rec = self.record(AuditEvent::Exec, &origin);
        rec.uid = Some(exec.uid);
        rec.ppid = Some(exec.ppid);
        rec.filename = Some(exec.filename);
        rec.argv = Some(exec.argv);
        rec.argv_truncated = exec.argv_truncated;
        rec.cwd = exec.cwd;
        rec.tty = exec.tty.or(rec.tty);
        match exec.killed {
            Some(KilledAtExec::Refused) => {
                rec = rec.reason(AuditReason::KilledAtExecSessionRefused, None)
            }
            Some(KilledAtExec::Doomed) => {
                rec = rec.reason(AuditReason::KilledAtExecTerminated, None)
            }
            Some(KilledAtExec::Locked) => {
                rec = rec.reason(AuditReason::KilledAtExecUserLocked, None)
            }
            None => {}
        }
        self.audit.record(rec);
    }

    pub(super) async fn on_exit(&mut self, origin: EventOrigin, status: u32, flags: u32) {
        if flags & TASK_CONN_ROOT != 0 {
            self.on_monitor_exit(origin.conn_id, origin.pid).await;
            return;
        }
        if self.kube_exec_exit(&origin, status, flags).await {
            return;
        }
        if origin.session_id == 0 {
            return;
        }
        if !self.transfers.is_empty() {
            let session = self
                .registry
                .session_by_kernel(origin.conn_id, origin.session_id);
            if let Some(id) = session.map(|s| s.id) {
                self.transfer_exit(id, origin.pid, origin.boot_ns);
            }
        }
        let exit = self
            .record(AuditEvent::Exit, &origin)
            .exit_status(ExitStatus::from_wait(status));
        let leader = flags & TASK_SESSION_LEADER != 0 && origin.tid as u64 == origin.session_id;
        // A refused session never started, so it does not end either.
        if !leader
            || self
                .refusals
                .remove(&(origin.conn_id, origin.tid))
                .is_some()
        {
            self.audit.record(exit);
            return;
        }
        let mut rec = exit.clone();
        rec.event = AuditEvent::SessionEnded;
        self.audit.record(exit);
        if let Some(s) = self
            .registry
            .remove_session_by_kernel(origin.conn_id, origin.session_id)
        {
            self.end_recording(s.id);
            self.transfer_ended(s.id);
            self.dirty = true;
            self.fleet_publish(origin.conn_id);
            self.fleet_session_ended(s.id);
            rec.duration_secs = Some(
                (OffsetDateTime::now_utc() - s.started_at)
                    .as_seconds_f64()
                    .max(0.0),
            );
            rec.commands = Some(s.commands);
            self.audit.record(rec);
        }
    }

    /// A refused session's leader is stopped with its stdio on the channel: tell the user why,
    /// then kill it (had this not happened, its exec would have killed it).
    pub(super) fn on_stopped(&mut self, origin: EventOrigin) {
        let message = self
            .refusals
            .get(&(origin.conn_id, origin.tid))
            .cloned()
            .unwrap_or_else(|| "enforcer: session refused by a session limit".to_owned());
        // Off the actor: the user owns that terminal and may have stopped its output (tell
        // waits up to 100 ms for room), and refusals come as fast as channels are opened.
        let pid = origin.pid;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = host::tell_and_kill(pid, &format!("{message}\r\n")) {
                tracing::warn!(pid, error = %e, "could not show the refusal to the user");
            }
        });
    }

    pub(super) async fn kill_session(&mut self, id: u64, peer: &Peer) -> Result<u64, ErrorReply> {
        if self.registry.session(id).is_none() {
            if let Some(done) = self.kill_exec_session(id, peer).await {
                return done;
            }
        }
        let s = self
            .registry
            .session(id)
            .ok_or_else(|| not_found("session", id))?
            .clone();
        let target = KillTarget {
            conn_id: s.conn_id,
            session_id: Some(s.kernel_id),
        };
        let n = self
            .bpf
            .kill(target)
            .await
            .map_err(|e| ErrorReply::new(ErrorKind::Internal, e.to_string()))?
            as u64;
        let mut rec = AuditRecord::new(AuditEvent::SessionKilled, OffsetDateTime::now_utc());
        if let Some(c) = self.registry.get(s.conn_id) {
            rec = rec.with_conn(c);
        }
        let mut rec = rec.with_session(&s).by(peer.uid, peer.pid);
        rec.processes = Some(n);
        self.audit
            .record(rec.reason(AuditReason::KilledByOperator, None));
        Ok(n)
    }

    /// Kills a connection (its monitor and every process with its identity), or what a
    /// released connection left running.
    pub(super) async fn kill_connection(
        &mut self,
        id: u64,
        why: CloseReason,
        rec: AuditRecord,
    ) -> Result<u64, ErrorReply> {
        let rec = self.prepare_kill(id, why, rec)?;
        kill_and_audit(self.bpf.clone(), self.audit.clone(), id, rec).await
    }

    /// Marks a connection as terminating and fills in its audit record (before the kill:
    /// the registry entry goes once the monitor dies).
    pub(super) fn prepare_kill(
        &mut self,
        id: u64,
        why: CloseReason,
        rec: AuditRecord,
    ) -> Result<AuditRecord, ErrorReply> {
        if let Some(conn) = self.registry.get(id) {
            let rec = rec.with_conn(conn);
            self.terminating.insert(id, why);
            return Ok(rec);
        }
        let lingering = self
            .lingering
            .remove(&id)
            .ok_or_else(|| not_found("connection", id))?;
        let mut rec = rec;
        rec.user = Some(lingering.user);
        rec.uid = lingering.uid;
        rec.conn_id = Some(id);
        Ok(rec)
    }

    /// Live tracked processes by (connection, kernel session). Walking the kernel's task table
    /// costs milliseconds with many tasks, so unprivileged peers get a view up to
    /// [`super::status::SNAPSHOT_REUSE`] old (a loop of `sessions` cannot keep the actors busy
    /// while logins wait); root and auditors get a fresh one.
    async fn processes(&mut self, fresh: bool) -> Arc<ProcessView> {
        if let Some((at, view)) = &self.process_view {
            if !fresh && at.elapsed() < super::status::SNAPSHOT_REUSE {
                return view.clone();
            }
        }
        // Each session's latest activity, as the kernel has it now.
        self.check_idle(true).await;
        // Threads are in the census too; /proc lists processes only.
        let live = host::process_ids();
        let mut processes: ProcessView = HashMap::new();
        match self.bpf.census().await {
            Ok(tasks) => {
                for (tid, t) in tasks.into_iter().filter(|(tid, _)| live.contains(tid)) {
                    processes
                        .entry((t.conn_id, t.session_id))
                        .or_default()
                        .push(tid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "task census failed; process counts omitted"),
        }
        let view = Arc::new(processes);
        self.process_view = Some((std::time::Instant::now(), view.clone()));
        view
    }

    /// Connections with their sessions, as `peer` may see them.
    pub(super) async fn list(&mut self, peer: &Peer) -> Vec<ConnectionInfo> {
        let processes = self.processes(peer.role != Role::User).await;
        let processes = &*processes;
        self.registry
            .iter()
            .filter(|c| peer.may_see(c.uid))
            .map(|c| {
                let mut info = c.info();
                let idle_since = self.idle_since.get(&c.id).copied();
                info.idle_since = idle_since.map(rfc3339);
                info.idle_cut_at = idle_since
                    .filter(|_| !c.idle_timeout.is_zero())
                    .map(|t| rfc3339(t + c.idle_timeout.0));
                info.sessions = self
                    .registry
                    .sessions_of(c.id)
                    .map(|s| {
                        let mut pids = processes
                            .get(&(c.id, s.kernel_id))
                            .cloned()
                            .unwrap_or_default();
                        pids.sort_unstable();
                        SessionInfo {
                            id: s.id,
                            kind: s.kind.as_str().into(),
                            pty: s.tty.is_some(),
                            tty: s.tty.clone(),
                            command: s.command.clone(),
                            leader_pid: s.leader_pid,
                            started: rfc3339(s.started_at),
                            last_activity: rfc3339(s.last_activity),
                            processes: pids.len() as u32,
                            pids,
                            commands: s.commands,
                        }
                    })
                    .collect();
                info
            })
            .chain(self.lingering_list(peer, processes))
            .chain(self.kube_exec_list(peer, processes))
            .collect()
    }

    /// Released connections whose processes still run, one entry per kernel session they came
    /// from (`kind` "lingering"; processes started outside any session are under id 0).
    fn lingering_list(
        &self,
        peer: &Peer,
        processes: &HashMap<(u64, u64), Vec<u32>>,
    ) -> Vec<ConnectionInfo> {
        self.lingering
            .values()
            .filter(|c| peer.may_see(c.uid))
            .filter_map(|c| {
                let mut info = c.clone();
                let mut groups: Vec<_> = processes
                    .iter()
                    .filter(|((conn, _), _)| *conn == c.id)
                    .collect();
                groups.sort_unstable_by_key(|((_, session), _)| *session);
                info.sessions = groups
                    .into_iter()
                    .map(|((_, session), pids)| {
                        let mut pids = pids.clone();
                        pids.sort_unstable();
                        SessionInfo {
                            id: 0,
                            kind: "lingering".into(),
                            pty: false,
                            tty: None,
                            command: None,
                            leader_pid: *session as u32,
                            started: c.since.clone(),
                            last_activity: c.since.clone(),
                            processes: pids.len() as u32,
                            pids,
                            commands: 0,
                        }
                    })
                    .collect();
                (!info.sessions.is_empty()).then_some(info)
            })
            .collect()
    }
}

/// The objects (pty index or stdio pipe inodes) a session's I/O flows through, from its leader's
/// first exec: the kernel keys activity and recordings by them.
fn channel_objects(exec: &Exec) -> Vec<u64> {
    if let Some(index) = exec
        .tty
        .as_deref()
        .and_then(|t| t.strip_prefix("pts/"))
        .and_then(|n| n.parse::<u64>().ok())
    {
        return vec![enforcer_common::io::IO_PTY | index];
    }
    let mut objects: Vec<u64> = exec.stdio_ino.iter().copied().filter(|&i| i != 0).collect();
    objects.dedup();
    objects
}
