//! The dead-letter queue on real node processes: events refused at the HTTP edge and by their owner over
//! QUIC are kept with reason, source and payload, shown by the real `storectl`; they survive `kill -9`
//! (`sync` durability); a replay after the definition was fixed applies them once; purge is durable; a
//! tiny byte budget counts the overflow.
//!
//! `storectl` is run from the target directory next to this test's executable (`cargo test --workspace`
//! builds it; alone: `cargo build -p store-client --bin storectl` first).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cluster::{eventually, start_with, status_counter, storectl};
use common::http::{post, Target};
use common::{TestCluster, FAST_CLUSTER};
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use featurestore::{FeatureView, Limits, NodeId, Value};
use serde_json::{json, Value as Json};
use store_client::{Client, DeadLetterPage, Replayed};

const WEB_KEY: &str = "web-write-key-0123456789abcdef";

/// Revenue as a 7-day sum (so `"twelve"` is refused) and product views over 30 minutes.
const SUM_REVENUE: &str = "[[features]]\nname = \"revenue\"\non = \"track\"\nevent = \"Order Completed\"\n\
aggregation = \"sum\"\nproperty = \"revenue\"\nwindow = \"7d\"\n\n\
[[features]]\nname = \"views_30m\"\non = \"track\"\nevent = \"Product Viewed\"\naggregation = \"count\"\n\
window = \"30m\"\n";

/// The fix: revenue as the last value seen.
const LAST_REVENUE: &str = "[[features]]\nname = \"revenue\"\non = \"track\"\nevent = \"Order Completed\"\n\
aggregation = \"last\"\nproperty = \"revenue\"\n\n\
[[features]]\nname = \"views_30m\"\non = \"track\"\nevent = \"Product Viewed\"\naggregation = \"count\"\n\
window = \"30m\"\n";

/// One node with the definitions in `features`, `ingest` extra `[ingest]` keys, plain HTTP with the `web`
/// key, and `tail` (more tables).
fn one_node(features: &Path, ingest: &str, tail: &str) -> TestCluster {
    let overlay = format!(
        "{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\n{ingest}\
         [http]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n\
         [[http.write_keys]]\nsource = \"web\"\nkey = \"{WEB_KEY}\"\n{tail}"
    );
    start_with(1, &overlay)
}

fn features_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("features.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn http(cluster: &TestCluster) -> Target {
    Target::plain(cluster.nodes[0].http.expect("an HTTP listener"))
}

