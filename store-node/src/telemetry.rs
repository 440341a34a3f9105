//! What `GET /metrics` and `GET /ready` report: the node's counters, gauges and latency histograms in the
//! OpenMetrics text format (with `prometheus-client`), and its readiness.
//!
//! Guarantees:
//! - **Every counter of the `status` reply** is exposed as a counter `featurestore_<name>_total`
//!   (request, error, ingest, HTTP, durability, replication, peer counters), read at scrape time from
//!   [`Cluster::status`], so `/metrics` and `storectl status` never disagree. The few status entries that
//!   are levels, not counts, are gauges instead ([`GAUGES`]).
//! - **Histograms** (seconds, base units): request latency per request kind
//!   (`featurestore_request_duration_seconds{kind}`), replication lag from a write's send to a replica's
//!   acknowledgement (`featurestore_replication_ack_seconds`), storage flush time and the writes one flush
//!   made durable (`featurestore_storage_flush_duration_seconds`, `featurestore_storage_flush_group_size`),
//!   and the time to apply one ingest batch received over HTTP (`featurestore_ingest_batch_duration_seconds`;
//!   QUIC `ingest` requests are the `kind="ingest"` series of the request histogram).
//! - **Gauges**: profiles held, bytes on disk, resident memory, uptime, ring version, hints queued in all
//!   and per member, each member's liveness and state as this node sees them, log lines lost.
//! - Recording is lock-free on the hot paths (atomic histogram buckets); a scrape takes the same locks as
//!   a `status` request, once.
//!
//! Caveats: the memory gauge is the process's resident set (`/proc/self/status`, Linux), not an estimate
//! of the profiles' own size; histograms restart from zero with the process (as counters do).

use std::sync::Arc;

use featurestore::cluster::detector::Liveness;
use featurestore::cluster::membership::MemberState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::storage::FlushHistograms;

/// The prefix of every metric name.
pub const PREFIX: &str = "featurestore";

/// Status entries that are levels, not counts: exposed as gauges under these names (seconds and base
/// units, as Prometheus wants), with the factor that converts them.
pub const GAUGES: &[(&str, &str, f64)] = &[
    ("hints_queued", "hints_queued", 1.0),
    (
        "last_flush_micros",
        "storage_last_flush_duration_seconds",
        1e-6,
    ),
    (
        "stored_feature_names",
        "storage_numbered_feature_names",
        1.0,
    ),
    ("stored_node_names", "storage_numbered_node_names", 1.0),
];

/// Latency buckets: 100 µs doubling up to about 26 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// The request-kind label of [`Histograms::request_seconds`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Request::kind` (`get`, `put`, `leave`, ...).
    pub kind: &'static str,
}

/// The histograms fed from the request, replication and ingest paths (the storage flush histograms live
/// with the flusher, [`FlushHistograms`]).
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Time from a decoded request to its encoded answer, per request kind.
    pub request_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// Time from sending a write to a replica to that replica's acknowledgement.
    pub replication_ack_seconds: Histogram,
    /// Time to apply one ingest batch received over HTTP (validated events to their outcomes).
    pub ingest_batch_seconds: Histogram,
    /// Event accepted at the first node that received it → segment change published on the owner.
    pub segment_change_seconds: Histogram,
    /// A timer-fired segment change: published − the deadline it was armed for.
    pub segment_timer_lag_seconds: Histogram,
}

/// Segment latency buckets: 50 µs doubling up to about 52 s (finer at the bottom than [`latency`]: the
/// target is a millisecond).
fn segment_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            request_seconds: Family::new_with_constructor(latency),
            replication_ack_seconds: latency(),
            ingest_batch_seconds: latency(),
            segment_change_seconds: segment_latency(),
            segment_timer_lag_seconds: segment_latency(),
        }
    }
}

impl Histograms {
    /// Records one request of `kind` that took `seconds`.
    pub fn observe_request(&self, kind: &'static str, seconds: f64) {
        self.request_seconds
            .get_or_create(&KindLabel { kind })
            .observe(seconds);
    }
}

/// What the node's HTTP listener reports besides ingest: `/metrics` and `/ready`.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
}

impl Telemetry {
    /// The telemetry of `cluster`: its status counters and gauges, the histograms of its engine's
    /// metrics and `flush`; not ready once `shutdown` is cancelled.
    pub fn new(
        cluster: Arc<Cluster>,
        flush: FlushHistograms,
        shutdown: CancellationToken,
    ) -> Telemetry {
        let mut registry = Registry::with_prefix(PREFIX);
        let h = &cluster.engine().metrics().histograms;
        registry.register(
            "request_duration_seconds",
            "Time from a decoded client request to its answer, per request kind",
            h.request_seconds.clone(),
        );
        registry.register(
            "replication_ack_seconds",
            "Time from sending a write to a replica to the replica's acknowledgement (replication lag)",
            h.replication_ack_seconds.clone(),
        );
        registry.register(
            "ingest_batch_duration_seconds",
            "Time to apply one ingest batch received over HTTP",
            h.ingest_batch_seconds.clone(),
        );
        registry.register(
            "segment_change_latency_seconds",
            "Event accepted at the first node that received it to the segment change published on the owner",
            h.segment_change_seconds.clone(),
        );
        registry.register(
            "segment_timer_lag_seconds",
            "Timer-fired segment changes: published minus the deadline the timer was armed for",
            h.segment_timer_lag_seconds.clone(),
        );
        registry.register(
            "storage_flush_duration_seconds",
            "Time of one storage flush (fsync)",
            flush.seconds,
        );
        registry.register(
            "storage_flush_group_size",
            "Writes made durable by one storage flush (group commit)",
            flush.group_size,
        );
        registry.register_collector(Box::new(StatusCollector {
            cluster: cluster.clone(),
        }));
        Telemetry {
            registry,
            cluster,
            shutdown,
        }
    }

