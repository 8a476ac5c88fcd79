//! containerd as the source of `kubectl exec` sessions: its task events
//! (`/tasks/exec-started`, `/tasks/exit`) in the CRI's namespace, and the pod each container
//! belongs to (its CRI labels, from containerd's Containers API: no apiserver needed).
//!
//! **Reconnects lose nothing.** On every (re)connect the task subscribes *first*, then lists the
//! exec processes that are live (Containers.List, then Tasks.ListPids per container: the runc
//! shim names the exec id of every pid that is an exec's process) and reports each as started;
//! an exec starting between the two is reported twice, and the state actor keeps the first. So
//! an exec started while containerd was restarting, or before enforcerd started, is found.
//! Every report goes to the state actor by message; the actor never waits on containerd.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use containerd_client::{
    events::{ContainerCreate, ContainerDelete, TaskExecStarted, TaskExit},
    services::v1::{
        GetContainerRequest, ListContainersRequest, ListPidsRequest, PublishRequest,
        SubscribeRequest, containers_client::ContainersClient, events_client::EventsClient,
        tasks_client::TasksClient,
    },
    tonic::{self, transport::Channel},
};
use prost::Message;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::core::kube::exec::ContainerMeta;

/// The containerd namespace the CRI (the kubelet's containers) lives in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// An exec process containerd runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStart {
    pub meta: ContainerMeta,
    pub exec_id: String,
    /// The exec'd process, as the host sees it.
    pub pid: u32,
    /// Found by the listing at (re)connect rather than reported by an event.
    pub discovered: bool,
}

/// What the task learnt from containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerdEvent {
    ExecStarted(ExecStart),
    /// A process of a container ended (`id` is the exec id, or the container's for its main
    /// process).
    Exited {
        container_id: String,
        id: String,
        pid: u32,
        exit_status: u32,
    },
    /// A kubelet container's pod, learnt when it was created or listed: the actor decides on
    /// a held exec in it without waiting for containerd's report of the exec.
    Container(ContainerMeta),
    /// A container was deleted.
    ContainerGone(String),
    /// Subscribed and the live exec processes listed (`execs` of them).
    Connected {
        execs: usize,
    },
    /// The connection failed or ended; the task reconnects with backoff.
    Error(String),
}

/// Why the connection to containerd failed (shown in `enforcerctl status`).
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error(
        "cannot connect to containerd at {socket}: {source}; is containerd running, and is \
         kubernetes.containerd_socket its gRPC socket?"
    )]
    Connect {
        socket: String,
        source: tonic::transport::Error,
    },
    #[error("containerd {call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("containerd closed the event stream (restarting?)")]
    StreamEnded,
    #[error("containerd never confirmed the event subscription (10 s); is it overloaded? retrying")]
    SubscribeTimeout,
    #[error("containerd {call} did not answer within {secs} s; is it overloaded?")]
    Timeout { call: &'static str, secs: u64 },
}

pub(super) fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> ContainerdError {
    move |status| ContainerdError::Call {
        call: name,
        status: Box::new(status),
    }
}

/// Backoff between reconnects: 0.5 s doubling to 10 s, back to 0.5 s once connected.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Watches containerd at `socket` until the receiver is gone.
pub fn watch_execs(socket: PathBuf, tx: mpsc::Sender<ContainerdEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            let err = match follow(&socket, &tx, &mut backoff).await {
                Ok(()) => return,
                Err(e) => e,
            };
            tracing::warn!(socket = %socket.display(), error = %err, retry_in = ?backoff, "containerd watch failed; reconnecting");
            if tx
                .send(ContainerdEvent::Error(err.to_string()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// A request in the CRI's namespace.
pub(super) fn namespaced<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE),
    );
    req
}

