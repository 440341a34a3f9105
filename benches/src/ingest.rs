//! `loadgen ingest` (W5a): event ingest throughput and event → feature-readable latency, featurestore
//! (the three-node dev cluster, replicating to N = 3) beside what a team would hand-roll on Redis.
//!
//! - **featurestore**: three `store-node serve` processes laid out by `store-node dev`'s own code (sled,
//!   `sync` durability, the shipped `features.toml` with windows), driven over QUIC by one ring-aware
//!   client with `Client::ingest`. An event is acknowledged once its owner applied it, made it durable and
//!   handed it to replication.
//! - **Redis**: one `redis-server` (AOF `everysec`), each event one `EVALSHA` of a Lua script that does what
//!   the definitions do — dedup by message id (`SET NX EX 86400`), `HINCRBY` of the all-time count, per
//!   bucket `HINCRBY` of the windowed counts and sums with `EXPIRE`, `HSET` of the last values — so the
//!   comparison is per event with exactly-once and windows on both sides. Redis does not replicate.
//!
//! Both get the same seeded stream of events (`page` 40 %, `Product Viewed` 30 %, `Product Added` 20 %,
//! `Order Completed` with a revenue 10 %) over `users` users, from `workers` concurrent closed loops.
//!
//! Measured: the events/s of a closed-loop run at full concurrency, then, under paced background load at
//! half that rate, the latency from sending a probe event to the first read (from the client's normal
//! read path) that shows its effect (p50/p99/p99.9). Then the memory per profile with the example
//! definitions (windows included), next to W7: `memory_users` fresh users get `memory_events` events each,
//! the same on both targets, with event times spread over the last 30 minutes (so the 30-minute windows
//! hold one bucket per event's minute, as for an active shopper); featurestore's resident memory grown per
//! node (every node holds every user: N = 3 on three nodes) and Redis's `used_memory` and RSS grown (its
//! hashes with their bucket fields, and the dedup keys), each divided by the users. Numbers are reported,
//! never asserted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use featurestore::{FeatureView, Limits};
use serde::Serialize;
use serde_json::json;
use store_client::{Client, ClientConfig};
use store_node::dev::{self, DevOptions};
use store_node::launch::NodeProcess;

use crate::keyspace::Rng;
use crate::servers::{free_tcp_port, Pinning, RedisSettings, RedisSpec};
use crate::stats::{Latencies, LatencySummary};
use crate::{Error, Result};

/// Where the W5a section starts in `docs/benchmarks.md`.
pub const SECTION_BEGIN: &str = "<!-- loadgen ingest: begin -->";
/// Where it ends.
pub const SECTION_END: &str = "<!-- loadgen ingest: end -->";

/// The Lua script a Redis team would write for the dev definitions: exactly-once by message id, all-time
/// and bucketed windowed aggregates, last values. KEYS[1] = profile hash, KEYS[2] = dedup key;
/// ARGV = kind, event name, bucket (minutes), revenue, sku, now (ms).
const SCRIPT: &str = r#"
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) == false then return 0 end
local kind, name, bucket = ARGV[1], ARGV[2], ARGV[3]
if kind == 'page' then
  redis.call('HINCRBY', KEYS[1], 'page_views', 1)
elseif name == 'Product Viewed' then
  redis.call('HINCRBY', KEYS[1], 'product_views_30m:' .. bucket, 1)
elseif name == 'Product Added' then
  redis.call('HINCRBY', KEYS[1], 'cart_adds_30m:' .. bucket, 1)
  redis.call('HSET', KEYS[1], 'last_cart_add', ARGV[6], 'last_product_added', ARGV[5])
elseif name == 'Order Completed' then
  redis.call('HINCRBY', KEYS[1], 'orders_30m:' .. bucket, 1)
  redis.call('HINCRBYFLOAT', KEYS[1], 'revenue_7d:' .. math.floor(tonumber(bucket) / 60), ARGV[4])
end
redis.call('EXPIRE', KEYS[1], 604800)
return 1
"#;

