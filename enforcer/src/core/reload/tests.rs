use super::*;
use crate::core::conn::tests::conn;

fn config(text: &str) -> Config {
    Config::parse(text, "t").unwrap()
}

fn change(key: &str, old: Option<&str>, new: Option<&str>) -> ConfigChange {
    ConfigChange {
        key: key.into(),
        old: old.map(Into::into),
        new: new.map(Into::into),
    }
}

#[test]
fn same_config_changes_nothing_even_when_written_differently() {
    let a = config("[idle]\ntimeout = \"15m\"\n");
    let b = config("[idle]\ntimeout = \"900s\"\n");
    assert_eq!(diff(&a, &b), []);
    assert_eq!(plan(&a, &b), Ok(vec![]));
}

#[test]
fn changed_keys_come_with_old_and_new_values() {
    let a = Config::default();
    let b = config(
        "[idle]\ntimeout = \"5s\"\nwarn_before = \"0\"\n[limits]\nmax_sessions_per_connection = 2\n",
    );
    assert_eq!(
        plan(&a, &b).unwrap(),
        [
            change("idle.timeout", Some("\"15m\""), Some("\"5s\"")),
            change("idle.warn_before", Some("\"1m\""), Some("\"0\"")),
            change("limits.max_sessions_per_connection", Some("0"), Some("2")),
        ]
    );
}

#[test]
fn rules_are_diffed_key_by_key_and_apply_live() {
    let a = config("[[rules]]\nusers = [\"alice\"]\nmax_sessions_per_user = 3\n");
    let b = config(
        "[[rules]]\nusers = [\"alice\"]\nmax_sessions_per_user = 2\n\
         [[rules]]\ngroups = [\"ops\"]\nidle_timeout = \"5m\"\n",
    );
    assert_eq!(
        plan(&a, &b).unwrap(),
        [
            change("rules[0].max_sessions_per_user", Some("3"), Some("2")),
            change("rules[1].groups", None, Some("[\"ops\"]")),
            change("rules[1].idle_timeout", None, Some("\"5m\"")),
            change("rules[1].users", None, Some("[]")),
        ]
    );
    // And back: the removed rule's keys become unset.
    let back = plan(&b, &a).unwrap();
    assert!(back.contains(&change("rules[1].groups", Some("[\"ops\"]"), None)));
}

#[test]
fn a_restart_only_key_refuses_the_whole_reload_and_is_named() {
    let a = Config::default();
    let b = config(
        "[daemon]\nring_buffer_bytes = 8388608\n[recording]\nenabled = false\n\
         [idle]\ntimeout = \"5m\"\n",
    );
    let err = plan(&a, &b).unwrap_err();
    assert_eq!(
        err.changes,
        [
            change("daemon.ring_buffer_bytes", Some("4194304"), Some("8388608")),
            change("recording.enabled", Some("true"), Some("false")),
        ],
        "only the keys that need a restart"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "daemon.ring_buffer_bytes (4194304 → 8388608), recording.enabled (true → false) \
             cannot change while enforcerd runs; nothing was applied"
        ),
        "{msg}"
    );
    assert!(msg.contains("systemctl restart enforcerd"), "{msg}");
}

/// Adding a config key forces a decision: applied live, or only by a restart.
#[test]
fn every_key_is_classified_once() {
    let mut rules = Config::default();
    rules.rules.push(crate::config::Rule {
        users: vec!["a".into()],
        groups: vec!["g".into()],
        max_connections_per_user: Some(1),
        max_connections_per_source: Some(1),
        max_sessions_per_connection: Some(1),
        max_sessions_per_user: Some(1),
        idle_timeout: Some(Dur::secs(1)),
        fleet_max_connections_per_user: Some(1),
        fleet_max_sessions_per_user: Some(1),
    });
    // Shown only when set.
    rules
        .kubernetes
        .namespaces
        .push(crate::config::NamespaceRule {
            names: vec!["a".into()],
            ..Default::default()
        });
    assert!(flatten(&rules).contains_key("kubernetes.namespaces"));
    for key in flatten(&rules).keys() {
        let (live, restart) = (
            LIVE.contains(&key.as_str()),
            RESTART.contains(&key.as_str()),
        );
        assert!(!(live && restart), "{key} is in both lists");
        assert!(
            live || restart || key.starts_with("rules[0]."),
            "{key} is neither applied live nor listed as needing a restart"
        );
    }
    assert!(live_key("rules[0].idle_timeout"));
    assert!(!live_key("daemon.socket"));
    assert!(
        !live_key("recording.something_new"),
        "unknown keys need a restart"
    );
}

