//! Decoding ring-buffer records into typed kernel events.

use enforcer_common::events::{
    EXEC_FILENAME_TRUNCATED, EventHeader, EventKind, ExecEvent, ExitEvent, FILENAME_LEN,
};

/// Who an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOrigin {
    pub pid: u32,
    pub tid: u32,
    pub boot_ns: u64,
    pub conn_id: u64,
    pub session_id: u64,
}

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Exec { origin: EventOrigin, filename: String, truncated: bool },
    /// The process ended; `was_root` when it was a connection's registered root (sshd monitor).
    Exit { origin: EventOrigin, was_root: bool },
}

/// Why a record could not be decoded (counted as `events_malformed`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for {what}")]
    Short { what: &'static str, len: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short { what, len: bytes.len() });
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

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes, "an event header")?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Exec) => {
            let ev: ExecEvent = read(bytes, "an exec event")?;
            let len = (ev.filename_len as usize).min(FILENAME_LEN);
            Ok(KernelEvent::Exec {
                origin: origin(&ev.header),
                filename: String::from_utf8_lossy(&ev.filename[..len]).into_owned(),
                truncated: ev.flags & EXEC_FILENAME_TRUNCATED != 0,
            })
        }
        Some(EventKind::Exit) => {
            let ev: ExitEvent = read(bytes, "an exit event")?;
            Ok(KernelEvent::Exit { origin: origin(&ev.header), was_root: ev.was_root != 0 })
        }
        None => Err(DecodeError::Kind(header.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over plain-data structs.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader { kind: kind as u32, pid: 10, tid: 11, _pad: 0, boot_ns: 5, conn_id: 7, session_id: 3 }
    }

    #[test]
    fn exec_round_trip() {
        let mut ev = ExecEvent {
            header: header(EventKind::Exec),
            flags: EXEC_FILENAME_TRUNCATED,
            filename_len: 8,
            filename: [0; FILENAME_LEN],
        };
        ev.filename[..8].copy_from_slice(b"/bin/sh\0");
        ev.filename_len = 7;
        let got = decode(&bytes_of(&ev)).unwrap();
        let KernelEvent::Exec { origin, filename, truncated } = got else { panic!("{got:?}") };
        assert_eq!((origin.pid, origin.tid, origin.conn_id, origin.session_id), (10, 11, 7, 3));
        assert_eq!(filename, "/bin/sh");
        assert!(truncated);
    }

    #[test]
    fn exit_round_trip() {
        let ev = ExitEvent { header: header(EventKind::Exit), last_tid: 11, was_root: 1 };
        assert!(matches!(decode(&bytes_of(&ev)).unwrap(), KernelEvent::Exit { was_root: true, .. }));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let ev = ExitEvent { header: header(EventKind::Exec), last_tid: 0, was_root: 0 };
        // Exec kind but only an exit-sized body.
        assert!(matches!(decode(&bytes_of(&ev)), Err(DecodeError::Short { .. })));
        let mut h = header(EventKind::Exit);
        h.kind = 99;
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn filename_len_beyond_buffer_is_clamped() {
        let mut ev = ExecEvent {
            header: header(EventKind::Exec),
            flags: 0,
            filename_len: 10_000,
            filename: [b'a'; FILENAME_LEN],
        };
        ev.filename[0] = b'/';
        let KernelEvent::Exec { filename, .. } = decode(&bytes_of(&ev)).unwrap() else { panic!() };
        assert_eq!(filename.len(), FILENAME_LEN);
    }
}