/// Parameters of one W5a run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestParams {
    /// Distinct users.
    pub users: usize,
    /// Concurrent closed loops.
    pub workers: usize,
    /// Seconds of the throughput run (per target).
    pub duration_s: f64,
    /// Probe events of the latency run (per target).
    pub probes: usize,
    /// Seed of the event stream.
    pub seed: u64,
    /// The featurestore durability policies measured, one cluster each (`sync`, `periodic:<ms>`).
    pub durabilities: Vec<String>,
    /// Users of the memory measure.
    pub memory_users: usize,
    /// Events per user of the memory measure.
    pub memory_events: usize,
    /// The client's `coalesce_requests_per_node` (0: every call its own request, no coalescing).
    pub coalesce_requests_per_node: u32,
}

/// What one target did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    /// `featurestore (3 nodes, N=3, sync)` or `redis (AOF everysec, Lua per event)`.
    pub target: String,
    /// Events acknowledged per second at full concurrency.
    pub events_per_s: f64,
    /// Events that failed (refused or errors) in the throughput run.
    pub failed: u64,
    /// featurestore: events per `Ingest` request the client sent in the throughput run (how much its
    /// coalescing of concurrent calls shared); `None` for Redis.
    pub events_per_request: Option<f64>,
    /// The background rate of the latency run (half the throughput).
    pub background_per_s: f64,
    /// Send → first read showing the event, under the background load.
    pub readable: LatencySummary,
    /// Probes refused, or not readable within 5 s (not in `readable`).
    pub unreadable: u64,
    /// The memory measure.
    pub memory: MemoryPerUser,
}

/// Memory grown per user by the memory measure.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryPerUser {
    /// Users that got events.
    pub users: usize,
    /// Events applied per user.
    pub events_per_user: f64,
    /// Resident bytes grown per user: featurestore's mean over its nodes (each holds every user), Redis's
    /// process.
    pub rss_bytes: f64,
    /// Redis `used_memory` grown per user (its own accounting; none for featurestore).
    pub used_memory_bytes: Option<f64>,
}

/// A memory sample of a target.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_bytes: u64,
    used_memory: Option<u64>,
}

/// The target's memory now: the mean RSS of `pids`, and for Redis its `used_memory`.
async fn footprint(sink: &Sink, pids: &[u32]) -> Result<Footprint> {
    let mut total = 0u64;
    for pid in pids {
        total += crate::stats::rss_kib(*pid)
            .map_err(|e| Error::Process(format!("reading the memory of {pid}: {e}")))?
            * 1024;
    }
    let rss_bytes = total / (pids.len().max(1) as u64);
    let used_memory = match sink {
        Sink::Store(_) => None,
        Sink::Redis(conns, _) => {
            let mut conn = conns[0].clone();
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
        }
    };
    Ok(Footprint {
        rss_bytes,
        used_memory,
    })
}

