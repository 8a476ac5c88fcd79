//! Recordings: listing, playback, live watching.

use serde::{Deserialize, Serialize};

/// One recorded session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    /// The session id (as in `enforcerctl sessions`).
    pub id: u64,
    pub conn_id: u64,
    pub user: String,
    pub uid: Option<u32>,
    /// RFC 3339.
    pub started: String,
    /// Time of the last event so far.
    pub duration_secs: Option<f64>,
    /// Still being recorded.
    pub live: bool,
    /// `shell`, `exec`, `subsystem`.
    pub kind: String,
    pub command: Option<String>,
    pub tty: Option<String>,
    pub client: Option<String>,
    pub size_bytes: u64,
    /// Where the file is (readable by root only), or `s3://bucket/key` for `--store`.
    pub path: String,
    /// The node that recorded it (`recordings --store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One frame of a live session for `enforcerctl watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum WatchFrameMsg {
    /// Terminal output, base64 (it may be any bytes).
    Output {
        data: String,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
    /// Bytes the recording could not keep here.
    Lost {
        bytes: u64,
    },
    /// The session ended.
    End,
}
