//! The node's one HTTP listener: the Segment-compatible ingest API (`/v1/*`, see [`ingest`] and
//! `docs/ingest.md`), `GET /health`, the operator pages `GET /metrics` and `GET /ready` ([`ops`]), and the
//! segment dashboard `/ui` ([`dashboard`], on with `[http] dashboard = true`): one [`router`], one server.
//!
//! Guarantees:
//! - **HTTPS by default**, with the node's certificate (or `[http] cert`/`key`) through rustls and the
//!   `ring` provider, ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3. No client certificate is asked for: SDKs
//!   authenticate with write keys ([`auth`]). Plain HTTP only with `[http] plaintext = true` (the dev
//!   cluster, on loopback; a warning is logged when a plaintext listener is not on loopback).
//! - **Bounded**: at most `max_connections` open connections (more are closed at once and counted), a TLS
//!   handshake and a request's headers within `request_timeout_ms`, at most `max_inflight_requests` ingest
//!   requests at once (more get 429), bodies capped as [`ingest`] says.
//! - **Every error is JSON** with `code` and `message` (some SDKs crash on an error body without `code`):
//!   the answers of this crate are built so, and [`json_errors`] rewrites any other error response (an
//!   unknown path, a wrong method, an unsupported `Content-Encoding`, a panic) into that shape.
//! - **Graceful shutdown**: on the shutdown token, no new connection is accepted and open ones finish the
//!   request they are serving (HTTP/1.1 closes after it, HTTP/2 sends GOAWAY), bounded by
//!   `drain_timeout_ms`; the node's storage is flushed only after that.

pub mod auth;
pub mod dashboard;
pub mod ingest;
pub mod ops;
pub mod reply;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use featurestore::ingest::Event;
use featurestore::wire::dead_letter::Capture;
use featurestore::wire::event::EventOutcome;
use featurestore::Limits;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::cluster::ingest::Source;
use crate::cluster::Cluster;
use crate::config::{HttpConfig, NodeConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

pub use auth::WriteKeys;
pub use reply::ApiError;

/// Where validated events go: the cluster's ingest path in a node ([`Cluster::ingest`]), a fake in the
/// unit tests of this module.
pub trait EventSink: Send + Sync + 'static {
    /// Ingests `events` received from the write key of `source`; one outcome per event, in order.
    fn ingest(
        &self,
        source: String,
        events: Vec<Event>,
    ) -> Pin<Box<dyn Future<Output = Vec<EventOutcome>> + Send + '_>>;

    /// Keeps events refused at the edge in the node's dead-letter queue (done once they are durable).
    fn dead_letter(&self, captures: Vec<Capture>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl EventSink for Cluster {
    fn ingest(
        &self,
        source: String,
        events: Vec<Event>,
    ) -> Pin<Box<dyn Future<Output = Vec<EventOutcome>> + Send + '_>> {
        Box::pin(async move { Cluster::ingest(self, events, &Source::Named(source)).await })
    }

    fn dead_letter(&self, captures: Vec<Capture>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            for capture in captures {
                self.dead_letters().capture(capture).await;
            }
        })
    }
}

/// What the handlers share: the event sink, the limits, the write keys, the counters.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Shared>,
}

struct Shared {
    sink: Arc<dyn EventSink>,
    limits: Limits,
    config: HttpConfig,
    keys: WriteKeys,
    inflight: Semaphore,
    metrics: Arc<Metrics>,
    /// What `/metrics` and `/ready` report; set once by the node ([`HttpState::set_telemetry`]).
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::Telemetry>>,
    /// What `/ui` shows; set once by the node when `[http] dashboard` is on ([`HttpState::set_dashboard`]).
    dashboard: std::sync::OnceLock<dashboard::Dashboard>,
}

