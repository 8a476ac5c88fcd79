//! Control of `kubectl exec` sessions while this node carries the enforcement label: the
//! limits and locks an exec is admitted against when containerd reports it, pod and
//! namespace locks (`enforcerctl lock pod|namespace`), and the idle cut. The decisions are
//! `core::kube`'s; here they are applied: the exec's client is told why on its stream (its
//! stderr: the pty or the pipe the shim reads), then everything the session started is
//! killed.

use std::time::Duration;

use enforcer_proto::{ErrorKind, ErrorReply, KubeLockKind, LockInfo, LockRequest, UnlockRequest};
use time::OffsetDateTime;

use super::{
    idle::{MESSAGE_GRACE, idle_cut, idle_warning},
    lockout::kill_and_audit,
    state::State,
};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::KillTarget,
    control::Peer,
    core::{
        kube::{
            ExecDecision, ExecLocks, ExecRefusal, PodRef,
            exec::ExecSession,
            exec_limits,
            idle::{IdleStep, Observed, idle_step},
            lock::ExecLockTarget,
        },
        lock::Lock,
    },
    host,
    locks::LockStore,
};

/// How often exec sessions' stdin is looked at for input (the idle cut lands within this of
/// the timeout, plus the terminal clock's 8 s resolution).
const EXEC_IDLE_EVERY: Duration = Duration::from_secs(1);

fn bad_request(m: String) -> ErrorReply {
    ErrorReply::new(ErrorKind::BadRequest, m)
}

fn exec_lock_name(file: &str) -> Result<(), String> {
    ExecLockTarget::from_file_name(file).map(|_| ())
}

impl State {
    /// The pod and namespace lock files.
    fn exec_lock_store(&self) -> LockStore {
        LockStore::with_names(&self.config.kubernetes.locks_dir, exec_lock_name)
    }

    /// The exec locks in force now (read from disk, so a file dropped a moment ago counts).
    fn exec_locks(&self, now: OffsetDateTime) -> ExecLocks {
        ExecLocks::of(
            self.exec_lock_store()
                .list()
                .into_iter()
                .filter(|l| l.active(now))
                .filter_map(|l| ExecLockTarget::from_file_name(&l.user).ok()),
        )
    }

    /// Whether one more exec session may start in `pod` (`core::kube::admit_exec`).
    pub(super) fn exec_decision(&self, pod: &PodRef) -> ExecDecision {
        let Some(k) = &self.kube else {
            return ExecDecision::Unenforced;
        };
        let locks = self.exec_locks(OffsetDateTime::now_utc());
        crate::core::kube::admit_exec(
            &k.gate,
            &self.config.kubernetes,
            &self.kube_exec.sessions.census(),
            &locks,
            pod,
        )
    }

    /// An exec over a limit or in a locked pod: never listed as a session; its client reads
    /// why, then it is killed with anything it forked. Its command never runs: the kernel
    /// holds it at its exec (`kube_hold`), or, while nothing holds execs, kills it there
    /// (tracked with `TASK_REFUSED`).
    pub(super) fn refuse_exec(&mut self, s: ExecSession, r: ExecRefusal) {
        let node = self.node();
        let message = r.message(&s.meta.pod, &node);
        tracing::info!(pod = %s.meta.pod, exec = %s.exec_id, pid = s.pid, reason = %r.reason(), "kubectl exec refused");
        let mut rec = AuditRecord::new(AuditEvent::SessionRefused, OffsetDateTime::now_utc())
            .with_exec(&s, &node)
            .reason(r.reason(), Some(message.clone()));
        rec.limit = r.limit();
        rec.pid = Some(s.pid);
        if s.awaiting_exec {
            // Still runc's init: the kernel kills it at its exec, the command never runs.
            rec.command = None;
        }
        self.audit.record(rec);
        self.counters.sessions_refused += 1;
        self.kube_exec.refused.insert(s.kernel_id);
        let bpf = self.bpf.clone();
        let (pid, kernel_id) = (s.pid, s.kernel_id);
        tokio::spawn(async move {
            let text = format!("\r\n{message}\r\n");
            let told = tokio::task::spawn_blocking(move || host::tell_and_kill(pid, &text)).await;
            if let Ok(Err(e)) = told {
                tracing::warn!(pid, error = %e, "could not show the exec's refusal to its client");
            }
            let target = crate::bpf::KillTarget {
                conn_id: kernel_id,
                session_id: None,
            };
            if let Err(e) = bpf.kill(target).await {
                tracing::warn!(pid, error = %e, "cannot kill what a refused exec started");
            }
        });
    }

