//! `kubectl exec` sessions as operators see them: `sessions` entries and the `status` line.

use enforcer_proto::{ConnectionInfo, ConnectionKind, KubeExecInfo, SessionInfo};

use super::state::{ProcessView, State};
use crate::{
    control::{Peer, Role},
    core::{kube::exec::ExecSession, rfc3339},
};

impl State {
    /// Exec sessions as `sessions` lists them: one entry each, kind `kube_exec` (root and
    /// auditors only: an exec has no user on the node).
    pub(super) fn kube_exec_list(
        &self,
        peer: &Peer,
        processes: &ProcessView,
    ) -> Vec<ConnectionInfo> {
        if peer.role == Role::User {
            return Vec::new();
        }
        let node = self.node();
        self.kube_exec
            .sessions
            .iter()
            .map(|s| exec_info(s, &node, processes))
            .collect()
    }

    /// The `containerd` part of the `kubernetes` feature line.
    pub(super) fn containerd_detail(&self) -> String {
        let e = &self.kube_exec;
        let conn = match (&e.connected, &e.last_error) {
            (true, _) => "containerd connected".to_owned(),
            (false, Some((at, err))) => {
                format!("containerd not connected since {}: {err}", rfc3339(*at))
            }
            (false, None) => "containerd connecting".to_owned(),
        };
        format!("{conn}; {} exec sessions", e.sessions.len())
    }
}

/// One exec session as a `sessions` entry.
fn exec_info(s: &ExecSession, node: &str, processes: &ProcessView) -> ConnectionInfo {
    let mut pids = processes
        .get(&(s.kernel_id, s.pid as u64))
        .cloned()
        .unwrap_or_default();
    pids.sort_unstable();
    let start = rfc3339(s.started_at);
    ConnectionInfo {
        id: s.kernel_id,
        kind: ConnectionKind::KubeExec,
        kube: Some(KubeExecInfo {
            node: node.to_owned(),
            namespace: s.meta.pod.namespace.clone(),
            pod: s.meta.pod.name.clone(),
            pod_uid: s.meta.pod_uid.clone(),
            container: s.meta.container.clone(),
            container_id: s.meta.container_id.clone(),
            exec_id: s.exec_id.clone(),
            command: s.command.clone(),
            tty: s.tty.is_some(),
            start: start.clone(),
            pid: s.pid,
        }),
        user: String::new(),
        uid: None,
        state: "open".into(),
        client: None,
        server: None,
        rhost: None,
        service: "kubectl-exec".into(),
        monitor_pid: 0,
        since: start.clone(),
        auth: None,
        sessions: vec![SessionInfo {
            id: s.id,
            kind: ExecSession::KIND.into(),
            pty: s.tty.is_some(),
            tty: s.tty.clone(),
            command: Some(s.command.clone()),
            leader_pid: s.pid,
            started: start,
            last_activity: rfc3339(s.last_activity),
            processes: pids.len() as u32,
            pids,
            commands: s.commands,
        }],
        forwards: Vec::new(),
        idle_since: None,
        idle_cut_at: None,
    }
}
