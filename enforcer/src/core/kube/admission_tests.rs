use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionReview},
};
use serde_json::{Value, json};
use time::macros::datetime;

use super::*;
use crate::core::fleet::LockValue;

const NOW: OffsetDateTime = datetime!(2026-12-03 12:00 UTC);

/// A review as the apiserver sends it for `kubectl exec -it -c main web -- sh`.
fn review() -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "exec",
            "requestKind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "requestSubResource": "exec",
            "name": "web",
            "namespace": "team-a",
            "operation": "CONNECT",
            "userInfo": {
                "username": "alice@example.com",
                "uid": "014fbff9a07c",
                "groups": ["dev", "system:authenticated"]
            },
            "object": {
                "kind": "PodExecOptions", "apiVersion": "v1",
                "stdin": true, "stdout": true, "tty": true,
                "container": "main", "command": ["sh", "-c", "id"]
            },
            "oldObject": null,
            "dryRun": false,
            "options": null
        }
    })
}

fn request(v: Value) -> AdmissionRequest<DynamicObject> {
    let r: AdmissionReview<DynamicObject> = serde_json::from_value(v).unwrap();
    r.try_into().unwrap()
}

#[test]
fn an_exec_review_becomes_its_grant() {
    let g = grant_of(&request(review()), NOW).unwrap();
    assert_eq!(
        g,
        ExecGrant {
            review: "705ab4f5-6393-11e8-b7cc-42010a800002".into(),
            subresource: Subresource::Exec,
            user: "alice@example.com".into(),
            user_uid: "014fbff9a07c".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            namespace: "team-a".into(),
            pod: "web".into(),
            container: Some("main".into()),
            command: vec!["sh".into(), "-c".into(), "id".into()],
            tty: true,
            stdin: true,
            time: "2026-12-03T12:00:00Z".into(),
            matched: None,
            groups_truncated: false,
            command_truncated: false,
        }
    );
    assert_eq!(
        lock_targets(&g),
        vec![
            LockTarget::User("alice@example.com".into()),
            LockTarget::Group("dev".into()),
            LockTarget::Group("system:authenticated".into()),
        ]
    );
}

#[test]
fn a_stored_grant_is_bounded_and_says_so() {
    let mut v = review();
    let groups: Vec<String> = (0..2000).map(|i| format!("team-{i:05}")).collect();
    v["request"]["userInfo"]["groups"] = json!(groups);
    let g = grant_of(&request(v), NOW).unwrap();
    // Every group is decided on...
    assert_eq!(lock_targets(&g).len(), 2001);
    // ...and what is stored stays within the bound, the first groups first.
    let b = g.bounded();
    assert!(b.groups_truncated && !b.command_truncated && b.command == g.command);
    let bytes: usize = b.groups.iter().map(|s| s.len() + 1).sum();
    assert!(
        bytes <= GRANT_GROUPS_MAX && bytes > GRANT_GROUPS_MAX - 12,
        "{bytes}"
    );
    assert_eq!(b.groups[..], groups[..b.groups.len()]);
    let mut long = g.clone();
    long.groups.truncate(2);
    long.command = vec!["x".repeat(GRANT_COMMAND_MAX)];
    let b = long.bounded();
    assert!(b.command_truncated && b.command.is_empty() && b.groups.len() == 2);
    // A usual grant is stored as it is.
    let small = grant_of(&request(review()), NOW).unwrap();
    assert_eq!(small.bounded(), small);
}

#[test]
fn an_attach_review_has_no_command() {
    let mut v = review();
    v["request"]["subResource"] = "attach".into();
    v["request"]["object"] = json!({"kind": "PodAttachOptions", "apiVersion": "v1", "stdin": true});
    let g = grant_of(&request(v), NOW).unwrap();
    assert_eq!(g.subresource, Subresource::Attach);
    assert!(g.command.is_empty() && g.container.is_none() && g.stdin && !g.tty);
}

