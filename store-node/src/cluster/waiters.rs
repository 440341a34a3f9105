//! Waiters for replica acknowledgements (W > 1), read replies (R > 1) and the outcomes of events forwarded
//! to their owner: the requests that wait, and
//! the effects of the replication state machine that wake them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

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
    /// seq of a replica send -> when it was sent, for the replication-lag histogram; at most
    /// [`MAX_TIMED_SENDS`] entries (sends never acknowledged are dropped after [`TIMED_SEND_AGE`]).
    sent_at: HashMap<u64, Instant>,
}

/// Most replica sends timed at once (a bound on memory when replicas stop acknowledging).
const MAX_TIMED_SENDS: usize = 16_384;

/// A send older than this without acknowledgement is no longer timed.
const TIMED_SEND_AGE: Duration = Duration::from_secs(60);

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

    /// Notes that the replica sends `seqs` leave now, to time their acknowledgements. When
    /// [`MAX_TIMED_SENDS`] are pending, stale ones are dropped first; if that is not enough, these are not
    /// timed.
    pub(super) fn sent(&mut self, seqs: &[u64], now: Instant) {
        if self.sent_at.len() + seqs.len() > MAX_TIMED_SENDS {
            self.sent_at
                .retain(|_, at| now.duration_since(*at) < TIMED_SEND_AGE);
            if self.sent_at.len() + seqs.len() > MAX_TIMED_SENDS {
                return;
            }
        }
        for seq in seqs {
            self.sent_at.insert(*seq, now);
        }
    }

    /// `from` acknowledged the send `seq`; returns how long after [`Waiters::sent`] it did, if the send
    /// was timed.
    pub(super) fn on_ack(&mut self, seq: u64, from: NodeId) -> Option<Duration> {
        let lag = self.sent_at.remove(&seq).map(|at| at.elapsed());
        let Some(id) = self.acks.remove(&seq) else {
            return lag;
        };
        if let Some(waiter) = self.writes.get_mut(&id) {
            waiter.from.insert(from);
            if waiter.from.len() >= waiter.needed {
                if let Some(done) = waiter.done.take() {
                    let _ = done.send(());
                }
            }
        }
        lag
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

    #[test]
    fn acknowledged_sends_are_timed_once_and_the_timing_is_bounded() {
        let n2 = NodeId::new("n2").unwrap();
        let mut w = Waiters::default();
        w.sent(&[1], Instant::now());
        assert!(w.on_ack(1, n2.clone()).is_some());
        assert!(w.on_ack(1, n2.clone()).is_none(), "timed once");
        assert!(w.on_ack(99, n2.clone()).is_none(), "never sent");
        let old = Instant::now() - 2 * TIMED_SEND_AGE;
        let seqs: Vec<u64> = (0..MAX_TIMED_SENDS as u64).collect();
        w.sent(&seqs, old);
        assert_eq!(w.sent_at.len(), MAX_TIMED_SENDS);
        // Full: the stale ones make room for new sends.
        w.sent(&[1_000_000], Instant::now());
        assert_eq!(w.sent_at.len(), 1);
        assert!(w.on_ack(1_000_000, n2).is_some());
    }
}
