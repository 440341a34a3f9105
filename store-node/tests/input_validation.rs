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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_ttls_values_contexts_and_overflows_are_refused_typed_and_counted() {
    let node = common::TestNode::start("");
    let client = node.client().await;
    let n1 = NodeId::new("n1").unwrap();
    let rejected = || async {
        common::cluster::status_counter(&client, &n1, "requests_rejected")
            .await
            .unwrap()
    };
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
