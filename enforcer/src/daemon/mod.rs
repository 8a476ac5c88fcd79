//! enforcerd: wires the BPF actor, the state actor and the control socket together and runs
//! until SIGTERM/SIGINT (SIGHUP reloads the config), then closes its recordings and socket.
//! The kernel programs stay attached (pinned) for the next daemon; `enforcerd --detach`
//! removes them.

mod admission;
mod denials;
mod fleet;
mod fleet_sessions;
mod fleet_slots;
mod forwards;
mod handle;
mod idle;
mod kube;
mod kube_control;
mod kube_exec;
mod kube_hold;
mod kube_identity;
mod kube_record;
mod kube_views;
mod locking;
mod lockout;
mod persist;
mod recordings;
mod reload;
mod restore;
mod sessions;
mod state;
mod status;
mod transfers;

pub use recordings::list as list_recordings;
pub use state::{StateHandle, Stream};

use std::{path::PathBuf, sync::Arc, time::Instant};

use time::OffsetDateTime;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    audit::{AuditError, AuditSink},
    bpf::{self, BpfError, BpfSettings},
    config::Config,
    control::{
        ControlError, ControlSettings, ControlStats, Ctx, Lane, Server, SharedSettings, Slots,
    },
    core::{reload::ReloadTrigger, transfer::FileTransfers},
    recording::{self, RecordingIndex},
};

/// Queue between the BPF actor and the state actor; overflow is counted, never waited on.
const EVENT_BACKLOG: usize = 16384;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "enforcerd must run as root (it loads BPF programs and answers PAM for sshd); try `sudo enforcerd`"
    )]
    NotRoot,
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the session recorder: {0}")]
    Recorder(std::io::Error),
    #[error("cannot start the daemon's core runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot start the recording uploader: {0}; check daemon.state_dir")]
    Uploader(std::io::Error),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
}

