//! enforcer's kernel side: tracks every task that descends from something the daemon registered
//! (an admitted SSH connection's sshd monitor) and reports exec/exit of those tasks.
//!
//! Only tracepoints are used for the data path: fentry/LSM are refused on the kernels we target
//! (shared/DESIGN.md part B). The `probes` module holds trivial programs the daemon loads once to
//! find out what the running kernel accepts.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod process;

/// Dual licence: GPL-compatible so the verifier allows GPL-only helpers.
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