fn registry() -> Registry {
    let mut r = Registry::default();
    let mut alice = conn("alice", 10, "10.0.0.1:1");
    alice.uid = Some(1001);
    alice.groups = vec!["ops".into()];
    alice.idle_timeout = Dur::secs(900);
    let mut alice2 = alice.clone();
    alice2.monitor.pid = 11;
    let mut bob = conn("bob", 12, "10.0.0.2:1");
    bob.uid = Some(1002);
    bob.idle_timeout = Dur::secs(900);
    r.insert(alice);
    r.insert(alice2);
    r.insert(bob);
    r
}

#[test]
fn live_connections_get_the_new_limits_by_their_login_groups() {
    let r = registry();
    let old = Config::default();
    let new = config(
        "[limits]\nmax_sessions_per_connection = 2\n\
         [[rules]]\ngroups = [\"ops\"]\nmax_sessions_per_user = 4\nidle_timeout = \"5m\"\n",
    );
    let relimit = relimit(&r, &old, &new);
    assert_eq!(
        relimit.conn_sessions,
        BTreeMap::from([(1, 2), (2, 2), (3, 2)])
    );
    assert_eq!(
        relimit.user_sessions,
        BTreeMap::from([(1001, 4)]),
        "only ops' limit changed"
    );
    assert_eq!(
        relimit.idle,
        BTreeMap::from([(1, Dur::secs(300)), (2, Dur::secs(300))])
    );
    assert!(relimit.touches_kernel());
    assert_eq!(
        super::relimit(&r, &old, &old),
        Relimit::default(),
        "nothing to do"
    );
}

fn task(conn_id: u64, flags: u32) -> TrackedTask {
    TrackedTask {
        conn_id,
        session_id: 1,
        start_ns: 1,
        flags,
        _pad: 0,
    }
}

#[test]
fn slot_holders_are_counted_leaders_of_live_connections() {
    let r = registry();
    let both = TASK_COUNTED_CONN | TASK_COUNTED_USER;
    let tasks = [
        (100, task(1, both)),
        (101, task(1, 0)), // a process inside the session
        (102, task(2, both)),
        (103, task(3, TASK_COUNTED_CONN)), // over bob's user limit: never got the user slot
        (104, task(99, both)),             // a released connection's lingering leader
    ];
    let h = SlotHolders::from_tasks(&r, &tasks);
    assert_eq!(
        (h.conn_count(1), h.conn_count(2), h.conn_count(3)),
        (1, 1, 1)
    );
    assert_eq!(h.conn_count(99), 0);
    assert_eq!((h.user_count(1001), h.user_count(1002)), (2, 0));

    // A session of connection 2 starts between the two reads: 2 and alice are written again.
    let mut later_tasks = tasks.to_vec();
    later_tasks.push((105, task(2, both)));
    let later = SlotHolders::from_tasks(&r, &later_tasks);
    let wanted = Relimit {
        conn_sessions: BTreeMap::from([(1, 5), (2, 5)]),
        user_sessions: BTreeMap::from([(1001, 9), (1002, 9)]),
        idle: BTreeMap::new(),
    };
    let again = h.moved(&later, &wanted);
    assert_eq!(again.conn_sessions, BTreeMap::from([(2, 5)]));
    assert_eq!(again.user_sessions, BTreeMap::from([(1001, 9)]));
    assert_eq!(h.moved(&h, &wanted), Relimit::default());
}

#[test]
fn the_etcd_password_is_never_shown_in_a_change() {
    let old = Config::default();
    let mut new = Config::default();
    new.fleet.password = "s3cret".into();
    let changes = diff(&old, &new);
    let c = changes
        .iter()
        .find(|c| c.key == "fleet.password")
        .expect("a change");
    assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
}
