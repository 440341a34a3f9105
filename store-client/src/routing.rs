//! The routing decisions of the ring-aware [`Client`](crate::Client), free of I/O so they can be tested
//! on their own: the cached cluster view, the order in which nodes are tried for a key, the grouping of
//! a `get_many` per node, and the per-node failure backoff.
//!
//! - `View`: the membership table a node sent (or, if no node could send one, a table made of the
//!   seeds), the *current* ring built from it (`Active` and `Leaving` members, exactly as the nodes build
//!   it: [`MembershipTable::current_ring`]), the replication factor N, and each member's address.
//! - `plan`: the nodes to try for one key, in order. Reads: the key's N replicas (its preference list),
//!   those not backed off first, in preference-list order, then the backed-off ones (a node that failed
//!   recently is avoided, not banned: if every replica failed recently, they are still tried). Writes:
//!   the replicas not backed off, then every other member not backed off, in ring order from the key
//!   (such a node accepts the write as a sloppy-quorum coordinator and hands it on later: hinted
//!   handoff), then the backed-off replicas. Reads never go to non-replicas.
//! - `group_keys`: for `get_many`, each key goes to the first node of its read plan.
//! - `Backoff`: a node that failed (connection, transport error, timeout) is backed off for
//!   [`NODE_BACKOFF`], doubled after each further failure up to [`MAX_NODE_BACKOFF`]; an answer clears
//!   it. Failures while a node is backed off (requests that were already in flight) do not double it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use featurestore::cluster::membership::{Member, MemberAddr, MemberState, MembershipTable};
use featurestore::cluster::ring::{Ring, DEFAULT_VNODES};
use featurestore::wire::client::ClusterView;
use featurestore::NodeId;

/// How long a node that failed is tried only after every other candidate (after its first failure).
pub const NODE_BACKOFF: Duration = Duration::from_secs(1);

/// The longest backoff: [`NODE_BACKOFF`] doubles with each failure that follows a backoff, up to this.
///
/// Why it grows: a node that was killed leaves its connection looking open until the QUIC idle timeout,
/// so the first request after each backoff waits for `request_timeout_ms` before moving on; growing
/// the backoff makes that cost rarer while the node stays down.
pub const MAX_NODE_BACKOFF: Duration = Duration::from_secs(8);

/// A failure record older than this is forgotten: the next failure starts from [`NODE_BACKOFF`] again.
const FORGET_AFTER: Duration = Duration::from_secs(60);

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
/// `backed_off` says whether a node failed recently. Empty only for an empty ring.
///
/// Reads: the replicas not backed off, then the backed-off replicas. Writes: the replicas not backed
/// off, then every other member not backed off (in ring order from the key), then the backed-off
/// replicas. (Walking the ring until every member is found visits about `k ln k` tokens for `k`
/// members, so the longer write plan is cheap.)
pub(crate) fn plan(
    ring: &Ring,
    n: usize,
    key: &[u8],
    write: bool,
    backed_off: impl Fn(&NodeId) -> bool,
) -> Vec<NodeId> {
    let n = n.max(1);
    let all = ring.preference_list(key, if write { ring.len() } else { n });
    let (replicas, others) = all.split_at(n.min(all.len()));
    let mut out: Vec<NodeId> = Vec::with_capacity(all.len());
    out.extend(replicas.iter().filter(|node| !backed_off(node)).cloned());
    out.extend(others.iter().filter(|node| !backed_off(node)).cloned());
    out.extend(replicas.iter().filter(|node| backed_off(node)).cloned());
    out
}

/// Groups `keys` by the node a read of each goes to first (the first node of its read [`plan`]): one
/// `(node, indices into keys)` per node, in the order the nodes first appear; indices ascend within a
/// group. Every key is in exactly one group (none if the ring is empty).
pub(crate) fn group_keys<S: AsRef<str>>(
    ring: &Ring,
    n: usize,
    keys: &[S],
    backed_off: impl Fn(&NodeId) -> bool,
) -> Vec<(NodeId, Vec<usize>)> {
    let mut groups: Vec<(NodeId, Vec<usize>)> = Vec::new();
    let mut slot: HashMap<NodeId, usize> = HashMap::new();
    let mut replicas = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        ring.preference_list_into(key.as_ref().as_bytes(), n.max(1), &mut replicas);
        let Some(target) = replicas
            .iter()
            .find(|node| !backed_off(node))
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

/// Which nodes failed recently. Time is passed in, so the rules are testable.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Per node: when the current backoff started and how many backoffs in a row it has had.
    failed: HashMap<NodeId, (Instant, u32)>,
}

