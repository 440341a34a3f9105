//! `loadgen`: drives featurestore, Redis and the QUIC echo floor with the same keys and payloads.
//!
//! - `loadgen compare [...]`: the whole comparison (starts every server itself); `--doc` writes
//!   `docs/benchmarks.md`. `benches/compare.sh` builds and calls this.
//! - `loadgen --smoke`: the comparison with tiny parameters (a few seconds per target), for CI.
//! - `loadgen run [...]`: one workload against an already running server (for profiling with `perf`).
//! - `loadgen report`: re-renders `docs/benchmarks.md` from `benches/results/summary.json` (e.g. after
//!   editing `benches/analysis.md`), without measuring.
//! - `loadgen echo-server`: the echo server (started by `compare` on the server core).
//! - `loadgen fault [...]`: kill -9 one node of a three-node cluster under a running client (and restart
//!   it); a per-second timeline (`--doc` puts it into `docs/benchmarks.md`). See `benches::fault`.
//!
//! - `loadgen ingest [...]`: W5a, event ingest throughput and event → readable latency on the dev cluster
//!   beside Redis (`--doc` puts the section into `docs/benchmarks.md`). See `benches::ingest`.
//! - `loadgen segments [...]`: W5, event → segment change latency at a series of rates, and the timer lag,
//!   on the dev cluster (`--doc` puts the section into `docs/benchmarks.md`). See `benches::segments`.
//!
//! SIGINT/SIGTERM stop a run cleanly: every server it started is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use benches::compare::{self, CompareEnv, CompareParams};
use benches::driver::{self, RunSpec, SweepSpec, Workload};
use benches::keyspace::{KeyDist, Keyspace};
use benches::servers::{self, Pinning};
use benches::target::{featurestore_config, FrameSizes, Target, TargetKind};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "featurestore vs Redis vs QUIC echo load generator"
)]
struct Cli {
    /// Run the comparison with tiny parameters (about 5 s per target) against servers it starts itself.
    #[arg(long)]
    smoke: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every workload against every target and write the results (and optionally the doc).
    Compare(CompareArgs),
    /// Run one workload against one running server.
    Run(RunArgs),
    /// Render a markdown report from a summary.json written by `compare` (no measuring).
    Report {
        /// The summary written by `compare`.
        #[arg(long, default_value = "benches/results/summary.json")]
        summary: PathBuf,
        /// Where to write the markdown.
        #[arg(long, default_value = "docs/benchmarks.md")]
        doc: PathBuf,
        /// Hand-written analysis included in the doc.
        #[arg(long, default_value = "benches/analysis.md")]
        analysis: PathBuf,
    },
    /// Kill -9 a node of a three-node cluster under a running client; per-second timeline.
    Fault(benches::fault::FaultArgs),
    /// W5a: event ingest throughput and event → readable latency, featurestore beside Redis.
    Ingest(IngestArgs),
    /// W5: event → segment change latency at a series of rates, and the timer lag.
    Segments(SegmentsArgs),
    /// Serve the echo floor (prints `echo ready on <addr>`).
    EchoServer {
        /// UDP address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Directory written by `store-node certs --nodes n1 --clients app`.
        #[arg(long)]
        certs: PathBuf,
    },
}

