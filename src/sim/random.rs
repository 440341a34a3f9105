//! Seeded random schedules on the [`Cluster`] harness, checked against an oracle of what clients were told.
//!
//! Each seed draws 3 to 5 nodes with clock skews (±50 ms, or up to ±450 ms: near the 1 s skew limit
//! between two nodes), a loss rate (1, 5 or 20 %), a duplication rate (1 or 5 %), tight or loose budgets
//! (hint bytes per target, anti-entropy keys per exchange, handoff batch), and at most one membership change
//! (a join or a leave in the middle of the faults). During 300 steps clients
//! - write gauges (some with a TTL, some with an event time in the past, some reusing the event time of an
//!   earlier write of the same node, so equal markers carry different values; a few too far in the future,
//!   refused for clock skew), increments, flags (with fresh, stale or empty contexts, some with a TTL) and
//!   erasures, with W = 1, 2 or 3, to a live replica they can reach, or to any reachable node when no replica
//!   is (sloppy quorum);
//! - read with R = 2 or 3 (merge and read repair), checking that the answer holds every acknowledged write
//!   that any answering replica had acknowledged holding;
//!
//! while nodes crash (losing what was not flushed) and restart, some in the middle of a write (after it is
//! durable locally, before its replication starts: the client gets no answer), sweepers expire values, and
//! partitions come and go.
//!
//! A write is *acknowledged* when the client got its answer (W − 1 replica acks within the RPC timeout),
//! *indeterminate* when it did not (it may or may not survive). At every acknowledgement with W > 1 the
//! oracle checks that at least W nodes hold the write.
//!
//! After the faults end the network heals, every node restarts, and the cluster quiesces; then, and again
//! after a further quiet period, for every key: (a) all its replicas hold identical state; (b) every gauge
//! holds a write with the highest marker above the erasure watermark, at least as high as every
//! acknowledged one (an expired value may be a tombstone); (c) every acknowledged flag write above the
//! watermark is a sibling unless a later write's context covered it or it expired, and a covered one never
//! comes back; (d) every counter lies between the sum of its acknowledged and of all its increments whose
//! slot began above the watermark; (e) the watermark is at least every acknowledged erasure's; and all hint
//! queues are empty.
//!
//! `FEATURESTORE_SIM_SEEDS=N` runs N seeds (default 10,000); `FEATURESTORE_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet};

use super::{sim_config, Cluster, Coordinated, Faults};
use crate::crdt::flag::{CausalContext, FlagDot};
use crate::crdt::value::Value;
use crate::hlc::{Actor, Marker, NodeId, Timestamp};
use crate::knobs::{self, Bug};
use crate::profile::{Applied, CounterDelta, GaugeWrite, Profile, Write};

/// What one client operation did, as the oracle needs it.
#[derive(Debug, Clone)]
enum Op {
    Gauge {
        feature: String,
        marker: Marker,
        value: i64,
        expires_at_ms: Option<u64>,
    },
    Incr {
        feature: String,
        delta: i64,
        /// The increment's stamp.
        stamp: Marker,
        /// `(first, node)` of the slot it landed in.
        slot: Marker,
        /// The actor of that slot.
        actor: Actor,
    },
    Flag {
        feature: String,
        dot: FlagDot,
        context: CausalContext,
        marker: Marker,
        expires_at_ms: Option<u64>,
    },
    Erase {
        watermark: Marker,
    },
}

impl Op {
    /// Whether `state` holds (or has legitimately superseded) this operation.
    fn held_by(&self, state: Option<&Profile>) -> bool {
        let Some(p) = state else {
            return false;
        };
        let erased = |m: &Marker| p.erased_at.as_ref().is_some_and(|w| m <= w);
        match self {
            Op::Gauge {
                feature, marker, ..
            } => {
                erased(marker)
                    || p.gauges
                        .get(feature.as_str())
                        .is_some_and(|g| g.marker >= *marker)
            }
            Op::Incr {
                feature,
                stamp,
                slot,
                actor,
                ..
            } => {
                erased(slot)
                    || p.counters.get(feature.as_str()).is_some_and(|c| {
                        c.slots.get(actor).is_some_and(|s| {
                            s.first > slot.ts || (s.first == slot.ts && s.last >= stamp.ts)
                        })
                    })
            }
            Op::Flag { feature, dot, .. } => p
                .flags
                .get(feature.as_str())
                .is_some_and(|f| f.clock.covers(dot)),
            Op::Erase { watermark } => p.erased_at.as_ref().is_some_and(|w| w >= watermark),
        }
    }
}

/// One client operation and what the client was told.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    op: Op,
    /// The client got its answer.
    acked: bool,
    /// Nodes that held it when it was acknowledged (the coordinator and the acking replicas).
    holders: BTreeSet<NodeId>,
}

/// A write waiting for W − 1 replica acks.
struct PendingWrite {
    coordinator: usize,
    record: usize,
    sends: Vec<u64>,
    needed: usize,
    from: BTreeSet<NodeId>,
    deadline: u64,
}

