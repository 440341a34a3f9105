//! The Segment-compatible ingest API: `POST /v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
//! `/v1/group`, `/v1/alias` (one event each), `/v1/batch` and its alias `/v1/import`
//! (`{"batch": [...], "sentAt", "context", "writeKey"}`), as the Segment and RudderStack SDKs send them.
//!
//! A request is checked in this order; the first failure is the answer and nothing of the request is
//! ingested:
//!
//! 1. at most `max_inflight_requests` at once, else 429 `too_many_requests` with `Retry-After`;
//! 2. an `Authorization` header, if present, must be Basic with a configured write key, else 401;
//! 3. the body, decompressed (`Content-Encoding: gzip`; another encoding is 415), is read within
//!    `request_timeout_ms` (else 408) and capped *while reading*: a batch at `max_batch_bytes`, a single
//!    call at `[limits] max_event_bytes`; beyond it 400 `payload_too_large` (batch) or `event_too_large`
//!    (single call). Never more than the cap is buffered;
//! 4. without an `Authorization` header, the body must be JSON with a configured `writeKey` at its top
//!    level (401: an unauthenticated client learns nothing about its body but its size);
//! 5. the body must be JSON (400 `invalid_json`), a batch an object with a `batch` array (400
//!    `invalid_batch`);
//! 6. a batch holds at most `max_batch_events` events (400 `too_many_events`).
//!
//! Then every event is checked on its own: at most `max_event_bytes` of JSON (`event_too_large`), then the
//! core's [`Event::from_segment`] (typed defects: no id, unknown type, bad timestamp, a too-long
//! `messageId`, ...) and the key limit (`invalid_event`). A batch's `sentAt` and `context` apply to each
//! event that lacks its own (the event's context keys win); `receivedAt` is this node's clock.
//!
//! **A batch with invalid events**: the valid events are ingested and the invalid ones dropped, as Segment
//! does, but never silently: the answer is 200 with `"refused": N` and an `"errors"` list (index,
//! `messageId`, code, message; the first 100), and each is counted (`http_events_refused`). A request
//! none of whose events is valid is 400 (`invalid_event` for a single call, with the defect; and
//! `invalid_events` for a batch, with the list).
//!
//! **Dead letters**: each event refused here (`invalid_event`, `event_too_large`) is kept in the node's
//! dead-letter queue, durable, before the answer names it: its JSON as parsed (the batch's `sentAt` and
//! `context` applied, a single call's type from its endpoint), the write key's source, the reason.
//! Requests refused whole are not kept (there is no event to keep).
//!
//! **Acknowledgement**: 200 only once every accepted event is `Applied` (durable on its owner and handed to
//! replication per the write plan) or a `Duplicate`. If any event's owner did not answer or was
//! overloaded (`Unavailable`), the answer is 503 with `Retry-After`; if an owner could not store one, 500.
//! The SDKs retry both, and the events already applied count once (deduplication by `messageId`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use featurestore::error::EventDefect;
use featurestore::ingest::{Event, EventType};
use featurestore::wire::dead_letter::Capture;
use featurestore::wire::event::EventOutcome;
use featurestore::{Error as CoreError, ErrorCode, Limits};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value as Json};
use tower_http::decompression::RequestDecompressionLayer;

use super::auth;
use super::reply::ApiError;
use super::{HttpState, Shared};
use crate::clock::now_ms;
use crate::metrics::Metrics;

/// Most refused events listed in one answer (all are counted).
pub const MAX_LISTED_ERRORS: usize = 100;

/// What was posted to: one event of a type, or a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Single(EventType),
    Batch,
}

/// The `/v1/*` routes, with request decompression.
pub(super) fn routes() -> Router<HttpState> {
    fn endpoint(call: Call) -> MethodRouter<HttpState> {
        post(
            move |State(state): State<HttpState>, headers: HeaderMap, body: Body| async move {
                handle(&state, call, &headers, body).await
            },
        )
    }
    Router::new()
        .route("/v1/track", endpoint(Call::Single(EventType::Track)))
        .route("/v1/identify", endpoint(Call::Single(EventType::Identify)))
        .route("/v1/page", endpoint(Call::Single(EventType::Page)))
        .route("/v1/screen", endpoint(Call::Single(EventType::Screen)))
        .route("/v1/group", endpoint(Call::Single(EventType::Group)))
        .route("/v1/alias", endpoint(Call::Single(EventType::Alias)))
        .route("/v1/batch", endpoint(Call::Batch))
        .route("/v1/import", endpoint(Call::Batch))
        .layer(RequestDecompressionLayer::new())
}

