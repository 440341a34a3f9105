//! `store-node dev`: a local cluster of real node processes on loopback, with generated certificates and
//! embedded storage.
//!
//! # Layout
//!
//! Under the dev directory (default `./data/dev`), for `--nodes K` and `--port P`:
//!
//! | path | contents | lifetime |
//! |---|---|---|
//! | `certs/` | cluster CA, `node-n<i>.pem/.key` for n1..nK, `client-app.pem/.key` | generated on first run; the CA and existing pairs are reused, missing pairs are added |
//! | `n<i>.toml` | config of node `n<i>`: listen `127.0.0.1:<P+i-1>`, data dir `n<i>`, sled, sync durability, all K nodes as `[[cluster.seeds]]` with `bootstrap = true` | rewritten on every run |
//! | `n<i>/` | node `n<i>`'s sled data (and stored membership) | kept across runs |
//! | `client.toml` | what `storectl` and the client crate need: every node, the `app` client certificate | rewritten on every run |
//!
//! All paths inside the generated files are relative to the file, so the directory can be moved as a whole.
//! Because the configs are rewritten on every run, edit them only to run a node by hand
//! (`store-node serve --config <dir>/n<i>.toml`), not to change the dev cluster.
//!
//! # Behaviour
//!
//! [`run`] checks that the K UDP ports are free, prepares the files ([`prepare`]) and starts K child
//! processes (this executable with `serve --config <dir>/n<i>.toml`). Each child's stdout and stderr are
//! relayed line by line with an `[n<i>] ` prefix (stdout to stdout, stderr to stderr). The cluster is
//! *ready* once every node has printed `store-node n<i> ready on <addr>` (at most [`READY_TIMEOUT`]); then
//! the nodes and the next commands are printed, ending with the line `dev cluster ready: n1,...,nK`.
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
//! treat the second signal as "exit without draining"). The flip side: if the dev process itself is
//! killed with SIGKILL, the nodes keep running; their PIDs are printed at startup, and the next
//! `store-node dev` reports their ports as in use. `FEATURESTORE_*` override variables of the dev process
//! (listen address, node id, data dir, ...) are *not* passed to the children: they would give every node
//! the same value.
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
//! Unix only in practice: nodes are signalled with the `kill` command.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::certs;
use crate::config::{NodeConfig, Overrides, Seed, ENV_KEYS};
use crate::error::Error;

/// The dev client's name (its certificate is `certs/client-app.pem`).
pub const DEV_CLIENT: &str = "app";

/// How long every node together gets to print its ready line after being started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long nodes get to exit after SIGTERM before they are killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for killed nodes to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Most nodes `store-node dev` starts.
pub const MAX_NODES: u16 = 64;

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
    /// Some nodes did not print their ready line in time.
    #[error("not ready within {} s: {nodes}", READY_TIMEOUT.as_secs())]
    NotReady {
        /// The nodes that were not ready, comma-separated.
        nodes: String,
    },
    /// Not every node exited with status 0.
    #[error("not every node exited cleanly: {0}")]
    Unclean(String),
}

/// One node of the dev cluster as laid out on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevNode {
    /// Node id, `n<i>`.
    pub id: String,
    /// Listen (and advertised) address.
    pub addr: SocketAddr,
    /// Its config file, `<dir>/n<i>.toml`.
    pub config: PathBuf,
    /// Its data directory, `<dir>/n<i>`.
    pub data_dir: PathBuf,
}

/// The files [`prepare`] wrote and what it noticed.
#[derive(Debug, Clone)]
pub struct DevLayout {
    /// The dev directory.
    pub dir: PathBuf,
    /// The nodes, `n1..nK`.
    pub nodes: Vec<DevNode>,
    /// `<dir>/client.toml`.
    pub client_config: PathBuf,
    /// Warnings about reusing the directory with a different shape (already logged).
    pub warnings: Vec<String>,
}

