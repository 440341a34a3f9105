//! `window` features: an aggregate (count, sum, min, max or distinct count) of event values over a sliding
//! span of event time, kept as event-time buckets whose every bucket holds one slot per node that ingested
//! into it.
//!
//! A slot is `(first, count, sum, min, max, hashes)`: what one node added to one bucket, where `first` is the
//! HLC stamp of the slot's first event. A node only ever grows its own slots, so two copies of a slot differ
//! only in how much of the node's history they have seen.
//!
//! Distinct counts (`Aggregation::DistinctCount`) are a bottom-k (KMV) sketch: a slot's `hashes` are the
//! `K = spec.max_exact` smallest distinct 64-bit [`distinct_hash`]es of the values its node added to its
//! bucket, sorted. A read takes the K smallest hashes of the union of the slots it covers: if there are
//! fewer than K, that is the exact set and its size the exact count; otherwise the count is the standard
//! KMV estimate `(K - 1) / u_K`, `u_K` being the K-th smallest hash scaled to `(0, 1]` (relative standard
//! error about `1 / sqrt(K - 2)`: 6.3 % at the default K = 256). Why this sketch: the K smallest of a union
//! are the K smallest of the K smallest of its parts, so truncating per slot loses nothing a read needs;
//! hence a read over merged slots is exactly the read one owner would have made of all the values (the
//! estimate is a function of the value set, not of who ingested what or how often), it is exact below K
//! without a second representation, and the size is bounded by K per slot. HyperLogLog would be smaller
//! per slot at large counts but is never exact at small ones, which is where behavioural profiles live.
//! The hash is XXH3-64 (the `xxhash-rust` crate), whose output is fixed by the XXH3 specification: equal
//! on every node, platform and build (pinned by golden vectors in the tests).
//!
//! Guarantees:
//! - Merge is a join: per bucket and node, the slot with the later `first` wins (a node starts a fresh slot
//!   only after its old one was erased), then the one with more events; equal slots of one history are
//!   equal (remaining ties are broken by the slot's other fields, hashes last, so the per-slot order is
//!   total). So two nodes that both ingested events for one user during a partition merge to the exact
//!   totals and the exact distinct-count sketch (property-tested: split then merge equals one owner; laws
//!   in `crdt`'s generic law test).
//! - Buckets older than the span are dropped relative to the newest bucket the state holds (its event-time
//!   high-water mark), never relative to a wall clock, so every replica drops the same buckets whatever its
//!   clock says; a read counts only the buckets that overlap `[now - span, now]`.
//! - Erasure drops every slot that began at or below the watermark (like counter slots).
//!
//! Caveats: an event older than the span (relative to the high-water mark) is refused by
//! [`Window::add`] as late rather than counted in no window silently. The parameters (aggregation, bucket
//! width, span, sketch size) come from the feature definition and the limits and order the states first: if
//! a definition changes, the state under the greater parameters replaces the other outright (the window
//! starts again), so replicas still converge. A distinct count is exact only below K; at and above it the
//! estimate's error is random in the value set (deterministic for a given set), not bounded per read.
//! Known gap: erasure does not commute with pruning when it removes the newest bucket (see
//! docs/architecture.md "Adding a feature kind"); replicas that exchange states still converge.
//! Cost caveat: the buckets are one sorted vector, so a bucket older than the newest (a late event, a
//! merge of an older state) is an insert that shifts the newer ones: O(buckets), which the definition's
//! span over its bucket width bounds (30 by default, at most `Limits::max_window_buckets`).

use std::cmp::Ordering;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::compact::VecMap;
use crate::crdt::{Feature, FeatureKind, Lattice};
use crate::hlc::{Actor, Marker, Timestamp};

/// What a window aggregates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events.
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value (`first_seen` when the value is the event time).
    Min,
    /// Largest value (`last_seen` when the value is the event time).
    Max,
    /// Number of distinct values (a bottom-k sketch: exact below `WindowSpec::max_exact`, an estimate at
    /// and above it). Appended last: the other variants keep their encoding.
    DistinctCount,
}