/// A quorum read waiting for its answers.
struct PendingRead {
    coordinator: usize,
    key: String,
    req: u64,
    needed: usize,
    answers: Vec<(NodeId, Option<Profile>)>,
    deadline: u64,
    /// Acknowledged records at the time the read started.
    acked_before: usize,
}

/// What the schedules exercised, summed over a run (asserted non-trivial).
#[derive(Debug, Clone, Copy, Default)]
struct Exercised {
    seeds: u64,
    messages: u64,
    lost: u64,
    duplicated: u64,
    crashes: u64,
    lost_on_crash: u64,
    mid_write_crashes: u64,
    partitions: u64,
    sloppy_writes: u64,
    refused_writes: u64,
    acked_writes: u64,
    indeterminate_writes: u64,
    quorum_writes_acked: u64,
    quorum_reads: u64,
    read_repairs: u64,
    erasures: u64,
    ttl_writes: u64,
    event_time_writes: u64,
    equal_marker_writes: u64,
    sweeps: u64,
    hints_dropped: u64,
    handoff_keys: u64,
    /// Writes replicated as their delta alone, and as the full state.
    delta_sends: u64,
    full_sends: u64,
    joins: u64,
    leaves: u64,
}

struct Schedule {
    cluster: Cluster,
    records: Vec<Record>,
    /// Contexts clients read earlier (to write with later: stale contexts).
    contexts: Vec<((String, String), CausalContext)>,
    writes: Vec<PendingWrite>,
    reads: Vec<PendingRead>,
    /// Last event time used per node (reused to produce equal markers).
    last_event: BTreeMap<usize, u64>,
    faults: Faults,
    violations: Vec<String>,
    ex: Exercised,
}

const KEYS: usize = 6;

impl Schedule {
    fn new(seed: u64) -> Schedule {
        let mut rng = super::Rng(seed);
        let count = 3 + rng.below(3) as usize;
        let spread = if rng.chance(0.2) { 451 } else { 101 };
        let skews: Vec<i64> = (0..count)
            .map(|_| rng.below(spread) as i64 - spread as i64 / 2)
            .collect();
        let loss = [0.01, 0.05, 0.2][rng.below(3) as usize];
        let dup = [0.01, 0.05][rng.below(2) as usize];
        let mut config = sim_config();
        if rng.chance(0.2) {
            config.max_hint_bytes_per_target = 4; // two short keys: hints overflow and are dropped
        }
        if rng.chance(0.2) {
            config.ae_max_keys = 1;
            config.handoff_batch = 1;
        }
        let mut cluster = Cluster::new(count, config, &skews, rng.next());
        let faults = Faults {
            loss,
            dup,
            max_delay_ms: 60,
        };
        cluster.faults = faults;
        Schedule {
            cluster,
            records: Vec::new(),
            contexts: Vec::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            last_event: BTreeMap::new(),
            faults,
            violations: Vec::new(),
            ex: Exercised::default(),
        }
    }

    /// The node a ring-aware client would send `key` to: the first live replica, else any live node.
    /// The client stands on one side of a partition (chosen per operation) and reaches only that side,
    /// so writes land on whatever part of the preference list it can see, or on a non-replica
    /// (sloppy quorum) when it sees none.
    fn pick_coordinator(&mut self, key: &str) -> Option<usize> {
        let c = &mut self.cluster;
        let side = c.rng.chance(0.5);
        let reachable = |c: &Cluster, i: usize| {
            c.up(i) && c.partition.as_ref().is_none_or(|p| p.contains(&i) == side)
        };
        let live: Vec<usize> = (0..c.nodes.len()).filter(|&i| reachable(c, i)).collect();
        let any = *live.first()?;
        let replicas = c.nodes[any].repl.as_ref()?.replicas(key);
        for r in replicas {
            let i = c.index(&r);
            if reachable(c, i) {
                return Some(i);
            }
        }
        Some(live[c.rng.below(live.len() as u64) as usize])
    }