    /// An exec whose process was gone by the time containerd's report reached us (a command
    /// that ran for milliseconds): still audited, as started and ended, saying what is not
    /// known. A re-listing cannot report a gone process, so this is written once per exec.
    pub(super) fn exec_ended_before_tracking(&mut self, s: crate::kube::ExecStart) {
        tracing::info!(pid = s.pid, pod = %s.meta.pod, exec = %s.exec_id, "kubectl exec ended before it could be followed");
        let now = OffsetDateTime::now_utc();
        let session = ExecSession::new(
            (self.registry.reserve_session_id(), 0),
            s.exec_id,
            s.meta,
            (s.pid, 0),
            now,
        );
        self.dirty = true;
        let node = self.node();
        if self.kube_exec.broken.remove(&session.pid).is_some() {
            // Not a session that ended: one the kernel stopped from starting anything.
            let message = format!(
                "enforcer: exec refused: a process of pod {} resumed its command before enforcerd's decision",
                session.meta.pod
            );
            let mut rec = AuditRecord::new(AuditEvent::SessionRefused, now)
                .with_exec(&session, &node)
                .reason(AuditReason::ExecHoldBroken, Some(message));
            rec.conn_id = None;
            rec.command = None;
            rec.pid = Some(session.pid);
            self.audit.record(rec);
            self.counters.sessions_refused += 1;
            return;
        }
        self.counters.sessions_started += 1;
        let message = "ended before enforcerd could follow it: its commands are not known";
        for event in [AuditEvent::SessionStarted, AuditEvent::SessionEnded] {
            let mut rec = AuditRecord::new(event, now).with_exec(&session, &node);
            rec.conn_id = None;
            rec.command = None;
            rec.pid = Some(session.pid);
            rec.message = Some(message.into());
            if event == AuditEvent::SessionEnded {
                rec.reason = Some(AuditReason::Exited);
            }
            self.audit.record(rec);
        }
    }

    /// Tells an exec session's client why it ends, and kills it after [`MESSAGE_GRACE`]
    /// (`record` is completed with the session and the number of processes killed).
    fn end_exec(&mut self, id: u64, why: AuditReason, message: String, record: AuditRecord) {
        let Some(s) = self.kube_exec.sessions.get(id) else {
            return;
        };
        if self.kube_exec.killing.contains_key(&id) {
            return;
        }
        self.kube_exec.killing.insert(id, why);
        let mut rec = record.with_exec(s, &self.node());
        rec.pid = Some(s.pid);
        let (pid, kernel_id) = (s.pid, s.kernel_id);
        let (bpf, audit) = (self.bpf.clone(), self.audit.clone());
        tokio::spawn(async move {
            let text = format!("\r\n{message}\r\n");
            let _ = tokio::task::spawn_blocking(move || host::tell(pid, &text)).await;
            tokio::time::sleep(MESSAGE_GRACE).await;
            if let Err(e) = kill_and_audit(bpf, audit, kernel_id, rec).await {
                tracing::warn!(pid, error = %e.message, "cannot end the exec session");
            }
        });
    }

