//! Pods and namespaces locked for `kubectl exec` (`enforcerctl lock pod NS/NAME`, `lock
//! namespace NS`): their names, and the file names they are kept under in
//! `[kubernetes] locks_dir` (a namespace is a DNS label and has no dot, so `pod.NS.NAME`
//! splits at the first dot after `pod.`).

use super::{ExecLocks, PodRef, valid_dns_label, valid_dns_subdomain};

/// What an exec lock covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExecLockTarget {
    Namespace(String),
    Pod(PodRef),
}

fn bad_namespace(ns: &str) -> String {
    format!(
        "{ns:?} is not a namespace name (a DNS label: 1-63 of a-z 0-9 -, not starting or ending with -)"
    )
}

impl ExecLockTarget {
    /// `NS/NAME` as `enforcerctl lock pod` takes it.
    pub fn pod(arg: &str) -> Result<Self, String> {
        let (ns, name) = arg
            .split_once('/')
            .ok_or_else(|| format!("{arg:?}: name the pod as NAMESPACE/NAME"))?;
        if !valid_dns_label(ns) {
            return Err(bad_namespace(ns));
        }
        if !valid_dns_subdomain(name) || name.is_empty() {
            return Err(format!(
                "{name:?} is not a pod name (a DNS subdomain: dot-separated labels of a-z 0-9 -)"
            ));
        }
        Ok(ExecLockTarget::Pod(PodRef {
            namespace: ns.into(),
            name: name.into(),
        }))
    }

    pub fn namespace(arg: &str) -> Result<Self, String> {
        if !valid_dns_label(arg) {
            return Err(bad_namespace(arg));
        }
        Ok(ExecLockTarget::Namespace(arg.into()))
    }

    /// `pod` or `namespace`.
    pub fn kind(&self) -> &'static str {
        match self {
            ExecLockTarget::Namespace(_) => "namespace",
            ExecLockTarget::Pod(_) => "pod",
        }
    }

    /// The name as the operator wrote it (`NS/NAME` or `NS`).
    pub fn name(&self) -> String {
        match self {
            ExecLockTarget::Namespace(ns) => ns.clone(),
            ExecLockTarget::Pod(p) => p.to_string(),
        }
    }

    /// The lock file's name.
    pub fn file_name(&self) -> String {
        match self {
            ExecLockTarget::Namespace(ns) => format!("namespace.{ns}"),
            ExecLockTarget::Pod(p) => format!("pod.{}.{}", p.namespace, p.name),
        }
    }

    /// The target a lock file's name stands for.
    pub fn from_file_name(file: &str) -> Result<Self, String> {
        if let Some(ns) = file.strip_prefix("namespace.") {
            return Self::namespace(ns);
        }
        if let Some((ns, name)) = file.strip_prefix("pod.").and_then(|r| r.split_once('.')) {
            return Self::pod(&format!("{ns}/{name}"));
        }
        Err(format!(
            "{file:?} is not an exec lock file name (namespace.NS or pod.NS.NAME)"
        ))
    }

    /// Whether an exec in `pod` is covered.
    pub fn covers(&self, pod: &PodRef) -> bool {
        match self {
            ExecLockTarget::Namespace(ns) => *ns == pod.namespace,
            ExecLockTarget::Pod(p) => p == pod,
        }
    }
}

impl ExecLocks {
    /// The locks in force from their targets.
    pub fn of(targets: impl IntoIterator<Item = ExecLockTarget>) -> Self {
        let mut l = ExecLocks::default();
        for t in targets {
            match t {
                ExecLockTarget::Namespace(ns) => {
                    l.namespaces.insert(ns);
                }
                ExecLockTarget::Pod(p) => {
                    l.pods.insert(p);
                }
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_file_names() {
        for t in [
            ExecLockTarget::pod("team-a/web-7d9.x").unwrap(),
            ExecLockTarget::namespace("team-a").unwrap(),
        ] {
            assert_eq!(ExecLockTarget::from_file_name(&t.file_name()).unwrap(), t);
        }
        let p = ExecLockTarget::pod("team-a/web.v2").unwrap();
        assert_eq!(p.file_name(), "pod.team-a.web.v2");
        assert_eq!((p.kind(), p.name().as_str()), ("pod", "team-a/web.v2"));
    }

    #[test]
    fn bad_names_are_refused_with_what_to_write() {
        assert!(
            ExecLockTarget::pod("web")
                .unwrap_err()
                .contains("NAMESPACE/NAME")
        );
        assert!(
            ExecLockTarget::pod("Team/web")
                .unwrap_err()
                .contains("namespace")
        );
        assert!(ExecLockTarget::pod("ns/../x").is_err());
        assert!(ExecLockTarget::pod("ns/a/b").is_err());
        assert!(ExecLockTarget::namespace("a.b").is_err());
        assert!(ExecLockTarget::namespace("").is_err());
        assert!(ExecLockTarget::from_file_name("alice").is_err());
        assert!(ExecLockTarget::from_file_name("pod.nodot").is_err());
    }

    #[test]
    fn locks_cover_their_pods() {
        let pod = PodRef {
            namespace: "team-a".into(),
            name: "web".into(),
        };
        let other = PodRef {
            namespace: "team-b".into(),
            name: "web".into(),
        };
        let ns = ExecLockTarget::namespace("team-a").unwrap();
        assert!(ns.covers(&pod) && !ns.covers(&other));
        let p = ExecLockTarget::pod("team-b/web").unwrap();
        assert!(p.covers(&other) && !p.covers(&pod));
        let l = ExecLocks::of([ns, p]);
        assert!(l.namespaces.contains("team-a") && l.pods.contains(&other));
    }
}