/// One connection: subscribe, list, then follow events until the stream fails. `Ok` only when
/// the actor is gone.
async fn follow(
    socket: &PathBuf,
    tx: &mpsc::Sender<ContainerdEvent>,
    backoff: &mut Duration,
) -> Result<(), ContainerdError> {
    let channel =
        containerd_client::connect(socket)
            .await
            .map_err(|source| ContainerdError::Connect {
                socket: socket.display().to_string(),
                source,
            })?;
    let mut stream = subscribe(&channel).await?;
    let mut pods = PodCache::new(channel.clone());
    let (containers, live) = discover(&channel, &mut pods).await?;
    let execs = live.len();
    let known = containers.into_iter().map(ContainerdEvent::Container);
    for ev in known.chain(live.into_iter().map(ContainerdEvent::ExecStarted)) {
        if tx.send(ev).await.is_err() {
            return Ok(());
        }
    }
    if tx.send(ContainerdEvent::Connected { execs }).await.is_err() {
        return Ok(());
    }
    tracing::info!(socket = %socket.display(), execs, "following containerd's exec events");
    *backoff = BACKOFF_MIN;
    while let Some(env) = stream.message().await.map_err(call("event stream"))? {
        if env.namespace != CRI_NAMESPACE {
            continue; // our own sync events
        }
        let Some(any) = env.event else { continue };
        let event = match env.topic.as_str() {
            "/tasks/exec-started" => {
                let Ok(e) = TaskExecStarted::decode(any.value.as_slice()) else {
                    tracing::warn!(topic = %env.topic, "undecodable containerd event");
                    continue;
                };
                let Some(meta) = pods.meta(&e.container_id).await else {
                    continue;
                };
                ContainerdEvent::ExecStarted(ExecStart {
                    meta,
                    exec_id: e.exec_id,
                    pid: e.pid,
                    discovered: false,
                })
            }
            "/tasks/exit" => {
                let Ok(e) = TaskExit::decode(any.value.as_slice()) else {
                    tracing::warn!(topic = %env.topic, "undecodable containerd event");
                    continue;
                };
                ContainerdEvent::Exited {
                    container_id: e.container_id,
                    id: e.id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                }
            }
            "/containers/create" => {
                let Ok(e) = ContainerCreate::decode(any.value.as_slice()) else {
                    tracing::warn!(topic = %env.topic, "undecodable containerd event");
                    continue;
                };
                let Some(meta) = pods.meta(&e.id).await else {
                    continue;
                };
                ContainerdEvent::Container(meta)
            }
            "/containers/delete" => {
                pods.forget_deleted();
                let Ok(e) = ContainerDelete::decode(any.value.as_slice()) else {
                    continue;
                };
                ContainerdEvent::ContainerGone(e.id)
            }
            _ => continue,
        };
        tracing::debug!(?event, "containerd event");
        if tx.send(event).await.is_err() {
            return Ok(());
        }
    }
    Err(ContainerdError::StreamEnded)
}

/// Where enforcer's own sync events go: not the CRI's namespace (nothing of the kubelet's sees
/// them), a topic nobody else uses.
const SYNC_NAMESPACE: &str = "enforcer-sync";
const SYNC_TOPIC: &str = "/enforcer/sync";

/// Subscribes to the CRI namespace's events, returning once the subscription is live.
///
/// containerd (grpc-go) sends a stream's response headers only with its first event, so the
/// call itself does not tell when the subscription is in place — on a quiet node it does not
/// return at all. It is confirmed by publishing a sync event (in a namespace of our own, which
/// the subscription also matches) until the stream delivers: every event after that reaches us,
/// so the listing that follows misses nothing.
async fn subscribe(
    channel: &Channel,
) -> Result<tonic::Streaming<containerd_client::types::Envelope>, ContainerdError> {
    let mut events = EventsClient::new(channel.clone());
    let req = SubscribeRequest {
        filters: vec![
            format!("namespace=={CRI_NAMESPACE}"),
            format!("namespace=={SYNC_NAMESPACE},topic==\"{SYNC_TOPIC}\""),
        ],
    };
    let mut sub = tokio::spawn(async move { events.subscribe(req).await });
    let mut publisher = EventsClient::new(channel.clone());
    for _ in 0..100 {
        let event = containerd_client::to_any(&ContainerCreate {
            id: "enforcer-sync".into(),
            ..Default::default()
        });
        let mut req = tonic::Request::new(PublishRequest {
            topic: SYNC_TOPIC.into(),
            event: Some(event),
        });
        req.metadata_mut().insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(SYNC_NAMESPACE),
        );
        publisher
            .publish(req)
            .await
            .map_err(call("Events.Publish (subscription sync)"))?;
        if let Ok(joined) = tokio::time::timeout(Duration::from_millis(100), &mut sub).await {
            let reply = joined.map_err(|_| ContainerdError::StreamEnded)?;
            return Ok(reply.map_err(call("Events.Subscribe"))?.into_inner());
        }
    }
    sub.abort();
    Err(ContainerdError::SubscribeTimeout)
}

