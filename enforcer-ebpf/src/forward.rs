//! Forwarding channels (`ssh -L/-R/-D/-W`, ProxyJump, agent, X11): sshd moves their bytes
//! between the client and a socket it connected or accepted. Those sockets are remembered in
//! `ENF_FORWARDS` so that `io.rs` counts their bytes on the connection's idle clock (never in a
//! recording), and the daemon hears when each opens and closes.
//!
//! Only a connection's own sshd process (`TASK_CONN_AUX`) registers or closes one: a channel
//! child closing its inherited copy before exec does not end the forward.

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use enforcer_common::{
    counters::Counter,
    events::{
        EventKind, FORWARD_ACCEPTED, FORWARD_CLOSED, FORWARD_CONNECTED, ForwardEvent, SOCKADDR_LEN,
    },
    io::{IO_FORWARD, IoKey, MAX_FORWARDS_PER_CONN},
    tasks::{TASK_CONN_AUX, TrackedTask},
};

use crate::{
    atomic::fetch_add,
    kernel,
    maps::{ENF_EVENTS, ENF_FORWARDS, ENF_FWD_ACTIVITY, ENF_FWD_COUNT, ENF_TASKS, count},
    process::{current_ids, header},
};

/// The current task's ids and tracked identity, when it is a connection's sshd process.
#[inline(always)]
fn aux() -> Option<(u32, u32, TrackedTask)> {
    let (pid, tid) = current_ids();
    let task = *unsafe { ENF_TASKS.get(&tid) }?;
    (task.flags & TASK_CONN_AUX != 0).then_some((pid, tid, task))
}

/// Takes one of the connection's forward slots (`MAX_FORWARDS_PER_CONN`); false when none is
/// left or the count map is full.
#[inline(always)]
fn take_slot(conn_id: u64) -> bool {
    // BPF_NOEXIST: the first forward of a connection; otherwise count up atomically.
    if ENF_FWD_COUNT.insert(&conn_id, &1, 1).is_ok() {
        return true;
    }
    let Some(n) = ENF_FWD_COUNT.get_ptr_mut(&conn_id) else {
        return false;
    };
    if fetch_add(n, 1) >= MAX_FORWARDS_PER_CONN {
        fetch_add(n, u64::MAX);
        return false;
    }
    true
}

#[inline(always)]
fn release_slot(conn_id: u64) {
    if let Some(n) = ENF_FWD_COUNT.get_ptr_mut(&conn_id) {
        fetch_add(n, u64::MAX);
    }
}

/// The current sshd process of a connection and the socket behind its `fd`:
/// (pid, tid, identity, socket inode).
#[inline(always)]
fn socket_of_aux(fd: u64) -> Option<(u32, u32, TrackedTask, u64)> {
    let (pid, tid, task) = aux()?;
    let ino = kernel::fd_file(kernel::current(), fd)
        .ok()
        .and_then(kernel::socket_ino)?;
    Some((pid, tid, task, ino))
}

/// Tells the daemon about socket `ino`: `what`, the bytes through it, and the first `len` bytes
/// of the user-space address at `addr` (0: none).
#[inline(always)]
fn send(
    pid: u32,
    tid: u32,
    task: &TrackedTask,
    what: u32,
    ino: u64,
    bytes: (u64, u64),
    addr: u64,
    len: u64,
) {
    let Some(mut entry) = ENF_EVENTS.reserve::<ForwardEvent>(0) else {
        count(Counter::DropRingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let n = if len > SOCKADDR_LEN as u64 {
        SOCKADDR_LEN as u32
    } else {
        len as u32
    };
    // SAFETY: `ev` points at a reserved, exclusively owned ring record; `n` ≤ its addr size
    // and the helper validates the user address.
    unsafe {
        (*ev).header = header(EventKind::Forward, pid, tid, task);
        (*ev).what = what;
        (*ev).ino = ino;
        (*ev).bytes_in = bytes.0;
        (*ev).bytes_out = bytes.1;
        (*ev).addr_len = 0;
        if n > 0 && bpf_probe_read_user((*ev).addr.as_mut_ptr().cast(), n, addr as *const _) == 0 {
            (*ev).addr_len = n;
        }
    }
    entry.submit(0);
    count(Counter::EventsSent);
}

/// Registers the socket behind `fd` and tells the daemon; `addr`/`len`: the address connected
/// to (0 for an accepted socket).
#[inline(always)]
fn open(fd: u64, what: u32, addr: u64, len: u64) {
    let Some((pid, tid, task, ino)) = socket_of_aux(fd) else {
        return;
    };
    if unsafe { ENF_FORWARDS.get(&ino) }.is_some() {
        return;
    }
    if !take_slot(task.conn_id) {
        count(Counter::DropForwardsFull);
        return;
    }
    if ENF_FORWARDS.insert(&ino, &task.conn_id, 0).is_err() {
        release_slot(task.conn_id);
        count(Counter::DropForwardsFull);
        return;
    }
    send(pid, tid, &task, what, ino, (0, 0), addr, len);
}

/// sshd calls connect(fd, addr, len): a direct-tcpip or direct-streamlocal channel.
#[inline(always)]
pub fn connecting(fd: u64, addr: u64, len: u64) {
    open(fd, FORWARD_CONNECTED, addr, len);
}

/// accept() returned `ret` in sshd: a connection on a forwarding listener.
#[inline(always)]
pub fn accepted(ret: i64) {
    if ret >= 0 {
        open(ret as u64, FORWARD_ACCEPTED, 0, 0);
    }
}

/// sshd calls close(fd): if it is a forward of this connection, it ends here.
#[inline(always)]
pub fn closing(fd: u64) {
    let Some((pid, tid, task, ino)) = socket_of_aux(fd) else {
        return;
    };
    if unsafe { ENF_FORWARDS.get(&ino) }.copied() != Some(task.conn_id) {
        return;
    }
    let _ = ENF_FORWARDS.remove(&ino);
    release_slot(task.conn_id);
    let key = IoKey {
        conn_id: task.conn_id,
        object: IO_FORWARD | ino,
    };
    let bytes = unsafe { ENF_FWD_ACTIVITY.get(&key) }
        .map(|a| (a.input_bytes, a.output_bytes))
        .unwrap_or((0, 0));
    let _ = ENF_FWD_ACTIVITY.remove(&key);
    send(pid, tid, &task, FORWARD_CLOSED, ino, bytes, 0, 0);
}
