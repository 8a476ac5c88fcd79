//! One control connection: reading requests within the peer's limits (frame cap, read deadline,
//! idle timeout), doing the peer's blocking lookups here rather than on the state actor, and
//! answering.

use std::{sync::Arc, time::Duration};

use enforcer_proto::{
    Admission, ErrorKind, ErrorReply, FrameError, Reply, Request, Response,
    frame::{encode, read_frame_async, write_frame_async},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixStream, unix::UCred},
    sync::Semaphore,
    time::timeout,
};

use super::{
    Peer, authorize,
    limits::{ControlSettings, SharedSettings, SlotGuard, Slots},
    server::{Lane, refuse},
};
use crate::{
    audit::history,
    core::{control::ControlDrop, reload::ReloadTrigger},
    daemon::{StateHandle, list_recordings},
    host,
    metrics::{Metrics, Outcome},
    recording::RecordingIndex,
};

/// What every connection task shares.
pub struct Ctx {
    pub state: StateHandle,
    /// `[control]` and `access.auditor_group` as in force now (a reload replaces them).
    pub settings: Arc<SharedSettings>,
    pub slots: Arc<Slots>,
    pub recordings: RecordingIndex,
    /// Unprivileged `recordings` listings run one at a time (each walks the whole index).
    pub listing: Semaphore,
    /// PAM decision latency and outcomes are measured here.
    pub metrics: Arc<Metrics>,
    /// The audit log `history` reads, one reader at a time (each scans the whole file).
    pub audit_path: std::path::PathBuf,
    pub history: Semaphore,
    /// `[recording.store]`, when recordings are shipped: `recordings --store`, `play` of
    /// recordings only the store has.
    pub store: Option<crate::store::Store>,
    /// `[fleet]` on: fleet requests are answered by the connection task (see `fleet`).
    pub fleet: Option<(crate::fleet::FleetHandle, crate::audit::AuditSink)>,
}

impl Ctx {
    pub fn new(
        state: StateHandle,
        settings: Arc<SharedSettings>,
        slots: Arc<Slots>,
        recordings: RecordingIndex,
        metrics: Arc<Metrics>,
        audit_path: std::path::PathBuf,
        store: Option<crate::store::Store>,
        fleet: Option<(crate::fleet::FleetHandle, crate::audit::AuditSink)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            settings,
            slots,
            recordings,
            listing: Semaphore::new(1),
            metrics,
            audit_path,
            history: Semaphore::new(1),
            store,
            fleet,
        })
    }
}

/// Why reading the next request ended the connection.
enum Bad {
    /// A limit: counted and told in one line.
    Limit(ControlDrop),
    /// Not a frame we understand.
    Frame(FrameError),
}

/// Serves one connection until the peer closes it or breaks a limit. `_slot` is its place in
/// the per-uid caps, given back when this returns.
pub async fn serve(
    mut stream: UnixStream,
    cred: UCred,
    ctx: Arc<Ctx>,
    lane: Lane,
    _slot: Option<SlotGuard>,
) {
    let uid = cred.uid();
    let peer = if uid == 0 {
        Peer::resolve(uid, cred.gid(), cred.pid(), "")
    } else {
        // Group membership goes through NSS: never on a runtime worker.
        let group = ctx.settings.get().auditor_group.clone();
        let (gid, pid) = (cred.gid(), cred.pid());
        match tokio::task::spawn_blocking(move || Peer::resolve(uid, gid, pid, &group)).await {
            Ok(p) => p,
            Err(_) => return,
        }
    };
    // Root's requests take the priority lane on either socket: a PAM line still naming the
    // public socket (hand-written for an older release) keeps logins ahead of other peers.
    let state = if lane == Lane::Pam || uid == 0 {
        ctx.state.priority()
    } else {
        ctx.state.clone()
    };
    loop {
        // Read per request: a reload applies to connections already open.
        let settings = ctx.settings.get();
        let req = match next_request(&mut stream, &settings, uid).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(Bad::Limit(reason)) => {
                ctx.slots.stats.count(reason);
                tracing::debug!(uid, ?reason, "control connection closed");
                refuse(&stream, reason);
                return;
            }
            Err(Bad::Frame(e)) => {
                tracing::debug!(error = %e, uid, "bad control request");
                let resp: Response = Err(ErrorReply::new(ErrorKind::BadRequest, e.to_string()));
                send(&mut stream, &settings, uid, &resp).await;
                return;
            }
        };
        if !answer(&mut stream, &ctx, &settings, &state, &peer, req).await {
            return;
        }
    }
}

