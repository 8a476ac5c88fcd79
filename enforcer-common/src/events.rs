//! Records sent from the kernel to userspace through the ring buffer `ENF_EVENTS`.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which struct follows.

/// Bytes of an exec'd file name carried in an [`ExecEvent`].
pub const FILENAME_LEN: usize = 256;
/// Bytes of argv (NUL-separated, as in /proc/PID/cmdline) carried in an [`ExecEvent`].
pub const ARGV_LEN: usize = 1024;
/// Path components of the working directory carried in an [`ExecEvent`] (innermost first).
pub const CWD_DEPTH: usize = 16;
/// Bytes per working-directory component.
pub const CWD_NAME_LEN: usize = 64;
/// Bytes of the controlling terminal's name ("pts/3").
pub const TTY_LEN: usize = 16;

/// `ExecEvent::flags`
pub const EXEC_FILENAME_TRUNCATED: u32 = 1 << 0;
pub const EXEC_ARGV_TRUNCATED: u32 = 1 << 1;
/// The working directory has more than `CWD_DEPTH` components or a longer name.
pub const EXEC_CWD_TRUNCATED: u32 = 1 << 2;
/// Killed at exec: its session was refused by a limit.
pub const EXEC_KILLED_REFUSED: u32 = 1 << 3;
/// Killed at exec: its session or connection is being terminated.
pub const EXEC_KILLED_DOOMED: u32 = 1 << 4;
/// The task has a controlling terminal (`tty` is set).
pub const EXEC_HAS_TTY: u32 = 1 << 5;
/// argv could not be read (not paged in).
pub const EXEC_ARGV_UNREADABLE: u32 = 1 << 6;
/// Killed at exec: its user is locked (`ENF_LOCKED`).
pub const EXEC_KILLED_LOCKED: u32 = 1 << 7;

/// What follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`ExecEvent`]
    Exec = 1,
    /// [`ExitEvent`]
    Exit = 2,
    /// [`SessionEvent`]
    Session = 3,
    /// Header only: a refused session's leader stopped at chdir (its stdio is the channel now);
    /// the daemon writes the reason to it and kills it.
    Stopped = 4,
    /// [`ForwardEvent`]
    Forward = 5,
    /// Header only: a `kubectl exec`'s command was stopped before its first instruction
    /// (`ENF_HOLD_EXECS`); the daemon resumes or refuses it.
    ExecHeld = 6,
    /// Header only (`session_id`: the held command's task id): a task of a held exec was
    /// killed for forking or exec'ing — a process of its pod had resumed it.
    HoldBroken = 7,
}

impl EventKind {
    /// Decodes the `kind` field of a header.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(EventKind::Exec),
            2 => Some(EventKind::Exit),
            3 => Some(EventKind::Session),
            4 => Some(EventKind::Stopped),
            5 => Some(EventKind::Forward),
            6 => Some(EventKind::ExecHeld),
            7 => Some(EventKind::HoldBroken),
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
    /// The process's start time (ns since boot): (pid, start_ns) names it.
    pub start_ns: u64,
    pub ppid: u32,
    pub uid: u32,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// Bytes of `filename` in use (without the NUL).
    pub filename_len: u32,
    /// Bytes of `argv` in use.
    pub argv_len: u32,
    /// Components of `cwd` in use.
    pub cwd_depth: u32,
    pub tty: [u8; TTY_LEN],
    /// Inode numbers of fds 0, 1, 2 (0 = closed): a session's stdio pipes name its channel.
    pub stdio_ino: [u64; 3],
    /// Path of the executed file as the kernel resolved it.
    pub filename: [u8; FILENAME_LEN],
    /// NUL-separated arguments.
    pub argv: [u8; ARGV_LEN],
    /// Working directory, innermost component first, each NUL-terminated; an empty slot marks
    /// a mount point crossed.
    pub cwd: [[u8; CWD_NAME_LEN]; CWD_DEPTH],
}

/// A tracked process ended (its last thread exited), or a session leader's thread exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub start_ns: u64,
    /// Wait status as the parent sees it (exit code << 8 | signal).
    pub exit_code: u32,
    /// The task's `TASK_*` flags.
    pub flags: u32,
}

/// A tracked task started a session (setsid), admitted or refused.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SessionEvent {
    pub header: EventHeader,
    pub start_ns: u64,
    /// `REFUSED_*` (enforcer_common::limits).
    pub refused: u32,
    /// The limit that refused it.
    pub limit: u32,
    /// Connection's user.
    pub uid: u32,
    pub _pad: u32,
}

/// Bytes of a socket address carried in a [`ForwardEvent`] (`sockaddr_un` is the largest sshd
/// connects to).
pub const SOCKADDR_LEN: usize = 112;

/// `ForwardEvent::what`: sshd connected a socket for a channel (direct-tcpip: `ssh -L`, `-D`,
/// `-W`/ProxyJump; direct-streamlocal); `addr` is where it connected.
pub const FORWARD_CONNECTED: u32 = 1;
/// sshd accepted a connection on one of its forwarding listeners (`ssh -R`, X11, agent).
pub const FORWARD_ACCEPTED: u32 = 2;
/// sshd closed a forwarding socket; `bytes_in`/`bytes_out` are what moved through it.
pub const FORWARD_CLOSED: u32 = 3;

/// A forwarding channel's socket, opened or closed by a connection's sshd process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForwardEvent {
    pub header: EventHeader,
    /// `FORWARD_*`.
    pub what: u32,
    /// Bytes of `addr` in use.
    pub addr_len: u32,
    /// The socket's inode number (as in /proc/net/*).
    pub ino: u64,
    /// Bytes sshd wrote into the socket (from the client) and read from it (to the client).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The `struct sockaddr` passed to connect().
    pub addr: [u8; SOCKADDR_LEN],
}
