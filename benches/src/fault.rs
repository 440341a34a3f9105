//! `loadgen fault`: what a long-lived client sees when one node of a three-node cluster dies.
//!
//! Three `store-node serve` processes are laid out exactly like `store-node dev` lays them out
//! ([`store_node::dev::prepare`]: generated certificates, sled, `sync` durability, N = 3, every node a
//! seed) and started by this process, so it can `kill -9` one of them (the *victim*, `n1` by default:
//! the first seed of `client.toml`) in the middle of the run and start it again later on the same data.
//! One long-lived [`Client`] with the configuration a user gets (the generated `client.toml`, defaults
//! for everything else) runs closed-loop workers doing point reads of whole profiles and single-feature
//! puts. Every second a *fresh* client does what one `storectl get` does (connect, read one key the
//! victim owns, close) and records how long its answer and its `close()` took.
//!
//! The report has one row per second: reads and writes completed, their p50/p99/max, errors, the share
//! of all answers the long-lived client got from the victim, whether it judged the victim down, and the
//! fresh client's time to its answer; plus the verdicts on the targets of issue 10 and an SVG picture of
//! the timeline. [`run`] measures, [`FaultReport::to_markdown`] and [`FaultReport::to_svg`] render,
//! [`splice_section`] puts the section into `docs/benchmarks.md` (between [`SECTION_BEGIN`] and
//! [`SECTION_END`]), and [`carry_section`] keeps it there when `loadgen compare`/`report` re-render the
//! rest of that file.
//!
//! Guarantees: every node listens on 127.0.0.1; the node processes are killed when this returns or
//! fails ([`NodeProcess`] kills on drop); every wait is bounded.

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use featurestore::NodeId;
use serde::{Deserialize, Serialize};
use store_client::{Client, ClientConfig, Value};
use store_node::dev::{self, DevOptions};
use store_node::launch::NodeProcess;

use crate::error::{Error, Result};
use crate::keyspace::{Keyspace, Rng, FEATURES};
use crate::report::{loadavg, utc_now, Machine};
use crate::servers::Pinning;
use crate::stats::{Latencies, LatencySummary};

/// The first line of the fault-mode section of `docs/benchmarks.md`.
pub const SECTION_BEGIN: &str = "<!-- loadgen fault: begin -->";
/// The last line of the fault-mode section of `docs/benchmarks.md`.
pub const SECTION_END: &str = "<!-- loadgen fault: end -->";

/// How long the nodes get to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the long-lived client's view of the nodes is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The victim "has its share back" once, in a window of this length after its restart, it served at
/// least [`SHARE_BACK_FRACTION`] of the share it had before it was killed.
const SHARE_WINDOW: Duration = Duration::from_millis(200);

/// See [`SHARE_WINDOW`].
const SHARE_BACK_FRACTION: f64 = 0.8;

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultParams {
    /// Nodes in the cluster (at least 2).
    pub nodes: u16,
    /// The node killed: `n<victim>` (1 is the first seed of `client.toml`).
    pub victim: u16,
    /// Seconds measured.
    pub duration_s: f64,
    /// When the victim is killed, seconds after the start of the measurement.
    pub kill_at_s: f64,
    /// When it is started again (none: it stays down).
    pub restart_at_s: Option<f64>,
    /// Closed-loop workers of the long-lived client.
    pub workers: usize,
    /// Percentage of operations that are single-feature puts (the rest are point reads).
    pub write_percent: u32,
    /// Profiles loaded (20 features each) and used.
    pub profiles: usize,
    /// Seconds between two fresh clients (0: none).
    pub fresh_every_s: f64,
    /// Seed of the key and operation choice.
    pub seed: u64,
}

impl Default for FaultParams {
    fn default() -> Self {
        FaultParams {
            nodes: 3,
            victim: 1,
            duration_s: 24.0,
            kill_at_s: 6.0,
            restart_at_s: Some(14.0),
            workers: 4,
            write_percent: 10,
            profiles: 10_000,
            fresh_every_s: 1.0,
            seed: 42,
        }
    }
}

impl FaultParams {
    /// Checks that the parameters describe a run that can happen.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Setup(m));
        if self.nodes < 2 || self.nodes > 16 {
            return fail(format!(
                "--nodes must be between 2 and 16, not {}",
                self.nodes
            ));
        }
        if self.victim == 0 || self.victim > self.nodes {
            return fail(format!(
                "--victim must name one of n1..n{}, not {}",
                self.nodes, self.victim
            ));
        }
        if !(self.duration_s.is_finite() && (1.0..=3600.0).contains(&self.duration_s)) {
            return fail(format!(
                "--duration must be between 1 and 3600 s, not {}",
                self.duration_s
            ));
        }
        if !(self.kill_at_s.is_finite() && self.kill_at_s > 0.0 && self.kill_at_s < self.duration_s)
        {
            return fail(format!(
                "--kill-at must lie within the run (0, {}), not {}",
                self.duration_s, self.kill_at_s
            ));
        }
        if let Some(r) = self.restart_at_s {
            if !(r.is_finite() && r > self.kill_at_s && r < self.duration_s) {
                return fail(format!(
                    "--restart-at must lie between --kill-at ({}) and the end ({}), not {r}",
                    self.kill_at_s, self.duration_s
                ));
            }
        }
        if self.workers == 0 || self.workers > 1024 {
            return fail(format!("--workers must be 1..=1024, not {}", self.workers));
        }
        if self.write_percent > 100 {
            return fail(format!(
                "--write-percent must be 0..=100, not {}",
                self.write_percent
            ));
        }
        if self.profiles == 0 {
            return fail("--profiles must be at least 1".into());
        }
        if !(self.fresh_every_s.is_finite() && self.fresh_every_s >= 0.0) {
            return fail(format!(
                "--fresh-every must be at least 0, not {}",
                self.fresh_every_s
            ));
        }
        Ok(())
    }
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct FaultEnv {
    /// The `store-node` binary.
    pub store_node: PathBuf,
    /// Scratch directory (the dev layout: certificates, configs, data, logs); removed at the end.
    pub work_dir: PathBuf,
    /// Servers on one core, this process on another, when the machine allows.
    pub pinning: Pinning,
    /// The command line recorded in the report.
    pub command: String,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondRow {
    /// Seconds since the start of the measurement (the row covers `[second, second + 1)`).
    pub second: u32,
    /// Reads completed in this second (successful ones; latencies in µs).
    pub reads: LatencySummary,
    /// Puts completed in this second (successful ones).
    pub writes: LatencySummary,
    /// Reads that failed.
    pub read_errors: u64,
    /// Puts that failed.
    pub write_errors: u64,
    /// How long the slowest failed operation took to fail, µs (0: none failed).
    pub failed_max_us: f64,
    /// The victim's share of every answer the long-lived client got in this second.
    pub victim_share: f64,
    /// Whether the long-lived client judged the victim down at the end of this second.
    pub victim_judged_down: bool,
}

/// One fresh client: connect, one read of a key the victim owns, close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreshProbe {
    /// When it started, seconds since the start of the measurement.
    pub at_s: f64,
    /// From the start of `connect` to the answer of the read, ms (`None`: it failed).
    pub answer_ms: Option<f64>,
    /// How long `close()` took, ms.
    pub close_ms: f64,
    /// The error, if it failed.
    pub error: Option<String>,
}

