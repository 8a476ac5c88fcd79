//! A private enforcerd per test: own temp dir, socket, state, audit log; stopped by pid.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use enforcer_proto::{Admission, Client, PamAccount, PamSession, Reply, Request, StatusReport};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{Pam, TestUser, bin};

/// A running enforcerd.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The root-only socket pam_enforcer talks to (`daemon.pam_socket`).
    pub pam_socket: PathBuf,
    pub config_path: PathBuf,
    /// This daemon's bpffs pin directory (removed when the test ends).
    pub pin_dir: PathBuf,
    child: Option<Child>,
}

impl TestDaemon {
    /// The config: paths every test daemon overrides (so several run side by side), merged
    /// with the test's own `extra` TOML, section by section (extra wins).
    fn config(dir: &Path, pin_dir: &Path, journald: bool, extra: &str) -> String {
        let base = format!(
            "[daemon]\nsocket = \"{d}/enforcerd.sock\"\npam_socket = \"{d}/pam.sock\"\nstate_dir = \"{d}/state\"\nbpf_pin_dir = \"{p}\"\n\
             [audit]\npath = \"{d}/audit.jsonl\"\njournald = {journald}\n\
             [recording]\ndir = \"{d}/recordings\"\n\
             [locks]\ndir = \"{d}/locks.d\"\n",
            d = dir.display(),
            p = pin_dir.display()
        );
        merge(&base, extra)
    }

