//! enforcer's kernel side: tracks every task that descends from something the daemon registered
//! (an admitted SSH connection's sshd monitor), detects sessions (a channel child's setsid),
//! enforces session limits itself (a refused session dies at exec), and reports exec/exit.
//!
//! The data path uses sched tracepoints (every process, but only on fork, exec and exit) and
//! uprobes on sshd's own calls (`sshd`: only sshd processes) and on containerd shims' Go
//! read/write/ioctl functions (`shim`: `kubectl exec` I/O); syscall tracepoints (`syscalls`)
//! are the host-wide fallback. fentry/LSM are refused on the kernels we target
//! (shared/DESIGN.md part B). The `probes` module holds trivial programs the daemon loads once
//! to find out what the running kernel accepts.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod gate;
#[cfg(target_arch = "bpf")]
mod io;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod session;
#[cfg(target_arch = "bpf")]
mod shim;
#[cfg(target_arch = "bpf")]
mod sshd;
#[cfg(target_arch = "bpf")]
mod syscalls;

/// Dual licence: GPL-compatible so the verifier allows GPL-only helpers (bpf_send_signal).
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

// Lets `cargo check --workspace` on the host build this crate as an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
