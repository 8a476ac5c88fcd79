//! The state actor's side of `kubectl exec` sessions: containerd reports an exec's process
//! (`crate::kube::watch_execs`), the kernel is told to follow it and everything below it as it
//! follows an SSH session, and from then on the kernel's exec and exit events say what ran in
//! it and when it ended. Listed by `sessions`, ended by `kill session`, audited with the pod's
//! fields. The model is `core::kube::exec`'s.

use std::collections::{HashMap, HashSet};

use enforcer_common::tasks::{TASK_REFUSED, TASK_SESSION_LEADER, TrackedTask};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::{EventOrigin, Exec, KillTarget, tasks::ticks_to_ns},
    control::Peer,
    core::{
        conn::ProcKey,
        kube::{
            ExecDecision,
            exec::{
                ExecSession, ExecSessions, Inserted, awaits_command, command_line, tty_of_stdin,
            },
        },
        session::ExitStatus,
    },
    host,
    kube::{ContainerdEvent, ExecStart},
};

/// How long a session whose process still looked like runc's own waits for its command's exec.
const AWAIT_COMMAND_AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);

/// What the actor knows of exec sessions and of its containerd connection.
#[derive(Default)]
pub(super) struct ExecState {
    pub sessions: ExecSessions,
    /// Subscribed to containerd's events now.
    pub connected: bool,
    /// The last connection error and when (cleared by the next connect).
    pub last_error: Option<(OffsetDateTime, String)>,
    /// Sessions being ended (`kill session`, a lock, the idle cut), with the reason their
    /// `session_ended` carries.
    pub killing: HashMap<u64, AuditReason>,
    /// Kernel identities of refused execs: their processes' events are theirs, not a session's.
    pub refused: HashSet<u64>,
    /// Sessions that ended before the fleet said who they were, and when they ended.
    pub ended_identifying: HashMap<u64, (ExecSession, std::time::Instant)>,
    /// The grant each identified live session was matched to, by container and exec id
    /// (kept across a restart: `state_dir/exec-identities.json`).
    pub identities: super::kube_identity::ExecIdentities,
    /// `identities` changed since they were last handed to be written.
    pub identities_dirty: bool,
    /// When stdin was last looked at for the idle cut.
    pub idle_checked: Option<tokio::time::Instant>,
    /// What the kernel's exec hold was last set to (`None`: not yet).
    pub holding: Option<bool>,
    /// Execs the kernel holds, until containerd reports them: pid → (the process, when to
    /// let it go unreported, whether our containerd's shim started it).
    pub held: HashMap<u32, (ProcKey, tokio::time::Instant, bool)>,
    /// Our containerd's kubelet containers by id: a held exec's pod, known before containerd
    /// reports the exec (`kube_hold`).
    pub containers: HashMap<String, crate::core::kube::exec::ContainerMeta>,
    /// Sessions admitted while the kernel held them, which containerd has not reported yet
    /// (no exec id): by session id.
    pub unreported: HashMap<u64, super::kube_hold::Unreported>,
    /// Held execs the kernel killed because a process of their pod resumed them: pid → when
    /// (kept a minute, for containerd's report to find).
    pub broken: HashMap<u32, tokio::time::Instant>,
    /// Pipes of ended sessions, filed until the shim has read what was left in them
    /// (`kube_record::drop_ended_exec_channels`): (when, kernel identity, pipes).
    pub ended_channels: std::collections::VecDeque<(tokio::time::Instant, u64, Vec<u64>)>,
    /// Sessions whose ask about their Kubernetes user met no answer from etcd: session id →
    /// (when to ask again, `None` while an ask is out; asks that failed so far).
    pub reask: HashMap<u64, (Option<tokio::time::Instant>, u32)>,
}

impl State {
    /// News from containerd.
    pub(super) async fn on_containerd(&mut self, ev: ContainerdEvent) {
        match ev {
            ContainerdEvent::ExecStarted(s) => self.exec_started(s).await,
            ContainerdEvent::Container(meta) => self.container_known(meta),
            ContainerdEvent::ContainerGone(id) => {
                self.kube_exec.containers.remove(&id);
            }
            ContainerdEvent::Exited {
                container_id,
                id,
                pid,
                exit_status,
            } => self.exec_exited(&container_id, &id, pid, exit_status).await,
            ContainerdEvent::Connected { execs } => {
                tracing::info!(execs, "containerd connected; live exec processes listed");
                self.kube_exec.connected = true;
                self.kube_exec.last_error = None;
                self.forget_stale_exec_channels().await;
                self.forget_stale_exec_identities();
            }
            ContainerdEvent::Error(e) => {
                self.kube_exec.connected = false;
                self.kube_exec.last_error = Some((OffsetDateTime::now_utc(), e));
            }
        }
    }

