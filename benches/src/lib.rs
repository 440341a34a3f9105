//! # benches: measuring featurestore against Redis and the QUIC transport floor
//!
//! This crate holds the criterion micro-benchmarks of the core (`benches/core.rs`, run with
//! `cargo bench -p benches`) and the `loadgen` load generator, whose building blocks are this library:
//!
//! - [`keyspace`]: the shared keyspace (100,000 profiles × 20 features by default), uniform and Zipf(0.99)
//!   key choice, a seedable PRNG.
//! - [`target`]: featurestore (through `store-client`), Redis (the `redis` crate) and the bare QUIC echo
//!   behind one interface: point read, single-feature write, batch read, load.
//! - [`echo`]: the echo server and client (mutual TLS like a node, one stream per request).
//! - [`driver`]: the workloads, closed loop, open loop with intended send times, the p99 sweep.
//! - [`stats`]: HdrHistogram latencies, CPU time and RSS from `/proc`, disk usage.
//! - [`servers`]: starting `store-node`, `redis-server` and the echo server on loopback, pinned with
//!   `taskset`, killed when dropped.
//! - [`compare`]: the whole comparison in one call; [`report`]: its JSON and markdown.
//! - [`fault`]: `loadgen fault`, a node of a three-node cluster killed under a running client, per second.
//! - [`ingest`]: `loadgen ingest` (W5a), event ingest on the dev cluster beside a Lua-per-event Redis.
//!
//! How to run everything: `benches/compare.sh` (see `docs/benchmarks.md`).

pub mod compare;
pub mod driver;
pub mod echo;
pub mod error;
pub mod fault;
pub mod ingest;
pub mod keyspace;
pub mod report;
pub mod segments;
pub mod servers;
pub mod stats;
pub mod target;

pub use error::{Error, Result};
