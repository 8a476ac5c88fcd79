//! The apiserver's discovery documents for the kinds `packaging/kubernetes/` uses, so that
//! kubectl (which maps every kind to its resource through discovery before anything else) works
//! against the stand-in in `kube_api`.

use serde_json::{Value, json};

/// (group/version path, group, version, [(resource, kind, namespaced)]).
const GROUPS: &[(&str, &str, &str, &[(&str, &str, bool)])] = &[
    (
        "/api/v1",
        "",
        "v1",
        &[
            ("nodes", "Node", false),
            ("pods", "Pod", true),
            ("namespaces", "Namespace", false),
            ("configmaps", "ConfigMap", true),
            ("serviceaccounts", "ServiceAccount", true),
            ("services", "Service", true),
        ],
    ),
    (
        "/apis/apps/v1",
        "apps",
        "v1",
        &[
            ("daemonsets", "DaemonSet", true),
            ("deployments", "Deployment", true),
        ],
    ),
    (
        "/apis/admissionregistration.k8s.io/v1",
        "admissionregistration.k8s.io",
        "v1",
        &[(
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
        )],
    ),
    (
        "/apis/rbac.authorization.k8s.io/v1",
        "rbac.authorization.k8s.io",
        "v1",
        &[
            ("clusterroles", "ClusterRole", false),
            ("clusterrolebindings", "ClusterRoleBinding", false),
        ],
    ),
];

/// The discovery document at `path`, if it is one.
pub fn document(path: &str) -> Option<Value> {
    match path {
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        "/apis" => {
            let groups: Vec<Value> = GROUPS
                .iter()
                .filter(|(_, g, _, _)| !g.is_empty())
                .map(|(_, g, v, _)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        p => GROUPS
            .iter()
            .find(|(gp, ..)| *gp == p)
            .map(|(_, g, v, rs)| {
                let resources: Vec<Value> = rs
                    .iter()
                    .map(|(name, kind, namespaced)| {
                        json!({"name": name, "singularName": "", "namespaced": namespaced,
                           "kind": kind, "verbs": ["create", "delete", "get", "list", "patch",
                           "update", "watch"]})
                    })
                    .collect();
                let gv = if g.is_empty() {
                    v.to_string()
                } else {
                    format!("{g}/{v}")
                };
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                   "resources": resources})
            }),
    }
}
