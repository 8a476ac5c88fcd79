//! The fleet: every node's live connections, and the nodes themselves.

use serde::{Deserialize, Serialize};

/// One live connection on some node, as that node registered it in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetConnection {
    /// The node it runs on (`[fleet] node_name`).
    pub node: String,
    /// Its id on that node (as `enforcerctl sessions` there shows it).
    pub id: u64,
    pub user: String,
    /// Client address, `IP:PORT`.
    pub client: Option<String>,
    /// RFC 3339: admitted at.
    pub since: String,
    pub sessions: Vec<FleetSession>,
}

/// One session of a [`FleetConnection`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSession {
    pub id: u64,
    /// `shell`, `exec`, `subsystem`, `starting`.
    pub kind: String,
    pub tty: Option<String>,
    pub command: Option<String>,
}

/// A node of the fleet (`enforcerctl nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// enforcerd's version there.
    pub version: String,
    /// RFC 3339: when its daemon started.
    pub started: String,
    /// RFC 3339: when it last wrote its node key (every `lease_ttl`).
    pub last_seen: String,
    /// Its live connections registered in etcd.
    pub connections: u64,
}