    pub(super) fn node(&self) -> String {
        self.kube
            .as_ref()
            .map(|k| k.node.clone())
            .unwrap_or_default()
    }

    /// An exec's process runs: the kernel follows it from now on (its children forked before
    /// that are adopted from /proc), and the session is listed and audited.
    async fn exec_started(&mut self, s: ExecStart) {
        // Admitted while held (it may have ended since): it gets its exec id and starts now.
        if let Some(id) = self.unreported_session(s.pid) {
            self.exec_reported(id, Some(s)).await;
            return;
        }
        let Some(key) = host::proc_key(s.pid) else {
            self.kube_exec.held.remove(&s.pid);
            self.exec_ended_before_tracking(s);
            return;
        };
        // Reported again (event and listing, or a reconnect's listing): already followed, and
        // tracking it anew would give its root another identity than its children's.
        let start_ns = ticks_to_ns(key.start_ticks);
        let known = self.kube_exec.sessions.iter_mut().find(|o| {
            (o.exec_id == s.exec_id && o.meta.container_id == s.meta.container_id)
                || (o.pid == s.pid && o.start_ns == start_ns)
        });
        if let Some(o) = known {
            // One containerd reported only after it had been given up on (`kube_hold`).
            if o.exec_id.is_empty() {
                o.exec_id = s.exec_id;
            }
            return;
        }
        let refusal = match self.exec_decision(&s.meta.pod) {
            ExecDecision::Refuse(r) => Some(r),
            ExecDecision::Admit(_) | ExecDecision::Unenforced => None,
        };
        // Found again after enforcerd restarted: the kernel still follows it (and what it
        // started) under the identity it had; keep that one.
        let resumed = match (s.discovered, refusal) {
            (true, None) => self.tracked_exec_root(key).await,
            _ => None,
        };
        let kernel_id = match resumed {
            Some(k) => {
                self.registry.conn_id_in_use(k);
                k
            }
            None => self.registry.reserve_conn_id(),
        };
        let id = self.registry.reserve_session_id();
        self.dirty = true;
        // Held by the kernel at its command's exec (its hold event says so, nothing the
        // process could fake) and still stopped: it has not forked, so there is nothing to
        // adopt, and the walk of every process on the host that adopting takes (~2.5 ms of
        // the exec's start) is spared. A stop can be faked (resumed from its pod, then stopped
        // by itself), but a held task that forks before enforcerd's SIGCONT is killed by the
        // kernel (BPF `gate`), so nothing forked can be missed here either.
        let unforked = self
            .kube_exec
            .held
            .get(&s.pid)
            .is_some_and(|(k, ..)| *k == key)
            && host::stopped(key);
        // A refused exec is killed by the kernel at its command's exec only while nothing
        // holds that exec: with the hold on, the command is stopped there like any other and
        // `refuse_exec` kills it once its client has been told why. (Killing at the exec
        // left the client without a word when containerd's report came before the exec:
        // found in a full test run.)
        let kill_at_exec = refusal.is_some() && self.kube_exec.holding != Some(true);
        let tracked = resumed.is_some()
            || self
                .track_exec(kernel_id, key, kill_at_exec, unforked)
                .await;
        // Its stdio filed before it runs on: its first output is recorded too.
        let channels = if tracked && refusal.is_none() {
            self.file_exec_channels(id, kernel_id, s.pid, &[]).await
        } else {
            Vec::new()
        };
        // Read before it runs on: a quick command is gone (or mid-exec, runc's init turning
        // into it) a moment later, and its session would have no command.
        let (cmdline, stdin) = host::command_and_stdin(s.pid);
        // Followed now: a command the kernel held may run (a refused one is told why and
        // killed without running).
        self.release_held(key, refusal.is_some());
        if !tracked {
            // It ended while the kernel was being told about it.
            self.exec_ended_before_tracking(s);
            return;
        }
        let now = OffsetDateTime::now_utc();
        // Found rather than reported: it started when its process did.
        let started_at = match s.discovered {
            true => now - std::time::Duration::from_nanos(host::boot_ns().saturating_sub(start_ns)),
            false => now,
        };
        let session = ExecSession {
            command: command_line(&cmdline),
            tty: tty_of_stdin(&stdin),
            awaiting_exec: awaits_command(&cmdline),
            last_activity: now,
            channels,
            ..ExecSession::new(
                (id, kernel_id),
                s.exec_id,
                s.meta,
                (s.pid, start_ns),
                started_at,
            )
        };
        if let Some(r) = refusal {
            self.refuse_exec(session, r);
            return;
        }
        tracing::info!(
            session = id,
            pod = %session.meta.pod,
            container = %session.meta.container,
            exec = %session.exec_id,
            pid = session.pid,
            discovered = s.discovered,
            resumed = resumed.is_some(),
            "kubectl exec session started"
        );
        let awaiting = session.awaiting_exec;
        if self.kube_exec.sessions.insert(session) == Inserted::Known {
            return;
        }
        if s.discovered {
            self.restore_exec_identity(id);
        }
        // A resumed session's `session_started` was written by the run that first saw it.
        if resumed.is_none() {
            self.counters.sessions_started += 1;
            if !awaiting {
                self.audit_exec_started(id);
            }
        }
        if !awaiting {
            // Taken up after a restart too, in a new file (the session has a new id).
            self.start_exec_recording(id);
        }
        self.end_if_user_locked(id).await;
    }

