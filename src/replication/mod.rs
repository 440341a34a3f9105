//! The replication protocol of one node, sans-IO: who gets which key when, hinted handoff, anti-entropy,
//! gossip, and the handoff of ranges on join and leave.
//!
//! [`Replication`] holds no profile data. It reads and merges through a [`LocalStore`] that the caller
//! provides, and it returns [`Effect`]s instead of doing I/O: messages to send (some only once what was
//! merged is durable), hint and membership records to persist, acknowledgements observed. It also says
//! when it next needs time to pass ([`Replication::next_deadline`]). The node runtime and the
//! deterministic simulation (`sim` tests) drive the same code.
//!
//! Protocol (state-based: what travels is a profile state that merges as a join, so loss, duplication and
//! reordering of messages are harmless; it is the key's whole current profile except for the write
//! fast path below):
//! - **Write**: a client write is bracketed by a [`LocalWrite`] ticket ([`Replication::begin_local_write`],
//!   then [`Replication::on_local_write`] or [`Replication::abort_local_write`]). After it is applied, the
//!   coordinator sends `Replicate{key, state}` to every other replica in the preference list (the union of
//!   the current and the target ring while a join or leave is in progress) that the failure detector does
//!   not consider down. Each send is tracked; without a `ReplicateAck` within `rpc_timeout_ms` it becomes a
//!   hint. Replicas considered down get a hint at once. **Deltas**: when the caller hands over what the
//!   write changed ([`Profile::delta_from`]), a replica with neither a send in flight nor a hint for the
//!   key gets only that delta (tens of bytes instead of the whole profile); otherwise it gets the full
//!   state. The rule keeps every lost delta visible: a delta is tracked like any send, so losing it ends
//!   in a timeout, a hint and a full-state replay; and no second delta overwrites the tracking of one
//!   still in flight. If the coordinator is not itself a replica (sloppy
//!   quorum: every preferred replica was unreachable for the client), it hints all N preferred replicas, and
//!   the [`WritePlan`] says the write may be acknowledged only once those hints are durable.
//! - **Replica side**: a `Replicate` is merged through the store and answered with a `ReplicateAck` that
//!   the runtime sends only after what was merged is durable ([`SendWhen::Durable`]).
//! - **Hinted handoff** ([`hints`]), **anti-entropy** ([`anti_entropy`]), **join, leave and orphans**
//!   ([`handoff`]), and the **rolling scan** that feeds the last two one bounded slice of keys at a time
//!   ([`scan`]): see those modules.
//! - **Gossip**: every `gossip_ms` the membership table goes to every member; receiving any message counts
//!   as a heartbeat for the failure detector.
//!
//! Caveats: hints and the membership table are persisted by the runtime from [`Effect::PersistHint`] and
//! [`Effect::PersistTable`]; under a `periodic` durability policy a crash can lose the hints of the last
//! moments, and anti-entropy repairs what they would have. Failure detection is local and can be wrong; a
//! wrong "down" costs a hint, never data. Sends in flight are not persisted: when a coordinator crashes
//! with a delta unacknowledged, the replica lacks that write until anti-entropy repairs it (a full-state
//! send would have carried it along with the next write); the write itself is durable on the
//! coordinator, and a write acknowledged at W > 1 is durable on W replicas either way.

pub mod anti_entropy;
pub mod handoff;
pub mod hints;
pub mod scan;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use handoff::carries_identity_of;
pub use hints::HintChange;

use crate::cluster::detector::{DetectorConfig, FailureDetector, Liveness};
use crate::cluster::membership::{MemberState, MembershipTable};
use crate::cluster::placement::Placement;
use crate::error::{Error, Result};
use crate::hlc::NodeId;
use crate::profile::Profile;
use crate::wire::peer::PeerMessage;
use handoff::Handoff;
use hints::HintQueue;

/// Replication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Replicas per key (N).
    pub replication_factor: usize,
    /// Virtual nodes per member on the ring.
    pub vnodes: u32,
    /// Time a `Replicate` may wait for its ack before it becomes a hint.
    pub rpc_timeout_ms: u64,
    /// How often hints are replayed.
    pub hint_replay_ms: u64,
    /// Most hinted keys replayed to one target per replay.
    pub hint_batch: usize,
    /// Most bytes of hinted keys kept per target; beyond it hints are dropped (and counted).
    pub max_hint_bytes_per_target: usize,
    /// How often the membership table is gossiped.
    pub gossip_ms: u64,
    /// How often an anti-entropy exchange starts (with the next peer in turn).
    pub anti_entropy_ms: u64,
    /// Buckets per anti-entropy digest.
    pub ae_buckets: u32,
    /// Most keys pushed or pulled per anti-entropy exchange.
    pub ae_max_keys: usize,
    /// Most keys pushed per tick during a join or leave handoff (the throttle).
    pub handoff_batch: usize,
    /// Failure detector settings.
    pub detector: DetectorConfig,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replication_factor: 3,
            vnodes: crate::cluster::ring::DEFAULT_VNODES,
            rpc_timeout_ms: 2_000,
            hint_replay_ms: 500,
            hint_batch: 512,
            max_hint_bytes_per_target: 64 * 1024 * 1024,
            gossip_ms: 200,
            anti_entropy_ms: 10_000,
            ae_buckets: 256,
            ae_max_keys: 4_096,
            handoff_batch: 256,
            detector: DetectorConfig::default(),
        }
    }
}

/// Why the store could not do what replication asked (the source is kept).
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Local data, as replication sees it.
pub trait LocalStore {
    /// The current state of `key`, if any.
    fn state(&self, key: &str) -> Option<Profile>;
    /// Merges a remote state into `key`; `Err` if it could not be stored (then it is not acknowledged).
    fn merge_remote(&self, key: &str, state: &Profile) -> Result<(), StoreError>;
    /// Calls `f` with every key and the digest of its state
    /// ([`state_hash`](crate::wire::codec::state_hash)).
    fn for_each_key(&self, f: &mut dyn FnMut(&str, u64));
    /// Into how many slices the keys are divided for the rolling scan (each key in exactly one, the
    /// same one while it exists). One by default.
    fn slices(&self) -> usize {
        1
    }
    /// [`LocalStore::for_each_key`] over the keys of `slice` only (`slice < slices()`).
    fn for_each_key_in(&self, slice: usize, f: &mut dyn FnMut(&str, u64)) {
        if slice == 0 {
            self.for_each_key(f);
        }
    }
    /// Removes `key` if its state still hashes to `expected` (it was handed over to its replicas and not
    /// written since). Returns whether it was removed.
    fn remove_if_unchanged(&self, key: &str, expected: u64) -> Result<bool, StoreError>;
}

