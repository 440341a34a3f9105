//! The one in-process cluster harness (tests only): several nodes, each made of the real core pieces (a
//! [`Replication`] state machine, a [`Clock`] with its own skew, profiles written with
//! [`profile::apply`](crate::profile::apply) and merged with [`Profile::merge`]), over a simulated network
//! that can lose, duplicate, delay and reorder messages and partition the cluster. Nodes crash and restart;
//! a crash loses everything that was not flushed to the node's simulated disk, and a node can lose its
//! whole disk ([`Cluster::wipe`]). Every start is decided by the core's
//! [`incarnation_after`](crate::hlc::incarnation_after), as on the real node: the simulation never shuts
//! down cleanly, so a node comes back from every crash as a new actor (incarnations are numbered 1, 2, ...
//! per node here, so that scripts stay readable; the real node draws them at random).
//!
//! The disk follows the `sync` policy of the real node: a client write is flushed before it is acknowledged, a replica flushes before it
//! acknowledges replicated state (`SendWhen::Durable`), hints are flushed before a write whose plan says
//! `ack_after_durable` is answered, and anything else (hint and table records written by ticks, merged
//! state not yet acknowledged, expiry sweeps) waits for the next flush, so a crash can lose it.
//!
//! Three users drive it, so there is one model of a node and one of the network:
//! - [`random`]: seeded random schedules with an oracle of acknowledged writes (`cargo test`, 1,000 seeds);
//! - [`script`]: scenario scripts in `src/sim/scripts/*.txt`, with their expected output (goldenscripts);
//! - the replication protocol's own scenario tests (in the scripts).
//!
//! The harness executes [`Effect`]s exactly as the node runtime does: persistence effects are written to
//! the node's disk in order, messages leave (or are lost), and each node is ticked when its
//! [`Replication::next_deadline`] says so (so the simulation also checks that the deadline never sleeps
//! through due work).

mod random;
mod script;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::detector::DetectorConfig;
use crate::cluster::membership::{MemberState, MembershipTable};
use crate::error::Result;
use crate::hlc::{incarnation_after, Actor, Clock, NodeId, StoredIncarnation};
use crate::ingest::{apply_event, Definitions, Event, Ingested};
use crate::limits::Limits;
use crate::profile::{apply_in_place, Applied, Profile, Write};
use crate::replication::{
    merge_answers, Effect, HintChange, LocalStore, QuorumRead, Replication, ReplicationConfig,
    SendWhen, StoreError,
};
use crate::wire::codec::state_hash;
use crate::wire::peer::PeerMessage;

/// The address every simulated member announces (the transport is simulated; it is never dialed).
const SIM_ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    1,
));

/// SplitMix64: small, seedable, good enough for scheduling.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A node's disk plus its clock: what survives a crash (the clock is recovered from the data).
pub(crate) struct SimStore {
    /// What the node holds now (memory and the disk's page cache).
    pub(crate) data: RefCell<BTreeMap<String, Profile>>,
    /// What survives a crash: `data` as of the last flush.
    durable: RefCell<BTreeMap<String, Profile>>,
    pub(crate) clock: RefCell<Clock>,
    now: Cell<u64>,
    pub(crate) skew: i64,
}

impl SimStore {
    fn new(actor: Actor, now: u64, skew: i64) -> SimStore {
        SimStore {
            data: RefCell::default(),
            durable: RefCell::default(),
            clock: RefCell::new(Clock::for_actor(actor, 1_000)),
            now: Cell::new(now),
            skew,
        }
    }

    /// This node's reading of the (skewed) wall clock.
    pub(crate) fn local_now(&self) -> u64 {
        self.now.get().saturating_add_signed(self.skew)
    }
}

/// Slices of a simulated node's keys for the rolling scan.
const SIM_SLICES: usize = 4;

impl LocalStore for SimStore {
    fn state(&self, key: &str) -> Option<Profile> {
        self.data.borrow().get(key).cloned()
    }

    fn merge_remote(&self, key: &str, state: &Profile) -> Result<(), StoreError> {
        if let Some(ts) = state.max_timestamp() {
            self.clock.borrow_mut().observe(ts, self.local_now())?;
        }
        self.data
            .borrow_mut()
            .entry(key.to_owned())
            .or_default()
            .merge(state);
        Ok(())
    }

