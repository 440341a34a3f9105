//! A client write applied in place: [`apply`]'s decision made on the stored profile itself, with no copy
//! of the profile, plus the write's delta and an [`Undo`] for when the write cannot be persisted.
//!
//! Guarantees (property-tested below on states of random histories, against [`apply`] on a copy):
//! - The profile after [`apply_in_place`] is the one [`apply`] makes of a copy, with the same answer; a
//!   refused write changes nothing (`apply` validates everything first).
//! - `old ⊔ delta` is the new profile itself, so the delta is what a write-ahead log may record and what
//!   a replica holding `old` needs. The delta holds the current state of every feature the write
//!   *named* (changed or superseded: a replica counted toward the write's quorum must hold at least what
//!   superseded it), plus the erasure watermark; an erasure's delta is the watermark alone. Every
//!   feature entry [`Profile::delta_of_write`] would send is in it, alike, without the walk of both
//!   states that needs the old profile (for an erasure, [`Profile::delta_of_write`] also sends what the
//!   watermark did to each entry, which the watermark does again on the receiver).
//! - [`Undo::restore`] puts back exactly the profile from before the write (the entries the write named,
//!   as they were, and the watermark).
//!
//! How: before applying, the entries the write names are cloned (one register per named feature, tens of
//! bytes); only an erasure, which may drop entries anywhere, clones the whole profile (erasures are
//! rare).
//!
//! Caveat: the undo is only valid until the profile is changed otherwise; the caller holds the lock
//! under which it applied the write until it knows whether the write was persisted.

use crate::compact::{Symbol, VecMap};
use crate::crdt::counter::Counter;
use crate::crdt::flag::FlagRegister;
use crate::crdt::gauge::GaugeRegister;
use crate::error::Result;
use crate::hlc::{Clock, Marker};
use crate::limits::Limits;
use crate::profile::{apply, Applied, Profile, Write};

/// A client write applied in place by [`apply_in_place`].
#[derive(Debug)]
pub struct InPlace<'w> {
    /// What the write answers.
    pub applied: Applied,
    /// What replicas and the write-ahead log need: `old ⊔ delta` is the new profile (module docs).
    pub delta: Profile,
    /// Restores the profile from before the write, if the write cannot be persisted.
    pub undo: Undo<'w>,
}

/// What a profile held before an in-place write, to put back with [`Undo::restore`].
#[derive(Debug)]
pub struct Undo<'w> {
    write: Write<'w>,
    erased_at: Option<Marker>,
    before: Before,
}

/// The entries a write names, as they were (`None`: absent), in the write's order.
#[derive(Debug)]
enum Before {
    Gauges(Vec<Option<GaugeRegister>>),
    Counters(Vec<Option<Counter>>),
    Flag(Option<FlagRegister>),
    /// An erasure may drop entries anywhere: the whole profile.
    Whole(Box<Profile>),
}

/// Decides and applies one client write to `profile` itself, as [`apply`] does to a copy (same checks,
/// same stamping, same answer): see the module docs for the delta and the undo it returns.
pub fn apply_in_place<'w>(
    profile: &mut Profile,
    write: Write<'w>,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Result<InPlace<'w>> {
    let before = match write {
        Write::Put { gauges, .. } => Before::Gauges(
            gauges
                .iter()
                .map(|g| profile.gauges.get(g.name.as_str()).cloned())
                .collect(),
        ),
        Write::Increment { deltas } => Before::Counters(
            deltas
                .iter()
                .map(|d| profile.counters.get(d.name.as_str()).cloned())
                .collect(),
        ),
        Write::SetFlag { name, .. } => Before::Flag(profile.flags.get(name).cloned()),
        Write::Erase => Before::Whole(Box::new(profile.clone())),
    };
    let undo = Undo {
        write,
        erased_at: profile.erased_at.clone(),
        before,
    };
    let applied = apply(profile, write, clock, now_ms, limits)?;
    let delta = delta_of_named(profile, write);
    #[cfg(test)]
    let delta = bare_delta_knob(delta, &applied, undo.erased_at.as_ref());
    Ok(InPlace {
        applied,
        delta,
        undo,
    })
}

