//! Config reload (SIGHUP, `enforcerctl reload`): the file enforcerd was started with is read
//! and validated in the caller's task ([`load`]), then the state actor applies all of it or
//! none ([`State::reload`]): limits, idle, rules, locks, access and control settings reach new
//! and live connections; connections, sessions, recordings, idle clocks and locks stay.

use std::{path::Path, sync::Arc};

use enforcer_common::limits::{ConnEntry, UserEntry};
use enforcer_proto::{ErrorKind, ErrorReply, ReloadReport, Request};
use time::OffsetDateTime;

use super::{admission::NO_UID, state::State};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    config::{Config, ConfigError},
    control::{ControlSettings, Peer},
    core::reload::{self, NeedsRestart, Relimit, ReloadTrigger, SlotHolders},
    locks::LockStore,
};

/// Rounds of rewriting a kernel session counter that a session start or end raced with.
const SLOT_ROUNDS: usize = 5;

/// Why a reload changed nothing (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "enforcerd runs on its embedded default config (started without --config): there is no \
         file to re-read; restart it with --config FILE to use one"
    )]
    NoConfigFile,
    #[error("{}; the running config stays", one_line(&.0.to_string()))]
    Config(#[from] ConfigError),
    #[error(transparent)]
    NeedsRestart(#[from] NeedsRestart),
}

impl ReloadError {
    fn reason(&self) -> AuditReason {
        match self {
            ReloadError::NoConfigFile => AuditReason::NoConfigFile,
            ReloadError::Config(_) => AuditReason::InvalidConfig,
            ReloadError::NeedsRestart(_) => AuditReason::NeedsRestart,
        }
    }
}

/// A config error as one line (an answer's message is one line): TOML's errors quote the bad
/// line under a gutter, which `enforcerd --check-config` shows and this leaves out.
fn one_line(text: &str) -> String {
    let quoted = |l: &str| {
        let l = l.trim_start();
        l.starts_with('|')
            || l.split_once(" |")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !quoted(l))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Reads and validates the config file on the blocking pool (as `enforcerd --check-config`).
pub(super) async fn load(path: Option<Arc<Path>>) -> Result<Config, ReloadError> {
    let path = path.ok_or(ReloadError::NoConfigFile)?;
    let file = path.clone();
    match tokio::task::spawn_blocking(move || Config::load(&file)).await {
        Ok(loaded) => Ok(loaded?),
        // The blocking pool is shutting down.
        Err(e) => Err(ReloadError::Config(ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })),
    }
}

impl State {
    /// Applies a config read for a reload, or keeps the running one; audits either outcome.
    pub(super) async fn reload(
        &mut self,
        loaded: Result<Config, ReloadError>,
        trigger: ReloadTrigger,
        peer: Option<&Peer>,
    ) -> Result<ReloadReport, ErrorReply> {
        if let Some(peer) = peer {
            self.check(&Request::Reload, peer)?;
        }
        let config_path = self
            .info
            .config_path
            .as_ref()
            .map(|p| p.display().to_string());
        let planned = loaded.and_then(|new| match reload::plan(&self.config, &new) {
            Ok(changes) => Ok((new, changes)),
            Err(e) => Err(e.into()),
        });
        let now = OffsetDateTime::now_utc();
        let (event, reason) = match &planned {
            Ok(_) => (AuditEvent::ConfigReloaded, None),
            Err(e) => (AuditEvent::ConfigReloadFailed, Some(e.reason())),
        };
        let mut rec = AuditRecord::new(event, now);
        if let Some(peer) = peer {
            rec = rec.by(peer.uid, peer.pid);
        }
        rec.trigger = Some(trigger);
        rec.config_path = config_path.clone();
        match planned {
            Err(e) => {
                tracing::warn!(?trigger, error = %e, "config reload failed; the running config stays");
                if let ReloadError::NeedsRestart(n) = &e {
                    rec.changes = Some(n.changes.clone());
                }
                rec.reason = reason;
                rec.message = Some(e.to_string());
                self.audit.record(rec);
                Err(ErrorReply::new(ErrorKind::BadRequest, e.to_string()))
            }
            Ok((new, changes)) => {
                self.apply(new).await;
                for c in &changes {
                    tracing::info!(key = c.key, old = ?c.old, new = ?c.new, "config reloaded");
                }
                tracing::info!(?trigger, changes = changes.len(), "config reloaded");
                rec.changes = Some(changes.clone());
                self.audit.record(rec);
                Ok(ReloadReport {
                    config_path: config_path.unwrap_or_default(),
                    changes,
                })
            }
        }
    }

    /// Puts `new` in force for new and live connections (it passed [`reload::plan`]).
    async fn apply(&mut self, new: Config) {
        let relimit = reload::relimit(&self.registry, &self.config, &new);
        let old = std::mem::replace(&mut self.config, new);
        if let Some(f) = &self.fleet {
            f.set_early_config(std::sync::Arc::new(self.config.clone()));
        }
        for (id, timeout) in &relimit.idle {
            if let Some(c) = self.registry.get_mut(*id) {
                c.idle_timeout = *timeout;
                self.dirty = true;
            }
        }
        if relimit.touches_kernel() {
            self.rewrite_session_limits(relimit).await;
        }
        let config = &self.config;
        if old.control != config.control || old.access != config.access {
            self.control_settings.set(ControlSettings::new(
                &config.control,
                &config.access.auditor_group,
            ));
        }
        if old.locks != config.locks {
            if old.locks.dir != config.locks.dir {
                self.locks = LockStore::new(&config.locks.dir);
                self.lock_dir.send_replace(self.locks.clone());
            }
            // The watcher's next read applies all_processes, exempt and the new directory;
            // a read of the old directory still on its way is dropped.
            self.locks_changed_at = tokio::time::Instant::now();
        }
    }

    /// Rewrites the kernel's session limits of live connections and users, with counts taken
    /// from the kernel's own task table (not the model, which lags its events). The programs
    /// count on while this runs, so each counter whose slot holders changed between the reads
    /// around its write is written again.
    async fn rewrite_session_limits(&mut self, mut todo: Relimit) {
        for _ in 0..SLOT_ROUNDS {
            let Some(before) = self.slot_holders().await else {
                return;
            };
            for (&id, &max_sessions) in &todo.conn_sessions {
                let uid = self.registry.get(id).and_then(|c| c.uid).unwrap_or(NO_UID);
                let entry = ConnEntry {
                    sessions: before.conn_count(id),
                    max_sessions,
                    uid,
                };
                if let Err(e) = self.bpf.set_conn(id, entry).await {
                    tracing::error!(conn = id, error = %e, "cannot update the connection's session limit in the kernel");
                }
            }
            for (&uid, &max_sessions) in &todo.user_sessions {
                let entry = UserEntry {
                    sessions: before.user_count(uid),
                    max_sessions,
                    _pad: 0,
                };
                if let Err(e) = self.bpf.set_user(uid, entry).await {
                    tracing::error!(uid, error = %e, "cannot update the user's session limit in the kernel");
                }
            }
            let Some(after) = self.slot_holders().await else {
                return;
            };
            todo = before.moved(&after, &todo);
            if !todo.touches_kernel() {
                return;
            }
        }
        tracing::error!(
            conns = ?todo.conn_sessions.keys().collect::<Vec<_>>(),
            uids = ?todo.user_sessions.keys().collect::<Vec<_>>(),
            "session counts kept changing while their limits were rewritten; they may be off by the sessions started or ended meanwhile"
        );
    }

    async fn slot_holders(&self) -> Option<SlotHolders> {
        match self.bpf.census().await {
            Ok(tasks) => Some(SlotHolders::from_tasks(&self.registry, &tasks)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the kernel's tasks; session limits of live connections are not updated");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_become_one_line_naming_key_and_line() {
        let text = "[daemon]\n\n[limits]\nmax_conections_per_user = 3\n";
        let e = ReloadError::from(Config::parse(text, "/etc/x.toml").unwrap_err()).to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("config /etc/x.toml: TOML parse error at line 4, column 1: unknown field `max_conections_per_user`"), "{e}");
        assert!(e.ends_with("; the running config stays"), "{e}");
        let e = ReloadError::from(Config::parse("[limits]\n[limits]\n", "f").unwrap_err());
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }
}
