//! Messages between nodes (the peer ALPN). One message travels per unidirectional QUIC stream as one
//! frame ([`codec`](crate::wire::codec)); the protocol they carry is [`replication`](crate::replication).
//!
//! Compatibility: variants are only ever appended, never reordered, within a protocol version.

use bincode::{Decode, Encode};

use crate::cluster::membership::MembershipTable;
use crate::profile::Profile;
use crate::wire::event::{EventOutcome, WireEvent};
use crate::wire::segment::Catalog;

/// Messages between nodes.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum PeerMessage {
    /// The sender's membership table (also a heartbeat).
    Gossip {
        /// The table.
        table: MembershipTable,
    },
    /// The sender's whole state of one key; merge it and acknowledge.
    Replicate {
        /// Send sequence number, echoed in the ack.
        seq: u64,
        /// The key.
        key: String,
        /// Its state.
        state: Profile,
    },
    /// `Replicate` with this `seq` was merged (and made durable per the receiver's policy).
    ReplicateAck {
        /// The acknowledged send.
        seq: u64,
        /// The key.
        key: String,
    },
    /// Anti-entropy, step 1: digests of the keys both sides replicate, one per bucket.
    AeDigest {
        /// Digest per bucket.
        buckets: Vec<u64>,
    },
    /// Anti-entropy, step 2: the responder's `(key, state hash)` entries in the buckets that differ.
    AeEntries {
        /// The buckets that differ.
        buckets: Vec<u32>,
        /// The responder's entries in them.
        entries: Vec<(String, u64)>,
    },
    /// Anti-entropy, step 3: send me your state of these keys.
    AePull {
        /// The keys.
        keys: Vec<String>,
    },
    /// Join handoff: the sender has pushed every key the joiner gains from it.
    HandoffDone,
    /// A coordinator reads this replica's state of a key (R > 1, or a read on a non-replica).
    ReadState {
        /// Request id, echoed in the reply.
        req: u64,
        /// The key.
        key: String,
    },
    /// Answer to `ReadState`.
    ReadStateReply {
        /// The request id.
        req: u64,
        /// The replica's state, if it has one.
        state: Option<Profile>,
    },
    /// Events forwarded to their users' owner (this node): apply them in order and answer.
    ForwardEvents {
        /// Request id, echoed in the reply.
        req: u64,
        /// The events, in arrival order.
        events: Vec<WireEvent>,
        /// The sender's wall-clock instant (Unix ms) after which the owner must not begin to apply them:
        /// the sender stops waiting (and its client retries elsewhere) some time after it, so an event
        /// begun later could be applied twice. Set well inside the sender's own timeout, so clock skew
        /// within the cluster's bound does not matter.
        deadline_ms: u64,
        /// When the sender accepted the events from their client (Unix µs, its clock), for the
        /// event-to-segment-change latency.
        accepted_us: u64,
    },
    /// Answer to `ForwardEvents`: one outcome per event, in order.
    ForwardReply {
        /// The request id.
        req: u64,
        /// The outcomes.
        outcomes: Vec<EventOutcome>,
    },
    /// The sender's runtime segment catalog, by version and digest: a receiver holding a larger one
    /// answers with `SegmentCatalog`, one holding a smaller one answers with its own digest (and so is
    /// sent the catalog).
    CatalogDigest {
        /// The catalog's version.
        version: u64,
        /// Its digest.
        digest: u64,
    },
    /// A runtime segment catalog: the receiver keeps it if it is larger than its own.
    SegmentCatalog {
        /// The catalog.
        catalog: Catalog,
    },
}