    /// `enforcerctl lock pod NS/NAME | namespace NS`: written to `[kubernetes] locks_dir`; the
    /// exec sessions it covers end at once, new ones are refused.
    pub(super) async fn lock_exec(
        &mut self,
        req: LockRequest,
        peer: &Peer,
    ) -> Result<LockInfo, ErrorReply> {
        if self.kube.is_none() {
            return Err(kube_off());
        }
        let target = exec_lock_target(req.kube, &req.user)?;
        let now = OffsetDateTime::now_utc();
        let store = self.exec_lock_store();
        let file = target.file_name();
        if store.get(&file).is_some_and(|l| l.active(now)) && !req.replace {
            return Err(bad_request(format!(
                "{} {} is locked already; use --replace to change its reason and expiry",
                target.kind(),
                target.name()
            )));
        }
        let ttl = req.ttl_secs.map(Duration::from_secs);
        let lock = Lock::new(
            &file,
            req.reason.clone(),
            ttl,
            super::locking::operator(peer),
            now,
        );
        store
            .put(&lock)
            .map_err(|e| ErrorReply::new(ErrorKind::Internal, e.to_string()))?;
        let mut rec = AuditRecord::new(AuditEvent::Lock, now)
            .by(peer.uid, peer.pid)
            .reason(AuditReason::Locked, req.reason.clone());
        set_target(&mut rec, &target);
        rec.expires = lock.info(now).expires;
        self.audit.record(rec);
        let (why, refusal) = match target {
            ExecLockTarget::Pod(_) => (AuditReason::PodLocked, ExecRefusal::PodLocked),
            ExecLockTarget::Namespace(_) => {
                (AuditReason::NamespaceLocked, ExecRefusal::NamespaceLocked)
            }
        };
        let covered: Vec<(u64, PodRef)> = self
            .kube_exec
            .sessions
            .iter()
            .filter(|s| target.covers(&s.meta.pod))
            .map(|s| (s.id, s.meta.pod.clone()))
            .collect();
        let node = self.node();
        for (id, pod) in covered {
            let message = refusal
                .message(&pod, &node)
                .replace("exec refused", "exec session ended");
            let rec = AuditRecord::new(AuditEvent::SessionKilled, now)
                .by(peer.uid, peer.pid)
                .reason(why, req.reason.clone());
            self.end_exec(id, why, message, rec);
        }
        Ok(exec_lock_info(&lock, &target, now))
    }

    /// `enforcerctl unlock pod|namespace NAME`.
    pub(super) fn unlock_exec(
        &mut self,
        req: &UnlockRequest,
        peer: &Peer,
    ) -> Result<(), ErrorReply> {
        if self.kube.is_none() {
            return Err(kube_off());
        }
        let target = exec_lock_target(req.kube, &req.name)?;
        let removed = self
            .exec_lock_store()
            .remove(&target.file_name())
            .map_err(|e| ErrorReply::new(ErrorKind::Internal, e.to_string()))?;
        if !removed {
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!("{} {} is not locked", target.kind(), target.name()),
            ));
        }
        let mut rec =
            AuditRecord::new(AuditEvent::Unlock, OffsetDateTime::now_utc()).by(peer.uid, peer.pid);
        set_target(&mut rec, &target);
        self.audit.record(rec);
        Ok(())
    }

    /// Pod and namespace locks as `locks` lists them.
    pub(super) fn exec_lock_infos(&self) -> Vec<LockInfo> {
        if self.kube.is_none() {
            return Vec::new();
        }
        let now = OffsetDateTime::now_utc();
        self.exec_lock_store()
            .list()
            .iter()
            .map(|l| match ExecLockTarget::from_file_name(&l.user) {
                Ok(t) => exec_lock_info(l, &t, now),
                Err(_) => l.info(now),
            })
            .collect()
    }

    /// Looks at each exec session's stdin for input; warns sessions nearing
    /// `[kubernetes] idle_timeout` (after `[idle] warn_before`) and ends those past it. Only
    /// while the label is present (as every exec control).
    pub(super) fn check_exec_idle(&mut self) {
        let now = tokio::time::Instant::now();
        if self.kube_exec.sessions.is_empty()
            || self
                .kube_exec
                .idle_checked
                .is_some_and(|t| now - t < EXEC_IDLE_EVERY)
        {
            return;
        }
        self.kube_exec.idle_checked = Some(now);
        let enforced = self.kube.as_ref().is_some_and(|k| k.gate.exec_enforced());
        let wall = OffsetDateTime::now_utc();
        let warn_before = self.config.idle.warn_before.0;
        let mut warn = Vec::new();
        let mut cut = Vec::new();
        for s in self.kube_exec.sessions.iter_mut() {
            if let Some(t) = host::stdin_times(s.pid) {
                match s.input.observe(t) {
                    Observed::Input(at) => {
                        s.idle_warned = false;
                        s.last_activity = s.last_activity.max(at);
                    }
                    Observed::Tampered => {
                        tracing::warn!(session = s.id, pod = %s.meta.pod, pid = s.pid, "an exec's terminal times were set by hand; not taken as input");
                    }
                    Observed::Nothing => {}
                }
            }
            if !enforced || self.kube_exec.killing.contains_key(&s.id) {
                continue;
            }
            let timeout = exec_limits(&self.config.kubernetes, &s.meta.pod.namespace)
                .idle_timeout
                .0;
            match idle_step(
                s.input.last_input,
                timeout,
                warn_before,
                s.idle_warned,
                wall,
            ) {
                IdleStep::Nothing => {}
                IdleStep::Warn(left) => {
                    s.idle_warned = true;
                    warn.push((s.pid, left));
                }
                IdleStep::Cut(idle) => cut.push((s.id, idle, timeout)),
            }
        }
        for (pid, left) in warn {
            let text = format!("\r\n{}\r\n", idle_warning("exec session", left));
            tokio::task::spawn_blocking(move || {
                if let Err(e) = host::tell(pid, &text) {
                    tracing::debug!(pid, error = %e, "idle warning not delivered");
                }
            });
        }
        for (id, idle, timeout) in cut {
            let (message, rec) = idle_cut("exec session", idle, timeout, wall);
            self.end_exec(id, AuditReason::IdleTimeout, message, rec);
        }
    }
}

