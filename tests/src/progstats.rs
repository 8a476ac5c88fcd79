//! Kernel run statistics of BPF programs (`run_cnt`, `run_time_ns`): how often and how long
//! each of a daemon's programs ran. Counting is on while a [`Stats`] is held
//! (`BPF_ENABLE_STATS`; the kernel keeps it on while any such handle is open, so concurrent
//! holders do not interfere and nothing global is left changed).

use std::{collections::BTreeMap, os::fd::OwnedFd};

/// Counting switched on for as long as this lives.
pub struct Stats {
    _fd: OwnedFd,
}

impl Stats {
    pub fn enable() -> Self {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        Self { _fd: fd }
    }
}

/// One program's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    pub count: u64,
    pub ns: u64,
}

/// The counters of the programs with ids `ids` (absent ones are left out).
pub fn runs(ids: &[u32]) -> BTreeMap<u32, Run> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            (
                p.id(),
                Run {
                    count: p.run_count(),
                    ns: p.run_time().as_nanos() as u64,
                },
            )
        })
        .collect()
}

/// What ran between two readings, per program id.
pub fn delta(before: &BTreeMap<u32, Run>, after: &BTreeMap<u32, Run>) -> BTreeMap<u32, Run> {
    after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id).copied().unwrap_or_default();
            (
                *id,
                Run {
                    count: a.count - b.count,
                    ns: a.ns - b.ns,
                },
            )
        })
        .collect()
}

/// Program name → kernel id, from a daemon's `status --json`.
pub fn program_ids(status: &serde_json::Value) -> BTreeMap<String, u32> {
    status["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["id"].as_u64()? as u32)))
        .collect()
}
