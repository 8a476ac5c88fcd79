//! Fleet-wide session limits (`[fleet] max_sessions_per_user`). A session is counted in the
//! kernel the moment sshd starts it, which cannot wait for etcd; so its fleet-wide slot is
//! taken right after (the same exact transaction as connection slots) and a session that gets
//! none is told why and killed, typically before its shell has read a byte of input. Slots
//! are freed when the session or its connection ends, or with the node's lease.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::KillTarget,
    config::OnUnreachable,
    core::{
        conn::Connection,
        fleet::{self as core_fleet, ViewState},
    },
    fleet::SlotOutcome,
    host,
};

/// How long a session's slot may take before `on_unreachable` decides.
const SESSION_SLOT_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Session slots held here: session id → user.
pub(super) type SessionSlots = HashMap<u64, String>;

impl State {
    /// A session started (`session_id` in the registry): take its fleet-wide slot if the
    /// user has a fleet session limit.
    pub(super) fn fleet_session_started(&mut self, conn_id: u64, session_id: u64) {
        let (Some(f), Some(c)) = (&self.fleet, self.registry.get(conn_id)) else {
            return;
        };
        if !c.enforced {
            return;
        }
        let limit = core_fleet::fleet_session_limit(&self.config, c.who());
        let stale = core_fleet::view_state(f.view_age(), self.config.fleet.stale_after.0)
            == ViewState::Stale;
        if limit == 0 || stale {
            return;
        }
        f.acquire_session(
            c.account(),
            conn_id,
            session_id,
            limit,
            SESSION_SLOT_DEADLINE,
        );
    }

    /// A session ended: free its slot.
    pub(super) fn fleet_session_ended(&mut self, session_id: u64) {
        if let (Some(f), Some(user)) = (
            &self.fleet,
            self.fleet_state.session_slots.remove(&session_id),
        ) {
            f.release_session(&user, session_id);
        }
    }

    /// A connection ended: free its sessions' slots.
    pub(super) fn fleet_sessions_released(&mut self, conn: &Connection) {
        for id in conn.sessions.keys() {
            self.fleet_session_ended(id);
        }
    }

    /// A session slot's outcome: keep the session, or end it.
    pub(super) fn on_session_slot(&mut self, conn_id: u64, session_id: u64, outcome: SlotOutcome) {
        let session = self.registry.get(conn_id).and_then(|c| {
            c.sessions.get(session_id).map(|s| {
                (
                    c.user.clone(),
                    c.account().to_owned(),
                    core_fleet::fleet_session_limit(&self.config, c.who()),
                    s.leader_pid,
                    s.kernel_id,
                    c.monitor.pid,
                )
            })
        });
        let Some((user, account, limit, leader, kernel_id, monitor)) = session else {
            // Ended meanwhile: free a slot it got.
            if let (SlotOutcome::Taken, Some(f), Some(c)) =
                (&outcome, &self.fleet, self.registry.get(conn_id))
            {
                f.release_session(c.account(), session_id);
            }
            return;
        };
        let (reason, what) = match outcome {
            SlotOutcome::Taken => {
                self.fleet_state.session_slots.insert(session_id, account);
                return;
            }
            // (A session slot is asked with its limit: never a bare count; refused if it were.)
            SlotOutcome::Full { .. } | SlotOutcome::Counted(_) => (
                AuditReason::FleetMaxSessionsPerUser,
                format!(
                    "user {user} already has {limit} of {limit} allowed sessions across the fleet"
                ),
            ),
            SlotOutcome::Unreachable(why) => {
                tracing::warn!(conn = conn_id, session = session_id, error = %why, "no fleet-wide session slot: etcd did not answer");
                if self.config.fleet.on_unreachable == OnUnreachable::BestEffort {
                    return;
                }
                (
                    AuditReason::FleetUnreachable,
                    "the fleet's lock service cannot be reached; try again later".into(),
                )
            }
        };
        let message = format!("enforcer: session refused: {what}");
        self.counters.sessions_refused += 1;
        let mut rec = AuditRecord::new(AuditEvent::SessionRefused, OffsetDateTime::now_utc())
            .reason(reason, Some(message.clone()));
        if let Some(c) = self.registry.get(conn_id) {
            rec = rec.with_conn(c);
            if let Some(s) = c.sessions.get(session_id) {
                rec = rec.with_session(s);
            }
        }
        self.audit.record(rec);
        let bpf = self.bpf.clone();
        let target = KillTarget {
            conn_id,
            session_id: Some(kernel_id),
        };
        tokio::spawn(async move {
            let line = format!("\r\n{message}\r\n");
            // The answer can come before the session's command runs (see `await_exec`).
            let _ = tokio::task::spawn_blocking(move || {
                host::await_exec(leader, monitor, std::time::Duration::from_secs(1));
                host::tell(leader, &line)
            })
            .await;
            // sshd forwards the line before it sees the session end (seen lost without).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if let Err(e) = bpf.kill(target).await {
                tracing::warn!(?target, error = %e, "cannot end a session over the fleet limit");
            }
        });
    }
}