    /// The kernel identity `key` already carries as an exec session's root (tracked by an
    /// earlier run of enforcerd: the pinned task table outlives it), if it does.
    async fn tracked_exec_root(&self, key: ProcKey) -> Option<u64> {
        let tasks = match self.bpf.census().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kernel's task table");
                return None;
            }
        };
        tasks
            .into_iter()
            .find(|(tid, t)| {
                *tid == key.pid
                    && t.flags & TASK_SESSION_LEADER != 0
                    && t.session_id == key.pid as u64
                    && crate::bpf::tasks::same_task(t.start_ns, ticks_to_ns(key.start_ticks))
            })
            .map(|(_, t)| t.conn_id)
            // No SSH connection has it (an exec's identity is drawn from the same ids).
            .filter(|id| self.registry.get(*id).is_none())
    }

    /// `session_started`, once the session's command is known.
    pub(super) fn audit_exec_started(&mut self, id: u64) {
        let Some(s) = self.kube_exec.sessions.get(id) else {
            return;
        };
        let mut rec =
            AuditRecord::new(AuditEvent::SessionStarted, s.started_at).with_exec(s, &self.node());
        rec.pid = Some(s.pid);
        self.audit.record(rec);
        self.identify_exec(id);
    }

    /// Tells the kernel to follow the exec's process as a session root, then adopts what it
    /// forked before that (the race between runc starting it and containerd's event reaching
    /// us) unless it is `unforked`. False when it ended meanwhile (its exit came before the
    /// kernel knew it). With `kill_at_exec` the kernel kills it at its next exec.
    pub(super) async fn track_exec(
        &mut self,
        kernel_id: u64,
        key: ProcKey,
        kill_at_exec: bool,
        unforked: bool,
    ) -> bool {
        let task = TrackedTask {
            conn_id: kernel_id,
            // The session key is the root's task id, as for an SSH session's leader.
            session_id: key.pid as u64,
            start_ns: ticks_to_ns(key.start_ticks),
            flags: TASK_SESSION_LEADER | if kill_at_exec { TASK_REFUSED } else { 0 },
            _pad: 0,
        };
        if let Err(e) = self.bpf.track(key.pid, task).await {
            tracing::error!(pid = key.pid, error = %e, "cannot track the exec's process; it is not controlled");
            return false;
        }
        if !unforked {
            match self.bpf.adopt(vec![key.pid]).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    pid = key.pid,
                    adopted = n,
                    "exec children forked before tracking adopted"
                ),
                Err(e) => {
                    tracing::warn!(pid = key.pid, error = %e, "cannot adopt the exec's early children")
                }
            }
        }
        if !host::alive(key) {
            let _ = self.bpf.untrack(key.pid).await;
            return false;
        }
        true
    }

    /// containerd saw a process end. The kernel's exit event normally ended the session
    /// already; this catches an exit the kernel had to drop.
    async fn exec_exited(&mut self, container_id: &str, id: &str, pid: u32, exit_status: u32) {
        let Some(s) = self.kube_exec.sessions.by_exec(container_id, id) else {
            return;
        };
        if s.pid != pid
            || host::alive(ProcKey {
                pid,
                start_ticks: crate::bpf::tasks::ns_to_ticks(s.start_ns),
            })
        {
            return;
        }
        let sid = s.id;
        // containerd's exit_status is the exit code, or 128 + the signal.
        let status = match exit_status {
            s if s > 128 => ExitStatus::Signal((s - 128) as i32),
            s => ExitStatus::Code(s as i32),
        };
        self.end_exec_session(sid, status).await;
    }

    /// A kernel exec event in an exec session: counted and audited with the pod's fields. True
    /// when `origin` belongs to one.
    pub(super) async fn kube_exec_command(&mut self, exec: &Exec) -> bool {
        let node = self.node();
        if self.kube_exec.refused.contains(&exec.origin.conn_id) {
            tracing::info!(pid = exec.origin.pid, argv = ?exec.argv, killed = exec.killed.is_some(), "a refused exec's process exec'd");
            return true;
        }
        let Some(s) = self.kube_exec.sessions.by_kernel_mut(exec.origin.conn_id) else {
            return false;
        };
        s.commands += 1;
        s.last_activity = OffsetDateTime::now_utc();
        self.counters.commands += 1;
        // runc's init became the exec's command: now the session is what the user asked for.
        let first = s.awaiting_exec && exec.origin.pid == s.pid;
        if first {
            s.awaiting_exec = false;
            s.command = exec.argv.join(" ");
            if exec.tty.is_some() {
                s.tty = exec.tty.clone();
            }
        }
        let id = s.id;
        if first {
            self.exec_command_known(id).await;
        }
        let Some(s) = self.kube_exec.sessions.get(id) else {
            return true;
        };
        let mut rec =
            AuditRecord::new(AuditEvent::Exec, OffsetDateTime::now_utc()).with_exec(s, &node);
        rec.pid = Some(exec.origin.pid);
        rec.uid = Some(exec.uid);
        rec.ppid = Some(exec.ppid);
        rec.filename = Some(exec.filename.clone());
        rec.argv = Some(exec.argv.clone());
        rec.argv_truncated = exec.argv_truncated;
        rec.cwd = exec.cwd.clone();
        if exec.tty.is_some() {
            rec.tty = exec.tty.clone();
        }
        if exec.killed.is_some() {
            rec = rec.reason(AuditReason::KilledAtExecTerminated, None);
        }
        self.audit_in_exec(id, rec);
        true
    }

    /// The command of session `id`, which was still runc's, is known (its exec, or
    /// [`AWAIT_COMMAND_AT_MOST`] passed): its channels are claimed, and unless containerd has
    /// yet to report it (`exec_reported` does it then), it starts.
    async fn exec_command_known(&mut self, id: u64) {
        let reported = !self.kube_exec.unreported.contains_key(&id);
        if reported {
            self.audit_exec_started(id);
        }
        self.claim_exec_channels(id).await;
        if reported {
            self.start_exec_recording(id);
        }
    }

    /// Sessions still awaiting their command [`AWAIT_COMMAND_AT_MOST`] after they started
    /// start as they are: runc's own stages exec the command within milliseconds, and a
    /// command line is the user's to choose (`kubectl exec … -- ./runc init` looks like runc's
    /// init), so waiting on would leave such a session unrecorded and unidentified.
    pub(super) async fn start_overdue_commands(&mut self) {
        let now = OffsetDateTime::now_utc();
        let overdue: Vec<u64> = self
            .kube_exec
            .sessions
            .iter_mut()
            .filter(|s| s.awaiting_exec && now - s.started_at >= AWAIT_COMMAND_AT_MOST)
            .map(|s| {
                s.awaiting_exec = false;
                tracing::warn!(session = s.id, pid = s.pid, command = %s.command, "an exec still looked like runc's own after a second; started as it is");
                s.id
            })
            .collect();
        for id in overdue {
            self.exec_command_known(id).await;
        }
    }

    /// A kernel exit event in an exec session: the process's `exit` record, and the session's
    /// end when it is the exec's own process. True when `origin` belongs to one.
    pub(super) async fn kube_exec_exit(
        &mut self,
        origin: &EventOrigin,
        status: u32,
        flags: u32,
    ) -> bool {
        let node = self.node();
        let root = flags & TASK_SESSION_LEADER != 0 && origin.tid as u64 == origin.session_id;
        if self.kube_exec.refused.contains(&origin.conn_id) {
            if root {
                self.kube_exec.refused.remove(&origin.conn_id);
            }
            return true;
        }
        let Some(s) = self.kube_exec.sessions.by_kernel(origin.conn_id) else {
            return false;
        };
        let status = ExitStatus::from_wait(status);
        let mut rec = AuditRecord::new(AuditEvent::Exit, OffsetDateTime::now_utc())
            .with_exec(s, &node)
            .exit_status(status);
        rec.pid = Some(origin.pid);
        let (id, ended) = (s.id, root && origin.pid == s.pid);
        self.audit_in_exec(id, rec);
        if ended {
            self.end_exec_session(id, status).await;
        }
        true
    }

    /// The session's root ended: `session_ended` (reason `exited`, or `killed` after `kill
    /// session`, with how it ended).
    pub(super) async fn end_exec_session(&mut self, id: u64, status: ExitStatus) {
        if let Some(u) = self.kube_exec.unreported.get_mut(&id) {
            // Ends once containerd has said which exec it was (`kube_hold`).
            u.ended = Some(status);
            return;
        }
        if self
            .kube_exec
            .sessions
            .get(id)
            .is_some_and(|s| s.awaiting_exec)
        {
            // Ended before its command ran (runc could not exec it): it still started.
            self.audit_exec_started(id);
        }
        let Some(s) = self.kube_exec.sessions.remove(id) else {
            return;
        };
        if s.identifying {
            self.await_identity_of_ended(&s);
        }
        self.forget_exec_identity(&s);
        self.release_exec_channels(id, s.kernel_id, s.channels.clone())
            .await;
        // A session being ended (kill, lock, idle cut) has its whole identity killed by that
        // kill already: what the shell left is no orphan (cutting it too wrote a second
        // `session_killed` when the shell's exit overtook the kill walk; seen in a full run).
        if self.config.kubernetes.cut_orphans && !self.kube_exec.killing.contains_key(&id) {
            self.cut_exec_orphans(&s).await;
        }
        let now = OffsetDateTime::now_utc();
        let reason = self
            .kube_exec
            .killing
            .remove(&id)
            .unwrap_or(AuditReason::Exited);
        tracing::info!(session = id, pod = %s.meta.pod, exec = %s.exec_id, reason = %reason, "kubectl exec session ended");
        let mut rec = AuditRecord::new(AuditEvent::SessionEnded, now)
            .with_exec(&s, &self.node())
            .exit_status(status)
            .reason(reason, None);
        rec.pid = Some(s.pid);
        rec.duration_secs = Some((now - s.started_at).as_seconds_f64().max(0.0));
        rec.commands = Some(s.commands);
        self.audit.record(rec);
        self.release_exec_grant(&s);
    }

    /// `kill session ID` of an exec session: every process carrying its identity (what it
    /// forked, setsid'd or double-forked included; never the pod's own processes, which the
    /// kernel does not track). `None` when no exec session has that id.
    pub(super) async fn kill_exec_session(
        &mut self,
        id: u64,
        peer: &Peer,
    ) -> Option<Result<u64, enforcer_proto::ErrorReply>> {
        Some(match self.kill_exec(id, AuditReason::Killed).await? {
            Ok((s, n)) => {
                let mut rec =
                    AuditRecord::new(AuditEvent::SessionKilled, OffsetDateTime::now_utc())
                        .with_exec(&s, &self.node())
                        .by(peer.uid, peer.pid)
                        .reason(AuditReason::KilledByOperator, None);
                rec.pid = Some(s.pid);
                rec.processes = Some(n);
                self.audit.record(rec);
                Ok(n)
            }
            Err(e) => Err(e),
        })
    }

    /// Kills every process of exec session `id`, whose `session_ended` then says `reason`:
    /// the session as it was, and how many processes were killed. `None`: no such session.
    pub(super) async fn kill_exec(
        &mut self,
        id: u64,
        reason: AuditReason,
    ) -> Option<Result<(ExecSession, u64), enforcer_proto::ErrorReply>> {
        let s = self.kube_exec.sessions.get(id)?.clone();
        self.kube_exec.killing.insert(id, reason);
        let target = KillTarget {
            conn_id: s.kernel_id,
            session_id: None,
        };
        Some(match self.bpf.kill(target).await {
            Ok(n) => Ok((s, n as u64)),
            Err(e) => {
                self.kube_exec.killing.remove(&id);
                Err(enforcer_proto::ErrorReply::new(
                    enforcer_proto::ErrorKind::Internal,
                    e.to_string(),
                ))
            }
        })
    }
}
