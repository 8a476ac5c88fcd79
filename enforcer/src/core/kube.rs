//! Kubernetes decisions (pure): the enforcement label and what it gates, and whether one more
//! `kubectl exec` session may start. The daemon feeds in what the apiserver and containerd
//! said; nothing here does I/O.
//!
//! **The label's state before the apiserver answers** is [`LabelState::Unknown`], and it
//! *enforces* (fail closed): a daemon that just started on a node whose label was removed
//! keeps enforcing for the seconds until its first list answers, while the opposite choice would
//! leave a labeled node open whenever the apiserver is slow or unreachable at start. The same
//! holds for a Node object that does not exist ([`LabelState::NodeMissing`]): the daemon cannot
//! see *its* node, which is a misconfiguration (`node_name`) or a node being deleted — never a
//! reason to stop enforcing. Once an answer came, a lost connection keeps the last answer (as
//! an informer's cache does) and the error is shown in `enforcerctl status`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::OffsetDateTime;

pub mod admission;
pub mod exec;
pub mod identify;
pub mod idle;
pub mod lock;

use super::audit::AuditReason;
use crate::config::{Dur, KubernetesConfig};

/// A DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends (namespace names).
pub fn valid_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: at most 253 bytes of dot-separated labels (node names, label prefixes).
pub fn valid_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(valid_dns_label)
}

/// A label name or value: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
fn valid_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
}

/// `[kubernetes] label`: a label key and, optionally, the value it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    pub key: String,
    /// `None`: present with any value.
    pub value: Option<String>,
}

impl LabelSelector {
    /// Parses `key=value` or `key` with Kubernetes' label syntax; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (text, None),
        };
        let (prefix, name) = match key.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, key),
        };
        let example = "write it as `key=value` or `key`, e.g. \"enforcer.dev/enforce=true\"";
        if let Some(p) = prefix {
            if !valid_dns_subdomain(p) {
                return Err(format!(
                    "{text:?}: the key's prefix {p:?} must be a DNS subdomain (lowercase letters, \
                     digits, `-` and `.`, at most 253); {example}"
                ));
            }
        }
        if !valid_label_word(name) {
            return Err(format!(
                "{text:?}: the key's name part {name:?} must be 1-63 letters, digits, `-`, `_` \
                 or `.`, beginning and ending with a letter or digit; {example}"
            ));
        }
        if let Some(v) = value {
            if !v.is_empty() && !valid_label_word(v) {
                return Err(format!(
                    "{text:?}: the value {v:?} must be at most 63 letters, digits, `-`, `_` or \
                     `.`, beginning and ending with a letter or digit; {example}"
                ));
            }
        }
        Ok(LabelSelector {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        })
    }

    /// Whether a node with `labels` carries the label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
        }
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// What the daemon knows about the label on its Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelState {
    /// The apiserver has not answered yet (enforces: see the module doc).
    Unknown,
    /// The Node carries the label.
    Present,
    /// The Node exists without the label.
    Absent,
    /// The apiserver answered, but has no Node of that name (enforces).
    NodeMissing,
}

impl LabelState {
    /// Whether exec sessions are controlled in this state.
    pub fn enforces(self) -> bool {
        self != LabelState::Absent
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LabelState::Unknown => "unknown",
            LabelState::Present => "present",
            LabelState::Absent => "absent",
            LabelState::NodeMissing => "node_missing",
        }
    }
}

/// The label gate: its state, since when, and the watch's last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub state: LabelState,
    /// When `state` began (the daemon's start for `Unknown`).
    pub since: OffsetDateTime,
    /// The watch's last error and when it happened (cleared by the next answer).
    pub last_error: Option<(OffsetDateTime, String)>,
}

/// A change of the gate worth an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateChange {
    pub from: LabelState,
    pub to: LabelState,
    /// Whether exec enforcement applies from now on.
    pub enforcing: bool,
}

impl Gate {
    /// The gate at start: nothing heard yet.
    pub fn new(now: OffsetDateTime) -> Self {
        Gate {
            state: LabelState::Unknown,
            since: now,
            last_error: None,
        }
    }

    /// Applies the apiserver's answer: the Node's labels, or `None` when it has no such Node.
    /// Returns the change when the state changed.
    pub fn observe(
        &mut self,
        selector: &LabelSelector,
        labels: Option<&BTreeMap<String, String>>,
        now: OffsetDateTime,
    ) -> Option<GateChange> {
        self.last_error = None;
        let to = match labels {
            None => LabelState::NodeMissing,
            Some(l) if selector.matches(l) => LabelState::Present,
            Some(_) => LabelState::Absent,
        };
        if to == self.state {
            return None;
        }
        let from = std::mem::replace(&mut self.state, to);
        self.since = now;
        Some(GateChange {
            from,
            to,
            enforcing: to.enforces(),
        })
    }

    /// The watch failed (the last answer stays in force).
    pub fn failed(&mut self, error: String, now: OffsetDateTime) {
        self.last_error = Some((now, error));
    }

    /// Whether exec sessions are controlled now.
    pub fn exec_enforced(&self) -> bool {
        self.state.enforces()
    }

    /// Whether SSH logins are controlled now: always unless `gate_ssh`, else as exec sessions.
    pub fn ssh_enforced(&self, gate_ssh: bool) -> bool {
        !gate_ssh || self.exec_enforced()
    }
}

/// A pod: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The exec limits that apply in one namespace (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    pub max_per_pod: u32,
    pub max_per_namespace: u32,
    pub max_per_node: u32,
    pub idle_timeout: Dur,
}

