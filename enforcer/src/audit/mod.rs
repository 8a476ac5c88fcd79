//! The audit log: one JSON object per line (and, when available, one journald entry) per event.
//! Field names are stable and documented in README.md.

pub mod history;
mod record;
mod sink;
mod tally;

pub use crate::core::audit::{AuditEvent, AuditReason};
pub use record::AuditRecord;
pub use sink::{AuditCounters, AuditError, AuditSink};
pub use tally::AuditTally;
