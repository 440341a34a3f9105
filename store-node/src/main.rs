//! `store-node`: run a featurestore node, generate cluster certificates, or start a local dev node.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use store_node::config::{NodeConfig, ServeArgs};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "store-node", version, about = "featurestore node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a config file (FEATURESTORE_* environment variables and flags override it).
    Serve(ServeArgs),
    /// Write a cluster CA, node certificates and client certificates, application or admin (an existing
    /// CA is reused).
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Application client names, comma-separated (data requests only).
        #[arg(long, value_delimiter = ',', default_value = "app")]
        clients: Vec<String>,
        /// Admin client names, comma-separated: their certificates carry the admin role and may also make
        /// admin requests (`leave`, `local`, `digests`).
        #[arg(long, value_delimiter = ',')]
        admins: Vec<String>,
    },
    /// Start a local cluster of node processes on loopback (generated certificates, sled storage).
    ///
    /// Writes `<dir>/n<i>.toml`, `<dir>/client.toml` (application certificate) and `<dir>/admin.toml`
    /// (admin certificate) on every run, relays each node's output with an
    /// `[n<i>]` prefix and stops every node cleanly on Ctrl-C or SIGTERM (a second signal kills them).
    /// Use a fresh `--dir` when changing `--nodes` or `--port`: the nodes store their membership.
    Dev {
        /// Directory for certificates, configs, data and client.toml.
        #[arg(long, default_value = "data/dev")]
        dir: PathBuf,
        /// UDP port of the first node; node n<i> listens on port + i - 1.
        #[arg(long, default_value_t = 7401)]
        port: u16,
        /// Number of nodes (n1..nK).
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Also run the demo: synthetic shoppers posted over HTTP to the nodes, the demo segments
        /// (`segments.demo.toml`), and each segment transition and a status line printed live.
        #[arg(long)]
        demo: bool,
        /// Number of synthetic users of the demo.
        #[arg(long, default_value_t = 2000, requires = "demo")]
        demo_users: u32,
        /// Events per second the demo posts, at most.
        #[arg(
            long,
            value_name = "EVENTS_PER_S",
            default_value_t = 200,
            requires = "demo"
        )]
        demo_rate: u32,
        /// Seed of the demo's behaviour (the same seed gives the same events).
        #[arg(long, default_value_t = store_node::dev::demo::DEFAULT_SEED, requires = "demo")]
        demo_seed: u64,
    },
}

/// Cancels `token` on SIGINT or SIGTERM; a second signal exits at once.
fn shutdown_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        // Cancel first: nothing (such as a failing log write) may stand between the signal and shutdown.
        token.cancel();
        tracing::info!("signal received: shutting down (send again to exit at once)");
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    store_node::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(ServeArgs {
            config,
            overrides,
            die_with_parent,
        }) => {
            if let Some(parent) = die_with_parent {
                store_node::supervision::die_with_parent(parent)?;
            }
            let config = NodeConfig::load(&config, &overrides)
                .with_context(|| format!("loading {}", config.display()))?;
            let token = CancellationToken::new();
            shutdown_on_signals(token.clone());
            store_node::node::run(config, token).await?;
        }
        Command::Certs {
            out,
            nodes,
            clients,
            admins,
        } => {
            let generated =
                store_node::certs::generate_with_admins(&out, &nodes, &clients, &admins)?;
            for path in generated.written() {
                store_node::logging::print_line(&format!("wrote {}", path.display()));
            }
        }
        Command::Dev {
            dir,
            port,
            nodes,
            demo,
            demo_users,
            demo_rate,
            demo_seed,
        } => {
            // First signal: stop the nodes gracefully. Second: kill them at once (rather than exiting and
            // leaving them running: they are in their own process group).
            let shutdown = CancellationToken::new();
            let kill_now = CancellationToken::new();
            let (first, second) = (shutdown.clone(), kill_now.clone());
            tokio::spawn(async move {
                wait_for_signal().await;
                first.cancel();
                tracing::info!(
                    "signal received: stopping the dev cluster (send again to kill the nodes)"
                );
                wait_for_signal().await;
                second.cancel();
                tracing::warn!("second signal: killing the nodes");
            });
            let options = store_node::dev::DevOptions { dir, port, nodes };
            let demo = demo.then_some(store_node::dev::DemoOptions {
                users: demo_users,
                rate: demo_rate,
                seed: demo_seed,
            });
            store_node::dev::run(options, demo, shutdown, kill_now).await?;
        }
    }
    Ok(())
}
