//! Fleet requests answered by the connection task (never by the state actor, which must not
//! wait on etcd): fleet-wide locks and unlocks, every node's sessions, the nodes. The lock
//! reaches this node's actor, like every other node's, through the lock watch.

use enforcer_proto::{ErrorKind, ErrorReply, LockRequest, Reply, Request, Response, UnlockRequest};
use time::OffsetDateTime;

use super::{Peer, conn::Ctx};
use crate::{
    audit::{AuditEvent, AuditReason, AuditRecord},
    core::{
        fleet::{FleetLock, LockTarget},
        lock::check_user_name,
    },
    fleet::{FleetError, FleetHandle},
    host,
};

/// The answer to a fleet request, or `None` when the state actor answers it (a `--local`
/// lock or unlock, or an unlock of a user with no fleet lock: maybe a lock file here).
/// The caller has authorised `req`.
pub(super) async fn answer(ctx: &Ctx, peer: &Peer, req: &Request) -> Option<Response> {
    let (fleet, audit) = ctx.fleet.as_ref()?;
    match req {
        // Exec locks of pods and namespaces are this node's own.
        Request::Lock(r) if !r.local && r.kube.is_none() => Some(lock(fleet, audit, peer, r).await),
        Request::Unlock { user } => {
            let u = UnlockRequest {
                name: user.clone(),
                local: false,
                node: false,
                group: false,
                kube: None,
            };
            unlock(fleet, audit, peer, &u).await
        }
        Request::UnlockTarget(u) if !u.local && u.kube.is_none() => {
            unlock(fleet, audit, peer, u).await
        }
        Request::FleetSessions => Some(
            fleet
                .sessions()
                .await
                .map(Reply::FleetSessions)
                .map_err(error),
        ),
        Request::Nodes => Some(fleet.nodes().await.map(Reply::Nodes).map_err(error)),
        _ => None,
    }
}

fn error(e: FleetError) -> ErrorReply {
    let kind = match e {
        FleetError::AlreadyLocked(_) => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    };
    ErrorReply::new(kind, e.to_string())
}

fn target(name: &str, node: bool, group: bool) -> Result<LockTarget, ErrorReply> {
    if node || group {
        let what = if node { "node" } else { "group" };
        if name.is_empty() || name.contains('/') {
            return Err(ErrorReply::new(
                ErrorKind::BadRequest,
                format!("{name:?} cannot be a {what} name (empty, or contains `/`)"),
            ));
        }
        return Ok(match node {
            true => LockTarget::Node(name.to_owned()),
            false => LockTarget::Group(name.to_owned()),
        });
    }
    check_user_name(name).map_err(|m| ErrorReply::new(ErrorKind::BadRequest, m))?;
    Ok(LockTarget::User(name.to_owned()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn lock(
    fleet: &FleetHandle,
    audit: &crate::audit::AuditSink,
    peer: &Peer,
    r: &LockRequest,
) -> Response {
    let target = target(&r.user, r.node, r.group)?;
    if let LockTarget::User(u) = &target {
        let u = u.clone();
        let known = blocking(move || host::user_identity(&u))
            .await
            .flatten()
            .is_some();
        if !known && !r.force {
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!(
                    "no user {} is known on this node (NSS); check the name, or use --force to lock it anyway",
                    r.user
                ),
            ));
        }
    }
    let uid = peer.uid;
    let by = match blocking(move || host::user_name(uid)).await.flatten() {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let now = OffsetDateTime::now_utc();
    let ttl = r.ttl_secs.map(std::time::Duration::from_secs);
    let lock = FleetLock::new(target.clone(), r.reason.clone(), ttl, by, fleet.node(), now);
    fleet.lock(lock.clone(), r.replace).await.map_err(error)?;
    let mut rec = AuditRecord::new(AuditEvent::Lock, now)
        .by(peer.uid, peer.pid)
        .reason(AuditReason::Locked, r.reason.clone());
    let mut info = lock.as_lock().info(now);
    match &target {
        LockTarget::User(u) => rec.user = Some(u.clone()),
        LockTarget::Node(n) => rec.target = Some(format!("node {n}")),
        LockTarget::Group(g) => rec.target = Some(format!("group {g}")),
    }
    rec.expires = info.expires.clone();
    audit.record(rec);
    info.origin = Some("fleet".into());
    info.target = Some(target.kind().into());
    info.node = Some(fleet.node().to_owned());
    Ok(Reply::Locked(info))
}

async fn unlock(
    fleet: &FleetHandle,
    audit: &crate::audit::AuditSink,
    peer: &Peer,
    u: &UnlockRequest,
) -> Option<Response> {
    let target = match target(&u.name, u.node, u.group) {
        Ok(t) => t,
        Err(e) => return Some(Err(e)),
    };
    match fleet.unlock(target.clone()).await {
        Err(e) => Some(Err(error(e))),
        Ok(false) if u.node || u.group => Some(Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("{} {} is not locked", target.kind(), u.name),
        ))),
        // Not locked fleet-wide: maybe by a lock file here (the actor says).
        Ok(false) => None,
        Ok(true) => {
            let mut rec = AuditRecord::new(AuditEvent::Unlock, OffsetDateTime::now_utc())
                .by(peer.uid, peer.pid);
            match target {
                LockTarget::User(n) => rec.user = Some(n),
                LockTarget::Node(n) => rec.target = Some(format!("node {n}")),
                LockTarget::Group(g) => rec.target = Some(format!("group {g}")),
            }
            rec.message = Some("fleet-wide".into());
            audit.record(rec);
            Some(Ok(Reply::Done))
        }
    }
}
