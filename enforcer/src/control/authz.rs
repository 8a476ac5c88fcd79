//! Who may do what (pure).

use enforcer_proto::{ErrorKind, ErrorReply, Request};

/// What the peer's credentials entitle it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// uid 0: everything (enforcerctl as root, the PAM module inside sshd).
    Root,
    /// Member of `access.auditor_group`: read everything, change nothing.
    Auditor,
    /// Anyone else: status, and their own sessions and recordings.
    User,
}

/// The least role that may make `req`.
fn needed(req: &Request) -> Role {
    match req {
        // Users see only their own connections and recordings (checked by the daemon).
        Request::Status
        | Request::Sessions
        | Request::Recordings { .. }
        | Request::StoreRecordings { .. }
        | Request::Play { .. } => Role::User,
        Request::Watch { .. }
        | Request::Locks
        | Request::History(_)
        | Request::FleetSessions
        | Request::Nodes => Role::Auditor,
        Request::PamAccount(_)
        | Request::PamOpenSession(_)
        | Request::PamCloseSession(_)
        | Request::Lock(_)
        | Request::Unlock { .. }
        | Request::UnlockTarget(_)
        | Request::KillSession { .. }
        | Request::KillConnection { .. }
        | Request::Reload => Role::Root,
    }
}

/// Whether `role` may make `req`.
pub fn authorize(role: Role, req: &Request) -> Result<(), ErrorReply> {
    let message = match (needed(req), role) {
        (Role::User, _) | (Role::Auditor, Role::Auditor) | (_, Role::Root) => return Ok(()),
        (Role::Auditor, _) => {
            "permission denied: this request needs root or membership in the auditor group \
             (access.auditor_group)"
        }
        (Role::Root, _) => "permission denied: this request needs root; run it with sudo",
    };
    Err(ErrorReply::new(ErrorKind::PermissionDenied, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_sessions_are_open_to_everyone() {
        for role in [Role::Root, Role::Auditor, Role::User] {
            assert!(authorize(role, &Request::Status).is_ok());
            assert!(authorize(role, &Request::Sessions).is_ok());
        }
    }

    #[test]
    fn only_root_changes_things_or_speaks_pam() {
        let lock = Request::Lock(enforcer_proto::LockRequest {
            user: "a".into(),
            ttl_secs: None,
            reason: None,
            force: false,
            replace: false,
            local: false,
            node: false,
            group: false,
            kube: None,
        });
        let pam = Request::PamCloseSession(enforcer_proto::PamSession {
            user: "a".into(),
            pid: 1,
            conn_id: None,
            auth_info: None,
        });
        for req in [
            lock,
            pam,
            Request::Unlock { user: "a".into() },
            Request::Reload,
        ] {
            assert!(authorize(Role::Root, &req).is_ok());
            let e = authorize(Role::Auditor, &req).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PermissionDenied);
            assert!(authorize(Role::User, &req).is_err());
        }
    }

    #[test]
    fn auditors_read_locks_and_history_users_do_not() {
        let history = Request::History(Default::default());
        for req in [Request::Locks, history] {
            assert!(authorize(Role::Auditor, &req).is_ok());
            assert!(authorize(Role::Root, &req).is_ok());
            assert!(authorize(Role::User, &req).is_err());
        }
    }
}
