//! Decoding ring-buffer records into typed kernel events.

use enforcer_common::{
    events::{
        ARGV_LEN, CWD_DEPTH, EXEC_ARGV_TRUNCATED, EXEC_ARGV_UNREADABLE, EXEC_CWD_TRUNCATED,
        EXEC_FILENAME_TRUNCATED, EXEC_HAS_TTY, EXEC_KILLED_DOOMED, EXEC_KILLED_LOCKED,
        EXEC_KILLED_REFUSED, EventHeader, EventKind, ExecEvent, ExitEvent, FILENAME_LEN,
        FORWARD_ACCEPTED, FORWARD_CLOSED, ForwardEvent, SessionEvent,
    },
    limits::{REFUSED_CONN_LIMIT, REFUSED_USER_LIMIT},
};

/// Who an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOrigin {
    pub pid: u32,
    pub tid: u32,
    pub boot_ns: u64,
    pub conn_id: u64,
    /// Kernel session key: the session leader's task id (0 = not in a session).
    pub session_id: u64,
}

/// Why the kernel killed a task at exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilledAtExec {
    /// Its session was refused by a limit.
    Refused,
    /// Its session or connection is being terminated.
    Doomed,
    /// It ran as a locked user.
    Locked,
}

/// A decoded exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub origin: EventOrigin,
    pub start_ns: u64,
    pub ppid: u32,
    pub uid: u32,
    pub filename: String,
    pub filename_truncated: bool,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    /// `None` when the kernel could not read it.
    pub cwd: Option<String>,
    pub cwd_truncated: bool,
    pub tty: Option<String>,
    /// Inode numbers of fds 0, 1, 2 (0 = closed).
    pub stdio_ino: [u64; 3],
    pub killed: Option<KilledAtExec>,
}

/// What happened to a forwarding channel's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardChange {
    /// sshd connected it (`target` from the address it passed) or accepted it (the BPF actor
    /// looks its listener up in /proc/net).
    Opened {
        kind: crate::core::forward::ForwardKind,
        target: String,
    },
    /// Accepted on a listener; not yet looked up.
    Accepted,
    /// sshd closed it: bytes from the client into it, and out of it to the client.
    Closed { bytes_in: u64, bytes_out: u64 },
}

/// Which limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionLimit {
    PerConnection,
    PerUser,
}

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Exec(Box<Exec>),
    /// A process ended (or a session leader's thread did). `status` is the wait status.
    Exit {
        origin: EventOrigin,
        start_ns: u64,
        status: u32,
        flags: u32,
    },
    /// A session started (setsid below the connection), or was refused: (limit, its value).
    Session {
        origin: EventOrigin,
        start_ns: u64,
        uid: u32,
        refused: Option<(SessionLimit, u32)>,
    },
    /// A refused session's leader is stopped with its stdio on the channel.
    Stopped {
        origin: EventOrigin,
    },
    /// A `kubectl exec`'s command is stopped before its first instruction, for a decision.
    ExecHeld {
        origin: EventOrigin,
    },
    /// A task of the held command `root` (its pid) was killed: a process of its pod resumed it.
    HoldBroken {
        root: u32,
    },
    /// A forwarding channel's socket (inode `ino`) opened or closed.
    Forward {
        origin: EventOrigin,
        ino: u64,
        change: ForwardChange,
    },
}

/// Why a record could not be decoded (counted as `drop_events_malformed`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for {what}")]
    Short { what: &'static str, len: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            what,
            len: bytes.len(),
        });
    }
    // SAFETY: length checked; `T` is a `#[repr(C)]` plain-data type from enforcer-common and the
    // read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn origin(h: &EventHeader) -> EventOrigin {
    EventOrigin {
        pid: h.pid,
        tid: h.tid,
        boot_ns: h.boot_ns,
        conn_id: h.conn_id,
        session_id: h.session_id,
    }
}

fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The kernel names pty slaves "pts3"; users know them as /dev/pts/3.
fn tty_path(kernel_name: &str) -> String {
    match kernel_name.strip_prefix("pts") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("pts/{n}"),
        _ => kernel_name.to_owned(),
    }
}

