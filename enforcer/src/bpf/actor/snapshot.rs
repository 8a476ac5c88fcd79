//! The kernel side's counters and map fill levels, programs and features, for `enforcerctl status`
//! and the sweep.

use std::collections::BTreeMap;

use enforcer_common::{
    counters::Counter,
    io::{CHANNEL_MAP_ENTRIES, EXEC_CHANNEL_ENTRIES, FORWARD_MAP_ENTRIES},
    limits::{CONN_MAP_ENTRIES, LOCKED_MAP_ENTRIES, USER_MAP_ENTRIES},
};
use enforcer_proto::{FeatureProbe, MapStatus};

use super::{Actor, BpfError, BpfSnapshot, batch, map_err};
use crate::bpf::loader;

impl Actor {
    /// Everything lost so far, all reasons together (kernel counters and this actor's own):
    /// while it stays the same, no kernel event went missing.
    pub(super) fn drops(&self) -> Result<u64, BpfError> {
        let mut total = self.malformed + self.undelivered;
        for c in Counter::ALL.into_iter().filter(|c| c.is_drop()) {
            let per_cpu = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err("ENF_COUNTERS"))?;
            total += per_cpu.iter().sum::<u64>();
        }
        Ok(total)
    }

    pub(super) fn snapshot(&self) -> Result<BpfSnapshot, BpfError> {
        let mut events = BTreeMap::new();
        let mut dropped = BTreeMap::new();
        for c in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err("ENF_COUNTERS"))?;
            let total: u64 = per_cpu.iter().sum();
            if c.is_drop() {
                &mut dropped
            } else {
                &mut events
            }
            .insert(c.name().to_owned(), total);
        }
        events.insert("events_received".into(), self.received);
        dropped.insert("drop_events_malformed".into(), self.malformed);
        dropped.insert("drop_daemon_backlog".into(), self.undelivered);
        // Counted from batch reads: a key-by-key walk of tens of thousands of tasks would hold
        // this actor (and the status request) for tens of milliseconds.
        let count = |n: usize| Some(n as u64);
        let map = |name: &str, kind: &str, max_entries: u32, entries: Option<u64>| MapStatus {
            name: name.into(),
            kind: kind.into(),
            max_entries,
            entries,
        };
        let maps = vec![
            map(
                "ENF_EVENTS",
                "ringbuf",
                self.settings.ring_buffer_bytes,
                None,
            ),
            map(
                "ENF_COUNTERS",
                "percpu_array",
                enforcer_common::counters::COUNTER_SLOTS,
                count(Counter::ALL.len()),
            ),
            map(
                "ENF_TASKS",
                "hash",
                self.settings.max_tracked_tasks,
                batch::entries(&self.tasks).ok().map(|e| e.len() as u64),
            ),
            map(
                "ENF_CONNS",
                "hash",
                CONN_MAP_ENTRIES,
                batch::entries(&self.conns).ok().map(|e| e.len() as u64),
            ),
            map(
                "ENF_USERS",
                "hash",
                USER_MAP_ENTRIES,
                batch::entries(&self.users).ok().map(|e| e.len() as u64),
            ),
            map(
                "ENF_LOCKED",
                "hash",
                LOCKED_MAP_ENTRIES,
                batch::entries(&self.locked).ok().map(|e| e.len() as u64),
            ),
            map(
                "ENF_ACTIVITY",
                "hash",
                CHANNEL_MAP_ENTRIES,
                batch::entries(&self.activity).ok().map(|e| e.len() as u64),
            ),
            map(
                "ENF_FORWARDS",
                "hash",
                FORWARD_MAP_ENTRIES,
                batch::entries(&self.forwards).ok().map(|e| e.len() as u64),
            ),
            map(
                "ENF_EXEC_CHANS",
                "hash",
                EXEC_CHANNEL_ENTRIES,
                batch::entries(&self.exec_channels)
                    .ok()
                    .map(|e| e.len() as u64),
            ),
            map("ENF_DATA", "ringbuf", self.settings.data_ring_bytes, None),
        ];
        let mut programs = self.programs.clone();
        let mut features = self.features.clone();
        match &self.io {
            loader::IoPath::Sshd(hooks) => {
                programs.extend(hooks.programs());
                features.push(hooks.feature());
            }
            loader::IoPath::Syscalls(reason) => features.push(FeatureProbe {
                name: "io_hooks".into(),
                supported: false,
                detail: format!(
                    "syscall tracepoints: every process on the host pays on each read and write ({reason})"
                ),
            }),
        }
        if !self.settings.shim_binaries.is_empty() {
            programs.extend(self.shim.programs());
            features.push(self.shim.feature());
        }
        Ok(BpfSnapshot {
            programs,
            maps,
            features,
            events,
            dropped,
        })
    }
}
