//! The bytes sshd moves between the client and its sessions: writes into a session's pty master
//! or stdin pipe are the client's input; reads from them are the session's output. Only sshd's
//! per-connection processes (`TASK_CONN_AUX`) are looked at. The entry points (`sshd.rs`:
//! uprobes on sshd's own calls; `syscalls.rs`: the host-wide fallback) hand the call's
//! arguments to [`begin`], [`end`] and [`ioctl`].
//!
//! Each such transfer updates the channel's idle clock (`ENF_ACTIVITY`) and, when recording, is
//! copied into the data ring (`ENF_DATA`) at syscall exit, with the number of bytes that really
//! moved. What cannot be copied is counted per channel in `ENF_LOST`.

use aya_ebpf::helpers::{
    bpf_ktime_get_boot_ns, bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw,
};
use enforcer_common::{
    counters::Counter,
    io::{
        Activity, CHUNK, DATA_MASKED, DIR_INPUT, DIR_OUTPUT, DIR_RESIZE, DataHeader, DataRecord,
        IO_EXEC, IO_FORWARD, IO_PTY, IoKey, MAX_CHUNKS, PendingIo, UNCLAIMED_MAX,
    },
    tasks::TASK_CONN_AUX,
};

use crate::{
    atomic::fetch_add,
    config::{ENF_SETTINGS, off},
    kernel,
    maps::{
        ENF_ACTIVITY, ENF_DATA, ENF_EXEC_CHANS, ENF_FORWARDS, ENF_FWD_ACTIVITY, ENF_GO_PENDING,
        ENF_LOST, ENF_PENDING, ENF_SCRATCH, ENF_TASKS, ENF_UNCLAIMED, ENF_WAKE, count,
    },
    process::current_ids,
};

/// `TIOCSWINSZ`: sshd sets the pty's window size (at allocation and on window-change).
const TIOCSWINSZ: u64 = 0x5414;
/// `ECHO` and `ICANON` in `c_lflag`.
const ECHO: u32 = 0o10;
const ICANON: u32 = 0o2;

/// `bpf_ringbuf_output` flags and the `bpf_ringbuf_query` selector.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in the data ring above which the recorder is woken at once.
const WAKE_AT: u64 = 1 << 20;
/// Otherwise the recorder is woken at most this often (ns): the first bytes after a quiet spell
/// reach it at once, a stream wakes it ~50 times a second.
const WAKE_EVERY_NS: u64 = 20_000_000;

/// Ring flags for one record written at `now`. By default the kernel wakes the reader whenever
/// it has caught up, i.e. on nearly every record of a fast stream, and that wakeup costs more
/// than the copy. Here: when the ring fills, or when the last wakeup is old; the recorder picks
/// up a burst's tail with a short timer while data flows, and sleeps while nothing does.
#[inline(always)]
fn wake_flags(now: u64) -> u64 {
    if ENF_DATA.query(BPF_RB_AVAIL_DATA) > WAKE_AT {
        return BPF_RB_FORCE_WAKEUP;
    }
    let Some(last) = ENF_WAKE.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP;
    };
    // SAFETY: array slot pointer from a successful lookup; a racing CPU only moves it forward.
    unsafe {
        if now.wrapping_sub(*last) < WAKE_EVERY_NS {
            return BPF_RB_NO_WAKEUP;
        }
        *last = now;
    }
    BPF_RB_FORCE_WAKEUP
}

/// The connection of task `tid` if it is one of a connection's sshd processes: the only map
/// lookup a syscall elsewhere pays, before anything else is read.
#[inline(always)]
fn aux_conn(tid: u32) -> Option<u64> {
    let task = unsafe { ENF_TASKS.get(&tid) }?;
    (task.flags & TASK_CONN_AUX != 0).then_some(task.conn_id)
}

/// The channel of connection `conn_id` behind the current task's `fd`: (key, file). A session's
/// pty or pipe, or a socket registered as one of the connection's forwards.
#[inline(always)]
fn channel(conn_id: u64, fd: u64) -> Option<(IoKey, u64)> {
    let file = kernel::fd_file(kernel::current(), fd).ok()?;
    let object = match kernel::channel_object(file) {
        Some(object) => object,
        None => {
            let ino = kernel::socket_ino(file)?;
            (unsafe { ENF_FORWARDS.get(&ino) }.copied() == Some(conn_id))
                .then_some(IO_FORWARD | ino)?
        }
    };
    Some((IoKey { conn_id, object }, file))
}

/// Whether the terminal behind a pty master is at a password prompt: echo off in canonical
/// (line) mode, as getpass(3), sudo, passwd and ssh set it. Line editors (readline, vim) also
/// turn echo off, but in non-canonical mode, and echo what is typed themselves.
#[inline(always)]
fn echo_off(master_file: u64) -> bool {
    let lflag = kernel::field::<u64>(master_file, off!(file_private_data))
        .and_then(|p| kernel::field::<u64>(p, off!(tty_file_private_tty)))
        .and_then(|master| kernel::field::<u64>(master, off!(tty_link)))
        .and_then(|slave| {
            kernel::field::<u32>(slave + off!(tty_termios) as u64, off!(ktermios_lflag))
        });
    matches!(lflag, Ok(l) if l & ECHO == 0 && l & ICANON != 0)
}

