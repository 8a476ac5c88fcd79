//! A private S3-compatible server for `[recording.store]` tests: s3s-fs (installed by
//! `cargo xtask setup`, SigV4 enforced) serving a temp dir on 127.0.0.1, on a port of its own,
//! stopped by pid. It can be stopped and started again on the same port and data ("the store
//! is down"). Objects are plain files under `root/<bucket>/<key>`; parts of unfinished uploads
//! are `root/.upload_id-<id>.part-<n>`.

use std::{
    net::TcpStream,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const ACCESS_KEY: &str = "enforcer-test";
pub const SECRET_KEY: &str = "enforcer-test-secret-0123456789";
pub const BUCKET: &str = "recordings";

/// The s3s-fs binary: on PATH, else in cargo's bin dir. Under CI a missing one fails the test;
/// elsewhere `None` skips it with a note.
pub fn s3s_fs() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(cargo_home.map(|c| c.join("bin")))
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("s3s-fs is missing and CI is set: run `cargo xtask setup`");
        }
        eprintln!("SKIPPED: s3s-fs missing (run `cargo xtask setup`)");
    }
    found
}

/// A running (or stopped) s3s-fs.
pub struct TestS3 {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
    /// While the server is down, its port stays bound (not listening: connections are
    /// refused, as by a store that is down) so that no other test's server or client gets it:
    /// a test keeps its store down for seconds while others bind ports (a possible cause of a
    /// CI failure, not reproduced).
    reserved: Option<OwnedFd>,
}

/// Binds 127.0.0.1:`port` (0: any free port) without listening; returns the socket and port.
fn reserve(port: u16) -> nix::Result<(OwnedFd, u16)> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, setsockopt, socket,
        sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Bound again after a stop, past the server's connections in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port))?;
    let port = getsockname::<SockaddrIn>(fd.as_raw_fd())?.port();
    Ok((fd, port))
}

impl TestS3 {
    /// A server with bucket [`BUCKET`], not started yet (the store is down).
    pub fn new(bin: PathBuf) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-s3-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET)).unwrap();
        let (fd, port) = reserve(0).expect("reserve a loopback port");
        TestS3 {
            dir,
            port,
            bin,
            child: None,
            reserved: Some(fd),
        }
    }

    /// Starts a server and waits until it accepts connections.
    pub fn start(bin: PathBuf) -> Self {
        let mut s = Self::new(bin);
        s.start_again();
        s
    }

    /// Starts the server (again) on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "s3s-fs already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("s3s-fs.log"))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.reserved = None;
        self.child = Some(cmd.spawn().expect("spawn s3s-fs"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("s3s-fs exited during start ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (the store is down); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.reserved = reserve(self.port).ok().map(|(fd, _)| fd);
        }
    }

    /// The directory served.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }

    /// The stored object `key` of [`BUCKET`], if complete.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root().join(BUCKET).join(key)).ok()
    }

    /// Parts of unfinished multipart uploads the server holds.
    pub fn pending_parts(&self) -> usize {
        std::fs::read_dir(self.root())
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.starts_with(".upload_id-") && n.contains(".part-")
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The root-only credentials file daemons of this test use.
    pub fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// `[recording.store]` TOML for a daemon using this server, with credentials (`secret`) in
    /// a root-only file, node name `node` and `extra` keys.
    pub fn store_config(&self, secret: &str, node: &str, extra: &str) -> String {
        let creds = self.credentials();
        write_credentials(&creds, secret);
        format!(
            "[recording.store]\nurl = \"s3://{BUCKET}/enf\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             credentials_file = \"{}\"\nnode = \"{node}\"\n{extra}\n",
            self.endpoint(),
            creds.display()
        )
    }
}

/// Writes an AWS-style credentials file (mode 0600) with [`ACCESS_KEY`] and `secret`.
pub fn write_credentials(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
