//! Live connections as `enforcerctl sessions` shows them.

use serde::{Deserialize, Serialize};

/// One admitted SSH connection, or one `kubectl exec` session (`kind` says which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection id; for `kube_exec`, the kernel identity of the exec's processes (the
    /// id to kill is its session's).
    pub id: u64,
    /// `ssh` (absent in older daemons' answers), or `kube_exec`.
    #[serde(default)]
    pub kind: ConnectionKind,
    /// For `kube_exec`: the pod, container and exec (its one session is in `sessions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeExecInfo>,
    pub user: String,
    pub uid: Option<u32>,
    /// `pending` between acct_mgmt and open_session, then `open`.
    pub state: String,
    pub client: Option<Endpoint>,
    pub server: Option<Endpoint>,
    /// PAM_RHOST as sshd gave it.
    pub rhost: Option<String>,
    pub service: String,
    /// sshd's privileged monitor process for this connection.
    pub monitor_pid: u32,
    /// When the connection was admitted (RFC 3339).
    pub since: String,
    pub auth: Option<AuthIdentity>,
    /// Live sessions (channels) of the connection.
    #[serde(default)]
    pub sessions: Vec<SessionInfo>,
    /// Live forwarding channels (`ssh -L/-R/-D/-W`, agent, X11).
    #[serde(default)]
    pub forwards: Vec<ForwardInfo>,
    /// The last activity the idle timeout counts (RFC 3339; absent until first measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
    /// When the connection is cut if it stays idle (RFC 3339; absent without an idle timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_cut_at: Option<String>,
}

/// What an entry of `enforcerctl sessions` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    /// An SSH connection (PAM admitted it; its sessions are channels).
    #[default]
    Ssh,
    /// A `kubectl exec` session, found through containerd (no user identity on the node).
    KubeExec,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Ssh => "ssh",
            ConnectionKind::KubeExec => "kube_exec",
        }
    }
}

/// Whose a `kubectl exec` session is, as containerd names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeExecInfo {
    /// The Node (`[kubernetes] node_name`).
    pub node: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// The container's name in the pod spec.
    pub container: String,
    /// containerd's container id.
    pub container_id: String,
    /// containerd's exec id.
    pub exec_id: String,
    /// The exec'd command line.
    pub command: String,
    /// Whether the exec has a terminal (`kubectl exec -t`).
    pub tty: bool,
    /// When the exec started (RFC 3339).
    pub start: String,
    /// The exec'd process (host pid).
    pub pid: u32,
}

/// One forwarding channel of a connection (kind `forward` in `enforcerctl sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardInfo {
    /// `direct_tcpip` (-L, -D, -W/ProxyJump), `direct_streamlocal`, `forwarded_tcpip` (-R,
    /// X11), `forwarded_streamlocal`, `agent`.
    pub forward: String,
    /// Where sshd connected (host:port, socket path), or the listener it accepted on.
    pub target: String,
    /// RFC 3339.
    pub opened: String,
    /// RFC 3339.
    pub last_activity: String,
    /// Bytes from the client through the forward, and back.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One session (shell, exec or subsystem channel) of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: u64,
    /// `shell`, `exec`, `subsystem`, or `starting` before anything ran.
    pub kind: String,
    /// Whether the session has a pseudo-terminal.
    pub pty: bool,
    /// Terminal name ("pts/3") for pty sessions.
    pub tty: Option<String>,
    /// The command of exec/subsystem sessions.
    pub command: Option<String>,
    /// The session leader (the process sshd started for the channel).
    pub leader_pid: u32,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339.
    pub last_activity: String,
    /// Live processes in the session (leader included).
    pub processes: u32,
    /// Their pids.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Programs executed so far.
    pub commands: u64,
}

/// An address and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: String,
    pub port: u16,
}

/// Who is behind a login, from sshd's `SSH_AUTH_INFO_0`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AuthIdentity {
    /// `publickey`, `password`, `keyboard-interactive`, … (the last method that completed).
    pub method: String,
    /// Key algorithm, e.g. `ssh-ed25519` or `ssh-ed25519-cert-v01@openssh.com`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// `SHA256:…` fingerprint of the user's public key (of the certified key for certificates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Certificate key id (the identity a CA vouched for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<u64>,
    /// `SHA256:…` fingerprint of the CA key that signed the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_ca_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub cert_principals: Vec<String>,
}
