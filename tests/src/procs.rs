//! Processes by pid: descendants, killing exactly what a test started.

use std::collections::HashMap;

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// (pid, ppid, uid) of every process.
fn table() -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        if let (Some(ppid), Some(uid)) = (field("PPid:"), field("Uid:")) {
            out.push((pid, ppid, uid));
        }
    }
    out
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid, _) in table() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

/// SIGKILLs `root` and all its descendants.
pub fn kill_tree(root: u32) {
    let mut all = descendants(root);
    all.push(root);
    for p in all {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
}

/// SIGKILLs every process running as `uid` (a test user's own processes only).
pub fn kill_uid(uid: u32) {
    assert_ne!(uid, 0, "never kill by uid 0");
    for _ in 0..3 {
        let victims: Vec<u32> = table()
            .into_iter()
            .filter(|(_, _, u)| *u == uid)
            .map(|(p, _, _)| p)
            .collect();
        if victims.is_empty() {
            return;
        }
        for p in victims {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Pids of every live process running as `uid` (zombies are dead: they run nothing).
pub fn uid_processes(uid: u32) -> Vec<u32> {
    table()
        .into_iter()
        .filter(|(p, _, u)| *u == uid && alive(*p))
        .map(|(p, _, _)| p)
        .collect()
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    std::time::Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// A directory every test user may write into (for pid files their sessions leave).
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The pid a session wrote into `path` (`echo $$ > path`), once the line is complete.
pub fn read_pid(path: &std::path::Path) -> u32 {
    assert!(crate::ssh::wait_until(
        std::time::Duration::from_secs(5),
        || std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    ));
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Resident memory of a process from /proc/PID/smaps, with the BPF map mappings apart.
#[derive(Debug, Clone, Default)]
pub struct Resident {
    /// Every mapping's `Rss`, KiB (what VmRSS says).
    pub total_kib: u64,
    /// Mappings of `anon_inode:bpf-map`, KiB: in enforcerd the two ring buffers it reads (each
    /// a read-only producer mapping at offset 0x1000 — its data pages twice, so records can
    /// wrap — plus a read-write consumer page). Kernel memory, not heap.
    pub bpf_map_kib: u64,
    /// Those mappings: (size KiB, perms, offset, Rss KiB).
    pub bpf_maps: Vec<(u64, String, String, u64)>,
}

impl Resident {
    /// RSS without the BPF map mappings, KiB.
    pub fn own_kib(&self) -> u64 {
        self.total_kib - self.bpf_map_kib
    }
}

/// Reads `pid`'s resident memory from smaps.
pub fn resident(pid: u32) -> Resident {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut r = Resident::default();
    let mut current: Option<(u64, String, String)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (perms, offset) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
            let name = f.nth(2).unwrap_or_default();
            let size = |h: &str| u64::from_str_radix(h, 16).unwrap_or(0);
            current = (name == "anon_inode:bpf-map")
                .then(|| ((size(hi) - size(lo)) / 1024, perms.into(), offset.into()));
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            r.total_kib += kib;
            if let Some((size, perms, offset)) = current.take() {
                r.bpf_map_kib += kib;
                r.bpf_maps.push((size, perms, offset, kib));
            }
        }
    }
    r
}

/// A sysctl under /proc/sys raised for the life of the guard, restored when dropped.
pub struct RaisedSysctl {
    path: std::path::PathBuf,
    old: String,
}

impl RaisedSysctl {
    /// Raises `/proc/sys/KEY` to at least `min`; `None` when it already is.
    pub fn at_least(key: &str, min: u64) -> Option<Self> {
        let path = std::path::Path::new("/proc/sys").join(key);
        let old = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        if old.parse::<u64>().unwrap() >= min {
            return None;
        }
        std::fs::write(&path, min.to_string()).unwrap();
        Some(RaisedSysctl { path, old })
    }
}

impl Drop for RaisedSysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!(
                "cannot restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}
