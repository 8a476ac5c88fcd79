//! The kernel side as the daemon sees it. One task (the actor, `actor.rs`) owns the aya object
//! and its maps; the rest of the daemon talks to it through a [`BpfHandle`] and receives
//! [`KernelEvent`]s on a channel. Links and maps are pinned (`links.rs`, `pins.rs`): the
//! programs keep enforcing while no daemon runs.

mod actor;
mod batch;
pub mod btf;
pub mod events;
mod gosym;
mod hooks;
mod links;
mod loader;
mod offsets;
mod pins;
mod plt;
mod probe;
pub mod tasks;
pub mod tracefs;

pub use actor::{BpfHandle, BpfSnapshot, start};
pub use events::{EventOrigin, Exec, ForwardChange, KernelEvent, KilledAtExec, SessionLimit};
pub use links::{Continuity, detach_all};
pub use tasks::KillTarget;

use std::path::PathBuf;

use aya::maps::{HashMap, MapData, RingBuf};
use enforcer_common::io::IoKey;

/// The maps of the recording path, handed to the recorder thread: the data ring and the
/// per-channel counts of bytes that could not be recorded.
pub struct RecorderMaps {
    pub data: RingBuf<MapData>,
    pub lost: HashMap<MapData, IoKey, u64>,
}

/// Load-time knobs (from `[daemon]`).
#[derive(Debug, Clone)]
pub struct BpfSettings {
    pub ring_buffer_bytes: u32,
    pub max_tracked_tasks: u32,
    /// Where maps and program links are pinned (bpffs).
    pub pin_dir: PathBuf,
    /// What the kernel copies into the data ring.
    pub record: enforcer_common::io::RecordSettings,
    /// Size of the data ring (bytes).
    pub data_ring_bytes: u32,
    /// Where sshd's I/O, setsid and chdir are hooked.
    pub io_hooks: crate::config::IoHooks,
    /// sshd executables hooked at start.
    pub sshd_binaries: Vec<PathBuf>,
    /// containerd shim executables whose exec streams are recorded (empty: Kubernetes off).
    pub shim_binaries: Vec<PathBuf>,
}

/// Failures of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "enforcerd was built without its BPF object; build it with `cargo xtask build` (it runs `cargo xtask build-ebpf` first)"
    )]
    NoObject,
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    Tracefs(String),
    #[error("cannot use tracepoint format {}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error(
        "loading the BPF object failed: {0}; enforcerd must run as root (CAP_BPF, CAP_PERFMON) on a kernel with BPF ring buffers (5.8+)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "kernel BTF lacks what enforcer needs ({0}); a kernel with CONFIG_DEBUG_INFO_BTF is required"
    )]
    Btf(String),
    #[error("BPF pin directory: {0}")]
    Pins(String),
    #[error(
        "cannot hook sshd's calls: {0}; set `[daemon] io_hooks = \"syscalls\"` to use syscall tracepoints instead (every process then pays for them)"
    )]
    Hook(String),
    #[error("BPF object has no program {0}; rebuild with `cargo xtask build`")]
    MissingProgram(&'static str),
    #[error("BPF object has no map {0}; rebuild with `cargo xtask build`")]
    MissingMap(&'static str),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the BPF task has stopped (see the daemon log)")]
    ActorGone,
}
