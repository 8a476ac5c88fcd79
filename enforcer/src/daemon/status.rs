//! `enforcerctl status`: the daemon's counters, the kernel side's, and what was dropped.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use enforcer_proto::{
    ErrorKind, ErrorReply, FeatureProbe, PolicyReport, StatusReport, SweepStatus,
};

use super::{idle::IDLE_EVERY, state::State};
use crate::{
    bpf::BpfSnapshot,
    config::Config,
    core::{conn::ConnState, session::SessionKind},
    metrics::MetricsView,
};

/// Counters by their status names.
type Counts = BTreeMap<String, u64>;

/// How old a BPF snapshot may be when an unprivileged peer asks for `status`. Counting the
/// entries of the kernel maps walks them (tens of thousands of syscalls with many tracked
/// tasks); root and auditors always get a fresh one.
pub(super) const SNAPSHOT_REUSE: Duration = Duration::from_secs(1);

impl State {
    /// A BPF snapshot: fresh when `fresh`, else one at most [`SNAPSHOT_REUSE`] old.
    async fn snapshot(&mut self, fresh: bool) -> Result<BpfSnapshot, ErrorReply> {
        if let Some((at, snap)) = &self.snapshot {
            if !fresh && at.elapsed() < SNAPSHOT_REUSE {
                return Ok(snap.clone());
            }
        }
        let snap = self.bpf.snapshot().await.map_err(|e| {
            tracing::error!(error = %e, "BPF snapshot failed");
            ErrorReply::new(ErrorKind::Internal, format!("{e}"))
        })?;
        self.snapshot = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// The status report; `fresh` (root, auditors) always reads the kernel's counters anew.
    pub(super) async fn status(&mut self, fresh: bool) -> Result<StatusReport, ErrorReply> {
        let mut snap = self.snapshot(fresh).await?;
        let (events, dropped) = self.counters(&mut snap);
        let mut features = snap.features;
        features.push(FeatureProbe {
            name: "journald".into(),
            supported: self.audit.journald,
            detail: if self.audit.journald {
                "audit records also sent to journald".into()
            } else {
                "off (audit.journald = false or no /run/systemd/journal/socket)".into()
            },
        });
        features.extend(self.fleet_feature());
        features.extend(self.kube_feature());
        Ok(StatusReport {
            version: self.info.version.into(),
            pid: self.info.pid,
            started_at: crate::core::rfc3339(self.info.started_at),
            uptime_secs: self.info.started.elapsed().as_secs(),
            kernel: self.info.kernel.clone(),
            config_path: self
                .info
                .config_path
                .as_ref()
                .map(|p| p.display().to_string()),
            socket: self.config.daemon.socket.display().to_string(),
            programs: snap.programs,
            maps: snap.maps,
            features,
            events,
            dropped,
            policy: Some(policy_report(&self.config)),
            sweeps: vec![
                self.sweeps.idle.status("idle_check", IDLE_EVERY),
                self.sweeps
                    .monitors
                    .status("monitor_sweep", super::state::SWEEP_EVERY),
                // Not periodic: one run per exec (every 0).
                self.sweeps
                    .exec_holds
                    .status("kube_exec_hold", Duration::ZERO),
            ],
            store: self.store.as_ref().map(|s| store_report(s, fresh)),
        })
    }

    /// What the metrics show: the status counters (from a snapshot at most
    /// [`SNAPSHOT_REUSE`] old), connections by state and sessions by kind.
    pub(super) async fn metrics_view(&mut self) -> Option<MetricsView> {
        let mut snap = self.snapshot(false).await.ok()?;
        let (events, dropped) = self.counters(&mut snap);
        let mut connections: BTreeMap<&'static str, u64> =
            ["pending", "open", "terminating", "lingering"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        for c in self.registry.iter() {
            let state = match c.state {
                _ if self.terminating.contains_key(&c.id) => "terminating",
                ConnState::Pending => "pending",
                ConnState::Open => "open",
            };
            *connections.entry(state).or_default() += 1;
        }
        *connections.entry("lingering").or_default() += self.lingering.len() as u64;
        let mut sessions: BTreeMap<&'static str, u64> =
            SessionKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
        for s in self.registry.sessions() {
            *sessions.entry(s.kind.as_str()).or_default() += 1;
        }
        // Forwarding channels are kind `forward` in `enforcerctl sessions` too.
        let mut forwards = BTreeMap::new();
        for f in self.registry.iter().flat_map(|c| c.forwards.values()) {
            *forwards.entry(f.kind.name()).or_default() += 1;
        }
        sessions.insert("forward", forwards.values().sum());
        Some(MetricsView {
            events,
            dropped,
            connections,
            sessions,
            forwards,
        })
    }

    /// The status event and drop counters: the kernel's (taken out of `snap`) and the daemon's.
    fn counters(&self, snap: &mut BpfSnapshot) -> (Counts, Counts) {
        let mut events = std::mem::take(&mut snap.events);
        let mut dropped = std::mem::take(&mut snap.dropped);
        let c = &self.counters;
        events.insert("connections_active".into(), self.registry.len() as u64);
        events.insert("connections_admitted".into(), c.connections_admitted);
        events.insert("connections_refused".into(), c.connections_refused);
        events.insert("connections_closed".into(), c.connections_closed);
        events.insert("connections_lingering".into(), self.lingering.len() as u64);
        events.insert("users_locked".into(), self.locked.len() as u64);
        events.insert("requests_denied".into(), c.requests_denied);
        events.insert(
            "sessions_active".into(),
            self.registry.sessions().count() as u64,
        );
        events.insert("sessions_started".into(), c.sessions_started);
        events.insert("sessions_refused".into(), c.sessions_refused);
        events.insert("commands_logged".into(), c.commands);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let a = &self.audit.counters;
        events.insert("audit_records_written".into(), get(&a.written));
        for (name, c) in [
            ("drop_audit_backlog", &a.dropped_backlog),
            ("drop_audit_disk_full", &a.lost_disk_full),
            ("drop_audit_write_failed", &a.write_errors),
            ("drop_audit_journald_failed", &a.journald_errors),
        ] {
            dropped.insert(name.into(), get(c));
        }
        if let Some(r) = &self.recorder {
            let s = &r.stats;
            for (name, c) in [
                ("recordings_active", &s.active),
                ("recording_bytes", &s.bytes_recorded),
                ("recording_bytes_unattributed", &s.bytes_unattributed),
            ] {
                events.insert(name.into(), get(c));
            }
            for (name, c) in [
                ("drop_recording_bytes_lost", &s.bytes_lost),
                ("drop_recording_write_failed", &s.write_errors),
                ("drop_recording_bytes_disk_full", &s.bytes_lost_disk_full),
                (
                    "drop_recording_bytes_write_failed",
                    &s.bytes_lost_write_error,
                ),
                ("drop_watch_frames", &s.watch_frames_dropped),
            ] {
                dropped.insert(name.into(), get(c));
            }
        }
        for (name, n) in self.control.snapshot() {
            dropped.insert(name.into(), n);
        }
        events.insert(
            "control_connections_non_root".into(),
            self.control.non_root_open.load(Ordering::Relaxed),
        );
        (events, dropped)
    }
}

/// The store's status; for users other than root and auditors without the last error's text
/// (it names other users' recordings).
fn store_report(stats: &crate::store::StoreStats, privileged: bool) -> enforcer_proto::StoreStatus {
    let mut r = stats.report();
    if !privileged && r.last_error.is_some() {
        r.last_error = Some("(shown to root and auditors)".into());
    }
    r
}

/// The policy in force, as the config names it (what `[[rules]]` and reloads change shows).
fn policy_report(c: &Config) -> PolicyReport {
    fn value<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or_default()
    }
    PolicyReport {
        limits: value(&c.limits),
        idle: value(&c.idle),
        recording: value(&c.recording),
        locks: value(&c.locks),
        rules: c.rules.iter().map(value).collect(),
        metrics_listen: c.metrics.listen.map(|a| a.to_string()),
    }
}

/// How long the actor's periodic jobs take: each one holds up every login while it runs.
#[derive(Debug, Default)]
pub(super) struct Sweeps {
    /// The idle clocks (`check_idle`).
    pub idle: SweepTimer,
    /// Connections whose monitor is gone (`sweep`).
    pub monitors: SweepTimer,
    /// Execs decided from the kernel's hold (`kube_hold`): wall time from the kernel's stop of
    /// the command to enforcerd's resume — what enforcement adds to an exec's start — and the
    /// actor's CPU time for it.
    pub exec_holds: SweepTimer,
}

/// Durations of one periodic job: wall time, and CPU time of the thread running it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SweepTimer {
    runs: u64,
    last: Duration,
    max: Duration,
    total: Duration,
    last_cpu: Duration,
    max_cpu: Duration,
    total_cpu: Duration,
}

