//! Identity resolution on three real node processes over QUIC: an anonymous visitor's events, then an
//! `identify` that links the anonymous id to a user whose owner is another node, then an `alias` into a
//! third user owned by the third node. The anonymous history is merged once (retries and replays count
//! nothing twice), later anonymous events follow the chain of redirects, and an id already linked to one
//! user is refused for another.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::{all_alive, eventually, key_where, start_with};
use common::events::overlay;
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use featurestore::{ErrorCode, FeatureView, Limits, NodeId, Value};
use serde_json::{json, Value as Json};
use store_client::Client;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn event(j: Json) -> Event {
    Event::from_segment(&j, None, now_ms(), &Limits::default()).unwrap()
}

fn page_anonymous(anonymous: &str, message_id: &str) -> Event {
    event(
        json!({"type": "page", "anonymousId": anonymous, "messageId": message_id, "name": "Home"}),
    )
}

async fn ingest_one(client: &Client, e: Event) -> EventOutcome {
    let mut got = client.ingest(&[e]).await.unwrap();
    assert_eq!(got.len(), 1);
    got.remove(0)
}

async fn applied(client: &Client, e: Event) {
    let outcome = ingest_one(client, e).await;
    assert!(
        matches!(outcome, EventOutcome::Applied { .. }),
        "{outcome:?}"
    );
}

/// `page_views` and `cart_adds_30m` of `user` as a client reads them.
async fn counts(client: &Client, user: &str) -> Result<(f64, f64), String> {
    let view = client
        .get(user, None)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no profile yet")?;
    let value = |name: &str| match view.features.get(name) {
        Some(FeatureView::Window { value: Some(v), .. }) => Ok(*v),
        None => Ok(0.0),
        other => Err(format!("{name}: {other:?}")),
    };
    Ok((value("page_views")?, value("cart_adds_30m")?))
}

async fn until_counts(client: &Client, user: &str, want: (f64, f64)) {
    eventually(
        &format!("{user} reads {want:?}"),
        Duration::from_secs(15),
        || async {
            let got = counts(client, user).await?;
            (got == want).then_some(()).ok_or(format!("{got:?}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_history_is_merged_once_and_later_events_follow_the_links() {
    let cluster = start_with(3, &overlay());
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let owner = |i: &'static str| move |r: &[NodeId]| r[0] == NodeId::new(i).unwrap();
    let anonymous = key_where(&client, "anon", 3, owner("n1"));
    let user = key_where(&client, "user", 3, owner("n2"));
    let canonical = key_where(&client, "account", 3, owner("n3"));

    // Before the link: three page views and a cart add as a visitor, one page view as the user.
    for i in 0..3 {
        applied(&client, page_anonymous(&anonymous, &format!("a-page-{i}"))).await;
    }
    applied(
        &client,
        event(
            json!({"type": "track", "event": "Product Added", "anonymousId": anonymous,
                     "messageId": "a-cart-0", "properties": {"sku": "p-1"}}),
        ),
    )
    .await;
    applied(
        &client,
        event(json!({"type": "page", "userId": user, "messageId": "u-page-0"})),
    )
    .await;
    until_counts(&client, &anonymous, (3.0, 1.0)).await;

    // The visitor signs in: its history is merged into the user's profile.
    let identify = event(
        json!({"type": "identify", "userId": user, "anonymousId": anonymous,
                                "messageId": "identify-1", "traits": {"plan": "pro"}}),
    );
    applied(&client, identify.clone()).await;
    until_counts(&client, &user, (4.0, 1.0)).await;
    let view = client.get(&user, None).await.unwrap().unwrap();
    assert!(
        matches!(view.features.get("plan"), Some(FeatureView::Gauge { value: Value::Str(p), .. }) if p == "pro"),
        "{view:?}"
    );

    // Retries and replays count nothing twice: the identify, and an anonymous event sent again.
    assert_eq!(
        ingest_one(&client, identify.clone()).await,
        EventOutcome::Duplicate
    );
    let replayed = ingest_one(&client, page_anonymous(&anonymous, "a-page-0")).await;
    assert_eq!(replayed, EventOutcome::Duplicate);

    // A new anonymous event is redirected to the user (n1 → n2).
    applied(&client, page_anonymous(&anonymous, "a-page-3")).await;
    until_counts(&client, &user, (5.0, 1.0)).await;
    assert_eq!(
        counts(&client, &anonymous).await.unwrap(),
        (3.0, 1.0),
        "the anonymous profile itself is left as it was"
    );

    // The user is aliased into an account (n2 → n3): the account holds everything, once.
    applied(
        &client,
        event(json!({"type": "alias", "userId": canonical, "previousId": user, "messageId": "alias-1"})),
    )
    .await;
    until_counts(&client, &canonical, (5.0, 1.0)).await;
    // Anonymous events now follow the chain anonymous → user → account.
    applied(&client, page_anonymous(&anonymous, "a-page-4")).await;
    until_counts(&client, &canonical, (6.0, 1.0)).await;
    assert_eq!(counts(&client, &user).await.unwrap(), (5.0, 1.0));
    // And a replay of the very first anonymous event is still a duplicate at the end of the chain.
    assert_eq!(
        ingest_one(&client, page_anonymous(&anonymous, "a-page-1")).await,
        EventOutcome::Duplicate
    );

    // The anonymous id belongs to the account now: another user cannot claim it.
    let other = key_where(&client, "other", 3, |_| true);
    let claim = ingest_one(
        &client,
        event(
            json!({"type": "identify", "userId": other, "anonymousId": anonymous,
                     "messageId": "identify-other"}),
        ),
    )
    .await;
    assert!(
        matches!(&claim, EventOutcome::Refused { code: ErrorCode::InvalidRequest, message } if message.contains("already linked")),
        "{claim:?}"
    );
    until_counts(&client, &canonical, (6.0, 1.0)).await;

    // Every node counted what it did.
    let mut links = 0;
    let mut redirects = 0;
    let mut refused = 0;
    for n in ["n1", "n2", "n3"] {
        let status = client.status_of(&NodeId::new(n).unwrap()).await.unwrap();
        let counter = |name: &str| {
            status
                .counters
                .iter()
                .find(|(k, _)| k == name)
                .map_or(0, |(_, v)| *v)
        };
        links += counter("identity_links");
        redirects += counter("identity_redirects");
        refused += counter("identity_refused");
    }
    assert_eq!(links, 2, "the identify and the alias");
    assert!(redirects >= 3, "{redirects} redirects");
    assert_eq!(refused, 1);
}
