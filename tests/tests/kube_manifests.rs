//! `packaging/kubernetes/`: every manifest goes through kubectl's client side (`kubectl create
//! --dry-run=client -o json`: YAML parsing, kind → resource mapping through discovery, decoding
//! into the API types kubectl was built with), with the apiserver stand-in answering discovery.
//! No OpenAPI document can be served here (none is available offline), so kubectl runs with
//! `--validate=false`; the schema check is done instead against the Kubernetes API types of
//! k8s-openapi (v1.33): every object must decode into its type, and every field kubectl printed
//! must survive the typed round trip — a misspelt or misplaced field is dropped by the typed
//! decode, and a wrong type fails it. Then what the deployment must say is checked.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use enforcer::config::{Config, DEFAULT_LABEL};
use enforcer_tests::kube_api::KubeApi;
use k8s_openapi::{
    api::{
        admissionregistration::v1::ValidatingWebhookConfiguration,
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

/// Every object of every manifest, as kubectl printed it.
fn through_kubectl() -> Vec<Value> {
    let kubectl = enforcer_tests::kube::kubectl();
    assert!(
        kubectl.is_file(),
        "{} is missing: `cargo xtask setup` installs Debian's kubectl",
        kubectl.display()
    );
    let api = KubeApi::start("manifests", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut objects = Vec::new();
    for f in &files {
        let out = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "create",
                "--dry-run=client",
                "--validate=false",
                "-o",
                "json",
                "-f",
            ])
            .arg(f)
            .env("HOME", dir.path()) // kubectl's discovery cache
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl refused {}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // One object per document (newer kubectl), or one `List` of them (older).
        for v in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>() {
            let v = v.unwrap();
            match v["kind"].as_str() {
                Some("List") => objects.extend(v["items"].as_array().unwrap().iter().cloned()),
                _ => objects.push(v),
            }
        }
    }
    objects
}

/// Decodes `v` as `T` and checks that every non-empty field of `v` comes back.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", v["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    let mut lost = Vec::new();
    subset(v, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{}: fields unknown to the API types: {lost:?}",
        v["kind"]
    );
    t
}

/// Paths of `a`'s non-empty leaves that `b` lacks or has otherwise.
fn subset(a: &Value, b: &Value, at: String, lost: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), b) => {
            for (k, av) in a {
                let bv = b.get(k).unwrap_or(&Value::Null);
                subset(av, bv, format!("{at}.{k}"), lost);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                subset(av, bv, format!("{at}[{i}]"), lost);
            }
        }
        (Value::Null, _) => {}
        (Value::Array(a), Value::Null) if a.is_empty() => {}
        (a, b) if a == b => {}
        _ => lost.push(at),
    }
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in packaging/kubernetes/"))
}

#[test]
fn manifests_pass_kubectl_and_the_api_types_and_say_what_they_must() {
    let objects = through_kubectl();
    let ns: Namespace = typed(find(&objects, "Namespace"));
    let sa: ServiceAccount = typed(find(&objects, "ServiceAccount"));
    let role: ClusterRole = typed(find(&objects, "ClusterRole"));
    let binding: ClusterRoleBinding = typed(find(&objects, "ClusterRoleBinding"));
    let cm: ConfigMap = typed(find(&objects, "ConfigMap"));
    let ds: DaemonSet = typed(find(&objects, "DaemonSet"));
    let ns_name = ns.metadata.name.clone().unwrap();

    // Scheduled on exactly the nodes the default label selects.
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let (key, value) = DEFAULT_LABEL.split_once('=').unwrap();
    let want = BTreeMap::from([(key.to_owned(), value.to_owned())]);
    assert_eq!(spec.node_selector.as_ref(), Some(&want));
    assert_eq!(spec.host_pid, Some(true));
    assert_eq!(spec.host_network, None, "no host network needed");

    // Not privileged: all capabilities dropped, exactly these added.
    let c = &spec.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut added = caps.add.clone().unwrap();
    added.sort();
    assert_eq!(
        added,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "KILL",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE"
        ]
    );
    // Every mount has its volume, and the host paths are the ones documented.
    let volumes = spec.volumes.as_ref().unwrap();
    for m in c.volume_mounts.as_ref().unwrap() {
        assert!(
            volumes.iter().any(|v| v.name == m.name),
            "mount {} lacks a volume",
            m.name
        );
    }
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    for p in [
        "/sys/fs/bpf",
        "/run/containerd/containerd.sock",
        "/run/enforcer",
        "/var/log/enforcer",
    ] {
        assert!(host_paths.contains(&p), "{p} not mounted: {host_paths:?}");
    }

    // The config it runs on is a valid enforcer config, on, with the label it is scheduled by.
    let args = c.args.as_ref().unwrap();
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let cm_volume = volumes.iter().find(|v| v.config_map.is_some()).unwrap();
    let cm_mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == cm_volume.name);
    assert!(config_path.starts_with(&cm_mount.unwrap().mount_path));
    assert_eq!(
        cm_volume.config_map.as_ref().unwrap().name,
        cm.metadata.name.clone().unwrap()
    );
    let toml = &cm.data.as_ref().unwrap()["enforcer.toml"];
    let config = Config::parse(toml, "packaging/kubernetes/configmap.yaml").unwrap();
    assert!(config.kubernetes.enabled);
    assert_eq!(config.kubernetes.label, DEFAULT_LABEL);
    assert!(
        config.kubernetes.kubeconfig.as_os_str().is_empty(),
        "in-cluster"
    );

    // RBAC: read its Node and pods, nothing else.
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| (r.api_groups.unwrap(), r.resources.unwrap(), r.verbs))
        .collect();
    let read = || vec!["get".to_owned(), "list".into(), "watch".into()];
    assert_eq!(
        rules,
        [
            (vec![String::new()], vec!["nodes".to_owned()], read()),
            (vec![String::new()], vec!["pods".to_owned()], read()),
        ]
    );
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(subject.name, sa.metadata.name.clone().unwrap());
    assert_eq!(subject.namespace.as_deref(), Some(ns_name.as_str()));
    assert_eq!(spec.service_account_name, sa.metadata.name);
    for o in [&ds.metadata, &sa.metadata, &cm.metadata] {
        assert_eq!(o.namespace.as_deref(), Some(ns_name.as_str()));
    }
}

