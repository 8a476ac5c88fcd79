//! bpffs pins: every map outlives the daemon (the programs' links are pinned too, see
//! `links.rs`), so tracking, limits and recording go on while it is down or restarting.
//!
//! aya reuses whatever is pinned under a map's name without checking it, so every pin is checked
//! against the layout this build expects first; a mismatch (older build, changed
//! `max_tracked_tasks`) is removed and reported rather than misread.

use std::path::Path;

use aya::maps::MapInfo;
use enforcer_common::{
    counters::COUNTER_SLOTS,
    io::{Activity, CHANNEL_MAP_ENTRIES, DataRecord, FORWARD_MAP_ENTRIES, IoKey, PendingIo},
    limits::{CONN_MAP_ENTRIES, ConnEntry, LOCKED_MAP_ENTRIES, USER_MAP_ENTRIES, UserEntry},
    tasks::TrackedTask,
};

use super::{BpfError, BpfSettings};

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// A pinned map's expected layout.
struct Expected {
    name: &'static str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes `dir` usable for pins (mounting bpffs at /sys/fs/bpf when nothing is mounted there)
/// and drops stale pins; returns what it had to discard, for the log and status.
pub fn prepare(dir: &Path, settings: &BpfSettings) -> Result<Vec<String>, BpfError> {
    if !is_bpffs(Path::new(BPFFS)) {
        nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| BpfError::Pins(format!("mounting bpffs at {BPFFS}: {e}")))?;
        tracing::info!(path = BPFFS, "mounted bpffs");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| BpfError::Pins(format!("creating {}: {e}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(BpfError::Pins(format!(
            "{} is not on a bpf filesystem; set daemon.bpf_pin_dir below /sys/fs/bpf",
            dir.display()
        )));
    }
    let expected = [
        Expected {
            name: "ENF_TASKS",
            key_size: 4,
            value_size: size_of::<TrackedTask>() as u32,
            max_entries: settings.max_tracked_tasks,
        },
        Expected {
            name: "ENF_CONNS",
            key_size: 8,
            value_size: size_of::<ConnEntry>() as u32,
            max_entries: CONN_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_USERS",
            key_size: 4,
            value_size: size_of::<UserEntry>() as u32,
            max_entries: USER_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_LOCKED",
            key_size: 4,
            value_size: 4,
            max_entries: LOCKED_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_ACTIVITY",
            key_size: size_of::<IoKey>() as u32,
            value_size: size_of::<Activity>() as u32,
            max_entries: CHANNEL_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_EVENTS",
            key_size: 0,
            value_size: 0,
            max_entries: settings.ring_buffer_bytes,
        },
        Expected {
            name: "ENF_DATA",
            key_size: 0,
            value_size: 0,
            max_entries: settings.data_ring_bytes,
        },
        Expected {
            name: "ENF_COUNTERS",
            key_size: 4,
            value_size: 8,
            max_entries: COUNTER_SLOTS,
        },
        Expected {
            name: "ENF_PENDING",
            key_size: 4,
            value_size: size_of::<PendingIo>() as u32,
            max_entries: 4096,
        },
        Expected {
            name: "ENF_GO_PENDING",
            key_size: 16,
            value_size: size_of::<PendingIo>() as u32,
            max_entries: 16384,
        },
        Expected {
            name: "ENF_WAKE",
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        },
        Expected {
            name: "ENF_SCRATCH",
            key_size: 4,
            value_size: size_of::<DataRecord>() as u32,
            max_entries: 1,
        },
        Expected {
            name: "ENF_GEN",
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        },
        Expected {
            name: "ENF_FORWARDS",
            key_size: 8,
            value_size: 8,
            max_entries: FORWARD_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_FWD_COUNT",
            key_size: 8,
            value_size: 8,
            max_entries: CONN_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_FWD_ACTIVITY",
            key_size: size_of::<IoKey>() as u32,
            value_size: size_of::<Activity>() as u32,
            max_entries: FORWARD_MAP_ENTRIES,
        },
        Expected {
            name: "ENF_LOST",
            key_size: size_of::<IoKey>() as u32,
            value_size: 8,
            max_entries: CHANNEL_MAP_ENTRIES,
        },
    ];
    let mut discarded = Vec::new();
    for e in expected {
        let path = dir.join(e.name);
        if !path.exists() {
            continue;
        }
        let ok = MapInfo::from_pin(&path).is_ok_and(|i| {
            (i.key_size(), i.value_size(), i.max_entries())
                == (e.key_size, e.value_size, e.max_entries)
        });
        if !ok {
            std::fs::remove_file(&path)
                .map_err(|err| BpfError::Pins(format!("removing {}: {err}", path.display())))?;
            discarded.push(format!(
                "{}: pinned map with another layout discarded (older build or changed size)",
                e.name
            ));
        }
    }
    for d in &discarded {
        tracing::warn!("{d}");
    }
    Ok(discarded)
}
