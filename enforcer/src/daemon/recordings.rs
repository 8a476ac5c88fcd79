//! Recordings from the state actor's side: starting and ending them with their sessions, and who
//! may list, play and watch them (from the in-memory index: nothing here reads a recording).

use std::collections::BTreeMap;

use enforcer_common::io::IoKey;
use enforcer_proto::{ErrorKind, ErrorReply, RecordingInfo, Request};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::mpsc;

use super::state::{State, Stream};
use crate::{
    control::Peer,
    core::transfer::FileTransfers,
    host,
    recording::{RecordingIndex, Resume, StartRecording},
};

/// Frames a watcher may fall behind before it misses some (counted).
const WATCH_BACKLOG: usize = 1024;

fn denied(what: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::PermissionDenied,
        format!("permission denied: {what}"),
    )
}

impl State {
    /// Starts recording a session whose channels just became known, or (`resume`) takes up
    /// the recording of a session that was live when enforcerd stopped.
    pub(super) fn start_recording(
        &mut self,
        conn_id: u64,
        session_id: u64,
        resume: Option<Resume>,
    ) {
        let session = self
            .registry
            .get(conn_id)
            .and_then(|c| c.sessions.get(session_id))
            .filter(|s| !s.channels.is_empty());
        let (Some(s), Some(_)) = (session.cloned(), &self.recorder) else {
            return;
        };
        // A session taken up after a restart has long executed its program: recorded as is.
        let transfer = match resume {
            None => self.transfer_start(&s, self.transfer_record(conn_id, &s)),
            Some(_) => None,
        };
        let record_stdin = self.config.recording.exec_stdin
            || transfer
                .as_ref()
                .is_some_and(|t| t.mode == FileTransfers::Full);
        let (Some(recorder), Some(conn)) = (&self.recorder, self.registry.get(conn_id)) else {
            return;
        };
        let env = recorded_env(s.leader_pid);
        recorder.start_recording(StartRecording {
            session_id,
            conn_id,
            keys: s
                .channels
                .iter()
                .map(|&object| IoKey { conn_id, object })
                .collect(),
            user: conn.user.clone(),
            uid: conn.uid,
            kind: s.kind.as_str().to_owned(),
            tty: s.tty.clone(),
            command: s.command.clone(),
            client: conn.client.map(|c| c.ip().to_string()),
            started_at: s.started_at,
            started_boot_ns: s.started_boot_ns,
            env,
            record_stdin,
            transfer,
            resume,
            kube: None,
            identity_pending: false,
        });
    }

    pub(super) fn end_recording(&self, session_id: u64) {
        if let Some(r) = &self.recorder {
            r.end_recording(session_id);
        }
    }

    /// Authorises `play`/`watch` and opens what they stream.
    pub(super) async fn open_stream(
        &mut self,
        req: Request,
        peer: &Peer,
    ) -> Result<Stream, ErrorReply> {
        self.check(&req, peer)?;
        match req {
            Request::Play { id, .. } => {
                let r = self.recordings.find(id).ok_or_else(|| {
                    let scanning = if self.recordings.scanned() {
                        ""
                    } else {
                        " (recordings are still being indexed after start; retry shortly)"
                    };
                    ErrorReply::new(
                        ErrorKind::NotFound,
                        format!(
                            "no recording of session {id}{scanning}; see `enforcerctl recordings`"
                        ),
                    )
                })?;
                if !peer.may_see(r.header.enforcer.uid) {
                    return Err(self.denied(
                        &req,
                        peer,
                        denied("this recording belongs to another user"),
                    ));
                }
                Ok(Stream::File(r.path))
            }
            Request::Watch { id } => {
                let recorder = self.recorder.clone().ok_or_else(|| {
                    ErrorReply::new(
                        ErrorKind::NotFound,
                        "recording is off (recording.enabled = false)",
                    )
                })?;
                let (tx, rx) = mpsc::channel(WATCH_BACKLOG);
                recorder
                    .watch(id, tx)
                    .await
                    .map_err(|m| ErrorReply::new(ErrorKind::NotFound, m))?;
                Ok(Stream::Live(rx))
            }
            _ => Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "not a streaming request",
            )),
        }
    }
}

/// What a recording's header keeps of the environment of process `pid`: TERM and SHELL.
pub(super) fn recorded_env(pid: u32) -> BTreeMap<String, String> {
    host::environ(pid)
        .into_iter()
        .filter(|(k, _)| k == "TERM" || k == "SHELL")
        .collect()
}

/// `recordings`: what `peer` may see, from the index (no file is read). Called by the control
/// connection's task, off the state actor.
pub fn list(
    index: &RecordingIndex,
    peer: &Peer,
    user: Option<&str>,
    since: Option<&str>,
) -> Result<Vec<RecordingInfo>, ErrorReply> {
    let since = since
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
                ErrorReply::new(
                    ErrorKind::BadRequest,
                    format!("--since {s:?}: use an RFC 3339 time like 2026-11-23T10:00:00Z"),
                )
            })
        })
        .transpose()?;
    Ok(index.list(|r| {
        peer.may_see(r.header.enforcer.uid)
            && user.is_none_or(|u| r.info(false).user == u)
            && since.is_none_or(|t| r.header.timestamp >= t.unix_timestamp())
    }))
}
