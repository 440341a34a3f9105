//! # featurestore core
//!
//! The I/O-free heart of featurestore: hybrid logical clocks, the CRDT feature kinds and their merges, the
//! per-entity [`Profile`], the size [`Limits`], and the client wire protocol with its codec.
//!
//! Nothing here reads a clock, draws a random number, touches a file or a socket: time and messages are
//! passed in and decisions come back as values (the sans-IO style of quinn-proto and toydb). That is what
//! lets the node binary be a thin runtime around this crate and the protocol be tested in-process.
//!
//! Modules:
//! - [`hlc`]: hybrid logical clocks and `(hlc, node)` markers.
//! - [`value`], [`gauge`], [`counter`], [`flag`]: feature kinds and their lattices.
//! - [`profile`]: one entity's features, one merge, the read view.
//! - [`limits`]: validated size limits.
//! - [`protocol`], [`codec`]: messages, frames, records.
//! - [`ring`], [`membership`], [`detector`], [`replication`]: the consistent-hash ring, the gossiped
//!   membership table, failure detection, and the replication protocol (hints, anti-entropy, handoff).

pub mod codec;
pub mod counter;
pub mod detector;
pub mod error;
pub mod flag;
pub mod gauge;
pub mod hlc;
pub mod limits;
pub mod membership;
pub mod profile;
pub mod protocol;
pub mod replication;
pub mod ring;
#[cfg(test)]
mod sim;
pub mod value;

pub use error::{Error, Result};
pub use flag::CausalContext;
pub use hlc::{Clock, Marker, NodeId, Timestamp};
pub use limits::Limits;
pub use profile::{FeatureKind, FeatureView, FlagView, Profile, ProfileView};
pub use protocol::{ErrorCode, ErrorReply, Request, Response};
pub use value::Value;