/// The next request: a non-root peer must start one within the idle timeout, and every peer
/// must finish it within the read timeout of its first byte.
async fn next_request(
    stream: &mut UnixStream,
    settings: &ControlSettings,
    uid: u32,
) -> Result<Option<Request>, Bad> {
    let mut first = [0u8; 1];
    let read = if uid == 0 {
        stream.read(&mut first).await
    } else {
        timeout(settings.idle_timeout, stream.read(&mut first))
            .await
            .map_err(|_| Bad::Limit(ControlDrop::IdleTimeout))?
    };
    if !matches!(read, Ok(1)) {
        return Ok(None);
    }
    let mut frame = (&first[..]).chain(&mut *stream);
    let read = read_frame_async::<Request>(&mut frame, settings.frame_cap(uid));
    match timeout(settings.read_timeout, read).await {
        Err(_) => Err(Bad::Limit(ControlDrop::ReadTimeout)),
        Ok(Ok(req)) => Ok(req),
        Ok(Err(FrameError::Closed)) => Ok(None),
        Ok(Err(FrameError::TooLarge { .. })) => Err(Bad::Limit(ControlDrop::FrameTooLarge)),
        Ok(Err(e)) => Err(Bad::Frame(e)),
    }
}

/// Answers one request; false when the connection is over.
async fn answer(
    stream: &mut UnixStream,
    ctx: &Ctx,
    settings: &ControlSettings,
    state: &StateHandle,
    peer: &Peer,
    req: Request,
) -> bool {
    let uid = peer.uid;
    let resp = match req {
        // From the in-memory index, off the actor and off the runtime's workers.
        Request::Recordings { user, since } => {
            let (index, who) = (ctx.recordings.clone(), peer.clone());
            let frame = {
                // Released before the answer is written: a peer that does not read it holds
                // only its own connection.
                let _turn = match uid {
                    0 => None,
                    _ => ctx.listing.acquire().await.ok(),
                };
                tokio::task::spawn_blocking(move || {
                    let resp: Response =
                        list_recordings(&index, &who, user.as_deref(), since.as_deref())
                            .map(Reply::Recordings);
                    encode(&resp)
                })
                .await
            };
            return match frame {
                Ok(Ok(bytes)) => write_bytes(stream, settings, uid, &bytes).await,
                _ => {
                    let resp: Response = Err(ErrorReply::new(
                        ErrorKind::Internal,
                        "cannot encode the recordings list; narrow it with --user or --since",
                    ));
                    send(stream, settings, uid, &resp).await
                }
            };
        }
        // Root and auditors: read from the audit log on the blocking pool. Anyone else goes on
        // to the state actor, which denies and audits the denial.
        Request::History(ref query) if authorize(peer.role, &req).is_ok() => {
            let (path, query) = (ctx.audit_path.clone(), query.clone());
            let _turn = ctx.history.acquire().await.ok();
            match tokio::task::spawn_blocking(move || history::read(&path, &query)).await {
                Ok(Ok(entries)) => Ok(Reply::History(entries)),
                Ok(Err(e @ history::HistoryError::Since(_))) => {
                    Err(ErrorReply::new(ErrorKind::BadRequest, e.to_string()))
                }
                Ok(Err(e)) => Err(ErrorReply::new(ErrorKind::Internal, e.to_string())),
                Err(_) => Err(ErrorReply::new(
                    ErrorKind::Internal,
                    "reading the audit log failed; see enforcerd's log",
                )),
            }
        }
        Request::StoreRecordings { user, since } => {
            let _turn = match uid {
                0 => None,
                _ => ctx.listing.acquire().await.ok(),
            };
            super::stored::list(ctx, peer, user, since).await
        }
        // Not on this node (or recorded by another): from the store, same access rules.
        Request::Play { id, ref node }
            if ctx
                .store
                .as_ref()
                .is_some_and(|s| node.as_ref().is_some_and(|n| *n != s.node)) =>
        {
            return super::stored::play(stream, ctx, settings, peer, id, node.clone()).await;
        }
        Request::Play { id, ref node } if ctx.store.is_some() => {
            let node = node.clone();
            return match state.stream(req, peer.clone()).await {
                Ok(s) => super::stream::send_stream(stream, s, write_budget(settings, uid)).await,
                Err(e) if e.kind == ErrorKind::NotFound => {
                    super::stored::play(stream, ctx, settings, peer, id, node).await
                }
                Err(e) => send(stream, settings, uid, &Err(e)).await,
            };
        }
        // Authorisation (and auditing of denials) happens in the state actor.
        Request::Play { .. } | Request::Watch { .. } => {
            return match state.stream(req, peer.clone()).await {
                Ok(s) => super::stream::send_stream(stream, s, write_budget(settings, uid)).await,
                Err(e) => send(stream, settings, uid, &Err(e)).await,
            };
        }
        // NSS lookups of the login's user, here rather than on the actor (root only: anyone
        // else is denied these requests anyway). The account decision's latency is measured as
        // sshd waits for it: lookup and queueing included.
        Request::PamAccount(ref r) if uid == 0 => {
            let started = std::time::Instant::now();
            // etcd counts the user's fleet-wide slots while NSS and the actor decide here.
            let early = ctx
                .fleet
                .as_ref()
                .and_then(|(f, _)| f.take_slot_early(&r.user, crate::fleet::SLOT_DEADLINE));
            if early.is_some() {
                // A few turns of this runtime: the slot task, its request's task and the
                // client's send its transaction before the lookup holds this thread.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            }
            let early_n = early.as_ref().map(|e| e.n);
            let identity = lookup(&r.user).await;
            let resp = state.account(req, peer.clone(), identity, early).await;
            let outcome = match &resp {
                Ok(Reply::Admission(Admission::Admitted { .. })) => Outcome::admitted,
                Ok(Reply::Admission(Admission::Refused { .. })) => Outcome::refused,
                _ => Outcome::error,
            };
            let took = started.elapsed();
            ctx.metrics.pam_decision(took, outcome);
            // With the slot transaction's own debug line (same `early`), this tells how much of
            // a login's wait is etcd's (`cargo xtask bench fleet` reads both).
            tracing::debug!(
                early = early_n,
                decision_us = took.as_micros() as u64,
                ?outcome,
                "PAM account answered"
            );
            resp
        }
        Request::PamOpenSession(ref r) if uid == 0 => {
            let identity = lookup(&r.user).await;
            state.request(req, peer.clone(), identity).await
        }
        // Fleet locks, unlocks and listings: etcd, from here (root and auditors only).
        Request::Lock(_)
        | Request::Unlock { .. }
        | Request::UnlockTarget(_)
        | Request::FleetSessions
        | Request::Nodes
            if ctx.fleet.is_some() && authorize(peer.role, &req).is_ok() =>
        {
            match super::fleet::answer(ctx, peer, &req).await {
                Some(resp) => resp,
                None => {
                    let identity = match &req {
                        Request::Lock(r) => lookup(&r.user).await,
                        _ => None,
                    };
                    state.request(req, peer.clone(), identity).await
                }
            }
        }
        Request::Lock(ref r) if uid == 0 => {
            let identity = lookup(&r.user).await;
            state.request(req, peer.clone(), identity).await
        }
        // The config file is read and parsed here, not on the actor (root only, as above).
        Request::Reload if uid == 0 => {
            state
                .reload(ReloadTrigger::Enforcerctl, Some(peer.clone()))
                .await
        }
        req => state.request(req, peer.clone(), None).await,
    };
    send(stream, settings, uid, &resp).await
}

/// NSS's identity of `user`. Run on this thread, which hands the runtime's other tasks to
/// another for the while (`block_in_place`): a slow NSS source stalls no other decision, and a
/// fast one costs no wake-up of a pool thread — which, after a few ms idle, took 1–2 ms of a
/// login's answer here, longer than the lookup and etcd's slot transaction together.
async fn lookup(user: &str) -> Option<host::UserIdentity> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(|| host::user_identity(user));
    }
    let user = user.to_owned();
    tokio::task::spawn_blocking(move || host::user_identity(&user))
        .await
        .ok()
        .flatten()
}

/// How long a non-root peer may take to read an answer (root: as long as it likes).
pub(super) fn write_budget(settings: &ControlSettings, uid: u32) -> Duration {
    match uid {
        0 => Duration::MAX,
        _ => settings.idle_timeout,
    }
}

pub(super) async fn send(
    stream: &mut UnixStream,
    settings: &ControlSettings,
    uid: u32,
    resp: &Response,
) -> bool {
    let write = write_frame_async(stream, resp);
    let ok = matches!(
        timeout(write_budget(settings, uid), write).await,
        Ok(Ok(()))
    );
    if !ok {
        tracing::debug!(uid, "control client went away before its answer");
    }
    ok
}

async fn write_bytes(
    stream: &mut UnixStream,
    settings: &ControlSettings,
    uid: u32,
    bytes: &[u8],
) -> bool {
    let write = stream.write_all(bytes);
    matches!(
        timeout(write_budget(settings, uid), write).await,
        Ok(Ok(()))
    )
}
