//! Driving a [`Target`]: the workloads, closed loop, open loop with intended send times, and the sweep.
//!
//! - **Closed loop** ([`closed_loop`]): `workers` tasks, each sending its next request when the previous one
//!   answered. With one worker this is the latency floor of a single client.
//! - **Open loop** ([`open_loop`]): requests are *scheduled* at a fixed offered rate (request `i` at
//!   `start + i / rate`) regardless of how fast answers come, and each latency is measured from its
//!   **intended** send time. A server stall therefore charges every request that should have been sent
//!   during it (no coordinated omission). The generator sleeps when the next send is more than 3 ms away
//!   and otherwise spins (yielding to the runtime), since tokio's timer has 1 ms granularity.
//! - **Sweep** ([`sweep`]): open-loop steps at geometrically rising rates until a rate fails twice in a row
//!   (p99 above the limit, errors, fewer than 95% of the offered requests answered in time, or the
//!   in-flight cap hit; the retry absorbs one-off scheduling hiccups), then two geometric bisection steps
//!   between the last good and the first bad rate. The result is the highest rate that passed.
//!
//! Every loop is bounded in time and count: a run stops at its duration or its `max_ops`, whichever comes
//! first, and an open-loop step waits at most [`DRAIN_TIMEOUT`] for stragglers.
//!
//! CPU time of the server (from `/proc/<pid>/stat`) and of this process is sampled around each run; the
//! server's CPU per operation counts warm-up operations too (they ran on the server as well).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::keyspace::{KeyChooser, KeyDist, Keyspace, Rng, FEATURES};
use crate::stats::{Latencies, LatencySummary, ProcSample};
use crate::target::Target;

/// How long an open-loop step waits for outstanding requests after its last send.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The workloads of the issue (W5, event → segment latency, arrives with ingestion; W6 and W7 are in
/// [`crate::compare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Workload {
    /// Point read of a whole 20-feature profile (Redis `HGETALL`).
    W1,
    /// Single-feature write (Redis `HSET`).
    W2,
    /// 90% W1, 10% W2.
    W3,
    /// Batch read of `batch` profiles (Redis: pipelined `HGETALL`).
    W4,
}

impl Workload {
    /// A one-line description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::W1 => "point read of a 20-feature profile",
            Workload::W2 => "single-feature write",
            Workload::W3 => "90% read / 10% write",
            Workload::W4 => "batch read of 100 profiles",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "w1" => Ok(Workload::W1),
            "w2" => Ok(Workload::W2),
            "w3" => Ok(Workload::W3),
            "w4" => Ok(Workload::W4),
            other => Err(Error::Setup(format!(
                "unknown workload {other:?} (expected w1, w2, w3 or w4)"
            ))),
        }
    }
}

/// What to run against a target.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    /// The workload.
    pub workload: Workload,
    /// Key choice.
    pub dist: KeyDist,
    /// Profiles in the keyspace (all loaded beforehand).
    pub profiles: usize,
    /// Keys per batch (W4).
    pub batch: usize,
    /// Seed of the key choice (each worker derives its own).
    pub seed: u64,
    /// Time before measuring starts (requests are sent but not recorded).
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// Measured time.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Upper bound on measured operations.
    pub max_ops: u64,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStats {
    /// Operations measured (successful, after warm-up).
    pub ops: u64,
    /// Failed operations (after warm-up).
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Measured wall time in seconds.
    pub seconds: f64,
    /// Offered rate (open loop), operations per second.
    pub offered_per_sec: Option<f64>,
    /// Achieved rate: measured operations per measured second.
    pub achieved_per_sec: f64,
    /// Latencies of the measured operations (from the intended send time in open loop).
    pub latency: LatencySummary,
    /// Server CPU microseconds per operation (warm-up included in both), if the server pid is known.
    pub server_cpu_us_per_op: Option<f64>,
    /// Server RSS at the end of the run, MiB.
    pub server_rss_mib: Option<f64>,
    /// This process's CPU use during the run, as a fraction of one core.
    pub client_cpu_cores: f64,
    /// Why an open-loop step was stopped early, if it was.
    pub aborted: Option<String>,
    /// Open loop: p99 of how late the generator sent requests after their intended time, in
    /// microseconds. Near zero when the load generator keeps up; large when it is the bottleneck (the
    /// lateness is charged to the latencies either way).
    pub send_lag_p99_us: Option<f64>,
}

/// Samples of the server and of this process around a run.
struct CpuWatch {
    server_pid: Option<u32>,
    server: Option<ProcSample>,
    client: Option<ProcSample>,
    wall: Instant,
}

