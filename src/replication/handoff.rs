//! Moving ranges: the handoff to a joining node, a leaving node's handoff of everything it holds, and
//! orphans (keys held by a node that does not replicate them).
//!
//! - **Join**: a joining node is in the target ring, not the current one. Every active node pushes the keys
//!   the joiner gains (where it is itself a current replica), then sends `HandoffDone` (repeated with every
//!   gossip round, since it can be lost). The joiner turns `Active` once every active member that is not
//!   down has said `HandoffDone`. Until then the old owners keep serving.
//! - **Leave**: a leaving node stays in the current ring and pushes every key it holds to its replicas in
//!   the target ring; once all of those pushes are acknowledged and nothing it coordinated is in flight or
//!   hinted, it marks itself `Left`.
//! - **Orphans**: a node that holds keys it does not replicate (a sloppy-quorum write, or a range that
//!   moved while it was down) pushes them to their replicas and, once all acknowledged, removes its copy
//!   (unless it was written meanwhile, or it carries this node's own counter slot or flag dots: see
//!   [`carries_identity_of`]). So no data is stranded outside the preference list.
//!
//! Every push is throttled (`handoff_batch` in flight) and acknowledged; unacknowledged pushes are retried.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::detector::Liveness;
use crate::cluster::membership::MemberState;
use crate::hlc::NodeId;
use crate::profile::Profile;
use crate::replication::{Effect, LocalStore, Replication};
use crate::wire::peer::PeerMessage;

/// Whether `profile` holds state that only `node` may extend: a counter slot, a window slot or flag dots
/// of one of its actors (any incarnation: the check does not need to know which one is current). A node
/// must keep such a profile (it may not forget it), or a later write there would start the slot afresh
/// (a later `first` replaces the old slot in the merge) or reuse a dot, and silently replace or lose
/// acknowledged data.
pub fn carries_identity_of(profile: &Profile, node: &NodeId) -> bool {
    let mine = |actor: &crate::hlc::Actor| actor.node == *node;
    profile.counters.values().any(|c| c.slots.keys().any(mine))
        || profile
            .windows
            .values()
            .any(|w| w.buckets.values().any(|slots| slots.keys().any(mine)))
        || profile
            .flags
            .values()
            .any(|f| f.clock.0.dots.iter().any(|(a, n)| mine(a) && *n > 0))
}

/// One throttled, acknowledged handoff.
#[derive(Debug, Clone, Default)]
pub(super) struct Handoff {
    /// Keys still to push, with their targets.
    pub(super) pending: Vec<(String, Vec<NodeId>)>,
    /// Pushes awaiting their ack: `(target, key) -> (seq, deadline)`.
    pub(super) awaiting: BTreeMap<(NodeId, String), (u64, u64)>,
}

impl Handoff {
    fn new(pending: Vec<(String, Vec<NodeId>)>) -> Self {
        Handoff {
            pending,
            awaiting: BTreeMap::new(),
        }
    }

    /// The earliest deadline of an unacknowledged push.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.awaiting.values().map(|(_, deadline)| *deadline).min()
    }
}

impl Replication {
    /// Advances this node's part in every handoff, by its own membership state.
    pub(super) fn advance_handoffs(
        &mut self,
        store: &dyn LocalStore,
        now_ms: u64,
        gossip_due: bool,
        out: &mut Vec<Effect>,
    ) {
        match self.table.get(&self.me).map(|m| m.state) {
            Some(MemberState::Active) => self.push_to_joiners(store, now_ms, gossip_due, out),
            Some(MemberState::Joining) => self.finish_join(now_ms),
            Some(MemberState::Leaving) => self.advance_leave(store, now_ms, out),
            Some(MemberState::Left) | None => {}
        }
    }

    /// As an active member: push to every joiner the keys it gains from this node, then say so.
    fn push_to_joiners(
        &mut self,
        store: &dyn LocalStore,
        now_ms: u64,
        gossip_due: bool,
        out: &mut Vec<Effect>,
    ) {
        let n = self.config.replication_factor;
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
                out.push(Effect::send(joiner, PeerMessage::HandoffDone));
            } else {
                self.join_pushes.insert(joiner, h);
            }
        }
        // HandoffDone can be lost: repeat it with every gossip round while the joiner still joins.
        if gossip_due {
            for joiner in &self.join_done {
                out.push(Effect::send(joiner.clone(), PeerMessage::HandoffDone));
            }
        }
    }

    /// As a joiner: turn active once every active member that is not down has handed over.
    fn finish_join(&mut self, now_ms: u64) {
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
                self.change_own_state(addr, MemberState::Active);
                self.handoff_received.clear();
            }
        }
    }

    /// As a leaving node: hand everything over, then mark this node `Left`.
    fn advance_leave(&mut self, store: &dyn LocalStore, now_ms: u64, out: &mut Vec<Effect>) {
        let n = self.config.replication_factor;
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
                    self.change_own_state(addr, MemberState::Left);
                }
            } else {
                self.leave = Some(h);
            }
        }
    }

    /// Queues `found`, keys this node holds but does not replicate (found by the rolling scan), for the
    /// push to their replicas.
    pub(super) fn queue_orphans(&mut self, found: Vec<(String, u64)>) {
        let n = self.config.replication_factor;
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
    pub(super) fn move_orphans(
        &mut self,
        store: &dyn LocalStore,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        if self.orphan_hashes.is_empty() {
            return;
        }
        let mut h = std::mem::take(&mut self.orphans);
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

    pub(super) fn note_handoff_ack(&mut self, from: &NodeId, key: &str, seq: u64) {
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

    fn all_keys(store: &dyn LocalStore) -> Vec<String> {
        let mut keys = Vec::new();
        store.for_each_key(&mut |k, _| keys.push(k.to_owned()));
        keys
    }

    fn own_addr(&self) -> Option<std::net::SocketAddr> {
        self.table.get(&self.me).map(|m| m.addr.0)
    }
}