/// The current state of every feature `write` names, and the watermark.
fn delta_of_named(profile: &Profile, write: Write<'_>) -> Profile {
    let mut delta = Profile {
        erased_at: profile.erased_at.clone(),
        ..Profile::default()
    };
    match write {
        Write::Put { gauges, .. } => {
            for g in gauges {
                copy_entry(&mut delta.gauges, &profile.gauges, &g.name);
            }
        }
        Write::Increment { deltas } => {
            for d in deltas {
                copy_entry(&mut delta.counters, &profile.counters, &d.name);
            }
        }
        Write::SetFlag { name, .. } => copy_entry(&mut delta.flags, &profile.flags, name),
        Write::Erase => {}
    }
    delta
}

/// With [`Bug::BareDelta`](crate::knobs::Bug::BareDelta) on, the defect the simulation found: the
/// delta without the registers that superseded the write, and without a watermark the write did not
/// change (`erased_before` is the one from before it).
#[cfg(test)]
fn bare_delta_knob(
    mut delta: Profile,
    applied: &Applied,
    erased_before: Option<&Marker>,
) -> Profile {
    if crate::knobs::active(crate::knobs::Bug::BareDelta) {
        if let Applied::Put { superseded, .. } = applied {
            for name in superseded {
                delta.gauges.remove(name.as_str());
            }
        }
        if delta.erased_at.as_ref() == erased_before {
            delta.erased_at = None;
        }
    }
    delta
}

/// Copies `name`'s entry of `from`, if there is one, into `to`.
fn copy_entry<V: Clone>(to: &mut VecMap<Symbol, V>, from: &VecMap<Symbol, V>, name: &str) {
    if let Some((key, value)) = from.get_key_value(name) {
        to.insert(key.clone(), value.clone());
    }
}

/// Puts `name`'s entry of `map` back to `before` (`None`: absent).
fn restore_entry<V>(map: &mut VecMap<Symbol, V>, name: &str, before: Option<V>) {
    match before {
        Some(value) => match map.get_mut(name) {
            Some(slot) => *slot = value,
            None => {
                map.insert(Symbol::new(name), value);
            }
        },
        None => {
            map.remove(name);
        }
    }
}

