//! `store-node dev --demo`: synthetic shoppers posted to the dev cluster over real HTTP, and a live view
//! of the segment transitions they cause.
//!
//! [`run`] starts three parts, all stopped by one token (cancelled by dev on Ctrl-C or SIGTERM, before it
//! stops the nodes):
//! - the generator ([`generate::Generator`]): `--demo-users` users, deterministic from `--demo-seed`, about
//!   `--demo-rate` events a second in batches of at most [`MAX_BATCH`] events (one batch every
//!   [`TICK`] at the default rate), each batch posted to the next node's HTTP listener in turn;
//! - one poster per node ([`send::Poster`]): `POST /v1/batch` with the dev write key, one kept-alive
//!   connection; a failed batch is counted (with its error, shown in the status line) and dropped, never
//!   retried and never fatal;
//! - the watcher ([`live::watch`]): each transition as a line, rate-limited, and a status line every
//!   [`live::STATUS_EVERY`].
//!
//! Guarantees: the rate is a ceiling, not a promise: a batch waits for its node's poster (at most two
//! batches queue per node), so a slow cluster lowers the rate the status line reports instead of
//! piling up events. When the token is cancelled the generator stops at once, posters abandon the batch in
//! flight (it may or may not have been applied) and [`run`] returns after the watcher has closed its
//! client.

pub mod generate;
pub mod live;
pub mod send;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use featurestore::NodeId;
use hyper::body::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DevError, DevLayout};
use crate::logging::print_line;

/// The most events in one batch.
pub const MAX_BATCH: usize = 50;

/// How often the generator sends what the rate allows.
pub const TICK: Duration = Duration::from_millis(50);

/// The default `--demo-seed`.
pub const DEFAULT_SEED: u64 = 0x5EED_F00D;

/// Options of `store-node dev --demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoOptions {
    /// Number of synthetic users (`--demo-users`).
    pub users: u32,
    /// Events per second, at most (`--demo-rate`).
    pub rate: u32,
    /// The seed of the behaviour (`--demo-seed`).
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            users: 2000,
            rate: 200,
            seed: DEFAULT_SEED,
        }
    }
}

impl DemoOptions {
    /// Fails for a user count or a rate of 0, or beyond what a dev cluster is meant for.
    pub fn validate(&self) -> Result<(), DevError> {
        if !(1..=1_000_000).contains(&self.users) {
            return Err(DevError::Options(format!(
                "--demo-users must be between 1 and 1000000, got {}",
                self.users
            )));
        }
        if !(1..=100_000).contains(&self.rate) {
            return Err(DevError::Options(format!(
                "--demo-rate must be between 1 and 100000 events/s, got {}",
                self.rate
            )));
        }
        Ok(())
    }
}

/// The generator's counters, shared with the status line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events in batches a node answered 200 to.
    pub sent: AtomicU64,
    /// Batches that failed (transport error or a status other than 200).
    pub http_errors: AtomicU64,
    /// Events the nodes refused as invalid inside accepted batches.
    pub refused: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    /// The last HTTP error, with the node it came from.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn failed(&self, node: &str, error: String) {
        self.http_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(format!("{node}: {error}"));
        }
    }
}

/// A batch for a poster: the JSON body and how many events it holds.
type Batch = (Bytes, u64);

/// Posts the batches of `rx` to `addr` until `stop` (or the generator is gone).
async fn post_batches(
    node: String,
    addr: SocketAddr,
    write_key: String,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut poster = send::Poster::new(addr, &write_key);
    loop {
        let batch = tokio::select! {
            batch = rx.recv() => batch,
            () = stop.cancelled() => None,
        };
        let Some((body, events)) = batch else { return };
        tokio::select! {
            outcome = poster.post(body) => match outcome {
                Ok(accepted) => {
                    stats.sent.fetch_add(events, Ordering::Relaxed);
                    stats.refused.fetch_add(accepted.refused, Ordering::Relaxed);
                }
                Err(error) => stats.failed(&node, error),
            },
            () = stop.cancelled() => return,
        }
    }
}

