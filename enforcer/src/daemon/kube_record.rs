//! Recording `kubectl exec` sessions: their stdio, as the containerd shim moves it, is filed in
//! the kernel under the session's identity (`ENF_EXEC_CHANS`), and the recorder writes it like
//! an SSH session's. A pty's bytes from before containerd reported the exec were kept by the
//! recorder under connection 0 and are taken into the recording (see `io::exec_channel` in
//! enforcer-ebpf).

use enforcer_common::io::{IO_PTY, IoKey};

use super::state::State;

/// How long an ended exec session's pipes stay filed. Dropped on the actor's next 250 ms tick
/// after that: within 1.5 s of the end, before the recorder closes the recording (2 s after
/// it hears of the end), so what the shim reads meanwhile is still written to it.
const CHANNEL_GRACE: std::time::Duration = std::time::Duration::from_millis(1250);
use crate::{
    host,
    recording::{StartRecording, cast::KubeMeta},
};

impl State {
    /// Files the exec's stdio under its kernel identity (again after its first exec: runc's
    /// init may not have set them up when containerd reported it).
    pub(super) async fn claim_exec_channels(&mut self, id: u64) {
        let Some(s) = self.kube_exec.sessions.get(id) else {
            return;
        };
        let (pid, kernel_id, known) = (s.pid, s.kernel_id, s.channels.clone());
        let new = self.file_exec_channels(id, kernel_id, pid, &known).await;
        if let Some(s) = self.kube_exec.sessions.get_mut(id) {
            s.channels.extend(new);
        }
    }

    /// Files the stdio of process `pid` not in `known` under kernel identity `kernel_id`
    /// (session `id`, for logs); returns what was filed. Done before a held exec is let go
    /// too: what its command writes first is then recorded (the recorder keeps it until the
    /// recording starts), rather than lost while the session is being set up.
    pub(super) async fn file_exec_channels(
        &mut self,
        id: u64,
        kernel_id: u64,
        pid: u32,
        known: &[u64],
    ) -> Vec<u64> {
        let new: Vec<u64> = host::exec_channels(pid)
            .into_iter()
            .filter(|o| !known.contains(o))
            .collect();
        if new.is_empty() {
            return new;
        }
        if let Err(e) = self.bpf.set_exec_channels(kernel_id, new.clone()).await {
            tracing::warn!(session = id, error = %e, "cannot tell the kernel the exec's channels; it is not recorded");
            return Vec::new();
        }
        new
    }

    /// Starts the recording of exec session `id`, once its command is known. The Kubernetes
    /// user behind it, when the fleet is still being asked, is written into its header later
    /// (`identified`): its bytes never wait for the answer.
    pub(super) fn start_exec_recording(&self, id: u64) {
        let (Some(recorder), Some(s)) = (&self.recorder, self.kube_exec.sessions.get(id)) else {
            return;
        };
        if s.channels.is_empty() {
            tracing::info!(session = id, "the exec has no pty or pipe to record");
            return;
        }
        let mut keys: Vec<IoKey> = s
            .channels
            .iter()
            .map(|&object| IoKey {
                conn_id: s.kernel_id,
                object,
            })
            .collect();
        keys.extend(
            s.channels
                .iter()
                .filter(|o| *o & IO_PTY != 0)
                .map(|&object| IoKey { conn_id: 0, object }),
        );
        recorder.start_recording(StartRecording {
            session_id: id,
            conn_id: s.kernel_id,
            keys,
            user: String::new(),
            uid: None,
            kind: "kube_exec".into(),
            tty: s.tty.clone(),
            command: Some(s.command.clone()),
            client: None,
            started_at: s.started_at,
            started_boot_ns: s.start_ns,
            env: super::recordings::recorded_env(s.pid),
            record_stdin: self.config.recording.exec_stdin,
            transfer: None,
            resume: None,
            kube: Some(KubeMeta {
                node: self.node(),
                namespace: s.meta.pod.namespace.clone(),
                pod: s.meta.pod.name.clone(),
                pod_uid: s.meta.pod_uid.clone(),
                container: s.meta.container.clone(),
                container_id: s.meta.container_id.clone(),
                exec_id: s.exec_id.clone(),
                kube_user: s.identity.as_ref().map(|i| i.user.clone()),
                kube_groups: s
                    .identity
                    .as_ref()
                    .map(|i| i.groups.clone())
                    .unwrap_or_default(),
                kube_groups_truncated: false,
            }),
            identity_pending: s.identifying,
        });
    }

    /// The session ended: its recording is closed (after the last bytes drain). Its pipes stay
    /// filed in the kernel for [`CHANNEL_GRACE`]: what the command wrote just before it exited
    /// may still be in one the shim has not read (a busy node delays the shim's goroutine past
    /// the exit's report; a quick exec's whole output was lost so). Its ptys are dropped now:
    /// what the shim reads from one later goes to no session (connection 0), which the ended
    /// recording still takes in until it closes; and the pty's index may be the next exec's
    /// at once, whose bytes must not be filed under this session.
    pub(super) async fn release_exec_channels(
        &mut self,
        id: u64,
        kernel_id: u64,
        channels: Vec<u64>,
    ) {
        self.end_recording(id);
        let (ptys, pipes): (Vec<u64>, Vec<u64>) =
            channels.into_iter().partition(|o| o & IO_PTY != 0);
        if !ptys.is_empty() {
            self.remove_ended_channels(kernel_id, ptys).await;
        }
        if !pipes.is_empty() {
            self.kube_exec.ended_channels.push_back((
                tokio::time::Instant::now() + CHANNEL_GRACE,
                kernel_id,
                pipes,
            ));
        }
    }

    /// Stops filing the pipes of sessions that ended [`CHANNEL_GRACE`] ago (all of them when
    /// enforcerd stops: nothing would drop them until the next start).
    pub(super) async fn drop_ended_exec_channels(&mut self, all: bool) {
        let now = tokio::time::Instant::now();
        while self
            .kube_exec
            .ended_channels
            .front()
            .is_some_and(|(at, _, _)| all || *at <= now)
        {
            let Some((_, kernel_id, channels)) = self.kube_exec.ended_channels.pop_front() else {
                break;
            };
            self.remove_ended_channels(kernel_id, channels).await;
        }
    }

    /// Removes `channels` of ended session `kernel_id` from the kernel; one another session
    /// has filed since stays (the kernel removes an entry only while it is still this one's).
    async fn remove_ended_channels(&mut self, kernel_id: u64, channels: Vec<u64>) {
        if let Err(e) = self.bpf.remove_exec_channels(kernel_id, channels).await {
            tracing::warn!(conn = kernel_id, error = %e, "cannot remove an ended exec's channels from the kernel");
        }
    }

    /// Every live exec has been listed (and claimed its channels): channels still filed for
    /// sessions that ended while no enforcerd ran are dropped, so their ptys, reused by new
    /// execs, are unclaimed again.
    pub(super) async fn forget_stale_exec_channels(&mut self) {
        let keep: Vec<u64> = self
            .kube_exec
            .sessions
            .iter()
            .flat_map(|s| s.channels.iter().copied())
            .collect();
        match self.bpf.retain_exec_channels(keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(channels = n, "exec channels of ended sessions dropped"),
            Err(e) => tracing::warn!(error = %e, "cannot read the kernel's exec channels"),
        }
    }
}
