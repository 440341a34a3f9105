//! Client configuration: where the cluster is and which certificates to present.
//!
//! A configuration is a TOML file loaded with [`ClientConfig::load`]:
//!
//! ```toml
//! ca_cert = "certs/ca.pem"            # the cluster CA, the only trust root
//! cert = "certs/client-app.pem"       # this client's certificate (chain, leaf first)
//! key = "certs/client-app.key"        # its private key (PKCS#8, PKCS#1 or SEC1, unencrypted)
//! request_timeout_ms = 5000           # optional, default 5000: deadline of a whole call (every attempt)
//! connect_timeout_ms = 500            # optional, default 500: bound on one handshake (a LAN's worth)
//! failure_timeout_ms = 150            # optional, default 150: silence after which a node is judged down
//! probe_interval_ms = 250             # optional, default 250: how often a node judged down is re-probed
//! hedge_delay_us = 2000               # optional, default: adaptive (the observed p99, see below); 0 = off
//! hedge_min_us = 1000                 # optional, default 1000: floor of the adaptive hedge delay
//! max_frame_bytes = 16777216          # optional: largest response payload accepted
//! read_quorum = 1                     # optional, default 1: replicas a read merges (R; 0 = 1)
//! write_quorum = 1                    # optional, default 1: replicas that hold a write before its ack (W)
//! ring_refresh_ms = 1000              # optional, default 1000: age after which the ring is re-fetched
//! coalesce_requests_per_node = 1      # optional, default 1: coalesced requests in flight per node, for
//!                                     # ingest and for writes each; 0 = no coalescing of concurrent calls
//!
//! [[nodes]]                           # the seeds: tried in order until one handshake succeeds
//! name = "n1"                         # node id; the certificate must name n1.node.featurestore
//! addr = "127.0.0.1:7401"             # IP socket address (host names are not resolved)
//!
//! [transport]                         # optional, QUIC limits (see tls::TransportLimits)
//! idle_timeout_ms = 30000
//! ```
//!
//! The `[[nodes]]` are *seeds*: the client dials them in parallel (the first at once, each next one
//! [`SEED_STAGGER`] later or as soon as the previous ones failed), keeps the first that answers, learns
//! the membership table and the ring from it, and from then on talks to every member directly (see
//! [`client`](crate::client)). One reachable seed is enough; listing a few guards against the first
//! being down, and a dead first seed costs [`SEED_STAGGER`], not a handshake timeout.
//!
//! Availability settings (what they do is described in [`client`](crate::client)):
//! - `request_timeout_ms` is the **deadline of a whole call**: every attempt, hedge and retry of one
//!   `get`, `put`, ... together. When it passes the call fails with [`Error::Timeout`].
//!   [`Client::with_deadline`](crate::Client::with_deadline) overrides it per clone.
//! - `connect_timeout_ms` bounds one handshake. Handshakes run in the background: no request waits for
//!   one longer than its hedge delay if another replica is connected.
//! - `failure_timeout_ms`: a node from which not one packet (not even a QUIC acknowledgement) has
//!   arrived for this long while a request to it was outstanding and unacknowledged is judged down, as
//!   is a node whose handshake failed or whose connection broke. A node judged down is tried only after
//!   every other candidate and is re-probed every `probe_interval_ms` in the background until it answers.
//! - `hedge_delay_us`: a read that has no answer after this delay is also sent to the key's next replica,
//!   and the first answer wins. Absent: adaptive, the p99 of the client's recent reads (at least
//!   `hedge_min_us`, at most [`MAX_HEDGE_DELAY`]; [`INITIAL_HEDGE_DELAY`] until enough reads were seen).
//!   `0` turns hedging off (reads then move on only after a failure).
//!
//! Guarantees:
//! - Unknown keys are an error (`deny_unknown_fields`), here and in `[transport]`, so a typo is never
//!   silently ignored.
//! - Relative certificate paths are resolved against the directory of the configuration file, so a
//!   configuration works from any working directory.
//! - [`ClientConfig::validate`] (run by `load` and by [`Client::connect`](crate::Client::connect)) rejects
//!   an empty node list, invalid node names, zero timeouts and frame limits outside
//!   `1..=FRAME_BYTES_CEILING`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use featurestore::limits::FRAME_BYTES_CEILING;
use featurestore::NodeId;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::tls::TransportLimits;