#[derive(Args, Default)]
struct CompareArgs {
    /// Tiny parameters (seconds per target); explicit flags below still override them.
    #[arg(long)]
    smoke: bool,
    /// Profiles in the keyspace for W1-W4 (default 100000).
    #[arg(long)]
    profiles: Option<usize>,
    /// Profiles for W6/W7 restart and memory (default 1000000; 0 skips).
    #[arg(long)]
    restart_profiles: Option<usize>,
    /// Measured seconds per closed-loop run (default 10).
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds per run (default 1).
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured seconds per sweep step (default 3).
    #[arg(long)]
    step: Option<f64>,
    /// Key distributions, comma-separated (default uniform,zipf).
    #[arg(long, value_delimiter = ',')]
    dists: Option<Vec<KeyDist>>,
    /// Where per-run JSON and summary.json go (default benches/results, or a temp dir for --smoke).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Write the markdown report here (e.g. docs/benchmarks.md).
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Hand-written analysis included in the doc.
    #[arg(long, default_value = "benches/analysis.md")]
    analysis: PathBuf,
    /// The store-node binary (default: next to this binary).
    #[arg(long)]
    store_node: Option<PathBuf>,
    /// The redis-server binary (default: from PATH).
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// Do not run Redis.
    #[arg(long)]
    no_redis: bool,
    /// Fail instead of skipping Redis when redis-server is missing.
    #[arg(long)]
    require_redis: bool,
    /// Do not pin servers and client to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// Scratch directory (certificates, data), removed at the end (default: a temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The command line recorded in the report (compare.sh passes its own).
    #[arg(long)]
    command_line: Option<String>,
}

#[derive(Args)]
struct IngestArgs {
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Concurrent closed loops (and paced senders in the latency run).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Probe events of each latency run.
    #[arg(long, default_value_t = 2_000)]
    probes: usize,
    /// Seed of the event stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// featurestore durability policies, one cluster each, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sync,periodic:1000")]
    durability: Vec<String>,
    /// Users of the memory measure (fresh users, after the throughput and latency runs).
    #[arg(long, default_value_t = 5_000)]
    memory_users: usize,
    /// Events per user of the memory measure.
    #[arg(long, default_value_t = 20)]
    memory_events: usize,
    /// The featurestore client's `coalesce_requests_per_node`: ingest requests in flight per node while
    /// concurrent calls are coalesced; 0 sends every call as its own request.
    #[arg(long, default_value_t = store_client::config::DEFAULT_COALESCE_REQUESTS_PER_NODE)]
    coalesce_requests_per_node: u32,
    /// Where ingest.json goes.
    #[arg(long, default_value = "benches/results")]
    results: PathBuf,
    /// Put the W5a section into this markdown file (e.g. docs/benchmarks.md), replacing its previous one.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// The store-node binary (default: next to this binary).
    #[arg(long)]
    store_node: Option<PathBuf>,
    /// Do not run Redis.
    #[arg(long)]
    no_redis: bool,
    /// Do not pin servers and client to separate cores.
    #[arg(long)]
    no_pin: bool,
}

#[derive(Args)]
struct SegmentsArgs {
    /// The event rates, one phase each, comma-separated (events/s).
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000")]
    rates: Vec<f64>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Concurrent open-loop senders.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// The nodes' durability policy.
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Where segments.json goes.
    #[arg(long, default_value = "benches/results")]
    results: PathBuf,
    /// Put the W5 section into this markdown file (e.g. docs/benchmarks.md), replacing its previous one.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// The store-node binary (default: next to this binary).
    #[arg(long)]
    store_node: Option<PathBuf>,
    /// Do not pin the nodes and the client to separate cores.
    #[arg(long)]
    no_pin: bool,
}

