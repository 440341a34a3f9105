//! Hybrid logical clocks and the `(hlc, node)` markers that order last-writer-wins values.
//!
//! Guarantees:
//! - [`Clock::tick`] returns strictly increasing timestamps on one node, even if the physical clock stalls or
//!   goes backwards (the logical counter takes over; on counter overflow the wall part is bumped by 1 ms).
//! - [`Clock::observe`] advances the clock past any timestamp received, so a write that causally follows
//!   another always gets a larger timestamp, across nodes.
//! - A remote timestamp more than `max_skew_ms` ahead of the local physical clock is refused with
//!   [`Error::ClockSkew`] instead of dragging the cluster's clocks into the future.
//! - [`Marker`]s are `(timestamp, node)` and totally ordered, so two writes with equal timestamps still merge
//!   deterministically (the node id breaks the tie).
//!
//! The clock never reads the system time itself: the caller passes `now_ms` (sans-IO).
//!
//! Caveat: timestamps are ordered by the HLC, not by real time. With clock skew below `max_skew_ms` a write
//! that happened later in real time can still lose to an earlier one from a node whose clock runs ahead;
//! that is the documented price of LWW.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::compact::{NodeName, MAX_NODE_NAMES};
use crate::error::{truncate_for_error, Error, Result};

/// The identity of a node: 1 to 63 characters of `[a-z0-9-]`, the same name its certificate carries.
///
/// Held as a 4-byte index into the process-wide table of node names ([`NodeName`]): every marker, dot
/// and actor of one node shares one copy of its name, and a [`Marker`] is 16 bytes. Equality is the
/// index's; order and hash are the text's (the index is process-local), so merges and encodings are
/// the same in every process.
///
/// Parsed, not trusted: every way in (`new`, serde `Deserialize` from TOML or JSON, bincode `Decode` from a
/// peer or the disk) validates, so a `NodeId` value is always well-formed. It encodes as its text.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeId(NodeName);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeId").field(&self.as_str()).finish()
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.0 == other.0 {
            std::cmp::Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        NodeId::new(text).map_err(serde::de::Error::custom)
    }
}

impl Encode for NodeId {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // Exactly as a `String` encodes (length, then the bytes), or, inside a stored record, the
        // node's number there (`crate::compact::stored_names`).
        crate::compact::stored_names::encode_node(self.0, encoder)
    }
}

impl<C> Decode<C> for NodeId {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        // A numbered name was validated when its table was restored.
        if let Some(node) = crate::compact::stored_names::decode_node(decoder)? {
            return Ok(NodeId(node));
        }
        let text = String::decode(decoder)?;
        NodeId::decoded(&text)
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for NodeId {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        if let Some(node) = crate::compact::stored_names::decode_node(decoder)? {
            return Ok(NodeId(node));
        }
        // Borrowed from the input: no `String` per marker (a record holds one marker per feature).
        let text = <&str as bincode::BorrowDecode<'de, C>>::borrow_decode(decoder)?;
        NodeId::decoded(text)
    }
}

impl NodeId {
    /// [`NodeId::new`] of a decoded text, its error as bincode's.
    fn decoded(text: &str) -> Result<Self, bincode::error::DecodeError> {
        NodeId::new(text).map_err(|e| bincode::error::DecodeError::OtherString(e.to_string()))
    }

    /// Validates and wraps a node id. Fails on a malformed id ([`Error::InvalidNodeId`]) and, for a
    /// name this process has not seen, once the process holds [`MAX_NODE_NAMES`] node names
    /// ([`Error::TooManyNodeIds`]).
    pub fn new(id: impl AsRef<str>) -> Result<Self> {
        let id = id.as_ref();
        if !NodeId::is_valid(id) {
            return Err(Error::InvalidNodeId {
                id: truncate_for_error(id),
            });
        }
        NodeName::intern(id)
            .map(NodeId)
            .ok_or_else(|| Error::TooManyNodeIds {
                id: truncate_for_error(id),
                limit: MAX_NODE_NAMES,
            })
    }

