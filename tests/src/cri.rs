//! The kubelet's side of the CRI, for tests: the calls it makes to run a hostNetwork pod,
//! start a container in it and ask for an exec stream — RunPodSandbox → CreateContainer →
//! StartContainer → Exec — with the labels, metadata and cgroup parent the kubelet (cgroupfs
//! driver) would give. Synchronous: each call runs on the client's own tokio runtime.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ExecRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    VersionRequest, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{IMAGE, register_cgroup_parent};

/// Label keys the kubelet puts on sandboxes and containers.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A running pod sandbox, as the kubelet knows it.
#[derive(Clone, Debug)]
pub struct Pod {
    /// The sandbox id containerd gave.
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The config it was run with (CreateContainer sends it again, as the kubelet does).
    pub config: PodSandboxConfig,
}

/// A CRI client over containerd's unix socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    cgroups: Arc<Mutex<Vec<String>>>,
}

/// A fresh pod uid (UUID-shaped, unique per process and call).
pub fn pod_uid() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        (t >> 48) & 0xfff,
        (t >> 36) & 0xfff,
        t & 0xffff_ffff_ffff
    )
}

fn pod_labels(name: &str, namespace: &str, uid: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_POD_NAME.into(), name.into()),
        (LABEL_POD_NAMESPACE.into(), namespace.into()),
        (LABEL_POD_UID.into(), uid.into()),
    ])
}

/// The pid in a CRI verbose `info` map (`{"info": "{… \"pid\": N …}"}`).
fn info_pid(info: &HashMap<String, String>) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")?.as_u64().map(|p| p as u32)
}

impl CriClient {
    /// Connects to the CRI at `socket` and checks it answers Version.
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let path = socket.to_path_buf();
        let client = rt.block_on(async {
            // The URI is a placeholder: every connection goes to the unix socket.
            let channel = Endpoint::from_static("http://[::]:0")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
            let mut client = RuntimeServiceClient::new(channel);
            client
                .version(VersionRequest::default())
                .await
                .map_err(|e| format!("CRI Version: {e}"))?;
            Ok::<_, String>(client)
        })?;
        Ok(CriClient {
            rt,
            client,
            cgroups: Arc::default(),
        })
    }

    /// Pod cgroup parents handed out are recorded in `registry` (the containerd's, which
    /// removes them on drop).
    pub fn with_cgroup_registry(mut self, registry: Arc<Mutex<Vec<String>>>) -> Self {
        self.cgroups = registry;
        self
    }

    /// Runs `f` on the client, panicking with `what` and the gRPC status on error.
    fn call<T, F>(&self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.try_call(f)
            .unwrap_or_else(|s| panic!("CRI {what}: {} ({:?})", s.message(), s.code()))
    }

    fn try_call<T, F>(
        &self,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // Clones share the connection; each call gets its own handle as tonic wants.
        self.rt
            .block_on(f(self.client.clone()))
            .map(tonic::Response::into_inner)
    }

    /// RunPodSandbox: a hostNetwork pod `namespace/name` with a fresh uid, in the BestEffort
    /// cgroup parent `/kubepods/besteffort/pod<uid>`.
    pub fn run_pod(&self, name: &str, namespace: &str) -> Pod {
        let uid = pod_uid();
        let cgroup_parent = register_cgroup_parent(&self.cgroups, &uid);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            // hostNetwork: the kubelet leaves the hostname to the node's (setting one fails).
            hostname: String::new(),
            labels: pod_labels(name, namespace, &uid),
            annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self
            .call("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(req).await
            })
            .pod_sandbox_id;
        Pod {
            id,
            name: name.into(),
            namespace: namespace.into(),
            uid,
            config,
        }
    }

    /// CreateContainer + StartContainer: container `name` of `pod` running `command` from
    /// the busybox image; returns the container id.
    pub fn start_container(&self, pod: &Pod, name: &str, command: &[&str]) -> String {
        self.start_container_with(pod, name, command, false)
    }

    /// As [`CriClient::start_container`], with `tty: true` when `tty` (the shim then holds the
    /// container's own pty master, as for `kubectl run -it`).
    pub fn start_container_with(
        &self,
        pod: &Pod,
        name: &str,
        command: &[&str],
        tty: bool,
    ) -> String {
        let mut labels = pod_labels(&pod.name, &pod.namespace, &pod.uid);
        labels.insert(LABEL_CONTAINER_NAME.into(), name.into());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
            labels,
            annotations: HashMap::from([(
                "io.kubernetes.container.restartCount".into(),
                "0".into(),
            )]),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self
            .call("CreateContainer", |mut c| async move {
                c.create_container(req).await
            })
            .container_id;
        let req = StartContainerRequest {
            container_id: id.clone(),
        };
        self.call("StartContainer", |mut c| async move {
            c.start_container(req).await
        });
        id
    }

    /// Exec: the streaming URL for `cmd` in `container_id` (stdout always; stderr unless
    /// `tty`, which merges it, as the CRI requires).
    pub fn exec(&self, container_id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
        let req = ExecRequest {
            container_id: container_id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        self.call("Exec", |mut c| async move { c.exec(req).await })
            .url
    }

    /// Exec as the kubelet passes a client's `PodExecOptions` on: the streaming URL, or why
    /// containerd refused.
    pub fn try_exec(
        &self,
        container_id: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<String, String> {
        let req = ExecRequest {
            container_id: container_id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout,
            stderr,
        };
        self.try_call(|mut c| async move { c.exec(req).await })
            .map(|r| r.url)
            .map_err(|s| format!("{} ({:?})", s.message(), s.code()))
    }

    /// The host pid of a container's main process (ContainerStatus, verbose).
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let req = ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: true,
        };
        let info = self
            .call("ContainerStatus", |mut c| async move {
                c.container_status(req).await
            })
            .info;
        info_pid(&info).unwrap_or_else(|| panic!("no pid in ContainerStatus info: {info:?}"))
    }

    /// The host pid of the pod's sandbox ("pause") process (PodSandboxStatus, verbose).
    pub fn sandbox_pid(&self, pod_id: &str) -> u32 {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let info = self
            .call("PodSandboxStatus", |mut c| async move {
                c.pod_sandbox_status(req).await
            })
            .info;
        info_pid(&info).unwrap_or_else(|| panic!("no pid in PodSandboxStatus info: {info:?}"))
    }

    /// Ids of every pod sandbox containerd knows.
    pub fn list_pods(&self) -> Vec<String> {
        self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest::default()).await
        })
        .items
        .into_iter()
        .map(|s| s.id)
        .collect()
    }

    /// StopPodSandbox (kills its containers) then RemovePodSandbox, as the kubelet does when a
    /// pod is deleted.
    pub fn remove_pod(&self, pod_id: &str) {
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(stop).await
        });
        let rm = RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(rm).await
        });
    }

    /// Best effort, for cleanup: stops and removes every pod, ignoring errors.
    pub fn remove_all_pods(&self) {
        let Ok(list) = self.try_call(|mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest::default()).await
        }) else {
            return;
        };
        for id in list.items.into_iter().map(|s| s.id) {
            let stop = StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            let _ = self.try_call(|mut c| async move { c.stop_pod_sandbox(stop).await });
            let rm = RemovePodSandboxRequest { pod_sandbox_id: id };
            let _ = self.try_call(|mut c| async move { c.remove_pod_sandbox(rm).await });
        }
    }
}

/// Host network, the pod's own pid and ipc namespaces: what the kubelet sends for a
/// `hostNetwork: true` pod.
fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
