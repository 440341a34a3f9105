//! `flag` features: multi-value registers with dotted version vectors (DVV).
//!
//! A flag holds a *clock* (a version vector of everything the register has seen) and a set of *siblings*,
//! each tagged with the unique *dot* `(node, counter)` of the write that created it.
//!
//! Guarantees:
//! - A write carries the causal context of the read it is based on. It removes exactly the siblings whose
//!   dots that context covers and adds itself with a fresh dot from the coordinating node. So two writes
//!   that did not see each other both survive as siblings **even when the same node coordinated both**
//!   (each gets its own dot; a node-actor vector clock without dots would wrongly let the second replace the
//!   first), and a write whose context covers all siblings replaces them.
//! - Merge keeps a sibling if the other side holds it too or has not seen its dot; a sibling the other side
//!   has seen and dropped is dominated and never comes back. Commutative, associative, idempotent
//!   (property-tested in `profile`).
//! - A local write that would leave more than `max_siblings` siblings is refused with
//!   [`Error::TooManySiblings`](crate::Error::TooManySiblings); a write whose context covers the siblings
//!   always fits. Merges never drop siblings to enforce the bound (that would lose data and break the lattice),
//!   so after concurrent writes on several replicas a flag can briefly hold up to `max_siblings` per replica.
//! - Erasure drops siblings stamped at or below the watermark; expiry drops expired siblings. Both keep the
//!   clock, so the dropped siblings are dominated everywhere they still exist.
//!
//! Dots are `(actor, counter)` where the actor is the node *in one incarnation of its data*
//! ([`Actor`]): a node that lost its disk, or crashed and may have lost writes its peers already hold,
//! restarts as a new actor, so it never reissues a dot the replicas hold (which they would take as already
//! seen and drop). Caveat: the clock keeps one entry per actor that ever wrote the flag, so it grows by one
//! entry per unclean restart of a node that then writes it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use crdts::{CmRDT, CvRDT, VClock};
use serde::{Deserialize, Serialize};

use crate::crdt::{Feature, FeatureKind, Lattice};
use crate::error::{truncate_for_error, Error, Result};
use crate::hlc::{Actor, Marker, Timestamp};

/// A causal context: the version vector a client got from a read and sends back with its next flag write.
///
/// Text form (used by `storectl --context`): `node:counter` pairs joined by commas, e.g. `n1:3,n2:1`; the
/// empty string is the empty context.
///
/// It is trusted: a context naming writes that never happened would hide them when they do, so only
/// authenticated clients (mutual TLS) may send one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalContext(pub VClock<Actor>);

impl Serialize for CausalContext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CausalContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let token = String::deserialize(d)?;
        token.parse().map_err(serde::de::Error::custom)
    }
}

impl CausalContext {
    /// Whether this context has seen the write identified by `dot`.
    pub fn covers(&self, dot: &FlagDot) -> bool {
        self.0.get(&dot.actor) >= dot.counter
    }

    /// Whether the context is empty (has seen nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Encode for CausalContext {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.dots.encode(encoder)
    }
}

impl<C> Decode<C> for CausalContext {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let dots = BTreeMap::<Actor, u64>::decode(decoder)?;
        Ok(CausalContext(VClock { dots }))
    }
}

impl<'de, C> BorrowDecode<'de, C> for CausalContext {
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

impl fmt::Display for CausalContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (actor, counter) in &self.0.dots {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{actor}:{counter}")?;
        }
        Ok(())
    }
}

impl FromStr for CausalContext {
    type Err = Error;

    fn from_str(token: &str) -> Result<Self> {
        let invalid = || Error::InvalidContext {
            token: truncate_for_error(token),
        };
        let mut clock = VClock::new();
        for pair in token.split(',').filter(|p| !p.is_empty()) {
            let (actor, counter) = pair.split_once(':').ok_or_else(invalid)?;
            let actor: Actor = actor.parse().map_err(|_| invalid())?;
            let counter: u64 = counter.parse().map_err(|_| invalid())?;
            clock.apply(crdts::Dot::new(actor, counter));
        }
        Ok(CausalContext(clock))
    }
}

