//! The Kubernetes user behind each `kubectl exec` session (`[kubernetes]` with `[fleet]`): the
//! fleet is asked once the session's command is known (`fleet::exec_grants` matches it to the
//! admission webhook's grant and claims it), the answer is audited as `exec_identified`, and
//! the session's later records carry `kube_user` and `kube_groups`. A lock of that user — the
//! fleet's or this node's — ends the session.

use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    core::kube::{
        admission::{ExecGrant, GrantQuery, KubeIdentity, Subresource},
        exec::ExecSession,
    },
    fleet::GrantOutcome,
};

impl State {
    /// Asks the fleet who exec session `id` is (nothing without `[fleet]`).
    pub(super) fn identify_exec(&mut self, id: u64) {
        let (Some(f), Some(s)) = (&self.fleet, self.kube_exec.sessions.get_mut(id)) else {
            return;
        };
        s.identifying = true;
        let query = GrantQuery {
            namespace: s.meta.pod.namespace.clone(),
            pod: s.meta.pod.name.clone(),
            container: s.meta.container.clone(),
            command: s.command.clone(),
            tty: s.tty.is_some(),
            started_at: s.started_at,
        };
        f.identify_exec(id, &s.exec_id, query);
    }

    /// The fleet's answer for exec session `id`.
    pub(super) async fn on_exec_identified(&mut self, id: u64, outcome: GrantOutcome) {
        let now = OffsetDateTime::now_utc();
        let Some(s) = self.kube_exec.sessions.get_mut(id) else {
            // Ended meanwhile: the grant it claimed stops counting.
            if let (GrantOutcome::Identified(g), Some(f)) = (&outcome, &self.fleet) {
                f.release_exec_grant(&g.user, &g.review);
            }
            return;
        };
        s.identifying = false;
        let why = match &outcome {
            GrantOutcome::Identified(g) => {
                s.identity = Some(KubeIdentity::from(g));
                None
            }
            GrantOutcome::NoGrant => Some((
                AuditReason::ExecGrantNotFound,
                "no admission grant fits this exec: it did not pass the webhook".to_owned(),
            )),
            GrantOutcome::Ambiguous(n) => Some((
                AuditReason::ExecGrantAmbiguous,
                format!("{n} admission grants fit this exec alike; none is picked"),
            )),
            GrantOutcome::Unreachable(e) => Some((
                AuditReason::FleetUnreachable,
                format!("etcd did not answer: {e}"),
            )),
        };
        let s = s.clone();
        match &s.identity {
            Some(i) => {
                tracing::info!(session = id, exec = %s.exec_id, kube_user = %i.user, "kubectl exec session identified")
            }
            None => {
                tracing::warn!(session = id, exec = %s.exec_id, ?outcome, "kubectl exec session not identified")
            }
        }
        let mut rec = AuditRecord::new(AuditEvent::ExecIdentified, now).with_exec(&s, &self.node());
        rec.pid = Some(s.pid);
        if let Some((reason, message)) = why {
            rec = rec.reason(reason, Some(message));
        }
        self.audit.record(rec);
        self.start_exec_recording(id);
        // Locked after the webhook let it through: ended now.
        if let Some(i) = &s.identity
            && self.lock_for(&i.user, None, now).is_some()
        {
            self.end_locked_exec(id).await;
        }
    }

    /// A lock of `user` came into force: their identified exec sessions end.
    pub(super) async fn end_exec_sessions_of(&mut self, user: &str) {
        let ids: Vec<u64> = self
            .kube_exec
            .sessions
            .iter()
            .filter(|s| s.identity.as_ref().is_some_and(|i| i.user == user))
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.end_locked_exec(id).await;
        }
    }

    /// Kills everything exec session `id` runs; audited `session_killed`, reason
    /// `user_locked` (the session's end follows from its exit).
    async fn end_locked_exec(&mut self, id: u64) {
        match self.kill_exec(id, AuditReason::UserLocked).await {
            Some(Ok((s, processes))) => {
                let mut rec =
                    AuditRecord::new(AuditEvent::SessionKilled, OffsetDateTime::now_utc())
                        .with_exec(&s, &self.node())
                        .reason(AuditReason::UserLocked, None);
                rec.pid = Some(s.pid);
                rec.processes = Some(processes);
                self.audit.record(rec);
            }
            Some(Err(e)) => {
                tracing::error!(session = id, error = %e.message, "cannot end a locked user's exec session")
            }
            None => {}
        }
    }

    /// The admission webhook allowed an exec or attach on a pod of this node and no exec
    /// session here matched its grant: audited while exec sessions are enforced here (else
    /// none is matched, and every grant would be reported).
    pub(super) fn on_grant_lapsed(&self, g: &ExecGrant) {
        if !self.kube.as_ref().is_some_and(|k| k.gate.exec_enforced()) {
            return;
        }
        tracing::info!(review = %g.review, kube_user = %g.user, namespace = %g.namespace, pod = %g.pod, "admission grant expired unmatched");
        let mut rec = AuditRecord::new(AuditEvent::ExecGrantUnmatched, OffsetDateTime::now_utc());
        rec.node = Some(self.node());
        rec.kube_user = Some(g.user.clone());
        rec.kube_groups = Some(g.groups.clone());
        rec.namespace = Some(g.namespace.clone());
        rec.pod = Some(g.pod.clone());
        rec.container = g.container.clone();
        rec.command = (!g.command.is_empty()).then(|| g.command.join(" "));
        rec.since = Some(g.time.clone());
        rec.review = Some(g.review.clone());
        rec.message = Some(format!(
            "the admission webhook allowed {}{} on this pod and no exec session here matched it",
            match g.subresource {
                Subresource::Exec => "an exec",
                Subresource::Attach => "an attach",
            },
            if g.tty { " with a terminal" } else { "" }
        ));
        self.audit.record(rec);
    }

    /// An identified exec session ended: its grant stops counting against its user.
    pub(super) fn release_exec_grant(&self, s: &ExecSession) {
        if let (Some(f), Some(i)) = (&self.fleet, &s.identity) {
            f.release_exec_grant(&i.user, &i.review);
        }
    }
}
