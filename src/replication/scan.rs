//! The rolling scan: the only place the replication state machine walks the keys it holds, one bounded
//! slice at a time.
//!
//! Anti-entropy needs, for every peer, a digest per bucket of the keys both replicate, and the orphan
//! handoff needs the keys this node holds but no longer replicates. Computing either over every key at
//! once holds the state machine (and, in the node, its mutex, which every replicated write takes) for
//! O(keys): at a million profiles, about a second every round. Instead:
//!
//! - The store is divided into [`LocalStore::slices`] slices (the node's engine: its lock shards). Every
//!   `anti_entropy_ms / slices` one slice is scanned: each of its keys is checked for being an orphan,
//!   and its contribution to every peer's bucket digests and counts is recorded for that slice.
//! - A peer's digest is the sum of the slices' recorded contributions (order-independent sums, so slices
//!   combine by addition): O(slices × buckets), no key scanned. Likewise the bucket counts a reply budgets
//!   with.
//! - Anti-entropy starts only after one whole rotation, so a digest never covers only part of the keys.
//!
//! Guarantees: each key is scanned once per rotation (`anti_entropy_ms`), as before; a single-node ring
//! scans nothing. Caveats: a slice's contribution is as old as its last scan (at most one rotation), so
//! two replicas may see buckets differ that have since converged, or see equal digests until the next
//! rotation for a write made since: the cost is one more exchange or one more rotation of delay, never a
//! wrong repair (the entries exchanged are read fresh). Listing the entries of differing buckets still
//! reads every key (only when buckets differ, bounded in what it returns by `ae_max_keys`).

use std::collections::BTreeMap;

use crate::cluster::ring::{ring_hash, Ring};
use crate::hlc::NodeId;
use crate::replication::{LocalStore, Replication};

/// One bucket's recorded contribution: the digest sum and the number of keys.
type Bucket = (u64, usize);

/// Where the rolling scan is, and what each slice contributed at its last scan.
#[derive(Debug, Clone, Default)]
pub(super) struct RollingScan {
    /// The next slice to scan.
    next: usize,
    /// Slices scanned so far (a whole rotation is `slices.len()`).
    scanned: usize,
    /// When the next slice is due (local ms).
    pub(super) next_ms: u64,
    /// Per slice: per peer, its buckets.
    slices: Vec<BTreeMap<NodeId, Vec<Bucket>>>,
}

impl RollingScan {
    /// Whether every slice has been scanned at least once (digests cover every key).
    pub(super) fn complete(&self) -> bool {
        !self.slices.is_empty() && self.scanned >= self.slices.len()
    }

    /// The sum of the slices' buckets for `peer`.
    fn buckets(&self, peer: &NodeId, buckets: usize) -> Vec<Bucket> {
        let mut total = vec![(0u64, 0usize); buckets];
        for slice in &self.slices {
            if let Some(recorded) = slice.get(peer) {
                for (t, (sum, count)) in total.iter_mut().zip(recorded) {
                    t.0 = t.0.wrapping_add(*sum);
                    t.1 += count;
                }
            }
        }
        total
    }
}

/// One key's term in its bucket's digest: order-independent, sensitive to every bit of the state hash.
pub(super) fn digest_term(key: &str, hash: u64) -> u64 {
    ring_hash(key.as_bytes()) ^ hash.rotate_left(17)
}

impl Replication {
    pub(super) fn bucket(&self, key: &str) -> usize {
        (Ring::position(key.as_bytes()) % u64::from(self.config.ae_buckets.max(1))) as usize
    }

    fn buckets_len(&self) -> usize {
        self.config.ae_buckets.max(1) as usize
    }