/// A run being timed (see [`SweepTimer::start`]).
pub(super) struct Timing {
    wall: Instant,
    cpu: Duration,
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl SweepTimer {
    pub fn start() -> Timing {
        Timing {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    /// Ends the run `t` (on the thread that started it).
    pub fn record(&mut self, t: Timing) {
        self.add(t.wall.elapsed(), thread_cpu().saturating_sub(t.cpu));
    }

    /// Ends the run `t`, whose wall time started earlier, at `since_boot_ns` (the kernel's
    /// clock since boot, as BPF events carry it).
    pub fn record_since(&mut self, t: Timing, since_boot_ns: u64) {
        let took = crate::host::boot_ns().saturating_sub(since_boot_ns);
        self.add(
            Duration::from_nanos(took),
            thread_cpu().saturating_sub(t.cpu),
        );
    }

    fn add(&mut self, took: Duration, cpu: Duration) {
        self.runs += 1;
        self.last = took;
        self.max = self.max.max(took);
        self.total += took;
        self.last_cpu = cpu;
        self.max_cpu = self.max_cpu.max(cpu);
        self.total_cpu += cpu;
    }

    fn status(&self, name: &str, every: Duration) -> SweepStatus {
        let us = |d: Duration| d.as_micros() as u64;
        SweepStatus {
            name: name.into(),
            every_ms: every.as_millis() as u64,
            runs: self.runs,
            last_us: us(self.last),
            max_us: us(self.max),
            total_us: us(self.total),
            last_cpu_us: us(self.last_cpu),
            max_cpu_us: us(self.max_cpu),
            total_cpu_us: us(self.total_cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_timer_keeps_last_max_and_total() {
        let mut t = SweepTimer::default();
        let ms = Duration::from_millis;
        for (wall, cpu) in [(3, 1), (9, 2), (2, 2)] {
            t.add(ms(wall), ms(cpu));
        }
        let s = t.status("idle_check", ms(250));
        assert_eq!(
            (s.runs, s.last_us, s.max_us, s.total_us, s.every_ms),
            (3, 2000, 9000, 14000, 250)
        );
        assert_eq!(
            (s.last_cpu_us, s.max_cpu_us, s.total_cpu_us),
            (2000, 2000, 5000)
        );
        // A real run on this thread.
        let run = SweepTimer::start();
        t.record(run);
        assert_eq!(t.status("x", ms(1)).runs, 4);
    }
}