#[derive(Args)]
struct RunArgs {
    /// featurestore, redis, echo or echo-stream (the echo over one long-lived stream).
    #[arg(long)]
    target: TargetKind,
    /// The server's address (UDP for featurestore/echo, TCP for Redis), on loopback.
    #[arg(long)]
    addr: SocketAddr,
    /// Certificates (featurestore and echo).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// w1, w2, w3 or w4.
    #[arg(long, default_value = "w1")]
    workload: Workload,
    /// closed, open or sweep.
    #[arg(long, default_value = "closed")]
    mode: String,
    /// Closed-loop workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Redis connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Open-loop rate (ops/s) or the sweep's start rate.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Profiles in the keyspace.
    #[arg(long, default_value_t = 100_000)]
    profiles: usize,
    /// uniform or zipf.
    #[arg(long, default_value = "uniform")]
    dist: KeyDist,
    /// Load the keyspace first.
    #[arg(long)]
    load: bool,
    /// The server's pid (for CPU per op and RSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// featurestore: the client's `coalesce_requests_per_node` (0: every call its own request).
    #[arg(long, default_value_t = store_client::config::DEFAULT_COALESCE_REQUESTS_PER_NODE)]
    coalesce_requests_per_node: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::EchoServer { listen, certs }) => {
            if !listen.ip().is_loopback() {
                bail!("the echo server only listens on loopback, not {listen}");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the runtime")?;
            rt.block_on(benches::echo::serve(&certs, listen, |addr| {
                println!("echo ready on {addr}");
            }))?;
            Ok(())
        }
        Some(Command::Report {
            summary,
            doc,
            analysis,
        }) => {
            let text = std::fs::read_to_string(&summary)
                .with_context(|| format!("reading {}", summary.display()))?;
            let report: benches::report::Report = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", summary.display()))?;
            compare::write_doc(&report, &doc, &analysis)?;
            eprintln!("wrote {}", doc.display());
            Ok(())
        }
        Some(Command::Run(args)) => client_runtime()?.block_on(with_signals(run_one(args))),
        Some(Command::Fault(args)) => {
            client_runtime()?.block_on(with_signals(benches::fault::cli(args)))
        }
        Some(Command::Ingest(args)) => client_runtime()?.block_on(with_signals(run_ingest(args))),
        Some(Command::Segments(args)) => {
            client_runtime()?.block_on(with_signals(run_segments(args)))
        }
        Some(Command::Compare(args)) => client_runtime()?.block_on(with_signals(run_compare(args))),
        None if cli.smoke => client_runtime()?.block_on(with_signals(run_compare(CompareArgs {
            smoke: true,
            analysis: PathBuf::from("benches/analysis.md"),
            ..CompareArgs::default()
        }))),
        None => bail!(
            "nothing to do: give a subcommand (compare, run, echo-server) or --smoke; see --help"
        ),
    }
}

/// The load generator runs on one thread (it is pinned to one core).
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")
}

/// Runs `work` until it ends or SIGINT/SIGTERM arrives (then it is dropped, which kills its servers).
async fn with_signals(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT): servers stopped"),
        _ = term.recv() => bail!("terminated (SIGTERM): servers stopped"),
    }
}

async fn run_compare(args: CompareArgs) -> anyhow::Result<()> {
    let mut params = if args.smoke {
        CompareParams::smoke()
    } else {
        CompareParams::full()
    };
    if let Some(v) = args.profiles {
        params.profiles = v;
    }
    if let Some(v) = args.restart_profiles {
        params.restart_profiles = v;
    }
    if let Some(v) = args.duration {
        params.duration_s = v;
    }
    if let Some(v) = args.warmup {
        params.warmup_s = v;
    }
    if let Some(v) = args.step {
        params.step_s = v;
    }
    if let Some(v) = args.dists.clone() {
        if v.is_empty() {
            bail!("--dists needs at least one distribution");
        }
        params.dists = v;
    }
    for (name, v) in [
        ("--duration", params.duration_s),
        ("--warmup", params.warmup_s),
        ("--step", params.step_s),
    ] {
        if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
            bail!("{name} must be between 0 and 3600 seconds, not {v}");
        }
    }
    let store_node = match args.store_node {
        Some(p) => p,
        None => servers::sibling_program("store-node").context(
            "store-node not found next to loadgen: build it (cargo build --release -p store-node) or pass --store-node",
        )?,
    };
    let redis_server = if args.no_redis {
        None
    } else {
        args.redis_server
            .or_else(|| servers::find_program("redis-server"))
    };
    if redis_server.is_none() && !args.no_redis {
        if args.require_redis {
            bail!("redis-server not found on PATH: install Debian's package (apt-get install -y redis-server) or pass --redis-server");
        }
        eprintln!("[loadgen] redis-server not found on PATH: skipping the Redis target (apt-get install -y redis-server)");
    }
    params.redis = redis_server.is_some();
    let pinning = Pinning::detect(!args.no_pin);
    pinning.pin_self()?;
    let tag = if params.smoke { "smoke" } else { "full" };
    let work_dir = args.work_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("featurestore-loadgen-{tag}-{}", std::process::id()))
    });
    let results_dir = args.results.unwrap_or_else(|| {
        if params.smoke {
            std::env::temp_dir().join(format!(
                "featurestore-loadgen-results-{}",
                std::process::id()
            ))
        } else {
            PathBuf::from("benches/results")
        }
    });
    let command = args
        .command_line
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let env = CompareEnv {
        store_node,
        redis_server,
        loadgen: std::env::current_exe().context("locating this binary")?,
        work_dir,
        results_dir: results_dir.clone(),
        pinning,
        command,
    };
    let report = compare::run(&params, &env).await?;
    eprintln!(
        "[loadgen] {} runs, {} sweeps; results in {}",
        report.runs.len(),
        report.sweeps.len(),
        results_dir.join("summary.json").display()
    );
    if let Some(doc) = args.doc {
        compare::write_doc(&report, &doc, &args.analysis)?;
        eprintln!("[loadgen] wrote {}", doc.display());
    }
    if !report.failed_phases.is_empty() {
        bail!(
            "{} phase(s) failed: {} (the results of the others are in {})",
            report.failed_phases.len(),
            report.failed_phases.join(", "),
            results_dir.join("summary.json").display()
        );
    }
    Ok(())
}