/// The unique id of one flag write: the coordinating node's actor (node and incarnation) and its per-flag
/// counter.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
pub struct FlagDot {
    /// The actor that coordinated the write.
    pub actor: Actor,
    /// Its counter for this flag.
    pub counter: u64,
}

/// One concurrent value of a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FlagSibling {
    /// The write that created it.
    pub dot: FlagDot,
    /// When it was written (used for erasure and display; never for conflict resolution).
    pub marker: Marker,
    /// The flag value.
    pub value: bool,
    /// Wall-clock milliseconds at which it expires, if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

impl FlagSibling {
    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Deterministic choice between two siblings carrying the same dot (only possible for corrupt or
    /// hand-made states; real writes have unique dots).
    fn max_of(a: &FlagSibling, b: &FlagSibling) -> FlagSibling {
        let key = |s: &FlagSibling| (s.marker.clone(), s.value, s.expires_at_ms);
        if key(b) > key(a) {
            b.clone()
        } else {
            a.clone()
        }
    }
}

/// A multi-value register with dotted version vectors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FlagRegister {
    /// Everything this register has seen.
    pub clock: CausalContext,
    /// The current concurrent values, sorted by dot.
    pub siblings: Vec<FlagSibling>,
}

/// What a flag write is: the value, the context it was based on, and its stamp.
#[derive(Debug, Clone)]
pub struct FlagWrite<'a> {
    /// The flag's name (for errors).
    pub name: &'a str,
    /// The new value.
    pub value: bool,
    /// The causal context of the read this write is based on.
    pub context: &'a CausalContext,
    /// The marker the coordinator stamped.
    pub marker: Marker,
    /// The coordinator's actor, whose next dot the write gets.
    pub actor: Actor,
    /// Expiry, if the write has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The sibling bound.
    pub max_siblings: usize,
}

impl FlagRegister {
    /// Applies a local write coordinated by `write.actor`: drops the siblings its context covers and
    /// adds the new value with a fresh dot. Refuses (changing nothing) if too many siblings would remain.
    pub fn write(&mut self, write: FlagWrite<'_>) -> Result<()> {
        let survivors = self
            .siblings
            .iter()
            .filter(|s| !write.context.covers(&s.dot))
            .count();
        let count = survivors + 1;
        if count > write.max_siblings {
            return Err(Error::TooManySiblings {
                name: truncate_for_error(write.name),
                count,
                max: write.max_siblings,
            });
        }
        let dot = self.clock.0.inc(write.actor.clone());
        self.clock.0.apply(dot.clone());
        // The client's context may name writes this replica has not received yet: fold it into the clock
        // so that, when they arrive, they are recognised as seen (and dropped) rather than resurrected.
        self.clock.0.merge(write.context.0.clone());
        self.siblings.retain(|s| !write.context.covers(&s.dot));
        self.siblings.push(FlagSibling {
            dot: FlagDot {
                actor: dot.actor,
                counter: dot.counter,
            },
            marker: write.marker,
            value: write.value,
            expires_at_ms: write.expires_at_ms,
        });
        self.siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        Ok(())
    }

    /// The siblings visible at `now_ms`.
    pub fn visible(&self, now_ms: u64) -> impl Iterator<Item = &FlagSibling> {
        self.siblings.iter().filter(move |s| !s.is_expired(now_ms))
    }
}

impl Feature for FlagRegister {
    const KIND: FeatureKind = FeatureKind::Flag;
}

impl Lattice for FlagRegister {
    fn merge(&mut self, other: &FlagRegister) -> bool {
        let before = self.clone();
        let mut by_dot: BTreeMap<FlagDot, FlagSibling> = BTreeMap::new();
        for ours in &self.siblings {
            let theirs = other.siblings.iter().find(|t| t.dot == ours.dot);
            match theirs {
                Some(t) => {
                    by_dot.insert(ours.dot.clone(), FlagSibling::max_of(ours, t));
                }
                None if !other.clock.covers(&ours.dot) => {
                    by_dot.insert(ours.dot.clone(), ours.clone());
                }
                None => {}
            }
        }
        for theirs in &other.siblings {
            let held = self.siblings.iter().any(|o| o.dot == theirs.dot);
            if !held && !self.clock.covers(&theirs.dot) {
                by_dot.insert(theirs.dot.clone(), theirs.clone());
            }
        }
        self.siblings = by_dot.into_values().collect();
        self.clock.0.merge(other.clock.0.clone());
        *self != before
    }

