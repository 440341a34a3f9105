//! Anti-entropy: replicas compare hash digests of the keys they share and exchange what differs, so they
//! converge even when hints were lost (dropped over budget, lost in a crash).
//!
//! One exchange, started every `anti_entropy_ms` with the next live peer in turn:
//! 1. the initiator sends [`PeerMessage::AeDigest`]: one digest per bucket (`ae_buckets`) of the keys both
//!    replicate, an order-independent sum of `hash(key) ^ rotl(state digest)`;
//! 2. the peer answers [`PeerMessage::AeEntries`] with its `(key, digest)` entries of the buckets that
//!    differ: whole buckets from a rotating offset, at most about `ae_max_keys` entries, so a reply never
//!    grows with the data set and later rounds cover the rest;
//! 3. the initiator pushes its state of every key that differs (tracked sends, like any replication) and
//!    pulls the peer's with [`PeerMessage::AePull`].
//!
//! Digests and bucket counts come from the rolling scan ([`super::scan`]): no round walks every key to
//! compute them. Caveat: listing the entries of the buckets that differ (steps 2 and 3) still reads every
//! local key, once per side, and only when some bucket differs.

use std::collections::{BTreeMap, BTreeSet};

use crate::hlc::NodeId;
use crate::replication::{Effect, LocalStore, Replication};
use crate::wire::peer::PeerMessage;

impl Replication {
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

    /// Starts an exchange with the next live peer in turn, if it is time.
    pub(super) fn start_anti_entropy(
        &mut self,
        store: &dyn LocalStore,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        #[cfg(test)]
        if crate::knobs::active(crate::knobs::Bug::NoAntiEntropy) {
            return;
        }
        let peers: Vec<NodeId> = self
            .peers()
            .into_iter()
            .filter(|p| self.liveness(p, now_ms) != crate::cluster::detector::Liveness::Down)
            .collect();
        // Digests come from the rolling scan: none until it has covered every key once.
        if peers.is_empty() || !self.scan.complete() {
            return;
        }
        let peer = peers[self.ae_cursor % peers.len()].clone();
        self.ae_cursor = self.ae_cursor.wrapping_add(1);
        self.stats.ae_rounds += 1;
        let buckets = self.digests(&peer, store);
        out.push(Effect::send(peer, PeerMessage::AeDigest { buckets }));
    }

    /// Step 2: answer a peer's digests with our entries in (some of) the buckets that differ.
    pub(super) fn on_ae_digest(
        &mut self,
        from: &NodeId,
        buckets: Vec<u64>,
        store: &dyn LocalStore,
        out: &mut Vec<Effect>,
    ) {
        // Not answered before the rolling scan has covered every key once (the peer asks again).
        if !self.scan.complete() {
            return;
        }
        let ours = self.digests(from, store);
        if ours.len() != buckets.len() {
            return;
        }
        let mut differing: Vec<u32> = (0..ours.len())
            .filter(|&i| ours[i] != buckets[i])
            .map(|i| i as u32)
            .collect();
        if differing.is_empty() {
            return;
        }
        // Answer whole buckets, starting at a rotating offset, up to `ae_max_keys` entries: a reply never
        // grows with the data set, and later rounds cover the rest.
        let start = self.ae_offset % differing.len();
        self.ae_offset = self.ae_offset.wrapping_add(1);
        differing.rotate_left(start);
        let counts = self.bucket_counts(from);
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
        out.push(Effect::send(
            from.clone(),
            PeerMessage::AeEntries {
                buckets: answered,
                entries,
            },
        ));
    }

    /// Step 3: push what the peer lacks, pull what we lack.
    pub(super) fn on_ae_entries(
        &mut self,
        from: &NodeId,
        buckets: Vec<u32>,
        entries: Vec<(String, u64)>,
        store: &dyn LocalStore,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let ours: BTreeMap<String, u64> =
            self.entries_in(from, store, &buckets).into_iter().collect();
        let theirs: BTreeMap<String, u64> = entries.into_iter().collect();
        let mut push: Vec<String> = ours
            .iter()
            .filter(|(key, hash)| theirs.get(*key) != Some(hash))
            .map(|(key, _)| key.clone())
            .collect();
        let mut pull: Vec<String> = theirs
            .iter()
            .filter(|(key, hash)| ours.get(*key) != Some(hash))
            .map(|(key, _)| key.clone())
            .collect();
        push.truncate(self.config.ae_max_keys);
        pull.truncate(self.config.ae_max_keys);
        self.stats.ae_keys_repaired += (push.len() + pull.len()) as u64;
        for key in push {
            if let Some(state) = store.state(&key) {
                self.send_state(from, &key, state, now_ms, out);
            }
        }
        if !pull.is_empty() {
            out.push(Effect::send(
                from.clone(),
                PeerMessage::AePull { keys: pull },
            ));
        }
    }

    /// The peer asked for our state of `keys`.
    pub(super) fn on_ae_pull(
        &mut self,
        from: &NodeId,
        keys: Vec<String>,
        store: &dyn LocalStore,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        for key in keys.into_iter().take(self.config.ae_max_keys) {
            if let Some(state) = store.state(&key) {
                self.send_state(from, &key, state, now_ms, out);
            }
        }
    }
}
