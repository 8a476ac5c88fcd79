//! Session I/O as sshd moves it between the client and the session: writes into the session's
//! pty master or stdin pipe are the client's input, reads from them are the session's output.

/// Which channel of which connection (`ENF_ACTIVITY` key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IoKey {
    pub conn_id: u64,
    /// `IO_PTY | index` for a pseudo-terminal, else the pipe's inode number.
    pub object: u64,
}

/// Set in [`IoKey::object`] for a pty (the rest is the pty index, as in /dev/pts/N).
pub const IO_PTY: u64 = 1 << 63;

/// Last input/output on a channel (`ENF_ACTIVITY` value), `bpf_ktime_get_boot_ns()` times.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub last_input_ns: u64,
    pub last_output_ns: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// A read in flight (`ENF_READS`, keyed by task id): where its bytes will land.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingRead {
    pub key: IoKey,
    pub buf: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for IoKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Activity {}
