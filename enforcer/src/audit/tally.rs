//! Audit records counted by event and reason, for the metrics: every kill, refusal and idle
//! cut is audited, so counting records here gives those numbers without a hook at each site.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use super::AuditRecord;
use crate::core::audit::{AuditEvent, AuditReason};

/// Counts of audit records by (event, reason). Both are closed enums, so the table stays small
/// and counting never allocates once a pair has been seen.
#[derive(Debug, Default)]
pub struct AuditTally {
    counts: Mutex<HashMap<(AuditEvent, Option<AuditReason>), u64>>,
}

impl AuditTally {
    /// Counts one record.
    pub fn count(&self, rec: &AuditRecord) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((rec.event, rec.reason)).or_default() += 1;
    }

    /// A copy of the table: (event, reason or "") → count, by their names in the log.
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((event, reason), n)| {
                let reason = reason.map(AuditReason::as_str).unwrap_or_default();
                ((event.as_str().to_owned(), reason.to_owned()), *n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    #[test]
    fn counts_by_event_and_reason() {
        let t = AuditTally::default();
        let rec = |e: AuditEvent, r: Option<AuditReason>| {
            let rec = AuditRecord::new(e, OffsetDateTime::UNIX_EPOCH);
            match r {
                Some(r) => rec.reason(r, None),
                None => rec,
            }
        };
        let refused = AuditEvent::ConnectionRefused;
        t.count(&rec(refused, Some(AuditReason::UserLocked)));
        t.count(&rec(refused, Some(AuditReason::UserLocked)));
        t.count(&rec(refused, Some(AuditReason::MaxConnectionsPerUser)));
        t.count(&rec(AuditEvent::Exec, None));
        let c = t.counts();
        let get = |e: &str, r: &str| c.get(&(e.to_owned(), r.to_owned())).copied();
        assert_eq!(get("connection_refused", "user_locked"), Some(2));
        assert_eq!(
            get("connection_refused", "max_connections_per_user"),
            Some(1)
        );
        assert_eq!(get("exec", ""), Some(1));
        assert_eq!(c.len(), 3);
    }
}
