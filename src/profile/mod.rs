//! `Profile`: every feature of one entity, with one merge; the read [`view`] clients get; and [`apply`],
//! the core's decision of a client write.
//!
//! A profile is one map per feature kind plus the entity's erasure watermark. The maps are handled only
//! through the [`Lattice`] trait (see [`Profile::maps`]), so merge, erasure, expiry and clock recovery are
//! written once for every kind.
//!
//! Guarantees:
//! - [`Profile::merge`] is the join of the per-feature lattices followed by dropping everything at or below
//!   the joint erasure watermark; it is commutative, associative and idempotent (property-tested below on
//!   states produced by random writes, erasures and partial syncs between three replicas).
//! - Local writes validate everything first and then apply, so a refused multi-feature write changes nothing.
//! - A feature name belongs to one kind per entity: a local write of another kind is refused with
//!   [`Error::KindMismatch`]. The maps are independent lattices, so if two replicas concurrently
//!   create the same name with different kinds, both survive the merge; reads then show the flag over the
//!   counter over the gauge (a fixed precedence, so every replica shows the same thing).
//! - Erasure: once a watermark is set, every gauge, counter slot and flag sibling at or below it is dropped
//!   on every write and merge, so erased data can never be resurrected by replication.
//!
//! The profile never reads the clock: callers pass timestamps and `now_ms`.

pub mod apply;
pub mod delta;
pub mod identity;
pub mod in_place;
pub mod view;

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

pub use apply::{apply, Applied, CounterDelta, GaugeWrite, Write};
pub use identity::Identity;
pub use in_place::{apply_in_place, InPlace, Undo};
pub use view::{FeatureView, FlagValue, FlagView, ProfileView};

use crate::compact::{Sparse, Symbol, VecMap};
use crate::crdt::counter::Counter;
use crate::crdt::flag::{CausalContext, FlagRegister, FlagWrite};
use crate::crdt::gauge::GaugeRegister;
use crate::crdt::seen::Seen;
use crate::crdt::value::Value;
use crate::crdt::window::{Observation, Window, WindowRefusal, WindowSpec};
use crate::crdt::{Feature, FeatureKind, Lattice};
use crate::error::{truncate_for_error, Error, Result};
use crate::hlc::{Actor, Marker, Timestamp};
use crate::limits::Limits;

/// All features of one entity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct Profile {
    /// Gauge features by name.
    pub gauges: VecMap<Symbol, GaugeRegister>,
    /// Counter features by name.
    pub counters: VecMap<Symbol, Counter>,
    /// Flag features by name.
    pub flags: VecMap<Symbol, FlagRegister>,
    /// The erasure watermark: everything at or below it is gone.
    pub erased_at: Option<Marker>,
    /// Window features by name.
    pub windows: VecMap<Symbol, Window>,
    /// Message ids already ingested (event deduplication), replicated with the profile. A null pointer
    /// until the profile ingests an event.
    pub seen: Sparse<Seen>,
    /// Identity links: the id this one was linked into, and the profiles linked into this one. A null
    /// pointer until the profile is linked.
    pub identity: Sparse<Identity>,
}

/// One kind's map of features, seen through its [`Lattice`]: what the profile does to every kind alike.
pub trait FeatureMap {
    /// The kind of the features in the map.
    fn kind(&self) -> FeatureKind;
    /// Number of features.
    fn len(&self) -> usize;
    /// Whether there is no feature.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether `name` is a feature of this kind.
    fn contains(&self, name: &str) -> bool;
    /// Applies the erasure watermark to every feature, dropping those with nothing left to keep.
    fn retain_above(&mut self, watermark: &Marker);
    /// The greatest timestamp of any feature.
    fn max_timestamp(&self) -> Option<Timestamp>;
    /// Whether expiry at `now_ms` would change any feature.
    fn has_expired(&self, now_ms: u64) -> bool;
    /// Applies expiry at `now_ms` to every feature; true if any changed.
    fn expire(&mut self, now_ms: u64) -> bool;
}

