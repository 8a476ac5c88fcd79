use super::*;

fn keys() -> Keys {
    Keys::new("/enforcer", "node-a")
}

#[test]
fn lock_keys_round_trip_and_reject_others() {
    let k = keys();
    for t in [
        LockTarget::User("alice".into()),
        LockTarget::Node("node-b".into()),
    ] {
        assert_eq!(k.lock_target(k.lock(&t).as_bytes()), Some(t));
    }
    assert_eq!(
        k.lock(&LockTarget::User("bob".into())),
        "/enforcer/locks/user/bob"
    );
    for bad in [
        "/enforcer/locks/user/",
        "/enforcer/locks/group/x",
        "/enforcer/locks/user/a/b",
        "/other/locks/user/a",
        "/enforcer/nodes/a",
    ] {
        assert_eq!(k.lock_target(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn slot_prefix_of_one_user_excludes_longer_names() {
    let k = keys();
    let alice = k.slots_of("alice");
    assert!(k.slot("alice", 7).starts_with(&alice));
    assert!(!k.slot("alice2", 7).starts_with(&alice));
    assert_eq!(k.slot("alice", 7), "/enforcer/slots/alice/node-a/7");
    assert_eq!(k.session(7), "/enforcer/sessions/node-a/7");
}

#[test]
fn lock_values_round_trip_and_garbage_still_locks() {
    let now = OffsetDateTime::now_utc();
    let l = FleetLock::new(
        LockTarget::User("alice".into()),
        Some("left".into()),
        Some(Duration::from_secs(60)),
        "root (uid 0)".into(),
        "node-a",
        now,
    );
    let back = FleetLock::decode(l.target.clone(), &l.encode());
    assert_eq!(back, l);
    assert!(back.active(now));
    assert!(!back.active(now + Duration::from_secs(61)));
    let junk = FleetLock::decode(LockTarget::User("bob".into()), b"not json");
    assert!(junk.active(now), "an unreadable lock locks");
    assert!(junk.value.reason.unwrap().contains("unreadable"));
}

#[test]
fn node_and_user_locks_are_looked_up_by_target() {
    let now = OffsetDateTime::now_utc();
    let mut locks = FleetLocks::new();
    let n = FleetLock::new(
        LockTarget::Node("node-a".into()),
        None,
        None,
        "x".into(),
        "b",
        now,
    );
    locks.insert(n.target.clone(), n);
    assert!(node_lock(&locks, "node-a", now).is_some());
    assert!(node_lock(&locks, "node-b", now).is_none());
    assert!(
        user_lock(&locks, "node-a", now).is_none(),
        "a node lock is not a user lock"
    );
}

#[test]
fn view_goes_stale_after_the_bound_and_strict_refuses() {
    let bound = Duration::from_secs(60);
    assert_eq!(
        view_state(Some(Duration::from_secs(5)), bound),
        ViewState::Current
    );
    assert_eq!(
        view_state(Some(Duration::from_secs(61)), bound),
        ViewState::Stale
    );
    assert_eq!(view_state(None, bound), ViewState::Stale);
    assert!(refuse_when_stale(OnUnreachable::Strict, ViewState::Stale));
    assert!(!refuse_when_stale(
        OnUnreachable::BestEffort,
        ViewState::Stale
    ));
    assert!(!refuse_when_stale(
        OnUnreachable::Strict,
        ViewState::Current
    ));
}

#[test]
fn fleet_limit_comes_from_rules_then_fleet_and_is_off_without_etcd() {
    let text = r#"
[fleet]
etcd_endpoints = ["http://127.0.0.1:2379"]
max_connections_per_user = 5
[[rules]]
users = ["alice"]
fleet_max_connections_per_user = 2
[[rules]]
groups = ["ops"]
fleet_max_connections_per_user = 0
"#;
    let c = Config::parse(text, "t").unwrap();
    assert_eq!(fleet_connection_limit(&c, Who::named("alice", &[])), 2);
    assert_eq!(fleet_connection_limit(&c, Who::named("bob", &[])), 5);
    assert_eq!(
        fleet_connection_limit(&c, Who::named("carol", &["ops".into()])),
        0
    );
    let off = Config::parse("[fleet]\nmax_connections_per_user = 5\n", "t").unwrap();
    assert_eq!(fleet_connection_limit(&off, Who::named("bob", &[])), 0);
    let s = Config::parse(
        "[fleet]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nmax_sessions_per_user = 3\n\
         [[rules]]\nusers = [\"alice\"]\nfleet_max_sessions_per_user = 1\n",
        "t",
    )
    .unwrap();
    assert_eq!(fleet_session_limit(&s, Who::named("alice", &[])), 1);
    assert_eq!(fleet_session_limit(&s, Who::named("bob", &[])), 3);
    // The count includes the login's own key.
    assert_eq!(slot_decision(5, 5), Ok(()));
    assert_eq!(slot_decision(6, 5), Err(5));
    assert_eq!(slot_decision(1, 1), Ok(()));
    assert_eq!(slot_decision(2, 1), Err(1));
    // A count that somehow misses its own key still admits only below the limit.
    assert_eq!(slot_decision(0, 1), Ok(()));
}

#[test]
fn early_slots_are_taken_only_where_a_limit_may_apply_and_under_the_account() {
    let wanted =
        |text: &str, user: &str| early_slot_wanted(&Config::parse(text, "t").unwrap(), user);
    let fleet = "[fleet]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n";
    assert!(!wanted(fleet, "bob"));
    assert!(wanted(
        &format!("{fleet}max_connections_per_user = 5\n"),
        "bob"
    ));
    // A user's rule without a limit: none taken for that user; others still.
    let rule0 = format!(
        "{fleet}max_connections_per_user = 5\n[[rules]]\nusers = [\"bob\"]\nfleet_max_connections_per_user = 0\n"
    );
    assert!(!wanted(&rule0, "bob"));
    assert!(wanted(&rule0, "carol"));
    // A group rule's limit may apply to anyone (groups come from NSS, later).
    let group =
        format!("{fleet}[[rules]]\ngroups = [\"ops\"]\nfleet_max_connections_per_user = 2\n");
    assert!(wanted(&group, "bob"));
    assert!(!wanted(
        &format!("{fleet}[[rules]]\ngroups = [\"ops\"]\nfleet_max_connections_per_user = 0\n"),
        "bob"
    ));
    assert!(!wanted("[fleet]\nmax_connections_per_user = 5\n", "bob"));
    assert!(early_slot_fits("alice", "alice"));
    assert!(!early_slot_fits("ALICE", "alice"));
    let k = keys();
    let early = k.early_slot("alice", 0xab, 3);
    assert_eq!(early, "/enforcer/slots/alice/node-a/early-ab-3");
    assert!(early.starts_with(&k.slots_of("alice")));
    assert_ne!(early, k.slot("alice", 3));
}

#[test]
fn fleet_config_is_checked() {
    for (text, key) in [
        ("[fleet]\nprefix = \"enforcer\"\n", "fleet.prefix"),
        ("[fleet]\nlease_ttl = \"1s\"\n", "fleet.lease_ttl"),
        ("[fleet]\ncert = \"/c\"\n", "fleet.cert"),
        ("[fleet]\nuser = \"u\"\n", "fleet.user"),
        (
            "[fleet]\netcd_endpoints = [\"127.0.0.1:2379\"]\n",
            "fleet.etcd_endpoints",
        ),
        (
            "[fleet]\netcd_endpoints = [\"https://127.0.0.1:2379\"]\n",
            "fleet.ca",
        ),
    ] {
        match Config::parse(text, "t") {
            Err(crate::config::ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn a_slash_in_a_kubernetes_user_name_stays_in_its_own_prefix() {
    let k = Keys::new("/enforcer", "node-a");
    assert_eq!(k.exec_grants_of("alice"), "/enforcer/exec-grants/alice/");
    assert_eq!(
        k.exec_grant("https://idp#alice/x", "r1"),
        "/enforcer/exec-grants/https:%2F%2Fidp#alice%2Fx/r1"
    );
    assert!(
        !k.exec_grant("alice/x", "r1")
            .starts_with(&k.exec_grants_of("alice"))
    );
    assert_ne!(k.exec_grants_of("a%2Fb"), k.exec_grants_of("a/b"));
}
