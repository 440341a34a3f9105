//! Node configuration: a TOML file, then `FEATURESTORE_*` environment overrides, then command-line flags.
//!
//! The overrides are declared once, in [`Overrides`]: each field is a clap argument with both a `--flag`
//! and a `FEATURESTORE_*` variable (a flag beats its variable, both beat the file).
//!
//! Every key is documented in `docs/configuration.md` and shown in `store-node/node.example.toml`. Unknown
//! keys are errors (a typo must not silently fall back to a default). Relative paths in the file are
//! resolved against the file's own directory, so a config can be moved together with its certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use featurestore::{Limits, NodeId};
use serde::{Deserialize, Serialize};
use store_client::tls::TransportLimits;

use crate::error::{Error, Result};
use crate::storage::{DurabilityPolicy, StorageKind};

/// Paths of the node's certificate material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM): clients must present a certificate it signed.
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM); its SAN names the node.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// A cluster member known from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Its node id.
    pub id: NodeId,
    /// Its address (UDP socket address of its QUIC endpoint).
    pub addr: SocketAddr,
}

/// How this node finds and forms the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The address peers and clients should use for this node (default: `listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Nodes to contact. With `bootstrap = true`, the seeds (plus this node) *are* the initial cluster,
    /// all active. Empty: a single-node cluster.
    pub seeds: Vec<Seed>,
    /// On the first start (no membership stored yet): `true` forms a new cluster from the seeds; `false`
    /// joins the running cluster the seeds belong to (this node starts as `joining`).
    pub bootstrap: bool,
    /// Replication settings (replication factor, timeouts, hint budget, anti-entropy interval, ...).
    #[serde(skip_serializing_if = "is_default")]
    pub replication: featurestore::replication::ReplicationConfig,
    /// The shortest interval between two ticks of the replication state machine, in ms. Ticks run when
    /// the state machine says something is due (`Replication::next_deadline`), at most this often; this
    /// also paces join/leave handoff batches.
    pub tick_ms: u64,
    /// Capacity of each peer's outbound queue (messages); beyond it messages are dropped and counted
    /// (the protocol recovers through hints and anti-entropy).
    pub peer_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            advertise: None,
            seeds: Vec::new(),
            bootstrap: true,
            replication: featurestore::replication::ReplicationConfig::default(),
            tick_ms: 50,
            peer_queue: 4096,
        }
    }
}

/// The whole node configuration.
///
/// Serialised ([`NodeConfig::to_toml`]), the sections left at their defaults (`limits`, `transport`,
/// `cluster.replication`) are left out, so a written config says what was chosen and nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (`[a-z0-9-]`, 1–63 chars); must match its certificate.
    pub node_id: NodeId,
    /// UDP address the QUIC server listens on.
    pub listen: SocketAddr,
    /// Directory for this node's data.
    pub data_dir: PathBuf,
    /// Storage engine: `sled` (default) or `memory`.
    #[serde(default)]
    pub storage: StorageKind,
    /// Bytes of sled's page cache (reads are served from the node's memory, never from it; writes and
    /// the start-up scan use it). Default 64 MiB, at least 1 MiB.
    #[serde(default = "defaults::storage_cache_bytes")]
    pub storage_cache_bytes: u64,
    /// Durability policy: `{ mode = "sync" }` (default) or `{ mode = "periodic", interval_ms = N }`.
    #[serde(default)]
    pub durability: DurabilityPolicy,
    /// Certificates.
    pub tls: TlsFiles,
    /// Size limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// QUIC transport limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub transport: TransportLimits,
    /// Refuse timestamps more than this many ms ahead of the local clock. Default 1000.
    #[serde(default = "defaults::max_clock_skew_ms")]
    pub max_clock_skew_ms: u64,
    /// How long a stream may take to deliver its whole request. Default 10000.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// On shutdown, how long in-flight requests get to finish. Default 5000.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// How often expired values are physically dropped (0 disables the sweeper). Default 60000.
    #[serde(default = "defaults::expiry_sweep_ms")]
    pub expiry_sweep_ms: u64,
    /// Cluster membership and replication.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Event ingestion: feature definitions and backpressure.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ingest: IngestConfig,
    /// The HTTP listener (the Segment-compatible ingest API, `/health`, `/metrics`, `/ready`); off unless
    /// `listen` is set.
    #[serde(default, skip_serializing_if = "is_default")]
    pub http: HttpConfig,
    /// Test-only controls (fault injection). Left at their defaults they change nothing.
    #[serde(default, skip_serializing_if = "is_default")]
    pub test: TestConfig,
}