/// Generates events at `rate` and hands them, in batches, to the posters in turn, until `stop`.
async fn generate_events(
    options: DemoOptions,
    run: u64,
    posters: Vec<mpsc::Sender<Batch>>,
    stop: CancellationToken,
) {
    let mut generator = generate::Generator::new(options.seed, options.users, run);
    let rate = f64::from(options.rate);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = tokio::time::Instant::now();
    let mut owed = 0.0f64;
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        // At most a second (or one batch) behind: a slow cluster lowers the rate, no burst follows.
        owed = (owed + rate * now.duration_since(last).as_secs_f64()).min(rate.max(1.0));
        last = now;
        while owed >= 1.0 {
            let n = (owed as usize).min(MAX_BATCH);
            owed -= n as f64;
            let events: Vec<serde_json::Value> = (0..n).map(|_| generator.next_event()).collect();
            let body = serde_json::json!({ "batch": events }).to_string();
            let Some(poster) = posters.get(next % posters.len().max(1)) else {
                return;
            };
            next = next.wrapping_add(1);
            let count = u64::try_from(n).unwrap_or(u64::MAX);
            tokio::select! {
                sent = poster.send((Bytes::from(body), count)) => if sent.is_err() { return },
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The banner lines of the demo (printed by dev before `dev cluster ready`).
pub fn banner(layout: &DevLayout, options: &DemoOptions) -> String {
    let segments = layout.segments.display();
    let last = options.users.saturating_sub(1);
    format!(
        "demo: {} users ({} .. {}), up to {} events/s over HTTP to every node, seed {}\n\
         demo segments: {segments} (cart_abandoner, high_intent, vip_at_risk with shortened durations; open_cart, big_spender)\n\
         dashboard: http://{}/ui\n",
        options.users,
        generate::user_id(0),
        generate::user_id(u64::from(last)),
        options.rate,
        options.seed,
        layout.nodes[0].http,
    )
}

/// Runs the generator, the posters and the watcher against the (ready) cluster of `layout` until `stop`
/// is cancelled.
pub async fn run(layout: DevLayout, options: DemoOptions, stop: CancellationToken) {
    let stats = Arc::new(Stats::default());
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut tasks = tokio::task::JoinSet::new();
    let mut senders = Vec::new();
    for node in &layout.nodes {
        let (tx, rx) = mpsc::channel(2);
        senders.push(tx);
        tasks.spawn(post_batches(
            node.id.clone(),
            node.http,
            layout.write_key.clone(),
            rx,
            stats.clone(),
            stop.clone(),
        ));
    }
    let nodes: Vec<NodeId> = layout
        .nodes
        .iter()
        .filter_map(|n| NodeId::new(n.id.as_str()).ok())
        .collect();
    tasks.spawn(live::watch(
        layout.client_config.clone(),
        nodes,
        stats.clone(),
        stop.clone(),
    ));
    print_line(&format!(
        "[demo] generating: {} users, up to {} events/s, seed {}",
        options.users, options.rate, options.seed
    ));
    tasks.spawn(generate_events(options, run, senders, stop.clone()));
    while tasks.join_next().await.is_some() {}
    print_line(&format!(
        "[demo] stopped: {} events sent, {} HTTP errors",
        stats.sent.load(Ordering::Relaxed),
        stats.http_errors.load(Ordering::Relaxed)
    ));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    /// The demo segments compile against the shipped example features, and read only defined features.
    #[test]
    fn the_demo_segments_are_valid_against_the_example_features() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let limits = featurestore::Limits::default();
        let defs = crate::features::load(&dir.join("features.example.toml"), &limits).unwrap();
        let rules = crate::segments::load(&dir.join("segments.demo.toml"), &defs, &limits).unwrap();
        let names: Vec<&str> = rules.segments.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "cart_abandoner",
                "high_intent",
                "vip_at_risk",
                "open_cart",
                "big_spender"
            ]
        );
        super::super::layout::check_demo_features(
            &dir.join("features.example.toml"),
            &dir.join("segments.demo.toml"),
        )
        .unwrap();
    }

    #[test]
    fn options_out_of_range_are_refused() {
        assert!(DemoOptions::default().validate().is_ok());
        for bad in [
            DemoOptions {
                users: 0,
                ..DemoOptions::default()
            },
            DemoOptions {
                rate: 0,
                ..DemoOptions::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(DevError::Options(_))),
                "{bad:?}"
            );
        }
    }
}
