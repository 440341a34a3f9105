//! `GET /metrics`, `/ready` and `/health` of real node processes (issue 11): the exposition is parsed by a
//! real Prometheus parser (Python's `prometheus_client.openmetrics.parser`, installed with pip when
//! missing), every status counter is there as a `_total` counter, and counters and histograms move with
//! QUIC and HTTP traffic; `/ready` turns 503 when the node leaves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::cluster::{eventually, start_with};
use common::http::{request, Target};
use common::{TestCluster, FAST_CLUSTER};
use featurestore::{NodeId, Value};
use serde_json::{json, Value as Json};

const KEY: &str = "metrics-test-key-0123456789abcdef";

/// The parser script: every family as `{name: {type, samples: [[name, labels, value], ...]}}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(out))
"#;

/// Makes `prometheus_client` importable (pip install when it is missing); panics if it cannot.
fn ensure_parser() {
    let importable = || {
        std::process::Command::new("python3")
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable() {
        return;
    }
    let installed = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "prometheus-client"])
        .status()
        .unwrap();
    assert!(
        installed.success() && importable(),
        "prometheus_client is missing and `python3 -m pip install prometheus-client` failed"
    );
}

/// The parsed families of one scrape.
struct Scrape(BTreeMap<String, Json>);

impl Scrape {
    /// The sum of the samples named `sample` (all label sets) whose labels include `labels`.
    fn sum(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .values()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .filter(|s| s[0] == sample)
            .filter(|s| labels.iter().all(|(k, v)| s[1][*k] == *v))
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    }

    /// Every sample name of the scrape.
    fn sample_names(&self) -> std::collections::BTreeSet<String> {
        self.0
            .values()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .map(|s| s[0].as_str().unwrap().to_owned())
            .collect()
    }

    fn family_type(&self, family: &str) -> Option<&str> {
        self.0.get(family).and_then(|f| f["type"].as_str())
    }
}

/// The `featurestore_*` names in the queries of a Grafana dashboard that `scrape` does not have.
fn unknown_metrics(dashboard: &Json, scrape: &Scrape) -> Vec<String> {
    let known = scrape.sample_names();
    let mut unknown = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("featurestore_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !known.contains(&name) && !unknown.contains(&name) {
                    unknown.push(name);
                }
            }
        }
    }
    unknown
}

/// GET `path` on `target`.
async fn get(target: &Target, path: &str) -> common::http::Reply {
    request(target, "GET", path, &[], Vec::new()).await.unwrap()
}

/// Scrapes node `i` and parses the answer with the real parser.
async fn scrape(cluster: &TestCluster, i: usize) -> Scrape {
    let reply = get(&target(cluster, i), "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(reply.text.ends_with("# EOF\n"), "{}", reply.text);
    let text = reply.text.clone();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("python3")
            .args(["-c", PARSE])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        reply.text
    );
    Scrape(serde_json::from_slice(&output.stdout).unwrap())
}

