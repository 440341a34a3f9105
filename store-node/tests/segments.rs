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
    match view.features.get(format!("segment:{segment}").as_str()) {
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

/// Segments with deadlines: `recent_cart` holds for 3 s after an add to cart (an exit with no new event),
/// `cart_abandoner` starts 3 s after it (an entry with no new event).
const TIMED: &str = r#"
[[segment]]
name = "recent_cart"
rule = 'now - last_cart_add < duration("3s")'

[[segment]]
name = "cart_abandoner"
rule = 'cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration("3s")'

[[segment]]
name = "big_spender"
rule = 'revenue_7d > 100.0'
"#;

async fn next_change(
    sub: &mut store_client::Subscription,
    what: &str,
) -> featurestore::wire::segment::SegmentChange {
    tokio::time::timeout(Duration::from_secs(20), sub.recv())
        .await
        .unwrap_or_else(|_| panic!("no change in time: waiting for {what}"))
        .expect("subscription open")
}

/// The change log and the timers on real processes: a subscriber sees the entry an event caused, with its
/// fencing fields and why-trace; timers fire an exit and an entry with no new event; only the rules that
/// read a changed feature are evaluated (counted); after the owner is killed and restarted the
/// subscription resumes from its cursor (no change twice, the log's seqs continue); a segment added at
/// runtime reaches every node and is backfilled over the existing profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_subscribers_resume_and_runtime_segments_are_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let segments = dir.path().join("segments.toml");
    std::fs::write(&segments, TIMED).unwrap();
    let features = Path::new(env!("CARGO_MANIFEST_DIR")).join("features.example.toml");
    let overlay =
        format!("{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\nsegments = {segments:?}\n");
    let mut cluster = start_with(3, &overlay);
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let n2 = NodeId::new("n2").unwrap();
    let user = key_where(&client, "timed", 3, |r| r[0] == n2);
    let mut sub = client.subscribe_segments(None, store_client::Cursor::new());

    let add = track(&user, "add-1", "Product Added", json!({"sku": "a"}));
    let out = client.ingest(std::slice::from_ref(&add)).await.unwrap();
    assert!(matches!(out[0], EventOutcome::Applied { .. }), "{out:?}");
    let entered = next_change(&mut sub, "recent_cart entered").await;
    assert_eq!(
        (entered.change.segment.as_str(), entered.change.kind),
        ("recent_cart", featurestore::segment::Transition::Entered)
    );
    assert_eq!(entered.change.user, user);
    assert_eq!(entered.owner, n2);
    assert!(entered.ring_version > 0);
    assert!(entered.accepted_ms.is_some());
    assert_eq!(entered.change.dot.actor.node, n2);
    assert_eq!(entered.change.why.message_id.as_deref(), Some("add-1"));
    assert!(
        entered.change.why.read.contains_key("last_cart_add"),
        "{:?}",
        entered.change.why
    );
    // Two rules read the cart features; big_spender reads none of them and is not evaluated.
    assert_eq!(
        status_counter(&client, &n2, "segment_evaluations")
            .await
            .unwrap(),
        2
    );

    // No new event: the timers fire the exit and the entry.
    let mut timed = Vec::new();
    while timed.len() < 2 {
        let c = next_change(&mut sub, "the timer-fired changes").await;
        assert!(c.deadline_ms.is_some(), "{c:?}");
        assert!(c.change.why.message_id.is_none());
        timed.push((c.change.segment.clone(), c.change.kind));
    }
    timed.sort();
    assert_eq!(
        timed,
        [
            (
                "cart_abandoner".to_owned(),
                featurestore::segment::Transition::Entered
            ),
            (
                "recent_cart".to_owned(),
                featurestore::segment::Transition::Exited
            )
        ]
    );
    assert!(
        status_counter(&client, &n2, "segment_timers_fired")
            .await
            .unwrap()
            >= 1
    );
    let why = storectl(&cluster, &["segments", "why", &user, "cart_abandoner"]);
    assert_eq!(why["member"], true, "{why}");
    assert_eq!(why["last"]["change"]["kind"], "entered", "{why}");
    assert!(why["rule"].as_str().unwrap().contains("duration"), "{why}");

    // Kill the owner, restart it: the subscription resumes from its cursor.
    let before = sub.cursor();
    assert_eq!(before.get(&n2), Some(&4), "{before:?}");
    cluster.kill9(1);
    cluster.launch(1);
    all_alive(&cluster, &client).await;
    let order = track(
        &user,
        "order-1",
        "Order Completed",
        json!({"revenue": 150.0}),
    );
    eventually("the order applied", Duration::from_secs(20), || async {
        match client.ingest(std::slice::from_ref(&order)).await {
            Ok(out)
                if matches!(
                    out[0],
                    EventOutcome::Applied { .. } | EventOutcome::Duplicate
                ) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut after = Vec::new();
    while after.len() < 2 {
        let c = next_change(&mut sub, "the order's changes").await;
        if c.owner == n2 {
            assert!(c.seq >= 4, "a change delivered twice: {c:?}");
        }
        after.push((c.change.segment.clone(), c.change.kind));
    }
    after.sort();
    assert_eq!(
        after,
        [
            (
                "big_spender".to_owned(),
                featurestore::segment::Transition::Entered
            ),
            (
                "cart_abandoner".to_owned(),
                featurestore::segment::Transition::Exited
            )
        ]
    );

    // A segment added at runtime: every node evaluates it, and the existing profile is backfilled.
    let added = storectl(
        &cluster,
        &["segments", "add", "carted", "cart_adds_30m >= 1"],
    );
    assert_eq!(added["catalog"]["version"], 1, "{added}");
    let c = next_change(&mut sub, "the backfilled entry").await;
    assert_eq!(
        (
            c.change.segment.as_str(),
            c.change.kind,
            c.change.user.as_str()
        ),
        (
            "carted",
            featurestore::segment::Transition::Entered,
            user.as_str()
        )
    );
    assert!(c.accepted_ms.is_none() && c.deadline_ms.is_none());
    eventually(
        "every node has the segment",
        Duration::from_secs(20),
        || async {
            let list = storectl(&cluster, &["segments", "list"]);
            let all = list.as_array().unwrap().iter().all(|v| {
                v["segments"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|d| d["name"] == "carted"))
            });
            if all && list.as_array().unwrap().len() == 3 {
                Ok(())
            } else {
                Err(list.to_string())
            }
        },
    )
    .await;
    let members = storectl(&cluster, &["segments", "members", "carted"]);
    assert_eq!(members["members"], json!([user]), "{members}");
    drop(sub);
}

/// Acceptance of the segments issue, over the wire a customer uses: events posted with the Segment HTTP
/// API to one node move a user owned by another node, and a `subscribe_segments` client whose only seed
/// is the third node sees the entry, with the why-trace naming the event, within a second of the POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_over_http_reaches_a_subscriber_elsewhere_within_a_second() {
    const KEY: &str = "http-segments-write-key-0001";
    let overlay = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n\
         [[http.write_keys]]\nsource = \"web\"\nkey = \"{KEY}\"\n",
        overlay()
    );
    let cluster = start_with(3, &overlay);
    let client = cluster.client().await;
    all_alive(&cluster, &client).await;
    let n1 = common::http::Target::plain(cluster.nodes[0].http.expect("n1's HTTP listener"));
    let n2 = NodeId::new("n2").unwrap();
    // Connected elsewhere: the subscriber knows only n3 and finds the other members itself.
    let subscriber = cluster.app_node_client(2).await;
    let mut sub = subscriber.subscribe_segments(
        Some(vec!["open_cart".to_owned()]),
        store_client::Cursor::new(),
    );
    let post = |user: String, message_id: &'static str| {
        let n1 = n1.clone();
        async move {
            let body = json!({"batch": [{"type": "track", "event": "Product Added", "userId": user,
                              "messageId": message_id, "properties": {"sku": "sku-1"}}]});
            let reply = common::http::post(
                &n1,
                "/v1/batch",
                Some(KEY),
                body.to_string().as_bytes(),
                false,
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    };

    // A first entry, untimed: the subscription has reached every member's log.
    let warm = key_where(&client, "http-warm", 3, |r| r[0] == n2);
    post(warm.clone(), "warm-add").await;
    loop {
        let c = next_change(&mut sub, "the warm-up entry").await;
        if c.change.user == warm {
            break;
        }
    }

    // The timed one: posted to n1, owned by n2, seen through n3's client.
    let user = key_where(&client, "http-shopper", 3, |r| r[0] == n2);
    let started = std::time::Instant::now();
    post(user.clone(), "http-add-1").await;
    let change = loop {
        let c = next_change(&mut sub, "the entry the HTTP event caused").await;
        if c.change.user == user {
            break c;
        }
    };
    let took = started.elapsed();
    assert_eq!(change.change.segment, "open_cart");
    assert_eq!(
        change.change.kind,
        featurestore::segment::Transition::Entered
    );
    assert_eq!(change.owner, n2);
    assert!(change.accepted_ms.is_some(), "{change:?}");
    assert_eq!(change.change.why.message_id.as_deref(), Some("http-add-1"));
    assert!(
        change.change.why.read.contains_key("cart_adds_30m"),
        "{:?}",
        change.change.why
    );
    assert!(
        took < Duration::from_secs(1),
        "the entry reached the subscriber {took:?} after the POST"
    );
}
