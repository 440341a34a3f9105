//! Deltas of a profile: the part of a newer state that an older one lacks, for delta-state replication.
//!
//! Guarantee: for a state `new` reached from `old` by local writes and merges (so `new ≥ old` in the
//! lattice), `old ⊔ new.delta_from(old) == old ⊔ new` (property-tested below over random histories of
//! every kind, windows, the dedup set and erasure). Hence any replica that already holds `old` (or more)
//! reaches the same state from the delta as from the whole of `new`: the delta is a state of the same
//! lattice, merged by the same [`Profile::merge`], and carries no new message type.
//!
//! How: per kind, a feature whose value differs from `old`'s goes into the delta whole (a register, a
//! counter's slots, a flag's siblings: all small); a window contributes only the buckets whose slots
//! changed; the dedup set only the ids it gained; the erasure watermark and the identity links only when
//! they changed. Comparison is `PartialEq`, so a delta costs one walk of both states and copies only
//! what changed.
//!
//! A delta holds what *changed*; a client write that changed nothing somewhere (a gauge write older than
//! the register held, an erasure below the watermark held) still needs the state that superseded it on
//! every replica its quorum counts: [`Profile::delta_of_write`] adds that.
//!
//! Caveats: a replica that does *not* hold `old` (it missed an earlier write, or is new to the key)
//! gains only the delta and stays behind until a full state reaches it (hinted handoff, anti-entropy);
//! the replication protocol decides when a delta is safe to send (see
//! [`Replication::on_local_write`](crate::replication::Replication::on_local_write)). Identity links are
//! sent whole when they change (they change rarely and nest whole profiles).

use crate::compact::{Symbol, VecMap};
use crate::crdt::seen::Seen;
use crate::crdt::window::Window;
use crate::profile::{Applied, Profile};

impl Profile {
    /// What `self` holds that `old` does not: see the module docs for the law it meets.
    pub fn delta_from(&self, old: &Profile) -> Profile {
        Profile {
            gauges: changed_entries(&self.gauges, &old.gauges),
            counters: changed_entries(&self.counters, &old.counters),
            flags: changed_entries(&self.flags, &old.flags),
            erased_at: if self.erased_at == old.erased_at {
                None
            } else {
                self.erased_at.clone()
            },
            windows: self
                .windows
                .iter()
                .filter_map(|(name, window)| {
                    window_delta(window, old.windows.get(&**name)).map(|d| (name.clone(), d))
                })
                .collect(),
            seen: seen_delta(&self.seen, &old.seen).into(),
            identity: if self.identity == old.identity {
                Default::default()
            } else {
                self.identity.clone()
            },
        }
    }
}

impl Profile {
    /// What a replica needs to hold the client write that turned `old` into `self` and answered
    /// `applied`: [`Profile::delta_from`], plus the current register of every gauge whose write was
    /// superseded here (the write changed nothing there, yet a replica counted toward its quorum must hold
    /// a version at least as new), plus the erasure watermark (an erasure below the one held changes
    /// nothing either, and an increment into erased history is covered by it).
    pub fn delta_of_write(&self, old: &Profile, applied: &Applied) -> Profile {
        let mut delta = self.delta_from(old);
        #[cfg(test)]
        if crate::knobs::active(crate::knobs::Bug::BareDelta) {
            return delta;
        }
        if let Applied::Put { superseded, .. } = applied {
            for (name, register) in self.gauges.iter() {
                if superseded.iter().any(|s| s.as_str() == name.as_str()) {
                    delta.gauges.insert(name.clone(), register.clone());
                }
            }
        }
        if delta.erased_at.is_none() {
            delta.erased_at = self.erased_at.clone();
        }
        delta
    }
}

