//! Limits per user/group and the admission decision.

use std::net::IpAddr;

use crate::config::{Config, Dur};

use super::{audit::AuditReason, conn::Registry, lock::Lock};

/// The limits that apply to one user after `[[rules]]` (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub max_connections_per_user: u32,
    pub max_connections_per_source: u32,
    pub max_sessions_per_connection: u32,
    pub max_sessions_per_user: u32,
    pub idle_timeout: Dur,
}

impl EffectiveLimits {
    /// No limit at all (a login `[kubernetes] gate_ssh` admits while the label is absent).
    pub const NONE: EffectiveLimits = EffectiveLimits {
        max_connections_per_user: 0,
        max_connections_per_source: 0,
        max_sessions_per_connection: 0,
        max_sessions_per_user: 0,
        idle_timeout: Dur::ZERO,
    };
}

/// Who `[[rules]]` and per-user limits look at: the name typed at login, the account NSS maps
/// it to (the same name when NSS does not know it) and the groups of both. A rule naming either
/// name applies, so a second name for an account never escapes the account's rules.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub user: &'a str,
    pub account: &'a str,
    pub groups: &'a [String],
}

impl<'a> Who<'a> {
    /// A user whose account is their own name.
    pub fn named(user: &'a str, groups: &'a [String]) -> Self {
        Who {
            user,
            account: user,
            groups,
        }
    }

    fn is(&self, name: &str) -> bool {
        name == self.user || name == self.account
    }
}

/// The `[[rules]]` entries that apply to `who`, in order: the first that sets a key wins.
pub fn matching_rules<'a>(
    config: &'a Config,
    who: Who<'a>,
) -> impl Iterator<Item = &'a crate::config::Rule> {
    config.rules.iter().filter(move |r| {
        r.users.iter().any(|u| who.is(u)) || r.groups.iter().any(|g| who.groups.contains(g))
    })
}

/// Resolves the limits for `who`: for each key the first matching rule that sets it wins, else
/// the global value.
pub fn effective_limits(config: &Config, who: Who) -> EffectiveLimits {
    let matching: Vec<_> = matching_rules(config, who).collect();
    macro_rules! pick {
        ($key:ident, $global:expr) => {
            matching.iter().find_map(|r| r.$key).unwrap_or($global)
        };
    }
    let l = &config.limits;
    EffectiveLimits {
        max_connections_per_user: pick!(max_connections_per_user, l.max_connections_per_user),
        max_connections_per_source: pick!(max_connections_per_source, l.max_connections_per_source),
        max_sessions_per_connection: pick!(
            max_sessions_per_connection,
            l.max_sessions_per_connection
        ),
        max_sessions_per_user: pick!(max_sessions_per_user, l.max_sessions_per_user),
        idle_timeout: pick!(idle_timeout, config.idle.timeout),
    }
}

/// Why a login is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Locked(Box<Lock>),
    UserLimit {
        limit: u32,
    },
    SourceLimit {
        limit: u32,
        source: IpAddr,
    },
    /// `[fleet]`: the user holds `limit` connections across the fleet.
    FleetUserLimit {
        limit: u32,
    },
    /// `[fleet]`: this node is locked (`enforcerctl lock node`).
    NodeLocked {
        node: String,
        reason: Option<String>,
    },
    /// `[fleet]`: etcd could not be asked (strict mode, or a slot not taken in time).
    FleetUnreachable,
}

impl Refusal {
    /// The audit reason.
    pub fn reason(&self) -> AuditReason {
        match self {
            Refusal::Locked(_) => AuditReason::UserLocked,
            Refusal::UserLimit { .. } => AuditReason::MaxConnectionsPerUser,
            Refusal::SourceLimit { .. } => AuditReason::MaxConnectionsPerSource,
            Refusal::FleetUserLimit { .. } => AuditReason::FleetMaxConnectionsPerUser,
            Refusal::NodeLocked { .. } => AuditReason::NodeLocked,
            Refusal::FleetUnreachable => AuditReason::FleetUnreachable,
        }
    }