impl<L: Feature> FeatureMap for VecMap<Symbol, L> {
    fn kind(&self) -> FeatureKind {
        L::KIND
    }
    fn len(&self) -> usize {
        VecMap::len(self)
    }
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
    fn retain_above(&mut self, watermark: &Marker) {
        self.retain(|_, f| f.retain_above(watermark));
    }
    fn max_timestamp(&self) -> Option<Timestamp> {
        self.values().filter_map(Lattice::max_timestamp).max()
    }
    fn has_expired(&self, now_ms: u64) -> bool {
        self.values().any(|f| f.has_expired(now_ms))
    }
    fn expire(&mut self, now_ms: u64) -> bool {
        self.values_mut()
            .fold(false, |changed, f| f.expire(now_ms) | changed)
    }
}

/// Joins `theirs` into `ours`, feature by feature. Returns true if `ours` changed.
fn merge_map<L: Lattice>(ours: &mut VecMap<Symbol, L>, theirs: &VecMap<Symbol, L>) -> bool {
    let mut changed = false;
    for (name, f) in theirs {
        match ours.get_mut(name) {
            Some(mine) => changed |= mine.merge(f),
            None => {
                ours.insert(name.clone(), f.clone());
                changed = true;
            }
        }
    }
    changed
}

/// A gauge write inside a [`Profile::put_gauges`] call.
#[derive(Debug, Clone)]
pub struct GaugeUpdate<'a> {
    /// Feature name.
    pub name: &'a str,
    /// New value.
    pub value: &'a Value,
    /// Expiry, if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

/// A flag write inside a [`Profile::set_flag`] call.
#[derive(Debug, Clone)]
pub struct FlagUpdate<'a> {
    /// Feature name.
    pub name: &'a str,
    /// New value.
    pub value: bool,
    /// The causal context of the read the write is based on.
    pub context: &'a CausalContext,
    /// The marker the coordinator stamped.
    pub marker: Marker,
    /// The coordinator's actor (node and incarnation), whose next dot the write gets.
    pub actor: Actor,
    /// Expiry, if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

/// What became of a gauge write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write is now the register's value.
    Applied,
    /// The register already holds a newer version (or the entity was erased after the write's marker):
    /// the write was dropped.
    Superseded,
}

impl Profile {
    /// Every kind's map, in the fixed kind order (gauge, counter, flag, window). The one list of the
    /// kinds a profile holds, with [`Profile::maps_mut`] and [`Profile::merge`].
    pub fn maps(&self) -> [&dyn FeatureMap; 4] {
        [&self.gauges, &self.counters, &self.flags, &self.windows]
    }

    /// Every kind's map, mutable.
    pub fn maps_mut(&mut self) -> [&mut dyn FeatureMap; 4] {
        [
            &mut self.gauges,
            &mut self.counters,
            &mut self.flags,
            &mut self.windows,
        ]
    }

    /// Number of distinct feature entries (all kinds).
    pub fn feature_count(&self) -> usize {
        self.maps().iter().map(|m| m.len()).sum()
    }

    /// Whether the profile holds nothing at all (no features, no watermark, no ingested message ids).
    pub fn is_empty(&self) -> bool {
        self.feature_count() == 0
            && self.erased_at.is_none()
            && self.seen.ids.is_empty()
            && self.identity.is_empty()
    }

    fn kind_of(&self, name: &str) -> Option<FeatureKind> {
        self.maps()
            .iter()
            .find(|m| m.contains(name))
            .map(|m| m.kind())
    }

