//! The `/ui` segment dashboard on a real `store-node dev --demo` cluster (its synthetic shoppers keep it
//! live): the page, its JSON API and its
//! server-sent event feed over real HTTP, then the page itself rendered and driven in headless Chromium
//! (Debian's, through Playwright: `tests/browser/dashboard.py`), which must show live data from every
//! node. The screenshot it takes is written to `target/dashboard.png`, and to `docs/images/dashboard.png`
//! when `UPDATE_SCREENSHOT=1`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::dev::Dev;
use common::http::{request, SseStream, Target};
use featurestore::wire::segment::SegmentChange;
use serde_json::json;

async fn get(target: &Target, path: &str) -> common::http::Reply {
    request(target, "GET", path, &[], Vec::new())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The `change` events of `stream` until `done` holds for what was collected (60 s at most).
async fn collect_changes(
    stream: &mut SseStream,
    seen: &mut Vec<SegmentChange>,
    done: impl Fn(&[SegmentChange]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = stream
            .next(left)
            .await
            .expect("the feed ended or went quiet");
        assert_eq!(event.event, "change", "{event:?}");
        let change: SegmentChange = serde_json::from_str(&event.data).unwrap();
        assert_eq!(
            event.id,
            Some(change.seq.to_string()),
            "the SSE id is the seq"
        );
        seen.push(change);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_live_segments_and_renders_in_headless_chromium() {
    // The demo's shoppers keep every page live; the test's own events are checked among theirs.
    let dev = Dev::start(&["--demo", "--demo-users", "300", "--demo-rate", "100"]);
    let key = dev.write_key();
    let nodes: Vec<Target> = (0..3).map(|i| Target::plain(dev.http(i))).collect();

    // The page and its assets.
    let page = get(&nodes[1], "/ui").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text.contains("/ui/app.js"), "{}", page.text);
    assert_eq!(get(&nodes[1], "/ui/app.js").await.status, 200);
    // Bad why lookups: typed JSON errors.
    let missing = get(&nodes[0], "/ui/api/why?user=u1").await;
    assert_eq!(
        (missing.status, missing.body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let long = format!("/ui/api/why?user={}&segment=open_cart", "x".repeat(300));
    assert_eq!(get(&nodes[0], &long).await.status, 400);
    let unknown = get(&nodes[0], "/ui/api/why?user=u1&segment=nope").await;
    assert_eq!(
        (unknown.status, unknown.body["code"].as_str()),
        (404, Some("not_found"))
    );

    // Every node's feed, open before the events.
    let mut feeds = Vec::new();
    for i in 0..3 {
        let feed = SseStream::open(dev.http(i), "/ui/events", &[]).await;
        assert_eq!(feed.content_type.as_deref(), Some("text/event-stream"));
        assert_eq!(feed.allow_origin.as_deref(), Some("*"));
        feeds.push(feed);
    }
    // Six shoppers add to their carts, all posted to n1: each owner decides its users' entries.
    let users: Vec<String> = (1..=6).map(|i| format!("dash-{i}")).collect();
    let batch: Vec<_> = users
        .iter()
        .map(|u| {
            json!({"type": "track", "event": "Product Added", "userId": u,
                   "messageId": format!("{u}-add"), "properties": {"sku": "s-1"}})
        })
        .collect();
    let body = json!({ "batch": batch }).to_string();
    let reply =
        common::http::post(&nodes[0], "/v1/batch", Some(&key), body.as_bytes(), false).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut seen = Vec::new();
    let entered_all = |seen: &[SegmentChange]| {
        users.iter().all(|u| {
            seen.iter()
                .any(|c| &c.change.user == u && c.change.segment == "open_cart")
        })
    };
    // Read the feeds in turn until all six entries are in (the demo's changes flow too); each node sends
    // only what it decided, in seq order.
    let mut per_node: Vec<Vec<SegmentChange>> = vec![Vec::new(); 3];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !entered_all(&seen) && std::time::Instant::now() < deadline {
        for (i, feed) in feeds.iter_mut().enumerate() {
            while let Some(event) = feed.next(Duration::from_millis(200)).await {
                assert_eq!(event.event, "change", "{event:?}");
                let change: SegmentChange = serde_json::from_str(&event.data).unwrap();
                assert_eq!(
                    event.id,
                    Some(change.seq.to_string()),
                    "the SSE id is the seq"
                );
                per_node[i].push(change.clone());
                seen.push(change);
                if per_node[i].len().is_multiple_of(50) {
                    break;
                }
            }
        }
    }
    assert!(entered_all(&seen), "entries seen: {seen:?}");
    for (i, mine) in per_node.iter().enumerate() {
        let id = format!("n{}", i + 1);
        assert!(
            mine.iter().all(|c| c.owner.as_str() == id),
            "{id}'s feed: {mine:?}"
        );
    }

    // Resume: a feed reconnecting with Last-Event-ID gets what followed, from the log.
    let (owner, first) = per_node
        .iter()
        .enumerate()
        .find(|(_, m)| m.len() >= 2)
        .map(|(i, m)| (i, m[0].seq))
        .expect("a node that decided two entries");
    let mut resumed = SseStream::open(
        dev.http(u16::try_from(owner).unwrap()),
        "/ui/events",
        &[("last-event-id", first.to_string())],
    )
    .await;
    let mut after = Vec::new();
    collect_changes(&mut resumed, &mut after, |a| !a.is_empty()).await;
    assert_eq!(
        after[0].seq, per_node[owner][1].seq,
        "resumed after {first}"
    );

    // The JSON the page polls.
    let view = get(&nodes[2], "/ui/api/segments").await;
    assert_eq!(view.status, 200);
    assert_eq!(
        view.body["peers"].as_array().unwrap().len(),
        2,
        "{}",
        view.text
    );
    assert!(view.body["view"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["segment"] == "open_cart"));

    // The same latencies on /metrics: one observation per event-caused change, on its owner.
    let mut observed = 0.0;
    for node in &nodes {
        let text = get(node, "/metrics").await.text;
        observed += text
            .lines()
            .find_map(|l| l.strip_prefix("featurestore_segment_change_latency_seconds_count "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
    }
    assert!(
        observed >= 6.0,
        "segment change latencies observed: {observed}"
    );

    // The page in headless Chromium: live data from all three nodes, the feed, a why-trace.
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("http://{}/ui", dev.http(0)))
        .arg(&screenshot)
        .args(["dash-1", "open_cart"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the browser check failed (it needs Debian's chromium and `pip install playwright`):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "live", "{shown}");
    assert_eq!(shown["errors"], json!([]), "{shown}");
    let names: Vec<_> = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].clone(), n["up"].clone()))
        .collect();
    assert_eq!(
        names,
        [
            (json!("n1"), json!(true)),
            (json!("n2"), json!(true)),
            (json!("n3"), json!(true))
        ],
        "{shown}"
    );
    let open_cart = shown["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["segment"] == "open_cart")
        .unwrap_or_else(|| panic!("no open_cart row: {shown}"));
    assert!(open_cart["members"].as_u64().unwrap() >= 6, "{shown}");
    assert!(open_cart["entries"].as_u64().unwrap() >= 6, "{shown}");
    let feed = shown["feed"].as_array().unwrap();
    assert!(!feed.is_empty(), "the page's live feed: {shown}");
    for name in ["cart_abandoner", "high_intent", "vip_at_risk", "open_cart"] {
        assert!(
            shown["segments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["segment"] == name),
            "{name} not on the page: {shown}"
        );
    }
    let why: Vec<(String, String)> = serde_json::from_value(shown["why"].clone()).unwrap();
    assert!(why.iter().any(|(k, _)| k == "rule"), "{shown}");
    assert!(
        why.iter()
            .any(|(k, v)| k == "last transition" && v.starts_with("entered")),
        "the why-trace names the entry: {shown}"
    );
    assert!(shown["bars"].as_u64().unwrap() >= 1, "{shown}");
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images/dashboard.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&screenshot, docs).unwrap();
    }
    assert!(dev.stop().success(), "dev stopped cleanly");
}