impl CpuWatch {
    fn start(server_pid: Option<u32>) -> Self {
        CpuWatch {
            server_pid,
            server: server_pid.and_then(|p| ProcSample::of(p).ok()),
            client: ProcSample::of(std::process::id()).ok(),
            wall: Instant::now(),
        }
    }

    /// `(server CPU per op, server RSS MiB, client cores)`.
    fn finish(&self, total_ops: u64) -> (Option<f64>, Option<f64>, f64) {
        let server_now = self.server_pid.and_then(|p| ProcSample::of(p).ok());
        let per_op = match (&self.server, &server_now) {
            (Some(a), Some(b)) if total_ops > 0 => {
                Some(b.cpu_since(a).as_secs_f64() * 1e6 / total_ops as f64)
            }
            _ => None,
        };
        let rss = server_now.map(|s| s.rss_kib as f64 / 1024.0);
        let wall = self.wall.elapsed().as_secs_f64();
        let client = match (&self.client, ProcSample::of(std::process::id()).ok()) {
            (Some(a), Some(b)) if wall > 0.0 => b.cpu_since(a).as_secs_f64() / wall,
            _ => 0.0,
        };
        (per_op, rss, client)
    }
}

/// Per-worker state: its own RNG and key chooser.
struct OpMaker {
    rng: Rng,
    chooser: KeyChooser,
    keyspace: Keyspace,
    workload: Workload,
    batch: usize,
    salt: u64,
}

/// One operation to send.
enum Op {
    Read(usize),
    Write(usize, usize, u64),
    Batch(Vec<usize>),
}

impl OpMaker {
    fn new(spec: &RunSpec, stream: u64) -> Self {
        OpMaker {
            rng: Rng::new(spec.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            chooser: KeyChooser::new(spec.profiles, spec.dist),
            keyspace: Keyspace::new(spec.profiles),
            workload: spec.workload,
            batch: spec.batch.max(1),
            salt: spec.seed,
        }
    }

    fn next(&mut self) -> Op {
        let write = match self.workload {
            Workload::W1 | Workload::W4 => false,
            Workload::W2 => true,
            Workload::W3 => self.rng.below(10) == 0,
        };
        if self.workload == Workload::W4 {
            return Op::Batch(
                (0..self.batch)
                    .map(|_| self.chooser.next(&mut self.rng))
                    .collect(),
            );
        }
        let key = self.chooser.next(&mut self.rng);
        if write {
            self.salt = self.salt.wrapping_add(1);
            Op::Write(key, self.rng.below(FEATURES.len()), self.salt)
        } else {
            Op::Read(key)
        }
    }
}

async fn execute(target: &Target, lane: usize, keyspace: &Keyspace, op: Op) -> Result<()> {
    match op {
        Op::Read(k) => target.read(lane, keyspace, k).await,
        Op::Write(k, f, salt) => target.write(lane, keyspace, k, f, salt).await,
        Op::Batch(keys) => target.batch_read(lane, keyspace, &keys).await,
    }
}

#[derive(Default)]
struct WorkerTally {
    latencies: Latencies,
    ops: u64,
    errors: u64,
    total_ops: u64,
    first_error: Option<String>,
}

/// Runs `spec` with `workers` closed-loop workers (worker `w` uses lane `w`).
pub async fn closed_loop(
    target: &Target,
    spec: &RunSpec,
    workers: usize,
    server_pid: Option<u32>,
) -> RunStats {
    let watch = CpuWatch::start(server_pid);
    let begin = Instant::now();
    let measure_from = begin + spec.warmup;
    let deadline = measure_from + spec.duration;
    let workers = workers.max(1);
    let per_worker = (spec.max_ops / workers as u64).max(1);
    let mut set = JoinSet::new();
    for w in 0..workers {
        let target = target.clone();
        let mut maker = OpMaker::new(spec, w as u64);
        set.spawn(async move {
            let mut tally = WorkerTally::default();
            while tally.ops + tally.errors < per_worker {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let op = maker.next();
                let result = execute(&target, w, &maker.keyspace, op).await;
                let latency = t0.elapsed();
                tally.total_ops += 1;
                if t0 < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => {
                        tally.ops += 1;
                        tally.latencies.record(latency);
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            tally
        });
    }
    let mut all = WorkerTally::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(t) => {
                all.latencies.merge(&t.latencies);
                all.ops += t.ops;
                all.errors += t.errors;
                all.total_ops += t.total_ops;
                if all.first_error.is_none() {
                    all.first_error = t.first_error;
                }
            }
            Err(e) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert_with(|| format!("worker failed: {e}"));
            }
        }
    }
    let seconds = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let (cpu, rss, client) = watch.finish(all.total_ops);
    RunStats {
        ops: all.ops,
        errors: all.errors,
        first_error: all.first_error,
        seconds,
        offered_per_sec: None,
        achieved_per_sec: if seconds > 0.0 {
            all.ops as f64 / seconds
        } else {
            0.0
        },
        latency: all.latencies.summary(),
        server_cpu_us_per_op: cpu,
        server_rss_mib: rss,
        client_cpu_cores: client,
        aborted: None,
        send_lag_p99_us: None,
    }
}

