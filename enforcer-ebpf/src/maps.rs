//! Every map of the BPF object. Names are at most 15 bytes (the kernel's limit; aya would
//! truncate silently) and start with `ENF_`. Every map is pinned (daemon.bpf_pin_dir), like the
//! programs' links: the programs keep tracking and enforcing while enforcerd is down, and the
//! next daemon reads the same maps (events queued meanwhile included).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    counters::{COUNTER_SLOTS, Counter},
    io::{
        Activity, CHANNEL_MAP_ENTRIES, DataRecord, EXEC_CHANNEL_ENTRIES, FORWARD_MAP_ENTRIES,
        IoKey, PendingIo,
    },
    limits::{CONN_MAP_ENTRIES, ConnEntry, LOCKED_MAP_ENTRIES, USER_MAP_ENTRIES, UserEntry},
    tasks::TrackedTask,
};

/// Kernel → daemon events (`enforcer_common::events`). Size is set by the daemon at load time;
/// a failed reservation is counted in `DropRingbufFull`. Pinned.
#[map]
pub static ENF_EVENTS: RingBuf = RingBuf::pinned(1 << 22, 0);

/// Per-CPU counters indexed by `enforcer_common::counters::Counter`; summed by userspace.
/// Pinned.
#[map]
pub static ENF_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Tracked tasks: kernel task id (thread id) → identity. Roots are inserted by the daemon;
/// descendants are added by `enf_fork` and removed by `enf_exit`. Full map = counted drop.
/// Pinned.
#[map]
pub static ENF_TASKS: HashMap<u32, TrackedTask> = HashMap::pinned(65536, 0);

/// Admitted connections: connection id → session limit and live session count. Written by
/// the daemon at admission, counted here. Pinned.
#[map]
pub static ENF_CONNS: HashMap<u64, ConnEntry> = HashMap::pinned(CONN_MAP_ENTRIES, 0);

/// Users with admitted connections: uid → session limit and live session count. Pinned.
#[map]
pub static ENF_USERS: HashMap<u32, UserEntry> = HashMap::pinned(USER_MAP_ENTRIES, 0);

/// Locked users whose every process dies (`locks.all_processes`): uid → 1. A task whose real,
/// effective or saved uid is here is SIGKILLed at exec (before the new image runs) and at fork
/// (counted in `KilledLocked`). Written by the daemon from the lock directory. Pinned.
#[map]
pub static ENF_LOCKED: HashMap<u32, u32> = HashMap::pinned(LOCKED_MAP_ENTRIES, 0);

/// Last input/output per session channel (pty or pipe) of each connection: the idle clock.
/// Pinned, so idle tracking survives a daemon restart. Full map = counted drop.
#[map]
pub static ENF_ACTIVITY: HashMap<IoKey, Activity> = HashMap::pinned(CHANNEL_MAP_ENTRIES, 0);

/// Sockets of forwarding channels (`ssh -L/-R/-D/-W`, agent, X11): inode → connection id.
/// Added where a connection's sshd process connects or accepts one, removed where it closes
/// it (or by the daemon when the connection ends). Pinned.
#[map]
pub static ENF_FORWARDS: HashMap<u64, u64> = HashMap::pinned(FORWARD_MAP_ENTRIES, 0);

/// Live tracked forwards per connection (at most `MAX_FORWARDS_PER_CONN`). Pinned.
#[map]
pub static ENF_FWD_COUNT: HashMap<u64, u64> = HashMap::pinned(CONN_MAP_ENTRIES, 0);

/// Last input/output per forwarding socket: kept apart from `ENF_ACTIVITY` so that tunnels,
/// which a client opens by the thousand, can never crowd out sessions' idle clocks. Pinned.
#[map]
pub static ENF_FWD_ACTIVITY: HashMap<IoKey, Activity> = HashMap::pinned(FORWARD_MAP_ENTRIES, 0);

/// Channels of `kubectl exec` sessions as their containerd shim moves them: exec object
/// (`kernel::exec_object`) → the session's kernel identity. Written by the daemon when it
/// follows an exec, removed when the session ends. The shim's reads and writes on these are
/// recorded (`shim.rs`). Pinned.
#[map]
pub static ENF_EXEC_CHANS: HashMap<u64, u64> = HashMap::pinned(EXEC_CHANNEL_ENTRIES, 0);

/// Bytes recorded so far of exec ptys nobody has claimed (connection 0, see `io::exec_channel`):
/// exec object → bytes. Past `UNCLAIMED_MAX` such a pty is no longer copied, so a pod whose own
/// process has a tty cannot fill the data ring with bytes no session will take. The daemon
/// drops an entry when it claims the pty. LRU: stale entries make room. Pinned.
#[map]
pub static ENF_UNCLAIMED: LruHashMap<u64, u64> = LruHashMap::pinned(EXEC_CHANNEL_ENTRIES, 0);

