//! `store-node dev`: a local cluster of real node processes on loopback, with generated certificates and
//! embedded storage.
//!
//! # Layout
//!
//! Under the dev directory (default `./data/dev`), for `--nodes K` and `--port P`:
//!
//! | path | contents | lifetime |
//! |---|---|---|
//! | `certs/` | cluster CA, `node-n<i>.pem/.key` for n1..nK, `client-app.pem/.key` (application), `client-admin.pem/.key` (admin role) | generated on first run; the CA and existing pairs are reused, missing pairs are added |
//! | `n<i>.toml` | config of node `n<i>`: listen `127.0.0.1:<P+i-1>` (UDP, QUIC), data dir `n<i>`, sled, sync durability, all K nodes as `[[cluster.seeds]]` with `bootstrap = true`; `[ingest] features = "features.toml"`; `[http]` plain HTTP on `127.0.0.1:<P+i-1>` (TCP) accepting the dev write key (source `dev`) | rewritten on every run |
//! | `n<i>/` | node `n<i>`'s sled data (and stored membership) | kept across runs |
//! | `client.toml` | what `storectl` and the client crate need: every node, the `app` application certificate (data requests) | rewritten on every run |
//! | `admin.toml` | as `client.toml`, with the `admin` certificate: also the admin requests (`storectl leave`, `local`, `digests`) | rewritten on every run |
//! | `dev.lock` | held (flock) by the running dev process, with its pid and its nodes' pids; empty after a clean stop | see [One dev process per directory](#one-dev-process-per-directory) |
//! | `features.toml` | the feature definitions every node loads: a copy of `store-node/features.example.toml` ([`EXAMPLE_FEATURES`]) | written when missing; an edited file is kept (restart dev to load it) |
//! | `segments.toml` | the segment definitions every node loads without `--demo`: a copy of `store-node/segments.example.toml` ([`EXAMPLE_SEGMENTS`]) | written when missing; an edited file is kept |
//! | `segments.demo.toml` | with `--demo`, the segment definitions the nodes load instead: a copy of `store-node/segments.demo.toml` ([`DEMO_SEGMENTS`]) | written when missing; an edited file is kept |
//! | `http.env` | `HTTP_URL=http://127.0.0.1:<P>` (n1's HTTP listener) and `WRITE_KEY=<32 hex digits>`, for `. <dir>/http.env` in a shell; mode 0600 | rewritten on every run; the key is generated once and then read back from it |
//!
//! All paths inside the generated files are relative to the file, so the directory can be moved as a whole.
//! Because the configs are rewritten on every run, edit them only to run a node by hand
//! (`store-node serve --config <dir>/n<i>.toml`), not to change the dev cluster.
//!
//! # Behaviour
//!
//! [`run`] checks that the K ports are free (UDP for QUIC and TCP for HTTP), prepares the files ([`prepare`]) and starts K child
//! processes (this executable with `serve --config <dir>/n<i>.toml`). Each child's stdout and stderr are
//! relayed line by line with an `[n<i>] ` prefix (stdout to stdout, stderr to stderr), except the nodes'
//! machine-readable event lines. The cluster is *ready* once every node has reported its ready event
//! (the JSON line after `store-node n<i> ready on <addr>`, see [`crate::launch`]; at most
//! [`READY_TIMEOUT`]); then the nodes and the next commands are printed, ending with the line
//! `dev cluster ready: n1,...,nK`.
//! If a node exits or does not become ready during startup, the others are stopped and [`run`] fails.
//!
//! While running, a node that exits on its own (crash, `kill -9` by an operator testing failures) is
//! reported loudly with its exit status and the command that restarts it by hand; the other nodes keep
//! running. [`run`] returns once the `shutdown` token is cancelled (Ctrl-C or SIGTERM, see `main.rs`) or
//! when no node is left running.
//!
//! Stopping: every running node gets SIGTERM (through the `kill` command) and up to [`STOP_TIMEOUT`] to
//! drain and exit; stragglers then get SIGKILL. Cancelling the `kill_now` token (a second Ctrl-C) skips
//! the wait and sends SIGKILL at once. [`run`] returns `Ok` only if every node exited with status 0 —
//! a node that died earlier, or had to be killed, makes it fail (so `store-node dev` exits non-zero).
//!
//! Children run in their own process group, so a Ctrl-C in the terminal reaches only the dev process,
//! which then stops the nodes in order (a node that got both the terminal's SIGINT and our SIGTERM would
//! treat the second signal as "exit without draining"). Because the nodes are not in the terminal's group,
//! they are started with `--die-with-parent` instead: if the dev process itself dies (`kill -9`, a crash),
//! the kernel sends each node SIGTERM and it shuts down cleanly ([`crate::supervision`]). `FEATURESTORE_*`
//! override variables of the dev process (listen address, node id, data dir, ...) are *not* passed to the
//! children: they would give every node the same value.
//!
//! # One dev process per directory
//!
//! The dev process holds `<dir>/dev.lock` ([`DevLock`]) while it runs: a second `store-node dev` on the same
//! directory fails at once, naming the first one's pid ([`DevError::AlreadyRunning`]). A dev process that was
//! killed leaves its record in the lock file; the next run reports it and stops any of its nodes that are
//! still running (they should not be, see above) before it probes the ports.
//!
//! # Changing `--nodes` or `--port` on an existing directory
//!
//! The nodes store their cluster membership in their data directories, so changing the node count or the
//! ports of an existing dev directory does not give a fresh cluster of the new shape: old nodes still
//! know the old members (a node that is no longer started is seen as down and hints pile up for it), and
//! a node started for the first time next to existing ones bootstraps from the seeds instead of joining.
//! [`prepare`] detects this (from the previous `n1.toml` and the existing `n<i>/` data directories) and
//! prints a warning; to change the shape, use a fresh `--dir` (or delete the old one).
//!
//! # The demo (`--demo`)
//!
//! With [`DemoOptions`], the nodes load `segments.demo.toml` (whose features must be defined in the
//! directory's `features.toml`, else [`DevError::Options`] before anything starts), the banner adds the
//! demo's parameters and the dashboard URL (`http://<n1's HTTP address>/ui`), and once the cluster is ready
//! [`demo::run`] posts synthetic shoppers' events to every node's HTTP listener and prints each segment
//! transition and a status line (see [`demo`] and docs/segments.md, "The demo"). HTTP errors are counted,
//! never fatal. On shutdown the demo is stopped first (up to [`DEMO_STOP_TIMEOUT`]), then the nodes as
//! above; the exit status still depends only on the nodes.
//!
//! Unix only in practice: nodes are signalled with the `kill` command.

