//! HTTP answers: `{"success": true}`, and errors as `{"success": false, "code": ..., "message": ...}` (the
//! shape some Segment SDKs need: they crash on an error body without `code`).
//!
//! The codes are stable strings (documented in `docs/ingest.md`); the messages are for people.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value as Json};

/// An error answer: status, stable code, message, and for 429/503 the `Retry-After` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code (`invalid_json`, `unauthorized`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// `Retry-After` in seconds (429 and 503).
    pub retry_after_s: Option<u32>,
    /// More fields of the body (the refused events of a batch).
    pub extra: Option<(&'static str, Json)>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            extra: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// With a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    /// With one more body field.
    pub fn with(mut self, field: &'static str, value: Json) -> ApiError {
        self.extra = Some((field, value));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Json {
        let mut body = json!({"success": false, "code": self.code, "message": self.message});
        if let (Some((field, value)), Some(map)) = (&self.extra, body.as_object_mut()) {
            map.insert((*field).to_owned(), value.clone());
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"featurestore\""),
            );
        }
        response
    }
}

/// The fallback: 404 `not_found`.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: use /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias, \
         /v1/batch, /v1/import or /health",
    )
}

/// The answer to a handler that panicked: 500 `internal` (the panic is logged).
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("an HTTP handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; retry (events are deduplicated)",
    )
    .into_response()
}

/// The stable code for an error status answered by a layer rather than by a handler of this crate.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_encoding",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Rewrites an error response that is not JSON (from axum's method router, tower-http's decompression
/// for an unsupported `Content-Encoding`, ...) into the JSON error shape, keeping its status and headers.
pub async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "method not allowed: the ingest endpoints take POST".into()
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "unsupported Content-Encoding: send identity or gzip".into()
        }
        s => s.canonical_reason().unwrap_or("error").to_owned(),
    };
    let body = ApiError::new(status, code_of(status), message).body();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}
