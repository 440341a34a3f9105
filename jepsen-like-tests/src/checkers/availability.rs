//! Availability: the fraction of operations answered (`ok`) and their latency, per window (each fault
//! window, and the quiet time between faults), per nemesis family and per client kind (long-lived
//! ring-aware client vs fresh clients connected during the run).
//!
//! The promise checked: outside fault windows (quiet time, which includes the recovery right after a
//! heal) at least [`QUIET_MIN`] of the long-lived client's operations succeed, and during faults the
//! cluster is never completely unavailable to it (each fault window with at least 5 operations has at
//! least one `ok`). The numbers per fault kind are reported for docs/harness.md.

use std::collections::BTreeMap;

use super::{quantile, Input, Report};
use crate::history::{ClientKind, Completed};

/// The least fraction of long-lived-client operations that must succeed outside fault windows.
pub const QUIET_MIN: f64 = 0.9;

#[derive(Default)]
struct Tally {
    total: u64,
    ok: u64,
    latencies: Vec<u64>,
}

impl Tally {
    fn add(&mut self, op: &Completed) {
        self.total += 1;
        if op.is_ok() {
            self.ok += 1;
            if let Some(l) = op.done.as_ref().and_then(|d| d.latency_ms) {
                self.latencies.push(l);
            }
        }
    }
    fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.ok as f64 / self.total as f64
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.total,
            "ok": self.ok,
            "fraction_ok": (self.fraction() * 10_000.0).round() / 10_000.0,
            "latency_ms_p50": quantile(&self.latencies, 0.5),
            "latency_ms_p99": quantile(&self.latencies, 0.99),
        })
    }
}

/// The window an operation invoked at `t` falls in: the index of its fault window, or `None` (quiet).
fn window_of(input: &Input, t: u64) -> Option<usize> {
    input
        .faults
        .iter()
        .position(|w| w.start_ms <= t && t < w.end_ms)
}

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("availability");
    let mut per_kind: BTreeMap<(String, ClientKind), Tally> = BTreeMap::new();
    let mut per_window: BTreeMap<usize, Tally> = BTreeMap::new();
    for op in &input.ops {
        let w = window_of(input, op.invoke.time_ms);
        let kind = w.map_or_else(|| "none".to_owned(), |i| input.faults[i].nemesis.clone());
        per_kind
            .entry((kind, op.invoke.client))
            .or_default()
            .add(op);
        if let (Some(i), ClientKind::Long) = (w, op.invoke.client) {
            per_window.entry(i).or_default().add(op);
        }
    }
    let quiet = per_kind.get(&("none".to_owned(), ClientKind::Long));
    if let Some(q) = quiet {
        if q.fraction() < QUIET_MIN {
            r.error(format!(
                "outside faults only {}/{} long-lived operations succeeded ({:.1} % < {:.0} %)",
                q.ok,
                q.total,
                q.fraction() * 100.0,
                QUIET_MIN * 100.0
            ));
        }
    }
    let mut blackouts = 0u64;
    for (i, t) in &per_window {
        if t.total >= 5 && t.ok == 0 {
            blackouts += 1;
            let w = &input.faults[*i];
            r.error(format!(
                "no operation succeeded during {} ({}): 0/{}",
                w.nemesis, w.detail, t.total
            ));
        }
    }
    let mut by = serde_json::Map::new();
    for ((kind, client), t) in &per_kind {
        let name = format!(
            "{kind}/{}",
            match client {
                ClientKind::Long => "long",
                ClientKind::Fresh => "fresh",
            }
        );
        by.insert(name, t.json());
    }
    r.count("windows", input.faults.len() as u64);
    r.count("blackout_windows", blackouts);
    r.count("by_fault", serde_json::Value::Object(by));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::{FaultWindow, OpKind, OpType};

    fn input(fault_ok: bool, quiet_ok: usize) -> Input {
        let mut i = Input::default();
        i.faults.push(FaultWindow {
            nemesis: "partition".into(),
            detail: "isolate n1".into(),
            nodes: vec!["n1".into()],
            start_ms: 1_000,
            end_ms: 2_000,
            offset_ms: None,
        });
        for k in 0..10u64 {
            let typ = if fault_ok && k == 0 {
                OpType::Ok
            } else {
                OpType::Info
            };
            i.ops.push(op(k, OpKind::Put, "g-0", 1_000 + k * 50, typ));
            let typ = if (k as usize) < quiet_ok {
                OpType::Ok
            } else {
                OpType::Info
            };
            i.ops
                .push(op(100 + k, OpKind::Put, "g-0", 3_000 + k * 50, typ));
        }
        i
    }

    #[test]
    fn an_available_cluster_passes() {
        let r = check(&input(true, 10));
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["by_fault"]["partition/long"]["ok"], 1);
        assert_eq!(r.counts["by_fault"]["none/long"]["fraction_ok"], 1.0);
    }

    #[test]
    fn a_blackout_or_failures_outside_faults_fail() {
        let r = check(&input(false, 10));
        assert!(!r.valid);
        assert_eq!(r.counts["blackout_windows"], 1);
        let r = check(&input(true, 5));
        assert!(!r.valid, "{r:?}");
    }
}
