//! Records sent from the kernel to userspace through the ring buffer `ENF_EVENTS`.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which struct follows.

/// Maximum bytes of an exec'd file name carried in an [`ExecEvent`] (longer names are cut and
/// flagged with [`EXEC_FILENAME_TRUNCATED`]).
pub const FILENAME_LEN: usize = 256;

/// Set in [`ExecEvent::flags`] when the file name did not fit.
pub const EXEC_FILENAME_TRUNCATED: u32 = 1 << 0;

/// What follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`ExecEvent`]
    Exec = 1,
    /// [`ExitEvent`]
    Exit = 2,
}

impl EventKind {
    /// Decodes the `kind` field of a header.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(EventKind::Exec),
            2 => Some(EventKind::Exit),
            _ => None,
        }
    }
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the event happened.
    pub boot_ns: u64,
    /// Identity the task carried.
    pub conn_id: u64,
    /// Session the task belonged to (0 = none).
    pub session_id: u64,
}

/// A tracked task called execve successfully.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// Bytes of `filename` in use (without the NUL).
    pub filename_len: u32,
    /// Path of the executed file as the kernel resolved it.
    pub filename: [u8; FILENAME_LEN],
}

/// A tracked process ended (its last thread exited).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// Thread id of the task whose exit ended the process.
    pub last_tid: u32,
    /// 1 when the task was the registered root of its connection.
    pub was_root: u32,
}
