//! The routing decisions of the ring-aware [`Client`](crate::Client), free of I/O so they can be tested
//! on their own: the cached cluster view, the order in which nodes are tried for a key, the grouping of
//! a `get_many` per node, the rule that judges a node down, and the adaptive hedge delay.
//!
//! - `View`: the membership table a node sent (or, if no node could send one, a table made of the
//!   seeds), the *current* ring built from it (`Active` and `Leaving` members, exactly as the nodes build
//!   it: [`MembershipTable::current_ring`]), the replication factor N, and each member's address.
//! - `plan`: the nodes to try for one key, in order. Reads: the key's N replicas (its preference list),
//!   those not judged down first, in preference-list order, then the ones judged down (a node judged
//!   down is avoided, not banned: if every replica is down, they are still tried). Writes: the replicas
//!   not down, then every other member not down, in ring order from the key (such a node accepts the
//!   write as a sloppy-quorum coordinator and hands it on later: hinted handoff), then the replicas that
//!   are down. Reads never go to non-replicas. A node leaves the "down" group only when it answers (a
//!   request or a background probe), never because time passed, so a dead node is never put first
//!   again while it stays dead.
//! - `group_keys`: for `get_many`, each key goes to the first node of its read plan.
//! - `silent`: the failure rule. A node is judged down when, while a request to it is outstanding, the
//!   client has sent it packets and received not one in `failure_timeout_ms` (QUIC acknowledges every
//!   packet within milliseconds, even while the request itself is still being worked on).
//! - `hedge_delay` and `LatencyWindow`: how long a read waits for its first replica before it is also
//!   sent to the next one: the p99 of the last one to two seconds of reads, clamped.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use featurestore::cluster::membership::{Member, MemberAddr, MemberState, MembershipTable};
use featurestore::cluster::ring::{Ring, DEFAULT_VNODES};
use featurestore::wire::client::ClusterView;
use featurestore::NodeId;

use crate::config::{INITIAL_HEDGE_DELAY, MAX_HEDGE_DELAY};

/// The replication factor assumed when no node could describe the cluster (the node's default, N=3).
pub const FALLBACK_REPLICATION_FACTOR: u32 = 3;

/// The client's picture of the cluster.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// What the nodes said (merged over refreshes), or the seeds as a table of `Active` members at
    /// version 0.
    pub(crate) cluster: ClusterView,
    /// The current ring of `cluster.table`; never empty.
    pub(crate) ring: Ring,
    /// N, at least 1.
    pub(crate) replication_factor: usize,
    /// Where each reachable member (and each seed the table does not name) listens.
    addrs: BTreeMap<NodeId, SocketAddr>,
    /// Whether this view was made of the seeds because no node described the cluster.
    pub(crate) from_seeds: bool,
}

/// The outcome of merging a node's answer into a [`View`].
#[derive(Debug)]
pub(crate) enum Merged {
    /// Nothing new.
    Unchanged,
    /// The table or the ring parameters changed.
    Changed(View),
    /// The answer would leave no member in the current ring; it is ignored.
    EmptyRing,
}