/// Facts about this daemon instance shown by `enforcerctl status`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub version: &'static str,
    pub pid: u32,
    pub started_at: OffsetDateTime,
    pub started: Instant,
    pub kernel: String,
    pub config_path: Option<PathBuf>,
    /// The kernel programs stayed attached since the previous daemon (see `bpf::start`).
    pub kernel_continuous: bool,
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let mut info = DaemonInfo {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started_at: OffsetDateTime::now_utc(),
        started: Instant::now(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
        config_path,
        kernel_continuous: false,
    };
    raise_fd_limit();
    tune_malloc();
    // A kubeconfig (or in-cluster config) that cannot be used stops the start before anything
    // else is touched.
    let kube_client = match config.kubernetes.enabled {
        true => Some(crate::kube::client(&config.kubernetes).await?),
        false => None,
    };
    // Bind first: a second daemon on the same socket must fail before touching the kernel.
    let server = Server::bind(&config.daemon.socket, Lane::Public)?;
    let pam_server = Server::bind(&config.daemon.pam_socket, Lane::Pam)?;
    let metrics_server = config
        .metrics
        .listen
        .map(crate::metrics::Server::bind)
        .transpose()?;
    let audit = AuditSink::start(&config.audit.path, config.audit.journald)?;
    let (events_tx, events_rx) = mpsc::channel(EVENT_BACKLOG);
    let settings = BpfSettings {
        ring_buffer_bytes: config.daemon.ring_buffer_bytes,
        max_tracked_tasks: config.daemon.max_tracked_tasks,
        pin_dir: config.daemon.bpf_pin_dir.clone(),
        record: enforcer_common::io::RecordSettings {
            enabled: config.recording.enabled as u32,
            // Transfer sessions' requests come from the client: parsed, recorded only with
            // exec_stdin.
            pipe_input: (config.recording.exec_stdin
                || config.recording.file_transfers != FileTransfers::Off)
                as u32,
            mask_echo_off: config.recording.mask_echo_off_input as u32,
            _pad: 0,
        },
        data_ring_bytes: config.recording.buffer_bytes,
        io_hooks: config.daemon.io_hooks,
        sshd_binaries: config.daemon.sshd_binaries.clone(),
        shim_binaries: match config.kubernetes.enabled {
            true => config.kubernetes.shim_binaries.clone(),
            false => Vec::new(),
        },
    };
    // The actors and the PAM socket run on a runtime of their own: however busy the public
    // socket's connections keep the main runtime's workers, a login decision waits only for
    // the OS to schedule this thread.
    let core = CoreRuntime::one_thread("enforcerd-core")?;
    // etcd and containerd are on the paths of login and exec decisions (a fleet slot, an
    // exec's report): their clients run here, at the core's priority, not on the public
    // socket's lowered workers — a flood of public connections (or a busy machine, where
    // nice 10 loses to every other process) would otherwise slow or time out those decisions.
    let edge = CoreRuntime::one_thread("enforcerd-edge")?;
    let (bpf, bpf_task, recorder_maps) = {
        let _on_core = core.enter();
        bpf::start(settings, events_tx)?
    };
    info.kernel_continuous = bpf.continuity.is_continuous();
    let recordings = RecordingIndex::scan(&config.recording.dir);
    let recorder = config
        .recording
        .enabled
        .then(|| {
            recording::start(
                recorder_maps,
                config.recording.dir.clone(),
                recordings.clone(),
                audit.clone(),
            )
        })
        .transpose()
        .map_err(DaemonError::Recorder)?;
    // Shipping recordings to the store: a task of its own on this (main) runtime, reading the
    // recording files; neither the recorder nor the actors ever wait for it.
    let store_cfg = &config.recording.store;
    let (store, store_stats, uploader) = if store_cfg.url.is_empty() {
        (None, None, None)
    } else {
        let store = crate::store::Store::connect(store_cfg).await?;
        let uploader = config
            .recording
            .enabled
            .then(|| {
                crate::store::start(
                    store.clone(),
                    store_cfg,
                    config.recording.dir.clone(),
                    &config.daemon.state_dir,
                    recordings.clone(),
                )
            })
            .transpose()
            .map_err(DaemonError::Uploader)?;
        tracing::info!(url = %store_cfg.url, node = %store.node, "recordings are shipped to the store");
        let (stats, task) = uploader.unzip();
        (Some(store), stats, task)
    };
    // Loading parsed the kernel's BTF twice (tens of MB in small allocations, all freed now):
    // hand that memory back instead of keeping it resident for the daemon's lifetime.
    // SAFETY: plain libc call.
    unsafe { libc::malloc_trim(0) };
    let settings = SharedSettings::new(ControlSettings::new(
        &config.control,
        &config.access.auditor_group,
    ));
    let (socket, pam_socket) = (
        config.daemon.socket.clone(),
        config.daemon.pam_socket.clone(),
    );
    let control = Arc::new(ControlStats::default());
    let audit_tally = audit.tally.clone();
    let audit_path = config.audit.path.clone();
    // The fleet's etcd tasks run on the edge runtime; the actor hears from them on its
    // priority lane and never waits on them.
    let (fleet, fleet_events) = if config.fleet.enabled() {
        let _on_edge = edge.enter();
        let (tx, rx) = mpsc::channel(1024);
        let handle = crate::fleet::FleetHandle::start(
            crate::fleet::FleetStart {
                config: config.fleet.clone(),
                node: crate::fleet::node_name(&config.fleet),
                version: info.version.to_owned(),
                local_copy: config.daemon.state_dir.join("fleet-locks.json"),
                decisions: Some(core.handle().clone()),
                containerd: config
                    .kubernetes
                    .enabled
                    .then(|| config.kubernetes.containerd_socket.clone()),
            },
            tx,
        )?;
        tracing::info!(node = handle.node(), endpoints = ?config.fleet.etcd_endpoints, "fleet on");
        (Some(handle), Some(rx))
    } else {
        (None, None)
    };
    // The Node watch, on this (main) runtime: a label change may take seconds anyway.
    let (kube, kube_task) = if let Some(client) = kube_client {
        let node = crate::kube::node_name(&config.kubernetes);
        let (tx, rx) = mpsc::channel(64);
        let task = crate::kube::watch_node(client, node.clone(), tx);
        tracing::info!(node = %node, label = %config.kubernetes.label, "watching the Node's enforcement label");
        (Some((node, rx)), Some(task))
    } else {
        (None, None)
    };
    // containerd's exec processes, on the edge runtime like the fleet's tasks.
    let (containerd, containerd_task) = if config.kubernetes.enabled {
        let _on_edge = edge.enter();
        let (tx, rx) = mpsc::channel(256);
        let socket = config.kubernetes.containerd_socket.clone();
        tracing::info!(socket = %socket.display(), "following containerd's exec processes");
        (Some(rx), Some(crate::kube::watch_execs(socket, tx)))
    } else {
        (None, None)
    };
    let fleet_audit = audit.clone();
    let parts = state::Parts {
        fleet: fleet.clone(),
        fleet_events,
        kube,
        containerd,
        info,
        bpf: bpf.clone(),
        audit,
        recorder: recorder.clone(),
        store: store_stats,
        recordings: recordings.clone(),
        control: control.clone(),
        control_settings: settings.clone(),
    };
    let (state, state_task) = core
        .spawn(state::start(config, parts, events_rx))
        .await
        .expect("the state actor starts");
    let metrics = crate::metrics::Metrics::new(audit_tally);
    let ctx = Ctx::new(
        state.clone(),
        settings,
        Slots::new(control),
        recordings,
        metrics.clone(),
        audit_path,
        store,
        fleet.map(|f| (f, fleet_audit)),
    );
    let pam_task = {
        let ctx = ctx.clone();
        core.spawn(async move { pam_server.serve(ctx).await })
    };
    tracing::info!(socket = %socket.display(), pam_socket = %pam_socket.display(), "enforcerd ready");
    // systemd (Type=notify): logins are only let through PAM once this socket answers.
    notify_service_manager(libsystemd::daemon::NotifyState::Ready);

    // A task, not polled here: this thread is not one of the (lower-priority) workers.
    let public_task = {
        let ctx = ctx.clone();
        tokio::spawn(async move { server.serve(ctx).await })
    };
    // On the main runtime with the public socket: scrapes never compete with a login decision.
    let metrics_task = metrics_server.map(|server| {
        if let Some(addr) = server.local_addr() {
            tracing::info!(%addr, "serving metrics on /metrics");
        }
        let state = state.clone();
        let fetch = move || {
            let state = state.clone();
            async move { state.metrics_view().await }
        };
        tokio::spawn(server.serve(metrics, fetch))
    });
    loop {
        tokio::select! {
            _ = sigterm.recv() => break tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => break tracing::info!("SIGINT: shutting down"),
            // Applied (and audited, failure included) by the state actor; a task, so that a
            // reload never delays the shutdown signals.
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let state = state.clone();
                tokio::spawn(async move { state.reload(ReloadTrigger::Sighup, None).await });
            }
        }
    }
    notify_service_manager(libsystemd::daemon::NotifyState::Stopping);
    // Stop accepting; dropping the servers removes the socket files.
    // Every confirmed part is saved: the next daemon goes on from there.
    for task in [public_task, pam_task]
        .into_iter()
        .chain(metrics_task)
        .chain(uploader)
        .chain(kube_task)
        .chain(containerd_task)
    {
        task.abort();
        let _ = task.await;
    }
    state.shutdown().await;
    let _ = state_task.await;
    if let Some(r) = recorder {
        // Blocking: flushes and closes every recording.
        tokio::task::spawn_blocking(move || r.shutdown()).await.ok();
    }
    bpf.shutdown().await;
    let _ = bpf_task.await;
    drop(core);
    drop(edge);
    tracing::info!("enforcerd stopped");
    Ok(())
}

