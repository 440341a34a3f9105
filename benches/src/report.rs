//! The results of a comparison run: the JSON model and its rendering as `docs/benchmarks.md`.
//!
//! Everything in the rendered document is computed from a [`Report`] (itself written as JSON next to the
//! per-run files), except the hand-written analysis, which is read from a separate markdown file and
//! included verbatim. Ratios and "met / not met" verdicts are derived here, from the figures, never typed in.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::driver::{RunStats, SweepResult, Workload};
use crate::error::{Error, Result};
use crate::keyspace::KeyDist;
use crate::target::{FrameSizes, TargetKind};

/// Facts about the machine a report was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model from `/proc/cpuinfo`.
    pub cpu: String,
    /// Logical CPUs (`/proc/cpuinfo` processors).
    pub cpus: usize,
    /// CPUs online (`/sys/devices/system/cpu/online`).
    pub nproc: usize,
    /// Kernel release.
    pub kernel: String,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// `redis-server --version`, if Redis was used.
    pub redis_version: Option<String>,
    /// `rustc --version`, if available.
    pub rustc: Option<String>,
    /// Commit of the working tree (`git describe --always --dirty`), if available.
    pub commit: Option<String>,
    /// Whether servers and client were pinned to separate cores.
    pub pinned: bool,
    /// `/proc/loadavg` when the run started.
    pub loadavg_start: String,
    /// `/proc/loadavg` when the run ended (filled in at the end).
    pub loadavg_end: String,
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minute load averages).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Counts the CPUs of a kernel CPU list such as `0-1` or `0,2-3`.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Machine {
    /// Reads the machine facts (`/proc`, `nproc`, `uname`), `redis_binary --version`, `rustc` and `git`.
    pub fn detect(redis_binary: Option<&Path>, pinned: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        // CPUs online (not `available_parallelism`, which is 1 once the load generator pinned itself).
        let nproc = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| count_cpu_list(t.trim()))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let redis_version =
            redis_binary.and_then(|b| command_output(&b.to_string_lossy(), &["--version"]));
        Machine {
            cpu,
            cpus: cpus.max(nproc),
            nproc,
            kernel,
            memory_gib,
            redis_version,
            rustc: command_output("rustc", &["--version"]),
            commit: command_output("git", &["describe", "--always", "--dirty"]),
            pinned,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

/// One measured run of a workload against a target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// A unique name, also the JSON file name.
    pub name: String,
    /// The system.
    pub target: TargetKind,
    /// The workload.
    pub workload: Workload,
    /// `closed` or `open`.
    pub mode: String,
    /// Closed-loop workers (1 = single client).
    pub workers: usize,
    /// Redis connections / lanes.
    pub connections: usize,
    /// Key choice.
    pub dist: KeyDist,
    /// The server's persistence setting (`periodic:1000`, `appendfsync everysec`, ...).
    pub durability: String,
    /// What was measured.
    pub stats: RunStats,
}

/// One open-loop sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    /// A unique name, also the JSON file name.
    pub name: String,
    /// The system.
    pub target: TargetKind,
    /// The workload.
    pub workload: Workload,
    /// Key choice.
    pub dist: KeyDist,
    /// Connections (Redis) or 1 (QUIC, multiplexed streams).
    pub connections: usize,
    /// The p99 limit in microseconds.
    pub p99_limit_us: f64,
    /// The result.
    pub result: SweepResult,
}

/// W6: restart of a loaded server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartRecord {
    /// The system.
    pub target: TargetKind,
    /// Profiles held.
    pub profiles: usize,
    /// What was restarted (`sled, periodic:1000` / `RDB`).
    pub how: String,
    /// Time to stop the loaded server gracefully (featurestore: SIGTERM with final flush; Redis: `SAVE`).
    pub stop_seconds: f64,
    /// Spawn → ready (featurestore: ready line; Redis: first `PONG`, i.e. RDB loaded).
    pub ready_seconds: f64,
    /// Spawn → first successful whole-profile read on a new connection.
    pub first_read_seconds: f64,
}

