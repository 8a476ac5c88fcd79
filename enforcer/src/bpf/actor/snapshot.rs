//! What the actor reports for `enforcerctl status`: programs, maps, features, counters.

use std::collections::BTreeMap;

use enforcer_common::{
    counters::Counter,
    io::{CHANNEL_MAP_ENTRIES, FORWARD_MAP_ENTRIES},
    limits::{CONN_MAP_ENTRIES, LOCKED_MAP_ENTRIES, USER_MAP_ENTRIES},
};
use enforcer_proto::{FeatureProbe, MapStatus};

use super::{Actor, BpfSnapshot, map_err};
use crate::bpf::{BpfError, loader};

impl Actor {
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
                count(self.tasks.keys().filter(Result::is_ok).count()),
            ),
            map(
                "ENF_CONNS",
                "hash",
                CONN_MAP_ENTRIES,
                count(self.conns.keys().filter(Result::is_ok).count()),
            ),
            map(
                "ENF_USERS",
                "hash",
                USER_MAP_ENTRIES,
                count(self.users.keys().filter(Result::is_ok).count()),
            ),
            map(
                "ENF_LOCKED",
                "hash",
                LOCKED_MAP_ENTRIES,
                count(self.locked.keys().filter(Result::is_ok).count()),
            ),
            map(
                "ENF_ACTIVITY",
                "hash",
                CHANNEL_MAP_ENTRIES,
                count(self.activity.keys().filter(Result::is_ok).count()),
            ),
            map(
                "ENF_FORWARDS",
                "hash",
                FORWARD_MAP_ENTRIES,
                count(self.forwards.keys().filter(Result::is_ok).count()),
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
        Ok(BpfSnapshot {
            programs,
            maps,
            features,
            events,
            dropped,
        })
    }
}
