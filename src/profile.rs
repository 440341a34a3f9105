//! `Profile`: every feature of one entity, with one merge, and the read view clients get.
//!
//! A profile is three maps — gauges, counters, flags — plus the entity's erasure watermark.
//!
//! Guarantees:
//! - [`Profile::merge`] is the join of the per-feature lattices followed by dropping everything at or below
//!   the joint erasure watermark; it is commutative, associative and idempotent (property-tested below on
//!   states produced by random writes, erasures and partial syncs between three replicas).
//! - Local writes validate everything first and then apply, so a refused multi-feature write changes nothing.
//! - A feature name belongs to one kind per entity: a local write of another kind is refused with
//!   [`Error::KindMismatch`]. The three maps are independent lattices, so if two replicas concurrently
//!   create the same name with different kinds, both survive the merge; reads then show the flag over the
//!   counter over the gauge (a fixed precedence, so every replica shows the same thing).
//! - Erasure: once a watermark is set, every gauge, counter slot and flag sibling at or below it is dropped
//!   on every write and merge, so erased data can never be resurrected by replication.
//!
//! The profile never reads the clock: callers pass timestamps and `now_ms`.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::counter::Counter;
use crate::error::{truncate_for_error, Error, Result};
use crate::flag::{CausalContext, FlagRegister, FlagWrite};
use crate::gauge::GaugeRegister;
use crate::hlc::{Marker, NodeId, Timestamp};
use crate::limits::Limits;
use crate::value::Value;

/// The kind of a feature; it decides the merge rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// Last-writer-wins register.
    Gauge,
    /// PN counter.
    Counter,
    /// Multi-value register with dotted version vectors.
    Flag,
}

impl FeatureKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Gauge => "gauge",
            FeatureKind::Counter => "counter",
            FeatureKind::Flag => "flag",
        }
    }
}

