//! The HTTP side of `[metrics] listen`: HTTP/1.1 (hyper), GET /metrics only.
//!
//! Anyone who can reach the address may scrape, so every connection is bounded: at most
//! [`MAX_CONNECTIONS`] at once (more wait in the kernel's listen queue, costing the daemon
//! nothing), request headers within [`HEADER_TIMEOUT`], the whole exchange within
//! [`CONNECTION_DEADLINE`], one request per connection, small header buffers. The answer
//! comes from a body cached for [`super::REFRESH`], so a flood of scrapes costs copies of it,
//! on the public runtime's (lower-priority) threads, never a login decision.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{CONTENT_TYPE as METRICS_TYPE, Metrics, MetricsView};

/// Scrapes served at the same time.
pub const MAX_CONNECTIONS: usize = 16;
/// A client must have sent its request headers this long after connecting.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection is closed this long after it was accepted, whatever it is doing.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers (its minimum).
const MAX_HEAD_BYTES: usize = 8192;

/// The metrics listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen on metrics.listen {addr}: {source}; pick a free address or remove [metrics] listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound metrics listener, not yet serving.
pub struct Server {
    listener: std::net::TcpListener,
}

impl Server {
    /// Binds `addr` (before the daemon touches the kernel, so a taken port fails the start).
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let err = |source| MetricsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves scrapes until the task is aborted. `fetch` asks the state actor for a view.
    pub async fn serve<F, Fut>(self, metrics: Arc<Metrics>, fetch: F)
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<MetricsView>> + Send,
    {
        let listener = match TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener unusable; no metrics served");
                return;
            }
        };
        crate::listen::serve_bounded(listener, MAX_CONNECTIONS, "metrics", |stream, _| {
            let (metrics, fetch) = (metrics.clone(), fetch.clone());
            async move {
                let service = service_fn(move |req| {
                    let (metrics, fetch) = (metrics.clone(), fetch.clone());
                    async move { Ok::<_, Infallible>(answer(req, &metrics, fetch).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service);
                if tokio::time::timeout(CONNECTION_DEADLINE, conn)
                    .await
                    .is_err()
                {
                    tracing::debug!("metrics connection closed at its deadline");
                }
            }
        })
        .await
    }
}

async fn answer<F, Fut>(
    req: Request<Incoming>,
    metrics: &Metrics,
    fetch: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<MetricsView>>,
{
    let (status, body, kind) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, metrics.body(fetch).await, METRICS_TYPE)
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"use GET\n"),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"enforcerd serves /metrics only\n"),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}
