//! Uprobes on sshd's own calls into libc: the stubs (PLT entries) through which sshd's code calls
//! read, write, ioctl, setsid, chdir, connect, accept and close. The daemon attaches them to the sshd executable's file,
//! so they fire only in processes running sshd's code: its per-connection processes, which move
//! every byte between the client and the session, and a channel child until it execs the
//! user's program. Every other process on the host runs none of these programs.
//!
//! Arguments come from the saved registers at the stub (the call's arguments), return values
//! at the return to sshd's code.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use enforcer_common::io::{DIR_INPUT, DIR_OUTPUT};

use crate::{forward, io, session};

/// Argument `n` of the probed call (0 when absent: never a channel, a command or a buffer).
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

#[uprobe]
pub fn enf_u_write(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        io::begin(arg(&ctx, 0), arg(&ctx, 1), DIR_INPUT);
    }
    0
}

#[uretprobe]
pub fn enf_u_write_ret(ctx: RetProbeContext) -> u32 {
    if crate::config::active() {
        io::end(ctx.ret::<i64>());
    }
    0
}

#[uprobe]
pub fn enf_u_read(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        io::begin(arg(&ctx, 0), arg(&ctx, 1), DIR_OUTPUT);
    }
    0
}

#[uretprobe]
pub fn enf_u_read_ret(ctx: RetProbeContext) -> u32 {
    if crate::config::active() {
        io::end(ctx.ret::<i64>());
    }
    0
}

#[uprobe]
pub fn enf_u_ioctl(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        io::ioctl(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    }
    0
}

#[uretprobe]
pub fn enf_u_setsid(ctx: RetProbeContext) -> u32 {
    if crate::config::active() {
        session::setsid_returned(ctx.ret::<i64>());
    }
    0
}

#[uprobe]
pub fn enf_u_chdir(_ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        session::chdir_called();
    }
    0
}

#[uprobe]
pub fn enf_u_connect(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        forward::connecting(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    }
    0
}

#[uretprobe]
pub fn enf_u_accept(ctx: RetProbeContext) -> u32 {
    if crate::config::active() {
        forward::accepted(ctx.ret::<i64>());
    }
    0
}

#[uprobe]
pub fn enf_u_close(ctx: ProbeContext) -> u32 {
    if crate::config::active() {
        forward::closing(arg(&ctx, 0));
    }
    0
}