    /// Drops siblings stamped at or below `watermark`. The register itself is kept: its clock keeps the
    /// dropped dots dominated, so no replica can bring them back and this node never reissues them.
    fn retain_above(&mut self, watermark: &Marker) -> bool {
        self.siblings.retain(|s| s.marker > *watermark);
        true
    }

    fn has_expired(&self, now_ms: u64) -> bool {
        self.siblings.iter().any(|s| s.is_expired(now_ms))
    }

    /// Drops expired siblings.
    fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.siblings.len();
        self.siblings.retain(|s| !s.is_expired(now_ms));
        self.siblings.len() != before
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        self.siblings.iter().map(|s| s.marker.ts).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;

    fn marker(node: &str, ms: u64) -> Marker {
        Marker {
            ts: Timestamp::from_millis(ms),
            node: crate::hlc::NodeId::new(node).expect("valid"),
        }
    }

    fn write(
        reg: &mut FlagRegister,
        node: &str,
        ms: u64,
        value: bool,
        ctx: &CausalContext,
    ) -> Result<()> {
        reg.write(FlagWrite {
            name: "f",
            value,
            context: ctx,
            marker: marker(node, ms),
            actor: node.parse().expect("valid"),
            expires_at_ms: None,
            max_siblings: 8,
        })
    }

    fn values(reg: &FlagRegister) -> Vec<bool> {
        reg.visible(0).map(|s| s.value).collect()
    }

    #[test]
    fn two_stale_writes_through_the_same_node_become_siblings() {
        let mut reg = FlagRegister::default();
        let empty = CausalContext::default();
        write(&mut reg, "n1", 1, true, &empty).expect("fits");
        let stale = reg.clock.clone();
        write(&mut reg, "n1", 2, false, &stale).expect("fits");
        write(&mut reg, "n1", 3, true, &stale).expect("fits");
        assert_eq!(
            reg.siblings.len(),
            2,
            "both writes based on the same stale read survive"
        );
        // A write with the context returned by a read replaces both.
        let read_ctx = reg.clock.clone();
        write(&mut reg, "n1", 4, false, &read_ctx).expect("fits");
        assert_eq!(values(&reg), vec![false]);
    }

    #[test]
    fn dominated_siblings_do_not_come_back_through_merge() {
        let mut a = FlagRegister::default();
        write(&mut a, "n1", 1, true, &CausalContext::default()).expect("fits");
        let old = a.clone();
        let ctx = a.clock.clone();
        write(&mut a, "n1", 2, false, &ctx).expect("fits");
        let mut b = old;
        b.merge(&a);
        assert_eq!(values(&b), vec![false]);
        a.merge(&b);
        assert_eq!(values(&a), vec![false]);
    }

    /// A node that lost its data restarts as a new actor: its first write after the restart, made on an
    /// empty register, gets a dot the replicas have not seen, so it survives the merge with the replicas'
    /// state (under the old actor the dot `n1:1` would be covered by their clock and dropped).
    #[test]
    fn a_new_incarnation_never_reissues_a_dot() {
        let write_as = |reg: &mut FlagRegister, actor: &str, ms: u64, value: bool| {
            let context = CausalContext::default();
            reg.write(FlagWrite {
                name: "f",
                value,
                context: &context,
                marker: marker("n1", ms),
                actor: actor.parse().expect("valid"),
                expires_at_ms: None,
                max_siblings: 8,
            })
        };
        let mut replica = FlagRegister::default();
        write_as(&mut replica, "n1.a1", 1, true).expect("fits");
        write_as(&mut replica, "n1.a1", 2, true).expect("fits");
        // n1's disk is wiped: it comes back as incarnation b2 with nothing.
        let mut wiped = FlagRegister::default();
        write_as(&mut wiped, "n1.b2", 3, false).expect("fits");
        let mut merged = replica.clone();
        merged.merge(&wiped);
        assert_eq!(
            merged.siblings.len(),
            3,
            "all three writes survive: {merged:?}"
        );
        // The same under one actor reissues `n1.a1:1`: one of the two writes with that dot is lost. This is
        // what incarnations prevent.
        let mut same = FlagRegister::default();
        write_as(&mut same, "n1.a1", 3, false).expect("fits");
        let mut lost = replica.clone();
        lost.merge(&same);
        assert_eq!(lost.siblings.len(), 2, "{lost:?}");
    }