    fn client_op(&mut self, op_no: u64) {
        let key = format!("k{}", self.cluster.rng.below(KEYS as u64));
        let Some(c) = self.pick_coordinator(&key) else {
            return;
        };
        let roll = self.cluster.rng.below(20);
        if roll >= 18 {
            self.start_read(c, key);
            return;
        }
        let quorum = match self.cluster.rng.below(10) {
            0..=6 => 1,
            7 | 8 => 2,
            _ => 3,
        };
        let crash = self.cluster.rng.chance(0.01);
        let now = self.cluster.nodes[c].store.local_now();
        let ttl = self
            .cluster
            .rng
            .chance(0.15)
            .then(|| self.cluster.rng.below(400));
        match roll {
            0..=6 => {
                let feature = format!("g{}", self.cluster.rng.below(2));
                let value = op_no as i64;
                let timestamp_ms = match self.cluster.rng.below(10) {
                    0 | 1 => {
                        let reuse = self.cluster.rng.chance(0.4);
                        let t = match self.last_event.get(&c) {
                            Some(t) if reuse => {
                                self.ex.equal_marker_writes += 1;
                                *t
                            }
                            _ => now.saturating_sub(self.cluster.rng.below(300)),
                        };
                        self.last_event.insert(c, t);
                        self.ex.event_time_writes += 1;
                        Some(t)
                    }
                    2 if self.cluster.rng.chance(0.1) => Some(now + 1_500), // beyond the skew limit
                    _ => None,
                };
                let gauges = [GaugeWrite {
                    name: feature.clone(),
                    value: Value::I64(value),
                    ttl_ms: ttl,
                }];
                let write = Write::Put {
                    gauges: &gauges,
                    timestamp_ms,
                };
                let base = timestamp_ms.unwrap_or(now);
                let out = self.cluster.write(c, &key, write, quorum, crash);
                if ttl.is_some() {
                    self.ex.ttl_writes += 1;
                }
                self.record(c, &key, out, |applied, _| match applied {
                    Applied::Put { version, .. } => Some(Op::Gauge {
                        feature,
                        marker: version.clone(),
                        value,
                        expires_at_ms: ttl.map(|t| base + t),
                    }),
                    _ => None,
                });
            }
            7..=11 => {
                let delta = 1 + self.cluster.rng.below(5) as i64;
                let deltas = [CounterDelta {
                    name: "c".into(),
                    delta,
                }];
                let write = Write::Increment { deltas: &deltas };
                let out = self.cluster.write(c, &key, write, quorum, crash);
                self.record(c, &key, out, |applied, state| match applied {
                    Applied::Incremented { stamp, actor, .. } => {
                        let first = state?.counters.get("c")?.slots.get(actor)?.first;
                        Some(Op::Incr {
                            feature: "c".into(),
                            delta,
                            stamp: stamp.clone(),
                            slot: Marker {
                                ts: first,
                                node: stamp.node.clone(),
                            },
                            actor: actor.clone(),
                        })
                    }
                    _ => None,
                });
            }
            12..=16 => {
                let fk = (key.clone(), "f".to_owned());
                // A fresh read of this replica, or a context some client read earlier (stale), or none.
                let fresh = self
                    .cluster
                    .state(c, &key)
                    .and_then(|p| p.flags.get("f").map(|f| f.clock.clone()))
                    .unwrap_or_default();
                let stale: Vec<CausalContext> = self
                    .contexts
                    .iter()
                    .filter(|(k, _)| *k == fk)
                    .map(|(_, c)| c.clone())
                    .collect();
                let context = match self.cluster.rng.below(4) {
                    0 if !stale.is_empty() => {
                        stale[self.cluster.rng.below(stale.len() as u64) as usize].clone()
                    }
                    1 => CausalContext::default(),
                    _ => fresh.clone(),
                };
                self.contexts.push((fk, fresh));
                let value = self.cluster.rng.chance(0.5);
                let write = Write::SetFlag {
                    name: "f",
                    value,
                    context: &context,
                    ttl_ms: ttl,
                };
                let out = self.cluster.write(c, &key, write, quorum, crash);
                self.record(c, &key, out, |applied, state| match applied {
                    Applied::Flag { version, .. } => {
                        let sibling = state?
                            .flags
                            .get("f")?
                            .siblings
                            .iter()
                            .find(|s| s.marker == *version)?
                            .clone();
                        Some(Op::Flag {
                            feature: "f".into(),
                            dot: sibling.dot,
                            context: context.clone(),
                            marker: version.clone(),
                            expires_at_ms: sibling.expires_at_ms,
                        })
                    }
                    _ => None,
                });
            }
            _ => {
                let out = self.cluster.write(c, &key, Write::Erase, quorum, crash);
                self.ex.erasures += 1;
                self.record(c, &key, out, |applied, _| match applied {
                    Applied::Erased { watermark } => Some(Op::Erase {
                        watermark: watermark.clone(),
                    }),
                    _ => None,
                });
            }
        }
    }

    /// Records a write's outcome: applied writes become records (acknowledged now with W = 1, or once
    /// their replica acks arrive); a refused write is no record; a write whose coordinator crashed in the
    /// middle is indeterminate (the core answered, but the client never heard).
    fn record(
        &mut self,
        c: usize,
        key: &str,
        out: Option<crate::Result<Coordinated>>,
        op: impl FnOnce(&Applied, Option<&Profile>) -> Option<Op>,
    ) {
        let Some(Ok(coordinated)) = out else {
            return;
        };
        let answered = coordinated.answered;
        let state = self.cluster.state(c, key);
        let Some(op) = op(&coordinated.applied, state.as_ref()) else {
            self.violations.push(format!(
                "{key}: the applied write is not in the coordinator's state"
            ));
            return;
        };
        let id = self.records.len();
        self.records.push(Record {
            key: key.to_owned(),
            op,
            acked: false,
            holders: BTreeSet::new(),
        });
        if !answered {
            return; // indeterminate: the coordinator crashed before answering
        }
        if coordinated.acks_needed == 0 {
            self.acknowledge(id, c, &BTreeSet::new());
            return;
        }
        self.writes.push(PendingWrite {
            coordinator: c,
            record: id,
            sends: coordinated.replica_sends,
            needed: coordinated.acks_needed,
            from: BTreeSet::new(),
            deadline: self.cluster.now + self.cluster.config.rpc_timeout_ms,
        });
    }

