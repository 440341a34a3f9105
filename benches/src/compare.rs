//! The whole comparison in one call: start the servers, load the keyspace, run every workload against
//! every target, measure restarts and memory, and write the results.
//!
//! Phases (each server is stopped before the next phase starts, so only the systems compared run):
//! 1. **Reads and `periodic` writes**: the echo server, a featurestore node (`sled`, `periodic:1000`) and
//!    Redis (`appendonly yes`, `appendfsync everysec`), all loaded with the same keyspace. For each key
//!    distribution: W1, W3, W4 and W2 closed loop with one client; then (first distribution only) the W1
//!    open-loop sweep (featurestore on one connection with multiplexed streams, Redis on `redis_connections`
//!    connections, the echo on one connection) and W3 open loop at a fixed rate.
//! 2. **`sync` writes**: a featurestore node (`sled`, `sync`, group commit) and Redis (`appendfsync always`),
//!    loaded; W2 with one writer and with `writers` concurrent writers.
//! 3. **W6/W7**: fresh servers (featurestore `sled`, `periodic:1000`; Redis without AOF), loaded with
//!    `restart_profiles` profiles; memory and disk per profile; featurestore stopped with SIGTERM (final
//!    flush) and restarted, Redis `SAVE`d and restarted from its RDB; time from spawn to the first
//!    successful read.
//!
//! All servers are [`ServerProcess`]es: they are killed if this returns early or panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::driver::{self, RunSpec, SweepSpec, Workload};
use crate::error::{Error, Result};
use crate::keyspace::{KeyDist, Keyspace};
use crate::report::{
    LoadRecord, Machine, MemoryRecord, RedisBenchmarkRecord, Report, RestartRecord, RunRecord,
    SweepRecord,
};
use crate::servers::{
    self, NodeSettings, NodeSpec, Pinning, RedisSettings, RedisSpec, ServerProcess,
};
use crate::stats::{dir_bytes, ProcSample};
use crate::target::{FrameSizes, Target, TargetKind};

/// Parameters of a comparison run.
#[derive(Debug, Clone, Serialize)]
pub struct CompareParams {
    /// Profiles in the keyspace for W1–W4.
    pub profiles: usize,
    /// Profiles for W6/W7 (0 skips them).
    pub restart_profiles: usize,
    /// Measured seconds per closed-loop or fixed-rate run.
    pub duration_s: f64,
    /// Warm-up seconds before each run.
    pub warmup_s: f64,
    /// Measured seconds per sweep step.
    pub step_s: f64,
    /// First rate of the sweep.
    pub sweep_start_rate: f64,
    /// Rate factor between sweep steps.
    pub sweep_factor: f64,
    /// Maximum rising sweep steps.
    pub sweep_max_steps: usize,
    /// Fixed rate of the W3 open-loop run.
    pub w3_rate: f64,
    /// Key distributions for the closed-loop runs (the sweep uses the first).
    pub dists: Vec<KeyDist>,
    /// Keys per W4 batch.
    pub batch: usize,
    /// Concurrent writers of the `sync` throughput run.
    pub writers: usize,
    /// Redis connections in the open-loop runs.
    pub redis_connections: usize,
    /// Seed of the key choice.
    pub seed: u64,
    /// Whether to run Redis (false when it is not installed).
    pub redis: bool,
    /// Smoke run (tiny parameters).
    pub smoke: bool,
}

impl CompareParams {
    /// The full-size defaults.
    pub fn full() -> Self {
        CompareParams {
            profiles: 100_000,
            restart_profiles: 1_000_000,
            duration_s: 10.0,
            warmup_s: 1.0,
            step_s: 3.0,
            sweep_start_rate: 2_000.0,
            sweep_factor: 1.3,
            sweep_max_steps: 25,
            w3_rate: 10_000.0,
            dists: vec![KeyDist::Uniform, KeyDist::Zipf],
            batch: 100,
            writers: 32,
            redis_connections: 50,
            seed: 42,
            redis: true,
            smoke: false,
        }
    }