/// A window's parameters (from its feature definition).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
pub struct WindowSpec {
    /// What is aggregated.
    pub aggregation: Aggregation,
    /// Bucket width in ms (at least 1).
    pub bucket_ms: u64,
    /// The span in ms (`0`: all time, one bucket).
    pub span_ms: u64,
    /// For [`Aggregation::DistinctCount`]: the sketch size K (hashes kept per slot; counts are exact below
    /// it). `0` for the other aggregations. From [`Limits::max_distinct_exact`](crate::limits::Limits).
    pub max_exact: u32,
}

impl WindowSpec {
    /// The start of the bucket holding event time `at`.
    pub fn bucket_of(&self, at: u64) -> u64 {
        if self.span_ms == 0 {
            0
        } else {
            at - at % self.bucket_ms.max(1)
        }
    }
}

/// One node's contribution to one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct WindowSlot {
    /// HLC stamp of the slot's first event.
    pub first: Timestamp,
    /// Events added.
    pub count: u64,
    /// Sum of their values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Distinct counts: the K smallest distinct [`distinct_hash`]es added, ascending (empty otherwise).
    pub hashes: Vec<u64>,
}

impl WindowSlot {
    /// The lattice order of two copies of one node's slot.
    fn lattice_cmp(&self, other: &WindowSlot) -> Ordering {
        self.first
            .cmp(&other.first)
            .then(self.count.cmp(&other.count))
            .then(self.sum.total_cmp(&other.sum))
            .then(self.min.total_cmp(&other.min))
            .then(self.max.total_cmp(&other.max))
            .then_with(|| self.hashes.cmp(&other.hashes))
    }

    /// Adds `hash` to the sketch of at most `k` smallest hashes. Returns whether it changed.
    fn add_hash(&mut self, hash: u64, k: usize) -> bool {
        match self.hashes.binary_search(&hash) {
            Ok(_) => false,
            Err(at) if at >= k => false,
            Err(at) => {
                self.hashes.insert(at, hash);
                self.hashes.truncate(k);
                true
            }
        }
    }
}

/// The stable 64-bit hash of a distinct-count value: XXH3-64 (seed 0) of its canonical text (for JSON
/// scalars, their JSON text: `"abc"` with its quotes, `42`, `4.5`, `true`). Fixed by the XXH3
/// specification, so equal on every node and build.
pub fn distinct_hash(canonical: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(canonical)
}

/// What one event adds to a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A number (1 for count, the property, or the event time), for count, sum, min and max.
    Value(f64),
    /// The [`distinct_hash`] of a value, for distinct counts.
    Distinct(u64),
}

/// The distinct count of the K smallest hashes of a union (`smallest`, ascending, at most `k` long):
/// exact below `k`, the KMV estimate `(k - 1) / u_k` (rounded) at `k`.
fn distinct_estimate(smallest: &[u64], k: usize) -> f64 {
    match smallest.get(k.saturating_sub(1)) {
        Some(&kth) if k >= 2 => {
            // u_k in (0, 1]: the K-th smallest of K uniform hashes in [0, 2^64).
            let u = (kth as f64 + 1.0) / 18_446_744_073_709_551_616.0;
            ((k - 1) as f64 / u).round()
        }
        _ => smallest.len() as f64,
    }
}

/// A windowed aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct Window {
    /// Its parameters.
    pub spec: WindowSpec,
    /// Buckets by start (event-time ms), each with one slot per node. A sorted vector, not a
    /// `BTreeMap`: a window holds at most `span / bucket` buckets, rounded up (30 by default, at most
    /// `Limits::max_window_buckets`), new ones arrive at the end, and a B-tree's nodes of eleven would be
    /// mostly empty (the encoding is the same).
    pub buckets: VecMap<u64, VecMap<Actor, WindowSlot>>,
}

/// Why [`Window::add`] refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowRefusal {
    /// The event is older than the span, relative to the newest bucket held.
    Late,
    /// The value is NaN or infinite.
    NotFinite,
    /// The slot's count would overflow.
    Overflow,
}

impl Window {
    /// An empty window.
    pub fn new(spec: WindowSpec) -> Window {
        Window {
            spec,
            buckets: VecMap::new(),
        }
    }

