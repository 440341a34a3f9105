//! The feature kinds as lattices: [`gauge`] (LWW register), [`counter`] (per-node PN counter) and [`flag`]
//! (multi-value register with dotted version vectors), [`window`] (event-time bucketed aggregates with
//! per-node slots, distinct counts as bottom-k sketches), plus the [`value`] a gauge holds.
//!
//! Every kind implements one trait, [`Lattice`]: a join (`merge`), the erasure rule, the expiry rule and
//! the greatest timestamp it carries. [`Profile`](crate::profile::Profile) handles its maps only through
//! this trait, so a new kind is a new file here plus one entry in [`FeatureKind`] and in the profile's
//! list of maps (see docs/architecture.md, "Adding a feature kind").
//!
//! Guarantees (checked for every kind by the generic law test in this module's tests, on states built
//! to collide: equal markers with different values, one node's diverging counter slots, concurrent dots):
//! - `merge` is commutative, associative and idempotent, and reports exactly whether `self` changed;
//! - erasure and expiry commute with `merge` (they are part of the lattice, so replication can never bring
//!   back what they dropped). Known gap: windows, whose pruning depends on their newest bucket, which
//!   erasure can remove (see [`window`]); their erasure law is not checked.

pub mod counter;
pub mod flag;
pub mod gauge;
pub mod seen;
pub mod value;
pub mod window;

use serde::{Deserialize, Serialize};

use crate::hlc::{Marker, Timestamp};

/// The kind of a feature; it decides the merge rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// Last-writer-wins register ([`gauge::GaugeRegister`]).
    Gauge,
    /// PN counter ([`counter::Counter`]).
    Counter,
    /// Multi-value register with dotted version vectors ([`flag::FlagRegister`]).
    Flag,
    /// Event-time bucketed aggregate with per-node slots ([`window::Window`]).
    Window,
}

impl FeatureKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Gauge => "gauge",
            FeatureKind::Counter => "counter",
            FeatureKind::Flag => "flag",
            FeatureKind::Window => "window",
        }
    }
}

/// A feature kind: a lattice that a profile keeps in a map by feature name.
pub trait Feature: Lattice {
    /// The kind this lattice implements.
    const KIND: FeatureKind;
}

/// A join-semilattice of replicated state (a feature's, or a profile's dedup set), with the erasure and
/// expiry rules that are part of it.
pub trait Lattice: Clone + PartialEq + std::fmt::Debug {
    /// Joins `other` into `self`. Returns true if `self` changed.
    fn merge(&mut self, other: &Self) -> bool;

    /// Drops everything stamped at or below the entity's erasure `watermark`. Returns whether the feature
    /// still has to be kept: `false` means the entry can be removed from the profile without losing
    /// anything (a kept entry may still be invisible, e.g. a flag keeps its clock so dropped siblings stay
    /// dominated).
    fn retain_above(&mut self, watermark: &Marker) -> bool;

    /// The greatest timestamp in the state (the clock is recovered past it at start-up).
    fn max_timestamp(&self) -> Option<Timestamp>;

    /// Whether [`Lattice::expire`] at `now_ms` would change anything (cheap: no copy).
    fn has_expired(&self, _now_ms: u64) -> bool {
        false
    }

    /// Applies expiry at `now_ms` (turning expired values into what the kind keeps of them). Returns true
    /// if anything changed.
    fn expire(&mut self, _now_ms: u64) -> bool {
        false
    }
}

#[cfg(test)]
pub(crate) mod laws {
    //! The generic law test: every [`Lattice`] is checked with it on states built to collide.

    use proptest::prelude::*;

    use super::Lattice;