    /// The client got its answer: check that the write is where W says it is.
    fn acknowledge(&mut self, id: usize, coordinator: usize, acked_by: &BTreeSet<NodeId>) {
        let mut holders = acked_by.clone();
        holders.insert(self.cluster.nodes[coordinator].id.clone());
        let record = &self.records[id];
        for h in &holders {
            let state = self.cluster.state(self.cluster.index(h), &record.key);
            if !record.op.held_by(state.as_ref()) {
                self.violations.push(format!(
                    "(w) {}: {:?} acknowledged, but {h} does not hold it",
                    record.key, record.op
                ));
            }
        }
        if !acked_by.is_empty() {
            self.ex.quorum_writes_acked += 1;
        }
        let record = &mut self.records[id];
        record.acked = true;
        record.holders = holders;
    }

    fn start_read(&mut self, c: usize, key: String) {
        let quorum = 2 + self.cluster.rng.below(2) as usize;
        let Some(req) = self.cluster.start_read(c, &key) else {
            return;
        };
        let me = self.cluster.nodes[c].id.clone();
        let local = self.cluster.replicas(&key).contains(&me);
        let answers = if local {
            vec![(me, self.cluster.state(c, &key))]
        } else {
            Vec::new()
        };
        self.ex.quorum_reads += 1;
        self.reads.push(PendingRead {
            coordinator: c,
            key,
            req,
            needed: quorum,
            answers,
            deadline: self.cluster.now + self.cluster.config.rpc_timeout_ms,
            acked_before: self.records.iter().filter(|r| r.acked).count(),
        });
    }

    /// Matches acks and read replies to what waits for them; times out the rest.
    fn resolve(&mut self) {
        for (c, from, seq) in std::mem::take(&mut self.cluster.acks) {
            let Some(i) = self
                .writes
                .iter()
                .position(|w| w.coordinator == c && w.sends.contains(&seq))
            else {
                continue;
            };
            self.writes[i].from.insert(from);
            if self.writes[i].from.len() >= self.writes[i].needed {
                let w = self.writes.swap_remove(i);
                self.acknowledge(w.record, w.coordinator, &w.from);
            }
        }
        let now = self.cluster.now;
        // Writes whose coordinator crashed or that ran out of time stay indeterminate.
        self.writes
            .retain(|w| w.deadline > now && self.cluster.up(w.coordinator));
        for (c, from, req, state) in std::mem::take(&mut self.cluster.read_replies) {
            if let Some(r) = self
                .reads
                .iter_mut()
                .find(|r| r.coordinator == c && r.req == req)
            {
                if !r.answers.iter().any(|(n, _)| *n == from) {
                    r.answers.push((from, state));
                }
            }
        }
        let mut done = Vec::new();
        self.reads.retain(|r| {
            if r.answers.len() >= r.needed {
                done.push((
                    r.coordinator,
                    r.key.clone(),
                    r.answers.clone(),
                    r.acked_before,
                ));
                false
            } else {
                r.deadline > now
            }
        });
        for (c, key, answers, acked_before) in done {
            if !self.cluster.up(c) {
                continue;
            }
            let merged = self.cluster.finish_read(c, &key, &answers);
            // A read never loses what an answering replica had acknowledged holding.
            for r in self.records[..acked_before.min(self.records.len())]
                .iter()
                .filter(|r| r.acked && r.key == key)
            {
                let answered_by_holder = answers.iter().any(|(n, _)| r.holders.contains(n));
                if answered_by_holder && !r.op.held_by(merged.as_ref()) {
                    self.violations.push(format!(
                        "(r) {key}: a quorum read missed {:?}, held by {:?}",
                        r.op, r.holders
                    ));
                }
            }
        }
    }

