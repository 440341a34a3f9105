//! Acceptance: flag siblings and erasure through the real server.
#![allow(clippy::unwrap_used)]

mod common;

use featurestore::wire::client::GaugeWrite;
use featurestore::{CausalContext, FeatureView, Value};

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

fn featurestore_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