    fn joined<L: Lattice>(a: &L, b: &L) -> L {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    /// Commutativity, associativity, idempotence, and that `merge` reports a change exactly when there
    /// was one.
    pub(crate) fn check<L: Lattice>(a: &L, b: &L, c: &L) -> Result<(), TestCaseError> {
        prop_assert_eq!(joined(a, b), joined(b, a), "commutative");
        prop_assert_eq!(
            joined(&joined(a, b), c),
            joined(a, &joined(b, c)),
            "associative"
        );
        prop_assert_eq!(joined(a, a), a.clone(), "idempotent");
        let ab = joined(a, b);
        prop_assert_eq!(joined(&ab, b), ab.clone(), "absorbs what it merged");
        let mut x = a.clone();
        let changed = x.merge(b);
        prop_assert_eq!(changed, x != *a, "merge reports exactly whether it changed");
        Ok(())
    }

    /// Expiry at any instant commutes with merge; `expire` reports exactly whether it changed the state,
    /// and `has_expired` predicts it (a sweep that trusts either never skips or rewrites needlessly).
    pub(crate) fn check_expiry<L: Lattice>(a: &L, b: &L, now_ms: u64) -> Result<(), TestCaseError> {
        let mut m = joined(a, b);
        m.expire(now_ms);
        let (mut x, mut y) = (a.clone(), b.clone());
        x.expire(now_ms);
        y.expire(now_ms);
        prop_assert_eq!(m, joined(&x, &y), "expiry commutes with merge");
        for s in [a, b] {
            let mut e = s.clone();
            let predicted = s.has_expired(now_ms);
            let changed = e.expire(now_ms);
            prop_assert_eq!(
                changed,
                e != *s,
                "expire reports exactly whether it changed"
            );
            prop_assert_eq!(predicted, changed, "has_expired predicts expire");
        }
        Ok(())
    }

    /// Erasure at any watermark commutes with merge (replication can never bring back what it dropped),
    /// and whatever it keeps says so.
    pub(crate) fn check_erasure<L: Lattice>(
        a: &L,
        b: &L,
        watermark: &crate::hlc::Marker,
    ) -> Result<(), TestCaseError> {
        let mut m = joined(a, b);
        m.retain_above(watermark);
        let (mut x, mut y) = (a.clone(), b.clone());
        x.retain_above(watermark);
        y.retain_above(watermark);
        prop_assert_eq!(m, joined(&x, &y), "erasure commutes with merge");
        Ok(())
    }
}

#[cfg(test)]
mod law_tests {
    //! Every kind through the one law test, on states built to collide.

    use proptest::prelude::*;

    use super::counter::{Counter, CounterSlot};
    use super::flag::{CausalContext, FlagRegister, FlagWrite};
    use super::gauge::GaugeRegister;
    use super::laws;
    use super::value::Value;
    use super::window::{Aggregation, Observation, Window, WindowSpec};
    use super::FeatureKind;
    use crate::hlc::{Actor, Marker, NodeId, Timestamp};

    fn node(i: u8) -> NodeId {
        NodeId::new(format!("n{i}")).expect("valid")
    }

    /// Node `i`'s legacy actor (incarnation 0).
    fn actor(i: u8) -> Actor {
        Actor::legacy(node(i))
    }

    /// Actors of two nodes in two incarnations each (a node that restarted as a new actor).
    fn any_actor() -> impl Strategy<Value = Actor> {
        (1u8..3, 0u64..2).prop_map(|(n, incarnation)| Actor::new(node(n), incarnation))
    }

    /// Markers from a tiny space, so equal markers carrying different values are common (event-time
    /// writes produce exactly that).
    fn marker() -> impl Strategy<Value = Marker> {
        (0u64..3, 0u32..2, 1u8..3).prop_map(|(wall_ms, logical, n)| Marker {
            ts: Timestamp { wall_ms, logical },
            node: node(n),
        })
    }

