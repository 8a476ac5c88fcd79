//! Session limits the kernel enforces by itself (no round trip to the daemon before exec).

/// Capacity of `ENF_CONNS` (connections) and `ENF_USERS` (users with connections). The daemon
/// checks pinned maps against these sizes, so they are defined once for both sides.
pub const CONN_MAP_ENTRIES: u32 = 16384;
pub const USER_MAP_ENTRIES: u32 = 16384;
/// Capacity of `ENF_LOCKED` (locked uids).
pub const LOCKED_MAP_ENTRIES: u32 = 4096;

/// Value of `ENF_CONNS` (key: connection id). Written by the daemon at admission; `sessions`
/// is then counted by the BPF programs with atomic fetch-and-add.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// Live sessions (leaders not yet exited) holding a slot.
    pub sessions: u64,
    /// `max_sessions_per_connection` for this connection (0 = unlimited).
    pub max_sessions: u32,
    /// The login user, key of `ENF_USERS`.
    pub uid: u32,
}

/// Value of `ENF_USERS` (key: uid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserEntry {
    pub sessions: u64,
    /// `max_sessions_per_user` (0 = unlimited).
    pub max_sessions: u32,
    pub _pad: u32,
}

/// `SessionEvent::refused`: why a session was refused.
pub const REFUSED_NONE: u32 = 0;
pub const REFUSED_CONN_LIMIT: u32 = 1;
pub const REFUSED_USER_LIMIT: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for ConnEntry {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for UserEntry {}