/// Default for [`ClientConfig::request_timeout_ms`]: the deadline of a whole call.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Default for [`ClientConfig::connect_timeout_ms`]: a handshake on a LAN takes a few milliseconds (one
/// QUIC round trip and the TLS 1.3 signatures); 500 ms is two orders of magnitude of headroom, and a
/// failed handshake costs no request more than its hedge delay anyway.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 500;

/// Default for [`ClientConfig::failure_timeout_ms`].
pub const DEFAULT_FAILURE_TIMEOUT_MS: u64 = 150;

/// Default for [`ClientConfig::probe_interval_ms`].
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 250;

/// Default for [`ClientConfig::hedge_min_us`].
pub const DEFAULT_HEDGE_MIN_US: u64 = 1_000;

/// The adaptive hedge delay never exceeds this.
pub const MAX_HEDGE_DELAY: Duration = Duration::from_millis(100);

/// The adaptive hedge delay before the client has seen enough reads to know their p99 (it covers a
/// LAN handshake, so a fresh client does not hedge just because its first connection is being set up).
pub const INITIAL_HEDGE_DELAY: Duration = Duration::from_millis(10);

/// The delay between starting the dials of two consecutive seeds at connect time.
pub const SEED_STAGGER: Duration = Duration::from_millis(10);

/// The DNS suffix of node certificates: node `n1` presents a certificate for `n1.node.featurestore`.
pub const NODE_NAME_SUFFIX: &str = "node.featurestore";

/// Default for [`ClientConfig::read_quorum`] and [`ClientConfig::write_quorum`]: one replica.
pub const DEFAULT_QUORUM: u8 = 1;

/// Default for [`ClientConfig::ring_refresh_ms`].
pub const DEFAULT_RING_REFRESH_MS: u64 = 1_000;

/// Default for [`ClientConfig::coalesce_requests_per_node`]: one request in flight per node and queue,
/// so every call made while it is out goes in the next one. Measured on one node with `sync`
/// durability and 32 concurrent writers (docs/benchmarks.md): 1 in flight gave 39,600–44,300 writes/s
/// at 11.5–12.7 µs of node CPU per write; 2 gave 27,000–28,500; 4 gave 30,900–32,400; off gave
/// 28,500–29,100 at 28 µs. With more requests in flight each carries fewer writes and they wait on
/// separate flushes. The cost: a call made while a request is out waits for that request's answer
/// before its own goes (at most one round trip more).
pub const DEFAULT_COALESCE_REQUESTS_PER_NODE: u32 = 1;

/// Largest value of [`ClientConfig::coalesce_requests_per_node`]: coalescing needs only a few requests in
/// flight, and each holds one of the connection's streams.
pub const MAX_COALESCE_REQUESTS_PER_NODE: u32 = 64;

/// Largest configuration file that will be read, in bytes (stops a wrong path from being read whole).
const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// One node the client may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddr {
    /// The node id (`[a-z0-9-]`, 1 to 63 characters); its certificate names `<name>.node.featurestore`.
    pub name: String,
    /// The node's client-facing QUIC address.
    pub addr: SocketAddr,
}

impl NodeAddr {
    /// A node named `name` listening on `addr`.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        NodeAddr {
            name: name.into(),
            addr,
        }
    }

    /// The TLS server name the node's certificate must carry: `<name>.node.featurestore`.
    pub fn server_name(&self) -> String {
        format!("{}.{NODE_NAME_SUFFIX}", self.name)
    }
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

fn default_failure_timeout_ms() -> u64 {
    DEFAULT_FAILURE_TIMEOUT_MS
}

fn default_probe_interval_ms() -> u64 {
    DEFAULT_PROBE_INTERVAL_MS
}

fn default_hedge_min_us() -> u64 {
    DEFAULT_HEDGE_MIN_US
}

fn default_max_frame_bytes() -> u32 {
    FRAME_BYTES_CEILING
}

fn default_quorum() -> u8 {
    DEFAULT_QUORUM
}

fn default_ring_refresh_ms() -> u64 {
    DEFAULT_RING_REFRESH_MS
}