/// What `lock`/`unlock pod|namespace NAME` names.
fn exec_lock_target(kind: Option<KubeLockKind>, name: &str) -> Result<ExecLockTarget, ErrorReply> {
    match kind {
        Some(KubeLockKind::Pod) => ExecLockTarget::pod(name),
        _ => ExecLockTarget::namespace(name),
    }
    .map_err(bad_request)
}

fn kube_off() -> ErrorReply {
    bad_request(
        "pod and namespace locks need [kubernetes] enabled = true in the daemon's config".into(),
    )
}

fn set_target(rec: &mut AuditRecord, target: &ExecLockTarget) {
    match target {
        ExecLockTarget::Namespace(ns) => rec.namespace = Some(ns.clone()),
        ExecLockTarget::Pod(p) => {
            rec.namespace = Some(p.namespace.clone());
            rec.pod = Some(p.name.clone());
        }
    }
}

fn exec_lock_info(lock: &Lock, target: &ExecLockTarget, now: OffsetDateTime) -> LockInfo {
    let mut info = lock.info(now);
    info.user = target.name();
    info.target = Some(target.kind().into());
    info
}

impl State {
    /// The session's own process ended: its client has the exit status and is gone. What it
    /// left running still carries its kernel identity (however it forked or setsid'd); it is
    /// killed and audited (`session_killed`, reason `exec_orphans`).
    pub(super) async fn cut_exec_orphans(&mut self, s: &ExecSession) {
        let target = KillTarget {
            conn_id: s.kernel_id,
            session_id: None,
        };
        let n = match self.bpf.kill(target).await {
            Ok(0) => return,
            Ok(n) => n as u64,
            Err(e) => {
                tracing::warn!(session = s.id, error = %e, "cannot kill what the exec session left running");
                return;
            }
        };
        tracing::info!(session = s.id, pod = %s.meta.pod, processes = n, "processes an ended exec session left running were killed");
        let mut rec = AuditRecord::new(AuditEvent::SessionKilled, OffsetDateTime::now_utc())
            .with_exec(s, &self.node())
            .reason(
                AuditReason::ExecOrphans,
                Some(format!(
                    "the exec's own process ended; {n} processes it left running were killed"
                )),
            );
        rec.pid = Some(s.pid);
        rec.processes = Some(n);
        self.audit.record(rec);
    }
}
