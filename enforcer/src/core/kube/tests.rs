use super::*;
use crate::config::{Config, NamespaceRule};

fn t(s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(s: &str) -> LabelSelector {
    LabelSelector::parse(s).unwrap()
}

fn pod(ns: &str, name: &str) -> PodRef {
    PodRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn present_gate() -> Gate {
    let mut g = Gate::new(t(0));
    g.observe(
        &sel("enforcer.dev/enforce=true"),
        Some(&labels(&[("enforcer.dev/enforce", "true")])),
        t(1),
    );
    g
}

#[test]
fn label_syntax_follows_kubernetes() {
    for ok in [
        "enforcer.dev/enforce=true",
        "enforce",
        "enforce=",
        "a.b-c.example/x_y.z=V-1.2_3",
        "kubernetes.io/hostname=node-1",
    ] {
        assert!(LabelSelector::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "=true",
        "/enforce",
        "Enforcer.dev/enforce",
        "-x=1",
        "x=-1",
        "x=a b",
        "a/b/c=1",
        &format!("{}=1", "k".repeat(64)),
        &format!("k={}", "v".repeat(64)),
    ] {
        assert!(LabelSelector::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(valid_dns_subdomain("node-1.example.com"));
    assert!(!valid_dns_subdomain("node_1"));
    assert!(!valid_dns_label("a.b"));
}

#[test]
fn value_or_bare_key_matching() {
    let l = labels(&[("enforcer.dev/enforce", "true")]);
    assert!(sel("enforcer.dev/enforce=true").matches(&l));
    assert!(!sel("enforcer.dev/enforce=false").matches(&l));
    assert!(sel("enforcer.dev/enforce").matches(&l));
    assert!(!sel("other").matches(&l));
    assert!(sel("k=").matches(&labels(&[("k", "")])));
    assert!(!sel("k=").matches(&labels(&[("k", "x")])));
}

#[test]
fn unknown_and_missing_node_enforce_fail_closed() {
    let g = Gate::new(t(0));
    assert_eq!(g.state, LabelState::Unknown);
    assert!(g.exec_enforced() && g.ssh_enforced(true));
    let mut g = g;
    let change = g.observe(&sel("enforce"), None, t(2)).unwrap();
    assert_eq!(change.to, LabelState::NodeMissing);
    assert!(change.enforcing && g.exec_enforced());
}

#[test]
fn label_changes_are_reported_once_with_their_time() {
    let s = sel("enforcer.dev/enforce=true");
    let on = labels(&[("enforcer.dev/enforce", "true"), ("x", "y")]);
    let off = labels(&[("x", "y")]);
    let mut g = Gate::new(t(0));
    let c = g.observe(&s, Some(&on), t(1)).unwrap();
    assert_eq!(
        (c.from, c.to, c.enforcing),
        (LabelState::Unknown, LabelState::Present, true)
    );
    assert_eq!(g.observe(&s, Some(&on), t(2)), None, "no change, no record");
    assert_eq!(g.since, t(1));
    let c = g.observe(&s, Some(&off), t(3)).unwrap();
    assert_eq!((c.to, c.enforcing), (LabelState::Absent, false));
    assert!(!g.exec_enforced());
    assert_eq!(g.since, t(3));
}

#[test]
fn a_failed_watch_keeps_the_last_answer_until_the_next() {
    let s = sel("enforce");
    let mut g = Gate::new(t(0));
    g.observe(&s, Some(&labels(&[])), t(1));
    g.failed("connection refused".into(), t(5));
    assert_eq!(g.state, LabelState::Absent);
    assert_eq!(g.last_error, Some((t(5), "connection refused".into())));
    g.observe(&s, Some(&labels(&[])), t(6));
    assert_eq!(g.last_error, None);
}

#[test]
fn ssh_follows_the_label_only_with_gate_ssh() {
    let mut g = present_gate();
    assert!(g.ssh_enforced(false) && g.ssh_enforced(true));
    g.observe(&sel("enforcer.dev/enforce=true"), Some(&labels(&[])), t(2));
    assert!(g.ssh_enforced(false), "gate_ssh off: SSH always enforced");
    assert!(
        !g.ssh_enforced(true),
        "gate_ssh on, label absent: not enforced"
    );
}

fn kube(text: &str) -> KubernetesConfig {
    Config::parse(text, "t").unwrap().kubernetes
}

#[test]
fn namespace_overrides_win_key_by_key() {
    let mut c = kube(
        "[kubernetes]\nmax_exec_sessions_per_pod = 3\nmax_exec_sessions_per_namespace = 10\n\
         max_exec_sessions_per_node = 20\n",
    );
    c.namespaces = vec![
        NamespaceRule {
            names: vec!["prod".into()],
            max_exec_sessions_per_pod: Some(1),
            ..Default::default()
        },
        NamespaceRule {
            names: vec!["prod".into(), "dev".into()],
            max_exec_sessions_per_pod: Some(9),
            idle_timeout: Some(Dur::secs(60)),
            ..Default::default()
        },
    ];
    let p = exec_limits(&c, "prod");
    assert_eq!(
        (p.max_per_pod, p.max_per_namespace, p.max_per_node),
        (1, 10, 20)
    );
    assert_eq!(p.idle_timeout, Dur::secs(60));
    assert_eq!(exec_limits(&c, "dev").max_per_pod, 9);
    let other = exec_limits(&c, "other");
    assert_eq!((other.max_per_pod, other.idle_timeout), (3, Dur::secs(900)));
}

#[test]
fn each_limit_refuses_at_its_count_and_zero_is_unlimited() {
    let c = kube(
        "[kubernetes]\nmax_exec_sessions_per_pod = 3\nmax_exec_sessions_per_namespace = 4\n\
         max_exec_sessions_per_node = 5\n",
    );
    let g = present_gate();
    let none = ExecLocks::default();
    let (a, b, z) = (pod("ns", "a"), pod("ns", "b"), pod("other", "z"));
    let decide = |live: &[&PodRef], p: &PodRef| {
        admit_exec(&g, &c, &ExecCensus::of(live.iter().copied()), &none, p)
    };
    assert!(matches!(decide(&[&a, &a], &a), ExecDecision::Admit(_)));
    assert_eq!(
        decide(&[&a, &a, &a], &a),
        ExecDecision::Refuse(ExecRefusal::MaxPerPod { limit: 3 })
    );
    assert_eq!(
        decide(&[&a, &a, &a, &b], &b),
        ExecDecision::Refuse(ExecRefusal::MaxPerNamespace { limit: 4 })
    );
    assert_eq!(
        decide(&[&a, &a, &b, &z, &z], &z),
        ExecDecision::Refuse(ExecRefusal::MaxPerNode { limit: 5 })
    );
    let unlimited = kube("[kubernetes]\n");
    let many = vec![&a; 100];
    let census = ExecCensus::of(many.iter().copied());
    assert!(matches!(
        admit_exec(&g, &unlimited, &census, &none, &a),
        ExecDecision::Admit(_)
    ));
}

#[test]
fn locks_refuse_before_limits_and_name_their_reason() {
    let c = kube("[kubernetes]\nmax_exec_sessions_per_pod = 1\n");
    let g = present_gate();
    let a = pod("ns", "a");
    let census = ExecCensus::of([&a]);
    let mut locks = ExecLocks::default();
    locks.pods.insert(a.clone());
    let d = admit_exec(&g, &c, &census, &locks, &a);
    assert_eq!(d, ExecDecision::Refuse(ExecRefusal::PodLocked));
    locks.namespaces.insert("ns".into());
    let ExecDecision::Refuse(r) = admit_exec(&g, &c, &census, &locks, &a) else {
        panic!("refused")
    };
    assert_eq!(r, ExecRefusal::NamespaceLocked);
    assert_eq!(r.reason().as_str(), "namespace_locked");
    assert_eq!(r.limit(), None);
    assert_eq!(
        r.message(&a, "n1"),
        "enforcer: exec refused: namespace ns is locked"
    );
    // Another pod of an unlocked namespace is unaffected.
    let b = pod("other", "b");
    assert!(matches!(
        admit_exec(&g, &c, &census, &locks, &b),
        ExecDecision::Admit(_)
    ));
}

#[test]
fn without_the_label_nothing_is_refused() {
    let c = kube("[kubernetes]\nmax_exec_sessions_per_node = 1\n");
    let mut g = present_gate();
    g.observe(&sel("enforcer.dev/enforce=true"), Some(&labels(&[])), t(2));
    let a = pod("ns", "a");
    let mut locks = ExecLocks::default();
    locks.namespaces.insert("ns".into());
    let census = ExecCensus::of([&a, &a]);
    assert_eq!(
        admit_exec(&g, &c, &census, &locks, &a),
        ExecDecision::Unenforced
    );
    // Unknown (no answer yet) enforces.
    let fresh = Gate::new(t(0));
    assert_eq!(
        admit_exec(&fresh, &c, &census, &locks, &a),
        ExecDecision::Refuse(ExecRefusal::NamespaceLocked)
    );
}

#[test]
fn refusal_reasons_are_the_documented_names() {
    let names: Vec<_> = [
        ExecRefusal::MaxPerPod { limit: 1 },
        ExecRefusal::MaxPerNamespace { limit: 1 },
        ExecRefusal::MaxPerNode { limit: 1 },
        ExecRefusal::PodLocked,
        ExecRefusal::NamespaceLocked,
    ]
    .iter()
    .map(|r| r.reason().as_str())
    .collect();
    assert_eq!(
        names,
        [
            "max_exec_sessions_per_pod",
            "max_exec_sessions_per_namespace",
            "max_exec_sessions_per_node",
            "pod_locked",
            "namespace_locked"
        ]
    );
}