async fn run_one(args: RunArgs) -> anyhow::Result<()> {
    if !args.addr.ip().is_loopback() {
        bail!("loadgen only sends traffic to loopback, not {}", args.addr);
    }
    if args.profiles == 0 {
        bail!("--profiles must be at least 1");
    }
    let keyspace = Keyspace::new(args.profiles);
    let certs = || {
        args.certs
            .clone()
            .context("--certs is required for featurestore and echo")
    };
    let target = match args.target {
        TargetKind::Featurestore => {
            let config = store_client::ClientConfig {
                coalesce_requests_per_node: args.coalesce_requests_per_node,
                ..featurestore_config(&certs()?, args.addr)
            };
            Target::Featurestore(store_client::Client::connect(config).await?)
        }
        TargetKind::Redis => Target::redis(args.addr, args.connections).await?,
        TargetKind::Echo => {
            Target::echo(&certs()?, args.addr, &FrameSizes::compute(&keyspace, 100)?).await?
        }
        TargetKind::EchoStream => {
            Target::echo_stream(&certs()?, args.addr, &FrameSizes::compute(&keyspace, 100)?).await?
        }
    };
    if args.load {
        let took = driver::load(&target, args.profiles, 64, 16, Duration::from_secs(1800)).await?;
        eprintln!(
            "loaded {} profiles in {:.1} s",
            args.profiles,
            took.as_secs_f64()
        );
    }
    let spec = RunSpec {
        workload: args.workload,
        dist: args.dist,
        profiles: args.profiles,
        batch: 100,
        seed: 42,
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        duration: Duration::from_secs_f64(args.duration.max(0.0)),
        max_ops: 100_000_000,
    };
    let lanes = args.connections.max(args.workers);
    let json = match args.mode.as_str() {
        "closed" => serde_json::to_value(
            driver::closed_loop(&target, &spec, args.workers, args.server_pid).await,
        )?,
        "open" => serde_json::to_value(
            driver::open_loop(&target, &spec, args.rate, lanes, 20_000, args.server_pid).await,
        )?,
        "sweep" => {
            let sweep = SweepSpec {
                start_rate: args.rate,
                factor: 1.3,
                max_steps: 25,
                max_rate: 1_000_000.0,
                p99_limit_us: 1_000.0,
                lanes,
                max_in_flight: 20_000,
            };
            serde_json::to_value(
                driver::sweep(&target, &spec, &sweep, args.server_pid, |s| {
                    eprintln!(
                        "offered {:.0}/s achieved {:.0}/s p99 {:.1} µs {}",
                        s.stats.offered_per_sec.unwrap_or(0.0),
                        s.stats.achieved_per_sec,
                        s.stats.latency.p99_us,
                        if s.passed { "pass" } else { "FAIL" }
                    );
                })
                .await,
            )?
        }
        other => bail!("unknown mode {other:?} (expected closed, open or sweep)"),
    };
    target.close().await;
    let text = serde_json::to_string_pretty(&json)?;
    match args.out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Puts `section` between `begin` and `end` in `doc` (appended if they are missing), or prints it.
fn put_section(
    doc: Option<&std::path::Path>,
    section: &str,
    begin: &str,
    end: &str,
) -> anyhow::Result<()> {
    match doc {
        Some(doc) => {
            let text = std::fs::read_to_string(doc)
                .with_context(|| format!("reading {}", doc.display()))?;
            let text = benches::fault::splice_between(&text, section, begin, end);
            std::fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))?;
        }
        None => println!("{section}"),
    }
    Ok(())
}

