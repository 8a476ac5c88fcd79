//! `kubectl exec` and `kubectl attach` as the apiserver's validating admission webhook sees
//! them, decided purely: who asks and for what ([`ExecGrant`], from the AdmissionReview's
//! CONNECT request), and whether a fleet lock of the user or of one of their groups, or the
//! fleet-wide per-user exec limit, refuses it ([`Denial`]). The webhook's I/O (TLS, etcd) is in
//! `crate::webhook`.

use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, Operation},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::core::{
    fleet::{FleetLock, Keys, LockTarget},
    rfc3339,
};

/// Which pod subresource a review is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subresource {
    /// `pods/exec`: a new process in the container.
    Exec,
    /// `pods/attach`: the container's own process's stdio.
    Attach,
}

/// What an allowed exec leaves in etcd for its node to match: who ran what, where, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecGrant {
    /// The AdmissionReview's uid (one per request).
    pub review: String,
    pub subresource: Subresource,
    /// The Kubernetes user (`userInfo.username`), its uid and groups.
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub namespace: String,
    pub pod: String,
    /// The container named in the request (`-c`); absent: the pod's default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command (`exec` only).
    #[serde(default)]
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    /// RFC 3339: when the webhook allowed it.
    pub time: String,
    /// The exec session it turned out to be, once its node matched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<GrantMatched>,
    /// Groups were cut to [`GRANT_GROUPS_MAX`] bytes when it was stored (the decision saw
    /// them all).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub groups_truncated: bool,
    /// The command was cut to [`GRANT_COMMAND_MAX`] bytes when it was stored: it matches no
    /// exec (what is left could be another exec's whole command).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub command_truncated: bool,
}

/// The most bytes of group names a stored grant keeps (the decision saw them all).
pub const GRANT_GROUPS_MAX: usize = 8 << 10;
/// The most bytes of command a stored grant keeps: a node reads no longer command line of an
/// exec anyway.
pub const GRANT_COMMAND_MAX: usize = 4 << 10;

impl ExecGrant {
    /// The grant as stored in etcd: groups and command bounded, so that a lease's worth of
    /// grants stays small enough for every node's watch (`fleet::lapsed`).
    pub fn bounded(&self) -> ExecGrant {
        let mut g = self.clone();
        g.groups_truncated |= keep_within(&mut g.groups, GRANT_GROUPS_MAX);
        g.command_truncated |= keep_within(&mut g.command, GRANT_COMMAND_MAX);
        g
    }
}

/// Drops the last strings of `v` until their bytes are at most `max`; true if any went.
fn keep_within(v: &mut Vec<String>, max: usize) -> bool {
    let mut total = 0;
    let keep = v
        .iter()
        .take_while(|s| {
            total += s.len() + 1;
            total <= max
        })
        .count();
    let cut = keep < v.len();
    v.truncate(keep);
    cut
}

/// Where a grant's exec runs: written by the node that matched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantMatched {
    pub node: String,
    /// containerd's exec id.
    pub exec_id: String,
    /// The node's session id (`enforcerctl sessions`).
    pub session: u64,
}

/// Why a review cannot be decided (the webhook answers with an error; the apiserver then
/// applies the webhook's `failurePolicy`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error(
        "this webhook decides CONNECT of pods/exec and pods/attach only, not {operation} of {resource}: \
         limit the ValidatingWebhookConfiguration's rules to those"
    )]
    NotExec { operation: String, resource: String },
    #[error("the review has no {0}")]
    Missing(&'static str),
    #[error("the review's object is not PodExecOptions/PodAttachOptions: {0}")]
    BadObject(String),
}

/// Options of `pods/exec` and `pods/attach` (core/v1 PodExecOptions, PodAttachOptions).
#[derive(Deserialize)]
struct ConnectOptions {
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    tty: bool,
}

