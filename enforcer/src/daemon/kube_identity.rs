//! The Kubernetes user behind each `kubectl exec` session (`[kubernetes]` with `[fleet]`): the
//! fleet is asked once the session's command is known (`fleet::exec_grants` matches it to the
//! admission webhook's grant and claims it), the answer is audited as `exec_identified`, and
//! the session's later records carry `kube_user` and `kube_groups`. A lock of that user — the
//! fleet's or this node's — ends the session. An ask etcd did not answer is made again,
//! backing off, while the session lives and a minute after it ended
//! (`core::kube::identify`): a stalled etcd must not leave a session without its user.

use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    core::kube::{
        admission::{ExecGrant, GrantQuery, KubeIdentity, Subresource},
        exec::ExecSession,
        identify::{ENDED_WAIT, ask_again_after},
    },
    fleet::GrantOutcome,
};

/// The grant each identified live exec session was matched to, by [`identity_key`].
pub(super) type ExecIdentities = std::collections::BTreeMap<String, ExecGrant>;

/// An exec's key in [`ExecIdentities`]: its container and containerd's exec id.
fn identity_key(container_id: &str, exec_id: &str) -> String {
    format!("{container_id}/{exec_id}")
}

impl State {
    /// Asks the fleet who exec session `id` is (nothing without `[fleet]`).
    pub(super) fn identify_exec(&mut self, id: u64) {
        let (Some(f), Some(s)) = (&self.fleet, self.kube_exec.sessions.get_mut(id)) else {
            return;
        };
        if s.identity.is_some() {
            // Found again after a restart, identified by the run before.
            return;
        }
        s.identifying = true;
        f.identify_exec(id, &s.exec_id, grant_query(s));
    }

    /// Asks again about sessions whose wait after an unanswered ask is over.
    pub(super) fn ask_again_due(&mut self) {
        if self.kube_exec.reask.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let k = &mut self.kube_exec;
        k.reask.retain(|id, (due, _)| {
            let session = k
                .sessions
                .get(*id)
                .or_else(|| k.ended_identifying.get(id).map(|(s, _)| s));
            let (Some(f), Some(s)) = (&self.fleet, session) else {
                // Gone: ended longer ago than it waits for an answer.
                return false;
            };
            if due.is_some_and(|at| at <= now) {
                *due = None;
                f.identify_exec(*id, &s.exec_id, grant_query(s));
            }
            true
        });
    }

    /// etcd did not answer `why` about session `id`, which `failures` asks have now met: true
    /// when it is asked again later (the first such silence is audited, so the session's
    /// record says why it has no user yet), false when this answer is its last.
    fn ask_again_later(&mut self, id: u64, failures: u32, why: &str) -> bool {
        let (s, ended_for) = match (
            self.kube_exec.sessions.get(id),
            self.kube_exec.ended_identifying.get(&id),
        ) {
            (Some(s), _) => (s, None),
            (None, Some((s, at))) => (s, Some(at.elapsed())),
            (None, None) => return false,
        };
        let Some(wait) = ask_again_after(failures, ended_for) else {
            return false;
        };
        if failures == 1 {
            tracing::warn!(session = id, exec = %s.exec_id, error = why, "etcd did not say who a kubectl exec session is; asked again until it does");
            let rec = self.identified_record(
                s,
                Some((
                    AuditReason::FleetUnreachable,
                    format!(
                        "etcd did not answer: {why}; asked again until it does (meanwhile the session counts against no user and a lock of its user does not end it)"
                    ),
                )),
            );
            self.audit.record(rec);
        } else {
            tracing::debug!(
                session = id,
                failures,
                error = why,
                "etcd still silent about a kubectl exec session's user"
            );
        }
        self.kube_exec
            .reask
            .insert(id, (Some(tokio::time::Instant::now() + wait), failures));
        true
    }

    /// The `exec_identified` record of session `s`, with why it has no user (`None`: it has).
    fn identified_record(
        &self,
        s: &ExecSession,
        why: Option<(AuditReason, String)>,
    ) -> AuditRecord {
        let mut rec = AuditRecord::new(AuditEvent::ExecIdentified, OffsetDateTime::now_utc())
            .with_exec(s, &self.node());
        rec.pid = Some(s.pid);
        if let Some((reason, message)) = why {
            rec = rec.reason(reason, Some(message));
        }
        rec
    }

