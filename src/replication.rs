//! The replication protocol of one node, sans-IO: who gets which key when, hinted handoff, anti-entropy,
//! gossip, and the handoff of ranges on join and leave.
//!
//! [`Replication`] holds no profile data. It reads and merges through a [`LocalStore`] that the caller
//! provides, and it returns [`Effect`]s (messages to send, acknowledgements observed) instead of doing I/O.
//! The node runtime and the deterministic simulation (`sim` tests) drive the same code.
//!
//! Protocol (state-based: what travels is always the key's whole current profile, which merges as a join,
//! so loss, duplication and reordering of messages are harmless):
//! - **Write**: after a local write, the coordinator sends `Replicate{key, state}` to every other replica
//!   in the preference list (the union of the current and the target ring while a join or leave is in
//!   progress) that the failure detector does not consider down. Each send is tracked; without a
//!   `ReplicateAck` within `rpc_timeout_ms` it becomes a hint. Replicas considered down get a hint at once.
//!   If the coordinator is not itself a replica (sloppy quorum: every preferred replica was unreachable
//!   for the client), the same applies to all N preferred replicas.
//! - **Hinted handoff**: a hint is `(target, key)`, bounded in bytes per target (excess hints are dropped
//!   and counted; anti-entropy still repairs those keys). Hints for targets that are not down are replayed
//!   every `hint_replay_ms`, sending the key's *current* state; an ack removes the hint.
//! - **Anti-entropy**: every `anti_entropy_ms` the node picks the next peer and sends hash digests of
//!   `ae_buckets` buckets of the keys both replicate. The peer answers with its `(key, hash)` entries of
//!   the buckets that differ; the initiator pushes its state of every key that differs and pulls the
//!   peer's. So replicas converge even when hints were lost.
//! - **Gossip**: every `gossip_ms` the membership table goes to every member; receiving any message counts
//!   as a heartbeat for the failure detector.
//! - **Join**: a joining node is in the target ring, not the current one. Every active node pushes the keys
//!   the joiner gains (where it is itself a current replica), then sends `HandoffDone`. The joiner turns
//!   `Active` once every active member that is not down has said `HandoffDone`. Until then the old owners
//!   keep serving.
//! - **Orphans**: a node that holds keys it does not replicate (a sloppy-quorum write, or a range that
//!   moved while it was down) pushes them to their replicas and, once all acknowledged, removes its copy
//!   (unless it was written meanwhile). So no data is stranded outside the preference list.
//! - **Leave**: a leaving node stays in the current ring and pushes every key it holds to its replicas in
//!   the target ring; once all of those pushes are acknowledged and nothing it coordinated is in flight or
//!   hinted, it marks itself `Left`.
//!
//! Caveats: hints and the membership table are persisted by the runtime when they change (see
//! [`Replication::take_dirty`]), so a crash can lose the hints of the last moments; anti-entropy repairs
//! what they would have. Failure detection is local and can be wrong; a wrong "down" costs a hint, never data.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::codec::encode_record;
use crate::detector::{DetectorConfig, FailureDetector, Liveness};
use crate::hlc::NodeId;
use crate::membership::{MemberState, MembershipTable};
use crate::profile::Profile;
use crate::ring::{ring_hash, Ring};

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
            vnodes: crate::ring::DEFAULT_VNODES,
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

/// Messages between nodes.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum PeerMessage {
    /// The sender's membership table (also a heartbeat).
    Gossip {
        /// The table.
        table: MembershipTable,
    },
    /// The sender's whole state of one key; merge it and acknowledge.
    Replicate {
        /// Send sequence number, echoed in the ack.
        seq: u64,
        /// The key.
        key: String,
        /// Its state.
        state: Profile,
    },
    /// `Replicate` with this `seq` was merged (and made durable per the receiver's policy).
    ReplicateAck {
        /// The acknowledged send.
        seq: u64,
        /// The key.
        key: String,
    },
    /// Anti-entropy, step 1: digests of the keys both sides replicate, one per bucket.
    AeDigest {
        /// Digest per bucket.
        buckets: Vec<u64>,
    },
    /// Anti-entropy, step 2: the responder's `(key, state hash)` entries in the buckets that differ.
    AeEntries {
        /// The buckets that differ.
        buckets: Vec<u32>,
        /// The responder's entries in them.
        entries: Vec<(String, u64)>,
    },
    /// Anti-entropy, step 3: send me your state of these keys.
    AePull {
        /// The keys.
        keys: Vec<String>,
    },
    /// Join handoff: the sender has pushed every key the joiner gains from it.
    HandoffDone,
    /// A coordinator reads this replica's state of a key (R > 1, or a read on a non-replica).
    ReadState {
        /// Request id, echoed in the reply.
        req: u64,
        /// The key.
        key: String,
    },
    /// Answer to `ReadState`.
    ReadStateReply {
        /// The request id.
        req: u64,
        /// The replica's state, if it has one.
        state: Option<Profile>,
    },
}