/// One refused event of a request.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    index: usize,
    message_id: Option<String>,
    code: &'static str,
    message: String,
    /// What the dead-letter queue keeps of it (refusals at this edge; the owner keeps its own).
    capture: Option<Box<Capture>>,
}

impl Refusal {
    fn to_json(&self) -> Json {
        json!({
            "index": self.index,
            "messageId": self.message_id,
            "code": self.code,
            "message": self.message,
        })
    }
}

fn listed(refused: &[Refusal]) -> Json {
    Json::Array(
        refused
            .iter()
            .take(MAX_LISTED_ERRORS)
            .map(Refusal::to_json)
            .collect(),
    )
}

/// Handles one request and counts its answer.
async fn handle(state: &HttpState, call: Call, headers: &HeaderMap, body: Body) -> Response {
    let s = &*state.inner;
    Metrics::incr(&s.metrics.http_requests);
    match ingest(s, call, headers, body).await {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => {
            let counter = match e.status {
                StatusCode::UNAUTHORIZED => &s.metrics.http_unauthorized,
                StatusCode::TOO_MANY_REQUESTS => &s.metrics.http_overloaded,
                st if st.is_server_error() => &s.metrics.http_retry_later,
                _ => &s.metrics.http_rejected,
            };
            Metrics::incr(counter);
            tracing::debug!(status = %e.status, code = e.code, message = %e.message, "http ingest refused");
            e.into_response()
        }
    }
}

/// The top level of a batch body. Unknown fields (`integrations`, ...) are ignored.
#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Json>,
    #[serde(default)]
    context: Option<Json>,
}

/// A parsed request: its events (raw JSON) and what applies to each.
struct Parsed<'a> {
    events: Vec<&'a RawValue>,
    sent_at: Option<Json>,
    context: Option<Map<String, Json>>,
}

fn json_error(e: &serde_json::Error, what: &str) -> ApiError {
    match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request("invalid_batch", format!("{what}: {e}"))
        }
        _ => ApiError::bad_request("invalid_json", format!("{what} is not valid JSON: {e}")),
    }
}

fn parse(call: Call, text: &str) -> Result<Parsed<'_>, ApiError> {
    match call {
        Call::Batch => {
            let body: BatchBody<'_> =
                serde_json::from_str(text).map_err(|e| json_error(&e, "the batch"))?;
            let context = match body.context {
                Some(Json::Object(map)) => Some(map),
                None | Some(Json::Null) => None,
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "invalid_batch",
                        "the batch's `context` must be an object",
                    ))
                }
            };
            Ok(Parsed {
                events: body.batch,
                sent_at: body.sent_at.filter(|v| !v.is_null()),
                context,
            })
        }
        Call::Single(_) => {
            let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
                ApiError::bad_request("invalid_json", format!("the event is not valid JSON: {e}"))
            })?;
            Ok(Parsed {
                events: vec![raw],
                sent_at: None,
                context: None,
            })
        }
    }
}

/// The `writeKey` at the top level of a body (a batch's, or a single call's event's), if the body is JSON
/// and has one.
fn body_write_key(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Key {
        #[serde(rename = "writeKey", default)]
        write_key: Option<Json>,
    }
    let key = serde_json::from_str::<Key>(text).ok()?.write_key?;
    key.as_str().map(str::to_owned)
}

/// The per-event code of a core error.
fn event_code(e: &CoreError) -> &'static str {
    match e {
        CoreError::InvalidEvent(EventDefect::TooLarge { .. }) => "event_too_large",
        _ => "invalid_event",
    }
}