/// When a message may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendWhen {
    /// At once.
    Now,
    /// Once everything this node merged or persisted so far is durable under its policy (acknowledgements
    /// of replicated state: an ack is a promise that the state survives a crash).
    Durable,
}

/// What the runtime must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `msg` to `to`.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: PeerMessage,
        /// When it may leave.
        when: SendWhen,
    },
    /// Persist a change to the hint set (one record per hint).
    PersistHint(HintChange),
    /// Persist the membership table (it changed).
    PersistTable(MembershipTable),
    /// `from` answered the read `req` (the runtime resolves R > 1 reads with it).
    ReadReply {
        /// The replica.
        from: NodeId,
        /// The request id.
        req: u64,
        /// Its state.
        state: Option<Profile>,
    },
    /// `from` forwarded events for users this node owns: the runtime applies them (the ingest path) and
    /// answers with `ForwardReply`.
    Ingest {
        /// The forwarding node.
        from: NodeId,
        /// Its request id.
        req: u64,
        /// The events, in arrival order.
        events: Vec<crate::wire::event::WireEvent>,
        /// The sender's deadline to begin applying them ([`PeerMessage::ForwardEvents`]).
        deadline_ms: u64,
        /// When the sender accepted them from their client.
        accepted_us: u64,
    },
    /// `from` sent its segment catalog or its digest: the runtime keeps a larger catalog and answers a
    /// digest per [`PeerMessage::CatalogDigest`].
    Catalog {
        /// The peer.
        from: NodeId,
        /// The message (`CatalogDigest` or `SegmentCatalog`).
        message: PeerMessage,
    },
    /// `from` answered forwarded events.
    IngestReply {
        /// The owner.
        from: NodeId,
        /// The request id.
        req: u64,
        /// One outcome per event.
        outcomes: Vec<crate::wire::event::EventOutcome>,
    },
    /// `from` acknowledged the send `seq` of `key` (the runtime resolves W > 1 waits with it).
    Acked {
        /// The replica.
        from: NodeId,
        /// The key.
        key: String,
        /// The acknowledged send.
        seq: u64,
    },
}

impl Effect {
    /// A message to send at once.
    pub fn send(to: NodeId, msg: PeerMessage) -> Effect {
        Effect::Send {
            to,
            msg,
            when: SendWhen::Now,
        }
    }

    /// Whether the runtime must write something to storage for this effect.
    pub fn is_persist(&self) -> bool {
        matches!(self, Effect::PersistHint(_) | Effect::PersistTable(_))
    }
}

/// Counters the runtime exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStats {
    /// Hints currently queued (all targets).
    pub hints_queued: u64,
    /// Hints dropped because a target's hint budget was full.
    pub hints_dropped: u64,
    /// Hints delivered (acknowledged).
    pub hints_delivered: u64,
    /// Sends that timed out.
    pub send_timeouts: u64,
    /// Keys repaired (pushed or pulled) by anti-entropy.
    pub ae_keys_repaired: u64,
    /// Anti-entropy exchanges started.
    pub ae_rounds: u64,
    /// Keys pushed by join/leave handoff.
    pub handoff_keys: u64,
    /// Keys handed to their replicas and removed here because this node does not replicate them.
    pub orphans_moved: u64,
    /// Writes sent to a replica as the delta of the write alone.
    pub delta_sends: u64,
    /// Writes sent to a replica as the key's full state (a send or hint was pending, or no delta given).
    pub full_sends: u64,
}

/// Proof that a client write was admitted by [`Replication::begin_local_write`]; it must be handed back
/// to [`Replication::on_local_write`] (applied) or [`Replication::abort_local_write`] (refused), so the
/// count of writes in progress can never drift.
#[derive(Debug)]
#[must_use = "a local write must end in on_local_write or abort_local_write"]
pub struct LocalWrite {
    quorum: usize,
}

/// What the runtime must do with an applied client write before and when it answers the client.
#[derive(Debug, Clone, PartialEq)]
pub struct WritePlan {
    /// Effects to execute, in order (persist hints, send the state to the replicas).
    pub effects: Vec<Effect>,
    /// The write may be acknowledged only after the persist effects above are durable (a replica was
    /// hinted, or this node coordinated a sloppy-quorum write and holds the only copy outside the
    /// preference list).
    pub ack_after_durable: bool,
    /// Acknowledgements of other replicas to wait for before answering (W − 1, at most the sends made).
    pub replica_acks_needed: usize,
    /// The sends whose acknowledgements count toward `replica_acks_needed`.
    pub replica_sends: Vec<u64>,
}

/// The outcome of a quorum read: the join of the answers, and the replicas of the key that answered with
/// less (they get the merged state: read repair).
#[derive(Debug, Clone, PartialEq)]
pub struct QuorumRead {
    /// The merge of every answer (`None` if no replica holds the key).
    pub merged: Option<Profile>,
    /// Replicas of the key whose answer differs from `merged`.
    pub stale: Vec<NodeId>,
}

/// Merges the answers of a quorum read and decides which replicas to repair. Answers from nodes that are
/// not replicas of the key count toward the merge but are never repaired.
pub fn merge_answers(answers: &[(NodeId, Option<Profile>)], replicas: &[NodeId]) -> QuorumRead {
    let mut merged: Option<Profile> = None;
    for state in answers.iter().filter_map(|(_, s)| s.as_ref()) {
        merged.get_or_insert_with(Profile::default).merge(state);
    }
    let stale = match &merged {
        None => Vec::new(),
        Some(m) => answers
            .iter()
            .filter(|(node, state)| state.as_ref() != Some(m) && replicas.contains(node))
            .map(|(node, _)| node.clone())
            .collect(),
    };
    QuorumRead { merged, stale }
}