/// Every kubelet-created container, and every exec process live now in one.
async fn discover(
    channel: &Channel,
    pods: &mut PodCache,
) -> Result<(Vec<ContainerMeta>, Vec<ExecStart>), ContainerdError> {
    let containers = ContainersClient::new(channel.clone())
        .list(namespaced(ListContainersRequest::default()))
        .await
        .map_err(call("Containers.List"))?
        .into_inner()
        .containers;
    let mut tasks = TasksClient::new(channel.clone());
    let (mut metas, mut found) = (Vec::new(), Vec::new());
    for c in containers {
        let Some(meta) = ContainerMeta::from_labels(&c.id, &c.labels) else {
            continue;
        };
        pods.insert(&c.id, Some(meta.clone()));
        metas.push(meta.clone());
        // No task (created, not started, or stopped): nothing runs in it.
        let Ok(pids) = tasks
            .list_pids(namespaced(ListPidsRequest {
                container_id: c.id.clone(),
            }))
            .await
        else {
            continue;
        };
        for p in pids.into_inner().processes {
            let exec_id = p
                .info
                .as_ref()
                .and_then(|i| exec_id_of(&i.type_url, &i.value));
            if let Some(exec_id) = exec_id {
                found.push(ExecStart {
                    meta: meta.clone(),
                    exec_id,
                    pid: p.pid,
                    discovered: true,
                });
            }
        }
    }
    Ok((metas, found))
}

/// The runc shim's `containerd.runc.v1.ProcessDetails`: set on a ListPids entry when the pid
/// is an exec's process.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
}

fn exec_id_of(type_url: &str, value: &[u8]) -> Option<String> {
    if !type_url.ends_with("ProcessDetails") {
        return None;
    }
    ProcessDetails::decode(value)
        .ok()
        .map(|d| d.exec_id)
        .filter(|id| !id.is_empty())
}

/// Container id → its pod (labels never change; a container's entry goes when it is deleted).
struct PodCache {
    containers: ContainersClient<Channel>,
    by_id: HashMap<String, Option<ContainerMeta>>,
}

impl PodCache {
    fn new(channel: Channel) -> Self {
        PodCache {
            containers: ContainersClient::new(channel),
            by_id: HashMap::new(),
        }
    }

    fn insert(&mut self, id: &str, meta: Option<ContainerMeta>) {
        self.by_id.insert(id.to_owned(), meta);
    }

    /// The pod of container `id` (`None`: not a kubelet container, or containerd has no such
    /// container any more).
    async fn meta(&mut self, id: &str) -> Option<ContainerMeta> {
        if let Some(m) = self.by_id.get(id) {
            return m.clone();
        }
        let meta = match self
            .containers
            .get(namespaced(GetContainerRequest { id: id.to_owned() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .and_then(|c| ContainerMeta::from_labels(&c.id, &c.labels)),
            Err(status) => {
                tracing::warn!(container = id, %status, "cannot read the container's pod labels");
                return None;
            }
        };
        self.insert(id, meta.clone());
        meta
    }

    /// A container was deleted: its ids are not reused, but the cache must not grow forever.
    fn forget_deleted(&mut self) {
        if self.by_id.len() > 4096 {
            self.by_id.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_come_from_the_shims_process_details() {
        let value = ProcessDetails {
            exec_id: "e-1".into(),
        }
        .encode_to_vec();
        assert_eq!(
            exec_id_of("containerd.runc.v1.ProcessDetails", &value).as_deref(),
            Some("e-1")
        );
        assert_eq!(exec_id_of("something.Else", &value), None);
        let empty = ProcessDetails::default().encode_to_vec();
        assert_eq!(
            exec_id_of("containerd.runc.v1.ProcessDetails", &empty),
            None
        );
    }
}
