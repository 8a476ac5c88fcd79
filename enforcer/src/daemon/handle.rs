//! How the rest of the daemon reaches the state actor: its messages and a cloneable handle.

use std::{path::Path, sync::Arc};

use enforcer_proto::{ErrorKind, ErrorReply, Request, Response};
use tokio::sync::{mpsc, oneshot};

use super::{lockout::LockFiles, reload::ReloadError};
use crate::{
    config::Config, control::Peer, core::reload::ReloadTrigger, host::UserIdentity,
    recording::WatchFrame,
};

/// What the actor is asked to do, one message at a time.
pub(super) enum Msg {
    Request {
        req: Request,
        peer: Peer,
        /// NSS identity of the PAM or lock request's user, looked up before the request got here.
        identity: Option<UserIdentity>,
        /// The fleet-wide slot an account request's connection task took as it arrived.
        early: Option<crate::fleet::EarlySlot>,
        reply: oneshot::Sender<Response>,
    },
    Stream {
        req: Request,
        peer: Peer,
        reply: oneshot::Sender<Result<Stream, ErrorReply>>,
    },
    /// A request another task denied (`play` of a stored recording of another user): counted
    /// and audited like the actor's own denials.
    Denied {
        req: Request,
        peer: Peer,
        denied: ErrorReply,
    },
    /// News from the fleet's etcd tasks (locks, slot outcomes).
    Fleet(crate::fleet::FleetEvent),
    /// News from the Node watch (`[kubernetes]`).
    Kube(crate::kube::NodeEvent),
    /// News from containerd (`[kubernetes]`: exec processes).
    Containerd(crate::kube::ContainerdEvent),
    /// The lock directory as just read (see `lockout::watch`).
    LockFiles(LockFiles),
    /// A config file read for a reload (see `reload`); `peer`: who asked (`None`: SIGHUP).
    Reload {
        loaded: Box<Result<Config, ReloadError>>,
        trigger: ReloadTrigger,
        peer: Option<Peer>,
        reply: oneshot::Sender<Response>,
    },
    /// What the metrics show (asked at most once a second, see `crate::metrics`).
    Metrics(oneshot::Sender<Option<crate::metrics::MetricsView>>),
    Shutdown(oneshot::Sender<()>),
}

/// What a streaming request (play, watch) is answered from.
pub enum Stream {
    /// A recording file, sent as it is on disk.
    File(std::path::PathBuf),
    /// A live session's frames until it ends.
    Live(mpsc::Receiver<WatchFrame>),
}

/// Cloneable access to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    pub(super) tx: mpsc::Sender<Msg>,
    /// The PAM lane, which the actor always serves first.
    pub(super) pam_tx: mpsc::Sender<Msg>,
    /// The file a reload re-reads (`None`: started on the embedded defaults).
    pub(super) config_path: Option<Arc<Path>>,
}

impl StateHandle {
    /// The same actor through its priority lane (the PAM socket's connections use this one).
    pub fn priority(&self) -> StateHandle {
        StateHandle {
            tx: self.pam_tx.clone(),
            pam_tx: self.pam_tx.clone(),
            config_path: self.config_path.clone(),
        }
    }

    /// Authorises and applies a request; returns its answer. `identity`: the NSS lookup of a
    /// PAM request's user, done by the caller so that the actor never waits on NSS.
    pub async fn request(
        &self,
        req: Request,
        peer: Peer,
        identity: Option<UserIdentity>,
    ) -> Response {
        self.account(req, peer, identity, None).await
    }

    /// [`StateHandle::request`] for an account request with the fleet-wide slot its
    /// connection task took early (which the actor adopts or frees).
    pub async fn account(
        &self,
        req: Request,
        peer: Peer,
        identity: Option<UserIdentity>,
        early: Option<crate::fleet::EarlySlot>,
    ) -> Response {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Request {
            req,
            peer,
            identity,
            early,
            reply,
        };
        if self.tx.send(msg).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Authorises a streaming request (play, watch) and opens what it streams.
    pub async fn stream(&self, req: Request, peer: Peer) -> Result<Stream, ErrorReply> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Stream { req, peer, reply })
            .await
            .is_err()
        {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Has the actor count and audit a denial decided elsewhere; returns the denial.
    pub async fn denied(&self, req: Request, peer: Peer, denied: ErrorReply) -> ErrorReply {
        let msg = Msg::Denied {
            req,
            peer,
            denied: denied.clone(),
        };
        let _ = self.tx.send(msg).await;
        denied
    }

    /// Re-reads the config file here, in the caller's task, and has the actor apply it. The
    /// caller must be root (`peer`; `None` for SIGHUP): the actor checks it again.
    pub async fn reload(&self, trigger: ReloadTrigger, peer: Option<Peer>) -> Response {
        let loaded = Box::new(super::reload::load(self.config_path.clone()).await);
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Reload {
            loaded,
            trigger,
            peer,
            reply,
        };
        if self.tx.send(msg).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// The metrics' view of the model; `None` when the actor is gone or the kernel unreadable.
    pub async fn metrics_view(&self) -> Option<crate::metrics::MetricsView> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Metrics(reply)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Stops the actor after the requests already queued.
    pub async fn shutdown(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Forwards another task's events to the actor (on `tx`, its priority lane for news that
/// decides admissions), each wrapped by `wrap`.
pub(super) fn forward<T: Send + 'static>(
    mut events: mpsc::Receiver<T>,
    tx: mpsc::Sender<Msg>,
    wrap: fn(T) -> Msg,
) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if tx.send(wrap(ev)).await.is_err() {
                return;
            }
        }
    });
}

fn shutting_down() -> ErrorReply {
    ErrorReply::new(
        ErrorKind::Internal,
        "enforcerd is shutting down; retry once it is back",
    )
}
