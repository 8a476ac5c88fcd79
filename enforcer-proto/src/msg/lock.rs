//! User locks.

use serde::{Deserialize, Serialize};

/// `enforcerctl lock user NAME [--ttl D] [--reason TEXT]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub user: String,
    /// Lock expires this many seconds from now; `None` = until unlocked.
    pub ttl_secs: Option<u64>,
    pub reason: Option<String>,
    /// Lock the name even though NSS does not know such a user (yet).
    #[serde(default)]
    pub force: bool,
    /// Replace an active lock's reason and expiry (without it, locking a locked user fails).
    #[serde(default)]
    pub replace: bool,
}

/// A lock as stored in `locks.dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub user: String,
    pub reason: Option<String>,
    /// RFC 3339, `None` = no expiry.
    pub expires: Option<String>,
    /// RFC 3339 when the lock was made (file modification time for hand-made files).
    pub since: Option<String>,
    /// Who made it ("uid 0" for enforcerctl; absent for files dropped by other tools).
    pub by: Option<String>,
    /// False once `expires` has passed (the file stays until removed).
    pub active: bool,
    /// The lock file could not be parsed; it locks anyway (fail closed) and says why here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
