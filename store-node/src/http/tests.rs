//! The HTTP layer in process, against a fake event sink: auth, limits, the batch rules, status codes and
//! the JSON error shape. The real cluster behind it is tested with real processes in
//! `store-node/tests/http_ingest.rs`.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use featurestore::ingest::{Event, EventType};
use featurestore::wire::dead_letter::Capture;
use featurestore::wire::event::EventOutcome;
use featurestore::{ErrorCode, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value as Json};
use tower::ServiceExt as _;

use super::*;
use crate::config::WriteKey;

const KEY: &str = "test-write-key-0123456789";

type Decide = dyn Fn(&Event) -> EventOutcome + Send + Sync;

/// Records what it is given; answers each event with `decide`. With `gate`, waits for it first.
struct FakeSink {
    got: Mutex<Vec<Event>>,
    /// Dead letters handed over, and the sources of ingested events.
    dead: Mutex<Vec<Capture>>,
    sources: Mutex<Vec<String>>,
    decide: Box<Decide>,
    gate: Option<Arc<tokio::sync::Notify>>,
}

impl EventSink for FakeSink {
    fn dead_letter(&self, captures: Vec<Capture>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.dead.lock().unwrap().extend(captures);
        Box::pin(async {})
    }

    fn ingest(
        &self,
        source: String,
        events: Vec<Event>,
    ) -> Pin<Box<dyn Future<Output = Vec<EventOutcome>> + Send + '_>> {
        self.sources.lock().unwrap().push(source);
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            let outcomes = events.iter().map(|e| (self.decide)(e)).collect();
            self.got.lock().unwrap().extend(events);
            outcomes
        })
    }
}

fn applied(_: &Event) -> EventOutcome {
    EventOutcome::Applied { late: Vec::new() }
}

struct Fixture {
    router: Router,
    sink: Arc<FakeSink>,
    metrics: Arc<Metrics>,
}

fn fixture_with(
    config: HttpConfig,
    decide: Box<Decide>,
    gate: Option<Arc<tokio::sync::Notify>>,
) -> Fixture {
    let sink = Arc::new(FakeSink {
        got: Mutex::default(),
        dead: Mutex::default(),
        sources: Mutex::default(),
        decide,
        gate,
    });
    let metrics = Arc::new(Metrics::default());
    let state = HttpState::new(sink.clone(), Limits::default(), config, metrics.clone());
    Fixture {
        router: router(state),
        sink,
        metrics,
    }
}

fn config() -> HttpConfig {
    HttpConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        plaintext: true,
        write_keys: vec![WriteKey {
            source: "web".into(),
            key: KEY.into(),
        }],
        ..HttpConfig::default()
    }
}

fn fixture() -> Fixture {
    fixture_with(config(), Box::new(applied), None)
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A POST of `body` to `path`; `auth` is an Authorization value, `gzipped` compresses the body.
fn post(path: &str, auth: Option<&str>, body: Vec<u8>, gzipped: bool) -> Request<Body> {
    let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let body = if gzipped {
        req = req.header(header::CONTENT_ENCODING, "gzip");
        gzip(&body)
    } else {
        body
    };
    req.body(Body::from(body)).unwrap()
}

fn post_json(path: &str, body: &Json) -> Request<Body> {
    post(
        path,
        Some(&basic(KEY)),
        body.to_string().into_bytes(),
        false,
    )
}

/// Sends `req`; returns the status, the JSON body, and the `Retry-After` header.
async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Json, Option<String>) {
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let retry = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(is_json, "{status}: not JSON: {bytes:?}");
    let body: Json = serde_json::from_slice(&bytes).unwrap();
    if !status.is_success() {
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "an error carries code and message: {body}"
        );
    }
    (status, body, retry)
}

fn track(id: &str, user: &str) -> Json {
    json!({"type": "track", "event": "Product Added", "userId": user, "messageId": id,
           "properties": {"sku": "s-1"}, "timestamp": "2023-11-14T22:13:20Z"})
}

