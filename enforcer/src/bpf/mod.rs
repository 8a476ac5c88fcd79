//! The kernel side as the daemon sees it. One task (the actor, `actor.rs`) owns the aya object,
//! its maps and links; the rest of the daemon talks to it through a [`BpfHandle`] and receives
//! [`KernelEvent`]s on a channel.

mod actor;
pub mod events;
mod loader;
mod probe;
pub mod tracefs;

pub use actor::{BpfHandle, BpfSnapshot, start};
pub use events::{EventOrigin, KernelEvent};

use std::path::PathBuf;

/// Load-time knobs (from `[daemon]`).
#[derive(Debug, Clone, Copy)]
pub struct BpfSettings {
    pub ring_buffer_bytes: u32,
    pub max_tracked_tasks: u32,
}

/// Failures of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "enforcerd was built without its BPF object; build it with `cargo xtask build` (it runs `cargo xtask build-ebpf` first)"
    )]
    NoObject,
    #[error("tracefs is not mounted and mounting it failed ({0}); mount it with `mount -t tracefs nodev /sys/kernel/tracing`")]
    Tracefs(String),
    #[error("cannot use tracepoint format {}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("loading the BPF object failed: {0}; enforcerd must run as root (CAP_BPF, CAP_PERFMON) on a kernel with BPF ring buffers (5.8+)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("BPF object has no program {0}; rebuild with `cargo xtask build`")]
    MissingProgram(&'static str),
    #[error("BPF object has no map {0}; rebuild with `cargo xtask build`")]
    MissingMap(&'static str),
    #[error("BPF program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("BPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("the BPF task has stopped (see the daemon log)")]
    ActorGone,
}