#[inline(always)]
fn settings() -> enforcer_common::io::RecordSettings {
    // SAFETY: read of a static the loader rewrites before the program runs.
    unsafe { core::ptr::read_volatile(&ENF_SETTINGS) }
}

/// Records input or output on a channel's idle clock.
#[inline(always)]
fn touch(key: &IoKey, input: bool, bytes: u64, now: u64) {
    let (map, full) = if key.object & IO_FORWARD != 0 {
        (&ENF_FWD_ACTIVITY, Counter::DropForwardsFull)
    } else {
        (&ENF_ACTIVITY, Counter::DropActivityFull)
    };
    if let Some(a) = map.get_ptr_mut(key) {
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
    if map.insert(key, &a, 0).is_err() {
        count(full);
    }
}

/// Counts bytes of an unclaimed exec pty (see `ENF_UNCLAIMED`).
#[inline(always)]
fn unclaimed(object: u64, bytes: u64) {
    if let Some(n) = ENF_UNCLAIMED.get_ptr_mut(&object) {
        fetch_add(n, bytes);
    } else if ENF_UNCLAIMED.insert(&object, &bytes, 0).is_err() {
        count(Counter::DropActivityFull);
    }
}

/// Bytes of a channel that could not be recorded.
#[inline(always)]
fn lose(key: &IoKey, bytes: u64) {
    count(Counter::DropRecordingBytes);
    if let Some(l) = ENF_LOST.get_ptr_mut(key) {
        fetch_add(l, bytes);
    } else if ENF_LOST.insert(key, &bytes, 0).is_err() {
        count(Counter::DropActivityFull);
    }
}

/// Copies `total` bytes from `buf` into the data ring, in chunks.
#[inline(always)]
fn record(p: &PendingIo, total: u64, now: u64) {
    let Some(rec) = ENF_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs.
    let rec: &mut DataRecord = unsafe { &mut *rec };
    rec.header = DataHeader {
        key: p.key,
        boot_ns: now,
        dir: p.dir,
        len: 0,
        flags: 0,
        rows: 0,
        cols: 0,
    };
    if p.echo_off != 0 {
        // The bytes typed at a password prompt never leave the kernel: only their count does.
        rec.header.flags = DATA_MASKED;
        rec.header.len = total as u32;
        if ENF_DATA
            .output::<DataHeader>(&rec.header, wake_flags(now))
            .is_err()
        {
            lose(&p.key, total);
        }
        return;
    }
    let mut done = 0u64;
    for _ in 0..MAX_CHUNKS {
        if done >= total {
            return;
        }
        let left = total - done;
        let n = if left > CHUNK as u64 {
            CHUNK
        } else {
            left as usize
        };
        // SAFETY: `n` ≤ CHUNK = the scratch payload size; the helper checks the user address.
        let r = unsafe {
            read_user_raw(
                rec.data.as_mut_ptr().cast(),
                n as u32,
                (p.buf + done) as *const _,
            )
        };
        if r < 0 {
            lose(&p.key, left);
            return;
        }
        rec.header.len = n as u32;
        // SAFETY: a `#[repr(C)]` record viewed as bytes; header + n ≤ its size.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (rec as *const DataRecord).cast::<u8>(),
                size_of::<DataRecord>(),
            )
        };
        if ENF_DATA
            .output::<[u8]>(&bytes[..size_of::<DataHeader>() + n], wake_flags(now))
            .is_err()
        {
            lose(&p.key, n as u64);
        }
        done += n as u64;
    }
    if done < total {
        lose(&p.key, total - done);
    }
}

/// Start of a read or write by an sshd process (`fd`, user buffer `buf`): remember the channel
/// and buffer until the call says how much moved.
#[inline(always)]
pub fn begin(fd: u64, buf: u64, dir: u32) {
    let (_, tid) = current_ids();
    let Some(conn_id) = aux_conn(tid) else {
        return;
    };
    if let Some((key, file)) = channel(conn_id, fd) {
        pend(tid, key, file, buf, dir);
    }
}

/// The exec channel behind a containerd shim's `fd`: (key, file). A channel the daemon has not
/// claimed yet is keyed by connection 0 when it is a pty (the shell's first prompt comes before
/// containerd reports the exec; the recorder holds such bytes until it is told whose they are)
/// and ignored otherwise (a pod's own stdout pipes carry its logs).
#[inline(always)]
fn exec_channel(fd: u64) -> Option<(IoKey, u64)> {
    let file = kernel::fd_file(kernel::current(), fd).ok()?;
    let object = kernel::exec_object(file)?;
    let conn_id = match unsafe { ENF_EXEC_CHANS.get(&object) } {
        Some(c) => *c,
        None if object & IO_PTY != 0
            && unsafe { ENF_UNCLAIMED.get(&object) }.copied().unwrap_or(0) < UNCLAIMED_MAX =>
        {
            0
        }
        None => return None,
    };
    Some((IoKey { conn_id, object }, file))
}

