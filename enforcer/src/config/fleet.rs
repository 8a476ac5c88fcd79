//! `[fleet]`: locks, live sessions and per-user limits shared by every node through etcd.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Dur;

/// `[fleet]` — off while `etcd_endpoints` is empty (the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// etcd client URLs (`https://10.0.0.1:2379`); empty: this node is alone.
    pub etcd_endpoints: Vec<String>,
    /// This node's name in the fleet; empty: the host name.
    pub node_name: String,
    /// Every key enforcer writes lives below this prefix.
    pub prefix: String,
    /// CA certificate (PEM) that signed the etcd servers' certificates; empty: no TLS.
    pub ca: PathBuf,
    /// This node's client certificate and key (PEM), for etcd's client-certificate auth.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// etcd user and password (etcd RBAC); empty: none.
    pub user: String,
    pub password: String,
    /// TTL of the node's one lease: its sessions and slots vanish this long after it dies.
    pub lease_ttl: Dur,
    /// What a node does when its view of the fleet is older than `stale_after`.
    pub on_unreachable: OnUnreachable,
    /// How old the node's view of fleet locks may get before `on_unreachable` applies.
    pub stale_after: Dur,
    /// Connections of one user across every node (0 = no fleet-wide limit).
    pub max_connections_per_user: u32,
    /// Sessions of one user across every node (0 = no fleet-wide limit).
    pub max_sessions_per_user: u32,
}

/// `[fleet] on_unreachable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnreachable {
    /// Keep the last known fleet locks and local limits; admit without fleet-wide slots.
    BestEffort,
    /// Refuse every new login until the view is current again.
    Strict,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            node_name: String::new(),
            prefix: "/enforcer".into(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            user: String::new(),
            password: String::new(),
            lease_ttl: Dur::secs(10),
            on_unreachable: OnUnreachable::BestEffort,
            stale_after: Dur::secs(60),
            max_connections_per_user: 0,
            max_sessions_per_user: 0,
        }
    }
}

impl FleetConfig {
    /// Whether the node takes part in a fleet.
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// Checks the section; `Err((key, message))` names the key at fault and what to do.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("fleet.{k}"), m.to_owned()));
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return bad(
                "prefix",
                "must start with `/` and not end with one, e.g. \"/enforcer\"",
            );
        }
        if self.node_name.contains('/') {
            return bad("node_name", "must not contain `/`");
        }
        if self.lease_ttl.0.as_secs() < 2 {
            return bad("lease_ttl", "must be at least \"2s\"");
        }
        if self.stale_after.is_zero() {
            return bad("stale_after", "must be longer than 0");
        }
        if self.cert.as_os_str().is_empty() != self.key.as_os_str().is_empty() {
            return bad(
                "cert",
                "give both `cert` and `key` (client certificate auth), or neither",
            );
        }
        if !self.cert.as_os_str().is_empty() && self.ca.as_os_str().is_empty() {
            return bad(
                "ca",
                "client certificates need TLS: set `ca` to the etcd CA's PEM file",
            );
        }
        if self.user.is_empty() != self.password.is_empty() {
            return bad("user", "give both `user` and `password`, or neither");
        }
        for e in &self.etcd_endpoints {
            let tls = e.starts_with("https://");
            if !tls && !e.starts_with("http://") {
                return bad(
                    "etcd_endpoints",
                    "each endpoint is a URL: http://HOST:PORT or https://HOST:PORT",
                );
            }
            if tls && self.ca.as_os_str().is_empty() {
                return bad("ca", "https endpoints need `ca` (the etcd CA's PEM file)");
            }
        }
        Ok(())
    }
}