#[test]
fn anything_else_is_refused_with_the_fix() {
    let mut v = review();
    v["request"]["operation"] = "CREATE".into();
    v["request"]["subResource"] = Value::Null;
    let e = grant_of(&request(v), NOW).unwrap_err();
    assert_eq!(
        e,
        ReviewError::NotExec {
            operation: "CREATE".into(),
            resource: "pods".into()
        }
    );
    assert!(
        e.to_string()
            .contains("limit the ValidatingWebhookConfiguration's rules")
    );
    let mut v = review();
    v["request"]["subResource"] = "portforward".into();
    assert!(matches!(
        grant_of(&request(v), NOW),
        Err(ReviewError::NotExec { .. })
    ));
    for (field, missing) in [
        ("userInfo", "userInfo.username"),
        ("namespace", "namespace"),
        ("object", "object"),
    ] {
        let mut v = review();
        v["request"][field] = match field {
            "userInfo" => json!({}),
            _ => Value::Null,
        };
        assert_eq!(
            grant_of(&request(v), NOW),
            Err(ReviewError::Missing(missing)),
            "{field}"
        );
    }
    let mut v = review();
    v["request"]["object"]["command"] = "sh".into();
    assert!(matches!(
        grant_of(&request(v), NOW),
        Err(ReviewError::BadObject(_))
    ));
}

fn lock(target: LockTarget, reason: Option<&str>, expires: Option<&str>) -> FleetLock {
    FleetLock {
        target,
        value: LockValue {
            reason: reason.map(Into::into),
            expires: expires.map(Into::into),
            ..Default::default()
        },
    }
}

#[test]
fn the_users_own_lock_comes_before_a_groups_and_expired_ones_do_not_count() {
    let group = lock(LockTarget::Group("dev".into()), Some("audit"), None);
    let user = lock(LockTarget::User("alice".into()), Some("offboarded"), None);
    let expired = lock(
        LockTarget::User("alice".into()),
        None,
        Some("2026-12-03T11:00:00Z"),
    );
    assert_eq!(lock_denial(&[], NOW), None);
    assert_eq!(lock_denial(std::slice::from_ref(&expired), NOW), None);
    let d = lock_denial(&[group.clone(), user.clone()], NOW).unwrap();
    assert_eq!(d, Denial::Locked(user));
    assert_eq!(d.code(), "user_locked");
    assert_eq!(
        d.message("alice"),
        "enforcer: exec refused: user alice is locked: offboarded"
    );
    let d = lock_denial(&[expired, group], NOW).unwrap();
    assert_eq!(d.code(), "group_locked");
    assert_eq!(
        d.message("alice"),
        "enforcer: exec refused: group dev of user alice is locked: audit"
    );
    let d = Denial::ExecLimit { limit: 2, held: 2 };
    assert_eq!(d.code(), "fleet_max_exec_sessions_per_user");
    assert_eq!(
        d.message("alice"),
        "enforcer: exec refused: user alice already has 2 of 2 exec sessions allowed across the fleet"
    );
}

fn query(started_at: OffsetDateTime) -> GrantQuery {
    GrantQuery {
        namespace: "team-a".into(),
        pod: "web".into(),
        container: "main".into(),
        command: "sh -c id".into(),
        tty: true,
        started_at,
    }
}

#[test]
fn an_exec_matches_its_own_grant_only() {
    let g = grant_of(&request(review()), NOW).unwrap();
    let later = NOW + time::Duration::seconds(2);
    assert_eq!(match_grant(&[g.clone()], &query(later)), GrantMatch::One(0));
    // Each thing that differs: no grant.
    let differ: [fn(&mut GrantQuery); 5] = [
        |q| q.container = "sidecar".into(),
        |q| q.command = "sh".into(),
        |q| q.tty = false,
        |q| q.pod = "web-2".into(),
        |q| q.started_at = NOW + time::Duration::seconds(31),
    ];
    for change in differ {
        let mut q = query(later);
        change(&mut q);
        assert_eq!(match_grant(&[g.clone()], &q), GrantMatch::NoGrant, "{q:?}");
    }
    // A grant made well after the exec started is not its grant.
    assert_eq!(
        match_grant(&[g.clone()], &query(NOW - time::Duration::seconds(6))),
        GrantMatch::NoGrant
    );
    // No container named: the pod's default one, which may be any.
    let mut default = g.clone();
    default.container = None;
    assert_eq!(match_grant(&[default], &query(later)), GrantMatch::One(0));
    // An attach starts no process.
    let mut attach = g.clone();
    attach.subresource = Subresource::Attach;
    assert_eq!(
        match_grant(&[attach, g.clone()], &query(later)),
        GrantMatch::One(1)
    );
    // A grant whose command was cut when stored fits no exec, not even one whose whole
    // command is what is left of it (a decoy: `sh -c <4 KiB>` stored as `sh -c`).
    let mut decoy = g.clone();
    decoy.user = "mallory".into();
    decoy.command.push("x".repeat(GRANT_COMMAND_MAX));
    let decoy = decoy.bounded();
    assert_eq!(decoy.command.join(" "), query(later).command);
    assert_eq!(
        match_grant(&[decoy, g.clone()], &query(later)),
        GrantMatch::One(1)
    );
}