struct OpenShared {
    latencies: Mutex<Latencies>,
    ops: AtomicU64,
    errors: AtomicU64,
    total_ops: AtomicU64,
    in_flight: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

/// Runs `spec` open loop at `rate` operations per second, spreading requests over `lanes` lanes
/// round-robin, with at most `max_in_flight` outstanding requests (the step is aborted beyond that).
pub async fn open_loop(
    target: &Target,
    spec: &RunSpec,
    rate: f64,
    lanes: usize,
    max_in_flight: usize,
    server_pid: Option<u32>,
) -> RunStats {
    let rate = rate.max(1.0);
    let watch = CpuWatch::start(server_pid);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + spec.warmup;
    let window = spec.warmup + spec.duration;
    let total = ((window.as_secs_f64() * rate) as u64)
        .min(
            spec.max_ops
                .saturating_add((spec.warmup.as_secs_f64() * rate) as u64),
        )
        .max(1);
    let shared = Arc::new(OpenShared {
        latencies: Mutex::new(Latencies::new()),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        total_ops: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let mut maker = OpMaker::new(spec, 0);
    let mut set = JoinSet::new();
    let mut aborted = None;
    let lanes = lanes.max(1);
    let mut last_measured_intended = measure_from;
    let mut send_lag = Latencies::new();
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        loop {
            let now = Instant::now();
            if now >= intended {
                break;
            }
            let gap = intended - now;
            if gap > Duration::from_millis(3) {
                tokio::time::sleep(gap - Duration::from_millis(2)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        // Reap finished tasks so the set does not grow with the whole run.
        while set.try_join_next().is_some() {}
        if shared.in_flight.load(Ordering::Relaxed) >= max_in_flight {
            aborted = Some(format!(
                "more than {max_in_flight} requests in flight at {:.0} ops/s",
                rate
            ));
            break;
        }
        let measured = intended >= measure_from;
        if measured {
            last_measured_intended = intended;
            send_lag.record(intended.elapsed());
        }
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let op = maker.next();
        let target = target.clone();
        let keyspace = maker.keyspace;
        let shared = shared.clone();
        let lane = (i as usize) % lanes;
        set.spawn(async move {
            let result = execute(&target, lane, &keyspace, op).await;
            let latency = intended.elapsed();
            shared.total_ops.fetch_add(1, Ordering::Relaxed);
            if measured {
                match result {
                    Ok(()) => {
                        shared.ops.fetch_add(1, Ordering::Relaxed);
                        shared
                            .latencies
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record(latency);
                    }
                    Err(e) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        shared
                            .first_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert_with(|| e.to_string());
                    }
                }
            }
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        set.abort_all();
        aborted.get_or_insert_with(|| {
            format!(
                "{} requests still outstanding {} s after the last send",
                shared.in_flight.load(Ordering::Relaxed),
                DRAIN_TIMEOUT.as_secs()
            )
        });
    }
    // The measured window is the sending window; answers that arrive later count (their latency shows it).
    let seconds = last_measured_intended
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        + interval.as_secs_f64();
    let ops = shared.ops.load(Ordering::Relaxed);
    let (cpu, rss, client) = watch.finish(shared.total_ops.load(Ordering::Relaxed));
    let latency = shared
        .latencies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .summary();
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    RunStats {
        ops,
        errors: shared.errors.load(Ordering::Relaxed),
        first_error,
        seconds,
        offered_per_sec: Some(rate),
        achieved_per_sec: if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        },
        latency,
        server_cpu_us_per_op: cpu,
        server_rss_mib: rss,
        client_cpu_cores: client,
        aborted,
        send_lag_p99_us: Some(send_lag.summary().p99_us),
    }
}

/// Parameters of a [`sweep`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepSpec {
    /// First offered rate.
    pub start_rate: f64,
    /// Each passing step multiplies the rate by this (> 1).
    pub factor: f64,
    /// Upper bound on the number of rising steps.
    pub max_steps: usize,
    /// Highest rate tried.
    pub max_rate: f64,
    /// A step passes only if its p99 is below this, in microseconds.
    pub p99_limit_us: f64,
    /// Lanes (Redis connections) requests are spread over.
    pub lanes: usize,
    /// In-flight cap per step.
    pub max_in_flight: usize,
}

/// One step of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepStep {
    /// Whether the step passed.
    pub passed: bool,
    /// What it measured.
    pub stats: RunStats,
}

/// The result of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepResult {
    /// The highest offered rate that passed (0 if none did).
    pub best_rate: f64,
    /// The stats of that step, if any passed.
    pub best: Option<RunStats>,
    /// Every step in the order run.
    pub steps: Vec<SweepStep>,
}

fn passes(stats: &RunStats, limit_us: f64) -> bool {
    let offered = stats.offered_per_sec.unwrap_or(0.0);
    stats.aborted.is_none()
        && stats.errors == 0
        && stats.ops > 0
        && stats.latency.p99_us < limit_us
        && stats.achieved_per_sec >= 0.95 * offered
}

/// Finds the highest open-loop rate whose p99 stays below `sweep.p99_limit_us`.
pub async fn sweep(
    target: &Target,
    spec: &RunSpec,
    sweep: &SweepSpec,
    server_pid: Option<u32>,
    mut progress: impl FnMut(&SweepStep),
) -> SweepResult {
    let mut steps = Vec::new();
    let mut best: Option<(f64, RunStats)> = None;
    let mut failed_at: Option<f64> = None;
    let mut rate = sweep.start_rate.max(1.0);
    let run = |rate: f64| {
        let spec = spec.clone();
        async move {
            let stats = open_loop(
                target,
                &spec,
                rate,
                sweep.lanes,
                sweep.max_in_flight,
                server_pid,
            )
            .await;
            // Let the server settle (queues drain, timers fire) before the next step.
            tokio::time::sleep(Duration::from_millis(300)).await;
            stats
        }
    };
    for _ in 0..sweep.max_steps.max(1) {
        let stats = run(rate).await;
        let mut passed = passes(&stats, sweep.p99_limit_us);
        let mut step = SweepStep { passed, stats };
        progress(&step);
        steps.push(step.clone());
        if !passed {
            // One retry at the same rate: a single scheduling hiccup of the VM (a few ms) is enough to
            // push the p99 of a short step over 1 ms; a rate the target cannot sustain fails twice.
            let stats = run(rate).await;
            passed = passes(&stats, sweep.p99_limit_us);
            step = SweepStep { passed, stats };
            progress(&step);
            steps.push(step.clone());
        }
        if passed {
            best = Some((rate, step.stats));
            if rate >= sweep.max_rate {
                break;
            }
            rate = (rate * sweep.factor.max(1.01)).min(sweep.max_rate);
        } else {
            failed_at = Some(rate);
            break;
        }
    }
    // Two bisection steps (geometric) between the last pass and the first failure.
    if let (Some(bad), Some(_)) = (failed_at, best.as_ref()) {
        let mut bad = bad;
        for _ in 0..2 {
            let good = best.as_ref().map_or(0.0, |b| b.0);
            let mid = (good * bad).sqrt();
            if mid <= good * 1.02 {
                break;
            }
            let stats = run(mid).await;
            let passed = passes(&stats, sweep.p99_limit_us);
            let step = SweepStep { passed, stats };
            progress(&step);
            steps.push(step.clone());
            if passed {
                best = Some((mid, step.stats));
            } else {
                bad = mid;
            }
        }
    }
    SweepResult {
        best_rate: best.as_ref().map_or(0.0, |b| b.0),
        best: best.map(|b| b.1),
        steps,
    }
}

/// Loads profiles `0..profiles` into `target` with `workers` concurrent loaders, in chunks of `chunk`
/// profiles per call. Bounded by `timeout`. Returns the time it took.
pub async fn load(
    target: &Target,
    profiles: usize,
    workers: usize,
    chunk: usize,
    timeout: Duration,
) -> Result<Duration> {
    let begin = Instant::now();
    let keyspace = Keyspace::new(profiles);
    let next = Arc::new(AtomicUsize::new(0));
    let chunk = chunk.max(1);
    let mut set = JoinSet::new();
    for w in 0..workers.max(1) {
        let target = target.clone();
        let next = next.clone();
        set.spawn(async move {
            loop {
                let from = next.fetch_add(chunk, Ordering::Relaxed);
                if from >= profiles {
                    return Ok::<(), Error>(());
                }
                target
                    .load(w, &keyspace, from..(from + chunk).min(profiles))
                    .await?;
            }
        });
    }
    let all = tokio::time::timeout(timeout, async {
        while let Some(joined) = set.join_next().await {
            joined.map_err(|e| Error::Setup(format!("loader task failed: {e}")))??;
        }
        Ok::<(), Error>(())
    })
    .await;
    match all {
        Ok(result) => result.map(|()| begin.elapsed()),
        Err(_) => {
            set.abort_all();
            Err(Error::Setup(format!(
                "loading {profiles} profiles into {} took more than {} s",
                target.kind(),
                timeout.as_secs()
            )))
        }
    }
}