/// The backoff after `streak` backoffs in a row.
fn backoff_for(streak: u32) -> Duration {
    NODE_BACKOFF
        .saturating_mul(1 << streak.saturating_sub(1).min(16))
        .min(MAX_NODE_BACKOFF)
}

impl Backoff {
    /// Records that `node` failed at `now`. A failure while the node is still backed off belongs to the
    /// same episode and changes nothing; a later one starts a backoff twice as long (up to
    /// [`MAX_NODE_BACKOFF`]).
    pub(crate) fn failed(&mut self, node: &NodeId, now: Instant) {
        self.failed
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < FORGET_AFTER);
        match self.failed.get_mut(node) {
            Some((at, streak)) => {
                if now.saturating_duration_since(*at) >= backoff_for(*streak) {
                    *at = now;
                    *streak = streak.saturating_add(1);
                }
            }
            None => {
                self.failed.insert(node.clone(), (now, 1));
            }
        }
    }

    /// Records that `node` answered: it is no longer backed off.
    pub(crate) fn succeeded(&mut self, node: &NodeId) {
        self.failed.remove(node);
    }

    /// Whether `node` is backed off at `now`.
    pub(crate) fn is_backed_off(&self, node: &NodeId, now: Instant) -> bool {
        self.failed
            .get(node)
            .is_some_and(|(at, streak)| now.saturating_duration_since(*at) < backoff_for(*streak))
    }

    /// The nodes backed off at `now`.
    pub(crate) fn backed_off(&self, now: Instant) -> Vec<NodeId> {
        self.failed
            .keys()
            .filter(|node| self.is_backed_off(node, now))
            .cloned()
            .collect()
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
    fn reads_try_the_replicas_in_order_backed_off_ones_last() {
        let ring = ring(5);
        for k in 0..200 {
            let key = format!("user-{k}");
            let replicas = ring.preference_list(key.as_bytes(), 3);
            assert_eq!(plan(&ring, 3, key.as_bytes(), false, none), replicas);
            // The owner failed recently: the other replicas first, the owner last.
            let owner = replicas[0].clone();
            let p = plan(&ring, 3, key.as_bytes(), false, |n| *n == owner);
            assert_eq!(p, vec![replicas[1].clone(), replicas[2].clone(), owner]);
            // Every replica failed: all still tried, in preference order; never a non-replica.
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

        // n1 backed off: its keys go to their next replica; nothing goes to n1.
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
        // Everything backed off: the owners again.
        let groups = group_keys(&ring, 3, &keys, |_| true);
        for (node, indices) in &groups {
            for &i in indices {
                assert_eq!(ring.owner(keys[i].as_bytes()), Some(node));
            }
        }
    }

    #[test]
    fn backoff_expires_grows_and_clears_on_success() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let n1 = id("n1");
        assert!(!b.is_backed_off(&n1, t0));
        b.failed(&n1, t0);
        assert!(b.is_backed_off(&n1, t0 + ms(999)));
        assert!(!b.is_backed_off(&n1, t0 + NODE_BACKOFF));
        assert_eq!(b.backed_off(t0), vec![n1.clone()]);
        assert!(b.backed_off(t0 + NODE_BACKOFF).is_empty());

        // Failures of requests already in flight do not extend the backoff.
        b.failed(&n1, t0 + ms(500));
        assert!(!b.is_backed_off(&n1, t0 + NODE_BACKOFF));

        // Failing again after the backoff doubles it, up to the maximum.
        let t1 = t0 + NODE_BACKOFF;
        b.failed(&n1, t1);
        assert!(b.is_backed_off(&n1, t1 + ms(1_999)));
        assert!(!b.is_backed_off(&n1, t1 + ms(2_000)));
        let mut t = t1 + ms(2_000);
        for expected in [4_000, 8_000, 8_000, 8_000] {
            b.failed(&n1, t);
            assert!(b.is_backed_off(&n1, t + ms(expected - 1)));
            assert!(!b.is_backed_off(&n1, t + ms(expected)), "{expected}");
            t += ms(expected);
        }

        // An answer clears it all: the next failure starts over.
        b.succeeded(&n1);
        assert!(!b.is_backed_off(&n1, t));
        b.failed(&n1, t);
        assert!(!b.is_backed_off(&n1, t + NODE_BACKOFF));

        // Old records are forgotten when another failure is recorded.
        b.failed(&id("n2"), t + FORGET_AFTER);
        assert_eq!(b.failed.len(), 1);
        assert_eq!(backoff_for(u32::MAX), MAX_NODE_BACKOFF);
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
