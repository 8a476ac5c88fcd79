//! Daemon configuration (TOML). Unknown keys are errors that name the key and line; every key has
//! a default, documented in `packaging/enforcer.toml`, which is also the embedded default config.

mod duration;
mod fleet;
mod kube;
mod webhook;

pub use duration::Dur;
pub use fleet::{FleetConfig, OnUnreachable};
pub use kube::{DEFAULT_LABEL, KubernetesConfig, NamespaceRule};
pub use webhook::WebhookConfig;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The shipped example config; `enforcerd` without `--config` runs on exactly this.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../packaging/enforcer.toml");

/// Default config file location.
pub const DEFAULT_PATH: &str = "/etc/enforcer/enforcer.toml";

/// A config that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("config {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub audit: AuditConfig,
    pub limits: Limits,
    pub idle: IdleConfig,
    pub recording: RecordingConfig,
    pub locks: LocksConfig,
    pub access: AccessConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub fleet: FleetConfig,
    pub kubernetes: KubernetesConfig,
    pub webhook: WebhookConfig,
    pub rules: Vec<Rule>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Control socket (enforcerctl; mode 0666, authorised per request).
    pub socket: PathBuf,
    /// Root-only socket (mode 0600) for pam_enforcer: served ahead of everything else.
    pub pam_socket: PathBuf,
    /// Persistent state (connection table across restarts).
    pub state_dir: PathBuf,
    /// Size of the kernel → daemon event ring buffer in bytes (power of two, ≥ 4096).
    pub ring_buffer_bytes: u32,
    /// Capacity of the kernel's tracked-task table (threads included).
    pub max_tracked_tasks: u32,
    /// bpffs directory where the programs' links and maps are pinned, so enforcement and
    /// recording go on across restarts (`enforcerd --detach` removes it).
    pub bpf_pin_dir: PathBuf,
    /// How sshd's reads, writes, setsid and chdir are seen (recording, idle clocks, session
    /// starts).
    pub io_hooks: IoHooks,
    /// sshd executables hooked at start (those that exist). An executable named `sshd*` that
    /// runs an admitted connection is hooked when first seen, so these are only a head start.
    pub sshd_binaries: Vec<PathBuf>,
}

/// `[daemon] io_hooks`: where the kernel sees the bytes sshd moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoHooks {
    /// `sshd` when the kernel takes uprobes and every existing `sshd_binaries` entry has the
    /// PLT stubs; `syscalls` otherwise (the reason is in `enforcerctl status`).
    Auto,
    /// Uprobes on sshd's own calls: processes outside sshd pay nothing. Start fails if the
    /// kernel or an `sshd_binaries` entry does not allow it.
    Sshd,
    /// Syscall tracepoints: every process on the host pays on every read and write.
    Syscalls,
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// JSON-lines audit log.
    pub path: PathBuf,
    /// Also send every audit record to journald when its socket exists.
    pub journald: bool,
}

/// `[limits]` — 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections_per_user: u32,
    pub max_connections_per_source: u32,
    pub max_sessions_per_connection: u32,
    pub max_sessions_per_user: u32,
}

/// What counts as activity for the idle timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Input from the client only.
    Input,
    /// Input or output.
    Any,
}

/// `[idle]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleConfig {
    /// Idle time after which a connection is terminated; "0" = off.
    pub timeout: Dur,
    /// Warn the user this long before the cut-off.
    pub warn_before: Dur,
    pub activity: Activity,
    /// Whether bytes through forwarding channels (tunnels, ProxyJump, agent, X11) are activity.
    pub forwarding: Forwarding,
}

/// `[idle] forwarding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// Bytes either way through a forward keep its connection alive.
    Active,
    /// Only sessions count: a connection carrying only tunnels is idle.
    Ignore,
}

/// `[recording]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// Replace input typed while the terminal has echo off (passwords) with `*`.
    pub mask_echo_off_input: bool,
    /// Kernel → daemon buffer for recorded bytes (power of two, ≥ 65536). At 100 MB/s it holds
    /// this much time of output while the recorder catches up; overflow is a counted loss.
    pub buffer_bytes: u32,
    /// Also record what the client sends to non-pty (exec) sessions, i.e. their stdin.
    pub exec_stdin: bool,
    /// sftp, scp and rsync sessions: their files audited instead of their bytes recorded.
    pub file_transfers: crate::core::transfer::FileTransfers,
    /// Shipping recordings to S3-compatible storage while sessions run.
    pub store: StoreConfig,
}

