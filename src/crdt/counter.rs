//! `counter` features: per-node PN counters, so concurrent increments on different nodes all count.
//!
//! Each node that increments a counter owns one *slot* holding its total increments and decrements (two
//! monotonic `u64`s) plus the timestamps of the slot's first and last increment. The value is the sum over
//! slots of `inc - dec`.
//!
//! Guarantees:
//! - Merge is a join: per node, the slot with the later `first` wins (a node starts a fresh slot only after
//!   its old one was erased); slots with the same `first` take the component-wise maximum. Commutative,
//!   associative and idempotent (property-tested in `profile`).
//! - Erasure: a slot whose first increment is at or below the entity's erasure watermark is dropped whole,
//!   on every merge path, so erased counts never come back.
//!
//! Caveats:
//! - An increment that races with an erasure (stamped after the watermark on a node that had not yet seen
//!   the erase) is added to a slot that began before the watermark and is dropped with it: for counters,
//!   erasure wins over concurrent increments. Increments that causally follow the erase are kept.
//! - Counters do not take a TTL (time-bounded counts are the job of window features).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::compact::VecMap;
use crate::crdt::{Feature, FeatureKind, Lattice};
use crate::hlc::{Actor, Marker, Timestamp};

/// One node's contribution to a counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct CounterSlot {
    /// When this node first incremented the counter (since the last erasure it saw).
    pub first: Timestamp,
    /// When it last did.
    pub last: Timestamp,
    /// Sum of positive deltas.
    pub inc: u64,
    /// Sum of the magnitudes of negative deltas.
    pub dec: u64,
}

/// A PN counter made of per-node slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Counter {
    /// Slots by actor (node and incarnation).
    pub slots: VecMap<Actor, CounterSlot>,
}

impl Counter {
    /// The counter's value, saturated to the `i64` range.
    pub fn value(&self) -> i64 {
        let total: i128 = self
            .slots
            .values()
            .map(|s| i128::from(s.inc) - i128::from(s.dec))
            .sum();
        i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
    }

    /// Whether the exact sum over the slots fits an `i64` (beyond it [`Counter::value`] saturates; local
    /// increments that would get there are refused).
    pub fn in_range(&self) -> bool {
        let total: i128 = self
            .slots
            .values()
            .map(|s| i128::from(s.inc) - i128::from(s.dec))
            .sum();
        i64::try_from(total).is_ok()
    }

    /// Applies a local increment by `actor` at `ts`. Returns `None` (and changes nothing) if a slot would
    /// overflow.
    pub fn apply(&mut self, actor: &Actor, delta: i64, ts: Timestamp) -> Option<()> {
        let slot = self.slots.get_or_insert_with(
            actor,
            || actor.clone(),
            || CounterSlot {
                first: ts,
                last: ts,
                inc: 0,
                dec: 0,
            },
        );
        if delta >= 0 {
            slot.inc = slot.inc.checked_add(delta.unsigned_abs())?;
        } else {
            slot.dec = slot.dec.checked_add(delta.unsigned_abs())?;
        }
        slot.last = slot.last.max(ts);
        Some(())
    }
}

impl Feature for Counter {
    const KIND: FeatureKind = FeatureKind::Counter;
}

impl Lattice for Counter {
    fn merge(&mut self, other: &Counter) -> bool {
        let mut changed = false;
        for (node, theirs) in &other.slots {
            match self.slots.get_mut(node) {
                None => {
                    self.slots.insert(node.clone(), theirs.clone());
                    changed = true;
                }
                Some(ours) if theirs.first > ours.first => {
                    *ours = theirs.clone();
                    changed = true;
                }
                Some(ours) if theirs.first == ours.first => {
                    #[allow(unused_mut)]
                    let mut merged = CounterSlot {
                        first: ours.first,
                        last: ours.last.max(theirs.last),
                        inc: ours.inc.max(theirs.inc),
                        dec: ours.dec.max(theirs.dec),
                    };
                    #[cfg(test)]
                    if crate::knobs::active(crate::knobs::Bug::CounterMinMerge) {
                        merged.inc = ours.inc.min(theirs.inc);
                        merged.dec = ours.dec.min(theirs.dec);
                    }
                    if merged != *ours {
                        *ours = merged;
                        changed = true;
                    }
                }
                Some(_) => {}
            }
        }
        changed
    }

    /// Drops every slot that began at or below `watermark`; a counter without slots is dropped.
    fn retain_above(&mut self, watermark: &Marker) -> bool {
        self.slots.retain(|actor, slot| {
            Marker {
                ts: slot.first,
                node: actor.node.clone(),
            } > *watermark
        });
        !self.slots.is_empty()
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        self.slots.values().map(|s| s.last).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(inc: u64, dec: u64) -> CounterSlot {
        CounterSlot {
            first: Timestamp::from_millis(1),
            last: Timestamp::from_millis(1),
            inc,
            dec,
        }
    }

    /// The value saturates to the `i64` range on both sides.
    #[test]
    fn the_value_saturates_both_ways() {
        let counter = |a: CounterSlot, b: CounterSlot| Counter {
            slots: [("n1", a), ("n2", b)]
                .into_iter()
                .map(|(n, s)| (n.parse::<Actor>().expect("valid"), s))
                .collect(),
        };
        assert_eq!(
            counter(slot(u64::MAX, 0), slot(u64::MAX, 0)).value(),
            i64::MAX
        );
        assert_eq!(
            counter(slot(0, u64::MAX), slot(0, u64::MAX)).value(),
            i64::MIN
        );
        assert_eq!(counter(slot(5, 7), slot(1, 0)).value(), -1);
    }
}