/// The core (or edge) runtime, shut down without waiting however `run` ends: dropping a
/// runtime inside another runtime's task panics, and that panic hid the error that made the
/// start fail.
struct CoreRuntime(Option<tokio::runtime::Runtime>);

impl CoreRuntime {
    /// A runtime with one worker thread named `name`, at the daemon's own priority.
    fn one_thread(name: &str) -> Result<Self, DaemonError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(DaemonError::Runtime)?;
        Ok(CoreRuntime(Some(rt)))
    }
}

impl std::ops::Deref for CoreRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for CoreRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// How much less CPU priority the public socket's threads get than the core runtime (actors,
/// PAM socket): under a flood of public connections a login decision still gets the CPU first.
/// Lowering needs no capability (raising the core's would need CAP_SYS_NICE).
const PUBLIC_NICE: i32 = 10;

/// `on_thread_start` of the runtime that serves the public control socket.
pub fn public_thread() {
    // SAFETY: plain syscalls on the calling thread (who = its tid).
    let ok = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, PUBLIC_NICE) == 0
    };
    if !ok {
        tracing::warn!(error = %std::io::Error::last_os_error(), "public control threads keep the default priority");
    }
}

/// Keeps short-lived large buffers (a `recordings` answer, a request body) from staying
/// resident: few malloc arenas (blocking-pool threads would otherwise each get their own), and a
/// fixed mmap threshold (glibc raises it after each large free, so later large buffers would
/// come from, and stay in, the heap).
fn tune_malloc() {
    // SAFETY: plain libc calls, before other threads allocate much.
    let ok = unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) == 1
    };
    if !ok {
        tracing::warn!("cannot tune malloc; memory of large answers may stay resident");
    }
}

/// Raises the soft fd limit to the hard one: every control connection and open recording holds
/// an fd, and the usual soft limit (1024) is within reach of a single local user.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-files limit already at its maximum"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Tells systemd about a state change; a no-op when not started by systemd.
fn notify_service_manager(state: libsystemd::daemon::NotifyState) {
    // `false`: keep NOTIFY_SOCKET; removing it would mutate the environment under running threads.
    if let Err(e) = libsystemd::daemon::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::CoreRuntime;

    #[test]
    fn the_core_runtime_can_be_dropped_inside_the_main_one() {
        let main = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        main.block_on(async {
            let core = CoreRuntime(Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .build()
                    .unwrap(),
            ));
            // As when `run` returns an error after building it: no panic.
            drop(core);
        });
    }
}
