//! The featurestore client: an async (tokio) library and the `storectl` command-line tool.
//!
//! A [`Client`] holds one QUIC connection (mutual TLS against the cluster CA) to a node of the cluster and
//! sends every request on its own bidirectional stream, as one frame of the core's wire protocol
//! ([`featurestore::codec`]). Clones share the connection, so one client serves a whole application.
//!
//! - Reads: [`Client::get`], [`Client::get_many`] (optionally projected to some features).
//! - Writes: [`Client::put`] / [`Client::put_with`] (gauges, last-writer-wins, TTL, event time),
//!   [`Client::increment`] (counters), [`Client::set_flag`] (flags with a causal context),
//!   [`Client::erase`] (right to be forgotten).
//! - Operations: [`Client::status`], and [`Client::request`] for any [`Request`].
//!
//! Errors are one typed enum, [`Error`]; error replies of a node carry a stable [`ErrorCode`]
//! ([`Error::server_code`]). If the connection closes (e.g. the node restarted), the next request
//! reconnects; reads are retried once, writes never (see [`client`]).
//!
//! # Example
//!
//! ```no_run
//! use store_client::{CausalContext, Client, ClientConfig, FeatureView, Value};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), store_client::Error> {
//!     // ca_cert, cert, key and [[nodes]]; relative paths are relative to the file.
//!     let client = Client::connect(ClientConfig::load("client.toml")?).await?;
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
//!     if let Some(profile) = client.get("user-42", None).await? {
//!         if let Some(FeatureView::Gauge { value, version, .. }) = profile.features.get("cart_value") {
//!             println!("cart_value = {value} (version {version})");
//!         }
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
pub mod config;
pub mod error;
pub mod tls;

pub use client::Client;
pub use config::{ClientConfig, NodeAddr};
pub use error::{ConnectAttempt, Error, Result};

pub use featurestore::protocol::{GaugeWrite, NodeStatus, PutAck};
pub use featurestore::{
    CausalContext, ErrorCode, FeatureView, FlagView, Marker, ProfileView, Request, Response, Value,
};
