//! The message ids a profile has already ingested, within the dedup window: part of the replicated profile,
//! so a client retry that reaches a different owner after a failover still counts once.
//!
//! State: `message id -> event time (ms)`, bounded two ways, both deterministic so every replica keeps the
//! same ids: ids older than the window relative to the newest id held are dropped, and beyond `max_ids` only
//! the newest (by event time, then id) are kept.
//!
//! Guarantees: merge (union, keeping the later time of an id, then both bounds) is a lattice (the generic law
//! test). An id is remembered for the whole window unless more than `max_ids` newer ids arrived for the same
//! profile within it.
//!
//! Caveats: an id pushed out by the bound (or older than the window) counts again if retried; the bound is
//! per profile ([`Limits`](crate::Limits)`::max_seen_ids`). Erasure keeps the ids (they identify deliveries,
//! not the person), so a retry of an erased event is still a duplicate.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crdt::Lattice;
use crate::hlc::{Marker, Timestamp};

/// The dedup set of one profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Seen {
    /// How long an id is remembered, in event-time ms (0: not at all).
    pub window_ms: u64,
    /// Most ids kept.
    pub max_ids: u32,
    /// Ids with their event time.
    pub ids: BTreeMap<String, u64>,
}

impl crate::compact::Empty for Seen {
    fn empty() -> &'static Seen {
        static EMPTY: Seen = Seen {
            window_ms: 0,
            max_ids: 0,
            ids: BTreeMap::new(),
        };
        &EMPTY
    }
}

impl Seen {
    /// Records `id` at event time `at_ms` under the given bounds. Returns false if it was already there
    /// (a duplicate).
    pub fn insert(&mut self, id: &str, at_ms: u64, window_ms: u64, max_ids: u32) -> bool {
        if (window_ms, max_ids) > (self.window_ms, self.max_ids) {
            self.window_ms = window_ms;
            self.max_ids = max_ids;
        }
        if self.ids.contains_key(id) {
            return false;
        }
        self.ids.insert(id.to_owned(), at_ms);
        self.bound();
        true
    }

    /// Whether `id` was seen.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    fn bound(&mut self) {
        let Some(newest) = self.ids.values().max().copied() else {
            return;
        };
        let window = self.window_ms;
        self.ids.retain(|_, at| at.saturating_add(window) > newest);
        let max = self.max_ids as usize;
        if self.ids.len() > max {
            let mut by_age: Vec<(u64, String)> =
                self.ids.iter().map(|(id, at)| (*at, id.clone())).collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(self.ids.len() - max) {
                self.ids.remove(&id);
            }
        }
    }
}

impl Lattice for Seen {
    fn merge(&mut self, other: &Seen) -> bool {
        let before = self.clone();
        if (other.window_ms, other.max_ids) > (self.window_ms, self.max_ids) {
            self.window_ms = other.window_ms;
            self.max_ids = other.max_ids;
        }
        for (id, at) in &other.ids {
            let mine = self.ids.entry(id.clone()).or_insert(*at);
            *mine = (*mine).max(*at);
        }
        self.bound();
        *self != before
    }

    /// Ids are kept across an erasure (see the module docs).
    fn retain_above(&mut self, _watermark: &Marker) -> bool {
        true
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crdt::laws;

    fn seen() -> impl Strategy<Value = Seen> {
        proptest::collection::vec((0u8..12, 0u64..100), 0..10).prop_map(|ids| {
            let mut s = Seen::default();
            for (id, at) in ids {
                s.insert(&format!("m{id}"), at, 50, 4);
            }
            s
        })
    }

    proptest! {
        #[test]
        fn seen_sets_are_a_lattice(a in seen(), b in seen(), c in seen()) {
            laws::check(&a, &b, &c)?;
        }
    }

    #[test]
    fn a_retry_is_a_duplicate_within_the_window_and_the_bounds_are_deterministic() {
        let mut s = Seen::default();
        assert!(s.insert("m1", 100, 50, 3));
        assert!(!s.insert("m1", 100, 50, 3), "the retry is a duplicate");
        assert!(s.insert("m2", 120, 50, 3));
        assert!(s.insert("m3", 160, 50, 3));
        assert!(
            !s.contains("m1"),
            "older than the window relative to the newest id"
        );
        assert!(s.insert("m4", 161, 50, 3) && s.insert("m5", 162, 50, 3));
        assert_eq!(s.ids.len(), 3);
        assert!(!s.contains("m2"), "the oldest goes past the bound");
        let mut other = Seen::default();
        other.insert("m2", 120, 50, 3);
        let mut merged = s.clone();
        merged.merge(&other);
        assert_eq!(merged, s, "a dropped id does not come back through a merge");
    }
}
