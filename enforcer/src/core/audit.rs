//! What the audit log can say: every event name and every reason, as types. README's audit
//! table lists exactly these (checked by a test), so the documentation cannot drift from the log.

use serde::Serialize;

/// Declares a snake_case name enum with its serde name, `as_str` and `ALL` from one list.
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &[Self] = &[$(Self::$variant,)+];

            /// The name as written in the audit log.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The `event` of an audit record.
    AuditEvent {
        ConnectionAdmitted = "connection_admitted",
        ConnectionRefused = "connection_refused",
        ConnectionClosed = "connection_closed",
        ConnectionKilled = "connection_killed",
        IdleTimeout = "idle_timeout",
        SessionStarted = "session_started",
        SessionRefused = "session_refused",
        SessionEnded = "session_ended",
        SessionKilled = "session_killed",
        Exec = "exec",
        Exit = "exit",
        ForwardOpened = "forward_opened",
        ForwardClosed = "forward_closed",
        FileTransfer = "file_transfer",
        Lock = "lock",
        Unlock = "unlock",
        UserProcessesKilled = "user_processes_killed",
        RequestDenied = "request_denied",
        /// Aggregate of one uid's further denials within 10 s.
        RequestsDenied = "requests_denied",
        AuditRecordsLost = "audit_records_lost",
        ConfigReloaded = "config_reloaded",
        ConfigReloadFailed = "config_reload_failed",
        /// This node's view of the fleet got older than `fleet.stale_after`: `on_unreachable`
        /// applies from now on (`message` says which).
        FleetViewStale = "fleet_view_stale",
        /// The node's view of the fleet is current again.
        FleetViewCurrent = "fleet_view_current",
        /// `[kubernetes]`: the enforcement label on this node's Node object changed (`node`,
        /// `label`, `enforcing`; `message` says from what to what).
        KubeLabelChanged = "kube_label_changed",
        /// `[kubernetes]` with `[fleet]`: the Kubernetes user behind a `kubectl exec` session
        /// (`kube_user`, `kube_groups`), from the admission webhook's grant; with a `reason`
        /// when it could not be told.
        ExecIdentified = "exec_identified",
        /// `[kubernetes]` with `[fleet]`: the admission webhook allowed an exec or attach on a
        /// pod of this node (`kube_user`, `kube_groups`, `namespace`, `pod`, `container`,
        /// `command`, `tty`, `since`: when) and no exec session here matched its grant before
        /// it expired: an attach, an exec that never started, or one the node saw otherwise.
        ExecGrantUnmatched = "exec_grant_unmatched",
    }
}