/// Writes the client configuration for the dev cluster (paths relative to `dir`).
pub fn write_client_config(
    dir: &Path,
    nodes: &[(String, SocketAddr)],
) -> crate::error::Result<PathBuf> {
    let mut text = format!(
        "# Written by `store-node dev` on every run. Paths are relative to this file.\n\
         ca_cert = \"certs/ca.pem\"\n\
         cert = \"certs/client-{DEV_CLIENT}.pem\"\n\
         key = \"certs/client-{DEV_CLIENT}.key\"\n"
    );
    for (name, addr) in nodes {
        let _ = write!(text, "\n[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n");
    }
    let path = dir.join("client.toml");
    write_file(&path, &text)?;
    Ok(path)
}

/// The TOML config of `node`, with every node of `all` as a bootstrap seed (paths relative to the dev dir).
fn node_config_text(node: &DevNode, all: &[DevNode]) -> String {
    let id = &node.id;
    let mut text = format!(
        "# Written by `store-node dev` on every run (edits are overwritten). Paths are relative to this file.\n\
         node_id = \"{id}\"\n\
         listen = \"{addr}\"\n\
         data_dir = \"{id}\"\n\
         storage = \"sled\"\n\
         durability = {{ mode = \"sync\" }}\n\
         \n\
         [tls]\n\
         ca_cert = \"certs/ca.pem\"\n\
         cert = \"certs/node-{id}.pem\"\n\
         key = \"certs/node-{id}.key\"\n\
         \n\
         [cluster]\n\
         bootstrap = true\n",
        addr = node.addr,
    );
    for seed in all {
        let _ = write!(
            text,
            "\n[[cluster.seeds]]\nid = \"{}\"\naddr = \"{}\"\n",
            seed.id, seed.addr
        );
    }
    text
}

fn write_file(path: &Path, text: &str) -> crate::error::Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// The node layout for `options` (no file access).
fn plan(options: &DevOptions) -> Result<Vec<DevNode>, DevError> {
    if options.nodes == 0 || options.nodes > MAX_NODES {
        return Err(DevError::Options(format!(
            "--nodes must be between 1 and {MAX_NODES}, got {}",
            options.nodes
        )));
    }
    let last = u32::from(options.port) + u32::from(options.nodes) - 1;
    if options.port == 0 || last > u32::from(u16::MAX) {
        return Err(DevError::Options(format!(
            "--port must leave room for {} consecutive ports in 1..=65535, got {}",
            options.nodes, options.port
        )));
    }
    Ok((1..=options.nodes)
        .map(|i| {
            let id = format!("n{i}");
            DevNode {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, options.port + (i - 1))),
                config: options.dir.join(format!("{id}.toml")),
                data_dir: options.dir.join(&id),
                id,
            }
        })
        .collect())
}

/// Indices `i` of the non-empty `n<i>/` directories in `dir`, sorted.
fn existing_data(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let i: u32 = name.to_str()?.strip_prefix('n')?.parse().ok()?;
            let non_empty =
                entry.path().is_dir() && std::fs::read_dir(entry.path()).ok()?.next().is_some();
            (i > 0 && non_empty).then_some(i)
        })
        .collect();
    found.sort_unstable();
    found
}

