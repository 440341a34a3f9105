//! Convergence: after heal + quiesce, every replica's raw state of every key is identical (compared as
//! whole CRDT states from per-replica `LocalState` reads), and how long each key took to get there after
//! the heal (p50/p99/max).

use super::{quantile, Input, Report};
use crate::worker::identical;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("convergence");
    let mut times = Vec::new();
    let (mut converged, mut diverged, mut unreadable) = (0u64, 0u64, 0u64);
    for (key, k) in &input.fin.keys {
        if k.states.values().any(Result::is_err) {
            unreadable += 1;
            let errs: Vec<String> = k
                .states
                .iter()
                .filter_map(|(n, s)| s.as_ref().err().map(|e| format!("{n}: {e}")))
                .collect();
            r.error(format!(
                "{key}: replicas could not be read: {}",
                errs.join("; ")
            ));
        } else if identical(k) {
            converged += 1;
        } else {
            diverged += 1;
            r.error(format!(
                "{key}: replicas {:?} hold different raw states after quiesce",
                k.replicas
            ));
        }
        if let Some(t) = k.converged_after_ms {
            times.push(t);
        }
    }
    r.count("keys", input.fin.keys.len() as u64);
    r.count("converged", converged);
    r.count("diverged", diverged);
    r.count("unreadable", unreadable);
    r.count("converge_ms_p50", quantile(&times, 0.5));
    r.count("converge_ms_p99", quantile(&times, 0.99));
    r.count("converge_ms_max", times.iter().max().copied());
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn identical_replicas_pass_and_a_stale_one_fails() {
        let mut input = Input::default();
        let s = gauge_state(1, "100.0@n1");
        set_final(
            &mut input,
            "g-0",
            vec![("n1", Some(s.clone())), ("n2", Some(s.clone()))],
        );
        let ok = check(&input);
        assert!(ok.valid, "{ok:?}");
        assert_eq!(ok.counts["converged"], 1);
        assert_eq!(ok.counts["converge_ms_p99"], 100);

        set_final(
            &mut input,
            "g-1",
            vec![("n1", Some(s)), ("n3", Some(gauge_state(0, "90.0@n3")))],
        );
        set_final(&mut input, "g-2", vec![("n1", None), ("n2", None)]);
        input
            .fin
            .keys
            .get_mut("g-2")
            .unwrap()
            .states
            .insert("n4".into(), Err("timeout".into()));
        let bad = check(&input);
        assert!(!bad.valid);
        assert_eq!(bad.counts["diverged"], 1);
        assert_eq!(bad.counts["unreadable"], 1);
        assert_eq!(bad.error_count, 2);
    }
}
