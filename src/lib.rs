//! # featurestore core
//!
//! The I/O-free heart of featurestore: hybrid logical clocks, the CRDT feature kinds and their merges, the
//! per-entity [`Profile`] and the decision of every client write ([`profile::apply`]), the size
//! [`Limits`], placement and membership, the wire protocol with its codec, and the replication protocol.
//!
//! Nothing here reads a clock, draws a random number, touches a file or a socket: time and messages are
//! passed in and decisions come back as values (the sans-IO style of quinn-proto and toydb): what to
//! send, what to persist, and when a write may be acknowledged. That is what lets the node binary be a thin
//! runtime around this crate, and the simulation (`sim`, tests only) drive exactly the same code.
//!
//! Layers, each a folder; imports only point down the list (checked by a test in `layering`):
//! - [`error`], [`compact`], [`hlc`], [`limits`]: the ground floor (the error type imports nothing from the
//!   wire; [`compact`] holds the interned names and small sorted maps profiles are made of).
//! - [`crdt`]: the feature kinds (gauge, counter, flag, window) and the dedup set as lattices behind one
//!   [`crdt::Lattice`] trait.
//! - [`profile`]: one entity's features, one merge, the read view, and [`profile::apply`].
//! - [`ingest`]: behaviour events, feature definitions, and [`ingest::apply_event`].
//! - [`segment`]: segment rules in CEL over a profile's features, their evaluation, the deadlines at which
//!   they flip with no new event, and the change events of entries and exits.
//! - [`cluster`]: the consistent-hash ring, the gossiped membership table, failure detection, placement.
//! - [`wire`]: client and peer messages, frames, stored records and their digests.
//! - [`replication`]: the replication protocol (hints, anti-entropy, handoff) as a state machine.

pub mod cluster;
pub mod compact;
pub mod crdt;
pub mod error;
pub mod hlc;
pub mod ingest;
#[cfg(test)]
mod knobs;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod profile;
pub mod replication;
pub mod segment;
#[cfg(test)]
mod sim;
pub mod wire;

pub use crdt::flag::CausalContext;
pub use crdt::value::Value;
pub use crdt::FeatureKind;
pub use error::{Error, Result};
pub use hlc::{Clock, Marker, NodeId, Timestamp};
pub use limits::Limits;
pub use profile::{FeatureView, FlagView, Profile, ProfileView};
pub use wire::client::{ErrorCode, ErrorReply, Request, Response};