/// Latencies of one phase of the run, merged over its seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Which seconds: `[from, to)`.
    pub from_s: u32,
    /// See `from_s`.
    pub to_s: u32,
    /// Reads.
    pub reads: LatencySummary,
    /// Puts.
    pub writes: LatencySummary,
}

/// What happened to the victim, in seconds since the start of the measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// `kill -9` sent.
    pub killed_s: f64,
    /// The restarted process was spawned.
    pub restarted_s: Option<f64>,
    /// It printed its ready line.
    pub ready_s: Option<f64>,
    /// The long-lived client first judged it down (from its samples).
    pub judged_down_s: Option<f64>,
    /// The end of the first window after the restart in which it had its share back (see
    /// [`SHARE_WINDOW`]).
    pub share_back_s: Option<f64>,
}

/// The result of a fault run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultReport {
    /// When it ran (UTC).
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// The parameters.
    pub params: FaultParams,
    /// The long-lived client's hedge delay at the end of the healthy phase, µs (`None`: off).
    pub hedge_delay_us: Option<f64>,
    /// The long-lived client's configuration that matters here.
    pub client: ClientSettings,
    /// The victim's share of answers before the kill.
    pub healthy_share: f64,
    /// What happened when.
    pub events: Events,
    /// Healthy (after the first second, before the kill), down (from 2 s after the kill to the
    /// restart, or to the end), back (from 2 s after the ready line to the end).
    pub healthy: Phase,
    /// See `healthy`.
    pub down: Phase,
    /// See `healthy`.
    pub back: Option<Phase>,
    /// One row per second.
    pub seconds: Vec<SecondRow>,
    /// The fresh clients.
    pub fresh: Vec<FreshProbe>,
    /// The distinct error messages of failed operations (at most 5).
    pub errors: Vec<String>,
}

/// The long-lived client's settings recorded in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSettings {
    /// `request_timeout_ms` (the deadline of a call).
    pub request_timeout_ms: u64,
    /// `connect_timeout_ms`.
    pub connect_timeout_ms: u64,
    /// `failure_timeout_ms`.
    pub failure_timeout_ms: u64,
    /// `probe_interval_ms`.
    pub probe_interval_ms: u64,
    /// `hedge_delay_us` (`None`: adaptive).
    pub hedge_delay_us: Option<u64>,
    /// `hedge_min_us`.
    pub hedge_min_us: u64,
}

/// What the workers record, per second.
#[derive(Default)]
struct Bucket {
    reads: Latencies,
    writes: Latencies,
    failed: Latencies,
    read_errors: u64,
    write_errors: u64,
}

/// One sample of the long-lived client's node health.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    victim_answers: u64,
    all_answers: u64,
    victim_down: bool,
}

/// A base port with `base..base + n` free on 127.0.0.1 (UDP).
pub(crate) fn free_port_base(n: u16) -> Result<u16> {
    for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0").map_err(Error::io("binding", "127.0.0.1:0"))?;
        let base = probe
            .local_addr()
            .map_err(Error::io("reading the address", "127.0.0.1:0"))?
            .port();
        drop(probe);
        let Some(end) = base.checked_add(n) else {
            continue;
        };
        if (base..end).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    Err(Error::Setup(format!(
        "no {n} consecutive free UDP ports found"
    )))
}

/// Starts `store-node serve --config <config>` (pinned to the server core), stderr appended to `log`,
/// and waits for its ready line. Blocking.
fn start_node(env: &FaultEnv, config: &Path, log: &Path) -> Result<NodeProcess> {
    let mut command = env.pinning.server_command(&env.store_node);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("FEATURESTORE_LOG", "warn");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening a log file", log))?;
    command.stderr(Stdio::from(file));
    let mut node = NodeProcess::spawn_command(command, |_| {})
        .map_err(Error::io("starting a node", &env.store_node))?;
    node.wait_ready(READY_TIMEOUT)
        .map_err(|e| Error::Process(format!("{}: {e}", config.display())))?;
    Ok(node)
}

