//! Start-up after a restart: the restored connection table checked against the kernel and
//! /proc, session counts re-synced, lingering processes adopted, recordings resumed.

use std::collections::HashMap;

use enforcer_common::limits::UserEntry;
use time::OffsetDateTime;

use super::{
    admission::{conn_entry, groups_of},
    state::State,
};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    bpf::tasks::{proc_start_ns, same_task},
    host,
    recording::Resume,
};

impl State {
    /// After a restart: release connections whose monitor is gone, end sessions whose leader is
    /// gone, check the pinned task table against /proc (adopting tasks forked while the daemon
    /// was down) and re-sync the kernel's session counts.
    pub(super) async fn restore(&mut self) {
        // Every monitor in /proc: the pinned table may still hold tasks that ended while no
        // program ran (`validate` below removes them).
        self.release_gone_monitors(&HashMap::new()).await;
        let ended: Vec<u64> = self
            .registry
            .sessions()
            .filter(|s| {
                proc_start_ns(s.leader_pid).is_none_or(|n| !same_task(s.leader_start_ns, n))
            })
            .map(|s| s.id)
            .collect();
        for id in ended {
            if let Some(s) = self.registry.remove_session(id) {
                let mut rec = AuditRecord::new(AuditEvent::SessionEnded, OffsetDateTime::now_utc())
                    .with_session(&s);
                rec.conn_id = Some(s.conn_id);
                self.audit
                    .record(rec.reason(AuditReason::EndedWhileEnforcerdWasDown, None));
            }
        }
        let roots: Vec<u32> = self.registry.iter().map(|c| c.monitor.pid).collect();
        match self.bpf.validate(roots).await {
            Ok((removed, adopted)) if removed + adopted > 0 => {
                tracing::info!(
                    removed,
                    adopted,
                    "tracked tasks reconciled with /proc after restart"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot reconcile tracked tasks"),
        }
        let mut per_user: HashMap<u32, (u64, u32)> = HashMap::new();
        let conns: Vec<(u64, String)> = self
            .registry
            .iter()
            .map(|c| (c.id, c.user.clone()))
            .collect();
        for (id, user) in conns {
            // NSS here only because no request waits yet (start-up); requests arrive with the
            // identity resolved by their connection task.
            let ident = host::user_identity(&user);
            let (uid, limits) = self.limits_with(&user, ident.as_ref());
            if let Some(c) = self.registry.get_mut(id) {
                c.groups = groups_of(ident.as_ref());
            }
            let sessions = self.registry.sessions_of(id).count() as u64;
            let entry = conn_entry(sessions, uid, &limits);
            if let Err(e) = self.bpf.set_conn(id, entry).await {
                tracing::error!(conn = id, error = %e, "cannot restore connection limits in the kernel");
            }
            if let Some(uid) = uid {
                let u = per_user
                    .entry(uid)
                    .or_insert((0, limits.max_sessions_per_user));
                u.0 += sessions;
            }
        }
        for (uid, (sessions, max_sessions)) in per_user {
            if let Err(e) = self
                .bpf
                .set_user(
                    uid,
                    UserEntry {
                        sessions,
                        max_sessions,
                        _pad: 0,
                    },
                )
                .await
            {
                tracing::error!(uid, error = %e, "cannot restore user session count in the kernel");
            }
        }
        self.adopt_lingering().await;
        // Recordings of the sessions still live go on in the same files.
        let resume = Resume {
            kernel_continuous: self.info.kernel_continuous,
        };
        let live: Vec<(u64, u64)> = self
            .registry
            .sessions()
            .filter(|s| !s.channels.is_empty())
            .map(|s| (s.conn_id, s.id))
            .collect();
        for (conn_id, session_id) in live {
            self.start_recording(conn_id, session_id, Some(resume));
        }
        if !self.registry.is_empty() {
            tracing::info!(
                connections = self.registry.len(),
                sessions = self.registry.sessions().count(),
                "restored live connections"
            );
        }
        self.dirty = true;
    }
}
