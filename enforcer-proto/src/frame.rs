//! Length-prefixed JSON framing, blocking and (feature `tokio`) async.

use serde::{Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};

/// Largest frame either side accepts; a status or session list is far below this. The daemon
/// accepts much less from unprivileged peers (`control.max_frame_bytes`).
pub const MAX_FRAME: u32 = 16 << 20;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("peer announced a {len}-byte frame, larger than the {max}-byte limit")]
    TooLarge { len: u32, max: u32 },
    #[error(
        "malformed message on the control socket: {0} (are enforcerd and its client the same version?)"
    )]
    Json(#[from] serde_json::Error),
    #[error("the peer closed the connection")]
    Closed,
}

/// One whole frame (header and body), ready to write.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len()).ok().filter(|l| *l <= MAX_FRAME);
    let len = len.ok_or(FrameError::TooLarge {
        len: u32::MAX,
        max: MAX_FRAME,
    })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The announced body length, checked against `max` before any of the body is read.
pub fn check_len(header: [u8; 4], max: u32) -> Result<u64, FrameError> {
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(u64::from(len))
}

/// Initial body buffer: a peer announcing a large frame gets memory only as its bytes arrive.
const BODY_START: usize = 4096;

fn eof_to_closed(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(w.flush()?)
}

/// Reads one frame.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).map_err(eof_to_closed)?;
    let len = check_len(header, MAX_FRAME)?;
    let mut body = Vec::with_capacity(BODY_START.min(len as usize));
    r.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(FrameError::Closed);
    }
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(feature = "tokio")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes one frame.
    pub async fn write_frame_async<T: Serialize>(
        w: &mut (impl AsyncWrite + Unpin),
        msg: &T,
    ) -> Result<(), FrameError> {
        w.write_all(&encode(msg)?).await?;
        Ok(w.flush().await?)
    }

    /// Reads one frame of at most `max` bytes; `Ok(None)` when the peer closed the connection
    /// between frames. The body buffer grows as bytes arrive: an announced size costs nothing.
    pub async fn read_frame_async<T: DeserializeOwned>(
        r: &mut (impl AsyncRead + Unpin),
        max: u32,
    ) -> Result<Option<T>, FrameError> {
        let mut header = [0u8; 4];
        match r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = check_len(header, max)?;
        let mut body = Vec::with_capacity(BODY_START.min(len as usize));
        (&mut *r).take(len).read_to_end(&mut body).await?;
        if body.len() as u64 != len {
            return Err(FrameError::Closed);
        }
        Ok(Some(serde_json::from_slice(&body)?))
    }
}

#[cfg(feature = "tokio")]
pub use async_io::{read_frame_async, write_frame_async};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Request;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Status).unwrap();
        assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, Request::Status);
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let bytes = (MAX_FRAME + 1).to_be_bytes();
        let err = read_frame::<Request>(&mut bytes.as_slice()).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, .. } if len == MAX_FRAME + 1),
            "{err}"
        );
    }

    #[test]
    fn announced_size_is_not_allocated_up_front() {
        // A header announcing the maximum followed by 10 bytes ends as a closed connection
        // (the body buffer grows with what arrives instead of being sized by the header).
        let mut buf = MAX_FRAME.to_be_bytes().to_vec();
        buf.extend_from_slice(b"0123456789");
        assert!(matches!(
            read_frame::<Request>(&mut buf.as_slice()),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn truncated_frame_is_closed_not_garbage() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Status).unwrap();
        buf.truncate(buf.len() - 1);
        assert!(matches!(
            read_frame::<Request>(&mut buf.as_slice()),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn garbage_json_is_a_json_error() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"{x}");
        assert!(matches!(
            read_frame::<Request>(&mut buf.as_slice()),
            Err(FrameError::Json(_))
        ));
    }
}
