//! `enforcerctl status`: what the daemon runs and what it has seen.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything `enforcerctl status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// enforcerd version.
    pub version: String,
    /// enforcerd process id.
    pub pid: u32,
    /// When the daemon started (RFC 3339).
    pub started_at: String,
    pub uptime_secs: u64,
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// Config file in use, `None` for the embedded defaults.
    pub config_path: Option<String>,
    pub socket: String,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    /// Which BPF features this kernel accepts.
    pub features: Vec<FeatureProbe>,
    /// Event counters (kernel and daemon), by name.
    pub events: BTreeMap<String, u64>,
    /// Lost work, by reason. Every reason is always present, zero or not.
    pub dropped: BTreeMap<String, u64>,
    /// The policy in force (absent from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReport>,
    /// The state actor's periodic jobs and how long they take (logins wait while one runs).
    #[serde(default)]
    pub sweeps: Vec<SweepStatus>,
    /// Uploads to `[recording.store]`; absent when recordings stay local only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
}

/// Where recordings are shipped and how far behind that is (`enforcerctl status`, `STORE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// This node's name in object keys.
    pub node: String,
    /// Bytes of recordings not yet in the store (in local files only).
    pub pending_bytes: u64,
    /// Recordings whose complete object the store has not confirmed yet.
    pub pending_recordings: u64,
    /// The oldest of those: its session id and start (RFC 3339).
    pub oldest_pending_id: Option<u64>,
    pub oldest_pending_started: Option<String>,
    /// Parts, bytes and complete objects the store confirmed since the daemon started.
    pub parts_uploaded: u64,
    pub bytes_uploaded: u64,
    pub objects_stored: u64,
    /// Local copies deleted after their object was confirmed (`keep_local`).
    pub local_deleted: u64,
    /// Failed store requests since start (each is retried with backoff).
    pub errors: u64,
    /// The last failure and when (RFC 3339); cleared by nothing, so it shows what last went
    /// wrong even after uploads work again (compare with `last_success`).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// The last confirmed part or object (RFC 3339).
    pub last_success_at: Option<String>,
}

/// The policy in force: the config's sections with their keys and values as in the TOML file
/// (durations as strings), so every key a section has is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub limits: serde_json::Value,
    pub idle: serde_json::Value,
    pub recording: serde_json::Value,
    pub locks: serde_json::Value,
    /// `[[rules]]` in order: the first rule that sets a key for a user wins.
    pub rules: Vec<serde_json::Value>,
    /// `[metrics] listen`, when metrics are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// One periodic job of the state actor: how often it runs and how long it took (wall time,
/// waiting on the BPF actor included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepStatus {
    /// `idle_check` (idle clocks) or `monitor_sweep` (connections whose sshd monitor is gone).
    pub name: String,
    /// Interval between runs, ms.
    pub every_ms: u64,
    /// Runs since the daemon started.
    pub runs: u64,
    /// Duration of the latest run, µs.
    pub last_us: u64,
    /// Longest run since the daemon started, µs.
    pub max_us: u64,
    /// All runs together, µs (mean over a window: difference of two reads over their `runs`).
    pub total_us: u64,
    /// CPU time of the daemon's core thread (both actors) in the latest run, the longest and
    /// all runs together, µs: what the run cost, whatever else kept the CPUs busy.
    #[serde(default)]
    pub last_cpu_us: u64,
    #[serde(default)]
    pub max_cpu_us: u64,
    #[serde(default)]
    pub total_cpu_us: u64,
}

/// One BPF program of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    /// Program type, e.g. `tracepoint`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it is attached, e.g. `sched/sched_process_exec`.
    pub attach_point: String,
    pub state: ProgramState,
    /// Kernel program id while loaded.
    pub id: Option<u32>,
}

/// Lifecycle of a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ProgramState {
    Attached,
    /// Loaded or attach failed; the detail says why.
    Failed(String),
}

/// One BPF map of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Capacity (entries; bytes for a ring buffer).
    pub max_entries: u32,
    /// Entries in use, where countable.
    pub entries: Option<u64>,
}

/// Result of probing one BPF feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureProbe {
    pub name: String,
    pub supported: bool,
    /// How it was probed and, when refused, what the kernel said.
    pub detail: String,
}