    /// A few seconds per target: checks that every path works (CI).
    pub fn smoke() -> Self {
        CompareParams {
            profiles: 1_000,
            restart_profiles: 1_000,
            duration_s: 0.3,
            warmup_s: 0.1,
            step_s: 0.3,
            sweep_start_rate: 500.0,
            sweep_factor: 2.0,
            sweep_max_steps: 2,
            w3_rate: 500.0,
            dists: vec![KeyDist::Uniform],
            batch: 100,
            writers: 4,
            redis_connections: 4,
            seed: 42,
            redis: true,
            smoke: true,
        }
    }
}

/// Where the programs and files are.
#[derive(Debug, Clone)]
pub struct CompareEnv {
    /// `store-node` binary.
    pub store_node: PathBuf,
    /// `redis-server` binary (None skips Redis).
    pub redis_server: Option<PathBuf>,
    /// This binary (for the echo server).
    pub loadgen: PathBuf,
    /// Scratch directory (certificates, data); created, and removed at the end.
    pub work_dir: PathBuf,
    /// Where per-run JSON files and `summary.json` go.
    pub results_dir: PathBuf,
    /// Pinning.
    pub pinning: Pinning,
    /// The command line, for the report.
    pub command: String,
}

const START_TIMEOUT: Duration = Duration::from_secs(600);
const LOAD_TIMEOUT: Duration = Duration::from_secs(1800);
const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

struct Ctx<'a> {
    params: &'a CompareParams,
    env: &'a CompareEnv,
    certs: PathBuf,
    report: Report,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[loadgen] {}", msg.as_ref());
}

fn summary_line(r: &RunRecord) -> String {
    let s = &r.stats;
    format!(
        "{:<12} {:?} {:<6} w={:<2} {:<8} {:<22} p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>9.0} µs  {:>9.0} ops/s  err {}  cpu/op {}",
        r.target.as_str(),
        r.workload,
        r.mode,
        r.workers,
        r.dist.as_str(),
        r.durability,
        s.latency.p50_us,
        s.latency.p99_us,
        s.latency.max_us,
        s.achieved_per_sec,
        s.errors,
        s.server_cpu_us_per_op
            .map_or("—".to_owned(), |c| format!("{c:.1} µs")),
    )
}

