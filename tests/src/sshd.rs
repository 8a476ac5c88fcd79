//! A private OpenSSH sshd on 127.0.0.1 with its own PAM service name (its argv[0] basename):
//! `/etc/pam.d/<service>` is written for it and removed on drop. The system's sshd and
//! /etc/pam.d/sshd are never touched.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TestUser, procs, users::unique_name};

/// How the PAM stack of a test sshd uses pam_enforcer.
#[derive(Debug, Clone)]
pub enum Pam {
    /// `account` and `session` lines with these module arguments.
    Enforcer(String),
    /// No pam_enforcer at all (baseline for benchmarks).
    Without,
}

/// A running sshd.
pub struct TestSshd {
    pub port: u16,
    pub service: String,
    pub dir: tempfile::TempDir,
    pam_file: PathBuf,
    child: Child,
}

fn authorize(dir: &Path, user: &TestUser) {
    std::fs::write(
        dir.join("keys").join(&user.name),
        format!("{}\n", user.public_key),
    )
    .unwrap();
}

/// A TCP port on 127.0.0.1 nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The built PAM module.
pub fn pam_module() -> PathBuf {
    crate::bin("libpam_enforcer.so")
}

impl TestSshd {
    /// Starts sshd for `users` (their keys authorised), with `pam` and extra sshd_config lines.
    pub fn start(pam: Pam, users: &[&TestUser], extra_config: &str) -> Self {
        Self::start_from(Path::new("/usr/sbin/sshd"), pam, users, extra_config)
    }

    /// Like [`TestSshd::start`], running the sshd executable at `binary`.
    pub fn start_from(binary: &Path, pam: Pam, users: &[&TestUser], extra_config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-sshd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_key"))
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::create_dir(d.join("keys")).unwrap();
        let service = unique_name("sshd");
        let pam_file = Path::new("/etc/pam.d").join(&service);
        let enforcer = match &pam {
            Pam::Enforcer(args) => {
                let m = pam_module();
                format!(
                    "account required {m} {args}\nsession required {m} {args}\n",
                    m = m.display()
                )
            }
            Pam::Without => String::new(),
        };
        std::fs::write(
            &pam_file,
            format!(
                "# enforcer test sshd {service} (removed when the test ends)\n{enforcer}\
                 account required pam_permit.so\nsession required pam_permit.so\n\
                 auth required pam_deny.so\npassword required pam_deny.so\n"
            ),
        )
        .unwrap();
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 UsePAM yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nStrictModes no\nAuthorizedKeysFile {d}/keys/%u\n\
                 ExposeAuthInfo yes\nLogLevel VERBOSE\nMaxStartups 200:30:400\nMaxSessions 50\n\
                 {extra_config}\nUseDNS no\nPermitRootLogin no\n{subsystem}",
                d = d.display(),
                // A test may run Debian's default, the sftp-server program, instead.
                subsystem = if extra_config.contains("Subsystem") {
                    ""
                } else {
                    "Subsystem sftp internal-sftp\n"
                },
            ),
        )
        .unwrap();
        for u in users {
            authorize(d, u);
        }
        // sshd's PAM service name is its argv[0] basename: run it through a symlink.
        let argv0 = d.join(&service);
        std::os::unix::fs::symlink(binary, &argv0).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut cmd = Command::new(&argv0);
        cmd.args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start sshd");
        let mut sshd = Self {
            port,
            service,
            dir,
            pam_file,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", sshd.port)).is_err() {
            if let Some(st) = sshd.child.try_wait().unwrap() {
                panic!("sshd exited ({st}):\n{}", sshd.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen within 10 s:\n{}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The listener's pid (every connection's processes descend from it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An ssh client command logging in as `user` and running `remote`.
    pub fn ssh(&self, user: &TestUser, remote: &str) -> Command {
        self.ssh_with(user, &[], remote)
    }

    /// Same, with extra client options (placed before the destination), e.g. `["-b", addr]`.
    pub fn ssh_with(&self, user: &TestUser, options: &[&str], remote: &str) -> Command {
        let mut c = self.ssh_login(user, options);
        c.arg(remote);
        c
    }

    /// An ssh client command logging in as `user` without a remote command (a login shell).
    pub fn ssh_login(&self, user: &TestUser, options: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=INFO",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-i")
        .arg(&user.key)
        .args(options)
        .args(["-p", &self.port.to_string()])
        .arg(format!("{}@127.0.0.1", user.name))
        .stdin(Stdio::null());
        c
    }
}

impl TestSshd {
    /// Kills the listener and every connection process it forked with SIGKILL (a crashed
    /// node), now.
    pub fn kill9(&mut self) {
        procs::kill_tree(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        // The listener and every connection process it forked (monitors, their children).
        procs::kill_tree(self.child.id());
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pam_file);
    }
}
