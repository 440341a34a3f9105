//! `jepsen-like-tests`: runs seeded schedules of faults against a real featurestore cluster in network
//! namespaces and checks the history (see `docs/harness.md`). Exits 0 only if every checker of every
//! schedule passed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jepsen_like_tests::schedule::Nemesis;
use jepsen_like_tests::{cluster, netns, run, worker};

#[derive(Parser)]
#[command(
    name = "jepsen-like-tests",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: the client side, run by the harness inside the client namespace.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Remove namespaces left by an earlier harness that died, and exit.
    Cleanup,
    /// Print the fault plan of a seed (JSON), without running anything.
    Plan {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Workload duration.
        #[arg(long, default_value = "60s", value_parser = jepsen_like_tests::parse_duration)]
        time: Duration,
        /// Nemeses, comma-separated.
        #[arg(long, default_value = "partition,kill,pause,clock")]
        nemesis: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes that bootstrap the cluster.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Workload duration per schedule (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = jepsen_like_tests::parse_duration)]
    time: Duration,
    /// Nemeses, comma-separated: partition, kill, pause, clock, membership, disk (or all, none).
    #[arg(long, default_value = "partition,kill,pause,clock")]
    nemesis: String,
    /// Seed of the first schedule (schedule k uses seed + k); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of schedules.
    #[arg(long, default_value_t = 1)]
    schedules: u32,
    /// Results directory (one subdirectory per schedule).
    #[arg(long, default_value = "target/jepsen")]
    out: PathBuf,
    /// The store-node binary (default: next to this executable).
    #[arg(long)]
    store_node: Option<PathBuf>,
    /// Long-lived client tasks.
    #[arg(long, default_value_t = 4)]
    tasks: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Worker(args)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(worker::run(args)),
        Some(Cmd::Plan {
            seed,
            time,
            nemesis,
        }) => {
            let nemeses = Nemesis::parse_list(&nemesis).map_err(anyhow::Error::msg)?;
            let ms = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
            let plan = jepsen_like_tests::schedule::plan(seed, ms, &nemeses);
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(())
        }
        Some(Cmd::Cleanup) => {
            netns::preflight()?;
            for ns in netns::cleanup_stale()? {
                println!("removed stale namespace {ns}");
            }
            Ok(())
        }
        None => {
            let ok = run_schedules(cli.run)?;
            std::process::exit(if ok { 0 } else { 1 });
        }
    }
}

fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            let Ok(mut int) = signal(SignalKind::interrupt()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("signal: stopping (tearing the cluster and namespaces down)");
            run::request_stop();
        });
    });
}

fn run_schedules(args: RunArgs) -> anyhow::Result<bool> {
    let nemeses = Nemesis::parse_list(&args.nemesis).map_err(anyhow::Error::msg)?;
    netns::preflight()?;
    for ns in netns::cleanup_stale()? {
        eprintln!("removed stale namespace {ns} (from a harness that died)");
    }
    let store_node = match args.store_node {
        Some(p) => p,
        None => cluster::find_store_node()?,
    };
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3");
    let (loss, why) = netns::loss_backend();
    match loss {
        netns::Loss::Netem => {}
        netns::Loss::Nft => eprintln!(
            "packet delay unavailable ({}); packet loss through nftables",
            why.join("; ")
        ),
        netns::Loss::Unavailable => eprintln!(
            "packet loss/delay unavailable ({}); partitions use blackhole routes only",
            why.join("; ")
        ),
    }
    watch_signals();
    let seed = args
        .seed
        .unwrap_or_else(|| jepsen_like_tests::now_ms() % 1_000_000);
    let names: Vec<&str> = nemeses.iter().map(|n| n.name()).collect();
    let nemesis_arg = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    };
    let run_dir = args.out.join(format!(
        "seed-{seed}-{}",
        jepsen_like_tests::now_ms() / 1000
    ));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let mut verdicts = Vec::new();
    for k in 0..args.schedules {
        if run::stopping() {
            break;
        }
        let s = seed + u64::from(k);
        let reproduce = format!(
            "cargo run --release -p jepsen-like-tests -- --nodes {} --time {}ms --nemesis {nemesis_arg} --seed {s}",
            args.nodes,
            args.time.as_millis()
        );
        let opts = run::Options {
            nodes: args.nodes,
            time: args.time,
            nemeses: nemeses.clone(),
            seed: s,
            dir: run_dir.join(format!("s{k:03}-seed-{s}")),
            store_node: store_node.clone(),
            tasks: args.tasks,
            index: k,
            reproduce,
            loss,
        };
        let verdict = run::run(&opts)?;
        print!("{}", verdict.summary());
        println!("  results: {}", opts.dir.display());
        verdicts.push(verdict);
    }
    let passed = verdicts.iter().filter(|v| v.valid).count();
    let all_ok = passed == verdicts.len() && !verdicts.is_empty() && !run::stopping();
    std::fs::write(
        run_dir.join("summary.json"),
        serde_json::to_string_pretty(&jepsen_like_tests::report::aggregate(&verdicts))?,
    )?;
    println!(
        "{passed}/{} schedules passed; results in {}",
        verdicts.len(),
        run_dir.display()
    );
    Ok(all_ok)
}
