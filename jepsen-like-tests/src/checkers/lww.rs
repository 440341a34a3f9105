//! LWW accounting of the `g-*` gauges: on every replica, the final value came from some write (of any
//! outcome) and carries that write's marker; no acknowledged write has a higher marker than the final
//! one (that would be a lost write); acknowledged writes with lower markers are counted as superseded;
//! real-time inversions (A acknowledged before B was invoked, yet A's marker is higher, so B lost to an
//! earlier write: what clock skew does to last-writer-wins) are counted with the largest skew seen.

use super::{show, Input, Report};
use crate::history::OpKind;
use featurestore::Value;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("lww");
    let (mut acked, mut superseded, mut lost, mut phantom) = (0u64, 0u64, 0u64, 0u64);
    let (mut inversions, mut max_skew_ms, mut coordinator_superseded) = (0u64, 0u64, 0u64);
    let keys = input.by_key(OpKind::Put, "g-");
    for (key, writes) in &keys {
        let ok: Vec<_> = writes.iter().filter(|w| w.is_ok()).collect();
        acked += ok.len() as u64;
        coordinator_superseded += ok
            .iter()
            .filter(|w| w.done.as_ref().is_some_and(|d| d.superseded))
            .count() as u64;
        // Real-time inversions.
        let mut by_end: Vec<_> = ok
            .iter()
            .filter_map(|w| Some((w.end_ms(), w.marker()?)))
            .collect();
        by_end.sort_by_key(|(t, _)| *t);
        for b in &ok {
            let Some(mb) = b.marker() else { continue };
            for (end, ma) in &by_end {
                if *end >= b.invoke.time_ms {
                    break;
                }
                if *ma > mb {
                    inversions += 1;
                    max_skew_ms = max_skew_ms.max(ma.ts.wall_ms.saturating_sub(mb.ts.wall_ms));
                    break;
                }
            }
        }
        for (node, state) in input.states(key) {
            let reg = state.and_then(|s| s.gauges.get("v"));
            let final_marker = reg.map(|g| &g.marker);
            match reg.and_then(|g| g.value.as_ref()) {
                Some(Value::I64(v)) => {
                    let from = writes
                        .iter()
                        .find(|w| w.invoke.value == Some(*v) && w.may_have_happened());
                    match from {
                        None => {
                            phantom += 1;
                            r.error(format!(
                                "{key} on {node}: final value {v} was never written"
                            ));
                        }
                        Some(w) if w.is_ok() && w.marker() != final_marker => {
                            phantom += 1;
                            r.error(format!(
                                "{key} on {node}: value {v} carries marker {:?}, its write was stamped {:?}",
                                final_marker.map(show),
                                w.marker().map(show)
                            ));
                        }
                        Some(_) => {}
                    }
                }
                Some(other) => {
                    phantom += 1;
                    r.error(format!(
                        "{key} on {node}: final value {other:?} was never written"
                    ));
                }
                None => {}
            }
            for w in &ok {
                let Some(m) = w.marker() else { continue };
                match final_marker {
                    Some(f) if m > f => {
                        lost += 1;
                        r.error(format!(
                            "{key} on {node}: acknowledged write {} (value {:?}, op {}) is lost: final marker {}",
                            show(m),
                            w.invoke.value,
                            w.invoke.id,
                            show(f)
                        ));
                    }
                    None => {
                        lost += 1;
                        r.error(format!(
                            "{key} on {node}: acknowledged write {} (op {}) is lost: the replica holds no value",
                            show(m),
                            w.invoke.id
                        ));
                    }
                    Some(f) if m < f => superseded += 1,
                    Some(_) => {}
                }
            }
        }
    }
    r.count("keys", keys.len() as u64);
    r.count("acknowledged", acked);
    r.count("lost", lost);
    r.count("superseded_replica_checks", superseded);
    r.count("superseded_at_coordinator", coordinator_superseded);
    r.count("phantom_values", phantom);
    r.count("realtime_inversions", inversions);
    r.count("max_inversion_skew_ms", max_skew_ms);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::OpType;

    fn input(final_value: i64, final_marker: &str) -> Input {
        let mut input = Input::default();
        input.ops = vec![
            put(0, "g-0", 100, OpType::Ok, 1, "100.0@n1"),
            put(1, "g-0", 200, OpType::Ok, 2, "200.0@n2"),
            put(2, "g-0", 300, OpType::Info, 3, ""),
        ];
        let s = gauge_state(final_value, final_marker);
        set_final(
            &mut input,
            "g-0",
            vec![("n1", Some(s.clone())), ("n2", Some(s))],
        );
        input
    }

    #[test]
    fn the_latest_acknowledged_write_or_a_later_indeterminate_one_passes() {
        let r = check(&input(2, "200.0@n2"));
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["acknowledged"], 2);
        assert_eq!(r.counts["superseded_replica_checks"], 2);
        let r = check(&input(3, "300.0@n3"));
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let r = check(&input(1, "100.0@n1"));
        assert!(!r.valid);
        assert_eq!(r.counts["lost"], 2, "{r:?}");
    }

    #[test]
    fn a_value_nobody_wrote_fails_and_an_empty_replica_loses_everything() {
        let r = check(&input(99, "900.0@n1"));
        assert!(!r.valid);
        assert_eq!(r.counts["phantom_values"], 2);
        let mut i = input(2, "200.0@n2");
        set_final(&mut i, "g-0", vec![("n1", None)]);
        let r = check(&i);
        assert_eq!(r.counts["lost"], 2);
    }

    #[test]
    fn inversions_from_skew_are_counted() {
        let mut i = Input::default();
        // Acknowledged at 110 with a marker from a clock 5 s ahead; then a later write wins nothing.
        i.ops = vec![
            put(0, "g-0", 100, OpType::Ok, 1, "5100.0@n1"),
            put(1, "g-0", 200, OpType::Ok, 2, "200.0@n2"),
        ];
        set_final(
            &mut i,
            "g-0",
            vec![("n1", Some(gauge_state(1, "5100.0@n1")))],
        );
        let r = check(&i);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["realtime_inversions"], 1);
        assert_eq!(r.counts["max_inversion_skew_ms"], 4900);
    }
}