/// An address a client can dial: neither the unspecified address nor port 0 (a node that listens on
/// `0.0.0.0` without an `advertise` address publishes such an address).
fn dialable(addr: MemberAddr) -> Option<SocketAddr> {
    let addr = addr.0;
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

impl View {
    /// A view made of the seeds alone: each an `Active` member at version 0 (ring version 0), with
    /// [`DEFAULT_VNODES`] and [`FALLBACK_REPLICATION_FACTOR`]. `seeds` must not be empty.
    pub(crate) fn from_seeds(seeds: &[(NodeId, SocketAddr)]) -> View {
        let table = MembershipTable::from_members(seeds.iter().map(|(id, addr)| Member {
            id: id.clone(),
            addr: MemberAddr(*addr),
            state: MemberState::Active,
            version: 0,
        }));
        let cluster = ClusterView {
            table,
            vnodes: DEFAULT_VNODES,
            replication_factor: FALLBACK_REPLICATION_FACTOR,
        };
        let ring = cluster.table.current_ring(cluster.vnodes);
        View {
            ring,
            replication_factor: FALLBACK_REPLICATION_FACTOR as usize,
            addrs: seeds.iter().cloned().collect(),
            cluster,
            from_seeds: true,
        }
    }

    /// The view of a node's answer; `None` if its current ring is empty.
    ///
    /// Addresses: every member that is not `Left` and whose `addr` is dialable; a member whose address
    /// is not dialable gets the address of the seed of the same name, if any; seeds that the table
    /// does not name keep their configured address (so node-directed calls can still reach them).
    pub(crate) fn from_cluster(
        cluster: ClusterView,
        seeds: &[(NodeId, SocketAddr)],
    ) -> Option<View> {
        let ring = cluster.table.current_ring(cluster.vnodes);
        if ring.is_empty() {
            return None;
        }
        let mut addrs = BTreeMap::new();
        for (id, addr) in seeds {
            if cluster.table.get(id).is_none() {
                addrs.insert(id.clone(), *addr);
            }
        }
        for member in cluster.table.members.values() {
            if member.state == MemberState::Left {
                continue;
            }
            let seed = || seeds.iter().find(|(id, _)| *id == member.id).map(|s| s.1);
            if let Some(addr) = dialable(member.addr).or_else(seed) {
                addrs.insert(member.id.clone(), addr);
            }
        }
        Some(View {
            ring,
            replication_factor: cluster.replication_factor.max(1) as usize,
            addrs,
            cluster,
            from_seeds: false,
        })
    }

    /// Merges a node's answer into this view. Membership tables merge as the nodes merge them (a join:
    /// the higher version of each member wins), so an answer from a node that has not heard the latest
    /// gossip never takes the view back; the ring parameters are taken from the answer. A view made of
    /// the seeds is replaced, not merged.
    pub(crate) fn merged(&self, answer: ClusterView, seeds: &[(NodeId, SocketAddr)]) -> Merged {
        let cluster = if self.from_seeds {
            answer
        } else {
            let mut table = self.cluster.table.clone();
            table.merge(&answer.table);
            ClusterView { table, ..answer }
        };
        if !self.from_seeds && cluster == self.cluster {
            return Merged::Unchanged;
        }
        match View::from_cluster(cluster, seeds) {
            Some(view) => Merged::Changed(view),
            None => Merged::EmptyRing,
        }
    }

    /// Where `node` listens, if known.
    pub(crate) fn addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.addrs.get(node).copied()
    }

    /// Every node with an address, by id.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.addrs.keys()
    }
}

/// The nodes to try for `key`, in order (see the [module docs](self)). `n` is the replication factor;
/// `down` says whether a node is judged down. Empty only for an empty ring.
///
/// Reads: the replicas not down, then the replicas that are down. Writes: the replicas not down, then
/// every other member not down (in ring order from the key), then the replicas that are down.
/// (Walking the ring until every member is found visits about `k ln k` tokens for `k` members, so the
/// longer write plan is cheap.)
pub(crate) fn plan(
    ring: &Ring,
    n: usize,
    key: &[u8],
    write: bool,
    down: impl Fn(&NodeId) -> bool,
) -> Vec<NodeId> {
    let n = n.max(1);
    let all = ring.preference_list(key, if write { ring.len() } else { n });
    let (replicas, others) = all.split_at(n.min(all.len()));
    let mut out: Vec<NodeId> = Vec::with_capacity(all.len());
    out.extend(replicas.iter().filter(|node| !down(node)).cloned());
    out.extend(others.iter().filter(|node| !down(node)).cloned());
    out.extend(replicas.iter().filter(|node| down(node)).cloned());
    out
}