fn default_coalesce_requests_per_node() -> u32 {
    DEFAULT_COALESCE_REQUESTS_PER_NODE
}

/// Everything [`Client::connect`](crate::Client::connect) needs.
///
/// Build it with [`ClientConfig::load`] from a TOML file, or with [`ClientConfig::new`] and struct update
/// syntax in code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// PEM file of the cluster CA (the only trust root).
    pub ca_cert: PathBuf,
    /// PEM file of this client's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file of this client's private key.
    pub key: PathBuf,
    /// The deadline of a whole call, in milliseconds: every attempt, hedge and retry of one request
    /// together; when it passes, the call fails with [`Error::Timeout`]. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Bound on one connection handshake, in milliseconds. Default 500 (a LAN).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A node that has sent not one packet for this long while a request to it was waiting (and
    /// unacknowledged) is judged down, in milliseconds. Default 150.
    #[serde(default = "default_failure_timeout_ms")]
    pub failure_timeout_ms: u64,
    /// How often a node judged down is probed in the background, in milliseconds. Default 250.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Hedge delay of reads, in microseconds: `None` (absent) adapts it to the observed p99 of reads,
    /// `Some(0)` turns hedging off, any other value is used as it is.
    #[serde(default)]
    pub hedge_delay_us: Option<u64>,
    /// Floor of the adaptive hedge delay, in microseconds. Default 1000.
    #[serde(default = "default_hedge_min_us")]
    pub hedge_min_us: u64,
    /// Largest response payload accepted, in bytes; checked before anything is allocated. Default (and
    /// maximum) [`FRAME_BYTES_CEILING`].
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u32,
    /// Read quorum (R) of [`Client::get`](crate::Client::get) and
    /// [`Client::get_many`](crate::Client::get_many): how many replicas the serving node reads and merges
    /// (repairing stale ones) before it answers. 0 and 1 both mean one replica. Default 1.
    #[serde(default = "default_quorum")]
    pub read_quorum: u8,
    /// Write quorum (W) of puts, increments, flags and erasures: how many replicas hold the write before
    /// it is acknowledged; the others receive it asynchronously. 0 and 1 both mean the coordinating
    /// replica only. Default 1.
    #[serde(default = "default_quorum")]
    pub write_quorum: u8,
    /// Age in milliseconds after which the cached cluster view (membership table and ring) is fetched
    /// again, in the background, by the next request. A transport error also triggers a refresh. 0
    /// disables the periodic refresh (refreshes then only follow errors and
    /// [`Client::refresh_cluster`](crate::Client::refresh_cluster)). Default 1000.
    #[serde(default = "default_ring_refresh_ms")]
    pub ring_refresh_ms: u64,
    /// How many requests the client keeps in flight to one node while it coalesces concurrent calls (see
    /// [`client`](crate::client), "Coalescing"), for ingest and for writes each: calls made while that
    /// many are in flight wait and then share one request. 0 turns coalescing off (each call sends its
    /// own requests; needed against nodes older than `Request::Writes`). At most
    /// [`MAX_COALESCE_REQUESTS_PER_NODE`]. Default [`DEFAULT_COALESCE_REQUESTS_PER_NODE`] (1).
    #[serde(default = "default_coalesce_requests_per_node")]
    pub coalesce_requests_per_node: u32,
    /// The seed nodes, tried in order when connecting; the rest of the cluster is learnt from them.
    pub nodes: Vec<NodeAddr>,
    /// QUIC transport limits.
    #[serde(default)]
    pub transport: TransportLimits,
}

impl ClientConfig {
    /// A configuration with the given certificates and nodes and default timeouts and limits.
    pub fn new(
        ca_cert: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        nodes: Vec<NodeAddr>,
    ) -> Self {
        ClientConfig {
            ca_cert: ca_cert.into(),
            cert: cert.into(),
            key: key.into(),
            request_timeout_ms: DEFAULT_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            failure_timeout_ms: DEFAULT_FAILURE_TIMEOUT_MS,
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            hedge_delay_us: None,
            hedge_min_us: DEFAULT_HEDGE_MIN_US,
            max_frame_bytes: FRAME_BYTES_CEILING,
            read_quorum: DEFAULT_QUORUM,
            write_quorum: DEFAULT_QUORUM,
            ring_refresh_ms: DEFAULT_RING_REFRESH_MS,
            coalesce_requests_per_node: DEFAULT_COALESCE_REQUESTS_PER_NODE,
            nodes,
            transport: TransportLimits::default(),
        }
    }

