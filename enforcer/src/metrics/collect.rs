//! What a scrape shows beyond the live histogram: the state actor's view (connections,
//! sessions, the `enforcerctl status` counters) and the audit tally, as metric families.

use std::collections::BTreeMap;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// What the state actor hands the metrics, at most once per [`super::REFRESH`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsView {
    /// `enforcerctl status` events (counters and gauges), by their status names.
    pub events: BTreeMap<String, u64>,
    /// `enforcerctl status` drop counters, by their status names (all of them, zero or not).
    pub dropped: BTreeMap<String, u64>,
    /// Connections by state: `pending`, `open`, `terminating`, `lingering` (always all four).
    pub connections: BTreeMap<&'static str, u64>,
    /// Live sessions by kind (`shell`, `exec`, `subsystem`, `starting`, …): every kind the
    /// daemon knows, zero or not.
    pub sessions: BTreeMap<&'static str, u64>,
    /// Live forwarding channels by what they forward (`direct_tcpip`, `agent`, …).
    pub forwards: BTreeMap<&'static str, u64>,
}

/// Whether a status event is a level (now) rather than a count (so far).
pub fn is_gauge(name: &str) -> bool {
    name.ends_with("_active")
        || matches!(
            name,
            "connections_lingering" | "users_locked" | "control_connections_non_root"
        )
}

/// Audit events whose records are kills, and the target label they get.
const KILLS: [(&str, &str); 4] = [
    ("connection_killed", "connection"),
    ("session_killed", "session"),
    ("user_processes_killed", "user_processes"),
    ("idle_timeout", "connection"),
];

/// The view and audit tally of one scrape.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub view: MetricsView,
    /// (event, reason) → records.
    pub audit: BTreeMap<(String, String), u64>,
}

impl Snapshot {
    /// Audit records of `event`, by reason.
    fn reasons<'a>(&'a self, event: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.audit
            .iter()
            .filter(move |((e, _), _)| e == event)
            .map(|((_, r), n)| (r.as_str(), *n))
    }

    fn total(&self, event: &str) -> u64 {
        self.reasons(event).map(|(_, n)| n).sum()
    }
}

/// One family of constant values with one or two labels.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = ([(&'static str, String); N], u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let m = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(m)?,
            _ => ConstGauge::new(value as i64).encode(m)?,
        }
    }
    Ok(())
}