/// Groups `keys` by the node a read of each goes to first (the first node of its read [`plan`]): one
/// `(node, indices into keys)` per node, in the order the nodes first appear; indices ascend within a
/// group. Every key is in exactly one group (none if the ring is empty).
pub(crate) fn group_keys<S: AsRef<str>>(
    ring: &Ring,
    n: usize,
    keys: &[S],
    down: impl Fn(&NodeId) -> bool,
) -> Vec<(NodeId, Vec<usize>)> {
    let mut groups: Vec<(NodeId, Vec<usize>)> = Vec::new();
    let mut slot: HashMap<NodeId, usize> = HashMap::new();
    let mut replicas = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        ring.preference_list_into(key.as_ref().as_bytes(), n.max(1), &mut replicas);
        let Some(target) = replicas
            .iter()
            .find(|node| !down(node))
            .or_else(|| replicas.first())
        else {
            continue;
        };
        match slot.get(target) {
            Some(&g) => groups[g].1.push(i),
            None => {
                slot.insert(target.clone(), groups.len());
                groups.push((target.clone(), vec![i]));
            }
        }
    }
    groups
}

/// Packet counters of one connection at one instant ([`silent`] compares two of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traffic {
    /// The connection's `stable_id` (counters of different connections are not comparable).
    pub(crate) conn: usize,
    /// UDP datagrams received from the node on it so far.
    pub(crate) rx: u64,
    /// UDP datagrams sent to the node on it so far.
    pub(crate) tx: u64,
}

/// Whether a node stayed silent between two readings of its connection's counters: the client sent
/// packets (a request, or QUIC's retransmissions of one) and not a single one came back, not even an
/// acknowledgement. A live node acknowledges within its `max_ack_delay` (25 ms for quinn) even while it
/// is still working on the request, so silence over a whole failure timeout means the process is gone
/// (or paused, or cut off); a node that is merely slow is never judged by it. Readings of different
/// connections say nothing.
pub(crate) fn silent(before: Traffic, now: Traffic) -> bool {
    before.conn == now.conn && now.rx == before.rx && now.tx > before.tx
}

/// The hedge delay of a read: `configured` is `hedge_delay_us` (`Some(0)`: no hedging, `Some(us)`: fixed),
/// otherwise the observed `p99` clamped to `[min, MAX_HEDGE_DELAY]`, or [`INITIAL_HEDGE_DELAY`] (at least
/// `min`) while there is no p99 yet.
pub(crate) fn hedge_delay(
    configured: Option<u64>,
    min: Duration,
    p99: Option<Duration>,
) -> Option<Duration> {
    let min = min.min(MAX_HEDGE_DELAY);
    match configured {
        Some(0) => None,
        Some(us) => Some(Duration::from_micros(us)),
        None => Some(match p99 {
            None => INITIAL_HEDGE_DELAY.max(min),
            Some(p99) => p99.clamp(min, MAX_HEDGE_DELAY),
        }),
    }
}

/// Buckets per octave of [`LatencyWindow`]: 8 (each bucket spans about 9%).
const BUCKETS_PER_OCTAVE: f64 = 8.0;

/// Buckets of [`LatencyWindow`]: enough for 2^32 µs (over an hour); longer latencies share the last one.
const BUCKETS: usize = 32 * 8;

/// How long one window of [`LatencyWindow`] lasts; the p99 is taken over the current and the previous
/// window, so it follows a change within two windows.
pub(crate) const LATENCY_WINDOW: Duration = Duration::from_secs(1);

/// Fewest samples in the current and previous window for a p99 to be reported.
pub(crate) const MIN_LATENCY_SAMPLES: u64 = 32;

/// How many samples are recorded between two recomputations of the p99 (it is also recomputed when a
/// window ends).
const RECOMPUTE_EVERY: u32 = 16;

