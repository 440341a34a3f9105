//! Concurrent calls share requests (the client's coalescing), on three real node processes: many tasks
//! that each ingest one event, each get exactly their own outcome, and every count is exact. Kept apart
//! from `ingest_quic.rs`: its 300-call bursts load the machine, and that file's paused-owner test is
//! sensitive to timing.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::{all_alive, eventually, start_with};
use common::events::{order, orders, overlay};
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;

/// Many tasks that each ingest one event at the same moment share requests (the client coalesces them
/// per owner node), and each call still gets exactly its own event's outcome: in the second round, calls
/// whose event is new get `Applied` and calls re-sending an old one get `Duplicate`, interleaved. With
/// coalescing off, every call is its own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_event_calls_share_requests_and_get_their_own_outcomes() {
    let cluster = start_with(3, &overlay());
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let users: Vec<String> = (0..30).map(|i| format!("solo-user-{i}")).collect();
    let event_of = |i: usize| {
        order(
            &users[i % users.len()],
            &format!("solo-{i}"),
            (i % 7) as f64,
        )
    };

    /// Ingests every event in its own concurrent call; the outcomes in event order.
    async fn one_call_each(client: &store_client::Client, events: Vec<Event>) -> Vec<EventOutcome> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, event) in events.into_iter().enumerate() {
            let client = client.clone();
            tasks.spawn(async move {
                let mut got = client.ingest(&[event]).await.unwrap();
                assert_eq!(got.len(), 1);
                (i, got.remove(0))
            });
        }
        let mut outcomes = vec![None; tasks.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, outcome) = done.unwrap();
            outcomes[i] = Some(outcome);
        }
        outcomes.into_iter().map(Option::unwrap).collect()
    }

    // Round 1: 300 new events, 10 per user.
    let before = client.ingest_requests_sent();
    let first = one_call_each(&client, (0..300).map(event_of).collect()).await;
    let requests = client.ingest_requests_sent() - before;
    assert!(
        first
            .iter()
            .all(|o| matches!(o, EventOutcome::Applied { .. })),
        "{first:?}"
    );
    assert!(
        requests <= 150,
        "{requests} requests for 300 concurrent calls: not coalesced"
    );

    // Round 2: even indices re-send round 1's events, odd ones send new events of the same users.
    let mixed: Vec<Event> = (0..300)
        .map(|i| {
            if i % 2 == 0 {
                event_of(i)
            } else {
                event_of(300 + i)
            }
        })
        .collect();
    let second = one_call_each(&client, mixed).await;
    for (i, outcome) in second.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(*outcome, EventOutcome::Duplicate, "call {i}");
        } else {
            assert!(
                matches!(outcome, EventOutcome::Applied { .. }),
                "call {i}: {outcome:?}"
            );
        }
    }

    // Every user: its 10 events of round 1 and 5 new ones, each counted once.
    for (u, user) in users.iter().enumerate() {
        let mine = |i: &usize| i % users.len() == u;
        let revenue: f64 = (0..300)
            .filter(mine)
            .chain(
                (0..300)
                    .filter(|i| i % 2 == 1)
                    .map(|i| 300 + i)
                    .filter(mine),
            )
            .map(|i| (i % 7) as f64)
            .sum();
        let count = (0..300).filter(mine).count()
            + (0..300).filter(|i| i % 2 == 1 && mine(&(300 + i))).count();
        eventually(
            &format!("{user}'s orders"),
            Duration::from_secs(10),
            || async {
                let got = orders(&client, user).await?;
                (got == (count as f64, revenue))
                    .then_some(())
                    .ok_or(format!("{got:?}, want {:?}", (count, revenue)))
            },
        )
        .await;
    }

    // Coalescing off: one request per call.
    let config = store_client::ClientConfig {
        coalesce_requests_per_node: 0,
        ..store_client::ClientConfig::load(cluster.dir.path().join("client.toml")).unwrap()
    };
    let plain = store_client::Client::connect(config).await.unwrap();
    let third = one_call_each(&plain, (0..40).map(|i| event_of(1000 + i)).collect()).await;
    assert!(
        third
            .iter()
            .all(|o| matches!(o, EventOutcome::Applied { .. })),
        "{third:?}"
    );
    assert_eq!(plain.ingest_requests_sent(), 40);
}
