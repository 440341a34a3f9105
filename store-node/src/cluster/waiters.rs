//! Waiters for replica acknowledgements (W > 1), read replies (R > 1) and the outcomes of events forwarded
//! to their owner: the requests that wait, and
//! the effects of the replication state machine that wake them.

use std::collections::{HashMap, HashSet};

use featurestore::wire::event::EventOutcome;
use featurestore::{NodeId, Profile};
use tokio::sync::{mpsc, oneshot};

/// Where the replies to a quorum read go: `(replica, its state)`.
pub(super) type ReadReplies = mpsc::UnboundedSender<(NodeId, Option<Profile>)>;

/// Waiters for replica acknowledgements (W > 1) and read replies (R > 1).
#[derive(Default)]
pub(super) struct Waiters {
    /// seq -> write waiter id
    acks: HashMap<u64, u64>,
    writes: HashMap<u64, WriteWaiter>,
    /// read request id -> where its replies go
    pub(super) reads: HashMap<u64, ReadReplies>,
    /// forwarded event batch id -> where the owner's outcomes go
    pub(super) forwards: HashMap<u64, oneshot::Sender<Vec<EventOutcome>>>,
}

/// One client write waiting for `needed` distinct replicas.
pub(super) struct WriteWaiter {
    needed: usize,
    from: HashSet<NodeId>,
    done: Option<oneshot::Sender<()>>,
}

impl Waiters {
    /// Waits for `needed` distinct replicas to acknowledge any of `seqs`.
    pub(super) fn add_write(
        &mut self,
        id: u64,
        seqs: &[u64],
        needed: usize,
        done: oneshot::Sender<()>,
    ) {
        for seq in seqs {
            self.acks.insert(*seq, id);
        }
        self.writes.insert(
            id,
            WriteWaiter {
                needed,
                from: HashSet::new(),
                done: Some(done),
            },
        );
    }

    /// Forgets a write waiter; returns how many replicas had acknowledged.
    pub(super) fn remove_write(&mut self, id: u64, seqs: &[u64]) -> usize {
        for seq in seqs {
            self.acks.remove(seq);
        }
        self.writes.remove(&id).map_or(0, |w| w.from.len())
    }

    /// `from` acknowledged the send `seq`.
    pub(super) fn on_ack(&mut self, seq: u64, from: NodeId) {
        let Some(id) = self.acks.remove(&seq) else {
            return;
        };
        if let Some(waiter) = self.writes.get_mut(&id) {
            waiter.from.insert(from);
            if waiter.from.len() >= waiter.needed {
                if let Some(done) = waiter.done.take() {
                    let _ = done.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_write_is_done_after_needed_distinct_replicas() {
        let (n2, n3) = (NodeId::new("n2").unwrap(), NodeId::new("n3").unwrap());
        let mut w = Waiters::default();
        let (tx, mut rx) = oneshot::channel();
        w.add_write(7, &[1, 2, 3], 2, tx);
        w.on_ack(1, n2.clone());
        w.on_ack(1, n3.clone()); // seq 1 already counted: ignored
        assert!(rx.try_recv().is_err());
        w.on_ack(2, n2);
        assert!(rx.try_recv().is_err(), "the same replica twice is one ack");
        w.on_ack(3, n3);
        assert!(rx.try_recv().is_ok());
        assert_eq!(w.remove_write(7, &[1, 2, 3]), 2);
        assert_eq!(w.remove_write(7, &[1, 2, 3]), 0);
    }
}