/// Recent latencies of one class of requests, for the adaptive hedge delay: log-bucketed histograms of
/// the current and the previous [`LATENCY_WINDOW`]. Time is passed in, so the rules are testable.
#[derive(Debug, Clone)]
pub(crate) struct LatencyWindow {
    current: Box<[u32; BUCKETS]>,
    previous: Box<[u32; BUCKETS]>,
    started: Instant,
    p99: Option<Duration>,
    since_recompute: u32,
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_micros().min(u128::from(u32::MAX)) as f64;
    ((us + 1.0).log2() * BUCKETS_PER_OCTAVE) as usize
}

/// The largest latency of bucket `i` (its upper edge), what a percentile falling in it reports.
fn bucket_top(i: usize) -> Duration {
    let us = 2f64.powf((i + 1) as f64 / BUCKETS_PER_OCTAVE) - 1.0;
    Duration::from_micros(us.ceil() as u64)
}

impl LatencyWindow {
    /// An empty window starting at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        LatencyWindow {
            current: Box::new([0; BUCKETS]),
            previous: Box::new([0; BUCKETS]),
            started: now,
            p99: None,
            since_recompute: 0,
        }
    }

    /// Records one latency observed at `now`.
    pub(crate) fn record(&mut self, latency: Duration, now: Instant) {
        self.roll(now);
        let i = bucket_of(latency).min(BUCKETS - 1);
        self.current[i] = self.current[i].saturating_add(1);
        self.since_recompute += 1;
        if self.since_recompute >= RECOMPUTE_EVERY || self.p99.is_none() {
            self.recompute();
        }
    }

    /// The p99 of the current and previous window at `now`; `None` with fewer than
    /// [`MIN_LATENCY_SAMPLES`] samples.
    pub(crate) fn p99(&mut self, now: Instant) -> Option<Duration> {
        self.roll(now);
        self.p99
    }

    /// Starts a new window if the current one is over (two if it is long over).
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < LATENCY_WINDOW {
            return;
        }
        if age >= 2 * LATENCY_WINDOW {
            self.previous.fill(0);
        } else {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.current.fill(0);
        self.started = now;
        self.recompute();
    }

    fn recompute(&mut self) {
        self.since_recompute = 0;
        let count = |i: usize| u64::from(self.current[i]) + u64::from(self.previous[i]);
        let total: u64 = (0..BUCKETS).map(count).sum();
        if total < MIN_LATENCY_SAMPLES {
            self.p99 = None;
            return;
        }
        // The smallest latency at or below which 99% of the samples lie.
        let rank = total - total / 100;
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += count(i);
            if seen >= rank {
                self.p99 = Some(bucket_top(i));
                return;
            }
        }
        self.p99 = Some(bucket_top(BUCKETS - 1));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn ring(n: usize) -> Ring {
        Ring::new(1, (1..=n).map(|i| id(&format!("n{i}"))), 64)
    }

    fn none(_: &NodeId) -> bool {
        false
    }

    fn member(name: &str, addr: &str, state: MemberState, version: u64) -> Member {
        Member {
            id: id(name),
            addr: MemberAddr(addr.parse().expect("a test address")),
            state,
            version,
        }
    }

    fn seeds() -> Vec<(NodeId, SocketAddr)> {
        vec![
            (id("n1"), "127.0.0.1:7401".parse().unwrap()),
            (id("s9"), "127.0.0.1:7409".parse().unwrap()),
        ]
    }

    #[test]
    fn reads_try_the_replicas_in_order_down_ones_last() {
        let ring = ring(5);
        for k in 0..200 {
            let key = format!("user-{k}");
            let replicas = ring.preference_list(key.as_bytes(), 3);
            assert_eq!(plan(&ring, 3, key.as_bytes(), false, none), replicas);
            // The owner is down: the other replicas first, the owner last.
            let owner = replicas[0].clone();
            let p = plan(&ring, 3, key.as_bytes(), false, |n| *n == owner);
            assert_eq!(p, vec![replicas[1].clone(), replicas[2].clone(), owner]);
            // Every replica is down: all still tried, in preference order; never a non-replica.
            let p = plan(&ring, 3, key.as_bytes(), false, |_| true);
            assert_eq!(p, replicas);
        }
    }

    #[test]
    fn writes_go_to_other_live_members_after_the_live_replicas() {
        let ring = ring(5);
        for k in 0..200 {
            let key = format!("user-{k}");
            let replicas = ring.preference_list(key.as_bytes(), 2);
            let all = ring.preference_list(key.as_bytes(), 5);
            assert_eq!(all[..2], replicas[..]);
            // The replicas first, then the other members in ring order.
            assert_eq!(plan(&ring, 2, key.as_bytes(), true, none), all);
            let first = replicas[0].clone();
            let p = plan(&ring, 2, key.as_bytes(), true, |n| *n == first);
            assert_eq!(p[0], replicas[1]);
            assert_eq!(p[1..4], all[2..]);
            assert_eq!(p[4], first);

            // Both replicas and one other member are down: the two live others in ring order, then the
            // replicas as a last resort.
            let down: HashSet<NodeId> = [replicas[0].clone(), replicas[1].clone(), all[3].clone()]
                .into_iter()
                .collect();
            let p = plan(&ring, 2, key.as_bytes(), true, |n| down.contains(n));
            assert_eq!(
                p,
                vec![
                    all[2].clone(),
                    all[4].clone(),
                    replicas[0].clone(),
                    replicas[1].clone()
                ]
            );
        }
    }

    #[test]
    fn plans_on_small_and_empty_rings() {
        let one = ring(1);
        assert_eq!(plan(&one, 3, b"k", true, |_| true), vec![id("n1")]);
        let empty = Ring::new(0, Vec::<NodeId>::new(), 64);
        assert!(plan(&empty, 3, b"k", true, none).is_empty());
        assert!(group_keys(&empty, 3, &["a", "b"], none).is_empty());
        // n = 0 is treated as 1.
        assert_eq!(plan(&ring(3), 0, b"k", false, none).len(), 1);
    }

    #[test]
    fn keys_are_grouped_by_the_first_live_replica() {
        let ring = ring(4);
        let keys: Vec<String> = (0..300).map(|k| format!("user-{k}")).collect();
        let groups = group_keys(&ring, 3, &keys, none);
        // Every key exactly once, with its owner; indices ascend within a group.
        let mut seen = vec![0; keys.len()];
        for (node, indices) in &groups {
            assert!(indices.windows(2).all(|w| w[0] < w[1]));
            for &i in indices {
                seen[i] += 1;
                assert_eq!(ring.owner(keys[i].as_bytes()), Some(node));
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert_eq!(groups.len(), 4);
        // Groups in order of first appearance.
        assert_eq!(groups[0].1[0], 0);

        // n1 down: its keys go to their next replica; nothing goes to n1.
        let n1 = id("n1");
        let groups = group_keys(&ring, 3, &keys, |n| *n == n1);
        assert_eq!(groups.len(), 3);
        for (node, indices) in &groups {
            assert_ne!(*node, n1);
            for &i in indices {
                let replicas = ring.preference_list(keys[i].as_bytes(), 3);
                let expected = replicas.iter().find(|r| **r != n1).unwrap();
                assert_eq!(node, expected);
            }
        }
        // Everything down: the owners again.
        let groups = group_keys(&ring, 3, &keys, |_| true);
        for (node, indices) in &groups {
            for &i in indices {
                assert_eq!(ring.owner(keys[i].as_bytes()), Some(node));
            }
        }
    }

    #[test]
    fn silence_is_packets_sent_and_none_received_on_one_connection() {
        let t = |conn, rx, tx| Traffic { conn, rx, tx };
        // Sent, nothing back: silent.
        assert!(silent(t(1, 10, 10), t(1, 10, 13)));
        // An acknowledgement (or anything) came back: alive, however slow the answer.
        assert!(!silent(t(1, 10, 10), t(1, 11, 13)));
        // Nothing sent, nothing received (a node busy with an acknowledged request): not judged.
        assert!(!silent(t(1, 10, 10), t(1, 10, 10)));
        // Another connection: the counters cannot be compared.
        assert!(!silent(t(1, 10, 10), t(2, 0, 5)));
    }

    #[test]
    fn hedge_delay_is_fixed_off_or_the_clamped_p99() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let min = ms(1);
        assert_eq!(hedge_delay(Some(0), min, Some(ms(5))), None);
        assert_eq!(hedge_delay(Some(300), min, Some(ms(5))), Some(us(300)));
        assert_eq!(hedge_delay(None, min, None), Some(INITIAL_HEDGE_DELAY));
        assert_eq!(hedge_delay(None, ms(20), None), Some(ms(20)));
        assert_eq!(hedge_delay(None, min, Some(us(150))), Some(min));
        assert_eq!(hedge_delay(None, min, Some(ms(3))), Some(ms(3)));
        assert_eq!(hedge_delay(None, min, Some(ms(900))), Some(MAX_HEDGE_DELAY));
        assert_eq!(
            hedge_delay(None, ms(500), Some(ms(1))),
            Some(MAX_HEDGE_DELAY)
        );
    }

    #[test]
    fn latency_window_reports_the_p99_of_the_last_two_windows() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let mut w = LatencyWindow::new(t0);
        assert_eq!(w.p99(t0), None);
        for _ in 0..MIN_LATENCY_SAMPLES - 1 {
            w.record(us(100), t0);
        }
        assert_eq!(w.p99(t0), None, "too few samples");
        // 990 samples of 100 µs and 10 of 5 ms: the p99 is 100 µs (within a bucket, ~9%).
        for i in MIN_LATENCY_SAMPLES - 1..1000 {
            w.record(if i % 100 == 0 { ms(5) } else { us(100) }, t0);
        }
        let p99 = w.p99(t0).unwrap();
        assert!(p99 >= us(100) && p99 <= us(110), "{p99:?}");
        // 30 more slow ones: over 1% are slow now, the p99 moves up to them.
        for _ in 0..30 {
            w.record(ms(5), t0);
        }
        let p99 = w.p99(t0 + ms(1)).unwrap();
        assert!(p99 >= ms(5) && p99 <= ms(6), "{p99:?}");
        // One window later the samples are still counted (previous window)...
        assert!(w.p99(t0 + LATENCY_WINDOW).unwrap() >= ms(5));
        // ...two windows later they are forgotten.
        assert_eq!(w.p99(t0 + LATENCY_WINDOW * 2 + ms(1)), None);
        // A long idle period forgets everything at once.
        let mut w = LatencyWindow::new(t0);
        for _ in 0..100 {
            w.record(us(50), t0);
        }
        assert_eq!(w.p99(t0 + LATENCY_WINDOW * 5), None);
        // Extreme values land in the first and last bucket.
        w.record(Duration::ZERO, t0 + LATENCY_WINDOW * 5);
        w.record(Duration::from_secs(1 << 40), t0 + LATENCY_WINDOW * 5);
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert!(bucket_top(bucket_of(us(1000))) >= us(1000));
    }

    #[test]
    fn views_skip_left_members_and_undialable_addresses() {
        let table = MembershipTable::from_members([
            member("n1", "0.0.0.0:7401", MemberState::Active, 2),
            member("n2", "127.0.0.1:7402", MemberState::Leaving, 3),
            member("n3", "127.0.0.1:7403", MemberState::Left, 4),
            member("n4", "127.0.0.1:7404", MemberState::Joining, 1),
            member("n5", "127.0.0.1:0", MemberState::Active, 1), // port 0: not dialable
        ]);
        let view = View::from_cluster(
            ClusterView {
                table,
                vnodes: 16,
                replication_factor: 0,
            },
            &seeds(),
        )
        .unwrap();
        assert!(!view.from_seeds);
        assert_eq!(view.replication_factor, 1);
        assert_eq!(view.ring.version(), 11);
        // The current ring: Active and Leaving members.
        assert_eq!(view.ring.nodes(), &[id("n1"), id("n2"), id("n5")]);
        // n1 publishes an unspecified address: the seed's address is used instead.
        assert_eq!(
            view.addr(&id("n1")),
            Some("127.0.0.1:7401".parse().unwrap())
        );
        assert_eq!(
            view.addr(&id("n2")),
            Some("127.0.0.1:7402".parse().unwrap())
        );
        assert_eq!(view.addr(&id("n3")), None);
        assert_eq!(
            view.addr(&id("n4")),
            Some("127.0.0.1:7404".parse().unwrap())
        );
        assert_eq!(view.addr(&id("n5")), None);
        // A seed the table does not name keeps its address.
        assert_eq!(
            view.addr(&id("s9")),
            Some("127.0.0.1:7409".parse().unwrap())
        );
        assert_eq!(
            view.nodes().cloned().collect::<Vec<_>>(),
            vec![id("n1"), id("n2"), id("n4"), id("s9")]
        );
    }

    #[test]
    fn a_cluster_without_serving_members_is_not_a_view() {
        let table =
            MembershipTable::from_members([member("n1", "127.0.0.1:1", MemberState::Joining, 1)]);
        let cluster = ClusterView {
            table,
            vnodes: 16,
            replication_factor: 3,
        };
        assert!(View::from_cluster(cluster.clone(), &seeds()).is_none());
        let seeded = View::from_seeds(&seeds());
        assert!(matches!(
            seeded.merged(cluster, &seeds()),
            Merged::EmptyRing
        ));
    }

    #[test]
    fn seed_views_are_replaced_and_node_views_merged_monotonically() {
        let seeded = View::from_seeds(&seeds());
        assert!(seeded.from_seeds);
        assert_eq!(seeded.ring.version(), 0);
        assert_eq!(seeded.ring.nodes(), &[id("n1"), id("s9")]);
        assert_eq!(
            seeded.replication_factor,
            FALLBACK_REPLICATION_FACTOR as usize
        );
        assert_eq!(seeded.cluster.vnodes, DEFAULT_VNODES);

        let newer = ClusterView {
            table: MembershipTable::from_members([
                member("n1", "127.0.0.1:7401", MemberState::Active, 5),
                member("n2", "127.0.0.1:7402", MemberState::Active, 5),
            ]),
            vnodes: 16,
            replication_factor: 2,
        };
        let Merged::Changed(view) = seeded.merged(newer.clone(), &seeds()) else {
            panic!("a node's answer replaces the seeds");
        };
        assert!(!view.from_seeds);
        assert_eq!(view.ring.nodes(), &[id("n1"), id("n2")]);
        assert_eq!(view.ring.version(), 10);
        assert!(matches!(view.merged(newer, &seeds()), Merged::Unchanged));

        // A node that missed the latest gossip cannot take the view back; its news is merged in.
        let stale = ClusterView {
            table: MembershipTable::from_members([
                member("n1", "127.0.0.1:7401", MemberState::Active, 4),
                member("n2", "127.0.0.1:7402", MemberState::Active, 5),
                member("n3", "127.0.0.1:7403", MemberState::Active, 1),
            ]),
            vnodes: 16,
            replication_factor: 2,
        };
        let Merged::Changed(view) = view.merged(stale, &seeds()) else {
            panic!("n3 is news");
        };
        assert_eq!(view.ring.nodes(), &[id("n1"), id("n2"), id("n3")]);
        assert_eq!(view.cluster.table.get(&id("n1")).unwrap().version, 5);
        assert_eq!(view.ring.version(), 11);
    }
}
