//! Facts read from the running host: processes in /proc, their sockets, users and groups.
//! The core never reads these itself; the daemon passes them in.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{SockaddrStorage, getpeername, getsockname};
use procfs::process::{FDTarget, Process};

use crate::core::conn::ProcKey;

pub mod shim;
mod signals;
pub use signals::{await_exec, resume_held, stopped, tell, tell_and_kill};

/// The process with this pid, unless it is gone or a zombie.
pub fn proc_key(pid: u32) -> Option<ProcKey> {
    // Read by hand: the sweep calls this for every connection each second, and only two fields
    // are needed (a full procfs parse costs several times more).
    let mut buf = [0u8; 1024];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        f.read(&mut buf).ok()?
    };
    parse_stat(&buf[..n])
        .map(|(state, start_ticks)| (state, ProcKey { pid, start_ticks }))
        .filter(|(state, _)| *state != b'Z' && *state != b'X')
        .map(|(_, key)| key)
}

/// (state, starttime) from /proc/PID/stat. The command name is in parentheses and may contain
/// anything, so fields are counted after the last ')'.
fn parse_stat(stat: &[u8]) -> Option<(u8, u64)> {
    let close = stat.iter().rposition(|&c| c == b')')?;
    let mut fields = stat[close + 1..]
        .split(|&c| c == b' ')
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    // After the state (field 3), starttime is field 22.
    let start = fields.nth(18)?;
    Some((state, std::str::from_utf8(start).ok()?.trim().parse().ok()?))
}

/// Whether exactly this process (pid and start time) is still alive.
pub fn alive(key: ProcKey) -> bool {
    proc_key(key.pid) == Some(key)
}

/// (client, server) of the TCP connection held by `pid` (sshd's monitor holds the connection
/// socket): the socket is duplicated with pidfd_getfd(2) and asked directly. (Scanning
/// /proc/<pid>/net/tcp costs milliseconds on large-memory hosts: the kernel walks its whole
/// connection hash table.)
pub fn tcp_endpoints(pid: u32) -> Option<(SocketAddr, SocketAddr)> {
    let sockets: Vec<i32> = Process::new(pid as i32)
        .ok()?
        .fd()
        .ok()?
        .filter_map(Result::ok)
        .filter(|fd| matches!(fd.target, FDTarget::Socket(_)))
        .map(|fd| fd.fd)
        .collect();
    if sockets.is_empty() {
        return None;
    }
    let pidfd = pidfd_open(pid)?;
    sockets.into_iter().find_map(|fd| {
        let sock = pidfd_getfd(&pidfd, fd)?;
        let local = getsockname::<SockaddrStorage>(sock.as_raw_fd()).ok()?;
        let peer = getpeername::<SockaddrStorage>(sock.as_raw_fd()).ok()?;
        Some((inet(&peer)?, inet(&local)?))
    })
}

fn inet(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: RawFd) -> Option<OwnedFd> {
    // SAFETY: as above; needs PTRACE_MODE_ATTACH on the target (root has it).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The command line and stdin (its link) of exec process `pid`; empty when it is gone.
pub fn command_and_stdin(pid: u32) -> (Vec<u8>, String) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    (cmdline, stdin)
}

/// The exec channel objects of process `pid`'s stdin, stdout and stderr (see
/// `core::kube::exec::channel_object`), without repeats; empty when it is gone.
pub fn exec_channels(pid: u32) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut objects = Vec::new();
    for fd in 0..3 {
        let Ok(m) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
            continue;
        };
        if let Some(o) =
            crate::core::kube::exec::channel_object(m.mode(), m.dev(), m.rdev(), m.ino())
        {
            if !objects.contains(&o) {
                objects.push(o);
            }
        }
    }
    objects
}