#[tokio::test]
async fn a_single_call_with_basic_auth_is_ingested_with_its_endpoint_type() {
    let f = fixture();
    let (status, body, _) = send(
        &f.router,
        post_json(
            "/v1/track",
            &json!({"event": "Product Viewed", "userId": "u1", "messageId": "m1"}),
        ),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
    for (path, kind) in [
        ("/v1/page", EventType::Page),
        ("/v1/screen", EventType::Screen),
        ("/v1/identify", EventType::Identify),
        ("/v1/group", EventType::Group),
    ] {
        let (status, ..) = send(
            &f.router,
            post_json(path, &json!({"userId": "u1", "messageId": path})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(f.sink.got.lock().unwrap().last().unwrap().kind, kind);
    }
    let (status, ..) = send(
        &f.router,
        post_json(
            "/v1/alias",
            &json!({"userId": "u1", "previousId": "a1", "messageId": "al"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let got = f.sink.got.lock().unwrap();
    assert_eq!(got.len(), 6);
    assert_eq!(got[0].kind, EventType::Track);
    assert_eq!(got[0].name.as_deref(), Some("Product Viewed"));
    assert_eq!(got[5].previous_id.as_deref(), Some("a1"));
}

#[tokio::test]
async fn auth_by_header_or_body_and_401_otherwise() {
    let f = fixture();
    let event = |key: Option<&str>| {
        let mut e = track("m1", "u1");
        if let Some(key) = key {
            e["writeKey"] = json!(key);
        }
        e.to_string().into_bytes()
    };
    let batch = json!({"writeKey": KEY, "batch": [track("m2", "u1")]});
    let ok = [
        post("/v1/track", None, event(Some(KEY)), false),
        post("/v1/batch", None, batch.to_string().into_bytes(), false),
    ];
    for req in ok {
        assert_eq!(send(&f.router, req).await.0, StatusCode::OK);
    }
    let refused = [
        post("/v1/track", None, event(None), false),
        post(
            "/v1/track",
            None,
            event(Some("not-the-key-0123456789")),
            false,
        ),
        post(
            "/v1/track",
            Some(&basic("wrong-key-0123456789")),
            event(None),
            false,
        ),
        // A header wins over the body: a wrong header is refused even with a good body key.
        post(
            "/v1/track",
            Some(&basic("wrong-key-0123456789")),
            event(Some(KEY)),
            false,
        ),
        post("/v1/track", Some("Bearer abc"), event(None), false),
        // Unauthenticated and not JSON: nothing is learnt from the body.
        post("/v1/batch", None, b"{not json".to_vec(), false),
    ];
    for req in refused {
        let response = f.router.clone().oneshot(req).await.unwrap();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        let status = response.status();
        let body: Json =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["code"], "unauthorized");
    }
    assert_eq!(f.sink.got.lock().unwrap().len(), 2);
    assert_eq!(f.metrics.http_unauthorized.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn invalid_json_and_bad_shapes_are_400_with_their_code() {
    let f = fixture();
    let cases = [
        ("/v1/batch", b"{\"batch\": [".to_vec(), "invalid_json"),
        ("/v1/batch", b"".to_vec(), "invalid_json"),
        ("/v1/batch", vec![0xff, 0xfe], "invalid_json"),
        ("/v1/track", b"{\"userId\": \"u\",".to_vec(), "invalid_json"),
        ("/v1/batch", b"{\"batch\": 5}".to_vec(), "invalid_batch"),
        ("/v1/batch", b"[1, 2]".to_vec(), "invalid_batch"),
        (
            "/v1/batch",
            b"{\"batch\": [], \"context\": 3}".to_vec(),
            "invalid_batch",
        ),
    ];
    for (path, body, code) in cases {
        let (status, reply, _) = send(&f.router, post(path, Some(&basic(KEY)), body, false)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
    }
    assert!(f.sink.got.lock().unwrap().is_empty());
    assert_eq!(f.metrics.http_rejected.load(Ordering::Relaxed), 7);
}

#[tokio::test]
async fn gzip_is_decompressed_and_other_encodings_are_refused() {
    let f = fixture();
    let batch =
        json!({"batch": [track("g1", "u1"), track("g2", "u2")], "sentAt": "2023-11-14T22:13:21Z"});
    let (status, ..) = send(
        &f.router,
        post(
            "/v1/batch",
            Some(&basic(KEY)),
            batch.to_string().into_bytes(),
            true,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.sink.got.lock().unwrap().len(), 2);

    let mut corrupt = gzip(batch.to_string().as_bytes());
    let mid = corrupt.len() / 2;
    corrupt.truncate(mid);
    let req = Request::post("/v1/batch")
        .header(header::AUTHORIZATION, basic(KEY))
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(corrupt))
        .unwrap();
    let (status, reply, _) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["code"], "invalid_body");

    let req = Request::post("/v1/batch")
        .header(header::AUTHORIZATION, basic(KEY))
        .header(header::CONTENT_ENCODING, "br")
        .body(Body::from(batch.to_string()))
        .unwrap();
    let (status, reply, _) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply["code"], "unsupported_encoding");
    assert_eq!(f.sink.got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn sizes_are_capped_after_decompression() {
    let f = fixture();
    // 600 KB of JSON that compresses to a few KB: refused on its decompressed size.
    let big = json!({"batch": [{"type": "page", "userId": "u", "properties": {"pad": " ".repeat(600 * 1024)}}]});
    for gzipped in [false, true] {
        let req = post(
            "/v1/batch",
            Some(&basic(KEY)),
            big.to_string().into_bytes(),
            gzipped,
        );
        let (status, reply, _) = send(&f.router, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert_eq!(reply["code"], "payload_too_large", "{reply}");
    }
    // A single call is capped at 32 KB.
    let big_event =
        json!({"userId": "u", "event": "x", "properties": {"pad": "x".repeat(33 * 1024)}});
    let (status, reply, _) = send(&f.router, post_json("/v1/track", &big_event)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["code"], "event_too_large");
    // In a batch, the oversized event alone is refused.
    let batch = json!({"batch": [track("s1", "u1"), {"type": "track", "event": "x", "userId": "u", "messageId": "s2", "properties": {"pad": "x".repeat(33 * 1024)}}]});
    let (status, reply, _) = send(&f.router, post_json("/v1/batch", &batch)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["refused"], 1);
    assert_eq!(reply["errors"][0]["index"], 1);
    assert_eq!(reply["errors"][0]["code"], "event_too_large");
    assert_eq!(f.sink.got.lock().unwrap().len(), 1);
    // 2,501 events is one too many.
    let many: Vec<Json> = (0..2501)
        .map(|i| json!({"type": "page", "userId": "u", "messageId": i.to_string()}))
        .collect();
    let (status, reply, _) = send(&f.router, post_json("/v1/batch", &json!({"batch": many}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["code"], "too_many_events");
    assert_eq!(f.sink.got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_batch_drops_its_invalid_events_and_says_which() {
    let f = fixture();
    let batch = json!({"batch": [
        track("ok-1", "u1"),
        {"type": "track", "event": "x", "messageId": "no-id"},
        {"type": "bogus", "userId": "u1", "messageId": "bad-type"},
        {"type": "track", "event": "x", "userId": "u1", "messageId": "m".repeat(101)},
        {"type": "track", "event": "x", "userId": "k".repeat(300), "messageId": "long-key"},
        track("ok-2", "u2"),
    ]});
    let (status, reply, _) = send(&f.router, post_json("/v1/batch", &batch)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["success"], true);
    assert_eq!(reply["refused"], 4);
    let indices: Vec<u64> = reply["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [1, 2, 3, 4]);
    assert_eq!(reply["errors"][0]["messageId"], "no-id");
    assert!(reply["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("neither userId nor anonymousId"));
    let got: Vec<String> = f
        .sink
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.message_id.clone())
        .collect();
    assert_eq!(got, ["ok-1", "ok-2"]);
    assert_eq!(f.metrics.http_events_refused.load(Ordering::Relaxed), 4);
    assert_eq!(f.metrics.http_events_accepted.load(Ordering::Relaxed), 2);

    // Nothing valid: 400, with the list.
    let all_bad =
        json!({"batch": [{"type": "track", "event": "x"}, {"type": "nope", "userId": "u"}]});
    let (status, reply, _) = send(&f.router, post_json("/v1/batch", &all_bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["code"], "invalid_events");
    assert_eq!(reply["errors"].as_array().unwrap().len(), 2);
    // A single call's defect is named.
    let (status, reply, _) = send(&f.router, post_json("/v1/track", &json!({"userId": "u"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["code"], "invalid_event");
    assert!(
        reply["message"].as_str().unwrap().contains("`event`"),
        "{reply}"
    );
    // An empty batch is fine.
    let (status, ..) = send(&f.router, post_json("/v1/batch", &json!({"batch": []}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.sink.got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn events_refused_at_the_edge_are_handed_to_the_dead_letter_queue_with_their_json() {
    let f = fixture();
    let too_large = json!({"type": "page", "userId": "u", "writeKey": KEY,
                           "zpad": "x".repeat(33 * 1024)});
    let batch = json!({"sentAt": "2023-11-14T22:13:30Z", "batch": [
        track("ok-1", "u1"),
        {"type": "track", "event": "x", "messageId": "no-id"},
        {"type": "track", "event": "x", "userId": "k".repeat(300), "messageId": "long-key"},
        too_large,
    ]});
    let (status, reply, _) = send(&f.router, post_json("/v1/batch", &batch)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["refused"], 3);
    assert_eq!(*f.sink.sources.lock().unwrap(), ["web"]);
    // A single call without `type`: kept with its endpoint's type, so a replay parses it alike.
    let (status, ..) = send(&f.router, post_json("/v1/track", &json!({"event": "e"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let dead = f.sink.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead.iter().all(|c| c.source == "web"));
    let no_id = &dead[0];
    assert_eq!(no_id.code, ErrorCode::InvalidRequest);
    assert!(no_id.reason.contains("neither userId nor anonymousId"));
    assert_eq!(no_id.message_id.as_deref(), Some("no-id"));
    let kept: Json = serde_json::from_str(&no_id.payload).unwrap();
    assert_eq!(
        kept["sentAt"], "2023-11-14T22:13:30Z",
        "the batch's sentAt applied"
    );
    assert_eq!(kept["messageId"], "no-id");
    let long_key = &dead[1];
    assert_eq!(long_key.code, ErrorCode::LimitExceeded);
    assert_eq!(long_key.key.as_ref().map(String::len), Some(256), "cut");
    let large = &dead[2];
    assert_eq!(large.code, ErrorCode::LimitExceeded);
    assert!(large.truncated && large.payload.len() <= Limits::default().max_event_bytes);
    assert!(!large.payload.contains(KEY), "no write key is kept");
    let single: Json = serde_json::from_str(&dead[3].payload).unwrap();
    assert_eq!(single["type"], "track");
}

#[tokio::test]
async fn a_batchs_sent_at_and_context_apply_to_events_lacking_them() {
    let f = fixture();
    // The client clock is an hour ahead: its timestamps and sentAt both are.
    let batch = json!({
        "sentAt": "2023-11-14T23:13:30Z",
        "context": {"traits": {"plan": "gold", "email": "x@y"}, "library": {"name": "analytics-python"}},
        "batch": [
            {"type": "track", "event": "x", "userId": "u", "messageId": "a", "timestamp": "2023-11-14T23:13:20Z"},
            {"type": "track", "event": "x", "userId": "u", "messageId": "b", "timestamp": "2023-11-14T23:13:20Z", "sentAt": "2023-11-14T23:13:25Z"},
            {"type": "identify", "userId": "u", "messageId": "c", "context": {"traits": {"plan": "free"}}},
            {"type": "identify", "userId": "u", "messageId": "d"},
        ]
    });
    let before = crate::clock::now_ms();
    let (status, ..) = send(&f.router, post_json("/v1/import", &batch)).await;
    let after = crate::clock::now_ms();
    assert_eq!(status, StatusCode::OK);
    let got = f.sink.got.lock().unwrap();
    let (a, b) = (got[0].timestamp_ms, got[1].timestamp_ms);
    assert!(
        (before - 10_000..=after - 10_000).contains(&a),
        "batch sentAt: received - 10 s, got {a}"
    );
    assert!(
        (before - 5_000..=after - 5_000).contains(&b),
        "own sentAt: received - 5 s, got {b}"
    );
    // The event's own context wins key by key... but `traits` is one key: the event's.
    assert_eq!(got[2].properties.get("plan"), Some(&json!("free")));
    assert_eq!(got[2].properties.get("email"), None);
    assert_eq!(got[3].properties.get("plan"), Some(&json!("gold")));
    assert_eq!(got[3].properties.get("email"), Some(&json!("x@y")));
}

#[tokio::test]
async fn owners_that_cannot_apply_make_the_client_retry() {
    let unavailable = |e: &Event| {
        if e.key() == "busy" {
            EventOutcome::Refused {
                code: ErrorCode::Unavailable,
                message: "owner n2 did not answer in time".into(),
            }
        } else if e.key() == "typed" {
            EventOutcome::Refused {
                code: ErrorCode::InvalidRequest,
                message: "feature \"revenue_7d\" reads `revenue`, which is not a number".into(),
            }
        } else if e.key() == "disk" {
            EventOutcome::Refused {
                code: ErrorCode::Storage,
                message: "flush failed".into(),
            }
        } else if e.key() == "again" {
            EventOutcome::Duplicate
        } else {
            EventOutcome::Applied { late: Vec::new() }
        }
    };
    let f = fixture_with(config(), Box::new(unavailable), None);
    let (status, reply, retry) = send(
        &f.router,
        post_json(
            "/v1/batch",
            &json!({"batch": [track("1", "ok"), track("2", "busy")]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["code"], "unavailable");
    assert_eq!(retry.as_deref(), Some("1"));
    let (status, reply, _) = send(
        &f.router,
        post_json(
            "/v1/batch",
            &json!({"batch": [track("3", "ok"), track("4", "disk")]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    assert_eq!(reply["code"], "storage");
    // Refused for its definitions on the owner: dropped, listed, counted; duplicates are fine.
    let (status, reply, _) = send(
        &f.router,
        post_json(
            "/v1/batch",
            &json!({"batch": [track("5", "again"), track("6", "typed"), track("7", "ok")]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["refused"], 1);
    assert_eq!(reply["errors"][0]["index"], 1);
    assert_eq!(reply["errors"][0]["messageId"], "6");
    assert_eq!(f.metrics.http_events_retry.load(Ordering::Relaxed), 2);
    assert_eq!(f.metrics.http_retry_later.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn beyond_max_inflight_requests_the_answer_is_429() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let f = fixture_with(
        HttpConfig {
            max_inflight_requests: 1,
            retry_after_s: 7,
            ..config()
        },
        Box::new(applied),
        Some(gate.clone()),
    );
    let router = f.router.clone();
    let first = tokio::spawn(async move {
        send(
            &router,
            post_json("/v1/page", &json!({"userId": "u", "messageId": "p1"})),
        )
        .await
    });
    // Wait until the first request holds the only slot (it waits at the gate).
    for _ in 0..200 {
        if f.metrics.http_events_received.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (status, reply, retry) = send(
        &f.router,
        post_json("/v1/page", &json!({"userId": "u", "messageId": "p2"})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reply}");
    assert_eq!(retry.as_deref(), Some("7"));
    gate.notify_one();
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(f.metrics.http_overloaded.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn other_paths_and_methods_answer_json_and_health_is_ok() {
    let f = fixture();
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let (status, body, _) = send(&f.router, get("/health")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body, _) = send(&f.router, get("/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    let (status, body, _) = send(&f.router, get("/v1/batch")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["code"], "method_not_allowed");
}