/// Measures one fault run (see the [module docs](self)).
pub async fn run(params: &FaultParams, env: &FaultEnv) -> Result<FaultReport> {
    params.validate()?;
    let machine = Machine::detect(None, env.pinning.server_core.is_some());
    let date = utc_now();
    let dir = env.work_dir.join("dev");
    let port = free_port_base(params.nodes)?;
    let layout = dev::prepare(&DevOptions {
        dir: dir.clone(),
        port,
        nodes: params.nodes,
    })
    .map_err(|e| Error::Setup(format!("laying out the cluster: {e}")))?;
    let victim_index = usize::from(params.victim - 1);
    let victim_id =
        NodeId::new(format!("n{}", params.victim)).map_err(|e| Error::Setup(e.to_string()))?;

    // Start every node, then wait for each (they bootstrap from one another).
    let mut nodes: Vec<Option<NodeProcess>> = Vec::new();
    {
        let env = env.clone();
        let layout = layout.clone();
        let started = tokio::task::spawn_blocking(move || {
            layout
                .nodes
                .iter()
                .map(|n| start_node(&env, &n.config, &n.config.with_extension("log")))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Process(format!("starting the nodes: {e}")))??;
        nodes.extend(started.into_iter().map(Some));
    }
    eprintln!(
        "[loadgen fault] {} nodes ready on 127.0.0.1:{port}..; loading {} profiles",
        params.nodes, params.profiles
    );

    let config = ClientConfig::load(&layout.client_config)?;
    let client_settings = ClientSettings {
        request_timeout_ms: config.request_timeout_ms,
        connect_timeout_ms: config.connect_timeout_ms,
        failure_timeout_ms: config.failure_timeout_ms,
        probe_interval_ms: config.probe_interval_ms,
        hedge_delay_us: config.hedge_delay_us,
        hedge_min_us: config.hedge_min_us,
    };
    let client = Client::connect(config.clone()).await?;
    let keyspace = Keyspace::new(params.profiles);
    load(&client, &keyspace).await?;
    // A key the victim owns, for the fresh clients.
    let victim_key = (0..params.profiles)
        .map(|i| keyspace.key(i))
        .find(|k| client.replicas(k).first() == Some(&victim_id))
        .ok_or_else(|| Error::Setup(format!("{victim_id} owns none of the keys")))?;

    let seconds = params.duration_s.ceil() as usize;
    let buckets: Arc<Mutex<Vec<Bucket>>> = Arc::new(Mutex::new(
        (0..seconds).map(|_| Bucket::default()).collect(),
    ));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(params.duration_s);
    let elapsed_s = move || start.elapsed().as_secs_f64();

    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..params.workers {
        let client = client.clone();
        let buckets = buckets.clone();
        let errors = errors.clone();
        let seed = params.seed ^ ((w as u64 + 1) << 32);
        let write_percent = u64::from(params.write_percent);
        tasks.spawn(async move {
            let mut rng = Rng::new(seed);
            while Instant::now() < end {
                let i = rng.below(keyspace.profiles);
                let key = keyspace.key(i);
                let write = rng.below(100) < write_percent as usize;
                let begin = Instant::now();
                let outcome = if write {
                    let f = rng.below(FEATURES.len());
                    let value = Keyspace::value(i, f, rng.next_u64());
                    client.put(&key, &[(FEATURES[f].0, value)]).await.map(drop)
                } else {
                    match client.get(&key, None).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(store_client::Error::Transport(format!(
                            "{key}: no profile (it was loaded)"
                        ))),
                        Err(e) => Err(e),
                    }
                };
                let done = Instant::now();
                let ok = outcome.is_ok();
                if let Err(e) = outcome {
                    let mut errors = errors.lock().unwrap_or_else(|e| e.into_inner());
                    let text = format!("{}: {e}", if write { "put" } else { "get" });
                    if errors.len() < 5 && !errors.contains(&text) {
                        errors.push(text);
                    }
                }
                let second = done.saturating_duration_since(start).as_secs() as usize;
                let mut buckets = buckets.lock().unwrap_or_else(|e| e.into_inner());
                let Some(bucket) = buckets.get_mut(second) else {
                    continue;
                };
                match (write, ok) {
                    (false, true) => bucket.reads.record(done - begin),
                    (false, false) => bucket.read_errors += 1,
                    (true, true) => bucket.writes.record(done - begin),
                    (true, false) => bucket.write_errors += 1,
                }
                if !ok {
                    bucket.failed.record(done - begin);
                }
            }
        });
    }

    // The long-lived client's view of the victim, every SAMPLE_EVERY.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    {
        let client = client.clone();
        let samples = samples.clone();
        let victim = victim_id.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while Instant::now() < end {
                tick.tick().await;
                let health = client.node_health();
                let victim_health = health.iter().find(|h| h.node == victim);
                let sample = Sample {
                    at_s: elapsed_s(),
                    victim_answers: victim_health.map_or(0, |h| h.answers),
                    all_answers: health.iter().map(|h| h.answers).sum(),
                    victim_down: victim_health.is_some_and(|h| h.down),
                };
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sample);
            }
        });
    }

    // Fresh clients: what one `storectl get` of a key the victim owns does.
    let fresh: Arc<Mutex<Vec<FreshProbe>>> = Arc::default();
    if params.fresh_every_s > 0.0 {
        let fresh = fresh.clone();
        let every = Duration::from_secs_f64(params.fresh_every_s);
        let config = config.clone();
        let key = victim_key.clone();
        tasks.spawn(async move {
            let mut next = start + every / 2;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                next += every;
                let at_s = elapsed_s();
                let begin = Instant::now();
                let outcome = async {
                    let c = Client::connect(config.clone()).await?;
                    let got = c.get(&key, None).await;
                    let answered = begin.elapsed();
                    let closing = Instant::now();
                    c.close().await;
                    got.map(|_| (answered, closing.elapsed()))
                }
                .await;
                let probe = match outcome {
                    Ok((answer, close)) => FreshProbe {
                        at_s,
                        answer_ms: Some(answer.as_secs_f64() * 1e3),
                        close_ms: close.as_secs_f64() * 1e3,
                        error: None,
                    },
                    Err(e) => FreshProbe {
                        at_s,
                        answer_ms: None,
                        close_ms: 0.0,
                        error: Some(e.to_string()),
                    },
                };
                fresh.lock().unwrap_or_else(|e| e.into_inner()).push(probe);
            }
        });
    }

    // The fault itself.
    let mut events = Events::default();
    tokio::time::sleep_until((start + Duration::from_secs_f64(params.kill_at_s)).into()).await;
    let mut doomed = nodes[victim_index]
        .take()
        .ok_or_else(|| Error::Process("the victim is not running".into()))?;
    events.killed_s = elapsed_s();
    tokio::task::spawn_blocking(move || {
        // SIGKILL, then reap.
        let _ = doomed.kill();
    })
    .await
    .map_err(|e| Error::Process(format!("killing the victim: {e}")))?;
    eprintln!(
        "[loadgen fault] kill -9 {victim_id} at {:.2} s",
        events.killed_s
    );
    if let Some(at) = params.restart_at_s {
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        events.restarted_s = Some(elapsed_s());
        let env = env.clone();
        let node = layout.nodes[victim_index].clone();
        let restarted = tokio::task::spawn_blocking(move || {
            start_node(&env, &node.config, &node.config.with_extension("log"))
        })
        .await
        .map_err(|e| Error::Process(format!("restarting the victim: {e}")))??;
        events.ready_s = Some(elapsed_s());
        nodes[victim_index] = Some(restarted);
        eprintln!(
            "[loadgen fault] {victim_id} restarted at {:.2} s, ready at {:.2} s",
            events.restarted_s.unwrap_or_default(),
            events.ready_s.unwrap_or_default()
        );
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::Process(format!("a load task failed: {e}")))?;
    }
    let hedge_delay_us = client.hedge_delay().map(|d| d.as_secs_f64() * 1e6);
    client.close().await;

    // Stop the nodes gracefully, off the async thread.
    let stopped = tokio::task::spawn_blocking(move || {
        for node in nodes.iter_mut().flatten() {
            let _ = node.terminate(Duration::from_secs(10));
        }
    });
    let _ = stopped.await;
    let _ = std::fs::remove_dir_all(&env.work_dir);

    let buckets = std::mem::take(&mut *buckets.lock().unwrap_or_else(|e| e.into_inner()));
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let fresh = fresh.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut machine = machine;
    machine.loadavg_end = loadavg();
    Ok(analyse(
        params,
        env,
        date,
        machine,
        client_settings,
        hedge_delay_us,
        events,
        &buckets,
        &samples,
        fresh,
        errors,
    ))
}

/// Loads every profile of `keyspace` (20 features each), 32 puts in flight.
async fn load(client: &Client, keyspace: &Keyspace) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let lanes = 32;
    for lane in 0..lanes {
        let client = client.clone();
        let keyspace = *keyspace;
        tasks.spawn(async move {
            for i in (lane..keyspace.profiles).step_by(lanes) {
                let profile: Vec<(&str, Value)> = keyspace.profile(i);
                client.put(&keyspace.key(i), &profile).await?;
            }
            Ok::<(), store_client::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::Process(format!("a load task failed: {e}")))??;
    }
    Ok(())
}