impl Undo<'_> {
    /// Puts `profile` back as it was before the write this undoes (module docs).
    pub fn restore(self, profile: &mut Profile) {
        match (self.before, self.write) {
            (Before::Whole(whole), _) => {
                *profile = *whole;
                return;
            }
            (Before::Gauges(before), Write::Put { gauges, .. }) => {
                for (g, b) in gauges.iter().zip(before) {
                    restore_entry(&mut profile.gauges, &g.name, b);
                }
            }
            (Before::Counters(before), Write::Increment { deltas }) => {
                for (d, b) in deltas.iter().zip(before) {
                    restore_entry(&mut profile.counters, &d.name, b);
                }
            }
            (Before::Flag(before), Write::SetFlag { name, .. }) => {
                restore_entry(&mut profile.flags, name, before);
            }
            // `apply_in_place` pairs each write with its own kind of `Before`.
            _ => {}
        }
        profile.erased_at = self.erased_at;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crdt::flag::CausalContext;
    use crate::hlc::NodeId;
    use crate::profile::tests::{play, step, NAMES};
    use crate::profile::{CounterDelta, GaugeWrite};
    use crate::{Error, Value};

    /// A client write of the strategy: names index [`NAMES`], shared by every kind, so some writes are
    /// refused (kind mismatches, the feature count, the sibling bound, counter overflow).
    #[derive(Debug, Clone)]
    enum ClientWrite {
        Put {
            names: Vec<usize>,
            value: i64,
            ttl: Option<u64>,
            event_time_back: Option<u64>,
        },
        Increment {
            names: Vec<usize>,
            delta: i64,
        },
        Flag {
            name: usize,
            value: bool,
            with_context: bool,
            ttl: Option<u64>,
        },
        Erase,
    }

    fn client_write() -> impl Strategy<Value = ClientWrite> {
        let names = proptest::collection::vec(0..NAMES.len(), 1..4);
        prop_oneof![
            (
                names.clone(),
                -5i64..5,
                proptest::option::of(0u64..30),
                proptest::option::of(0u64..50)
            )
                .prop_map(|(names, value, ttl, event_time_back)| ClientWrite::Put {
                    names,
                    value,
                    ttl,
                    event_time_back
                }),
            (names, prop_oneof![-5i64..5, Just(i64::MAX), Just(i64::MIN)])
                .prop_map(|(names, delta)| ClientWrite::Increment { names, delta }),
            (
                0..NAMES.len(),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(0u64..30)
            )
                .prop_map(|(name, value, with_context, ttl)| ClientWrite::Flag {
                    name,
                    value,
                    with_context,
                    ttl
                }),
            Just(ClientWrite::Erase),
        ]
    }

    /// The owned parts a [`Write`] borrows.
    struct Owned {
        gauges: Vec<GaugeWrite>,
        deltas: Vec<CounterDelta>,
        context: CausalContext,
    }

    fn owned(w: &ClientWrite, profile: &Profile) -> Owned {
        let mut o = Owned {
            gauges: Vec::new(),
            deltas: Vec::new(),
            context: CausalContext::default(),
        };
        match w {
            ClientWrite::Put {
                names, value, ttl, ..
            } => {
                o.gauges = names
                    .iter()
                    .map(|&n| GaugeWrite {
                        name: NAMES[n].into(),
                        value: Value::I64(*value),
                        ttl_ms: *ttl,
                    })
                    .collect();
            }
            ClientWrite::Increment { names, delta } => {
                o.deltas = names
                    .iter()
                    .map(|&n| CounterDelta {
                        name: NAMES[n].into(),
                        delta: *delta,
                    })
                    .collect();
            }
            ClientWrite::Flag {
                name,
                with_context: true,
                ..
            } => {
                if let Some(f) = profile.flags.get(NAMES[*name]) {
                    o.context = f.clock.clone();
                }
            }
            ClientWrite::Flag { .. } | ClientWrite::Erase => {}
        }
        o
    }

    fn write<'a>(w: &'a ClientWrite, o: &'a Owned, now: u64) -> Write<'a> {
        match w {
            ClientWrite::Put {
                event_time_back, ..
            } => Write::Put {
                gauges: &o.gauges,
                timestamp_ms: event_time_back.map(|b| now - b),
            },
            ClientWrite::Increment { .. } => Write::Increment { deltas: &o.deltas },
            ClientWrite::Flag {
                name, value, ttl, ..
            } => Write::SetFlag {
                name: NAMES[*name],
                value: *value,
                context: &o.context,
                ttl_ms: *ttl,
            },
            ClientWrite::Erase => Write::Erase,
        }
    }

    fn merged(a: &Profile, b: &Profile) -> Profile {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    fn limits() -> Limits {
        Limits {
            max_siblings: 4,
            max_features_per_entity: 2,
            ..Limits::default()
        }
    }

    /// The clock of replica 0's node, past every timestamp its state holds (as a node's clock is).
    fn clock_for(profile: &Profile, now: u64) -> Clock {
        let mut clock = Clock::new(NodeId::new("n1").expect("valid"), 60_000);
        if let Some(ts) = profile.max_timestamp() {
            clock.recover(ts);
        }
        let _ = clock.stamp(now);
        clock
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The module's guarantees: the same result as `apply` on a copy, `old ⊔ delta` is the new
        /// state, at least what `delta_of_write` sends, and the undo restores the old state exactly.
        #[test]
        fn in_place_is_apply_on_a_copy_with_a_delta_and_an_undo(
            steps in proptest::collection::vec(step(), 0..30),
            w in client_write(),
            later in 0u64..40,
        ) {
            let [old, ..] = play(&steps);
            let now = 1_100 + later;
            let limits = limits();
            let o = owned(&w, &old);
            let mut copy_clock = clock_for(&old, now);
            let mut clock = copy_clock.clone();

            let mut copy = old.clone();
            let by_copy = apply(&mut copy, write(&w, &o, now), &mut copy_clock, now, &limits);
            let mut profile = old.clone();
            let in_place = apply_in_place(&mut profile, write(&w, &o, now), &mut clock, now, &limits);
            match (by_copy, in_place) {
                (Ok(applied), Ok(done)) => {
                    prop_assert_eq!(&done.applied, &applied);
                    prop_assert_eq!(&profile, &copy);
                    prop_assert_eq!(&merged(&old, &done.delta), &copy, "old ⊔ delta is the new state");
                    // Every feature entry `delta_of_write` sends is in the delta, alike (except for
                    // an erasure: there it also sends what the watermark did to each entry, which
                    // the watermark alone does on the receiver).
                    let usual = copy.delta_of_write(&old, &applied);
                    let usual = if matches!(w, ClientWrite::Erase) {
                        Profile { erased_at: usual.erased_at, ..Profile::default() }
                    } else {
                        usual
                    };
                    for (name, g) in usual.gauges.iter() {
                        prop_assert_eq!(done.delta.gauges.get(&**name), Some(g));
                    }
                    for (name, c) in usual.counters.iter() {
                        prop_assert_eq!(done.delta.counters.get(&**name), Some(c));
                    }
                    for (name, f) in usual.flags.iter() {
                        prop_assert_eq!(done.delta.flags.get(&**name), Some(f));
                    }
                    prop_assert_eq!(&done.delta.erased_at, &usual.erased_at);
                    done.undo.restore(&mut profile);
                    prop_assert_eq!(&profile, &old, "the undo restores the old state");
                }
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string(), b.to_string());
                    prop_assert_eq!(&profile, &old, "a refused write changes nothing");
                }
                (a, b) => prop_assert!(false, "copy {a:?} against in place {b:?}"),
            }
        }
    }

    /// A write that changed nothing here (a gauge older than the register held) still sends the
    /// register that superseded it, and an erasure sends its watermark.
    #[test]
    fn a_superseded_write_sends_what_superseded_it() {
        let limits = Limits::default();
        let mut clock = Clock::new(NodeId::new("n1").expect("valid"), 60_000);
        let g = |v: i64| {
            [GaugeWrite {
                name: "g".into(),
                value: Value::I64(v),
                ttl_ms: None,
            }]
        };
        let mut p = Profile::default();
        let newer = g(2);
        let w = Write::Put {
            gauges: &newer,
            timestamp_ms: Some(2_000),
        };
        apply_in_place(&mut p, w, &mut clock, 2_000, &limits).expect("applied");
        let older = g(1);
        let w = Write::Put {
            gauges: &older,
            timestamp_ms: Some(1_000),
        };
        let done = apply_in_place(&mut p, w, &mut clock, 2_001, &limits).expect("applied");
        assert!(matches!(&done.applied, Applied::Put { superseded, .. } if superseded == &["g"]));
        assert_eq!(done.delta.gauges.get("g"), p.gauges.get("g"));
        assert_eq!(done.delta.gauges["g"].value, Some(Value::I64(2)));

        let done =
            apply_in_place(&mut p, Write::Erase, &mut clock, 3_000, &limits).expect("erased");
        assert_eq!(
            done.delta.feature_count(),
            0,
            "an erasure sends its watermark alone"
        );
        assert_eq!(done.delta.erased_at, p.erased_at);
        assert_eq!(p.feature_count(), 0, "erased");
        done.undo.restore(&mut p);
        assert_eq!(p.gauges["g"].value, Some(Value::I64(2)), "undone");
        assert!(p.erased_at.is_none());
    }

    /// A refused write (a counter where a gauge is) changes nothing and answers the typed error.
    #[test]
    fn a_refused_write_changes_nothing() {
        let limits = Limits::default();
        let mut clock = Clock::new(NodeId::new("n1").expect("valid"), 60_000);
        let mut p = Profile::default();
        let gauge = [GaugeWrite {
            name: "x".into(),
            value: Value::I64(1),
            ttl_ms: None,
        }];
        let w = Write::Put {
            gauges: &gauge,
            timestamp_ms: None,
        };
        apply_in_place(&mut p, w, &mut clock, 1_000, &limits).expect("applied");
        let before = p.clone();
        let deltas = [
            CounterDelta {
                name: "y".into(),
                delta: 1,
            },
            CounterDelta {
                name: "x".into(),
                delta: 1,
            },
        ];
        let err = apply_in_place(
            &mut p,
            Write::Increment { deltas: &deltas },
            &mut clock,
            1_001,
            &limits,
        );
        assert!(matches!(err, Err(Error::KindMismatch { .. })), "{err:?}");
        assert_eq!(p, before);
    }
}