/// A family without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(m),
        _ => ConstGauge::new(value as i64).encode(m),
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let v = &self.view;
        family(
            &mut e,
            "connections",
            "SSH connections by state (lingering: ended, processes still running)",
            Gauge,
            v.connections
                .iter()
                .map(|(s, n)| ([("state", s.to_string())], *n)),
        )?;
        family(
            &mut e,
            "sessions",
            "Live sessions (channels) by kind; forwarding channels are kind forward",
            Gauge,
            v.sessions
                .iter()
                .map(|(k, n)| ([("kind", k.to_string())], *n)),
        )?;
        family(
            &mut e,
            "forwards",
            "Live forwarding channels by what they forward",
            Gauge,
            v.forwards
                .iter()
                .map(|(k, n)| ([("forward", k.to_string())], *n)),
        )?;
        let by_reason = |event: &'static str| {
            self.reasons(event)
                .map(|(r, n)| ([("reason", r.to_owned())], n))
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "connections_refused",
            "Logins refused at PAM account, by reason",
            Counter,
            by_reason("connection_refused"),
        )?;
        family(
            &mut e,
            "sessions_refused",
            "Sessions refused by a session limit, by reason",
            Counter,
            by_reason("session_refused"),
        )?;
        family(
            &mut e,
            "connections_closed",
            "Connections ended, by reason",
            Counter,
            by_reason("connection_closed"),
        )?;
        family(
            &mut e,
            "kills",
            "Terminations by target and reason (idle cuts included, reason idle_timeout)",
            Counter,
            KILLS.iter().flat_map(|(event, target)| {
                self.reasons(event).map(move |(r, n)| {
                    let reason = if r.is_empty() { *event } else { r };
                    (
                        [
                            ("target", target.to_string()),
                            ("reason", reason.to_owned()),
                        ],
                        n,
                    )
                })
            }),
        )?;
        single(
            &mut e,
            "idle_cuts",
            "Connections cut after idle.timeout without activity",
            Counter,
            self.total("idle_timeout"),
        )?;
        let mut events: BTreeMap<&str, u64> = BTreeMap::new();
        for ((event, _), n) in &self.audit {
            *events.entry(event).or_default() += n;
        }
        family(
            &mut e,
            "audit_records",
            "Audit records by event (queued for the log; losses are in enforcer_dropped_total)",
            Counter,
            events
                .into_iter()
                .map(|(ev, n)| ([("event", ev.to_owned())], n)),
        )?;
        family(
            &mut e,
            "events",
            "Event counters of `enforcerctl status`, by name",
            Counter,
            v.events
                .iter()
                .filter(|(name, _)| !is_gauge(name))
                .map(|(name, n)| ([("name", name.clone())], *n)),
        )?;
        family(
            &mut e,
            "dropped",
            "Lost work per reason, as `enforcerctl status` names it under DROPPED",
            Counter,
            v.dropped
                .iter()
                .map(|(name, n)| ([("name", name.clone())], *n)),
        )?;
        for (name, n) in v.events.iter().filter(|(name, _)| is_gauge(name)) {
            single(&mut e, name, "As `enforcerctl status` shows it", Gauge, *n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn render(s: Snapshot) -> String {
        let mut r = Registry::with_prefix("enforcer");
        r.register_collector(Box::new(s));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        out
    }

    fn audit(rows: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
        rows.iter()
            .map(|(e, r, n)| ((e.to_string(), r.to_string()), *n))
            .collect()
    }

    #[test]
    fn families_from_view_and_audit() {
        let mut view = MetricsView::default();
        view.connections.extend([("open", 2), ("lingering", 1)]);
        view.sessions.extend([("shell", 1), ("forward", 3)]);
        view.forwards.extend([("direct_tcpip", 2), ("agent", 1)]);
        view.events.extend([
            ("exec_seen".to_owned(), 40),
            ("sessions_active".to_owned(), 4),
            ("users_locked".to_owned(), 1),
        ]);
        view.dropped.extend([
            ("drop_ringbuf_full".to_owned(), 0),
            ("drop_recording_bytes_lost".to_owned(), 7),
        ]);
        let text = render(Snapshot {
            view,
            audit: audit(&[
                ("connection_refused", "max_connections_per_user", 2),
                ("connection_refused", "user_locked", 1),
                ("connection_killed", "user_locked", 1),
                ("idle_timeout", "idle_timeout", 3),
                ("exec", "", 9),
            ]),
        });
        for line in [
            "enforcer_connections{state=\"open\"} 2",
            "enforcer_connections{state=\"lingering\"} 1",
            "enforcer_sessions{kind=\"forward\"} 3",
            "enforcer_forwards{forward=\"direct_tcpip\"} 2",
            "enforcer_connections_refused_total{reason=\"max_connections_per_user\"} 2",
            "enforcer_connections_refused_total{reason=\"user_locked\"} 1",
            "enforcer_kills_total{target=\"connection\",reason=\"user_locked\"} 1",
            "enforcer_kills_total{target=\"connection\",reason=\"idle_timeout\"} 3",
            "enforcer_idle_cuts_total 3",
            "enforcer_audit_records_total{event=\"exec\"} 9",
            "enforcer_events_total{name=\"exec_seen\"} 40",
            "enforcer_dropped_total{name=\"drop_ringbuf_full\"} 0",
            "enforcer_dropped_total{name=\"drop_recording_bytes_lost\"} 7",
            "# TYPE enforcer_sessions_active gauge",
            "enforcer_sessions_active 4",
            "enforcer_users_locked 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        // Gauges are not exported as counters too.
        assert!(!text.contains("name=\"sessions_active\""), "{text}");
    }

    #[test]
    fn gauges_are_levels() {
        for g in [
            "connections_active",
            "sessions_active",
            "recordings_active",
            "forwards_active",
            "users_locked",
            "connections_lingering",
            "control_connections_non_root",
        ] {
            assert!(is_gauge(g), "{g}");
        }
        for c in ["connections_admitted", "exec_seen", "recording_bytes"] {
            assert!(!is_gauge(c), "{c}");
        }
    }
}
