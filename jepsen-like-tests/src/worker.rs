//! The client side of a run, executed inside the client namespace (`ip netns exec <tag>-cl <harness>
//! worker ...`): it is the only process of the harness with a route to the nodes.
//!
//! It runs the workloads until told to heal, recording every operation in `history.jsonl` (an
//! invocation line before the request, a completion line after), then waits for quiescence and writes
//! `final.json`: every replica's raw state of every key touched, the time each key took to converge,
//! every node's status (hints, liveness) and the durability probes.
//!
//! Workloads (unique values; a seeded mix per task):
//! - `g-*`: gauge writes of unique integers (last writer wins);
//! - `c-*`: counter increments of 1–5;
//! - `f-<task>-*`: flag writes, after a read, with that read's causal context (70 %) or with the empty
//!   context (a blind, concurrent write); one writing task per key, so the sibling a write adds is known;
//! - `e-*`: gauge writes racing erasures of the whole key;
//! - `u-*`: `track` events (`Hit`, unique message ids) ingested through `Client::ingest`; after an
//!   indeterminate outcome the same event is sent again, and 15 % of acknowledged ones are delivered a
//!   second time (duplicates the owner must recognise);
//! - reads of `g-*` (availability only).
//!
//! Clients: `--tasks` long-lived tasks share one ring-aware [`Client`] (as an application would), and
//! a fresh client is connected every 1–2 s for five operations, whatever fault is in force.
//!
//! Commands on stdin, one per line, each answered with one line on stdout: `probe NODE KILL_MS
//! SINCE_MS` (durability: read NODE's raw state of every `g-*` key it stamped an acknowledged write of
//! between SINCE_MS and KILL_MS), `leave NODE`, and `heal MS` (stop the workload, quiesce, write
//! `final.json`, answer `final`, exit).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use featurestore::cluster::detector::Liveness;
use featurestore::{CausalContext, FeatureView, Marker, NodeId, Value};
use store_client::{Client, ClientConfig, Error, MemberState};

use crate::history::{ClientKind, FinalKey, FinalState, FinalStatus, Op, OpKind, OpType, Probe};
use crate::rng::Rng;

/// The worker's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The run directory (history.jsonl and final.json are written there).
    #[arg(long)]
    pub dir: PathBuf,
    /// The client config.
    #[arg(long)]
    pub client_config: PathBuf,
    /// Seed of the workload.
    #[arg(long)]
    pub seed: u64,
    /// Long-lived client tasks.
    #[arg(long, default_value_t = 4)]
    pub tasks: u32,
    /// Keys per workload.
    #[arg(long, default_value_t = 6)]
    pub keys: u32,
    /// Pause between two operations of a task, ms.
    #[arg(long, default_value_t = 20)]
    pub think_ms: u64,
    /// How long, at most, to wait for convergence after the heal, ms.
    #[arg(long, default_value_t = 90_000)]
    pub quiesce_ms: u64,
}

/// An acknowledged gauge write, kept for durability probes.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    marker: Marker,
    end_ms: u64,
}

struct Shared {
    history: Mutex<std::io::BufWriter<std::fs::File>>,
    next_id: AtomicU64,
    next_value: AtomicI64,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    keys: Mutex<BTreeSet<String>>,
    max_hints: Mutex<BTreeMap<String, u64>>,
    args: WorkerArgs,
}

