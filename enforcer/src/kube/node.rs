//! The watch on this node's own Node object (list + watch with a field selector on
//! `metadata.name`, resumed from the last resourceVersion, re-listed when that is too old,
//! reconnecting with client-go's backoff). Every answer goes to the state actor as the Node's
//! labels; errors too, so that `enforcerctl status` shows them.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// What the watch learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The Node's labels now; `None`: the apiserver has no Node of that name (deleted, or
    /// `node_name` is wrong).
    Labels(Option<BTreeMap<String, String>>),
    /// The watch failed; it retries with backoff and the last answer stays in force.
    Error(String),
}

/// Watches Node `name` until the receiver is gone.
pub fn watch_node(
    client: kube::Client,
    name: String,
    tx: mpsc::Sender<NodeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Node> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, config).default_backoff().boxed();
        // A (re)list's objects, collected until it is complete.
        let mut listing: Option<Option<Node>> = None;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(watcher::Event::Init) => {
                    listing = Some(None);
                    continue;
                }
                Ok(watcher::Event::InitApply(node)) => {
                    listing = Some(Some(node));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    NodeEvent::Labels(listing.take().flatten().map(labels))
                }
                Ok(watcher::Event::Apply(node)) => NodeEvent::Labels(Some(labels(node))),
                Ok(watcher::Event::Delete(_)) => NodeEvent::Labels(None),
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "Node watch failed; retrying");
                    NodeEvent::Error(e.to_string())
                }
            };
            tracing::debug!(node = %name, ?event, "Node watch");
            if tx.send(event).await.is_err() {
                return;
            }
        }
    })
}

fn labels(node: Node) -> BTreeMap<String, String> {
    node.metadata.labels.unwrap_or_default()
}
