//! SSH clients for tests: OpenSSH `ssh` processes and russh sessions.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{TestSshd, TestUser};

/// An ssh connection kept open (the remote side runs `sleep`) until dropped.
pub struct HeldSsh {
    child: Child,
}

impl HeldSsh {
    /// Logs in and waits until the remote shell runs; panics with ssh's stderr when refused.
    pub fn open(sshd: &TestSshd, user: &TestUser) -> Self {
        Self::try_open(sshd, user)
            .unwrap_or_else(|e| panic!("login of {} failed: {e}\n{}", user.name, sshd.log()))
    }

    /// Logs in; `Err(stderr)` when the login is refused.
    pub fn try_open(sshd: &TestSshd, user: &TestUser) -> Result<Self, String> {
        Self::try_open_cmd(sshd.ssh(user, "echo enforcer-ready; exec sleep 600"))
    }

    pub fn try_open_cmd(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line);
        if line.trim() == "enforcer-ready" {
            return Ok(HeldSsh { child });
        }
        let out = child.wait_with_output().unwrap();
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Whether the client has exited (the server ended the connection).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Disconnects (kills the client) and waits for it.
    pub fn close(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HeldSsh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a one-shot ssh command.
pub fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

/// Appends everything `stream` yields to `out`, on a thread of its own, until it ends.
pub fn collect_into(
    mut stream: impl Read + Send + 'static,
    out: std::sync::Arc<std::sync::Mutex<String>>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// A multi-threaded tokio runtime for the russh clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// russh client handler: accepts the test host key, remembers the banner (sshd sends PAM's
/// refusal message as one).
#[derive(Default, Clone)]
pub struct Client {
    pub banner: Arc<std::sync::Mutex<String>>,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn auth_banner(
        &mut self,
        banner: &str,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        self.banner.lock().unwrap().push_str(banner);
        Ok(())
    }
}

/// A russh login: the live handle when admitted, the banner text when refused.
pub async fn russh_login(
    port: u16,
    user: &str,
    key: &Path,
) -> Result<russh::client::Handle<Client>, String> {
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let handler = Client::default();
    let banner = handler.banner.clone();
    let mut handle = russh::client::connect(config, ("127.0.0.1", port), handler)
        .await
        .map_err(|e| e.to_string())?;
    let key = russh::keys::load_secret_key(key, None).map_err(|e| e.to_string())?;
    let auth = handle
        .authenticate_publickey(
            user,
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await;
    match auth {
        Ok(r) if r.success() => Ok(handle),
        Ok(r) => Err(format!(
            "refused: {r:?}; banner {:?}",
            banner.lock().unwrap()
        )),
        Err(e) => Err(format!("{e}; banner {:?}", banner.lock().unwrap())),
    }
}

/// What one channel of a russh connection produced.
#[derive(Debug, Default, Clone)]
pub struct ChannelOutcome {
    pub stdout: String,
    pub stderr: String,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
}

/// Opens one exec channel per command on the same connection, all at once, and collects what
/// each produced until it closed.
pub async fn russh_exec_all(
    handle: &russh::client::Handle<Client>,
    commands: &[String],
) -> Vec<ChannelOutcome> {
    let mut tasks = Vec::new();
    for cmd in commands {
        let mut channel = handle.channel_open_session().await.expect("open channel");
        let cmd = cmd.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = ChannelOutcome::default();
            channel
                .exec(true, cmd.as_bytes())
                .await
                .expect("exec request");
            while let Some(msg) = channel.wait().await {
                match msg {
                    russh::ChannelMsg::Data { data } => {
                        out.stdout.push_str(&String::from_utf8_lossy(&data))
                    }
                    russh::ChannelMsg::ExtendedData { data, .. } => {
                        out.stderr.push_str(&String::from_utf8_lossy(&data))
                    }
                    russh::ChannelMsg::ExitStatus { exit_status } => {
                        out.exit_status = Some(exit_status)
                    }
                    russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.exit_signal = Some(format!("{signal_name:?}"))
                    }
                    russh::ChannelMsg::Close => break,
                    _ => {}
                }
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes
}

/// An interactive pty session (`ssh -tt`): the test types into it and reads what the terminal
/// shows. Nothing typed = idle.
pub struct PtySsh {
    child: Child,
    stdin: std::process::ChildStdin,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl PtySsh {
    /// Logs in and waits for `marker` (printed by the remote shell) to know the session runs.
    pub fn open(sshd: &TestSshd, user: &TestUser) -> Self {
        Self::spawn(&mut sshd.ssh_login(user, &["-tt"]))
    }

    /// Runs `cmd` (an ssh client asking for a pty) and waits until its remote shell answers.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        collect_into(child.stdout.take().unwrap(), output.clone());
        collect_into(child.stderr.take().unwrap(), output.clone());
        let mut p = PtySsh {
            child,
            stdin,
            output,
        };
        p.type_text("echo pty-$((40+2))\n");
        assert!(
            p.wait_for("pty-42", Duration::from_secs(15)),
            "shell did not start: {}",
            p.output()
        );
        p
    }

    pub fn type_text(&mut self, text: &str) {
        use std::io::Write;
        let _ = self.stdin.write_all(text.as_bytes());
        let _ = self.stdin.flush();
    }

    /// Everything the terminal showed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.output().contains(text))
    }

    /// Waits for the ssh client to exit (the connection closed); true if it did in time.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || self.child.try_wait().unwrap().is_some())
    }

    pub fn is_open(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for PtySsh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
