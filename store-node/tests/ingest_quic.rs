//! Events ingested over QUIC with `Client::ingest` (as `storectl track` sends them), on three real node
//! processes: applied on the owner, readable as windowed features, a retry counted once — also when the
//! owner was `kill -9`ed between the first delivery and the retry, so the retry lands on another owner.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{all_alive, eventually, key_where, start_with};
use common::FAST_CLUSTER;
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use featurestore::{FeatureView, Limits, NodeId};
use serde_json::json;

fn overlay() -> String {
    let features = Path::new(env!("CARGO_MANIFEST_DIR")).join("features.example.toml");
    format!("{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\n")
}

fn order(user: &str, message_id: &str, revenue: f64) -> Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Event::from_segment(
        &json!({"type": "track", "event": "Order Completed", "userId": user, "messageId": message_id,
                "properties": {"revenue": revenue}}),
        None,
        now,
        &Limits::default(),
    )
    .unwrap()
}

async fn orders(client: &store_client::Client, user: &str) -> Result<(f64, f64), String> {
    let view = client
        .get(user, None)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no profile yet")?;
    let value = |name: &str| match view.features.get(name) {
        Some(FeatureView::Window { value: Some(v), .. }) => Ok(*v),
        other => Err(format!("{name}: {other:?}")),
    };
    Ok((value("orders_30m")?, value("revenue_7d")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_quic_count_once_even_when_the_owner_dies_before_the_retry() {
    let mut cluster = start_with(3, &overlay());
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;

    // A user whose owner (first replica) is n1.
    let n1 = NodeId::new("n1").unwrap();
    let user = key_where(&client, "buyer", 3, |r| r[0] == n1);
    let first = [order(&user, "order-1", 40.0), order(&user, "order-2", 2.5)];
    let outcomes = client.ingest(&first).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, EventOutcome::Applied { .. })),
        "{outcomes:?}"
    );
    eventually("both orders readable", Duration::from_secs(10), || {
        orders(&client, &user)
    })
    .await;
    assert_eq!(orders(&client, &user).await.unwrap(), (2.0, 42.5));

    // A retry of the same message while the owner is alive: a duplicate.
    let retry = client.ingest(&first[..1]).await.unwrap();
    assert_eq!(retry, vec![EventOutcome::Duplicate]);

    // Let the replicas hold the dedup set, then kill the owner: the retry reaches another owner.
    eventually(
        "n2 holds both message ids",
        Duration::from_secs(10),
        || async {
            let state = client
                .local_state(&NodeId::new("n2").unwrap(), &user)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("n2 has nothing yet")?;
            (state.seen.ids.len() == 2)
                .then_some(())
                .ok_or(format!("n2 has {} ids", state.seen.ids.len()))
        },
    )
    .await;
    cluster.kill9(0);
    let after = eventually(
        "a retry answered by another owner",
        Duration::from_secs(20),
        || async {
            let got = client
                .ingest(&first[..1])
                .await
                .map_err(|e| e.to_string())?;
            match got.as_slice() {
                [EventOutcome::Refused { message, .. }] => Err(message.clone()),
                _ => Ok(got),
            }
        },
    )
    .await;
    assert_eq!(
        after,
        vec![EventOutcome::Duplicate],
        "counted once across the owner change"
    );
    let fresh = client
        .ingest(&[order(&user, "order-3", 1.0)])
        .await
        .unwrap();
    assert!(
        matches!(fresh[0], EventOutcome::Applied { .. }),
        "{fresh:?}"
    );
    let (count, revenue) = eventually("three orders", Duration::from_secs(10), || async {
        let got = orders(&client, &user).await?;
        (got.0 == 3.0).then_some(got).ok_or(format!("{got:?}"))
    })
    .await;
    assert_eq!((count, revenue), (3.0, 43.5));

    // An event that does not fit its definitions is refused with its reason and changes nothing.
    let bad = Event::from_segment(
        &json!({"type": "track", "event": "Order Completed", "userId": user, "messageId": "order-bad",
                "properties": {"revenue": {"amount": 3}}}),
        None,
        0,
        &Limits::default(),
    )
    .unwrap();
    let refused = client.ingest(&[bad]).await.unwrap();
    assert!(
        matches!(&refused[0], EventOutcome::Refused { message, .. } if message.contains("revenue")),
        "{refused:?}"
    );
    assert_eq!(orders(&client, &user).await.unwrap(), (3.0, 43.5));
}
