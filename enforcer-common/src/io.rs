//! Session I/O as sshd moves it between the client and the session: writes into the session's
//! pty master or stdin pipe are the client's input, reads from them are the session's output.

/// Which channel of which connection (`ENF_ACTIVITY` key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IoKey {
    pub conn_id: u64,
    /// `IO_PTY | index` for a pseudo-terminal, `IO_FORWARD | inode` for a forwarding
    /// channel's socket, else the pipe's inode number.
    pub object: u64,
}

/// Set in [`IoKey::object`] for a pty (the rest is the pty index, as in /dev/pts/N).
pub const IO_PTY: u64 = 1 << 63;
/// Set in [`IoKey::object`] for a forwarding channel's socket (the rest is its inode number):
/// its bytes move the idle clock but are never recorded.
pub const IO_FORWARD: u64 = 1 << 62;
/// Set in [`IoKey::object`] for a `kubectl exec` channel as its containerd shim moves it: the
/// rest is the pipe's inode number, or `IO_PTY` + the devpts instance + the pty index (see
/// [`exec_pty_object`]), since every container has its own /dev/pts and its own pty 0. Never
/// on the idle clock (`ENF_ACTIVITY` is SSH's); recorded.
pub const IO_EXEC: u64 = 1 << 61;

/// The object of pty `index` of the devpts instance whose superblock is device `dev` (the
/// kernel's dev_t encoding, major << 20 | minor), as a shim's side of an exec sees it.
pub const fn exec_pty_object(dev: u32, index: u32) -> u64 {
    IO_EXEC | IO_PTY | ((dev as u64 & 0x1fff_ffff) << 32) | index as u64
}

/// Bytes of an exec pty recorded before the daemon claims it (its first prompt, a motd): the
/// recorder keeps them for the session; past this the pty is not copied until claimed.
pub const UNCLAIMED_MAX: u64 = 64 << 10;

/// Capacity of `ENF_EXEC_CHANS` and `ENF_UNCLAIMED`.
pub const EXEC_CHANNEL_ENTRIES: u32 = 4096;

/// Last input/output on a channel (`ENF_ACTIVITY` value), `bpf_ktime_get_boot_ns()` times.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub last_input_ns: u64,
    pub last_output_ns: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// A read or write in flight (`ENF_PENDING`, keyed by task id): its channel, buffer and
/// direction, until the syscall returns how many bytes moved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingIo {
    pub key: IoKey,
    pub buf: u64,
    /// `DIR_INPUT` or `DIR_OUTPUT`.
    pub dir: u32,
    /// Echo was off on the terminal when input was written.
    pub echo_off: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for IoKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Activity {}

/// Live forwarding sockets one connection may have tracked (`ENF_FWD_COUNT`): one client
/// opening thousands of tunnels (a SOCKS proxy) cannot fill `ENF_FORWARDS` for everybody.
/// Past it, the connection's other forwards still keep it active.
pub const MAX_FORWARDS_PER_CONN: u64 = 128;
/// Capacity of `ENF_FORWARDS` and `ENF_FWD_ACTIVITY`.
pub const FORWARD_MAP_ENTRIES: u32 = 65536;

/// Capacity of the per-channel maps `ENF_ACTIVITY` and `ENF_LOST`.
pub const CHANNEL_MAP_ENTRIES: u32 = 16384;

/// Payload bytes per record in the data ring (`ENF_DATA`); larger transfers span records.
pub const CHUNK: usize = 16384;
/// Records per syscall at most (a larger read or write loses the rest, counted in `ENF_LOST`).
pub const MAX_CHUNKS: usize = 4;

/// `DataHeader::dir`
pub const DIR_OUTPUT: u32 = 0;
pub const DIR_INPUT: u32 = 1;
/// A window-size change (`rows`, `cols` set, no payload).
pub const DIR_RESIZE: u32 = 2;

/// `DataHeader::flags`: input typed while the terminal had echo off; the payload was not copied
/// (`len` bytes were typed).
pub const DATA_MASKED: u32 = 1 << 0;

/// Header of a record in the data ring; `len` payload bytes follow (unless masked).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataHeader {
    pub key: IoKey,
    pub boot_ns: u64,
    /// `DIR_*`
    pub dir: u32,
    pub len: u32,
    pub flags: u32,
    pub rows: u16,
    pub cols: u16,
}

/// Per-CPU scratch record: header + payload, built before it is copied into the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataRecord {
    pub header: DataHeader,
    pub data: [u8; CHUNK],
}

/// What the kernel records (global `ENF_SETTINGS`, set at load).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordSettings {
    /// Copy session bytes into the data ring at all.
    pub enabled: u32,
    /// Also copy what the client sends to non-pty sessions (their stdin).
    pub pipe_input: u32,
    /// Mask pty input typed while the terminal has echo off.
    pub mask_echo_off: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, explicit padding.
unsafe impl aya::Pod for RecordSettings {}