    fn gauge() -> impl Strategy<Value = GaugeRegister> {
        (
            marker(),
            proptest::option::of(prop_oneof![
                (0i64..3).prop_map(Value::I64),
                any::<bool>().prop_map(Value::Bool),
                prop_oneof![Just(-2.0), Just(0.5), Just(1.5)].prop_map(Value::F64),
                prop_oneof![Just("a"), Just("b")].prop_map(|s| Value::Str(s.into())),
            ]),
            proptest::option::of(0u64..4),
        )
            // Only reachable states: a tombstone is made by expiry, so it always carries its expiry.
            .prop_map(|(marker, value, expires_at_ms)| GaugeRegister {
                marker,
                expires_at_ms: if value.is_none() {
                    Some(expires_at_ms.unwrap_or(0))
                } else {
                    expires_at_ms
                }
                .into(),
                value,
            })
    }

    /// Slots of the same two nodes with colliding `first` stamps: one node's slots diverge.
    fn counter() -> impl Strategy<Value = Counter> {
        proptest::collection::btree_map(
            any_actor(),
            (0u64..3, 0u64..3, 0u64..5, 0u64..5).prop_map(|(first, extra, inc, dec)| CounterSlot {
                first: Timestamp::from_millis(first),
                last: Timestamp::from_millis(first + extra),
                inc,
                dec,
            }),
            0..3,
        )
        .prop_map(|slots: std::collections::BTreeMap<_, _>| Counter {
            slots: slots.into(),
        })
    }

    /// Three replicas of one flag after random writes (through one or several nodes, with contexts read
    /// from any replica: fresh, stale or empty) and partial syncs.
    fn flags() -> impl Strategy<Value = [FlagRegister; 3]> {
        let step = (
            0usize..3,
            any::<bool>(),
            0usize..4,
            0usize..3,
            any::<bool>(),
        );
        proptest::collection::vec(step, 0..24).prop_map(|steps| {
            let mut reps: [FlagRegister; 3] = Default::default();
            for (i, (at, value, ctx_from, sync_to, sync)) in steps.into_iter().enumerate() {
                if sync {
                    let src = reps[at].clone();
                    super::Lattice::merge(&mut reps[sync_to], &src);
                    continue;
                }
                let context = match ctx_from {
                    3 => CausalContext::default(),
                    r => reps[r].clock.clone(),
                };
                let write = FlagWrite {
                    name: "f",
                    value,
                    context: &context,
                    marker: Marker {
                        ts: Timestamp::from_millis(i as u64),
                        node: node(at as u8 + 1),
                    },
                    // Replica 0's node restarts as a new actor half way through.
                    actor: Actor::new(node(at as u8 + 1), u64::from(at == 0 && i >= 12)),
                    expires_at_ms: (i % 3 == 0).then_some(i as u64 + 2),
                    max_siblings: 8,
                };
                let _ = reps[at].write(write);
            }
            reps
        })
    }

    /// Windows of one definition, filled by two nodes with events in any order (late ones refused), with
    /// colliding slots of one node.
    fn window() -> impl Strategy<Value = Window> {
        let spec = WindowSpec {
            aggregation: Aggregation::Sum,
            bucket_ms: 10,
            span_ms: 40,
            max_exact: 0,
        };
        proptest::collection::vec((any_actor(), 0u64..120, -3i32..9, 0u64..4), 0..12).prop_map(
            move |evs| {
                let mut w = Window::new(spec);
                for (a, at, v, first) in evs {
                    let _ = w.add(
                        &a,
                        at,
                        Observation::Value(f64::from(v)),
                        Timestamp::from_millis(first),
                    );
                }
                w
            },
        )
    }

    /// Distinct-count windows under one of two sketch sizes (so the spec order is exercised), filled by two
    /// nodes with hashes from a tiny space (so sketches truncate and one node's slots collide with equal
    /// stamps and different hashes), events in any order (late ones refused).
    fn distinct_window() -> impl Strategy<Value = Window> {
        (
            prop_oneof![Just(3u32), Just(4u32)],
            proptest::collection::vec((any_actor(), 0u64..120, 0u64..7, 0u64..4), 0..16),
        )
            .prop_map(|(k, evs)| {
                let mut w = Window::new(WindowSpec {
                    aggregation: Aggregation::DistinctCount,
                    bucket_ms: 10,
                    span_ms: 40,
                    max_exact: k,
                });
                for (a, at, h, first) in evs {
                    let _ = w.add(
                        &a,
                        at,
                        Observation::Distinct(h),
                        Timestamp::from_millis(first),
                    );
                }
                w
            })
    }

