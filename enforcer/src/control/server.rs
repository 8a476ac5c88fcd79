//! The control sockets: binding them and accepting connections. The public socket (0666) caps
//! what unprivileged uids may hold at accept; the PAM socket (0600, root only) has its own accept
//! loop and reaches the state actor through its priority lane.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use std::os::fd::AsRawFd;

use enforcer_proto::{ErrorKind, ErrorReply, Response, frame::encode};
use tokio::net::{UnixListener, UnixStream};

use super::conn::{self, Ctx};
use crate::core::control::{ControlDrop, RefusalPacer};

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

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `daemon.socket`, mode 0666: anyone, authorised per request, capped per uid.
    Public,
    /// `daemon.pam_socket`, mode 0600: the PAM module (root), served first by the actor.
    Pam,
}

/// A bound control socket; the socket file is removed when this is dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    lane: Lane,
}

impl Server {
    /// Binds `path` for `lane` (public: mode 0666, PAM: 0600), replacing a stale socket file but
    /// never one a live daemon still answers on.
    pub fn bind(path: &Path, lane: Lane) -> Result<Self, ControlError> {
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
        let listener = listen(path, lane).map_err(err)?;
        let mode = match lane {
            Lane::Public => 0o666,
            Lane::Pam => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            lane,
        })
    }

    /// Serves until the task is cancelled.
    pub async fn serve(&self, ctx: Arc<Ctx>) {
        let mut pacer = RefusalPacer::default();
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    if !self.admit(stream, &ctx) {
                        let pause = pacer.refused(std::time::Instant::now());
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: the caps keep unprivileged peers far below the fd
                    // limit, so this is root's doing or a real shortage; back off briefly.
                    tracing::warn!(error = %e, lane = ?self.lane, "accept on control socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Takes the connection's slot (public lane) and spawns its task, or closes it at once
    /// (`false`: turned away).
    fn admit(&self, stream: UnixStream, ctx: &Arc<Ctx>) -> bool {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials on control connection; closing it");
                return false;
            }
        };
        match self.lane {
            Lane::Pam if cred.uid() != 0 => {
                // Only reachable if someone loosened the socket's mode.
                tracing::warn!(
                    uid = cred.uid(),
                    "non-root peer on the PAM socket; closing it"
                );
                false
            }
            Lane::Pam => {
                tokio::spawn(conn::serve(stream, cred, ctx.clone(), Lane::Pam, None));
                true
            }
            Lane::Public => match ctx.slots.open(cred.uid(), ctx.settings.get().caps) {
                Ok(slot) => {
                    tokio::spawn(conn::serve(
                        stream,
                        cred,
                        ctx.clone(),
                        Lane::Public,
                        Some(slot),
                    ));
                    true
                }
                Err(reason) => {
                    ctx.slots.stats.count(reason);
                    tracing::debug!(uid = cred.uid(), ?reason, "control connection refused");
                    refuse(&stream, reason);
                    false
                }
            },
        }
    }
}

/// Connections the public socket's listen queue holds. Small on purpose: while refusals are
/// paced ([`RefusalPacer`]) the queue drains slowly, and a legitimate peer's connection waits
/// behind every one queued before it; with a short queue that is a fraction of a second, and
/// a flood meets a full queue (EAGAIN, which costs nobody anything) instead.
const PUBLIC_BACKLOG: i32 = 64;
/// The PAM socket's (root only, never paced).
const PAM_BACKLOG: i32 = 1024;

/// A non-blocking listening socket at `path` with the lane's listen queue.
fn listen(path: &Path, lane: Lane) -> std::io::Result<UnixListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    let backlog = match lane {
        Lane::Public => PUBLIC_BACKLOG,
        Lane::Pam => PAM_BACKLOG,
    };
    socket::listen(&fd, Backlog::new(backlog)?)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tells the peer why it is closed when that fits in the socket buffer now (never waits).
pub(super) fn refuse(stream: &UnixStream, reason: ControlDrop) {
    let resp: Response = Err(ErrorReply::new(ErrorKind::Limited, reason.message()));
    if let Ok(frame) = encode(&resp) {
        let _ = stream.try_write(&frame);
    }
}
