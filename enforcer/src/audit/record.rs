//! One audit event. Flat on purpose: log pipelines index top-level keys.

use serde::Serialize;
use time::OffsetDateTime;

use enforcer_proto::ConfigChange;

use crate::core::{
    audit::{AuditEvent, AuditReason},
    conn::Connection,
    kube::exec::ExecSession,
    reload::ReloadTrigger,
    rfc3339,
    session::{ExitStatus, Session},
    transfer::{Direction, FileTransfer, TransferProtocol},
};

/// An audit event; absent fields are omitted from the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub event: AuditEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rhost: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_ca_fingerprint: Option<String>,
    /// The principals (user names) the certificate is valid for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cert_principals: Vec<String>,
    /// Machine-readable cause (refusals, closes, locks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<AuditReason>,
    /// What the user was told, or the human text of the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Who asked (for operator actions): uid, name, pid of the enforcerctl process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The control request concerned (for denials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// How many events one aggregate record stands for (`requests_denied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Session id (as in `enforcerctl sessions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u64>,
    /// `shell`, `exec`, `subsystem`, `starting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
    /// The command of an exec session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The process concerned (exec, exit; the leader for sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Executed file, as the kernel resolved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// argv was longer than the kernel copies (1024 bytes) and is cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Exit code of a process that exited normally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended a process, e.g. "SIGKILL".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The limit that refused a session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Processes signalled by a kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Programs executed in a session (session_ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<u64>,
    /// How long the connection had been idle (idle_timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<f64>,
    /// Records that could not be written (audit_records_lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// When the loss began (audit_records_lost; `time` is when it ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Where a forward goes: host:port or socket path sshd connected to, or the listener it
    /// accepted on (forward_opened, forward_closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Bytes from the client through a forward, and back (forward_closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// A file a transfer read or wrote (file_transfer): as the client named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// sftp, scp or rsync (file_transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TransferProtocol>,
    /// download (read here) or upload (written here) (file_transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// File bytes moved (file_transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The file's size as the protocol says it, or the end of the furthest range moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// The session ended before this file was closed, or the stream could not be followed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// The config file a reload read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// What asked for a reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<ReloadTrigger>,
    /// Config keys a reload changed (`config_reloaded`), or would have changed but only a
    /// restart can (`config_reload_failed`, reason `needs_restart`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<ConfigChange>>,
    /// `[kubernetes]`: the Node (`kube_label_changed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `[kubernetes] label` as configured (`kube_label_changed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether enforcement applies from now on (`kube_label_changed`; `connection_admitted`
    /// with `gate_ssh`: false when the login was admitted without limits or locks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcing: Option<bool>,
    /// `kubectl exec` sessions: the pod's namespace, name and uid, the container's name and
    /// containerd id, and containerd's exec id (with `node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// The Kubernetes user behind a `kubectl exec` session, and their groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_groups: Option<Vec<String>>,
    /// The AdmissionReview (its uid) an exec grant came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<String>,
}

impl AuditRecord {
    /// A record of `event` at `now` with no other field set.
    pub fn new(event: AuditEvent, now: OffsetDateTime) -> Self {
        AuditRecord {
            time: rfc3339(now),
            event,
            user: None,
            uid: None,
            conn_id: None,
            client_addr: None,
            client_port: None,
            server_addr: None,
            server_port: None,
            rhost: None,
            service: None,
            monitor_pid: None,
            auth_method: None,
            key_type: None,
            key_fingerprint: None,
            cert_key_id: None,
            cert_serial: None,
            cert_ca_fingerprint: None,
            cert_principals: Vec::new(),
            reason: None,
            message: None,
            duration_secs: None,
            by_uid: None,
            by_user: None,
            by_pid: None,
            expires: None,
            request: None,
            count: None,
            session_id: None,
            kind: None,
            tty: None,
            command: None,
            pid: None,
            ppid: None,
            filename: None,
            argv: None,
            argv_truncated: false,
            cwd: None,
            exit_code: None,
            signal: None,
            limit: None,
            processes: None,
            commands: None,
            idle_secs: None,
            lost: None,
            since: None,
            target: None,
            bytes_in: None,
            bytes_out: None,
            path: None,
            protocol: None,
            direction: None,
            bytes: None,
            file_size: None,
            incomplete: false,
            config_path: None,
            trigger: None,
            changes: None,
            node: None,
            label: None,
            enforcing: None,
            namespace: None,
            pod: None,
            pod_uid: None,
            container: None,
            container_id: None,
            exec_id: None,
            kube_user: None,
            kube_groups: None,
            review: None,
        }
    }

