//! Rendering of the fleet's views: `enforcerctl sessions --fleet` and `enforcerctl nodes`.

use enforcer_proto::{FleetConnection, NodeInfo};

use super::{clock::Clock, cut, table};

/// Widest sessions cell before it is cut with `…`.
const TEXT_CELL: usize = 64;

/// Renders `enforcerctl sessions --fleet`: one row per connection, sessions summarised.
pub fn render_fleet_sessions(conns: &[FleetConnection], clock: &Clock) -> String {
    if conns.is_empty() {
        return "no live connections in the fleet\n".into();
    }
    let mut rows = vec![
        ["NODE", "ID", "USER", "CLIENT", "SINCE", "SESSIONS"]
            .map(String::from)
            .to_vec(),
    ];
    for c in conns {
        let sessions = c
            .sessions
            .iter()
            .map(|s| match &s.command {
                Some(cmd) => format!("{} {}: {cmd}", s.id, s.kind),
                None => format!("{} {}", s.id, s.kind),
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(vec![
            c.node.clone(),
            c.id.to_string(),
            c.user.clone(),
            c.client.clone().unwrap_or_else(|| "-".into()),
            clock.local(&c.since),
            if sessions.is_empty() {
                "-".into()
            } else {
                cut(&sessions, TEXT_CELL)
            },
        ]);
    }
    table(&rows)
}

/// Renders `enforcerctl nodes`.
pub fn render_nodes(nodes: &[NodeInfo], clock: &Clock) -> String {
    if nodes.is_empty() {
        return "no nodes registered in the fleet\n".into();
    }
    let mut rows = vec![
        ["NODE", "VERSION", "STARTED", "LAST SEEN", "CONNECTIONS"]
            .map(String::from)
            .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            n.version.clone(),
            clock.local(&n.started),
            clock.local(&n.last_seen),
            n.connections.to_string(),
        ]);
    }
    table(&rows)
}
