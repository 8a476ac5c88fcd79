//! Config reload decisions (pure): what a new config changes, whether a running daemon can
//! apply all of it, and what live connections get from it. A reload is all or nothing: a file
//! that changes a key only a restart can apply changes nothing (see [`plan`]).

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::tasks::{TASK_COUNTED_CONN, TASK_COUNTED_USER, TrackedTask};
use enforcer_proto::ConfigChange;
use serde::Serialize;

use super::{conn::Registry, policy};
use crate::config::{Config, Dur};

/// What asked for a reload (audit `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadTrigger {
    /// SIGHUP to enforcerd (`kill -HUP`).
    Sighup,
    /// `enforcerctl reload` (`systemctl reload enforcerd` runs it).
    Enforcerctl,
}

/// Keys a running daemon applies to new and live connections.
const LIVE: &[&str] = &[
    "limits.max_connections_per_user",
    "limits.max_connections_per_source",
    "limits.max_sessions_per_connection",
    "limits.max_sessions_per_user",
    "idle.timeout",
    "idle.warn_before",
    "idle.activity",
    "idle.forwarding",
    "locks.dir",
    "locks.all_processes",
    "locks.exempt",
    "access.auditor_group",
    "control.max_connections_per_uid",
    "control.max_connections_non_root",
    "control.max_frame_bytes",
    "control.read_timeout",
    "control.idle_timeout",
    "fleet.max_connections_per_user",
    "fleet.max_sessions_per_user",
    "fleet.on_unreachable",
    "fleet.stale_after",
    // Read at each decision (admission, exec admission, idle check).
    "kubernetes.gate_ssh",
    "kubernetes.max_exec_sessions_per_pod",
    "kubernetes.max_exec_sessions_per_namespace",
    "kubernetes.max_exec_sessions_per_node",
    "kubernetes.idle_timeout",
    "kubernetes.cut_orphans",
    "kubernetes.namespaces",
    "kubernetes.locks_dir",
    // Read by `enforcerd webhook` only (a node does nothing with them).
    "kubernetes.max_exec_sessions_per_user",
    "webhook.listen",
    "webhook.tls_cert",
    "webhook.tls_key",
    "webhook.client_ca",
    "webhook.grant_ttl",
];

/// Keys only a restart applies: bound or opened at start (sockets, state and audit files), or
/// baked into the loaded BPF object and its maps (ring and map sizes, hooks, what the kernel
/// records), or owned by the recorder thread and its index (`recording.dir`). Listed so that a
/// test can insist every key is one or the other; at run time anything not [`LIVE`] is this.
#[cfg(test)]
const RESTART: &[&str] = &[
    "daemon.socket",
    "daemon.pam_socket",
    "daemon.state_dir",
    "daemon.ring_buffer_bytes",
    "daemon.max_tracked_tasks",
    "daemon.bpf_pin_dir",
    "daemon.io_hooks",
    "daemon.sshd_binaries",
    "audit.path",
    "audit.journald",
    "metrics.listen",
    "recording.enabled",
    "recording.dir",
    "recording.mask_echo_off_input",
    "recording.buffer_bytes",
    "recording.exec_stdin",
    "recording.file_transfers",
    "recording.store.url",
    "recording.store.endpoint",
    "recording.store.region",
    "recording.store.credentials_file",
    "recording.store.node",
    "recording.store.part_size",
    "recording.store.flush_after",
    "recording.store.keep_local",
    "fleet.etcd_endpoints",
    "fleet.node_name",
    "fleet.prefix",
    "fleet.ca",
    "fleet.cert",
    "fleet.key",
    "fleet.user",
    "fleet.password",
    "fleet.lease_ttl",
    // The Node watch and the containerd client are started with these.
    "kubernetes.enabled",
    "kubernetes.node_name",
    "kubernetes.label",
    "kubernetes.kubeconfig",
    "kubernetes.containerd_socket",
    "kubernetes.shim_binaries",
];

/// Whether a changed key can be applied without a restart. `[[rules]]` always can; a key in
/// neither list (added without deciding) is treated as needing a restart.
pub fn live_key(key: &str) -> bool {
    key.starts_with("rules[") || LIVE.contains(&key)
}

/// The new file changes keys only a restart applies; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} cannot change while enforcerd runs; nothing was applied: restart it to apply them \
     (`systemctl restart enforcerd`; enforcement goes on across a restart) or set them back",
    list(.changes)
)]
pub struct NeedsRestart {
    pub changes: Vec<ConfigChange>,
}

fn list(changes: &[ConfigChange]) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
    changes
        .iter()
        .map(|c| format!("{} ({} → {})", c.key, show(&c.old), show(&c.new)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every key whose value differs between `old` and `new`, in key order.
pub fn diff(old: &Config, new: &Config) -> Vec<ConfigChange> {
    let (old, new) = (flatten(old), flatten(new));
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            // Secrets never reach the audit log or enforcerctl's output.
            let shown = |v: Option<&String>| match (SECRET.contains(&k.as_str()), v) {
                (true, Some(_)) => Some("\"(hidden)\"".to_owned()),
                (_, v) => v.cloned(),
            };
            ConfigChange {
                key: k.clone(),
                old: shown(old.get(k)),
                new: shown(new.get(k)),
            }
        })
        .collect()
}