/// Turns what was recorded into the report.
#[allow(clippy::too_many_arguments)]
fn analyse(
    params: &FaultParams,
    env: &FaultEnv,
    date: String,
    machine: Machine,
    client: ClientSettings,
    hedge_delay_us: Option<f64>,
    mut events: Events,
    buckets: &[Bucket],
    samples: &[Sample],
    fresh: Vec<FreshProbe>,
    errors: Vec<String>,
) -> FaultReport {
    // Answers of the victim and of everyone between two instants, from the samples.
    let answers_between = |from: f64, to: f64| -> (u64, u64) {
        let at = |t: f64| {
            samples
                .iter()
                .take_while(|s| s.at_s <= t)
                .last()
                .map_or((0, 0), |s| (s.victim_answers, s.all_answers))
        };
        let (v0, a0) = at(from);
        let (v1, a1) = at(to);
        (v1.saturating_sub(v0), a1.saturating_sub(a0))
    };
    let share = |(victim, all): (u64, u64)| {
        if all == 0 {
            0.0
        } else {
            victim as f64 / all as f64
        }
    };
    let healthy_share = share(answers_between(1.0, events.killed_s));
    events.judged_down_s = samples
        .iter()
        .find(|s| s.at_s >= events.killed_s && s.victim_down)
        .map(|s| s.at_s);
    if let Some(ready) = events.ready_s {
        let window = SHARE_WINDOW.as_secs_f64();
        events.share_back_s = samples
            .iter()
            .filter(|s| s.at_s >= ready)
            .map(|s| s.at_s)
            .find(|&t| {
                share(answers_between(t, t + window)) >= SHARE_BACK_FRACTION * healthy_share
                    && samples.iter().any(|s| s.at_s >= t + window)
            })
            .map(|t| t + window);
    }
    let rows = buckets
        .iter()
        .enumerate()
        .map(|(second, b)| {
            let from = second as f64;
            SecondRow {
                second: second as u32,
                reads: b.reads.summary(),
                writes: b.writes.summary(),
                read_errors: b.read_errors,
                write_errors: b.write_errors,
                failed_max_us: if b.failed.is_empty() {
                    0.0
                } else {
                    b.failed.summary().max_us
                },
                victim_share: share(answers_between(from, from + 1.0)),
                victim_judged_down: samples
                    .iter()
                    .take_while(|s| s.at_s <= from + 1.0)
                    .last()
                    .is_some_and(|s| s.victim_down),
            }
        })
        .collect();
    let phase = |from: u32, to: u32| {
        let mut reads = Latencies::new();
        let mut writes = Latencies::new();
        for b in buckets
            .iter()
            .skip(from as usize)
            .take(to.saturating_sub(from) as usize)
        {
            reads.merge(&b.reads);
            writes.merge(&b.writes);
        }
        Phase {
            from_s: from,
            to_s: to,
            reads: reads.summary(),
            writes: writes.summary(),
        }
    };
    let total = buckets.len() as u32;
    let killed = events.killed_s.floor() as u32;
    let down_end = events
        .restarted_s
        .map_or(total, |r| (r.floor() as u32).min(total));
    let healthy = phase(1, killed);
    let down = phase((killed + 2).min(down_end), down_end);
    let back = events
        .ready_s
        .map(|r| phase(((r.ceil() as u32) + 2).min(total), total));
    FaultReport {
        date,
        machine,
        command: env.command.clone(),
        params: params.clone(),
        hedge_delay_us,
        client,
        healthy_share,
        events,
        healthy,
        down,
        back,
        seconds: rows,
        fresh,
        errors,
    }
}

/// A "met / not met" line of the targets table.
struct Verdict {
    target: &'static str,
    figure: String,
    met: bool,
}