    /// Stable reason code (the protocol's `Admission::Refused`; the audit reason's name).
    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }

    /// The line sshd shows the user.
    pub fn message(&self, user: &str) -> String {
        let body = match self {
            Refusal::Locked(lock) => lock.refusal_message(),
            Refusal::UserLimit { limit } => {
                format!("user {user} already has {limit} of {limit} allowed SSH connections open")
            }
            Refusal::SourceLimit { limit, source } => {
                format!("{limit} of {limit} allowed SSH connections from {source} are already open")
            }
            Refusal::FleetUserLimit { limit } => format!(
                "user {user} already has {limit} of {limit} allowed SSH connections open across the fleet"
            ),
            Refusal::NodeLocked { node, reason } => match reason {
                Some(r) => format!("node {node} is locked: {r}"),
                None => format!("node {node} is locked"),
            },
            Refusal::FleetUnreachable => {
                "the fleet's lock service cannot be reached; try again later".into()
            }
        };
        format!("enforcer: login refused: {body}")
    }
}

/// Decides whether one more connection of `user` from `source` may be admitted now.
pub fn admit(
    registry: &Registry,
    user: &str,
    uid: Option<u32>,
    source: Option<IpAddr>,
    limits: &EffectiveLimits,
    lock: Option<&Lock>,
) -> Result<(), Refusal> {
    if let Some(lock) = lock {
        return Err(Refusal::Locked(Box::new(lock.clone())));
    }
    let per_user = limits.max_connections_per_user;
    if per_user > 0 && registry.count_user(user, uid) >= per_user {
        return Err(Refusal::UserLimit { limit: per_user });
    }
    let per_source = limits.max_connections_per_source;
    if let (true, Some(ip)) = (per_source > 0, source) {
        if registry.count_source(ip) >= per_source {
            return Err(Refusal::SourceLimit {
                limit: per_source,
                source: ip,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conn::tests::conn;

    fn config(text: &str) -> Config {
        Config::parse(text, "t").unwrap()
    }

    #[test]
    fn globals_apply_without_rules() {
        let c = config("[limits]\nmax_connections_per_user = 2\n");
        let l = effective_limits(&c, Who::named("alice", &[]));
        assert_eq!(l.max_connections_per_user, 2);
        assert_eq!(l.max_connections_per_source, 0);
        assert_eq!(l.idle_timeout, Dur::secs(900));
    }

    #[test]
    fn first_matching_rule_per_key_wins() {
        let c = config(
            "[limits]\nmax_connections_per_user = 2\nmax_sessions_per_user = 9\n\
             [[rules]]\ngroups = [\"ops\"]\nmax_connections_per_user = 5\n\
             [[rules]]\nusers = [\"alice\"]\nmax_connections_per_user = 1\nmax_sessions_per_user = 3\n",
        );
        let alice_in_ops = effective_limits(&c, Who::named("alice", &["ops".into()]));
        assert_eq!(
            alice_in_ops.max_connections_per_user, 5,
            "ops rule comes first"
        );
        assert_eq!(
            alice_in_ops.max_sessions_per_user, 3,
            "only the alice rule sets it"
        );
        let alice = effective_limits(&c, Who::named("alice", &["users".into()]));
        assert_eq!(alice.max_connections_per_user, 1);
        let bob = effective_limits(&c, Who::named("bob", &[]));
        assert_eq!(bob.max_connections_per_user, 2);
        assert_eq!(bob.max_sessions_per_user, 9);
    }

    #[test]
    fn a_rule_naming_the_account_binds_its_other_names() {
        let c = config(
            "[limits]\nmax_connections_per_user = 4\n\
             [[rules]]\nusers = [\"alice\"]\nmax_connections_per_user = 1\n\
             [[rules]]\nusers = [\"al\"]\nmax_sessions_per_user = 2\n",
        );
        let groups = Vec::new();
        let alias = Who {
            user: "al",
            account: "alice",
            groups: &groups,
        };
        let l = effective_limits(&c, alias);
        assert_eq!(l.max_connections_per_user, 1, "the account's rule");
        assert_eq!(l.max_sessions_per_user, 2, "the typed name's rule too");
        assert_eq!(
            effective_limits(&c, Who::named("al", &[])).max_connections_per_user,
            4,
            "a name NSS does not map stays itself"
        );
    }

    #[test]
    fn rule_can_lift_a_limit_with_zero() {
        let c = config(
            "[limits]\nmax_connections_per_user = 2\n[[rules]]\nusers = [\"ci\"]\nmax_connections_per_user = 0\n",
        );
        assert_eq!(
            effective_limits(&c, Who::named("ci", &[])).max_connections_per_user,
            0
        );
    }

    fn limits(per_user: u32, per_source: u32) -> EffectiveLimits {
        EffectiveLimits {
            max_connections_per_user: per_user,
            max_connections_per_source: per_source,
            max_sessions_per_connection: 0,
            max_sessions_per_user: 0,
            idle_timeout: Dur::ZERO,
        }
    }

    #[test]
    fn user_limit_counts_pending_and_open() {
        let mut r = Registry::default();
        r.insert(conn("alice", 10, "10.0.0.1:1"));
        let ip = Some("10.0.0.9".parse().unwrap());
        assert!(admit(&r, "alice", None, ip, &limits(2, 0), None).is_ok());
        r.insert(conn("alice", 11, "10.0.0.1:2"));
        let refusal = admit(&r, "alice", None, ip, &limits(2, 0), None).unwrap_err();
        assert_eq!(refusal.code(), "max_connections_per_user");
        assert_eq!(
            refusal.message("alice"),
            "enforcer: login refused: user alice already has 2 of 2 allowed SSH connections open"
        );
        assert!(admit(&r, "bob", None, ip, &limits(2, 0), None).is_ok());
        assert!(
            admit(&r, "alice", None, ip, &limits(0, 0), None).is_ok(),
            "0 = unlimited"
        );
    }

    #[test]
    fn user_limit_counts_the_account_under_any_name() {
        let mut r = Registry::default();
        r.insert(conn("alice", 10, "10.0.0.1:1")); // uid 1000
        let ip = Some("10.0.0.9".parse().unwrap());
        let e = admit(&r, "ALICE", Some(1000), ip, &limits(1, 0), None).unwrap_err();
        assert_eq!(e.code(), "max_connections_per_user");
        assert!(admit(&r, "bob", Some(2000), ip, &limits(1, 0), None).is_ok());
        assert!(
            admit(&r, "ALICE", None, ip, &limits(1, 0), None).is_ok(),
            "a name NSS does not know is only itself"
        );
    }

    #[test]
    fn source_limit_across_users() {
        let mut r = Registry::default();
        r.insert(conn("alice", 10, "10.0.0.1:1"));
        r.insert(conn("bob", 11, "10.0.0.1:2"));
        let src = Some("10.0.0.1".parse().unwrap());
        let e = admit(&r, "carol", None, src, &limits(0, 2), None).unwrap_err();
        assert_eq!(e.code(), "max_connections_per_source");
        assert!(e.message("carol").contains("from 10.0.0.1"));
        assert!(
            admit(
                &r,
                "carol",
                None,
                Some("10.0.0.2".parse().unwrap()),
                &limits(0, 2),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn lock_wins_over_everything() {
        let r = Registry::default();
        let lock = Lock::parse("alice", b"reason = \"offboarding\"\n", None);
        let e = admit(&r, "alice", None, None, &limits(0, 0), Some(&lock)).unwrap_err();
        assert_eq!(e.code(), "user_locked");
        assert_eq!(
            e.message("alice"),
            "enforcer: login refused: account alice is locked: offboarding"
        );
    }
}
