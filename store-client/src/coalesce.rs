//! Coalescing of concurrent calls into shared requests: one queue per node for ingest, one for writes.
//!
//! Many tasks that each call [`Client::ingest`](crate::Client::ingest) with one event, or
//! [`Client::put`](crate::Client::put) with one key (what a service does that forwards its users'
//! events or features as they happen), would otherwise send one request, one QUIC stream and one
//! answer each. Instead, each call becomes one [`Pending`] entry in the queue of the node its request
//! would go to first ([`NodeQueue`]), and a call that holds one of the queue's permits (at most
//! `coalesce_requests_per_node` requests in flight to the node) takes every entry waiting, up to the
//! request's limits, and sends them as one request (`Ingest` with every entry's events, or
//! [`Request::Writes`](featurestore::Request::Writes)). So an idle client sends each call at once,
//! alone (no added delay, no timer), and a busy one sends as many calls per request as arrived while
//! the previous requests were in flight.
//!
//! Guarantees:
//! - An entry is never split: one ingest call's events for a node go in one request, in their order,
//!   so the node applies one user's events of one call in order, as without coalescing.
//! - Entries leave the queue in the order they arrived (a taker takes a prefix).
//! - Every entry taken gets exactly one answer: its own outcomes or reply, or a copy of the error of
//!   the request that carried it ([`copy_error`]). An entry whose caller has gone (its future dropped)
//!   before it was taken is skipped, never sent.
//! - The queue does not grow without bound: it holds only entries whose callers are waiting, and every
//!   waiting caller takes entries whenever it holds a permit.
//!
//! Caveat: coalesced calls share a request's fate. If the node it went to fails, every call it carried
//! gets the same error. An ingest call may send its events again (they are deduplicated by message id);
//! a write that fails once sent may or may not have been applied, exactly as when it goes alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use featurestore::wire::client::{WriteOp, WriteReply};
use featurestore::wire::event::{EventOutcome, WireEvent};
use tokio::sync::{oneshot, Semaphore};

use crate::error::{Error, Result};
use crate::transport::lock;

/// One call's items for one node, waiting to be sent: for ingest the call's events (`T =
/// Vec<WireEvent>`, answered with their outcomes), for writes one write (`T = WriteOp`, answered with its
/// reply).
pub(crate) struct Pending<T, R> {
    /// The key of the entry's first item: the request is routed along the plan of the first entry's
    /// key (a node that does not own an event forwards it; a node coordinates any key's write).
    pub key: String,
    /// The items, in the call's order.
    pub items: T,
    /// What the entry counts toward a request's limit (events, or encoded bytes).
    pub weight: usize,
    /// When the caller stops waiting (its call's deadline). A request carrying several entries gets
    /// the latest of their deadlines, so a caller with a short deadline does not cut the request of
    /// the others short; each caller still gives up at its own.
    pub until: Instant,
    /// Where the answer for exactly these items goes.
    pub reply: oneshot::Sender<Result<R>>,
}

/// An ingest entry: one call's events for one node.
pub(crate) type PendingEvents = Pending<Vec<WireEvent>, Vec<EventOutcome>>;

/// A write entry: one write.
pub(crate) type PendingWrite = Pending<WriteOp, WriteReply>;

/// The queue of one node: the entries waiting and the permits for requests in flight.
pub(crate) struct NodeQueue<T, R> {
    waiting: StdMutex<VecDeque<Pending<T, R>>>,
    /// One per request in flight to the node.
    pub permits: Arc<Semaphore>,
}

impl<T, R> NodeQueue<T, R> {
    /// An empty queue allowing `in_flight` requests at once.
    pub fn new(in_flight: usize) -> NodeQueue<T, R> {
        NodeQueue {
            waiting: StdMutex::new(VecDeque::new()),
            permits: Arc::new(Semaphore::new(in_flight.max(1))),
        }
    }

    /// Appends an entry.
    pub fn push(&self, pending: Pending<T, R>) {
        lock(&self.waiting).push_back(pending);
    }