    /// Whether `id` is a well-formed node id (what [`NodeId::new`] accepts): 1 to 63 lowercase ASCII
    /// letters, digits and `-`, not starting or ending with `-`.
    pub fn is_valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 63
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-')
    }

    /// The id as text (the process-wide table's copy).
    pub fn as_str(&self) -> &'static str {
        self.0.as_str()
    }

    /// The id's entry in the process-wide table of node names (what a
    /// [`StoredNames`](crate::compact::StoredNames) numbers).
    pub fn name(&self) -> NodeName {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The actor of counter slots, window slots and flag dots: one node in one *incarnation* of its data.
///
/// A node that loses its data (a wiped disk, or a crash that may have lost writes it already sent to its
/// peers) and comes back under its name must not reissue a slot or a dot that the other replicas already
/// hold: its new increments would be merged away by the old slot's higher count, and its new dots taken
/// as already seen. So the actor is the node *and* a random 64-bit incarnation drawn whenever the node
/// cannot prove its data is whole (see [`incarnation_after`]); an actor never continues another's slots.
///
/// Incarnation 0 is the *legacy* actor: the one that records and peers from before incarnations carried
/// (the node id alone). Text form: the node id alone for incarnation 0, else `<node>.<incarnation in hex>`,
/// e.g. `n1.9f3a0c12d4e5b6a7` (node ids have no `.`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    /// The node.
    pub node: NodeId,
    /// The incarnation of its data (0: legacy, from before incarnations).
    pub incarnation: u64,
}

thread_local! {
    /// Set while decoding a record of a format from before incarnations: actors then decode as the node id
    /// alone, with incarnation 0 (see [`decoding_legacy_actors`]).
    static LEGACY_ACTORS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `decode` with actors read in the legacy format (the node id alone, incarnation 0): the codec uses
/// it for stored records written before incarnations, so one set of types reads both formats. (Encoding
/// inside it writes the legacy format too, for the upgrade tests; an actor of a real incarnation then
/// fails to encode rather than lose its incarnation.)
pub fn decoding_legacy_actors<T>(decode: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            LEGACY_ACTORS.with(|l| l.set(self.0));
        }
    }
    let _reset = Reset(LEGACY_ACTORS.with(|l| l.replace(true)));
    decode()
}

impl Actor {
    /// The actor of `node` in `incarnation`.
    pub fn new(node: NodeId, incarnation: u64) -> Self {
        Actor { node, incarnation }
    }

    /// The legacy actor of `node` (incarnation 0), as records from before incarnations name it.
    pub fn legacy(node: NodeId) -> Self {
        Actor::new(node, 0)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.incarnation == 0 {
            write!(f, "{}", self.node)
        } else {
            write!(f, "{}.{:x}", self.node, self.incarnation)
        }
    }
}

impl std::str::FromStr for Actor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidNodeId {
            id: truncate_for_error(text),
        };
        match text.split_once('.') {
            None => Ok(Actor::legacy(NodeId::new(text)?)),
            Some((node, hex)) => {
                // The canonical form only (lowercase hex, no sign, no leading zero), so that one actor has
                // one text.
                let canonical = !hex.starts_with('0')
                    && hex.len() <= 16
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                let incarnation = u64::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| canonical)
                    .ok_or_else(invalid)?;
                Ok(Actor::new(NodeId::new(node)?, incarnation))
            }
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Encode for Actor {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.node.encode(encoder)?;
        if LEGACY_ACTORS.with(std::cell::Cell::get) {
            if self.incarnation != 0 {
                return Err(bincode::error::EncodeError::OtherString(format!(
                    "actor {self} has no legacy form"
                )));
            }
            return Ok(());
        }
        self.incarnation.encode(encoder)
    }
}

impl Actor {
    /// The rest of a decoded actor once its node id is read: the incarnation, or none for a record
    /// written before incarnations (see [`decoding_legacy_actors`]).
    fn decode_after_node<D: bincode::de::Decoder>(
        node: NodeId,
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        if LEGACY_ACTORS.with(std::cell::Cell::get) {
            return Ok(Actor::legacy(node));
        }
        Ok(Actor::new(node, u64::decode(decoder)?))
    }
}

impl<C> Decode<C> for Actor {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let node = NodeId::decode(decoder)?;
        Actor::decode_after_node(node, decoder)
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for Actor {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        // As `decode`, with the node id borrowed from the input.
        let node = <NodeId as bincode::BorrowDecode<'de, C>>::borrow_decode(decoder)?;
        Actor::decode_after_node(node, decoder)
    }
}

/// What a node's data directory says of the incarnation it last ran as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct StoredIncarnation {
    /// The incarnation.
    pub incarnation: u64,
    /// Whether the node then shut down cleanly (every write it had applied was flushed).
    pub clean: bool,
}