fn ms(us: f64) -> String {
    let ms = us / 1e3;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

impl FaultReport {
    /// The seconds from the kill to the end (the "during and after" of the targets).
    fn after_kill(&self) -> impl Iterator<Item = &SecondRow> {
        let killed = self.events.killed_s.floor() as u32;
        self.seconds.iter().filter(move |r| r.second >= killed)
    }

    /// Whether the victim was down when fresh client `p` ran.
    fn victim_down_at(&self, at_s: f64) -> bool {
        at_s >= self.events.killed_s && self.events.ready_s.is_none_or(|r| at_s < r)
    }

    /// The verdicts on the targets of issue 10.
    fn verdicts(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        let idle: Vec<u32> = self
            .seconds
            .iter()
            .filter(|r| r.reads.count + r.writes.count == 0)
            .map(|r| r.second)
            .collect();
        out.push(Verdict {
            target: "long-lived client: no second with zero throughput",
            figure: if idle.is_empty() {
                let least = self
                    .seconds
                    .iter()
                    .map(|r| r.reads.count + r.writes.count)
                    .min()
                    .unwrap_or(0);
                format!("0 such seconds (fewest operations in a second: {least})")
            } else {
                format!("{} such seconds: {idle:?}", idle.len())
            },
            met: idle.is_empty(),
        });
        let worst = |f: fn(&SecondRow) -> f64| {
            self.after_kill()
                .map(|r| (r.second, f(r)))
                .fold((0, 0.0f64), |a, b| if b.1 > a.1 { b } else { a })
        };
        let (rs, rp99) = worst(|r| r.reads.p99_us);
        let (ws, wp99) = worst(|r| r.writes.p99_us);
        out.push(Verdict {
            target: "p99 in the worst second (kill to end) ≤ 5 ms",
            figure: format!(
                "reads {} ms (second {rs}), puts {} ms (second {ws})",
                ms(rp99),
                ms(wp99)
            ),
            met: rp99.max(wp99) <= 5_000.0,
        });
        let (rs, rmax) = worst(|r| r.reads.max_us);
        let (ws, wmax) = worst(|r| r.writes.max_us);
        out.push(Verdict {
            target: "max in the worst second (kill to end) ≤ 250 ms",
            figure: format!(
                "reads {} ms (second {rs}), puts {} ms (second {ws})",
                ms(rmax),
                ms(wmax)
            ),
            met: rmax.max(wmax) <= 250_000.0,
        });
        let ratio = self.down.reads.p99_us / self.healthy.reads.p99_us.max(1e-9);
        out.push(Verdict {
            target: "steady p99 with the node down ≤ 1.5× healthy p99 (reads)",
            figure: format!(
                "{} ms (seconds {}–{}) vs {} ms (seconds {}–{}) = {ratio:.2}×",
                ms(self.down.reads.p99_us),
                self.down.from_s,
                self.down.to_s,
                ms(self.healthy.reads.p99_us),
                self.healthy.from_s,
                self.healthy.to_s
            ),
            met: self.down.reads.count > 0 && ratio <= 1.5,
        });
        let down_probes: Vec<&FreshProbe> = self
            .fresh
            .iter()
            .filter(|p| self.victim_down_at(p.at_s))
            .collect();
        let worst_fresh = down_probes
            .iter()
            .map(|p| p.answer_ms.unwrap_or(f64::INFINITY))
            .fold(0.0f64, f64::max);
        out.push(Verdict {
            target: "fresh client, first seed (the victim) down: first answer ≤ 100 ms",
            figure: if down_probes.is_empty() {
                "no fresh client ran while the node was down".into()
            } else {
                format!(
                    "worst {} of {} fresh clients: {worst_fresh:.1} ms",
                    down_probes.len(),
                    down_probes.len()
                )
            },
            met: !down_probes.is_empty() && worst_fresh <= 100.0,
        });
        if let Some(ready) = self.events.ready_s {
            let back = self.events.share_back_s.map(|t| t - ready);
            out.push(Verdict {
                target: "after the node returns: its share of traffic back within 2 s",
                figure: match back {
                    Some(s) => format!(
                        "{s:.2} s after its ready line (≥ {:.0}% of its healthy share {:.1}% in a {} ms window)",
                        SHARE_BACK_FRACTION * 100.0,
                        self.healthy_share * 100.0,
                        SHARE_WINDOW.as_millis()
                    ),
                    None => "never within the run".into(),
                },
                met: back.is_some_and(|s| s <= 2.0),
            });
        }
        out
    }

    fn phase_of(&self, second: u32) -> &'static str {
        let s = f64::from(second);
        if s + 1.0 <= self.events.killed_s {
            "healthy"
        } else if self.events.ready_s.is_none_or(|r| s + 1.0 <= r) {
            if s <= self.events.killed_s {
                "kill"
            } else {
                "down"
            }
        } else if self.events.ready_s.is_some_and(|r| s <= r) {
            "restart"
        } else {
            "back"
        }
    }

    /// The markdown section for `docs/benchmarks.md`, between [`SECTION_BEGIN`] and [`SECTION_END`];
    /// the picture is referenced as `svg_name` (next to the document), and `analysis` (hand-written,
    /// e.g. `benches/fault-analysis.md`) is included verbatim at the end.
    pub fn to_markdown(&self, svg_name: &str, analysis: Option<&str>) -> String {
        let p = &self.params;
        let c = &self.client;
        let victim = format!("n{}", p.victim);
        let mut md = String::new();
        let _ = writeln!(md, "{SECTION_BEGIN}");
        let _ = writeln!(
            md,
            "## Availability: one node killed under a running client (`loadgen fault`)\n"
        );
        let _ = writeln!(
            md,
            "<!-- Generated by `loadgen fault` (benches/src/fault.rs) from benches/results/fault.json; \
             do not edit by hand: re-run the command below. -->\n"
        );
        let m = &self.machine;
        let _ = writeln!(md, "- Date: {}", self.date);
        let _ = writeln!(
            md,
            "- Reproduce (from the repository root): `{}`",
            self.command
        );
        let _ = writeln!(
            md,
            "- Machine: {} × {} ({} online), Linux {}; servers {}; featurestore commit `{}`",
            m.cpus,
            m.cpu,
            m.nproc,
            m.kernel,
            if m.pinned {
                "on core 0, the load generator on core 1"
            } else {
                "not pinned"
            },
            m.commit.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(
            md,
            "- Load average at start: {}; at end: {} (other work shared the 2 cores; the figures are pessimistic)",
            m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(
            md,
            "- Cluster: {} `store-node serve` processes laid out by `store-node dev`'s own code (sled, `sync` \
             durability, N = 3, R = W = 1), release build.",
            p.nodes
        );
        let _ = writeln!(
            md,
            "- Load: one long-lived client from the generated `client.toml` (all other settings default: \
             deadline {} ms, connect timeout {} ms, failure timeout {} ms, probe every {} ms, hedge delay {} \
             (floor {} µs; {} at the end of the healthy phase)); {} closed-loop workers, {}% point reads of a \
             20-feature profile, {}% single-feature puts, uniform over {} profiles.",
            c.request_timeout_ms,
            c.connect_timeout_ms,
            c.failure_timeout_ms,
            c.probe_interval_ms,
            c.hedge_delay_us
                .map_or_else(|| "adaptive".to_owned(), |us| format!("{us} µs")),
            c.hedge_min_us,
            self.hedge_delay_us
                .map_or_else(|| "off".to_owned(), |us| format!("{} ms", ms(us))),
            p.workers,
            100 - p.write_percent,
            p.write_percent,
            p.profiles
        );
        let _ = writeln!(
            md,
            "- Fault: `kill -9` of {victim} (the first seed of `client.toml`) at {:.2} s{}; the client judged it \
             down at {}. Every {} s a fresh client connected (seeds in `client.toml` order, {victim} first), \
             read one key {victim} owns and closed: what one `storectl get` does.\n",
            self.events.killed_s,
            match (self.events.restarted_s, self.events.ready_s) {
                (Some(s), Some(r)) => format!(", restarted at {s:.2} s (ready line at {r:.2} s)"),
                _ => String::new(),
            },
            self.events
                .judged_down_s
                .map_or_else(|| "no sample".to_owned(), |t| format!("{t:.2} s (sampled every 100 ms)")),
            p.fresh_every_s
        );
        let _ = writeln!(md, "### Targets (issue 10)\n");
        let _ = writeln!(md, "| target | figure | verdict |\n|---|---|---|");
        for v in self.verdicts() {
            let _ = writeln!(md, "| {} | {} | {} |", v.target, v.figure, met(v.met));
        }
        let _ = writeln!(md);
        let mut phases = vec![
            ("healthy".to_owned(), &self.healthy),
            (format!("{victim} down"), &self.down),
        ];
        if let Some(back) = &self.back {
            phases.push((format!("{victim} back"), back));
        }
        let _ = writeln!(
            md,
            "| phase | seconds | reads | read p50 ms | p99 ms | max ms | puts | put p50 ms | p99 ms | max ms |\n\
             |---|---|---|---|---|---|---|---|---|---|"
        );
        for (name, ph) in &phases {
            let _ = writeln!(
                md,
                "| {name} | {}–{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ph.from_s,
                ph.to_s,
                ph.reads.count,
                ms(ph.reads.p50_us),
                ms(ph.reads.p99_us),
                ms(ph.reads.max_us),
                ph.writes.count,
                ms(ph.writes.p50_us),
                ms(ph.writes.p99_us),
                ms(ph.writes.max_us)
            );
        }
        let _ = writeln!(
            md,
            "\n![per-second timeline of the fault run]({svg_name})\n"
        );
        let _ = writeln!(md, "### Per second\n");
        let _ = writeln!(
            md,
            "| s | phase | reads/s | read p50 ms | p99 ms | max ms | puts/s | put p50 ms | p99 ms | max ms | errors | {victim}'s share | {victim} judged down | fresh client ms |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.seconds {
            let fresh: Vec<String> = self
                .fresh
                .iter()
                .filter(|f| f.at_s.floor() as u32 == r.second)
                .map(|f| {
                    f.answer_ms
                        .map_or_else(|| "error".to_owned(), |a| format!("{a:.1}"))
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% | {} | {} |",
                r.second,
                self.phase_of(r.second),
                r.reads.count,
                ms(r.reads.p50_us),
                ms(r.reads.p99_us),
                ms(r.reads.max_us),
                r.writes.count,
                ms(r.writes.p50_us),
                ms(r.writes.p99_us),
                ms(r.writes.max_us),
                r.read_errors + r.write_errors,
                r.victim_share * 100.0,
                if r.victim_judged_down { "yes" } else { "no" },
                if fresh.is_empty() {
                    "—".to_owned()
                } else {
                    fresh.join(", ")
                }
            );
        }
        let (read_errors, write_errors) = self
            .seconds
            .iter()
            .fold((0, 0), |(r, w), s| (r + s.read_errors, w + s.write_errors));
        let slowest_failure = self
            .seconds
            .iter()
            .map(|s| s.failed_max_us)
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            md,
            "\nFailed operations: {read_errors} reads, {write_errors} puts{}.",
            if read_errors + write_errors > 0 {
                format!(
                    ", the slowest failing after {} ms; messages: {}",
                    ms(slowest_failure),
                    self.errors
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            } else {
                String::new()
            }
        );
        let closes: Vec<f64> = self
            .fresh
            .iter()
            .filter(|f| f.error.is_none())
            .map(|f| f.close_ms)
            .collect();
        if !closes.is_empty() {
            let worst = closes.iter().copied().fold(0.0f64, f64::max);
            let _ = writeln!(
                md,
                "\nFresh clients' `close()`: at most {worst:.1} ms (it waits until its closes are sent, never \
                 for the handshake to the dead node)."
            );
        }
        let _ = writeln!(
            md,
            "\nA row covers the operations that *completed* in that second; its share column is the \
             fraction of all answers the long-lived client got from {victim} in it (probes included); \
             \"judged down\" is the client's verdict at the end of the second (`Client::node_health`)."
        );
        if let Some(analysis) = analysis {
            let _ = writeln!(md, "\n{}", analysis.trim_end());
        }
        let _ = writeln!(md, "{SECTION_END}");
        md
    }

    /// The timeline as an SVG picture: operations per second above, p99 and max latency (log scale)
    /// below, the kill and the ready line of the restart as vertical lines.
    pub fn to_svg(&self) -> String {
        let (w, h) = (960.0, 560.0);
        let (left, right) = (70.0, 150.0);
        let plot_w = w - left - right;
        let n = self.seconds.len().max(1) as f64;
        let x = |s: f64| left + plot_w * s / n;
        let top = (40.0, 220.0);
        let bottom = (290.0, 510.0);
        let max_rate = self
            .seconds
            .iter()
            .map(|r| r.reads.count.max(r.writes.count))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let y_rate = |v: f64| top.1 - (top.1 - top.0) * v / max_rate;
        // 0.01 ms .. 1000 ms, log scale.
        let (lo, hi) = (1e-2f64.log10(), 1e3f64.log10());
        let y_lat = |us: f64| {
            let ms = (us / 1e3).clamp(1e-2, 1e3).log10();
            bottom.1 - (bottom.1 - bottom.0) * (ms - lo) / (hi - lo)
        };
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(svg, r##"<rect width="{w}" height="{h}" fill="white"/>"##);
        let victim = format!("n{}", self.params.victim);
        let _ = writeln!(
            svg,
            r##"<text x="{left}" y="22" font-size="15">loadgen fault: kill -9 of {victim} under a running client ({} workers, {}% puts), {}</text>"##,
            self.params.workers, self.params.write_percent, self.date
        );
        // Frames and grids.
        for (y0, y1) in [top, bottom] {
            let _ = writeln!(
                svg,
                r##"<rect x="{left}" y="{y0}" width="{plot_w}" height="{}" fill="none" stroke="#888"/>"##,
                y1 - y0
            );
        }
        for i in 0..=4 {
            let v = max_rate * f64::from(i) / 4.0;
            let y = y_rate(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">operations / s</text>"##,
            (top.0 + top.1) / 2.0,
            (top.0 + top.1) / 2.0
        );
        for ms_tick in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
            let y = y_lat(ms_tick * 1e3);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{ms_tick}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency, ms (log)</text>"##,
            (bottom.0 + bottom.1) / 2.0,
            (bottom.0 + bottom.1) / 2.0
        );
        // Target lines: 5 ms (worst-second p99) and 250 ms (max).
        for (us, label) in [(5e3, "5 ms"), (250e3, "250 ms")] {
            let y = y_lat(us);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#c00" stroke-dasharray="2 4"/><text x="{}" y="{:.1}" fill="#c00">target {label}</text>"##,
                left + plot_w,
                left + 6.0,
                y - 4.0
            );
        }
        // Seconds axis.
        let step = if n > 30.0 { 5 } else { 2 };
        for s in (0..=self.seconds.len()).step_by(step) {
            let xs = x(s as f64);
            let _ = writeln!(
                svg,
                r##"<text x="{xs:.1}" y="{:.1}" text-anchor="middle">{s}</text><text x="{xs:.1}" y="{:.1}" text-anchor="middle">{s}</text>"##,
                top.1 + 15.0,
                bottom.1 + 15.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text>"##,
            left + plot_w / 2.0,
            bottom.1 + 32.0
        );
        // Events.
        let mut marks = vec![(self.events.killed_s, format!("kill -9 {victim}"), "#c00")];
        if let Some(r) = self.events.ready_s {
            marks.push((r, format!("{victim} ready"), "#080"));
        }
        for (t, label, color) in &marks {
            let xt = x(*t);
            let _ = writeln!(
                svg,
                r##"<line x1="{xt:.1}" y1="{}" x2="{xt:.1}" y2="{}" stroke="{color}" stroke-width="1.5"/><text x="{:.1}" y="{}" fill="{color}">{label}</text>"##,
                top.0,
                bottom.1,
                xt + 4.0,
                top.0 + 14.0
            );
        }
        // Series.
        let line = |points: Vec<(f64, f64)>, color: &str, dash: &str| {
            let pts: Vec<String> = points
                .iter()
                .map(|(a, b)| format!("{a:.1},{b:.1}"))
                .collect();
            format!(
                r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8" stroke-dasharray="{dash}"/>"##,
                pts.join(" ")
            )
        };
        let mid = |r: &SecondRow| x(f64::from(r.second) + 0.5);
        let read_color = "#1f77b4";
        let write_color = "#ff7f0e";
        let rate = |f: fn(&SecondRow) -> u64| {
            self.seconds
                .iter()
                .map(|r| (mid(r), y_rate(f(r) as f64)))
                .collect::<Vec<_>>()
        };
        let _ = writeln!(svg, "{}", line(rate(|r| r.reads.count), read_color, ""));
        let _ = writeln!(svg, "{}", line(rate(|r| r.writes.count), write_color, ""));
        let lat = |f: fn(&SecondRow) -> (u64, f64)| {
            self.seconds
                .iter()
                .filter_map(|r| {
                    let (count, us) = f(r);
                    (count > 0).then(|| (mid(r), y_lat(us)))
                })
                .collect::<Vec<_>>()
        };
        let series = [
            (
                lat(|r| (r.reads.count, r.reads.p99_us)),
                read_color,
                "",
                "read p99",
            ),
            (
                lat(|r| (r.reads.count, r.reads.max_us)),
                read_color,
                "5 3",
                "read max",
            ),
            (
                lat(|r| (r.writes.count, r.writes.p99_us)),
                write_color,
                "",
                "put p99",
            ),
            (
                lat(|r| (r.writes.count, r.writes.max_us)),
                write_color,
                "5 3",
                "put max",
            ),
        ];
        for (points, color, dash, _) in &series {
            let _ = writeln!(svg, "{}", line(points.clone(), color, dash));
        }
        // Legends.
        let lx = left + plot_w + 10.0;
        for (i, (label, color)) in [("reads/s", read_color), ("puts/s", write_color)]
            .iter()
            .enumerate()
        {
            let y = top.0 + 40.0 + 18.0 * i as f64;
            let _ = writeln!(
                svg,
                r##"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{label}</text>"##,
                lx + 24.0,
                lx + 30.0,
                y + 4.0
            );
        }
        for (i, (_, color, dash, label)) in series.iter().enumerate() {
            let y = bottom.0 + 40.0 + 18.0 * i as f64;
            let _ = writeln!(
                svg,
                r##"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{label}</text>"##,
                lx + 24.0,
                lx + 30.0,
                y + 4.0
            );
        }
        let _ = writeln!(svg, "</svg>");
        svg
    }
}

/// `doc` with `section` in place of its fault-mode section, or appended if it has none.
pub fn splice_section(doc: &str, section: &str) -> String {
    splice_between(doc, section, SECTION_BEGIN, SECTION_END)
}

/// `doc` with the part from `begin` to `end` (markers included) replaced by `section` (which carries the
/// markers itself), or with `section` appended when `doc` has no such part.
pub fn splice_between(doc: &str, section: &str, begin: &str, end: &str) -> String {
    match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if e > b => {
            let after = &doc[e + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{section}{after}", &doc[..b])
        }
        _ => {
            let mut out = doc.trim_end().to_owned();
            out.push_str("\n\n");
            out.push_str(section);
            out
        }
    }
}

/// `rendered` (a freshly rendered `docs/benchmarks.md`) with the fault-mode section of `previous` (the
/// file it replaces) carried over, so that re-rendering the comparison does not drop it; likewise the
/// ingest (W5a) section.
pub fn carry_section(previous: Option<&str>, rendered: String) -> String {
    let Some(previous) = previous else {
        return rendered;
    };
    let mut out = rendered;
    for (begin, end) in [
        (SECTION_BEGIN, SECTION_END),
        (crate::ingest::SECTION_BEGIN, crate::ingest::SECTION_END),
    ] {
        if let (Some(b), Some(e)) = (previous.find(begin), previous.find(end)) {
            if e > b {
                out = splice_between(&out, &previous[b..e + end.len()], begin, end);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(count: u64, p99_ms: f64, max_ms: f64) -> LatencySummary {
        LatencySummary {
            count,
            p50_us: 100.0,
            p99_us: p99_ms * 1e3,
            max_us: max_ms * 1e3,
            ..LatencySummary::default()
        }
    }

    fn report(rows: Vec<(u64, f64, f64)>, fresh_ms: f64, share_back: Option<f64>) -> FaultReport {
        let seconds: Vec<SecondRow> = rows
            .iter()
            .enumerate()
            .map(|(s, &(count, p99, max))| SecondRow {
                second: s as u32,
                reads: summary(count, p99, max),
                writes: summary(count / 10, p99, max),
                read_errors: 0,
                write_errors: 0,
                failed_max_us: 0.0,
                victim_share: 0.3,
                victim_judged_down: false,
            })
            .collect();
        let phase = |from, to, p99| Phase {
            from_s: from,
            to_s: to,
            reads: summary(1000, p99, p99),
            writes: summary(100, p99, p99),
        };
        FaultReport {
            date: "2026-01-01T00:00:00Z".into(),
            machine: Machine::detect(None, false),
            command: "loadgen fault".into(),
            params: FaultParams {
                duration_s: rows.len() as f64,
                kill_at_s: 2.0,
                restart_at_s: Some(4.0),
                ..FaultParams::default()
            },
            hedge_delay_us: Some(1000.0),
            client: ClientSettings {
                request_timeout_ms: 5000,
                connect_timeout_ms: 500,
                failure_timeout_ms: 150,
                probe_interval_ms: 250,
                hedge_delay_us: None,
                hedge_min_us: 1000,
            },
            healthy_share: 0.33,
            events: Events {
                killed_s: 2.0,
                restarted_s: Some(4.0),
                ready_s: Some(4.5),
                judged_down_s: Some(2.2),
                share_back_s: share_back,
            },
            healthy: phase(1, 2, 0.2),
            down: phase(3, 4, 0.25),
            back: Some(phase(6, 6, 0.2)),
            seconds,
            fresh: vec![
                FreshProbe {
                    at_s: 0.5,
                    answer_ms: Some(5.0),
                    close_ms: 2.0,
                    error: None,
                },
                FreshProbe {
                    at_s: 3.5,
                    answer_ms: Some(fresh_ms),
                    close_ms: 2.0,
                    error: None,
                },
            ],
            errors: vec![],
        }
    }

    #[test]
    fn verdicts_follow_the_figures() {
        let good = report(
            vec![(900, 0.2, 3.0); 6],
            40.0,
            Some(5.0), // 0.5 s after the ready line
        );
        assert!(good.verdicts().iter().all(|v| v.met), "{:?}", {
            good.verdicts()
                .iter()
                .map(|v| (v.target, v.figure.clone(), v.met))
                .collect::<Vec<_>>()
        });

        // A second without operations, a slow worst second, a slow fresh client, no share back.
        let mut rows = vec![(900, 0.2, 3.0); 6];
        rows[3] = (0, 0.0, 0.0);
        rows[2] = (10, 30.0, 5000.0);
        let bad = report(rows, 900.0, None);
        let verdicts = bad.verdicts();
        let failed: Vec<&str> = verdicts
            .iter()
            .filter(|v| !v.met)
            .map(|v| v.target)
            .collect();
        assert_eq!(failed.len(), 5, "{failed:?}");
        // Only the steady-state ratio (from the phases) is still met.
        assert!(verdicts
            .iter()
            .any(|v| v.met && v.target.contains("steady")));

        let md = good.to_markdown("fault-timeline.svg", Some("### Reading it\n\nhand-written"));
        assert!(md.contains("\n### Reading it\n\nhand-written\n<!-- loadgen fault: end -->"));
        assert!(md.starts_with(SECTION_BEGIN) && md.trim_end().ends_with(SECTION_END));
        assert!(md.contains("| 5 | back |"), "{md}");
        assert!(md.contains("![per-second timeline of the fault run](fault-timeline.svg)"));
        let svg = good.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6);
    }

    #[test]
    fn sections_are_spliced_and_carried_over() {
        let section = format!("{SECTION_BEGIN}\nnew\n{SECTION_END}\n");
        let doc = "# Benchmarks\n\ntext\n";
        let once = splice_section(doc, &section);
        assert_eq!(once, format!("# Benchmarks\n\ntext\n\n{section}"));
        // Replaced in place, what follows kept.
        let old = format!("# B\n\n{SECTION_BEGIN}\nold\n{SECTION_END}\nafter\n");
        assert_eq!(
            splice_section(&old, &section),
            format!("# B\n\n{section}after\n")
        );
        // A re-render keeps the section of the file it replaces.
        let rendered = "# B (new render)\n".to_owned();
        let carried = carry_section(Some(&old), rendered.clone());
        assert!(carried.starts_with("# B (new render)\n\n"));
        assert!(carried.contains("old") && !carried.contains("after"));
        assert_eq!(carry_section(None, rendered.clone()), rendered);
        assert_eq!(
            carry_section(Some("no section"), rendered.clone()),
            rendered
        );
    }

    #[test]
    fn parameters_are_checked() {
        assert!(FaultParams::default().validate().is_ok());
        let bad = [
            FaultParams {
                victim: 4,
                ..FaultParams::default()
            },
            FaultParams {
                kill_at_s: 30.0,
                ..FaultParams::default()
            },
            FaultParams {
                restart_at_s: Some(3.0),
                ..FaultParams::default()
            },
            FaultParams {
                workers: 0,
                ..FaultParams::default()
            },
            FaultParams {
                write_percent: 101,
                ..FaultParams::default()
            },
            FaultParams {
                nodes: 1,
                victim: 1,
                ..FaultParams::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}

/// `loadgen fault`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The node to kill: n<VICTIM> (1 is the first seed of client.toml).
    #[arg(long, default_value_t = 1)]
    pub victim: u16,
    /// Seconds measured.
    #[arg(long, default_value_t = 24.0)]
    pub duration: f64,
    /// Second at which the victim gets kill -9.
    #[arg(long, default_value_t = 6.0)]
    pub kill_at: f64,
    /// Second at which it is started again.
    #[arg(long, default_value_t = 14.0)]
    pub restart_at: f64,
    /// Leave the victim down to the end.
    #[arg(long)]
    pub no_restart: bool,
    /// Closed-loop workers of the long-lived client.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Percentage of single-feature puts (the rest are point reads).
    #[arg(long, default_value_t = 10)]
    pub write_percent: u32,
    /// Profiles loaded and used.
    #[arg(long, default_value_t = 10_000)]
    pub profiles: usize,
    /// Seconds between two fresh clients (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub fresh_every: f64,
    /// Seed of the key and operation choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where fault.json goes.
    #[arg(long, default_value = "benches/results")]
    pub results: PathBuf,
    /// Put the section into this markdown file (e.g. docs/benchmarks.md), replacing its previous one.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Where the SVG goes (default: fault-timeline.svg next to --doc, else in --results).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Hand-written analysis appended to the section (skipped if the file does not exist).
    #[arg(long, default_value = "benches/fault-analysis.md")]
    pub analysis: PathBuf,
    /// Do not measure: render the section and the SVG again from this fault.json (e.g. after editing
    /// the analysis).
    #[arg(long, value_name = "FAULT_JSON")]
    pub render: Option<PathBuf>,
    /// The store-node binary (default: next to this binary).
    #[arg(long)]
    pub store_node: Option<PathBuf>,
    /// Scratch directory, removed at the end (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Do not pin the servers and this process to separate cores.
    #[arg(long)]
    pub no_pin: bool,
    /// The command line recorded in the report.
    #[arg(long)]
    pub command_line: Option<String>,
}

/// Runs `loadgen fault` (or, with `--render`, only renders a previous run) and writes its outputs.
pub async fn cli(args: FaultArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(json) = &args.render {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let report: FaultReport =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
        return write_outputs(&report, &args, false);
    }
    let params = FaultParams {
        nodes: args.nodes,
        victim: args.victim,
        duration_s: args.duration,
        kill_at_s: args.kill_at,
        restart_at_s: (!args.no_restart).then_some(args.restart_at),
        workers: args.workers,
        write_percent: args.write_percent,
        profiles: args.profiles,
        fresh_every_s: args.fresh_every,
        seed: args.seed,
    };
    params.validate()?;
    let store_node = match args.store_node.clone() {
        Some(p) => p,
        None => crate::servers::sibling_program("store-node").context(
            "store-node not found next to loadgen: build it (cargo build --release -p store-node) or pass --store-node",
        )?,
    };
    let pinning = Pinning::detect(!args.no_pin);
    pinning.pin_self()?;
    let env = FaultEnv {
        store_node,
        work_dir: args.work_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("featurestore-loadgen-fault-{}", std::process::id()))
        }),
        pinning,
        command: args
            .command_line
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
    };
    let report = run(&params, &env).await?;
    write_outputs(&report, &args, true)
}

/// Writes fault.json into `--results` (if `json`), the SVG, and the section (into `--doc`, or to
/// stdout); prints the verdicts.
fn write_outputs(report: &FaultReport, args: &FaultArgs, json: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut wrote: Vec<PathBuf> = Vec::new();
    if json {
        std::fs::create_dir_all(&args.results)
            .with_context(|| format!("creating {}", args.results.display()))?;
        let path = args.results.join("fault.json");
        std::fs::write(&path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        wrote.push(path);
    }
    let svg = args.svg.clone().unwrap_or_else(|| match &args.doc {
        Some(doc) => doc.with_file_name("fault-timeline.svg"),
        None => args.results.join("fault-timeline.svg"),
    });
    std::fs::write(&svg, report.to_svg()).with_context(|| format!("writing {}", svg.display()))?;
    let svg_name = svg.file_name().map_or_else(
        || "fault-timeline.svg".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    wrote.push(svg);
    let analysis = std::fs::read_to_string(&args.analysis).ok();
    let section = report.to_markdown(&svg_name, analysis.as_deref());
    match &args.doc {
        Some(doc) => {
            let old = std::fs::read_to_string(doc).unwrap_or_default();
            std::fs::write(doc, splice_section(&old, &section))
                .with_context(|| format!("writing {}", doc.display()))?;
            wrote.push(doc.clone());
        }
        None => println!("{section}"),
    }
    let wrote: Vec<String> = wrote.iter().map(|p| p.display().to_string()).collect();
    eprintln!("[loadgen fault] wrote {}", wrote.join(", "));
    for v in report.verdicts() {
        eprintln!(
            "[loadgen fault] {}: {} — {}",
            v.target,
            v.figure,
            if v.met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
