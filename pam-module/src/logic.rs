//! What each PAM hook decides, over two traits: [`DaemonLink`] (the daemon) and [`Log`].

use enforcer_proto::{Admission, Client, ClientError, PamAccount, PamSession, Reply, Request};

use crate::args::{FailMode, ModuleArgs};

/// What PAM tells us about the login: exactly what acct_mgmt sends to the daemon.
pub type Login = PamAccount;

/// The outcome of acct_mgmt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        conn_id: Option<u64>,
    },
    /// Refuse; `message` is shown to the user.
    Deny {
        message: String,
    },
}

/// Severity for [`Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Notice,
    Debug,
}

/// Where the module logs (syslog in production).
pub trait Log {
    fn log(&self, level: Level, msg: &str);
    fn error(&self, msg: &str) {
        self.log(Level::Error, msg)
    }
}

/// One request/answer with the daemon, within the module's time budget.
pub trait DaemonLink {
    fn call(&self, req: &Request) -> Result<Reply, ClientError>;
}

/// The real link: a fresh connection per hook, bounded by `timeout_ms` overall.
pub struct SocketLink<'a> {
    args: &'a ModuleArgs,
}

impl<'a> SocketLink<'a> {
    pub fn new(args: &'a ModuleArgs) -> Self {
        SocketLink { args }
    }
}

impl DaemonLink for SocketLink<'_> {
    fn call(&self, req: &Request) -> Result<Reply, ClientError> {
        Client::connect(&self.args.socket, self.args.timeout)?.call(req)
    }
}

/// Shown to the user when the daemon cannot decide and the module fails closed.
pub const UNAVAILABLE_MESSAGE: &str =
    "enforcer: login refused: the session policy service is unavailable; try again later";

/// acct_mgmt: ask the daemon; apply the fail mode when it cannot answer.
pub fn account(
    login: &Login,
    args: &ModuleArgs,
    daemon: &dyn DaemonLink,
    log: &dyn Log,
) -> Verdict {
    let req = Request::PamAccount(login.clone());
    let problem = match daemon.call(&req) {
        Ok(Reply::Admission(Admission::Admitted { conn_id })) => {
            if args.debug {
                log.log(
                    Level::Debug,
                    &format!("user {} admitted as connection {conn_id}", login.user),
                );
            }
            return Verdict::Allow {
                conn_id: Some(conn_id),
            };
        }
        Ok(Reply::Admission(Admission::Refused { reason, message })) => {
            log.log(
                Level::Notice,
                &format!("user {} refused ({reason}): {message}", login.user),
            );
            return Verdict::Deny { message };
        }
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.to_string(),
    };
    match args.fail {
        FailMode::Closed => {
            log.log(
                Level::Warn,
                &format!(
                    "no decision for user {} ({problem}); fail=closed: refusing",
                    login.user
                ),
            );
            Verdict::Deny {
                message: UNAVAILABLE_MESSAGE.into(),
            }
        }
        FailMode::Open => {
            log.log(
                Level::Warn,
                &format!(
                    "no decision for user {} ({problem}); fail=open: admitting",
                    login.user
                ),
            );
            Verdict::Allow { conn_id: None }
        }
    }
}

fn session_request(login: &Login, conn_id: Option<u64>) -> PamSession {
    PamSession {
        user: login.user.clone(),
        pid: login.pid,
        conn_id,
        auth_info: login.auth_info.clone(),
    }
}

/// Tells the daemon about a session hook; a failure is logged, never returned: the hooks do
/// not refuse.
fn report(
    hook: &str,
    request: fn(PamSession) -> Request,
    login: &Login,
    conn_id: Option<u64>,
    daemon: &dyn DaemonLink,
    log: &dyn Log,
) {
    if let Err(e) = daemon.call(&request(session_request(login, conn_id))) {
        log.log(
            Level::Warn,
            &format!("{hook} for user {} not recorded: {e}", login.user),
        );
    }
}

/// open_session: tell the daemon the connection is live (with the key identity sshd has now
/// exposed). Never refuses: admission was acct_mgmt's job, and a refusal here would not close
/// the connection anyway (sshd only fails its channels).
pub fn open_session(login: &Login, conn_id: Option<u64>, daemon: &dyn DaemonLink, log: &dyn Log) {
    let request = Request::PamOpenSession;
    report("open_session", request, login, conn_id, daemon, log);
}

