//! A cgroup (v2) of a bench's own to account a process tree's CPU: whatever a process in it
//! forks stays in it, and its `cpu.stat` counts all their time, ended processes included (a
//! parent's reaped-children ticks in /proc miss the children nobody waited for, as sshd's
//! monitor does not wait for its session process).

use std::{path::PathBuf, time::Duration};

use crate::users::unique_name;

pub struct CpuCgroup {
    dir: PathBuf,
    root: PathBuf,
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` in hybrid setups).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("no cgroup2 mount")
}

impl CpuCgroup {
    pub fn create() -> Self {
        let root = cgroup2_root();
        let dir = root.join(unique_name("cg"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        CpuCgroup { dir, root }
    }

    /// Moves `pid` into the group; its future children are born in it.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// CPU time (user + system) of every task that ran in the group so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap();
        let us = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .expect("usage_usec in cpu.stat");
        Duration::from_micros(us.trim().parse().unwrap())
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // A cgroup can only be removed once empty: hand what still runs back to the root.
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