    /// Checks kinds and the feature count for a write of `kind` to `names`.
    fn check_write<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        kind: FeatureKind,
        limits: &Limits,
    ) -> Result<()> {
        let mut new_names: Vec<&str> = Vec::new();
        for name in names {
            match self.kind_of(name) {
                Some(existing) if existing != kind => {
                    return Err(Error::KindMismatch {
                        name: truncate_for_error(name),
                        existing: existing.as_str(),
                        requested: kind.as_str(),
                    })
                }
                Some(_) => {}
                None => {
                    if !new_names.contains(&name) {
                        new_names.push(name);
                    }
                }
            }
        }
        limits.check_feature_count(self.feature_count() + new_names.len())
    }

    /// Whether a write stamped `marker` is at or below the erasure watermark.
    fn is_erased(&self, marker: &Marker) -> bool {
        self.erased_at.as_ref().is_some_and(|w| marker <= w)
    }

    /// Writes gauges, all stamped with `marker`. Validates everything first; returns the outcome per update.
    pub fn put_gauges(
        &mut self,
        updates: &[GaugeUpdate<'_>],
        marker: &Marker,
        limits: &Limits,
    ) -> Result<Vec<WriteOutcome>> {
        self.check_write(updates.iter().map(|u| u.name), FeatureKind::Gauge, limits)?;
        if self.is_erased(marker) {
            // Erased after this write was stamped: every update is superseded.
            return Ok(vec![WriteOutcome::Superseded; updates.len()]);
        }
        let mut outcomes = Vec::with_capacity(updates.len());
        for u in updates {
            let incoming = GaugeRegister::new(marker.clone(), u.value.clone(), u.expires_at_ms);
            let outcome = match self.gauges.get_mut(u.name) {
                Some(reg) => {
                    if reg.merge(&incoming) {
                        WriteOutcome::Applied
                    } else {
                        WriteOutcome::Superseded
                    }
                }
                None => {
                    self.gauges.insert(Symbol::new(u.name), incoming);
                    WriteOutcome::Applied
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Adds `deltas` to counters on behalf of `actor` at `ts`. Validates everything (kinds, count,
    /// overflow) first; returns each counter's new value in request order.
    pub fn increment(
        &mut self,
        deltas: &[(&str, i64)],
        actor: &Actor,
        ts: Timestamp,
        limits: &Limits,
    ) -> Result<Vec<i64>> {
        self.check_write(deltas.iter().map(|d| d.0), FeatureKind::Counter, limits)?;
        let stamp = Marker {
            ts,
            node: actor.node.clone(),
        };
        if self.is_erased(&stamp) {
            // Cannot happen for a freshly ticked local timestamp; refuse to count into erased history.
            return Ok(deltas.iter().map(|(n, _)| self.counter_value(n)).collect());
        }
        // Apply to copies of the touched counters so that an overflow leaves everything unchanged.
        let mut touched: BTreeMap<&str, Counter> = BTreeMap::new();
        for (name, delta) in deltas {
            let counter = touched
                .entry(name)
                .or_insert_with(|| self.counters.get(*name).cloned().unwrap_or_default());
            counter
                .apply(actor, *delta, ts)
                .ok_or_else(|| Error::CounterOverflow {
                    name: truncate_for_error(name),
                })?;
        }
        // A value outside `i64` would read back saturated: refuse the write instead of lying later.
        for (name, counter) in &touched {
            if !counter.in_range() {
                return Err(Error::CounterOverflow {
                    name: truncate_for_error(name),
                });
            }
        }
        for (name, counter) in touched {
            self.counters.insert(Symbol::new(name), counter);
        }
        Ok(deltas.iter().map(|(n, _)| self.counter_value(n)).collect())
    }

    fn counter_value(&self, name: &str) -> i64 {
        self.counters.get(name).map_or(0, Counter::value)
    }

    /// Writes a flag with the causal context of the read it is based on. `now_ms` drops expired siblings
    /// first so they do not count against the sibling bound.
    pub fn set_flag(&mut self, update: FlagUpdate<'_>, now_ms: u64, limits: &Limits) -> Result<()> {
        self.check_write(std::iter::once(update.name), FeatureKind::Flag, limits)?;
        let mut reg = self.flags.get(update.name).cloned().unwrap_or_default();
        reg.expire(now_ms);
        reg.write(FlagWrite {
            name: update.name,
            value: update.value,
            context: update.context,
            marker: update.marker,
            actor: update.actor,
            expires_at_ms: update.expires_at_ms,
            max_siblings: limits.max_siblings,
        })?;
        self.flags.insert(Symbol::new(update.name), reg);
        Ok(())
    }

    /// Adds one event's observation `value` (a number, or a distinct-count hash) at event time `at_ms` to
    /// the window `name` (created with `spec` if new), on behalf of `actor` at HLC `ts`. Validates kinds and
    /// the feature count first. Refuses late events (older than the span) and non-finite values with a
    /// typed error, changing nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        name: &str,
        spec: WindowSpec,
        actor: &Actor,
        at_ms: u64,
        value: Observation,
        ts: Timestamp,
        limits: &Limits,
    ) -> Result<()> {
        self.check_write(std::iter::once(name), FeatureKind::Window, limits)?;
        if self.is_erased(&Marker {
            ts,
            node: actor.node.clone(),
        }) {
            return Ok(());
        }
        let window =
            self.windows
                .get_or_insert_with(name, || Symbol::new(name), || Window::new(spec));
        let result = window.add(actor, at_ms, value, ts);
        if window.buckets.is_empty() {
            self.windows.remove(name);
        }
        result.map_err(|refusal| match refusal {
            WindowRefusal::Late => Error::LateEvent {
                name: truncate_for_error(name),
                at_ms,
            },
            WindowRefusal::NotFinite => Error::NonFiniteValue {
                name: truncate_for_error(name),
            },
            WindowRefusal::Overflow => Error::CounterOverflow {
                name: truncate_for_error(name),
            },
        })
    }

    /// Erases the entity up to `watermark`: raises the watermark and drops everything at or below it.
    pub fn erase(&mut self, watermark: Marker) {
        if self.erased_at.as_ref().is_none_or(|w| watermark > *w) {
            self.erased_at = Some(watermark);
        }
        self.apply_watermark();
    }

    fn apply_watermark(&mut self) {
        let Some(w) = self.erased_at.clone() else {
            return;
        };
        for map in self.maps_mut() {
            map.retain_above(&w);
        }
        if let Some(identity) = self.identity.present_mut() {
            identity.retain_above(&w);
        }
    }

    /// Merges another replica's state into this one. Returns true if `self` changed (exactly: a write
    /// that `other` holds but the joint watermark erases is no change).
    pub fn merge(&mut self, other: &Profile) -> bool {
        let raised = match &other.erased_at {
            Some(w) if self.erased_at.as_ref().is_none_or(|ours| w > ours) => {
                self.erased_at = Some(w.clone());
                self.apply_watermark();
                true
            }
            _ => false,
        };
        // Join only what survives the joint watermark. Erasure commutes with merge, so the state is the
        // same as joining first and erasing after, but a feature that would be inserted and dropped at
        // once is not reported as a change.
        let filtered;
        let other = match &self.erased_at {
            Some(w) => {
                let mut o = other.clone();
                o.erased_at = Some(w.clone());
                o.apply_watermark();
                filtered = o;
                &filtered
            }
            None => other,
        };
        let mut changed = merge_map(&mut self.gauges, &other.gauges);
        changed |= merge_map(&mut self.counters, &other.counters);
        changed |= merge_map(&mut self.flags, &other.flags);
        changed |= merge_map(&mut self.windows, &other.windows);
        // Empty parts are the bottom of their lattices: joining one changes nothing, so a merge of a
        // profile that never ingested or linked allocates neither.
        if let Some(seen) = other.seen.present() {
            changed |= self.seen.get_mut().merge(seen);
        }
        if let Some(identity) = other.identity.present() {
            changed |= self.identity.get_mut().merge(identity);
        }
        changed || raised
    }

    /// Whether [`Profile::expire`] at `now_ms` would change anything (cheap: no copy).
    pub fn has_expired(&self, now_ms: u64) -> bool {
        self.maps().iter().any(|m| m.has_expired(now_ms)) || self.identity.has_expired(now_ms)
    }

    /// Applies expiry to every feature (expired gauges become tombstones, expired flag siblings go).
    /// Returns true if anything changed (the caller may then persist the smaller state).
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let features = self
            .maps_mut()
            .into_iter()
            .fold(false, |changed, m| m.expire(now_ms) | changed);
        let linked = self
            .identity
            .present_mut()
            .is_some_and(|identity| identity.expire(now_ms));
        linked | features
    }

    /// The greatest timestamp anywhere in the profile (used to recover the clock at startup).
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        let features = self.maps().into_iter().filter_map(|m| m.max_timestamp());
        features
            .chain(self.erased_at.iter().map(|w| w.ts))
            .chain(self.identity.max_timestamp())
            .max()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hlc::{Clock, NodeId};
    use proptest::prelude::*;

    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    pub(crate) const NAMES: [&str; 3] = ["a", "b", "c"];

    fn node(i: usize) -> NodeId {
        NodeId::new(NODES[i]).expect("valid")
    }

    /// Node `i`'s legacy actor.
    pub(crate) fn actor(i: usize) -> Actor {
        Actor::legacy(node(i))
    }

    /// Every profile in memory is this size before its features: four maps of one pointer each, the
    /// watermark, and one pointer each for the dedup set and the identity links. It was 192 bytes: the
    /// maps were `Vec`s (24 bytes each), and the dedup set and identity links took 72 inline.
    #[test]
    fn a_profile_shell_is_small() {
        assert_eq!(std::mem::size_of::<Profile>(), 72);
    }

    /// A profile that never ingested or linked allocates neither part, through a write, a merge, an
    /// erasure, an expiry pass and a decode of its encoding.
    #[test]
    fn sparse_parts_stay_unallocated() {
        let limits = Limits::default();
        let mut clock = Clock::new(node(0), 1_000);
        let mut p = Profile::default();
        let v = Value::I64(1);
        let update = GaugeUpdate {
            name: "a",
            value: &v,
            expires_at_ms: Some(5),
        };
        p.put_gauges(&[update], &clock.stamp(1), &limits)
            .expect("valid");
        let other = p.clone();
        p.merge(&other);
        p.erase(clock.stamp(2));
        p.expire(10);
        let cfg = bincode::config::standard();
        let bytes = bincode::encode_to_vec(&p, cfg).expect("encodes");
        let (back, _): (Profile, usize) = bincode::decode_from_slice(&bytes, cfg).expect("decodes");
        for q in [&p, &back] {
            assert!(q.seen.present().is_none() && q.identity.present().is_none());
        }
        assert_eq!(back, p);
    }

    /// One step of a random history over three replicas.
    #[derive(Debug, Clone)]
    pub(crate) enum Step {
        Put {
            at: usize,
            name: usize,
            value: i64,
            ttl: Option<u64>,
        },
        Incr {
            at: usize,
            name: usize,
            delta: i64,
        },
        Flag {
            at: usize,
            name: usize,
            value: bool,
            context_from: Option<usize>,
            ttl: Option<u64>,
        },
        Erase {
            at: usize,
        },
        Sync {
            from: usize,
            to: usize,
        },
        Tick {
            ms: u64,
        },
    }

    pub(crate) fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (
                0..3usize,
                0..3usize,
                -5i64..5,
                proptest::option::of(0u64..30)
            )
                .prop_map(|(at, name, value, ttl)| Step::Put {
                    at,
                    name,
                    value,
                    ttl
                }),
            (0..3usize, 0..3usize, -5i64..5).prop_map(|(at, name, delta)| Step::Incr {
                at,
                name,
                delta
            }),
            (
                0..3usize,
                0..3usize,
                any::<bool>(),
                proptest::option::of(0..3usize),
                proptest::option::of(0u64..30)
            )
                .prop_map(|(at, name, value, context_from, ttl)| Step::Flag {
                    at,
                    name,
                    value,
                    context_from,
                    ttl
                }),
            (0..3usize).prop_map(|at| Step::Erase { at }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
            (0u64..20).prop_map(|ms| Step::Tick { ms }),
        ]
    }

    /// Plays a history and returns the three replicas' states. Writes that the limits refuse (kind
    /// mismatches, sibling bound) are skipped, as a node would refuse them.
    pub(crate) fn play(steps: &[Step]) -> [Profile; 3] {
        let limits = Limits {
            max_siblings: 4,
            ..Limits::default()
        };
        let mut clocks: Vec<Clock> = (0..3).map(|i| Clock::new(node(i), 1_000)).collect();
        let mut reps: [Profile; 3] = Default::default();
        let mut now = 1_000u64;
        for s in steps {
            match s.clone() {
                Step::Put {
                    at,
                    name,
                    value,
                    ttl,
                } => {
                    let m = clocks[at].stamp(now);
                    let v = Value::I64(value);
                    let u = GaugeUpdate {
                        name: NAMES[name],
                        value: &v,
                        expires_at_ms: ttl.map(|t| now + t),
                    };
                    let _ = reps[at].put_gauges(&[u], &m, &limits);
                }
                Step::Incr { at, name, delta } => {
                    let ts = clocks[at].tick(now);
                    let _ = reps[at].increment(&[(NAMES[name], delta)], &actor(at), ts, &limits);
                }
                Step::Flag {
                    at,
                    name,
                    value,
                    context_from,
                    ttl,
                } => {
                    let ctx = context_from
                        .and_then(|r| reps[r].flags.get(NAMES[name]).map(|f| f.clock.clone()))
                        .unwrap_or_default();
                    let m = clocks[at].stamp(now);
                    let u = FlagUpdate {
                        name: NAMES[name],
                        value,
                        context: &ctx,
                        marker: m,
                        actor: clocks[at].actor().clone(),
                        expires_at_ms: ttl.map(|t| now + t),
                    };
                    let _ = reps[at].set_flag(u, now, &limits);
                }
                Step::Erase { at } => {
                    let m = clocks[at].stamp(now);
                    reps[at].erase(m);
                }
                Step::Sync { from, to } => {
                    let src = reps[from].clone();
                    if let Some(ts) = src.max_timestamp() {
                        let _ = clocks[to].observe(ts, now);
                    }
                    reps[to].merge(&src);
                }
                Step::Tick { ms } => now += ms,
            }
        }
        reps
    }

    fn merged(a: &Profile, b: &Profile) -> Profile {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn merge_is_commutative(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, _] = play(&steps);
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, c] = play(&steps);
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, _] = play(&steps);
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
            prop_assert_eq!(merged(&ab, &a), ab);
        }

        #[test]
        fn expiry_commutes_with_merge(steps in proptest::collection::vec(step(), 0..40), now in 1_000u64..1_500) {
            let [mut a, mut b, _] = play(&steps);
            let mut m = merged(&a, &b);
            m.expire(now);
            a.expire(now);
            b.expire(now);
            prop_assert_eq!(m, merged(&a, &b));
        }

        /// The node persists and re-replicates a merged state only when `merge` says it changed.
        #[test]
        fn merge_reports_exactly_whether_it_changed(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, c] = play(&steps);
            for (x, y) in [(&a, &b), (&b, &c), (&c, &a)] {
                let mut m = x.clone();
                let changed = m.merge(y);
                prop_assert_eq!(changed, m != *x);
            }
        }

        /// `has_expired` (the node's cheap sweep check) predicts exactly when `expire` changes something,
        /// and `expire` reports exactly whether it did (the caller persists only then).
        #[test]
        fn expiry_is_predicted_and_reported_exactly(steps in proptest::collection::vec(step(), 0..40), now in 1_000u64..1_500) {
            let [a, b, c] = play(&steps);
            let ab = merged(&a, &b);
            for p in [a, b, c, ab] {
                let mut e = p.clone();
                let predicted = p.has_expired(now);
                let changed = e.expire(now);
                prop_assert_eq!(changed, e != p, "expire reports exactly whether it changed");
                prop_assert_eq!(predicted, changed, "has_expired predicts expire");
            }
        }

        /// The clock is recovered past `max_timestamp` at start-up: it must be the greatest stamp anywhere
        /// in the profile (gauge markers, counter slots, flag siblings, the erasure watermark).
        #[test]
        fn max_timestamp_is_the_greatest_stamp(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, c] = play(&steps);
            for p in [a, b, c] {
                let gauges = p.gauges.values().map(|g| g.marker.ts);
                let slots = p.counters.values().flat_map(|c| c.slots.values());
                let siblings = p.flags.values().flat_map(|f| &f.siblings);
                let stamps = gauges
                    .chain(slots.flat_map(|s| [s.first, s.last]))
                    .chain(siblings.map(|s| s.marker.ts))
                    .chain(p.erased_at.iter().map(|w| w.ts));
                prop_assert_eq!(p.max_timestamp(), stamps.max());
            }
        }

        #[test]
        fn nothing_at_or_below_the_watermark_survives_a_merge(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, c] = play(&steps);
            let all = merged(&merged(&a, &b), &c);
            if let Some(w) = &all.erased_at {
                prop_assert!(all.gauges.values().all(|g| g.marker > *w));
                prop_assert!(all.flags.values().flat_map(|f| &f.siblings).all(|s| s.marker > *w));
                let above = |(a, s): (&Actor, &crate::crdt::counter::CounterSlot)| {
                    Marker { ts: s.first, node: a.node.clone() } > *w
                };
                prop_assert!(all.counters.values().flat_map(|c| c.slots.iter()).all(above));
            }
        }
    }

    fn marker(ms: u64) -> Marker {
        Marker {
            ts: Timestamp::from_millis(ms),
            node: node(0),
        }
    }

    /// `maps()` lists each kind's map once, under its own kind, and each map answers for its own names.
    #[test]
    fn each_map_answers_for_its_own_kind() {
        let limits = Limits::default();
        let mut p = Profile::default();
        assert!(p.maps().iter().all(|m| m.is_empty()));
        p.increment(&[("c", 1)], &actor(0), Timestamp::from_millis(1), &limits)
            .expect("valid");
        let kinds: Vec<(FeatureKind, usize, bool, bool)> = p
            .maps()
            .iter()
            .map(|m| (m.kind(), m.len(), m.is_empty(), m.contains("c")))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (FeatureKind::Gauge, 0, true, false),
                (FeatureKind::Counter, 1, false, true),
                (FeatureKind::Flag, 0, true, false),
                (FeatureKind::Window, 0, true, false),
            ]
        );
    }

    #[test]
    fn erase_hides_everything_and_drops_older_writes() {
        let limits = Limits::default();
        let mut p = Profile::default();
        let v = Value::F64(1.0);
        let u = [GaugeUpdate {
            name: "a",
            value: &v,
            expires_at_ms: None,
        }];
        p.put_gauges(&u, &marker(10), &limits).expect("valid");
        p.increment(&[("n", 3)], &actor(0), Timestamp::from_millis(11), &limits)
            .expect("valid");
        p.erase(marker(20));
        assert_eq!(p.view(0, None), None);
        let out = p.put_gauges(&u, &marker(15), &limits).expect("valid");
        assert_eq!(out, vec![WriteOutcome::Superseded]);
        assert_eq!(p.view(0, None), None);
        let out = p.put_gauges(&u, &marker(25), &limits).expect("valid");
        assert_eq!(out, vec![WriteOutcome::Applied]);
        assert!(p.view(0, None).is_some());
    }

    #[test]
    fn a_refused_multi_feature_write_changes_nothing() {
        let limits = Limits {
            max_features_per_entity: 2,
            ..Limits::default()
        };
        let mut p = Profile::default();
        let v = Value::Bool(true);
        let u = |name| GaugeUpdate {
            name,
            value: &v,
            expires_at_ms: None,
        };
        p.put_gauges(&[u("a")], &marker(1), &limits).expect("fits");
        let err = p.put_gauges(&[u("b"), u("c")], &marker(2), &limits);
        assert!(matches!(
            err,
            Err(Error::TooManyFeatures { count: 3, max: 2 })
        ));
        assert_eq!(p.gauges.len(), 1);
        let err = p.increment(
            &[("x", 1), ("a", 1)],
            &actor(0),
            Timestamp::from_millis(3),
            &limits,
        );
        assert!(matches!(err, Err(Error::KindMismatch { .. })));
        assert!(p.counters.is_empty());
        p.increment(
            &[("x", i64::MAX)],
            &actor(0),
            Timestamp::from_millis(4),
            &limits,
        )
        .expect("fits");
        let err = p.increment(
            &[("x", i64::MAX), ("x", i64::MAX), ("x", 2)],
            &actor(0),
            Timestamp::from_millis(5),
            &limits,
        );
        assert!(matches!(err, Err(Error::CounterOverflow { .. })));
        assert_eq!(p.counters["x"].value(), i64::MAX);
    }

    /// Two slots that each fit but together exceed `i64` would read back saturated: a local increment
    /// that leaves the total outside `i64` is refused (a merge, being a lattice join, always applies).
    #[test]
    fn a_counter_whose_total_would_leave_i64_is_refused() {
        let limits = Limits::default();
        let mut big = Profile::default();
        big.increment(
            &[("x", i64::MAX)],
            &actor(0),
            Timestamp::from_millis(1),
            &limits,
        )
        .expect("fits");
        let mut p = Profile::default();
        p.increment(&[("x", -1)], &actor(1), Timestamp::from_millis(2), &limits)
            .expect("fits");
        p.merge(&big);
        assert_eq!(p.counters["x"].value(), i64::MAX - 1);
        let refused = p.increment(&[("x", 2)], &actor(1), Timestamp::from_millis(3), &limits);
        assert!(
            matches!(refused, Err(Error::CounterOverflow { .. })),
            "{refused:?}"
        );
        assert_eq!(
            p.counters["x"].value(),
            i64::MAX - 1,
            "a refused increment changes nothing"
        );
        p.increment(&[("x", 1)], &actor(1), Timestamp::from_millis(4), &limits)
            .expect("exactly i64::MAX fits");
    }

    #[test]
    fn expired_gauges_become_tombstones_that_beat_their_own_live_copies() {
        let limits = Limits::default();
        let mut p = Profile::default();
        let v = Value::I64(7);
        p.put_gauges(
            &[GaugeUpdate {
                name: "a",
                value: &v,
                expires_at_ms: Some(100),
            }],
            &marker(1),
            &limits,
        )
        .expect("valid");
        let live = p.clone();
        assert!(p.view(99, None).is_some());
        assert_eq!(p.view(100, None), None);
        assert!(p.expire(100));
        p.merge(&live);
        assert_eq!(
            p.gauges["a"].value, None,
            "replication cannot resurrect an expired value"
        );
    }

    #[test]
    fn projection_limits_the_view() {
        let limits = Limits::default();
        let mut p = Profile::default();
        let v = Value::I64(1);
        let u = [
            GaugeUpdate {
                name: "a",
                value: &v,
                expires_at_ms: None,
            },
            GaugeUpdate {
                name: "b",
                value: &v,
                expires_at_ms: None,
            },
        ];
        p.put_gauges(&u, &marker(1), &limits).expect("valid");
        let view = p.view(0, Some(&["b".to_owned()])).expect("visible");
        assert_eq!(view.features.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(p.view(0, Some(&["zz".to_owned()])), None);
    }
}
