//! `[kubernetes]`'s I/O: reaching the apiserver and watching this node's Node object, and
//! following containerd's exec processes. What they mean is decided in `core::kube`; the state
//! actor hears from here by message and never waits on the apiserver or containerd.

mod containerd;
mod node;
mod pods;

pub use containerd::{CRI_NAMESPACE, ContainerdError, ContainerdEvent, ExecStart, watch_execs};
pub use node::{NodeEvent, watch_node};
pub use pods::PodsHere;

use crate::config::KubernetesConfig;

/// Why the apiserver cannot be reached as configured (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "kubernetes.kubeconfig {path}: {source}; give a readable kubeconfig, or leave it empty \
         to use the pod's service account (in-cluster)"
    )]
    Kubeconfig {
        path: String,
        source: ::kube::config::KubeconfigError,
    },
    #[error(
        "kubernetes: no in-cluster config ({0}): outside a pod, set kubernetes.kubeconfig to a \
         kubeconfig file"
    )]
    InCluster(#[from] ::kube::config::InClusterError),
    #[error("kubernetes: cannot build the apiserver client: {0}")]
    Client(#[from] ::kube::Error),
}

/// Environment variable naming the Node when `node_name` is empty (the DaemonSet sets it from
/// the pod's `spec.nodeName`: inside a pod the host name is the pod's).
pub const NODE_NAME_ENV: &str = "KUBERNETES_NODE_NAME";

/// This node's Node object name: `node_name`, else `$KUBERNETES_NODE_NAME`, else the host name.
pub fn node_name(config: &KubernetesConfig) -> String {
    let from_env = std::env::var(NODE_NAME_ENV).unwrap_or_default();
    match config.node_name.as_str() {
        "" => crate::host::node_name(&from_env),
        name => name.to_owned(),
    }
}

/// An apiserver client from `kubeconfig` (its current context), or in-cluster when empty.
pub async fn client(config: &KubernetesConfig) -> Result<::kube::Client, KubeError> {
    let path = &config.kubeconfig;
    let cfg = if path.as_os_str().is_empty() {
        ::kube::Config::incluster()?
    } else {
        let wrap = |source| KubeError::Kubeconfig {
            path: path.display().to_string(),
            source,
        };
        let file = ::kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
        ::kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .map_err(wrap)?
    };
    Ok(::kube::Client::try_from(cfg)?)
}
