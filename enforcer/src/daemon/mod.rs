//! enforcerd: wires the BPF actor, the state actor and the control socket together and runs
//! until SIGTERM/SIGINT, then closes its recordings and socket. The kernel programs stay
//! attached (pinned) for the next daemon; `enforcerd --detach` removes them.

mod admission;
mod idle;
mod locking;
mod lockout;
mod persist;
mod recordings;
mod sessions;
mod state;

pub use state::{StateHandle, Stream};

use std::{path::PathBuf, time::Instant};

use time::OffsetDateTime;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    audit::{AuditError, AuditSink},
    bpf::{self, BpfError, BpfSettings},
    config::Config,
    control::{ControlError, Server},
    recording,
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
    // Bind first: a second daemon on the same socket must fail before touching the kernel.
    let server = Server::bind(&config.daemon.socket)?;
    let audit = AuditSink::start(&config.audit.path, config.audit.journald)?;
    let (events_tx, events_rx) = mpsc::channel(EVENT_BACKLOG);
    let settings = BpfSettings {
        ring_buffer_bytes: config.daemon.ring_buffer_bytes,
        max_tracked_tasks: config.daemon.max_tracked_tasks,
        pin_dir: config.daemon.bpf_pin_dir.clone(),
        record: enforcer_common::io::RecordSettings {
            enabled: config.recording.enabled as u32,
            pipe_input: config.recording.exec_stdin as u32,
            mask_echo_off: config.recording.mask_echo_off_input as u32,
            _pad: 0,
        },
        data_ring_bytes: config.recording.buffer_bytes,
    };
    let (bpf, bpf_task, recorder_maps) = bpf::start(settings, events_tx)?;
    info.kernel_continuous = bpf.continuity.is_continuous();
    let recorder = config
        .recording
        .enabled
        .then(|| recording::start(recorder_maps, config.recording.dir.clone()))
        .transpose()
        .map_err(DaemonError::Recorder)?;
    // Loading parsed the kernel's BTF twice (tens of MB in small allocations, all freed now):
    // hand that memory back instead of keeping it resident for the daemon's lifetime.
    // SAFETY: plain libc call.
    unsafe { libc::malloc_trim(0) };
    let auditor_group = config.access.auditor_group.clone();
    let socket = config.daemon.socket.clone();
    let (state, state_task) = state::start(
        config,
        info,
        bpf.clone(),
        audit,
        recorder.clone(),
        events_rx,
    )
    .await;
    tracing::info!(socket = %socket.display(), "enforcerd ready");
    // systemd (Type=notify): logins are only let through PAM once this socket answers.
    notify_service_manager(libsystemd::daemon::NotifyState::Ready);

    tokio::select! {
        _ = server.serve(state.clone(), auditor_group) => {}
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    notify_service_manager(libsystemd::daemon::NotifyState::Stopping);
    drop(server); // stop accepting, remove the socket file
    state.shutdown().await;
    let _ = state_task.await;
    if let Some(r) = recorder {
        // Blocking: flushes and closes every recording.
        tokio::task::spawn_blocking(move || r.shutdown()).await.ok();
    }
    bpf.shutdown().await;
    let _ = bpf_task.await;
    tracing::info!("enforcerd stopped");
    Ok(())
}

/// Tells systemd about a state change; a no-op when not started by systemd.
fn notify_service_manager(state: libsystemd::daemon::NotifyState) {
    // `false`: keep NOTIFY_SOCKET; removing it would mutate the environment under running threads.
    if let Err(e) = libsystemd::daemon::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
