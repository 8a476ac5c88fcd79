//! Forwarding channels (`ssh -L/-R/-D/-W`, ProxyJump, agent, X11): audited when sshd opens and
//! closes their sockets; their bytes move the connection's idle clock (`idle.forwarding`, in
//! `idle.rs`) and show in `enforcerctl sessions`.

use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::{EventOrigin, ForwardChange},
    core::{
        conn::Connection,
        forward::{self, Forward},
    },
};

/// An audit record about forward `f` of `conn`.
fn record(event: AuditEvent, now: OffsetDateTime, conn: &Connection, f: &Forward) -> AuditRecord {
    let mut rec = AuditRecord::new(event, now).with_conn(conn);
    rec.kind = Some(f.kind.name().into());
    rec.target = Some(f.target.clone());
    rec
}

/// The record of a forward's end, with what moved through it.
fn closed(now: OffsetDateTime, conn: &Connection, f: &Forward, why: AuditReason) -> AuditRecord {
    let mut rec = record(AuditEvent::ForwardClosed, now, conn, f).reason(why, None);
    rec.bytes_in = Some(f.bytes_in);
    rec.bytes_out = Some(f.bytes_out);
    rec.duration_secs = Some((now - f.opened_at).as_seconds_f64().max(0.0));
    rec
}

impl State {
    pub(super) fn on_forward(&mut self, origin: EventOrigin, ino: u64, change: ForwardChange) {
        let now = OffsetDateTime::now_utc();
        let Some(conn) = self.registry.get_mut(origin.conn_id) else {
            return;
        };
        conn.forward_event_at = Some(now);
        let (kind, target) = match change {
            ForwardChange::Opened { kind, target } => (kind, target),
            ForwardChange::Accepted => forward::accepted(None),
            ForwardChange::Closed {
                bytes_in,
                bytes_out,
            } => {
                let Some(mut f) = conn.forwards.remove(&ino) else {
                    return;
                };
                // The kernel's count at close is the last word (the idle sweep samples it).
                f.bytes_in = f.bytes_in.max(bytes_in);
                f.bytes_out = f.bytes_out.max(bytes_out);
                let rec = closed(now, conn, &f, AuditReason::Closed);
                self.audit.record(rec);
                self.dirty = true;
                return;
            }
        };
        let f = Forward {
            kind,
            target,
            opened_at: now,
            last_activity: now,
            bytes_in: 0,
            bytes_out: 0,
        };
        let mut rec = record(AuditEvent::ForwardOpened, now, conn, &f);
        rec.pid = Some(origin.pid);
        conn.forwards.insert(ino, f);
        self.audit.record(rec);
        self.dirty = true;
    }

    /// A connection ended with forwards open: sshd's process died without closing them.
    pub(super) fn close_forwards(&mut self, conn: &Connection, now: OffsetDateTime) {
        for f in conn.forwards.values() {
            self.audit
                .record(closed(now, conn, f, AuditReason::ConnectionClosed));
        }
    }
}
