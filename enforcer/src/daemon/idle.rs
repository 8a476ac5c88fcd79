//! Idle connections and locked users: warning, then terminating every process of the
//! connection, the sshd monitor included.

use std::time::Duration;

use enforcer_common::io::IoKey;
use time::OffsetDateTime;

use super::{admission::CloseReason, lockout::kill_and_audit, state::State, status::SweepTimer};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    config::{Activity, Forwarding},
    core::idle::{self, ChannelActivity, IdleSettings, Schedule},
    host,
};

/// How often idle clocks are checked (the cut lands within this of the timeout).
pub const IDLE_EVERY: Duration = Duration::from_millis(250);

/// Time sshd gets to carry a final message to the client before its processes are killed.
pub const MESSAGE_GRACE: Duration = Duration::from_millis(300);

/// A connection told why it ends, to be killed once the message is out.
pub(super) struct PendingKill {
    pub at: tokio::time::Instant,
    pub conn_id: u64,
    pub why: CloseReason,
    pub record: AuditRecord,
}

/// The warning shown to a `what` ("connection", "exec session") nearing its idle timeout.
pub(super) fn idle_warning(what: &str, left: Duration) -> String {
    format!(
        "enforcer: this {what} is idle and will be closed in {} unless you type something",
        human(left)
    )
}

/// The message and the `idle_timeout` record of a `what` cut after `idle` (limit `timeout`).
pub(super) fn idle_cut(
    what: &str,
    idle: Duration,
    timeout: Duration,
    now: OffsetDateTime,
) -> (String, AuditRecord) {
    let message = format!(
        "enforcer: {what} closed after {} idle (limit {})",
        human(idle),
        human(timeout)
    );
    let mut rec = AuditRecord::new(AuditEvent::IdleTimeout, now)
        .reason(AuditReason::IdleTimeout, Some(message.clone()));
    rec.idle_secs = Some(idle.as_secs_f64());
    (message, rec)
}

/// A duration as the messages to users show it (whole seconds, at least one).
pub(super) fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

impl State {
    /// Shows one line on every session of a connection (terminal or stderr), off the actor
    /// (a full terminal may take up to 100 ms each).
    pub(super) fn tell_connection(&self, conn_id: u64, message: &str) {
        let leaders: Vec<u32> = self
            .registry
            .sessions_of(conn_id)
            .map(|s| s.leader_pid)
            .collect();
        let message = format!("\r\n{message}\r\n");
        tokio::task::spawn_blocking(move || {
            for pid in leaders {
                if let Err(e) = host::tell(pid, &message) {
                    tracing::debug!(pid, error = %e, "message not delivered");
                }
            }
        });
    }

    /// Tells every session of a connection why it ends, and kills it after [`MESSAGE_GRACE`].
    fn close_with_message(
        &mut self,
        conn_id: u64,
        why: CloseReason,
        message: &str,
        record: AuditRecord,
    ) {
        self.tell_connection(conn_id, message);
        self.schedule_kill(conn_id, why, record);
    }

    /// Marks a connection as terminating and kills it after [`MESSAGE_GRACE`].
    pub(super) fn schedule_kill(&mut self, conn_id: u64, why: CloseReason, record: AuditRecord) {
        self.terminating.insert(conn_id, why);
        // Filled in now: the connection may end by itself before its kill is due.
        let record = match self.registry.get(conn_id) {
            Some(c) => record.with_conn(c),
            None => record,
        };
        let at = tokio::time::Instant::now() + MESSAGE_GRACE;
        self.pending_kills.push(PendingKill {
            at,
            conn_id,
            why,
            record,
        });
    }

    /// When the next scheduled kill is due.
    pub(super) fn next_kill(&self) -> Option<tokio::time::Instant> {
        self.pending_kills.iter().map(|k| k.at).min()
    }

    /// Starts the kills that are due (they run in their own tasks).
    pub(super) fn run_due_kills(&mut self) {
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_kills)
            .into_iter()
            .partition(|k| k.at <= now);
        self.pending_kills = later;
        for k in due {
            match self.prepare_kill(k.conn_id, k.why, k.record.clone()) {
                Ok(rec) => {
                    let kill = kill_and_audit(self.bpf.clone(), self.audit.clone(), k.conn_id, rec);
                    tokio::spawn(async move {
                        if let Err(e) = kill.await {
                            tracing::warn!(error = %e.message, "connection kill failed");
                        }
                    });
                }
                Err(_) => {
                    // It ended by itself within the grace (its sessions were killed): still
                    // terminated by what scheduled the kill.
                    let mut rec = k.record;
                    rec.processes = Some(0);
                    self.audit.record(rec);
                }
            }
        }
    }

    /// Updates sessions' activity from the kernel, warns connections nearing their idle timeout
    /// and terminates those past it (decided by `core::idle`); drops the kernel's entries of
    /// channels whose connection is gone. Runs every [`IDLE_EVERY`] but reads the kernel only
    /// when something can be due (see `core::idle::Schedule`), or when `force`d (a listing
    /// shows each session's latest activity).
    pub(super) async fn check_idle(&mut self, force: bool) {
        let t = SweepTimer::start();
        self.idle_pass(force).await;
        self.sweeps.idle.record(t);
    }

    async fn idle_pass(&mut self, force: bool) {
        let changes = self.registry.changes();
        let due = self
            .idle_schedule
            .is_due(changes, OffsetDateTime::now_utc());
        if !(force || due || self.activity_orphans) {
            return;
        }
        if self.registry.is_empty() && !self.activity_orphans {
            self.idle_schedule = Schedule {
                changes: Some(changes),
                next_due: None,
            };
            return;
        }
        let activity = match self.bpf.activity().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read session activity");
                return;
            }
        };
        let now = OffsetDateTime::now_utc();
        let boot_now = host::boot_ns();
        let wall =
            |ns: u64| (ns != 0).then(|| now - Duration::from_nanos(boot_now.saturating_sub(ns)));
        let channels: Vec<ChannelActivity> = activity
            .iter()
            .map(|(key, a)| ChannelActivity {
                conn_id: key.conn_id,
                object: key.object,
                input: wall(a.last_input_ns),
                output: wall(a.last_output_ns),
                input_bytes: a.input_bytes,
                output_bytes: a.output_bytes,
            })
            .collect();
        drop(activity);
        let settings = IdleSettings {
            any_activity: self.config.idle.activity == Activity::Any,
            warn_before: self.config.idle.warn_before.0,
            forwarding: self.config.idle.forwarding == Forwarding::Active,
        };
        let terminating = &self.terminating;
        let out = idle::check(&mut self.registry, channels, now, settings, force, |id| {
            terminating.contains_key(&id)
        });
        self.idle_schedule = Schedule {
            changes: Some(self.registry.changes()),
            next_due: out.next_due,
        };
        self.dirty |= out.changed;
        if force {
            self.idle_since = out.idle_since.iter().copied().collect();
        }
        self.activity_orphans = false;
        if !out.orphans.is_empty() {
            let keys = out
                .orphans
                .iter()
                .map(|&(conn_id, object)| IoKey { conn_id, object })
                .collect();
            if let Err(e) = self.bpf.forget_activity(keys).await {
                tracing::warn!(error = %e, "cannot remove activity of ended connections from the kernel");
            }
        }
        for (id, left) in out.warn {
            self.tell_connection(id, &idle_warning("connection", left));
        }
        for (id, idle, timeout) in out.cut {
            let (message, rec) = idle_cut("connection", idle, timeout, now);
            self.close_with_message(id, CloseReason::IdleTimeout, &message, rec);
        }
    }
}