    /// Edits the config file as an operator would before a reload: `extra`'s sections merged
    /// into the current file, key by key (extra wins).
    pub fn edit_config(&self, extra: &str) {
        let current = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, merge(&current, extra)).unwrap();
    }

    /// Starts a daemon on the base config plus `extra` TOML (e.g. a `[limits]` section), and
    /// waits until it answers.
    pub fn start(extra: &str) -> Self {
        Self::start_opts(extra, false)
    }

    /// Like [`TestDaemon::start`], with `audit.journald` set as given.
    pub fn start_opts(extra: &str, journald: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-test-")
            .tempdir()
            .unwrap();
        let config_path = dir.path().join("enforcer.toml");
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let pin_dir = Path::new("/sys/fs/bpf").join(name);
        std::fs::write(
            &config_path,
            Self::config(dir.path(), &pin_dir, journald, extra),
        )
        .unwrap();
        let socket = dir.path().join("enforcerd.sock");
        let pam_socket = dir.path().join("pam.sock");
        let mut d = TestDaemon {
            dir,
            socket,
            pam_socket,
            config_path,
            pin_dir,
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("enforcerd.log"))
            .unwrap();
        let mut cmd = Command::new(bin("enforcerd"));
        cmd.arg("--config")
            .arg(&self.config_path)
            // Debug logs for the tests' diagnostics; benchmarks (`cargo xtask bench`) set
            // ENFORCER_TEST_DAEMON_LOG=info: they measure the daemon as it runs in production
            // (`bench fleet` adds its two timing lines per admission, see its `split.rs`).
            .env(
                "ENFORCER_LOG",
                std::env::var("ENFORCER_TEST_DAEMON_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Own process group: a test's ctrl-C does not reach it before Drop stops it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().expect("spawn enforcerd"));
        self.wait_ready();
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same config and state.
    pub fn restart(&mut self) {
        let st = self.stop();
        assert!(st.success(), "enforcerd exited with {st}");
        self.spawn();
    }

    /// Kills the daemon with SIGKILL (a crash: nothing is flushed or cleaned up).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the daemon again after [`TestDaemon::kill9`] or [`TestDaemon::stop`], on the same
    /// config and state.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn();
    }

    /// `enforcerctl status`'s `continuous_enforcement`: (continuous, why).
    pub fn continuity(&self) -> (bool, String) {
        let s = self.status();
        let f = s
            .features
            .iter()
            .find(|f| f.name == "continuous_enforcement")
            .expect("status reports continuity");
        (f.supported, f.detail.clone())
    }

    /// The audit log so far, one JSON value per line.
    /// The audit records of `event`, in order.
    pub fn audit_events(&self, event: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// The audit log's records, in order: whole lines only — a read racing the daemon's append
    /// of a record can see its line half-written (seen once in a full run: `kube_label` failed
    /// on a record cut at column 439).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
        whole
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits (up to 10 s) for an audit record matching `pred`, and returns it.
    pub fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.audit().into_iter().find(&pred) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {what}; log has:\n{:#?}",
                self.audit()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The live connections (`enforcerctl sessions --json`, without ended connections whose
    /// processes linger: [`TestDaemon::lingering`]).
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        self.connections(|state| state != "lingering")
    }

    /// Ended connections whose processes still run, as `enforcerctl sessions` lists them.
    pub fn lingering(&self) -> Vec<serde_json::Value> {
        self.connections(|state| state == "lingering")
    }

    fn connections(&self, keep: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
        let all = self.ctl_json(&["sessions"]);
        let all = all.as_array().unwrap().iter();
        all.filter(|c| keep(c["state"].as_str().unwrap_or_default()))
            .cloned()
            .collect()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "enforcerd exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if self.try_status().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("enforcerd did not answer within 30 s:\n{}", self.log());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("enforcerd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// `status` over the protocol, or why it failed (e.g. no answer within 5 s).
    pub fn try_status(&self) -> Result<StatusReport, enforcer_proto::ClientError> {
        let mut c = Client::connect(&self.socket, Duration::from_secs(5))?;
        match c.call(&Request::Status)? {
            Reply::Status(s) => Ok(*s),
            #[allow(unreachable_patterns)]
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// `status` over the protocol.
    pub fn status(&self) -> StatusReport {
        self.try_status()
            .unwrap_or_else(|e| panic!("status: {e}\n{}", self.log()))
    }

    /// pam_enforcer's lines for a test sshd talking to this daemon.
    pub fn pam(&self) -> Pam {
        Pam::Enforcer(format!(
            "socket={} timeout_ms=3000",
            self.pam_socket.display()
        ))
    }

    /// An enforcerctl command against this daemon.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("enforcerctl"));
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// Runs enforcerctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args).output().unwrap()
    }

    /// Runs enforcerctl against this daemon as `user`.
    pub fn ctl_as(&self, user: &TestUser, args: &[&str]) -> Output {
        let mut c = user.command(&bin("enforcerctl"));
        c.arg("--socket").arg(&self.socket).args(args);
        c.output().unwrap()
    }

    /// Runs enforcerctl, asserts success, returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "enforcerctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// One request over the control socket, as root.
    pub fn call(&self, req: &Request) -> Reply {
        Client::connect(&self.socket, Duration::from_secs(5))
            .unwrap()
            .call(req)
            .unwrap()
    }

    /// PAM `account` for login name `user` with process `pid` standing in for sshd's monitor:
    /// the daemon's answer.
    pub fn account(&self, user: &str, pid: u32) -> Reply {
        self.call(&account_request(user, pid))
    }

    /// Registers process `pid` as an admitted, open SSH connection of `user` through the PAM
    /// requests sshd's module would send: a stand-in monitor whose children become sessions.
    pub fn admit_stand_in(&self, user: &TestUser, pid: u32) {
        let Reply::Admission(Admission::Admitted { .. }) = self.account(&user.name, pid) else {
            panic!("stand-in monitor {pid} not admitted")
        };
        self.call(&Request::PamOpenSession(PamSession {
            user: user.name.clone(),
            pid,
            conn_id: None,
            auth_info: None,
        }));
    }

    /// `enforcerctl recordings --json`: one object per recording.
    pub fn recordings(&self) -> Vec<serde_json::Value> {
        self.ctl_json(&["recordings"]).as_array().unwrap().clone()
    }

    /// `enforcerctl ARGS --json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ctl_ok(&a)).unwrap()
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let st = child.wait().unwrap();
                panic!(
                    "enforcerd ignored SIGTERM for 15 s (killed: {st}):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `base` TOML with `extra`'s sections merged in, section by section (extra wins).
fn merge(base: &str, extra: &str) -> String {
    let mut config: toml::Table = base.parse().expect("base config");
    let extra: toml::Table = extra.parse().unwrap_or_else(|e| panic!("test config: {e}"));
    for (key, value) in extra {
        match (config.get_mut(&key), value) {
            (Some(toml::Value::Table(section)), toml::Value::Table(more)) => section.extend(more),
            (_, value) => {
                config.insert(key, value);
            }
        }
    }
    toml::to_string(&config).expect("config serialises")
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // Pinned programs and maps outlive the daemon by design; removing a test's pin
        // directory detaches and frees them.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The PAM `account` request pam_enforcer sends for a connection of `user` whose sshd monitor
/// is `pid` (from 127.0.0.1).
/// `enforcerd --check-config` on config `text` (no root needed): (success, stderr).
pub fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("check.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(bin("enforcerd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn account_request(user: &str, pid: u32) -> Request {
    Request::PamAccount(PamAccount {
        user: user.to_owned(),
        service: "bench".into(),
        rhost: Some("127.0.0.1".into()),
        tty: None,
        pid,
        ssh_connection: Some("127.0.0.1 40000 127.0.0.1 22".into()),
        auth_info: None,
    })
}
