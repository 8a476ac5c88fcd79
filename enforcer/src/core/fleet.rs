//! The fleet, decided purely: where each thing lives in etcd, what a lock key holds, whether
//! this node's view of the fleet is current, and the fleet-wide limit that applies to a user.
//! The etcd I/O itself is in `crate::fleet`.

pub mod book;

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{lock::Lock, policy::Who, rfc3339};
use crate::config::{Config, OnUnreachable};

/// The key layout below `[fleet] prefix` (shared/DESIGN.md part E):
/// - `<prefix>/locks/user/<name>`, `<prefix>/locks/node/<name>`, `<prefix>/locks/group/<name>`:
///   a lock ([`LockValue`]), no lease; user and node locks watched by every node, group locks read by the admission webhook;
/// - `<prefix>/nodes/<node>`: the node ([`NodeValue`]), under the node's lease;
/// - `<prefix>/sessions/<node>/<conn>`: a live connection with its sessions, under the lease;
/// - `<prefix>/slots/<user>/<node>/<conn>`: a fleet-wide connection slot, under the lease;
/// - `<prefix>/session-slots/<user>/<node>/<session>`: a fleet-wide session slot, likewise;
/// - `<prefix>/exec-grants/<user>/<review>`: an exec the admission webhook allowed
///   ([`super::kube::admission::ExecGrant`]), under the webhook's grant lease until a node
///   matches it to an exec session, then under that node's lease until the session ends;
/// - `<prefix>/exec-grants-by-pod/<namespace>/<pod>/<review>`: the same grant, found by the
///   pod's node; deleted when matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub prefix: String,
    pub node: String,
}

/// An exec grant's key, parsed ([`Keys::grant_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantKey {
    /// The AdmissionReview's uid.
    pub review: String,
    /// Under `exec-grants-by-pod/` (unmatched yet), not the user's.
    pub by_pod: bool,
}

/// What a fleet lock applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockTarget {
    /// Every login of this user on every node.
    User(String),
    /// Every login on this node.
    Node(String),
    /// Every `kubectl exec` of a Kubernetes user in this group (the admission webhook's
    /// `userInfo.groups`).
    Group(String),
}

impl LockTarget {
    /// `user`, `node` or `group`: the key's middle part, and how listings name it.
    pub fn kind(&self) -> &'static str {
        match self {
            LockTarget::User(_) => "user",
            LockTarget::Node(_) => "node",
            LockTarget::Group(_) => "group",
        }
    }

    /// The user or node name.
    pub fn name(&self) -> &str {
        match self {
            LockTarget::User(n) | LockTarget::Node(n) | LockTarget::Group(n) => n,
        }
    }
}

