//! Ingest (`u-*`): events are counted exactly once per message id, however often they are retried or
//! delivered again. On every replica, the all-time `hits` window counts between the number of distinct
//! message ids acknowledged (`applied` or `duplicate`) and the number that may have been applied
//! (acknowledged or indeterminate; `refused` and connection failures certainly were not).

use std::collections::BTreeSet;

use super::{Input, Report};
use crate::history::OpKind;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("ingest");
    let keys = input.by_key(OpKind::Ingest, "u-");
    let (mut events, mut deliveries, mut duplicates, mut replicas) = (0u64, 0u64, 0u64, 0u64);
    let (mut below, mut above) = (0u64, 0u64);
    for (key, ops) in &keys {
        let acked: BTreeSet<i64> = ops
            .iter()
            .filter(|o| o.is_ok())
            .filter_map(|o| o.invoke.value)
            .collect();
        let attempted: BTreeSet<i64> = ops
            .iter()
            .filter(|o| o.may_have_happened())
            .filter_map(|o| o.invoke.value)
            .collect();
        events += attempted.len() as u64;
        deliveries += ops.len() as u64;
        duplicates += ops
            .iter()
            .filter(|o| {
                o.done
                    .as_ref()
                    .and_then(|d| d.outcome.as_deref())
                    .is_some_and(|x| x == "duplicate")
            })
            .count() as u64;
        for (node, state) in input.states(key) {
            replicas += 1;
            let count = state
                .and_then(|s| s.windows.get("hits"))
                .map_or(0, |w| w.value(u64::MAX).0);
            if count < acked.len() as u64 {
                below += 1;
                r.error(format!(
                    "{key} on {node}: {count} events counted < {} acknowledged message ids",
                    acked.len()
                ));
            } else if count > attempted.len() as u64 {
                above += 1;
                r.error(format!(
                    "{key} on {node}: {count} events counted > {} distinct message ids sent (a duplicate counted)",
                    attempted.len()
                ));
            }
        }
    }
    r.count("keys", keys.len() as u64);
    r.count("message_ids", events);
    r.count("deliveries", deliveries);
    r.count("answered_duplicate", duplicates);
    r.count("replicas_checked", replicas);
    r.count("below_acknowledged", below);
    r.count("above_distinct", above);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::OpType;
    use featurestore::crdt::window::{Aggregation, Observation, Window, WindowSpec};

    fn state(events: u64) -> Option<featurestore::Profile> {
        let mut w = Window::new(WindowSpec {
            aggregation: Aggregation::Count,
            bucket_ms: 1000,
            span_ms: 0,
            max_exact: 0,
        });
        let node: featurestore::hlc::Actor = "n1.7".parse().unwrap();
        for i in 0..events {
            w.add(
                &node,
                1000 + i,
                Observation::Value(1.0),
                featurestore::Timestamp::from_millis(i + 1),
            )
            .unwrap();
        }
        let mut p = featurestore::Profile::default();
        p.windows.insert("hits".into(), w);
        Some(p)
    }

    fn input(count: u64) -> Input {
        let mut i = Input::default();
        // m-1 acknowledged, then delivered again (duplicate); m-2 indeterminate; m-3 refused.
        for (id, (v, typ, outcome)) in [
            (1, OpType::Ok, "applied"),
            (1, OpType::Ok, "duplicate"),
            (2, OpType::Info, ""),
            (3, OpType::Fail, "refused"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut o = op(id as u64, OpKind::Ingest, "u-0", 100 * id as u64, typ);
            o.invoke.value = Some(v);
            if !outcome.is_empty() {
                o.done.as_mut().unwrap().outcome = Some(outcome.into());
            }
            i.ops.push(o);
        }
        set_final(
            &mut i,
            "u-0",
            vec![("n1", state(count)), ("n2", state(count))],
        );
        i
    }

    #[test]
    fn each_message_id_counted_once_passes() {
        for c in [1, 2] {
            let r = check(&input(c));
            assert!(r.valid, "{c}: {r:?}");
            assert_eq!(r.counts["answered_duplicate"], 1);
        }
    }

    #[test]
    fn a_lost_event_or_a_counted_duplicate_fails() {
        let r = check(&input(0));
        assert!(!r.valid);
        assert_eq!(r.counts["below_acknowledged"], 2);
        let r = check(&input(3));
        assert!(!r.valid);
        assert_eq!(r.counts["above_distinct"], 2);
    }
}
