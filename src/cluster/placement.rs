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

    /// The ring version these rings were built from.
    pub fn version(&self) -> u64 {
        self.current.version()
    }
}
