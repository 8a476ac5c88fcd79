//! Execs the kernel holds before their command's first instruction (`ENF_HOLD_EXECS`, BPF
//! `gate`): each is resumed or refused before its command runs, so a refused command never
//! runs and an admitted one cannot fork before the kernel follows it.
//!
//! An exec in a container whose pod enforcerd knows (containerd told it when the container
//! was created or listed; the process's cgroup names the container) is decided at once, from
//! the hold event: admitted, followed, its stdio filed, and resumed — containerd's report of
//! the exec comes ~3 ms later (runc must exit and the shim publish first), and waiting for it
//! was most of what enforcement cost an exec's start. Until that report the session has no
//! exec id: its `session_started`, recording and the audit records of what it ran wait for it
//! ([`Unreported`]), and an end meanwhile is applied after them. An exec that would be
//! refused, or whose pod is not known, waits for the report as before (the refusal is told on
//! the exec's stream, which the report names). One nobody reports within [`HOLD_AT_MOST`]
//! runs on (a held exec must not hang forever): another containerd's, whose own enforcerd
//! (if any) decides on it first, or ours if containerd never says.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::{state::State, status::SweepTimer};
use crate::{
    audit::AuditRecord,
    bpf::tasks::ticks_to_ns,
    core::{
        conn::ProcKey,
        kube::{
            ExecDecision,
            exec::{
                ContainerMeta, ExecSession, Inserted, awaits_command, command_line,
                container_of_cgroup, tty_of_stdin,
            },
        },
        session::ExitStatus,
    },
    host,
    kube::ExecStart,
};

/// How long a held exec waits for a decision before it is let go, and how long an exec
/// admitted while held waits for containerd's report.
const HOLD_AT_MOST: Duration = Duration::from_secs(10);

/// Audit records an unreported session keeps for its report; more are written at once,
/// without the exec id (nothing is dropped).
const DEFERRED_RECORDS_MAX: usize = 256;

/// A session admitted while held, waiting for containerd's report of its exec.
pub(super) struct Unreported {
    /// When it is given up on: it then starts without an exec id.
    until: Instant,
    /// Its root ended meanwhile, so: ended once it started.
    pub ended: Option<ExitStatus>,
    /// Records of what it ran and what ended in it, written after its `session_started`.
    records: Vec<AuditRecord>,
}

impl State {
    /// Tells the kernel whether to hold exec commands: while exec sessions are controlled.
    /// Cleared when enforcerd stops (`stopping`): nobody would resume them.
    pub(super) async fn sync_exec_hold(&mut self, stopping: bool) {
        let on = !stopping && self.kube.as_ref().is_some_and(|k| k.gate.exec_enforced());
        if self.kube_exec.holding == Some(on) {
            return;
        }
        match self.bpf.hold_execs(on).await {
            Ok(()) => {
                tracing::info!(on, "kernel holds exec commands for a decision");
                self.kube_exec.holding = Some(on);
            }
            Err(e) => tracing::error!(on, error = %e, "cannot switch the kernel's exec hold"),
        }
    }

    /// The kernel stopped an exec's command at `held_at` (ns since boot).
    pub(super) async fn on_exec_held(&mut self, pid: u32, held_at: u64) {
        let timing = SweepTimer::start();
        let Some(key) = host::proc_key(pid) else {
            return;
        };
        let start_ns = ticks_to_ns(key.start_ticks);
        if self
            .kube_exec
            .sessions
            .iter()
            .any(|s| s.pid == pid && s.start_ns == start_ns)
        {
            // containerd's report came first and it was admitted; its stop may have been
            // taken only after that decision's resume looked.
            if resume(key) {
                tracing::info!(pid, "held exec resumed after its decision");
            }
            return;
        }
        // Another containerd's exec (a second enforcerd on the host holds it too) is that
        // enforcerd's to decide on: letting it go now would let it run before that decision.
        let ours =
            host::shim::started_by(pid, &self.config.kubernetes.containerd_socket) == Some(true);
        if ours && self.admit_held(key).await {
            self.sweeps.exec_holds.record_since(timing, held_at);
            return;
        }
        tracing::debug!(pid, ours, "exec held until containerd reports it");
        self.kube_exec
            .held
            .insert(pid, (key, Instant::now() + HOLD_AT_MOST, ours));
    }