    /// Takes the longest prefix of the waiting entries whose callers still wait, at most `max_entries`
    /// of them weighing at most `max_weight` together (and always at least one entry, if any waits).
    /// Entries whose caller has gone are dropped on the way.
    pub fn take(&self, max_entries: usize, max_weight: usize) -> Vec<Pending<T, R>> {
        let mut waiting = lock(&self.waiting);
        let mut taken: Vec<Pending<T, R>> = Vec::new();
        let mut weight = 0;
        while let Some(first) = waiting.front() {
            if first.reply.is_closed() {
                waiting.pop_front();
                continue;
            }
            if !taken.is_empty()
                && (taken.len() >= max_entries || weight + first.weight > max_weight)
            {
                break;
            }
            weight += first.weight;
            if let Some(entry) = waiting.pop_front() {
                taken.push(entry);
            }
        }
        taken
    }

    /// Entries waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.waiting).len()
    }
}

/// How long a request carrying `batch` may take: until the latest deadline of its entries (at least a
/// millisecond, so a request is never sent already expired).
pub(crate) fn budget<T, R>(batch: &[Pending<T, R>], now: Instant) -> Duration {
    batch
        .iter()
        .map(|p| p.until.saturating_duration_since(now))
        .max()
        .unwrap_or_default()
        .max(Duration::from_millis(1))
}

/// Where the outcomes of one taken ingest entry go.
pub(crate) struct Waiter {
    /// How many events of the request are the entry's.
    count: usize,
    reply: oneshot::Sender<Result<Vec<EventOutcome>>>,
}

/// A taken ingest batch as one request: the key to route it by (the first entry's), every event in
/// order, and the entries' waiters in the same order. `None` for an empty batch.
pub(crate) fn into_request(
    batch: Vec<PendingEvents>,
) -> Option<(String, Vec<WireEvent>, Vec<Waiter>)> {
    let key = batch.first()?.key.clone();
    let mut events = Vec::with_capacity(batch.iter().map(|p| p.items.len()).sum());
    let mut waiters = Vec::with_capacity(batch.len());
    for pending in batch {
        waiters.push(Waiter {
            count: pending.items.len(),
            reply: pending.reply,
        });
        events.extend(pending.items);
    }
    Some((key, events, waiters))
}

/// The reply channel of one taken write.
pub(crate) type WriteWaiter = oneshot::Sender<Result<WriteReply>>;

/// A taken write batch as one request: the key to route it by (the first write's), the writes in order,
/// and their waiters in the same order. `None` for an empty batch.
pub(crate) fn into_writes(
    batch: Vec<PendingWrite>,
) -> Option<(String, Vec<WriteOp>, Vec<WriteWaiter>)> {
    let key = batch.first()?.key.clone();
    let (writes, waiters) = batch.into_iter().map(|p| (p.items, p.reply)).unzip();
    Some((key, writes, waiters))
}

/// Hands each write's waiter its own reply from `result` (the replies of the request that carried the
/// batch, in order), or a copy of the request's error. A result with the wrong number of replies is an
/// [`Error::UnexpectedResponse`] for every waiter.
pub(crate) fn answer_writes(waiters: Vec<WriteWaiter>, result: Result<Vec<WriteReply>>) {
    let result = match result {
        Ok(replies) if replies.len() != waiters.len() => Err(Error::UnexpectedResponse {
            expected: "one reply per write",
            got: format!("{} replies for {} writes", replies.len(), waiters.len()),
        }),
        other => other,
    };
    match result {
        Ok(replies) => {
            for (waiter, reply) in waiters.into_iter().zip(replies) {
                let _ = waiter.send(Ok(reply));
            }
        }
        Err(error) => {
            for waiter in waiters {
                let _ = waiter.send(Err(copy_error(&error)));
            }
        }
    }
}

