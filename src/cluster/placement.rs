//! Where keys live: the current ring, the target ring while a join or leave is in progress, and the
//! replication factor. A [`Placement`] is a cheap snapshot: routing decisions (reads, the client) use it
//! without taking the replication state machine.

use crate::cluster::membership::MembershipTable;
use crate::cluster::ring::Ring;
use crate::hlc::NodeId;

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

    /// The replicas of `key`: the current ring's preference list, followed by the members of the target
    /// ring's list that are not in it (non-empty only during a join or leave).
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

    /// Whether `node` is one of `key`'s [`replicas`](Placement::replicas), without building the list.
    /// A ring with no more nodes than the replication factor puts every key on all of them, which is
    /// answered without hashing the key (a single-node or three-node cluster at N = 3: every read).
    pub fn is_replica(&self, key: &str, node: &NodeId) -> bool {
        let holds = |ring: &Ring| {
            if ring.len() <= self.replication_factor {
                ring.contains(node)
            } else {
                ring.preference_list(key.as_bytes(), self.replication_factor)
                    .contains(node)
            }
        };
        holds(&self.current) || (self.in_transition && holds(&self.target))
    }

    /// The ring version these rings were built from.
    pub fn version(&self) -> u64 {
        self.current.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::tests::{id, table};
    use proptest::prelude::*;

    proptest! {
        /// `Placement::is_replica` (the read path's routing check, with its shortcut for small rings)
        /// agrees with the replica list, in and out of a join or leave.
        #[test]
        fn is_replica_agrees_with_the_replica_list(t in table(), n in 1usize..4) {
            let placement = Placement::of(&t, 8, n);
            for k in 0..40 {
                let key = format!("user:{k}");
                let replicas = placement.replicas(&key);
                for i in 0..5 {
                    prop_assert_eq!(placement.is_replica(&key, &id(i)), replicas.contains(&id(i)));
                }
            }
        }
    }
}