    /// The kernel killed a task of the held exec `root`: a process of its pod resumed it.
    /// (One event per task killed; logged once per exec.)
    pub(super) fn on_hold_broken(&mut self, root: u32) {
        let now = Instant::now();
        self.kube_exec
            .broken
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        if self.kube_exec.broken.insert(root, now).is_none() {
            tracing::warn!(
                pid = root,
                "a held exec was resumed from inside its pod: the kernel killed it when it started something"
            );
        }
    }

    /// containerd reported the exec `key`: it is no longer waiting for that. Resumed unless
    /// `refused` (it is then told why and killed without running).
    pub(super) fn release_held(&mut self, key: ProcKey, refused: bool) {
        self.kube_exec.held.remove(&key.pid);
        if !refused {
            resume(key);
        }
    }

    /// Admits the held exec `key` now when its pod is known and nothing refuses it (true:
    /// decided, or it ended meanwhile). The session is listed and counted at once.
    async fn admit_held(&mut self, key: ProcKey) -> bool {
        let Some(meta) = self.held_container(key.pid) else {
            return false;
        };
        if let ExecDecision::Refuse(_) = self.exec_decision(&meta.pod) {
            // Refused once containerd names the exec: its client is told why on its stream.
            return false;
        }
        // Read while it is stopped at its command's exec: what it runs and its stdin.
        let (cmdline, stdin) = host::command_and_stdin(key.pid);
        // The exec held may be one of runc's own (its init re-executes itself from a memfd,
        // racing its parent's move of it into the container's cgroup; seen with an empty
        // command line): the session's command is then its next exec (`awaiting_exec`).
        let awaiting = awaits_command(&cmdline);
        if awaiting {
            tracing::debug!(
                pid = key.pid,
                "held at runc's init; the command is its next exec"
            );
        }
        let (kernel_id, id) = (
            self.registry.reserve_conn_id(),
            self.registry.reserve_session_id(),
        );
        // Stopped at its exec, it has not forked (a held task that forks is killed: `gate`).
        let unforked = host::stopped(key);
        if !self.track_exec(kernel_id, key, false, unforked).await {
            // Ended already: containerd's report finds no process and says so.
            return false;
        }
        let channels = self.file_exec_channels(id, kernel_id, key.pid, &[]).await;
        let session = ExecSession {
            command: command_line(&cmdline),
            tty: tty_of_stdin(&stdin),
            channels,
            awaiting_exec: awaiting,
            ..ExecSession::new(
                (id, kernel_id),
                String::new(),
                meta,
                (key.pid, ticks_to_ns(key.start_ticks)),
                OffsetDateTime::now_utc(),
            )
        };
        self.dirty = true;
        if self.kube_exec.sessions.insert(session) == Inserted::Known {
            return true;
        }
        self.kube_exec.unreported.insert(
            id,
            Unreported {
                until: Instant::now() + HOLD_AT_MOST,
                ended: None,
                records: Vec::new(),
            },
        );
        resume(key);
        tracing::debug!(
            pid = key.pid,
            session = id,
            "held exec admitted before containerd's report"
        );
        true
    }

    /// The pod of the container the held process `pid` is in, when our containerd told us.
    fn held_container(&self, pid: u32) -> Option<ContainerMeta> {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let id = container_of_cgroup(&cgroup)?;
        self.kube_exec.containers.get(id).cloned()
    }

    /// containerd told us a container's pod.
    pub(super) fn container_known(&mut self, meta: ContainerMeta) {
        // Entries go with the container's delete event; one missed during a disconnect stays.
        if self.kube_exec.containers.len() >= 16384 {
            self.kube_exec.containers.clear();
        }
        self.kube_exec
            .containers
            .insert(meta.container_id.clone(), meta);
    }

