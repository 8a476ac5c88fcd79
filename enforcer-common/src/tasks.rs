//! The identity every tracked task carries (value of `ENF_TASKS`, keyed by kernel task id).

/// Identity of a task that descends from something enforcer tracks (an admitted SSH connection's
/// sshd monitor, later a kube exec). Inherited by every task it creates, threads included, so a
/// process cannot shed it with setsid, double fork or re-parenting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedTask {
    /// Connection id assigned by the daemon.
    pub conn_id: u64,
    /// Session within the connection: the kernel task id of the session leader (0 = none yet,
    /// e.g. sshd's monitor and its helpers).
    pub session_id: u64,
    /// The task's `start_boottime` (ns): with the task id it names the task unambiguously, so
    /// entries left by tasks that ended while the daemon was down can be told from reused ids.
    pub start_ns: u64,
    /// `TASK_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// The root the daemon registered (the sshd monitor): its exit ends the connection.
pub const TASK_CONN_ROOT: u32 = 1 << 0;
/// A direct child of the root (sshd's per-connection network process, PAM helpers): its
/// setsid() does not start a session.
pub const TASK_CONN_AUX: u32 = 1 << 1;
/// Leader of a session (a channel child that called setsid()).
pub const TASK_SESSION_LEADER: u32 = 1 << 2;
/// In a session refused by a limit: killed at exec, stopped at chdir for the daemon to tell the
/// user why.
pub const TASK_REFUSED: u32 = 1 << 3;
/// Already stopped once for the refusal message.
pub const TASK_STOPPED: u32 = 1 << 4;
/// Being killed (kill session/connection, idle, lock): killed at exec and when it forks.
pub const TASK_DOOMED: u32 = 1 << 5;
/// The leader holds a slot in its connection's session count.
pub const TASK_COUNTED_CONN: u32 = 1 << 6;
/// The leader holds a slot in its user's session count.
pub const TASK_COUNTED_USER: u32 = 1 << 7;

/// Flags a child takes over from its parent.
pub const TASK_INHERITED: u32 = TASK_REFUSED | TASK_STOPPED | TASK_DOOMED;

/// A child's flags from its parent's: the inherited ones, and `TASK_CONN_AUX` for children of
/// the connection's root. The kernel's fork hook and the daemon's restart scan both use it.
pub const fn child_flags(parent: u32) -> u32 {
    let mut flags = parent & TASK_INHERITED;
    if parent & TASK_CONN_ROOT != 0 {
        flags |= TASK_CONN_AUX;
    }
    flags
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, explicit padding.
unsafe impl aya::Pod for TrackedTask {}