/// Event ingestion (config section `[ingest]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The feature definitions file (`[[features]]` tables, see docs/ingest.md); none: events only update
    /// identify traits and the dedup set.
    pub features: Option<PathBuf>,
    /// The segment definitions file (`[[segment]]` tables: a name and a CEL rule, see
    /// `segments.example.toml`); none: no segments are evaluated.
    pub segments: Option<PathBuf>,
    /// Most events this node applies as owner at once; beyond it senders get `Unavailable` (retry later).
    /// Default 4096.
    pub max_inflight_events: usize,
    /// Also keep events that were late for a window (counted in no window; their other features
    /// applied) in the dead-letter queue. Default false.
    pub dead_letter_late: bool,
    /// Most profiles per second the backfill of a segment added at runtime evaluates on this node.
    /// Default 2000.
    pub backfill_per_second: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            features: None,
            segments: None,
            max_inflight_events: 4096,
            dead_letter_late: false,
            backfill_per_second: 2000,
        }
    }
}

/// One source's write key (`[[http.write_keys]]`): the secret an analytics SDK sends (HTTP Basic user
/// name, or `writeKey` in the body). Removing the entry (and restarting the node) revokes the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteKey {
    /// The source's name (`web`, `ios`, `backend`, ...), for logs.
    pub source: String,
    /// The key: 16 to 256 printable ASCII characters without `:` or spaces.
    pub key: String,
}

impl std::fmt::Debug for WriteKey {
    /// Never prints the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey")
            .field("source", &self.source)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The HTTP listener (config section `[http]`): the Segment-compatible ingest API (`/v1/*`) and `/health`.
/// Off unless `listen` is set. Every size has a limit; the defaults are Segment's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP address to listen on (port 0 picks a free port, reported in the ready line); none: no HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Serve plain HTTP instead of HTTPS (for loopback, e.g. the dev cluster, or behind a proxy that
    /// terminates TLS). Default `false`: HTTPS with the node's certificate (or `cert`/`key`).
    pub plaintext: bool,
    /// Certificate chain (PEM) for HTTPS; default: the node's `tls.cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for HTTPS; default: the node's `tls.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The write keys, one per source. At least one when `listen` is set.
    pub write_keys: Vec<WriteKey>,
    /// Largest body of `/v1/batch` and `/v1/import`, in bytes *after* decompression (the decompressed size
    /// is capped while reading). Default 512000 (Segment's 500 KB). Single calls (`/v1/track`, ...) are
    /// bounded by `[limits] max_event_bytes`.
    pub max_batch_bytes: usize,
    /// Most events in one batch. Default 2500 (Segment's limit).
    pub max_batch_events: usize,
    /// After a body is refused as too large, at most this many more (decompressed) bytes of it are read
    /// and dropped before the answer, so the client is not cut off while it still sends. Default 4194304.
    pub max_drain_bytes: usize,
    /// Time a request gets to deliver its headers, and then its whole body. Default 10000.
    pub request_timeout_ms: u64,
    /// Most open connections; beyond it new ones are closed at once. Default 1024.
    pub max_connections: usize,
    /// Most ingest requests handled at once; beyond it the answer is 429 with `Retry-After`. Default 256.
    pub max_inflight_requests: usize,
    /// The `Retry-After` (seconds) of 429 and 503 answers. Default 1.
    pub retry_after_s: u32,
    /// Serve the segment dashboard at `/ui` (it shows user ids and feature values and asks for no key:
    /// turn it on only where only operators reach the listener). Default `false`; the dev cluster turns it
    /// on.
    pub dashboard: bool,
    /// The other nodes' HTTP origins (`http://host:port`), which the dashboard page also reads for a
    /// cluster-wide view. Default none: the page shows this node only.
    pub dashboard_peers: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            plaintext: false,
            cert: None,
            key: None,
            write_keys: Vec::new(),
            max_batch_bytes: 500 * 1024,
            max_batch_events: 2500,
            max_drain_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 10_000,
            max_connections: 1024,
            max_inflight_requests: 256,
            retry_after_s: 1,
            dashboard: false,
            dashboard_peers: Vec::new(),
        }
    }
}

/// Most origins in `[http] dashboard_peers`.
pub const MAX_DASHBOARD_PEERS: usize = 64;