/// The incarnation a node starting on a data directory that says `previous` runs as: the previous one only
/// if it shut down cleanly (its data is whole, so its slots and dots continue where its peers last saw
/// them); otherwise — a new or wiped directory, or a crash that may have lost writes already replicated
/// — the fresh nonzero random `fresh`. The caller stores `{incarnation, clean: false}` durably before it
/// applies any write, and `clean: true` after its final flush.
pub fn incarnation_after(previous: Option<StoredIncarnation>, fresh: u64) -> u64 {
    #[cfg(test)]
    if crate::knobs::active(crate::knobs::Bug::KeepIncarnation) {
        return 0;
    }
    match previous {
        Some(p) if p.clean && p.incarnation != 0 => p.incarnation,
        _ => fresh.max(1),
    }
}

/// A hybrid logical clock reading: physical milliseconds since the Unix epoch plus a logical counter.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Decode,
)]
// Packed to 4-byte alignment: 12 bytes instead of 16, so a `Marker` (this and a 4-byte `NodeId`) is 16
// bytes, not 24. The fields are only ever copied out (never borrowed), which packing requires.
#[repr(C, packed(4))]
pub struct Timestamp {
    /// Physical part: milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical part: orders events within one millisecond.
    pub logical: u32,
}

impl Timestamp {
    /// A timestamp with only a physical part.
    pub const fn from_millis(wall_ms: u64) -> Self {
        Timestamp {
            wall_ms,
            logical: 0,
        }
    }
}

impl Encode for Timestamp {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // As the derive encoded it before packing: the fields in order (copied out: packed fields
        // cannot be borrowed).
        let (wall_ms, logical) = (self.wall_ms, self.logical);
        wall_ms.encode(encoder)?;
        logical.encode(encoder)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (wall_ms, logical) = (self.wall_ms, self.logical);
        write!(f, "{wall_ms}.{logical}")
    }
}

/// The version of a last-writer-wins value: `(timestamp, node)`, ordered by timestamp and then node id.
///
/// Text form (JSON, logs): `<wall_ms>.<logical>@<node>`, e.g. `1795308764111.0@n1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Marker {
    /// When the write was stamped.
    pub ts: Timestamp,
    /// The node that stamped it.
    pub node: NodeId,
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.ts, self.node)
    }
}

impl std::str::FromStr for Marker {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidMarker {
            text: truncate_for_error(text),
        };
        let (ts, node) = text.split_once('@').ok_or_else(invalid)?;
        let (wall, logical) = ts.split_once('.').ok_or_else(invalid)?;
        Ok(Marker {
            ts: Timestamp {
                wall_ms: wall.parse().map_err(|_| invalid())?,
                logical: logical.parse().map_err(|_| invalid())?,
            },
            node: NodeId::new(node).map_err(|_| invalid())?,
        })
    }
}

impl Serialize for Marker {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Marker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One node's hybrid logical clock.
#[derive(Debug, Clone)]
pub struct Clock {
    actor: Actor,
    last: Timestamp,
    max_skew_ms: u64,
}

impl Clock {
    /// A clock for `node` (as its legacy actor, incarnation 0: tests and tools) that refuses remote
    /// timestamps more than `max_skew_ms` ahead.
    pub fn new(node: NodeId, max_skew_ms: u64) -> Self {
        Clock::for_actor(Actor::legacy(node), max_skew_ms)
    }

    /// A clock for `actor` (a node in one incarnation) that refuses remote timestamps more than
    /// `max_skew_ms` ahead.
    pub fn for_actor(actor: Actor, max_skew_ms: u64) -> Self {
        Clock {
            actor,
            last: Timestamp::default(),
            max_skew_ms,
        }
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> &NodeId {
        &self.actor.node
    }

    /// The actor this clock's node writes counter slots, window slots and flag dots as.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// Issues a timestamp for a local event, strictly greater than every earlier one.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        let next = if now_ms > self.last.wall_ms {
            Timestamp::from_millis(now_ms)
        } else {
            bump(self.last)
        };
        self.last = next;
        next
    }

    /// Issues a marker for a local write.
    pub fn stamp(&mut self, now_ms: u64) -> Marker {
        Marker {
            ts: self.tick(now_ms),
            node: self.actor.node.clone(),
        }
    }

    /// Checks that `remote` is not more than `max_skew_ms` ahead of `now_ms`.
    pub fn check_skew(&self, remote: Timestamp, now_ms: u64) -> Result<()> {
        let ahead = remote.wall_ms.saturating_sub(now_ms);
        if ahead > self.max_skew_ms {
            return Err(Error::ClockSkew {
                remote_ms: remote.wall_ms,
                ahead_ms: ahead,
                max_ms: self.max_skew_ms,
            });
        }
        Ok(())
    }

