//! Connecting to etcd: TLS with client certificates, etcd user and password, retried until it
//! works. The client then reconnects on its own (tonic), to whichever endpoint answers.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::sync::watch;

use super::FleetError;
use crate::config::FleetConfig;

/// Connect options from `[fleet]` (TLS files are read here, once, at start).
pub(super) fn options(config: &FleetConfig) -> Result<ConnectOptions, FleetError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(super::CALL_TIMEOUT)
        // HTTP/2 pings find a silently dead connection (a partition) while no call is in
        // flight. Every 10 s: at 2 s the pings of a large fleet were most of etcd's load at
        // rest (`cargo xtask bench fleet scale`); the lease keep-alive notices sooner anyway.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if !config.user.is_empty() {
        o = o.with_user(config.user.clone(), config.password.clone());
    }
    if !config.ca.as_os_str().is_empty() {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| FleetError::TlsFile {
                path: p.to_owned(),
                source,
            })
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&config.ca)?));
        if !config.cert.as_os_str().is_empty() {
            tls = tls.identity(Identity::from_pem(read(&config.cert)?, read(&config.key)?));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

/// Connects in the background, retrying every second, and publishes the client.
pub(super) fn connect(
    endpoints: Vec<String>,
    options: ConnectOptions,
    out: watch::Sender<Option<Client>>,
) {
    tokio::spawn(async move {
        let mut logged = false;
        loop {
            match Client::connect(&endpoints, Some(options.clone())).await {
                Ok(c) => {
                    tracing::info!(endpoints = ?endpoints, "connected to etcd");
                    let _ = out.send(Some(c));
                    return;
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(endpoints = ?endpoints, error = %e, "cannot connect to etcd yet; retrying every second");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// A client on the raft leader's endpoint alone, and the term it was leader in. Slot
/// transactions go there: through a follower every proposal takes one more hop, which the
/// admission's latency pays (`cargo xtask bench fleet`: the etcd floor both ways).
#[derive(Clone)]
pub(super) struct Leader {
    pub client: Client,
    pub term: u64,
    /// The endpoint it answers on (`status` shows it).
    pub endpoint: String,
}

/// Finds the leader at start and again whenever `again` is notified (a slot transaction saw
/// another raft term, or failed); at most once a second. `None` while no member says it leads:
/// callers then use the client on every endpoint.
pub(super) fn follow_leader(
    endpoints: Vec<String>,
    options: ConnectOptions,
    out: watch::Sender<Option<Leader>>,
    again: std::sync::Arc<tokio::sync::Notify>,
) {
    tokio::spawn(async move {
        loop {
            let found = find_leader(&endpoints, &options).await;
            let seen = found.as_ref().map(|l| (&l.endpoint, l.term));
            tracing::debug!(leader = ?seen, "etcd leader looked up");
            if out.send(found).is_err() {
                return;
            }
            again.notified().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Asks each member in turn; keeps only the leader's connection (one more per node, not one
/// per member: a large fleet's connections are etcd's to carry).
async fn find_leader(endpoints: &[String], options: &ConnectOptions) -> Option<Leader> {
    for e in endpoints {
        let Ok(mut c) = super::timed(Client::connect([e], Some(options.clone()))).await else {
            continue;
        };
        if let Ok(st) = super::timed(c.status()).await
            && st.header().map(|h| h.member_id()) == Some(st.leader())
        {
            return Some(Leader {
                client: c,
                term: st.raft_term(),
                endpoint: e.clone(),
            });
        }
    }
    None
}
