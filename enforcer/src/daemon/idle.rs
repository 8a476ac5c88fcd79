//! Idle connections and locked users: warning, then terminating every process of the
//! connection, the sshd monitor included.

use std::{collections::HashMap, time::Duration};

use time::OffsetDateTime;

use super::{admission::CloseReason, lockout::kill_and_audit, state::State};
use enforcer_common::io::IO_FORWARD;

use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    config::{Activity, Forwarding},
    host,
};

/// How often idle clocks are checked (the cut lands within this of the timeout).
pub const IDLE_EVERY: Duration = Duration::from_millis(250);

/// Output within this long after our own warning is the warning itself, not activity.
const OWN_OUTPUT: Duration = Duration::from_secs(1);

/// Time sshd gets to carry a final message to the client before its processes are killed.
pub const MESSAGE_GRACE: Duration = Duration::from_millis(300);

/// A connection told why it ends, to be killed once the message is out.
pub(super) struct PendingKill {
    pub at: tokio::time::Instant,
    pub conn_id: u64,
    pub why: CloseReason,
    pub record: AuditRecord,
}

fn human(d: Duration) -> String {
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
    /// and terminates those past it.
    pub(super) async fn check_idle(&mut self) {
        if self.registry.is_empty() {
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
        let any = self.config.idle.activity == Activity::Any;
        let forwarding = self.config.idle.forwarding == Forwarding::Active;
        // Latest activity per connection, and per session channel for `enforcerctl sessions`.
        let mut latest: HashMap<u64, OffsetDateTime> = HashMap::new();
        for (key, a) in &activity {
            if key.object & IO_FORWARD != 0 {
                // A tunnel's traffic either way is the client's doing.
                let seen = wall(a.last_input_ns).max(wall(a.last_output_ns));
                if let (true, Some(t)) = (forwarding, seen) {
                    let e = latest.entry(key.conn_id).or_insert(t);
                    *e = (*e).max(t);
                }
                let forward = self
                    .registry
                    .get_mut(key.conn_id)
                    .and_then(|c| c.forwards.get_mut(&(key.object & !IO_FORWARD)));
                if let Some(f) = forward {
                    f.bytes_in = a.input_bytes;
                    f.bytes_out = a.output_bytes;
                    if let Some(t) = seen.filter(|t| *t > f.last_activity) {
                        f.last_activity = t;
                    }
                }
                continue;
            }
            let warned = self
                .registry
                .get(key.conn_id)
                .and_then(|c| c.idle_warned_at);
            let output = wall(a.last_output_ns)
                .filter(|t| warned.is_none_or(|w| *t < w || *t > w + OWN_OUTPUT));
            let input = wall(a.last_input_ns);
            let counted = if any { input.max(output) } else { input };
            if let Some(t) = counted {
                let e = latest.entry(key.conn_id).or_insert(t);
                *e = (*e).max(t);
            }
            let seen = input.max(output);
            let Some(conn) = self.registry.get_mut(key.conn_id) else {
                continue;
            };
            for s in conn
                .sessions
                .values_mut()
                .filter(|s| s.channels.contains(&key.object))
            {
                if let Some(t) = seen.filter(|t| *t > s.last_activity) {
                    s.last_activity = t;
                }
            }
        }
        let warn_before = self.config.idle.warn_before.0;
        let mut to_cut = Vec::new();
        let mut to_warn = Vec::new();
        for c in self
            .registry
            .iter()
            .filter(|c| !c.idle_timeout.is_zero() && !self.terminating.contains_key(&c.id))
        {
            // Opening a channel is the client's doing too; a connection without any is idle
            // from its start.
            let last = self
                .registry
                .sessions_of(c.id)
                .map(|s| s.started_at)
                .chain(latest.get(&c.id).copied())
                .chain(c.forward_event_at.filter(|_| forwarding))
                .fold(c.admitted_at, OffsetDateTime::max);
            let idle: Duration = (now - last).try_into().unwrap_or_default();
            let timeout = c.idle_timeout.0;
            if idle >= timeout {
                to_cut.push((c.id, idle, timeout));
            } else if !warn_before.is_zero()
                && idle + warn_before >= timeout
                && c.idle_warned_at.is_none_or(|w| w < last)
            {
                to_warn.push((c.id, timeout - idle));
            } else if c.idle_warned_at.is_some_and(|w| w < last) {
                to_warn.push((c.id, Duration::MAX));
            }
        }
        for (id, left) in to_warn {
            let Some(c) = self.registry.get_mut(id) else {
                continue;
            };
            if left == Duration::MAX {
                // Activity since the warning: the clock starts over.
                c.idle_warned_at = None;
                continue;
            }
            c.idle_warned_at = Some(now);
            self.dirty = true;
            self.tell_connection(id, &format!("enforcer: this connection is idle and will be closed in {} unless you type something", human(left)));
        }
        for (id, idle, timeout) in to_cut {
            let message = format!(
                "enforcer: connection closed after {} idle (limit {})",
                human(idle),
                human(timeout)
            );
            let mut rec = AuditRecord::new(AuditEvent::IdleTimeout, now)
                .reason(AuditReason::IdleTimeout, Some(message.clone()));
            rec.idle_secs = Some(idle.as_secs_f64());
            self.close_with_message(id, CloseReason::IdleTimeout, &message, rec);
        }
    }
}