/// close_session: release the connection's slot (the daemon also notices the monitor's exit).
pub fn close_session(login: &Login, conn_id: Option<u64>, daemon: &dyn DaemonLink, log: &dyn Log) {
    let request = Request::PamCloseSession;
    report("close_session", request, login, conn_id, daemon, log);
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_proto::{ErrorKind, ErrorReply};
    use std::{cell::RefCell, path::PathBuf};

    struct Fake {
        answer: Box<dyn Fn(&Request) -> Result<Reply, ClientError>>,
        seen: RefCell<Vec<Request>>,
    }

    impl DaemonLink for Fake {
        fn call(&self, req: &Request) -> Result<Reply, ClientError> {
            self.seen.borrow_mut().push(req.clone());
            (self.answer)(req)
        }
    }

    fn fake(f: impl Fn(&Request) -> Result<Reply, ClientError> + 'static) -> Fake {
        Fake {
            answer: Box::new(f),
            seen: RefCell::new(Vec::new()),
        }
    }

    #[derive(Default)]
    struct Lines(RefCell<Vec<(Level, String)>>);
    impl Log for Lines {
        fn log(&self, level: Level, msg: &str) {
            self.0.borrow_mut().push((level, msg.to_owned()));
        }
    }

    fn login() -> Login {
        Login {
            user: "alice".into(),
            service: "sshd".into(),
            rhost: Some("10.0.0.1".into()),
            tty: Some("ssh".into()),
            pid: 4242,
            ssh_connection: Some("10.0.0.1 5000 10.0.0.2 22".into()),
            auth_info: None,
        }
    }

    fn args(fail: FailMode) -> ModuleArgs {
        ModuleArgs {
            fail,
            ..ModuleArgs::default()
        }
    }

    fn not_running() -> ClientError {
        ClientError::NotRunning {
            socket: PathBuf::from("/run/enforcer/enforcerd.sock"),
        }
    }

    #[test]
    fn admitted_passes_the_connection_id_on() {
        let d = fake(|_| Ok(Reply::Admission(Admission::Admitted { conn_id: 7 })));
        let v = account(&login(), &args(FailMode::Closed), &d, &Lines::default());
        assert_eq!(v, Verdict::Allow { conn_id: Some(7) });
        let Request::PamAccount(sent) = &d.seen.borrow()[0] else {
            panic!()
        };
        assert_eq!((sent.user.as_str(), sent.pid), ("alice", 4242));
        assert_eq!(
            sent.ssh_connection.as_deref(),
            Some("10.0.0.1 5000 10.0.0.2 22")
        );
    }

    #[test]
    fn refusal_shows_the_daemons_message_and_is_logged() {
        let d = fake(|_| {
            Ok(Reply::Admission(Admission::Refused {
                reason: "user_locked".into(),
                message: "locked: x".into(),
            }))
        });
        let log = Lines::default();
        // Fail mode is irrelevant when the daemon decided.
        let v = account(&login(), &args(FailMode::Open), &d, &log);
        assert_eq!(
            v,
            Verdict::Deny {
                message: "locked: x".into()
            }
        );
        assert!(log.0.borrow()[0].1.contains("user_locked"));
    }

    #[test]
    fn unreachable_daemon_follows_the_fail_mode() {
        let d = fake(|_| Err(not_running()));
        let log = Lines::default();
        assert_eq!(
            account(&login(), &args(FailMode::Closed), &d, &log),
            Verdict::Deny {
                message: UNAVAILABLE_MESSAGE.into()
            }
        );
        assert_eq!(
            account(&login(), &args(FailMode::Open), &d, &log),
            Verdict::Allow { conn_id: None }
        );
        let lines = log.0.borrow();
        assert!(lines[0].1.contains("fail=closed: refusing") && lines[0].1.contains("not running"));
        assert!(lines[1].1.contains("fail=open: admitting"));
    }

    #[test]
    fn timeouts_and_daemon_errors_count_as_unavailable() {
        for err in [
            || ClientError::Timeout {
                socket: "/s".into(),
                timeout_ms: 5,
            },
            || ClientError::Daemon(ErrorReply::new(ErrorKind::Internal, "boom")),
        ] {
            let d = fake(move |_| Err(err()));
            let v = account(&login(), &args(FailMode::Closed), &d, &Lines::default());
            assert!(matches!(v, Verdict::Deny { .. }));
        }
        let d = fake(|_| Ok(Reply::Done));
        assert!(matches!(
            account(&login(), &args(FailMode::Closed), &d, &Lines::default()),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn session_hooks_report_and_never_fail() {
        let d = fake(|_| Err(not_running()));
        let log = Lines::default();
        let mut l = login();
        l.auth_info = Some("publickey ssh-ed25519 AAAA".into());
        open_session(&l, Some(3), &d, &log);
        close_session(&l, Some(3), &d, &log);
        let seen = d.seen.borrow();
        let Request::PamOpenSession(open) = &seen[0] else {
            panic!()
        };
        assert_eq!(
            (open.conn_id, open.auth_info.as_deref()),
            (Some(3), Some("publickey ssh-ed25519 AAAA"))
        );
        assert!(matches!(seen[1], Request::PamCloseSession(_)));
        assert_eq!(log.0.borrow().len(), 2);
    }
}
