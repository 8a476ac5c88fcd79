//! Process lifecycle: identity inheritance on fork, exec and exit reporting.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use enforcer_common::{
    counters::Counter,
    events::{EXEC_FILENAME_TRUNCATED, EventHeader, EventKind, ExecEvent, ExitEvent, FILENAME_LEN},
    tasks::{TASK_CONN_ROOT, TrackedTask},
};

use crate::{
    config::{self, ABSENT},
    maps::{ENF_EVENTS, ENF_TASKS, count},
};

/// Current (tgid, tid).
#[inline(always)]
fn current_ids() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
fn header(kind: EventKind, pid: u32, tid: u32, task: &TrackedTask) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        _pad: 0,
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        conn_id: task.conn_id,
        session_id: task.session_id,
    }
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn enf_fork(ctx: TracePointContext) -> u32 {
    count(Counter::ForkSeen);
    if try_enf_fork(&ctx).is_err() {
        count(Counter::DropReadFailed);
    }
    0
}

/// The forking task is `current`; a tracked parent hands its identity to the child.
fn try_enf_fork(ctx: &TracePointContext) -> Result<(), i32> {
    let (_, parent_tid) = current_ids();
    let Some(parent) = (unsafe { ENF_TASKS.get(&parent_tid) }) else {
        return Ok(());
    };
    let child_tid: i32 = unsafe { ctx.read_at(config::fork_child_off() as usize) }?;
    let child = TrackedTask { flags: parent.flags & !TASK_CONN_ROOT, ..*parent };
    if ENF_TASKS.insert(&(child_tid as u32), &child, 0).is_err() {
        count(Counter::DropTasksFull);
    } else {
        count(Counter::TasksInherited);
    }
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn enf_exec(ctx: TracePointContext) -> u32 {
    count(Counter::ExecSeen);
    if try_enf_exec(&ctx).is_err() {
        count(Counter::DropReadFailed);
    }
    0
}

fn try_enf_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let (pid, tid) = current_ids();
    let task = match unsafe { ENF_TASKS.get(&tid) } {
        Some(t) => *t,
        None => {
            // A non-leader thread exec'd: the kernel gave it the leader's id, our map still has
            // it under its old thread id.
            let old: i32 = unsafe { ctx.read_at(config::exec_old_pid_off() as usize) }?;
            let old = old as u32;
            if old == tid {
                return Ok(());
            }
            let Some(t) = (unsafe { ENF_TASKS.get(&old) }).copied() else {
                return Ok(());
            };
            let _ = ENF_TASKS.remove(&old);
            if ENF_TASKS.insert(&tid, &t, 0).is_err() {
                count(Counter::DropTasksFull);
            }
            t
        }
    };
    let Some(mut entry) = ENF_EVENTS.reserve::<ExecEvent>(0) else {
        count(Counter::DropRingbufFull);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring buffer record.
    unsafe {
        (*ev).header = header(EventKind::Exec, pid, tid, &task);
        (*ev).flags = 0;
        (*ev).filename_len = 0;
        let loc: u32 = match ctx.read_at(config::exec_filename_off() as usize) {
            Ok(v) => v,
            Err(e) => {
                entry.discard(0);
                return Err(e);
            }
        };
        // __data_loc: low 16 bits = offset in the record, high 16 bits = length with NUL.
        let src = ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize);
        let want = (loc >> 16) as usize;
        match bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) {
            Ok(s) => (*ev).filename_len = s.len() as u32,
            Err(_) => count(Counter::DropReadFailed),
        }
        if want > FILENAME_LEN {
            (*ev).flags |= EXEC_FILENAME_TRUNCATED;
        }
    }
    entry.submit(0);
    count(Counter::EventsSent);
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn enf_exit(ctx: TracePointContext) -> u32 {
    count(Counter::ExitSeen);
    if try_enf_exit(&ctx).is_err() {
        count(Counter::DropReadFailed);
    }
    0
}

fn try_enf_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (pid, tid) = current_ids();
    let Some(task) = (unsafe { ENF_TASKS.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = ENF_TASKS.remove(&tid);
    let off = config::exit_group_dead_off();
    let group_dead = if off == ABSENT {
        pid == tid
    } else {
        let v: u8 = unsafe { ctx.read_at(off as usize) }?;
        v != 0
    };
    if !group_dead {
        return Ok(());
    }
    let event = ExitEvent {
        header: header(EventKind::Exit, pid, tid, &task),
        last_tid: tid,
        was_root: (task.flags & TASK_CONN_ROOT != 0) as u32,
    };
    if ENF_EVENTS.output::<ExitEvent>(&event, 0).is_err() {
        count(Counter::DropRingbufFull);
    } else {
        count(Counter::EventsSent);
    }
    Ok(())
}
