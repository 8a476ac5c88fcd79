//! What a lock ends: the user's live connections (told why, their sessions killed at once, the
//! sshd processes a short grace later so the message reaches the client), the processes their
//! past connections left running (lingering), and — with `locks.all_processes` — every process
//! running as the user, whose execs and forks the kernel kills while the lock lasts
//! (`ENF_LOCKED`). Nothing here waits on the state actor: telling and killing run in tasks.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use enforcer_proto::ConnectionInfo;
use time::OffsetDateTime;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{admission::CloseReason, handle::Msg, state::State};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord, AuditSink},
    bpf::{BpfHandle, KillTarget},
    core::lock::Lock,
    host,
    locks::LockStore,
};

/// How often the lock directory is read (a dropped lock file takes effect within this).
const LOCK_FILES_EVERY: Duration = Duration::from_secs(1);

/// The lock directory as read at one moment, with the uid of each active lock's user.
pub(super) struct LockFiles {
    pub read_at: tokio::time::Instant,
    pub locks: Vec<(Lock, Option<u32>)>,
}

/// Reads the lock directory every [`LOCK_FILES_EVERY`] off the state actor (files and NSS
/// block) and hands it over; ends when the actor does. `store` names the directory in force
/// (a reload may move `locks.dir`).
pub(super) fn watch(store: watch::Receiver<LockStore>, tx: mpsc::Sender<Msg>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOCK_FILES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let read_at = tokio::time::Instant::now();
            let store = store.borrow().clone();
            let Ok(locks) = tokio::task::spawn_blocking(move || {
                let now = OffsetDateTime::now_utc();
                store
                    .list()
                    .into_iter()
                    .map(|l| {
                        let uid = l
                            .active(now)
                            .then(|| host::user_identity(&l.user).map(|i| i.uid))
                            .flatten();
                        (l, uid)
                    })
                    .collect()
            })
            .await
            else {
                continue;
            };
            if tx
                .send(Msg::LockFiles(LockFiles { read_at, locks }))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// A user under an active lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Locked {
    /// The uid whose every process the lock ends (`locks.all_processes`).
    pub uid: Option<u32>,
    /// The locked account's uid (whatever `all_processes` says): logins and connections are
    /// matched by it too, so another spelling of the name NSS maps to the same account
    /// (`ALICE`, `alice@example.com`) is locked as well.
    pub account_uid: Option<u32>,
    pub expires: Option<OffsetDateTime>,
}

/// Whether a lock of `user` (uid `account_uid`) covers a connection of `conn_user` (`conn_uid`):
/// by name, or by uid when both are known.
pub(super) fn covers(
    user: &str,
    account_uid: Option<u32>,
    conn_user: &str,
    conn_uid: Option<u32>,
) -> bool {
    conn_user == user || (account_uid.is_some() && conn_uid == account_uid)
}

/// A connection released while processes with its identity still run.
pub(super) fn lingering_info(mut info: ConnectionInfo) -> ConnectionInfo {
    info.state = "lingering".into();
    info.sessions.clear();
    // Forwards die with sshd's process.
    info.forwards.clear();
    info
}

/// A lingering connection found after a restart, known only from its processes: the user is
/// the first process's real uid, `since` the earliest process start (the connection's own
/// address and identity went with the daemon that released it).
fn adopted_info(conn_id: u64, uid: Option<u32>, since: OffsetDateTime) -> ConnectionInfo {
    ConnectionInfo {
        id: conn_id,
        kind: Default::default(),
        kube: None,
        user: uid
            .and_then(host::user_name)
            .or_else(|| uid.map(|u| format!("uid {u}")))
            .unwrap_or_else(|| "unknown".into()),
        uid,
        state: "lingering".into(),
        client: None,
        server: None,
        rhost: None,
        service: String::new(),
        monitor_pid: 0,
        since: crate::core::rfc3339(since),
        auth: None,
        sessions: Vec::new(),
        forwards: Vec::new(),
        idle_since: None,
        idle_cut_at: None,
    }
}

impl State {
    /// After a restart: tracked processes whose connection the restored table no longer has
    /// (released before the restart: nohup'd, setsid'd, double-forked leftovers) are lingering,
    /// so `sessions` shows them and a lock or `kill connection` ends them as before.
    pub(super) async fn adopt_lingering(&mut self) {
        let Ok(tasks) = self.bpf.census().await else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let boot_now = host::boot_ns();
        // Connection → (a process of it, its earliest start in ns since boot).
        let mut found: HashMap<u64, (u32, u64)> = HashMap::new();
        for (tid, t) in tasks {
            if self.registry.get(t.conn_id).is_some() || self.lingering.contains_key(&t.conn_id) {
                continue;
            }
            let e = found.entry(t.conn_id).or_insert((tid, t.start_ns));
            if t.start_ns < e.1 {
                *e = (tid, t.start_ns);
            }
        }
        for (conn_id, (pid, start_ns)) in found {
            let since = now - Duration::from_nanos(boot_now.saturating_sub(start_ns));
            let info = adopted_info(conn_id, host::real_uid(pid), since);
            tracing::info!(
                conn = conn_id,
                user = info.user,
                "processes of an ended connection adopted as lingering"
            );
            self.lingering.insert(conn_id, info);
        }
    }

