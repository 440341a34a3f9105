//! The featurestore node: durable storage, the QUIC server and the runtime that wires the I/O-free core
//! (`featurestore`) to the network and the disk.
//!
//! - [`config`]: the TOML config with environment and flag overrides.
//! - [`storage`]: the `Storage` trait, sled and in-memory engines, durability policies (group commit).
//! - [`engine`]: in-memory profiles, the clock, the write path.
//! - [`server`]: QUIC connections, streams and frames.
//! - [`cluster`], [`peer`]: request coordination, replication runtime, peer transport.
//! - [`node`]: start, recover, serve, shut down.
//! - [`certs`], [`tls`]: certificate generation and mutual TLS.
//! - [`dev`]: the local development cluster behind `store-node dev`.

pub mod certs;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod server;
pub mod storage;
pub mod tls;

pub use error::{Error, Result};
