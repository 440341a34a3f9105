//! The featurestore client: an async (tokio), ring-aware library and the `storectl` command-line tool.
//!
//! A [`Client`] learns the cluster from one of the configured seed nodes (membership table, virtual
//! nodes, replication factor N), builds the same consistent-hash ring as the nodes, and sends each request
//! straight to a replica of its key, over one QUIC connection per node (mutual TLS against the cluster
//! CA), one bidirectional stream per request, one frame of the core's wire protocol
//! ([`featurestore::wire::codec`]) each way. Clones share the connections and the cluster view, so one client
//! serves a whole application.
//!
//! - Reads: [`Client::get`], [`Client::get_many`] (grouped per node, sent in parallel), optionally
//!   projected to some features; read quorum R from the configuration, per client
//!   ([`Client::with_quorums`]) or per call ([`Client::get_with_quorum`]).
//! - Writes: [`Client::put`] / [`Client::put_with`] (gauges, last-writer-wins, TTL, event time),
//!   [`Client::increment`] (counters), [`Client::set_flag`] (flags with a causal context),
//!   [`Client::erase`] (right to be forgotten); write quorum W likewise.
//! - Cluster: [`Client::cluster`], [`Client::refresh_cluster`], [`Client::replicas`],
//!   [`Client::status`] / [`Client::status_of`] (members, liveness, hint queues, ring version).
//! - Admin, per node: [`Client::local_state`] (one replica's raw state of a key), [`Client::digests`]
//!   (anti-entropy digests), [`Client::leave`]; and [`Client::request`] for any [`Request`].
//!
//! - Health: [`Client::node_health`] (what the client believes about each node),
//!   [`Client::hedge_delay`], [`Client::with_deadline`].
//!
//! Availability, in short (details in [`client`]; the design and its measurements in
//! `docs/client.md` and `docs/benchmarks.md`):
//! - Seeds are dialed in parallel at connect; a dead first seed costs 10 ms, not a handshake timeout.
//! - A node is judged down when its handshake fails, its connection breaks, or it sends not one packet
//!   (not even a QUIC acknowledgement) for `failure_timeout_ms` (150 ms) while a request to it waits.
//!   It is then tried last and probed in the background every `probe_interval_ms` (250 ms) until it
//!   answers; no request waits on a dial to it while another replica is reachable.
//! - Reads are hedged: if the first replica has not answered within the hedge delay (the p99 of recent
//!   reads, at least 1 ms; configurable), the next replica is asked too and the first answer wins. They
//!   also move on at once on a failure or an [`ErrorCode::Unavailable`] reply.
//! - Writes move on to another node only if the request certainly did not reach the first one
//!   (connecting or opening the stream failed); a write that may have arrived is never sent again, so
//!   the client never applies a write twice, nor lets a delayed copy overwrite a later write. A write
//!   waiting on a node that is judged down fails at once ([`Error::Transport`]: it may have been
//!   applied), and the next ones go to the next replica. If no replica can be reached, any other live
//!   member takes the write (sloppy quorum; the node hands it on).
//! - One deadline (`request_timeout_ms`, or [`Client::with_deadline`]) bounds a whole call, retries and
//!   hedges included; running out of it is [`Error::Timeout`].
//! - Other error replies come back as [`Error::Server`] with a stable [`ErrorCode`]
//!   ([`Error::server_code`]), without retry.
//!
//! # Example
//!
//! ```no_run
//! use store_client::{CausalContext, Client, ClientConfig, FeatureView, Value};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), store_client::Error> {
//!     // ca_cert, cert, key and the seed [[nodes]]; relative paths are relative to the file.
//!     let client = Client::connect(ClientConfig::load("client.toml")?).await?;
//!     println!("ring version {}: {:?}", client.ring_version(), client.replicas("user-42"));
//!
//!     client.put("user-42", &[("cart_value", Value::F64(42.5))]).await?;
//!     let views = client.increment("user-42", &[("page_views", 1)]).await?;
//!     println!("page views: {}", views[0]);
//!
//!     let flag = client
//!         .set_flag("user-42", "high_value_account", true, &CausalContext::default(), None)
//!         .await?;
//!     println!("flag context to write back: {}", flag.context);
//!
//!     // Read two replicas, merged (stale ones are repaired by the node).
//!     if let Some(profile) = client.get_with_quorum("user-42", None, 2).await? {
//!         if let Some(FeatureView::Gauge { value, version, .. }) = profile.features.get("cart_value") {
//!             println!("cart_value = {value} (version {version})");
//!         }
//!     }
//!
//!     // Every replica's raw state, e.g. to check that they converged.
//!     for node in client.replicas("user-42") {
//!         println!("{node}: {:?}", client.local_state(&node, "user-42").await?);
//!     }
//!
//!     client.close().await;
//!     Ok(())
//! }
//! ```
//!
//! # Configuration
//!
//! See [`config`] for the TOML format of [`ClientConfig`].

pub mod client;
mod coalesce;
pub mod config;
pub mod error;
pub mod frame;
pub mod routing;
pub mod segments;
pub mod tls;
mod transport;

pub use client::{Client, INGEST_EVENTS_PER_REQUEST};
pub use config::{ClientConfig, NodeAddr};
pub use error::{ConnectAttempt, Error, Result};
pub use segments::{Cursor, Subscription};
pub use transport::NodeHealth;

pub use featurestore::cluster::membership::{Member, MemberState, MembershipTable};
pub use featurestore::wire::client::{ClusterView, GaugeWrite, MemberStatus, NodeStatus, PutAck};
pub use featurestore::wire::dead_letter::{
    DeadLetter, DeadLetterPage, Purged, ReplayOutcome, ReplayReport, Replayed,
};
pub use featurestore::wire::encoded_view::{
    EncodedView, FeatureRef, Features, MarkerRef, ValueRef,
};
pub use featurestore::{
    CausalContext, ErrorCode, FeatureView, FlagView, Marker, NodeId, Profile, ProfileView, Request,
    Response, Value,
};
