use super::*;

#[test]
fn shipped_example_is_exactly_the_defaults() {
    let parsed = Config::parse(EMBEDDED_DEFAULT, "example").unwrap();
    assert_eq!(parsed, Config::default());
}

/// Every key the daemon knows must be written out (with its default) in the shipped example.
#[test]
fn shipped_example_documents_every_key() {
    let example: toml::Table = toml::from_str(EMBEDDED_DEFAULT).unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (section, keys) in &defaults {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        let documented = example
            .get(section)
            .and_then(|s| s.as_table())
            .unwrap_or_else(|| panic!("section [{section}] missing from packaging/enforcer.toml"));
        for key in keys.keys() {
            assert!(
                documented.contains_key(key),
                "key {section}.{key} missing from the example"
            );
        }
    }
    // [[rules]] is shown commented out; every rule key must appear in that comment.
    let rule_keys = [
        "users",
        "groups",
        "max_connections_per_user",
        "max_connections_per_source",
        "max_sessions_per_connection",
        "max_sessions_per_user",
        "idle_timeout",
    ];
    for key in rule_keys {
        assert!(
            EMBEDDED_DEFAULT.contains(&format!("# {key} = ")),
            "rules key {key} undocumented"
        );
    }
    for key in [
        "names",
        "max_exec_sessions_per_pod",
        "max_exec_sessions_per_namespace",
        "idle_timeout",
    ] {
        let shown = EMBEDDED_DEFAULT
            .split("# [[kubernetes.namespaces]]")
            .nth(1)
            .is_some_and(|s| s.contains(&format!("# {key} = ")));
        assert!(shown, "kubernetes.namespaces key {key} undocumented");
    }
    // Off by default, so shown commented out.
    assert!(EMBEDDED_DEFAULT.contains("# listen = \"127.0.0.1:9464\""));
}

#[test]
fn metrics_listen_is_an_address() {
    let c = Config::parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n", "t").unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    let err = Config::parse("[metrics]\nlisten = \"localhost\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = "[daemon]\nsocket = \"/tmp/x.sock\"\n\n[limits]\nmax_conections_per_user = 3\n";
    let err = Config::parse(text, "test.toml").unwrap_err().to_string();
    assert!(err.contains("max_conections_per_user"), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("test.toml"), "{err}");
}

#[test]
fn unknown_section_is_an_error() {
    let err = Config::parse("[limitz]\n", "t").unwrap_err().to_string();
    assert!(err.contains("limitz"), "{err}");
}

#[test]
fn bad_duration_says_how_to_write_one() {
    let err = Config::parse("[idle]\ntimeout = \"soon\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"15m\""), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn partial_config_keeps_other_defaults() {
    let c = Config::parse("[limits]\nmax_connections_per_user = 2\n", "t").unwrap();
    assert_eq!(c.limits.max_connections_per_user, 2);
    assert_eq!(c.idle, IdleConfig::default());
    assert_eq!(c.daemon, DaemonConfig::default());
}

#[test]
fn idle_zero_is_off_and_allows_any_warning() {
    let c = Config::parse("[idle]\ntimeout = \"0\"\n", "t").unwrap();
    assert!(c.idle.timeout.is_zero());
}

#[test]
fn warning_longer_than_timeout_is_refused() {
    let err = Config::parse("[idle]\ntimeout = \"30s\"\nwarn_before = \"1m\"\n", "t").unwrap_err();
    assert!(
        matches!(err, ConfigError::Invalid { ref key, .. } if key == "idle.warn_before"),
        "{err}"
    );
}

#[test]
fn rule_matching_nobody_is_refused() {
    let err = Config::parse("[[rules]]\nmax_sessions_per_user = 3\n", "t").unwrap_err();
    assert!(err.to_string().contains("rules[0]"), "{err}");
}

#[test]
fn rules_parse_with_overrides() {
    let text = "[[rules]]\nusers = [\"alice\"]\ngroups = [\"ops\"]\nmax_sessions_per_user = 3\nidle_timeout = \"5m\"\n";
    let c = Config::parse(text, "t").unwrap();
    assert_eq!(c.rules.len(), 1);
    assert_eq!(c.rules[0].max_sessions_per_user, Some(3));
    assert_eq!(c.rules[0].idle_timeout, Some(Dur::secs(300)));
    assert_eq!(c.rules[0].max_connections_per_user, None);
}

#[test]
fn socket_path_too_long_for_sun_path() {
    let long = "/tmp/".to_owned() + &"s".repeat(120);
    let err = Config::parse(&format!("[daemon]\nsocket = \"{long}\"\n"), "t").unwrap_err();
    assert!(err.to_string().contains("daemon.socket"), "{err}");
}

#[test]
fn ring_buffer_must_be_a_power_of_two() {
    let err = Config::parse("[daemon]\nring_buffer_bytes = 5000\n", "t").unwrap_err();
    assert!(
        err.to_string().contains("daemon.ring_buffer_bytes"),
        "{err}"
    );
}

#[test]
fn pam_socket_must_differ_from_the_public_one() {
    let text = "[daemon]\nsocket = \"/run/x.sock\"\npam_socket = \"/run/x.sock\"\n";
    let err = Config::parse(text, "t").unwrap_err();
    assert!(err.to_string().contains("daemon.pam_socket"), "{err}");
}

#[test]
fn control_frame_cap_and_timeouts_are_checked() {
    let err = Config::parse("[control]\nmax_frame_bytes = 100\n", "t").unwrap_err();
    assert!(err.to_string().contains("control.max_frame_bytes"), "{err}");
    let err = Config::parse("[control]\nread_timeout = \"0\"\n", "t").unwrap_err();
    assert!(err.to_string().contains("control"), "{err}");
    let c = Config::embedded().control;
    assert_eq!((c.max_connections_per_uid, c.max_frame_bytes), (32, 65536));
}
