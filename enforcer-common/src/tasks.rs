//! The identity every tracked task carries (value of `ENF_TASKS`, keyed by kernel task id).

/// Identity of a task that descends from something enforcer tracks (an admitted SSH connection's
/// sshd monitor, later a kube exec). Inherited by every task it creates, threads included, so a
/// process cannot shed it with setsid, double fork or re-parenting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedTask {
    /// Connection id assigned by the daemon.
    pub conn_id: u64,
    /// Session id within the connection (0 = not inside a session, e.g. the sshd monitor).
    pub session_id: u64,
    /// `TASK_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// The task is the root the daemon registered (the sshd monitor): its exit ends the connection.
pub const TASK_CONN_ROOT: u32 = 1 << 0;

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no padding holes the kernel could leave uninitialised
// (`_pad` is explicit).
unsafe impl aya::Pod for TrackedTask {}
