//! Sessions: a tracked task below sshd's per-connection processes that calls setsid() starts
//! one (that is what sshd does for every shell/exec/subsystem channel). The limit decision is
//! made here, atomically, so a refused session never needs a round trip to the daemon.
//!
//! sshd's own setsid() and chdir() are seen where they return and start (`sshd.rs`, or the
//! host-wide `syscalls.rs`); a task that became a session leader in some other code (a program
//! that calls setsid() itself) starts its session at its first exec (`process.rs`).
use enforcer_common::{
    counters::Counter,
    events::{EventKind, SessionEvent},
    limits::{REFUSED_CONN_LIMIT, REFUSED_NONE, REFUSED_USER_LIMIT},
    tasks::{
        TASK_CONN_AUX, TASK_CONN_ROOT, TASK_COUNTED_CONN, TASK_COUNTED_USER, TASK_REFUSED,
        TASK_SESSION_LEADER, TASK_STOPPED, TrackedTask,
    },
};

use crate::{
    atomic::fetch_add,
    maps::{ENF_CONNS, ENF_TASKS, ENF_USERS, SIGSTOP, count, emit, signal_current},
    process::{current_ids, header},
};

/// Takes a slot in `*sessions` unless `max` (0 = unlimited) are taken; true when taken.
#[inline(always)]
fn take_slot(sessions: *mut u64, max: u32) -> bool {
    let before = fetch_add(sessions, 1);
    if max != 0 && before >= max as u64 {
        fetch_add(sessions, u64::MAX);
        return false;
    }
    true
}

/// setsid() returned `ret` in the current task.
#[inline(always)]
pub fn setsid_returned(ret: i64) {
    if ret < 0 {
        return;
    }
    let (pid, tid) = current_ids();
    let Some(task) = ENF_TASKS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup; only this task updates its entry.
    start(pid, tid, unsafe { &mut *task });
}

/// Starts a session led by the current task (`task` is its entry in `ENF_TASKS`) unless it is
/// already in one or is one of sshd's own processes. True when it started one.
#[inline(always)]
pub fn start(pid: u32, tid: u32, task: &mut TrackedTask) -> bool {
    // Already in a session (a user's own setsid cannot leave it), or sshd's own processes.
    if task.session_id != 0 || task.flags & (TASK_CONN_ROOT | TASK_CONN_AUX) != 0 {
        return false;
    }
    let mut refused = REFUSED_NONE;
    let mut limit = 0;
    let mut uid = 0;
    let mut flags = TASK_SESSION_LEADER;
    if let Some(conn) = ENF_CONNS.get_ptr_mut(&task.conn_id) {
        // SAFETY: map value pointer from a successful lookup.
        let conn = unsafe { &mut *conn };
        uid = conn.uid;
        if !take_slot(core::ptr::addr_of_mut!(conn.sessions), conn.max_sessions) {
            refused = REFUSED_CONN_LIMIT;
            limit = conn.max_sessions;
        } else {
            flags |= TASK_COUNTED_CONN;
            if let Some(user) = ENF_USERS.get_ptr_mut(&conn.uid) {
                // SAFETY: as above.
                let user = unsafe { &mut *user };
                if take_slot(core::ptr::addr_of_mut!(user.sessions), user.max_sessions) {
                    flags |= TASK_COUNTED_USER;
                } else {
                    refused = REFUSED_USER_LIMIT;
                    limit = user.max_sessions;
                    fetch_add(core::ptr::addr_of_mut!(conn.sessions), u64::MAX);
                    flags &= !TASK_COUNTED_CONN;
                }
            }
        }
    }
    if refused != REFUSED_NONE {
        flags |= TASK_REFUSED;
        count(Counter::SessionsRefused);
    } else {
        count(Counter::SessionsStarted);
    }
    task.session_id = tid as u64;
    task.flags |= flags;
    let event = SessionEvent {
        header: header(EventKind::Session, pid, tid, task),
        start_ns: task.start_ns,
        refused,
        limit,
        uid,
        _pad: 0,
    };
    emit(&event);
    true
}

/// sshd's channel child calls chdir(home) after wiring its stdio to the channel and before
/// exec: a refused session stops there (still in sshd's code) so the daemon can write the
/// reason to the channel and kill it. If the daemon does not, exec kills it anyway.
#[inline(always)]
pub fn chdir_called() {
    let (pid, tid) = current_ids();
    let Some(task) = ENF_TASKS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    let task = unsafe { &mut *task };
    if task.flags & TASK_REFUSED == 0 || task.flags & TASK_STOPPED != 0 {
        return;
    }
    task.flags |= TASK_STOPPED;
    signal_current(SIGSTOP);
    let event = header(EventKind::Stopped, pid, tid, task);
    emit(&event);
}
