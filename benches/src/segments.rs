//! `loadgen segments` (W5): event → segment change latency on the three-node dev cluster, at a series of
//! stated event rates, and the lag of timer-fired transitions.
//!
//! Setup: three `store-node serve` processes laid out by `store-node dev`'s own code (sled, the durability
//! policy given, the shipped `features.toml`), with two segments of their own in `segments.toml`:
//! `w5_carted` (`cart_adds_30m >= 1`, entered by a user's first add to cart) and `w5_recent_cart` (the same
//! and `now - last_cart_add < duration("2s")`: entered with it, exited by a timer two seconds later with no
//! new event). One ring-aware client sends the events over QUIC (`Client::ingest`), and one
//! `Client::subscribe_segments` subscription (a long poll on every node) receives the changes.
//!
//! Each rate is an open loop: `workers` tasks send `Product Added` events, each for a fresh user, paced to
//! the rate for `duration_s`. Measured per rate:
//! - **end to end**: from the client's send of the event to the subscriber's receipt of the `w5_carted`
//!   entry it caused (client-side, µs): the whole path a consumer sees, including the acknowledgement-free
//!   long-poll delivery;
//! - **on the node** (the issue's measure): event accepted at the first node → change published on the
//!   owner, from the nodes' own histograms (`SegmentsView::event_latency`, µs-precise hdrhistograms),
//!   read after the rate's phase (cumulative over the phases so far, so only the first rate's figure is
//!   that rate alone; each later one includes the earlier);
//! - entries missing 5 s after the phase.
//!
//! Timer lag: the nodes' `timer_lag` (fire − deadline) after all phases, and client-side (receipt − the
//! change's `deadline_ms`, ms resolution).
//!
//! The highest rate whose end-to-end p99 stays under 5 ms is reported. Numbers are reported, never
//! asserted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use featurestore::segment::Transition;
use featurestore::wire::event::EventOutcome;
use featurestore::wire::segment::LatencySummary as NodeLatency;
use featurestore::Limits;
use serde::Serialize;
use serde_json::json;
use store_client::{Client, ClientConfig, Cursor};
use store_node::dev::{self, DevOptions};

use crate::ingest::IngestEnv;
use crate::stats::{Latencies, LatencySummary};
use crate::{Error, Result};

/// Where the W5 section starts in `docs/benchmarks.md`.
pub const SECTION_BEGIN: &str = "<!-- loadgen segments: begin -->";
/// Where it ends.
pub const SECTION_END: &str = "<!-- loadgen segments: end -->";

/// The segments the benchmark evaluates (written over the dev layout's `segments.toml`).
pub const SEGMENTS: &str = r#"# loadgen segments (W5)
[[segment]]
name = "w5_carted"
rule = 'cart_adds_30m >= 1'

[[segment]]
name = "w5_recent_cart"
rule = 'cart_adds_30m >= 1 && now - last_cart_add < duration("2s")'
"#;

/// Attempts per event (events are deduplicated by message id, so a retry never counts twice).
const RETRIES: usize = 3;

/// How long after a phase its missing entries are waited for.
const STRAGGLERS: Duration = Duration::from_secs(5);

/// Parameters of one W5 run.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentParams {
    /// The event rates, one phase each, in order (events/s).
    pub rates: Vec<f64>,
    /// Seconds per phase.
    pub duration_s: f64,
    /// Concurrent senders.
    pub workers: usize,
    /// The durability policy of the nodes (`sync`, `periodic:<ms>`).
    pub durability: String,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RatePhase {
    /// The rate asked for.
    pub rate: f64,
    /// Events acknowledged per second.
    pub sent_per_s: f64,
    /// Events refused or failed after [`RETRIES`] attempts.
    pub failed: u64,
    /// Send → subscriber receipt of the entry (client-side).
    pub end_to_end: LatencySummary,
    /// Entries not received within 5 s after the phase.
    pub missing: u64,
    /// The nodes' event → change histograms after the phase (cumulative since start), one per node.
    pub node: Vec<(String, NodeLatency)>,
}

/// The whole W5 report.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    /// The parameters.
    pub params: SegmentParams,
    /// One per rate.
    pub phases: Vec<RatePhase>,
    /// The highest rate whose end-to-end p99 was under 5 ms (none if no rate was).
    pub p99_under_5ms_up_to: Option<f64>,
    /// The nodes' timer lag (fire − deadline) after all phases, one per node.
    pub timer_lag: Vec<(String, NodeLatency)>,
    /// Client-side: receipt − deadline of the timer-fired exits, ms resolution.
    pub timer_received: LatencySummary,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the receiver task shares with the senders: the send instant of every user's event, and the