impl HttpConfig {
    /// Checks the section (only when `listen` is set: an unused section is not an error).
    pub fn validate(&self) -> Result<()> {
        if self.listen.is_none() {
            return Ok(());
        }
        let bad = |what: String| Err(Error::Config(format!("[http] {what}")));
        for (name, v) in [
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_batch_events", self.max_batch_events),
            ("max_connections", self.max_connections),
            ("max_inflight_requests", self.max_inflight_requests),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be at least 1".into());
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert and key go together".into());
        }
        if self.dashboard_peers.len() > MAX_DASHBOARD_PEERS {
            return bad(format!(
                "dashboard_peers: at most {MAX_DASHBOARD_PEERS} origins"
            ));
        }
        for origin in &self.dashboard_peers {
            let scheme = origin.starts_with("http://") || origin.starts_with("https://");
            let printable = origin.bytes().all(|b| b.is_ascii_graphic());
            if !scheme || !printable || origin.len() > 256 || origin.ends_with('/') {
                return bad(format!(
                    "dashboard_peers: {origin:?} is not an origin like http://host:port (no path, no \
                     trailing /)"
                ));
            }
        }
        // No write keys is allowed: a listener for `/health`, `/metrics` and `/ready` only (ingest then
        // answers 401 to every request).
        for (i, wk) in self.write_keys.iter().enumerate() {
            let printable = wk.key.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !(16..=256).contains(&wk.key.len()) || !printable {
                return bad(format!(
                    "write key of source {:?}: use 16 to 256 printable ASCII characters, no ':' or spaces",
                    wk.source
                ));
            }
            if wk.source.is_empty() || wk.source.len() > 64 {
                return bad(format!(
                    "write key #{}: source must be 1 to 64 characters",
                    i + 1
                ));
            }
            if self.write_keys[..i].iter().any(|other| other.key == wk.key) {
                return bad(format!(
                    "the write key of source {:?} is also another source's",
                    wk.source
                ));
            }
        }
        Ok(())
    }
}

/// Test-only controls (config section `[test]`), for fault-injection harnesses. Never needed in
/// production; at their defaults they are inert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestConfig {
    /// Milliseconds added to the system clock for everything this node does with wall-clock time
    /// (timestamps, expiry, deadlines), see [`crate::clock`]. Negative runs the clock behind. Default 0.
    pub clock_offset_ms: i64,
    /// A file the node polls (every 100 ms) for a new clock offset: one integer, milliseconds, as
    /// `clock_offset_ms` (a missing, empty or unparsable file changes nothing). For a clock-skew nemesis
    /// that jumps or strobes a running node's clock. Default: none (no file is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_control_file: Option<PathBuf>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

mod defaults {
    pub fn max_clock_skew_ms() -> u64 {
        1_000
    }
    pub fn request_timeout_ms() -> u64 {
        10_000
    }
    pub fn drain_timeout_ms() -> u64 {
        5_000
    }
    pub fn expiry_sweep_ms() -> u64 {
        60_000
    }

    pub fn storage_cache_bytes() -> u64 {
        64 * 1024 * 1024
    }
}

/// The arguments of `store-node serve`: the config file and its overrides.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The node's TOML config.
    #[arg(long, env = "FEATURESTORE_CONFIG")]
    pub config: PathBuf,
    /// Overrides of the file's values.
    #[command(flatten)]
    pub overrides: Overrides,
    /// Stop (as on SIGTERM) when the process PID, which must be this node's parent, exits, even by
    /// `kill -9`: what `store-node dev` passes to its nodes (Linux parent-death signal, see
    /// `store_node::supervision`). Exits at once if the parent is already gone.
    #[arg(long, value_name = "PID")]
    pub die_with_parent: Option<u32>,
}

/// Overrides of the config file, each from a command-line flag or, without the flag, from its
/// `FEATURESTORE_*` environment variable (the one declaration of both; see `docs/configuration.md`).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Overrides {
    /// Override `node_id`.
    #[arg(long, env = "FEATURESTORE_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<NodeId>,
    /// Override `listen`.
    #[arg(long, env = "FEATURESTORE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Override `data_dir`.
    #[arg(long, env = "FEATURESTORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Override `durability`: `sync` or `periodic:<ms>`.
    #[arg(long, env = "FEATURESTORE_DURABILITY")]
    pub durability: Option<DurabilityPolicy>,
    /// Override `storage`: `sled` or `memory`.
    #[arg(long, env = "FEATURESTORE_STORAGE")]
    pub storage: Option<StorageKind>,
    /// Override `max_clock_skew_ms`.
    #[arg(long, env = "FEATURESTORE_MAX_CLOCK_SKEW_MS")]
    pub max_clock_skew_ms: Option<u64>,
}