/// W7: memory and disk per profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// The system.
    pub target: TargetKind,
    /// Profiles held.
    pub profiles: usize,
    /// RSS growth per profile right after loading, bytes.
    pub rss_bytes_per_profile_loaded: f64,
    /// RSS growth per profile after a restart (the steady state of a node holding the data), bytes.
    pub rss_bytes_per_profile_restarted: f64,
    /// Redis `used_memory` growth per profile, bytes (Redis only).
    pub used_memory_bytes_per_profile: Option<f64>,
    /// Disk bytes per profile (featurestore: sled directory; Redis: RDB file), bytes.
    pub disk_bytes_per_profile: f64,
    /// Seconds the load took.
    pub load_seconds: f64,
}

/// A reference measurement of Redis with `redis-benchmark` (its C client, one key): how fast Redis is
/// without the `redis` crate in the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisBenchmarkRecord {
    /// What it imitates (`W1 1 client`, `W4 100 pipelined`, `W1 50 clients`).
    pub what: String,
    /// Parallel clients (`-c`).
    pub clients: usize,
    /// Pipeline depth (`-P`).
    pub pipeline: usize,
    /// Requests per second (commands, not pipelines).
    pub requests_per_sec: f64,
    /// p50 of one request (one pipeline when pipelining), microseconds.
    pub p50_us: f64,
    /// p99, microseconds.
    pub p99_us: f64,
}

/// Time to load the keyspace into a target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRecord {
    /// The system.
    pub target: TargetKind,
    /// Its persistence.
    pub durability: String,
    /// Profiles loaded.
    pub profiles: usize,
    /// Seconds.
    pub seconds: f64,
}

/// A whole comparison run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When it started (UTC, ISO 8601).
    pub date: String,
    /// The exact command that reproduces it.
    pub command: String,
    /// Whether this was a smoke run (tiny parameters, not figures to quote).
    pub smoke: bool,
    /// The parameters, as given.
    pub params: serde_json::Value,
    /// The machine.
    pub machine: Machine,
    /// Encoded featurestore frame sizes, which the echo imitates.
    pub frame_sizes: FrameSizes,
    /// Closed- and fixed-rate open-loop runs.
    pub runs: Vec<RunRecord>,
    /// Sweeps.
    pub sweeps: Vec<SweepRecord>,
    /// Keyspace loads.
    pub loads: Vec<LoadRecord>,
    /// W6.
    pub restarts: Vec<RestartRecord>,
    /// W7.
    pub memory: Vec<MemoryRecord>,
    /// Redis measured with `redis-benchmark`, for reference.
    pub redis_benchmark: Vec<RedisBenchmarkRecord>,
    /// What was skipped and why.
    pub skipped: Vec<String>,
    /// The phases that failed (each also explained in `skipped`); `loadgen compare` exits non-zero when
    /// this is not empty. Absent in summaries written before it existed.
    #[serde(default)]
    pub failed_phases: Vec<String>,
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no time-zone database needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The static "how to run" section.
fn how_to_run(w: &mut String) {
    let _ = writeln!(
        w,
        "## How to run\n\n\
         | what | command |\n\
         |---|---|\n\
         | everything, writes this file (≈ 15 min; run it on a quiet machine) | `benches/compare.sh` |\n\
         | shorter full run (the one above) | `benches/compare.sh --duration 5 --step 2` |\n\
         | smoke: every target and workload for a few seconds, results in a temp dir | `benches/compare.sh --smoke` (or `cargo run --release -p benches --bin loadgen -- --smoke`) |\n\
         | criterion micro-benchmarks of the core | `cargo bench -p benches` |\n\
         | re-render this file from `benches/results/summary.json` | `cargo run --release -p benches --bin loadgen -- report` |\n\
         | one workload against a running server | `target/release/loadgen run --target featurestore --addr 127.0.0.1:7401 --certs data/dev/certs --workload w1 --mode sweep` |\n\
         | `perf` profile of a loaded node | `benches/profile.sh w1 closed` (writes `benches/results/profile-w1-closed.txt`) |\n\n\
         `compare.sh` builds the release binaries, installs Debian's `redis-server` when it is missing and it runs \
         as root (otherwise it names the package and stops), starts every server on 127.0.0.1 (servers on core \
         0, the load generator on core 1), stops them all at the end or on Ctrl-C, writes one JSON file per run \
         under `benches/results/runs/` and `benches/results/summary.json`, and renders this file. \
         `cargo test --workspace` (what CI runs) includes a smoke run of the whole comparison against a real node; \
         it fails if a phase fails. In CI (`CI` set) it also requires Redis, which `.ci/run` installs; elsewhere \
         Redis is skipped, with a note, when `redis-server` is not installed.\n"
    );
}