    fn for_each_key(&self, f: &mut dyn FnMut(&str, u64)) {
        for (k, p) in self.data.borrow().iter() {
            f(k, state_hash(p));
        }
    }

    /// Several slices, so the simulation runs the rolling scan as the node does.
    fn slices(&self) -> usize {
        SIM_SLICES
    }

    fn for_each_key_in(&self, slice: usize, f: &mut dyn FnMut(&str, u64)) {
        for (k, p) in self.data.borrow().iter() {
            if crate::cluster::ring::ring_hash(k.as_bytes()) % SIM_SLICES as u64 == slice as u64 {
                f(k, state_hash(p));
            }
        }
    }

    fn remove_if_unchanged(&self, key: &str, expected: u64) -> Result<bool, StoreError> {
        let mut data = self.data.borrow_mut();
        if data.get(key).map(state_hash) == Some(expected) {
            data.remove(key);
            return Ok(true);
        }
        Ok(false)
    }
}

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) id: NodeId,
    pub(crate) store: SimStore,
    /// `None` while crashed.
    pub(crate) repl: Option<Replication>,
    persisted_table: MembershipTable,
    persisted_hints: BTreeMap<NodeId, BTreeSet<String>>,
    /// The incarnation record on the node's disk (gone with a wiped disk).
    persisted_incarnation: Option<StoredIncarnation>,
    /// Incarnations this node has started (the sim's stand-in for a random draw: the next is one more).
    incarnations: u64,
    /// Persistence effects written but not flushed yet.
    unflushed: Vec<Effect>,
}

impl SimNode {
    /// A node starting on an empty disk: its first incarnation (1), recorded as running.
    fn fresh(id: &NodeId, repl: Replication, table: MembershipTable, now: u64, skew: i64) -> Self {
        let incarnation = incarnation_after(None, 1);
        SimNode {
            id: id.clone(),
            store: SimStore::new(Actor::new(id.clone(), incarnation), now, skew),
            repl: Some(repl),
            persisted_table: table,
            persisted_hints: BTreeMap::new(),
            persisted_incarnation: Some(StoredIncarnation {
                incarnation,
                clean: false,
            }),
            incarnations: 1,
            unflushed: Vec::new(),
        }
    }
}

struct InFlight {
    at: u64,
    from: usize,
    to: usize,
    msg: PeerMessage,
}

/// The network's misbehaviour.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Probability a message is lost.
    pub(crate) loss: f64,
    /// Probability a message is delivered twice.
    pub(crate) dup: f64,
    /// Largest delivery delay in ms (at least 1).
    pub(crate) max_delay_ms: u64,
}

/// What a run exercised (the random schedules assert it is not trivial).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Coverage {
    pub(crate) messages: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) crashes: u64,
    pub(crate) partitions: u64,
    pub(crate) sloppy_writes: u64,
    pub(crate) refused_writes: u64,
    pub(crate) ticks: u64,
    pub(crate) flushes: u64,
    pub(crate) lost_on_crash: u64,
    pub(crate) mid_write_crashes: u64,
    pub(crate) sweeps: u64,
    pub(crate) read_repairs: u64,
    /// Replication counters of node incarnations that crashed (their state machine's stats are gone).
    pub(crate) hints_dropped: u64,
    pub(crate) handoff_keys: u64,
}

/// Simulation time advances in steps of this many ms.
pub(crate) const STEP_MS: u64 = 10;

/// The cluster under test.
pub(crate) struct Cluster {
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) nodes: Vec<SimNode>,
    net: Vec<InFlight>,
    /// The side of a two-way partition (nodes inside cannot talk to nodes outside), if any.
    pub(crate) partition: Option<BTreeSet<usize>>,
    pub(crate) faults: Faults,
    pub(crate) config: ReplicationConfig,
    pub(crate) limits: Limits,
    pub(crate) log: Vec<String>,
    pub(crate) coverage: Coverage,
    /// Acknowledgements observed by coordinators: `(coordinator, from, seq)` (for W > 1 waits).
    pub(crate) acks: Vec<(usize, NodeId, u64)>,
    /// Read replies observed by coordinators: `(coordinator, from, req, state)`.
    pub(crate) read_replies: Vec<(usize, NodeId, u64, Option<Profile>)>,
    next_req: u64,
}