    /// Scans the slices that are due (one per `anti_entropy_ms / slices`; more than one only when ticks
    /// came later than that, so a rotation still takes `anti_entropy_ms`): records their digests and
    /// queues their orphans.
    pub(super) fn scan_step(&mut self, store: &dyn LocalStore, now_ms: u64) {
        if now_ms < self.scan.next_ms {
            return;
        }
        let slices = store.slices().max(1);
        let interval = (self.config.anti_entropy_ms / slices as u64).max(1);
        // The first step scans one slice; a late tick catches up by at most one rotation.
        let (due, next) = if self.scan.next_ms == 0 {
            (1, now_ms + interval)
        } else {
            let due = (1 + (now_ms - self.scan.next_ms) / interval).min(slices as u64);
            (due, (self.scan.next_ms + due * interval).max(now_ms + 1))
        };
        self.scan.next_ms = next;
        // A single-node ring replicates every key here: nothing to compare, nothing orphaned.
        if self.peers().is_empty() {
            return;
        }
        for _ in 0..due {
            self.scan_slice(store, slices);
        }
    }

    /// Scans every slice now (a whole rotation, O(keys)): for tests that need complete digests at once.
    pub fn scan_everything(&mut self, store: &dyn LocalStore) {
        let slices = store.slices().max(1);
        for _ in 0..slices {
            self.scan_slice(store, slices);
        }
    }

    fn scan_slice(&mut self, store: &dyn LocalStore, slices: usize) {
        if self.scan.slices.len() != slices {
            self.scan = RollingScan {
                next_ms: self.scan.next_ms,
                slices: vec![BTreeMap::new(); slices],
                ..RollingScan::default()
            };
        }
        let slice = self.scan.next % slices;
        self.scan.next = (slice + 1) % slices;
        let buckets = self.buckets_len();
        let mut recorded: BTreeMap<NodeId, Vec<Bucket>> = BTreeMap::new();
        let mut orphans = Vec::new();
        store.for_each_key_in(slice, &mut |key, hash| {
            let replicas = self.placement.replicas(key);
            if !replicas.contains(&self.me) {
                if !self.orphan_hashes.contains_key(key)
                    && self.kept_orphans.get(key) != Some(&hash)
                {
                    orphans.push((key.to_owned(), hash));
                }
                return;
            }
            let bucket = self.bucket(key);
            let term = digest_term(key, hash);
            for peer in replicas.into_iter().filter(|p| *p != self.me) {
                let b = &mut recorded
                    .entry(peer)
                    .or_insert_with(|| vec![(0, 0); buckets])[bucket];
                b.0 = b.0.wrapping_add(term);
                b.1 += 1;
            }
        });
        self.scan.slices[slice] = recorded;
        self.scan.scanned += 1;
        self.queue_orphans(orphans);
    }

    /// The anti-entropy digests of the keys this node shares with `peer` (one per bucket), as of each
    /// slice's last scan; computed from every key now if no rotation has completed yet.
    pub fn digests(&self, peer: &NodeId, store: &dyn LocalStore) -> Vec<u64> {
        if self.scan.complete() {
            return self
                .scan
                .buckets(peer, self.buckets_len())
                .into_iter()
                .map(|(sum, _)| sum)
                .collect();
        }
        self.fresh_digests(peer, store)
    }

    /// The digests computed from every key now (O(keys)).
    pub fn fresh_digests(&self, peer: &NodeId, store: &dyn LocalStore) -> Vec<u64> {
        let mut buckets = vec![0u64; self.buckets_len()];
        store.for_each_key(&mut |key, hash| {
            if self.shared(key, peer) {
                let b = self.bucket(key);
                buckets[b] = buckets[b].wrapping_add(digest_term(key, hash));
            }
        });
        buckets
    }

    /// Keys per bucket shared with `peer`, as of each slice's last scan (a reply's budget).
    pub(super) fn bucket_counts(&self, peer: &NodeId) -> Vec<usize> {
        self.scan
            .buckets(peer, self.buckets_len())
            .into_iter()
            .map(|(_, count)| count)
            .collect()
    }

    /// Whether `peer` and this node both replicate `key`.
    pub(super) fn shared(&self, key: &str, peer: &NodeId) -> bool {
        let replicas = self.replicas(key);
        replicas.contains(peer) && replicas.contains(&self.me)
    }
}