/// All features of one entity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct Profile {
    /// Gauge features by name.
    pub gauges: BTreeMap<String, GaugeRegister>,
    /// Counter features by name.
    pub counters: BTreeMap<String, Counter>,
    /// Flag features by name.
    pub flags: BTreeMap<String, FlagRegister>,
    /// The erasure watermark: everything at or below it is gone.
    pub erased_at: Option<Marker>,
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
    /// Number of distinct feature entries (all kinds).
    pub fn feature_count(&self) -> usize {
        self.gauges.len() + self.counters.len() + self.flags.len()
    }

    /// Whether the profile holds nothing at all (no features and no watermark).
    pub fn is_empty(&self) -> bool {
        self.feature_count() == 0 && self.erased_at.is_none()
    }

    fn kind_of(&self, name: &str) -> Option<FeatureKind> {
        if self.gauges.contains_key(name) {
            Some(FeatureKind::Gauge)
        } else if self.counters.contains_key(name) {
            Some(FeatureKind::Counter)
        } else if self.flags.contains_key(name) {
            Some(FeatureKind::Flag)
        } else {
            None
        }
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
        let mut outcomes = Vec::with_capacity(updates.len());
        for u in updates {
            if self.is_erased(marker) {
                outcomes.push(WriteOutcome::Superseded);
                continue;
            }
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
                    self.gauges.insert(u.name.to_owned(), incoming);
                    WriteOutcome::Applied
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Adds `deltas` to counters on behalf of `node` at `ts`. Validates everything (kinds, count,
    /// overflow) first; returns each counter's new value in request order.
    pub fn increment(
        &mut self,
        deltas: &[(&str, i64)],
        node: &NodeId,
        ts: Timestamp,
        limits: &Limits,
    ) -> Result<Vec<i64>> {
        self.check_write(deltas.iter().map(|d| d.0), FeatureKind::Counter, limits)?;
        let stamp = Marker {
            ts,
            node: node.clone(),
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
                .apply(node, *delta, ts)
                .ok_or_else(|| Error::CounterOverflow {
                    name: truncate_for_error(name),
                })?;
        }
        for (name, counter) in touched {
            self.counters.insert(name.to_owned(), counter);
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
            expires_at_ms: update.expires_at_ms,
            max_siblings: limits.max_siblings,
        })?;
        self.flags.insert(update.name.to_owned(), reg);
        Ok(())
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
        self.gauges.retain(|_, g| g.marker > w);
        for c in self.counters.values_mut() {
            c.erase_below(&w);
        }
        self.counters.retain(|_, c| !c.slots.is_empty());
        for f in self.flags.values_mut() {
            f.erase_below(&w);
        }
    }

    /// Merges another replica's state into this one. Returns true if `self` changed.
    pub fn merge(&mut self, other: &Profile) -> bool {
        let before_watermark = self.erased_at.clone();
        let mut changed = false;
        for (name, g) in &other.gauges {
            match self.gauges.get_mut(name) {
                Some(ours) => changed |= ours.merge(g),
                None => {
                    self.gauges.insert(name.clone(), g.clone());
                    changed = true;
                }
            }
        }
        for (name, c) in &other.counters {
            match self.counters.get_mut(name) {
                Some(ours) => changed |= ours.merge(c),
                None => {
                    self.counters.insert(name.clone(), c.clone());
                    changed = true;
                }
            }
        }
        for (name, f) in &other.flags {
            match self.flags.get_mut(name) {
                Some(ours) => changed |= ours.merge(f),
                None => {
                    self.flags.insert(name.clone(), f.clone());
                    changed = true;
                }
            }
        }
        if let Some(w) = &other.erased_at {
            if self.erased_at.as_ref().is_none_or(|ours| w > ours) {
                self.erased_at = Some(w.clone());
            }
        }
        if changed || self.erased_at != before_watermark {
            let before = self.feature_count();
            self.apply_watermark();
            changed |= self.erased_at != before_watermark || before != self.feature_count();
        }
        changed
    }

    /// Whether [`Profile::expire`] at `now_ms` would change anything (cheap: no copy).
    pub fn has_expired(&self, now_ms: u64) -> bool {
        let due = |at: Option<u64>| at.is_some_and(|at| at <= now_ms);
        self.gauges
            .values()
            .any(|g| g.value.is_some() && due(g.expires_at_ms))
            || self
                .flags
                .values()
                .any(|f| f.siblings.iter().any(|s| due(s.expires_at_ms)))
    }

    /// Turns expired gauges into tombstones and drops expired flag siblings. Returns true if anything
    /// changed (the caller may then persist the smaller state).
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        for g in self.gauges.values_mut() {
            changed |= g.expire(now_ms);
        }
        for f in self.flags.values_mut() {
            changed |= f.expire(now_ms);
        }
        changed
    }

    /// The greatest timestamp anywhere in the profile (used to recover the clock at startup).
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        let gauges = self.gauges.values().map(|g| g.marker.ts);
        let counters = self.counters.values().filter_map(Counter::max_timestamp);
        let flags = self.flags.values().filter_map(FlagRegister::max_timestamp);
        let erased = self.erased_at.iter().map(|w| w.ts);
        gauges.chain(counters).chain(flags).chain(erased).max()
    }

    /// What a client sees at `now_ms`: the visible features, optionally only those named in `projection`.
    /// `None` if no feature is visible (never written, erased, or all expired).
    pub fn view(&self, now_ms: u64, projection: Option<&[String]>) -> Option<ProfileView> {
        let wanted = |name: &str| projection.is_none_or(|p| p.iter().any(|n| n == name));
        let mut features = BTreeMap::new();
        for (name, g) in self.gauges.iter().filter(|(n, _)| wanted(n)) {
            if let Some(value) = g.visible(now_ms) {
                features.insert(
                    name.clone(),
                    FeatureView::Gauge {
                        value: value.clone(),
                        version: g.marker.clone(),
                        expires_at_ms: g.expires_at_ms,
                    },
                );
            }
        }
        for (name, c) in self.counters.iter().filter(|(n, _)| wanted(n)) {
            features.insert(name.clone(), FeatureView::Counter { value: c.value() });
        }
        for (name, f) in self.flags.iter().filter(|(n, _)| wanted(n)) {
            if let Some(view) = FlagView::of(f, now_ms) {
                features.insert(name.clone(), FeatureView::Flag(view));
            }
        }
        if features.is_empty() {
            None
        } else {
            Some(ProfileView { features })
        }
    }

    /// The client view of one flag (empty values if it has none visible).
    pub fn flag_view(&self, name: &str, now_ms: u64) -> FlagView {
        self.flags
            .get(name)
            .and_then(|f| FlagView::of(f, now_ms))
            .unwrap_or_default()
    }
}

