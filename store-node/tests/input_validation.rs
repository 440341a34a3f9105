//! Input an operator found accepted although it should not be (issue 11), checked end to end against a
//! real node over QUIC: each gets its typed error, is counted as rejected, and changes nothing.
//! (The parsing of `storectl` arguments — `NaN`, `inf`, `1e999`, `--quorum 0` — is tested in
//! `storectl.rs`.)
#![allow(clippy::unwrap_used)]

mod common;

use featurestore::{CausalContext, ErrorCode, NodeId, Value};
use store_client::{Error, GaugeWrite};

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorCode {
    match result {
        Err(e) => e
            .server_code()
            .unwrap_or_else(|| panic!("not a node's error reply: {e}")),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

/// The node's `requests_rejected` counter.
async fn rejected(client: &store_client::Client) -> u64 {
    let n1 = NodeId::new("n1").unwrap();
    common::cluster::status_counter(client, &n1, "requests_rejected")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_ttls_values_contexts_and_overflows_are_refused_typed_and_counted() {
    let node = common::TestNode::start("");
    let client = node.client().await;
    let rejected = || rejected(&client);
    let before = rejected().await;

    // Control characters in a key.
    for key in ["user\n42", "user\u{7}", "tab\tkey"] {
        assert_eq!(
            code(client.put(key, &[("a", Value::I64(1))]).await),
            ErrorCode::InvalidRequest,
            "{key:?}"
        );
    }
    // A TTL of 0 would be acknowledged and invisible at once.
    let zero_ttl = vec![GaugeWrite {
        name: "a".into(),
        value: Value::I64(1),
        ttl_ms: Some(0),
    }];
    assert_eq!(
        code(client.put_with("u1", zero_ttl, None).await),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        code(
            client
                .set_flag("u1", "vip", true, &CausalContext::default(), Some(0))
                .await
        ),
        ErrorCode::InvalidRequest
    );
    // Non-finite numbers.
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(
            code(client.put("u1", &[("a", Value::F64(v))]).await),
            ErrorCode::InvalidRequest,
            "{v}"
        );
    }
    // A causal context beyond `max_context_entries` (256 by default).
    let huge: CausalContext = (0..300)
        .map(|i| format!("n{i}:1"))
        .collect::<Vec<_>>()
        .join(",")
        .parse()
        .unwrap();
    assert_eq!(
        code(client.set_flag("u1", "vip", true, &huge, None).await),
        ErrorCode::LimitExceeded
    );
    // A counter never saturates silently.
    client.increment("u1", &[("c", i64::MAX)]).await.unwrap();
    assert_eq!(
        code(client.increment("u1", &[("c", 1)]).await),
        ErrorCode::CounterOverflow
    );

    // Nothing of it was stored; every refusal was counted.
    let view = client.get("u1", None).await.unwrap().unwrap();
    assert_eq!(view.features.keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(rejected().await - before, 10);
    client.close().await;
}

/// A `Writes` request (what a coalescing client sends) is answered write by write: a refused write is
/// refused alone, with its own typed error, and counted; its neighbours are applied. A batch above
/// `max_batch` is refused whole, and a `Writes` of the wrong shape changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writes_request_refuses_each_bad_write_alone() {
    use featurestore::wire::client::{GaugeWrite as Gauge, WriteOp, WriteReply};
    use featurestore::{Request, Response};

    let node = common::TestNode::start("");
    let client = node.client().await;
    let rejected = || rejected(&client);
    let before = rejected().await;
    let put = |key: &str, value: Value| WriteOp::Put {
        key: key.into(),
        gauges: vec![Gauge {
            name: "a".into(),
            value,
            ttl_ms: None,
        }],
        timestamp_ms: None,
        quorum: 1,
    };
    let writes = vec![
        put("w1", Value::I64(1)),
        put("bad\nkey", Value::I64(2)),
        put("w2", Value::F64(f64::NAN)),
        WriteOp::Increment {
            key: "w3".into(),
            deltas: vec![featurestore::wire::client::CounterDelta {
                name: "c".into(),
                delta: 5,
            }],
            quorum: 1,
        },
        WriteOp::Erase {
            key: "w4".into(),
            quorum: 1,
        },
    ];
    let replies = match client.request(Request::Writes { writes }).await.unwrap() {
        Response::Written(replies) => replies,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(replies.len(), 5);
    assert!(matches!(replies[0], WriteReply::Put(_)), "{:?}", replies[0]);
    for reply in &replies[1..3] {
        match reply {
            WriteReply::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}"),
            other => panic!("accepted: {other:?}"),
        }
    }
    assert_eq!(replies[3], WriteReply::Incremented(vec![5]));
    assert!(
        matches!(replies[4], WriteReply::Erased { .. }),
        "{:?}",
        replies[4]
    );
    assert_eq!(rejected().await - before, 2);
    let view = client.get("w1", None).await.unwrap().unwrap();
    assert_eq!(view.features.keys().collect::<Vec<_>>(), ["a"]);
    assert!(client.get("w2", None).await.unwrap().is_none());

    // More writes than `max_batch` (1000): refused whole, nothing applied.
    let many: Vec<WriteOp> = (0..1001)
        .map(|i| put(&format!("many-{i}"), Value::I64(i)))
        .collect();
    assert_eq!(
        code(client.request(Request::Writes { writes: many }).await),
        ErrorCode::LimitExceeded
    );
    assert!(client.get("many-0", None).await.unwrap().is_none());
    client.close().await;
}