/// One node's replication state machine.
#[derive(Debug, Clone)]
pub struct Replication {
    me: NodeId,
    config: ReplicationConfig,
    table: MembershipTable,
    placement: Placement,
    detector: FailureDetector,
    hints: BTreeMap<NodeId, HintQueue>,
    /// Tracked sends: `(target, key) -> (seq, deadline)`.
    inflight: BTreeMap<(NodeId, String), (u64, u64)>,
    next_seq: u64,
    next_gossip_ms: u64,
    next_hint_ms: u64,
    next_ae_ms: u64,
    ae_cursor: usize,
    /// Join handoffs this node is pushing, by joiner.
    join_pushes: BTreeMap<NodeId, Handoff>,
    /// Joiners this node has finished pushing to.
    join_done: BTreeSet<NodeId>,
    /// Members that told this (joining) node they are done.
    handoff_received: BTreeSet<NodeId>,
    /// This node's own leave handoff.
    leave: Option<Handoff>,
    /// Keys this node holds but does not replicate (sloppy writes, ranges it lost while it was down):
    /// pushed to their replicas, then removed here. Maps key -> state hash at push time.
    orphans: Handoff,
    orphan_hashes: BTreeMap<String, u64>,
    /// Orphans that carry this node's own counter slot or flag dots: handed over but kept here (deleting
    /// them would let this node reissue the same slot or dot later), with the hash last handed over.
    kept_orphans: BTreeMap<String, u64>,
    /// Client writes admitted whose replication has not been started yet.
    writes_in_progress: usize,
    /// Rotates the first anti-entropy bucket answered, so large differences are worked through in turn.
    ae_offset: usize,
    /// The rolling scan: digests per slice and orphan detection, one slice per step.
    scan: scan::RollingScan,
    stats: ReplicationStats,
    /// Hint changes not yet handed to the runtime.
    persist: Vec<Effect>,
    /// The membership table changed since it was last handed to the runtime.
    dirty_table: bool,
}

