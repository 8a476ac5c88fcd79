//! Accepting control connections and exchanging frames.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use enforcer_proto::{
    ErrorKind, ErrorReply, FrameError, Request, Response,
    frame::{read_frame_async, write_frame_async},
};
use tokio::net::{UnixListener, UnixStream};

use super::Peer;
use crate::daemon::StateHandle;

/// Control socket failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another enforcerd already serves {}; stop it first or set a different daemon.socket", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("cannot create control socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bound control socket; the socket file is removed when this is dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` (mode 0666: every request is authorised from peer credentials), replacing a
    /// stale socket file but never one a live daemon still answers on.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let err = |source| ControlError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::AlreadyRunning(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves until the task is cancelled.
    pub async fn serve(&self, state: StateHandle, auditor_group: String) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, state.clone(), auditor_group.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on control socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(mut stream: UnixStream, state: StateHandle, auditor_group: String) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer::resolve(c.uid(), c.gid(), c.pid(), &auditor_group),
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials on control connection; closing it");
            return;
        }
    };
    loop {
        let req = match read_frame_async::<Request>(&mut stream).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(FrameError::Closed) => return,
            Err(e) => {
                tracing::debug!(error = %e, uid = peer.uid, "bad control request");
                let resp: Response = Err(ErrorReply::new(ErrorKind::BadRequest, e.to_string()));
                let _ = write_frame_async(&mut stream, &resp).await;
                return;
            }
        };
        // Authorisation (and auditing of denials) happens in the state actor.
        if matches!(req, Request::Play { .. } | Request::Watch { .. }) {
            let ok = match state.stream(req, peer.clone()).await {
                Ok(s) => super::stream::send_stream(&mut stream, s).await,
                Err(e) => write_frame_async(&mut stream, &Response::Err(e))
                    .await
                    .is_ok(),
            };
            if !ok {
                return;
            }
            continue;
        }
        let resp = state.request(req, peer.clone()).await;
        if let Err(e) = write_frame_async(&mut stream, &resp).await {
            tracing::debug!(error = %e, "control client went away before its answer");
            return;
        }
    }
}