/// The memory measure: `memory_events` events for each of `memory_users` fresh users (event times spread
/// over the last 30 minutes), then the memory grown per user.
async fn memory_fill(
    sink: &Sink,
    params: &IngestParams,
    tag: &str,
    pids: &[u32],
) -> Result<MemoryPerUser> {
    let users = params.memory_users.max(1);
    let per_user = params.memory_events;
    let before = footprint(sink, pids).await?;
    let applied = Arc::new(AtomicU64::new(0));
    let start_ms = now_ms().saturating_sub(30 * 60_000);
    let step_ms = (30 * 60_000 / per_user.max(1)) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..params.workers {
        let (sink, applied, tag) = (sink.clone(), applied.clone(), tag.to_owned());
        let (workers, seed) = (params.workers, params.seed ^ (0x3e3 << 24) ^ w as u64);
        tasks.spawn(async move {
            let mut rng = Rng::new(seed);
            for user in (w..users).step_by(workers) {
                let key = format!("w5-mem-{user:07}");
                for j in 0..per_user {
                    let mut s = synthetic(&mut rng, 1);
                    s.at_ms = Some(start_ms + j as u64 * step_ms);
                    let id = format!("{tag}-mem-{user}-{j}");
                    if let Ok(true) = sink.send(w, &key, &s, &id).await {
                        applied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Let replication settle before the sample (every node holds every user).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = footprint(sink, pids).await?;
    let n = users as f64;
    Ok(MemoryPerUser {
        users,
        events_per_user: applied.load(Ordering::Relaxed) as f64 / n,
        rss_bytes: after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / n,
        used_memory_bytes: after
            .used_memory
            .zip(before.used_memory)
            .map(|(a, b)| a.saturating_sub(b) as f64 / n),
    })
}

/// The whole W5a report.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The parameters.
    pub params: IngestParams,
    /// featurestore, then Redis (if it ran).
    pub results: Vec<IngestResult>,
}

/// One synthetic event of the stream: (user index, kind, name, revenue, sku).
struct Synthetic {
    user: usize,
    kind: &'static str,
    name: &'static str,
    revenue: f64,
    sku: u64,
    /// The event time, if not now.
    at_ms: Option<u64>,
}

fn synthetic(rng: &mut Rng, users: usize) -> Synthetic {
    let user = rng.below(users);
    let roll = rng.below(100);
    let (kind, name) = match roll {
        0..=39 => ("page", "Home"),
        40..=69 => ("track", "Product Viewed"),
        70..=89 => ("track", "Product Added"),
        _ => ("track", "Order Completed"),
    };
    Synthetic {
        user,
        kind,
        name,
        revenue: (rng.below(10_000) as f64) / 100.0,
        sku: rng.next_u64() % 1_000,
        at_ms: None,
    }
}

fn user_key(i: usize) -> String {
    format!("w5-user-{i:07}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn to_event(s: &Synthetic, user: &str, message_id: &str) -> Result<Event> {
    let mut j = json!({"type": s.kind, "userId": user, "messageId": message_id});
    if s.kind == "page" {
        j["name"] = json!(s.name);
    } else {
        j["event"] = json!(s.name);
        j["properties"] = json!({"revenue": s.revenue, "sku": format!("sku-{}", s.sku)});
    }
    let mut event = Event::from_segment(&j, None, now_ms(), &Limits::default())
        .map_err(|e| Error::Setup(format!("a synthetic event is invalid: {e}")))?;
    if let Some(at) = s.at_ms {
        event.timestamp_ms = at;
    }
    Ok(event)
}

/// One ingest target behind the two operations W5a needs.
#[derive(Clone)]
enum Sink {
    Store(Client),
    Redis(Vec<redis::aio::MultiplexedConnection>, String),
}

impl Sink {
    /// Sends `s` as an event of `user`; true if it was applied.
    async fn send(&self, lane: usize, user: &str, s: &Synthetic, message_id: &str) -> Result<bool> {
        match self {
            Sink::Store(client) => {
                let outcomes = client.ingest(&[to_event(s, user, message_id)?]).await?;
                Ok(matches!(
                    outcomes.as_slice(),
                    [EventOutcome::Applied { .. }]
                ))
            }
            Sink::Redis(conns, sha) => {
                let mut conn = conns[lane % conns.len()].clone();
                let bucket = s.at_ms.unwrap_or_else(now_ms) / 60_000;
                let applied: i64 = redis::cmd("EVALSHA")
                    .arg(sha)
                    .arg(2)
                    .arg(format!("profile:{user}"))
                    .arg(format!("dedup:{message_id}"))
                    .arg(s.kind)
                    .arg(s.name)
                    .arg(bucket)
                    .arg(s.revenue)
                    .arg(format!("sku-{}", s.sku))
                    .arg(now_ms())
                    .query_async(&mut conn)
                    .await?;
                Ok(applied == 1)
            }
        }
    }

    /// The probe user's page count as a client reads it.
    async fn page_views(&self, user: &str) -> Result<f64> {
        match self {
            Sink::Store(client) => Ok(match client.get(user, Some(&["page_views"])).await? {
                Some(view) => match view.features.get("page_views") {
                    Some(FeatureView::Window { value, .. }) => value.unwrap_or(0.0),
                    _ => 0.0,
                },
                None => 0.0,
            }),
            Sink::Redis(conns, _) => {
                let mut conn = conns[0].clone();
                let v: Option<i64> = redis::cmd("HGET")
                    .arg(format!("profile:{user}"))
                    .arg("page_views")
                    .query_async(&mut conn)
                    .await?;
                Ok(v.unwrap_or(0) as f64)
            }
        }
    }
}

/// Closed loops at full concurrency for `duration`: acknowledged events per second and failures.
async fn throughput(sink: &Sink, params: &IngestParams, tag: &str) -> Result<(f64, u64)> {
    let applied = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(params.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..params.workers {
        let (sink, applied, failed) = (sink.clone(), applied.clone(), failed.clone());
        let (users, seed, tag) = (params.users, params.seed ^ (w as u64 + 1), tag.to_owned());
        tasks.spawn(async move {
            let mut rng = Rng::new(seed);
            let mut n = 0u64;
            while Instant::now() < end {
                let s = synthetic(&mut rng, users);
                let id = format!("{tag}-{w}-{n}");
                n += 1;
                match sink.send(w, &user_key(s.user), &s, &id).await {
                    Ok(true) => applied.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    Ok((
        applied.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    ))
}

/// Paced background load at `rate` events/s while `probes` probe events are sent one after another; each
/// probe's latency is from sending it to the first read showing it.
async fn readable_latency(
    sink: &Sink,
    params: &IngestParams,
    rate: f64,
    tag: &str,
) -> Result<(Latencies, u64)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = tokio::task::JoinSet::new();
    let per_worker = (rate / params.workers.max(1) as f64).max(1.0);
    for w in 0..params.workers {
        let (sink, stop) = (sink.clone(), stop.clone());
        let (users, seed, tag) = (
            params.users,
            params.seed ^ (0xbac << 20) ^ w as u64,
            tag.to_owned(),
        );
        background.spawn(async move {
            let mut rng = Rng::new(seed);
            let interval = Duration::from_secs_f64(1.0 / per_worker);
            let mut next = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                next += interval;
                let s = synthetic(&mut rng, users);
                let id = format!("{tag}-bg-{w}-{n}");
                let _ = sink.send(w, &user_key(s.user), &s, &id).await;
                n += 1;
                tokio::time::sleep_until(next.into()).await;
            }
        });
    }
    let probe_user = format!("w5-probe-{tag}");
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let mut unreadable = 0;
    let mut applied = 0u32;
    for i in 0..params.probes {
        let s = Synthetic {
            user: 0, // unused: the probe is sent as `probe_user`
            kind: "page",
            name: "Home",
            revenue: 0.0,
            sku: 0,
            at_ms: None,
        };
        let begin = Instant::now();
        let ok = sink
            .send(0, &probe_user, &s, &format!("{tag}-probe-{i}"))
            .await?;
        if !ok {
            unreadable += 1;
            continue;
        }
        applied += 1;
        let want = f64::from(applied);
        let deadline = begin + Duration::from_secs(5);
        let mut seen = sink.page_views(&probe_user).await? >= want;
        while !seen && Instant::now() < deadline {
            seen = sink.page_views(&probe_user).await? >= want;
        }
        if !seen {
            unreadable += 1;
            continue;
        }
        latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(begin.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    while background.join_next().await.is_some() {}
    let out = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((out, unreadable))
}

async fn measure(
    sink: &Sink,
    params: &IngestParams,
    target: &str,
    tag: &str,
    pids: &[u32],
) -> Result<IngestResult> {
    eprintln!(
        "[loadgen ingest] {target}: throughput for {} s",
        params.duration_s
    );
    let sent = |sink: &Sink| match sink {
        Sink::Store(client) => Some(client.ingest_requests_sent()),
        Sink::Redis(..) => None,
    };
    let requests_before = sent(sink);
    let started = Instant::now();
    let (events_per_s, failed) = throughput(sink, params, tag).await?;
    let calls = events_per_s * started.elapsed().as_secs_f64();
    let events_per_request = match (requests_before, sent(sink)) {
        (Some(before), Some(after)) if after > before => Some(calls / (after - before) as f64),
        _ => None,
    };
    let background = events_per_s / 2.0;
    eprintln!(
        "[loadgen ingest] {target}: {events_per_s:.0} events/s; latency at {background:.0} events/s"
    );
    let (latencies, unreadable) = readable_latency(sink, params, background, tag).await?;
    eprintln!(
        "[loadgen ingest] {target}: memory with {} users x {} events",
        params.memory_users, params.memory_events
    );
    let memory = memory_fill(sink, params, tag, pids).await?;
    Ok(IngestResult {
        target: target.to_owned(),
        events_per_s,
        failed,
        events_per_request,
        background_per_s: background,
        readable: latencies.summary(),
        unreadable,
        memory,
    })
}

/// Where the servers come from.
#[derive(Debug, Clone)]
pub struct IngestEnv {
    /// The store-node binary.
    pub store_node: PathBuf,
    /// The redis-server binary, if Redis runs.
    pub redis_server: Option<PathBuf>,
    /// Scratch directory.
    pub work_dir: PathBuf,
    /// Core pinning of servers.
    pub pinning: Pinning,
}

/// Starts the nodes of `layout` with `durability` and waits until each is ready.
pub(crate) fn start_nodes(
    env: &IngestEnv,
    layout: &dev::DevLayout,
    durability: &str,
) -> Result<Vec<NodeProcess>> {
    let mut nodes = Vec::new();
    for n in &layout.nodes {
        let log = n.config.with_extension("log");
        let mut command = env.pinning.server_command(&env.store_node);
        command
            .arg("serve")
            .arg("--config")
            .arg(&n.config)
            .args(["--durability", durability])
            .env("FEATURESTORE_LOG", "warn");
        let file = std::fs::File::create(&log).map_err(Error::io("creating a log file", &log))?;
        command.stderr(std::process::Stdio::from(file));
        nodes.push(
            NodeProcess::spawn_command(command, |_| {})
                .map_err(Error::io("starting a node", &env.store_node))?,
        );
    }
    for node in &mut nodes {
        node.wait_ready(Duration::from_secs(60))
            .map_err(|e| Error::Process(e.to_string()))?;
    }
    Ok(nodes)
}

/// Runs W5a against featurestore and (if configured) Redis.
pub async fn run(params: &IngestParams, env: &IngestEnv) -> Result<IngestReport> {
    let mut results = Vec::new();
    for (i, durability) in params.durabilities.iter().enumerate() {
        let dir = env.work_dir.join(format!("dev-{i}"));
        let port = crate::fault::free_port_base(3)?;
        let layout = dev::prepare(&DevOptions {
            dir: dir.clone(),
            port,
            nodes: 3,
        })
        .map_err(|e| Error::Setup(format!("laying out the cluster: {e}")))?;
        let nodes = {
            let (env, layout, durability) = (env.clone(), layout.clone(), durability.clone());
            tokio::task::spawn_blocking(move || start_nodes(&env, &layout, &durability))
                .await
                .map_err(|e| Error::Process(e.to_string()))??
        };
        let config = ClientConfig {
            coalesce_requests_per_node: params.coalesce_requests_per_node,
            ..ClientConfig::load(&layout.client_config)?
        };
        let client = Client::connect(config).await?;
        let sink = Sink::Store(client.clone());
        let target = format!("featurestore (3 nodes, N=3, {durability})");
        let pids: Vec<u32> = nodes.iter().map(NodeProcess::pid).collect();
        let result = measure(&sink, params, &target, &format!("fs{i}"), &pids).await;
        client.close().await;
        drop(nodes);
        results.push(result?);
    }
    if let Some(binary) = &env.redis_server {
        let spec = RedisSpec {
            binary: binary.clone(),
            dir: env.work_dir.join("redis"),
            port: free_tcp_port()?,
            settings: RedisSettings {
                appendonly: true,
                appendfsync: "everysec".into(),
            },
            pinning: env.pinning,
        };
        let (server, _) = spec.start(Duration::from_secs(30))?;
        let client = redis::Client::open(format!("redis://{}/", server.addr))?;
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(client.get_multiplexed_async_connection().await?);
        }
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut conns[0])
            .await?;
        let sink = Sink::Redis(conns, sha);
        let pids = [server.pid()];
        let target = "redis (AOF everysec, Lua per event)";
        let result = measure(&sink, params, target, "rd", &pids).await;
        drop(server);
        results.push(result?);
    }
    Ok(IngestReport {
        params: params.clone(),
        results,
    })
}

/// The markdown section of `docs/benchmarks.md`.
pub fn to_markdown(report: &IngestReport, command: &str) -> String {
    let mut out = format!("{SECTION_BEGIN}\n## W5a: event ingest\n\n");
    out.push_str(&format!(
        "`{command}`: {} users, {} concurrent closed loops, {} s per throughput run, {} probes. \
         featurestore: the three-node dev cluster (sled, the shipped `features.toml`) once per durability \
         policy, events over QUIC with `Client::ingest`, one event per call ({}), acknowledged after the \
         owner's write is durable per the policy. Redis: one \
         server (AOF `everysec`), one `EVALSHA` per event doing dedup, windowed buckets and last values \
         (see `benches/src/ingest.rs`); no replication.\n\n",
        report.params.users,
        report.params.workers,
        report.params.duration_s,
        report.params.probes,
        match report.params.coalesce_requests_per_node {
            0 => "no coalescing: one request per call".to_owned(),
            n => format!("concurrent calls coalesced, `coalesce_requests_per_node = {n}`"),
        }
    ));
    out.push_str(
        "| target | events/s | failed | latency at | readable p50 | p99 | p99.9 | unreadable |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in &report.results {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms | {} |\n",
            r.target,
            r.events_per_s,
            r.failed,
            r.background_per_s,
            r.readable.p50_us / 1000.0,
            r.readable.p99_us / 1000.0,
            r.readable.p999_us / 1000.0,
            r.unreadable
        ));
    }
    if let Some(rd) = report
        .results
        .iter()
        .find(|r| r.target.starts_with("redis"))
    {
        out.push('\n');
        for fs in report
            .results
            .iter()
            .filter(|r| r.target.starts_with("featurestore"))
        {
            if let Some(shared) = fs.events_per_request {
                out.push_str(&format!(
                    "- {}: {shared:.1} events per `Ingest` request in the throughput run.\n",
                    fs.target
                ));
            }
            out.push_str(&format!(
                "- {}: **{:.2}×** Redis's events/s (target ≥ 1.0×); p99 at half its maximum rate **{:.2} ms** \
                 (target ≤ 5 ms).\n",
                fs.target,
                fs.events_per_s / rd.events_per_s.max(1.0),
                fs.readable.p99_us / 1000.0
            ));
        }
    }
    out.push_str(&format!(
        "\nMemory per user with the example definitions (next to W7's 20-gauge profiles): {} fresh users, \
         {} events each (the same stream on both targets), event times spread over the last 30 minutes; \
         resident memory grown per node (every featurestore node holds every user), divided by the users:\n\n\
         | target | events per user | RSS B/user | Redis used_memory B/user |\n|---|---|---|---|\n",
        report.params.memory_users, report.params.memory_events
    ));
    for r in &report.results {
        out.push_str(&format!(
            "| {} | {:.1} | {:.0} | {} |\n",
            r.target,
            r.memory.events_per_user,
            r.memory.rss_bytes,
            r.memory
                .used_memory_bytes
                .map_or("—".to_owned(), |b| format!("{b:.0}"))
        ));
    }
    out.push_str(SECTION_END);
    out.push('\n');
    out
}

/// Writes `ingest.json` into `results`.
pub fn write_json(report: &IngestReport, results: &Path) -> Result<()> {
    std::fs::create_dir_all(results).map_err(Error::io("creating", results))?;
    let path = results.join("ingest.json");
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Setup(format!("encoding the report: {e}")))?;
    std::fs::write(&path, text).map_err(Error::io("writing", &path))
}