/// argv as /proc/PID/cmdline stores it: NUL-terminated strings back to back.
fn split_argv(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn exec(ev: &ExecEvent) -> Exec {
    let flags = ev.flags;
    let cwd = if flags & EXEC_CWD_TRUNCATED != 0 && ev.cwd_depth == 0 {
        None
    } else {
        let depth = (ev.cwd_depth as usize).min(CWD_DEPTH);
        // Empty slots mark mount points crossed on the way up.
        let parts: Vec<String> = ev.cwd[..depth]
            .iter()
            .rev()
            .map(|p| c_str(p))
            .filter(|p| !p.is_empty())
            .collect();
        let path = format!("/{}", parts.join("/"));
        Some(if flags & EXEC_CWD_TRUNCATED != 0 {
            format!("…{path}")
        } else {
            path
        })
    };
    Exec {
        origin: origin(&ev.header),
        start_ns: ev.start_ns,
        ppid: ev.ppid,
        uid: ev.uid,
        filename: c_str(&ev.filename[..(ev.filename_len as usize).min(FILENAME_LEN)]),
        filename_truncated: flags & EXEC_FILENAME_TRUNCATED != 0,
        argv: split_argv(&ev.argv[..(ev.argv_len as usize).min(ARGV_LEN)]),
        argv_truncated: flags & (EXEC_ARGV_TRUNCATED | EXEC_ARGV_UNREADABLE) != 0,
        cwd,
        cwd_truncated: flags & EXEC_CWD_TRUNCATED != 0,
        tty: (flags & EXEC_HAS_TTY != 0).then(|| tty_path(&c_str(&ev.tty))),
        stdio_ino: ev.stdio_ino,
        killed: if flags & EXEC_KILLED_REFUSED != 0 {
            Some(KilledAtExec::Refused)
        } else if flags & EXEC_KILLED_DOOMED != 0 {
            Some(KilledAtExec::Doomed)
        } else if flags & EXEC_KILLED_LOCKED != 0 {
            Some(KilledAtExec::Locked)
        } else {
            None
        },
    }
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes, "an event header")?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Exec) => Ok(KernelEvent::Exec(Box::new(exec(&read::<ExecEvent>(
            bytes,
            "an exec event",
        )?)))),
        Some(EventKind::Exit) => {
            let ev: ExitEvent = read(bytes, "an exit event")?;
            Ok(KernelEvent::Exit {
                origin: origin(&ev.header),
                start_ns: ev.start_ns,
                status: ev.exit_code,
                flags: ev.flags,
            })
        }
        Some(EventKind::Session) => {
            let ev: SessionEvent = read(bytes, "a session event")?;
            let refused = match ev.refused {
                REFUSED_CONN_LIMIT => Some((SessionLimit::PerConnection, ev.limit)),
                REFUSED_USER_LIMIT => Some((SessionLimit::PerUser, ev.limit)),
                _ => None,
            };
            Ok(KernelEvent::Session {
                origin: origin(&ev.header),
                start_ns: ev.start_ns,
                uid: ev.uid,
                refused,
            })
        }
        Some(EventKind::Stopped) => Ok(KernelEvent::Stopped {
            origin: origin(&header),
        }),
        Some(EventKind::ExecHeld) => Ok(KernelEvent::ExecHeld {
            origin: origin(&header),
        }),
        Some(EventKind::HoldBroken) => Ok(KernelEvent::HoldBroken {
            root: header.session_id as u32,
        }),
        Some(EventKind::Forward) => {
            let ev: ForwardEvent = read(bytes, "a forward event")?;
            let change = match ev.what {
                FORWARD_ACCEPTED => ForwardChange::Accepted,
                FORWARD_CLOSED => ForwardChange::Closed {
                    bytes_in: ev.bytes_in,
                    bytes_out: ev.bytes_out,
                },
                _ => {
                    let len = (ev.addr_len as usize).min(ev.addr.len());
                    let (kind, target) = crate::core::forward::connected(&ev.addr[..len]);
                    ForwardChange::Opened { kind, target }
                }
            };
            Ok(KernelEvent::Forward {
                origin: origin(&ev.header),
                ino: ev.ino,
                change,
            })
        }
        None => Err(DecodeError::Kind(header.kind)),
    }
}

