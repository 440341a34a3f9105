//! The operator pages of the HTTP listener: `GET /metrics` (OpenMetrics text, see [`crate::telemetry`])
//! and `GET /ready` (JSON, 200 when ready, 503 otherwise). `GET /health` (alive and serving) stays in
//! [`super::router`].
//!
//! No write key is asked for: these pages are read-only and carry no profile data, like `/health`. Bind
//! the listener to a private or loopback address (or put it behind the scraper's network policy) if the
//! counters themselves are sensitive.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::reply::ApiError;
use super::HttpState;

/// The content type of `/metrics` (what `prometheus-client`'s text encoder writes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` and `/ready`.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
}

fn not_wired() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "this listener has no node telemetry",
    )
    .into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let Some(telemetry) = state.inner.telemetry.get().cloned() else {
        return not_wired();
    };
    // Encoding reads the status (locks, shard scans): off the runtime threads.
    match tokio::task::spawn_blocking(move || telemetry.encode()).await {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "encoding the metrics failed",
        )
        .into_response(),
    }
}

async fn ready(State(state): State<HttpState>) -> Response {
    let Some(telemetry) = state.inner.telemetry.get().cloned() else {
        return not_wired();
    };
    let readiness = telemetry.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}
