//! A private enforcerd per test: own temp dir, socket, state, audit log; stopped by pid.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use enforcer_proto::{Client, Reply, Request, StatusReport};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::bin;

/// A running enforcerd.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    child: Option<Child>,
}

impl TestDaemon {
    /// Paths every test daemon overrides, so several run side by side.
    fn base_config(dir: &Path) -> String {
        format!(
            "[daemon]\nsocket = \"{d}/enforcerd.sock\"\nstate_dir = \"{d}/state\"\n\
             [audit]\npath = \"{d}/audit.jsonl\"\njournald = false\n\
             [recording]\ndir = \"{d}/recordings\"\n\
             [locks]\ndir = \"{d}/locks.d\"\n",
            d = dir.display()
        )
    }

    /// Starts a daemon whose config is the base paths plus `extra` TOML (which may add sections
    /// the base does not set, e.g. `[limits]`), and waits until it answers.
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("enf-test-").tempdir().unwrap();
        let config_path = dir.path().join("enforcer.toml");
        std::fs::write(&config_path, Self::base_config(dir.path()) + extra).unwrap();
        let log = std::fs::File::create(dir.path().join("enforcerd.log")).unwrap();
        let mut cmd = Command::new(bin("enforcerd"));
        cmd.arg("--config")
            .arg(&config_path)
            .env("ENFORCER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Own process group: a test's ctrl-C does not reach it before Drop stops it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn enforcerd");
        let socket = dir.path().join("enforcerd.sock");
        let mut d = TestDaemon { dir, socket, config_path, child: Some(child) };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("enforcerd exited during start-up ({status}):\n{}", self.log());
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

    fn try_status(&self) -> Result<StatusReport, enforcer_proto::ClientError> {
        let mut c = Client::connect(&self.socket, Duration::from_secs(5))?;
        match c.call(&Request::Status)? {
            Reply::Status(s) => Ok(*s),
            #[allow(unreachable_patterns)]
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// `status` over the protocol.
    pub fn status(&self) -> StatusReport {
        self.try_status().unwrap_or_else(|e| panic!("status: {e}\n{}", self.log()))
    }

    /// Runs enforcerctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("enforcerctl")).arg("--socket").arg(&self.socket).args(args).output().unwrap()
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
                panic!("enforcerd ignored SIGTERM for 15 s (killed: {st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