/// The grant an allowed review would leave, made `now`.
pub fn grant_of(
    req: &AdmissionRequest<DynamicObject>,
    now: OffsetDateTime,
) -> Result<ExecGrant, ReviewError> {
    let subresource = match (
        &req.operation,
        req.resource.group.as_str(),
        req.resource.resource.as_str(),
        req.sub_resource.as_deref(),
    ) {
        (Operation::Connect, "", "pods", Some("exec")) => Subresource::Exec,
        (Operation::Connect, "", "pods", Some("attach")) => Subresource::Attach,
        (op, _, resource, sub) => {
            return Err(ReviewError::NotExec {
                operation: format!("{op:?}").to_uppercase(),
                resource: match sub {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.to_owned(),
                },
            });
        }
    };
    if req.uid.is_empty() {
        return Err(ReviewError::Missing("uid"));
    }
    let user = req
        .user_info
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or(ReviewError::Missing("userInfo.username"))?;
    let namespace = req
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(ReviewError::Missing("namespace"))?;
    if req.name.is_empty() {
        return Err(ReviewError::Missing("name (the pod)"));
    }
    let options: ConnectOptions = match &req.object {
        Some(o) => serde_json::from_value(o.data.clone())
            .map_err(|e| ReviewError::BadObject(e.to_string()))?,
        None => return Err(ReviewError::Missing("object")),
    };
    Ok(ExecGrant {
        review: req.uid.clone(),
        subresource,
        user,
        user_uid: req.user_info.uid.clone().unwrap_or_default(),
        groups: req.user_info.groups.clone().unwrap_or_default(),
        namespace,
        pod: req.name.clone(),
        container: options.container.filter(|c| !c.is_empty()),
        command: options.command,
        tty: options.tty,
        stdin: options.stdin,
        time: rfc3339(now),
        matched: None,
        groups_truncated: false,
        command_truncated: false,
    })
}

/// The fleet locks a grant's user may be under: theirs, and each of their groups'.
pub fn lock_targets(grant: &ExecGrant) -> Vec<LockTarget> {
    std::iter::once(LockTarget::User(grant.user.clone()))
        .chain(grant.groups.iter().cloned().map(LockTarget::Group))
        .collect()
}

/// Why the webhook refuses an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// `lock user NAME` (or `lock group NAME`) is in force.
    Locked(FleetLock),
    /// The user already has `held` exec sessions of `limit` across the fleet.
    ExecLimit { limit: u32, held: usize },
}

impl Denial {
    /// The reason code audited and shown in metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::Locked(l) => match l.target {
                LockTarget::Group(_) => "group_locked",
                _ => "user_locked",
            },
            Denial::ExecLimit { .. } => "fleet_max_exec_sessions_per_user",
        }
    }

    /// What the kubectl user reads (the apiserver puts it in its error).
    pub fn message(&self, user: &str) -> String {
        match self {
            Denial::Locked(l) => {
                let what = match &l.target {
                    LockTarget::Group(g) => format!("group {g} of user {user} is locked"),
                    _ => format!("user {user} is locked"),
                };
                match &l.value.reason {
                    Some(r) => format!("enforcer: exec refused: {what}: {r}"),
                    None => format!("enforcer: exec refused: {what}"),
                }
            }
            Denial::ExecLimit { limit, held } => format!(
                "enforcer: exec refused: user {user} already has {held} of {limit} exec sessions \
                 allowed across the fleet"
            ),
        }
    }
}

/// The first active lock among `found` (the locks of [`lock_targets`] that exist), the user's
/// own before their groups'.
pub fn lock_denial(found: &[FleetLock], now: OffsetDateTime) -> Option<Denial> {
    let active = |user: bool| {
        found
            .iter()
            .find(|l| matches!(l.target, LockTarget::User(_)) == user && l.active(now))
    };
    active(true)
        .or_else(|| active(false))
        .cloned()
        .map(Denial::Locked)
}

/// The Kubernetes user behind an exec session, from the grant it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeIdentity {
    pub user: String,
    pub groups: Vec<String>,
    /// The AdmissionReview's uid: the grant's key.
    pub review: String,
}

impl From<&ExecGrant> for KubeIdentity {
    fn from(g: &ExecGrant) -> Self {
        KubeIdentity {
            user: g.user.clone(),
            groups: g.groups.clone(),
            review: g.review.clone(),
        }
    }
}