fn parse_node_id(s: &str) -> featurestore::Result<NodeId> {
    NodeId::new(s)
}

/// The environment variables `store-node serve` reads for its arguments ([`ServeArgs`]), from their one
/// declaration.
pub fn env_keys() -> Vec<String> {
    use clap::Args as _;
    ServeArgs::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(clap::Arg::get_env)
        .map(|key| key.to_string_lossy().into_owned())
        .collect()
}

impl NodeConfig {
    /// A configuration with every optional key at its default.
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        data_dir: PathBuf,
        tls: TlsFiles,
    ) -> NodeConfig {
        NodeConfig {
            node_id,
            listen,
            data_dir,
            storage: StorageKind::default(),
            storage_cache_bytes: defaults::storage_cache_bytes(),
            durability: DurabilityPolicy::default(),
            tls,
            limits: Limits::default(),
            transport: TransportLimits::default(),
            max_clock_skew_ms: defaults::max_clock_skew_ms(),
            request_timeout_ms: defaults::request_timeout_ms(),
            drain_timeout_ms: defaults::drain_timeout_ms(),
            expiry_sweep_ms: defaults::expiry_sweep_ms(),
            cluster: ClusterConfig::default(),
            ingest: IngestConfig::default(),
            http: HttpConfig::default(),
            test: TestConfig::default(),
        }
    }

    /// The address this node announces to peers and clients.
    pub fn advertise(&self) -> SocketAddr {
        self.cluster.advertise.unwrap_or(self.listen)
    }

    /// Reads `path`, resolves relative paths against the file's directory, applies `overrides` (the
    /// environment and the flags, see [`Overrides`]) and validates the result.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.apply_overrides(overrides);
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, the way [`NodeConfig::load`] reads it back (paths are written as they are:
    /// relative ones stay relative to the file).
    pub fn to_toml(&self) -> std::result::Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Writes the config to `path` as TOML ([`NodeConfig::to_toml`]), after `comment` as `#` lines (none
    /// if empty). The one writer of node configs: the dev cluster, the tests and the benchmarks use it.
    pub fn write(&self, path: &Path, comment: &str) -> Result<()> {
        let body = self.to_toml().map_err(|source| Error::ConfigWrite {
            path: path.to_owned(),
            source,
        })?;
        let mut text = String::new();
        for line in comment.lines() {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&body);
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let optional = [
            self.ingest.features.as_mut(),
            self.ingest.segments.as_mut(),
            self.http.cert.as_mut(),
            self.http.key.as_mut(),
            self.test.clock_control_file.as_mut(),
        ];
        let required = [
            &mut self.data_dir,
            &mut self.tls.ca_cert,
            &mut self.tls.cert,
            &mut self.tls.key,
        ];
        for p in required.into_iter().chain(optional.into_iter().flatten()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(v) = &o.node_id {
            self.node_id.clone_from(v);
        }
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = &o.data_dir {
            self.data_dir.clone_from(v);
        }
        if let Some(v) = o.durability {
            self.durability = v;
        }
        if let Some(v) = o.storage {
            self.storage = v;
        }
        if let Some(v) = o.max_clock_skew_ms {
            self.max_clock_skew_ms = v;
        }
    }

    /// Checks every value (node ids are valid by construction: `NodeId` validates when deserialised).
    pub fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        self.durability.validate()?;
        self.transport.validate().map_err(Error::Transport)?;
        self.http.validate()?;
        if self.storage_cache_bytes < 1024 * 1024 {
            return Err(Error::Config(
                "storage_cache_bytes must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(Error::Config(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = r#"
node_id = "n1"
listen = "127.0.0.1:7401"
data_dir = "n1"
[tls]
ca_cert = "certs/ca.pem"
cert = "certs/node-n1.pem"
key = "certs/node-n1.key"
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("node.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `store-node serve`'s arguments as `main.rs` parses them.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<ServeArgs, clap::Error> {
        use clap::Parser as _;
        let argv = ["serve", "--config", "node.toml"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| c.serve)
    }

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), EXAMPLE);
        let c = NodeConfig::load(&p, &Overrides::default()).unwrap();
        assert_eq!(c.node_id.as_str(), "n1");
        assert_eq!(c.durability, DurabilityPolicy::Sync);
        assert_eq!(c.storage, StorageKind::Sled);
        assert_eq!(c.data_dir, dir.path().join("n1"));
        assert_eq!(c.tls.ca_cert, dir.path().join("certs/ca.pem"));
        assert_eq!(c.max_clock_skew_ms, 1_000);
    }

    /// The only test that touches the process environment (the `FEATURESTORE_*` variables are read by
    /// nothing else in this test binary).
    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), EXAMPLE);
        assert!(env_keys().contains(&"FEATURESTORE_DURABILITY".to_owned()));
        assert!(env_keys().contains(&"FEATURESTORE_CONFIG".to_owned()));
        assert_eq!(env_keys().len(), 7, "{:?}", env_keys());
        let vars = [
            ("FEATURESTORE_DURABILITY", "periodic:50"),
            ("FEATURESTORE_LISTEN", "127.0.0.1:9000"),
            ("FEATURESTORE_MAX_CLOCK_SKEW_MS", "250"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let with_flags = parse(&["--listen", "127.0.0.1:9001", "--node-id", "n7"]);
        let env_only = parse(&[]);
        std::env::set_var("FEATURESTORE_DURABILITY", "always");
        let bad_env = parse(&[]);
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let none = parse(&[]).unwrap();
        assert_eq!(none.overrides, Overrides::default());
        assert_eq!(none.config, Path::new("node.toml"));
        assert!(
            bad_env.is_err(),
            "a bad value in the environment is an error"
        );

        let c = NodeConfig::load(&p, &env_only.unwrap().overrides).unwrap();
        assert_eq!(c.durability, DurabilityPolicy::Periodic { interval_ms: 50 });
        assert_eq!(
            c.listen,
            "127.0.0.1:9000".parse().unwrap(),
            "env beats file"
        );
        assert_eq!(c.max_clock_skew_ms, 250);
        let c = NodeConfig::load(&p, &with_flags.unwrap().overrides).unwrap();
        assert_eq!(c.durability, DurabilityPolicy::Periodic { interval_ms: 50 });
        assert_eq!(
            c.listen,
            "127.0.0.1:9001".parse().unwrap(),
            "flags beat env"
        );
        assert_eq!(c.node_id.as_str(), "n7");
        assert!(
            parse(&["--node-id", "N 7"]).is_err(),
            "node ids are validated"
        );
    }

    #[test]
    fn a_written_config_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles {
            ca_cert: "certs/ca.pem".into(),
            cert: "certs/node-n1.pem".into(),
            key: "certs/node-n1.key".into(),
        };
        let mut c = NodeConfig::new(
            NodeId::new("n1").unwrap(),
            "127.0.0.1:7401".parse().unwrap(),
            "n1".into(),
            tls,
        );
        let path = dir.path().join("n1.toml");
        c.write(&path, "Written by a test.\nSecond line.").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# Written by a test.\n# Second line.\n"),
            "{text}"
        );
        assert!(
            !text.contains("[limits]") && !text.contains("replication"),
            "{text}"
        );
        let loaded = NodeConfig::load(&path, &Overrides::default()).unwrap();
        c.resolve_paths(dir.path());
        assert_eq!(loaded, c);

        c.durability = DurabilityPolicy::Periodic { interval_ms: 7 };
        c.limits.max_siblings = 3;
        c.cluster.advertise = Some("10.0.0.1:7401".parse().unwrap());
        c.cluster.replication.rpc_timeout_ms = 500;
        c.cluster.replication.detector.suspect_phi = 4.5;
        c.test.clock_offset_ms = -1500;
        c.cluster.seeds = vec![Seed {
            id: NodeId::new("n2").unwrap(),
            addr: "127.0.0.1:7402".parse().unwrap(),
        }];
        c.write(&path, "").unwrap();
        assert_eq!(NodeConfig::load(&path, &Overrides::default()).unwrap(), c);
    }

    #[test]
    fn the_http_section_is_validated_and_its_paths_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let http = "[ingest]\nfeatures = \"features.toml\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
                    cert = \"web.pem\"\nkey = \"web.key\"\n\
                    [[http.write_keys]]\nsource = \"web\"\nkey = \"0123456789abcdef\"\n";
        let p = write(dir.path(), &format!("{EXAMPLE}{http}"));
        let c = NodeConfig::load(&p, &Overrides::default()).unwrap();
        assert_eq!(c.http.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert!(!c.http.plaintext, "HTTPS unless configured");
        assert_eq!(c.http.max_batch_bytes, 512_000);
        assert_eq!(c.http.max_batch_events, 2500);
        assert_eq!(c.http.cert, Some(dir.path().join("web.pem")));
        assert_eq!(c.ingest.features, Some(dir.path().join("features.toml")));
        assert!(
            !format!("{:?}", c.http).contains("0123456789abcdef"),
            "keys are not printed"
        );
        // Written and loaded back the same.
        c.write(&p, "").unwrap();
        assert_eq!(NodeConfig::load(&p, &Overrides::default()).unwrap(), c);

        // No write keys: a listener for /health, /metrics and /ready only.
        let p = write(
            dir.path(),
            &format!("{EXAMPLE}[http]\nlisten = \"127.0.0.1:0\"\n"),
        );
        assert!(NodeConfig::load(&p, &Overrides::default())
            .unwrap()
            .http
            .write_keys
            .is_empty());

        let bad = [
            "[http]\nlisten = \"127.0.0.1:0\"\n[[http.write_keys]]\nsource = \"web\"\nkey = \"short\"\n",
            "[http]\nlisten = \"127.0.0.1:0\"\n[[http.write_keys]]\nsource = \"web\"\nkey = \"0123456789abcdef:\"\n",
            "[http]\nlisten = \"127.0.0.1:0\"\n[[http.write_keys]]\nsource = \"a\"\nkey = \"0123456789abcdef\"\n\
             [[http.write_keys]]\nsource = \"b\"\nkey = \"0123456789abcdef\"\n",
            "[http]\nlisten = \"127.0.0.1:0\"\nmax_batch_events = 0\n[[http.write_keys]]\nsource = \"a\"\nkey = \"0123456789abcdef\"\n",
            "[http]\nlisten = \"127.0.0.1:0\"\ncert = \"x.pem\"\n[[http.write_keys]]\nsource = \"a\"\nkey = \"0123456789abcdef\"\n",
            "[http]\nlisten = \"127.0.0.1:0\"\nmax_body = 3\n",
        ];
        for text in bad {
            let p = write(dir.path(), &format!("{EXAMPLE}{text}"));
            assert!(
                NodeConfig::load(&p, &Overrides::default()).is_err(),
                "{text}"
            );
        }
        // Without `listen`, the section is inert and not checked.
        let p = write(dir.path(), &format!("{EXAMPLE}[http]\nplaintext = true\n"));
        assert_eq!(
            NodeConfig::load(&p, &Overrides::default())
                .unwrap()
                .http
                .listen,
            None
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("{EXAMPLE}\nlisten_port = 3\n"));
        assert!(NodeConfig::load(&p, &Overrides::default()).is_err());
        let p = write(
            dir.path(),
            &EXAMPLE.replace(
                "\"n1\"\nlisten",
                "\"n1\"\nstorage_cache_bytes = 1000\nlisten",
            ),
        );
        let small = NodeConfig::load(&p, &Overrides::default());
        assert!(
            small.is_err_and(|e| e.to_string().contains("storage_cache_bytes")),
            "a page cache under 1 MiB is refused"
        );
        let p = write(
            dir.path(),
            &EXAMPLE.replace("\"n1\"\nlisten", "\"N 1\"\nlisten"),
        );
        assert!(NodeConfig::load(&p, &Overrides::default()).is_err());
        let p = write(
            dir.path(),
            &format!("{EXAMPLE}\n[[cluster.seeds]]\nid = \"n/2\"\naddr = \"127.0.0.1:7402\"\n"),
        );
        assert!(
            NodeConfig::load(&p, &Overrides::default()).is_err(),
            "seed ids are validated"
        );
        let p = write(
            dir.path(),
            &format!("{EXAMPLE}\n[limits]\nmax_siblings = 0\n"),
        );
        assert!(NodeConfig::load(&p, &Overrides::default()).is_err());
    }
}

#[cfg(test)]
mod example_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example shipped in the repository parses and validates (so it cannot drift from the code).
    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("node.example.toml");
        let c = NodeConfig::load(&path, &Overrides::default()).unwrap();
        assert_eq!(c.node_id.as_str(), "n1");
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.transport, TransportLimits::default());
    }
}