/// `loadgen segments`: W5 on the dev cluster; writes segments.json and, with `--doc`, the section.
async fn run_segments(args: SegmentsArgs) -> anyhow::Result<()> {
    use benches::ingest::IngestEnv;
    use benches::segments::{self, SegmentParams};
    let store_node = match args.store_node.clone() {
        Some(p) => p,
        None => servers::sibling_program("store-node").context(
            "store-node not found next to loadgen: build it (cargo build --release -p store-node) or pass --store-node",
        )?,
    };
    let pinning = Pinning::detect(!args.no_pin);
    pinning.pin_self()?;
    let work_dir = std::env::temp_dir().join(format!(
        "featurestore-loadgen-segments-{}",
        std::process::id()
    ));
    let env = IngestEnv {
        store_node,
        redis_server: None,
        work_dir: work_dir.clone(),
        pinning,
    };
    let params = SegmentParams {
        rates: args.rates.clone(),
        duration_s: args.duration,
        workers: args.workers.max(1),
        durability: args.durability.clone(),
    };
    let report = segments::run(&params, &env).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let report = report?;
    segments::write_json(&report, &args.results)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let section = segments::to_markdown(&report, &command);
    put_section(
        args.doc.as_deref(),
        &section,
        segments::SECTION_BEGIN,
        segments::SECTION_END,
    )
}

/// `loadgen ingest`: W5a on the dev cluster and Redis; writes ingest.json and, with `--doc`, the section.
async fn run_ingest(args: IngestArgs) -> anyhow::Result<()> {
    use benches::ingest::{self, IngestEnv, IngestParams};
    let store_node = match args.store_node.clone() {
        Some(p) => p,
        None => servers::sibling_program("store-node").context(
            "store-node not found next to loadgen: build it (cargo build --release -p store-node) or pass --store-node",
        )?,
    };
    let redis_server = if args.no_redis {
        None
    } else {
        Some(
            servers::find_program("redis-server")
                .context("redis-server not found (or pass --no-redis)")?,
        )
    };
    let pinning = Pinning::detect(!args.no_pin);
    pinning.pin_self()?;
    let work_dir = std::env::temp_dir().join(format!(
        "featurestore-loadgen-ingest-{}",
        std::process::id()
    ));
    let env = IngestEnv {
        store_node,
        redis_server,
        work_dir: work_dir.clone(),
        pinning,
    };
    let params = IngestParams {
        users: args.users.max(1),
        workers: args.workers.max(1),
        duration_s: args.duration,
        probes: args.probes,
        seed: args.seed,
        durabilities: args.durability.clone(),
        memory_users: args.memory_users,
        memory_events: args.memory_events,
        coalesce_requests_per_node: args.coalesce_requests_per_node,
    };
    let report = ingest::run(&params, &env).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let report = report?;
    ingest::write_json(&report, &args.results)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let section = ingest::to_markdown(&report, &command);
    put_section(
        args.doc.as_deref(),
        &section,
        ingest::SECTION_BEGIN,
        ingest::SECTION_END,
    )
}