    /// Receives a remote timestamp: refuses it if too far ahead, otherwise advances the clock past it and
    /// returns the new local timestamp (greater than both the remote one and every earlier local one).
    pub fn observe(&mut self, remote: Timestamp, now_ms: u64) -> Result<Timestamp> {
        self.check_skew(remote, now_ms)?;
        let wall = now_ms.max(self.last.wall_ms).max(remote.wall_ms);
        let next = if wall == self.last.wall_ms && wall == remote.wall_ms {
            bump(Timestamp {
                wall_ms: wall,
                logical: self.last.logical.max(remote.logical),
            })
        } else if wall == self.last.wall_ms {
            bump(self.last)
        } else if wall == remote.wall_ms {
            bump(remote)
        } else {
            Timestamp::from_millis(wall)
        };
        self.last = next;
        Ok(next)
    }

    /// Moves the clock to at least `ts` without a skew check: used when recovering the node's own
    /// persisted data at startup, so timestamps never go backwards across restarts.
    pub fn recover(&mut self, ts: Timestamp) {
        if ts > self.last {
            self.last = ts;
        }
    }
}

/// The next timestamp after `ts`: logical + 1, or the next millisecond if the counter is exhausted.
fn bump(ts: Timestamp) -> Timestamp {
    match ts.logical.checked_add(1) {
        Some(logical) => Timestamp {
            wall_ms: ts.wall_ms,
            logical,
        },
        None => Timestamp::from_millis(ts.wall_ms.saturating_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).expect("valid node id")
    }

    /// What the node-name table and the packed timestamp buy: a marker in 16 bytes.
    #[test]
    fn a_marker_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<NodeId>(), 4);
        assert_eq!(std::mem::size_of::<Timestamp>(), 12);
        assert_eq!(std::mem::size_of::<Marker>(), 16);
        assert_eq!(std::mem::size_of::<Option<Marker>>(), 20);
    }

    /// Node ids order by their text, whatever order this process met them in (the table's indices
    /// follow that order, so ordering by index would differ between processes and change merges).
    #[test]
    fn node_ids_order_and_hash_by_text_not_by_table_index() {
        let late = node("zz-order-met-first");
        let early = node("aa-order-met-second");
        assert!(early < late);
        assert_eq!(early.cmp(&early.clone()), std::cmp::Ordering::Equal);
        let hash = |id: &NodeId| {
            use std::hash::{BuildHasher, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
        };
        let text_hash = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one("zz-order-met-first")
        };
        assert_eq!(hash(&late), text_hash);
        // A marker tie on the timestamp falls to the text.
        let ts = Timestamp::from_millis(7);
        assert!(
            Marker {
                ts,
                node: early.clone()
            } < Marker { ts, node: late }
        );
        assert_eq!(format!("{early:?}"), "NodeId(\"aa-order-met-second\")");
    }

    /// The packed timestamp encodes as the derived one did: the wall part, then the logical part.
    #[test]
    fn a_timestamp_encodes_as_its_two_fields() {
        let config = bincode::config::standard();
        let ts = Timestamp {
            wall_ms: 1_795_308_764_111,
            logical: 3,
        };
        let fields = bincode::encode_to_vec((1_795_308_764_111u64, 3u32), config).expect("encode");
        assert_eq!(bincode::encode_to_vec(ts, config).expect("encode"), fields);
        let (back, _): (Timestamp, usize) =
            bincode::decode_from_slice(&fields, config).expect("decode");
        assert_eq!(back, ts);
    }

    /// Actors print and parse as one text each; non-canonical or malformed texts are refused.
    #[test]
    fn actors_round_trip_through_text_and_bincode() {
        for actor in [
            Actor::legacy(node("n1")),
            Actor::new(node("n1"), 1),
            Actor::new(node("store-7"), u64::MAX),
        ] {
            let text = actor.to_string();
            assert_eq!(text.parse::<Actor>().expect("parses"), actor, "{text}");
            let bytes =
                bincode::encode_to_vec(&actor, bincode::config::standard()).expect("encodes");
            let (back, _): (Actor, usize) =
                bincode::decode_from_slice(&bytes, bincode::config::standard()).expect("decodes");
            assert_eq!(back, actor);
        }
        assert_eq!(Actor::new(node("n1"), 0x9f).to_string(), "n1.9f");
        for bad in [
            "n1.",
            "n1.0",
            "n1.09",
            "n1.+9",
            "n1.9F",
            "n1.10000000000000000",
            ".9",
            "N1.9",
        ] {
            assert!(bad.parse::<Actor>().is_err(), "{bad}");
        }
    }

    /// Records from before incarnations hold the node id alone; read in legacy mode they are the node's
    /// incarnation-0 actor, and the mode ends with the closure.
    #[test]
    fn legacy_actors_decode_as_incarnation_zero() {
        let bytes =
            bincode::encode_to_vec(node("n2"), bincode::config::standard()).expect("encodes");
        let (actor, _): (Actor, usize) = decoding_legacy_actors(|| {
            bincode::decode_from_slice(&bytes, bincode::config::standard())
        })
        .expect("decodes");
        assert_eq!(actor, Actor::legacy(node("n2")));
        // Outside the mode the same bytes are a truncated actor.
        let outside: Result<(Actor, usize), _> =
            bincode::decode_from_slice(&bytes, bincode::config::standard());
        assert!(outside.is_err());
    }

    /// Only a clean shutdown keeps the incarnation; anything else starts a new, nonzero one.
    #[test]
    fn only_a_clean_shutdown_keeps_the_incarnation() {
        let was = |clean| {
            Some(StoredIncarnation {
                incarnation: 7,
                clean,
            })
        };
        assert_eq!(incarnation_after(was(true), 9), 7);
        assert_eq!(incarnation_after(was(false), 9), 9);
        assert_eq!(incarnation_after(None, 9), 9);
        assert_eq!(incarnation_after(None, 0), 1, "0 is the legacy actor");
        let legacy = Some(StoredIncarnation {
            incarnation: 0,
            clean: true,
        });
        assert_eq!(incarnation_after(legacy, 5), 5);
    }

    #[test]
    fn tick_is_strictly_monotonic_when_the_wall_clock_stalls_or_goes_back() {
        let mut c = Clock::new(node("n1"), 1000);
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(50);
        assert!(a < b && b < d);
        assert_eq!({ d.wall_ms }, 100);
    }

    #[test]
    fn logical_overflow_moves_to_the_next_millisecond() {
        let mut c = Clock::new(node("n1"), 1000);
        c.recover(Timestamp {
            wall_ms: 7,
            logical: u32::MAX,
        });
        assert_eq!(c.tick(0), Timestamp::from_millis(8));
    }

    #[test]
    fn observe_advances_past_remote_and_refuses_far_future() {
        let mut c = Clock::new(node("n1"), 500);
        let remote = Timestamp {
            wall_ms: 1_400,
            logical: 3,
        };
        let t = c.observe(remote, 1_000).expect("within skew");
        assert!(t > remote);
        assert!(c.tick(1_000) > t);
        let err = c.observe(Timestamp::from_millis(1_501), 1_000);
        assert!(matches!(err, Err(Error::ClockSkew { ahead_ms: 501, .. })));
        // A refused timestamp does not move the clock.
        assert!(c.last() < Timestamp::from_millis(1_501));
    }

    #[test]
    fn markers_break_timestamp_ties_by_node() {
        let ts = Timestamp::from_millis(5);
        let a = Marker {
            ts,
            node: node("a"),
        };
        let b = Marker {
            ts,
            node: node("b"),
        };
        assert!(a < b);
    }

    #[test]
    fn markers_have_a_text_form() {
        let m = Marker {
            ts: Timestamp {
                wall_ms: 1_795_308_764_111,
                logical: 3,
            },
            node: node("n1"),
        };
        assert_eq!(m.to_string(), "1795308764111.3@n1");
        assert_eq!("1795308764111.3@n1".parse::<Marker>(), Ok(m));
        for bad in ["", "1@n1", "1.2", "x.1@n1", "1.2@N1"] {
            assert!(bad.parse::<Marker>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_ids_are_validated() {
        assert!(NodeId::new("n1").is_ok());
        for bad in ["", "N1", "a b", "-a", "a-", &"a".repeat(64)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        /// Any interleaving of local ticks and observed remote timestamps yields strictly increasing
        /// timestamps, each above every remote timestamp observed.
        #[test]
        fn hlc_is_monotonic_and_causal(events in proptest::collection::vec((any::<bool>(), 0u64..2_000, 0u64..2_000, 0u32..3), 1..200)) {
            let mut c = Clock::new(node("n1"), 10_000);
            let mut prev = Timestamp::default();
            for (is_remote, now, remote_wall, remote_logical) in events {
                let t = if is_remote {
                    let r = Timestamp { wall_ms: remote_wall, logical: remote_logical };
                    let t = c.observe(r, now).expect("within skew");
                    prop_assert!(t > r);
                    t
                } else {
                    c.tick(now)
                };
                prop_assert!(t > prev);
                prop_assert!(t.wall_ms >= now);
                prev = t;
            }
        }
    }
}