/// The times of process `pid`'s stdin, what it is (a pty, a pipe, else nothing input can
/// come through) and, for a pipe, what `pid` has read; `None` when the process is gone.
pub fn stdin_times(pid: u32) -> Option<crate::core::kube::idle::StdinTimes> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use crate::core::kube::idle::{StdinKind, StdinTimes};
    let link = format!("/proc/{pid}/fd/0");
    let meta = std::fs::metadata(&link).ok()?;
    let kind = if meta.file_type().is_fifo() {
        StdinKind::Pipe
    } else if meta.file_type().is_char_device()
        && std::fs::read_link(&link).is_ok_and(|t| t.starts_with("/dev/pts/"))
    {
        StdinKind::Tty
    } else {
        StdinKind::None
    };
    let at = |s: i64, ns: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(s as i128 * 1_000_000_000 + ns as i128)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let read_bytes = match kind {
        StdinKind::Pipe => Process::new(pid as i32)
            .and_then(|p| p.io())
            .map(|io| io.rchar)
            .unwrap_or(0),
        StdinKind::Tty | StdinKind::None => 0,
    };
    Some(StdinTimes {
        kind,
        atime: at(meta.atime(), meta.atime_nsec()),
        mtime: at(meta.mtime(), meta.mtime_nsec()),
        ctime: at(meta.ctime(), meta.ctime_nsec()),
        read_bytes,
        at: time::OffsetDateTime::now_utc(),
    })
}

/// Nanoseconds since boot (the clock of `bpf_ktime_get_boot_ns`).
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A process's environment (empty when unreadable).
pub fn environ(pid: u32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&c| c == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A node's name as configured, or the host name when `configured` is empty (`[fleet]`,
/// `[recording.store]`, `[kubernetes]` all default to it).
pub fn node_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Ids of every live process (thread-group leaders: /proc lists only those).
pub fn process_ids() -> std::collections::HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Real, effective and saved uid from a /proc/PID/status text; `None` for a zombie (it
/// cannot be killed, only reaped) or an unreadable text.
fn status_uids(text: &str) -> Option<[u32; 3]> {
    let mut uids = None;
    for line in text.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            if matches!(state.trim_start().chars().next(), Some('Z' | 'X')) {
                return None;
            }
        } else if let Some(ids) = line.strip_prefix("Uid:") {
            let mut it = ids.split_whitespace().map(|v| v.parse::<u32>().ok());
            uids = Some([it.next()??, it.next()??, it.next()??]);
        }
    }
    uids
}

/// The real uid of a live process (not a zombie).
pub fn real_uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_uids(&text).map(|[real, _, _]| real)
}

/// Processes (not zombies) whose real, effective or saved uid is `uid`.
pub fn uid_processes(uid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| status_uids(&t))
                .is_some_and(|ids| ids.contains(&uid))
        })
        .collect()
}

/// Passes before giving up on a user whose processes keep appearing.
const UID_KILL_PASSES: usize = 100;

