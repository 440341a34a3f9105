//! Counters (`c-*`): on every replica, the final value lies within [sum of acknowledged increments,
//! sum of increments that may have happened (acknowledged or indeterminate)]. Below means an
//! acknowledged increment was lost; above means one was applied twice (or a slot was reissued).

use super::{Input, Report};
use crate::history::OpKind;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("counters");
    let keys = input.by_key(OpKind::Incr, "c-");
    let (mut replicas, mut below, mut above, mut acked_ops, mut info_ops) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (key, incs) in &keys {
        let acked: i64 = incs
            .iter()
            .filter(|o| o.is_ok())
            .filter_map(|o| o.invoke.value)
            .sum();
        let attempted: i64 = incs
            .iter()
            .filter(|o| o.may_have_happened())
            .filter_map(|o| o.invoke.value)
            .sum();
        acked_ops += incs.iter().filter(|o| o.is_ok()).count() as u64;
        info_ops += incs
            .iter()
            .filter(|o| o.may_have_happened() && !o.is_ok())
            .count() as u64;
        for (node, state) in input.states(key) {
            replicas += 1;
            let value = state
                .and_then(|s| s.counters.get("n"))
                .map_or(0, featurestore::crdt::counter::Counter::value);
            if value < acked {
                below += 1;
                r.error(format!(
                    "{key} on {node}: {value} < {acked} acknowledged (an acknowledged increment is lost)"
                ));
            } else if value > attempted {
                above += 1;
                r.error(format!(
                    "{key} on {node}: {value} > {attempted} attempted (an increment counted twice)"
                ));
            }
        }
    }
    r.count("keys", keys.len() as u64);
    r.count("acknowledged_increments", acked_ops);
    r.count("indeterminate_increments", info_ops);
    r.count("replicas_checked", replicas);
    r.count("below_acknowledged", below);
    r.count("above_attempted", above);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::OpType;
    use featurestore::crdt::counter::Counter;
    use featurestore::{Profile, Timestamp};

    fn state(value: i64) -> Option<Profile> {
        let mut c = Counter::default();
        c.apply(&"n1.7".parse().unwrap(), value, Timestamp::from_millis(1))
            .unwrap();
        let mut p = Profile::default();
        p.counters.insert("n".into(), c);
        Some(p)
    }

    fn input(value: i64) -> Input {
        let mut i = Input::default();
        for (id, (typ, delta)) in [
            (OpType::Ok, 2),
            (OpType::Info, 3),
            (OpType::Fail, 5),
            (OpType::Ok, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let mut o = op(id as u64, OpKind::Incr, "c-0", 100 * id as u64, typ);
            o.invoke.value = Some(delta);
            i.ops.push(o);
        }
        set_final(
            &mut i,
            "c-0",
            vec![("n1", state(value)), ("n2", state(value))],
        );
        i
    }

    #[test]
    fn within_the_range_passes() {
        for v in [3, 6] {
            let r = check(&input(v));
            assert!(r.valid, "{v}: {r:?}");
        }
    }

    #[test]
    fn a_lost_or_doubled_increment_fails() {
        let r = check(&input(2));
        assert!(!r.valid);
        assert_eq!(r.counts["below_acknowledged"], 2);
        let r = check(&input(7));
        assert!(!r.valid);
        assert_eq!(r.counts["above_attempted"], 2);
    }
}
