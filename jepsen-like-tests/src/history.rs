//! The records of a run: every client operation as an `invoke` line and a completion line (`ok`,
//! `fail` or `info`) in `history.jsonl`, the fault windows (`faults.jsonl`) and the final state the
//! worker reads after heal + quiesce (`final.json`).
//!
//! Outcomes follow Jepsen: `ok` was acknowledged; `fail` certainly did not happen (the client could
//! not reach any node, so nothing was sent); `info` is indeterminate (a timeout, a transport error or
//! an error reply after the write may have been applied somewhere). Checkers treat `info` as "may
//! have happened". Times are host milliseconds ([`crate::now_ms`]).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use featurestore::{Marker, Profile};
use serde::{Deserialize, Serialize};

/// Invocation or completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpType {
    /// The operation starts.
    Invoke,
    /// Acknowledged.
    Ok,
    /// Certainly not applied.
    Fail,
    /// Indeterminate.
    Info,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A gauge write (last writer wins) of a unique value.
    Put,
    /// A counter increment.
    Incr,
    /// A flag write with the causal context of the read before it (or the empty one).
    Flag,
    /// An erasure of the whole key.
    Erase,
    /// A read (quorum 1).
    Read,
    /// A fresh client connecting.
    Connect,
    /// One `track` event ingested (`value`: its message number, `m-<value>`; retries and duplicate
    /// deliveries reuse it).
    Ingest,
}

/// Which client ran the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// The long-lived ring-aware client of the application.
    Long,
    /// A client connected during the run (possibly during a fault), used for a few operations.
    Fresh,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The operation's id (an invocation and its completion share it).
    pub id: u64,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub typ: OpType,
    /// What it does.
    pub f: OpKind,
    /// The logical process (client task) that ran it.
    pub process: u32,
    /// Long-lived or fresh client.
    pub client: ClientKind,
    /// The key.
    pub key: String,
    /// Host time of this record, ms.
    pub time_ms: u64,
    /// The node it was sent to (the key's first replica in the client's view) or, once acknowledged,
    /// the node that stamped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The unique value written (puts), or the delta (increments), or the flag value (0/1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// The marker (version) the write was stamped with, or an erase's watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<Marker>,
    /// Flags: the markers of the siblings the write's context covered (what it replaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<Marker>,
    /// Puts: whether the coordinator reported the write superseded at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
    /// Completions: milliseconds since the invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The error, for `fail` and `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ingest: the event's outcome (`applied`, `duplicate`, `refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// One completed operation: its invocation joined with its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The invocation.
    pub invoke: Op,
    /// The completion (`None`: the worker stopped before it completed; treat as `info`).
    pub done: Option<Op>,
}

impl Completed {
    /// The outcome (`Info` if it never completed).
    pub fn outcome(&self) -> OpType {
        self.done.as_ref().map_or(OpType::Info, |d| d.typ)
    }
    /// Whether it was acknowledged.
    pub fn is_ok(&self) -> bool {
        self.outcome() == OpType::Ok
    }
    /// Whether it may have taken effect (ok or info).
    pub fn may_have_happened(&self) -> bool {
        self.outcome() != OpType::Fail
    }
    /// The completion's marker.
    pub fn marker(&self) -> Option<&Marker> {
        self.done.as_ref()?.marker.as_ref()
    }
    /// When it completed (or the invocation time if it never did).
    pub fn end_ms(&self) -> u64 {
        self.done.as_ref().map_or(u64::MAX, |d| d.time_ms)
    }
}

/// Joins invocations and completions by id, in invocation order.
pub fn pair(ops: &[Op]) -> Vec<Completed> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out: Vec<Completed> = Vec::new();
    for op in ops {
        if op.typ == OpType::Invoke {
            open.insert(op.id, out.len());
            out.push(Completed {
                invoke: op.clone(),
                done: None,
            });
        } else if let Some(i) = open.remove(&op.id) {
            out[i].done = Some(op.clone());
        }
    }
    out
}

/// Reads `history.jsonl` (a torn last line, from a killed worker, is skipped).
pub fn read_history(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = std::fs::File::open(path)?;
    let mut ops = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if let Ok(op) = serde_json::from_str::<Op>(&line) {
            ops.push(op);
        }
    }
    Ok(ops)
}

/// A fault window, as `faults.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The nemesis family (`partition`, `kill`, ...).
    pub nemesis: String,
    /// What exactly (`halves [n1,n2] [n3,n4,n5]`, `kill -9 n3`, ...).
    pub detail: String,
    /// The nodes it acted on.
    pub nodes: Vec<String>,
    /// Host time it began, ms.
    pub start_ms: u64,
    /// Host time it was healed, ms.
    pub end_ms: u64,
    /// Clock faults: the offset applied, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
}

/// A node restart (after `kill -9` or disk loss): whether the store reopened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// The node.
    pub node: String,
    /// Whether its data dir was wiped first.
    pub wiped: bool,
    /// Whether it reported ready again.
    pub reopened: bool,
    /// Host time of the restart, ms.
    pub time_ms: u64,
    /// Why not, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One durability probe: right after a node restarted from `kill -9`, its raw state of a key it had
/// acknowledged (stamped) a write of before the kill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The restarted node.
    pub node: String,
    /// The key.
    pub key: String,
    /// The newest marker of a write the node stamped and acknowledged before it was killed.
    pub expected: Marker,
    /// The gauge marker the node holds after the restart (`None`: nothing).
    pub found: Option<Marker>,
    /// The node's erasure watermark of the key, if any.
    pub erased_at: Option<Marker>,
    /// Why the node could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node's status after heal + quiesce.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalStatus {
    /// Whether it answered.
    pub answered: bool,
    /// Hints it still holds (all targets).
    pub hints_queued: u64,
    /// Hints it dropped over the run (budget full).
    pub hints_dropped: u64,
    /// The most hints it held in one sample during the run.
    pub max_hints_sampled: u64,
    /// Members it does not see as alive (among the active ones).
    pub not_alive: Vec<String>,
    /// Its error, if it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One key's replicas after heal + quiesce.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalKey {
    /// Its replicas in the final ring.
    pub replicas: Vec<String>,
    /// Each replica's raw state (`Err`: the replica could not be read).
    pub states: BTreeMap<String, Result<Option<Profile>, String>>,
    /// Milliseconds from the heal until every replica's raw state was identical (`None`: never, within
    /// the quiesce limit).
    pub converged_after_ms: Option<u64>,
}

/// What the worker writes to `final.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// Host time of the heal, ms.
    pub heal_ms: u64,
    /// Every key the workload touched.
    pub keys: BTreeMap<String, FinalKey>,
    /// Every active node's status.
    pub status: BTreeMap<String, FinalStatus>,
    /// Durability probes after restarts.
    pub probes: Vec<Probe>,
}

/// Appends one JSON line to a file.
pub fn append_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

/// Reads a JSON-lines file of `T` (missing file: empty).
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