    /// Every metric in the OpenMetrics text format (ending with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("encoding /metrics failed: {e}");
        }
        text
    }

    /// The node's readiness (see [`Readiness`]).
    pub fn readiness(&self) -> Readiness {
        let me = self.cluster.me().clone();
        let status = self.cluster.status();
        let state = status.members.iter().find(|m| m.id == me).map(|m| m.state);
        Readiness::of(state, self.shutdown.is_cancelled())
    }
}

/// Whether a node should get traffic, as `GET /ready` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Recovered, joined (active member), not leaving and not shutting down.
    pub ready: bool,
    /// Its stored profiles are loaded (always true once the HTTP listener is up: it starts after
    /// recovery).
    pub recovered: bool,
    /// Its own member state (`joining`, `active`, `leaving`, `left`), if it is in its membership table.
    pub state: Option<MemberState>,
    /// Shutdown has begun (draining).
    pub shutting_down: bool,
}

impl Readiness {
    /// The readiness of a recovered node in member `state`.
    pub fn of(state: Option<MemberState>, shutting_down: bool) -> Readiness {
        Readiness {
            ready: state == Some(MemberState::Active) && !shutting_down,
            recovered: true,
            state,
            shutting_down,
        }
    }
}

/// Reads [`Cluster::status`] at every scrape.
#[derive(Debug)]
struct StatusCollector {
    cluster: Arc<Cluster>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One gauge family with one sample per label set.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, f64)],
) -> std::fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0).metric_type())?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The `member` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    member: String,
}

/// The `member` and `state` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberStateLabel {
    member: String,
    state: String,
}

/// The process's resident set size in bytes (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let status = self.cluster.status();
        for (name, value) in &status.counters {
            match GAUGES.iter().find(|(status_name, ..)| status_name == name) {
                Some((_, gauge_name, factor)) => gauge(
                    &mut encoder,
                    gauge_name,
                    &format!("status entry {name}"),
                    *value as f64 * factor,
                )?,
                None => counter(
                    &mut encoder,
                    name,
                    &format!("status counter {name}"),
                    *value,
                )?,
            }
        }
        counter(
            &mut encoder,
            "log_write_failures",
            "Log lines that could not be written (stderr closed or failing)",
            crate::logging::write_failures(),
        )?;
        gauge(
            &mut encoder,
            "profiles",
            "Profiles (entities) held in memory",
            status.entities as f64,
        )?;
        gauge(
            &mut encoder,
            "storage_disk_bytes",
            "Bytes of the storage on disk",
            status.disk_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "resident_memory_bytes",
            "Resident memory of the node process",
            resident_bytes() as f64,
        )?;
        gauge(
            &mut encoder,
            "uptime_seconds",
            "Seconds since the node started",
            status.uptime_ms as f64 / 1e3,
        )?;
        gauge(
            &mut encoder,
            "ring_version",
            "Version of the membership table",
            status.ring_version as f64,
        )?;
        let hints: Vec<(MemberLabel, f64)> = status
            .members
            .iter()
            .map(|m| {
                (
                    MemberLabel {
                        member: m.id.to_string(),
                    },
                    m.hints_queued as f64,
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "member_hints_queued",
            "Hints held for a member",
            &hints,
        )?;
        let alive: Vec<(MemberLabel, f64)> = status
            .members
            .iter()
            .map(|m| {
                let up = match m.liveness {
                    Liveness::Alive => 1.0,
                    Liveness::Suspect => 0.5,
                    Liveness::Down => 0.0,
                };
                (
                    MemberLabel {
                        member: m.id.to_string(),
                    },
                    up,
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "member_alive",
            "This node's failure detector: 1 alive, 0.5 suspect, 0 down",
            &alive,
        )?;
        let states: Vec<(MemberStateLabel, f64)> = status
            .members
            .iter()
            .map(|m| {
                (
                    MemberStateLabel {
                        member: m.id.to_string(),
                        state: m.state.to_string(),
                    },
                    1.0,
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "member_state",
            "A member's lifecycle state (1 for the current one)",
            &states,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_an_active_member_that_is_not_shutting_down() {
        assert!(Readiness::of(Some(MemberState::Active), false).ready);
        for state in [
            MemberState::Joining,
            MemberState::Leaving,
            MemberState::Left,
        ] {
            assert!(!Readiness::of(Some(state), false).ready, "{state}");
        }
        assert!(!Readiness::of(None, false).ready);
        assert!(!Readiness::of(Some(MemberState::Active), true).ready);
    }
}
