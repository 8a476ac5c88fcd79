//! Requests the peer's role does not allow: refused, counted, and audited without letting a
//! flood of denials flood the audit log (the first of each uid at once, the rest summed up).

use std::time::Instant;

use enforcer_proto::{ErrorReply, Request};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    control::{Peer, authorize},
    core::control::{DenialAudit, DenialSummary},
};

impl State {
    /// Checks `req` against the peer's role, auditing a denial.
    pub(super) fn check(&mut self, req: &Request, peer: &Peer) -> Result<(), ErrorReply> {
        authorize(peer.role, req).map_err(|denied| self.denied(req, peer, denied))
    }

    /// Records a denied request and returns the denial. Every denial is counted; the audit log
    /// gets the first of each uid at once and the rest aggregated (`requests_denied_aggregated`).
    pub(super) fn denied(&mut self, req: &Request, peer: &Peer, denied: ErrorReply) -> ErrorReply {
        self.counters.requests_denied += 1;
        match self.denials.on_denial(peer.uid, Instant::now()) {
            DenialAudit::Aggregate => return denied,
            DenialAudit::Record(ended) => self.audit_denial_summaries(ended),
        }
        let mut rec = AuditRecord::new(AuditEvent::RequestDenied, OffsetDateTime::now_utc())
            .by(peer.uid, peer.pid)
            .reason(AuditReason::PermissionDenied, Some(denied.message.clone()));
        rec.request = Some(op_name(req).into());
        self.audit.record(rec);
        denied
    }

    pub(super) fn flush_denials(&mut self) {
        let ended = self.denials.flush(Instant::now());
        self.audit_denial_summaries(ended);
    }

    fn audit_denial_summaries(&mut self, summaries: impl IntoIterator<Item = DenialSummary>) {
        for s in summaries {
            let mut rec = AuditRecord::new(AuditEvent::RequestsDenied, OffsetDateTime::now_utc())
                .reason(
                    AuditReason::PermissionDenied,
                    Some(format!(
                        "{} more requests denied in {:.0} s after the one audited",
                        s.count,
                        s.window.as_secs_f64()
                    )),
                );
            rec.by_uid = Some(s.uid);
            rec.count = Some(s.count);
            self.audit.record(rec);
        }
    }
}

/// The snake_case name of a request, for the audit log.
fn op_name(req: &Request) -> &'static str {
    match req {
        Request::Status => "status",
        Request::PamAccount(_) => "pam_account",
        Request::PamOpenSession(_) => "pam_open_session",
        Request::PamCloseSession(_) => "pam_close_session",
        Request::Sessions => "sessions",
        Request::History(_) => "history",
        Request::Lock(_) => "lock",
        Request::Unlock { .. } | Request::UnlockTarget(_) => "unlock",
        Request::FleetSessions => "fleet_sessions",
        Request::Nodes => "nodes",
        Request::Locks => "locks",
        Request::KillSession { .. } => "kill_session",
        Request::KillConnection { .. } => "kill_connection",
        Request::Recordings { .. } => "recordings",
        Request::StoreRecordings { .. } => "store_recordings",
        Request::Play { .. } => "play",
        Request::Watch { .. } => "watch",
        Request::Reload => "reload",
    }
}