/// What a client sees of one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct ProfileView {
    /// Visible features by name.
    pub features: BTreeMap<String, FeatureView>,
}

/// What a client sees of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FeatureView {
    /// A gauge's current value and its version.
    Gauge {
        /// The value.
        value: Value,
        /// The `(hlc, node)` marker of the write that set it.
        version: Marker,
        /// When it expires, if it has a TTL.
        expires_at_ms: Option<u64>,
    },
    /// A counter's current value.
    Counter {
        /// The sum of all increments.
        value: i64,
    },
    /// A flag's concurrent values and the context to write back.
    Flag(FlagView),
}

/// What a client sees of one flag: every concurrent value, and the causal context that a write must carry
/// to replace them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FlagView {
    /// The siblings, in dot order. One entry when there is no conflict.
    pub values: Vec<FlagValue>,
    /// The context to send with the next write of this flag.
    pub context: CausalContext,
}

/// One sibling as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FlagValue {
    /// The value.
    pub value: bool,
    /// When and where it was written.
    pub version: Marker,
}

impl FlagView {
    fn of(reg: &FlagRegister, now_ms: u64) -> Option<FlagView> {
        let values: Vec<FlagValue> = reg
            .visible(now_ms)
            .map(|s| FlagValue {
                value: s.value,
                version: s.marker.clone(),
            })
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(FlagView {
                values,
                context: reg.clock.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Clock;
    use proptest::prelude::*;

    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn node(i: usize) -> NodeId {
        NodeId::new(NODES[i]).expect("valid")
    }

    /// One step of a random history over three replicas.
    #[derive(Debug, Clone)]
    enum Step {
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

    fn step() -> impl Strategy<Value = Step> {
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
                proptest::option::of(0..3usize)
            )
                .prop_map(|(at, name, value, context_from)| Step::Flag {
                    at,
                    name,
                    value,
                    context_from
                }),
            (0..3usize).prop_map(|at| Step::Erase { at }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
            (0u64..20).prop_map(|ms| Step::Tick { ms }),
        ]
    }

    /// Plays a history and returns the three replicas' states. Writes that the limits refuse (kind
    /// mismatches, sibling bound) are skipped, as a node would refuse them.
    fn play(steps: &[Step]) -> [Profile; 3] {
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
                    let _ = reps[at].increment(&[(NAMES[name], delta)], &node(at), ts, &limits);
                }
                Step::Flag {
                    at,
                    name,
                    value,
                    context_from,
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
                        expires_at_ms: None,
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

        #[test]
        fn nothing_at_or_below_the_watermark_survives_a_merge(steps in proptest::collection::vec(step(), 0..40)) {
            let [a, b, c] = play(&steps);
            let all = merged(&merged(&a, &b), &c);
            if let Some(w) = &all.erased_at {
                prop_assert!(all.gauges.values().all(|g| g.marker > *w));
                prop_assert!(all.flags.values().flat_map(|f| &f.siblings).all(|s| s.marker > *w));
                let above = |(n, s): (&NodeId, &crate::counter::CounterSlot)| {
                    Marker { ts: s.first, node: n.clone() } > *w
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
        p.increment(&[("n", 3)], &node(0), Timestamp::from_millis(11), &limits)
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
            &node(0),
            Timestamp::from_millis(3),
            &limits,
        );
        assert!(matches!(err, Err(Error::KindMismatch { .. })));
        assert!(p.counters.is_empty());
        p.increment(
            &[("x", i64::MAX)],
            &node(0),
            Timestamp::from_millis(4),
            &limits,
        )
        .expect("fits");
        let err = p.increment(
            &[("x", i64::MAX), ("x", i64::MAX), ("x", 2)],
            &node(0),
            Timestamp::from_millis(5),
            &limits,
        );
        assert!(matches!(err, Err(Error::CounterOverflow { .. })));
        assert_eq!(p.counters["x"].value(), i64::MAX);
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
