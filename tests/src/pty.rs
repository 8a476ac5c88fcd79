//! A program run on a terminal of its own, as a user at a terminal runs it (`kubectl exec -it`
//! insists on one): a fresh pty pair, the program a session leader with the pty as its
//! controlling terminal on stdin, stdout and stderr; the test types on the master side and
//! reads what the terminal showed.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::ssh::wait_until;

/// A child on a pty.
pub struct PtyChild {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
    status: Option<ExitStatus>,
}

fn last_error(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A master and its slave, the terminal `cols`×`rows`.
fn open_pty(cols: u16, rows: u16) -> std::io::Result<(File, File)> {
    // SAFETY: plain libc calls on fds this function owns; ptsname_r writes into `name`.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(last_error("posix_openpt"));
        }
        let master = File::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(last_error("grantpt/unlockpt"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(last_error("ptsname_r"));
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(last_error("open slave"));
        }
        let slave = File::from_raw_fd(s);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if libc::ioctl(m, libc::TIOCSWINSZ, &ws) != 0 {
            return Err(last_error("TIOCSWINSZ"));
        }
        Ok((master, slave))
    }
}

impl PtyChild {
    /// Runs `cmd` on a new `cols`×`rows` terminal.
    pub fn spawn(mut cmd: Command, cols: u16, rows: u16) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let (master, slave) = open_pty(cols, rows)?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // The slave's copies held by `cmd` go now: the master then reads EIO once the child
        // (and whatever it left on the terminal) is gone.
        drop(cmd);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(PtyChild {
            child,
            master,
            output,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `text` on the terminal.
    pub fn type_text(&self, text: &str) {
        let _ = (&self.master).write_all(text.as_bytes());
        let _ = (&self.master).flush();
    }

    /// Everything the terminal showed so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    pub fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.output()).into_owned()
    }

    /// Waits until the terminal has shown `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.output_text().contains(text))
    }

    /// The child's exit status, once it has exited (waits up to `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let child = &mut self.child;
            let mut got = None;
            wait_until(timeout, || {
                got = child.try_wait().ok().flatten();
                got.is_some()
            });
            self.status = got;
        }
        self.status
    }

    /// Whether the child still runs.
    pub fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }

    /// The master's fd (to resize the terminal, for example).
    pub fn master_fd(&self) -> i32 {
        self.master.as_raw_fd()
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
