//! Hinted handoff: after heal + quiesce every node's hint queues are empty (all delivered); the most
//! hints seen queued during the run and the hints dropped (hint budget full) are reported.

use super::{Input, Report};

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("hints");
    let (mut queued, mut dropped, mut max_sampled) = (0u64, 0u64, 0u64);
    for (node, s) in &input.fin.status {
        if !s.answered {
            continue; // The liveness checker reports it.
        }
        queued += s.hints_queued;
        dropped += s.hints_dropped;
        max_sampled = max_sampled.max(s.max_hints_sampled);
        if s.hints_queued > 0 {
            r.error(format!(
                "{node} still holds {} hints after quiesce",
                s.hints_queued
            ));
        }
    }
    r.count("nodes", input.fin.status.len() as u64);
    r.count("queued_after_quiesce", queued);
    r.count("dropped", dropped);
    r.count("max_queued_during_run", max_sampled);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::*;
    use crate::history::FinalStatus;

    #[test]
    fn drained_queues_pass_and_a_stuck_one_fails() {
        let mut i = Input::default();
        let s = FinalStatus {
            answered: true,
            max_hints_sampled: 40,
            hints_dropped: 2,
            ..FinalStatus::default()
        };
        i.fin.status.insert("n1".into(), s.clone());
        let r = check(&i);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["max_queued_during_run"], 40);
        assert_eq!(r.counts["dropped"], 2);
        i.fin.status.insert(
            "n2".into(),
            FinalStatus {
                hints_queued: 3,
                ..s
            },
        );
        let r = check(&i);
        assert!(!r.valid);
        assert_eq!(r.counts["queued_after_quiesce"], 3);
    }
}
