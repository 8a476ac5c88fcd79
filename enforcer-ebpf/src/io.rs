//! The bytes sshd moves between the client and its sessions: writes into a session's pty master
//! or stdin pipe are the client's input; reads from them are the session's output. Only sshd's
//! per-connection processes (`TASK_CONN_AUX`) are looked at, so each syscall elsewhere costs one
//! map lookup.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::tracepoint, programs::TracePointContext};
use enforcer_common::{
    counters::Counter,
    io::{Activity, IoKey, PendingRead},
    tasks::{TASK_CONN_AUX, TrackedTask},
};

use crate::{
    atomic::fetch_add,
    config::off,
    kernel,
    maps::{ENF_ACTIVITY, ENF_READS, ENF_TASKS, count},
    process::current_ids,
};

/// The channel behind `fd` if the current task is a connection's sshd process.
#[inline(always)]
fn channel(fd: u64) -> Option<(TrackedTask, IoKey)> {
    let (_, tid) = current_ids();
    let task = *unsafe { ENF_TASKS.get(&tid) }?;
    if task.flags & TASK_CONN_AUX == 0 {
        return None;
    }
    let file = kernel::fd_file(kernel::current(), fd).ok()?;
    let object = kernel::channel_object(file)?;
    Some((
        task,
        IoKey {
            conn_id: task.conn_id,
            object,
        },
    ))
}

/// Records input or output on a channel.
#[inline(always)]
fn touch(key: &IoKey, input: bool, bytes: u64) {
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(a) = ENF_ACTIVITY.get_ptr_mut(key) {
        // SAFETY: map value pointer from a successful lookup. Timestamps race benignly (the
        // latest wins); byte counts are added atomically.
        unsafe {
            if input {
                (*a).last_input_ns = now;
                fetch_add(core::ptr::addr_of_mut!((*a).input_bytes), bytes);
            } else {
                (*a).last_output_ns = now;
                fetch_add(core::ptr::addr_of_mut!((*a).output_bytes), bytes);
            }
        }
        return;
    }
    let a = if input {
        Activity {
            last_input_ns: now,
            input_bytes: bytes,
            ..Default::default()
        }
    } else {
        Activity {
            last_output_ns: now,
            output_bytes: bytes,
            ..Default::default()
        }
    };
    if ENF_ACTIVITY.insert(key, &a, 0).is_err() {
        count(Counter::DropActivityFull);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn enf_write(ctx: TracePointContext) -> u32 {
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(off!(tp_write_fd) as usize) }) else {
        return 0;
    };
    let Some((_, key)) = channel(fd) else {
        return 0;
    };
    let len: u64 = unsafe { ctx.read_at(off!(tp_write_count) as usize) }.unwrap_or(0);
    touch(&key, true, len);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn enf_read(ctx: TracePointContext) -> u32 {
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(off!(tp_read_fd) as usize) }) else {
        return 0;
    };
    let Some((_, key)) = channel(fd) else {
        return 0;
    };
    let buf: u64 = unsafe { ctx.read_at(off!(tp_read_buf) as usize) }.unwrap_or(0);
    let (_, tid) = current_ids();
    if ENF_READS
        .insert(&tid, &PendingRead { key, buf }, 0)
        .is_err()
    {
        count(Counter::DropActivityFull);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn enf_read_ret(ctx: TracePointContext) -> u32 {
    let (_, tid) = current_ids();
    let Some(pending) = (unsafe { ENF_READS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = ENF_READS.remove(&tid);
    let ret: i64 = unsafe { ctx.read_at(off!(tp_read_ret) as usize) }.unwrap_or(-1);
    if ret > 0 {
        touch(&pending.key, false, ret as u64);
    }
    0
}