    /// Errors name kinds by `as_str`; it must be the name the JSON wire format uses for the same kind.
    #[test]
    fn kind_names_are_the_wire_names() {
        for kind in [
            FeatureKind::Gauge,
            FeatureKind::Counter,
            FeatureKind::Flag,
            FeatureKind::Window,
        ] {
            let json = serde_json::to_string(&kind).expect("serialises");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    /// The erasure law is a checker: fed a known defect it must fail. Windows have that defect (a known
    /// gap, see docs/architecture.md "Adding a feature kind"): pruning is relative to the newest bucket,
    /// which erasure can remove, so erasing after a merge drops an old bucket that erasing first keeps.
    #[test]
    fn the_erasure_law_catches_a_window_whose_newest_bucket_is_erased() {
        let spec = WindowSpec {
            aggregation: Aggregation::Count,
            bucket_ms: 10,
            span_ms: 40,
            max_exact: 0,
        };
        let (mut a, mut b) = (Window::new(spec), Window::new(spec));
        a.add(
            &actor(1),
            100,
            Observation::Value(1.0),
            Timestamp::from_millis(1),
        )
        .expect("fits");
        b.add(
            &actor(2),
            0,
            Observation::Value(1.0),
            Timestamp::from_millis(5),
        )
        .expect("fits");
        let watermark = Marker {
            ts: Timestamp::from_millis(2),
            node: node(1),
        };
        assert!(laws::check_erasure(&a, &b, &watermark).is_err());
        // The same law holds where nothing erased is the newest bucket.
        let mut c = Window::new(spec);
        c.add(
            &actor(2),
            100,
            Observation::Value(1.0),
            Timestamp::from_millis(6),
        )
        .expect("fits");
        assert!(laws::check_erasure(&a, &c, &watermark).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn windows_are_a_lattice(a in window(), b in window(), c in window(), now in 0u64..130) {
            laws::check(&a, &b, &c)?;
            laws::check_expiry(&a, &b, now)?;
        }

        #[test]
        fn distinct_windows_are_a_lattice(
            a in distinct_window(), b in distinct_window(), c in distinct_window(), now in 0u64..130,
        ) {
            laws::check(&a, &b, &c)?;
            laws::check_expiry(&a, &b, now)?;
            // Reads are functions of the joined state: equal states read equal everywhere.
            let (mut ab, mut ba) = (a.clone(), b.clone());
            super::Lattice::merge(&mut ab, &b);
            super::Lattice::merge(&mut ba, &a);
            prop_assert_eq!(ab.value(now), ba.value(now));
        }

        #[test]
        fn gauges_are_a_lattice(a in gauge(), b in gauge(), c in gauge(), now in 0u64..5, w in marker()) {
            laws::check(&a, &b, &c)?;
            laws::check_expiry(&a, &b, now)?;
            laws::check_erasure(&a, &b, &w)?;
        }

        #[test]
        fn counters_are_a_lattice(a in counter(), b in counter(), c in counter(), now in 0u64..5, w in marker()) {
            laws::check(&a, &b, &c)?;
            laws::check_expiry(&a, &b, now)?;
            laws::check_erasure(&a, &b, &w)?;
        }

        #[test]
        fn flags_are_a_lattice(reps in flags(), now in 0u64..30, w in marker()) {
            let [a, b, c] = reps;
            laws::check(&a, &b, &c)?;
            laws::check_expiry(&a, &b, now)?;
            laws::check_erasure(&a, &b, &w)?;
        }
    }
}
