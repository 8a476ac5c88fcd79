//! `[kubernetes]`: `kubectl exec` control on nodes carrying the enforcement label.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Dur;
use crate::core::kube::{LabelSelector, valid_dns_label, valid_dns_subdomain};

/// `[kubernetes]` — off unless `enabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch this node's Node object and control exec sessions while it carries `label`.
    pub enabled: bool,
    /// The Node object's name; empty: `$KUBERNETES_NODE_NAME`, else the host name.
    pub node_name: String,
    /// `key=value` (the label must have that value) or `key` (present with any value).
    pub label: String,
    /// kubeconfig file to reach the apiserver; empty: the in-cluster config (the pod's service
    /// account token and CA, `KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub kubeconfig: PathBuf,
    /// containerd's gRPC socket (pod metadata, exec task events).
    pub containerd_socket: PathBuf,
    /// containerd shim executables whose `kubectl exec` streams are recorded (uprobes on their
    /// Go read/write/ioctl functions; missing files are skipped).
    pub shim_binaries: Vec<PathBuf>,
    /// Locks of pods and namespaces (`enforcerctl lock pod|namespace`), one file each
    /// (`pod.NS.NAME`, `namespace.NS`), kept across restarts.
    pub locks_dir: PathBuf,
    /// SSH enforcement follows the label too: without it, SSH logins are admitted with no
    /// limits or locks applied (still audited). Off: SSH is always enforced.
    pub gate_ssh: bool,
    /// Exec sessions in one pod (0 = unlimited).
    pub max_exec_sessions_per_pod: u32,
    /// Exec sessions in one namespace on this node (0 = unlimited).
    pub max_exec_sessions_per_namespace: u32,
    /// Exec sessions on this node (0 = unlimited).
    pub max_exec_sessions_per_node: u32,
    /// Exec sessions of one Kubernetes user across the fleet, counted by the admission webhook
    /// (`enforcerd webhook`) in etcd (0 = unlimited).
    pub max_exec_sessions_per_user: u32,
    /// An exec session idle this long is ended; "0" = off.
    pub idle_timeout: Dur,
    /// When an exec session's own process ends (its client has the exit status and is gone),
    /// kill what it left running (setsid'd, nohup'd, backgrounded). Off: those run on, still
    /// followed by the kernel but in no session.
    pub cut_orphans: bool,
    /// Per-namespace overrides; for each key the first entry naming the namespace that sets it
    /// wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceRule>,
}

/// `[[kubernetes.namespaces]]`: limits for exec sessions in the namespaces named. There is no
/// per-namespace `max_exec_sessions_per_node`: that limit counts every namespace together.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceRule {
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_exec_sessions_per_pod: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_exec_sessions_per_namespace: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
}

/// The default `[kubernetes] label`.
pub const DEFAULT_LABEL: &str = "enforcer.dev/enforce=true";

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: String::new(),
            label: DEFAULT_LABEL.into(),
            kubeconfig: PathBuf::new(),
            containerd_socket: "/run/containerd/containerd.sock".into(),
            shim_binaries: vec!["/usr/bin/containerd-shim-runc-v2".into()],
            locks_dir: "/etc/enforcer/kube-locks.d".into(),
            gate_ssh: false,
            max_exec_sessions_per_pod: 0,
            max_exec_sessions_per_namespace: 0,
            max_exec_sessions_per_node: 0,
            max_exec_sessions_per_user: 0,
            idle_timeout: Dur::secs(15 * 60),
            cut_orphans: true,
            namespaces: Vec::new(),
        }
    }
}

impl KubernetesConfig {
    /// The label as a selector (validated at load, so this cannot fail on a loaded config).
    pub fn selector(&self) -> LabelSelector {
        LabelSelector::parse(&self.label).unwrap_or_else(|_| {
            LabelSelector::parse(DEFAULT_LABEL).expect("the default label is valid")
        })
    }