    fn run(&mut self) -> Result<(), String> {
        // Faulty phase, with at most one membership change in the middle of it.
        let fault_steps = 300;
        let change = self.cluster.rng.below(4);
        for op in 0..fault_steps {
            if op == 120 {
                match change {
                    0 => {
                        let skew = self.cluster.rng.below(101) as i64 - 50;
                        self.cluster.join_new_node(skew);
                        self.ex.joins += 1;
                    }
                    1 => {
                        let up: Vec<usize> = (0..self.cluster.nodes.len())
                            .filter(|&i| self.cluster.up(i))
                            .collect();
                        if up.len() >= 2 {
                            let i = up[self.cluster.rng.below(up.len() as u64) as usize];
                            self.cluster.leave(i);
                            self.ex.leaves += 1;
                        }
                    }
                    _ => {}
                }
            }
            if self.cluster.rng.chance(0.5) {
                self.client_op(op);
            }
            if self.cluster.rng.chance(0.01) {
                let i = self.cluster.rng.below(self.cluster.nodes.len() as u64) as usize;
                if self.cluster.up(i) {
                    self.cluster.crash(i);
                } else {
                    self.cluster.restart(i);
                }
            }
            if self.cluster.rng.chance(0.02) {
                let i = self.cluster.rng.below(self.cluster.nodes.len() as u64) as usize;
                self.cluster.sweep(i);
            }
            if self.cluster.rng.chance(0.01) {
                let c = &mut self.cluster;
                c.partition = match c.partition {
                    Some(_) => None,
                    None => {
                        let side: BTreeSet<usize> =
                            (0..c.nodes.len()).filter(|_| c.rng.chance(0.5)).collect();
                        c.log.push(format!("{}ms partition {side:?}", c.now));
                        c.coverage.partitions += 1;
                        Some(side)
                    }
                };
            }
            self.cluster.step();
            self.resolve();
        }
        // Heal and quiesce.
        self.cluster.partition = None;
        self.cluster.faults = Faults {
            max_delay_ms: 5,
            ..Faults::default()
        };
        for i in 0..self.cluster.nodes.len() {
            self.cluster.restart(i);
        }
        let mut converged = false;
        for _ in 0..6_000 {
            self.cluster.step();
            self.resolve();
            if self.cluster.now.is_multiple_of(1_000) && self.check().is_ok() {
                converged = true;
                break;
            }
        }
        if !converged {
            return self.check();
        }
        // Convergence must hold, not merely happen once: check again after a further quiet period.
        self.cluster.run(3_000);
        self.resolve();
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        if let Some(v) = self.violations.first() {
            return Err(v.clone());
        }
        let c = &self.cluster;
        let repl = c.nodes[0].repl.as_ref().ok_or("node down after heal")?;
        for n in &c.nodes {
            let table = n.repl.as_ref().map(|r| r.table());
            if table != Some(repl.table()) {
                return Err(format!("membership tables differ between n1 and {}", n.id));
            }
        }
        if repl.table().in_transition() {
            return Err(format!("join/leave did not complete: {:?}", repl.table()));
        }
        // The latest local clock reading: anything expiring by then may have been swept.
        let now = c
            .nodes
            .iter()
            .map(|n| n.store.local_now())
            .max()
            .unwrap_or(0);
        for k in 0..KEYS {
            let key = format!("k{k}");
            let replicas = repl.replicas(&key);
            let states: Vec<Profile> = replicas
                .iter()
                .map(|r| c.state(c.index(r), &key).unwrap_or_default())
                .collect();
            for (r, s) in replicas.iter().zip(&states) {
                if *s != states[0] {
                    return Err(format!(
                        "(a) {key}: replica {r} differs from {}",
                        replicas[0]
                    ));
                }
            }
            check_key(
                &key,
                &states[0],
                self.records.iter().filter(|r| r.key == key),
                now,
            )?;
        }
        for n in &c.nodes {
            if let Some(repl) = &n.repl {
                let hints = repl.stats().hints_queued;
                if hints > 0 {
                    let state = repl.table().get(&n.id).map(|m| m.state);
                    let targets: Vec<(NodeId, usize)> = repl
                        .hints()
                        .into_iter()
                        .map(|(t, k)| (t, k.len()))
                        .collect();
                    return Err(format!(
                        "{} ({state:?}): {hints} hints not drained: {targets:?}",
                        n.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn tally(&mut self) {
        let cov = self.cluster.coverage;
        let ex = &mut self.ex;
        ex.seeds += 1;
        ex.messages += cov.messages;
        ex.lost += cov.lost;
        ex.duplicated += cov.duplicated;
        ex.crashes += cov.crashes;
        ex.lost_on_crash += cov.lost_on_crash;
        ex.mid_write_crashes += cov.mid_write_crashes;
        ex.partitions += cov.partitions;
        ex.sloppy_writes += cov.sloppy_writes;
        ex.refused_writes += cov.refused_writes;
        ex.read_repairs += cov.read_repairs;
        ex.sweeps += cov.sweeps;
        ex.hints_dropped += cov.hints_dropped;
        ex.handoff_keys += cov.handoff_keys;
        ex.acked_writes += self.records.iter().filter(|r| r.acked).count() as u64;
        ex.indeterminate_writes += self.records.iter().filter(|r| !r.acked).count() as u64;
        for n in &self.cluster.nodes {
            if let Some(r) = &n.repl {
                ex.hints_dropped += r.stats().hints_dropped;
                ex.handoff_keys += r.stats().handoff_keys;
                ex.delta_sends += r.stats().delta_sends;
                ex.full_sends += r.stats().full_sends;
            }
        }
    }
}

/// The per-key checks (b) to (e) of one converged state against the records of that key.
fn check_key<'a>(
    key: &str,
    state: &Profile,
    records: impl Iterator<Item = &'a Record> + Clone,
    now: u64,
) -> Result<(), String> {
    let watermark = state.erased_at.clone();
    let above = |m: &Marker| watermark.as_ref().is_none_or(|w| m > w);
    let expired = |at: &Option<u64>| at.is_some_and(|at| at <= now);
    // (e) no acknowledged erasure is lost.
    for r in records.clone().filter(|r| r.acked) {
        if let Op::Erase { watermark: w } = &r.op {
            if watermark.as_ref().is_none_or(|have| have < w) {
                return Err(format!(
                    "(e) {key}: erasure up to {w} acknowledged, watermark is {watermark:?}"
                ));
            }
        }
    }
    // (b) gauges.
    let mut gauges: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.clone() {
        if let Op::Gauge { feature, .. } = &r.op {
            gauges.entry(feature.as_str()).or_default().push(r);
        }
    }
    for (feature, writes) in gauges {
        let marker_of = |r: &Record| match &r.op {
            Op::Gauge { marker, .. } => marker.clone(),
            _ => unreachable!("gauge records only"),
        };
        let acked_max = writes
            .iter()
            .filter(|r| r.acked)
            .map(|r| marker_of(r))
            .filter(|m| above(m))
            .max();
        let got = state.gauges.get(feature);
        match (got, &acked_max) {
            (None, None) => {}
            (None, Some(m)) => {
                return Err(format!(
                    "(b) {key}.{feature}: acknowledged write at {m} lost (no value)"
                ))
            }
            (Some(g), _) => {
                if acked_max.as_ref().is_some_and(|m| g.marker < *m) {
                    return Err(format!(
                        "(b) {key}.{feature}: converged to {} below acknowledged {acked_max:?}",
                        g.marker
                    ));
                }
                let from_a_write = writes.iter().any(|r| match &r.op {
                    Op::Gauge {
                        marker,
                        value,
                        expires_at_ms,
                        ..
                    } => {
                        *marker == g.marker
                            && match &g.value {
                                Some(v) => *v == Value::I64(*value),
                                None => expired(expires_at_ms),
                            }
                    }
                    _ => false,
                });
                if !from_a_write {
                    return Err(format!(
                        "(b) {key}.{feature}: converged to {g:?}, which no write produced"
                    ));
                }
            }
        }
    }
    // (c) flags.
    let flags: Vec<&Record> = records
        .clone()
        .filter(|r| matches!(r.op, Op::Flag { .. }))
        .collect();
    let present: BTreeSet<FlagDot> = state
        .flags
        .get("f")
        .map(|f| f.siblings.iter().map(|s| s.dot.clone()).collect())
        .unwrap_or_default();
    for r in &flags {
        let Op::Flag {
            dot,
            marker,
            expires_at_ms,
            ..
        } = &r.op
        else {
            continue;
        };
        let covered_by = |acked_only: bool| {
            flags.iter().any(|o| match &o.op {
                Op::Flag { context, .. } => (o.acked || !acked_only) && context.covers(dot),
                _ => false,
            })
        };
        // Covered by an acknowledged write: gone for good. Covered only by indeterminate ones: either.
        if covered_by(true) && present.contains(dot) {
            return Err(format!("(c) {key}: dominated flag write {dot:?} came back"));
        }
        let dominated = covered_by(false);
        if r.acked
            && !dominated
            && above(marker)
            && !expired(expires_at_ms)
            && !present.contains(dot)
        {
            return Err(format!("(c) {key}: concurrent flag write {dot:?} lost"));
        }
    }
    // (d) counters: between the acknowledged and all increments whose slot began above the watermark.
    let (mut low, mut high) = (0i64, 0i64);
    let mut any = false;
    for r in records {
        if let Op::Incr { delta, slot, .. } = &r.op {
            any = true;
            if above(slot) {
                high += delta;
                if r.acked {
                    low += delta;
                }
            }
        }
    }
    let got = state.counters.get("c").map_or(0, |c| c.value());
    if any && !(low..=high).contains(&got) {
        return Err(format!(
            "(d) {key}.c: converged to {got}, acknowledged {low}, at most {high}"
        ));
    }
    Ok(())
}

/// Runs one seed; returns what it exercised.
fn run_seed(seed: u64) -> Result<Exercised, String> {
    let mut s = Schedule::new(seed);
    let result = s.run();
    s.tally();
    result.map(|()| s.ex).map_err(|e| {
        let tail: Vec<&String> = s.cluster.log.iter().rev().take(10).collect();
        format!(
            "seed {seed}: {e}\n  nodes {}, loss {}, dup {}; last events {tail:?}\n  \
             replay: FEATURESTORE_SIM_SEED={seed} cargo test -p featurestore --lib sim::",
            s.cluster.nodes.len(),
            s.faults.loss,
            s.faults.dup
        )
    })
}

/// Runs `seeds` seeds; returns the failures and what the passing ones exercised.
fn run_seeds(seeds: std::ops::Range<u64>) -> (Vec<String>, Exercised) {
    let mut failures = Vec::new();
    let mut total = Exercised::default();
    for seed in seeds {
        match run_seed(seed) {
            Ok(ex) => total.add(&ex),
            Err(e) => failures.push(e),
        }
    }
    (failures, total)
}

impl Exercised {
    fn add(&mut self, o: &Exercised) {
        self.seeds += o.seeds;
        self.messages += o.messages;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.crashes += o.crashes;
        self.lost_on_crash += o.lost_on_crash;
        self.mid_write_crashes += o.mid_write_crashes;
        self.partitions += o.partitions;
        self.sloppy_writes += o.sloppy_writes;
        self.refused_writes += o.refused_writes;
        self.acked_writes += o.acked_writes;
        self.indeterminate_writes += o.indeterminate_writes;
        self.quorum_writes_acked += o.quorum_writes_acked;
        self.quorum_reads += o.quorum_reads;
        self.read_repairs += o.read_repairs;
        self.erasures += o.erasures;
        self.ttl_writes += o.ttl_writes;
        self.event_time_writes += o.event_time_writes;
        self.equal_marker_writes += o.equal_marker_writes;
        self.sweeps += o.sweeps;
        self.hints_dropped += o.hints_dropped;
        self.handoff_keys += o.handoff_keys;
        self.delta_sends += o.delta_sends;
        self.full_sends += o.full_sends;
        self.joins += o.joins;
        self.leaves += o.leaves;
    }

    /// Every kind of fault and hard case happened, often enough to mean something.
    fn assert_non_trivial(&self) {
        let per_seed = |n: u64| n * 100 >= self.seeds; // at least once per 100 seeds
        let checks = [
            ("lost messages", self.lost),
            ("duplicated messages", self.duplicated),
            ("crashes", self.crashes),
            ("crashes that lost unflushed state", self.lost_on_crash),
            ("crashes in the middle of a write", self.mid_write_crashes),
            ("partitions", self.partitions),
            ("sloppy writes", self.sloppy_writes),
            ("refused writes", self.refused_writes),
            ("indeterminate writes", self.indeterminate_writes),
            ("acknowledged W > 1 writes", self.quorum_writes_acked),
            ("quorum reads", self.quorum_reads),
            ("read repairs", self.read_repairs),
            ("erasures", self.erasures),
            ("TTL writes", self.ttl_writes),
            ("event-time writes", self.event_time_writes),
            ("equal-marker writes", self.equal_marker_writes),
            ("expiry sweeps", self.sweeps),
            ("hints dropped over budget", self.hints_dropped),
            ("handoff keys", self.handoff_keys),
            ("writes replicated as deltas", self.delta_sends),
            ("writes replicated as full states", self.full_sends),
            ("joins", self.joins),
            ("leaves", self.leaves),
        ];
        for (what, n) in checks {
            assert!(
                per_seed(n),
                "only {n} {what} in {} seeds: {self:?}",
                self.seeds
            );
        }
    }
}

#[test]
fn replicas_converge_and_keep_every_acknowledged_write_under_faults() {
    if let Some(seed) = std::env::var("FEATURESTORE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        if let Err(e) = run_seed(seed) {
            panic!("{e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("FEATURESTORE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    assert!(seeds > 0, "FEATURESTORE_SIM_SEEDS=0 would run nothing");
    let (failures, total) = run_seeds(0..seeds);
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first:\n{}",
        failures.len(),
        failures[0]
    );
    eprintln!("simulation coverage over {seeds} seeds: {total:#?}");
    if seeds >= 200 {
        total.assert_non_trivial();
    }
}

/// Each bug knob makes some seed fail, with the check that looks for that defect.
fn seeds_fail_with(bug: Bug, seeds: std::ops::Range<u64>, expected: &[&str]) {
    let (failures, _) = knobs::with(bug, || run_seeds(seeds.clone()));
    assert!(
        !failures.is_empty(),
        "{bug:?}: every one of seeds {seeds:?} passed; the suite cannot see this defect"
    );
    let matching = failures
        .iter()
        .filter(|f| expected.iter().any(|e| f.contains(e)))
        .count();
    assert!(
        matching > 0,
        "{bug:?}: seeds failed, but not with {expected:?}: {}",
        failures[0]
    );
}

#[test]
fn removing_anti_entropy_makes_the_simulation_fail() {
    seeds_fail_with(
        Bug::NoAntiEntropy,
        0..300,
        &["(a)", "(b)", "(c)", "(d)", "(e)"],
    );
}

#[test]
fn acking_without_merging_makes_the_simulation_fail() {
    seeds_fail_with(
        Bug::AckWithoutMerge,
        0..100,
        &["(w)", "(a)", "(b)", "(c)", "(d)", "(r)"],
    );
}

/// A replica counted toward W must hold what superseded the write, not just what the write changed.
/// About one seed in a thousand hits it (an event-time gauge write older than the register held, with
/// W > 1, to a replica that lacks the newer register); seed 123 is one.
#[test]
fn replicating_the_bare_delta_of_a_superseded_write_makes_the_simulation_fail() {
    seeds_fail_with(Bug::BareDelta, 0..1000, &["(w)"]);
}

#[test]
fn merging_counters_with_min_makes_the_simulation_fail() {
    seeds_fail_with(Bug::CounterMinMerge, 0..100, &["(d)", "(w)", "(r)"]);
}

/// The checker itself: fed a converged run with one defect planted, it fails with the matching check.
mod checker {
    use super::*;

    /// A seed that converges, with its records.
    fn converged() -> Schedule {
        for seed in 0..50 {
            let mut s = Schedule::new(seed);
            let ok = s.run().is_ok();
            let rich = s.records.iter().filter(|r| r.acked).count() > 20;
            if ok && rich {
                return s;
            }
        }
        panic!("no rich converged seed in 0..50");
    }

    fn replica_of(s: &Schedule, key: &str) -> usize {
        let r = s.cluster.replicas(key)[0].clone();
        s.cluster.index(&r)
    }

    fn a_key_with(s: &Schedule, f: impl Fn(&Profile) -> bool) -> String {
        (0..KEYS)
            .map(|k| format!("k{k}"))
            .find(|k| s.cluster.state(replica_of(s, k), k).is_some_and(|p| f(&p)))
            .expect("some key has it")
    }

    fn fails_with(s: &Schedule, tag: &str) {
        let err = s.check().expect_err("the planted defect must be caught");
        assert!(
            err.starts_with(tag) || err.contains(tag),
            "expected {tag}, got {err}"
        );
    }

    #[test]
    fn a_diverged_replica_is_caught() {
        let s = converged();
        let key = a_key_with(&s, |p| !p.is_empty());
        let i = replica_of(&s, &key);
        s.cluster.nodes[i].store.data.borrow_mut().remove(&key);
        fails_with(&s, "(a)");
    }

    #[test]
    fn a_lost_acknowledged_gauge_is_caught() {
        let mut s = converged();
        let key = a_key_with(&s, |p| !p.gauges.is_empty());
        s.records.push(Record {
            key,
            op: Op::Gauge {
                feature: "g0".into(),
                marker: Marker {
                    ts: Timestamp::from_millis(u64::MAX / 2),
                    node: NodeId::new("n1").expect("valid"),
                },
                value: 7,
                expires_at_ms: None,
            },
            acked: true,
            holders: BTreeSet::new(),
        });
        fails_with(&s, "(b)");
    }

    #[test]
    fn a_counter_outside_its_acknowledged_range_is_caught() {
        let mut s = converged();
        let key = a_key_with(&s, |p| p.counters.contains_key("c"));
        let slot = Marker {
            ts: Timestamp::from_millis(u64::MAX / 2),
            node: NodeId::new("n1").expect("valid"),
        };
        s.records.push(Record {
            key,
            op: Op::Incr {
                feature: "c".into(),
                delta: 1_000,
                stamp: slot.clone(),
                actor: Actor::legacy(slot.node.clone()),
                slot,
            },
            acked: true,
            holders: BTreeSet::new(),
        });
        fails_with(&s, "(d)");
    }

    #[test]
    fn a_lost_concurrent_flag_write_is_caught() {
        let mut s = converged();
        let key = a_key_with(&s, |_| true);
        s.records.push(Record {
            key,
            op: Op::Flag {
                feature: "f".into(),
                dot: FlagDot {
                    actor: "n9".parse().expect("valid"),
                    counter: 1,
                },
                context: CausalContext::default(),
                marker: Marker {
                    ts: Timestamp::from_millis(u64::MAX / 2),
                    node: NodeId::new("n9").expect("valid"),
                },
                expires_at_ms: None,
            },
            acked: true,
            holders: BTreeSet::new(),
        });
        fails_with(&s, "(c)");
    }

    #[test]
    fn a_resurrected_dominated_flag_write_is_caught() {
        let mut s = converged();
        let key = a_key_with(&s, |p| {
            p.flags.get("f").is_some_and(|f| !f.siblings.is_empty())
        });
        let state = s
            .cluster
            .state(replica_of(&s, &key), &key)
            .expect("present");
        let sibling = state.flags["f"].siblings[0].clone();
        // An acknowledged write whose context covered this very sibling: it must be gone, and it is not.
        s.records.push(Record {
            key,
            op: Op::Flag {
                feature: "f".into(),
                dot: sibling.dot.clone(),
                context: state.flags["f"].clock.clone(),
                marker: sibling.marker.clone(),
                expires_at_ms: None,
            },
            acked: true,
            holders: BTreeSet::new(),
        });
        let err = s.check().expect_err("the planted defect must be caught");
        assert!(err.contains("came back"), "{err}");
    }

    #[test]
    fn a_lost_acknowledged_erasure_is_caught() {
        let mut s = converged();
        s.records.push(Record {
            key: "k0".into(),
            op: Op::Erase {
                watermark: Marker {
                    ts: Timestamp::from_millis(u64::MAX / 2),
                    node: NodeId::new("n1").expect("valid"),
                },
            },
            acked: true,
            holders: BTreeSet::new(),
        });
        fails_with(&s, "(e)");
    }

    #[test]
    fn a_violation_seen_during_the_run_is_reported() {
        let mut s = converged();
        s.violations.push("(w) k0: planted".into());
        fails_with(&s, "(w)");
    }
}
