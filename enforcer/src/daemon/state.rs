//! The state actor: the single owner of the daemon's model. Control requests and kernel events
//! are applied here one at a time, which is what makes admission decisions atomic.

use enforcer_proto::{ErrorKind, ErrorReply, Reply, Request, Response, StatusReport};
use time::format_description::well_known::Rfc3339;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::DaemonInfo;
use crate::{
    bpf::{BpfHandle, KernelEvent},
    config::Config,
    control::Peer,
};

enum Msg {
    Request { req: Request, peer: Peer, reply: oneshot::Sender<Response> },
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable access to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Msg>,
}

impl StateHandle {
    /// Applies an (already authorised) request and returns its answer.
    pub async fn request(&self, req: Request, peer: Peer) -> Response {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Request { req, peer, reply }).await.is_err() {
            return Err(shutting_down());
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Stops the actor after the requests already queued.
    pub async fn shutdown(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn shutting_down() -> ErrorReply {
    ErrorReply::new(ErrorKind::Internal, "enforcerd is shutting down; retry once it is back")
}

struct State {
    config: Config,
    info: DaemonInfo,
    bpf: BpfHandle,
}

/// Spawns the state actor.
pub fn start(
    config: Config,
    info: DaemonInfo,
    bpf: BpfHandle,
    events: mpsc::Receiver<KernelEvent>,
) -> (StateHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let state = State { config, info, bpf };
    (StateHandle { tx }, tokio::spawn(state.run(rx, events)))
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut events: mpsc::Receiver<KernelEvent>) {
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Request { req, peer, reply }) => {
                        let resp = self.handle(req, &peer).await;
                        let _ = reply.send(resp);
                    }
                    Some(Msg::Shutdown(ack)) => {
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                },
                Some(ev) = events.recv() => self.on_kernel_event(ev),
            }
        }
    }

    async fn handle(&mut self, req: Request, _peer: &Peer) -> Response {
        match req {
            Request::Status => self.status().await.map(|s| Reply::Status(Box::new(s))),
        }
    }

    fn on_kernel_event(&mut self, ev: KernelEvent) {
        tracing::trace!(?ev, "kernel event");
    }

    async fn status(&self) -> Result<StatusReport, ErrorReply> {
        let snap = self.bpf.snapshot().await.map_err(|e| {
            tracing::error!(error = %e, "BPF snapshot failed");
            ErrorReply::new(ErrorKind::Internal, format!("{e}"))
        })?;
        Ok(StatusReport {
            version: self.info.version.into(),
            pid: self.info.pid,
            started_at: self.info.started_at.format(&Rfc3339).unwrap_or_default(),
            uptime_secs: self.info.started.elapsed().as_secs(),
            kernel: self.info.kernel.clone(),
            config_path: self.info.config_path.as_ref().map(|p| p.display().to_string()),
            socket: self.config.daemon.socket.display().to_string(),
            programs: snap.programs,
            maps: snap.maps,
            features: snap.features,
            events: snap.events,
            dropped: snap.dropped,
        })
    }
}
