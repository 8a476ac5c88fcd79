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
    /// With `[fleet]` on: lock on this node only (a lock file), not across the fleet.
    #[serde(default)]
    pub local: bool,
    /// `user` names a node (`enforcerctl lock node NAME`): every login there is refused.
    /// Fleet only.
    #[serde(default)]
    pub node: bool,
    /// `user` names a Kubernetes group (`enforcerctl lock group NAME`): the admission webhook
    /// refuses `kubectl exec` to its members. Fleet only.
    #[serde(default)]
    pub group: bool,
    /// `user` names a pod (`NS/NAME`) or a namespace whose `kubectl exec` sessions are ended
    /// and refused on this node (`[kubernetes]` only; always node-local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeLockKind>,
}

/// What a `kubectl exec` lock names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeLockKind {
    Pod,
    Namespace,
}

/// `enforcerctl unlock user|node|pod|namespace NAME [--local]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockRequest {
    pub name: String,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub node: bool,
    #[serde(default)]
    pub group: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeLockKind>,
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
    /// `local` (a file in `locks.dir`) or `fleet` (etcd, every node). Absent: local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `user`, `node` (fleet locks of a node), `pod` or `namespace` (`kubectl exec` locks;
    /// `user` is then `NS/NAME` or `NS`). Absent: user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Fleet locks: the node that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Fleet locks: whether this node's view of the fleet is current (see `fleet.stale_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
}
