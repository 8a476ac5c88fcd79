use enforcer_proto::{PolicyReport, ProgramState, StatusReport};
use serde_json::Value;

use super::{clock::Clock, human_secs, table};

/// Renders `enforcerctl status`; `fail_mode`: what logins meet while the daemon is down (see
/// `ctl::pam`), one line each.
pub fn render_status(s: &StatusReport, clock: &Clock, fail_mode: &[String]) -> String {
    let mut out = format!(
        "enforcerd {} (pid {}), up {} since {}\nkernel {}  config {}  socket {}\n",
        s.version,
        s.pid,
        human_secs(s.uptime_secs),
        clock.local(&s.started_at),
        s.kernel,
        s.config_path.as_deref().unwrap_or("(embedded default)"),
        s.socket,
    );
    if let Some(p) = &s.policy {
        out.push_str("\nPOLICY\n");
        out.push_str(&table(&policy_rows(p)));
    }
    out.push_str("\nWHILE ENFORCERD IS DOWN (pam_enforcer.so account lines in /etc/pam.d)\n");
    for line in fail_mode {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("\nPROGRAMS\n");
    let rows: Vec<Vec<String>> = s
        .programs
        .iter()
        .map(|p| {
            let state = match &p.state {
                ProgramState::Attached => "attached".to_owned(),
                ProgramState::Failed(why) => format!("FAILED: {why}"),
            };
            let id = p.id.map(|i| format!("id {i}")).unwrap_or_default();
            vec![
                p.name.clone(),
                p.kind.clone(),
                p.attach_point.clone(),
                state,
                id,
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nMAPS\n");
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            let fill = match m.entries {
                Some(n) => format!("{n}/{}", m.max_entries),
                None => format!("{} bytes", m.max_entries),
            };
            vec![m.name.clone(), m.kind.clone(), fill]
        })
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nFEATURES\n");
    let rows: Vec<Vec<String>> = s
        .features
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                if f.supported { "yes" } else { "no" }.into(),
                f.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nEVENTS\n");
    let rows: Vec<Vec<String>> = s
        .events
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nSWEEPS (every, runs, last, max, mean; CPU: last, max, mean)\n");
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
    let rows: Vec<Vec<String>> = s
        .sweeps
        .iter()
        .map(|w| {
            let mean = |total: u64| ms(total.checked_div(w.runs).unwrap_or(0));
            vec![
                w.name.clone(),
                match w.every_ms {
                    0 => "per exec".into(),
                    every => format!("{every} ms"),
                },
                w.runs.to_string(),
                ms(w.last_us),
                ms(w.max_us),
                mean(w.total_us),
                ms(w.last_cpu_us),
                ms(w.max_cpu_us),
                mean(w.total_cpu_us),
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    if let Some(st) = &s.store {
        out.push_str(&format!("\nSTORE {} (node {})\n", st.url, st.node));
        let oldest = match (&st.oldest_pending_id, &st.oldest_pending_started) {
            (Some(id), Some(t)) => format!("session {id}, started {}", clock.local(t)),
            _ => "-".into(),
        };
        let at = |t: &Option<String>| t.as_deref().map(|t| clock.local(t)).unwrap_or("-".into());
        let rows = vec![
            vec!["pending_bytes".into(), st.pending_bytes.to_string()],
            vec![
                "pending_recordings".into(),
                st.pending_recordings.to_string(),
            ],
            vec!["oldest_pending".into(), oldest],
            vec!["parts_uploaded".into(), st.parts_uploaded.to_string()],
            vec!["bytes_uploaded".into(), st.bytes_uploaded.to_string()],
            vec!["objects_stored".into(), st.objects_stored.to_string()],
            vec!["local_deleted".into(), st.local_deleted.to_string()],
            vec!["errors".into(), st.errors.to_string()],
            vec!["last_success_at".into(), at(&st.last_success_at)],
            vec!["last_error_at".into(), at(&st.last_error_at)],
            vec![
                "last_error".into(),
                st.last_error.clone().unwrap_or_else(|| "-".into()),
            ],
        ];
        out.push_str(&table(&rows));
    }
    let lost: u64 = s.dropped.values().sum();
    out.push_str(&format!("\nDROPPED ({lost} in total)\n"));
    let rows: Vec<Vec<String>> = s
        .dropped
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push_str(&table(&rows));
    out
}

/// A config value as the TOML file would have it, without quotes.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) => a.iter().map(show).collect::<Vec<_>>().join(", "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `section.key  value` rows of the policy in force, rules last.
fn policy_rows(p: &PolicyReport) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (section, value) in [
        ("limits", &p.limits),
        ("idle", &p.idle),
        ("recording", &p.recording),
        ("locks", &p.locks),
    ] {
        let Some(keys) = value.as_object() else {
            continue;
        };
        for (key, v) in keys {
            // A subsection (`recording.store`): one row per key.
            if let Some(sub) = v.as_object() {
                for (k, v) in sub {
                    rows.push(vec![format!("{section}.{key}.{k}"), show(v)]);
                }
                continue;
            }
            let mut text = show(v);
            if section == "limits" && v == &Value::from(0) {
                text.push_str(" (unlimited)");
            } else if section == "idle" && key == "timeout" && text == "0" {
                text.push_str(" (off)");
            }
            rows.push(vec![format!("{section}.{key}"), text]);
        }
    }
    for (i, rule) in p.rules.iter().enumerate() {
        let Some(keys) = rule.as_object() else {
            continue;
        };
        let who: Vec<String> = ["users", "groups"]
            .into_iter()
            .filter_map(|k| {
                Some(format!(
                    "{k} {}",
                    show(
                        keys.get(k)
                            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))?
                    )
                ))
            })
            .collect();
        let sets: Vec<String> = keys
            .iter()
            .filter(|(k, _)| *k != "users" && *k != "groups")
            .map(|(k, v)| format!("{k} {}", show(v)))
            .collect();
        rows.push(vec![
            format!("rules[{i}]"),
            format!("{}: {}", who.join("; "), sets.join(", ")),
        ]);
    }
    rows.push(vec![
        "metrics".into(),
        p.metrics_listen
            .as_ref()
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".into()),
    ]);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's STORE table documents exactly the fields of `status`'s `store`.
    #[test]
    fn readme_documents_every_store_field() {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("`store` (`STORE` in the text form)")
            .nth(1)
            .expect("README documents the store status");
        let table: Vec<&str> = table.lines().take(16).collect();
        let table = table.join("\n");
        let fields = serde_json::to_value(enforcer_proto::StoreStatus::default()).unwrap();
        for f in fields.as_object().unwrap().keys() {
            assert!(
                table.contains(&format!("`{f}`")),
                "README's STORE table lacks `{f}`"
            );
        }
    }
    use serde_json::json;

    #[test]
    fn policy_rows_name_every_key_and_explain_zero() {
        let p = PolicyReport {
            limits: json!({"max_connections_per_user": 0, "max_sessions_per_user": 3}),
            idle: json!({"timeout": "0", "warn_before": "1m", "activity": "input"}),
            recording: json!({"enabled": true, "dir": "/var/lib/enforcer/recordings"}),
            locks: json!({"all_processes": true, "exempt": []}),
            rules: vec![json!({"users": ["alice"], "groups": [], "idle_timeout": "5m"})],
            metrics_listen: Some("127.0.0.1:9464".into()),
        };
        let text = table(&policy_rows(&p));
        for want in [
            "limits.max_connections_per_user  0 (unlimited)",
            "limits.max_sessions_per_user     3",
            "idle.timeout                     0 (off)",
            "recording.enabled                true",
            "locks.exempt                     none",
            "rules[0]                         users alice: idle_timeout 5m",
            "metrics                          http://127.0.0.1:9464/metrics",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}