/// Tasks of a `runc … exec …` (and what it forked) not yet in their container: task id → the
/// cgroup id runc started in (see `gate`). LRU: a mark whose exit was missed makes room.
/// Pinned.
#[map]
pub static ENF_RUNC_EXECS: LruHashMap<u32, u64> = LruHashMap::pinned(8192, 0);

/// Exec commands the kernel holds, and what they forked meanwhile: task id → the held
/// command's task id (see `gate`). An entry goes when enforcerd (the host's root) sends the
/// command its `SIGCONT`, or when the task ends. Not LRU: nothing may push a hold out. Pinned.
#[map]
pub static ENF_HELD_TASKS: HashMap<u32, u32> = HashMap::pinned(4096, 0);

/// Slot 0: non-zero while exec commands are held for enforcerd's decision (exec enforcement
/// on: `[kubernetes] enabled` and the node labeled). Cleared when enforcerd stops cleanly.
/// Pinned.
#[map]
pub static ENF_HOLD_EXECS: Array<u32> = Array::pinned(1, 0);

/// Per-CPU copy of a runc command line being checked for `exec` (`gate`). Pinned.
#[map]
pub static ENF_ARGS: PerCpuArray<[u8; crate::gate::ARGS_SCAN]> = PerCpuArray::pinned(1, 0);

/// Reads and writes by sshd's connection processes on session channels, between syscall entry
/// and exit (task id → channel, buffer, direction). Pinned.
#[map]
pub static ENF_PENDING: HashMap<u32, PendingIo> = HashMap::pinned(4096, 0);

/// Reads and writes by containerd shims on exec channels, between `syscall.read`/`write`'s
/// entry and its return: (shim's pid, goroutine) → channel, buffer, direction. Keyed by
/// goroutine, not task: Go may preempt a goroutine right after the entry probe and run the
/// rest of the call on another thread (keyed by task, that read went unrecorded and its
/// entry was later paired with another read's result: a recording short of a few KiB, or one
/// with NUL bytes, seen in tests). LRU: an entry whose return was never seen (its shim was
/// killed mid-call) makes room; sized well above the calls in flight, since a common LRU may
/// evict before it is full while free slots sit in other CPUs' lists. Pinned.
#[map]
pub static ENF_GO_PENDING: LruHashMap<[u64; 2], PendingIo> = LruHashMap::pinned(16384, 0);

/// Recorded session bytes (`enforcer_common::io::DataHeader` + payload), read by the daemon's
/// recorder. Separate from `ENF_EVENTS` so a burst of output cannot crowd out exec/exit
/// events. Size set by the daemon (`recording.buffer_bytes`). Pinned.
#[map]
pub static ENF_DATA: RingBuf = RingBuf::pinned(1 << 24, 0);

/// Boot time (ns) of the last time a program woke the recorder for `ENF_DATA` (see
/// `io::wake_flags`). One slot; CPUs race on it benignly. Pinned.
#[map]
pub static ENF_WAKE: Array<u64> = Array::pinned(1, 0);

/// Per-CPU record under construction (too large for the BPF stack). Pinned.
#[map]
pub static ENF_SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::pinned(1, 0);

/// Bytes of a channel that could not be recorded (ring full, unreadable buffer): the recorder
/// writes them into the recording as a loss marker. Pinned.
#[map]
pub static ENF_LOST: HashMap<IoKey, u64> = HashMap::pinned(CHANNEL_MAP_ENTRIES, 0);

/// The active program generation (a build id, see `config::active`), written by the daemon
/// once a generation is attached and before the previous one is detached. Pinned; its layout
/// never changes, so every generation shares it.
#[map]
pub static ENF_GEN: Array<u64> = Array::pinned(1, 0);

/// Adds one to a counter slot of the current CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = ENF_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

/// Sends `sig` to the current task, counting a failure.
#[inline(always)]
pub fn signal_current(sig: u32) {
    // SAFETY: helper call; GPL-compatible licence.
    if unsafe { aya_ebpf::helpers::generated::bpf_send_signal(sig) } < 0 {
        count(Counter::DropSignalFailed);
    }
}

/// SIGKILLs the current task and counts why.
#[inline(always)]
pub fn kill_current(why: Counter) {
    signal_current(SIGKILL);
    count(why);
}

/// Sends an event to the daemon, counting it as sent or as dropped (ring full).
#[inline(always)]
pub fn emit<T>(event: &T) {
    if ENF_EVENTS.output::<T>(event, 0).is_err() {
        count(Counter::DropRingbufFull);
    } else {
        count(Counter::EventsSent);
    }
}

pub const SIGKILL: u32 = 9;
pub const SIGSTOP: u32 = 19;
pub const SIGCONT: u32 = 18;