/// Start of a read or write by a containerd shim's goroutine `g`: as [`begin`], for exec
/// channels. Only a recording needs them: an exec's idle clock is not kept here.
#[inline(always)]
pub fn begin_exec(fd: u64, buf: u64, dir: u32, g: u64) {
    if settings().enabled == 0 {
        return;
    }
    let key = [current_ids().0 as u64, g];
    match exec_channel(fd) {
        Some((channel, file)) => {
            let p = pending(channel, file, buf, dir);
            if ENF_GO_PENDING.insert(&key, &p, 0).is_err() {
                count(Counter::DropActivityFull);
            }
        }
        // Not a channel: whatever this goroutine left pending is not this call's.
        None => {
            if unsafe { ENF_GO_PENDING.get(&key) }.is_some() {
                let _ = ENF_GO_PENDING.remove(&key);
            }
        }
    }
}

/// End of a shim's read or write begun by goroutine `g` ([`begin_exec`]).
#[inline(always)]
pub fn end_exec(ret: i64, g: u64) {
    let key = [current_ids().0 as u64, g];
    let Some(p) = (unsafe { ENF_GO_PENDING.get(&key) }).copied() else {
        return;
    };
    let _ = ENF_GO_PENDING.remove(&key);
    account(&p, ret);
}

#[inline(always)]
fn pend(tid: u32, key: IoKey, file: u64, buf: u64, dir: u32) {
    if ENF_PENDING
        .insert(&tid, &pending(key, file, buf, dir), 0)
        .is_err()
    {
        count(Counter::DropActivityFull);
    }
}

#[inline(always)]
fn pending(key: IoKey, file: u64, buf: u64, dir: u32) -> PendingIo {
    let s = settings();
    // Only a recording masks: the idle clock counts typed bytes either way.
    let echo_off = s.enabled != 0
        && dir == DIR_INPUT
        && key.object & IO_PTY != 0
        && s.mask_echo_off != 0
        && echo_off(file);
    PendingIo {
        key,
        buf,
        dir,
        echo_off: echo_off as u32,
    }
}

/// End of that read or write (`ret`: bytes moved or -errno): account for the bytes.
#[inline(always)]
pub fn end(ret: i64) {
    let (_, tid) = current_ids();
    let Some(p) = (unsafe { ENF_PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = ENF_PENDING.remove(&tid);
    account(&p, ret);
}

/// `ret` (bytes moved or -errno) of the read or write `p`: the idle clock, the recording.
#[inline(always)]
fn account(p: &PendingIo, ret: i64) {
    if ret <= 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if p.key.object & IO_EXEC == 0 {
        touch(&p.key, p.dir == DIR_INPUT, ret as u64, now);
    } else if p.key.conn_id == 0 {
        unclaimed(p.key.object, ret as u64);
    }
    let s = settings();
    // Forwarded bytes only move the idle clock: they are the client's traffic to elsewhere.
    let wanted = p.key.object & IO_FORWARD == 0
        && (p.dir == DIR_OUTPUT || p.key.object & IO_PTY != 0 || s.pipe_input != 0);
    if s.enabled != 0 && wanted {
        record(p, ret as u64, now);
    }
}

/// An ioctl by an sshd process: sshd sets a pty's window size (`TIOCSWINSZ`) when it allocates
/// it and on every window-change request; that goes into the recording.
#[inline(always)]
pub fn ioctl(fd: u64, cmd: u64, arg: u64) {
    if cmd as u32 as u64 != TIOCSWINSZ {
        return;
    }
    let Some(conn_id) = aux_conn(current_ids().1) else {
        return;
    };
    if let Some((key, _)) = channel(conn_id, fd) {
        resize(key, arg);
    }
}

/// An ioctl by a containerd shim: it sizes an exec's pty as the client's terminal (CRI resize).
#[inline(always)]
pub fn ioctl_exec(fd: u64, cmd: u64, arg: u64) {
    if cmd as u32 as u64 != TIOCSWINSZ {
        return;
    }
    if let Some((key, _)) = exec_channel(fd) {
        resize(key, arg);
    }
}

/// A `TIOCSWINSZ` on channel `key` with the `struct winsize` at user address `arg`.
#[inline(always)]
fn resize(key: IoKey, arg: u64) {
    if key.object & IO_PTY == 0 || settings().enabled == 0 {
        return;
    }
    // struct winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; }
    let Ok(ws) = (unsafe { bpf_probe_read_user(arg as *const [u16; 4]) }) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let h = DataHeader {
        key,
        boot_ns: now,
        dir: DIR_RESIZE,
        len: 0,
        flags: 0,
        rows: ws[0],
        cols: ws[1],
    };
    if ENF_DATA.output::<DataHeader>(&h, wake_flags(now)).is_err() {
        count(Counter::DropRecordingBytes);
    }
}
