//! Identity resolution on the profile: an anonymous id (or an earlier user id) linked into a canonical user
//! id. The link is two pieces of ordinary replicated state:
//!
//! - on the linked id's profile, [`Identity::alias_of`]: a last-writer-wins register naming the canonical
//!   id, so later events for the linked id are redirected there;
//! - on the canonical profile, [`Identity::absorbed`]: a copy of each linked id's profile as it was when it
//!   was linked, merged per id with the profile lattice. A read of the canonical profile combines its own
//!   features with the absorbed ones ([`Profile::view`]), and deduplication checks every absorbed dedup set
//!   too, so an event counted under the anonymous id is neither lost nor counted again when it is retried
//!   under the user id.
//!
//! Guarantees:
//! - The absorbed map is a join of profile lattices, so merging canonical profiles that absorbed the same or
//!   different ids on two replicas (or on two sides of a partition) is commutative, associative and
//!   idempotent, and absorbing one state twice changes nothing (property-tested below). Nothing is counted
//!   twice: the absorbed copies are kept apart from the canonical profile's own counter slots and window
//!   buckets, and combined only when a view is computed.
//! - The map is flat: absorbing an id that had itself absorbed others hoists them (a chain `a → u → v`
//!   leaves `a` and `u` side by side in `v`), so an absorbed profile never holds another level; the decoder
//!   refuses a record nested deeper ([`MAX_NESTING`]) instead of recursing on hostile bytes.
//! - [`Profile::absorb`] refuses a link into oneself, a link of an id that names the canonical id among its
//!   own links (a loop), a link of an id already linked elsewhere, and more than `max_identity_links` ids.
//! - The canonical profile's erasure watermark applies to the absorbed copies too: erasing a user erases
//!   what was merged into it.
//!
//! Caveats: a view combines kinds as their meaning allows — counters and windows (count, sum, and distinct
//! counts, as an upper bound) add, window
//! minima and maxima take the extreme, gauges take the newest version, and a flag shows the canonical
//! profile's own siblings when it has any (its causal context is the one a write to the canonical id needs),
//! else the first absorbed id's. A read of a linked id itself is not redirected: it shows that id's own
//! profile as it was.

use std::cell::Cell;
use std::collections::BTreeMap;

use bincode::de::{Decode, Decoder};
use bincode::error::DecodeError;
use bincode::Encode;
use serde::{Deserialize, Serialize};

use crate::compact::{Symbol, VecMap};
use crate::crdt::gauge::GaugeRegister;
use crate::crdt::value::Value;
use crate::crdt::window::Aggregation;
use crate::crdt::Lattice;
use crate::error::{truncate_for_error, Error, Result};
use crate::hlc::{Marker, Timestamp};
use crate::limits::Limits;
use crate::profile::{FeatureView, Profile};

/// How deep profiles may nest through [`Identity::absorbed`] in a decoded record: one level (a canonical
/// profile holding absorbed profiles that hold none).
pub const MAX_NESTING: u8 = 1;

/// The identity links of one profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode)]
pub struct Identity {
    /// The canonical id this profile's id was linked into (a string value), last writer wins. Boxed:
    /// few profiles are linked, and every profile carries the field (8 bytes instead of a register's 64).
    pub alias_of: Option<Box<GaugeRegister>>,
    /// The profiles of the ids linked into this one, by id.
    pub absorbed: BTreeMap<String, Profile>,
}

thread_local! {
    /// Nesting depth of the identity being decoded on this thread (the decoder is recursive).
    static DECODE_DEPTH: Cell<u8> = const { Cell::new(0) };
}

/// Leaves one nesting level of [`DECODE_DEPTH`] when dropped.
struct NestingGuard;

impl NestingGuard {
    fn enter() -> std::result::Result<NestingGuard, DecodeError> {
        DECODE_DEPTH.with(|depth| {
            if depth.get() > MAX_NESTING {
                return Err(DecodeError::Other(
                    "identity links nested deeper than one level",
                ));
            }
            depth.set(depth.get() + 1);
            Ok(NestingGuard)
        })
    }
}

impl Drop for NestingGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

impl<C> Decode<C> for Identity {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> std::result::Result<Self, DecodeError> {
        let alias_of = Option::<GaugeRegister>::decode(decoder)?.map(Box::new);
        let _level = NestingGuard::enter()?;
        let absorbed = BTreeMap::<String, Profile>::decode(decoder)?;
        Ok(Identity { alias_of, absorbed })
    }
}
bincode::impl_borrow_decode!(Identity);

impl crate::compact::Empty for Identity {
    fn empty() -> &'static Identity {
        static EMPTY: Identity = Identity {
            alias_of: None,
            absorbed: BTreeMap::new(),
        };
        &EMPTY
    }
}

impl Identity {
    /// Whether the profile has no identity link at all.
    pub fn is_empty(&self) -> bool {
        self.alias_of.is_none() && self.absorbed.is_empty()
    }

