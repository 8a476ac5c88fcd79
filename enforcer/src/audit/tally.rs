//! Audit records counted by event and reason, for the metrics: every kill, refusal and idle
//! cut is audited, so counting records here gives those numbers without a hook at each site.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use super::AuditRecord;

/// Counts of audit records: event → reason ("" when none) → count. Both come from fixed sets
/// in the code (never user input), so the table stays small.
#[derive(Debug, Default)]
pub struct AuditTally {
    counts: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl AuditTally {
    /// Counts one record (allocates only for a pair not seen before).
    pub fn count(&self, rec: &AuditRecord) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let event = match counts.get_mut(rec.event.as_str()) {
            Some(e) => e,
            None => counts.entry(rec.event.clone()).or_default(),
        };
        let reason = rec.reason.as_deref().unwrap_or_default();
        match event.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                event.insert(reason.to_owned(), 1);
            }
        }
    }

    /// A copy of the table: (event, reason) → count.
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .flat_map(|(event, reasons)| {
                reasons
                    .iter()
                    .map(move |(reason, n)| ((event.clone(), reason.clone()), *n))
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
        let rec = |e: &str, r: Option<&str>| {
            let rec = AuditRecord::new(e, OffsetDateTime::UNIX_EPOCH);
            match r {
                Some(r) => rec.reason(r, None),
                None => rec,
            }
        };
        t.count(&rec("connection_refused", Some("user_locked")));
        t.count(&rec("connection_refused", Some("user_locked")));
        t.count(&rec("connection_refused", Some("max_connections_per_user")));
        t.count(&rec("exec", None));
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
