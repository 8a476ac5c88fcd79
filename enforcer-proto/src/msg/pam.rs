//! What pam_enforcer.so sends from inside sshd.

use serde::{Deserialize, Serialize};

/// PAM `acct_mgmt` in the sshd monitor: everything PAM knows about the login at that point.
/// (sshd fills `SSH_AUTH_INFO_0` only later, so the key identity arrives with open_session.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PamAccount {
    /// PAM_USER.
    pub user: String,
    /// PAM_SERVICE (sshd's argv[0] basename).
    pub service: String,
    /// PAM_RHOST: the peer address, or a host name with `UseDNS yes`.
    pub rhost: Option<String>,
    /// PAM_TTY (always "ssh" under sshd).
    pub tty: Option<String>,
    /// The process calling PAM: sshd's privileged monitor for this connection.
    pub pid: u32,
    /// `SSH_CONNECTION` from the PAM environment: "client_ip client_port server_ip server_port".
    pub ssh_connection: Option<String>,
    /// `SSH_AUTH_INFO_0` from the PAM environment, when set.
    pub auth_info: Option<String>,
}

/// PAM `open_session` / `close_session` in the same monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PamSession {
    pub user: String,
    /// The monitor's pid (the connection's key together with its start time).
    pub pid: u32,
    /// The id `acct_mgmt` was given, when the module kept it.
    pub conn_id: Option<u64>,
    /// `SSH_AUTH_INFO_0` (set by sshd by open_session time): method and key or certificate.
    pub auth_info: Option<String>,
}

/// The answer to [`PamAccount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Admission {
    Admitted {
        conn_id: u64,
    },
    Refused {
        /// Machine-readable reason: `user_locked`, `max_connections_per_user`,
        /// `max_connections_per_source`.
        reason: String,
        /// One line shown to the user by sshd.
        message: String,
    },
}
