//! Acceptance: flag siblings, erasure, and reads kept encoded (`get_encoded`) through the real server.
#![allow(clippy::unwrap_used)]

mod common;

use featurestore::wire::client::GaugeWrite;
use featurestore::{CausalContext, FeatureView, Value};
use store_client::{FeatureRef, ValueRef};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_flag_writes_become_siblings_and_a_read_context_resolves_them() {
    let node = common::TestNode::start("");
    let client = node.client().await;
    let first = client
        .set_flag("u1", "high_value", true, &CausalContext::default(), None)
        .await
        .unwrap();
    assert_eq!(first.values.len(), 1);
    let stale = first.context.clone();

    // Two writers both based on the same (now stale) read, both through the same node.
    client
        .set_flag("u1", "high_value", false, &stale, None)
        .await
        .unwrap();
    let after = client
        .set_flag("u1", "high_value", true, &stale, None)
        .await
        .unwrap();
    assert_eq!(
        after.values.len(),
        2,
        "both concurrent writes survive: {after:?}"
    );

    // A read returns both siblings and a context covering them.
    let view = client.get("u1", None).await.unwrap().unwrap();
    let FeatureView::Flag(flag) = &view.features["high_value"] else {
        panic!("not a flag: {view:?}");
    };
    assert_eq!(flag.values.len(), 2);
    let mut values: Vec<bool> = flag.values.iter().map(|v| v.value).collect();
    values.sort();
    assert_eq!(values, vec![false, true]);

    // A third write with the read's context replaces both.
    let resolved = client
        .set_flag("u1", "high_value", false, &flag.context, None)
        .await
        .unwrap();
    assert_eq!(resolved.values.len(), 1);
    assert!(!resolved.values[0].value);
    let view = client
        .get("u1", Some(&["high_value"]))
        .await
        .unwrap()
        .unwrap();
    let FeatureView::Flag(flag) = &view.features["high_value"] else {
        panic!("not a flag");
    };
    assert_eq!(flag.values.len(), 1);

    // The context survives the text form storectl uses.
    let token = flag.context.to_string();
    assert_eq!(token.parse::<CausalContext>().unwrap(), flag.context);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_hides_everything_and_drops_older_writes_across_restart() {
    let mut node = common::TestNode::start("");
    let client = node.client().await;
    let ack = client
        .put("u1", &[("cart_value", Value::F64(42.5))])
        .await
        .unwrap();
    client.increment("u1", &[("orders", 2)]).await.unwrap();
    client
        .set_flag("u1", "vip", true, &CausalContext::default(), None)
        .await
        .unwrap();
    assert!(client.get("u1", None).await.unwrap().is_some());

    let watermark = client.erase("u1").await.unwrap();
    assert!(watermark > ack.version);
    assert_eq!(client.get("u1", None).await.unwrap(), None);

    // A write carrying an older marker (an event time before the erasure) is dropped.
    let late = client
        .put_with(
            "u1",
            vec![GaugeWrite {
                name: "cart_value".into(),
                value: Value::F64(1.0),
                ttl_ms: None,
            }],
            Some(watermark.ts.wall_ms - 1),
        )
        .await
        .unwrap();
    assert_eq!(late.superseded, vec!["cart_value".to_owned()]);
    assert_eq!(client.get("u1", None).await.unwrap(), None);

    // The erasure is durable: after kill -9 and restart the data is still gone and old writes still drop.
    node.kill9();
    node.launch();
    let client = node.client().await;
    assert_eq!(client.get("u1", None).await.unwrap(), None);
    let late = client
        .put_with(
            "u1",
            vec![GaugeWrite {
                name: "cart_value".into(),
                value: Value::F64(2.0),
                ttl_ms: None,
            }],
            Some(watermark.ts.wall_ms),
        )
        .await
        .unwrap();
    assert_eq!(late.superseded.len(), 1);

    // New writes after the erasure are kept.
    client
        .put("u1", &[("cart_value", Value::F64(7.0))])
        .await
        .unwrap();
    let view = client.get("u1", None).await.unwrap().unwrap();
    assert_eq!(view.features.len(), 1);
    assert!(matches!(
        view.features["cart_value"],
        FeatureView::Gauge { value: Value::F64(v), .. } if v == 7.0
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_future_timestamps() {
    let node = common::TestNode::start("max_clock_skew_ms = 1000\n");
    let client = node.client().await;
    client
        .put_with(
            "u1",
            vec![GaugeWrite {
                name: "session".into(),
                value: Value::Str("s1".into()),
                ttl_ms: Some(300),
            }],
            None,
        )
        .await
        .unwrap();
    assert!(client.get("u1", None).await.unwrap().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        client.get("u1", None).await.unwrap(),
        None,
        "expired value still visible"
    );

    let far_future = featurestore_now_ms() + 60_000;
    let err = client
        .put_with(
            "u1",
            vec![GaugeWrite {
                name: "x".into(),
                value: Value::I64(1),
                ttl_ms: None,
            }],
            Some(far_future),
        )
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(featurestore::ErrorCode::ClockSkew));
}

/// A read kept encoded shows what `get` shows, for every kind of feature, with and without a
/// projection, and nothing for an entity with nothing visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_read_shows_what_get_shows() {
    let node = common::TestNode::start("");
    let client = node.client().await;
    let long = "a string value longer than any inline string";
    client
        .put(
            "u1",
            &[
                ("b_bool", Value::Bool(true)),
                ("c_int", Value::I64(-42)),
                ("d_float", Value::F64(0.25)),
                ("e_short", Value::Str("s".into())),
                ("f_long", Value::Str(long.into())),
            ],
        )
        .await
        .unwrap();
    client.increment("u1", &[("a_count", 7)]).await.unwrap();
    let flag = client
        .set_flag("u1", "g_flag", true, &CausalContext::default(), None)
        .await
        .unwrap();
    // A sibling: a write from the same (stale) empty context.
    client
        .set_flag("u1", "g_flag", false, &CausalContext::default(), None)
        .await
        .unwrap();

    let owned = client.get("u1", None).await.unwrap().unwrap();
    let encoded = client.get_encoded("u1", None).await.unwrap().unwrap();
    assert_eq!(encoded.to_view().unwrap(), owned);
    assert_eq!(encoded.len(), 7);
    let names: Vec<&str> = encoded.features().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        ["a_count", "b_bool", "c_int", "d_float", "e_short", "f_long", "g_flag"]
    );
    assert_eq!(
        encoded.get("a_count"),
        Some(FeatureRef::Counter { value: 7 })
    );
    let Some(FeatureRef::Gauge { value, version, .. }) = encoded.get("f_long") else {
        panic!("not a gauge: {encoded:?}");
    };
    assert_eq!(value, ValueRef::Str(long));
    assert_eq!(version.node(), "n1");
    let Some(FeatureRef::Flag(read_flag)) = encoded.get("g_flag") else {
        panic!("not a flag: {encoded:?}");
    };
    assert_eq!(read_flag.values.len(), 2, "{read_flag:?}");
    assert!(!read_flag.context.is_empty() && !flag.context.is_empty());

    let projected = client
        .get_encoded("u1", Some(&["c_int", "nope"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        projected.to_view().unwrap(),
        client
            .get("u1", Some(&["c_int", "nope"]))
            .await
            .unwrap()
            .unwrap()
    );
    assert_eq!(projected.len(), 1);
    assert_eq!(client.get_encoded("nobody", None).await.unwrap(), None);
    assert_eq!(
        client.get_encoded_with_quorum("u1", None, 1).await.unwrap(),
        Some(encoded)
    );
}

fn featurestore_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
