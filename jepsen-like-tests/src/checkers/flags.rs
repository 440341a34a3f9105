//! Flags (`f-*`): concurrent writes are kept as siblings and dominated values never come back.
//!
//! - Dominated: an acknowledged write whose context covered sibling S (its read saw S) replaced S for
//!   good; S must not be among any replica's final siblings.
//! - Kept: an acknowledged write's own sibling must be in every replica's final siblings unless some
//!   write that may have happened (acknowledged or indeterminate) covered it.

use std::collections::BTreeSet;

use super::{show, Input, Report};
use crate::history::OpKind;
use featurestore::Marker;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("flags");
    let keys = input.by_key(OpKind::Flag, "f-");
    let (mut acked, mut identified, mut resurrected, mut missing, mut siblings_max) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut concurrent_kept = 0u64;
    for (key, writes) in &keys {
        let dominated: BTreeSet<&Marker> = writes
            .iter()
            .filter(|w| w.is_ok())
            .flat_map(|w| w.invoke.replaces.iter())
            .collect();
        let covered: BTreeSet<&Marker> = writes
            .iter()
            .filter(|w| w.may_have_happened())
            .flat_map(|w| w.invoke.replaces.iter())
            .collect();
        let ok: Vec<_> = writes.iter().filter(|w| w.is_ok()).collect();
        acked += ok.len() as u64;
        for (node, state) in input.states(key) {
            let finals: BTreeSet<&Marker> = state
                .and_then(|s| s.flags.get("x"))
                .map(|f| f.siblings.iter().map(|s| &s.marker).collect())
                .unwrap_or_default();
            siblings_max = siblings_max.max(finals.len() as u64);
            if finals.len() > 1 {
                concurrent_kept += 1;
            }
            for m in finals.intersection(&dominated) {
                resurrected += 1;
                r.error(format!(
                    "{key} on {node}: sibling {} came back after an acknowledged write replaced it",
                    show(m)
                ));
            }
            for w in &ok {
                let Some(m) = w.marker() else { continue };
                identified += 1;
                if !covered.contains(m) && !finals.contains(m) {
                    missing += 1;
                    r.error(format!(
                        "{key} on {node}: acknowledged write {} (op {}) is neither kept nor replaced",
                        show(m),
                        w.invoke.id
                    ));
                }
            }
        }
    }
    r.count("keys", keys.len() as u64);
    r.count("acknowledged", acked);
    r.count("acknowledged_replica_checks", identified);
    r.count("resurrected", resurrected);
    r.count("lost_siblings", missing);
    r.count("replicas_with_siblings", concurrent_kept);
    r.count("max_siblings", siblings_max);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::OpType;
    use featurestore::crdt::flag::{FlagDot, FlagRegister, FlagSibling};
    use featurestore::Profile;

    fn state(markers: &[&str]) -> Option<Profile> {
        let mut reg = FlagRegister::default();
        for (i, m) in markers.iter().enumerate() {
            reg.siblings.push(FlagSibling {
                dot: FlagDot {
                    actor: "n1.7".parse().unwrap(),
                    counter: i as u64 + 1,
                },
                marker: marker(m),
                value: true,
                expires_at_ms: None,
            });
        }
        let mut p = Profile::default();
        p.flags.insert("x".into(), reg);
        Some(p)
    }

    fn flag(id: u64, t: u64, typ: OpType, m: &str, replaces: &[&str]) -> crate::history::Completed {
        let mut o = op(id, OpKind::Flag, "f-0-0", t, typ);
        o.invoke.replaces = replaces.iter().map(|r| marker(r)).collect();
        if typ == OpType::Ok {
            o.done.as_mut().unwrap().marker = Some(marker(m));
        }
        o
    }

    fn history() -> Vec<crate::history::Completed> {
        vec![
            // Two blind (concurrent) writes, then one that saw the first only.
            flag(0, 100, OpType::Ok, "100.0@n1", &[]),
            flag(1, 200, OpType::Ok, "200.0@n2", &[]),
            flag(2, 300, OpType::Ok, "300.0@n1", &["100.0@n1"]),
        ]
    }

    #[test]
    fn concurrent_siblings_kept_and_dominated_ones_gone_pass() {
        let mut i = Input::default();
        i.ops = history();
        set_final(
            &mut i,
            "f-0-0",
            vec![("n1", state(&["200.0@n2", "300.0@n1"]))],
        );
        let r = check(&i);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["replicas_with_siblings"], 1);
    }

    #[test]
    fn a_resurrected_value_fails() {
        let mut i = Input::default();
        i.ops = history();
        set_final(
            &mut i,
            "f-0-0",
            vec![("n1", state(&["100.0@n1", "200.0@n2", "300.0@n1"]))],
        );
        let r = check(&i);
        assert!(!r.valid);
        assert_eq!(r.counts["resurrected"], 1);
    }

    #[test]
    fn a_lost_concurrent_sibling_fails() {
        let mut i = Input::default();
        i.ops = history();
        set_final(&mut i, "f-0-0", vec![("n1", state(&["300.0@n1"]))]);
        let r = check(&i);
        assert!(!r.valid);
        assert_eq!(r.counts["lost_siblings"], 1);
    }
}