/// SIGKILLs every process of `uid` but `spare`, pass after pass until none is left (a process
/// forking meanwhile is caught by the next pass). Never root's, never our own. Returns how
/// many processes were signalled.
pub fn kill_uid(uid: u32, spare: &std::collections::HashSet<u32>) -> usize {
    if uid == 0 {
        return 0;
    }
    let me = std::process::id();
    let mut signalled = std::collections::HashSet::new();
    for _ in 0..UID_KILL_PASSES {
        let victims: Vec<u32> = uid_processes(uid)
            .into_iter()
            .filter(|p| *p != me && *p != 1 && !spare.contains(p))
            .collect();
        if victims.is_empty() {
            return signalled.len();
        }
        for pid in victims {
            // SAFETY: plain syscall.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                signalled.insert(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    tracing::error!(
        uid,
        "processes still alive after {UID_KILL_PASSES} kill passes"
    );
    signalled.len()
}

/// Rounds of [`kill_as`] before giving up on a user whose processes keep appearing.
const KILL_AS_ROUNDS: usize = 50;

/// SIGKILLs every process whose real or saved uid is `uid`, in single kernel walks: a child
/// takes the uid (`setresuid`, which drops every capability) and calls `kill(-1, SIGKILL)`,
/// which signals everything it may signal under the task-list lock, and a fork racing it is
/// aborted by the pending fatal signal. So a process that forks in a loop and lets its parent
/// exit (a pid that changes faster than /proc can be read) cannot slip between passes, as it
/// can between [`kill_uid`]'s reads of /proc. Repeats until a walk finds nothing or nothing
/// alive is left; returns how many walks signalled something. Never root's.
pub fn kill_as(uid: u32) -> usize {
    if uid == 0 {
        return 0;
    }
    let mut rounds = 0;
    for _ in 0..KILL_AS_ROUNDS {
        // SAFETY: the child only makes async-signal-safe syscalls, then _exit.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: plain syscalls in the forked child.
            unsafe {
                if libc::setresuid(uid, uid, uid) != 0 {
                    libc::_exit(2);
                }
                let r = libc::kill(-1, libc::SIGKILL);
                libc::_exit(if r == 0 { 0 } else { 1 });
            }
        }
        if child < 0 {
            tracing::error!(uid, error = %std::io::Error::last_os_error(), "cannot fork to kill a user's processes");
            return rounds;
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            // Something was signalled. A zombie counts too (it is signalled "successfully"
            // until reaped), so stop once /proc shows nothing alive of the uid.
            Some(0) => {
                rounds += 1;
                if uid_processes(uid).is_empty() {
                    return rounds;
                }
            }
            Some(1) => return rounds, // ESRCH: nothing of the uid is left
            _ => {
                tracing::error!(uid, status, "kill helper failed");
                return rounds;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    tracing::error!(
        uid,
        "processes still appearing after {KILL_AS_ROUNDS} kill walks"
    );
    rounds
}

/// A user as NSS knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    pub uid: u32,
    /// The account's own name: NSS's name for the uid. A second passwd entry with the same uid
    /// (`useradd --non-unique`) or another spelling a directory accepts (`ALICE`) maps to it,
    /// so per-account limits and `[[rules]]` cannot be multiplied by names.
    pub account: String,
    /// Names of every group the user is in (primary included), under the name typed and
    /// under the account's own name.
    pub groups: Vec<String>,
}

/// Looks a user up through NSS (files, LDAP, …).
pub fn user_identity(name: &str) -> Option<UserIdentity> {
    let user = nix::unistd::User::from_name(name).ok()??;
    let owner = nix::unistd::User::from_uid(user.uid)
        .ok()
        .flatten()
        .unwrap_or_else(|| user.clone());
    let mut groups = group_names(name, user.gid);
    if owner.name != name {
        for g in group_names(&owner.name, owner.gid) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Some(UserIdentity {
        uid: user.uid.as_raw(),
        account: owner.name,
        groups,
    })
}

/// Names of the groups `name` (primary group `gid`) is in.
fn group_names(name: &str, gid: nix::unistd::Gid) -> Vec<String> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Vec::new();
    };
    let gids = nix::unistd::getgrouplist(&cname, gid).unwrap_or_else(|_| vec![gid]);
    gids.into_iter()
        .filter_map(|g| {
            nix::unistd::Group::from_gid(g)
                .ok()
                .flatten()
                .map(|g| g.name)
        })
        .collect()
}

/// The user name of a uid, for "who asked" in the audit log.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = b"42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_stat(line), Some((b'S', 777)));
        assert_eq!(parse_stat(b"1 (x) Z"), None, "truncated");
        let own = std::fs::read(format!("/proc/{}/stat", std::process::id())).unwrap();
        let ticks = procfs::process::Process::myself()
            .unwrap()
            .stat()
            .unwrap()
            .starttime;
        assert_eq!(
            parse_stat(&own).map(|s| s.1),
            Some(ticks),
            "agrees with procfs"
        );
    }

    #[test]
    fn own_process_is_alive_and_keyed_by_start_time() {
        let key = proc_key(std::process::id()).unwrap();
        assert!(alive(key));
        assert!(!alive(ProcKey {
            start_ticks: key.start_ticks + 1,
            ..key
        }));
    }

    #[test]
    fn status_gives_real_effective_and_saved_uid_and_skips_zombies() {
        let t = "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1000\t0\t1001\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(status_uids(t), Some([1000, 0, 1001]));
        assert_eq!(status_uids("State:\tZ (zombie)\nUid:\t5\t5\t5\t5\n"), None);
        assert_eq!(status_uids("Name:\tx\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(status_uids(&own).map(|u| u[0]), Some(uid));
        assert!(uid_processes(uid).contains(&std::process::id()));
    }

    #[test]
    fn kill_as_never_touches_root() {
        assert_eq!(kill_as(0), 0);
    }

    #[test]
    fn root_is_in_group_root() {
        let id = user_identity("root").unwrap();
        assert_eq!(id.uid, 0);
        assert!(id.groups.iter().any(|g| g == "root"));
        assert!(user_identity("no-such-user-enforcer").is_none());
    }

    #[test]
    fn finds_both_ends_of_an_established_tcp_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        // This process holds both ends; drop the listener (it has no peer anyway).
        drop(listener);
        let (remote, local) = tcp_endpoints(std::process::id()).unwrap();
        let ours = [client.local_addr().unwrap(), client.peer_addr().unwrap()];
        assert!(
            ours.contains(&remote) && ours.contains(&local),
            "{remote} {local} vs {ours:?}"
        );
    }
}
