//! The control socket's limits at run time: the shared connection table, its settings, and the
//! per-reason counters shown in `enforcerctl status`.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use enforcer_proto::frame::MAX_FRAME;

use crate::{
    config::ControlConfig,
    core::control::{ConnCaps, ConnTable, ControlDrop},
};

/// `[control]` as the connection tasks use it.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub caps: ConnCaps,
    pub max_frame_bytes: u32,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub auditor_group: String,
}

impl ControlSettings {
    pub fn new(c: &ControlConfig, auditor_group: &str) -> Self {
        Self {
            caps: ConnCaps {
                per_uid: c.max_connections_per_uid,
                non_root: c.max_connections_non_root,
            },
            max_frame_bytes: c.max_frame_bytes,
            read_timeout: c.read_timeout.0,
            idle_timeout: c.idle_timeout.0,
            auditor_group: auditor_group.to_owned(),
        }
    }

    /// Largest frame `uid` may send: root is trusted with the protocol's maximum.
    pub fn frame_cap(&self, uid: u32) -> u32 {
        if uid == 0 {
            MAX_FRAME
        } else {
            self.max_frame_bytes
        }
    }
}

/// The settings in force, replaced whole by a config reload: every accept and every request
/// reads the current ones (a connection's role stays what it was when it connected).
#[derive(Debug)]
pub struct SharedSettings(RwLock<Arc<ControlSettings>>);

impl SharedSettings {
    pub fn new(settings: ControlSettings) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(settings))))
    }

    pub fn get(&self) -> Arc<ControlSettings> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, settings: ControlSettings) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }
}

/// Control connections closed by the daemon per reason, and non-root connections open.
#[derive(Debug, Default)]
pub struct ControlStats {
    drops: [AtomicU64; ControlDrop::ALL.len()],
    pub non_root_open: AtomicU64,
}

impl ControlStats {
    pub fn count(&self, reason: ControlDrop) {
        let i = ControlDrop::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.drops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (status counter name, count) for every reason.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ControlDrop::ALL
            .iter()
            .zip(&self.drops)
            .map(|(r, n)| (r.counter(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Connection slots of the public socket, shared by the accept loop and the connection tasks.
#[derive(Debug, Default)]
pub struct Slots {
    table: Mutex<ConnTable>,
    pub stats: Arc<ControlStats>,
}

impl Slots {
    pub fn new(stats: Arc<ControlStats>) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            stats,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ConnTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `uid`; it is given back when the returned guard drops.
    pub fn open(self: &Arc<Self>, uid: u32, caps: ConnCaps) -> Result<SlotGuard, ControlDrop> {
        let mut t = self.table();
        t.open(uid, caps)?;
        self.publish(&t);
        Ok(SlotGuard {
            slots: self.clone(),
            uid,
        })
    }

    fn publish(&self, t: &ConnTable) {
        let open = u64::from(t.non_root());
        self.stats.non_root_open.store(open, Ordering::Relaxed);
    }
}

/// One connection's slot.
pub struct SlotGuard {
    slots: Arc<Slots>,
    uid: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut t = self.slots.table();
        t.close(self.uid);
        self.slots.publish(&t);
    }
}