/// `[recording.store]`: where recordings are uploaded (multipart, while the session runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`; empty: recordings stay local only.
    pub url: String,
    /// S3-compatible endpoint (`http://127.0.0.1:9000`); empty: AWS's for `region`.
    pub endpoint: String,
    pub region: String,
    /// AWS-style credentials file (`[default]` with aws_access_key_id, aws_secret_access_key),
    /// owned by root and not readable by others; empty: the SDK's default chain (environment,
    /// ~/.aws, instance metadata).
    pub credentials_file: PathBuf,
    /// This node's name in object keys and metadata; empty: the host name.
    pub node: String,
    /// Bytes per uploaded part (5 MiB ..= 5 GiB).
    pub part_size: u64,
    /// A part is also uploaded when this long passed since the last one and at least 5 MiB
    /// (S3's smallest non-final part) are waiting.
    pub flush_after: Dur,
    /// How long a recording stays on local disk after the store confirmed its complete
    /// object; "0": deleted at once.
    pub keep_local: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            credentials_file: PathBuf::new(),
            node: String::new(),
            part_size: 8 << 20,
            flush_after: Dur::secs(10),
            keep_local: Dur::secs(7 * 86400),
        }
    }
}

/// `[locks]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocksConfig {
    /// One file per locked user; dropping a file there locks, removing it unlocks.
    pub dir: PathBuf,
    /// A lock ends every process running as the user on this node (real, effective or saved
    /// uid), not only their SSH connections, and refuses their every exec while it lasts.
    pub all_processes: bool,
    /// Users (e.g. service accounts) whose processes outside SSH survive their lock even with
    /// `all_processes`; their SSH connections and lingering processes are still ended.
    pub exempt: Vec<String>,
}

/// `[access]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Members may list, play and watch every recording (but not kill or lock).
    pub auditor_group: String,
}

/// `[control]` — what unprivileged peers of the control socket may hold. Root is exempt from
/// the caps (not from the timeouts while a frame is half read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Concurrent connections of one non-root uid.
    pub max_connections_per_uid: u32,
    /// Concurrent connections of all non-root uids together.
    pub max_connections_non_root: u32,
    /// Largest request frame a non-root peer may announce, bytes.
    pub max_frame_bytes: u32,
    /// A frame must be complete this long after its first byte (every peer).
    pub read_timeout: Dur,
    /// A non-root connection with no request for this long is closed.
    pub idle_timeout: Dur,
}

