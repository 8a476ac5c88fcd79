//! Ended connections (`enforcerctl history`), from the audit log.

use serde::{Deserialize, Serialize};

/// One ended connection, as its `connection_closed` audit record tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub conn_id: u64,
    pub user: String,
    /// Client address (`client_addr`, else PAM_RHOST).
    pub client: Option<String>,
    /// When the connection was admitted (RFC 3339, UTC).
    pub login: String,
    /// When it ended (RFC 3339, UTC).
    pub logout: String,
    pub duration_secs: f64,
    /// Why it ended (`logout`, `idle_timeout`, `user_locked`, …).
    pub reason: Option<String>,
    /// Key fingerprint, or certificate key id, behind the login.
    pub identity: Option<String>,
}

/// What `history` lists.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only this user's connections.
    pub user: Option<String>,
    /// RFC 3339: only connections that ended at or after this (were live since then).
    pub since: Option<String>,
}
