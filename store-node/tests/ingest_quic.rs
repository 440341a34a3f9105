//! Events ingested over QUIC with `Client::ingest` (as `storectl track` sends them), on three real node
//! processes: applied on the owner, readable as windowed features, a retry counted once — also when the
//! owner was `kill -9`ed between the first delivery and the retry, so the retry lands on another owner.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::{all_alive, eventually, key_where, start_with};
use common::events::{order, orders, overlay};
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use featurestore::{Limits, NodeId};
use serde_json::json;

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

/// One `ingest` call with the events of many users, interleaved: grouped by owner node, every event
/// applied once (the same call again is all duplicates) and each user's count exact, with no event
/// forwarded between nodes (each group went to its users' owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_users_goes_to_their_owners_and_counts_once() {
    let cluster = start_with(3, &overlay());
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let users: Vec<String> = (0..40).map(|i| format!("batch-user-{i}")).collect();
    let mut batch = Vec::new();
    for round in 0..3 {
        for user in &users {
            batch.push(order(user, &format!("{user}-order-{round}"), 1.0));
        }
    }
    // More events than one request carries, so some groups take several requests.
    for (i, user) in users.iter().take(2).enumerate() {
        for extra in 0..store_client::INGEST_EVENTS_PER_REQUEST {
            batch.push(order(user, &format!("{user}-extra-{i}-{extra}"), 1.0));
        }
    }
    let before = counter_sum(&client, "requests").await;
    let outcomes = client.ingest(&batch).await.unwrap();
    let requests = counter_sum(&client, "requests").await - before;
    // 320 events of 40 users: one request per user's run of events would be 122 requests; grouped by
    // owner node it is one or two per node (plus the three status requests of the first sum).
    assert!(requests <= 12, "{requests} requests for one ingest call");
    assert_eq!(outcomes.len(), batch.len());
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, EventOutcome::Applied { .. })),
        "{outcomes:?}"
    );
    let again = client.ingest(&batch).await.unwrap();
    assert!(
        again.iter().all(|o| *o == EventOutcome::Duplicate),
        "{again:?}"
    );
    for (i, user) in users.iter().enumerate() {
        let want = if i < 2 {
            3.0 + store_client::INGEST_EVENTS_PER_REQUEST as f64
        } else {
            3.0
        };
        eventually(
            &format!("{user}'s orders"),
            Duration::from_secs(10),
            || async {
                let got = orders(&client, user).await?;
                (got.0 == want).then_some(()).ok_or(format!("{got:?}"))
            },
        )
        .await;
    }
    let forwarded = counter_sum(&client, "events_forwarded").await;
    assert_eq!(forwarded, 0, "every group went to its users' owner");
}

/// The sum of counter `name` over the three nodes.
async fn counter_sum(client: &store_client::Client, name: &str) -> u64 {
    let mut sum = 0;
    for node in ["n1", "n2", "n3"] {
        let status = client.status_of(&NodeId::new(node).unwrap()).await.unwrap();
        sum += status
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
    }
    sum
}

/// Sends `events` to the client's home node (the only seed of a `node_client`), whatever their owner:
/// that node forwards them.
async fn ingest_at_home(
    client: &store_client::Client,
    events: &[Event],
) -> Result<Vec<EventOutcome>, String> {
    use featurestore::wire::event::WireEvent;
    let request = featurestore::Request::Ingest {
        events: events.iter().map(WireEvent::from).collect(),
    };
    match client.request(request).await.map_err(|e| e.to_string())? {
        featurestore::Response::Ingested(outcomes) => Ok(outcomes),
        other => Err(format!("unexpected {other:?}")),
    }
}

/// Regression (harness seed 3013, docs/harness.md): an event forwarded to an owner that is frozen
/// (`SIGSTOP`) times out at the sender; the client's retry is applied by the acting owner; when the frozen
/// owner resumes and reads the forward that queued up meanwhile, it must not apply it too (its deadline
/// has passed, and the process knows it stalled). Counted once on every replica after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_forwarded_to_a_frozen_owner_and_retried_counts_once() {
    use store_node::launch::Signal;
    let mut cluster = start_with(3, &overlay());
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let n3 = NodeId::new("n3").unwrap();
    let user = key_where(&client, "frozen", 3, |r| r[0] == n3);
    let via_n1 = cluster.node_client(0).await;
    let event = [order(&user, "order-frozen", 7.0)];

    common::cluster::signal(&mut cluster, 2, Signal::Stop);
    let first = ingest_at_home(&via_n1, &event).await.unwrap();
    assert!(
        matches!(&first[0], EventOutcome::Refused { message, .. } if message.contains("did not answer")),
        "the first attempt is forwarded to the frozen owner and times out: {first:?}"
    );
    // Once n1 judges n3 down, the retry is applied by the acting owner.
    let retried = eventually("the retry applied", Duration::from_secs(30), || async {
        let got = ingest_at_home(&via_n1, &event).await?;
        match &got[0] {
            EventOutcome::Applied { .. } => Ok(got),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(matches!(retried[0], EventOutcome::Applied { .. }));
    common::cluster::signal(&mut cluster, 2, Signal::Cont);

    // After the heal every replica holds the message id and counts the order once.
    let nodes = ["n1", "n2", "n3"].map(|n| NodeId::new(n).unwrap());
    eventually(
        "every replica converged on one order",
        Duration::from_secs(30),
        || async {
            for node in &nodes {
                let state = client
                    .local_state(node, &user)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or(format!("{node} has nothing yet"))?;
                let count = state.windows.get("orders_30m").map_or(0, |w| {
                    w.buckets
                        .values()
                        .flat_map(|slots| slots.values())
                        .map(|s| s.count)
                        .sum::<u64>()
                });
                if !state.seen.ids.contains_key("order-frozen") || count == 0 {
                    return Err(format!("{node}: not there yet ({count} orders)"));
                }
                assert_eq!(count, 1, "{node} counts the order once: {state:?}");
            }
            Ok(())
        },
    )
    .await;
    // Give the resumed owner time to have applied its queued copy, if it were going to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(orders(&client, &user).await.unwrap(), (1.0, 7.0));
    for node in &nodes {
        let state = client.local_state(node, &user).await.unwrap().unwrap();
        let count: u64 = state.windows["orders_30m"]
            .buckets
            .values()
            .flat_map(|slots| slots.values())
            .map(|s| s.count)
            .sum();
        assert_eq!(count, 1, "{node} counts the order once after the heal");
    }
}