impl Ctx<'_> {
    fn spec(&self, workload: Workload, dist: KeyDist) -> RunSpec {
        RunSpec {
            workload,
            dist,
            profiles: self.params.profiles,
            batch: self.params.batch,
            seed: self.params.seed,
            warmup: Duration::from_secs_f64(self.params.warmup_s),
            duration: Duration::from_secs_f64(self.params.duration_s),
            max_ops: 50_000_000,
        }
    }

    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let dir = self.env.results_dir.join("runs");
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::Report(e.to_string()))?;
        std::fs::write(&path, text).map_err(Error::io("writing", &path))
    }

    #[allow(clippy::too_many_arguments)]
    async fn closed(
        &mut self,
        target: &Target,
        server: &ServerProcess,
        workload: Workload,
        dist: KeyDist,
        workers: usize,
        durability: &str,
    ) -> Result<()> {
        let spec = self.spec(workload, dist);
        let stats = driver::closed_loop(target, &spec, workers, Some(server.pid())).await;
        let record = RunRecord {
            name: format!(
                "{}-{:?}-closed{}-{}-{}",
                target.kind(),
                workload,
                workers,
                dist,
                durability.replace([' ', ':'], "_")
            )
            .to_lowercase(),
            target: target.kind(),
            workload,
            mode: "closed".into(),
            workers,
            connections: match target {
                Target::Redis(c) => c.len(),
                _ => 1,
            },
            dist,
            durability: durability.to_owned(),
            stats,
        };
        log(summary_line(&record));
        self.save_json(&record.name, &record)?;
        self.report.runs.push(record);
        Ok(())
    }

    async fn load(&mut self, target: &Target, durability: &str, profiles: usize) -> Result<f64> {
        let (workers, chunk) = match target.kind() {
            TargetKind::Redis => (4, 200),
            _ => (64, 16),
        };
        log(format!(
            "loading {profiles} profiles into {} ({durability})",
            target.kind()
        ));
        let took = driver::load(target, profiles, workers, chunk, LOAD_TIMEOUT).await?;
        // Check what was loaded: the last profile must read back whole.
        target
            .read(0, &Keyspace::new(profiles), profiles.saturating_sub(1))
            .await?;
        log(format!("  loaded in {:.1} s", took.as_secs_f64()));
        self.report.loads.push(LoadRecord {
            target: target.kind(),
            durability: durability.to_owned(),
            profiles,
            seconds: took.as_secs_f64(),
        });
        Ok(took.as_secs_f64())
    }

    fn node_spec(&self, name: &str, durability: &str) -> NodeSpec {
        NodeSpec {
            binary: self.env.store_node.clone(),
            dir: self.env.work_dir.join(name),
            certs: self.certs.clone(),
            settings: NodeSettings {
                storage: "sled".into(),
                durability: durability.into(),
            },
            pinning: self.env.pinning,
        }
    }

    fn redis_spec(
        &self,
        name: &str,
        appendonly: bool,
        appendfsync: &str,
    ) -> Result<Option<RedisSpec>> {
        let Some(binary) = self.env.redis_server.clone().filter(|_| self.params.redis) else {
            return Ok(None);
        };
        Ok(Some(RedisSpec {
            binary,
            dir: self.env.work_dir.join(name),
            port: servers::free_tcp_port()?,
            settings: RedisSettings {
                appendonly,
                appendfsync: appendfsync.into(),
            },
            pinning: self.env.pinning,
        }))
    }

    /// Phase 1: reads and `periodic` writes.
    async fn phase_reads(&mut self) -> Result<()> {
        let p = self.params.clone();
        log("phase 1: reads and periodic writes");
        let echo_server = servers::start_echo(
            &self.env.loadgen,
            &self.certs,
            &self.env.work_dir.join("echo"),
            self.env.pinning,
        )?;
        let echo = Target::echo(&self.certs, echo_server.addr, &self.report.frame_sizes).await?;
        let (node, _) = self
            .node_spec("fs-periodic", "periodic:1000")
            .start(LOOPBACK_ANY_PORT, START_TIMEOUT)?;
        let fs = Target::featurestore(&self.certs, node.addr).await?;
        self.load(&fs, "periodic:1000", p.profiles).await?;
        let redis = match self.redis_spec("redis-everysec", true, "everysec")? {
            Some(spec) => {
                let (server, _) = spec.start(START_TIMEOUT)?;
                let one = Target::redis(server.addr, 1).await?;
                self.load(&one, "appendfsync everysec", p.profiles).await?;
                Some((server, one))
            }
            None => None,
        };
        for &dist in &p.dists {
            for workload in [Workload::W1, Workload::W3, Workload::W4, Workload::W2] {
                if workload != Workload::W3 {
                    self.closed(&echo, &echo_server, workload, dist, 1, "none")
                        .await?;
                }
                self.closed(&fs, &node, workload, dist, 1, "periodic:1000")
                    .await?;
                if let Some((server, conn)) = &redis {
                    self.closed(conn, server, workload, dist, 1, "appendfsync everysec")
                        .await?;
                }
            }
        }
        let dist = p.dists.first().copied().unwrap_or(KeyDist::Uniform);
        // W1 sweeps.
        let mut sweep_targets: Vec<(Target, &ServerProcess, usize)> =
            vec![(echo.clone(), &echo_server, 1), (fs.clone(), &node, 1)];
        let redis_many = match &redis {
            Some((server, _)) => Some((
                Target::redis(server.addr, p.redis_connections).await?,
                server,
            )),
            None => None,
        };
        if let Some((t, server)) = &redis_many {
            sweep_targets.push((t.clone(), server, p.redis_connections));
        }
        for (target, server, connections) in sweep_targets {
            let mut spec = self.spec(Workload::W1, dist);
            spec.duration = Duration::from_secs_f64(p.step_s);
            spec.warmup = Duration::from_secs_f64(p.warmup_s.min(0.5));
            let sweep_spec = SweepSpec {
                start_rate: p.sweep_start_rate,
                factor: p.sweep_factor,
                max_steps: p.sweep_max_steps,
                max_rate: 1_000_000.0,
                p99_limit_us: 1_000.0,
                lanes: connections,
                max_in_flight: 20_000,
            };
            log(format!(
                "W1 sweep against {} ({connections} connection(s))",
                target.kind()
            ));
            let kind = target.kind();
            let result = driver::sweep(&target, &spec, &sweep_spec, Some(server.pid()), |step| {
                log(format!(
                    "  {kind:<12} offered {:>8.0}/s achieved {:>8.0}/s p50 {:>8.1} µs p99 {:>9.1} µs errors {} send lag p99 {:.0} µs {}{}",
                    step.stats.offered_per_sec.unwrap_or(0.0),
                    step.stats.achieved_per_sec,
                    step.stats.latency.p50_us,
                    step.stats.latency.p99_us,
                    step.stats.errors,
                    step.stats.send_lag_p99_us.unwrap_or(0.0),
                    if step.passed { "pass" } else { "FAIL" },
                    step.stats.aborted.as_deref().map(|a| format!(" ({a})")).unwrap_or_default(),
                ));
            })
            .await;
            log(format!("  {kind}: best rate {:.0}/s", result.best_rate));
            let record = SweepRecord {
                name: format!("{kind}-w1-sweep-{dist}"),
                target: kind,
                workload: Workload::W1,
                dist,
                connections,
                p99_limit_us: sweep_spec.p99_limit_us,
                result,
            };
            self.save_json(&record.name, &record)?;
            self.report.sweeps.push(record);
        }
        // W3 open loop at a fixed rate.
        let mut open_targets: Vec<(Target, &ServerProcess, usize, &str)> =
            vec![(fs.clone(), &node, 1, "periodic:1000")];
        if let Some((t, server)) = &redis_many {
            open_targets.push((
                t.clone(),
                server,
                p.redis_connections,
                "appendfsync everysec",
            ));
        }
        for (target, server, connections, durability) in open_targets {
            let spec = self.spec(Workload::W3, dist);
            let stats = driver::open_loop(
                &target,
                &spec,
                p.w3_rate,
                connections,
                20_000,
                Some(server.pid()),
            )
            .await;
            let record = RunRecord {
                name: format!("{}-w3-open-{dist}", target.kind()),
                target: target.kind(),
                workload: Workload::W3,
                mode: "open".into(),
                workers: 0,
                connections,
                dist,
                durability: durability.to_owned(),
                stats,
            };
            log(summary_line(&record));
            self.save_json(&record.name, &record)?;
            self.report.runs.push(record);
        }
        if let Some((server, _)) = &redis {
            self.redis_benchmark(server.addr, &Keyspace::new(p.profiles).key(0));
        }
        fs.close().await;
        echo.close().await;
        Ok(())
    }

    /// Reference figures from `redis-benchmark` (skipped with a note if it is not installed).
    fn redis_benchmark(&mut self, addr: SocketAddr, key: &str) {
        let Some(program) = servers::find_program("redis-benchmark") else {
            self.report.skipped.push(
                "redis-benchmark reference: redis-benchmark not installed (Debian: redis-tools)"
                    .into(),
            );
            return;
        };
        let secs = self.params.duration_s.max(0.2);
        // Request counts sized to take about `duration_s` at this machine's usual rates.
        let cases = [
            (
                "W1: HGETALL, 1 client",
                1usize,
                1usize,
                (secs * 15_000.0) as usize,
            ),
            (
                "W4: 100 pipelined HGETALL, 1 client",
                1,
                100,
                (secs * 60_000.0) as usize,
            ),
            (
                "W1: HGETALL, 50 clients",
                50,
                1,
                (secs * 100_000.0) as usize,
            ),
        ];
        for (what, clients, pipeline, requests) in cases {
            let out = std::process::Command::new(&program)
                .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
                .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
                .args(["-n", &requests.max(1_000).to_string(), "HGETALL", key])
                .output();
            let parsed = out
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| parse_redis_benchmark(&String::from_utf8_lossy(&o.stdout)));
            match parsed {
                Some((rps, p50, p99)) => {
                    let record = RedisBenchmarkRecord {
                        what: what.to_owned(),
                        clients,
                        pipeline,
                        requests_per_sec: rps,
                        p50_us: p50,
                        p99_us: p99,
                    };
                    log(format!("redis-benchmark {record:?}"));
                    self.report.redis_benchmark.push(record);
                }
                None => self.report.skipped.push(format!(
                    "redis-benchmark reference {what:?}: no parsable output"
                )),
            }
        }
    }

    /// Phase 2: `sync` writes.
    async fn phase_sync(&mut self) -> Result<()> {
        let p = self.params.clone();
        log("phase 2: sync writes (group commit vs appendfsync always)");
        let (node, _) = self
            .node_spec("fs-sync", "sync")
            .start(LOOPBACK_ANY_PORT, START_TIMEOUT)?;
        let fs = Target::featurestore(&self.certs, node.addr).await?;
        self.load(&fs, "sync", p.profiles).await?;
        let redis = match self.redis_spec("redis-always", true, "always")? {
            Some(spec) => {
                let (server, _) = spec.start(START_TIMEOUT)?;
                let one = Target::redis(server.addr, 1).await?;
                self.load(&one, "appendfsync always", p.profiles).await?;
                let many = Target::redis(server.addr, p.writers).await?;
                Some((server, one, many))
            }
            None => None,
        };
        for &dist in &p.dists {
            self.closed(&fs, &node, Workload::W2, dist, 1, "sync")
                .await?;
            if let Some((server, one, _)) = &redis {
                self.closed(one, server, Workload::W2, dist, 1, "appendfsync always")
                    .await?;
            }
            self.closed(&fs, &node, Workload::W2, dist, p.writers, "sync")
                .await?;
            if let Some((server, _, many)) = &redis {
                self.closed(
                    many,
                    server,
                    Workload::W2,
                    dist,
                    p.writers,
                    "appendfsync always",
                )
                .await?;
            }
        }
        fs.close().await;
        Ok(())
    }

    /// Phase 3: W6 restart and W7 memory/disk.
    async fn phase_restart(&mut self) -> Result<()> {
        let n = self.params.restart_profiles;
        if n == 0 {
            self.report
                .skipped
                .push("W6/W7: restart_profiles = 0".into());
            return Ok(());
        }
        log(format!(
            "phase 3: W6 restart and W7 memory with {n} profiles"
        ));
        let keyspace = Keyspace::new(n);
        // featurestore.
        let spec = self.node_spec("fs-restart", "periodic:1000");
        let (mut node, _) = spec.start(LOOPBACK_ANY_PORT, START_TIMEOUT)?;
        let addr = node.addr;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base = ProcSample::of(node.pid())?;
        let fs = Target::featurestore(&self.certs, addr).await?;
        let load_seconds = self.load(&fs, "periodic:1000", n).await?;
        fs.close().await;
        // Let the periodic flush run, then measure.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let loaded = ProcSample::of(node.pid())?;
        log("  stopping the node (SIGTERM, final flush)");
        let stop = node.terminate(Duration::from_secs(300));
        let disk = dir_bytes(&spec.data_dir());
        let begin = Instant::now();
        let (node2, ready) = spec.start(addr, START_TIMEOUT)?;
        let fs2 = Target::featurestore(&self.certs, node2.addr).await?;
        fs2.read(0, &keyspace, n - 1).await?;
        let first_read = begin.elapsed();
        fs2.close().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restarted = ProcSample::of(node2.pid())?;
        drop(node2);
        let per = |a: u64, b: u64| (b.saturating_sub(a) * 1024) as f64 / n as f64;
        let record = RestartRecord {
            target: TargetKind::Featurestore,
            profiles: n,
            how: "sled, periodic:1000, SIGTERM then restart".into(),
            stop_seconds: stop.as_secs_f64(),
            ready_seconds: ready.as_secs_f64(),
            first_read_seconds: first_read.as_secs_f64(),
        };
        log(format!("  featurestore: {record:?}"));
        self.report.restarts.push(record);
        let mem = MemoryRecord {
            target: TargetKind::Featurestore,
            profiles: n,
            rss_bytes_per_profile_loaded: per(base.rss_kib, loaded.rss_kib),
            rss_bytes_per_profile_restarted: per(base.rss_kib, restarted.rss_kib),
            used_memory_bytes_per_profile: None,
            disk_bytes_per_profile: disk as f64 / n as f64,
            load_seconds,
        };
        log(format!("  featurestore: {mem:?}"));
        self.report.memory.push(mem);
        let _ = std::fs::remove_dir_all(spec.data_dir());

        // Redis.
        let Some(spec) = self.redis_spec("redis-rdb", false, "everysec")? else {
            self.report
                .skipped
                .push("W6/W7 Redis: redis-server not available".into());
            return Ok(());
        };
        let (mut server, _) = spec.start(START_TIMEOUT)?;
        let base_rss = ProcSample::of(server.pid())?.rss_kib;
        let conn = Target::redis(server.addr, 1).await?;
        let base_used = used_memory(&conn).await?;
        let load_seconds = self.load(&conn, "no AOF", n).await?;
        let used = used_memory(&conn).await?;
        let loaded_rss = ProcSample::of(server.pid())?.rss_kib;
        let save_begin = Instant::now();
        if let Target::Redis(conns) = &conn {
            if let Some(c) = conns.first() {
                let mut c = c.clone();
                let () = redis::cmd("SAVE").query_async(&mut c).await?;
            }
        }
        let save = save_begin.elapsed();
        drop(conn);
        server.kill();
        let rdb = std::fs::metadata(spec.dir.join("dump.rdb")).map_or(0, |m| m.len());
        let begin = Instant::now();
        let (server2, ready) = spec.start(START_TIMEOUT)?;
        let conn2 = Target::redis(server2.addr, 1).await?;
        conn2.read(0, &keyspace, n - 1).await?;
        let first_read = begin.elapsed();
        let restarted_rss = ProcSample::of(server2.pid())?.rss_kib;
        drop(server2);
        let record = RestartRecord {
            target: TargetKind::Redis,
            profiles: n,
            how: "RDB (SAVE, kill, restart)".into(),
            stop_seconds: save.as_secs_f64(),
            ready_seconds: ready.as_secs_f64(),
            first_read_seconds: first_read.as_secs_f64(),
        };
        log(format!("  redis: {record:?}"));
        self.report.restarts.push(record);
        let mem = MemoryRecord {
            target: TargetKind::Redis,
            profiles: n,
            rss_bytes_per_profile_loaded: per(base_rss, loaded_rss),
            rss_bytes_per_profile_restarted: per(base_rss, restarted_rss),
            used_memory_bytes_per_profile: Some(used.saturating_sub(base_used) as f64 / n as f64),
            disk_bytes_per_profile: rdb as f64 / n as f64,
            load_seconds,
        };
        log(format!("  redis: {mem:?}"));
        self.report.memory.push(mem);
        Ok(())
    }
}