/// The check above must fail when a field is misspelt (kubectl's client side alone would not
/// notice without a schema).
#[test]
fn a_misspelt_field_is_caught() {
    let objects = through_kubectl();
    let mut ds = find(&objects, "DaemonSet").clone();
    let pod = &mut ds["spec"]["template"]["spec"];
    pod["nodeSelecter"] = pod["nodeSelector"].clone();
    let caught = std::panic::catch_unwind(|| typed::<DaemonSet>(&ds));
    assert!(caught.is_err(), "an unknown field passed the check");
}

/// The admission webhook (`webhook.yaml`): what the apiserver sends it (CONNECT of pods/exec
/// and pods/attach, v1 reviews) reaches the Service, the Service the container's port, and the
/// container runs `enforcerd webhook` on a config that can serve, with no privilege at all.
#[test]
fn the_webhook_manifest_wires_the_apiserver_to_a_servable_unprivileged_webhook() {
    let objects = through_kubectl();
    let named = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let vwc: ValidatingWebhookConfiguration =
        typed(named("ValidatingWebhookConfiguration", "enforcer-exec"));
    let svc: Service = typed(named("Service", "enforcer-webhook"));
    let deploy: Deployment = typed(named("Deployment", "enforcer-webhook"));
    let cm: ConfigMap = typed(named("ConfigMap", "enforcer-webhook-config"));

    let hook = &vwc.webhooks.as_ref().unwrap()[0];
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.side_effects, "NoneOnDryRun");
    let rule = &hook.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CONNECT".to_owned()][..])
    );
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["pods/exec".to_owned(), "pods/attach".into()][..])
    );
    // The apiserver → Service → container port → the config's listen port.
    let to = hook.client_config.service.as_ref().unwrap();
    assert_eq!(Some(&to.name), svc.metadata.name.as_ref());
    assert_eq!(to.namespace, svc.metadata.namespace.clone().unwrap());
    assert_eq!(to.path.as_deref(), Some("/validate"));
    let port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].clone();
    assert_eq!(Some(port.port), to.port);
    let pod = deploy.spec.as_ref().unwrap().template.clone();
    let labels = pod.metadata.as_ref().unwrap().labels.clone().unwrap();
    let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let spec = pod.spec.unwrap();
    let c = &spec.containers[0];
    let container_port = c.ports.as_ref().unwrap()[0].clone();
    assert_eq!(
        port.target_port,
        Some(IntOrString::String(container_port.name.clone().unwrap()))
    );
    let toml = &cm.data.as_ref().unwrap()["enforcer.toml"];
    let config = Config::parse(toml, "packaging/kubernetes/webhook.yaml").unwrap();
    config.webhook.servable(&config.fleet).unwrap();
    assert!(
        config
            .webhook
            .listen
            .ends_with(&format!(":{}", container_port.container_port))
    );
    // `enforcerd webhook` on that config, its certificate and key from the TLS Secret.
    let args = c.args.as_ref().unwrap();
    assert_eq!(args[0], "webhook");
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let volumes = spec.volumes.as_ref().unwrap();
    let mount_of = |volume: &str| {
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == volume)
            .unwrap()
            .mount_path
            .clone()
    };
    let cm_volume = volumes.iter().find(|v| v.config_map.is_some()).unwrap();
    assert_eq!(
        cm_volume.config_map.as_ref().unwrap().name,
        cm.metadata.name.clone().unwrap()
    );
    assert!(config_path.starts_with(&mount_of(&cm_volume.name)));
    let tls = volumes
        .iter()
        .find(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("enforcer-webhook-tls")
        })
        .unwrap();
    for f in [&config.webhook.tls_cert, &config.webhook.tls_key] {
        assert!(f.starts_with(mount_of(&tls.name)), "{}", f.display());
    }
    // cert-manager fills the caBundle from that certificate.
    let annotations = vwc.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations["cert-manager.io/inject-ca-from"],
        "enforcer-system/enforcer-webhook-tls"
    );
    // No privilege: not root, nothing added, no API token.
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(
        spec.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(caps.add.is_none());
    assert!(spec.host_pid.is_none() && spec.host_network.is_none());
}
