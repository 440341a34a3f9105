//! The checkers, one module per promise, run on the records of a run after heal + quiesce. Each returns
//! a [`Report`]: valid or not, counts (never only a verdict) and the first offending cases.
//!
//! Each checker's tests feed it the defect it looks for (and a clean case that passes).

use std::collections::BTreeMap;

use featurestore::{Marker, Profile};
use serde::{Deserialize, Serialize};

use crate::history::{Completed, FaultWindow, FinalState, OpKind, Restart};

pub mod availability;
pub mod convergence;
pub mod counters;
pub mod durability;
pub mod erasure;
pub mod flags;
pub mod hints;
pub mod ingest;
pub mod liveness;
pub mod lww;

/// Most offending cases a report lists.
pub const MAX_ERRORS: usize = 20;

/// Everything the checkers look at.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Every operation, invocation joined with completion.
    pub ops: Vec<Completed>,
    /// The fault windows.
    pub faults: Vec<FaultWindow>,
    /// Restarts after kill -9 or disk loss.
    pub restarts: Vec<Restart>,
    /// The final state.
    pub fin: FinalState,
    /// Each node's log (stderr of all its incarnations).
    pub logs: BTreeMap<String, String>,
    /// Each running node's resident memory at the end, KiB.
    pub rss_kib: BTreeMap<String, u64>,
    /// Host time the workload started, ms.
    pub start_ms: u64,
}

impl Input {
    /// The operations of kind `f` on keys starting with `prefix`, grouped by key.
    pub fn by_key(&self, f: OpKind, prefix: &str) -> BTreeMap<String, Vec<&Completed>> {
        let mut out: BTreeMap<String, Vec<&Completed>> = BTreeMap::new();
        for op in &self.ops {
            if op.invoke.f == f && op.invoke.key.starts_with(prefix) {
                out.entry(op.invoke.key.clone()).or_default().push(op);
            }
        }
        out
    }

    /// The readable final raw states of `key`, per replica.
    pub fn states(&self, key: &str) -> Vec<(&str, Option<&Profile>)> {
        self.fin.keys.get(key).map_or_else(Vec::new, |k| {
            k.states
                .iter()
                .filter_map(|(node, s)| s.as_ref().ok().map(|p| (node.as_str(), p.as_ref())))
                .collect()
        })
    }
}

/// One checker's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The checker.
    pub name: String,
    /// Whether the promise held.
    pub valid: bool,
    /// What it counted.
    pub counts: BTreeMap<String, serde_json::Value>,
    /// The first offending cases (at most [`MAX_ERRORS`]).
    pub errors: Vec<String>,
    /// How many offending cases there were in all.
    pub error_count: usize,
}

impl Report {
    /// An empty, valid report.
    pub fn new(name: &str) -> Report {
        Report {
            name: name.to_owned(),
            valid: true,
            counts: BTreeMap::new(),
            errors: Vec::new(),
            error_count: 0,
        }
    }
    /// Records an offending case (and makes the report invalid).
    pub fn error(&mut self, text: String) {
        self.valid = false;
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(text);
        }
    }
    /// Sets a count.
    pub fn count(&mut self, name: &str, value: impl Into<serde_json::Value>) {
        self.counts.insert(name.to_owned(), value.into());
    }
}

/// The `q` quantile (0..=1) of `values` (nearest rank; `None` if empty).
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Runs every checker.
pub fn check_all(input: &Input) -> Vec<Report> {
    vec![
        convergence::check(input),
        lww::check(input),
        counters::check(input),
        flags::check(input),
        hints::check(input),
        ingest::check(input),
        durability::check(input),
        erasure::check(input),
        availability::check(input),
        liveness::check(input),
    ]
}

/// The marker as `wall.logical@node` text.
pub fn show(m: &Marker) -> String {
    m.to_string()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Builders of histories and states for the checkers' tests.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::history::{ClientKind, FinalKey, Op, OpType};
    use featurestore::crdt::gauge::GaugeRegister;
    use featurestore::Value;

    pub fn marker(text: &str) -> Marker {
        text.parse().unwrap()
    }

    /// An operation invoked at `t` and completed at `t + 10` with `typ`.
    pub fn op(id: u64, f: OpKind, key: &str, t: u64, typ: OpType) -> Completed {
        let invoke = Op {
            id,
            typ: OpType::Invoke,
            f,
            process: 0,
            client: ClientKind::Long,
            key: key.to_owned(),
            time_ms: t,
            node: Some("n1".into()),
            value: None,
            marker: None,
            replaces: Vec::new(),
            superseded: false,
            latency_ms: None,
            error: None,
            outcome: None,
        };
        let done = Op {
            typ,
            time_ms: t + 10,
            latency_ms: Some(10),
            ..invoke.clone()
        };
        Completed {
            invoke,
            done: Some(done),
        }
    }

    /// A put of `value` stamped `m` (if acknowledged).
    pub fn put(id: u64, key: &str, t: u64, typ: OpType, value: i64, m: &str) -> Completed {
        let mut c = op(id, OpKind::Put, key, t, typ);
        c.invoke.value = Some(value);
        let d = c.done.as_mut().unwrap();
        d.value = Some(value);
        if typ == OpType::Ok {
            d.marker = Some(marker(m));
        }
        c
    }

    /// A profile whose gauge `v` holds `value` stamped `m`.
    pub fn gauge_state(value: i64, m: &str) -> Profile {
        let mut p = Profile::default();
        p.gauges.insert(
            "v".into(),
            GaugeRegister::new(marker(m), Value::I64(value), None),
        );
        p
    }

    /// Sets `key`'s final states: one per replica.
    pub fn set_final(input: &mut Input, key: &str, states: Vec<(&str, Option<Profile>)>) {
        input.fin.keys.insert(
            key.to_owned(),
            FinalKey {
                replicas: states.iter().map(|(n, _)| (*n).to_owned()).collect(),
                states: states
                    .into_iter()
                    .map(|(n, s)| (n.to_owned(), Ok(s)))
                    .collect(),
                converged_after_ms: Some(100),
            },
        );
    }
}