/// Parses `redis-benchmark`'s summary: `(requests/s, p50 µs, p99 µs)`.
fn parse_redis_benchmark(text: &str) -> Option<(f64, f64, f64)> {
    let text = text.replace('\r', "\n");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("throughput summary:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    // "latency summary (msec):", a header line "avg min p50 p95 p99 max", then the values.
    let mut lines = text.lines().skip_while(|l| !l.contains("latency summary"));
    let header: Vec<&str> = lines.nth(1)?.split_whitespace().collect();
    let values: Vec<f64> = lines
        .next()?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| values.get(i))
            .map(|ms| ms * 1000.0)
    };
    Some((rps, at("p50")?, at("p99")?))
}

/// Redis `INFO memory` → `used_memory` in bytes.
async fn used_memory(target: &Target) -> Result<u64> {
    let Target::Redis(conns) = target else {
        return Err(Error::Setup("used_memory needs a Redis target".into()));
    };
    let mut c = conns
        .first()
        .cloned()
        .ok_or_else(|| Error::Setup("no Redis connection".into()))?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::Unexpected("INFO memory has no used_memory".into()))
}

/// Runs the whole comparison and returns the report (also written to `results_dir/summary.json`).
pub async fn run(params: &CompareParams, env: &CompareEnv) -> Result<Report> {
    if params.profiles == 0 {
        return Err(Error::Setup("profiles must be at least 1".into()));
    }
    let _ = std::fs::remove_dir_all(&env.work_dir);
    std::fs::create_dir_all(&env.work_dir).map_err(Error::io("creating", &env.work_dir))?;
    std::fs::create_dir_all(&env.results_dir).map_err(Error::io("creating", &env.results_dir))?;
    let _ = std::fs::remove_dir_all(env.results_dir.join("runs"));
    let certs = env.work_dir.join("certs");
    servers::generate_certs(&env.store_node, &certs)?;
    let keyspace = Keyspace::new(params.profiles);
    let mut skipped = Vec::new();
    let redis_binary = env.redis_server.as_deref().filter(|_| params.redis);
    if redis_binary.is_none() {
        skipped
            .push("Redis: redis-server not available or disabled; Redis columns are empty".into());
    }
    let report = Report {
        date: crate::report::utc_now(),
        command: env.command.clone(),
        smoke: params.smoke,
        params: serde_json::to_value(params).map_err(|e| Error::Report(e.to_string()))?,
        machine: Machine::detect(redis_binary, env.pinning.server_core.is_some()),
        frame_sizes: FrameSizes::compute(&keyspace, params.batch)?,
        runs: Vec::new(),
        sweeps: Vec::new(),
        loads: Vec::new(),
        restarts: Vec::new(),
        memory: Vec::new(),
        redis_benchmark: Vec::new(),
        skipped,
        failed_phases: Vec::new(),
    };
    let mut ctx = Ctx {
        params,
        env,
        certs,
        report,
    };
    // A phase that fails is recorded and the next one still runs (its servers were killed when its
    // future was dropped), so one stalled server does not lose the whole report; the caller sees the
    // failure in `failed_phases` (and `loadgen` exits non-zero).
    for phase in 0..3 {
        let outcome = match phase {
            0 => ctx.phase_reads().await,
            1 => ctx.phase_sync().await,
            _ => ctx.phase_restart().await,
        };
        if let Err(e) = outcome {
            let name = [
                "reads and periodic writes",
                "sync writes",
                "W6/W7 restart and memory",
            ][phase];
            log(format!("phase {name} FAILED: {e}"));
            ctx.report
                .skipped
                .push(format!("phase \"{name}\" failed: {e}"));
            ctx.report.failed_phases.push(name.to_owned());
        }
    }
    ctx.report.machine.loadavg_end = crate::report::loadavg();
    let path = env.results_dir.join("summary.json");
    ctx.report.write_json(&path)?;
    if !ctx.report.failed_phases.is_empty() {
        log(format!(
            "a phase failed: server logs kept in {}",
            env.work_dir.display()
        ));
    } else {
        let _ = std::fs::remove_dir_all(&env.work_dir);
    }
    Ok(ctx.report)
}

/// Renders `report` (with the analysis file, if it exists) to `doc`.
pub fn write_doc(report: &Report, doc: &Path, analysis: &Path) -> Result<()> {
    let analysis = std::fs::read_to_string(analysis).ok();
    let md = report.to_markdown(analysis.as_deref());
    // The section written by `loadgen fault` is kept as it is.
    let md = crate::fault::carry_section(std::fs::read_to_string(doc).ok().as_deref(), md);
    if let Some(dir) = doc.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    std::fs::write(doc, md).map_err(Error::io("writing", doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_summary_is_parsed() {
        let out = "HGETALL x: rps=1.0\rSummary:\n  throughput summary: 9090.91 requests per second\n  \
                   latency summary (msec):\n          avg       min       p50       p95       p99       max\n\
                   \x20       0.101     0.032     0.047     0.087     2.623     5.079\n";
        let (rps, p50, p99) = parse_redis_benchmark(out).expect("parsed");
        assert!((rps - 9090.91).abs() < 1e-6);
        assert!((p50 - 47.0).abs() < 1e-6 && (p99 - 2623.0).abs() < 1e-6);
        assert!(parse_redis_benchmark("garbage").is_none());
    }
}
