//! Blocking client with a hard deadline, for `enforcerctl` and the PAM module (which must never
//! hold sshd longer than its configured timeout).

use std::{
    io,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
};

use crate::{
    frame::{FrameError, read_frame, write_frame},
    msg::{ErrorReply, Reply, Request, Response},
};

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "enforcerd is not running (nothing listens on {}); start it with `systemctl start enforcerd` (without systemd: `service enforcerd start`)",
        socket.display()
    )]
    NotRunning { socket: PathBuf },
    #[error("no permission to connect to {}: {source}", socket.display())]
    Access { socket: PathBuf, source: io::Error },
    #[error("enforcerd did not answer on {} within {timeout_ms} ms", socket.display())]
    Timeout { socket: PathBuf, timeout_ms: u128 },
    #[error("talking to enforcerd on {}: {source}", socket.display())]
    Frame { socket: PathBuf, source: FrameError },
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(ErrorReply),
}

/// One connection to the daemon.
pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
    deadline: Option<Instant>,
    budget: Duration,
}

impl Client {
    /// Connects; every later [`Client::call`] must also finish before `timeout` from now.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let deadline = Instant::now() + timeout;
        let stream = connect_until(socket, deadline, timeout)?;
        Ok(Self {
            stream,
            socket: socket.to_owned(),
            deadline: Some(deadline),
            budget: timeout,
        })
    }

    /// Lifts the deadline (for long-lived calls such as following a live session).
    pub fn without_deadline(mut self) -> Self {
        self.deadline = None;
        self
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        self.arm_timeouts()?;
        write_frame(&mut self.stream, req).map_err(|e| self.frame_error(e))?;
        self.read_response()
    }

    /// Reads one more response (for requests answered by a stream of frames).
    pub fn read_response(&mut self) -> Result<Reply, ClientError> {
        self.arm_timeouts()?;
        let resp: Response = read_frame(&mut self.stream).map_err(|e| self.frame_error(e))?;
        resp.map_err(ClientError::Daemon)
    }

    fn arm_timeouts(&self) -> Result<(), ClientError> {
        let left = match self.deadline {
            None => None,
            Some(d) => Some(
                d.checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| self.timeout())?,
            ),
        };
        let set = |r: io::Result<()>| {
            r.map_err(|e| ClientError::Frame {
                socket: self.socket.clone(),
                source: e.into(),
            })
        };
        set(self.stream.set_read_timeout(left))?;
        set(self.stream.set_write_timeout(left))
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout {
            socket: self.socket.clone(),
            timeout_ms: self.budget.as_millis(),
        }
    }

    fn frame_error(&self, e: FrameError) -> ClientError {
        match &e {
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.timeout()
            }
            _ => ClientError::Frame {
                socket: self.socket.clone(),
                source: e,
            },
        }
    }
}

/// Non-blocking connect retried until the deadline: a full listen backlog makes a Unix-socket
/// connect fail with EAGAIN instead of blocking past our budget.
fn connect_until(
    socket: &Path,
    deadline: Instant,
    budget: Duration,
) -> Result<UnixStream, ClientError> {
    let addr = UnixAddr::new(socket).map_err(|e| ClientError::Frame {
        socket: socket.to_owned(),
        source: io::Error::from(e).into(),
    })?;
    loop {
        let fd: OwnedFd = socket_nonblocking().map_err(|e| ClientError::Frame {
            socket: socket.to_owned(),
            source: io::Error::from(e).into(),
        })?;
        use std::os::fd::AsRawFd;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from);
                let blocking = flags.and_then(|f| {
                    let f = OFlag::from_bits_truncate(f) & !OFlag::O_NONBLOCK;
                    fcntl(&fd, FcntlArg::F_SETFL(f)).map_err(io::Error::from)
                });
                blocking.map_err(|e| ClientError::Frame {
                    socket: socket.to_owned(),
                    source: e.into(),
                })?;
                return Ok(UnixStream::from(fd));
            }
            Err(Errno::ENOENT | Errno::ECONNREFUSED | Errno::ENOTDIR) => {
                return Err(ClientError::NotRunning {
                    socket: socket.to_owned(),
                });
            }
            Err(e @ (Errno::EACCES | Errno::EPERM)) => {
                return Err(ClientError::Access {
                    socket: socket.to_owned(),
                    source: e.into(),
                });
            }
            Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {
                return Err(ClientError::Timeout {
                    socket: socket.to_owned(),
                    timeout_ms: budget.as_millis(),
                });
            }
            Err(e) => {
                return Err(ClientError::Frame {
                    socket: socket.to_owned(),
                    source: io::Error::from(e).into(),
                });
            }
        }
    }
}

fn socket_nonblocking() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_socket_says_daemon_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = Client::connect(&path, Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
        // The service, not a developer command: this is what an operator reads.
        assert!(
            err.to_string()
                .contains("start it with `systemctl start enforcerd`"),
            "{err}"
        );
        assert!(!err.to_string().contains("cargo"), "{err}");
    }

    #[test]
    fn silent_daemon_times_out_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        let _listener = UnixListener::bind(&path).unwrap(); // accepts (backlog) but never answers
        let start = Instant::now();
        let mut client = Client::connect(&path, Duration::from_millis(150)).unwrap();
        let err = client.call(&Request::Status).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(took < Duration::from_millis(400), "took {took:?}");
    }
}
