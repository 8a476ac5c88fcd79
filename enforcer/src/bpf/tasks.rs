//! Operations on the kernel's tracked-task table (`ENF_TASKS`) that the actor runs for the
//! daemon: census, terminating a session or connection, and validation after a restart.

use std::collections::HashSet;

use aya::maps::{HashMap, MapData};
use enforcer_common::tasks::{TASK_DOOMED, TrackedTask, child_flags};
use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// The table as the actor holds it.
pub type Tasks = HashMap<MapData, u32, TrackedTask>;

/// Every (task id, identity) in the table, read in batches (tens of thousands of entries).
pub fn census(tasks: &Tasks) -> Vec<(u32, TrackedTask)> {
    super::batch::entries(tasks).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the tracked-task table");
        Vec::new()
    })
}

/// What a kill matches: a whole connection, or one session of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillTarget {
    pub conn_id: u64,
    /// Kernel session id (leader task id); `None` = the whole connection, its monitor included.
    pub session_id: Option<u64>,
}

impl KillTarget {
    fn matches(&self, t: &TrackedTask) -> bool {
        t.conn_id == self.conn_id && self.session_id.is_none_or(|s| t.session_id == s)
    }
}

/// One pass: marks every matching task doomed (so it dies at exec, and kills itself if it
/// forks) and sends it SIGKILL. Returns the task ids signalled.
pub fn kill_pass(tasks: &mut Tasks, target: KillTarget) -> Vec<u32> {
    let victims: Vec<(u32, TrackedTask)> = census(tasks)
        .into_iter()
        .filter(|(_, t)| target.matches(t))
        .collect();
    let mut signalled = Vec::new();
    for (tid, mut t) in victims {
        t.flags |= TASK_DOOMED;
        let _ = tasks.insert(tid, t, 0);
        match kill(Pid::from_raw(tid as i32), Signal::SIGKILL) {
            Ok(()) => signalled.push(tid),
            // Gone without the exit tracepoint noticing (should not happen): drop the entry so
            // the loop ends.
            Err(Errno::ESRCH) => {
                let _ = tasks.remove(&tid);
            }
            Err(e) => tracing::warn!(tid, error = %e, "kill failed"),
        }
    }
    signalled
}

/// Clock ticks per second for /proc starttime.
fn ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// A start time in clock ticks since boot (/proc's unit) in ns, as the kernel programs keep it.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ticks * (1_000_000_000 / ticks_per_sec())
}

/// A start time in ns since boot in clock ticks (/proc's unit).
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / ticks_per_sec())
}

/// Start time (ns since boot, tick resolution) of a live task, from /proc.
pub fn proc_start_ns(tid: u32) -> Option<u64> {
    crate::host::proc_key(tid).map(|k| ticks_to_ns(k.start_ticks))
}

/// Whether two start times (ns since boot) name the same task at /proc's tick resolution.
pub fn same_task(entry_start_ns: u64, now_start_ns: u64) -> bool {
    let tick = 1_000_000_000 / ticks_per_sec();
    entry_start_ns / tick == now_start_ns / tick
}

/// After a daemon restart (the table is pinned): removes entries of tasks that ended while the
/// daemon was down (their ids may be reused by unrelated processes), then adopts the
/// descendants of `roots` that were forked meanwhile. Returns (removed, adopted).
pub fn validate(tasks: &mut Tasks, roots: &[u32]) -> (usize, usize) {
    let mut removed = 0;
    for (tid, t) in census(tasks) {
        if !proc_start_ns(tid).is_some_and(|s| same_task(t.start_ns, s)) {
            let _ = tasks.remove(&tid);
            removed += 1;
        }
    }
    (removed, adopt_descendants(tasks, roots))
}

/// Tracks every live descendant of `roots` (themselves tracked) that the table lacks, with its
/// parent's identity: children forked before their ancestor was tracked (while the daemon was
/// down, or before a `kubectl exec`'s process was reported). Returns how many were adopted.
pub fn adopt_descendants(tasks: &mut Tasks, roots: &[u32]) -> usize {
    // Parent → children of every live process (threads are adopted with their process).
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.filter_map(Result::ok) {
            if let Ok(stat) = p.stat() {
                children
                    .entry(stat.ppid as u32)
                    .or_default()
                    .push(p.pid as u32);
            }
        }
    }
    let known: HashSet<u32> = census(tasks).into_iter().map(|(tid, _)| tid).collect();
    let mut adopted = 0;
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(parent) = stack.pop() {
        let Ok(parent_task) = tasks.get(&parent, 0) else {
            continue;
        };
        for &child in children.get(&parent).into_iter().flatten() {
            if !known.contains(&child) {
                let Some(start_ns) = proc_start_ns(child) else {
                    continue;
                };
                let t = TrackedTask {
                    start_ns,
                    flags: child_flags(parent_task.flags),
                    _pad: 0,
                    ..parent_task
                };
                if tasks.insert(child, t, 0).is_ok() {
                    adopted += 1;
                }
            }
            stack.push(child);
        }
    }
    adopted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_compare_at_tick_resolution() {
        let tick = 1_000_000_000 / ticks_per_sec();
        assert!(same_task(5 * tick + 123, 5 * tick));
        assert!(!same_task(6 * tick, 5 * tick));
    }

    #[test]
    fn ticks_and_ns_convert_both_ways() {
        assert_eq!(ns_to_ticks(ticks_to_ns(12345)), 12345);
        assert_eq!(ns_to_ticks(ticks_to_ns(7) + 1), 7);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(proc_start_ns(std::process::id()).is_some());
    }

    #[test]
    fn targets_match_sessions_or_whole_connections() {
        let t = TrackedTask {
            conn_id: 4,
            session_id: 77,
            ..Default::default()
        };
        assert!(
            KillTarget {
                conn_id: 4,
                session_id: None
            }
            .matches(&t)
        );
        assert!(
            KillTarget {
                conn_id: 4,
                session_id: Some(77)
            }
            .matches(&t)
        );
        assert!(
            !KillTarget {
                conn_id: 4,
                session_id: Some(78)
            }
            .matches(&t)
        );
        assert!(
            !KillTarget {
                conn_id: 5,
                session_id: None
            }
            .matches(&t)
        );
    }
}
