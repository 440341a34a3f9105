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

use crate::error::{truncate_for_error, Error, Result};

/// The identity of a node: 1 to 63 characters of `[a-z0-9-]`, the same name its certificate carries.
///
/// Parsed, not trusted: every way in (`new`, serde `Deserialize` from TOML or JSON, bincode `Decode` from a
/// peer or the disk) validates, so a `NodeId` value is always well-formed. It encodes as its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Encode)]
#[serde(transparent)]
pub struct NodeId(String);

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        NodeId::new(text).map_err(serde::de::Error::custom)
    }
}

impl<C> Decode<C> for NodeId {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let text = String::decode(decoder)?;
        NodeId::new(text).map_err(|e| bincode::error::DecodeError::OtherString(e.to_string()))
    }
}

bincode::impl_borrow_decode!(NodeId);

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 63
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-');
        if ok {
            Ok(NodeId(id))
        } else {
            Err(Error::InvalidNodeId {
                id: truncate_for_error(&id),
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    Encode,
    Decode,
)]
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

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
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
    node: NodeId,
    last: Timestamp,
    max_skew_ms: u64,
}

impl Clock {
    /// A clock for `node` that refuses remote timestamps more than `max_skew_ms` ahead.
    pub fn new(node: NodeId, max_skew_ms: u64) -> Self {
        Clock {
            node,
            last: Timestamp::default(),
            max_skew_ms,
        }
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> &NodeId {
        &self.node
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
            node: self.node.clone(),
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

    #[test]
    fn tick_is_strictly_monotonic_when_the_wall_clock_stalls_or_goes_back() {
        let mut c = Clock::new(node("n1"), 1000);
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(50);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms, 100);
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