#[test]
fn two_grants_that_fit_alike_are_reported_never_guessed() {
    let a = grant_of(&request(review()), NOW).unwrap();
    let mut b = a.clone();
    b.review = "other".into();
    b.user = "bob".into();
    assert_eq!(
        match_grant(&[a.clone(), b], &query(NOW + time::Duration::seconds(1))),
        GrantMatch::Ambiguous(2)
    );
    // The same user's two identical execs: either grant names who it is.
    let mut again = a.clone();
    again.review = "again".into();
    assert_eq!(
        match_grant(&[a, again], &query(NOW + time::Duration::seconds(1))),
        GrantMatch::One(0)
    );
}

#[test]
fn a_grant_lapses_when_its_lease_takes_both_keys_at_once() {
    let keys = Keys::new("/enforcer", "n1");
    let g = grant_of(&request(review()), NOW).unwrap();
    let value = serde_json::to_vec(&g).unwrap();
    let user = keys.exec_grant(&g.user, &g.review);
    let pod = keys.exec_grant_of_pod(&g.namespace, &g.pod, &g.review);
    let both = [
        GrantDelete {
            revision: 7,
            key: &user,
            value: &value,
        },
        GrantDelete {
            revision: 7,
            key: &pod,
            value: &value,
        },
    ];
    assert_eq!(lapsed_grants(&keys, &both), vec![g.clone()]);
    // A node's claim (the pod's key alone), then the session's end (the user's alone).
    let claimed = [
        GrantDelete {
            revision: 7,
            key: &pod,
            value: &value,
        },
        GrantDelete {
            revision: 9,
            key: &user,
            value: &value,
        },
    ];
    assert!(lapsed_grants(&keys, &claimed).is_empty());
    // Another review's user key in the same revision says nothing about this one.
    let other = keys.exec_grant(&g.user, "another-review");
    let mixed = [
        GrantDelete {
            revision: 7,
            key: &other,
            value: &value,
        },
        GrantDelete {
            revision: 7,
            key: &pod,
            value: &value,
        },
    ];
    assert!(lapsed_grants(&keys, &mixed).is_empty());
    // An undecodable value is no grant.
    let junk = [
        GrantDelete {
            revision: 7,
            key: &user,
            value: b"{",
        },
        GrantDelete {
            revision: 7,
            key: &pod,
            value: b"{",
        },
    ];
    assert!(lapsed_grants(&keys, &junk).is_empty());
}

#[test]
fn grant_keys_name_their_review_and_kind() {
    let keys = Keys::new("/enforcer", "n1");
    let k = keys.grant_key(&keys.exec_grant("oidc:a/b", "r-1")).unwrap();
    assert_eq!((k.review.as_str(), k.by_pod), ("r-1", false));
    let k = keys
        .grant_key(&keys.exec_grant_of_pod("ns", "web", "r-2"))
        .unwrap();
    assert_eq!((k.review.as_str(), k.by_pod), ("r-2", true));
    assert_eq!(keys.grant_key("/enforcer/exec-grantsx/a/b"), None);
    assert_eq!(keys.grant_key("/enforcer/locks/user/a"), None);
}
