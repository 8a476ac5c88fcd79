//! The host-wide fallback: syscall tracepoints on read, write, ioctl, setsid and chdir. Every
//! process on the host pays for these on every such syscall (the tracepoints send every task
//! through the slow syscall path), so the daemon attaches them only where sshd's own calls
//! cannot be hooked (`sshd.rs`); `enforcerctl status` says which path is in use.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use enforcer_common::io::{DIR_INPUT, DIR_OUTPUT};

use crate::{config::off, io, session};

/// A syscall argument or return value at a tracepoint offset (0 when unreadable: never a
/// channel, a command or a success).
#[inline(always)]
fn at<T: Default>(ctx: &TracePointContext, offset: u32) -> T {
    unsafe { ctx.read_at::<T>(offset as usize) }.unwrap_or_default()
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn enf_write(ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        io::begin(
            at(&ctx, off!(tp_write_fd)),
            at(&ctx, off!(tp_write_buf)),
            DIR_INPUT,
        );
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn enf_write_ret(ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        io::end(unsafe { ctx.read_at::<i64>(off!(tp_write_ret) as usize) }.unwrap_or(-1));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn enf_read(ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        io::begin(
            at(&ctx, off!(tp_read_fd)),
            at(&ctx, off!(tp_read_buf)),
            DIR_OUTPUT,
        );
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn enf_read_ret(ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        io::end(unsafe { ctx.read_at::<i64>(off!(tp_read_ret) as usize) }.unwrap_or(-1));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn enf_ioctl(ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        io::ioctl(
            at(&ctx, off!(tp_ioctl_fd)),
            at(&ctx, off!(tp_ioctl_cmd)),
            at(&ctx, off!(tp_ioctl_arg)),
        );
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_setsid")]
pub fn enf_setsid(ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        session::setsid_returned(
            unsafe { ctx.read_at::<i64>(off!(tp_setsid_ret) as usize) }.unwrap_or(-1),
        );
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_chdir")]
pub fn enf_chdir(_ctx: TracePointContext) -> u32 {
    if crate::config::active() {
        session::chdir_called();
    }
    0
}