    /// The uid whose every process a lock of `user` ends, if `locks.all_processes` covers it
    /// (never root).
    pub(super) fn all_processes_uid(&self, user: &str, uid: Option<u32>) -> Option<u32> {
        let l = &self.config.locks;
        uid.filter(|&u| u != 0 && l.all_processes && !l.exempt.iter().any(|e| e == user))
    }

    /// Applies the lock directory: new locks end what they cover, expired and removed ones are
    /// lifted in the kernel.
    pub(super) async fn apply_lock_files(&mut self, files: LockFiles) {
        if files.read_at < self.locks_changed_at {
            return; // read before a lock or unlock request: the next read sees it
        }
        let now = OffsetDateTime::now_utc();
        let mut locked = HashMap::new();
        for (lock, uid) in files.locks.into_iter().filter(|(l, _)| l.active(now)) {
            let previous = self.locked.get(&lock.user).copied();
            // An NSS hiccup must not lift a lock: keep the uid the lock was known by.
            let account_uid = uid.or_else(|| previous.and_then(|l| l.account_uid));
            let uid = self.all_processes_uid(&lock.user, account_uid);
            let live = self.registry.iter().any(|c| {
                covers(&lock.user, account_uid, &c.user, c.uid)
                    && !self.terminating.contains_key(&c.id)
            });
            // New, or its uid only now known (the sweep could not run without it).
            let new = previous.is_none_or(|p| p.uid.is_none() && uid.is_some());
            if new || live {
                tracing::info!(user = lock.user, new, "lock found in the lock directory");
                self.lock_out(
                    &lock.user,
                    account_uid,
                    uid.filter(|_| new),
                    lock.reason.as_deref(),
                    None,
                );
            }
            let expires = lock.expires;
            locked.insert(
                lock.user,
                Locked {
                    uid,
                    account_uid,
                    expires,
                },
            );
        }
        // Fleet locks are not in the directory: they stay.
        for (user, l) in self.fleet_locked() {
            locked.entry(user).or_insert(l);
        }
        self.locked = locked;
        self.sync_locked_uids().await;
    }

    /// Lifts locks whose expiry passed (checked often: a user's execs die while their uid is
    /// in the kernel's set).
    pub(super) async fn lift_expired_locks(&mut self) {
        let now = OffsetDateTime::now_utc();
        let before = self.locked.len();
        self.locked.retain(|_, l| l.expires.is_none_or(|e| now < e));
        if self.locked.len() != before {
            self.sync_locked_uids().await;
        }
    }

    /// A login was admitted although `user` counts as locked here (the lock expired or its
    /// file went a moment ago): lift it in the kernel before sshd starts the user's shell.
    pub(super) async fn lift_lock_of(&mut self, user: &str) {
        if self.locked.remove(user).is_some() {
            self.sync_locked_uids().await;
        }
    }

    /// Makes the kernel's locked uids match `self.locked`.
    pub(super) async fn sync_locked_uids(&mut self) {
        let mut uids: Vec<u32> = self.locked.values().filter_map(|l| l.uid).collect();
        uids.sort_unstable();
        uids.dedup();
        if self.kernel_locked.as_ref() == Some(&uids) {
            return;
        }
        match self.bpf.set_locked(uids.clone()).await {
            Ok(()) => self.kernel_locked = Some(uids),
            Err(e) => tracing::error!(error = %e, "cannot update the locked uids in the kernel"),
        }
    }

