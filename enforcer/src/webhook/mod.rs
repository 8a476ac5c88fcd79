//! `enforcerd webhook`: the apiserver's validating admission webhook for CONNECT of
//! `pods/exec` and `pods/attach`. The apiserver knows who runs `kubectl exec` (a node never
//! does); this tells it no when the user or one of their groups is locked fleet-wide, or when
//! the user already has `[kubernetes] max_exec_sessions_per_user` exec sessions, and otherwise
//! leaves a grant in etcd (who, which pod and container, what command) for the node to match.
//!
//! HTTPS (rustls) with HTTP/1.1 keep-alive, as the apiserver calls webhooks. Bounded like the
//! metrics listener: connections at once, TLS handshake and header deadlines, body size.
//! When etcd cannot answer, the review gets HTTP 500 and the apiserver applies the
//! ValidatingWebhookConfiguration's `failurePolicy` (README: Kubernetes).

mod grants;
mod review;
mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{config::Config, core::fleet::Keys};

/// Connections served at once (the apiserver keeps a few per replica).
const MAX_CONNECTIONS: usize = 256;
/// TLS handshake and request headers must be done this long after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {error}; check [webhook] tls_cert and tls_key")]
    TlsFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the serving certificate or key is unusable: {0}; give a PEM chain and its private key"
    )]
    Tls(String),
    #[error("cannot listen on webhook.listen {addr}: {error}; pick a free address")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Fleet(#[from] crate::fleet::FleetError),
}

/// Serves reviews until the process is stopped.
pub async fn run(config: Config) -> Result<(), WebhookError> {
    config
        .webhook
        .servable(&config.fleet)
        .map_err(WebhookError::Config)?;
    let w = &config.webhook;
    let client_ca = (!w.client_ca.as_os_str().is_empty()).then_some(w.client_ca.as_path());
    let acceptor = tls::acceptor(&w.tls_cert, &w.tls_key, client_ca)?;
    if client_ca.is_none() {
        tracing::warn!(
            "[webhook] client_ca is not set: anyone who reaches the port can write exec grants; \
             give the apiserver a client certificate, or let only the control plane reach it"
        );
    }
    let addr: SocketAddr = config
        .webhook
        .listen
        .parse()
        .map_err(|_| WebhookError::Config("webhook.listen is not ADDRESS:PORT".into()))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| WebhookError::Bind { addr, error })?;
    let options = crate::fleet::connect_options(&config.fleet)?;
    let client = crate::fleet::connect_in_background(config.fleet.etcd_endpoints.clone(), options);
    let keys = Keys::new(&config.fleet.prefix, "");
    let reviewer = Arc::new(review::Reviewer {
        grants: grants::Grants::new(client, keys, config.webhook.grant_ttl.0),
        limit: config.kubernetes.max_exec_sessions_per_user,
    });
    tracing::info!(%addr, limit = reviewer.limit, "admission webhook serving");
    crate::listen::serve_bounded(listener, MAX_CONNECTIONS, "webhook", |stream, peer| {
        let (acceptor, reviewer) = (acceptor.clone(), reviewer.clone());
        async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let reviewer = reviewer.clone();
                async move { Ok::<_, std::convert::Infallible>(reviewer.answer(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        }
    })
    .await;
    Ok(())
}