    /// Reads, parses and validates a TOML configuration file. Relative certificate paths are resolved
    /// against the directory that holds the file.
    ///
    /// Errors: [`Error::Config`] if the file cannot be read, is not valid TOML, has unknown or missing
    /// keys, or fails [`ClientConfig::validate`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), store_client::Error> {
    /// let config = store_client::ClientConfig::load("client.toml")?;
    /// println!("{} nodes", config.nodes.len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_bounded(path)?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        Self::from_toml(&text, base)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), config_detail(&e))))
    }

    /// Parses and validates a TOML configuration; relative certificate paths are resolved against
    /// `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        let mut config: ClientConfig =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string().trim_end().to_owned()))?;
        for p in [&mut config.ca_cert, &mut config.cert, &mut config.key] {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks that the configuration is usable (certificate files are only read when connecting).
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Config(
                "no nodes configured: add at least one [[nodes]] entry".into(),
            ));
        }
        for node in &self.nodes {
            NodeId::new(node.name.as_str())
                .map_err(|e| Error::Config(format!("node {:?}: {e}", node.name)))?;
        }
        if self.request_timeout_ms == 0 {
            return Err(Error::Config(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(Error::Config(
                "connect_timeout_ms must be at least 1".into(),
            ));
        }
        for (name, value) in [
            ("failure_timeout_ms", self.failure_timeout_ms),
            ("probe_interval_ms", self.probe_interval_ms),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        let max_hedge_us = MAX_HEDGE_DELAY.as_micros() as u64;
        if self.hedge_min_us > max_hedge_us {
            return Err(Error::Config(format!(
                "hedge_min_us must be at most {max_hedge_us}"
            )));
        }
        if self.coalesce_requests_per_node > MAX_COALESCE_REQUESTS_PER_NODE {
            return Err(Error::Config(format!(
                "coalesce_requests_per_node must be at most {MAX_COALESCE_REQUESTS_PER_NODE}"
            )));
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > FRAME_BYTES_CEILING {
            return Err(Error::Config(format!(
                "max_frame_bytes must be between 1 and {FRAME_BYTES_CEILING}"
            )));
        }
        self.transport
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// [`ClientConfig::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`ClientConfig::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`ClientConfig::failure_timeout_ms`] as a duration.
    pub fn failure_timeout(&self) -> Duration {
        Duration::from_millis(self.failure_timeout_ms)
    }

    /// [`ClientConfig::probe_interval_ms`] as a duration.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// [`ClientConfig::ring_refresh_ms`] as a duration; `None` if the periodic refresh is disabled.
    pub fn ring_refresh(&self) -> Option<Duration> {
        (self.ring_refresh_ms > 0).then(|| Duration::from_millis(self.ring_refresh_ms))
    }
}

/// The message of a config error without the `client configuration:` prefix, to wrap it with a path.
fn config_detail(e: &Error) -> String {
    match e {
        Error::Config(msg) => msg.clone(),
        other => other.to_string(),
    }
}

fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read;
    let fail = |e: std::io::Error| Error::Config(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(fail)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(Error::Config(format!(
            "{} is larger than {MAX_CONFIG_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MINIMAL: &str = r#"
ca_cert = "certs/ca.pem"
cert = "certs/client-app.pem"
key = "/abs/client-app.key"

[[nodes]]
name = "n1"
addr = "127.0.0.1:7401"

[[nodes]]
name = "n2"
addr = "[::1]:7402"
"#;

    #[test]
    fn relative_paths_resolve_against_the_file_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.ca_cert, dir.path().join("certs/ca.pem"));
        assert_eq!(config.cert, dir.path().join("certs/client-app.pem"));
        assert_eq!(config.key, PathBuf::from("/abs/client-app.key"));
        assert_eq!(config.request_timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(config.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        assert_eq!(config.failure_timeout_ms, DEFAULT_FAILURE_TIMEOUT_MS);
        assert_eq!(config.probe_interval_ms, DEFAULT_PROBE_INTERVAL_MS);
        assert_eq!(config.hedge_delay_us, None);
        assert_eq!(config.hedge_min_us, DEFAULT_HEDGE_MIN_US);
        assert_eq!(config.max_frame_bytes, FRAME_BYTES_CEILING);
        assert_eq!(config.transport, TransportLimits::default());
        assert_eq!(config.read_quorum, 1);
        assert_eq!(config.write_quorum, 1);
        assert_eq!(config.ring_refresh_ms, DEFAULT_RING_REFRESH_MS);
        assert_eq!(config.ring_refresh(), Some(Duration::from_secs(1)));
        assert_eq!(
            config.nodes,
            vec![
                NodeAddr::new("n1", "127.0.0.1:7401".parse().unwrap()),
                NodeAddr::new("n2", "[::1]:7402".parse().unwrap()),
            ]
        );
        assert_eq!(config.nodes[0].server_name(), "n1.node.featurestore");
    }

    #[test]
    fn optional_keys_and_transport_are_read() {
        let text = format!(
            "request_timeout_ms = 250\nconnect_timeout_ms = 100\nmax_frame_bytes = 65536\n\
             read_quorum = 2\nwrite_quorum = 3\nring_refresh_ms = 0\n\
             failure_timeout_ms = 80\nprobe_interval_ms = 90\nhedge_delay_us = 0\nhedge_min_us = 7\n\
             {MINIMAL}\n[transport]\nkeep_alive_ms = 1000\n"
        );
        let config = ClientConfig::from_toml(&text, Path::new("/etc")).unwrap();
        assert_eq!(config.request_timeout(), Duration::from_millis(250));
        assert_eq!(config.connect_timeout(), Duration::from_millis(100));
        assert_eq!(config.max_frame_bytes, 65536);
        assert_eq!((config.read_quorum, config.write_quorum), (2, 3));
        assert_eq!(config.ring_refresh(), None);
        assert_eq!(config.failure_timeout(), Duration::from_millis(80));
        assert_eq!(config.probe_interval(), Duration::from_millis(90));
        assert_eq!((config.hedge_delay_us, config.hedge_min_us), (Some(0), 7));
        assert_eq!(config.transport.keep_alive_ms, 1000);
        assert_eq!(config.ca_cert, PathBuf::from("/etc/certs/ca.pem"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for text in [
            format!("bogus = 1\n{MINIMAL}"),
            MINIMAL.replace("name = \"n1\"", "name = \"n1\"\nport = 3"),
            format!("{MINIMAL}\n[transport]\nbogus = 1\n"),
        ] {
            let err = ClientConfig::from_toml(&text, Path::new("")).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn missing_file_is_a_config_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn parse_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "ca_cert = \n").unwrap();
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("broken.toml"), "{err}");
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let base = ClientConfig::from_toml(MINIMAL, Path::new("")).unwrap();
        let bad = [
            ClientConfig {
                nodes: vec![],
                ..base.clone()
            },
            ClientConfig {
                nodes: vec![NodeAddr::new("N1 bad", "127.0.0.1:1".parse().unwrap())],
                ..base.clone()
            },
            ClientConfig {
                request_timeout_ms: 0,
                ..base.clone()
            },
            ClientConfig {
                connect_timeout_ms: 0,
                ..base.clone()
            },
            ClientConfig {
                coalesce_requests_per_node: MAX_COALESCE_REQUESTS_PER_NODE + 1,
                ..base.clone()
            },
            ClientConfig {
                max_frame_bytes: FRAME_BYTES_CEILING + 1,
                ..base.clone()
            },
            ClientConfig {
                failure_timeout_ms: 0,
                ..base.clone()
            },
            ClientConfig {
                probe_interval_ms: 0,
                ..base.clone()
            },
            ClientConfig {
                hedge_min_us: 100_001,
                ..base.clone()
            },
            ClientConfig {
                transport: TransportLimits {
                    idle_timeout_ms: 0,
                    ..TransportLimits::default()
                },
                ..base.clone()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(Error::Config(_))),
                "{config:?}"
            );
        }
        let new = ClientConfig::new(
            "ca.pem",
            "c.pem",
            "c.key",
            vec![NodeAddr::new("n1", "127.0.0.1:1".parse().unwrap())],
        );
        new.validate().unwrap();
    }
}
