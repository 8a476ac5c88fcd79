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

/// Whether `role` may make `req`.
pub fn authorize(role: Role, req: &Request) -> Result<(), ErrorReply> {
    let allowed = match req {
        Request::Status => true,
    };
    if allowed || role == Role::Root {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorKind::PermissionDenied,
            "permission denied: this request needs root; run it with sudo",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_open_to_everyone() {
        for role in [Role::Root, Role::Auditor, Role::User] {
            assert!(authorize(role, &Request::Status).is_ok());
        }
    }
}
