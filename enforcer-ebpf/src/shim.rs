//! Uprobes in containerd's shim (`containerd-shim-runc-v2`, a Go program): it holds each
//! `kubectl exec`'s pty master (or its stdio pipes) and copies the client's stream in and the
//! session's output out with `os.File` reads and writes, which all go through `syscall.read`
//! and `syscall.write`; it sizes the pty through `golang.org/x/sys/unix.ioctl`. The daemon
//! finds these in the binary's Go symbol table (`gosym.rs`) and attaches the read and write
//! programs at each one's `CALL syscall.Syscall(trap, fd, buf, len)` (Go's register ABI: RAX,
//! RBX, RCX, RDI = the arguments) and `enf_shim_rw_ret` at the error test's jump after it (RAX
//! = the result): instructions the kernel emulates, so each hit is one trap, not two (see
//! `gosym.rs` in enforcer). The ioctl program is at `unix.ioctl`'s entry (RAX, RBX, RCX = its
//! arguments; rare). No return probe: a uretprobe rewrites the return address on a Go stack,
//! which Go may move. Only shim processes run these.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use enforcer_common::io::{DIR_INPUT, DIR_OUTPUT};

use crate::io;

/// The registers the probes read: (RAX, RBX, RCX).
#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64, u64) {
    // SAFETY: `regs` is the probed task's saved user registers, valid while the program runs.
    unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx)
    }
}

/// The running goroutine (Go's register ABI keeps its `g` in R14): a call's entry and return
/// are the same goroutine's, though not always the same thread's.
#[inline(always)]
fn goroutine(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `regs`.
    unsafe { (*ctx.regs).r14 }
}

/// `syscall.read(fd int, p []byte)` calling `Syscall(SYS_READ, fd, buf, len)`: the shim takes
/// the session's output.
#[uprobe]
pub fn enf_shim_read(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        let (_, fd, buf) = regs(&ctx);
        io::begin_exec(fd, buf, DIR_OUTPUT, goroutine(&ctx));
    }
    0
}

/// `syscall.write(fd int, p []byte)` calling `Syscall(SYS_WRITE, fd, buf, len)`: the shim
/// hands the client's input on.
#[uprobe]
pub fn enf_shim_write(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        let (_, fd, buf) = regs(&ctx);
        io::begin_exec(fd, buf, DIR_INPUT, goroutine(&ctx));
    }
    0
}

/// Back from `syscall.Syscall` in `syscall.read` or `syscall.write`, at its error test.
#[uprobe]
pub fn enf_shim_rw_ret(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        io::end_exec(regs(&ctx).0 as i64, goroutine(&ctx));
    }
    0
}

/// `unix.ioctl(fd int, req uint, arg uintptr)`: a window-size change.
#[uprobe]
pub fn enf_shim_ioctl(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        let (fd, req, arg) = regs(&ctx);
        io::ioctl_exec(fd, req, arg);
    }
    0
}