    /// A sibling with a TTL is visible until its expiry instant and gone from it on.
    #[test]
    fn a_sibling_expires_at_its_instant() {
        let mut reg = FlagRegister::default();
        reg.write(FlagWrite {
            name: "f",
            value: true,
            context: &CausalContext::default(),
            marker: marker("n1", 1),
            actor: "n1".parse().expect("valid"),
            expires_at_ms: Some(10),
            max_siblings: 8,
        })
        .expect("fits");
        assert_eq!(reg.visible(9).count(), 1);
        assert_eq!(reg.visible(10).count(), 0);
        assert!(!reg.has_expired(9));
        assert!(reg.has_expired(10));
    }

    /// Erasure drops what is stamped *at* the watermark too, and keeps the clock.
    #[test]
    fn erasure_drops_siblings_at_or_below_the_watermark() {
        let mut reg = FlagRegister::default();
        let empty = CausalContext::default();
        write(&mut reg, "n1", 1, true, &empty).expect("fits");
        write(&mut reg, "n1", 2, false, &empty).expect("fits");
        write(&mut reg, "n1", 3, true, &empty).expect("fits");
        let clock = reg.clock.clone();
        assert!(reg.retain_above(&marker("n1", 2)));
        assert_eq!(values(&reg), vec![true]);
        assert_eq!(reg.siblings[0].marker, marker("n1", 3));
        assert_eq!(reg.clock, clock);
    }

    #[test]
    fn concurrent_writes_on_two_nodes_merge_to_siblings() {
        let mut a = FlagRegister::default();
        let mut b = FlagRegister::default();
        write(&mut a, "n1", 1, true, &CausalContext::default()).expect("fits");
        write(&mut b, "n2", 1, false, &CausalContext::default()).expect("fits");
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a, b);
        assert_eq!(a.siblings.len(), 2);
    }

    #[test]
    fn sibling_bound_refuses_without_changing_state() {
        let mut reg = FlagRegister::default();
        let empty = CausalContext::default();
        for i in 0..8 {
            write(&mut reg, "n1", i, true, &empty).expect("fits");
        }
        let before = reg.clone();
        let err = write(&mut reg, "n1", 9, true, &empty);
        assert!(matches!(
            err,
            Err(Error::TooManySiblings {
                count: 9,
                max: 8,
                ..
            })
        ));
        assert_eq!(reg, before);
        let ctx = reg.clock.clone();
        write(&mut reg, "n1", 10, true, &ctx).expect("a resolving write always fits");
        assert_eq!(reg.siblings.len(), 1);
    }

    /// A context encodes as its dots and decodes back, owned and borrowed (a derived `BorrowDecode` of
    /// any type that holds a flag goes through the borrowed path).
    #[test]
    fn contexts_round_trip_through_bincode() {
        let ctx: CausalContext = "n1:3,n2:1".parse().expect("valid");
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec(&ctx, config).expect("encodes");
        let (owned, _): (CausalContext, usize) =
            bincode::decode_from_slice(&bytes, config).expect("decodes");
        let (borrowed, _): (CausalContext, usize) =
            bincode::borrow_decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!(owned, ctx);
        assert_eq!(borrowed, ctx);
    }

    #[test]
    fn context_tokens_round_trip_and_reject_garbage() {
        let ctx: CausalContext = "n1:3,n2:1".parse().expect("valid");
        assert_eq!(ctx.to_string(), "n1:3,n2:1");
        assert_eq!(
            "".parse::<CausalContext>().expect("empty ok"),
            CausalContext::default()
        );
        for bad in ["n1", "n1:x", "N1:3", "n1:3,,:2"] {
            assert!(bad.parse::<CausalContext>().is_err(), "{bad:?} accepted");
        }
    }
}
