//! Signals to processes through pidfds (never a recycled pid): messages to their stderr
//! before a kill, and the resumption of an exec the kernel held.

use std::os::{
    fd::{AsRawFd, OwnedFd},
    unix::fs::OpenOptionsExt,
};

use super::{parse_stat, pidfd_getfd, pidfd_open};
use crate::core::conn::ProcKey;

/// Writes `message` to a process's stderr — whatever its fd 2 is (pipe, socket, terminal), so
/// it reaches the channel or terminal the user sees. Never blocks past a 100 ms wait for
/// room: the user owns that fd and can stop it from draining (a terminal's output stopped with
/// Ctrl-S or `tcflow`), and a write that blocked would hold the kill that follows it, or the
/// thread that waits for it, for as long as the user likes. A full fd loses the message.
pub fn tell(pid: u32, message: &str) -> std::io::Result<()> {
    let pidfd = pidfd_open(pid).ok_or_else(std::io::Error::last_os_error)?;
    write_stderr(&pidfd, message)
}

fn write_stderr(pidfd: &OwnedFd, message: &str) -> std::io::Result<()> {
    let fd = pidfd_getfd(pidfd, 2).ok_or_else(std::io::Error::last_os_error)?;
    let buf = message.as_bytes();
    // SAFETY: fstat into a zeroed stat of our own fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    match st.st_mode & libc::S_IFMT {
        // A file takes the line at once (through the duplicate: same offset, the user's
        // O_APPEND).
        libc::S_IFREG => std::io::Write::write_all(&mut std::fs::File::from(fd), buf),
        // A socket: non-blocking per call, whatever the user's description says.
        libc::S_IFSOCK => {
            wait_writable(&fd)?;
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            complete(n, buf.len())
        }
        // A terminal or a pipe: a description of our own, non-blocking (setting O_NONBLOCK on
        // the duplicate would change the user's program's description too).
        _ => {
            let own = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
            wait_writable(&own)?;
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::write(own.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            complete(n, buf.len())
        }
    }
}

/// Waits at most 100 ms for room (messages are one short line, below PIPE_BUF).
fn wait_writable(fd: &impl AsRawFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut pfd, 1, 100) } {
        n if n > 0 => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "stderr not writable",
        )),
    }
}

fn complete(written: isize, len: usize) -> std::io::Result<()> {
    match written {
        n if n < 0 => Err(std::io::Error::last_os_error()),
        n if n as usize == len => Ok(()),
        n => Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("{n} of {len} bytes written"),
        )),
    }
}

/// Waits (at most `within`) until `pid` runs another program than `parent`. A channel's
/// child of sshd points its stdio at the channel only just before it execs the session's
/// command: a message written to its stderr earlier reaches sshd's own stderr instead.
pub fn await_exec(pid: u32, parent: u32, within: std::time::Duration) {
    let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let Some(from) = exe(parent) else { return };
    let until = std::time::Instant::now() + within;
    while exe(pid).as_ref() == Some(&from) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Writes `message` to a (stopped) process's stderr (see [`tell`]), then SIGKILLs it.
pub fn tell_and_kill(pid: u32, message: &str) -> std::io::Result<()> {
    let pidfd = pidfd_open(pid).ok_or_else(std::io::Error::last_os_error)?;
    let written = write_stderr(&pidfd, message);
    signal(&pidfd, libc::SIGKILL)?;
    written
}

/// Lets exactly this process run on if it is stopped (the kernel holds an exec's command at
/// its first instruction, `ENF_HOLD_EXECS`). True when it was stopped and is resumed. The
/// `SIGCONT` goes to it even when it runs already (a process of its pod resumed it): from the
/// host's root, it is what lifts the kernel's hold mark (BPF `gate`).
pub fn resume_held(key: ProcKey) -> std::io::Result<bool> {
    let Some(pidfd) = pidfd_open(key.pid) else {
        return Ok(false);
    };
    // (Looked at after the pidfd is open: a reused pid fails the start-time check.)
    let stat = std::fs::read(format!("/proc/{}/stat", key.pid)).unwrap_or_default();
    if !matches!(parse_stat(&stat), Some((_, start)) if start == key.start_ticks) {
        return Ok(false);
    }
    let was = stopped(key);
    signal(&pidfd, libc::SIGCONT)?;
    Ok(was)
}

/// Whether `key` is stopped, or has a SIGSTOP pending (a held exec that has not run yet).
pub fn stopped(key: ProcKey) -> bool {
    // The kernel queued a SIGSTOP; it may not be taken yet. Pending signals are read first:
    // once taken, the task is stopped in the same locked step, so the state read after shows
    // it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", key.pid)).unwrap_or_default();
    let pending = stop_pending(&status);
    let stat = std::fs::read(format!("/proc/{}/stat", key.pid)).unwrap_or_default();
    matches!(parse_stat(&stat), Some((state, start)) if start == key.start_ticks && (pending || state == b'T'))
}

/// Whether a /proc/PID/status text shows SIGSTOP pending (for the process or its thread).
fn stop_pending(status: &str) -> bool {
    let bit = 1u64 << (libc::SIGSTOP - 1);
    status.lines().any(|l| {
        let mask = l
            .strip_prefix("ShdPnd:")
            .or_else(|| l.strip_prefix("SigPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & bit != 0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pending_stop_is_read_from_either_mask() {
        let status =
            |shd: &str, sig: &str| format!("State:\tR (running)\nSigPnd:\t{sig}\nShdPnd:\t{shd}\n");
        assert!(super::stop_pending(&status(
            "0000000000040000",
            "0000000000000000"
        )));
        assert!(super::stop_pending(&status(
            "0000000000000000",
            "0000000000040000"
        )));
        assert!(!super::stop_pending(&status(
            "0000000000020000",
            "0000000000000100"
        )));
        assert!(!super::stop_pending("State:\tT (stopped)\n"));
    }
}

fn signal(pidfd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on a pidfd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