/// One event of a request made ready for the cluster, or its refusal (with what the dead-letter queue
/// keeps of it: the event's JSON as it was parsed, the batch's `sentAt` and `context` applied).
fn prepare(
    raw: &RawValue,
    index: usize,
    call: Call,
    parsed: &Parsed<'_>,
    (source, received_at_ms): (&str, u64),
    limits: &Limits,
) -> Result<Event, Refusal> {
    let text = raw.get();
    let refuse =
        |message_id: Option<String>, code, wire: ErrorCode, message: String, payload: &str| {
            let capture = Capture::raw(
                wire,
                message.clone(),
                source,
                received_at_ms,
                payload,
                limits,
            )
            .with_ids(None, message_id.clone());
            Refusal {
                index,
                message_id,
                code,
                message,
                capture: Some(Box::new(capture)),
            }
        };
    if text.len() > limits.max_event_bytes {
        let message = format!(
            "the event is {} bytes, the limit is {}",
            text.len(),
            limits.max_event_bytes
        );
        // Kept without a `writeKey` it may carry (the queue never holds a secret).
        let kept = match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(mut event)) => {
                event.remove("writeKey");
                Json::Object(event).to_string()
            }
            _ => text.to_owned(),
        };
        return Err(refuse(
            None,
            "event_too_large",
            ErrorCode::LimitExceeded,
            message,
            &kept,
        ));
    }
    let mut value: Json = serde_json::from_str(text).map_err(|e| {
        let message = format!("not JSON: {e}");
        refuse(
            None,
            "invalid_event",
            ErrorCode::InvalidRequest,
            message,
            text,
        )
    })?;
    let message_id = value
        .get("messageId")
        .and_then(Json::as_str)
        .map(|id| id.chars().take(128).collect::<String>());
    if let Json::Object(event) = &mut value {
        event.remove("writeKey");
        if let Some(sent_at) = &parsed.sent_at {
            if event.get("sentAt").is_none_or(Json::is_null) {
                event.insert("sentAt".to_owned(), sent_at.clone());
            }
        }
        if let Some(batch_context) = &parsed.context {
            match event.get_mut("context") {
                Some(Json::Object(own)) => {
                    for (k, v) in batch_context {
                        own.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                None | Some(Json::Null) => {
                    event.insert("context".to_owned(), Json::Object(batch_context.clone()));
                }
                // Not an object: left for the core to judge.
                Some(_) => {}
            }
        }
    }
    let default_type = match call {
        Call::Single(kind) => Some(kind),
        Call::Batch => None,
    };
    let kept = || {
        // A single call's type is its endpoint's: kept explicitly, so a replay parses it the same way.
        let mut kept = value.clone();
        if let (Json::Object(event), Some(kind)) = (&mut kept, default_type) {
            if event.get("type").is_none_or(Json::is_null) {
                let kind = serde_json::to_value(kind).unwrap_or(Json::Null);
                event.insert("type".to_owned(), kind);
            }
        }
        kept.to_string()
    };
    let event = Event::from_segment(&value, default_type, received_at_ms, limits).map_err(|e| {
        let wire = ErrorCode::from(&e);
        refuse(
            message_id.clone(),
            event_code(&e),
            wire,
            e.to_string(),
            &kept(),
        )
    })?;
    limits.check_key(event.key()).map_err(|e| {
        let message = format!("invalid event: {e}");
        let mut refusal = refuse(
            message_id.clone(),
            "invalid_event",
            ErrorCode::from(&e),
            message,
            &kept(),
        );
        refusal.capture = refusal.capture.take().map(|c| {
            let key = event.key().to_owned();
            Box::new(c.with_ids(Some(key), message_id.clone()))
        });
        refusal
    })?;
    Ok(event)
}

/// Reads the body, capped at `cap` bytes while reading; a body beyond it is drained (at most `drain`
/// more bytes) so the client can read the answer, then refused with `too_large`.
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    cap: usize,
    drain: usize,
    too_large: ApiError,
) -> Result<Vec<u8>, ApiError> {
    async fn drain_body(mut body: Body, mut left: usize) {
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.len() >= left {
                return;
            }
            left -= data.len();
        }
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > cap as u64) {
        drain_body(body, drain).await;
        return Err(too_large);
    }
    let initial = announced.map_or(8 * 1024, |n| usize::try_from(n).unwrap_or(cap));
    let mut buf = Vec::with_capacity(initial.min(cap));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body (a corrupt gzip stream?): {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > cap {
            drain_body(body, drain).await;
            return Err(too_large);
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// The whole decision of one request: `Ok` is the body of a 200 answer.
async fn ingest(s: &Shared, call: Call, headers: &HeaderMap, body: Body) -> Result<Json, ApiError> {
    let retry_after = s.config.retry_after_s;
    let Ok(_permit) = s.inflight.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "this node is handling as many ingest requests as it may; retry later",
        )
        .retry_after(retry_after));
    };
    let header_source = match auth::basic_user(headers)? {
        Some(key) => Some(s.keys.check(&key)?),
        None => None,
    };
    let (cap, too_large) = match call {
        Call::Batch => (
            s.config.max_batch_bytes,
            ApiError::bad_request(
                "payload_too_large",
                format!(
                    "the batch is larger than {} bytes (after decompression)",
                    s.config.max_batch_bytes
                ),
            ),
        ),
        Call::Single(_) => (
            s.limits.max_event_bytes,
            ApiError::bad_request(
                "event_too_large",
                format!(
                    "the event is larger than {} bytes (after decompression)",
                    s.limits.max_event_bytes
                ),
            ),
        ),
    };
    let timeout = Duration::from_millis(s.config.request_timeout_ms);
    let read = read_body(body, headers, cap, s.config.max_drain_bytes, too_large);
    let bytes = tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        )
    })??;
    let received_at_ms = now_ms();
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not UTF-8: {e}"))
    })?;
    let source = match header_source {
        Some(source) => source,
        None => match body_write_key(text) {
            Some(key) => s.keys.check(&key)?,
            None => {
                return Err(ApiError::unauthorized(
                    "no write key: send it as the Basic user name (empty password) or as `writeKey` in the body",
                ))
            }
        },
    };
    let parsed = parse(call, text)?;
    if call == Call::Batch && parsed.events.len() > s.config.max_batch_events {
        return Err(ApiError::bad_request(
            "too_many_events",
            format!(
                "the batch holds {} events, the limit is {}",
                parsed.events.len(),
                s.config.max_batch_events
            ),
        ));
    }

    let total = parsed.events.len();
    Metrics::add(&s.metrics.http_events_received, total);
    let mut events = Vec::with_capacity(total);
    let mut at = Vec::with_capacity(total);
    let mut refused = Vec::new();
    for (i, raw) in parsed.events.iter().enumerate() {
        match prepare(raw, i, call, &parsed, (&source, received_at_ms), &s.limits) {
            Ok(event) => {
                events.push(event);
                at.push(i);
            }
            Err(refusal) => refused.push(refusal),
        }
    }
    // Refused here: kept as dead letters (durable) before the answer names them.
    let captures: Vec<Capture> = refused
        .iter_mut()
        .filter_map(|r| r.capture.take().map(|c| *c))
        .collect();
    if !captures.is_empty() {
        s.sink.dead_letter(captures).await;
    }
    if events.is_empty() && !refused.is_empty() {
        Metrics::add(&s.metrics.http_events_refused, refused.len());
        log_refused(&source, &refused);
        let first = &refused[0];
        return Err(match call {
            Call::Single(_) => ApiError::bad_request(first.code, first.message.clone()),
            Call::Batch => ApiError::bad_request(
                "invalid_events",
                format!(
                    "every event of the batch was refused ({total}); #{}: {}",
                    first.index, first.message
                ),
            )
            .with("errors", listed(&refused)),
        });
    }

    let ids: Vec<String> = events.iter().map(|e| e.message_id.clone()).collect();
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        let started = std::time::Instant::now();
        let outcomes = s.sink.ingest(source.clone(), events).await;
        let h = &s.metrics.histograms;
        h.ingest_batch_seconds
            .observe(started.elapsed().as_secs_f64());
        outcomes
    };
    let mut accepted = 0usize;
    let (mut unavailable, mut failed) = (0usize, 0usize);
    let mut first_failure = None;
    for (pos, i) in at.iter().enumerate() {
        let outcome = outcomes.get(pos).cloned().unwrap_or(EventOutcome::Refused {
            code: ErrorCode::Internal,
            message: "no outcome".into(),
        });
        match outcome {
            EventOutcome::Applied { .. } | EventOutcome::Duplicate => accepted += 1,
            EventOutcome::Refused { code, message } => match code {
                ErrorCode::Unavailable => {
                    unavailable += 1;
                    first_failure.get_or_insert(message);
                }
                ErrorCode::Storage | ErrorCode::Internal => {
                    failed += 1;
                    first_failure.get_or_insert(message);
                }
                _ => refused.push(Refusal {
                    index: *i,
                    message_id: ids.get(pos).cloned(),
                    code: "invalid_event",
                    message,
                    capture: None,
                }),
            },
        }
    }
    refused.sort_by_key(|r| r.index);
    Metrics::add(&s.metrics.http_events_accepted, accepted);
    Metrics::add(&s.metrics.http_events_refused, refused.len());
    Metrics::add(&s.metrics.http_events_retry, unavailable + failed);
    log_refused(&source, &refused);

    if unavailable + failed > 0 {
        let not_stored = unavailable + failed;
        let reason = first_failure.unwrap_or_default();
        let tail = "retry the whole request: the events already applied are deduplicated";
        let error = if unavailable > 0 {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{not_stored} of {total} events were not applied ({reason}); {tail}"),
            )
            .retry_after(retry_after)
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                format!("{not_stored} of {total} events could not be stored ({reason}); {tail}"),
            )
        };
        return Err(error);
    }
    let mut answer = json!({"success": true});
    if !refused.is_empty() {
        if let Some(map) = answer.as_object_mut() {
            map.insert("refused".into(), json!(refused.len()));
            map.insert("errors".into(), listed(&refused));
        }
    }
    Ok(answer)
}

fn log_refused(source: &str, refused: &[Refusal]) {
    for r in refused.iter().take(MAX_LISTED_ERRORS) {
        tracing::debug!(
            source, index = r.index, message_id = ?r.message_id, code = r.code, message = %r.message,
            "event refused"
        );
    }
}
