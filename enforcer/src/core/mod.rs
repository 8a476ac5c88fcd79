//! The pure core: what a connection is, who may log in, what a lock says. No I/O here — the
//! daemon feeds in what it read from the kernel, /proc and disk, and acts on the answers.

pub mod audit;
pub mod conn;
pub mod control;
pub mod fleet;
pub mod forward;
pub mod identity;
pub mod idle;
pub mod kube;
pub mod lock;
pub mod policy;
pub mod reload;
pub mod session;
pub mod sweep;
pub mod transfer;
pub mod upload;

/// RFC 3339 in UTC, as every time enforcer shows or logs is written.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
