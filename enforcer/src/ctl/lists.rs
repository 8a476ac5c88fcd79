use enforcer_proto::{ConnectionInfo, ConnectionKind, Endpoint, LockInfo};

use super::{clock::Clock, cut, table};

/// Widest a free-text cell gets in a table (commands, reasons, forward targets).
const TEXT: usize = 48;
/// Widest the PIDS cell gets.
const PIDS: usize = 30;

fn ep(e: &Option<Endpoint>) -> String {
    e.as_ref()
        .map(|e| format!("{}:{}", e.addr, e.port))
        .unwrap_or_else(|| "-".into())
}

/// Only `user`'s connections (`sessions --user`); all when `None`.
pub fn filter_user(conns: Vec<ConnectionInfo>, user: Option<&str>) -> Vec<ConnectionInfo> {
    conns
        .into_iter()
        .filter(|c| user.is_none_or(|u| c.user == u))
        .collect()
}

/// Renders `enforcerctl sessions`: one block per connection, its forwards and sessions below,
/// then the `kubectl exec` sessions in a table of their own.
pub fn render_sessions(conns: &[ConnectionInfo], clock: &Clock) -> String {
    if conns.is_empty() {
        return "no live connections\n".into();
    }
    let (execs, conns): (Vec<_>, Vec<_>) = conns
        .iter()
        .partition(|c| c.kind == ConnectionKind::KubeExec);
    let mut out = String::new();
    if !execs.is_empty() {
        out.push_str(&render_kube_execs(&execs, clock));
    }
    for c in conns {
        out.push_str(&render_conns(std::slice::from_ref(c), clock));
        if !c.forwards.is_empty() {
            out.push_str(&render_forwards(c, clock));
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
                "IDLE",
                "PROCS",
                "PIDS",
                "CMDS",
                "COMMAND",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in &c.sessions {
            let pids: Vec<String> = s.pids.iter().map(u32::to_string).collect();
            rows.push(vec![
                format!("  {}", s.id),
                s.kind.clone(),
                s.tty.clone().unwrap_or_else(|| "-".into()),
                clock.local(&s.started),
                clock.ago(&s.last_activity),
                s.processes.to_string(),
                cut(&pids.join(","), PIDS),
                s.commands.to_string(),
                cut(s.command.as_deref().unwrap_or_default(), TEXT),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// `kubectl exec` sessions: kind `kube_exec`, whose (namespace/pod, container, exec id), what.
fn render_kube_execs(execs: &[&ConnectionInfo], clock: &Clock) -> String {
    let mut rows = vec![
        [
            "SESSION",
            "KIND",
            "POD",
            "CONTAINER",
            "EXEC",
            "TTY",
            "STARTED",
            "PROCS",
            "PIDS",
            "CMDS",
            "COMMAND",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in execs {
        let (Some(k), Some(s)) = (&c.kube, c.sessions.first()) else {
            continue;
        };
        let pids: Vec<String> = s.pids.iter().map(u32::to_string).collect();
        rows.push(vec![
            s.id.to_string(),
            c.kind.as_str().into(),
            format!("{}/{}", k.namespace, k.pod),
            k.container.clone(),
            cut(&k.exec_id, 16),
            s.tty.clone().unwrap_or_else(|| "-".into()),
            clock.local(&k.start),
            s.processes.to_string(),
            cut(&pids.join(","), PIDS),
            s.commands.to_string(),
            cut(&k.command, TEXT),
        ]);
    }
    table(&rows)
}

/// A connection's forwarding channels: kind `forward`, what they carry, bytes both ways.
fn render_forwards(c: &ConnectionInfo, clock: &Clock) -> String {
    let mut rows = vec![
        [
            "  FORWARD",
            "KIND",
            "TARGET",
            "OPENED",
            "IDLE",
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
            cut(&f.target, TEXT),
            clock.local(&f.opened),
            clock.ago(&f.last_activity),
            f.bytes_in.to_string(),
            f.bytes_out.to_string(),
        ]);
    }
    table(&rows)
}

/// How long a connection has been idle as its idle timeout counts, and when it is cut.
fn idle(c: &ConnectionInfo, clock: &Clock) -> String {
    match (&c.idle_since, &c.idle_cut_at) {
        (Some(since), Some(cut)) => format!("{} (cut in {})", clock.ago(since), clock.until(cut)),
        (Some(since), None) => clock.ago(since),
        _ => "-".into(),
    }
}

fn render_conns(conns: &[ConnectionInfo], clock: &Clock) -> String {
    let mut rows = vec![
        [
            "CONN", "USER", "STATE", "CLIENT", "SERVER", "SINCE", "IDLE", "MONITOR", "AUTH",
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
            clock.local(&c.since),
            idle(c, clock),
            c.monitor_pid.to_string(),
            // Whole: an identity is compared, not skimmed.
            auth,
        ]);
    }
    table(&rows)
}

/// Renders `enforcerctl locks`.
pub fn render_locks(locks: &[LockInfo], clock: &Clock) -> String {
    if locks.is_empty() {
        return "no locks\n".into();
    }
    // With a fleet: where each lock comes from, and whether this node's view of it is current.
    let fleet = locks.iter().any(|l| l.origin.is_some());
    // Locks of nodes, pods or namespaces name their kind.
    let targets = fleet || locks.iter().any(|l| l.target.is_some());
    let mut head = ["USER", "ACTIVE", "EXPIRES", "SINCE", "BY", "REASON"]
        .map(String::from)
        .to_vec();
    if targets {
        head[0] = "TARGET".into();
    }
    if fleet {
        head.extend(["ORIGIN".into(), "CURRENT".into()]);
    }
    let mut rows = vec![head];
    for l in locks {
        let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let mut reason = dash(&l.reason);
        if let Some(e) = &l.error {
            reason.push_str(&format!(" [{e}]"));
        }
        let name = match l.target.as_deref() {
            Some(kind @ ("node" | "pod" | "namespace")) => format!("{kind} {}", l.user),
            _ => l.user.clone(),
        };
        rows.push(vec![
            name,
            match (l.active, &l.expires) {
                (true, _) => "yes",
                (false, Some(_)) => "expired",
                // An entry whose name is not a user name (its error says so).
                (false, None) => "no",
            }
            .into(),
            l.expires
                .as_deref()
                .map(|e| clock.local(e))
                .unwrap_or_else(|| "never".into()),
            l.since
                .as_deref()
                .map(|s| clock.local(s))
                .unwrap_or_else(|| "-".into()),
            dash(&l.by),
            cut(&reason, TEXT),
        ]);
        if fleet {
            let row = rows.last_mut().expect("just pushed");
            row.push(match (&l.origin, &l.node) {
                (Some(o), Some(n)) => format!("{o} (from {n})"),
                (Some(o), None) => o.clone(),
                _ => "local".into(),
            });
            row.push(match l.current {
                Some(true) => "yes".into(),
                Some(false) => "STALE".into(),
                None => "-".into(),
            });
        }
    }
    table(&rows)
}

/// Renders `enforcerctl recordings`.
pub fn render_recordings(recs: &[enforcer_proto::RecordingInfo], clock: &Clock) -> String {
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
            clock.local(&r.started),
            r.duration_secs
                .map(|d| format!("{d:.1}s"))
                .unwrap_or_else(|| "-".into()),
            r.kind.clone(),
            r.tty.clone().unwrap_or_else(|| "-".into()),
            r.size_bytes.to_string(),
            match (&r.node, r.live) {
                // `recordings --store`: which node recorded it.
                (Some(node), _) => format!("stored ({node})"),
                (None, true) => "live".into(),
                (None, false) => "ended".into(),
            },
            cut(r.command.as_deref().unwrap_or_default(), TEXT),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_proto::{AuthIdentity, SessionInfo};
    use time::macros::{datetime, offset};

    fn clock() -> Clock {
        Clock {
            now: datetime!(2026-11-23 12:00:00 UTC),
            offset: |_| offset!(+1),
        }
    }

    fn conn(user: &str, state: &str) -> ConnectionInfo {
        ConnectionInfo {
            id: 3,
            kind: Default::default(),
            kube: None,
            user: user.into(),
            uid: Some(1000),
            state: state.into(),
            client: Some(Endpoint {
                addr: "10.0.0.1".into(),
                port: 5555,
            }),
            server: None,
            rhost: None,
            service: "sshd".into(),
            monitor_pid: 42,
            since: "2026-11-23T11:00:00Z".into(),
            auth: Some(AuthIdentity {
                method: "publickey".into(),
                key_fingerprint: Some("SHA256:0123456789abcdefghijklmnopqrstuvwxyzABCDEFG".into()),
                ..Default::default()
            }),
            sessions: vec![SessionInfo {
                id: 9,
                kind: "exec".into(),
                pty: false,
                tty: None,
                command: Some(format!("rsync --server {}", "x".repeat(80))),
                leader_pid: 100,
                started: "2026-11-23T11:00:01Z".into(),
                last_activity: "2026-11-23T11:55:48Z".into(),
                processes: 2,
                pids: vec![100, 101],
                commands: 4,
            }],
            forwards: Vec::new(),
            idle_since: Some("2026-11-23T11:55:48Z".into()),
            idle_cut_at: Some("2026-11-23T12:10:48Z".into()),
        }
    }

    #[test]
    fn sessions_show_local_times_idle_and_cut_wide_cells() {
        let text = render_sessions(&[conn("alice", "open")], &clock());
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "2026-11-23 12:00:00",
            "4m 12s (cut in 10m 48s)",
            "publickey SHA256:0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
        ] {
            assert!(lines[1].contains(want), "{want:?} not in {:?}", lines[1]);
        }
        assert!(
            lines[2].contains("IDLE") && lines[2].contains("PIDS"),
            "{text}"
        );
        let session = lines[3];
        for want in ["2026-11-23 12:00:01", "4m 12s", "100,101"] {
            assert!(session.contains(want), "{want:?} not in {session:?}");
        }
        let command = session.split("  ").last().unwrap().trim_start();
        assert_eq!(command.chars().count(), TEXT, "{command}");
        assert!(command.ends_with('…'));
        // Without an idle timeout: only how long.
        let mut c = conn("alice", "open");
        c.idle_cut_at = None;
        let text = render_sessions(&[c], &clock());
        assert!(
            text.contains("  4m 12s  ") && !text.contains("cut in"),
            "{text}"
        );
    }

    #[test]
    fn kube_exec_sessions_get_a_table_of_their_own() {
        let mut e = conn("", "open");
        e.kind = ConnectionKind::KubeExec;
        e.kube = Some(enforcer_proto::KubeExecInfo {
            node: "n1".into(),
            namespace: "team-a".into(),
            pod: "web".into(),
            pod_uid: "u".into(),
            container: "main".into(),
            container_id: "c".repeat(64),
            exec_id: "e".repeat(64),
            command: "sh".into(),
            tty: true,
            start: "2026-11-23T11:00:00Z".into(),
            pid: 100,
        });
        let text = render_sessions(&[conn("alice", "open"), e], &clock());
        let lines: Vec<&str> = text.lines().collect();
        let head = lines[0].trim_start();
        assert!(
            head.starts_with("SESSION") && head.contains("POD"),
            "{text}"
        );
        for want in ["kube_exec", "team-a/web", "main", "eeeeeeeeeeeeeee…"] {
            assert!(lines[1].contains(want), "{want:?} not in {:?}", lines[1]);
        }
        // The SSH connection follows, as before.
        assert!(lines[2].trim_start().starts_with("CONN"), "{text}");
    }

    #[test]
    fn user_filter_keeps_only_that_user() {
        let conns = vec![
            conn("alice", "open"),
            conn("bob", "open"),
            conn("alice", "lingering"),
        ];
        let alice = filter_user(conns.clone(), Some("alice"));
        assert_eq!(alice.len(), 2);
        assert!(alice.iter().all(|c| c.user == "alice"));
        assert_eq!(filter_user(conns, None).len(), 3);
    }
}