/// `[metrics]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on GET /metrics at this address; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[[rules]]` — overrides for matching users or groups. For each key, the first matching rule
/// that sets it wins (like sshd's `Match`); keys no rule sets come from the global sections.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_user: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_connection: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_user: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Overrides `[fleet] max_connections_per_user` (connections across every node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_max_connections_per_user: Option<u32>,
    /// Overrides `[fleet] max_sessions_per_user` (sessions across every node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_max_sessions_per_user: Option<u32>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: enforcer_proto::DEFAULT_SOCKET.into(),
            pam_socket: enforcer_proto::DEFAULT_PAM_SOCKET.into(),
            state_dir: "/var/lib/enforcer".into(),
            ring_buffer_bytes: 4 << 20,
            max_tracked_tasks: 65536,
            bpf_pin_dir: "/sys/fs/bpf/enforcer".into(),
            io_hooks: IoHooks::Auto,
            sshd_binaries: vec![
                "/usr/sbin/sshd".into(),
                "/usr/lib/openssh/sshd-session".into(),
            ],
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: "/var/log/enforcer/audit.jsonl".into(),
            journald: true,
        }
    }
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            timeout: Dur::secs(15 * 60),
            warn_before: Dur::secs(60),
            activity: Activity::Input,
            forwarding: Forwarding::Active,
        }
    }
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "/var/lib/enforcer/recordings".into(),
            mask_echo_off_input: true,
            buffer_bytes: 32 << 20,
            exec_stdin: false,
            file_transfers: Default::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for LocksConfig {
    fn default() -> Self {
        Self {
            dir: "/etc/enforcer/locks.d".into(),
            all_processes: true,
            exempt: Vec::new(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            max_connections_per_uid: 32,
            max_connections_non_root: 256,
            max_frame_bytes: 64 << 10,
            read_timeout: Dur::secs(5),
            idle_timeout: Dur::secs(60),
        }
    }
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            auditor_group: "enforcer-auditors".into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default config.
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED_DEFAULT, "(embedded default)")
            .expect("packaging/enforcer.toml is valid (checked by unit test)")
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            source: Box::new(e),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_owned(), m));
        for (key, path) in [
            ("daemon.socket", &self.daemon.socket),
            ("daemon.pam_socket", &self.daemon.pam_socket),
        ] {
            let len = path.as_os_str().len();
            // sun_path is 108 bytes including the NUL.
            if len == 0 || len > 107 {
                return bad(key, format!("path must be 1..=107 bytes long, is {len}"));
            }
        }
        if self.daemon.pam_socket == self.daemon.socket {
            return bad(
                "daemon.pam_socket",
                "must differ from daemon.socket (it is the root-only socket for the PAM module)"
                    .into(),
            );
        }
        let c = &self.control;
        if c.max_frame_bytes < 4096 || c.max_frame_bytes > enforcer_proto::frame::MAX_FRAME {
            return bad(
                "control.max_frame_bytes",
                format!(
                    "{} must be between 4096 and {}",
                    c.max_frame_bytes,
                    enforcer_proto::frame::MAX_FRAME
                ),
            );
        }
        if c.read_timeout.is_zero() || c.idle_timeout.is_zero() {
            return bad(
                "control",
                "read_timeout and idle_timeout must be longer than 0".into(),
            );
        }
        let rb = self.daemon.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return bad(
                "daemon.ring_buffer_bytes",
                format!("{rb} must be a power of two ≥ 4096"),
            );
        }
        let rb = self.recording.buffer_bytes;
        if !rb.is_power_of_two() || rb < 65536 {
            return bad(
                "recording.buffer_bytes",
                format!("{rb} must be a power of two ≥ 65536"),
            );
        }
        let st = &self.recording.store;
        if !st.url.is_empty() {
            if let Err(m) = crate::core::upload::parse_url(&st.url) {
                return bad("recording.store.url", m);
            }
        }
        if !(crate::core::upload::MIN_PART..=5 << 30).contains(&st.part_size) {
            return bad(
                "recording.store.part_size",
                format!(
                    "{} must be between 5242880 (5 MiB, S3's smallest part) and 5368709120 (5 GiB)",
                    st.part_size
                ),
            );
        }
        if st.flush_after.is_zero() {
            return bad(
                "recording.store.flush_after",
                "must be longer than 0 (e.g. \"10s\")".into(),
            );
        }
        if !self.daemon.bpf_pin_dir.starts_with("/sys/fs/bpf/") {
            return bad(
                "daemon.bpf_pin_dir",
                "must be a directory below /sys/fs/bpf/".into(),
            );
        }
        if self.daemon.max_tracked_tasks < 1024 {
            return bad("daemon.max_tracked_tasks", "must be at least 1024".into());
        }
        if !self.idle.timeout.is_zero() && self.idle.warn_before >= self.idle.timeout {
            return bad(
                "idle.warn_before",
                format!(
                    "{} must be shorter than idle.timeout ({}); use \"0\" for no warning",
                    self.idle.warn_before, self.idle.timeout
                ),
            );
        }
        self.fleet.validate()?;
        self.kubernetes.validate()?;
        self.webhook.validate()?;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.users.is_empty() && rule.groups.is_empty() {
                return bad(
                    &format!("rules[{i}]"),
                    "matches nobody: give it `users = [...]` and/or `groups = [...]`".into(),
                );
            }
            if let (Some(t), w) = (rule.idle_timeout, self.idle.warn_before) {
                if !t.is_zero() && w >= t {
                    return bad(
                        &format!("rules[{i}].idle_timeout"),
                        format!("{t} must be longer than idle.warn_before ({w})"),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
