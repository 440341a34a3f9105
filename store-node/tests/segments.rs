//! Segments on three real node processes, with the shipped example features and segments: an event that
//! changes a feature a rule reads moves the user's membership on the owner, in the same write; the
//! membership is the flag `segment:NAME` on the profile, readable by the client and replicated; a retried
//! event moves nothing; the owner counts entries and exits.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{all_alive, eventually, key_where, start_with, status_counter, storectl};
use common::FAST_CLUSTER;
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use featurestore::{FeatureView, Limits, NodeId};
use serde_json::json;

fn overlay() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let features = dir.join("features.example.toml");
    let segments = dir.join("segments.example.toml");
    format!("{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\nsegments = {segments:?}\n")
}

fn track(user: &str, message_id: &str, name: &str, properties: serde_json::Value) -> Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Event::from_segment(
        &json!({"type": "track", "event": name, "userId": user, "messageId": message_id,
                "properties": properties}),
        None,
        now,
        &Limits::default(),
    )
    .unwrap()
}

/// The user's membership of `segment` as the client reads it: `None` if the flag is absent.
async fn member(client: &store_client::Client, user: &str, segment: &str) -> Option<bool> {
    let view = client.get(user, None).await.unwrap()?;
    match view.features.get(&format!("segment:{segment}")) {
        Some(FeatureView::Flag(flag)) => Some(flag.values.iter().any(|v| v.value)),
        None => None,
        other => panic!("segment:{segment} is not a flag: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_memberships_on_the_owner_and_they_replicate() {
    let cluster = start_with(3, &overlay());
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let n2 = NodeId::new("n2").unwrap();
    let user = key_where(&client, "shopper", 3, |r| r[0] == n2);

    // An add to cart: the owner decides the entry into `open_cart` in the same write.
    let add = track(&user, "add-1", "Product Added", json!({"sku": "a"}));
    let out = client.ingest(std::slice::from_ref(&add)).await.unwrap();
    assert!(matches!(out[0], EventOutcome::Applied { .. }), "{out:?}");
    assert_eq!(member(&client, &user, "open_cart").await, Some(true));
    assert_eq!(
        member(&client, &user, "big_spender").await,
        None,
        "not evaluated: nothing it reads changed"
    );
    assert_eq!(
        status_counter(&client, &n2, "segment_entries")
            .await
            .unwrap(),
        1
    );

    // A retry of the same event is a duplicate and moves nothing.
    let again = client.ingest(std::slice::from_ref(&add)).await.unwrap();
    assert_eq!(again, vec![EventOutcome::Duplicate]);
    assert_eq!(
        status_counter(&client, &n2, "segment_entries")
            .await
            .unwrap(),
        1
    );

    // An order: exits `open_cart`, enters `big_spender`.
    let order = track(
        &user,
        "order-1",
        "Order Completed",
        json!({"revenue": 150.0}),
    );
    let out = client.ingest(&[order]).await.unwrap();
    assert!(matches!(out[0], EventOutcome::Applied { .. }), "{out:?}");
    assert_eq!(member(&client, &user, "open_cart").await, Some(false));
    assert_eq!(member(&client, &user, "big_spender").await, Some(true));
    assert_eq!(
        status_counter(&client, &n2, "segment_exits").await.unwrap(),
        1
    );
    assert_eq!(
        status_counter(&client, &n2, "segment_entries")
            .await
            .unwrap(),
        2
    );

    // `storectl segments of` lists them; `storectl segments check` compiles the shipped file.
    let of = storectl(&cluster, &["segments", "of", &user]);
    assert_eq!(
        of["segments"],
        json!({"open_cart": false, "big_spender": true}),
        "{of}"
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("segments.example.toml");
    let checked = storectl(&cluster, &["segments", "check", example.to_str().unwrap()]);
    let names: Vec<&str> = checked["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["open_cart", "high_intent", "big_spender"],
        "{checked}"
    );

    // Every replica holds the memberships (replicated with the features).
    for node in ["n1", "n2", "n3"].map(|n| NodeId::new(n).unwrap()) {
        eventually(
            "the memberships on every replica",
            Duration::from_secs(20),
            || async {
                let state = client
                    .local_state(&node, &user)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or(format!("{node} has nothing yet"))?;
                let value = |name: &str| {
                    state
                        .flags
                        .get(name)
                        .map(|f| f.siblings.iter().map(|s| s.value).collect::<Vec<_>>())
                };
                match (value("segment:open_cart"), value("segment:big_spender")) {
                    (Some(open), Some(big)) if open == [false] && big == [true] => Ok(()),
                    other => Err(format!("{node}: {other:?}")),
                }
            },
        )
        .await;
    }
}