impl Keys {
    pub fn new(prefix: &str, node: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
        }
    }

    /// Every lock key starts with this.
    pub fn locks(&self) -> String {
        format!("{}/locks/", self.prefix)
    }

    pub fn lock(&self, target: &LockTarget) -> String {
        format!("{}{}/{}", self.locks(), target.kind(), target.name())
    }

    /// The user or node lock a key names, if it is one. Group locks are not a node's: only the
    /// admission webhook reads them (a node knows no Kubernetes user's groups).
    pub fn lock_target(&self, key: &[u8]) -> Option<LockTarget> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.locks())?;
        let (kind, name) = rest.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        match kind {
            "user" => Some(LockTarget::User(name.to_owned())),
            "node" => Some(LockTarget::Node(name.to_owned())),
            _ => None,
        }
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node_key(&self) -> String {
        format!("{}{}", self.nodes(), self.node)
    }

    pub fn sessions(&self) -> String {
        format!("{}/sessions/", self.prefix)
    }

    pub fn session(&self, conn_id: u64) -> String {
        format!("{}{}/{conn_id}", self.sessions(), self.node)
    }

    /// Every slot of `user`, on any node: the range an admission compares on. Ends with `/`, so
    /// `alice` never counts `alice2`'s slots.
    pub fn slots_of(&self, user: &str) -> String {
        format!("{}/slots/{user}/", self.prefix)
    }

    pub fn slot(&self, user: &str, conn_id: u64) -> String {
        format!("{}{}/{conn_id}", self.slots_of(user), self.node)
    }

    /// A slot taken as the login's account request arrived, before it has a connection id
    /// (`early-<run>-<n>`: `run` tells this daemon run's from an earlier run's).
    pub fn early_slot(&self, user: &str, run: u64, n: u64) -> String {
        format!("{}{}/early-{run:x}-{n}", self.slots_of(user), self.node)
    }

    /// Every session slot of `user`, on any node.
    pub fn session_slots_of(&self, user: &str) -> String {
        format!("{}/session-slots/{user}/", self.prefix)
    }

    /// Every exec grant of the Kubernetes user `user`. Ends with `/` (see [`Keys::slots_of`]);
    /// `/` and `%` in the name are escaped (`%2F`, `%25`): a Kubernetes user name may hold a
    /// `/` (OIDC `issuer#subject`), and `alice/x`'s grants must not count as `alice`'s.
    pub fn exec_grants_of(&self, user: &str) -> String {
        let user = user.replace('%', "%25").replace('/', "%2F");
        format!("{}/exec-grants/{user}/", self.prefix)
    }

    pub fn exec_grant(&self, user: &str, review: &str) -> String {
        format!("{}{review}", self.exec_grants_of(user))
    }

    /// The prefix of every grant key, users' and pods' alike (one watch sees both).
    pub fn exec_grants_all(&self) -> String {
        format!("{}/exec-grants", self.prefix)
    }

    /// Which grant key `key` is: its review, and whether it is a pod's (unmatched) key.
    pub fn grant_key(&self, key: &str) -> Option<GrantKey> {
        let rest = key.strip_prefix(&self.exec_grants_all())?;
        let (by_pod, rest) = match rest.strip_prefix("-by-pod/") {
            Some(r) => (true, r),
            None => (false, rest.strip_prefix('/')?),
        };
        let (_, review) = rest.rsplit_once('/')?;
        (!review.is_empty()).then(|| GrantKey {
            review: review.to_owned(),
            by_pod,
        })
    }

    /// Every unmatched exec grant of pod `namespace/pod`.
    pub fn exec_grants_of_pod(&self, namespace: &str, pod: &str) -> String {
        format!("{}/exec-grants-by-pod/{namespace}/{pod}/", self.prefix)
    }

    pub fn exec_grant_of_pod(&self, namespace: &str, pod: &str, review: &str) -> String {
        format!("{}{review}", self.exec_grants_of_pod(namespace, pod))
    }

    pub fn session_slot(&self, user: &str, session_id: u64) -> String {
        format!("{}{}/{session_id}", self.session_slots_of(user), self.node)
    }
}

/// The value of a lock key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LockValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339; absent: until unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The node whose enforcerctl made it.
    #[serde(default)]
    pub node: String,
}

/// A lock in force across the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLock {
    pub target: LockTarget,
    pub value: LockValue,
}

impl FleetLock {
    /// A lock value made now by `by` on `node`.
    pub fn new(
        target: LockTarget,
        reason: Option<String>,
        ttl: Option<Duration>,
        by: String,
        node: &str,
        now: OffsetDateTime,
    ) -> Self {
        FleetLock {
            target,
            value: LockValue {
                reason,
                expires: ttl.map(|t| rfc3339(now + t)),
                since: Some(rfc3339(now)),
                by: Some(by),
                node: node.to_owned(),
            },
        }
    }

    /// Decodes a lock key's value. A value that is not a lock still locks (fail closed), and
    /// says why in `reason`.
    pub fn decode(target: LockTarget, bytes: &[u8]) -> Self {
        let value = serde_json::from_slice(bytes).unwrap_or_else(|e| LockValue {
            reason: Some(format!("unreadable fleet lock ({e}); locking anyway")),
            ..Default::default()
        });
        FleetLock { target, value }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.value).unwrap_or_default()
    }

    /// As a [`Lock`] (for users: the same messages and listing as a local lock). An expiry that
    /// cannot be read counts as none (fail closed).
    pub fn as_lock(&self) -> Lock {
        let parse = |s: &Option<String>| {
            s.as_deref().and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
        };
        Lock {
            user: self.target.name().to_owned(),
            reason: self.value.reason.clone(),
            expires: parse(&self.value.expires),
            since: parse(&self.value.since),
            by: self.value.by.clone(),
            error: None,
            valid_name: true,
        }
    }

    pub fn active(&self, now: OffsetDateTime) -> bool {
        self.as_lock().active(now)
    }
}

/// The fleet locks as this node knows them, by target.
pub type FleetLocks = BTreeMap<LockTarget, FleetLock>;