/// `[kubernetes]` limits for exec sessions in `namespace`, after `[[kubernetes.namespaces]]`:
/// for each key the first entry naming the namespace that sets it wins.
pub fn exec_limits(config: &KubernetesConfig, namespace: &str) -> ExecLimits {
    let matching: Vec<_> = config
        .namespaces
        .iter()
        .filter(|r| r.names.iter().any(|n| n == namespace))
        .collect();
    macro_rules! pick {
        ($key:ident) => {
            matching.iter().find_map(|r| r.$key).unwrap_or(config.$key)
        };
    }
    ExecLimits {
        max_per_pod: pick!(max_exec_sessions_per_pod),
        max_per_namespace: pick!(max_exec_sessions_per_namespace),
        max_per_node: config.max_exec_sessions_per_node,
        idle_timeout: pick!(idle_timeout),
    }
}

/// Live exec sessions on this node, counted per pod, per namespace and in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecCensus {
    pods: BTreeMap<PodRef, u32>,
    namespaces: BTreeMap<String, u32>,
    node: u32,
}

impl ExecCensus {
    /// Counts the pods of the live exec sessions (one entry per session).
    pub fn of<'a>(sessions: impl IntoIterator<Item = &'a PodRef>) -> Self {
        let mut c = ExecCensus::default();
        for pod in sessions {
            *c.pods.entry(pod.clone()).or_default() += 1;
            *c.namespaces.entry(pod.namespace.clone()).or_default() += 1;
            c.node += 1;
        }
        c
    }

    pub fn pod(&self, pod: &PodRef) -> u32 {
        self.pods.get(pod).copied().unwrap_or(0)
    }

    pub fn namespace(&self, namespace: &str) -> u32 {
        self.namespaces.get(namespace).copied().unwrap_or(0)
    }

    pub fn node(&self) -> u32 {
        self.node
    }
}

/// Pods and namespaces locked for exec sessions (`enforcerctl lock pod|namespace`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecLocks {
    pub pods: BTreeSet<PodRef>,
    pub namespaces: BTreeSet<String>,
}

/// Why an exec session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecRefusal {
    NamespaceLocked,
    PodLocked,
    MaxPerPod { limit: u32 },
    MaxPerNamespace { limit: u32 },
    MaxPerNode { limit: u32 },
}

impl ExecRefusal {
    /// The audit reason.
    pub fn reason(self) -> AuditReason {
        match self {
            ExecRefusal::NamespaceLocked => AuditReason::NamespaceLocked,
            ExecRefusal::PodLocked => AuditReason::PodLocked,
            ExecRefusal::MaxPerPod { .. } => AuditReason::MaxExecSessionsPerPod,
            ExecRefusal::MaxPerNamespace { .. } => AuditReason::MaxExecSessionsPerNamespace,
            ExecRefusal::MaxPerNode { .. } => AuditReason::MaxExecSessionsPerNode,
        }
    }

    /// The limit that refused, if a limit did.
    pub fn limit(self) -> Option<u32> {
        match self {
            ExecRefusal::MaxPerPod { limit }
            | ExecRefusal::MaxPerNamespace { limit }
            | ExecRefusal::MaxPerNode { limit } => Some(limit),
            ExecRefusal::NamespaceLocked | ExecRefusal::PodLocked => None,
        }
    }

    /// The line the exec's client sees on its stream.
    pub fn message(self, pod: &PodRef, node: &str) -> String {
        let body = match self {
            ExecRefusal::NamespaceLocked => format!("namespace {} is locked", pod.namespace),
            ExecRefusal::PodLocked => format!("pod {pod} is locked"),
            ExecRefusal::MaxPerPod { limit } => {
                format!("pod {pod} already has {limit} of {limit} allowed exec sessions")
            }
            ExecRefusal::MaxPerNamespace { limit } => format!(
                "namespace {} already has {limit} of {limit} allowed exec sessions on node {node}",
                pod.namespace
            ),
            ExecRefusal::MaxPerNode { limit } => {
                format!("node {node} already has {limit} of {limit} allowed exec sessions")
            }
        };
        format!("enforcer: exec refused: {body}")
    }
}

/// What one more exec session in a pod comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecDecision {
    /// Controlled: counted against these limits, cut when idle.
    Admit(ExecLimits),
    /// The label is absent: the session runs with no limit, lock or idle cut (still audited).
    Unenforced,
    Refuse(ExecRefusal),
}

/// Decides whether one more exec session may start in `pod`, given the gate, the sessions
/// already live (`census`, not counting this one) and the locks. Locks before limits, the
/// narrowest limit first, so the reason names what the operator would change.
pub fn admit_exec(
    gate: &Gate,
    config: &KubernetesConfig,
    census: &ExecCensus,
    locks: &ExecLocks,
    pod: &PodRef,
) -> ExecDecision {
    if !gate.exec_enforced() {
        return ExecDecision::Unenforced;
    }
    if locks.namespaces.contains(&pod.namespace) {
        return ExecDecision::Refuse(ExecRefusal::NamespaceLocked);
    }
    if locks.pods.contains(pod) {
        return ExecDecision::Refuse(ExecRefusal::PodLocked);
    }
    let limits = exec_limits(config, &pod.namespace);
    let over = |limit: u32, have: u32| limit > 0 && have >= limit;
    if over(limits.max_per_pod, census.pod(pod)) {
        return ExecDecision::Refuse(ExecRefusal::MaxPerPod {
            limit: limits.max_per_pod,
        });
    }
    if over(limits.max_per_namespace, census.namespace(&pod.namespace)) {
        return ExecDecision::Refuse(ExecRefusal::MaxPerNamespace {
            limit: limits.max_per_namespace,
        });
    }
    if over(limits.max_per_node, census.node()) {
        return ExecDecision::Refuse(ExecRefusal::MaxPerNode {
            limit: limits.max_per_node,
        });
    }
    ExecDecision::Admit(limits)
}

#[cfg(test)]
mod tests;
