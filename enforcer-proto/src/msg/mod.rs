//! Messages. Every request gets exactly one [`Response`].

mod conn;
mod fleet;
mod history;
mod lock;
mod pam;
mod recording;
mod reload;
mod status;

pub use conn::*;
pub use fleet::*;
pub use history::*;
pub use lock::*;
pub use pam::*;
pub use recording::*;
pub use reload::*;
pub use status::*;

use serde::{Deserialize, Serialize};

/// What a client asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Daemon, kernel and BPF state (`enforcerctl status`). Anyone may ask.
    Status,
    /// PAM `acct_mgmt`: may this login proceed? Root only (the module runs inside sshd).
    PamAccount(PamAccount),
    /// PAM `open_session`: the admitted connection is now live. Root only.
    PamOpenSession(PamSession),
    /// PAM `close_session`: the connection ended. Root only.
    PamCloseSession(PamSession),
    /// Live connections (`enforcerctl sessions`). Root and auditors see all; users their own.
    Sessions,
    /// Ended connections from the audit log, newest first (`enforcerctl history`). Root and
    /// auditors.
    History(HistoryQuery),
    /// Lock a user: new logins are refused until unlock or expiry. Root only.
    Lock(LockRequest),
    /// Remove a user's lock. Root only.
    Unlock { user: String },
    /// Remove a user's or node's lock, fleet-wide or `local`. Root only.
    UnlockTarget(UnlockRequest),
    /// Every node's live connections and sessions (`enforcerctl sessions --fleet`). Root and
    /// auditors.
    FleetSessions,
    /// The fleet's nodes (`enforcerctl nodes`). Root and auditors.
    Nodes,
    /// Current locks. Root and auditors.
    Locks,
    /// Terminate a session and everything below it. Root only.
    KillSession { id: u64 },
    /// Terminate a connection: its sshd monitor and every process carrying its identity. Root only.
    KillConnection { id: u64 },
    /// Recordings, newest last. Root and auditors see all; users their own.
    Recordings {
        user: Option<String>,
        /// RFC 3339: only recordings started at or after this.
        since: Option<String>,
    },
    /// Recordings in `[recording.store]`, of every node, oldest first. Root and auditors see
    /// all; users their own.
    StoreRecordings {
        user: Option<String>,
        /// RFC 3339: only recordings started at or after this.
        since: Option<String>,
    },
    /// A recording's asciicast file, streamed as `RecordingData` frames then `End`; from the
    /// store when it is not on this node (or `node` names another). Root and auditors: any;
    /// users: their own.
    Play {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// A live session's terminal, from the current screen on, as `Watch` frames until its end.
    /// Root and auditors.
    Watch { id: u64 },
    /// Re-read the config file enforcerd was started with, validate it whole and apply it to
    /// new and live connections, or keep the running one and say why. Root only.
    Reload,
}

/// The answer to a request.
pub type Response = Result<Reply, ErrorReply>;

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    Admission(Admission),
    /// The request was applied; nothing to report.
    Done,
    Sessions(Vec<ConnectionInfo>),
    Locks(Vec<LockInfo>),
    Locked(LockInfo),
    /// How many processes (threads counted once per signal) were signalled.
    Killed {
        processes: u64,
    },
    Recordings(Vec<RecordingInfo>),
    History(Vec<HistoryEntry>),
    FleetSessions(Vec<FleetConnection>),
    Nodes(Vec<NodeInfo>),
    /// A piece of a recording (whole lines of the asciicast file).
    RecordingData {
        text: String,
    },
    Watch(WatchFrameMsg),
    /// The config file was re-read and applied.
    Reloaded(ReloadReport),
    /// The end of a stream of frames.
    End,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    pub kind: ErrorKind,
    /// One line for a human, saying what to do.
    pub message: String,
}

/// Class of failure, for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller's uid/groups do not allow this request.
    PermissionDenied,
    /// The request is malformed or names something invalid.
    BadRequest,
    /// The request names something that does not exist.
    NotFound,
    /// The daemon failed internally; details are in its log.
    Internal,
    /// The peer holds more than the daemon grants it (connections, request size, time).
    Limited,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
