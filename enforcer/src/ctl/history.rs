//! `enforcerctl history`: ended connections like `last` shows them.

use enforcer_proto::HistoryEntry;

use super::{clock::Clock, human_secs, table};

/// Renders `enforcerctl history`, newest first as the daemon sends it.
pub fn render_history(entries: &[HistoryEntry], clock: &Clock) -> String {
    if entries.is_empty() {
        return "no ended connections in the audit log\n".into();
    }
    let mut rows = vec![
        [
            "USER", "CONN", "FROM", "LOGIN", "LOGOUT", "DURATION", "ENDED BY", "IDENTITY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in entries {
        rows.push(vec![
            e.user.clone(),
            e.conn_id.to_string(),
            e.client.clone().unwrap_or_else(|| "-".into()),
            clock.local(&e.login),
            clock.local(&e.logout),
            human_secs(e.duration_secs.round() as u64),
            e.reason.clone().unwrap_or_else(|| "-".into()),
            e.identity.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, offset};

    #[test]
    fn like_last_in_local_time() {
        let clock = Clock {
            now: datetime!(2026-11-23 12:00:00 UTC),
            offset: |_| offset!(+2),
        };
        let e = HistoryEntry {
            conn_id: 7,
            user: "alice".into(),
            client: Some("10.0.0.1".into()),
            login: "2026-11-23T10:00:00Z".into(),
            logout: "2026-11-23T11:00:05.4Z".into(),
            duration_secs: 3605.4,
            reason: Some("idle_timeout".into()),
            identity: Some("SHA256:0123456789abcdefghijklmnopqrstuvwxyzABCDEFG".into()),
        };
        let text = render_history(&[e], &clock);
        let row = text.lines().nth(1).unwrap();
        for want in [
            "alice",
            "10.0.0.1",
            "2026-11-23 12:00:00",
            "2026-11-23 13:00:05",
            "1h 5s",
            "idle_timeout",
            "SHA256:0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
        ] {
            assert!(row.contains(want), "{want:?} not in {row:?}");
        }
        assert!(render_history(&[], &clock).contains("no ended connections"));
    }
}