    /// Checks the section; `Err((key, message))` names the key at fault and what to do.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("kubernetes.{k}"), m));
        if let Err(m) = LabelSelector::parse(&self.label) {
            return bad("label", m);
        }
        if !self.node_name.is_empty() && !valid_dns_subdomain(&self.node_name) {
            return bad(
                "node_name",
                format!(
                    "{:?} is not a Kubernetes node name (lowercase letters, digits, `-` and `.`, \
                     at most 253); leave it empty for the host name",
                    self.node_name
                ),
            );
        }
        if !self.containerd_socket.is_absolute() {
            return bad(
                "containerd_socket",
                "must be an absolute path, e.g. \"/run/containerd/containerd.sock\"".into(),
            );
        }
        if let Some(p) = self.shim_binaries.iter().find(|p| !p.is_absolute()) {
            return bad(
                "shim_binaries",
                format!(
                    "{p:?} must be an absolute path, e.g. \"/usr/bin/containerd-shim-runc-v2\""
                ),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, rule) in self.namespaces.iter().enumerate() {
            let key = format!("namespaces[{i}].names");
            if rule.names.is_empty() {
                return bad(&key, "names no namespace: give it `names = [\"…\"]`".into());
            }
            for n in &rule.names {
                if !valid_dns_label(n) {
                    return bad(
                        &key,
                        format!(
                            "{n:?} is not a namespace name (lowercase letters, digits and `-`, \
                             at most 63)"
                        ),
                    );
                }
                if !seen.insert(n.as_str()) {
                    return bad(
                        &key,
                        format!("namespace {n:?} is named by an earlier entry already"),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn invalid_key(text: &str) -> (String, String) {
        match Config::parse(text, "t") {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_off_with_the_documented_label() {
        let c = Config::parse("[kubernetes]\nenabled = true\n", "t").unwrap();
        let k = &c.kubernetes;
        assert!(k.enabled && !k.gate_ssh);
        assert_eq!(k.label, "enforcer.dev/enforce=true");
        assert_eq!(k.idle_timeout.to_string(), "15m");
        assert_eq!(k.selector().to_string(), "enforcer.dev/enforce=true");
    }

    #[test]
    fn bad_label_is_named_with_the_rule_broken() {
        let (key, msg) = invalid_key("[kubernetes]\nlabel = \"enforcer.dev/=true\"\n");
        assert_eq!(key, "kubernetes.label");
        assert!(msg.contains("name part"), "{msg}");
        let (key, _) = invalid_key("[kubernetes]\nlabel = \"a=b c\"\n");
        assert_eq!(key, "kubernetes.label");
        // A bare key means "present with any value".
        let c = Config::parse("[kubernetes]\nlabel = \"example.com/enforce\"\n", "t").unwrap();
        assert_eq!(c.kubernetes.selector().value, None);
    }

    #[test]
    fn unknown_key_in_the_section_names_key_and_line() {
        let err = Config::parse("[kubernetes]\nenabled = true\ngate_sshd = true\n", "k.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gate_sshd") && err.contains("line 3"), "{err}");
        let err = Config::parse(
            "[[kubernetes.namespaces]]\nnames = [\"a\"]\nmax_exec_sessions_per_node = 1\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_exec_sessions_per_node"), "{err}");
    }

    #[test]
    fn namespace_overrides_are_checked() {
        let ok = "[[kubernetes.namespaces]]\nnames = [\"prod\", \"kube-system\"]\n\
                  max_exec_sessions_per_pod = 1\nidle_timeout = \"5m\"\n";
        let c = Config::parse(ok, "t").unwrap();
        assert_eq!(
            c.kubernetes.namespaces[0].max_exec_sessions_per_pod,
            Some(1)
        );
        let (key, _) = invalid_key("[[kubernetes.namespaces]]\nmax_exec_sessions_per_pod = 1\n");
        assert_eq!(key, "kubernetes.namespaces[0].names");
        let (key, msg) = invalid_key(
            "[[kubernetes.namespaces]]\nnames = [\"a\"]\n[[kubernetes.namespaces]]\nnames = [\"a\"]\n",
        );
        assert_eq!(key, "kubernetes.namespaces[1].names");
        assert!(msg.contains("earlier"), "{msg}");
        let (_, msg) = invalid_key("[[kubernetes.namespaces]]\nnames = [\"Prod\"]\n");
        assert!(msg.contains("\"Prod\""), "{msg}");
    }

    #[test]
    fn node_name_and_socket_are_checked() {
        let (key, _) = invalid_key("[kubernetes]\nnode_name = \"Node_1\"\n");
        assert_eq!(key, "kubernetes.node_name");
        let (key, _) = invalid_key("[kubernetes]\ncontainerd_socket = \"containerd.sock\"\n");
        assert_eq!(key, "kubernetes.containerd_socket");
    }
}