/// The lock of this node (`lock node`), if one is active.
pub fn node_lock<'a>(
    locks: &'a FleetLocks,
    node: &str,
    now: OffsetDateTime,
) -> Option<&'a FleetLock> {
    locks
        .get(&LockTarget::Node(node.to_owned()))
        .filter(|l| l.active(now))
}

/// The fleet lock of `user`, if one is active.
pub fn user_lock<'a>(
    locks: &'a FleetLocks,
    user: &str,
    now: OffsetDateTime,
) -> Option<&'a FleetLock> {
    locks
        .get(&LockTarget::User(user.to_owned()))
        .filter(|l| l.active(now))
}

/// The value of `<prefix>/nodes/<node>` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeValue {
    pub version: String,
    /// RFC 3339: when the node's daemon started.
    pub started: String,
    /// RFC 3339: when the node wrote this key (at start, and under each new lease). It is not
    /// rewritten while the node lives — at 10 000 nodes that would be 1 000 writes a second —:
    /// listings derive "last seen" from the lease's remaining TTL instead. (Read as
    /// `last_seen` from a node of an earlier version.)
    #[serde(alias = "last_seen")]
    pub registered: String,
    pub lease: i64,
}

/// How current this node's view of the fleet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewState {
    /// etcd answered within `stale_after`.
    Current,
    /// No answer for longer: `on_unreachable` applies.
    Stale,
}

/// Whether a view last confirmed `age` ago (`None`: never since start) is current.
pub fn view_state(age: Option<Duration>, stale_after: Duration) -> ViewState {
    match age {
        Some(a) if a <= stale_after => ViewState::Current,
        _ => ViewState::Stale,
    }
}

/// What a new login meets while the view is stale.
pub fn refuse_when_stale(mode: OnUnreachable, state: ViewState) -> bool {
    state == ViewState::Stale && mode == OnUnreachable::Strict
}

/// The fleet-wide connection limit of `user` (member of `groups`; 0 = none): the first
/// matching `[[rules]]` entry that sets `fleet_max_connections_per_user`, else `[fleet]`'s.
pub fn fleet_connection_limit(config: &Config, who: Who) -> u32 {
    if !config.fleet.enabled() {
        return 0;
    }
    super::policy::matching_rules(config, who)
        .find_map(|r| r.fleet_max_connections_per_user)
        .unwrap_or(config.fleet.max_connections_per_user)
}

/// Whether a login named `pam_user` may have a fleet-wide connection limit, judged before NSS
/// answered: by its name, or by any group rule that sets one (its groups are not known yet).
/// Only then is a slot taken as its account request arrives.
pub fn early_slot_wanted(config: &Config, pam_user: &str) -> bool {
    if fleet_connection_limit(config, Who::named(pam_user, &[])) > 0 {
        return true;
    }
    config.fleet.enabled()
        && config.rules.iter().any(|r| {
            !r.groups.is_empty() && r.fleet_max_connections_per_user.is_some_and(|l| l > 0)
        })
}

/// Whether a slot taken under the name PAM gave (`pam_user`) is the login's own: the slot
/// counts the account's keys, so it must be the account NSS resolved that name to (`ALICE` may
/// be `alice`: a slot under another spelling would count apart from the account's).
pub fn early_slot_fits(pam_user: &str, account: &str) -> bool {
    pam_user == account
}

/// The fleet-wide session limit of `user` (0 = none), like [`fleet_connection_limit`].
pub fn fleet_session_limit(config: &Config, who: Who) -> u32 {
    if !config.fleet.enabled() {
        return 0;
    }
    super::policy::matching_rules(config, who)
        .find_map(|r| r.fleet_max_sessions_per_user)
        .unwrap_or(config.fleet.max_sessions_per_user)
}

/// A slot transaction puts the login's own key and counts the user's keys in the same
/// transaction (`count` includes its own). The login holds a slot when that count is within
/// the limit; otherwise it holds `count - 1` others' and must delete its key.
///
/// Exact without retries: of any L + 1 logins holding slots at once, the one whose
/// transaction came last counted the other L keys (each was put before its own transaction),
/// so it saw more than L and was refused. A refused login's key is counted by others until it
/// is deleted: racing logins at the limit may be refused a slot that frees meanwhile, never
/// granted one too many.
pub fn slot_decision(count: i64, limit: u32) -> Result<(), usize> {
    let held = count.max(1) as usize - 1;
    if held < limit as usize {
        Ok(())
    } else {
        Err(held)
    }
}

#[cfg(test)]
mod tests;