/// latencies of the current phase.
#[derive(Default)]
struct Shared {
    sent: HashMap<String, Instant>,
    phase: Latencies,
    received: u64,
    timer: Latencies,
}

fn event(user: &str, message_id: &str) -> Result<featurestore::ingest::Event> {
    featurestore::ingest::Event::from_segment(
        &json!({"type": "track", "event": "Product Added", "userId": user, "messageId": message_id,
                "properties": {"sku": "sku-1"}}),
        None,
        now_ms(),
        &Limits::default(),
    )
    .map_err(|e| Error::Setup(format!("a synthetic event is invalid: {e}")))
}

/// One open-loop phase at `rate`: events for fresh users, paced, from `workers` tasks.
async fn phase(
    client: &Client,
    shared: &Arc<Mutex<Shared>>,
    params: &SegmentParams,
    index: usize,
    rate: f64,
) -> (f64, u64, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = params.workers.max(1);
    let per_worker = (rate / workers as f64).max(0.1);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(params.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (client, shared, sent, failed) =
            (client.clone(), shared.clone(), sent.clone(), failed.clone());
        tasks.spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / per_worker);
            // Spread the workers' first sends over one interval.
            let mut next = start + interval.mul_f64(w as f64 / workers as f64);
            let mut n = 0u64;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let user = format!("w5s-{index}-{w}-{n}");
                n += 1;
                let Ok(e) = event(&user, &format!("{user}-add")) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sent
                    .insert(user.clone(), Instant::now());
                // Retried as a client would (a retry of an applied event is a duplicate, which counts).
                let mut applied = false;
                for attempt in 0..RETRIES {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    match client.ingest(std::slice::from_ref(&e)).await {
                        Ok(out)
                            if matches!(
                                out.as_slice(),
                                [EventOutcome::Applied { .. } | EventOutcome::Duplicate]
                            ) =>
                        {
                            applied = true;
                            break;
                        }
                        _ => {}
                    }
                }
                if applied {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .sent
                        .remove(&user);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    // Stragglers: entries still owed.
    let deadline = Instant::now() + STRAGGLERS;
    loop {
        let owed = shared.lock().unwrap_or_else(|p| p.into_inner()).sent.len() as u64;
        if owed == 0 || Instant::now() >= deadline {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.sent.clear();
            let n = sent.load(Ordering::Relaxed);
            return (n as f64 / secs, failed.load(Ordering::Relaxed), owed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_latencies(
    client: &Client,
    nodes: &[featurestore::NodeId],
) -> Result<Vec<(String, NodeLatency, NodeLatency)>> {
    let mut out = Vec::new();
    for node in nodes {
        let view = client.segments_of(node).await?;
        out.push((node.to_string(), view.event_latency, view.timer_lag));
    }
    Ok(out)
}

/// Runs W5.
pub async fn run(params: &SegmentParams, env: &IngestEnv) -> Result<SegmentReport> {
    let dir = env.work_dir.join("dev-segments");
    let port = crate::fault::free_port_base(3)?;
    let layout = dev::prepare(&DevOptions {
        dir: dir.clone(),
        port,
        nodes: 3,
    })
    .map_err(|e| Error::Setup(format!("laying out the cluster: {e}")))?;
    let segments = layout.dir.join("segments.toml");
    std::fs::write(&segments, SEGMENTS).map_err(Error::io("writing", &segments))?;
    let nodes = {
        let (env, layout, durability) = (env.clone(), layout.clone(), params.durability.clone());
        tokio::task::spawn_blocking(move || crate::ingest::start_nodes(&env, &layout, &durability))
            .await
            .map_err(|e| Error::Process(e.to_string()))??
    };
    let ids: Vec<featurestore::NodeId> = layout
        .nodes
        .iter()
        .map(|n| featurestore::NodeId::new(n.id.as_str()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Setup(format!("a dev node id: {e}")))?;
    let client = Client::connect(ClientConfig::load(&layout.client_config)?).await?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut subscription = client.subscribe_segments(None, Cursor::new());
    let receiver = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(change) = subscription.recv().await {
                let at = Instant::now();
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                s.received += 1;
                let c = &change.change;
                if c.segment == "w5_carted" && c.kind == Transition::Entered {
                    if let Some(sent) = s.sent.remove(&c.user) {
                        s.phase.record(at.duration_since(sent));
                    }
                } else if let (Some(deadline), Transition::Exited) = (change.deadline_ms, c.kind) {
                    let lag = now_ms().saturating_sub(deadline);
                    s.timer.record(Duration::from_millis(lag));
                }
            }
        })
    };
    let result = async {
        let mut phases = Vec::new();
        for (i, rate) in params.rates.iter().copied().enumerate() {
            eprintln!(
                "[loadgen segments] {rate:.0} events/s for {} s",
                params.duration_s
            );
            shared.lock().unwrap_or_else(|p| p.into_inner()).phase = Latencies::new();
            let (sent_per_s, failed, missing) = phase(&client, &shared, params, i, rate).await;
            let end_to_end = shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .phase
                .summary();
            let node = node_latencies(&client, &ids)
                .await?
                .into_iter()
                .map(|(n, e, _)| (n, e))
                .collect();
            eprintln!(
                "[loadgen segments] {rate:.0}/s: sent {sent_per_s:.0}/s, end to end p50 {:.2} ms p99 {:.2} ms, {missing} missing",
                end_to_end.p50_us / 1000.0,
                end_to_end.p99_us / 1000.0
            );
            phases.push(RatePhase {
                rate,
                sent_per_s,
                failed,
                end_to_end,
                missing,
                node,
            });
        }
        // Let the last timers fire (2 s after the last adds) before reading the lag.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let timer_lag = node_latencies(&client, &ids)
            .await?
            .into_iter()
            .map(|(n, _, t)| (n, t))
            .collect();
        let timer_received = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .timer
            .summary();
        let p99_under_5ms_up_to = phases
            .iter()
            .filter(|p| p.end_to_end.count > 0 && p.missing == 0 && p.end_to_end.p99_us < 5_000.0)
            .map(|p| p.rate)
            .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))));
        Ok::<_, Error>(SegmentReport {
            params: params.clone(),
            phases,
            p99_under_5ms_up_to,
            timer_lag,
            timer_received,
        })
    }
    .await;
    receiver.abort();
    client.close().await;
    drop(nodes);
    result
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// The markdown section of `docs/benchmarks.md`.
pub fn to_markdown(report: &SegmentReport, command: &str) -> String {
    let p = &report.params;
    let mut out = format!("{SECTION_BEGIN}\n## W5: event → segment change\n\n");
    out.push_str(&format!(
        "`{command}`: the three-node dev cluster (sled, `{}` durability, the shipped features) with the \
         segments `w5_carted` (`cart_adds_30m >= 1`) and `w5_recent_cart` (the same within 2 s of the last \
         add: exited by a timer). Each phase sends `Product Added` events for fresh users over QUIC \
         (`Client::ingest`, {} open-loop senders) for {} s at the stated rate; one \
         `Client::subscribe_segments` receives the changes. **End to end**: client send → subscriber \
         receipt of the entry. **On the node**: event accepted at the first node → change published on the \
         owner (the nodes' histograms, cumulative over the phases so far; one column per node). Targets: \
         p50 ≤ 1 ms, p99 ≤ 5 ms (on the node).\n\n",
        p.durability, p.workers, p.duration_s
    ));
    out.push_str("| rate | sent/s | failed | end to end p50 | p99 | p99.9 | missing | node p50 / p99 / p99.9 |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for ph in &report.phases {
        let node = ph
            .node
            .iter()
            .map(|(n, l)| {
                format!(
                    "{n}: {:.2} / {:.2} / {:.2} ms",
                    l.p50_ms, l.p99_ms, l.p999_ms
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        out.push_str(&format!(
            "| {:.0}/s | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            ph.rate,
            ph.sent_per_s,
            ph.failed,
            ms(ph.end_to_end.p50_us),
            ms(ph.end_to_end.p99_us),
            ms(ph.end_to_end.p999_us),
            ph.missing,
            node
        ));
    }
    out.push_str(&format!(
        "\n- Highest rate with end-to-end p99 under 5 ms and nothing missing: **{}**.\n",
        report
            .p99_under_5ms_up_to
            .map_or("none of the rates".to_owned(), |r| format!(
                "{r:.0} events/s"
            ))
    ));
    let lag = report
        .timer_lag
        .iter()
        .map(|(n, l)| {
            format!(
                "{n} {} fired, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.count, l.p50_ms, l.p99_ms, l.max_ms
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    out.push_str(&format!(
        "- Timer-fired exits, fire − deadline on the node: {lag}. Received by the subscriber − deadline \
         (ms resolution): {} exits, p50 {}, p99 {}.\n",
        report.timer_received.count,
        ms(report.timer_received.p50_us),
        ms(report.timer_received.p99_us)
    ));
    out.push_str(SECTION_END);
    out.push('\n');
    out
}

/// Writes `segments.json` into `results`.
pub fn write_json(report: &SegmentReport, results: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(results).map_err(Error::io("creating", results))?;
    let path = results.join("segments.json");
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Setup(format!("encoding the report: {e}")))?;
    std::fs::write(&path, text).map_err(Error::io("writing", &path))
}
