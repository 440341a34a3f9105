//! The demo's live output: every segment transition the nodes decide, as it is logged
//! (`[demo] u-0042 entered cart_abandoner (timer) on n2`), at most [`LINES_PER_SECOND`] lines a second,
//! and every [`STATUS_EVERY`] a status line with the generator's counters and the nodes' latencies.
//!
//! Guarantees: transitions come from [`Client::subscribe_segments`] with the dev directory's
//! `client.toml`, from a fresh cursor (each node's log end when the demo starts), so changes of earlier
//! runs are not replayed; every transition is counted, and those over the line budget are counted as not
//! shown (reported in the next status line). The watcher never fails the demo: a node that cannot be
//! reached is retried (by the subscription) or reported as such in the status line.
//!
//! Caveats: the subscription is at least once, so after a node failure a transition may be printed and
//! counted twice. The latencies are the nodes' own histograms since they started (not only this
//! interval), and the percentile shown is the worst node's, an upper bound of the cluster-wide one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use featurestore::segment::Transition;
use featurestore::wire::segment::{LatencySummary, SegmentChange, SegmentsView};
use featurestore::NodeId;
use store_client::{Client, ClientConfig, Cursor};
use tokio_util::sync::CancellationToken;

use super::Stats;
use crate::logging::print_line;

/// At most this many transition lines are printed per second.
pub const LINES_PER_SECOND: u32 = 10;

/// How often the status line is printed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long one node gets to answer a status request.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a change happened, for its line: an event, a timer, a conflict resolution or a backfill.
pub fn cause(change: &SegmentChange) -> &'static str {
    if change.deadline_ms.is_some() {
        "timer"
    } else if !change.change.resolves.is_empty() {
        "conflict"
    } else if change.accepted_ms.is_some() {
        "event"
    } else {
        "backfill"
    }
}

/// The line of one transition.
pub fn transition_line(change: &SegmentChange) -> String {
    let kind = match change.change.kind {
        Transition::Entered => "entered",
        Transition::Exited => "exited",
    };
    format!(
        "[demo] {} {kind} {} ({}) on {}",
        change.change.user,
        change.change.segment,
        cause(change),
        change.owner
    )
}

/// Lets through at most `per_second` lines in each one-second window and counts the others.
#[derive(Debug)]
pub struct LineBudget {
    per_second: u32,
    window: Instant,
    used: u32,
    /// Lines not printed since [`LineBudget::take_suppressed`] was last called.
    suppressed: u64,
}

