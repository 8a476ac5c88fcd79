//! A clean Debian root to install the .deb into: an overlay on the debootstrap base that
//! `cargo xtask test` prepares (`ENFORCER_DEB_ROOT`), with /proc, /sys and /dev mounted, so
//! maintainer scripts, enforcerd and the root's own sshd run as on a node. Everything started
//! in it is stopped by pid and everything mounted is unmounted on drop; the base stays clean.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::{procs, ssh::wait_until};

/// An overlay root, mounted at `root`.
pub struct DebRoot {
    pub root: PathBuf,
    dir: tempfile::TempDir,
    /// Pids to stop on drop (daemons started inside the root).
    pids: Vec<u32>,
}

/// The debootstrap base (`cargo xtask test` builds it once into target/deb-root).
pub fn base() -> PathBuf {
    let base = PathBuf::from(std::env::var_os("ENFORCER_DEB_ROOT").expect(
        "ENFORCER_DEB_ROOT is not set: run the tests with `cargo xtask test`, which prepares it",
    ));
    assert!(
        base.join(".complete").is_file(),
        "{} is incomplete",
        base.display()
    );
    base
}

/// The package under test (`cargo xtask test` builds it).
pub fn package() -> PathBuf {
    let deb = PathBuf::from(
        std::env::var_os("ENFORCER_DEB")
            .expect("ENFORCER_DEB is not set: run the tests with `cargo xtask test`"),
    );
    assert!(deb.is_file(), "{} is missing", deb.display());
    deb
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl DebRoot {
    /// Mounts a fresh overlay of the base. `allow_service_starts`: a policy-rc.d that lets
    /// maintainer scripts start services (a root without an init system blocks them otherwise).
    pub fn new(allow_service_starts: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-test-deb-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            base().display(),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let this = DebRoot {
            root,
            dir,
            pids: Vec::new(),
        };
        sh(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&this.root));
        sh(Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(this.root.join("proc")));
        sh(Command::new("mount")
            .args(["-t", "sysfs", "sysfs"])
            .arg(this.root.join("sys")));
        sh(Command::new("mount")
            .arg("--rbind")
            .arg("/dev")
            .arg(this.root.join("dev")));
        sh(Command::new("mount")
            .arg("--make-rslave")
            .arg(this.root.join("dev")));
        if allow_service_starts {
            this.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 0\n", 0o755);
        }
        this
    }

    /// Host path of `path` inside the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Writes a file inside the root with `mode`.
    pub fn write(&self, path: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(path);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A command run inside the root (chroot), in /tmp, without a terminal for debconf.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.root)
            .arg("/usr/bin/env")
            .arg("--chdir=/tmp")
            .arg("DEBIAN_FRONTEND=noninteractive")
            .arg(program)
            .args(args);
        c
    }

    /// Runs a command inside the root; panics with its output when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = sh(&mut self.command(program, args));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Copies the package into the root's /tmp and returns its name there (`./name.deb`).
    pub fn copy_package(&self) -> String {
        let deb = package();
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&deb, self.path("/tmp").join(&name)).unwrap();
        format!("./{name}")
    }

    /// Stops `pid` on drop unless it is gone by then.
    pub fn track(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// The pid in a pid file inside the root (waiting for a daemonising parent to exit before
    /// its child wrote it), tracked for cleanup.
    pub fn pid_file(&mut self, path: &str) -> u32 {
        let file = self.path(path);
        let mut pid = None;
        wait_until(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        });
        let pid = pid.unwrap_or_else(|| panic!("no pid in {path}"));
        self.track(pid);
        pid
    }

    /// The test's own directory beside the root (keys and such).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// True once `pid` has exited within `timeout` (a zombie not yet reaped counts as exited).
pub fn exited(pid: u32, timeout: Duration) -> bool {
    wait_until(timeout, || !procs::alive(pid))
}

impl Drop for DebRoot {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if procs::alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                if !exited(pid, Duration::from_secs(10)) {
                    procs::kill_tree(pid);
                }
            }
        }
        // Recursive and lazy: /dev carries submounts, and a straggler must not keep it busy.
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.root)
            .status();
    }
}