/// Keys whose values are never shown (a changed value still counts as a change).
const SECRET: &[&str] = &["fleet.password"];

/// What a reload from `old` to `new` changes, or why it cannot be applied.
pub fn plan(old: &Config, new: &Config) -> Result<Vec<ConfigChange>, NeedsRestart> {
    let changes = diff(old, new);
    let restart: Vec<ConfigChange> = changes
        .iter()
        .filter(|c| !live_key(&c.key))
        .cloned()
        .collect();
    if restart.is_empty() {
        Ok(changes)
    } else {
        Err(NeedsRestart { changes: restart })
    }
}

/// The config as dotted keys (`idle.timeout`, `rules[0].users`) with TOML-rendered values.
fn flatten(config: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(config).expect("the config serialises");
    walk("", &value, &mut out);
    out
}

fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = match prefix {
                    "" => k.clone(),
                    p => format!("{p}.{k}"),
                };
                walk(&key, v, out);
            }
        }
        // One key per rule key: "rules[1].idle_timeout", not the whole list.
        toml::Value::Array(rules) if prefix == "rules" => {
            for (i, rule) in rules.iter().enumerate() {
                walk(&format!("rules[{i}]"), rule, out);
            }
        }
        v => {
            out.insert(prefix.to_owned(), v.to_string());
        }
    }
}

/// What live connections get from a new config: only what differs from the old one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Relimit {
    /// Connection → its new `max_sessions_per_connection` (for the kernel's `ENF_CONNS`).
    pub conn_sessions: BTreeMap<u64, u32>,
    /// uid → its new `max_sessions_per_user` (for `ENF_USERS`).
    pub user_sessions: BTreeMap<u32, u32>,
    /// Connection → its new idle timeout (its idle clock keeps running).
    pub idle: BTreeMap<u64, Dur>,
}

impl Relimit {
    /// Whether the kernel's session limits change.
    pub fn touches_kernel(&self) -> bool {
        !self.conn_sessions.is_empty() || !self.user_sessions.is_empty()
    }
}

/// The limits every live connection has under `new`, where they differ from `old`. Rules match
/// the groups a connection's user had at login. A uid's session limit is its first (oldest)
/// connection's, as at admission.
pub fn relimit(registry: &Registry, old: &Config, new: &Config) -> Relimit {
    let mut r = Relimit::default();
    let mut users_seen = BTreeSet::new();
    // Connections admitted without limits (`[kubernetes] gate_ssh`) keep none.
    for c in registry.iter().filter(|c| c.enforced) {
        let before = policy::effective_limits(old, c.who());
        let after = policy::effective_limits(new, c.who());
        if before.max_sessions_per_connection != after.max_sessions_per_connection {
            r.conn_sessions
                .insert(c.id, after.max_sessions_per_connection);
        }
        if let Some(uid) = c.uid.filter(|u| users_seen.insert(*u)) {
            if before.max_sessions_per_user != after.max_sessions_per_user {
                r.user_sessions.insert(uid, after.max_sessions_per_user);
            }
        }
        if c.idle_timeout != after.idle_timeout {
            r.idle.insert(c.id, after.idle_timeout);
        }
    }
    r
}

/// The session leaders holding slots in the kernel's counters, from its tracked-task table:
/// per connection of `registry`, and per uid over those connections. A counter is rewritten
/// with the size of its set; a set that differs between two reads around the write means a
/// session started or ended meanwhile, and that counter is written again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotHolders {
    pub conns: BTreeMap<u64, BTreeSet<u32>>,
    pub users: BTreeMap<u32, BTreeSet<u32>>,
}

impl SlotHolders {
    pub fn from_tasks(registry: &Registry, tasks: &[(u32, TrackedTask)]) -> Self {
        let mut h = SlotHolders::default();
        for (tid, t) in tasks {
            // Leaders of released connections hold no slot any more (their entry is gone).
            let Some(conn) = registry.get(t.conn_id) else {
                continue;
            };
            if t.flags & TASK_COUNTED_CONN != 0 {
                h.conns.entry(t.conn_id).or_default().insert(*tid);
            }
            if let (true, Some(uid)) = (t.flags & TASK_COUNTED_USER != 0, conn.uid) {
                h.users.entry(uid).or_default().insert(*tid);
            }
        }
        h
    }

    pub fn conn_count(&self, conn_id: u64) -> u64 {
        self.conns.get(&conn_id).map_or(0, |s| s.len() as u64)
    }

    pub fn user_count(&self, uid: u32) -> u64 {
        self.users.get(&uid).map_or(0, |s| s.len() as u64)
    }

    /// The connections and uids of `relimit` whose holders differ between `self` and `later`.
    pub fn moved(&self, later: &SlotHolders, relimit: &Relimit) -> Relimit {
        Relimit {
            conn_sessions: relimit
                .conn_sessions
                .iter()
                .filter(|(id, _)| self.conns.get(id) != later.conns.get(id))
                .map(|(&id, &max)| (id, max))
                .collect(),
            user_sessions: relimit
                .user_sessions
                .iter()
                .filter(|(uid, _)| self.users.get(uid) != later.users.get(uid))
                .map(|(&uid, &max)| (uid, max))
                .collect(),
            idle: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests;
