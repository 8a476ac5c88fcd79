//! Resolving a control-socket peer to a [`Role`] (the I/O half of authorisation).

use super::Role;

/// The process on the other end of a control connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub role: Role,
}

impl Peer {
    /// Classifies a peer: root, member of the auditor group (checked against the peer process's
    /// real supplementary groups), or ordinary user.
    pub fn resolve(uid: u32, gid: u32, pid: Option<i32>, auditor_group: &str) -> Self {
        let role = if uid == 0 {
            Role::Root
        } else if is_member(gid, pid, auditor_group) {
            Role::Auditor
        } else {
            Role::User
        };
        Peer {
            uid,
            gid,
            pid,
            role,
        }
    }

    /// Whether this peer may see what belongs to `uid` (connections, sessions, recordings):
    /// root and auditors everything, users their own.
    pub fn may_see(&self, uid: Option<u32>) -> bool {
        self.role != Role::User || uid == Some(self.uid)
    }
}

fn is_member(gid: u32, pid: Option<i32>, group: &str) -> bool {
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    let want = g.gid.as_raw();
    if gid == want {
        return true;
    }
    // The groups the process actually holds, not what /etc/group says it could have.
    let Some(pid) = pid else { return false };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|gs| gs.split_whitespace().any(|g| g.parse() == Ok(want)))
}