    /// The start of the newest bucket held (the event-time high-water mark).
    fn high_water(&self) -> Option<u64> {
        self.buckets.keys().next_back().copied()
    }

    /// Whether a bucket starting at `start` is outside the span relative to `reference`.
    fn outside(&self, start: u64, reference: u64) -> bool {
        self.spec.span_ms != 0 && start.saturating_add(self.spec.span_ms) <= reference
    }

    /// Drops the buckets older than the span, relative to the newest bucket held.
    fn prune(&mut self) {
        if let Some(hw) = self.high_water() {
            let span = self.spec.span_ms;
            if span != 0 {
                self.buckets
                    .retain(|start, _| start.saturating_add(span) > hw);
            }
        }
    }

    /// Adds one event's observation at event time `at_ms`, ingested by `actor` at HLC `ts`. Refuses late
    /// events, non-finite values and overflow, changing nothing. A value feeds count, sum, min and max; a
    /// distinct hash feeds the event count and the slot's sketch (kept to `spec.max_exact` hashes, at least
    /// one).
    pub fn add(
        &mut self,
        actor: &Actor,
        at_ms: u64,
        observation: Observation,
        ts: Timestamp,
    ) -> Result<(), WindowRefusal> {
        let (value, hash) = match observation {
            Observation::Value(v) => (v, None),
            Observation::Distinct(h) => (0.0, Some(h)),
        };
        if !value.is_finite() {
            return Err(WindowRefusal::NotFinite);
        }
        let start = self.spec.bucket_of(at_ms);
        if self.high_water().is_some_and(|hw| self.outside(start, hw)) {
            return Err(WindowRefusal::Late);
        }
        let slot = self
            .buckets
            .get_or_insert_with(&start, || start, VecMap::new)
            .get_or_insert_with(
                actor,
                || actor.clone(),
                || WindowSlot {
                    first: ts,
                    count: 0,
                    sum: 0.0,
                    min: value,
                    max: value,
                    hashes: Vec::new(),
                },
            );
        let Some(count) = slot.count.checked_add(1) else {
            return Err(WindowRefusal::Overflow);
        };
        slot.count = count;
        slot.sum += value;
        slot.min = slot.min.min(value);
        slot.max = slot.max.max(value);
        if let Some(h) = hash {
            slot.add_hash(h, self.spec.max_exact.max(1) as usize);
        }
        self.prune();
        Ok(())
    }

    /// The aggregate over the buckets that overlap `[now_ms - span, now_ms]` (all buckets for an all-time
    /// window): `(events, value)`, `value` being `None` for min/max of no events. A distinct count is the
    /// size of the union of the covered slots' values (see the module docs).
    pub fn value(&self, now_ms: u64) -> (u64, Option<f64>) {
        let from = if self.spec.span_ms == 0 {
            0
        } else {
            now_ms.saturating_sub(self.spec.span_ms)
        };
        let width = self.spec.bucket_ms.max(1);
        let slots = self
            .buckets
            .iter()
            .take_while(|(start, _)| **start <= now_ms)
            .filter(|(start, _)| self.spec.span_ms == 0 || start.saturating_add(width) > from)
            .flat_map(|(_, slots)| slots.values());
        let (mut count, mut sum) = (0u64, 0.0f64);
        let (mut min, mut max): (Option<f64>, Option<f64>) = (None, None);
        let k = self.spec.max_exact.max(1) as usize;
        let mut smallest: Vec<u64> = Vec::new();
        for s in slots {
            if self.spec.aggregation == Aggregation::DistinctCount {
                // The K smallest of the union so far: bounded by 2K per step.
                smallest.extend_from_slice(&s.hashes);
                smallest.sort_unstable();
                smallest.dedup();
                smallest.truncate(k);
            }
            count = count.saturating_add(s.count);
            sum += s.sum;
            min = Some(min.map_or(s.min, |m| m.min(s.min)));
            max = Some(max.map_or(s.max, |m| m.max(s.max)));
        }
        let value = match self.spec.aggregation {
            Aggregation::Count => Some(count as f64),
            Aggregation::Sum => Some(sum),
            Aggregation::Min => min,
            Aggregation::Max => max,
            Aggregation::DistinctCount => Some(distinct_estimate(&smallest, k)),
        };
        (count, value)
    }
}