pub mod demo;
mod layout;
mod lock;
mod procs;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;

pub use demo::DemoOptions;
pub use layout::{
    prepare, prepare_for, write_admin_config, write_client_config, DevLayout, DevNode,
    DEMO_SEGMENTS, DEV_ADMIN, DEV_CLIENT, DEV_SOURCE, EXAMPLE_FEATURES, EXAMPLE_SEGMENTS,
    MAX_NODES,
};
pub use lock::{DevLock, LOCK_FILE};
pub use procs::STOP_TIMEOUT;

use layout::plan;
use procs::Procs;

/// How long every node together gets to report ready after being started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `store-node dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where certificates, configs, data and `client.toml` live.
    pub dir: PathBuf,
    /// UDP port of the first node; node `n<i>` listens on `port + i - 1`.
    pub port: u16,
    /// Number of nodes (1..=[`MAX_NODES`]).
    pub nodes: u16,
}

/// What can make `store-node dev` fail.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Preparing files (certificates, configs) failed.
    #[error(transparent)]
    Node(#[from] Error),
    /// The options are out of range.
    #[error("invalid dev options: {0}")]
    Options(String),
    /// Another `store-node dev` holds the directory's lock.
    #[error(
        "another `store-node dev` ({}) is running on {}: stop it first (Ctrl-C in its terminal{}), \
         or use another --dir",
        pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}")),
        dir.display(),
        pid.map_or(String::new(), |p| format!(" or `kill {p}`"))
    )]
    AlreadyRunning {
        /// The dev directory.
        dir: PathBuf,
        /// Its pid, as its lock file records it.
        pid: Option<u32>,
    },
    /// A node's port is taken.
    #[error("{addr} is already in use (is another dev cluster or node still running?)")]
    PortInUse {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A node process could not be started.
    #[error("could not start {node} ({})", exe.display())]
    Spawn {
        /// The node id.
        node: String,
        /// The executable.
        exe: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A node exited during startup.
    #[error("{node} exited before it was ready ({status}); its log is above")]
    ExitedEarly {
        /// The node id.
        node: String,
        /// How it exited.
        status: String,
    },
    /// Some nodes did not report ready in time.
    #[error("not ready within {} s: {nodes}", READY_TIMEOUT.as_secs())]
    NotReady {
        /// The nodes that were not ready, comma-separated.
        nodes: String,
    },
    /// Not every node exited with status 0.
    #[error("not every node exited cleanly: {0}")]
    Unclean(String),
}

/// Fails if one of the nodes' UDP (QUIC) or TCP (HTTP) ports cannot be bound now.
fn check_ports(nodes: &[DevNode]) -> Result<(), DevError> {
    for node in nodes {
        UdpSocket::bind(node.addr).map_err(|source| DevError::PortInUse {
            addr: node.addr,
            source,
        })?;
        TcpListener::bind(node.http).map_err(|source| DevError::PortInUse {
            addr: node.http,
            source,
        })?;
    }
    Ok(())
}

/// How long the demo gets to stop (generator, posters, watcher) before the nodes are stopped anyway.
pub const DEMO_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The banner printed once every node is ready.
fn banner(layout: &DevLayout, procs: &Procs, exe: &Path, demo: Option<&DemoOptions>) -> String {
    let dir = layout.dir.display();
    let client = layout.client_config.display();
    let mut text = format!(
        "featurestore dev cluster: {} node(s) in {dir}\n",
        layout.nodes.len()
    );
    for (node, p) in layout.nodes.iter().zip(&procs.procs) {
        let _ = writeln!(
            text,
            "  {:<4} {:<21} pid {:<7} http {:<21} config {}  data {}",
            node.id,
            node.addr,
            p.pid,
            format!("http://{}", node.http),
            node.config.display(),
            node.data_dir.display()
        );
    }
    let admin = layout.admin_config.display();
    let storectl =
        format!("cargo run --release -p store-client --bin storectl -- --config {client}");
    let storectl_admin =
        format!("cargo run --release -p store-client --bin storectl -- --config {admin}");
    let last = layout.nodes.last().map_or("n1", |n| n.id.as_str());
    let http_url = format!("http://{}", layout.nodes[0].http);
    let features = layout.features.display();
    let env = layout.http_env.display();
    let key = &layout.write_key;
    let _ = write!(
        text,
        "client config: {client}  (admin requests: {admin})\n\
         feature definitions: {features}\n\
         HTTP (Segment-compatible ingest): HTTP_URL={http_url} WRITE_KEY={key}  (both in {env})\n\
         next, in another terminal:\n  \
         {storectl} put u1 cart_value=42.5\n  \
         {storectl} get u1\n  \
         {storectl} status\n  \
         {storectl_admin} local u1 --node {last}\n  \
         . {env} && curl -s -u \"$WRITE_KEY:\" -H 'Content-Type: application/json' \
         -d '{{\"batch\":[{{\"type\":\"page\",\"userId\":\"u1\"}}]}}' \"$HTTP_URL/v1/batch\"\n\
         to run a node by hand (e.g. after killing it): {} serve --config {}\n\
         Ctrl-C stops every node cleanly (a second Ctrl-C kills them at once).\n\
         {}dev cluster ready: {}",
        exe.display(),
        layout.nodes[0].config.display(),
        demo.map_or(String::new(), |d| demo::banner(layout, d)),
        layout
            .nodes
            .iter()
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    text
}

/// Prepares the files, starts the nodes and supervises them until `shutdown` is cancelled (or every node
/// has exited), then stops them: SIGTERM, up to [`STOP_TIMEOUT`], SIGKILL. Cancelling `kill_now` (after or
/// instead of `shutdown`) sends SIGKILL without waiting. Returns `Ok` only if every node exited with
/// status 0.
///
/// With `demo`, the nodes load the demo segments ([`prepare_for`]) and, once they are ready, the demo
/// ([`demo::run`]) runs until `shutdown`; it is stopped (up to [`DEMO_STOP_TIMEOUT`]) before the nodes.
pub async fn run(
    options: DevOptions,
    demo: Option<DemoOptions>,
    shutdown: CancellationToken,
    kill_now: CancellationToken,
) -> Result<(), DevError> {
    if let Some(d) = &demo {
        d.validate()?;
    }
    let nodes = plan(&options)?;
    // Before the ports: a leftover of a killed dev process holds them, and the lock knows it.
    let mut lock = DevLock::acquire(&options.dir)?;
    check_ports(&nodes)?;
    let layout = prepare_for(&options, demo.is_some())?;
    let exe = std::env::current_exe().map_err(|source| DevError::Spawn {
        node: "the nodes".into(),
        exe: "store-node".into(),
        source,
    })?;
    let mut procs = Procs::new();
    for node in &layout.nodes {
        let spawned = procs
            .spawn(&exe, node)
            .and_then(|pid| lock.add_node(&node.id, pid, &node.config));
        if let Err(e) = spawned {
            procs.stop(&kill_now).await;
            return Err(e);
        }
    }

    // Startup: every node must print its ready line in time.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let failure = loop {
        if procs.procs.iter().all(|p| p.ready) {
            break None;
        }
        tokio::select! {
            event = procs.next() => {
                let Some(event) = event else { break None };
                if let Some(i) = procs.record(event) {
                    let p = &procs.procs[i];
                    break Some(DevError::ExitedEarly {
                        node: p.id.clone(),
                        status: p.exit.clone().unwrap_or_default(),
                    });
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let late: Vec<&str> =
                    procs.procs.iter().filter(|p| !p.ready).map(|p| p.id.as_str()).collect();
                break Some(DevError::NotReady { nodes: late.join(", ") });
            }
            () = shutdown.cancelled() => {
                procs.stop(&kill_now).await;
                return procs.outcome();
            }
        }
    };
    if let Some(error) = failure {
        tracing::error!("{error}; stopping the other nodes");
        procs.stop(&kill_now).await;
        return Err(error);
    }
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        banner(&layout, &procs, &exe, demo.as_ref())
    );
    let demo_stop = shutdown.child_token();
    let mut demo_task = demo.map(|d| tokio::spawn(demo::run(layout.clone(), d, demo_stop.clone())));

    // Running: report nodes that exit on their own, keep the others.
    while procs.any_running() {
        tokio::select! {
            event = procs.next() => {
                let Some(event) = event else { break };
                if let Some(i) = procs.record(event) {
                    let p = &procs.procs[i];
                    tracing::error!(
                        "!!! node {} (pid {}) exited on its own: {}. The other nodes keep running. \
                         Restart it by hand with `{} serve --config {}` (Ctrl-C here will not stop \
                         that process)",
                        p.id,
                        p.pid,
                        p.exit.as_deref().unwrap_or("?"),
                        exe.display(),
                        layout.nodes[i].config.display(),
                    );
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    if !procs.any_running() {
        tracing::error!("no dev node is running any more; exiting");
    }
    // The demo first: no event is posted to a node that is draining.
    demo_stop.cancel();
    if let Some(mut task) = demo_task.take() {
        if tokio::time::timeout(DEMO_STOP_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!(
                "the demo did not stop within {} s; abandoning it",
                DEMO_STOP_TIMEOUT.as_secs()
            );
            task.abort();
        }
    }
    procs.stop(&kill_now).await;
    let outcome = procs.outcome();
    if outcome.is_ok() {
        tracing::info!("every node stopped cleanly");
    }
    outcome
}