impl Replication {
    /// A replication state machine for `me`, starting from `table` (restored or bootstrapped) and the
    /// persisted `hints`.
    pub fn new(
        me: NodeId,
        config: ReplicationConfig,
        table: MembershipTable,
        hints: BTreeMap<NodeId, BTreeSet<String>>,
        now_ms: u64,
    ) -> Self {
        let placement = Placement::of(&table, config.vnodes, config.replication_factor);
        let detector = FailureDetector::new(config.detector, now_ms);
        let mut r = Replication {
            me,
            config,
            table,
            placement,
            detector,
            hints: BTreeMap::new(),
            inflight: BTreeMap::new(),
            next_seq: 1,
            next_gossip_ms: now_ms,
            next_hint_ms: now_ms,
            next_ae_ms: now_ms,
            ae_cursor: 0,
            join_pushes: BTreeMap::new(),
            join_done: BTreeSet::new(),
            handoff_received: BTreeSet::new(),
            leave: None,
            orphans: Handoff::default(),
            orphan_hashes: BTreeMap::new(),
            kept_orphans: BTreeMap::new(),
            writes_in_progress: 0,
            ae_offset: 0,
            scan: scan::RollingScan::default(),
            stats: ReplicationStats::default(),
            persist: Vec::new(),
            dirty_table: false,
        };
        for (target, keys) in hints {
            for key in keys {
                r.add_hint(&target, &key);
            }
        }
        r.persist.clear();
        r
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// The membership table.
    pub fn table(&self) -> &MembershipTable {
        &self.table
    }

    /// Counters.
    pub fn stats(&self) -> ReplicationStats {
        let mut s = self.stats;
        s.hints_queued = self.hints.values().map(|q| q.keys.len() as u64).sum();
        s
    }

    /// What the failure detector believes about `peer` (this node is always alive to itself).
    pub fn liveness(&self, peer: &NodeId, now_ms: u64) -> Liveness {
        if *peer == self.me {
            Liveness::Alive
        } else {
            self.detector.liveness(peer, now_ms)
        }
    }

    /// The replicas of `key`: the current ring's preference list, followed by the members of the target
    /// ring's list that are not in it (non-empty only during a join or leave).
    pub fn replicas(&self, key: &str) -> Vec<NodeId> {
        self.placement.replicas(key)
    }

    /// A snapshot of the placement (rings and replication factor), for routing without this state machine.
    pub fn placement(&self) -> Placement {
        self.placement.clone()
    }

    /// Whether this node has left the cluster (it refuses client writes and takes part in no
    /// anti-entropy).
    fn has_left(&self) -> bool {
        self.table
            .get(&self.me)
            .is_some_and(|m| m.state == MemberState::Left)
    }

    /// Hands the persistence this state machine needs to the runtime, ahead of `out`: hint changes in the
    /// order they happened, then the membership table if it changed.
    fn finish(&mut self, out: Vec<Effect>) -> Vec<Effect> {
        let mut effects = std::mem::take(&mut self.persist);
        if std::mem::take(&mut self.dirty_table) {
            effects.push(Effect::PersistTable(self.table.clone()));
        }
        if effects.is_empty() {
            return out;
        }
        effects.extend(out);
        effects
    }

    /// Sends `key`'s current state to `to`, tracked for its ack.
    fn send_state(
        &mut self,
        to: &NodeId,
        key: &str,
        state: Profile,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight.insert(
            (to.clone(), key.to_owned()),
            (seq, now_ms + self.config.rpc_timeout_ms),
        );
        out.push(Effect::send(
            to.clone(),
            PeerMessage::Replicate {
                seq,
                key: key.to_owned(),
                state,
            },
        ));
        seq
    }

    /// Admits a client write of `key` acknowledged after `quorum` replicas (W; 0 counts as 1) hold it,
    /// before it is applied locally. Refused if this node has left the cluster (nobody replicates from it
    /// any more) or if W exceeds the key's replicas.
    pub fn begin_local_write(&mut self, key: &str, quorum: usize) -> Result<LocalWrite> {
        if self.has_left() {
            return Err(Error::NodeLeft);
        }
        let quorum = quorum.max(1);
        let replicas = self.placement.replicas(key).len();
        if quorum > replicas.max(1) {
            return Err(Error::QuorumTooLarge { quorum, replicas });
        }
        self.writes_in_progress += 1;
        Ok(LocalWrite { quorum })
    }

    /// The write admitted with `ticket` was not applied after all.
    pub fn abort_local_write(&mut self, ticket: LocalWrite) {
        let LocalWrite { .. } = ticket;
        self.writes_in_progress = self.writes_in_progress.saturating_sub(1);
    }

    /// Replicates the applied local write of `key` admitted with `ticket`: sends to live replicas, hints
    /// for those considered down, and says when the client may be answered.
    ///
    /// `delta` is what the write changed ([`Profile::delta_from`] of the state before it), if the caller
    /// has it: a replica with nothing pending for the key gets only that, one with a send in flight or a
    /// hint gets the full state (the rule is in the module docs). `None` sends the full state to all.
    pub fn on_local_write(
        &mut self,
        ticket: LocalWrite,
        key: &str,
        delta: Option<&Profile>,
        store: &dyn LocalStore,
        now_ms: u64,
    ) -> WritePlan {
        let LocalWrite { quorum } = ticket;
        self.writes_in_progress = self.writes_in_progress.saturating_sub(1);
        let mut out = Vec::new();
        let mut replica_sends = Vec::new();
        // The full state is read only for a replica that needs it (or when no delta was given).
        let mut full: Option<Option<Profile>> = None;
        if delta.is_none() {
            full = Some(store.state(key));
        }
        if full.as_ref().is_none_or(Option::is_some) {
            let replicas = self.replicas(key);
            // A coordinator outside the preference list (sloppy quorum) holds the only copy that
            // anti-entropy between replicas cannot see: it hints every replica at once, and those hints
            // are durable before the write is acknowledged, so a crash cannot strand the data here.
            let sloppy = !replicas.contains(&self.me);
            for replica in replicas {
                if replica == self.me {
                    continue;
                }
                if sloppy {
                    self.add_hint(&replica, key);
                }
                if self.liveness(&replica, now_ms) == Liveness::Down {
                    self.add_hint(&replica, key);
                    continue;
                }
                let state = match delta {
                    Some(delta) if self.delta_suffices(&replica, key) => {
                        self.stats.delta_sends += 1;
                        delta.clone()
                    }
                    _ => match full.get_or_insert_with(|| store.state(key)) {
                        Some(state) => {
                            self.stats.full_sends += 1;
                            state.clone()
                        }
                        None => continue,
                    },
                };
                replica_sends.push(self.send_state(&replica, key, state, now_ms, &mut out));
            }
        }
        let effects = self.finish(out);
        WritePlan {
            ack_after_durable: effects.iter().any(Effect::is_persist),
            replica_acks_needed: quorum.saturating_sub(1),
            replica_sends,
            effects,
        }
    }

    /// Whether the delta of one write brings `replica` up to date for `key`: nothing sent to it for the
    /// key is unacknowledged (a lost send would otherwise go unnoticed, its tracking overwritten by this
    /// one) and no hint is pending (the hint says it may lack earlier state). Anything else gets the full
    /// state.
    fn delta_suffices(&self, replica: &NodeId, key: &str) -> bool {
        let entry = (replica.clone(), key.to_owned());
        !self.inflight.contains_key(&entry)
            && self
                .hints
                .get(replica)
                .is_none_or(|q| !q.keys.contains_key(key))
    }

    /// Whether this node is a replica of `key` (if not, a write it coordinates is a sloppy-quorum write
    /// whose hints must be persisted before the write is acknowledged).
    pub fn is_replica(&self, key: &str) -> bool {
        self.replicas(key).contains(&self.me)
    }

    /// Handles a message from `from`.
    pub fn handle(
        &mut self,
        from: &NodeId,
        msg: PeerMessage,
        store: &dyn LocalStore,
        now_ms: u64,
    ) -> Vec<Effect> {
        self.detector.heard_from(from, now_ms);
        let mut out = Vec::new();
        match msg {
            PeerMessage::Gossip { table } => {
                self.merge_table(&table);
                if self.table != table {
                    // Push-pull: they are missing something we know.
                    let table = self.table.clone();
                    out.push(Effect::send(from.clone(), PeerMessage::Gossip { table }));
                }
            }
            PeerMessage::Replicate { seq, key, state } => {
                #[cfg(test)]
                let merged = if crate::knobs::active(crate::knobs::Bug::AckWithoutMerge) {
                    Ok(())
                } else {
                    store.merge_remote(&key, &state)
                };
                #[cfg(not(test))]
                let merged = store.merge_remote(&key, &state);
                if merged.is_ok() {
                    out.push(Effect::Send {
                        to: from.clone(),
                        msg: PeerMessage::ReplicateAck { seq, key },
                        when: SendWhen::Durable,
                    });
                }
            }
            PeerMessage::ReplicateAck { seq, key } => {
                self.on_replicate_ack(from, seq, key, &mut out)
            }
            PeerMessage::AeDigest { buckets } => self.on_ae_digest(from, buckets, store, &mut out),
            PeerMessage::AeEntries { buckets, entries } => {
                self.on_ae_entries(from, buckets, entries, store, now_ms, &mut out);
            }
            PeerMessage::AePull { keys } => self.on_ae_pull(from, keys, store, now_ms, &mut out),
            PeerMessage::HandoffDone => {
                self.handoff_received.insert(from.clone());
            }
            PeerMessage::ReadState { req, key } => {
                let state = store.state(&key);
                out.push(Effect::send(
                    from.clone(),
                    PeerMessage::ReadStateReply { req, state },
                ));
            }
            PeerMessage::ReadStateReply { req, state } => {
                out.push(Effect::ReadReply {
                    from: from.clone(),
                    req,
                    state,
                });
            }
            PeerMessage::ForwardEvents {
                req,
                events,
                deadline_ms,
                accepted_us,
            } => out.push(Effect::Ingest {
                from: from.clone(),
                req,
                events,
                deadline_ms,
                accepted_us,
            }),
            message @ (PeerMessage::CatalogDigest { .. } | PeerMessage::SegmentCatalog { .. }) => {
                out.push(Effect::Catalog {
                    from: from.clone(),
                    message,
                })
            }
            PeerMessage::ForwardReply { req, outcomes } => out.push(Effect::IngestReply {
                from: from.clone(),
                req,
                outcomes,
            }),
        }
        self.finish(out)
    }

    fn on_replicate_ack(&mut self, from: &NodeId, seq: u64, key: String, out: &mut Vec<Effect>) {
        let entry = (from.clone(), key);
        if self.inflight.get(&entry).is_some_and(|(s, _)| *s == seq) {
            self.inflight.remove(&entry);
        }
        if self.remove_hint(from, &entry.1, seq) {
            self.stats.hints_delivered += 1;
        }
        self.note_handoff_ack(from, &entry.1, seq);
        out.push(Effect::Acked {
            from: from.clone(),
            key: entry.1,
            seq,
        });
    }

    /// Read repair: sends `state` (the merge of the replies of a quorum read) to a replica that answered
    /// with something older, tracked like any other send.
    pub fn repair(&mut self, to: &NodeId, key: &str, state: Profile, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        self.send_state(to, key, state, now_ms, &mut out);
        out
    }

    fn merge_table(&mut self, table: &MembershipTable) {
        if self.table.merge(table) {
            self.dirty_table = true;
            self.rebuild_rings();
        }
    }

    fn rebuild_rings(&mut self) {
        self.placement = Placement::of(
            &self.table,
            self.config.vnodes,
            self.config.replication_factor,
        );
    }

    /// Changes this node's own membership state (join, leave) and announces it. The effects persist the
    /// new table.
    pub fn set_own_state(&mut self, addr: std::net::SocketAddr, state: MemberState) -> Vec<Effect> {
        self.change_own_state(addr, state);
        self.finish(Vec::new())
    }

    fn change_own_state(&mut self, addr: std::net::SocketAddr, state: MemberState) {
        self.table.set(&self.me.clone(), addr, state);
        self.dirty_table = true;
        self.rebuild_rings();
        if state == MemberState::Leaving {
            self.leave = None; // computed on the next tick
        }
    }

    fn peers(&self) -> Vec<NodeId> {
        self.table
            .members
            .values()
            .filter(|m| m.id != self.me && m.state != MemberState::Left)
            .map(|m| m.id.clone())
            .collect()
    }

    /// Time passes: timeouts become hints, hints are replayed, gossip and anti-entropy start, handoffs
    /// advance. Call it at [`Replication::next_deadline`] (calling it earlier is harmless).
    pub fn tick(&mut self, store: &dyn LocalStore, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();

        // Sends without an ack in time become hints.
        let expired: Vec<(NodeId, String)> = self
            .inflight
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for (target, key) in expired {
            self.inflight.remove(&(target.clone(), key.clone()));
            self.stats.send_timeouts += 1;
            self.add_hint(&target, &key);
        }

        let gossip_due = now_ms >= self.next_gossip_ms;
        if gossip_due {
            self.next_gossip_ms = now_ms + self.config.gossip_ms;
            for peer in self.peers() {
                let table = self.table.clone();
                out.push(Effect::send(peer, PeerMessage::Gossip { table }));
            }
        }

        if now_ms >= self.next_hint_ms {
            self.next_hint_ms = now_ms + self.config.hint_replay_ms;
            self.replay_hints(store, now_ms, &mut out);
        }

        self.scan_step(store, now_ms);
        if now_ms >= self.next_ae_ms {
            self.next_ae_ms = now_ms + self.config.anti_entropy_ms;
            // A node that left takes part in no anti-entropy: nobody replicates with it any more.
            if !self.has_left() {
                self.start_anti_entropy(store, now_ms, &mut out);
            }
        }

        self.advance_handoffs(store, now_ms, gossip_due, &mut out);
        self.move_orphans(store, now_ms, &mut out);
        self.finish(out)
    }

    /// The earliest local time at which [`Replication::tick`] has something to do: a send's ack timeout,
    /// a hint replay (while hints are queued), gossip, anti-entropy, or handoff work (due at once while
    /// pushes are pending; the runtime paces ticks). The one wake-up rule of the state machine, as quinn's
    /// `poll_timeout`: a runtime that ticks at this instant (or earlier) misses nothing.
    pub fn next_deadline(&self, now_ms: u64) -> u64 {
        let inflight = self.inflight.values().map(|(_, deadline)| *deadline);
        let hints = self
            .hints
            .values()
            .any(|q| !q.keys.is_empty())
            .then_some(self.next_hint_ms);
        let mut due: Vec<u64> = vec![self.next_gossip_ms, self.next_ae_ms, self.scan.next_ms];
        due.extend(inflight);
        due.extend(hints);
        for h in self
            .join_pushes
            .values()
            .chain(self.leave.iter())
            .chain(std::iter::once(&self.orphans))
        {
            due.extend(h.next_deadline());
            if !h.pending.is_empty() {
                due.push(now_ms);
            }
        }
        // A leaving node also waits for its own writes to drain; moved orphans are removed on a tick.
        if self.leave.is_some() || !self.orphan_hashes.is_empty() {
            due.push(now_ms);
        }
        due.into_iter().min().unwrap_or(now_ms)
    }
}

#[cfg(test)]
mod tests {
    //! Unit tests of single decisions of the state machine; the protocol as a whole is tested by the
    //! simulation (`sim`).