impl LineBudget {
    /// A budget of `per_second` lines.
    pub fn new(per_second: u32, now: Instant) -> LineBudget {
        LineBudget {
            per_second,
            window: now,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be printed at `now` (if not, it is counted as suppressed).
    pub fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// The lines suppressed since the last call.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// Per-node latency summaries reduced to one: total count, worst node's percentiles.
pub fn worst(summaries: &[&LatencySummary]) -> LatencySummary {
    let mut out = LatencySummary::default();
    for s in summaries {
        out.count += s.count;
        if s.count > 0 {
            out.p50_ms = out.p50_ms.max(s.p50_ms);
            out.p99_ms = out.p99_ms.max(s.p99_ms);
            out.p999_ms = out.p999_ms.max(s.p999_ms);
            out.max_ms = out.max_ms.max(s.max_ms);
        }
    }
    out
}

fn show_latency(name: &str, s: &LatencySummary) -> String {
    if s.count == 0 {
        return format!("{name} -");
    }
    format!(
        "{name} p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms (n={})",
        s.p50_ms, s.p99_ms, s.p999_ms, s.count
    )
}

/// What the status line reports about one interval.
#[derive(Debug, Clone, Default)]
pub struct Interval {
    /// Seconds covered.
    pub seconds: f64,
    /// Events the nodes accepted in it.
    pub events: u64,
    /// Transitions received in it.
    pub transitions: u64,
    /// Transitions not printed in it.
    pub suppressed: u64,
    /// HTTP errors since the start, and the last one.
    pub http_errors: u64,
    /// The last HTTP error.
    pub last_error: Option<String>,
    /// Events refused as invalid since the start.
    pub refused: u64,
}

/// The status line of `interval`, with the nodes' segment views (`Err`: the node did not answer).
pub fn status_line(
    interval: &Interval,
    views: &[(NodeId, Result<SegmentsView, String>)],
) -> String {
    let per_s = |n: u64| n as f64 / interval.seconds.max(0.001);
    let mut line = format!(
        "[demo] status: {:.0} events/s sent, {} HTTP errors",
        per_s(interval.events),
        interval.http_errors
    );
    if let Some(last) = &interval.last_error {
        line.push_str(&format!(" (last: {last})"));
    }
    if interval.refused > 0 {
        line.push_str(&format!(", {} events refused", interval.refused));
    }
    line.push_str(&format!(
        ", {:.1} transitions/s ({} not shown)",
        per_s(interval.transitions),
        interval.suppressed
    ));
    let answered: Vec<&SegmentsView> = views.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
    let event = worst(
        &answered
            .iter()
            .map(|v| &v.event_latency)
            .collect::<Vec<_>>(),
    );
    let timer = worst(&answered.iter().map(|v| &v.timer_lag).collect::<Vec<_>>());
    line.push_str(&format!(
        "; {}; {}",
        show_latency("event→segment", &event),
        show_latency("timer lag", &timer)
    ));
    let silent: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.is_err())
        .map(|(n, _)| n.to_string())
        .collect();
    if !silent.is_empty() {
        line.push_str(&format!("; no answer from {}", silent.join(", ")));
    }
    line
}

/// Connects a client with `config`, retrying until `stop`.
async fn connect(config: &Path, stop: &CancellationToken) -> Option<Client> {
    let mut reported = false;
    loop {
        let attempt = match ClientConfig::load(config) {
            Ok(c) => Client::connect(c).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(client) => return Some(client),
            Err(e) if !reported => {
                print_line(&format!(
                    "[demo] cannot watch segment transitions yet ({e}); retrying"
                ));
                reported = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Each node's current log end: the cursor of a subscription that sees only new changes. A node that
/// does not answer is left out (its log is then read from its beginning).
async fn fresh_cursor(client: &Client, nodes: &[NodeId]) -> Cursor {
    let mut cursor = Cursor::new();
    for node in nodes {
        let page = tokio::time::timeout(
            NODE_TIMEOUT,
            client.segment_changes(node, u64::MAX, 1, 0, None),
        )
        .await;
        if let Ok(Ok(page)) = page {
            cursor.insert(node.clone(), page.next);
        }
    }
    cursor
}

/// Prints transitions and status lines until `stop` is cancelled.
pub async fn watch(
    client_config: PathBuf,
    nodes: Vec<NodeId>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let Some(client) = connect(&client_config, &stop).await else {
        return;
    };
    let cursor = fresh_cursor(&client, &nodes).await;
    let mut subscription = client.subscribe_segments(None, cursor);
    let mut budget = LineBudget::new(LINES_PER_SECOND, Instant::now());
    let mut status =
        tokio::time::interval_at(tokio::time::Instant::now() + STATUS_EVERY, STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = Instant::now();
    let mut events_before = stats.sent.load(Ordering::Relaxed);
    let mut transitions = 0u64;
    loop {
        tokio::select! {
            change = subscription.recv() => {
                let Some(change) = change else { break };
                transitions += 1;
                if budget.allow(Instant::now()) {
                    print_line(&transition_line(&change));
                }
            }
            _ = status.tick() => {
                let mut views = Vec::new();
                for node in &nodes {
                    let view = tokio::time::timeout(NODE_TIMEOUT, client.segments_of(node))
                        .await
                        .map_err(|_| "timed out".to_owned())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                    views.push((node.clone(), view));
                }
                let events = stats.sent.load(Ordering::Relaxed);
                let interval = Interval {
                    seconds: since.elapsed().as_secs_f64(),
                    events: events - events_before,
                    transitions,
                    suppressed: budget.take_suppressed(),
                    http_errors: stats.http_errors.load(Ordering::Relaxed),
                    last_error: stats.last_error(),
                    refused: stats.refused.load(Ordering::Relaxed),
                };
                print_line(&status_line(&interval, &views));
                since = Instant::now();
                events_before = events;
                transitions = 0;
            }
            () = stop.cancelled() => break,
        }
    }
    drop(subscription);
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use featurestore::crdt::flag::FlagDot;
    use featurestore::segment::{ChangeEvent, Why};

    fn change(deadline: Option<u64>, accepted: Option<u64>) -> SegmentChange {
        SegmentChange {
            seq: 1,
            owner: NodeId::new("n2").unwrap(),
            ring_version: 1,
            accepted_ms: accepted,
            deadline_ms: deadline,
            change: ChangeEvent {
                user: "u-0042".into(),
                segment: "cart_abandoner".into(),
                kind: Transition::Entered,
                at_ms: 1,
                event_time_ms: None,
                why: Why::default(),
                dot: FlagDot {
                    actor: featurestore::hlc::Actor::new(NodeId::new("n2").unwrap(), 1),
                    counter: 1,
                },
                resolves: Vec::new(),
            },
        }
    }

    #[test]
    fn a_transition_line_names_user_segment_cause_and_owner() {
        assert_eq!(
            transition_line(&change(Some(5), None)),
            "[demo] u-0042 entered cart_abandoner (timer) on n2"
        );
        assert_eq!(cause(&change(None, Some(5))), "event");
        assert_eq!(cause(&change(None, None)), "backfill");
    }

    #[test]
    fn the_line_budget_counts_what_it_suppresses() {
        let start = Instant::now();
        let mut budget = LineBudget::new(3, start);
        let allowed = (0..10).filter(|_| budget.allow(start)).count();
        assert_eq!(allowed, 3);
        assert_eq!(budget.take_suppressed(), 7);
        assert_eq!(budget.take_suppressed(), 0);
        assert!(budget.allow(start + Duration::from_millis(1001)));
    }

    #[test]
    fn the_status_line_shows_rates_errors_and_the_worst_latencies() {
        let view = |p99: f64| SegmentsView {
            event_latency: LatencySummary {
                count: 10,
                p50_ms: 1.0,
                p99_ms: p99,
                p999_ms: p99,
                ..LatencySummary::default()
            },
            ..SegmentsView::default()
        };
        let n = |s: &str| NodeId::new(s).unwrap();
        let line = status_line(
            &Interval {
                seconds: 5.0,
                events: 1000,
                transitions: 20,
                suppressed: 3,
                http_errors: 2,
                last_error: Some("n2: connect: refused".into()),
                refused: 0,
            },
            &[
                (n("n1"), Ok(view(4.0))),
                (n("n2"), Ok(view(9.0))),
                (n("n3"), Err("timed out".into())),
            ],
        );
        assert_eq!(
            line,
            "[demo] status: 200 events/s sent, 2 HTTP errors (last: n2: connect: refused), \
             4.0 transitions/s (3 not shown); event→segment p50 1.0 ms p99 9.0 ms p99.9 9.0 ms \
             (n=20); timer lag -; no answer from n3"
        );
    }
}