impl Report {
    /// Finds a run.
    pub fn run(
        &self,
        target: TargetKind,
        workload: Workload,
        dist: KeyDist,
        mode: &str,
        workers: usize,
        durability_prefix: &str,
    ) -> Option<&RunRecord> {
        self.runs.iter().find(|r| {
            r.target == target
                && r.workload == workload
                && r.dist == dist
                && r.mode == mode
                && r.workers == workers
                && (durability_prefix.is_empty()
                    || r.durability.starts_with(durability_prefix)
                    || r.target == TargetKind::Echo)
        })
    }

    fn sweep(&self, target: TargetKind) -> Option<&SweepRecord> {
        self.sweeps.iter().find(|s| s.target == target)
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Report(e.to_string()))?;
        std::fs::write(path, text).map_err(Error::io("writing", path))
    }

    /// Renders the markdown document; `analysis` is included verbatim.
    pub fn to_markdown(&self, analysis: Option<&str>) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(
            w,
            "# Benchmarks: featurestore vs Redis vs the QUIC echo floor\n"
        );
        let _ = writeln!(
            w,
            "<!-- Generated by `loadgen compare` from benches/results/summary.json; the analysis section \
             comes from benches/analysis.md. Do not edit by hand: re-run the command below. -->\n"
        );
        if self.smoke {
            let _ = writeln!(
                w,
                "> **Smoke run**: tiny parameters to check that everything works. These figures are not \
                 measurements to quote.\n"
            );
        }
        self.machine_section(w);
        how_to_run(w);
        self.targets_section(w);
        self.closed_section(w);
        self.w2_section(w);
        self.sweep_section(w);
        self.open_section(w);
        self.restart_section(w);
        self.redis_benchmark_section(w);
        if !self.skipped.is_empty() {
            let _ = writeln!(w, "## Skipped\n");
            for s in &self.skipped {
                let _ = writeln!(w, "- {s}");
            }
            let _ = writeln!(w);
        }
        if let Some(a) = analysis {
            let _ = writeln!(w, "{}", a.trim_end());
            let _ = writeln!(w);
        }
        md
    }

    fn machine_section(&self, w: &mut String) {
        let m = &self.machine;
        let _ = writeln!(w, "## How this was measured\n");
        let _ = writeln!(w, "- Date: {}", self.date);
        let _ = writeln!(
            w,
            "- Reproduce (from the repository root): `{}`",
            self.command
        );
        let _ = writeln!(
            w,
            "- Machine: {} × {} ({} online), {:.1} GiB RAM, Linux {}",
            m.cpus, m.cpu, m.nproc, m.memory_gib, m.kernel
        );
        let _ = writeln!(
            w,
            "- Pinning: {}",
            if m.pinned {
                "servers on core 0, load generator on core 1 (`taskset`)"
            } else {
                "none (fewer than 2 cores, `taskset` missing, or --no-pin)"
            }
        );
        if let Some(r) = &m.redis_version {
            let _ = writeln!(w, "- Redis: {r}");
        }
        if let Some(r) = &m.rustc {
            let _ = writeln!(w, "- Rust: {r}, release profile");
        }
        if let Some(c) = &m.commit {
            let _ = writeln!(w, "- featurestore commit: `{c}`");
        }
        let _ = writeln!(
            w,
            "- Load average (1/5/15 min) at start: {}; at end: {} (anything above ~0 means other work \
             shared the 2 cores and the figures are pessimistic)",
            m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(
            w,
            "- Parameters: `{}`",
            serde_json::to_string(&self.params).unwrap_or_default()
        );
        let f = &self.frame_sizes;
        let _ = writeln!(
            w,
            "- Frames (bytes, header included; the echo moves exactly these): read {} → {}, write {} → {}, \
             batch of 100 {} → {}",
            f.read_request, f.read_answer, f.write_request, f.write_answer, f.batch_request, f.batch_answer
        );
        let _ = writeln!(
            w,
            "- Latency is measured per request with HdrHistogram; open loop measures from the *intended* send \
             time (no coordinated omission). Server CPU/op is `utime+stime` of the server process from \
             `/proc/<pid>/stat` over the run divided by the operations (10 ms tick resolution).\n"
        );
    }

    fn targets_section(&self, w: &mut String) {
        let _ = writeln!(w, "## Targets (issue 4)\n");
        let _ = writeln!(w, "| target | figure | verdict |");
        let _ = writeln!(w, "|---|---|---|");
        let u = KeyDist::Uniform;
        let fs = TargetKind::Featurestore;
        let rd = TargetKind::Redis;
        let ec = TargetKind::Echo;
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let p50 = |t, wl, d: &str| {
            self.run(t, wl, u, "closed", 1, d)
                .map(|r| r.stats.latency.p50_us)
        };
        let p99 = |t, wl, d: &str| {
            self.run(t, wl, u, "closed", 1, d)
                .map(|r| r.stats.latency.p99_us)
        };
        let ratio_row = |w: &mut String,
                         name: &str,
                         ours: Option<f64>,
                         theirs: Option<f64>,
                         limit: f64,
                         what: &str| {
            let (fig, ok) = match (ours, theirs) {
                (Some(a), Some(b)) if b > 0.0 => (
                    format!(
                        "{a:.1} vs {b:.1} {what} = **{:.2}×** (limit {limit}×)",
                        a / b
                    ),
                    Some(a / b <= limit),
                ),
                _ => ("—".to_owned(), None),
            };
            let _ = writeln!(w, "| {name} | {fig} | {} |", verdict(ok));
        };
        ratio_row(
            w,
            "W1 1 client: p50 ≤ 1.15× echo floor",
            p50(fs, Workload::W1, ""),
            p50(ec, Workload::W1, ""),
            1.15,
            "µs",
        );
        ratio_row(
            w,
            "W1 1 client: p50 ≤ 1.3× Redis HGETALL",
            p50(fs, Workload::W1, ""),
            p50(rd, Workload::W1, ""),
            1.3,
            "µs",
        );
        ratio_row(
            w,
            "W1 1 client: p99 ≤ 1.5× Redis",
            p99(fs, Workload::W1, ""),
            p99(rd, Workload::W1, ""),
            1.5,
            "µs",
        );
        // Sweep: ours / theirs must be >= 1.
        let best = |t| self.sweep(t).map(|s| s.result.best_rate);
        let (fig, ok) = match (best(fs), best(rd)) {
            (Some(a), Some(b)) if b > 0.0 => (
                format!(
                    "{a:.0} vs {b:.0} ops/s = **{:.2}×** (≥ 1.0×, stretch 2×)",
                    a / b
                ),
                Some(a / b >= 1.0),
            ),
            _ => ("—".to_owned(), None),
        };
        let _ = writeln!(
            w,
            "| W1 open loop: max rate with p99 < 1 ms ≥ 1.0× Redis (50 connections) | {fig} | {} |",
            verdict(ok)
        );
        ratio_row(
            w,
            "W4: p50 ≤ 1.0× Redis 100 pipelined HGETALL",
            p50(fs, Workload::W4, ""),
            p50(rd, Workload::W4, ""),
            1.0,
            "µs",
        );
        ratio_row(
            w,
            "W2 `periodic`: p50 ≤ 1.3× Redis `everysec`",
            p50(fs, Workload::W2, "periodic"),
            p50(rd, Workload::W2, "appendfsync everysec"),
            1.3,
            "µs",
        );
        let thr = |t, d: &str| {
            self.run(t, Workload::W2, u, "closed", 32, d)
                .map(|r| r.stats.achieved_per_sec)
        };
        let (fig, ok) = match (thr(fs, "sync"), thr(rd, "appendfsync always")) {
            (Some(a), Some(b)) if b > 0.0 => (
                format!("{a:.0} vs {b:.0} writes/s = **{:.2}×** (≥ 1.0×)", a / b),
                Some(a / b >= 1.0),
            ),
            _ => ("—".to_owned(), None),
        };
        let _ = writeln!(
            w,
            "| W2 `sync`, 32 writers: throughput ≥ 1.0× Redis `always` | {fig} | {} |",
            verdict(ok)
        );
        let restart = |t| self.restarts.iter().find(|r| r.target == t);
        let (fig, ok) = match (restart(fs), restart(rd)) {
            (Some(a), Some(b)) if b.first_read_seconds > 0.0 => (
                format!(
                    "{} profiles: {:.2} s vs {:.2} s = **{:.2}×** (limit 2×)",
                    a.profiles,
                    a.first_read_seconds,
                    b.first_read_seconds,
                    a.first_read_seconds / b.first_read_seconds
                ),
                Some(a.first_read_seconds / b.first_read_seconds <= 2.0),
            ),
            _ => ("—".to_owned(), None),
        };
        let _ = writeln!(
            w,
            "| W6: restart (spawn → first read) ≤ 2× Redis RDB load | {fig} | {} |",
            verdict(ok)
        );
        let mem = |t| self.memory.iter().find(|m| m.target == t);
        let (fig, ok) = match (mem(fs), mem(rd)) {
            (Some(a), Some(b)) if b.rss_bytes_per_profile_restarted > 0.0 => {
                let r = a.rss_bytes_per_profile_restarted / b.rss_bytes_per_profile_restarted;
                (
                    format!(
                        "RSS after restart {:.0} vs {:.0} B/profile = **{r:.2}×** (limit 1.5×)",
                        a.rss_bytes_per_profile_restarted, b.rss_bytes_per_profile_restarted
                    ),
                    Some(r <= 1.5),
                )
            }
            _ => ("—".to_owned(), None),
        };
        let _ = writeln!(
            w,
            "| W7: memory per profile ≤ 1.5× Redis | {fig} | {} |",
            verdict(ok)
        );
        let _ = writeln!(w);
    }

    fn run_table(
        &self,
        w: &mut String,
        runs: &[&RunRecord],
        base: Option<&RunRecord>,
        floor: Option<&RunRecord>,
    ) {
        let _ = writeln!(
            w,
            "| target | persistence | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | ops/s | errors | server CPU µs/op | server RSS MiB | p50 vs Redis | p50 vs echo |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in runs {
            let s = &r.stats;
            let l = &s.latency;
            let ratio = |other: Option<&RunRecord>| match other {
                Some(o) if o.stats.latency.p50_us > 0.0 && o.target != r.target => {
                    format!("{:.2}×", l.p50_us / o.stats.latency.p50_us)
                }
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                r.target,
                r.durability,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                l.max_us,
                s.achieved_per_sec,
                s.errors,
                s.server_cpu_us_per_op.map_or("—".into(), |c| format!("{c:.1}")),
                s.server_rss_mib.map_or("—".into(), |c| format!("{c:.0}")),
                ratio(base),
                ratio(floor),
            );
        }
        let _ = writeln!(w);
    }

    fn closed_section(&self, w: &mut String) {
        let _ = writeln!(w, "## Closed loop, one client (latency floor)\n");
        for dist in [KeyDist::Uniform, KeyDist::Zipf] {
            for wl in [Workload::W1, Workload::W3, Workload::W4] {
                let runs: Vec<&RunRecord> = self
                    .runs
                    .iter()
                    .filter(|r| {
                        r.workload == wl && r.dist == dist && r.mode == "closed" && r.workers == 1
                    })
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let _ = writeln!(w, "### {wl:?} ({}), {dist} keys\n", wl.describe());
                let base = runs.iter().copied().find(|r| r.target == TargetKind::Redis);
                let floor = runs.iter().copied().find(|r| r.target == TargetKind::Echo);
                self.run_table(w, &runs, base, floor);
            }
        }
    }

    fn w2_section(&self, w: &mut String) {
        let runs: Vec<&RunRecord> = self
            .runs
            .iter()
            .filter(|r| r.workload == Workload::W2 && r.mode == "closed")
            .collect();
        if runs.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "## W2 single-feature writes, durability matched\n\n`periodic:1000` (fsync every second) is \
             compared with Redis `appendfsync everysec`; `sync` (group commit, ack after fsync) with \
             `appendfsync always`.\n"
        );
        for workers in [1, 32] {
            for dist in [KeyDist::Uniform, KeyDist::Zipf] {
                let sel: Vec<&RunRecord> = runs
                    .iter()
                    .copied()
                    .filter(|r| r.workers == workers && r.dist == dist)
                    .collect();
                if sel.is_empty() {
                    continue;
                }
                let _ = writeln!(w, "### {workers} writer(s), {dist} keys\n");
                self.run_table(w, &sel, None, None);
                let pairs = [
                    ("periodic", "appendfsync everysec"),
                    ("sync", "appendfsync always"),
                ];
                for (ours, theirs) in pairs {
                    let a = sel.iter().find(|r| {
                        r.target == TargetKind::Featurestore && r.durability.starts_with(ours)
                    });
                    let b = sel
                        .iter()
                        .find(|r| r.target == TargetKind::Redis && r.durability == theirs);
                    if let (Some(a), Some(b)) = (a, b) {
                        let _ = writeln!(
                            w,
                            "- `{ours}` vs `{theirs}`: p50 {:.2}×, p99 {:.2}×, throughput {:.2}×",
                            a.stats.latency.p50_us / b.stats.latency.p50_us.max(1e-9),
                            a.stats.latency.p99_us / b.stats.latency.p99_us.max(1e-9),
                            a.stats.achieved_per_sec / b.stats.achieved_per_sec.max(1e-9)
                        );
                    }
                }
                let _ = writeln!(w);
            }
        }
    }

    fn sweep_section(&self, w: &mut String) {
        if self.sweeps.is_empty() {
            return;
        }
        let _ = writeln!(w, "## W1 open loop: highest rate with p99 < 1 ms\n");
        let _ = writeln!(
            w,
            "| target | connections | best rate ops/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/op | send lag p99 µs | steps (offered rate → p99 µs) |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
        for s in &self.sweeps {
            let steps: Vec<String> = s
                .result
                .steps
                .iter()
                .map(|st| {
                    format!(
                        "{:.0}→{:.0}{}",
                        st.stats.offered_per_sec.unwrap_or(0.0),
                        st.stats.latency.p99_us,
                        if st.passed { "" } else { "✗" }
                    )
                })
                .collect();
            let b = s.result.best.as_ref();
            let _ = writeln!(
                w,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                s.target,
                s.connections,
                s.result.best_rate,
                b.map_or("—".into(), |b| format!("{:.1}", b.latency.p50_us)),
                b.map_or("—".into(), |b| format!("{:.1}", b.latency.p99_us)),
                b.map_or("—".into(), |b| format!("{:.1}", b.latency.p999_us)),
                b.and_then(|b| b.server_cpu_us_per_op)
                    .map_or("—".into(), |c| format!("{c:.1}")),
                b.and_then(|b| b.send_lag_p99_us)
                    .map_or("—".into(), |l| format!("{l:.0}")),
                steps.join(", ")
            );
        }
        let _ = writeln!(w, "\n✗ = failed step (p99 ≥ 1 ms, errors, < 95% of the offered rate answered, or in-flight cap hit).\n");
    }

    fn open_section(&self, w: &mut String) {
        let runs: Vec<&RunRecord> = self.runs.iter().filter(|r| r.mode == "open").collect();
        if runs.is_empty() {
            return;
        }
        let rate = runs
            .first()
            .and_then(|r| r.stats.offered_per_sec)
            .unwrap_or(0.0);
        let _ = writeln!(w, "## W3 open loop at a fixed {rate:.0} ops/s\n");
        let base = runs.iter().copied().find(|r| r.target == TargetKind::Redis);
        self.run_table(w, &runs, base, None);
    }

    fn redis_benchmark_section(&self, w: &mut String) {
        if self.redis_benchmark.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "## Reference: Redis with `redis-benchmark` (C client, one key)\n\nThe Redis rows above go \
             through the `redis` crate (what a Rust service would use). `redis-benchmark` shows what Redis \
             itself can do on this machine with a minimal C client; featurestore's ratios against these \
             figures are the stricter comparison.\n"
        );
        let _ = writeln!(w, "| what | clients | pipeline | requests/s | p50 µs | p99 µs | featurestore p50 / this p50 |");
        let _ = writeln!(w, "|---|---|---|---|---|---|---|");
        let u = KeyDist::Uniform;
        for r in &self.redis_benchmark {
            let ours = match (r.clients, r.pipeline) {
                (1, 1) => self.run(TargetKind::Featurestore, Workload::W1, u, "closed", 1, ""),
                (1, _) => self.run(TargetKind::Featurestore, Workload::W4, u, "closed", 1, ""),
                _ => None,
            };
            let ratio = ours.filter(|_| r.p50_us > 0.0).map_or("—".to_owned(), |o| {
                format!("{:.2}×", o.stats.latency.p50_us / r.p50_us)
            });
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {ratio} |",
                r.what, r.clients, r.pipeline, r.requests_per_sec, r.p50_us, r.p99_us
            );
        }
        let _ = writeln!(w);
    }

    fn restart_section(&self, w: &mut String) {
        if self.restarts.is_empty() && self.memory.is_empty() && self.loads.is_empty() {
            return;
        }
        let _ = writeln!(w, "## W6 restart and W7 memory/disk per profile\n");
        if !self.restarts.is_empty() {
            let _ = writeln!(w, "| target | profiles | how | graceful stop s | spawn → ready s | spawn → first read s |");
            let _ = writeln!(w, "|---|---|---|---|---|---|");
            for r in &self.restarts {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    r.target,
                    r.profiles,
                    r.how,
                    r.stop_seconds,
                    r.ready_seconds,
                    r.first_read_seconds
                );
            }
            let _ = writeln!(w);
        }
        if !self.memory.is_empty() {
            let _ = writeln!(w, "| target | profiles | load s | RSS B/profile after load | RSS B/profile after restart | Redis used_memory B/profile | disk B/profile |");
            let _ = writeln!(w, "|---|---|---|---|---|---|---|");
            for m in &self.memory {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.1} | {:.0} | {:.0} | {} | {:.0} |",
                    m.target,
                    m.profiles,
                    m.load_seconds,
                    m.rss_bytes_per_profile_loaded,
                    m.rss_bytes_per_profile_restarted,
                    m.used_memory_bytes_per_profile
                        .map_or("—".into(), |u| format!("{u:.0}")),
                    m.disk_bytes_per_profile
                );
            }
            let _ = writeln!(w);
        }
        if !self.loads.is_empty() {
            let _ = writeln!(
                w,
                "Keyspace loads: {}\n",
                self.loads
                    .iter()
                    .map(|l| format!(
                        "{} ({}) {} profiles in {:.1} s",
                        l.target, l.durability, l.profiles, l.seconds
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
}
