//! The featurestore node: durable storage, the QUIC server and the runtime that wires the I/O-free core
//! (`featurestore`) to the network and the disk.
//!
//! - [`config`]: the TOML config with environment and flag overrides.
//! - [`storage`]: the `Storage` trait, sled and in-memory engines, durability policies (group commit).
//! - [`clock`]: the node's one wall-clock reading, with a test-only offset.
//! - [`engine`]: in-memory profiles, the clock, the write path.
//! - [`segments`]: the segment definitions file and the owner's re-evaluation of memberships after an
//!   event.
//! - [`server`]: the client-facing QUIC server: connections, streams and frames.
//! - [`cluster`]: request coordination, replication runtime, the ingest path.
//! - [`http`]: the node's HTTP listener: the Segment-compatible ingest API and `/health`.
//! - [`net`]: the transport below the cluster runtime: [`net::peer`] (peer transport) and [`net::tls`]
//!   (mutual TLS, peer identity).
//! - [`node`]: start, recover, serve, shut down.
//! - [`logging`]: the log subscriber, whose failed writes are counted and dropped (never a panic).
//! - [`supervision`]: a node started by `store-node dev` dies with its supervisor (parent-death signal).
//! - [`telemetry`]: what `GET /metrics` (OpenMetrics) and `GET /ready` report.
//! - [`launch`]: start `store-node serve` processes and wait for their ready signal (dev, tests, benches).
//! - [`certs`]: certificate generation.
//! - [`dev`]: the local development cluster behind `store-node dev`.

pub mod certs;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod engine;
pub mod error;
pub mod features;
pub mod http;
pub mod launch;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod segments;
pub mod server;
pub mod shard_map;
pub mod storage;
pub mod supervision;
pub mod telemetry;

pub use error::{Error, Result};
