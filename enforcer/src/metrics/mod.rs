//! Prometheus metrics (`[metrics] listen`): GET /metrics in the Prometheus text format.
//!
//! Nothing here runs on the state actor's critical path: the PAM latency histogram and the
//! audit tally are atomics and a mutex updated where the work happens, and everything the actor
//! owns (connections, sessions, the status counters) is fetched as one [`MetricsView`] at most
//! once per [`REFRESH`], however many scrapers there are. The encoded body is cached for as
//! long, so a scrape costs a copy of bytes (see `server` for the connection limits).

mod collect;
mod server;

pub use collect::{MetricsView, is_gauge};
pub use server::{MetricsError, Server};

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::body::Bytes;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::audit::AuditTally;

/// How old the served numbers may be.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How long a scrape waits for the state actor's view before serving the previous one.
const VIEW_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the PAM decision latency buckets, seconds: a decision normally takes
/// ~0.1–1 ms; the PAM module gives up at its `timeout_ms` (2 s by default).
const PAM_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How a PAM account request ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    outcome: Outcome,
}

/// Outcome label of `enforcer_pam_decisions_total`.
#[derive(
    Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    admitted,
    refused,
    /// The daemon answered with an error (the module then applies its fail mode).
    error,
}

/// Where the daemon's metrics live; one per daemon, shared by the control connections (PAM
/// latency), the audit sink (tally) and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    pam_latency: Histogram,
    pam_decisions: Family<DecisionLabels, Counter>,
    audit: Arc<AuditTally>,
    /// The state actor's last view (connections, sessions, status counters).
    view: Mutex<Option<MetricsView>>,
    /// The last encoded body and when it was made; the async lock makes refreshes single-flight.
    body: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

impl Metrics {
    pub fn new(audit: Arc<AuditTally>) -> Arc<Self> {
        Arc::new(Self {
            pam_latency: Histogram::new(PAM_BUCKETS),
            pam_decisions: Family::default(),
            audit,
            view: Mutex::new(None),
            body: tokio::sync::Mutex::new(None),
        })
    }

    /// One PAM account decision as the daemon served it (NSS lookup, queue and actor included).
    pub fn pam_decision(&self, took: Duration, outcome: Outcome) {
        self.pam_latency.observe(took.as_secs_f64());
        self.pam_decisions
            .get_or_create(&DecisionLabels { outcome })
            .inc();
    }

    /// The exposition body, at most [`REFRESH`] old. `fetch` asks the state actor for a view
    /// and is called at most once per [`REFRESH`]; when it fails or times out, the previous
    /// view is served again.
    pub async fn body<F, Fut>(&self, fetch: F) -> Bytes
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<MetricsView>>,
    {
        let mut cached = self.body.lock().await;
        if let Some((at, body)) = &*cached {
            if at.elapsed() < REFRESH {
                return body.clone();
            }
        }
        match tokio::time::timeout(VIEW_TIMEOUT, fetch()).await {
            Ok(Some(view)) => *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view),
            Ok(None) => tracing::debug!("metrics: no view from the state actor"),
            Err(_) => tracing::warn!(
                "metrics: the state actor did not answer within 2 s; serving the previous view"
            ),
        }
        let body = Bytes::from(self.encode());
        *cached = Some((Instant::now(), body.clone()));
        body
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("enforcer");
        registry.register(
            "pam_decision_seconds",
            "Time the daemon took to answer a PAM account request (NSS lookup, queueing and the decision)",
            self.pam_latency.clone(),
        );
        registry.register(
            "pam_decisions",
            "PAM account requests answered, by outcome",
            self.pam_decisions.clone(),
        );
        let view = self
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        registry.register_collector(Box::new(collect::Snapshot {
            view,
            audit: self.audit.counts(),
        }));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