    /// Joins another replica's identity links into these. Returns true if anything changed.
    pub(crate) fn merge(&mut self, other: &Identity) -> bool {
        let mut changed = match (&mut self.alias_of, &other.alias_of) {
            (Some(ours), Some(theirs)) => ours.merge(theirs),
            (None, Some(theirs)) => {
                self.alias_of = Some(theirs.clone());
                true
            }
            _ => false,
        };
        for (id, theirs) in &other.absorbed {
            match self.absorbed.get_mut(id) {
                Some(ours) => changed |= ours.merge(theirs),
                None => {
                    self.absorbed.insert(id.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Drops everything at or below the canonical profile's erasure watermark.
    pub(crate) fn retain_above(&mut self, watermark: &Marker) {
        if self
            .alias_of
            .as_ref()
            .is_some_and(|a| !a.clone().retain_above(watermark))
        {
            self.alias_of = None;
        }
        for p in self.absorbed.values_mut() {
            p.erase(watermark.clone());
        }
    }

    pub(crate) fn max_timestamp(&self) -> Option<Timestamp> {
        let alias = self.alias_of.as_ref().map(|a| a.marker.ts);
        let absorbed = self.absorbed.values().filter_map(Profile::max_timestamp);
        alias.into_iter().chain(absorbed).max()
    }

    pub(crate) fn has_expired(&self, now_ms: u64) -> bool {
        self.absorbed.values().any(|p| p.has_expired(now_ms))
    }

    pub(crate) fn expire(&mut self, now_ms: u64) -> bool {
        self.absorbed
            .values_mut()
            .fold(false, |changed, p| p.expire(now_ms) | changed)
    }
}

impl Profile {
    /// The canonical id this profile's id was linked into, if any.
    pub fn alias_of(&self) -> Option<&str> {
        match self.identity.alias_of.as_ref()?.value.as_ref()? {
            Value::Str(to) => Some(to),
            _ => None,
        }
    }

    /// Whether the message `id` was ingested into this profile or into one linked into it.
    pub fn has_seen(&self, id: &str) -> bool {
        self.seen.contains(id) || self.identity.absorbed.values().any(|p| p.seen.contains(id))
    }

    /// Whether `id` is linked into this profile.
    pub fn has_absorbed(&self, id: &str) -> bool {
        self.identity.absorbed.contains_key(id)
    }

    /// Marks this profile's id as linked into `canonical`, stamped `marker` (a fresh HLC marker of the node
    /// deciding the link). Refused if `canonical` is not a valid key.
    pub fn set_alias(&mut self, canonical: &str, marker: Marker, limits: &Limits) -> Result<()> {
        limits.check_key(canonical)?;
        if self.erased_at.as_ref().is_some_and(|w| marker <= *w) {
            return Ok(());
        }
        let incoming = GaugeRegister::new(marker, Value::Str(canonical.into()), None);
        match &mut self.identity.get_mut().alias_of {
            Some(ours) => {
                ours.merge(&incoming);
            }
            None => self.identity.get_mut().alias_of = Some(Box::new(incoming)),
        }
        Ok(())
    }

    /// Links `id`, whose profile is `state`, into this profile, the profile of `key`. `state` is
    /// absorbed with everything it had absorbed itself (the map stays flat). Returns true if anything
    /// changed; on `Err` nothing did.
    pub fn absorb(
        &mut self,
        key: &str,
        id: &str,
        state: &Profile,
        limits: &Limits,
    ) -> Result<bool> {
        let loop_error = || Error::IdentityLoop {
            id: truncate_for_error(id),
            into: truncate_for_error(key),
        };
        if id == key || state.has_absorbed(key) {
            return Err(loop_error());
        }
        if let Some(linked_to) = state.alias_of().filter(|to| *to != key) {
            return Err(Error::IdentityConflict {
                id: truncate_for_error(id),
                linked_to: truncate_for_error(linked_to),
                into: truncate_for_error(key),
            });
        }
        let mut own = state.clone();
        let hoisted = std::mem::take(&mut own.identity).into_inner().absorbed;
        let mut incoming: Vec<(&str, Profile)> = vec![(id, own)];
        incoming.extend(hoisted.iter().map(|(k, p)| (k.as_str(), p.clone())));
        let count = self.identity.absorbed.len()
            + incoming
                .iter()
                .filter(|(k, _)| !self.identity.absorbed.contains_key(*k))
                .count();
        if count > limits.max_identity_links {
            return Err(Error::TooManyIdentityLinks {
                key: truncate_for_error(key),
                count,
                max: limits.max_identity_links,
            });
        }
        let mut changed = false;
        for (k, mut p) in incoming {
            if let Some(w) = &self.erased_at {
                p.erase(w.clone());
            }
            let absorbed = &mut self.identity.get_mut().absorbed;
            match absorbed.get_mut(k) {
                Some(ours) => changed |= ours.merge(&p),
                None => {
                    absorbed.insert(k.to_owned(), p);
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

/// Adds `theirs` (the view of an absorbed profile) into `ours` (the canonical profile's view so far).
pub(crate) fn combine_views(
    ours: &mut VecMap<Symbol, FeatureView>,
    theirs: VecMap<Symbol, FeatureView>,
) {
    for (name, view) in theirs {
        match ours.get_mut(name.as_str()) {
            None => {
                ours.insert(name, view);
            }
            Some(mine) => combine_feature(mine, view),
        }
    }
}

fn combine_feature(mine: &mut FeatureView, theirs: FeatureView) {
    match (mine, theirs) {
        (mine @ FeatureView::Gauge { .. }, theirs @ FeatureView::Gauge { .. }) => {
            let newer = matches!(
                (&*mine, &theirs),
                (FeatureView::Gauge { version: a, .. }, FeatureView::Gauge { version: b, .. }) if b > a
            );
            if newer {
                *mine = theirs;
            }
        }
        (FeatureView::Counter { value: a }, FeatureView::Counter { value: b }) => {
            *a = a.saturating_add(b);
        }
        (
            FeatureView::Window {
                aggregation,
                value,
                events,
            },
            FeatureView::Window {
                aggregation: theirs_aggregation,
                value: theirs_value,
                events: theirs_events,
            },
        ) if *aggregation == theirs_aggregation => {
            *events = events.saturating_add(theirs_events);
            *value = match (*value, theirs_value) {
                (Some(a), Some(b)) => Some(match aggregation {
                    // A distinct count adds too: an upper bound, since a value seen under both ids
                    // counts twice (the views hold counts, not the sketches).
                    Aggregation::Count | Aggregation::Sum | Aggregation::DistinctCount => a + b,
                    Aggregation::Min => a.min(b),
                    Aggregation::Max => a.max(b),
                }),
                (a, b) => a.or(b),
            };
        }
        // A flag keeps the canonical profile's siblings (and the context a write to it needs); a name
        // held with different kinds keeps the canonical profile's kind.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{Clock, NodeId};
    use proptest::prelude::*;

    fn node(i: usize) -> NodeId {
        NodeId::new(["n1", "n2", "n3"][i % 3]).expect("valid")
    }

    /// A small profile: a counter incremented by `node` and a gauge, stamped at `at`.
    fn small(i: usize, delta: i64, at: u64) -> Profile {
        let limits = Limits::default();
        let mut clock = Clock::new(node(i), 1_000);
        let mut p = Profile::default();
        let ts = clock.tick(at);
        p.increment(&[("c", delta)], clock.actor(), ts, &limits)
            .expect("valid");
        let v = Value::I64(delta);
        p.put_gauges(
            &[crate::profile::GaugeUpdate {
                name: "g",
                value: &v,
                expires_at_ms: None,
            }],
            &clock.stamp(at + 1),
            &limits,
        )
        .expect("valid");
        p
    }

    /// Builds three replicas of one canonical profile `u` from random absorptions of random ids' states
    /// (`(replica, id, delta)`), with some replicas learning of others' absorptions.
    fn replicas(steps: &[(usize, usize, i64)]) -> [Profile; 3] {
        let limits = Limits::default();
        let mut r: [Profile; 3] = Default::default();
        for (n, (at, id, delta)) in steps.iter().enumerate() {
            let state = small(*at, *delta, 10 + n as u64);
            let id = format!("a{}", id % 4);
            r[at % 3]
                .absorb("u", &id, &state, &limits)
                .expect("absorbs");
            if n % 3 == 0 {
                let from = r[at % 3].clone();
                r[(at + 1) % 3].merge(&from);
            }
        }
        r
    }

    fn merged(a: &Profile, b: &Profile) -> Profile {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        /// Merging canonical profiles that absorbed states on different replicas is a join.
        #[test]
        fn absorbed_links_merge_as_a_lattice(
            steps in proptest::collection::vec((0usize..3, 0usize..4, -5i64..5), 0..12)
        ) {
            let [a, b, c] = replicas(&steps);
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            // A merge that changes nothing says so.
            let ab = merged(&a, &b);
            prop_assert!(!ab.clone().merge(&a));
        }
    }

    #[test]
    fn views_combine_counters_and_keep_the_newest_gauge() {
        let limits = Limits::default();
        let mut u = small(0, 3, 100);
        u.absorb("u", "a", &small(1, 4, 50), &limits)
            .expect("links");
        let view = u.view(1_000, None).expect("visible");
        assert_eq!(
            view.features.get("c"),
            Some(&FeatureView::Counter { value: 7 })
        );
        assert!(
            matches!(
                view.features.get("g"),
                Some(FeatureView::Gauge {
                    value: Value::I64(3),
                    ..
                })
            ),
            "the user's own gauge is newer"
        );
        u.absorb("u", "b", &small(2, 9, 500), &limits)
            .expect("links");
        let view = u.view(1_000, None).expect("visible");
        assert!(matches!(
            view.features.get("g"),
            Some(FeatureView::Gauge {
                value: Value::I64(9),
                ..
            })
        ));
    }
}