impl Shared {
    fn record(&self, op: &Op) {
        if let (Ok(line), Ok(mut h)) = (serde_json::to_string(op), self.history.lock()) {
            let _ = writeln!(h, "{line}");
            let _ = h.flush();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `fail` if the request certainly reached no node, `info` otherwise.
pub fn classify(error: &Error) -> OpType {
    match error {
        Error::Connect { .. } | Error::Config(_) | Error::UnknownNode(_) => OpType::Fail,
        _ => OpType::Info,
    }
}

/// What a completed request reports back to the history.
#[derive(Default)]
struct Outcome {
    node: Option<String>,
    marker: Option<Marker>,
    superseded: bool,
    outcome: Option<String>,
}

struct Task {
    shared: Arc<Shared>,
    process: u32,
    kind: ClientKind,
    rng: Rng,
    /// Flags: every marker this task has seen on each of its flag keys.
    seen_flags: BTreeMap<String, BTreeSet<Marker>>,
    /// The last event ingested: key, message number, and whether its outcome was indeterminate.
    last_event: Option<(String, i64, bool)>,
}

impl Task {
    async fn run_op(&mut self, client: &Client) {
        let keys = self.shared.args.keys.max(1) as usize;
        let roll = self.rng.index(100);
        let (f, key) = match roll {
            0..=29 => (OpKind::Put, format!("g-{}", self.rng.index(keys))),
            30..=54 => (OpKind::Incr, format!("c-{}", self.rng.index(keys))),
            55..=74 => (
                OpKind::Flag,
                format!("f-{}-{}", self.process, self.rng.index(2)),
            ),
            75..=82 => (OpKind::Put, format!("e-{}", self.rng.index(3))),
            83..=85 => (OpKind::Erase, format!("e-{}", self.rng.index(3))),
            86..=91 => (OpKind::Ingest, format!("u-{}", self.rng.index(4))),
            _ => (OpKind::Read, format!("g-{}", self.rng.index(keys))),
        };
        lock(&self.shared.keys).insert(key.clone());
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst);
        // An ingest after an indeterminate one (or, 15 % of the time, after an acknowledged one) sends
        // the same event again: a retry, or a duplicate delivery.
        let (key, retry) = match (f, self.last_event.take()) {
            (OpKind::Ingest, Some((k, v, uncertain))) if uncertain || self.rng.chance(0.15) => {
                (k, Some(v))
            }
            _ => (key, None),
        };
        let value = match f {
            OpKind::Ingest => {
                Some(retry.unwrap_or_else(|| self.shared.next_value.fetch_add(1, Ordering::SeqCst)))
            }
            OpKind::Put => Some(self.shared.next_value.fetch_add(1, Ordering::SeqCst)),
            OpKind::Incr => Some(self.rng.range(1, 6) as i64),
            OpKind::Flag => Some(self.rng.index(2) as i64),
            _ => None,
        };
        let first = client.replicas(&key).first().map(|n| n.to_string());
        let mut op = Op {
            id,
            typ: OpType::Invoke,
            f,
            process: self.process,
            client: self.kind,
            key: key.clone(),
            time_ms: crate::now_ms(),
            node: first.clone(),
            value,
            marker: None,
            replaces: Vec::new(),
            superseded: false,
            latency_ms: None,
            error: None,
            outcome: None,
        };
        // Flags read first; the invocation records what the write's context covers.
        let mut context = CausalContext::default();
        if f == OpKind::Flag {
            let blind = self.rng.chance(0.3);
            if !blind {
                if let Ok(Some(view)) = client.get(&key, Some(&["x"])).await {
                    if let Some(FeatureView::Flag(flag)) = view.features.get("x") {
                        context = flag.context.clone();
                        op.replaces = flag.values.iter().map(|v| v.version.clone()).collect();
                        self.seen_flags
                            .entry(key.clone())
                            .or_default()
                            .extend(op.replaces.iter().cloned());
                    }
                }
            }
            op.time_ms = crate::now_ms();
        }
        self.shared.record(&op);
        let start = op.time_ms;
        let result: Result<Outcome, Error> = match f {
            OpKind::Put => client
                .put(&key, &[("v", Value::I64(value.unwrap_or_default()))])
                .await
                .map(|ack| Outcome {
                    node: Some(ack.version.node.to_string()),
                    superseded: !ack.superseded.is_empty(),
                    marker: Some(ack.version),
                    outcome: None,
                }),
            OpKind::Incr => client
                .increment(&key, &[("n", value.unwrap_or_default())])
                .await
                .map(|_| Outcome::default()),
            OpKind::Flag => {
                let result = client
                    .set_flag(&key, "x", value == Some(1), &context, None)
                    .await;
                result.map(|flag| {
                    let seen = self.seen_flags.entry(key.clone()).or_default();
                    let new: Vec<Marker> = flag
                        .values
                        .iter()
                        .map(|v| v.version.clone())
                        .filter(|m| !seen.contains(m) && !op.replaces.contains(m))
                        .collect();
                    seen.extend(flag.values.iter().map(|v| v.version.clone()));
                    let marker = if new.len() == 1 {
                        new.into_iter().next()
                    } else {
                        None
                    };
                    Outcome {
                        node: marker.as_ref().map(|m| m.node.to_string()),
                        marker,
                        ..Outcome::default()
                    }
                })
            }
            OpKind::Erase => client.erase(&key).await.map(|w| Outcome {
                marker: Some(w),
                ..Outcome::default()
            }),
            OpKind::Ingest => {
                let json = serde_json::json!({
                    "type": "track",
                    "userId": key,
                    "event": "Hit",
                    "messageId": format!("m-{}", value.unwrap_or_default()),
                });
                match featurestore::ingest::Event::from_segment(
                    &json,
                    None,
                    crate::now_ms(),
                    &featurestore::Limits::default(),
                ) {
                    Ok(event) => client.ingest(&[event]).await.map(|outcomes| {
                        use featurestore::wire::event::EventOutcome;
                        let outcome = match outcomes.first() {
                            Some(EventOutcome::Applied { .. }) => "applied".to_owned(),
                            Some(EventOutcome::Duplicate) => "duplicate".to_owned(),
                            Some(EventOutcome::Refused { code, message }) => {
                                format!("refused {code:?}: {message}")
                            }
                            None => "none".to_owned(),
                        };
                        Outcome {
                            outcome: Some(outcome),
                            ..Outcome::default()
                        }
                    }),
                    Err(e) => Err(Error::Protocol(e)),
                }
            }
            OpKind::Read | OpKind::Connect => {
                client.get(&key, None).await.map(|_| Outcome::default())
            }
        };
        let end = crate::now_ms();
        let mut done = Op {
            typ: OpType::Ok,
            time_ms: end,
            latency_ms: Some(end.saturating_sub(start)),
            replaces: Vec::new(),
            ..op
        };
        match result {
            Ok(out) => {
                if let Some(node) = out.node {
                    done.node = Some(node);
                }
                // A refusal was not applied, except `Unavailable` (the owner did not answer the
                // forwarding node in time: it may have applied it), which is indeterminate.
                if let Some(o) = &out.outcome {
                    if o.starts_with("refused Unavailable") {
                        done.typ = OpType::Info;
                    } else if o.starts_with("refused") {
                        done.typ = OpType::Fail;
                    }
                }
                done.outcome = out.outcome;
                done.superseded = out.superseded;
                if f == OpKind::Put && key.starts_with("g-") {
                    if let Some(m) = &out.marker {
                        lock(&self.shared.acked).push(Acked {
                            key: key.clone(),
                            marker: m.clone(),
                            end_ms: end,
                        });
                    }
                }
                done.marker = out.marker;
            }
            Err(e) => {
                done.typ = classify(&e);
                done.error = Some(e.to_string());
            }
        }
        if f == OpKind::Ingest {
            if let Some(v) = value {
                self.last_event = Some((key.clone(), v, done.typ == OpType::Info));
            }
        }
        self.shared.record(&done);
    }
}

async fn long_lived(shared: Arc<Shared>, client: Client, process: u32) {
    let mut task = Task {
        rng: Rng::new(
            shared
                .args
                .seed
                .wrapping_mul(31)
                .wrapping_add(u64::from(process)),
        ),
        shared: shared.clone(),
        process,
        kind: ClientKind::Long,
        seen_flags: BTreeMap::new(),
        last_event: None,
    };
    while !shared.stop.load(Ordering::SeqCst) {
        task.run_op(&client).await;
        tokio::time::sleep(Duration::from_millis(shared.args.think_ms)).await;
    }
}

async fn fresh_clients(shared: Arc<Shared>, config: ClientConfig) {
    let mut rng = Rng::new(shared.args.seed ^ 0xf7e5);
    let mut n = 0u32;
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.range(1_000, 2_000))).await;
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        n += 1;
        let process = 1_000 + n;
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let invoke = Op {
            id,
            typ: OpType::Invoke,
            f: OpKind::Connect,
            process,
            client: ClientKind::Fresh,
            key: String::new(),
            time_ms: crate::now_ms(),
            node: None,
            value: None,
            marker: None,
            replaces: Vec::new(),
            superseded: false,
            latency_ms: None,
            error: None,
            outcome: None,
        };
        shared.record(&invoke);
        let connected = Client::connect(config.clone()).await;
        let end = crate::now_ms();
        let mut done = Op {
            typ: OpType::Ok,
            time_ms: end,
            latency_ms: Some(end.saturating_sub(invoke.time_ms)),
            ..invoke.clone()
        };
        match connected {
            Ok(client) => {
                shared.record(&done);
                let mut task = Task {
                    rng: Rng::new(rng.next_u64()),
                    shared: shared.clone(),
                    process,
                    kind: ClientKind::Fresh,
                    seen_flags: BTreeMap::new(),
                    last_event: None,
                };
                for _ in 0..5 {
                    task.run_op(&client).await;
                }
                client.close().await;
            }
            Err(e) => {
                done.typ = classify(&e);
                done.error = Some(e.to_string());
                shared.record(&done);
            }
        }
    }
}