/// Local data, as replication sees it.
pub trait LocalStore {
    /// The current state of `key`, if any.
    fn state(&self, key: &str) -> Option<Profile>;
    /// Merges a remote state into `key`; `Err` if it could not be stored (then it is not acknowledged).
    fn merge_remote(&self, key: &str, state: &Profile) -> Result<(), String>;
    /// Calls `f` with every key and the hash of its state ([`state_hash`]).
    fn for_each_key(&self, f: &mut dyn FnMut(&str, u64));
    /// Removes `key` if its state still hashes to `expected` (it was handed over to its replicas and not
    /// written since). Returns whether it was removed.
    fn remove_if_unchanged(&self, key: &str, expected: u64) -> Result<bool, String>;
}

/// Whether `profile` holds state that only `node` may extend: its counter slot or its flag dots. A node
/// must keep such a profile (it may not forget it), or a later write there would reuse the slot or dot and
/// silently replace or lose acknowledged data.
pub fn carries_identity_of(profile: &Profile, node: &NodeId) -> bool {
    profile
        .counters
        .values()
        .any(|c| c.slots.contains_key(node))
        || profile.flags.values().any(|f| f.clock.0.get(node) > 0)
}

/// The hash of a profile's state: equal states (after merge) have equal hashes, because the encoding is
/// canonical (ordered maps, siblings sorted by dot).
pub fn state_hash(profile: &Profile) -> u64 {
    encode_record(profile).map_or(0, |bytes| record_hash(&bytes))
}

/// [`state_hash`] of a profile from its stored record (the output of `codec::encode_record`), so a node
/// that has just encoded a record gets the hash without encoding again.
pub fn record_hash(record: &[u8]) -> u64 {
    ring_hash(record)
}

/// Where keys live: the current and the target ring and the replication factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The ring that serves now.
    pub current: Ring,
    /// The ring ownership is moving to.
    pub target: Ring,
    /// Replicas per key.
    pub replication_factor: usize,
    in_transition: bool,
}

impl Placement {
    /// Placement from a membership table.
    pub fn of(table: &MembershipTable, vnodes: u32, replication_factor: usize) -> Placement {
        let current = table.current_ring(vnodes);
        let target = table.target_ring(vnodes);
        let in_transition = current.nodes() != target.nodes();
        Placement {
            current,
            target,
            replication_factor,
            in_transition,
        }
    }

    /// The replicas of `key` (see [`Replication::replicas`]).
    pub fn replicas(&self, key: &str) -> Vec<NodeId> {
        let n = self.replication_factor;
        let mut out = self.current.preference_list(key.as_bytes(), n);
        if self.in_transition {
            for node in self.target.preference_list(key.as_bytes(), n) {
                if !out.contains(&node) {
                    out.push(node);
                }
            }
        }
        out
    }

    /// The ring version these rings were built from.
    pub fn version(&self) -> u64 {
        self.current.version()
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `msg` to `to`.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: PeerMessage,
    },
    /// `from` answered the read `req` (the runtime resolves R > 1 reads with it).
    ReadReply {
        /// The replica.
        from: NodeId,
        /// The request id.
        req: u64,
        /// Its state.
        state: Option<Profile>,
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
}

#[derive(Debug, Clone, Default)]
struct HintQueue {
    /// Hinted keys, with the send sequence number current when the hint was (last) recorded: only an
    /// ack of a later send proves the target has the hinted state.
    keys: BTreeMap<String, u64>,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Handoff {
    /// Keys still to push, with their targets.
    pending: Vec<(String, Vec<NodeId>)>,
    /// Pushes awaiting their ack: `(target, key) -> (seq, deadline)`.
    awaiting: BTreeMap<(NodeId, String), (u64, u64)>,
}

impl Handoff {
    fn new(pending: Vec<(String, Vec<NodeId>)>) -> Self {
        Handoff {
            pending,
            awaiting: BTreeMap::new(),
        }
    }
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
    /// Client writes applied locally whose replication has not been started yet.
    writes_in_progress: usize,
    /// Rotates the first anti-entropy bucket answered, so large differences are worked through in turn.
    ae_offset: usize,
    stats: ReplicationStats,
    hint_changes: Vec<HintChange>,
    dirty_table: bool,
}

/// A change to the hint set, for the runtime to persist (one record per hint, so persisting costs the
/// change, not the size of the whole set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintChange {
    /// `(target, key)` is now hinted.
    Added(NodeId, String),
    /// `(target, key)` is no longer hinted.
    Removed(NodeId, String),
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
            orphans: Handoff::new(Vec::new()),
            orphan_hashes: BTreeMap::new(),
            kept_orphans: BTreeMap::new(),
            writes_in_progress: 0,
            ae_offset: 0,
            stats: ReplicationStats::default(),
            hint_changes: Vec::new(),
            dirty_table: false,
        };
        for (target, keys) in hints {
            for key in keys {
                r.add_hint(&target, &key);
            }
        }
        r.hint_changes.clear();
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

    /// The ring that serves now.
    pub fn current_ring(&self) -> &Ring {
        &self.placement.current
    }