impl Feature for Window {
    const KIND: FeatureKind = FeatureKind::Window;
}

impl Lattice for Window {
    fn merge(&mut self, other: &Window) -> bool {
        // The parameters order the states first (a lexicographic product, so still a lattice): a window
        // under a newer, greater definition replaces one under an older definition outright.
        match other.spec.cmp(&self.spec) {
            Ordering::Greater => {
                *self = other.clone();
                return true;
            }
            Ordering::Less => return false,
            Ordering::Equal => {}
        }
        let before = self.clone();
        for (start, theirs) in &other.buckets {
            let ours = self
                .buckets
                .get_or_insert_with(start, || *start, VecMap::new);
            for (node, slot) in theirs {
                match ours.get_mut(node) {
                    Some(mine) if slot.lattice_cmp(mine) == Ordering::Greater => {
                        *mine = slot.clone()
                    }
                    Some(_) => {}
                    None => {
                        ours.insert(node.clone(), slot.clone());
                    }
                }
            }
        }
        self.prune();
        *self != before
    }

    fn retain_above(&mut self, watermark: &Marker) -> bool {
        for slots in self.buckets.values_mut() {
            slots.retain(|actor, s| {
                Marker {
                    ts: s.first,
                    node: actor.node.clone(),
                } > *watermark
            });
        }
        self.buckets.retain(|_, slots| !slots.is_empty());
        !self.buckets.is_empty()
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        self.buckets
            .values()
            .flat_map(|slots| slots.values())
            .map(|s| s.first)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(i: u8) -> Actor {
        Actor::legacy(crate::hlc::NodeId::new(format!("n{i}")).expect("valid"))
    }

    const SPEC: WindowSpec = WindowSpec {
        aggregation: Aggregation::Sum,
        bucket_ms: 10,
        span_ms: 50,
        max_exact: 0,
    };

    /// Events `(node, event time, value)`.
    fn events() -> impl Strategy<Value = Vec<(u8, u64, i32)>> {
        proptest::collection::vec((1u8..4, 0u64..200, -5i32..20), 0..40)
    }

    /// Applies events in order, each node stamping with its own HLC tick; late events are skipped.
    fn ingest(w: &mut Window, evs: &[(u8, u64, i32)], clock_base: u64) {
        for (i, (n, at, v)) in evs.iter().enumerate() {
            let ts = Timestamp::from_millis(clock_base + i as u64);
            let _ = w.add(&node(*n), *at, Observation::Value(f64::from(*v)), ts);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Two owners during a split each ingest their share; merged, they equal one owner that ingested
        /// everything (in the same per-node order), as long as no event arrived late at either.
        #[test]
        fn split_then_merge_equals_one_owner(evs in events(), cut in 0usize..40) {
            let mut sorted = evs.clone();
            sorted.sort_by_key(|e| e.1); // in event-time order: nothing is late
            let cut = cut.min(sorted.len());
            let (a_evs, b_evs): (Vec<_>, Vec<_>) =
                sorted.iter().enumerate().partition(|(i, _)| *i < cut);
            let a_evs: Vec<_> = a_evs.into_iter().map(|(_, e)| *e).collect();
            let b_evs: Vec<_> = b_evs.into_iter().map(|(_, e)| *e).collect();
            // Owner A's node ids and owner B's differ: per-node slots never collide.
            let a_evs: Vec<_> = a_evs.iter().map(|(_, at, v)| (1u8, *at, *v)).collect();
            let b_evs: Vec<_> = b_evs.iter().map(|(_, at, v)| (2u8, *at, *v)).collect();
            let (mut a, mut b) = (Window::new(SPEC), Window::new(SPEC));
            ingest(&mut a, &a_evs, 1_000);
            ingest(&mut b, &b_evs, 2_000);
            a.merge(&b);
            let mut one = Window::new(SPEC);
            let all: Vec<_> = a_evs.iter().chain(&b_evs).copied().collect();
            let mut by_time = all.clone();
            by_time.sort_by_key(|e| e.1);
            ingest(&mut one, &by_time, 3_000);
            let now = by_time.last().map_or(0, |e| e.1);
            let (n1, v1) = a.value(now);
            let (n2, v2) = one.value(now);
            prop_assert_eq!(n1, n2);
            prop_assert!((v1.unwrap_or(0.0) - v2.unwrap_or(0.0)).abs() < 1e-9);
            prop_assert_eq!(a.buckets.keys().collect::<Vec<_>>(), one.buckets.keys().collect::<Vec<_>>());
        }

        /// Replicas that saw the same events in any interleaving of merges prune the same buckets.
        #[test]
        fn bucket_expiry_is_identical_on_every_replica(evs in events()) {
            let (mut a, mut b, mut c) = (Window::new(SPEC), Window::new(SPEC), Window::new(SPEC));
            for (i, (n, at, v)) in evs.iter().enumerate() {
                let ts = Timestamp::from_millis(1_000 + i as u64);
                let target = match n { 1 => &mut a, 2 => &mut b, _ => &mut c };
                let _ = target.add(&node(*n), *at, Observation::Value(f64::from(*v)), ts);
            }
            let mut x = a.clone(); x.merge(&b); x.merge(&c);
            let mut y = c.clone(); y.merge(&a); y.merge(&b);
            let mut z = b.clone(); z.merge(&c); z.merge(&a); z.merge(&b);
            prop_assert_eq!(&x, &y);
            prop_assert_eq!(&x, &z);
            if let Some(hw) = x.high_water() {
                prop_assert!(x.buckets.keys().all(|s| s + SPEC.span_ms > hw));
            }
        }
    }

    #[test]
    fn late_and_non_finite_events_are_refused_and_change_nothing() {
        let mut w = Window::new(SPEC);
        w.add(
            &node(1),
            100,
            Observation::Value(1.0),
            Timestamp::from_millis(1),
        )
        .expect("fits");
        let before = w.clone();
        assert_eq!(
            w.add(
                &node(1),
                40,
                Observation::Value(1.0),
                Timestamp::from_millis(2)
            ),
            Err(WindowRefusal::Late)
        );
        assert_eq!(
            w.add(
                &node(1),
                100,
                Observation::Value(f64::NAN),
                Timestamp::from_millis(3)
            ),
            Err(WindowRefusal::NotFinite)
        );
        assert_eq!(w, before);
        assert!(
            w.add(
                &node(1),
                60,
                Observation::Value(1.0),
                Timestamp::from_millis(4)
            )
            .is_ok(),
            "inside the span"
        );
    }

    #[test]
    fn reads_count_only_the_buckets_in_the_span_before_now() {
        let spec = WindowSpec {
            aggregation: Aggregation::Count,
            ..SPEC
        };
        let mut w = Window::new(spec);
        for at in [100, 105, 130, 149] {
            w.add(
                &node(1),
                at,
                Observation::Value(0.0),
                Timestamp::from_millis(at),
            )
            .expect("fits");
        }
        assert_eq!(w.value(149), (4, Some(4.0)));
        assert_eq!(
            w.value(185),
            (2, Some(2.0)),
            "buckets 130 and 140 overlap [135, 185]"
        );
        assert_eq!(w.value(300), (0, Some(0.0)));
        let all_time = WindowSpec {
            aggregation: Aggregation::Min,
            bucket_ms: 1,
            span_ms: 0,
            max_exact: 0,
        };
        let mut first_seen = Window::new(all_time);
        for at in [500u64, 20, 900] {
            first_seen
                .add(
                    &node(2),
                    at,
                    Observation::Value(at as f64),
                    Timestamp::from_millis(at),
                )
                .expect("all-time windows have no late events");
        }
        assert_eq!(first_seen.value(1_000), (3, Some(20.0)));
        assert_eq!(first_seen.buckets.len(), 1);
    }

    #[test]
    fn a_slot_begun_after_an_erasure_replaces_the_erased_one() {
        let mut old = Window::new(SPEC);
        old.add(
            &node(1),
            100,
            Observation::Value(5.0),
            Timestamp::from_millis(10),
        )
        .expect("fits");
        old.add(
            &node(1),
            101,
            Observation::Value(5.0),
            Timestamp::from_millis(11),
        )
        .expect("fits");
        let watermark = Marker {
            ts: Timestamp::from_millis(20),
            node: node(9).node,
        };
        let mut fresh = old.clone();
        assert!(!fresh.retain_above(&watermark), "everything was erased");
        fresh
            .add(
                &node(1),
                102,
                Observation::Value(1.0),
                Timestamp::from_millis(30),
            )
            .expect("fits");
        let mut merged = old.clone();
        merged.merge(&fresh);
        merged.retain_above(&watermark);
        assert_eq!(
            merged.value(105),
            (1, Some(1.0)),
            "the new slot survives, the erased one does not"
        );
    }
}

#[cfg(test)]
mod distinct_tests {
    use proptest::prelude::*;

    use super::*;

    fn node(i: u8) -> Actor {
        Actor::legacy(crate::hlc::NodeId::new(format!("n{i}")).expect("valid"))
    }

    const K: u32 = 256;

    fn spec(span_ms: u64, max_exact: u32) -> WindowSpec {
        WindowSpec {
            aggregation: Aggregation::DistinctCount,
            bucket_ms: 10,
            span_ms,
            max_exact,
        }
    }

    fn h(v: u64) -> Observation {
        Observation::Distinct(distinct_hash(v.to_string().as_bytes()))
    }

    /// The hash is part of the stored state and must never change: a different hash would count every
    /// value already sketched again. These are XXH3-64 (seed 0) of the given bytes.
    #[test]
    fn distinct_hash_golden_vectors() {
        assert_eq!(distinct_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(distinct_hash(b"\"sku-1\""), GOLDEN_SKU_1);
        assert_eq!(distinct_hash(b"42"), GOLDEN_42);
        assert_ne!(distinct_hash(b"42"), distinct_hash(b"\"42\""));
    }

    const GOLDEN_SKU_1: u64 = 0x2a91_9615_07d5_ad6c;
    const GOLDEN_42: u64 = 0x1217_cb28_c0ef_2191;

    #[test]
    fn counts_are_exact_below_k() {
        for n in [0u64, 1, 2, 100, u64::from(K) - 1] {
            let mut w = Window::new(spec(0, K));
            for v in 0..n {
                // Every value twice, from two nodes: duplicates never count.
                for by in [1, 2] {
                    w.add(&node(by), 5, h(v), Timestamp::from_millis(v))
                        .expect("fits");
                }
            }
            assert_eq!(w.value(10), (2 * n, Some(n as f64)), "{n} distinct values");
            assert!(w
                .buckets
                .values()
                .flat_map(|s| s.values())
                .all(|s| s.hashes.len() as u64 == n));
        }
    }

    /// Above K the count is the KMV estimate: checked on 20 disjoint value sets of 10,000 values each
    /// (the hash is fixed, so the errors are fixed; the bounds leave room around the measured ones: worst
    /// 22.7 %, mean +0.4 %, root mean square 7.3 %). The relative standard error at K = 256 is about
    /// 6.3 %, and the estimate's distribution is skewed upwards (it is `(K - 1) / u_K`), so a single set
    /// may be off by 3 standard errors; a larger K is tighter (1.2 % at K = 4096 for 10,000 values).
    #[test]
    fn counts_above_k_are_estimated_within_bounds_and_sketches_stay_bounded() {
        let mut errors = Vec::new();
        for set in 0..20u64 {
            let mut w = Window::new(spec(0, K));
            for v in 0..10_000u64 {
                w.add(
                    &node(1),
                    5,
                    h(set * 1_000_000 + v),
                    Timestamp::from_millis(1),
                )
                .expect("fits");
            }
            assert!(w
                .buckets
                .values()
                .flat_map(|s| s.values())
                .all(|s| s.hashes.len() == K as usize));
            let (events, value) = w.value(10);
            assert_eq!(events, 10_000);
            let estimate = value.expect("a count");
            errors.push((estimate - 10_000.0) / 10_000.0);
        }
        let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        assert!(worst < 0.25, "worst relative error {worst}: {errors:?}");
        assert!(mean.abs() < 0.02, "mean relative error {mean}: {errors:?}");
        assert!(rms < 0.09, "root mean square error {rms}: {errors:?}");
        let mut big = Window::new(spec(0, 4_096));
        for v in 0..10_000u64 {
            big.add(&node(1), 5, h(v), Timestamp::from_millis(1))
                .expect("fits");
        }
        let estimate = big.value(10).1.expect("a count");
        assert!(
            (estimate - 10_000.0).abs() < 500.0,
            "K = 4096: {estimate} for 10,000"
        );
    }

    #[test]
    fn a_read_is_the_union_of_the_buckets_in_the_span() {
        let mut w = Window::new(spec(50, K));
        // Buckets 100, 130, 140 hold values {1, 2}, {2, 3}, {4}.
        for (at, v) in [(100, 1), (101, 2), (130, 2), (135, 3), (140, 4)] {
            w.add(&node(1), at, h(v), Timestamp::from_millis(at))
                .expect("fits");
        }
        assert_eq!(w.value(149), (5, Some(4.0)));
        assert_eq!(
            w.value(185),
            (3, Some(3.0)),
            "buckets 130 and 140 overlap [135, 185]"
        );
        assert_eq!(w.value(300), (0, Some(0.0)));
    }

    /// Values `(node, event time, value)` from a space large enough to cross K = 8 per bucket.
    fn events() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
        proptest::collection::vec((1u8..4, 0u64..120, 0u64..40), 0..120)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Two owners during a split each ingest a share of the values (shares cut anywhere, so they are
        /// disjoint or, with `overlap`, share values); merged, every read equals the read of one owner
        /// that ingested everything, and so does the K smallest hashes of every bucket.
        #[test]
        fn split_then_merge_equals_one_owner(evs in events(), cut in 0usize..120, overlap in 0usize..40, k in 2u32..10) {
            let mut sorted = evs.clone();
            sorted.sort_by_key(|e| e.1); // in event-time order: nothing is late
            let cut = cut.min(sorted.len());
            let a_evs: Vec<_> = sorted[..cut].to_vec();
            // B gets the rest plus the last `overlap` values of A again.
            let mut b_evs: Vec<_> = sorted[cut.saturating_sub(overlap)..].to_vec();
            b_evs.sort_by_key(|e| e.1);
            let (mut a, mut b) = (Window::new(spec(50, k)), Window::new(spec(50, k)));
            for (i, (_, at, v)) in a_evs.iter().enumerate() {
                a.add(&node(1), *at, h(*v), Timestamp::from_millis(1_000 + i as u64)).expect("in order");
            }
            for (i, (_, at, v)) in b_evs.iter().enumerate() {
                b.add(&node(2), *at, h(*v), Timestamp::from_millis(2_000 + i as u64)).expect("in order");
            }
            let mut ab = a.clone();
            ab.merge(&b);
            let mut one = Window::new(spec(50, k));
            let mut all: Vec<_> = a_evs.iter().chain(&b_evs).copied().collect();
            all.sort_by_key(|e| e.1);
            for (i, (_, at, v)) in all.iter().enumerate() {
                one.add(&node(3), *at, h(*v), Timestamp::from_millis(3_000 + i as u64)).expect("in order");
            }
            prop_assert_eq!(ab.buckets.keys().collect::<Vec<_>>(), one.buckets.keys().collect::<Vec<_>>());
            for now in [0, 60, 99, 119, 140, 200] {
                prop_assert_eq!(ab.value(now), one.value(now), "read at {}", now);
            }
            for (start, slots) in &one.buckets {
                let mut union: Vec<u64> = ab.buckets[start].values().flat_map(|s| s.hashes.iter().copied()).collect();
                union.sort_unstable();
                union.dedup();
                union.truncate(k as usize);
                let mine: Vec<u64> = slots.values().flat_map(|s| s.hashes.iter().copied()).collect();
                prop_assert_eq!(union, mine, "bucket {}", start);
            }
        }
    }
}