/// The members that are active in `client`'s view.
fn active_members(client: &Client) -> Vec<NodeId> {
    client
        .cluster()
        .table
        .members
        .values()
        .filter(|m| m.state == MemberState::Active)
        .map(|m| m.id.clone())
        .collect()
}

async fn sample_hints(shared: Arc<Shared>, client: Client) {
    let quick = client.with_deadline(Duration::from_millis(500));
    while !shared.stop.load(Ordering::SeqCst) {
        for node in active_members(&quick) {
            if let Ok(status) = quick.status_of(&node).await {
                let queued: u64 = status.members.iter().map(|m| m.hints_queued).sum();
                let mut max = lock(&shared.max_hints);
                let entry = max.entry(node.to_string()).or_default();
                *entry = (*entry).max(queued);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn probe(
    shared: &Shared,
    client: &Client,
    node: &str,
    kill_ms: u64,
    since_ms: u64,
) -> Vec<Probe> {
    let mut newest: BTreeMap<String, Marker> = BTreeMap::new();
    for a in lock(&shared.acked).iter() {
        if a.marker.node.as_str() == node && a.end_ms < kill_ms && a.end_ms > since_ms {
            let e = newest
                .entry(a.key.clone())
                .or_insert_with(|| a.marker.clone());
            if a.marker > *e {
                *e = a.marker.clone();
            }
        }
    }
    let Ok(id) = NodeId::new(node) else {
        return Vec::new();
    };
    let mut probes = Vec::new();
    for (key, expected) in newest {
        if !client.replicas(&key).contains(&id) {
            continue;
        }
        let mut last = Err("not read".to_owned());
        for _ in 0..5 {
            last = client
                .local_state(&id, &key)
                .await
                .map_err(|e| e.to_string());
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let probe = match last {
            Ok(state) => Probe {
                node: node.to_owned(),
                key,
                expected,
                found: state
                    .as_ref()
                    .and_then(|s| s.gauges.get("v"))
                    .map(|g| g.marker.clone()),
                erased_at: state.and_then(|s| s.erased_at),
                error: None,
            },
            Err(e) => Probe {
                node: node.to_owned(),
                key,
                expected,
                found: None,
                erased_at: None,
                error: Some(e),
            },
        };
        probes.push(probe);
    }
    probes
}

async fn read_key(client: &Client, key: &str) -> FinalKey {
    let replicas = client.replicas(key);
    let mut states = BTreeMap::new();
    for node in &replicas {
        states.insert(
            node.to_string(),
            client
                .local_state(node, key)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    FinalKey {
        replicas: replicas.iter().map(ToString::to_string).collect(),
        states,
        converged_after_ms: None,
    }
}

/// Whether every replica was read and all raw states are identical.
pub fn identical(key: &FinalKey) -> bool {
    let mut states = key.states.values();
    match states.next() {
        Some(Ok(first)) => states.all(|s| matches!(s, Ok(other) if other == first)),
        _ => false,
    }
}

async fn quiesce(shared: &Shared, client: &Client, heal_ms: u64) -> FinalState {
    let limit = shared.args.quiesce_ms;
    let admin = client.with_deadline(Duration::from_secs(2));
    let keys: Vec<String> = lock(&shared.keys).iter().cloned().collect();
    let mut converged: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let _ = admin.refresh_cluster().await;
        for key in &keys {
            if converged.contains_key(key) {
                continue;
            }
            if identical(&read_key(&admin, key).await) {
                converged.insert(key.clone(), crate::now_ms().saturating_sub(heal_ms));
            }
        }
        if converged.len() == keys.len() || crate::now_ms() > heal_ms + limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut final_keys = BTreeMap::new();
    for key in &keys {
        let mut k = read_key(&admin, key).await;
        k.converged_after_ms = converged.get(key).copied();
        final_keys.insert(key.clone(), k);
    }
    // Hints drain and every active member sees the others alive (bounded wait).
    let deadline = crate::now_ms() + 30_000;
    let status = loop {
        let members = active_members(&admin);
        let mut all = BTreeMap::new();
        for node in &members {
            let s = match admin.status_of(node).await {
                Ok(status) => FinalStatus {
                    answered: true,
                    hints_queued: status.members.iter().map(|m| m.hints_queued).sum(),
                    hints_dropped: status
                        .counters
                        .iter()
                        .find(|(n, _)| n == "hints_dropped")
                        .map_or(0, |(_, v)| *v),
                    max_hints_sampled: 0,
                    not_alive: status
                        .members
                        .iter()
                        .filter(|m| {
                            m.id != *node
                                && members.contains(&m.id)
                                && m.liveness != Liveness::Alive
                        })
                        .map(|m| m.id.to_string())
                        .collect(),
                    error: None,
                },
                Err(e) => FinalStatus {
                    answered: false,
                    error: Some(e.to_string()),
                    ..FinalStatus::default()
                },
            };
            all.insert(node.to_string(), s);
        }
        let settled = all
            .values()
            .all(|s| s.answered && s.hints_queued == 0 && s.not_alive.is_empty());
        if settled || crate::now_ms() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let max = lock(&shared.max_hints).clone();
    let status = status
        .into_iter()
        .map(|(node, mut s)| {
            s.max_hints_sampled = max.get(&node).copied().unwrap_or(0);
            (node, s)
        })
        .collect();
    FinalState {
        heal_ms,
        keys: final_keys,
        status,
        probes: Vec::new(),
    }
}

fn answer(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the worker until `heal` (see the module docs).
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = ClientConfig::load(&args.client_config)
        .with_context(|| format!("loading {}", args.client_config.display()))?;
    let history = std::fs::File::create(args.dir.join("history.jsonl"))?;
    let client = {
        let mut attempt = 0;
        loop {
            match Client::connect(config.clone()).await {
                Ok(c) => break c,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("worker: connect: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("connecting to the cluster"),
            }
        }
    };
    let shared = Arc::new(Shared {
        history: Mutex::new(std::io::BufWriter::new(history)),
        next_id: AtomicU64::new(0),
        next_value: AtomicI64::new(1),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        keys: Mutex::new(BTreeSet::new()),
        max_hints: Mutex::new(BTreeMap::new()),
        args: args.clone(),
    });
    let mut tasks = Vec::new();
    for p in 0..args.tasks {
        tasks.push(tokio::spawn(long_lived(shared.clone(), client.clone(), p)));
    }
    tasks.push(tokio::spawn(fresh_clients(shared.clone(), config.clone())));
    tasks.push(tokio::spawn(sample_hints(shared.clone(), client.clone())));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    answer("ready");
    let mut probes = Vec::new();
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["probe", node, kill, since] => {
                let (kill, since) = (kill.parse().unwrap_or(0), since.parse().unwrap_or(0));
                let got = probe(&shared, &client, node, kill, since).await;
                answer(&format!("probed {node} {}", got.len()));
                probes.extend(got);
            }
            ["leave", node] => {
                let result = match NodeId::new(*node) {
                    Ok(id) => client.leave(&id).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => answer(&format!("left {node} ok")),
                    Err(e) => answer(&format!("left {node} error {e}")),
                }
            }
            ["heal", ms] => {
                let heal_ms = ms.parse().unwrap_or_else(|_| crate::now_ms());
                shared.stop.store(true, Ordering::SeqCst);
                for t in tasks.drain(..) {
                    let _ = t.await;
                }
                let mut state = quiesce(&shared, &client, heal_ms).await;
                state.probes = probes;
                let text = serde_json::to_string(&state)?;
                std::fs::write(args.dir.join("final.json"), text)?;
                client.close().await;
                answer("final");
                return Ok(());
            }
            _ => answer(&format!("unknown command {line:?}")),
        }
    }
    anyhow::bail!("stdin closed before heal")
}