    /// A `kubectl exec` session's identity on `node`: pod, container, exec, kind `kube_exec`,
    /// terminal, command; `session_id` the one `enforcerctl sessions` shows, `conn_id` its
    /// processes' kernel identity.
    pub fn with_exec(mut self, s: &ExecSession, node: &str) -> Self {
        self.session_id = Some(s.id);
        self.conn_id = Some(s.kernel_id);
        self.kind = Some(ExecSession::KIND.to_owned());
        self.tty = s.tty.clone();
        self.command = Some(s.command.clone());
        self.node = Some(node.to_owned());
        self.namespace = Some(s.meta.pod.namespace.clone());
        self.pod = Some(s.meta.pod.name.clone());
        self.pod_uid = Some(s.meta.pod_uid.clone());
        self.container = Some(s.meta.container.clone());
        self.container_id = Some(s.meta.container_id.clone());
        self.exec_id = Some(s.exec_id.clone());
        if let Some(i) = &s.identity {
            self.kube_user = Some(i.user.clone());
            self.kube_groups = Some(i.groups.clone());
            self.review = Some(i.review.clone());
        }
        self
    }

    /// Everything known about a connection.
    pub fn with_conn(mut self, c: &Connection) -> Self {
        self.user = Some(c.user.clone());
        self.uid = c.uid;
        self.conn_id = Some(c.id);
        self.client_addr = c.client.map(|a| a.ip().to_string());
        self.client_port = c.client.map(|a| a.port());
        self.server_addr = c.server.map(|a| a.ip().to_string());
        self.server_port = c.server.map(|a| a.port());
        self.rhost = c.rhost.clone();
        self.service = Some(c.service.clone());
        self.monitor_pid = Some(c.monitor.pid);
        if let Some(a) = &c.auth {
            self.auth_method = Some(a.method.clone());
            self.key_type = a.key_type.clone();
            self.key_fingerprint = a.key_fingerprint.clone();
            self.cert_key_id = a.cert_key_id.clone();
            self.cert_serial = a.cert_serial;
            self.cert_ca_fingerprint = a.cert_ca_fingerprint.clone();
            self.cert_principals = a.cert_principals.clone();
        }
        self
    }

    /// A session's identity (kind, terminal, command, leader).
    pub fn with_session(mut self, s: &Session) -> Self {
        self.session_id = Some(s.id);
        self.kind = Some(s.kind.as_str().to_owned());
        self.tty = s.tty.clone();
        self.command = s.command.clone();
        self
    }

    /// One file of a transfer.
    pub fn file_transfer(&mut self, f: &FileTransfer) {
        self.event = AuditEvent::FileTransfer;
        self.path = Some(f.path.clone());
        self.protocol = Some(f.protocol);
        self.direction = Some(f.direction);
        self.bytes = Some(f.bytes);
        self.file_size = f.size;
        self.incomplete = f.incomplete;
        if f.path == "?" {
            self.message = Some(
                "the transfer's bytes could not all be followed (data lost, or not the protocol \
                 its program speaks): files from that point on are unknown"
                    .into(),
            );
        }
    }

    /// How a process ended.
    pub fn exit_status(mut self, status: ExitStatus) -> Self {
        match status {
            ExitStatus::Code(c) => self.exit_code = Some(c),
            ExitStatus::Signal(_) => self.signal = status.signal_name(),
        }
        self
    }