    /// The unreported session of exec process `pid` (the same process, when it still runs: a
    /// pid reused since is not it).
    pub(super) fn unreported_session(&self, pid: u32) -> Option<u64> {
        // Asked at every report: no /proc read while nothing waits for one.
        if self.kube_exec.unreported.is_empty() {
            return None;
        }
        let start_ns = host::proc_key(pid).map(|k| ticks_to_ns(k.start_ticks));
        self.kube_exec.unreported.keys().copied().find(|id| {
            self.kube_exec
                .sessions
                .get(*id)
                .is_some_and(|s| s.pid == pid && start_ns.is_none_or(|t| t == s.start_ns))
        })
    }

    /// An audit record of session `id`: kept for after its `session_started` while containerd
    /// has not reported it.
    pub(super) fn audit_in_exec(&mut self, id: u64, rec: AuditRecord) {
        match self.kube_exec.unreported.get_mut(&id) {
            Some(u) if u.records.len() < DEFERRED_RECORDS_MAX => u.records.push(rec),
            _ => self.audit.record(rec),
        }
    }

    /// containerd reported the exec of unreported session `id` (`None`: it never did within
    /// [`HOLD_AT_MOST`]): it starts as any exec session (audited, recorded, identified), then
    /// what it ran is written, and it ends if it has.
    pub(super) async fn exec_reported(&mut self, id: u64, report: Option<ExecStart>) {
        let (Some(u), Some(s)) = (
            self.kube_exec.unreported.remove(&id),
            self.kube_exec.sessions.get_mut(id),
        ) else {
            return;
        };
        match report {
            Some(r) => {
                if r.meta.container_id != s.meta.container_id {
                    tracing::error!(session = id, pid = s.pid, cgroup = %s.meta.container_id, containerd = %r.meta.container_id, "an exec's cgroup named another container than containerd does; containerd's is kept");
                    s.meta = r.meta;
                }
                s.exec_id = r.exec_id;
            }
            None => tracing::warn!(
                session = id,
                pid = s.pid,
                "containerd never reported this exec; it is audited without its exec id"
            ),
        }
        tracing::info!(session = id, pod = %s.meta.pod, container = %s.meta.container, exec = %s.exec_id, pid = s.pid, "kubectl exec session started");
        let (exec_id, awaiting) = (s.exec_id.clone(), s.awaiting_exec);
        self.counters.sessions_started += 1;
        // Still runc's init: it starts with its command's exec (`kube_exec_command`).
        if !awaiting {
            self.audit_exec_started(id);
            self.start_exec_recording(id);
        }
        for mut rec in u.records {
            rec.exec_id = Some(exec_id.clone());
            self.audit.record(rec);
        }
        match u.ended {
            Some(status) => self.end_exec_session(id, status).await,
            None => self.end_if_user_locked(id).await,
        }
    }

    /// Lets go of execs containerd has not reported for [`HOLD_AT_MOST`].
    pub(super) async fn release_overdue_holds(&mut self) {
        let now = Instant::now();
        let overdue: Vec<u64> = self
            .kube_exec
            .unreported
            .iter()
            .filter(|(_, u)| u.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.exec_reported(id, None).await;
        }
        self.start_overdue_commands().await;
        let overdue: Vec<(ProcKey, bool)> = self
            .kube_exec
            .held
            .values()
            .filter(|(_, until, _)| *until <= now)
            .map(|(key, _, ours)| (*key, *ours))
            .collect();
        for (key, ours) in overdue {
            self.kube_exec.held.remove(&key.pid);
            if resume(key) && ours {
                tracing::warn!(
                    pid = key.pid,
                    "containerd never reported this held exec: it runs on, not followed until it is"
                );
            }
        }
    }
}

/// Resumes `key` if it is still stopped; true when it was.
fn resume(key: ProcKey) -> bool {
    match host::resume_held(key) {
        Ok(true) => {
            tracing::debug!(pid = key.pid, "held exec resumed");
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(pid = key.pid, error = %e, "cannot resume a held exec");
            false
        }
    }
}