/// A client write as the coordinator handled it.
pub(crate) struct Coordinated {
    /// What the core answered.
    pub(crate) applied: Applied,
    /// The replica sends whose acks count toward W.
    pub(crate) replica_sends: Vec<u64>,
    /// Replica acks needed before the client is answered (W − 1).
    pub(crate) acks_needed: usize,
    /// False if the coordinator crashed before answering (the write is durable there, its outcome unknown
    /// to the client).
    pub(crate) answered: bool,
}

/// The replication settings of simulated clusters: short timers, so schedules are short.
pub(crate) fn sim_config() -> ReplicationConfig {
    ReplicationConfig {
        replication_factor: 3,
        vnodes: 16,
        rpc_timeout_ms: 300,
        hint_replay_ms: 200,
        gossip_ms: 100,
        anti_entropy_ms: 400,
        ae_buckets: 8,
        detector: DetectorConfig {
            expected_interval_ms: 100,
            startup_grace_ms: 1_000,
            ..Default::default()
        },
        ..ReplicationConfig::default()
    }
}

impl Cluster {
    /// `count` active nodes `n1..` with the given clock skews (ms), on a perfect network.
    pub(crate) fn new(
        count: usize,
        config: ReplicationConfig,
        skews: &[i64],
        seed: u64,
    ) -> Cluster {
        let ids: Vec<NodeId> = (1..=count)
            .map(|i| NodeId::new(format!("n{i}")).expect("valid"))
            .collect();
        let mut table = MembershipTable::default();
        for id in &ids {
            table.set(id, SIM_ADDR, MemberState::Active);
        }
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let repl = Replication::new(
                    id.clone(),
                    config.clone(),
                    table.clone(),
                    BTreeMap::new(),
                    0,
                );
                SimNode::fresh(
                    id,
                    repl,
                    table.clone(),
                    0,
                    skews.get(i).copied().unwrap_or(0),
                )
            })
            .collect();
        Cluster {
            rng: Rng(seed),
            now: 0,
            nodes,
            net: Vec::new(),
            partition: None,
            faults: Faults {
                max_delay_ms: 5,
                ..Faults::default()
            },
            config,
            limits: Limits::default(),
            log: Vec::new(),
            coverage: Coverage::default(),
            acks: Vec::new(),
            read_replies: Vec::new(),
            next_req: 1,
        }
    }

    pub(crate) fn up(&self, i: usize) -> bool {
        self.nodes[i].repl.is_some()
    }

    pub(crate) fn connected(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            None => true,
            Some(side) => side.contains(&a) == side.contains(&b),
        }
    }

    /// The index of node `id`.
    pub(crate) fn index(&self, id: &NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == *id).unwrap_or(0)
    }

    /// The replicas of `key` as the first live node sees them.
    pub(crate) fn replicas(&self, key: &str) -> Vec<NodeId> {
        self.nodes
            .iter()
            .find_map(|n| n.repl.as_ref())
            .map(|r| r.replicas(key))
            .unwrap_or_default()
    }

    /// Executes `from`'s effects as the node runtime does: persistence is written (and reaches the disk at
    /// the next flush); messages go onto the network (where they may be lost, duplicated or delayed), those
    /// marked `SendWhen::Durable` only after a flush; acknowledgements and read replies are collected.
    pub(crate) fn execute(&mut self, from: usize, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send { to, msg, when } => {
                    if when == SendWhen::Durable {
                        self.flush(from);
                    }
                    let to = self.index(&to);
                    self.coverage.messages += 1;
                    if self.rng.chance(self.faults.loss) {
                        self.coverage.lost += 1;
                        continue;
                    }
                    let copies = if self.rng.chance(self.faults.dup) {
                        self.coverage.duplicated += 1;
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let delay = 1 + self.rng.below(self.faults.max_delay_ms.max(1));
                        self.net.push(InFlight {
                            at: self.now + delay,
                            from,
                            to,
                            msg: msg.clone(),
                        });
                    }
                }
                persist @ (Effect::PersistHint(_) | Effect::PersistTable(_)) => {
                    self.nodes[from].unflushed.push(persist);
                }
                Effect::Acked {
                    from: replica, seq, ..
                } => self.acks.push((from, replica, seq)),
                Effect::ReadReply {
                    from: replica,
                    req,
                    state,
                } => self.read_replies.push((from, replica, req, state)),
                // Event forwarding is not simulated yet: the schedules write through `write`.
                Effect::Ingest { .. } | Effect::IngestReply { .. } | Effect::Catalog { .. } => {}
            }
        }
    }

    /// Flushes node `i`'s disk: its data and the persistence written so far survive a crash from now on.
    pub(crate) fn flush(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        self.coverage.flushes += 1;
        *node.store.durable.borrow_mut() = node.store.data.borrow().clone();
        for e in std::mem::take(&mut node.unflushed) {
            match e {
                Effect::PersistHint(HintChange::Added(t, k)) => {
                    node.persisted_hints.entry(t).or_default().insert(k);
                }
                Effect::PersistHint(HintChange::Removed(t, k)) => {
                    if let Some(keys) = node.persisted_hints.get_mut(&t) {
                        keys.remove(&k);
                    }
                }
                Effect::PersistTable(table) => node.persisted_table = table,
                _ => {}
            }
        }
    }

    /// Runs an expiry sweep on node `i`, as the node's sweeper does (written, flushed later).
    pub(crate) fn sweep(&mut self, i: usize) {
        let node = &self.nodes[i];
        if node.repl.is_none() {
            return;
        }
        let now = node.store.local_now();
        for p in node.store.data.borrow_mut().values_mut() {
            if p.has_expired(now) {
                p.expire(now);
                self.coverage.sweeps += 1;
            }
        }
    }

    /// A client write of `key` with `quorum` (W) coordinated by node `c`, decided by the same core
    /// function the node's engine calls and replicated by the plan the core returns. With
    /// `crash_before_replicating` the coordinator crashes right after the write is durable locally and
    /// before it executes the plan (so the client gets no answer). `None` if `c` is down.
    pub(crate) fn write(
        &mut self,
        c: usize,
        key: &str,
        write: Write<'_>,
        quorum: usize,
        crash_before_replicating: bool,
    ) -> Option<Result<Coordinated>> {
        let limits = self.limits.clone();
        let node = &mut self.nodes[c];
        let repl = node.repl.as_mut()?;
        let ticket = match repl.begin_local_write(key, quorum) {
            Ok(t) => t,
            Err(e) => {
                self.coverage.refused_writes += 1;
                return Some(Err(e));
            }
        };
        let local_now = node.store.local_now();
        // Applied in place, as the node's engine does (a refused write changes nothing, so the stored
        // profile is put back as it was).
        let held = node.store.data.borrow_mut().remove(key);
        let existed = held.is_some();
        let mut profile = held.unwrap_or_default();
        let done = apply_in_place(
            &mut profile,
            write,
            &mut node.store.clock.borrow_mut(),
            local_now,
            &limits,
        );
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                if existed {
                    node.store.data.borrow_mut().insert(key.to_owned(), profile);
                }
                repl.abort_local_write(ticket);
                self.coverage.refused_writes += 1;
                return Some(Err(e));
            }
        };
        // Replicated as the node does: the delta of the write, where the protocol allows it.
        let (applied, delta) = (done.applied, done.delta);
        node.store.data.borrow_mut().insert(key.to_owned(), profile);
        if !repl.is_replica(key) {
            self.coverage.sloppy_writes += 1;
        }
        let plan = repl.on_local_write(ticket, key, Some(&delta), &node.store, local_now);
        // The engine makes the write durable before replication starts.
        self.flush(c);
        if crash_before_replicating {
            self.coverage.mid_write_crashes += 1;
            self.crash(c);
            return Some(Ok(Coordinated {
                applied,
                replica_sends: Vec::new(),
                acks_needed: 0,
                answered: false,
            }));
        }
        self.execute(c, plan.effects);
        if plan.ack_after_durable {
            self.flush(c);
        }
        Some(Ok(Coordinated {
            applied,
            replica_sends: plan.replica_sends,
            acks_needed: plan.replica_acks_needed,
            answered: true,
        }))
    }

    /// Ingests `event` at node `c` acting as its owner, with the same core calls as the node's ingest path:
    /// admitted by the write ticket, decided by `ingest::apply_event`, flushed, replicated by the plan.
    /// `None` if `c` is down.
    pub(crate) fn ingest(
        &mut self,
        c: usize,
        event: &Event,
        definitions: &Definitions,
    ) -> Option<Result<Ingested>> {
        let limits = self.limits.clone();
        let key = event.key().to_owned();
        let node = &mut self.nodes[c];
        let repl = node.repl.as_mut()?;
        let ticket = match repl.begin_local_write(&key, 1) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let local_now = node.store.local_now();
        let before = node.store.state(&key).unwrap_or_default();
        let mut profile = before.clone();
        let result = apply_event(
            &mut profile,
            event,
            definitions,
            &mut node.store.clock.borrow_mut(),
            local_now,
            &limits,
        );
        match &result {
            Ok(ingested) if !ingested.duplicate => {
                let delta = profile.delta_from(&before);
                node.store.data.borrow_mut().insert(key.clone(), profile);
                let plan = repl.on_local_write(ticket, &key, Some(&delta), &node.store, local_now);
                self.flush(c);
                self.execute(c, plan.effects);
                if plan.ack_after_durable {
                    self.flush(c);
                }
            }
            _ => repl.abort_local_write(ticket),
        }
        Some(result)
    }

    /// Starts a quorum read of `key` at node `c`: asks every other replica for its state. Returns the
    /// request id its replies carry.
    pub(crate) fn start_read(&mut self, c: usize, key: &str) -> Option<u64> {
        let repl = self.nodes[c].repl.as_ref()?;
        let me = self.nodes[c].id.clone();
        let req = self.next_req;
        self.next_req += 1;
        let effects = repl
            .replicas(key)
            .into_iter()
            .filter(|r| *r != me)
            .map(|to| {
                Effect::send(
                    to,
                    PeerMessage::ReadState {
                        req,
                        key: key.to_owned(),
                    },
                )
            })
            .collect();
        self.execute(c, effects);
        Some(req)
    }

    /// Finishes a quorum read at `c` with `answers` (the local state included if `c` is a replica): merges
    /// them and repairs the replicas that answered with less, as the node runtime does.
    pub(crate) fn finish_read(
        &mut self,
        c: usize,
        key: &str,
        answers: &[(NodeId, Option<Profile>)],
    ) -> Option<Profile> {
        let replicas = self.nodes[c].repl.as_ref()?.replicas(key);
        let QuorumRead { merged, stale } = merge_answers(answers, &replicas);
        let m = merged.clone()?;
        for node in stale {
            self.coverage.read_repairs += 1;
            if node == self.nodes[c].id {
                let _ = self.nodes[c].store.merge_remote(key, &m);
                continue;
            }
            let now = self.nodes[c].store.local_now();
            let Some(repl) = self.nodes[c].repl.as_mut() else {
                break;
            };
            let effects = repl.repair(&node, key, m.clone(), now);
            self.execute(c, effects);
        }
        merged
    }

    /// Crashes node `i`: everything but its disk is gone.
    pub(crate) fn crash(&mut self, i: usize) {
        if let Some(repl) = self.nodes[i].repl.take() {
            self.coverage.hints_dropped += repl.stats().hints_dropped;
            self.coverage.handoff_keys += repl.stats().handoff_keys;
            let node = &mut self.nodes[i];
            if *node.store.data.borrow() != *node.store.durable.borrow()
                || !node.unflushed.is_empty()
            {
                self.coverage.lost_on_crash += 1;
            }
            *node.store.data.borrow_mut() = node.store.durable.borrow().clone();
            node.unflushed.clear();
            self.acks.retain(|(c, _, _)| *c != i);
            self.read_replies.retain(|(c, _, _, _)| *c != i);
            self.coverage.crashes += 1;
            self.log
                .push(format!("{}ms crash {}", self.now, self.nodes[i].id));
        }
    }

    /// Node `i` loses its disk: it crashes, and its data, hints and incarnation record are gone. (It keeps
    /// its membership table, as the real node relearns it from its seeds.) [`Cluster::restart`] then starts
    /// it empty, under its name.
    pub(crate) fn wipe(&mut self, i: usize) {
        self.crash(i);
        let node = &mut self.nodes[i];
        node.store.durable.borrow_mut().clear();
        node.store.data.borrow_mut().clear();
        node.persisted_hints.clear();
        node.persisted_incarnation = None;
        self.log.push(format!("{}ms wipe {}", self.now, node.id));
    }

    /// Restarts node `i` from its disk (a no-op if it is up).
    pub(crate) fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.repl.is_some() {
            return;
        }
        // A crash may have lost writes the peers hold: the core picks a new actor (see `incarnation_after`).
        let incarnation = incarnation_after(node.persisted_incarnation, node.incarnations + 1);
        if Some(incarnation) != node.persisted_incarnation.map(|p| p.incarnation) {
            node.incarnations += 1;
        }
        node.persisted_incarnation = Some(StoredIncarnation {
            incarnation,
            clean: false,
        });
        // The clock is volatile: recover it from the data, as the node runtime does.
        let mut clock = Clock::for_actor(Actor::new(node.id.clone(), incarnation), 1_000);
        for p in node.store.data.borrow().values() {
            if let Some(ts) = p.max_timestamp() {
                clock.recover(ts);
            }
        }
        *node.store.clock.borrow_mut() = clock;
        node.repl = Some(Replication::new(
            node.id.clone(),
            self.config.clone(),
            node.persisted_table.clone(),
            node.persisted_hints.clone(),
            self.now,
        ));
        self.log.push(format!("{}ms restart {}", self.now, node.id));
    }

    /// Adds a node that joins the running cluster (it knows the table of a live node, as if from a seed).
    pub(crate) fn join_new_node(&mut self, skew: i64) {
        let id = NodeId::new(format!("n{}", self.nodes.len() + 1)).expect("valid");
        let Some(seed) = self.nodes.iter().find_map(|n| n.repl.as_ref()) else {
            return;
        };
        let mut table = seed.table().clone();
        table.set(&id, SIM_ADDR, MemberState::Joining);
        let repl = Replication::new(
            id.clone(),
            self.config.clone(),
            table.clone(),
            BTreeMap::new(),
            self.now,
        );
        self.nodes
            .push(SimNode::fresh(&id, repl, table, self.now, skew));
        self.log.push(format!("{}ms join {id}", self.now));
    }

    /// Makes node `i` start leaving the cluster.
    pub(crate) fn leave(&mut self, i: usize) {
        let Some(repl) = self.nodes[i].repl.as_mut() else {
            return;
        };
        let effects = repl.set_own_state(SIM_ADDR, MemberState::Leaving);
        self.log
            .push(format!("{}ms leave {}", self.now, self.nodes[i].id));
        self.execute(i, effects);
    }

    /// One step of time: due messages are delivered (in random order among those due: reordering), then
    /// every node whose deadline has come is ticked.
    pub(crate) fn step(&mut self) {
        self.now += STEP_MS;
        for n in &self.nodes {
            n.store.now.set(self.now);
        }
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= self.now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        while !due.is_empty() {
            let m = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            if !self.up(m.to) || !self.connected(m.from, m.to) {
                continue;
            }
            let from_id = self.nodes[m.from].id.clone();
            let node = &mut self.nodes[m.to];
            let local_now = node.store.local_now();
            let Some(repl) = node.repl.as_mut() else {
                continue;
            };
            let effects = repl.handle(&from_id, m.msg, &node.store, local_now);
            self.execute(m.to, effects);
        }
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let local_now = node.store.local_now();
            let Some(repl) = node.repl.as_mut() else {
                continue;
            };
            if repl.next_deadline(local_now) > local_now {
                continue;
            }
            self.coverage.ticks += 1;
            let effects = repl.tick(&node.store, local_now);
            self.execute(i, effects);
        }
    }

    /// Runs for `ms` of simulated time.
    pub(crate) fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// Node `i`'s state of `key`.
    pub(crate) fn state(&self, i: usize, key: &str) -> Option<Profile> {
        self.nodes[i].store.state(key)
    }
}