    pub fn reason(mut self, reason: AuditReason, message: Option<String>) -> Self {
        self.reason = Some(reason);
        self.message = message;
        self
    }

    /// Who asked for an operator action.
    pub fn by(mut self, uid: u32, pid: Option<i32>) -> Self {
        self.by_uid = Some(uid);
        self.by_user = crate::host::user_name(uid);
        self.by_pid = pid;
        self
    }

    /// One-line human summary (journald MESSAGE).
    pub fn summary(&self) -> String {
        let mut s = self.event.as_str().to_owned();
        if let Some(u) = &self.user {
            s.push_str(&format!(" user={u}"));
        }
        if let Some(id) = self.conn_id {
            s.push_str(&format!(" conn={id}"));
        }
        if let Some(a) = &self.client_addr {
            s.push_str(&format!(" from={a}"));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(" reason={r}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conn::tests::conn;

    #[test]
    fn json_has_stable_names_and_omits_unknowns() {
        let mut c = conn("alice", 42, "10.0.0.1:5555");
        c.id = 7;
        let r = AuditRecord::new(AuditEvent::ConnectionRefused, OffsetDateTime::UNIX_EPOCH)
            .with_conn(&c)
            .reason(AuditReason::MaxConnectionsPerUser, Some("too many".into()));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["event"], "connection_refused");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["conn_id"], 7);
        assert_eq!(v["client_addr"], "10.0.0.1");
        assert_eq!(v["client_port"], 5555);
        assert_eq!(v["server_port"], 22);
        assert_eq!(v["monitor_pid"], 42);
        assert_eq!(v["reason"], "max_connections_per_user");
        assert!(v.get("key_fingerprint").is_none());
        assert!(v.get("duration_secs").is_none());
        assert_eq!(
            r.summary(),
            "connection_refused user=alice conn=7 from=10.0.0.1 reason=max_connections_per_user"
        );
    }

    #[test]
    fn certificate_principals_are_audited_with_the_connection() {
        let mut c = conn("alice", 42, "10.0.0.1:5555");
        c.auth = Some(enforcer_proto::AuthIdentity {
            method: "publickey".into(),
            cert_key_id: Some("alice@corp".into()),
            cert_principals: vec!["alice".into(), "deploy".into()],
            ..Default::default()
        });
        let r = AuditRecord::new(AuditEvent::ConnectionAdmitted, OffsetDateTime::UNIX_EPOCH)
            .with_conn(&c);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cert_principals"], serde_json::json!(["alice", "deploy"]));
        // A plain key login has none, and the field is left out.
        c.auth = None;
        let r = AuditRecord::new(AuditEvent::ConnectionAdmitted, OffsetDateTime::UNIX_EPOCH)
            .with_conn(&c);
        assert!(
            serde_json::to_value(&r)
                .unwrap()
                .get("cert_principals")
                .is_none()
        );
    }

    /// README's audit table documents exactly the fields a record can have.
    #[test]
    fn readme_documents_every_field_and_no_other() {
        let source = include_str!("record.rs");
        let body = source
            .split("pub struct AuditRecord {")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .expect("the struct in record.rs");
        let fields: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert!(fields.len() > 40, "parsed {fields:?}");
        let readme = include_str!("../../../README.md");
        // The first field table after the section's heading (other sections have their own).
        let table = readme
            .split("### Audit log")
            .nth(1)
            .and_then(|section| section.split("| field | meaning |").nth(1))
            .expect("README's Audit log section has its field table");
        let documented: Vec<&str> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default();
                first.split('`').skip(1).step_by(2)
            })
            .collect();
        for f in &fields {
            assert!(documented.contains(f), "README's audit table lacks `{f}`");
        }
        for d in &documented {
            assert!(
                fields.contains(d),
                "README documents `{d}`, which no record has"
            );
        }
    }
}
