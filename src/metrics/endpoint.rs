//! The HTTP endpoint Prometheus scrapes: `GET /metrics`, 404 elsewhere.
//! Plain HTTP/1.1 on hyper (already in the tree through tonic): a scrape
//! target needs nothing more.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";

/// A connection that sends no complete request head this long, when new or
/// idle after a response, is closed: scrapers send theirs at once, and an
/// idle peer must not hold a descriptor.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {reason} (check --metrics-listen)")]
pub struct MetricsError {
    /// The address given.
    pub addr: SocketAddr,
    /// Why it could not be bound.
    pub reason: String,
}

/// A running metrics endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Listens on `addr` and serves `registry` until dropped. Must be called
    /// within a tokio runtime.
    pub async fn spawn(addr: SocketAddr, registry: Registry) -> Result<Self, MetricsError> {
        Self::spawn_with_idle_timeout(addr, registry, DEFAULT_IDLE_TIMEOUT).await
    }

    /// [`spawn`](Self::spawn), closing connections idle for `idle_timeout`
    /// (see [`DEFAULT_IDLE_TIMEOUT`]).
    pub async fn spawn_with_idle_timeout(
        addr: SocketAddr,
        registry: Registry,
        idle_timeout: Duration,
    ) -> Result<Self, MetricsError> {
        let error = |e: std::io::Error| MetricsError {
            addr,
            reason: e.to_string(),
        };
        let listener = TcpListener::bind(addr).await.map_err(error)?;
        let local_addr = listener.local_addr().map_err(error)?;
        tracing::info!(%local_addr, "serving Prometheus metrics on {METRICS_PATH}");
        let task = tokio::spawn(accept_loop(listener, Arc::new(registry), idle_timeout));
        Ok(Self { local_addr, task })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>, idle_timeout: Duration) {
    // Dropped with the loop (when the endpoint is), which aborts every
    // connection still open.
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, usually: wait instead of spinning.
                tracing::warn!("metrics endpoint: cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let registry = registry.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            // hyper's header read timeout runs from when it waits for a
            // request head, so it bounds an idle keep-alive connection too.
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics endpoint: connection ended: {error}");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let response = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != METRICS_PATH {
        return response(
            StatusCode::NOT_FOUND,
            format!("not found: metrics are on {METRICS_PATH}\n"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut refused = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD\n".to_owned(),
        );
        refused
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return refused;
    }
    let mut scrape = response(StatusCode::OK, super::encode(registry));
    scrape.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(super::CONTENT_TYPE),
    );
    scrape
}