/// Warnings about starting `nodes` in a directory that holds data of a differently shaped cluster.
/// `previous` is the seed list of the previous run's `n1.toml`, if it could be read; `data` the indices of
/// the existing data directories.
fn shape_warnings(
    dir: &Path,
    nodes: &[DevNode],
    previous: Option<&[Seed]>,
    data: &[u32],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if data.is_empty() {
        return warnings;
    }
    let k = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let list = |ids: &[u32]| {
        ids.iter()
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let beyond: Vec<u32> = data.iter().copied().filter(|&i| i > k).collect();
    if !beyond.is_empty() {
        warnings.push(format!(
            "{} holds data of {} which this run does not start (--nodes {k}): the other nodes still \
             count them as members, see them as down and keep hints for them",
            dir.display(),
            list(&beyond)
        ));
    }
    let fresh: Vec<u32> = (1..=k).filter(|i| !data.contains(i)).collect();
    if !fresh.is_empty() && data.iter().any(|&i| i <= k) {
        warnings.push(format!(
            "{} start without data next to nodes that have some: they bootstrap from the seeds instead \
             of joining the stored cluster",
            list(&fresh)
        ));
    }
    if let Some(previous) = previous {
        let now: Vec<(&str, SocketAddr)> = nodes.iter().map(|n| (n.id.as_str(), n.addr)).collect();
        let before: Vec<(&str, SocketAddr)> =
            previous.iter().map(|s| (s.id.as_str(), s.addr)).collect();
        if now != before {
            let show = |v: &[(&str, SocketAddr)]| {
                v.iter()
                    .map(|(id, addr)| format!("{id}@{addr}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            warnings.push(format!(
                "the cluster layout changed since the last run (was: {}; now: {}); the nodes' stored \
                 membership still describes the old one",
                show(&before),
                show(&now)
            ));
        }
    }
    if !warnings.is_empty() {
        warnings.push(format!(
            "to change --nodes or --port, use a fresh --dir (or delete {})",
            dir.display()
        ));
    }
    warnings
}

/// Creates the dev directory, certificates (first run), node configs and `client.toml`, and logs a warning
/// if the directory holds data of a differently shaped cluster. Does not start anything.
pub fn prepare(options: &DevOptions) -> Result<DevLayout, DevError> {
    let nodes = plan(options)?;
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;

    let previous_config = dir.join("n1.toml");
    let previous = previous_config
        .exists()
        .then(|| NodeConfig::load(&previous_config, |_| None, &Overrides::default()).ok())
        .flatten()
        .map(|c| c.cluster.seeds);
    let warnings = shape_warnings(dir, &nodes, previous.as_deref(), &existing_data(dir));
    for w in &warnings {
        tracing::warn!("{w}");
    }

    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let generated = certs::generate(&dir.join("certs"), &ids, &[DEV_CLIENT.to_owned()])?;
    for path in generated.written() {
        tracing::info!(path = %path.display(), "generated");
    }
    for node in &nodes {
        write_file(&node.config, &node_config_text(node, &nodes))?;
        // Read it back exactly as `serve` will, so a config the node would refuse fails here.
        NodeConfig::load(&node.config, |_| None, &Overrides::default())?;
    }
    let pairs: Vec<(String, SocketAddr)> = nodes.iter().map(|n| (n.id.clone(), n.addr)).collect();
    let client_config = write_client_config(dir, &pairs)?;
    store_client::ClientConfig::load(&client_config)
        .map_err(|e| Error::Config(format!("generated client config: {e}")))?;
    Ok(DevLayout {
        dir: dir.clone(),
        nodes,
        client_config,
        warnings,
    })
}

/// What the helper threads of a child report.
enum Event {
    /// Node `index` printed its ready line.
    Ready(usize),
    /// Node `index` exited (after its output was relayed completely).
    Exited(usize, std::io::Result<ExitStatus>),
}

/// A running (or exited) node process.
struct Proc {
    id: String,
    pid: u32,
    ready: bool,
    /// Set once its exit was reported.
    exit: Option<String>,
    clean: bool,
}

/// The child processes and the channel their helper threads report on.
struct Procs {
    procs: Vec<Proc>,
    events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
}

/// Relays `reader`'s lines to stdout or stderr with `prefix`; reports the ready line of `node` once.
fn relay(
    reader: impl std::io::Read,
    prefix: String,
    to_stdout: bool,
    ready: Option<(usize, String, mpsc::UnboundedSender<Event>)>,
) {
    let mut ready = ready;
    let mut buf = Vec::new();
    let mut reader = BufReader::new(reader);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        // Write errors (a closed terminal or pipe) are ignored: the node must keep running.
        if to_stdout {
            let _ = writeln!(std::io::stdout().lock(), "{prefix}{line}");
        } else {
            let _ = writeln!(std::io::stderr().lock(), "{prefix}{line}");
        }
        let is_ready = ready.as_ref().is_some_and(|(_, id, _)| {
            line.strip_prefix("store-node ")
                .and_then(|rest| rest.split_once(" ready on "))
                .is_some_and(|(who, _)| who == id)
        });
        if is_ready {
            if let Some((index, _, tx)) = ready.take() {
                let _ = tx.send(Event::Ready(index));
            }
        }
    }
}

impl Procs {
    fn new() -> Procs {
        let (tx, events) = mpsc::unbounded_channel();
        Procs {
            procs: Vec::new(),
            events,
            tx,
        }
    }

    /// Starts `exe serve --config <node.config>` with relayed output.
    fn spawn(&mut self, exe: &Path, node: &DevNode) -> Result<(), DevError> {
        let mut command = std::process::Command::new(exe);
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for key in ENV_KEYS.iter().chain(&["FEATURESTORE_CONFIG"]) {
            command.env_remove(key);
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let spawn_error = |source| DevError::Spawn {
            node: node.id.clone(),
            exe: exe.to_owned(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let index = self.procs.len();
        let prefix = format!("[{}] ", node.id);
        let mut relays = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let (prefix, ready) = (prefix.clone(), (index, node.id.clone(), self.tx.clone()));
            relays.push(std::thread::spawn(move || {
                relay(stdout, prefix, true, Some(ready));
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let prefix = prefix.clone();
            relays.push(std::thread::spawn(move || {
                relay(stderr, prefix, false, None);
            }));
        }
        let tx = self.tx.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            let status = child.wait();
            // The pipes close when the node exits: relay its last lines before reporting the exit.
            for relay in relays {
                let _ = relay.join();
            }
            let _ = tx.send(Event::Exited(index, status));
        });
        self.procs.push(Proc {
            id: node.id.clone(),
            pid,
            ready: false,
            exit: None,
            clean: false,
        });
        Ok(())
    }

    fn running(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.exit.is_none())
    }

    fn any_running(&self) -> bool {
        self.running().next().is_some()
    }

    /// Records an event; returns the index of the node that exited, if it was an exit.
    fn record(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Ready(i) => {
                self.procs[i].ready = true;
                None
            }
            Event::Exited(i, status) => {
                let p = &mut self.procs[i];
                match status {
                    Ok(status) => {
                        p.clean = status.success();
                        p.exit = Some(status.to_string());
                    }
                    Err(e) => p.exit = Some(format!("wait failed: {e}")),
                }
                Some(i)
            }
        }
    }

    /// The next event (never `None` while `self.tx` is alive).
    async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Sends `signal` (`TERM` or `KILL`) to every running node.
    async fn signal_running(&self, signal: &'static str) {
        for p in self.running() {
            let (id, pid) = (p.id.clone(), p.pid.to_string());
            let sent = tokio::task::spawn_blocking(move || {
                std::process::Command::new("kill")
                    .args([format!("-{signal}"), pid])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
            })
            .await;
            match sent {
                Ok(Ok(status)) if status.success() => {
                    tracing::debug!(node = %id, signal, "signal sent");
                }
                // Usually: it exited in the meantime (its exit event follows).
                Ok(Ok(status)) => tracing::debug!(node = %id, signal, %status, "kill failed"),
                Ok(Err(e)) => tracing::error!(node = %id, signal, "could not run `kill`: {e}"),
                Err(e) => tracing::error!(node = %id, signal, "signal task failed: {e}"),
            }
        }
    }

    /// Waits until no node is running, `timeout` passed or `kill_now` is cancelled.
    async fn wait_all(&mut self, timeout: Duration, kill_now: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.any_running() {
            tokio::select! {
                event = self.next() => match event {
                    Some(event) => {
                        if let Some(i) = self.record(event) {
                            let p = &self.procs[i];
                            tracing::info!(node = %p.id, "exited ({})", p.exit.as_deref().unwrap_or("?"));
                        }
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
                () = kill_now.cancelled() => return,
            }
        }
    }

    /// SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL for the stragglers.
    async fn stop(&mut self, kill_now: &CancellationToken) {
        if !self.any_running() {
            return;
        }
        if !kill_now.is_cancelled() {
            tracing::info!(
                "stopping {} node(s) (SIGTERM, up to {} s)",
                self.running().count(),
                STOP_TIMEOUT.as_secs()
            );
            self.signal_running("TERM").await;
            self.wait_all(STOP_TIMEOUT, kill_now).await;
        }
        if self.any_running() {
            let names: Vec<&str> = self.running().map(|p| p.id.as_str()).collect();
            tracing::warn!("killing {} (SIGKILL)", names.join(", "));
            self.signal_running("KILL").await;
            self.wait_all(KILL_TIMEOUT, &CancellationToken::new()).await;
        }
    }

    /// `Ok` if every node exited with status 0.
    fn outcome(&self) -> Result<(), DevError> {
        let bad: Vec<String> = self
            .procs
            .iter()
            .filter(|p| !p.clean)
            .map(|p| {
                format!(
                    "{} ({})",
                    p.id,
                    p.exit.as_deref().unwrap_or("still running")
                )
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(DevError::Unclean(bad.join(", ")))
        }
    }
}

/// Fails if one of the nodes' UDP ports cannot be bound now.
fn check_ports(nodes: &[DevNode]) -> Result<(), DevError> {
    for node in nodes {
        UdpSocket::bind(node.addr).map_err(|source| DevError::PortInUse {
            addr: node.addr,
            source,
        })?;
    }
    Ok(())
}

/// The banner printed once every node is ready.
fn banner(layout: &DevLayout, procs: &Procs, exe: &Path) -> String {
    let dir = layout.dir.display();
    let client = layout.client_config.display();
    let mut text = format!(
        "featurestore dev cluster: {} node(s) in {dir}\n",
        layout.nodes.len()
    );
    for (node, p) in layout.nodes.iter().zip(&procs.procs) {
        let _ = writeln!(
            text,
            "  {:<4} {:<21} pid {:<7} config {}  data {}",
            node.id,
            node.addr,
            p.pid,
            node.config.display(),
            node.data_dir.display()
        );
    }
    let storectl =
        format!("cargo run --release -p store-client --bin storectl -- --config {client}");
    let last = layout.nodes.last().map_or("n1", |n| n.id.as_str());
    let _ = write!(
        text,
        "client config: {client}\n\
         next, in another terminal:\n  \
         {storectl} put u1 cart_value=42.5\n  \
         {storectl} get u1\n  \
         {storectl} status\n  \
         {storectl} local u1 --node {last}\n\
         to run a node by hand (e.g. after killing it): {} serve --config {}\n\
         Ctrl-C stops every node cleanly (a second Ctrl-C kills them at once).\n\
         dev cluster ready: {}",
        exe.display(),
        layout.nodes[0].config.display(),
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
pub async fn run(
    options: DevOptions,
    shutdown: CancellationToken,
    kill_now: CancellationToken,
) -> Result<(), DevError> {
    check_ports(&plan(&options)?)?;
    let layout = prepare(&options)?;
    let exe = std::env::current_exe().map_err(|source| DevError::Spawn {
        node: "the nodes".into(),
        exe: "store-node".into(),
        source,
    })?;
    let mut procs = Procs::new();
    for node in &layout.nodes {
        if let Err(e) = procs.spawn(&exe, node) {
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
        banner(&layout, &procs, &exe)
    );

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
    procs.stop(&kill_now).await;
    let outcome = procs.outcome();
    if outcome.is_ok() {
        tracing::info!("every node stopped cleanly");
    }
    outcome
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options(dir: &Path, nodes: u16) -> DevOptions {
        DevOptions {
            dir: dir.to_owned(),
            port: 7401,
            nodes,
        }
    }

    #[test]
    fn prepare_writes_configs_every_node_can_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let layout = prepare(&options(&dir, 3)).unwrap();
        assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
        assert_eq!(layout.nodes.len(), 3);
        for (i, node) in layout.nodes.iter().enumerate() {
            let c = NodeConfig::load(&node.config, |_| None, &Overrides::default()).unwrap();
            assert_eq!(c.node_id, format!("n{}", i + 1));
            assert_eq!(c.listen.port(), 7401 + u16::try_from(i).unwrap());
            assert_eq!(c.data_dir, dir.join(&c.node_id));
            assert_eq!(
                c.tls.cert,
                dir.join(format!("certs/node-{}.pem", c.node_id))
            );
            assert!(c.tls.cert.exists());
            assert!(c.cluster.bootstrap);
            let seeds: Vec<&str> = c.cluster.seeds.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(seeds, ["n1", "n2", "n3"]);
            assert_eq!(c.storage, crate::storage::StorageKind::Sled);
            assert_eq!(c.durability, crate::storage::DurabilityPolicy::Sync);
        }
        let client = store_client::ClientConfig::load(&layout.client_config).unwrap();
        assert_eq!(client.nodes.len(), 3);
        assert_eq!(client.cert, dir.join("certs/client-app.pem"));
        // The texts are relative: nothing refers to the temporary directory.
        let text = std::fs::read_to_string(dir.join("n2.toml")).unwrap();
        assert!(!text.contains(&*tmp.path().to_string_lossy()), "{text}");

        // A second run reuses the CA and rewrites configs for the new port.
        let ca = std::fs::read(dir.join("certs/ca.pem")).unwrap();
        let again = prepare(&DevOptions {
            port: 9000,
            ..options(&dir, 3)
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join("certs/ca.pem")).unwrap(), ca);
        assert_eq!(again.nodes[2].addr.port(), 9002);
        // No data yet, so no warning.
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    }

    #[test]
    fn changing_the_shape_of_a_used_directory_warns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        prepare(&options(dir, 3)).unwrap();
        for i in 1..=3 {
            std::fs::create_dir_all(dir.join(format!("n{i}"))).unwrap();
            std::fs::write(dir.join(format!("n{i}/db")), b"x").unwrap();
        }
        assert!(prepare(&options(dir, 3)).unwrap().warnings.is_empty());

        let fewer = prepare(&options(dir, 2)).unwrap().warnings;
        assert!(
            fewer
                .iter()
                .any(|w| w.contains("n3 which this run does not start")),
            "{fewer:?}"
        );
        // n1.toml now describes 2 nodes: going back to 3 is a change again, and n3's data is back in use.
        let more = prepare(&options(dir, 4)).unwrap().warnings;
        assert!(
            more.iter().any(|w| w.starts_with("n4 start without data")),
            "{more:?}"
        );
        assert!(
            more.iter().any(|w| w.contains("layout changed")),
            "{more:?}"
        );
        assert!(more.last().unwrap().contains("fresh --dir"), "{more:?}");
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let dir = Path::new("unused");
        for (port, nodes) in [(7401, 0), (7401, MAX_NODES + 1), (0, 3), (65535, 2)] {
            let o = DevOptions {
                dir: dir.to_owned(),
                port,
                nodes,
            };
            assert!(
                matches!(plan(&o), Err(DevError::Options(_))),
                "{port} {nodes}"
            );
        }
        let o = DevOptions {
            dir: dir.to_owned(),
            port: 65534,
            nodes: 2,
        };
        assert_eq!(plan(&o).unwrap()[1].addr.port(), 65535);
    }
}