/// The entries of `new` whose value is not the same in `old`.
fn changed_entries<V: Clone + PartialEq>(
    new: &VecMap<Symbol, V>,
    old: &VecMap<Symbol, V>,
) -> VecMap<Symbol, V> {
    new.iter()
        .filter(|(name, value)| old.get(&***name) != Some(*value))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The buckets (and within them the slots) of `new` that `old` does not hold alike; `None` if nothing
/// changed. A window whose parameters changed goes whole (the greater parameters replace the state).
fn window_delta(new: &Window, old: Option<&Window>) -> Option<Window> {
    let Some(old) = old.filter(|o| o.spec == new.spec) else {
        return Some(new.clone());
    };
    if new == old {
        return None;
    }
    let mut delta = Window::new(new.spec);
    for (start, slots) in &new.buckets {
        let before = old.buckets.get(start);
        let changed: VecMap<_, _> = slots
            .iter()
            .filter(|(node, slot)| before.and_then(|b| b.get(*node)) != Some(*slot))
            .map(|(node, slot)| (node.clone(), slot.clone()))
            .collect();
        if !changed.is_empty() {
            delta.buckets.insert(*start, changed);
        }
    }
    // Pruning is relative to the newest bucket held: a receiver holding `old` already has `new`'s newest
    // bucket unless it changed, in which case it is in the delta, so it prunes as `new` did.
    Some(delta)
}

/// The ids `new` holds and `old` does not (or at another time), under `new`'s bounds.
fn seen_delta(new: &Seen, old: &Seen) -> Seen {
    Seen {
        window_ms: new.window_ms,
        max_ids: new.max_ids,
        ids: new
            .ids
            .iter()
            .filter(|(id, at)| old.ids.get(*id) != Some(*at))
            .map(|(id, at)| (id.clone(), *at))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::crdt::window::{Aggregation, Observation, WindowSpec};
    use crate::profile::tests::{actor, play, step, Step};
    use crate::profile::Profile;
    use crate::Limits;

    fn merged(a: &Profile, b: &Profile) -> Profile {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    /// An extra step on the histories of `profile::tests`: window observations and ingested ids, which
    /// those histories do not cover.
    #[derive(Debug, Clone)]
    enum Extra {
        Observe { at: usize, minute: u64, value: i8 },
        Ingested { at: usize, id: u8, minute: u64 },
    }

    fn extra() -> impl Strategy<Value = Extra> {
        prop_oneof![
            (0..3usize, 0u64..8, -3i8..3).prop_map(|(at, minute, value)| Extra::Observe {
                at,
                minute,
                value
            }),
            (0..3usize, 0u8..12, 0u64..8).prop_map(|(at, id, minute)| Extra::Ingested {
                at,
                id,
                minute
            }),
        ]
    }

    const SPEC: WindowSpec = WindowSpec {
        aggregation: Aggregation::Sum,
        bucket_ms: 60_000,
        span_ms: 240_000,
        max_exact: 0,
    };

    fn apply_extra(reps: &mut [Profile; 3], extras: &[Extra]) {
        let limits = Limits::default();
        for (i, e) in extras.iter().enumerate() {
            match *e {
                Extra::Observe { at, minute, value } => {
                    let ts = crate::hlc::Timestamp::from_millis(2_000 + i as u64);
                    let _ = reps[at].observe(
                        "w",
                        SPEC,
                        &actor(at),
                        minute * 60_000,
                        Observation::Value(f64::from(value)),
                        ts,
                        &limits,
                    );
                }
                Extra::Ingested { at, id, minute } => {
                    reps[at]
                        .seen
                        .get_mut()
                        .insert(&format!("m{id}"), minute * 60_000, 180_000, 6);
                }
            }
        }
    }

    /// A history in two parts: the states after the first (`old`) and after both (`new`), per replica.
    fn two_states(
        first: &[Step],
        first_extra: &[Extra],
        then: &[Step],
        then_extra: &[Extra],
    ) -> ([Profile; 3], [Profile; 3]) {
        let mut old = play(first);
        apply_extra(&mut old, first_extra);
        // `new` continues from `old`: the later steps are played on a copy (syncs included), so every
        // `new` is `old` grown by local writes and merges.
        let mut new = old.clone();
        let later = play(then);
        for (i, steps_state) in later.iter().enumerate() {
            new[i].merge(steps_state);
        }
        apply_extra(&mut new, then_extra);
        let snapshot = new.clone();
        new[0].merge(&snapshot[1]);
        (old, new)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The law of the module: merging the delta into the old state equals merging the new state.
        #[test]
        fn old_joined_with_the_delta_is_old_joined_with_new(
            first in proptest::collection::vec(step(), 0..25),
            first_extra in proptest::collection::vec(extra(), 0..10),
            then in proptest::collection::vec(step(), 0..25),
            then_extra in proptest::collection::vec(extra(), 0..10),
        ) {
            let (old, new) = two_states(&first, &first_extra, &then, &then_extra);
            for (o, n) in old.iter().zip(&new) {
                let delta = n.delta_from(o);
                prop_assert_eq!(merged(o, &delta), merged(o, n));
                // A replica ahead of `old` in another way still reaches the same state.
                let ahead = merged(o, &old[2]);
                prop_assert_eq!(merged(&ahead, &delta), merged(&ahead, n));
            }
        }

        /// One more step of the same history (a write with the same replica's clock, an erasure, a
        /// merge) only grows a state, so `old ⊔ delta` is the new state itself: what the node's
        /// write-ahead log relies on when it logs a write's delta and joins it into the stored record.
        /// (`two_states` cannot check this: its later steps start from fresh clocks, which reuse
        /// dots the earlier ones issued, a history no node makes.)
        #[test]
        fn old_joined_with_the_delta_of_one_more_step_is_the_new_state(
            steps in proptest::collection::vec(step(), 0..30),
            last in step(),
        ) {
            let old = play(&steps);
            let mut longer = steps.clone();
            longer.push(last);
            let new = play(&longer);
            for (o, n) in old.iter().zip(&new) {
                prop_assert_eq!(&merged(o, &n.delta_from(o)), n);
            }
        }

        /// Nothing changed, nothing sent: the delta of a state from itself is empty.
        #[test]
        fn the_delta_of_an_unchanged_state_is_empty(
            steps in proptest::collection::vec(step(), 0..25),
            extras in proptest::collection::vec(extra(), 0..10),
        ) {
            let mut reps = play(&steps);
            apply_extra(&mut reps, &extras);
            for p in &reps {
                let delta = p.delta_from(p);
                prop_assert_eq!(delta.feature_count(), 0);
                prop_assert!(delta.seen.ids.is_empty());
                prop_assert!(delta.erased_at.is_none());
            }
        }
    }

    /// One write to a profile of many features sends that feature only, and one observation into a
    /// window of many buckets sends that bucket only.
    #[test]
    fn a_delta_carries_what_changed_and_not_the_rest() {
        let limits = Limits::default();
        let mut old = Profile::default();
        let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let ts = crate::hlc::Timestamp::from_millis(1 + i as u64);
            old.increment(&[(name.as_str(), 1)], &actor(0), ts, &limits)
                .expect("valid");
        }
        for minute in 0..4u64 {
            let ts = crate::hlc::Timestamp::from_millis(100 + minute);
            old.observe(
                "w",
                SPEC,
                &actor(0),
                minute * 60_000,
                Observation::Value(1.0),
                ts,
                &limits,
            )
            .expect("in the span");
        }
        old.seen.get_mut().insert("a", 1, 180_000, 6);
        let mut new = old.clone();
        let ts = crate::hlc::Timestamp::from_millis(200);
        new.increment(&[("c7", 2)], &actor(0), ts, &limits)
            .expect("valid");
        new.observe(
            "w",
            SPEC,
            &actor(0),
            120_000,
            Observation::Value(1.0),
            ts,
            &limits,
        )
        .expect("in the span");
        new.seen.get_mut().insert("b", 2, 180_000, 6);
        let delta = new.delta_from(&old);
        assert_eq!(
            delta.counters.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["c7"]
        );
        let buckets: Vec<u64> = delta.windows["w"].buckets.keys().copied().collect();
        assert_eq!(buckets, [120_000]);
        assert_eq!(delta.seen.ids.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(merged(&old, &delta), new);
    }

    /// A client write that changed nothing here still brings a replica up to what superseded it: a
    /// gauge write older than the register held sends that register, an erasure below the watermark
    /// held sends the watermark. (The simulation's quorum check found the gap this closes.)
    #[test]
    fn the_delta_of_a_superseded_write_carries_what_superseded_it() {
        use crate::hlc::{Clock, NodeId};
        use crate::profile::{apply, GaugeWrite, Write};
        use crate::Value;

        let limits = Limits::default();
        let mut clock = Clock::new(NodeId::new("n1").expect("valid"), 60_000);
        let put = |at: u64| {
            [GaugeWrite {
                name: "g".into(),
                value: Value::I64(at as i64),
                ttl_ms: None,
            }]
        };
        let mut p = Profile::default();
        let newer = put(2_000);
        let write = Write::Put {
            gauges: &newer,
            timestamp_ms: Some(2_000),
        };
        apply(&mut p, write, &mut clock, 2_000, &limits).expect("applied");

        let before = p.clone();
        let older = put(1_000);
        let write = Write::Put {
            gauges: &older,
            timestamp_ms: Some(1_000),
        };
        let applied = apply(&mut p, write, &mut clock, 2_001, &limits).expect("applied");
        assert!(p.delta_from(&before).gauges.is_empty(), "nothing changed");
        let delta = p.delta_of_write(&before, &applied);
        assert_eq!(delta.gauges.get("g"), p.gauges.get("g"));

        apply(&mut p, Write::Erase, &mut clock, 3_000, &limits).expect("erased");
        let before = p.clone();
        let mut behind = Clock::new(NodeId::new("n0").expect("valid"), 60_000);
        let applied = apply(&mut p, Write::Erase, &mut behind, 2_500, &limits).expect("erased");
        assert!(p.delta_from(&before).erased_at.is_none(), "nothing changed");
        let delta = p.delta_of_write(&before, &applied);
        assert_eq!(delta.erased_at, p.erased_at);
    }
}