fn target(cluster: &TestCluster, i: usize) -> Target {
    let addr: SocketAddr = cluster.nodes[i].http.expect("an HTTP listener");
    Target::plain(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_openmetrics_and_move_with_traffic_and_ready_follows_the_member_state() {
    ensure_parser();
    let features = Path::new(env!("CARGO_MANIFEST_DIR")).join("features.example.toml");
    let overlay = format!(
        "{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n\
         [[http.write_keys]]\nsource = \"web\"\nkey = \"{KEY}\"\n"
    );
    let cluster = start_with(2, &overlay);
    let client = cluster.client().await;
    let n1 = NodeId::new("n1").unwrap();
    common::cluster::all_alive(&cluster, &client).await;

    // Health and readiness of a serving, joined node.
    let health = get(&target(&cluster, 0), "/health").await;
    assert_eq!(
        (health.status, &health.body),
        (200, &json!({"status": "ok"}))
    );
    let ready = get(&target(&cluster, 0), "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["ready"], true);
    assert_eq!(ready.body["state"], "active");
    assert_eq!(ready.body["recovered"], true);

    // Every status counter is exported as a counter (`<name>_total`), the levels as gauges.
    let before: Vec<Scrape> = vec![scrape(&cluster, 0).await, scrape(&cluster, 1).await];
    let status = client.status_of(&n1).await.unwrap();
    for (name, _) in &status.counters {
        let family = format!("featurestore_{name}");
        if store_node::telemetry::GAUGES
            .iter()
            .any(|(n, ..)| n == name)
        {
            continue;
        }
        assert_eq!(
            before[0].family_type(&family),
            Some("counter"),
            "status counter {name} is not exported as a counter"
        );
    }
    for gauge in [
        "featurestore_profiles",
        "featurestore_hints_queued",
        "featurestore_resident_memory_bytes",
        "featurestore_member_alive",
        "featurestore_storage_last_flush_duration_seconds",
        "featurestore_storage_numbered_feature_names",
        "featurestore_storage_numbered_node_names",
    ] {
        assert_eq!(before[0].family_type(gauge), Some("gauge"), "{gauge}");
    }
    for histogram in [
        "featurestore_request_duration_seconds",
        "featurestore_replication_ack_seconds",
        "featurestore_storage_flush_duration_seconds",
        "featurestore_storage_flush_group_size",
        "featurestore_ingest_batch_duration_seconds",
        "featurestore_segment_change_latency_seconds",
        "featurestore_segment_timer_lag_seconds",
    ] {
        assert_eq!(
            before[0].family_type(histogram),
            Some("histogram"),
            "{histogram}"
        );
    }
    assert!(before[0].sum("featurestore_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        before[0].sum("featurestore_member_alive", &[("member", "n2")]),
        1.0
    );

    // Traffic: 20 writes and 20 reads over QUIC, one HTTP batch of 3 events on n1.
    const N: usize = 20;
    for i in 0..N {
        client
            .put(&format!("m{i}"), &[("score", Value::I64(i as i64))])
            .await
            .unwrap();
        client.get(&format!("m{i}"), None).await.unwrap();
    }
    let batch = json!({"batch": [
        {"type": "page", "userId": "u1", "name": "Home"},
        {"type": "track", "userId": "u1", "event": "Product Added", "properties": {"product_id": "p"}},
        {"type": "track", "userId": "u2", "event": "Order Completed", "properties": {"revenue": 4.5}},
    ]});
    let reply = common::http::post(
        &target(&cluster, 0),
        "/v1/batch",
        Some(KEY),
        batch.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let after: Vec<Scrape> = vec![scrape(&cluster, 0).await, scrape(&cluster, 1).await];
    let grew = |sample: &str, labels: &[(&str, &str)]| -> f64 {
        (0..2)
            .map(|i| after[i].sum(sample, labels) - before[i].sum(sample, labels))
            .sum()
    };
    let n = N as f64;
    assert!(grew("featurestore_requests_total", &[]) >= 2.0 * n);
    assert!(grew("featurestore_writes_acknowledged_total", &[]) >= n);
    assert!(grew("featurestore_keys_read_total", &[]) >= n);
    assert!(
        grew(
            "featurestore_request_duration_seconds_count",
            &[("kind", "put")]
        ) >= n
    );
    assert!(
        grew(
            "featurestore_request_duration_seconds_count",
            &[("kind", "get")]
        ) >= n
    );
    assert!(
        grew(
            "featurestore_request_duration_seconds_sum",
            &[("kind", "put")]
        ) > 0.0
    );
    // Two nodes, replication factor above one: every write is sent to the other node and acknowledged.
    assert!(grew("featurestore_replication_ack_seconds_count", &[]) >= n);
    assert!(grew("featurestore_storage_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(grew("featurestore_storage_flush_group_size_sum", &[]) >= n);
    let http = |sample: &str| after[0].sum(sample, &[]) - before[0].sum(sample, &[]);
    assert_eq!(http("featurestore_http_requests_total"), 1.0);
    assert_eq!(http("featurestore_http_events_accepted_total"), 3.0);
    assert_eq!(
        http("featurestore_ingest_batch_duration_seconds_count"),
        1.0
    );
    assert!(
        after[0].sum("featurestore_profiles", &[]) + after[1].sum("featurestore_profiles", &[])
            >= n
    );

    // Every metric the Grafana dashboard queries exists (the checker is shown to catch a wrong name).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let mut dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(unknown_metrics(&dashboard, &after[0]), Vec::<String>::new());
    dashboard["panels"][1]["targets"][0]["expr"] =
        json!("rate(featurestore_no_such_metric_total[1m])");
    assert_eq!(
        unknown_metrics(&dashboard, &after[0]),
        ["featurestore_no_such_metric_total"]
    );

    // A node that leaves is no longer ready (503, with its state), though still healthy.
    client.leave(&NodeId::new("n2").unwrap()).await.unwrap();
    let n2 = target(&cluster, 1);
    let body = eventually("n2 not ready", Duration::from_secs(20), || async {
        let reply = get(&n2, "/ready").await;
        if reply.status == 503 {
            Ok(reply.body)
        } else {
            Err(format!("{} {}", reply.status, reply.text))
        }
    })
    .await;
    assert_eq!(body["ready"], false);
    assert!(
        body["state"] == "leaving" || body["state"] == "left",
        "{body}"
    );
    assert_eq!(get(&n2, "/health").await.status, 200);
    client.close().await;
}
