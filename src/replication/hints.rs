//! Hinted handoff: what a replica missed while it was down or unreachable, replayed when it is back.
//!
//! A hint is `(target, key)`; it carries no data (a replay sends the key's *current* state, which merges
//! as a join). Hints are bounded in bytes per target: past the budget a hint is dropped and counted, and
//! anti-entropy still repairs that key. Every change to the hint set comes out as an
//! [`Effect::PersistHint`] (one record per hint, so persisting costs the change, not the whole set); a
//! crash can still lose the hints of the last moments where the runtime had not flushed them, and
//! anti-entropy repairs what they would have.
//!
//! A hint is removed only by an acknowledgement of a send made *after* the hint was (last) recorded, so a
//! stale ack can never clear a newer hint.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::detector::Liveness;
use crate::cluster::membership::MemberState;
use crate::hlc::NodeId;
use crate::replication::{Effect, LocalStore, Replication};

/// The hints held for one target.
#[derive(Debug, Clone, Default)]
pub(super) struct HintQueue {
    /// Hinted keys, with the send sequence number current when the hint was (last) recorded: only an
    /// ack of a later send proves the target has the hinted state.
    pub(super) keys: BTreeMap<String, u64>,
    /// Bytes of key held (what the budget counts).
    pub(super) bytes: usize,
}

/// A change to the hint set, for the runtime to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintChange {
    /// `(target, key)` is now hinted.
    Added(NodeId, String),
    /// `(target, key)` is no longer hinted.
    Removed(NodeId, String),
}

impl Replication {
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

    pub(super) fn add_hint(&mut self, target: &NodeId, key: &str) {
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
        self.persist.push(Effect::PersistHint(HintChange::Added(
            target.clone(),
            key.to_owned(),
        )));
    }

    /// Removes the hint for `(target, key)` if the acknowledged send `acked_seq` was made after the hint
    /// was recorded (or unconditionally with `u64::MAX`).
    pub(super) fn remove_hint(&mut self, target: &NodeId, key: &str, acked_seq: u64) -> bool {
        if let Some(q) = self.hints.get_mut(target) {
            if q.keys.get(key).is_some_and(|created| acked_seq >= *created) {
                q.keys.remove(key);
                q.bytes -= key.len();
                self.persist.push(Effect::PersistHint(HintChange::Removed(
                    target.clone(),
                    key.to_owned(),
                )));
                return true;
            }
        }
        false
    }

    pub(super) fn replay_hints(
        &mut self,
        store: &dyn LocalStore,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let targets: Vec<NodeId> = self.hints.keys().cloned().collect();
        // A node that left hears from nobody (nobody gossips to it), so its detector cannot be trusted:
        // it keeps trying its remaining hints.
        let left = self.has_left();
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
                        self.persist.push(Effect::PersistHint(HintChange::Removed(
                            target.clone(),
                            key,
                        )));
                    }
                }
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
}
