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
use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crdt::value::Value;
use crate::crdt::{Feature, FeatureKind, Lattice};
use crate::hlc::{Marker, Timestamp};

/// When a gauge's value expires: a wall-clock millisecond, or never.
///
/// 8 bytes where an `Option<u64>` takes 16 (its tag is padded to the `u64`'s alignment), and every gauge
/// of every profile in memory holds one. "Never" is `u64::MAX`, so that instant itself is not
/// representable: [`Expiry::at`] stores it as the millisecond before (584 million years from now, and
/// the same on every replica, since every way in goes through `at`). It orders, encodes (bincode and
/// serde) and prints exactly as the `Option<u64>` it replaces: never first, then by instant.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expiry(u64);

impl Expiry {
    /// No expiry.
    pub const NEVER: Expiry = Expiry(u64::MAX);

    /// An expiry at `ms` (the last millisecond, `u64::MAX`, is stored as the one before it).
    pub const fn at(ms: u64) -> Expiry {
        Expiry(if ms == u64::MAX { u64::MAX - 1 } else { ms })
    }

    /// The instant, or `None` for never.
    pub const fn get(self) -> Option<u64> {
        if self.0 == u64::MAX {
            None
        } else {
            Some(self.0)
        }
    }

    /// Whether the value has expired at `now_ms` (an expiry at or before it).
    pub const fn is_due(self, now_ms: u64) -> bool {
        self.0 != u64::MAX && self.0 <= now_ms
    }
}

impl From<Option<u64>> for Expiry {
    fn from(ms: Option<u64>) -> Expiry {
        ms.map_or(Expiry::NEVER, Expiry::at)
    }
}

impl From<Expiry> for Option<u64> {
    fn from(expiry: Expiry) -> Option<u64> {
        expiry.get()
    }
}

impl PartialEq<Option<u64>> for Expiry {
    fn eq(&self, other: &Option<u64>) -> bool {
        self.get() == *other
    }
}

impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Expiry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Expiry {
    fn cmp(&self, other: &Expiry) -> Ordering {
        self.get().cmp(&other.get())
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl Serialize for Expiry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<u64>::deserialize(d).map(Expiry::from)
    }
}

impl Encode for Expiry {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // Exactly as the `Option<u64>` it replaces.
        self.get().encode(encoder)
    }
}

impl<C> Decode<C> for Expiry {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Option::<u64>::decode(decoder).map(Expiry::from)
    }
}

bincode::impl_borrow_decode!(Expiry);

/// A last-writer-wins register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct GaugeRegister {
    /// The version of the current value.
    pub marker: Marker,
    /// The value, or `None` once it expired (a tombstone that still carries its marker and the expiry that
    /// made it: expiry commutes with merge only because a tombstone always has `expires_at_ms`).
    pub value: Option<Value>,
    /// Wall-clock milliseconds at which the value expires, if it has a TTL.
    pub expires_at_ms: Expiry,
}

impl GaugeRegister {
    /// A register holding `value` written at `marker`.
    pub fn new(marker: Marker, value: Value, expires_at_ms: Option<u64>) -> Self {
        GaugeRegister {
            marker,
            value: Some(value),
            expires_at_ms: Expiry::from(expires_at_ms),
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
        if self.expires_at_ms.is_due(now_ms) {
            None
        } else {
            self.value.as_ref()
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
        self.value.is_some() && self.expires_at_ms.is_due(now_ms)
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

    /// A marker (16 bytes), an optional value (16) and an expiry (8): every gauge of every
    /// profile in memory is this size, W7's largest item.
    #[test]
    fn a_gauge_register_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<GaugeRegister>(), 40);
        assert_eq!(std::mem::size_of::<Expiry>(), 8);
    }

    /// The expiry orders, encodes and prints as the `Option<u64>` it replaced; only `u64::MAX` itself
    /// moves, to the millisecond before (it is "never").
    #[test]
    fn an_expiry_is_the_option_it_replaced() {
        let config = bincode::config::standard();
        let options = [None, Some(0), Some(1), Some(5_000), Some(u64::MAX - 1)];
        for a in options {
            let expiry = Expiry::from(a);
            assert_eq!(expiry.get(), a);
            assert_eq!(format!("{expiry:?}"), format!("{a:?}"));
            let bytes = bincode::encode_to_vec(expiry, config).expect("encode");
            assert_eq!(bytes, bincode::encode_to_vec(a, config).expect("encode"));
            let (back, _): (Expiry, usize) =
                bincode::decode_from_slice(&bytes, config).expect("decode");
            assert_eq!(back, expiry);
            assert_eq!(
                serde_json::to_string(&expiry).expect("json"),
                serde_json::to_string(&a).expect("json")
            );
            for b in options {
                assert_eq!(
                    expiry.cmp(&Expiry::from(b)),
                    a.cmp(&b),
                    "{a:?} against {b:?}"
                );
            }
            for now in [0, 1, 4_999, 5_000, u64::MAX] {
                assert_eq!(
                    expiry.is_due(now),
                    a.is_some_and(|at| at <= now),
                    "{a:?} at {now}"
                );
            }
        }
        assert_eq!(Expiry::at(u64::MAX).get(), Some(u64::MAX - 1));
        let (max, _): (Expiry, usize) = bincode::decode_from_slice(
            &bincode::encode_to_vec(Some(u64::MAX), config).expect("encode"),
            config,
        )
        .expect("decode");
        assert_eq!(max, Some(u64::MAX - 1));
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
            expires_at_ms: Expiry::at(0),
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
