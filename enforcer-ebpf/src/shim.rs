//! Uprobes in containerd's shim (`containerd-shim-runc-v2`, a Go program): it holds each
//! `kubectl exec`'s pty master (or its stdio pipes) and copies the client's stream in and the
//! session's output out with plain read/write calls. Go makes every such call through one
//! assembly function, `runtime/internal/syscall.Syscall6`; the daemon finds it in the binary's
//! Go symbol table and attaches `enf_shim_syscall` at its entry (Go's register ABI: RAX = the
//! syscall number, RBX, RCX, RDI = its first three arguments) and `enf_shim_syscall_ret` at
//! the instruction after its SYSCALL (RAX = the result). No return probe: a uretprobe rewrites
//! the return address on a Go stack, which Go may move. Only shim processes run these.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use enforcer_common::io::{DIR_INPUT, DIR_OUTPUT};

use crate::io;

/// x86-64 syscall numbers the shim's exec I/O uses.
const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_IOCTL: u64 = 16;

/// The registers the probes read: (RAX, RBX, RCX, RDI).
#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64, u64, u64) {
    // SAFETY: `regs` is the probed task's saved user registers, valid while the program runs.
    unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx, r.rdi)
    }
}

#[uprobe]
pub fn enf_shim_syscall(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        let (nr, a1, a2, a3) = regs(&ctx);
        match nr {
            SYS_READ => io::begin_exec(a1, a2, DIR_OUTPUT),
            SYS_WRITE => io::begin_exec(a1, a2, DIR_INPUT),
            SYS_IOCTL => io::ioctl_exec(a1, a2, a3),
            _ => {}
        }
    }
    0
}

#[uprobe]
pub fn enf_shim_syscall_ret(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        io::end(regs(&ctx).0 as i64);
    }
    0
}