    use std::cell::RefCell;

    use super::*;
    use crate::cluster::ring::{ring_hash, Ring};

    const ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        7000,
    ));

    fn node(i: usize) -> NodeId {
        NodeId::new(format!("n{i}")).expect("valid")
    }

    /// A store that reports the `(key, hash)` entries it is given (each key's state is empty).
    #[derive(Default)]
    struct Entries(RefCell<Vec<(String, u64)>>);

    impl LocalStore for Entries {
        fn state(&self, key: &str) -> Option<Profile> {
            self.0
                .borrow()
                .iter()
                .any(|(k, _)| k == key)
                .then(Profile::default)
        }
        fn merge_remote(&self, _key: &str, _state: &Profile) -> Result<(), StoreError> {
            Ok(())
        }
        fn for_each_key(&self, f: &mut dyn FnMut(&str, u64)) {
            for (k, h) in self.0.borrow().iter() {
                f(k, *h);
            }
        }
        fn remove_if_unchanged(&self, _key: &str, _expected: u64) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    /// `n1` of an active three-node cluster (N = 3: every node replicates every key).
    fn n1(config: ReplicationConfig) -> Replication {
        let mut table = MembershipTable::default();
        for i in 1..=3 {
            table.set(&node(i), ADDR, MemberState::Active);
        }
        Replication::new(node(1), config, table, BTreeMap::new(), 0)
    }

    #[test]
    fn an_idle_node_sleeps_until_its_next_gossip_round() {
        let config = ReplicationConfig::default();
        let mut r = n1(config.clone());
        let store = Entries::default();
        assert_eq!(r.next_deadline(0), 0, "everything is due at start");
        r.tick(&store, 0);
        assert_eq!(r.next_deadline(0), config.gossip_ms);
    }

    /// An active member pushes to a joiner exactly the keys the joiner gains where the member is a
    /// current replica, and nothing else.
    #[test]
    fn a_member_pushes_a_joiner_exactly_the_keys_it_gains() {
        let mut table = MembershipTable::default();
        for i in 1..=3 {
            table.set(&node(i), ADDR, MemberState::Active);
        }
        table.set(&node(4), ADDR, MemberState::Joining);
        let config = ReplicationConfig {
            replication_factor: 2,
            ..ReplicationConfig::default()
        };
        let mut r = Replication::new(node(1), config, table, BTreeMap::new(), 0);
        let store = Entries::default();
        let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
        store
            .0
            .borrow_mut()
            .extend(keys.iter().map(|k| (k.clone(), 1)));
        let placement = r.placement();
        let gains: BTreeSet<&str> = keys
            .iter()
            .filter(|k| {
                let now = placement.current.preference_list(k.as_bytes(), 2);
                let then = placement.target.preference_list(k.as_bytes(), 2);
                now.contains(&node(1)) && !now.contains(&node(4)) && then.contains(&node(4))
            })
            .map(String::as_str)
            .collect();
        let replicated = keys.iter().filter(|k| r.is_replica(k)).count();
        assert!(!gains.is_empty() && gains.len() < replicated, "{gains:?}");
        let pushed: BTreeSet<&str> = r
            .tick(&store, 0)
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    to,
                    msg: PeerMessage::Replicate { key, .. },
                    ..
                } if *to == node(4) => keys.iter().find(|k| *k == key).map(String::as_str),
                _ => None,
            })
            .collect();
        assert_eq!(pushed, gains);
    }

    /// A leaving node hands every key it holds to each of the key's replicas in the target ring.
    #[test]
    fn a_leaving_node_hands_every_key_to_its_new_replicas() {
        let mut table = MembershipTable::default();
        for i in 1..=4 {
            table.set(&node(i), ADDR, MemberState::Active);
        }
        table.set(&node(1), ADDR, MemberState::Leaving);
        let config = ReplicationConfig {
            replication_factor: 2,
            ..ReplicationConfig::default()
        };
        let mut r = Replication::new(node(1), config, table, BTreeMap::new(), 0);
        let store = Entries::default();
        let keys: Vec<String> = (0..20).map(|i| format!("key-{i}")).collect();
        store
            .0
            .borrow_mut()
            .extend(keys.iter().map(|k| (k.clone(), 1)));
        let target = r.placement().target;
        let expected: BTreeSet<(NodeId, String)> = keys
            .iter()
            .flat_map(|k| {
                target
                    .preference_list(k.as_bytes(), 2)
                    .into_iter()
                    .map(move |t| (t, k.clone()))
            })
            .collect();
        assert!(expected.iter().all(|(t, _)| *t != node(1)));
        let pushed: BTreeSet<(NodeId, String)> = r
            .tick(&store, 0)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Send {
                    to,
                    msg: PeerMessage::Replicate { key, .. },
                    ..
                } => Some((to, key)),
                _ => None,
            })
            .collect();
        assert_eq!(pushed, expected);
    }

    /// `HandoffDone` goes to joiners only: in a cluster where nobody joins, nobody is told.
    #[test]
    fn without_joiners_no_handoff_is_announced() {
        let config = ReplicationConfig::default();
        let mut r = n1(config.clone());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let mut effects = r.tick(&store, 0);
        effects.extend(r.tick(&store, config.gossip_ms));
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: PeerMessage::Gossip { .. },
                ..
            }
        )));
        assert!(!effects.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: PeerMessage::HandoffDone,
                ..
            }
        )));
    }

    #[test]
    fn a_send_without_an_ack_in_time_becomes_a_hint() {
        let config = ReplicationConfig::default();
        let mut r = n1(config.clone());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let plan = r.on_local_write(ticket, "k", None, &store, 0);
        assert_eq!(plan.replica_sends.len(), 2);
        assert_eq!(r.hint_count(&node(2)), 0);
        r.tick(&store, config.rpc_timeout_ms);
        assert_eq!(r.hint_count(&node(2)), 1);
        assert_eq!(r.hint_count(&node(3)), 1);
        assert_eq!(r.stats().send_timeouts, 2);
    }

    /// The send sequence number and the state of each `Replicate` of `effects`, by target.
    fn replicated(effects: &[Effect]) -> BTreeMap<NodeId, (u64, Profile)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    to,
                    msg: PeerMessage::Replicate { seq, state, .. },
                    ..
                } => Some((to.clone(), (*seq, state.clone()))),
                _ => None,
            })
            .collect()
    }

    /// A one-counter delta (the store's full state, by contrast, is empty in these tests).
    fn one_counter_delta() -> Profile {
        let mut delta = Profile::default();
        delta
            .increment(
                &[("c", 1)],
                &crate::profile::tests::actor(0),
                crate::hlc::Timestamp::from_millis(1),
                &crate::limits::Limits::default(),
            )
            .expect("counts");
        delta
    }

    /// A replica with nothing pending gets the write's delta; while that delta is unacknowledged the
    /// next write sends the full state (a second delta would overwrite the first one's tracking, so its
    /// loss would go unnoticed); an ack restores the delta path.
    #[test]
    fn a_delta_goes_only_to_a_replica_with_nothing_pending() {
        let mut r = n1(ReplicationConfig::default());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let delta = one_counter_delta();
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let first = r.on_local_write(ticket, "k", Some(&delta), &store, 0);
        let sent = replicated(&first.effects);
        assert_eq!(sent.len(), 2);
        assert!(sent.values().all(|(_, state)| *state == delta));

        // n2 acknowledges, n3 does not (yet).
        let seq_n2 = sent[&node(2)].0;
        r.handle(
            &node(2),
            PeerMessage::ReplicateAck {
                seq: seq_n2,
                key: "k".into(),
            },
            &store,
            1,
        );
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let second = r.on_local_write(ticket, "k", Some(&delta), &store, 2);
        let sent = replicated(&second.effects);
        assert_eq!(
            sent[&node(2)].1,
            delta,
            "n2 acknowledged everything: a delta suffices"
        );
        assert_eq!(
            sent[&node(3)].1,
            Profile::default(),
            "n3 has a send in flight: full state"
        );
        assert_eq!(r.stats().delta_sends, 3);
        assert_eq!(r.stats().full_sends, 1);
    }

    /// A lost delta is repaired: its timeout becomes a hint, the next write to that replica carries the
    /// full state instead of a delta, and the hint replay sends the full state too.
    #[test]
    fn a_lost_delta_ends_in_a_hint_and_a_full_state_replay() {
        let config = ReplicationConfig::default();
        let mut r = n1(config.clone());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let delta = one_counter_delta();
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let plan = r.on_local_write(ticket, "k", Some(&delta), &store, 0);
        assert!(replicated(&plan.effects).values().all(|(_, s)| *s == delta));
        let now = config.rpc_timeout_ms;
        r.tick(&store, now);
        assert_eq!(r.hint_count(&node(2)), 1, "the lost delta became a hint");

        // Both replicas are heard from again, so they are up; a write finds the hint: full state.
        for i in [2, 3] {
            r.handle(
                &node(i),
                PeerMessage::Gossip {
                    table: r.table().clone(),
                },
                &store,
                now,
            );
        }
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let plan = r.on_local_write(ticket, "k", Some(&delta), &store, now);
        let sent = replicated(&plan.effects);
        assert_eq!(sent.len(), 2);
        assert!(sent.values().all(|(_, s)| *s == Profile::default()));

        // Its ack (a send made after the hint) clears the hint: the delta path is open again.
        for (to, (seq, _)) in sent {
            r.handle(
                &to,
                PeerMessage::ReplicateAck {
                    seq,
                    key: "k".into(),
                },
                &store,
                now,
            );
        }
        assert_eq!(r.hint_count(&node(2)), 0);
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let plan = r.on_local_write(ticket, "k", Some(&delta), &store, now);
        assert!(replicated(&plan.effects).values().all(|(_, s)| *s == delta));
    }

    /// A target's hints stop at its byte budget; the overflow is dropped and counted.
    #[test]
    fn hints_stop_at_the_byte_budget_of_their_target() {
        let config = ReplicationConfig {
            max_hint_bytes_per_target: 2,
            ..ReplicationConfig::default()
        };
        let mut r = n1(config.clone());
        let store = Entries::default();
        for key in ["k1", "k2"] {
            store.0.borrow_mut().push((key.into(), 1));
            let ticket = r.begin_local_write(key, 1).expect("admitted");
            let _ = r.on_local_write(ticket, key, None, &store, 0);
        }
        r.tick(&store, config.rpc_timeout_ms);
        assert_eq!(r.hint_count(&node(2)), 1);
        assert_eq!(r.hint_count(&node(3)), 1);
        assert_eq!(r.stats().hints_dropped, 2);
    }

    /// The hints of a target that left are dropped (its ranges moved) and counted.
    #[test]
    fn the_hints_of_a_target_that_left_are_dropped_and_counted() {
        let config = ReplicationConfig::default();
        let mut r = n1(config.clone());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let _ = r.on_local_write(ticket, "k", None, &store, 0);
        let mut now = config.rpc_timeout_ms;
        r.tick(&store, now);
        assert_eq!(r.hint_count(&node(2)), 1);
        let mut table = r.table().clone();
        table.set(&node(2), ADDR, MemberState::Left);
        r.handle(&node(2), PeerMessage::Gossip { table }, &store, now);
        now += config.hint_replay_ms;
        r.tick(&store, now);
        assert_eq!(r.hint_count(&node(2)), 0);
        assert_eq!(r.stats().hints_dropped, 1);
    }

    /// A hint's bytes are given back when it is delivered: a target's budget bounds the hints it has
    /// now, not all it ever had.
    #[test]
    fn a_delivered_hint_gives_its_budget_back() {
        let config = ReplicationConfig {
            max_hint_bytes_per_target: 1,
            ..ReplicationConfig::default()
        };
        let mut r = n1(config.clone());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let mut now = 0;
        for round in 0..3 {
            let ticket = r.begin_local_write("k", 1).expect("admitted");
            let _ = r.on_local_write(ticket, "k", None, &store, now);
            now += config.rpc_timeout_ms;
            let mut effects = r.tick(&store, now);
            assert_eq!(r.hint_count(&node(2)), 1, "round {round}: hinted");
            // Replayed (on this tick or the next replay round); n2 acknowledges the replay.
            now += config.hint_replay_ms;
            effects.extend(r.tick(&store, now));
            let seq = effects
                .iter()
                .find_map(|e| match e {
                    Effect::Send {
                        to,
                        msg: PeerMessage::Replicate { seq, .. },
                        ..
                    } if *to == node(2) => Some(*seq),
                    _ => None,
                })
                .expect("the hint is replayed");
            let key = "k".to_owned();
            r.handle(
                &node(2),
                PeerMessage::ReplicateAck { seq, key },
                &store,
                now,
            );
            assert_eq!(r.hint_count(&node(2)), 0, "round {round}: delivered");
        }
        assert_eq!(r.stats().hints_dropped, 0);
    }

    /// Step 3 of anti-entropy: what differs is pushed and pulled, what only the peer has is pulled,
    /// what is equal is left alone.
    #[test]
    fn entries_that_differ_are_pushed_and_missing_ones_pulled() {
        let mut r = n1(ReplicationConfig::default());
        let store = Entries::default();
        store
            .0
            .borrow_mut()
            .extend([("differs".into(), 1), ("equal".into(), 2)]);
        let effects = r.handle(
            &node(2),
            PeerMessage::AeEntries {
                buckets: (0..ReplicationConfig::default().ae_buckets).collect(),
                entries: vec![
                    ("differs".into(), 9),
                    ("equal".into(), 2),
                    ("theirs".into(), 5),
                ],
            },
            &store,
            0,
        );
        let pushed: Vec<&str> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    msg: PeerMessage::Replicate { key, .. },
                    ..
                } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(pushed, vec!["differs"]);
        let pulls: Vec<&Effect> = effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: PeerMessage::AePull { .. },
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(
            pulls,
            vec![&Effect::send(
                node(2),
                PeerMessage::AePull {
                    keys: vec!["differs".into(), "theirs".into()]
                }
            )]
        );
    }

    /// A leaving node leaves only once what it coordinated is acknowledged, even with nothing left to
    /// hand over; until then it is due again at once (the runtime paces its ticks).
    #[test]
    fn a_leaving_node_waits_for_its_unacknowledged_writes() {
        let mut r = n1(ReplicationConfig::default());
        let store = Entries::default();
        store.0.borrow_mut().push(("k".into(), 1));
        let ticket = r.begin_local_write("k", 1).expect("admitted");
        let _ = r.on_local_write(ticket, "k", None, &store, 0);
        store.0.borrow_mut().clear();
        let _ = r.set_own_state(ADDR, MemberState::Leaving);
        r.tick(&store, 10);
        assert_eq!(
            r.table().get(&node(1)).map(|m| m.state),
            Some(MemberState::Leaving),
            "its write is still unacknowledged"
        );
        assert_eq!(r.next_deadline(10), 10);
    }

    /// A joiner turns active only once every active member it can hear has handed over.
    #[test]
    fn a_joiner_waits_for_the_handoff_of_a_member_it_hears() {
        let mut table = MembershipTable::default();
        table.set(&node(1), ADDR, MemberState::Active);
        table.set(&node(2), ADDR, MemberState::Joining);
        let mut r = Replication::new(
            node(2),
            ReplicationConfig::default(),
            table,
            BTreeMap::new(),
            0,
        );
        let store = Entries::default();
        let state = |r: &Replication| r.table().get(&node(2)).map(|m| m.state);
        let gossip = PeerMessage::Gossip {
            table: r.table().clone(),
        };
        r.handle(&node(1), gossip, &store, 0);
        r.tick(&store, 10);
        assert_eq!(
            state(&r),
            Some(MemberState::Joining),
            "n1 has not handed over"
        );
        r.handle(&node(1), PeerMessage::HandoffDone, &store, 20);
        r.tick(&store, 30);
        assert_eq!(state(&r), Some(MemberState::Active));
    }

    /// Seeds known only from configuration (version 0) are not members yet: a joiner that knows nothing
    /// more, and cannot reach them, stays joining rather than declaring itself a cluster.
    #[test]
    fn a_joiner_that_knows_only_unreachable_seeds_stays_joining() {
        let table = MembershipTable::bootstrap(&node(2), ADDR, &[(node(1), ADDR)], false, None);
        let mut r = Replication::new(
            node(2),
            ReplicationConfig::default(),
            table,
            BTreeMap::new(),
            0,
        );
        let store = Entries::default();
        let heard = PeerMessage::ReadStateReply {
            req: 0,
            state: None,
        };
        r.handle(&node(1), heard, &store, 0);
        r.tick(&store, 600_000);
        assert_eq!(r.liveness(&node(1), 600_000), Liveness::Down);
        assert_eq!(
            r.table().get(&node(2)).map(|m| m.state),
            Some(MemberState::Joining)
        );
    }

    /// Anti-entropy finds a difference only if the bucket digest moves: any change of a key's state
    /// hash, down to one bit, must change it.
    #[test]
    fn every_bit_of_a_state_hash_moves_its_digest() {
        let r = n1(ReplicationConfig::default());
        let store = Entries::default();
        let base = 0x0123_4567_89ab_cdef_u64;
        store.0.borrow_mut().push(("k".into(), base));
        let before = r.digests(&node(2), &store);
        for bit in 0..64 {
            store.0.borrow_mut()[0].1 = base ^ (1 << bit);
            assert_ne!(r.digests(&node(2), &store), before, "bit {bit}");
        }
    }

    /// A digest reply answers whole differing buckets until the next would pass `ae_max_keys`.
    #[test]
    fn a_digest_reply_answers_buckets_up_to_the_key_budget() {
        let buckets = 64u32;
        // Keys in distinct buckets, so every bucket holds exactly one.
        let mut seen = BTreeSet::new();
        let keys: Vec<String> = (0..)
            .map(|i| format!("key-{i}"))
            .filter(|k| seen.insert(Ring::position(k.as_bytes()) % u64::from(buckets)))
            .take(6)
            .collect();
        let store = Entries::default();
        store
            .0
            .borrow_mut()
            .extend(keys.iter().map(|k| (k.clone(), 7)));
        for (max_keys, expected) in [(4_096, 6), (2, 2), (1, 1)] {
            let mut r = n1(ReplicationConfig {
                ae_buckets: buckets,
                ae_max_keys: max_keys,
                ..ReplicationConfig::default()
            });
            r.scan_everything(&store);
            // The peer holds nothing: every bucket with a key differs.
            let effects = r.handle(
                &node(2),
                PeerMessage::AeDigest {
                    buckets: vec![0; buckets as usize],
                },
                &store,
                0,
            );
            let entries: Vec<&(String, u64)> = effects
                .iter()
                .flat_map(|e| match e {
                    Effect::Send {
                        msg: PeerMessage::AeEntries { entries, .. },
                        ..
                    } => entries.iter().collect(),
                    _ => Vec::new(),
                })
                .collect();
            assert_eq!(entries.len(), expected, "ae_max_keys = {max_keys}");
        }
    }

    /// Entries divided into four slices, counting the keys each call reads.
    struct Sliced {
        entries: Vec<(String, u64)>,
        read: std::cell::Cell<usize>,
    }

    impl Sliced {
        fn slice_of(key: &str) -> usize {
            (ring_hash(key.as_bytes()) % 4) as usize
        }
    }

    impl LocalStore for Sliced {
        fn state(&self, _key: &str) -> Option<Profile> {
            None
        }
        fn merge_remote(&self, _key: &str, _state: &Profile) -> Result<(), StoreError> {
            Ok(())
        }
        fn for_each_key(&self, f: &mut dyn FnMut(&str, u64)) {
            for (k, h) in &self.entries {
                self.read.set(self.read.get() + 1);
                f(k, *h);
            }
        }
        fn slices(&self) -> usize {
            4
        }
        fn for_each_key_in(&self, slice: usize, f: &mut dyn FnMut(&str, u64)) {
            for (k, h) in self
                .entries
                .iter()
                .filter(|(k, _)| Sliced::slice_of(k) == slice)
            {
                self.read.set(self.read.get() + 1);
                f(k, *h);
            }
        }
        fn remove_if_unchanged(&self, _key: &str, _expected: u64) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    /// The rolling scan reads one slice per step, never every key in one tick; anti-entropy waits for a
    /// whole rotation, then sends the digests every key would give, and no tick of a round reads all keys.
    #[test]
    fn the_rolling_scan_reads_one_slice_per_step_and_its_digests_equal_a_full_scan() {
        let config = ReplicationConfig {
            anti_entropy_ms: 400,
            ..ReplicationConfig::default()
        };
        let mut r = n1(config);
        let store = Sliced {
            entries: (0..200).map(|i| (format!("key-{i}"), i * 7919)).collect(),
            read: Default::default(),
        };
        let per_slice: Vec<usize> = (0..4)
            .map(|s| {
                store
                    .entries
                    .iter()
                    .filter(|(k, _)| Sliced::slice_of(k) == s)
                    .count()
            })
            .collect();
        assert!(per_slice.iter().all(|&n| n > 0 && n < 200), "{per_slice:?}");
        let digest_sent = |effects: &[Effect]| {
            effects.iter().find_map(|e| match e {
                Effect::Send {
                    msg: PeerMessage::AeDigest { buckets },
                    ..
                } => Some(buckets.clone()),
                _ => None,
            })
        };
        for (step, expected) in per_slice.iter().enumerate() {
            store.read.set(0);
            let effects = r.tick(&store, step as u64 * 100);
            assert_eq!(store.read.get(), *expected, "step {step} reads one slice");
            assert!(
                digest_sent(&effects).is_none(),
                "no round before a rotation"
            );
        }
        store.read.set(0);
        let effects = r.tick(&store, 400);
        assert!(store.read.get() < 200, "a round reads no more than a slice");
        let sent = digest_sent(&effects).expect("a round after the rotation");
        let peer = node(2);
        assert!(
            sent == r.fresh_digests(&peer, &store) || sent == r.fresh_digests(&node(3), &store),
            "the rolled-up digests equal a full scan's"
        );
    }

    /// A single-node ring has nothing to compare or hand over: its ticks read no key.
    #[test]
    fn a_single_node_ring_scans_nothing() {
        let mut table = MembershipTable::default();
        table.set(&node(1), ADDR, MemberState::Active);
        let mut r = Replication::new(
            node(1),
            ReplicationConfig::default(),
            table,
            BTreeMap::new(),
            0,
        );
        let store = Sliced {
            entries: (0..50).map(|i| (format!("key-{i}"), i)).collect(),
            read: Default::default(),
        };
        for t in 0..100 {
            r.tick(&store, t * 1_000);
        }
        assert_eq!(store.read.get(), 0);
    }
}
