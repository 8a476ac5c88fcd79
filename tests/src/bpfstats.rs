//! BPF run-time statistics of one daemon's programs, as the kernel counts them per program
//! (`run_cnt`, `run_time_ns`, only while stats are enabled), read with `bpftool prog show -j`.
//! Program ids come from the daemon's status, so another daemon on the machine (another test's)
//! is never counted; [`foreign_enf_programs`] says whether one is loaded.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{FromRawFd, OwnedFd},
    process::Command,
    time::Duration,
};

use crate::{TestDaemon, ssh::wait_until};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run-time stats on for as long as this lives.
///
/// Prefers `BPF_ENABLE_STATS`: the kernel keeps stats on while its fd is open and turns them
/// off when this process ends however it ends (panic, SIGKILL), and other users of the sysctl
/// (other benches on the machine) are not disturbed. Falls back to setting
/// `kernel.bpf_stats_enabled=1` and restoring the old value on drop (unwinding included).
pub struct StatsEnabled {
    _fd: Option<OwnedFd>,
    restore: Option<String>,
}

impl StatsEnabled {
    pub fn new() -> Self {
        // union bpf_attr for BPF_ENABLE_STATS: { __u32 type; }, BPF_STATS_RUN_TIME = 0.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let attr = [0u32; 2];
        // SAFETY: bpf(2) reads size_of(attr) bytes of attr; the result is a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just gave us this fd; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            return StatsEnabled {
                _fd: Some(fd),
                restore: None,
            };
        }
        let old = std::fs::read_to_string(SYSCTL).expect("read bpf_stats_enabled");
        std::fs::write(SYSCTL, "1").expect("enable kernel.bpf_stats_enabled");
        StatsEnabled {
            _fd: None,
            restore: Some(old),
        }
    }
}

impl Default for StatsEnabled {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Some(old) = self.restore.take() {
            let _ = std::fs::write(SYSCTL, old.trim());
        }
    }
}

/// How often and how long a program ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runs {
    pub cnt: u64,
    pub ns: u64,
}

impl Runs {
    pub fn ns_per_call(&self) -> f64 {
        self.ns as f64 / self.cnt.max(1) as f64
    }
}

impl std::ops::Add for Runs {
    type Output = Runs;
    fn add(self, o: Runs) -> Runs {
        Runs {
            cnt: self.cnt + o.cnt,
            ns: self.ns + o.ns,
        }
    }
}

/// Every loaded BPF program: id → (name, runs). bpftool omits the counters while they are 0.
pub fn loaded() -> HashMap<u32, (String, Runs)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool prog show: {out:?}");
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    all.iter()
        .map(|p| {
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let runs = Runs {
                cnt: n("run_cnt"),
                ns: n("run_time_ns"),
            };
            (n("id") as u32, (name, runs))
        })
        .collect()
}

/// The programs one daemon attached (ids from its status).
#[derive(Debug, Clone)]
pub struct DaemonPrograms {
    /// (kernel id, name as the daemon reports it)
    pub progs: Vec<(u32, String)>,
}

impl DaemonPrograms {
    pub fn of(d: &TestDaemon) -> Self {
        let progs: Vec<(u32, String)> = d
            .status()
            .programs
            .into_iter()
            .filter_map(|p| Some((p.id?, p.name)))
            .collect();
        assert!(!progs.is_empty(), "the daemon reports no loaded program");
        DaemonPrograms { progs }
    }

    /// The counters of these programs now, by name.
    pub fn sample(&self) -> BTreeMap<String, Runs> {
        let all = loaded();
        self.progs
            .iter()
            .map(|(id, name)| (name.clone(), all.get(id).map(|p| p.1).unwrap_or_default()))
            .collect()
    }

    /// Waits (up to 10 s: the kernel frees detached programs asynchronously) until none of
    /// these programs is loaded any more; false if some still are.
    pub fn wait_unloaded(&self) -> bool {
        wait_until(Duration::from_secs(10), || {
            let all = loaded();
            self.progs.iter().all(|(id, _)| !all.contains_key(id))
        })
    }

    /// Runs `f` with stats enabled; returns its result and what each program ran meanwhile.
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, BTreeMap<String, Runs>) {
        let _on = StatsEnabled::new();
        let before = self.sample();
        let r = f();
        (r, since(&before, &self.sample()))
    }
}

/// `after - before`, per program.
pub fn since(
    before: &BTreeMap<String, Runs>,
    after: &BTreeMap<String, Runs>,
) -> BTreeMap<String, Runs> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let d = Runs {
                cnt: a.cnt - b.cnt,
                ns: a.ns - b.ns,
            };
            (name.clone(), d)
        })
        .collect()
}

/// Sum over programs.
pub fn total(runs: &BTreeMap<String, Runs>) -> Runs {
    runs.values().fold(Runs::default(), |a, &b| a + b)
}

/// Adds `more` into `acc`, per program (to sum over rounds, whose daemons have other ids).
pub fn accumulate(acc: &mut BTreeMap<String, Runs>, more: &BTreeMap<String, Runs>) {
    for (name, r) in more {
        let e = acc.entry(name.clone()).or_default();
        *e = *e + *r;
    }
}

/// Loaded programs named like ours (`enf_…`) that are not in `mine`: another enforcerd (another
/// test or bench on this machine) whose programs every process pays for too.
pub fn foreign_enf_programs(mine: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = loaded()
        .into_iter()
        .filter(|(id, (name, _))| name.starts_with("enf_") && !mine.contains(id))
        .map(|(id, _)| id)
        .collect();
    v.sort();
    v
}

/// A markdown table of per-program runs, with each program's ns per `unit` (`units` of them
/// ran, e.g. 2 M syscalls or 64 MB).
pub fn table(runs: &BTreeMap<String, Runs>, units: f64, unit: &str) -> String {
    let mut s = format!(
        "| program | run_cnt | run_time_ns | ns per call | ns per {unit} |\n| --- | --- | --- | --- | --- |\n"
    );
    let mut rows: Vec<(&String, &Runs)> = runs.iter().filter(|(_, r)| r.cnt > 0).collect();
    rows.sort_by_key(|(_, r)| std::cmp::Reverse(r.ns));
    let (all_name, all) = ("all".to_owned(), total(runs));
    rows.push((&all_name, &all));
    for (name, r) in rows {
        s += &format!(
            "| {name} | {} | {} | {:.1} | {:.1} |\n",
            r.cnt,
            r.ns,
            r.ns_per_call(),
            r.ns as f64 / units
        );
    }
    s
}
