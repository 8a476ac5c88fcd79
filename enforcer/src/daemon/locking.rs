//! Locking users (admission side: a locked user's logins are refused).

use enforcer_proto::{ErrorKind, ErrorReply, LockInfo, LockRequest};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    control::Peer,
    core::lock::{Lock, check_user_name},
    locks::LockError,
};

fn store_error(e: LockError) -> ErrorReply {
    match e {
        LockError::BadName(m) => ErrorReply::new(ErrorKind::BadRequest, m),
        other => ErrorReply::new(ErrorKind::Internal, other.to_string()),
    }
}

/// Who made a lock, as its file says.
pub(super) fn operator(peer: &Peer) -> String {
    match crate::host::user_name(peer.uid) {
        Some(name) => format!("{name} (uid {})", peer.uid),
        None => format!("uid {}", peer.uid),
    }
}

impl State {
    /// Locks a user: new logins are refused from now on, and every live connection of theirs
    /// is terminated at once.
    /// `identity`: NSS's answer for the user, looked up before the request reached the actor.
    pub(super) async fn lock(
        &mut self,
        req: LockRequest,
        peer: &Peer,
        identity: Option<crate::host::UserIdentity>,
    ) -> Result<LockInfo, ErrorReply> {
        if req.node {
            return Err(super::fleet::fleet_off());
        }
        if req.group {
            return Err(super::fleet::group_locks_are_fleet_wide());
        }
        check_user_name(&req.user).map_err(|m| ErrorReply::new(ErrorKind::BadRequest, m))?;
        let now = OffsetDateTime::now_utc();
        let uid = identity.map(|i| i.uid);
        if uid.is_none() && !req.force {
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!(
                    "no user {} is known on this node (NSS); check the name, or use --force to lock it anyway",
                    req.user
                ),
            ));
        }
        if let Some(existing) = self.locks.get(&req.user).filter(|l| l.active(now)) {
            if !req.replace {
                return Err(ErrorReply::new(
                    ErrorKind::BadRequest,
                    format!(
                        "{}; use --replace to change its reason and expiry",
                        existing.refusal_message().replace("account", "user")
                    ),
                ));
            }
        }
        let ttl = req.ttl_secs.map(std::time::Duration::from_secs);
        let lock = Lock::new(&req.user, req.reason.clone(), ttl, operator(peer), now);
        self.locks.put(&lock).map_err(store_error)?;
        let mut rec = AuditRecord::new(AuditEvent::Lock, now)
            .by(peer.uid, peer.pid)
            .reason(AuditReason::Locked, req.reason.clone());
        rec.user = Some(req.user.clone());
        rec.expires = lock.info(now).expires;
        self.audit.record(rec);
        let sweep_uid = self.all_processes_uid(&req.user, uid);
        let locked = super::lockout::Locked {
            uid: sweep_uid,
            account_uid: uid,
            expires: lock.expires,
        };
        let new = self.locked.insert(req.user.clone(), locked).is_none();
        self.locks_changed_at = tokio::time::Instant::now();
        self.sync_locked_uids().await;
        self.lock_out(
            &req.user,
            uid,
            sweep_uid.filter(|_| new),
            req.reason.as_deref(),
            Some((peer.uid, peer.pid)),
        );
        self.end_exec_sessions_of(&req.user).await;
        Ok(lock.info(now))
    }

    pub(super) async fn unlock(&mut self, user: &str, peer: &Peer) -> Result<(), ErrorReply> {
        if !self.locks.remove(user).map_err(store_error)? {
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!("user {user} is not locked"),
            ));
        }
        // A fleet lock of the same user still holds.
        if !self.fleet_locked().iter().any(|(u, _)| u == user) {
            self.locked.remove(user);
        }
        self.locks_changed_at = tokio::time::Instant::now();
        self.sync_locked_uids().await;
        let mut rec =
            AuditRecord::new(AuditEvent::Unlock, OffsetDateTime::now_utc()).by(peer.uid, peer.pid);
        rec.user = Some(user.to_owned());
        self.audit.record(rec);
        Ok(())
    }

    /// Lock files, then (with `[fleet]`) fleet locks, each with its origin.
    pub(super) fn list_locks(&self) -> Vec<LockInfo> {
        let now = OffsetDateTime::now_utc();
        let mut all: Vec<LockInfo> = self.locks.list().iter().map(|l| l.info(now)).collect();
        if self.fleet.is_some() {
            for l in &mut all {
                l.origin = Some("local".into());
            }
            all.extend(self.fleet_lock_infos());
        }
        all.extend(self.exec_lock_infos());
        all
    }
}
