//! Answers that are a stream of frames: a recording file (`play`) and a live session (`watch`).

use base64::Engine;
use enforcer_proto::{Reply, Response, WatchFrameMsg, frame::write_frame_async};
use std::time::Duration;

use tokio::{io::AsyncReadExt, net::UnixStream};

use crate::{daemon::Stream, recording::WatchFrame};

/// Bytes of a recording per frame (cut at a line end, so every frame is whole JSON lines).
const CHUNK: usize = 256 << 10;

/// Writes one frame within `budget` (a peer that stops reading must not hold its connection,
/// and the frame's memory, forever).
async fn send(out: &mut UnixStream, reply: Reply, budget: Duration) -> bool {
    let resp: Response = Ok(reply);
    matches!(
        tokio::time::timeout(budget, write_frame_async(out, &resp)).await,
        Ok(Ok(()))
    )
}

/// Sends a stream to the client, each frame within `budget`; returns false when the client went
/// away or stopped reading.
pub async fn send_stream(out: &mut UnixStream, stream: Stream, budget: Duration) -> bool {
    match stream {
        Stream::File(path) => send_file(out, &path, budget).await,
        Stream::Live(mut frames) => {
            while let Some(frame) = frames.recv().await {
                let msg = match frame {
                    WatchFrame::Output(bytes) => WatchFrameMsg::Output {
                        data: base64::engine::general_purpose::STANDARD.encode(bytes),
                    },
                    WatchFrame::Resize { cols, rows } => WatchFrameMsg::Resize { cols, rows },
                    WatchFrame::Lost(bytes) => WatchFrameMsg::Lost { bytes },
                    WatchFrame::End => break,
                };
                if !send(out, Reply::Watch(msg), budget).await {
                    return false;
                }
            }
            send(out, Reply::Watch(WatchFrameMsg::End), budget).await
                && send(out, Reply::End, budget).await
        }
    }
}

/// Sends a recording from the store (`play` of a recording this node no longer has), cut into
/// whole lines as `send_file` does.
pub async fn send_object(
    out: &mut UnixStream,
    mut body: aws_sdk_s3::primitives::ByteStream,
    budget: Duration,
) -> bool {
    let mut carry = Vec::new();
    loop {
        let chunk = match body.next().await {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                let resp: Response = Err(enforcer_proto::ErrorReply::new(
                    enforcer_proto::ErrorKind::Internal,
                    format!("reading the recording from the store failed: {e}; try again"),
                ));
                return write_frame_async(out, &resp).await.is_ok();
            }
        };
        carry.extend_from_slice(&chunk);
        if carry.len() < CHUNK {
            continue;
        }
        let Some(end) = carry.iter().rposition(|&c| c == b'\n') else {
            continue;
        };
        let rest = carry.split_off(end + 1);
        let text = String::from_utf8_lossy(&carry).into_owned();
        carry = rest;
        if !send(out, Reply::RecordingData { text }, budget).await {
            return false;
        }
    }
    if !carry.is_empty() {
        let text = String::from_utf8_lossy(&carry).into_owned();
        if !send(out, Reply::RecordingData { text }, budget).await {
            return false;
        }
    }
    send(out, Reply::End, budget).await
}

async fn send_file(out: &mut UnixStream, path: &std::path::Path, budget: Duration) -> bool {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let resp: Response = Err(enforcer_proto::ErrorReply::new(
                enforcer_proto::ErrorKind::Internal,
                format!("cannot read {}: {e}", path.display()),
            ));
            return write_frame_async(out, &resp).await.is_ok();
        }
    };
    let mut carry = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        // Send whole lines only (a live recording may end in a half-written one).
        let Some(end) = carry.iter().rposition(|&c| c == b'\n') else {
            continue;
        };
        let rest = carry.split_off(end + 1);
        let text = String::from_utf8_lossy(&carry).into_owned();
        carry = rest;
        if !send(out, Reply::RecordingData { text }, budget).await {
            return false;
        }
    }
    send(out, Reply::End, budget).await
}