    /// Counters.
    pub fn stats(&self) -> ReplicationStats {
        let mut s = self.stats;
        s.hints_queued = self.hints.values().map(|q| q.keys.len() as u64).sum();
        s
    }

    /// Hinted keys per target (for persistence and status).
    pub fn hints(&self) -> BTreeMap<NodeId, BTreeSet<String>> {
        self.hints
            .iter()
            .filter(|(_, q)| !q.keys.is_empty())
            .map(|(t, q)| (t.clone(), q.keys.keys().cloned().collect()))
            .collect()
    }

    /// Hinted keys for one target.
    pub fn hint_count(&self, target: &NodeId) -> usize {
        self.hints.get(target).map_or(0, |q| q.keys.len())
    }

    /// Returns and clears what changed since the last call: the hint changes and whether the membership
    /// table changed, so the runtime persists exactly that.
    pub fn take_dirty(&mut self) -> (Vec<HintChange>, bool) {
        let table = self.dirty_table;
        self.dirty_table = false;
        (std::mem::take(&mut self.hint_changes), table)
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

    /// The first replica of `key` not considered down, i.e. the node that should coordinate it.
    pub fn coordinator(&self, key: &str, now_ms: u64) -> Option<NodeId> {
        let replicas = self
            .placement
            .current
            .preference_list(key.as_bytes(), self.config.replication_factor);
        replicas
            .iter()
            .find(|r| self.liveness(r, now_ms) != Liveness::Down)
            .or(replicas.first())
            .cloned()
    }

    fn add_hint(&mut self, target: &NodeId, key: &str) {
        if self
            .table
            .get(target)
            .is_none_or(|m| m.state == MemberState::Left)
        {
            return; // it left: its ranges moved, and nobody will replay to it
        }
        let budget = self.config.max_hint_bytes_per_target;
        let seq = self.next_seq;
        let q = self.hints.entry(target.clone()).or_default();
        if let Some(created) = q.keys.get_mut(key) {
            *created = seq;
            return;
        }
        if q.bytes + key.len() > budget {
            self.stats.hints_dropped += 1;
            return;
        }
        q.bytes += key.len();
        q.keys.insert(key.to_owned(), seq);
        self.hint_changes
            .push(HintChange::Added(target.clone(), key.to_owned()));
    }

    /// Removes the hint for `(target, key)` if the acknowledged send `acked_seq` was made after the hint
    /// was recorded (or unconditionally with `u64::MAX`).
    fn remove_hint(&mut self, target: &NodeId, key: &str, acked_seq: u64) -> bool {
        if let Some(q) = self.hints.get_mut(target) {
            if q.keys.get(key).is_some_and(|created| acked_seq >= *created) {
                q.keys.remove(key);
                q.bytes -= key.len();
                self.hint_changes
                    .push(HintChange::Removed(target.clone(), key.to_owned()));
                return true;
            }
        }
        false
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
        out.push(Effect::Send {
            to: to.clone(),
            msg: PeerMessage::Replicate {
                seq,
                key: key.to_owned(),
                state,
            },
        });
        seq
    }

    /// Called before a client write is applied locally. Returns false if this node has left the cluster
    /// (it must refuse the write: nobody replicates from it any more). Every `true` must be followed by
    /// [`Replication::on_local_write`] or [`Replication::abort_local_write`].
    pub fn begin_local_write(&mut self) -> bool {
        if self
            .table
            .get(&self.me)
            .is_some_and(|m| m.state == MemberState::Left)
        {
            return false;
        }
        self.writes_in_progress += 1;
        true
    }

    /// A write announced with [`Replication::begin_local_write`] was not applied after all.
    pub fn abort_local_write(&mut self) {
        self.writes_in_progress = self.writes_in_progress.saturating_sub(1);
    }

    /// Replicates a local write of `key`. Returns the sends (with their sequence numbers, for W > 1) and
    /// records hints for replicas considered down.
    pub fn on_local_write(
        &mut self,
        key: &str,
        store: &dyn LocalStore,
        now_ms: u64,
    ) -> Vec<Effect> {
        self.writes_in_progress = self.writes_in_progress.saturating_sub(1);
        let mut out = Vec::new();
        let Some(state) = store.state(key) else {
            return out;
        };
        let replicas = self.replicas(key);
        // A coordinator outside the preference list (sloppy quorum) holds the only copy that anti-entropy
        // between replicas cannot see: it hints every replica at once, and the runtime persists those hints
        // before it acknowledges the write, so a crash cannot strand the data here.
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
            } else {
                self.send_state(&replica, key, state.clone(), now_ms, &mut out);
            }
        }
        out
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
                    out.push(Effect::Send {
                        to: from.clone(),
                        msg: PeerMessage::Gossip {
                            table: self.table.clone(),
                        },
                    });
                }
            }
            PeerMessage::Replicate { seq, key, state } => {
                if store.merge_remote(&key, &state).is_ok() {
                    out.push(Effect::Send {
                        to: from.clone(),
                        msg: PeerMessage::ReplicateAck { seq, key },
                    });
                }
            }
            PeerMessage::ReplicateAck { seq, key } => {
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
            PeerMessage::AeDigest { buckets } => {
                let ours = self.digests(from, store);
                if ours.len() != buckets.len() {
                    return out;
                }
                let mut differing: Vec<u32> = (0..ours.len())
                    .filter(|&i| ours[i] != buckets[i])
                    .map(|i| i as u32)
                    .collect();
                if !differing.is_empty() {
                    // Answer whole buckets, starting at a rotating offset, up to `ae_max_keys` entries: a
                    // reply never grows with the data set, and later rounds cover the rest.
                    let start = self.ae_offset % differing.len();
                    self.ae_offset = self.ae_offset.wrapping_add(1);
                    differing.rotate_left(start);
                    let counts = self.bucket_counts(from, store);
                    let mut answered = Vec::new();
                    let mut total = 0usize;
                    for bucket in differing {
                        let more = counts.get(bucket as usize).copied().unwrap_or(0);
                        if !answered.is_empty() && total + more > self.config.ae_max_keys {
                            break;
                        }
                        total += more;
                        answered.push(bucket);
                    }
                    let entries = self.entries_in(from, store, &answered);
                    let differing = answered;
                    out.push(Effect::Send {
                        to: from.clone(),
                        msg: PeerMessage::AeEntries {
                            buckets: differing,
                            entries,
                        },
                    });
                }
            }
            PeerMessage::AeEntries { buckets, entries } => {
                let ours: BTreeMap<String, u64> =
                    self.entries_in(from, store, &buckets).into_iter().collect();
                let theirs: BTreeMap<String, u64> = entries.into_iter().collect();
                let mut push = Vec::new();
                let mut pull = Vec::new();
                for (key, hash) in &ours {
                    if theirs.get(key) != Some(hash) {
                        push.push(key.clone());
                    }
                }
                for (key, hash) in &theirs {
                    if ours.get(key) != Some(hash) {
                        pull.push(key.clone());
                    }
                }
                push.truncate(self.config.ae_max_keys);
                pull.truncate(self.config.ae_max_keys);
                self.stats.ae_keys_repaired += (push.len() + pull.len()) as u64;
                for key in push {
                    if let Some(state) = store.state(&key) {
                        self.send_state(from, &key, state, now_ms, &mut out);
                    }
                }
                if !pull.is_empty() {
                    out.push(Effect::Send {
                        to: from.clone(),
                        msg: PeerMessage::AePull { keys: pull },
                    });
                }
            }
            PeerMessage::AePull { keys } => {
                for key in keys.into_iter().take(self.config.ae_max_keys) {
                    if let Some(state) = store.state(&key) {
                        self.send_state(from, &key, state, now_ms, &mut out);
                    }
                }
            }
            PeerMessage::HandoffDone => {
                self.handoff_received.insert(from.clone());
            }
            PeerMessage::ReadState { req, key } => {
                out.push(Effect::Send {
                    to: from.clone(),
                    msg: PeerMessage::ReadStateReply {
                        req,
                        state: store.state(&key),
                    },
                });
            }
            PeerMessage::ReadStateReply { req, state } => {
                out.push(Effect::ReadReply {
                    from: from.clone(),
                    req,
                    state,
                });
            }
        }
        out
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

    /// Changes this node's own membership state (join, leave) and announces it.
    pub fn set_own_state(&mut self, addr: &str, state: MemberState) {
        self.table.set(&self.me.clone(), addr, state);
        self.dirty_table = true;
        self.rebuild_rings();
        if state == MemberState::Leaving {
            self.leave = None; // computed on the next tick
        }
    }

    /// Whether `peer` and this node both replicate `key`.
    fn shared(&self, key: &str, peer: &NodeId) -> bool {
        let replicas = self.replicas(key);
        replicas.contains(peer) && replicas.contains(&self.me)
    }

    fn bucket(&self, key: &str) -> usize {
        (Ring::position(key.as_bytes()) % u64::from(self.config.ae_buckets.max(1))) as usize
    }

    /// The anti-entropy digests of the keys this node shares with `peer` (one per bucket).
    pub fn digests(&self, peer: &NodeId, store: &dyn LocalStore) -> Vec<u64> {
        let mut buckets = vec![0u64; self.config.ae_buckets.max(1) as usize];
        store.for_each_key(&mut |key, hash| {
            if self.shared(key, peer) {
                let b = self.bucket(key);
                // Order-independent combination of the key and its state hash.
                buckets[b] =
                    buckets[b].wrapping_add(ring_hash(key.as_bytes()) ^ hash.rotate_left(17));
            }
        });
        buckets
    }

    fn bucket_counts(&self, peer: &NodeId, store: &dyn LocalStore) -> Vec<usize> {
        let mut counts = vec![0usize; self.config.ae_buckets.max(1) as usize];
        store.for_each_key(&mut |key, _| {
            if self.shared(key, peer) {
                counts[self.bucket(key)] += 1;
            }
        });
        counts
    }

    fn entries_in(
        &self,
        peer: &NodeId,
        store: &dyn LocalStore,
        buckets: &[u32],
    ) -> Vec<(String, u64)> {
        let wanted: BTreeSet<u32> = buckets.iter().copied().collect();
        let mut entries = Vec::new();
        store.for_each_key(&mut |key, hash| {
            if wanted.contains(&(self.bucket(key) as u32)) && self.shared(key, peer) {
                entries.push((key.to_owned(), hash));
            }
        });
        entries
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
    /// advance.
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
                out.push(Effect::Send {
                    to: peer,
                    msg: PeerMessage::Gossip {
                        table: self.table.clone(),
                    },
                });
            }
        }

        if now_ms >= self.next_hint_ms {
            self.next_hint_ms = now_ms + self.config.hint_replay_ms;
            self.replay_hints(store, now_ms, &mut out);
        }

        let left = self
            .table
            .get(&self.me)
            .is_some_and(|m| m.state == MemberState::Left);
        if now_ms >= self.next_ae_ms {
            self.scan_orphans(store);
        }
        if now_ms >= self.next_ae_ms && !left {
            self.next_ae_ms = now_ms + self.config.anti_entropy_ms;
            let peers: Vec<NodeId> = self
                .peers()
                .into_iter()
                .filter(|p| self.liveness(p, now_ms) != Liveness::Down)
                .collect();
            if !peers.is_empty() {
                let peer = peers[self.ae_cursor % peers.len()].clone();
                self.ae_cursor = self.ae_cursor.wrapping_add(1);
                self.stats.ae_rounds += 1;
                out.push(Effect::Send {
                    msg: PeerMessage::AeDigest {
                        buckets: self.digests(&peer, store),
                    },
                    to: peer,
                });
            }
        }

        if left && now_ms >= self.next_ae_ms {
            self.next_ae_ms = now_ms + self.config.anti_entropy_ms;
        }
        self.advance_handoffs(store, now_ms, gossip_due, &mut out);
        self.move_orphans(store, now_ms, &mut out);
        out
    }

    /// Queues every key this node holds but does not replicate (and is not already moving).
    fn scan_orphans(&mut self, store: &dyn LocalStore) {
        let n = self.config.replication_factor;
        let mut found = Vec::new();
        store.for_each_key(&mut |key, hash| {
            if !self.orphan_hashes.contains_key(key)
                && self.kept_orphans.get(key) != Some(&hash)
                && !self.replicas(key).contains(&self.me)
            {
                found.push((key.to_owned(), hash));
            }
        });
        for (key, hash) in found {
            let targets = self.placement.current.preference_list(key.as_bytes(), n);
            if targets.is_empty() {
                continue;
            }
            self.orphan_hashes.insert(key.clone(), hash);
            self.orphans.pending.push((key, targets));
        }
    }

    /// Pushes orphaned keys to their replicas; once every replica acknowledged, removes them here unless
    /// they were written in the meantime.
    fn move_orphans(&mut self, store: &dyn LocalStore, now_ms: u64, out: &mut Vec<Effect>) {
        if self.orphan_hashes.is_empty() {
            return;
        }
        let mut h = std::mem::replace(&mut self.orphans, Handoff::new(Vec::new()));
        self.push_batch(&mut h, store, now_ms, out);
        let in_progress: BTreeSet<String> = h
            .pending
            .iter()
            .map(|(k, _)| k.clone())
            .chain(h.awaiting.keys().map(|(_, k)| k.clone()))
            .collect();
        let done: Vec<(String, u64)> = self
            .orphan_hashes
            .iter()
            .filter(|(k, _)| !in_progress.contains(*k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, hash) in done {
            self.orphan_hashes.remove(&key);
            if self.replicas(&key).contains(&self.me) {
                continue;
            }
            let own = store
                .state(&key)
                .is_some_and(|p| carries_identity_of(&p, &self.me));
            if own {
                self.kept_orphans.insert(key, hash);
            } else if store.remove_if_unchanged(&key, hash).unwrap_or(false) {
                self.stats.orphans_moved += 1;
            }
        }
        self.orphans = h;
    }

    fn replay_hints(&mut self, store: &dyn LocalStore, now_ms: u64, out: &mut Vec<Effect>) {
        let targets: Vec<NodeId> = self.hints.keys().cloned().collect();
        // A node that left hears from nobody (nobody gossips to it), so its detector cannot be trusted:
        // it keeps trying its remaining hints.
        let left = self
            .table
            .get(&self.me)
            .is_some_and(|m| m.state == MemberState::Left);
        for target in targets {
            if !left && self.liveness(&target, now_ms) == Liveness::Down {
                continue;
            }
            if self
                .table
                .get(&target)
                .is_none_or(|m| m.state == MemberState::Left)
            {
                // The target left for good: its ranges moved; anti-entropy with the new owners covers them.
                if let Some(q) = self.hints.remove(&target) {
                    self.stats.hints_dropped += q.keys.len() as u64;
                    for key in q.keys.into_keys() {
                        self.hint_changes
                            .push(HintChange::Removed(target.clone(), key));
                    }
                }
                continue;
            }
            if !left && self.liveness(&target, now_ms) == Liveness::Down {
                continue;
            }
            let batch: Vec<String> = self
                .hints
                .get(&target)
                .map(|q| {
                    q.keys
                        .keys()
                        .filter(|k| !self.inflight.contains_key(&(target.clone(), (*k).clone())))
                        .take(self.config.hint_batch)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for key in batch {
                match store.state(&key) {
                    Some(state) => {
                        self.send_state(&target, &key, state, now_ms, out);
                    }
                    None => {
                        self.remove_hint(&target, &key, u64::MAX);
                    }
                }
            }
        }
    }

    fn all_keys(store: &dyn LocalStore) -> Vec<String> {
        let mut keys = Vec::new();
        store.for_each_key(&mut |k, _| keys.push(k.to_owned()));
        keys
    }

    fn own_addr(&self) -> Option<String> {
        self.table.get(&self.me).map(|m| m.addr.clone())
    }

    fn advance_handoffs(
        &mut self,
        store: &dyn LocalStore,
        now_ms: u64,
        gossip_due: bool,
        out: &mut Vec<Effect>,
    ) {
        let n = self.config.replication_factor;
        let my_state = self.table.get(&self.me).map(|m| m.state);

        if my_state == Some(MemberState::Active) {
            let joiners: Vec<NodeId> = self
                .table
                .members
                .values()
                .filter(|m| m.state == MemberState::Joining && m.id != self.me)
                .map(|m| m.id.clone())
                .collect();
            // Forget joiners that are no longer joining (done, or gave up).
            self.join_pushes.retain(|j, _| joiners.contains(j));
            self.join_done.retain(|j| joiners.contains(j));
            for joiner in &joiners {
                if self.join_done.contains(joiner) || self.join_pushes.contains_key(joiner) {
                    continue;
                }
                let pending = Self::all_keys(store)
                    .into_iter()
                    .filter(|k| {
                        let now_list = self.placement.current.preference_list(k.as_bytes(), n);
                        now_list.contains(&self.me)
                            && !now_list.contains(joiner)
                            && self
                                .placement
                                .target
                                .preference_list(k.as_bytes(), n)
                                .contains(joiner)
                    })
                    .map(|k| (k, vec![joiner.clone()]))
                    .collect();
                self.join_pushes
                    .insert(joiner.clone(), Handoff::new(pending));
            }
            let pushing: Vec<NodeId> = self.join_pushes.keys().cloned().collect();
            for joiner in pushing {
                let Some(mut h) = self.join_pushes.remove(&joiner) else {
                    continue;
                };
                if self.push_batch(&mut h, store, now_ms, out) {
                    self.join_done.insert(joiner.clone());
                    out.push(Effect::Send {
                        to: joiner,
                        msg: PeerMessage::HandoffDone,
                    });
                } else {
                    self.join_pushes.insert(joiner, h);
                }
            }
            // HandoffDone can be lost: repeat it with every gossip round while the joiner still joins.
            if gossip_due {
                for joiner in &self.join_done {
                    out.push(Effect::Send {
                        to: joiner.clone(),
                        msg: PeerMessage::HandoffDone,
                    });
                }
            }
        }

        if my_state == Some(MemberState::Joining) {
            // Seeds known only from configuration (version 0) are not members yet; and a member this node
            // never heard from is waited for, not written off as down.
            let any_active = self
                .table
                .members
                .values()
                .any(|m| m.state == MemberState::Active && m.version > 0);
            let waiting = self.table.members.values().any(|m| {
                m.state == MemberState::Active
                    && m.id != self.me
                    && !self.handoff_received.contains(&m.id)
                    && (self.detector.last_heard(&m.id).is_none()
                        || self.liveness(&m.id, now_ms) != Liveness::Down)
            });
            if any_active && !waiting {
                if let Some(addr) = self.own_addr() {
                    self.set_own_state(&addr, MemberState::Active);
                    self.handoff_received.clear();
                }
            }
        }

        if my_state == Some(MemberState::Leaving) {
            if self.leave.is_none() {
                let pending = Self::all_keys(store)
                    .into_iter()
                    .filter_map(|k| {
                        // Every replica in the target ring gets the key, not only those that gain it:
                        // after `Left` this node takes part in no anti-entropy, so whatever it holds that a
                        // remaining replica lacks (e.g. sends lost in a crash) must be handed over now.
                        let targets: Vec<NodeId> = self
                            .placement
                            .target
                            .preference_list(k.as_bytes(), n)
                            .into_iter()
                            .filter(|t| *t != self.me)
                            .collect();
                        (!targets.is_empty()).then_some((k, targets))
                    })
                    .collect();
                self.leave = Some(Handoff::new(pending));
            }
            if let Some(mut h) = self.leave.take() {
                // Done only when the handoff is acknowledged and nothing this node coordinated is still
                // unreplicated (in flight or hinted): after `Left` nobody talks to it any more.
                let pushed = self.push_batch(&mut h, store, now_ms, out);
                let quiet = self.inflight.is_empty()
                    && self.writes_in_progress == 0
                    && self.hints.values().all(|q| q.keys.is_empty());
                if pushed && quiet {
                    if let Some(addr) = self.own_addr() {
                        self.set_own_state(&addr, MemberState::Left);
                    }
                } else {
                    self.leave = Some(h);
                }
            }
        }
    }

    /// Pushes the next batch of a handoff. Returns true once everything was pushed and acknowledged.
    fn push_batch(
        &mut self,
        h: &mut Handoff,
        store: &dyn LocalStore,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> bool {
        let room = self.config.handoff_batch.saturating_sub(h.awaiting.len());
        let take = h.pending.len().min(room);
        let batch: Vec<(String, Vec<NodeId>)> = h.pending.drain(..take).collect();
        for (key, targets) in batch {
            if let Some(state) = store.state(&key) {
                for t in targets {
                    self.stats.handoff_keys += 1;
                    let seq = self.send_state(&t, &key, state.clone(), now_ms, out);
                    h.awaiting
                        .insert((t, key.clone()), (seq, now_ms + self.config.rpc_timeout_ms));
                }
            }
        }
        // Unacknowledged pushes go back to the queue.
        let expired: Vec<(NodeId, String)> = h
            .awaiting
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for (t, key) in expired {
            h.awaiting.remove(&(t.clone(), key.clone()));
            h.pending.push((key, vec![t]));
        }
        h.pending.is_empty() && h.awaiting.is_empty()
    }

    fn note_handoff_ack(&mut self, from: &NodeId, key: &str, seq: u64) {
        let entry = (from.clone(), key.to_owned());
        let matches = |h: &Handoff| h.awaiting.get(&entry).is_some_and(|(s, _)| *s == seq);
        let orphans = std::iter::once(&mut self.orphans);
        for h in self
            .join_pushes
            .values_mut()
            .chain(self.leave.as_mut())
            .chain(orphans)
        {
            if matches(h) {
                h.awaiting.remove(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::flag::CausalContext;
    use crate::hlc::Clock;
    use crate::limits::Limits;
    use crate::profile::FlagUpdate;

    #[derive(Default)]
    struct Store(RefCell<BTreeMap<String, Profile>>);

    impl LocalStore for Store {
        fn state(&self, key: &str) -> Option<Profile> {
            self.0.borrow().get(key).cloned()
        }
        fn merge_remote(&self, key: &str, s: &Profile) -> Result<(), String> {
            self.0
                .borrow_mut()
                .entry(key.to_owned())
                .or_default()
                .merge(s);
            Ok(())
        }
        fn for_each_key(&self, f: &mut dyn FnMut(&str, u64)) {
            for (k, p) in self.0.borrow().iter() {
                f(k, state_hash(p));
            }
        }
        fn remove_if_unchanged(&self, key: &str, expected: u64) -> Result<bool, String> {
            let mut d = self.0.borrow_mut();
            if d.get(key).map(state_hash) == Some(expected) {
                d.remove(key);
                return Ok(true);
            }
            Ok(false)
        }
    }

    /// Four nodes on a perfect network, stepped by hand.
    struct Cluster {
        ids: Vec<NodeId>,
        stores: Vec<Store>,
        repls: Vec<Replication>,
        now: u64,
    }

    impl Cluster {
        fn new() -> Cluster {
            let ids: Vec<NodeId> = (1..=4)
                .map(|i| NodeId::new(format!("n{i}")).expect("valid"))
                .collect();
            let mut table = MembershipTable::default();
            for id in &ids {
                table.set(id, "x", MemberState::Active);
            }
            let config = ReplicationConfig {
                vnodes: 16,
                anti_entropy_ms: 400,
                ..ReplicationConfig::default()
            };
            let repls = ids
                .iter()
                .map(|id| {
                    Replication::new(
                        id.clone(),
                        config.clone(),
                        table.clone(),
                        BTreeMap::new(),
                        0,
                    )
                })
                .collect();
            Cluster {
                stores: ids.iter().map(|_| Store::default()).collect(),
                ids,
                repls,
                now: 0,
            }
        }

        fn index(&self, id: &NodeId) -> usize {
            self.ids.iter().position(|i| i == id).expect("member")
        }

        fn deliver(&mut self, from: usize, effects: Vec<Effect>) {
            let mut queue: Vec<(usize, Effect)> = effects.into_iter().map(|e| (from, e)).collect();
            while let Some((f, e)) = queue.pop() {
                if let Effect::Send { to, msg } = e {
                    let t = self.index(&to);
                    let from_id = self.ids[f].clone();
                    let out = self.repls[t].handle(&from_id, msg, &self.stores[t], self.now);
                    queue.extend(out.into_iter().map(|e| (t, e)));
                }
            }
        }

        fn run(&mut self, ms: u64) {
            let end = self.now + ms;
            while self.now < end {
                self.now += 10;
                for i in 0..self.ids.len() {
                    let out = self.repls[i].tick(&self.stores[i], self.now);
                    self.deliver(i, out);
                }
            }
        }

        /// A key node `x` does not replicate.
        fn foreign_key(&self, x: usize) -> String {
            (0..1000)
                .map(|i| format!("k{i}"))
                .find(|k| !self.repls[x].replicas(k).contains(&self.ids[x]))
                .expect("some key is elsewhere")
        }

        fn write(&mut self, at: usize, key: &str, f: impl FnOnce(&mut Profile)) {
            assert!(self.repls[at].begin_local_write());
            f(self.stores[at]
                .0
                .borrow_mut()
                .entry(key.to_owned())
                .or_default());
            let out = self.repls[at].on_local_write(key, &self.stores[at], self.now);
            self.deliver(at, out);
        }
    }

    /// A node that coordinated sloppy increments hands the key over but keeps its slot: a second sloppy
    /// increment must add to the first, not start a new slot that replaces it everywhere.
    #[test]
    fn repeated_sloppy_increments_all_count() {
        let mut c = Cluster::new();
        c.run(500);
        let x = 3;
        let key = c.foreign_key(x);
        let mut clock = Clock::new(c.ids[x].clone(), 1_000);
        let me = c.ids[x].clone();
        let ts = clock.tick(c.now);
        c.write(x, &key, |p| {
            p.increment(&[("c", 3)], &me, ts, &Limits::default())
                .expect("valid");
        });
        c.run(2_000);
        let ts = clock.tick(c.now);
        c.write(x, &key, |p| {
            p.increment(&[("c", 1)], &me, ts, &Limits::default())
                .expect("valid");
        });
        c.run(2_000);
        for r in c.repls[0].replicas(&key) {
            let i = c.index(&r);
            let v = c.stores[i].state(&key).expect("replicated").counters["c"].value();
            assert_eq!(v, 4, "{r}: acknowledged 3 + 1");
        }
    }

    /// Same for flags: the sloppy coordinator must not reissue a dot a replica has already seen.
    #[test]
    fn repeated_sloppy_flag_writes_keep_their_siblings() {
        let mut c = Cluster::new();
        c.run(500);
        let x = 3;
        let key = c.foreign_key(x);
        let mut clock = Clock::new(c.ids[x].clone(), 1_000);
        let empty = CausalContext::default();
        let m = clock.stamp(c.now);
        let now = c.now;
        c.write(x, &key, |p| {
            let u = FlagUpdate {
                name: "f",
                value: true,
                context: &empty,
                marker: m,
                expires_at_ms: None,
            };
            p.set_flag(u, now, &Limits::default()).expect("valid");
        });
        c.run(2_000);
        // A client reads at a replica and overwrites with that context.
        let r = c.index(&c.repls[0].replicas(&key)[0]);
        let ctx = c.stores[r].state(&key).expect("replicated").flags["f"]
            .clock
            .clone();
        let mut rclock = Clock::new(c.ids[r].clone(), 1_000);
        let m = rclock.stamp(c.now);
        let now = c.now;
        c.write(r, &key, |p| {
            let u = FlagUpdate {
                name: "f",
                value: false,
                context: &ctx,
                marker: m,
                expires_at_ms: None,
            };
            p.set_flag(u, now, &Limits::default()).expect("valid");
        });
        c.run(500);
        // A new sloppy write at x that did not see that overwrite: concurrent, so it must survive.
        c.now += 10;
        let m = clock.stamp(c.now);
        let now = c.now;
        c.write(x, &key, |p| {
            let u = FlagUpdate {
                name: "f",
                value: true,
                context: &empty,
                marker: m,
                expires_at_ms: None,
            };
            p.set_flag(u, now, &Limits::default()).expect("valid");
        });
        c.run(2_000);
        let f = c.stores[r].state(&key).expect("replicated").flags["f"].clone();
        assert_eq!(
            f.siblings.len(),
            2,
            "the concurrent write must be a sibling: {f:?}"
        );
    }

    /// Orphans without this node's identity are handed over and removed here.
    #[test]
    fn plain_orphans_move_to_their_replicas() {
        let mut c = Cluster::new();
        c.run(500);
        let x = 3;
        let key = c.foreign_key(x);
        let mut clock = Clock::new(c.ids[x].clone(), 1_000);
        let m = clock.stamp(c.now);
        c.write(x, &key, |p| {
            let v = crate::value::Value::I64(1);
            let u = crate::profile::GaugeUpdate {
                name: "g",
                value: &v,
                expires_at_ms: None,
            };
            p.put_gauges(&[u], &m, &Limits::default()).expect("valid");
        });
        c.run(2_000);
        assert!(
            c.stores[x].state(&key).is_none(),
            "moved away from the non-replica"
        );
        for r in c.repls[0].replicas(&key) {
            assert!(c.stores[c.index(&r)].state(&key).is_some(), "{r} has it");
        }
    }

    /// A node that has left refuses client writes.
    #[test]
    fn a_left_node_refuses_writes() {
        let mut c = Cluster::new();
        c.repls[0].set_own_state("x", MemberState::Left);
        assert!(!c.repls[0].begin_local_write());
        assert!(c.repls[1].begin_local_write());
        c.repls[1].abort_local_write();
    }
}