fn n1() -> NodeId {
    NodeId::new("n1").unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn event(json: Json) -> Event {
    Event::from_segment(&json, None, now_ms(), &Limits::default()).unwrap()
}

async fn page(client: &Client) -> Result<DeadLetterPage, String> {
    client
        .dead_letters(&n1(), None, 100)
        .await
        .map_err(|e| e.to_string())
}

/// A fresh client once the restarted node answers.
async fn restarted(cluster: &mut TestCluster, kill9: bool) -> Client {
    if kill9 {
        cluster.kill9(0);
    } else {
        let child = cluster.nodes[0].child.as_mut().expect("running");
        child.terminate(Duration::from_secs(15)).unwrap();
        cluster.nodes[0].child = None;
    }
    cluster.launch(0);
    let client = cluster.client().await;
    eventually("the node answers", Duration::from_secs(20), || {
        page(&client)
    })
    .await;
    client
}

fn ids(page: &DeadLetterPage) -> Vec<u64> {
    page.entries.iter().map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_kept_with_reason_source_and_payload_survive_kill9_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let features = features_file(dir.path(), SUM_REVENUE);
    let mut cluster = one_node(&features, "", "");
    let client = cluster.client().await;

    // Two events refused at the HTTP edge, one valid.
    let body = json!({"batch": [
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "ok-1",
         "properties": {"revenue": 5}},
        {"type": "track", "event": "Order Completed", "messageId": "no-user", "properties": {"revenue": 1}},
        {"type": "bogus", "userId": "u1", "messageId": "bad-type"},
    ]});
    let reply = post(
        &http(&cluster),
        "/v1/batch",
        Some(WEB_KEY),
        body.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["refused"], 2);
    // One refused by its owner over QUIC: not a number for the sum.
    let twelve = event(
        json!({"type": "track", "event": "Order Completed", "userId": "u2",
                              "messageId": "twelve-1", "properties": {"revenue": "twelve"}}),
    );
    let out = client.ingest(&[twelve]).await.unwrap();
    assert!(
        matches!(&out[0], EventOutcome::Refused { message, .. } if message.contains("revenue")),
        "{out:?}"
    );

    // `storectl dlq list` shows all three, with reason, source and payload.
    let listed = storectl(&cluster, &["dlq", "list"]);
    assert_eq!(listed[0]["node"], "n1", "{listed}");
    assert_eq!(listed[0]["total_entries"], 3, "{listed}");
    let entries = listed[0]["entries"].as_array().unwrap();
    let (no_user, bad_type, quic) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(no_user["id"], 1);
    assert_eq!(no_user["source"], "web");
    assert_eq!(no_user["code"], "InvalidRequest");
    assert!(
        no_user["reason"]
            .as_str()
            .unwrap()
            .contains("neither userId nor anonymousId"),
        "{no_user}"
    );
    assert_eq!(no_user["message_id"], "no-user");
    assert_eq!(no_user["payload"]["properties"]["revenue"], 1, "{no_user}");
    assert!(no_user["received_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(
        bad_type["reason"]
            .as_str()
            .unwrap()
            .contains("unknown type"),
        "{bad_type}"
    );
    assert_eq!(bad_type["payload"]["type"], "bogus");
    assert_eq!(quic["source"], "quic");
    assert_eq!(quic["key"], "u2");
    assert_eq!(quic["message_id"], "twelve-1");
    assert!(
        quic["reason"].as_str().unwrap().contains("revenue"),
        "{quic}"
    );
    assert_eq!(quic["payload"]["properties"]["revenue"], "twelve", "{quic}");
    let shown = storectl(&cluster, &["dlq", "show", "3"]);
    assert_eq!(shown[0]["entry"], *quic, "{shown}");
    assert_eq!(
        status_counter(&client, &n1(), "dlq_captured")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        status_counter(&client, &n1(), "dlq_entries").await.unwrap(),
        3
    );
    let before = page(&client).await.unwrap();

    // kill -9: every answered refusal was durable (`sync`).
    let client = restarted(&mut cluster, true).await;
    let after = page(&client).await.unwrap();
    assert_eq!(after.entries, before.entries);

    // Purge one: gone after another kill -9; ids continue after the highest.
    let purged = client
        .purge_dead_letters(&n1(), Some(&[1, 99]))
        .await
        .unwrap();
    assert_eq!((purged.removed, purged.missing), (1, vec![99]));
    let client = restarted(&mut cluster, true).await;
    assert_eq!(ids(&page(&client).await.unwrap()), [2, 3]);
    let again = json!({"batch": [{"type": "track", "event": "x", "messageId": "no-user-2"}]});
    let reply = post(
        &http(&cluster),
        "/v1/batch",
        Some(WEB_KEY),
        again.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 400, "every event invalid");
    assert_eq!(ids(&page(&client).await.unwrap()), [2, 3, 4]);

    // `storectl dlq purge --all`.
    let purged = storectl(&cluster, &["dlq", "purge", "--all"]);
    assert_eq!(purged[0]["removed"], 3, "{purged}");
    assert_eq!(
        status_counter(&client, &n1(), "dlq_purged").await.unwrap(),
        3
    );
    let client = restarted(&mut cluster, true).await;
    assert!(page(&client).await.unwrap().entries.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_the_definition_is_fixed_applies_the_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let features = features_file(dir.path(), SUM_REVENUE);
    let mut cluster = one_node(&features, "dead_letter_late = true\n", "");
    let client = cluster.client().await;

    let order = event(
        json!({"type": "track", "event": "Order Completed", "userId": "u1",
                             "messageId": "order-12", "properties": {"revenue": "twelve"}}),
    );
    let out = client.ingest(std::slice::from_ref(&order)).await.unwrap();
    assert!(matches!(out[0], EventOutcome::Refused { .. }), "{out:?}");
    // A late event (older than the window's span behind its newest event) applies, no window counts
    // it, and with dead_letter_late it is kept too.
    let now = event(
        json!({"type": "track", "event": "Product Viewed", "userId": "u1",
                           "messageId": "view-now"}),
    );
    let out = client.ingest(&[now]).await.unwrap();
    assert_eq!(out, vec![EventOutcome::Applied { late: vec![] }]);
    let mut late = event(
        json!({"type": "track", "event": "Product Viewed", "userId": "u1",
                                "messageId": "view-old"}),
    );
    late.timestamp_ms -= 3_600_000;
    let out = client.ingest(&[late]).await.unwrap();
    assert_eq!(
        out,
        vec![EventOutcome::Applied {
            late: vec!["views_30m".into()]
        }]
    );
    let kept = page(&client).await.unwrap();
    assert_eq!(ids(&kept), [1, 2]);
    assert!(
        kept.entries[1]
            .reason
            .contains("late for window(s) views_30m"),
        "{:?}",
        kept.entries[1]
    );

    // Replayed with the same definitions: the order is refused again and stays; the late event is a
    // duplicate (it was applied) and goes.
    let outcomes = client.replay_dead_letters(&n1(), None).await.unwrap();
    assert!(
        matches!(&outcomes[0].result, Replayed::Refused { message, .. } if message.contains("revenue")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1].result, Replayed::Duplicate);
    assert_eq!(ids(&page(&client).await.unwrap()), [1]);

    // The definition fixed, the node restarted: the replay applies it, the feature is readable.
    std::fs::write(&features, LAST_REVENUE).unwrap();
    let client = restarted(&mut cluster, false).await;
    let replayed = storectl(&cluster, &["dlq", "replay", "--all"]);
    assert_eq!(
        replayed[0]["replayed"],
        json!([{"id": 1, "result": "applied"}]),
        "{replayed}"
    );
    let view = client.get("u1", None).await.unwrap().expect("a profile");
    assert!(
        matches!(view.features.get("revenue"), Some(FeatureView::Gauge { value: Value::Str(s), .. }) if s == "twelve"),
        "{view:?}"
    );
    assert!(
        page(&client).await.unwrap().entries.is_empty(),
        "the entry is gone"
    );
    assert_eq!(
        status_counter(&client, &n1(), "dlq_replayed")
            .await
            .unwrap(),
        1
    );

    // Replaying again is a no-op, and the original event is now a duplicate.
    assert!(client
        .replay_dead_letters(&n1(), None)
        .await
        .unwrap()
        .is_empty());
    let again = client.replay_dead_letters(&n1(), Some(&[1])).await.unwrap();
    assert_eq!(again[0].result, Replayed::Missing);
    assert_eq!(
        client.ingest(&[order]).await.unwrap(),
        vec![EventOutcome::Duplicate]
    );
    assert!(
        page(&client).await.unwrap().entries.is_empty(),
        "a duplicate is no dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_counts_its_overflow_and_takes_entries_again_once_purged() {
    let dir = tempfile::tempdir().unwrap();
    let features = features_file(dir.path(), SUM_REVENUE);
    let budget = 2_000u64;
    let mut cluster = one_node(
        &features,
        "",
        &format!("[limits]\nmax_dead_letter_bytes = {budget}\n"),
    );
    let client = cluster.client().await;

    let invalid: Vec<Json> = (0..20)
        .map(|i| {
            json!({"type": "track", "event": "x", "messageId": format!("m-{i}"),
                        "properties": {"pad": "p".repeat(100)}})
        })
        .collect();
    let body = json!({ "batch": invalid });
    let reply = post(
        &http(&cluster),
        "/v1/batch",
        Some(WEB_KEY),
        body.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert_eq!(reply.body["code"], "invalid_events");
    let counter = |name: &'static str| {
        let client = client.clone();
        async move { status_counter(&client, &n1(), name).await.unwrap() }
    };
    let (captured, overflow) = (counter("dlq_captured").await, counter("dlq_overflow").await);
    assert!(
        captured > 0 && overflow > 0,
        "captured {captured}, overflow {overflow}"
    );
    assert_eq!(captured + overflow, 20);
    assert_eq!(counter("dlq_entries").await, captured);
    assert!(counter("dlq_bytes").await <= budget);

    // A retry of the same batch keeps nothing twice; after a purge there is room again.
    post(
        &http(&cluster),
        "/v1/batch",
        Some(WEB_KEY),
        body.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(counter("dlq_entries").await, captured);
    assert_eq!(counter("dlq_repeats").await, captured);
    client.purge_dead_letters(&n1(), None).await.unwrap();
    post(
        &http(&cluster),
        "/v1/batch",
        Some(WEB_KEY),
        body.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(counter("dlq_entries").await, captured);
    assert_eq!(counter("dlq_captured").await, 2 * captured);
    drop(cluster.nodes[0].child.take());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_by_its_owner_is_kept_on_the_owner_with_the_forwarding_node() {
    let dir = tempfile::tempdir().unwrap();
    let features = features_file(dir.path(), SUM_REVENUE);
    let overlay = format!(
        "{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n\
         [[http.write_keys]]\nsource = \"web\"\nkey = \"{WEB_KEY}\"\n"
    );
    let cluster = start_with(2, &overlay);
    let client = cluster.client().await;
    common::cluster::all_alive(&cluster, &client).await;
    let n2 = NodeId::new("n2").unwrap();
    let user = common::cluster::key_where(&client, "buyer", 2, |r| r[0] == n2);

    // Posted to n1, owned by n2: forwarded, refused there for its definition.
    let body = json!({"batch": [
        {"type": "track", "event": "Order Completed", "userId": user, "messageId": "o-1",
         "properties": {"revenue": "twelve"}},
    ]});
    let reply = post(
        &http(&cluster),
        "/v1/batch",
        Some(WEB_KEY),
        body.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["refused"], 1);

    // `storectl dlq list` asks both nodes: the entry is on the owner, naming the forwarding node.
    let listed = storectl(&cluster, &["dlq", "list"]);
    let of = |node: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap_or_else(|| panic!("{node} in {listed}"))
            .clone()
    };
    assert_eq!(of("n1")["total_entries"], 0, "{listed}");
    let on_owner = &of("n2")["entries"][0];
    assert_eq!(on_owner["source"], "forward from n1", "{listed}");
    assert_eq!(on_owner["key"], user.as_str());
    assert_eq!(on_owner["payload"]["properties"]["revenue"], "twelve");
    // Ids are per node: a replay of ids must name the node.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("storectl");
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(cluster.dir.path().join("client.toml"))
        .args(["dlq", "replay", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node"));
    let still = storectl(&cluster, &["dlq", "replay", "1", "--node", "n2"]);
    assert_eq!(still[0]["replayed"][0]["result"], "refused", "{still}");
}
