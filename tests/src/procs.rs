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