names! {
    /// The `reason` of an audit record: why a login or session was refused, a connection
    /// ended, something was killed, a request denied, records lost or a reload failed.
    AuditReason {
        UserLocked = "user_locked",
        MaxConnectionsPerUser = "max_connections_per_user",
        MaxConnectionsPerSource = "max_connections_per_source",
        MaxSessionsPerConnection = "max_sessions_per_connection",
        MaxSessionsPerUser = "max_sessions_per_user",
        /// PAM close_session: the client disconnected.
        Logout = "logout",
        /// The sshd monitor exited without close_session.
        MonitorExited = "monitor_exited",
        /// The sweep found the monitor gone (e.g. it ended while enforcerd was down).
        MonitorGone = "monitor_gone",
        /// `enforcerctl kill connection` ended the connection (`kill session` a `kubectl exec`
        /// session).
        Killed = "killed",
        IdleTimeout = "idle_timeout",
        /// A forward's socket was closed by sshd.
        Closed = "closed",
        /// A forward was still open when its connection ended.
        ConnectionClosed = "connection_closed",
        KilledByOperator = "killed_by_operator",
        KilledAtExecSessionRefused = "killed_at_exec_session_refused",
        KilledAtExecTerminated = "killed_at_exec_terminated",
        KilledAtExecUserLocked = "killed_at_exec_user_locked",
        PermissionDenied = "permission_denied",
        /// A `lock` record (the lock's own reason text is in `message`).
        Locked = "locked",
        /// A session whose leader ended while no daemon ran (found at start).
        EndedWhileEnforcerdWasDown = "ended_while_enforcerd_was_down",
        /// Audit records lost: the filesystem was full.
        DiskFull = "disk_full",
        /// Audit records lost: another write error.
        WriteError = "write_error",
        /// Reload: enforcerd runs on the embedded defaults; there is no file to re-read.
        NoConfigFile = "no_config_file",
        /// Reload: the file could not be read or is not a valid config.
        InvalidConfig = "invalid_config",
        /// Reload: the file changes keys that only a restart applies.
        NeedsRestart = "needs_restart",
        /// A login refused: the user has `fleet.max_connections_per_user` connections across
        /// the fleet.
        FleetMaxConnectionsPerUser = "fleet_max_connections_per_user",
        /// A session ended at its start: the user has `fleet.max_sessions_per_user` sessions
        /// across the fleet.
        FleetMaxSessionsPerUser = "fleet_max_sessions_per_user",
        /// A login refused: this node is locked (`enforcerctl lock node`).
        NodeLocked = "node_locked",
        /// A login refused: the fleet could not be reached (`on_unreachable = "strict"` with a
        /// stale view, or a fleet-wide slot that could not be taken in time).
        FleetUnreachable = "fleet_unreachable",
        /// An exec refused: its pod has `kubernetes.max_exec_sessions_per_pod` exec sessions.
        MaxExecSessionsPerPod = "max_exec_sessions_per_pod",
        /// An exec refused: its namespace has `max_exec_sessions_per_namespace` on this node.
        MaxExecSessionsPerNamespace = "max_exec_sessions_per_namespace",
        /// An exec refused: this node has `max_exec_sessions_per_node` exec sessions.
        MaxExecSessionsPerNode = "max_exec_sessions_per_node",
        /// An exec refused: its pod is locked.
        PodLocked = "pod_locked",
        /// An exec refused: its namespace is locked.
        NamespaceLocked = "namespace_locked",
        /// A `kubectl exec` session ended: its process exited (`exit_code` or `signal`).
        Exited = "exited",
        /// What a `kubectl exec` session left running when its own process ended (setsid'd,
        /// nohup'd or backgrounded: its client is gone) was killed (`kubernetes.cut_orphans`).
        ExecOrphans = "exec_orphans",
        /// `exec_identified`: the admission webhook left no grant that fits the exec session
        /// (it did not pass the webhook).
        ExecGrantNotFound = "exec_grant_not_found",
        /// `exec_identified`: several grants fit the exec session alike; none is picked.
        ExecGrantAmbiguous = "exec_grant_ambiguous",
        /// An exec refused: a process of its pod resumed its held command before enforcerd's
        /// decision, and the kernel killed it when it forked or exec'd.
        ExecHoldBroken = "exec_hold_broken",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_documented_ones() {
        for e in AuditEvent::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        for r in AuditReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    /// The backticked names in the README audit table's row for `field`.
    fn readme_names(field: &str) -> Vec<String> {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Audit log")
            .nth(1)
            .expect("README has an Audit log section");
        let prefix = format!("| `{field}` |");
        let row = section
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("README's audit table has no `{field}` row"));
        let cell = &row[prefix.len()..];
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    fn check(field: &str, names: &[&str]) {
        let documented = readme_names(field);
        for n in names {
            assert!(
                documented.iter().any(|d| d == n),
                "README's `{field}` row lacks `{n}`"
            );
        }
        for d in &documented {
            assert!(
                names.contains(&d.as_str()),
                "README's `{field}` row names `{d}`, which enforcer never logs"
            );
        }
    }

    #[test]
    fn readme_lists_exactly_the_events() {
        let names: Vec<&str> = AuditEvent::ALL.iter().map(|e| e.as_str()).collect();
        check("event", &names);
    }

    #[test]
    fn readme_lists_exactly_the_reasons() {
        let names: Vec<&str> = AuditReason::ALL.iter().map(|r| r.as_str()).collect();
        check("reason", &names);
    }
}