/// Hands each waiter its own slice of `result` (the outcomes of the request that carried the batch's
/// events, in order), or a copy of the request's error. A result with the wrong number of outcomes is an
/// [`Error::UnexpectedResponse`] for every waiter.
pub(crate) fn answer(waiters: Vec<Waiter>, result: Result<Vec<EventOutcome>>) {
    let expected: usize = waiters.iter().map(|w| w.count).sum();
    let result = match result {
        Ok(outcomes) if outcomes.len() != expected => Err(Error::UnexpectedResponse {
            expected: "one outcome per event",
            got: format!("{} outcomes for {expected} events", outcomes.len()),
        }),
        other => other,
    };
    match result {
        Ok(outcomes) => {
            let mut rest = outcomes.into_iter();
            for waiter in waiters {
                let mine: Vec<EventOutcome> = rest.by_ref().take(waiter.count).collect();
                // A caller that has gone no longer needs its answer.
                let _ = waiter.reply.send(Ok(mine));
            }
        }
        Err(error) => {
            for waiter in waiters {
                let _ = waiter.reply.send(Err(copy_error(&error)));
            }
        }
    }
}

/// The same error for another caller whose events shared the failed request. Every variant a request
/// can fail with is copied as it is; [`Error::Tls`] (only certificate loading returns it) keeps its text.
pub(crate) fn copy_error(error: &Error) -> Error {
    match error {
        Error::Config(m) => Error::Config(m.clone()),
        Error::Tls(e) => Error::Transport(format!("TLS: {e}")),
        Error::Connect { attempts } => Error::Connect {
            attempts: attempts.clone(),
        },
        Error::Timeout { after } => Error::Timeout { after: *after },
        Error::Transport(m) => Error::Transport(m.clone()),
        Error::Protocol(e) => Error::Protocol(e.clone()),
        Error::Server { code, message } => Error::Server {
            code: *code,
            message: message.clone(),
        },
        Error::Forbidden { message } => Error::Forbidden {
            message: message.clone(),
        },
        Error::UnexpectedResponse { expected, got } => Error::UnexpectedResponse {
            expected,
            got: got.clone(),
        },
        Error::UnknownNode(n) => Error::UnknownNode(n.clone()),
        Error::Closed => Error::Closed,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use featurestore::ErrorCode;

    fn event(id: &str) -> WireEvent {
        let event = featurestore::ingest::Event::from_segment(
            &serde_json::json!({"type": "track", "event": "e", "userId": "u", "messageId": id}),
            None,
            1_700_000_000_000,
            &featurestore::Limits::default(),
        )
        .unwrap();
        WireEvent::from(&event)
    }

    fn entry(n: usize) -> (PendingEvents, oneshot::Receiver<Result<Vec<EventOutcome>>>) {
        let (reply, rx) = oneshot::channel();
        let items = (0..n).map(|i| event(&format!("m{i}"))).collect();
        (
            Pending {
                key: "u".into(),
                items,
                weight: n,
                until: Instant::now() + Duration::from_secs(n as u64),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn take_is_a_prefix_within_the_event_limit_and_never_splits_an_entry() {
        let q = NodeQueue::new(2);
        let mut rxs = Vec::new();
        for n in [3, 4, 5, 1] {
            let (p, rx) = entry(n);
            q.push(p);
            rxs.push(rx);
        }
        let first = q.take(usize::MAX, 8);
        assert_eq!(
            first.iter().map(|p| p.items.len()).collect::<Vec<_>>(),
            [3, 4]
        );
        // An entry larger than the limit still goes, alone.
        let second = q.take(usize::MAX, 2);
        assert_eq!(
            second.iter().map(|p| p.items.len()).collect::<Vec<_>>(),
            [5]
        );
        assert_eq!(q.take(usize::MAX, 100).len(), 1);
        assert!(q.take(usize::MAX, 100).is_empty());
        assert!(into_request(Vec::new()).is_none());
    }

    #[test]
    fn a_batch_gets_the_latest_deadline_of_its_entries() {
        let (a, _rx_a) = entry(2);
        let (b, _rx_b) = entry(5);
        let now = Instant::now();
        let got = budget(&[a, b], now);
        assert!(
            got > Duration::from_secs(4) && got <= Duration::from_secs(5),
            "{got:?}"
        );
        let (mut late, _rx) = entry(1);
        late.until = now;
        assert_eq!(
            budget(&[late], now + Duration::from_secs(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn take_stops_at_the_entry_limit() {
        let q = NodeQueue::new(1);
        let mut rxs = Vec::new();
        for _ in 0..5 {
            let (p, rx) = entry(1);
            q.push(p);
            rxs.push(rx);
        }
        assert_eq!(q.take(2, usize::MAX).len(), 2);
        assert_eq!(q.take(2, usize::MAX).len(), 2);
        assert_eq!(q.take(2, usize::MAX).len(), 1);
    }

    #[test]
    fn each_write_gets_its_own_reply_or_the_shared_error() {
        let write = |key: &str| {
            let (reply, rx) = oneshot::channel();
            let pending = Pending {
                key: key.into(),
                items: WriteOp::Erase {
                    key: key.into(),
                    quorum: 1,
                },
                weight: 1,
                until: Instant::now(),
                reply,
            };
            (pending, rx)
        };
        let (a, rx_a) = write("a");
        let (b, rx_b) = write("b");
        let (key, writes, waiters) = into_writes(vec![a, b]).unwrap();
        assert_eq!(key, "a");
        assert_eq!(
            writes.iter().map(WriteOp::key).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let refused = WriteReply::Error(featurestore::ErrorReply {
            code: ErrorCode::LimitExceeded,
            message: "b".into(),
        });
        let ok = WriteReply::Incremented(vec![1]);
        answer_writes(waiters, Ok(vec![ok.clone(), refused.clone()]));
        assert_eq!(rx_a.blocking_recv().unwrap().unwrap(), ok);
        assert_eq!(rx_b.blocking_recv().unwrap().unwrap(), refused);

        let (a, rx_a) = write("a");
        let (b, rx_b) = write("b");
        answer_writes(into_writes(vec![a, b]).unwrap().2, Ok(vec![ok]));
        for rx in [rx_a, rx_b] {
            let err = rx.blocking_recv().unwrap().unwrap_err();
            assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err}");
        }
        assert!(into_writes(Vec::new()).is_none());
    }

    #[test]
    fn entries_of_callers_that_left_are_skipped() {
        let q = NodeQueue::new(1);
        let (gone, rx) = entry(1);
        drop(rx);
        q.push(gone);
        let (kept, _rx) = entry(2);
        q.push(kept);
        let taken = q.take(usize::MAX, 100);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].items.len(), 2);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn each_entry_gets_its_own_outcomes_in_order() {
        let (a, rx_a) = entry(2);
        let (b, rx_b) = entry(1);
        let outcomes = vec![
            EventOutcome::Duplicate,
            EventOutcome::Refused {
                code: ErrorCode::LimitExceeded,
                message: "second".into(),
            },
            EventOutcome::Duplicate,
        ];
        let (key, events, waiters) = into_request(vec![a, b]).unwrap();
        assert_eq!((key.as_str(), events.len()), ("u", 3));
        answer(waiters, Ok(outcomes.clone()));
        assert_eq!(rx_a.blocking_recv().unwrap().unwrap(), outcomes[..2]);
        assert_eq!(rx_b.blocking_recv().unwrap().unwrap(), outcomes[2..]);
    }

    #[test]
    fn a_short_answer_or_an_error_reaches_every_entry() {
        let (a, rx_a) = entry(2);
        let (b, rx_b) = entry(1);
        answer(
            into_request(vec![a, b]).unwrap().2,
            Ok(vec![EventOutcome::Duplicate]),
        );
        for rx in [rx_a, rx_b] {
            let err = rx.blocking_recv().unwrap().unwrap_err();
            assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err}");
        }
        let (a, rx_a) = entry(1);
        let (b, rx_b) = entry(1);
        answer(
            into_request(vec![a, b]).unwrap().2,
            Err(Error::Server {
                code: ErrorCode::Unavailable,
                message: "busy".into(),
            }),
        );
        for rx in [rx_a, rx_b] {
            let err = rx.blocking_recv().unwrap().unwrap_err();
            assert_eq!(err.server_code(), Some(ErrorCode::Unavailable));
            assert!(err.to_string().contains("busy"), "{err}");
        }
    }
}