/// An accepted forward's kind and listener, from /proc/net (the kernel event has only the
/// socket's inode). Every other event passes unchanged.
pub fn resolve_accepted(ev: KernelEvent) -> KernelEvent {
    use crate::core::forward::{self, Local};
    let KernelEvent::Forward {
        origin,
        ino,
        change: ForwardChange::Accepted,
    } = ev
    else {
        return ev;
    };
    let read =
        |name: &str| std::fs::read_to_string(format!("/proc/net/{name}")).unwrap_or_default();
    let local = forward::tcp_local(&read("tcp"), ino, false)
        .or_else(|| forward::tcp_local(&read("tcp6"), ino, true))
        .map(Local::Tcp)
        .or_else(|| forward::unix_local(&read("unix"), ino).map(Local::Unix));
    let (kind, target) = forward::accepted(local);
    KernelEvent::Forward {
        origin,
        ino,
        change: ForwardChange::Opened { kind, target },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::events::{CWD_NAME_LEN, TTY_LEN};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over plain-data structs.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid: 10,
            tid: 11,
            _pad: 0,
            boot_ns: 5,
            conn_id: 7,
            session_id: 3,
        }
    }

    fn exec_event() -> ExecEvent {
        ExecEvent {
            header: header(EventKind::Exec),
            start_ns: 99,
            ppid: 9,
            uid: 1000,
            flags: 0,
            filename_len: 0,
            argv_len: 0,
            cwd_depth: 0,
            tty: [0; TTY_LEN],
            stdio_ino: [0; 3],
            filename: [0; FILENAME_LEN],
            argv: [0; ARGV_LEN],
            cwd: [[0; CWD_NAME_LEN]; CWD_DEPTH],
        }
    }

    #[test]
    fn exec_with_argv_cwd_and_tty() {
        let mut ev = exec_event();
        ev.filename[..9].copy_from_slice(b"/bin/ls\0\0");
        ev.filename_len = 7;
        let argv = b"ls\0-l\0/tmp dir\0";
        ev.argv[..argv.len()].copy_from_slice(argv);
        ev.argv_len = argv.len() as u32;
        ev.cwd[0][..4].copy_from_slice(b"src\0");
        ev.cwd[1][..5].copy_from_slice(b"alice");
        ev.cwd[2][0] = 0; // a mount point crossed between /home and alice
        ev.cwd[3][..5].copy_from_slice(b"home\0");
        ev.cwd_depth = 4;
        ev.tty[..5].copy_from_slice(b"pts4\0");
        ev.flags = EXEC_HAS_TTY | EXEC_KILLED_REFUSED;
        let KernelEvent::Exec(e) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(e.filename, "/bin/ls");
        assert_eq!(e.argv, ["ls", "-l", "/tmp dir"]);
        assert!(!e.argv_truncated);
        assert_eq!(e.cwd.as_deref(), Some("/home/alice/src"));
        assert_eq!(e.tty.as_deref(), Some("pts/4"));
        assert_eq!(e.killed, Some(KilledAtExec::Refused));
        assert_eq!((e.origin.pid, e.ppid, e.uid, e.start_ns), (10, 9, 1000, 99));
    }

    #[test]
    fn root_cwd_truncation_and_unreadable_argv() {
        let mut ev = exec_event();
        let KernelEvent::Exec(e) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(e.cwd.as_deref(), Some("/"));
        assert!(e.argv.is_empty() && e.tty.is_none());
        ev.flags = EXEC_CWD_TRUNCATED | EXEC_ARGV_UNREADABLE;
        ev.cwd[0][..2].copy_from_slice(b"x\0");
        ev.cwd_depth = 1;
        let KernelEvent::Exec(e) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(e.cwd.as_deref(), Some("…/x"));
        assert!(e.argv_truncated, "unreadable argv is marked");
    }

    #[test]
    fn session_and_exit_and_stop() {
        let ev = SessionEvent {
            header: header(EventKind::Session),
            start_ns: 1,
            refused: REFUSED_USER_LIMIT,
            limit: 5,
            uid: 1000,
            _pad: 0,
        };
        assert!(matches!(
            decode(&bytes_of(&ev)).unwrap(),
            KernelEvent::Session {
                refused: Some((SessionLimit::PerUser, 5)),
                uid: 1000,
                ..
            }
        ));
        let ev = ExitEvent {
            header: header(EventKind::Exit),
            start_ns: 1,
            exit_code: 3 << 8,
            flags: 0,
        };
        assert!(matches!(
            decode(&bytes_of(&ev)).unwrap(),
            KernelEvent::Exit { status: 768, .. }
        ));
        assert!(matches!(
            decode(&bytes_of(&header(EventKind::Stopped))).unwrap(),
            KernelEvent::Stopped { .. }
        ));
        assert!(matches!(
            decode(&bytes_of(&header(EventKind::ExecHeld))).unwrap(),
            KernelEvent::ExecHeld { origin } if origin.pid == 10
        ));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        assert!(matches!(
            decode(&bytes_of(&header(EventKind::Exec))),
            Err(DecodeError::Short { .. })
        ));
        let mut h = header(EventKind::Exit);
        h.kind = 99;
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::Kind(99)));
    }
}
