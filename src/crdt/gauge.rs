//! `gauge` features: last-writer-wins registers ordered by `(hlc, node)` markers, with optional expiry.
//!
//! Guarantees:
//! - Merge keeps the state with the greatest marker; equal markers (which only the same write should carry)
//!   are still resolved by a total order over the whole state, so merge is commutative, associative and
//!   idempotent for *any* pair of states (property-tested in `profile`).
//! - Expiry is part of the lattice: an expired register becomes a tombstone that keeps its marker and drops
//!   its value, and a tombstone beats a live state with the same marker. So once a value expired anywhere,
//!   no replica, hint or anti-entropy exchange can bring it (or anything older) back.
//!
//! Caveat: LWW by HLC means a concurrent write from a node whose clock runs ahead (within `max_clock_skew`)
//! can win over a write that happened later in real time. Use flags when concurrent writes must be seen.

use std::cmp::Ordering;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crdt::value::Value;
use crate::crdt::{Feature, FeatureKind, Lattice};
use crate::hlc::{Marker, Timestamp};

/// A last-writer-wins register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct GaugeRegister {
    /// The version of the current value.
    pub marker: Marker,
    /// The value, or `None` once it expired (a tombstone that still carries its marker and the expiry that
    /// made it: expiry commutes with merge only because a tombstone always has `expires_at_ms`).
    pub value: Option<Value>,
    /// Wall-clock milliseconds at which the value expires, if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

impl GaugeRegister {
    /// A register holding `value` written at `marker`.
    pub fn new(marker: Marker, value: Value, expires_at_ms: Option<u64>) -> Self {
        GaugeRegister {
            marker,
            value: Some(value),
            expires_at_ms,
        }
    }

    /// The lattice order: marker first; on equal markers (the same write, or two event-time writes of one
    /// node at the same instant) the later expiry, then a tombstone over a live value, then the greater
    /// value. Expiry first is what makes expiry commute with merge: expiring a state never moves it past
    /// one with a later expiry.
    fn lattice_cmp(&self, other: &GaugeRegister) -> Ordering {
        self.marker
            .cmp(&other.marker)
            .then_with(|| self.expires_at_ms.cmp(&other.expires_at_ms))
            .then_with(|| other.value.is_some().cmp(&self.value.is_some()))
            .then_with(|| match (&self.value, &other.value) {
                (Some(a), Some(b)) => a.total_cmp(b),
                _ => Ordering::Equal,
            })
    }

    /// The value if it is present and not expired at `now_ms`.
    pub fn visible(&self, now_ms: u64) -> Option<&Value> {
        match self.expires_at_ms {
            Some(at) if at <= now_ms => None,
            _ => self.value.as_ref(),
        }
    }
}

impl Feature for GaugeRegister {
    const KIND: FeatureKind = FeatureKind::Gauge;
}

impl Lattice for GaugeRegister {
    fn merge(&mut self, other: &GaugeRegister) -> bool {
        if other.lattice_cmp(self) == Ordering::Greater {
            *self = other.clone();
            true
        } else {
            false
        }
    }

    /// A gauge written at or below the watermark is dropped whole.
    fn retain_above(&mut self, watermark: &Marker) -> bool {
        self.marker > *watermark
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        Some(self.marker.ts)
    }

    fn has_expired(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Turns an expired value into a tombstone that keeps its marker.
    fn expire(&mut self, now_ms: u64) -> bool {
        if self.has_expired(now_ms) {
            self.value = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;

    /// A marker (16 bytes), an optional value (24) and an optional expiry (16): every gauge of every
    /// profile in memory is this size, W7's largest item.
    #[test]
    fn a_gauge_register_is_fifty_six_bytes() {
        assert_eq!(std::mem::size_of::<GaugeRegister>(), 56);
    }

    /// Found by the law test: two event-time writes of one node at the same instant carry equal markers;
    /// if one has already expired (a tombstone) and the other expires later, expiry must still commute
    /// with merge, so the later expiry wins before tombstone-ness is compared.
    #[test]
    fn equal_markers_with_different_expiries_merge_the_same_before_and_after_expiry() {
        let marker = Marker {
            ts: Timestamp::from_millis(2),
            node: NodeId::new("n2").expect("valid"),
        };
        let live = GaugeRegister::new(marker.clone(), Value::I64(0), Some(2));
        let tombstone = GaugeRegister {
            marker,
            value: None,
            expires_at_ms: Some(0),
        };
        let mut merged = live.clone();
        merged.merge(&tombstone);
        merged.expire(2);
        let (mut a, b) = (live, tombstone);
        a.expire(2);
        a.merge(&b);
        assert_eq!(merged, a);
        assert_eq!(a.expires_at_ms, Some(2));
    }
}