/// An exec session on a node, as its grant must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantQuery {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The exec's command line, space-joined (as the session keeps it).
    pub command: String,
    pub tty: bool,
    pub started_at: OffsetDateTime,
}

/// How long before an exec's start its grant may have been written (the apiserver forwards
/// the exec to the kubelet right after the webhook allows it; this leaves room for a slow
/// kubelet and runc).
pub const GRANT_BEFORE: time::Duration = time::Duration::seconds(30);
/// How long after an exec's start its grant's time may be: the webhook's clock and the node's
/// differ a little.
pub const GRANT_AFTER: time::Duration = time::Duration::seconds(5);

/// Which of a pod's unmatched grants an exec session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantMatch {
    /// Exactly this one (index into the grants given).
    One(usize),
    /// None fits: the exec did not pass the webhook (not configured for it, `failurePolicy:
    /// Ignore` while it was down, or someone ran it on the node directly).
    NoGrant,
    /// This many fit equally (the same command in the same container at nearly the same time):
    /// not guessed.
    Ambiguous(usize),
}

/// Matches `q` against a pod's unmatched `grants`: same container (a grant that named none is
/// for the pod's default container, which any container may be), same command, same tty, made
/// within [`GRANT_BEFORE`] before and [`GRANT_AFTER`] after the exec started. Several that fit
/// are one only when they are the same user's (with the same groups). Attach grants start no
/// process and match no exec session.
pub fn match_grant(grants: &[ExecGrant], q: &GrantQuery) -> GrantMatch {
    let fits: Vec<usize> = grants
        .iter()
        .enumerate()
        .filter(|(_, g)| {
            let made =
                OffsetDateTime::parse(&g.time, &time::format_description::well_known::Rfc3339);
            g.subresource == Subresource::Exec
                && !g.command_truncated
                && g.namespace == q.namespace
                && g.pod == q.pod
                && g.container.as_ref().is_none_or(|c| *c == q.container)
                && g.command.join(" ") == q.command
                && g.tty == q.tty
                && made.is_ok_and(|t| {
                    t >= q.started_at - GRANT_BEFORE && t <= q.started_at + GRANT_AFTER
                })
        })
        .map(|(i, _)| i)
        .collect();
    let same = |a: &ExecGrant, b: &ExecGrant| a.user == b.user && a.groups == b.groups;
    match fits.as_slice() {
        [] => GrantMatch::NoGrant,
        [one] => GrantMatch::One(*one),
        // One user's identical execs at once: whichever is taken, the identity is the same.
        [first, rest @ ..] if rest.iter().all(|i| same(&grants[*first], &grants[*i])) => {
            GrantMatch::One(*first)
        }
        many => GrantMatch::Ambiguous(many.len()),
    }
}

/// A deleted grant key as a watch reports it: the revision of the delete, the key, and the
/// value it held (`prev_kv`).
pub struct GrantDelete<'a> {
    pub revision: i64,
    pub key: &'a str,
    pub value: &'a [u8],
}

/// The grants among `deletes` that lapsed unmatched: a pod's key deleted in the same revision
/// as its user's — their shared lease expired. A node claiming a grant deletes the pod's key
/// alone; a session's end deletes the user's alone; the webhook takes back a refused exec's
/// keys one at a time: none of those is a lapse.
pub fn lapsed_grants(keys: &Keys, deletes: &[GrantDelete]) -> Vec<ExecGrant> {
    let users: std::collections::HashSet<(i64, String)> = deletes
        .iter()
        .filter_map(|d| {
            let k = keys.grant_key(d.key)?;
            (!k.by_pod).then_some((d.revision, k.review))
        })
        .collect();
    deletes
        .iter()
        .filter(|d| {
            keys.grant_key(d.key)
                .is_some_and(|k| k.by_pod && users.contains(&(d.revision, k.review)))
        })
        .filter_map(|d| serde_json::from_slice::<ExecGrant>(d.value).ok())
        .filter(|g| g.matched.is_none())
        .collect()
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
