use enforcer_proto::{ConnectionInfo, Endpoint, LockInfo};

use super::table;

fn ep(e: &Option<Endpoint>) -> String {
    e.as_ref()
        .map(|e| format!("{}:{}", e.addr, e.port))
        .unwrap_or_else(|| "-".into())
}

/// Renders `enforcerctl sessions`: one block per connection, its sessions below it.
pub fn render_sessions(conns: &[ConnectionInfo]) -> String {
    if conns.is_empty() {
        return "no live connections\n".into();
    }
    let mut out = String::new();
    for c in conns {
        out.push_str(&render_conns(std::slice::from_ref(c)));
        if !c.forwards.is_empty() {
            out.push_str(&render_forwards(c));
        }
        if c.sessions.is_empty() {
            out.push_str("    (no sessions)\n");
            continue;
        }
        let mut rows = vec![
            [
                "  SESSION",
                "KIND",
                "TTY",
                "STARTED",
                "LAST ACTIVITY",
                "PROCS",
                "CMDS",
                "COMMAND",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in &c.sessions {
            rows.push(vec![
                format!("  {}", s.id),
                s.kind.clone(),
                s.tty.clone().unwrap_or_else(|| "-".into()),
                s.started.clone(),
                s.last_activity.clone(),
                s.processes.to_string(),
                s.commands.to_string(),
                s.command.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// A connection's forwarding channels: kind `forward`, what they carry, bytes both ways.
fn render_forwards(c: &ConnectionInfo) -> String {
    let mut rows = vec![
        [
            "  FORWARD",
            "KIND",
            "TARGET",
            "OPENED",
            "LAST ACTIVITY",
            "BYTES IN",
            "BYTES OUT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for f in &c.forwards {
        rows.push(vec![
            format!("  {}", f.forward),
            "forward".into(),
            f.target.clone(),
            f.opened.clone(),
            f.last_activity.clone(),
            f.bytes_in.to_string(),
            f.bytes_out.to_string(),
        ]);
    }
    table(&rows)
}

fn render_conns(conns: &[ConnectionInfo]) -> String {
    let mut rows = vec![
        [
            "CONN", "USER", "STATE", "CLIENT", "SERVER", "SINCE", "MONITOR", "AUTH",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in conns {
        let auth = c
            .auth
            .as_ref()
            .map(|a| {
                let who = a
                    .cert_key_id
                    .as_ref()
                    .map(|k| format!("cert {k:?}"))
                    .or_else(|| a.key_fingerprint.clone());
                match who {
                    Some(w) => format!("{} {w}", a.method),
                    None => a.method.clone(),
                }
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            c.id.to_string(),
            c.user.clone(),
            c.state.clone(),
            ep(&c.client),
            ep(&c.server),
            c.since.clone(),
            c.monitor_pid.to_string(),
            auth,
        ]);
    }
    table(&rows)
}

/// Renders `enforcerctl locks`.
pub fn render_locks(locks: &[LockInfo]) -> String {
    if locks.is_empty() {
        return "no locks\n".into();
    }
    let mut rows = vec![
        ["USER", "ACTIVE", "EXPIRES", "SINCE", "BY", "REASON"]
            .map(String::from)
            .to_vec(),
    ];
    for l in locks {
        let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let mut reason = dash(&l.reason);
        if let Some(e) = &l.error {
            reason.push_str(&format!(" [{e}]"));
        }
        rows.push(vec![
            l.user.clone(),
            match (l.active, &l.expires) {
                (true, _) => "yes",
                (false, Some(_)) => "expired",
                // An entry whose name is not a user name (its error says so).
                (false, None) => "no",
            }
            .into(),
            l.expires.clone().unwrap_or_else(|| "never".into()),
            dash(&l.since),
            dash(&l.by),
            reason,
        ]);
    }
    table(&rows)
}

/// Renders `enforcerctl recordings`.
pub fn render_recordings(recs: &[enforcer_proto::RecordingInfo]) -> String {
    if recs.is_empty() {
        return "no recordings\n".into();
    }
    let mut rows = vec![
        [
            "SESSION", "USER", "STARTED", "DURATION", "KIND", "TTY", "SIZE", "STATE", "COMMAND",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in recs {
        rows.push(vec![
            r.id.to_string(),
            r.user.clone(),
            r.started.clone(),
            r.duration_secs
                .map(|d| format!("{d:.1}s"))
                .unwrap_or_else(|| "-".into()),
            r.kind.clone(),
            r.tty.clone().unwrap_or_else(|| "-".into()),
            r.size_bytes.to_string(),
            if r.live { "live" } else { "ended" }.into(),
            r.command.clone().unwrap_or_default(),
        ]);
    }
    table(&rows)
}
