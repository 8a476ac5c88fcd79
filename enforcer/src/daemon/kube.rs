//! The state actor's side of `[kubernetes]`: the enforcement label on this node's Node object
//! as the watch reports it (`crate::kube`), audited when it changes and shown in status, and
//! what it gates. The decisions are `core::kube`'s.

use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::{AuditEvent, AuditRecord},
    core::{
        kube::{Gate, GateChange, LabelSelector},
        rfc3339,
    },
    kube::NodeEvent,
};

/// What the actor knows of this node's label.
pub(super) struct KubeState {
    pub node: String,
    pub selector: LabelSelector,
    pub gate: Gate,
}

impl KubeState {
    pub fn new(node: String, selector: LabelSelector, now: OffsetDateTime) -> Self {
        KubeState {
            node,
            selector,
            gate: Gate::new(now),
        }
    }
}

impl State {
    /// News from the Node watch.
    pub(super) fn on_kube(&mut self, ev: NodeEvent) {
        let Some(k) = &mut self.kube else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let change = match ev {
            NodeEvent::Labels(labels) => k.gate.observe(&k.selector, labels.as_ref(), now),
            NodeEvent::Error(e) => {
                k.gate.failed(e, now);
                None
            }
        };
        if let Some(change) = change {
            self.audit_label_change(change, now);
        }
    }

    fn audit_label_change(&mut self, change: GateChange, now: OffsetDateTime) {
        let Some(k) = &self.kube else {
            return;
        };
        tracing::info!(
            node = %k.node,
            label = %k.selector,
            from = change.from.as_str(),
            to = change.to.as_str(),
            enforcing = change.enforcing,
            "enforcement label changed"
        );
        let mut rec = AuditRecord::new(AuditEvent::KubeLabelChanged, now);
        rec.node = Some(k.node.clone());
        rec.label = Some(k.selector.to_string());
        rec.enforcing = Some(change.enforcing);
        rec.message = Some(format!(
            "label {}: {} → {}",
            k.selector,
            change.from.as_str(),
            change.to.as_str()
        ));
        self.audit.record(rec);
    }

    /// Whether SSH logins are controlled now (always, unless `[kubernetes] gate_ssh` and the
    /// label is absent).
    pub(super) fn ssh_enforced(&self) -> bool {
        self.kube
            .as_ref()
            .is_none_or(|k| k.gate.ssh_enforced(self.config.kubernetes.gate_ssh))
    }

    /// The `kubernetes` feature line of `enforcerctl status`.
    pub(super) fn kube_feature(&self) -> Option<enforcer_proto::FeatureProbe> {
        let k = self.kube.as_ref()?;
        let g = &k.gate;
        let error = match &g.last_error {
            Some((at, e)) => format!("last error at {}: {e}", rfc3339(*at)),
            None => "no error".into(),
        };
        let ssh = if self.config.kubernetes.gate_ssh {
            if g.ssh_enforced(true) {
                "SSH enforced (gate_ssh)"
            } else {
                "SSH not enforced (gate_ssh)"
            }
        } else {
            "SSH always enforced"
        };
        Some(enforcer_proto::FeatureProbe {
            name: "kubernetes".into(),
            supported: g.exec_enforced(),
            detail: format!(
                "node {}: label {} {} since {}: {}; {ssh}; {error}; {}",
                k.node,
                k.selector,
                g.state.as_str(),
                rfc3339(g.since),
                if g.exec_enforced() {
                    "enforcing"
                } else {
                    "not enforcing"
                },
                self.containerd_detail(),
            ),
        })
    }
}