    /// Ends everything a lock of `user` covers; `sweep_uid`: also every process of that uid.
    /// Returns how many live connections it terminates.
    pub(super) fn lock_out(
        &mut self,
        user: &str,
        account_uid: Option<u32>,
        sweep_uid: Option<u32>,
        reason: Option<&str>,
        by: Option<(u32, Option<i32>)>,
    ) -> usize {
        let ids: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| {
                covers(user, account_uid, &c.user, c.uid) && !self.terminating.contains_key(&c.id)
            })
            .map(|c| c.id)
            .collect();
        let because = reason.map(|r| format!(": {r}")).unwrap_or_default();
        let message =
            format!("\r\nenforcer: account {user} is locked{because}; closing this connection\r\n");
        let record = |event: AuditEvent| {
            let mut rec = AuditRecord::new(event, OffsetDateTime::now_utc())
                .reason(AuditReason::UserLocked, Some(message.trim().to_owned()));
            if let Some((uid, pid)) = by {
                rec = rec.by(uid, pid);
            }
            rec
        };
        let mut sessions = Vec::new();
        for &id in &ids {
            sessions.extend(self.registry.sessions_of(id).map(|s| {
                let target = KillTarget {
                    conn_id: id,
                    session_id: Some(s.kernel_id),
                };
                (s.leader_pid, target)
            }));
            self.schedule_kill(
                id,
                CloseReason::UserLocked,
                record(AuditEvent::ConnectionKilled),
            );
        }
        let lingering: Vec<(u64, AuditRecord)> = self
            .lingering
            .iter()
            .filter(|(_, c)| covers(user, account_uid, &c.user, c.uid))
            .map(|(&id, c)| {
                let mut rec = record(AuditEvent::ConnectionKilled);
                rec.user = Some(c.user.clone());
                rec.uid = c.uid;
                rec.conn_id = Some(id);
                (id, rec)
            })
            .collect();
        let sweep = sweep_uid.map(|uid| {
            let mut rec = record(AuditEvent::UserProcessesKilled);
            rec.user = Some(user.to_owned());
            rec.uid = Some(uid);
            (uid, ids.clone(), rec)
        });
        tokio::spawn(end_now(
            self.bpf.clone(),
            self.audit.clone(),
            message,
            sessions,
            lingering,
            sweep,
        ));
        ids.len()
    }
}

/// Tells each session why and kills it, kills lingering processes, then every process of the
/// uid but the terminated connections' own sshd processes (they get their grace).
async fn end_now(
    bpf: BpfHandle,
    audit: AuditSink,
    message: String,
    sessions: Vec<(u32, KillTarget)>,
    lingering: Vec<(u64, AuditRecord)>,
    sweep: Option<(u32, Vec<u64>, AuditRecord)>,
) {
    let mut work = JoinSet::new();
    for (leader, target) in sessions {
        let (bpf, message) = (bpf.clone(), message.clone());
        work.spawn(async move {
            // One session's slow terminal delays only its own kill, by at most tell's poll.
            let told = tokio::task::spawn_blocking(move || host::tell(leader, &message)).await;
            if let Ok(Err(e)) = told {
                tracing::debug!(pid = leader, error = %e, "lock message not delivered");
            }
            if let Err(e) = bpf.kill(target).await {
                tracing::warn!(?target, error = %e, "cannot kill a locked user's session");
            }
        });
    }
    for (conn_id, mut rec) in lingering {
        let (bpf, audit) = (bpf.clone(), audit.clone());
        work.spawn(async move {
            let target = KillTarget {
                conn_id,
                session_id: None,
            };
            match bpf.kill(target).await {
                Ok(0) => {}
                Ok(n) => {
                    rec.processes = Some(n as u64);
                    audit.record(rec);
                }
                Err(e) => {
                    tracing::warn!(conn = conn_id, error = %e, "cannot kill lingering processes")
                }
            }
        });
    }
    while work.join_next().await.is_some() {}
    let Some((uid, conns, mut rec)) = sweep else {
        return;
    };
    if !bpf.is_locked(uid).await.unwrap_or(true) {
        return;
    }
    let spare: HashSet<u32> = match bpf.census().await {
        Ok(tasks) => tasks
            .into_iter()
            .filter(|(_, t)| conns.contains(&t.conn_id) && t.session_id == 0)
            .map(|(tid, _)| tid)
            .collect(),
        Err(_) => HashSet::new(),
    };
    let n = tokio::task::spawn_blocking(move || host::kill_uid(uid, &spare))
        .await
        .unwrap_or(0);
    // Then, once the spared sshd processes had their grace, one atomic walk after another: a
    // process that keeps forking and exiting changes pid faster than /proc can be read.
    tokio::time::sleep(super::idle::MESSAGE_GRACE * 2).await;
    // Unlocked meanwhile: the user may already be logged in again, legitimately.
    if !bpf.is_locked(uid).await.unwrap_or(true) {
        if n > 0 {
            rec.processes = Some(n as u64);
            audit.record(rec);
        }
        return;
    }
    let walks = tokio::task::spawn_blocking(move || host::kill_as(uid))
        .await
        .unwrap_or(0);
    if n > 0 || walks > 0 {
        rec.processes = Some((n + walks) as u64);
        audit.record(rec);
    }
}

/// Kills a connection's every task and audits it with how many there were.
pub(super) async fn kill_and_audit(
    bpf: BpfHandle,
    audit: AuditSink,
    conn_id: u64,
    mut rec: AuditRecord,
) -> Result<u64, enforcer_proto::ErrorReply> {
    let n = bpf
        .kill(KillTarget {
            conn_id,
            session_id: None,
        })
        .await
        .map_err(|e| {
            enforcer_proto::ErrorReply::new(enforcer_proto::ErrorKind::Internal, e.to_string())
        })? as u64;
    rec.processes = Some(n);
    audit.record(rec);
    Ok(n)
}