impl HttpState {
    /// The state for `config`'s `[http]` section, sending events to `sink` and counting in `metrics`.
    pub fn new(
        sink: Arc<dyn EventSink>,
        limits: Limits,
        config: HttpConfig,
        metrics: Arc<Metrics>,
    ) -> HttpState {
        let keys = WriteKeys::new(&config.write_keys);
        let inflight = Semaphore::new(config.max_inflight_requests.max(1));
        HttpState {
            inner: Arc::new(Shared {
                sink,
                limits,
                config,
                keys,
                inflight,
                metrics,
                telemetry: std::sync::OnceLock::new(),
                dashboard: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Wires `/metrics` and `/ready` to the node's telemetry (the first call wins; without it they answer
    /// 503).
    pub fn set_telemetry(&self, telemetry: Arc<crate::telemetry::Telemetry>) {
        let _ = self.inner.telemetry.set(telemetry);
    }

    /// Turns `/ui` on, showing `board` (the first call wins; without it `/ui` answers 404).
    pub fn set_dashboard(&self, board: dashboard::Dashboard) {
        let _ = self.inner.dashboard.set(board);
    }
}

/// The node's HTTP routes: `/v1/*` (ingest), `GET /health`, `GET /metrics`, `GET /ready` and `/ui`, every
/// error answered as JSON.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(ingest::routes())
        .merge(ops::routes())
        .merge(dashboard::routes())
        .route("/health", get(health))
        .fallback(reply::not_found)
        .layer(axum::middleware::map_response(reply::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            reply::panicked,
        ))
        .with_state(state)
}

/// `GET /health`: `{"status":"ok"}` while the node serves.
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// A bound HTTP listener, not serving yet.
pub struct HttpListener {
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener")
            .field("local", &self.local)
            .field("https", &self.tls.is_some())
            .finish()
    }
}

impl HttpListener {
    /// The bound address (the chosen port when `listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether it serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }
}

/// Binds the listener of `config`'s `[http]` section and builds its TLS configuration; `None` when the
/// section has no `listen`. Must run inside the tokio runtime.
pub fn bind(config: &NodeConfig) -> Result<Option<HttpListener>> {
    let Some(addr) = config.http.listen else {
        return Ok(None);
    };
    let tls = if config.http.plaintext {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "[http] plaintext = true on a non-loopback address: write keys travel in clear");
        }
        None
    } else {
        let cert = config.http.cert.as_ref().unwrap_or(&config.tls.cert);
        let key = config.http.key.as_ref().unwrap_or(&config.tls.key);
        Some(TlsAcceptor::from(tls::server_config(cert, key)?))
    };
    let socket_error = |source| Error::HttpSocket { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(socket_error)?;
    std_listener.set_nonblocking(true).map_err(socket_error)?;
    let listener = TcpListener::from_std(std_listener).map_err(socket_error)?;
    let local = listener.local_addr().map_err(socket_error)?;
    Ok(Some(HttpListener {
        listener,
        local,
        tls,
    }))
}

/// Settings of [`serve`] that are not the routes'.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// Most open connections.
    pub max_connections: usize,
    /// Time for a TLS handshake, and for a request's headers.
    pub request_timeout: Duration,
    /// Time open connections get to finish at shutdown.
    pub drain_timeout: Duration,
}

impl ServeSettings {
    /// The settings of `config`.
    pub fn of(config: &NodeConfig) -> ServeSettings {
        ServeSettings {
            max_connections: config.http.max_connections,
            request_timeout: Duration::from_millis(config.http.request_timeout_ms),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open connections finish (up to
/// `drain_timeout`).
pub async fn serve(
    listener: HttpListener,
    router: Router,
    settings: ServeSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let HttpListener {
        listener,
        local,
        tls,
    } = listener;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(%local, error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Metrics::incr(&metrics.http_connections_refused);
            tracing::debug!(%peer, "http connection refused: max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let (builder, router, tls, metrics) = (
            builder.clone(),
            router.clone(),
            tls.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(router);
            let served = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(settings.request_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                Metrics::incr(&metrics.http_tls_failures);
                                tracing::debug!(%peer, error = %e, "https handshake failed");
                                return;
                            }
                            Err(_) => {
                                Metrics::incr(&metrics.http_tls_failures);
                                tracing::debug!(%peer, "https handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%local, "http connections still open after the drain timeout");
    }
}

#[cfg(test)]
mod tests;