    /// The fleet's answer for exec session `id` (live, or ended while it was asked).
    pub(super) async fn on_exec_identified(&mut self, id: u64, outcome: GrantOutcome) {
        let failures = self.kube_exec.reask.remove(&id).map_or(0, |(_, n)| n);
        if let GrantOutcome::Unreachable(why) = &outcome
            && self.ask_again_later(id, failures + 1, why)
        {
            return;
        }
        let identity = match &outcome {
            GrantOutcome::Identified(g) => Some(KubeIdentity::from(g)),
            _ => None,
        };
        let (s, live) = match self.kube_exec.sessions.get_mut(id) {
            Some(s) => {
                s.identifying = false;
                s.identity = identity.clone();
                (s.clone(), true)
            }
            None => match self.kube_exec.ended_identifying.remove(&id) {
                Some((mut s, _)) => {
                    s.identity = identity.clone();
                    (s, false)
                }
                None => {
                    if let (GrantOutcome::Identified(g), Some(f)) = (&outcome, &self.fleet) {
                        f.release_exec_grant(&g.user, &g.review);
                    }
                    return;
                }
            },
        };
        let why = match &outcome {
            GrantOutcome::Identified(_) => None,
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
                format!(
                    "etcd did not answer: {e}; no longer asked: the session ended over {}s ago",
                    ENDED_WAIT.as_secs()
                ),
            )),
        };
        match &s.identity {
            Some(i) => {
                tracing::info!(session = id, exec = %s.exec_id, kube_user = %i.user, live, "kubectl exec session identified")
            }
            None => {
                tracing::warn!(session = id, exec = %s.exec_id, ?outcome, "kubectl exec session not identified")
            }
        }
        self.audit.record(self.identified_record(&s, why));
        if let Some(r) = &self.recorder {
            r.identified(id, identity.map(|i| (i.user, i.groups)));
        }
        if !live {
            // Ended before the answer: its grant stops counting at once.
            self.release_exec_grant(&s);
            return;
        }
        if let GrantOutcome::Identified(g) = outcome {
            self.kube_exec
                .identities
                .insert(identity_key(&s.meta.container_id, &s.exec_id), g);
            self.kube_exec.identities_dirty = true;
        }
        // Locked after the webhook let it through: ended now.
        self.end_if_user_locked(id).await;
    }

    /// Ends exec session `id` if the user behind it is locked (fleet or node).
    pub(super) async fn end_if_user_locked(&mut self, id: u64) {
        let now = OffsetDateTime::now_utc();
        let locked = self
            .kube_exec
            .sessions
            .get(id)
            .and_then(|s| s.identity.as_ref())
            .is_some_and(|i| self.lock_for(&i.user, None, now).is_some());
        if locked {
            self.end_locked_exec(id).await;
        }
    }

    /// Exec session `id`, found again after a restart, is who it was identified as before:
    /// its grant counts against its user again, under this run's lease.
    pub(super) fn restore_exec_identity(&mut self, id: u64) {
        let Some(s) = self.kube_exec.sessions.get_mut(id) else {
            return;
        };
        let key = identity_key(&s.meta.container_id, &s.exec_id);
        let Some(g) = self.kube_exec.identities.get_mut(&key) else {
            return;
        };
        if let Some(m) = g.matched.as_mut() {
            m.session = id;
        }
        s.identity = Some(KubeIdentity::from(&*g));
        tracing::info!(session = id, exec = %s.exec_id, kube_user = %g.user, "kubectl exec session found again; its Kubernetes user kept");
        if let Some(f) = &self.fleet {
            f.keep_exec_grant(g);
        }
        self.kube_exec.identities_dirty = true;
    }

    /// An exec session ended: who it was is no longer kept.
    pub(super) fn forget_exec_identity(&mut self, s: &ExecSession) {
        let key = identity_key(&s.meta.container_id, &s.exec_id);
        if self.kube_exec.identities.remove(&key).is_some() {
            self.kube_exec.identities_dirty = true;
        }
    }

    /// containerd listed every live exec: identities of execs that ended while enforcerd was
    /// down go.
    pub(super) fn forget_stale_exec_identities(&mut self) {
        let live: std::collections::HashSet<String> = self
            .kube_exec
            .sessions
            .iter()
            .map(|s| identity_key(&s.meta.container_id, &s.exec_id))
            .collect();
        let before = self.kube_exec.identities.len();
        self.kube_exec.identities.retain(|k, _| live.contains(k));
        if self.kube_exec.identities.len() != before {
            self.kube_exec.identities_dirty = true;
        }
    }

    /// Exec session `s` ended before the fleet said who it was: kept for the answer (its
    /// `exec_identified` follows its `session_ended`), a minute at most.
    pub(super) fn await_identity_of_ended(&mut self, s: &ExecSession) {
        let waiting = &mut self.kube_exec.ended_identifying;
        waiting.retain(|_, (_, at)| at.elapsed() < ENDED_WAIT);
        waiting.insert(s.id, (s.clone(), std::time::Instant::now()));
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

/// What the fleet is asked about exec session `s`.
fn grant_query(s: &ExecSession) -> GrantQuery {
    GrantQuery {
        namespace: s.meta.pod.namespace.clone(),
        pod: s.meta.pod.name.clone(),
        container: s.meta.container.clone(),
        command: s.command.clone(),
        tty: s.tty.is_some(),
        started_at: s.started_at,
    }
}
