//! Execs the kernel holds before their command's first instruction (`ENF_HOLD_EXECS`, BPF
//! `gate`): each is resumed or refused once containerd reports it, so a refused command never
//! runs and an admitted one cannot fork before the kernel follows it. One nobody reports
//! within [`HOLD_AT_MOST`] runs on (a held exec must not hang forever): another containerd's,
//! whose own enforcerd (if any) decides on it first, or ours if containerd never says.

use std::time::Duration;

use tokio::time::Instant;

use super::state::State;
use crate::{core::conn::ProcKey, host};

/// How long a held exec waits for a decision before it is let go.
const HOLD_AT_MOST: Duration = Duration::from_secs(10);

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

    /// The kernel stopped an exec's command.
    pub(super) fn on_exec_held(&mut self, pid: u32) {
        let Some(key) = host::proc_key(pid) else {
            return;
        };
        if self.kube_exec.sessions.iter().any(|s| s.pid == pid) {
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

    /// Lets go of execs containerd has not reported for [`HOLD_AT_MOST`].
    pub(super) fn release_overdue_holds(&mut self) {
        let now = Instant::now();
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
