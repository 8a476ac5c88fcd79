//! Process lifecycle: identity inheritance on fork, exec and exit reporting, and the kills that
//! must happen before a new program runs a single instruction.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::bpf_probe_read_kernel_str,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use enforcer_common::{
    counters::Counter,
    events::{
        EXEC_ARGV_TRUNCATED, EXEC_ARGV_UNREADABLE, EXEC_CWD_TRUNCATED, EXEC_FILENAME_TRUNCATED,
        EXEC_HAS_TTY, EXEC_KILLED_DOOMED, EXEC_KILLED_LOCKED, EXEC_KILLED_REFUSED, EventHeader,
        EventKind, ExecEvent, ExitEvent, FILENAME_LEN,
    },
    offsets::ABSENT,
    tasks::{
        TASK_COUNTED_CONN, TASK_COUNTED_USER, TASK_DOOMED, TASK_REFUSED, TASK_SESSION_LEADER,
        TrackedTask, child_flags,
    },
};

use crate::{
    atomic::fetch_add,
    config::off,
    kernel::{self, field},
    maps::{ENF_CONNS, ENF_EVENTS, ENF_LOCKED, ENF_TASKS, ENF_USERS, count, emit, kill_current},
};

/// Current (tgid, tid).
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
pub fn header(kind: EventKind, pid: u32, tid: u32, task: &TrackedTask) -> EventHeader {
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

/// Whether the current task runs as a locked user: its real uid (helper), or its effective or
/// saved uid (read from its credentials), is in `ENF_LOCKED`.
#[inline(always)]
fn locked_current() -> bool {
    let is_locked = |uid: u32| unsafe { ENF_LOCKED.get(&uid) }.is_some();
    if is_locked(bpf_get_current_uid_gid() as u32) {
        return true;
    }
    let Ok(cred) = field::<u64>(kernel::current(), off!(task_cred)) else {
        return false;
    };
    field::<u32>(cred, off!(cred_euid)).is_ok_and(is_locked)
        || field::<u32>(cred, off!(cred_suid)).is_ok_and(is_locked)
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn enf_fork(ctx: BtfTracePointContext) -> i32 {
    if !crate::config::active() {
        return 0;
    }
    count(Counter::ForkSeen);
    if try_enf_fork(&ctx).is_err() {
        count(Counter::DropReadFailed);
    }
    0
}

/// The forking task is `current`; a tracked parent hands its identity to the child.
fn try_enf_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
    if locked_current() {
        // A locked user's process may not multiply; the child dies at its exec or fork, or
        // in the daemon's sweep of the user's processes.
        kill_current(Counter::KilledLocked);
    }
    let (_, parent_tid) = current_ids();
    // sched_process_fork(struct task_struct *parent, struct task_struct *child)
    let child: u64 = ctx.arg(1);
    let Some(parent) = (unsafe { ENF_TASKS.get(&parent_tid) }).copied() else {
        if let Ok(child_tid) = field::<i32>(child, off!(task_pid)) {
            crate::gate::on_fork(parent_tid, child_tid as u32);
        }
        return Ok(());
    };
    let child_tid: i32 = field(child, off!(task_pid))?;
    let task = TrackedTask {
        flags: child_flags(parent.flags),
        start_ns: kernel::start_ns(child)?,
        _pad: 0,
        ..parent
    };
    if ENF_TASKS.insert(&(child_tid as u32), &task, 0).is_err() {
        count(Counter::DropTasksFull);
    } else {
        count(Counter::TasksInherited);
    }
    if parent.flags & TASK_DOOMED != 0 {
        // A terminated session keeps forking: stop the parent here; the child carries the flag
        // and dies at exec or in the daemon's next kill pass.
        kill_current(Counter::KilledDoomed);
    }
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn enf_exec(ctx: TracePointContext) -> u32 {
    if !crate::config::active() {
        return 0;
    }
    count(Counter::ExecSeen);
    if try_enf_exec(&ctx).is_err() {
        count(Counter::DropReadFailed);
    }
    0
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn enf_signal(ctx: TracePointContext) -> u32 {
    if !crate::config::active() {
        return 0;
    }
    // SAFETY: offsets from this kernel's tracefs format of the record.
    let sig: Result<i32, _> = unsafe { ctx.read_at(off!(tp_signal_sig) as usize) };
    let target: Result<i32, _> = unsafe { ctx.read_at(off!(tp_signal_pid) as usize) };
    if let (Ok(sig), Ok(target)) = (sig, target) {
        crate::gate::on_signal(sig as u32, target as u32);
    }
    0
}

/// The thread id the exec'ing task had before (a non-leader thread that exec'd takes the
/// leader's id).
#[inline(always)]
fn old_tid(ctx: &TracePointContext) -> Option<u32> {
    if off!(tp_exec_old_pid) == ABSENT {
        return None;
    }
    let old: i32 = unsafe { ctx.read_at(off!(tp_exec_old_pid) as usize) }.ok()?;
    Some(old as u32)
}

/// Looks the exec'ing task up; a non-leader thread that exec'd took the leader's id but is
/// still filed under its old thread id.
fn exec_task(ctx: &TracePointContext, tid: u32) -> Result<Option<TrackedTask>, i32> {
    if let Some(t) = unsafe { ENF_TASKS.get(&tid) } {
        return Ok(Some(*t));
    }
    let Some(old) = old_tid(ctx) else {
        return Ok(None);
    };
    if old == tid {
        return Ok(None);
    }
    let Some(t) = (unsafe { ENF_TASKS.get(&old) }).copied() else {
        return Ok(None);
    };
    let _ = ENF_TASKS.remove(&old);
    if ENF_TASKS.insert(&tid, &t, 0).is_err() {
        count(Counter::DropTasksFull);
    }
    Ok(Some(t))
}

fn try_enf_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let (pid, tid) = current_ids();
    // The new image has not run an instruction yet: a SIGKILL sent now is handled before the
    // return to user mode.
    let locked = locked_current();
    if locked {
        kill_current(Counter::KilledLocked);
    }
    crate::gate::on_exec(tid, old_tid(ctx).unwrap_or(tid));
    let Some(mut task) = exec_task(ctx, tid)? else {
        return Ok(());
    };
    if task.session_id == 0 && kernel::session_leader(kernel::current()) {
        // It called setsid() in code no hook watches (sshd's own call is seen where it returns):
        // its session starts now, before the new program runs.
        if let Some(entry) = ENF_TASKS.get_ptr_mut(&tid) {
            // SAFETY: map value pointer from a successful lookup; only this task updates it.
            let entry = unsafe { &mut *entry };
            if crate::session::start(pid, tid, entry) {
                task = *entry;
            }
        }
    }
    let mut flags = 0;
    if locked {
        flags |= EXEC_KILLED_LOCKED;
    } else if task.flags & TASK_REFUSED != 0 {
        kill_current(Counter::KilledRefused);
        flags |= EXEC_KILLED_REFUSED;
    } else if task.flags & TASK_DOOMED != 0 {
        kill_current(Counter::KilledDoomed);
        flags |= EXEC_KILLED_DOOMED;
    }
    let Some(mut entry) = ENF_EVENTS.reserve::<ExecEvent>(0) else {
        count(Counter::DropRingbufFull);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let cur = kernel::current();
    // SAFETY: `ev` points at a reserved, exclusively owned ring buffer record.
    unsafe {
        (*ev).header = header(EventKind::Exec, pid, tid, &task);
        (*ev).start_ns = kernel::start_ns(cur).unwrap_or(0);
        (*ev).ppid = kernel::ppid(cur).unwrap_or(0);
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).filename_len = 0;
        if off!(tp_exec_filename) != ABSENT {
            if let Ok(loc) = ctx.read_at::<u32>(off!(tp_exec_filename) as usize) {
                // __data_loc: low 16 bits = offset in the record, high 16 bits = length with NUL.
                let src = ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize);
                let r = bpf_probe_read_kernel_str(
                    (*ev).filename.as_mut_ptr().cast(),
                    FILENAME_LEN as u32,
                    src.cast(),
                );
                if r > 0 {
                    (*ev).filename_len = (r - 1) as u32;
                }
                if (loc >> 16) as usize > FILENAME_LEN {
                    flags |= EXEC_FILENAME_TRUNCATED;
                }
            }
        }
        match kernel::argv(cur, &mut (*ev).argv) {
            Ok((n, truncated)) => {
                (*ev).argv_len = n;
                if truncated {
                    flags |= EXEC_ARGV_TRUNCATED;
                }
            }
            Err(_) => {
                (*ev).argv_len = 0;
                flags |= EXEC_ARGV_UNREADABLE;
            }
        }
        match kernel::cwd(cur, &mut (*ev).cwd) {
            Ok((depth, truncated)) => {
                (*ev).cwd_depth = depth;
                if truncated {
                    flags |= EXEC_CWD_TRUNCATED;
                }
            }
            Err(_) => {
                (*ev).cwd_depth = 0;
                flags |= EXEC_CWD_TRUNCATED;
            }
        }
        if kernel::tty(cur, &mut (*ev).tty) {
            flags |= EXEC_HAS_TTY;
        }
        let fds = kernel::fd_table(cur);
        for fd in 0..3u64 {
            (*ev).stdio_ino[fd as usize] = fds
                .and_then(|t| kernel::fd_at(t, fd))
                .map(kernel::file_ino)
                .unwrap_or(0);
        }
        (*ev).flags = flags;
    }
    entry.submit(0);
    count(Counter::EventsSent);
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn enf_exit(ctx: TracePointContext) -> u32 {
    if !crate::config::active() {
        return 0;
    }
    count(Counter::ExitSeen);
    if try_enf_exit(&ctx).is_err() {
        count(Counter::DropReadFailed);
    }
    0
}

/// A session leader's slot goes back to its connection and user.
#[inline(always)]
fn release_session_slots(task: &TrackedTask) {
    if task.flags & TASK_COUNTED_CONN == 0 {
        return;
    }
    let Some(conn) = ENF_CONNS.get_ptr_mut(&task.conn_id) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    unsafe {
        fetch_add(core::ptr::addr_of_mut!((*conn).sessions), u64::MAX);
        if task.flags & TASK_COUNTED_USER != 0 {
            if let Some(user) = ENF_USERS.get_ptr_mut(&(*conn).uid) {
                fetch_add(core::ptr::addr_of_mut!((*user).sessions), u64::MAX);
            }
        }
    }
}

fn try_enf_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (pid, tid) = current_ids();
    crate::gate::on_exit(tid);
    let Some(task) = (unsafe { ENF_TASKS.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = ENF_TASKS.remove(&tid);
    let leader = task.flags & TASK_SESSION_LEADER != 0;
    if leader {
        release_session_slots(&task);
    }
    let group_dead = if off!(tp_exit_group_dead) == ABSENT {
        pid == tid
    } else {
        let v: u8 = unsafe { ctx.read_at(off!(tp_exit_group_dead) as usize) }?;
        v != 0
    };
    if !group_dead && !leader {
        return Ok(());
    }
    let cur = kernel::current();
    let event = ExitEvent {
        header: header(EventKind::Exit, pid, tid, &task),
        start_ns: task.start_ns,
        exit_code: kernel::exit_code(cur).unwrap_or(0),
        flags: task.flags,
    };
    emit(&event);
    Ok(())
}
