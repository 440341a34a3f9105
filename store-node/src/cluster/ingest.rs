//! The node's ingest path: events received by this node (from a client over QUIC, or from the HTTP API)
//! go to their users' owners, which apply them with the core's `ingest::apply_event` and replicate the
//! result like any write.
//!
//! Guarantees:
//! - **Owner**: an event is applied by the first replica of its user's key that this node's failure
//!   detector does not consider down (during a partition, each side's acting owner; if every replica looks
//!   down, this node acts as owner: a sloppy write, handed over by the usual hints). A batch is split per
//!   owner and forwarded in one `ForwardEvents` message each.
//! - **Order**: one user's events from one batch are applied in batch order; events of concurrent batches
//!   are applied in the order their owner takes the user's shard lock.
//! - **Acknowledgement**: an event's outcome is `Applied` only once its owner applied it, made it durable
//!   per its durability policy, and handed it to replication (persisting hints first where the plan says so),
//!   as for a client write. `Duplicate` when its message id was already ingested (the dedup set replicates
//!   with the profile, so a retry at another owner is still caught).
//! - **Backpressure**: an owner applies at most `ingest.max_inflight_events` at once; beyond it, and when an
//!   owner does not answer within the RPC timeout, the outcome is `Unavailable` and the sender should retry
//!   (retries are safe: events are deduplicated).
//!
//! - **Identity**: an event for an id linked into another (its profile's `alias_of`) is redirected to the
//!   canonical id's owner, at most `max_identity_depth` times. A linking event (`identify` with both ids,
//!   `alias`) is applied by the canonical id's owner in three steps: read the linked id's state from its
//!   live replicas and check the link (the core's `check_link`), write the redirect on the linked id (a
//!   replicated write), read the linked id again (to catch what its old owner applied meanwhile), then
//!   apply the event and absorb the state in one write of the canonical profile. A failure after the
//!   redirect leaves the event unapplied and the sender retries: the redirect is idempotent, and the retry
//!   absorbs the state. Caveat: an event applied to the linked id by an owner that had not yet received
//!   the redirect (on the far side of a partition, or in the milliseconds the redirect is in flight) stays
//!   on the linked id's own profile until the next linking event for the pair.
//!
//! Not built yet: the dead-letter queue (refused events are counted and answered with their reason, not
//! stored).

use std::collections::BTreeMap;
use std::sync::Arc;

use featurestore::cluster::detector::Liveness;
use featurestore::ingest::{check_link, check_redirect, link_of, Definitions, Event};
use featurestore::wire::event::{EventOutcome, WireEvent};
use featurestore::wire::peer::PeerMessage;
use featurestore::{ErrorCode, ErrorReply, NodeId, Profile, Response};
use tokio::sync::{oneshot, Semaphore};

use super::Cluster;
use crate::clock::now_ms;
use crate::metrics::Metrics;

/// What an owner needs to apply events: the compiled definitions and the bound on events in flight.
#[derive(Debug)]
pub struct Ingester {
    /// The feature definitions.
    pub definitions: Arc<Definitions>,
    /// Permits for events being applied here as owner.
    pub permits: Semaphore,
}

impl Ingester {
    /// An ingester with `definitions` applying at most `max_inflight` events at once.
    pub fn new(definitions: Definitions, max_inflight: usize) -> Ingester {
        Ingester {
            definitions: Arc::new(definitions),
            permits: Semaphore::new(max_inflight.max(1)),
        }
    }
}

fn refused(code: ErrorCode, message: impl Into<String>) -> EventOutcome {
    EventOutcome::Refused {
        code,
        message: message.into(),
    }
}

impl Cluster {
    /// The node that applies events for `key`: the first replica not considered down, else this node.
    fn owner_of(&self, key: &str) -> NodeId {
        let now = now_ms();
        let repl = self.repl();
        repl.replicas(key)
            .into_iter()
            .find(|r| repl.liveness(r, now) != Liveness::Down)
            .unwrap_or_else(|| self.me.clone())
    }

    /// Ingests validated events received by this node: each goes to its owner; the answer is one outcome
    /// per event, in order.
    pub async fn ingest(&self, events: Vec<Event>) -> Vec<EventOutcome> {
        self.route_events(events.into_iter().map(|e| (e, 0)).collect())
            .await
    }

    /// [`Cluster::route_events`], boxed: the redirect of a linked id routes again from inside the owner's
    /// path.
    fn route_boxed(
        &self,
        events: Vec<(Event, u8)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<EventOutcome>> + Send + '_>> {
        Box::pin(self.route_events(events))
    }

    /// Sends each event (with the identity redirects it followed so far) to its owner; one outcome per
    /// event, in order.
    async fn route_events(&self, events: Vec<(Event, u8)>) -> Vec<EventOutcome> {
        let metrics = self.engine.metrics();
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; events.len()];
        let mut remote: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        let mut local = Vec::new();
        for (i, (e, _)) in events.iter().enumerate() {
            let owner = self.owner_of(e.key());
            if owner == self.me {
                local.push(i);
            } else {
                remote.entry(owner).or_default().push(i);
            }
        }
        // Forward first (owners work in parallel with the local part), then apply the local events.
        let mut waiting = Vec::new();
        for (owner, indices) in remote {
            let req = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.waiters().forwards.insert(req, tx);
            let batch: Vec<WireEvent> = indices
                .iter()
                .map(|i| {
                    let (event, hops) = &events[*i];
                    WireEvent {
                        hops: *hops,
                        ..WireEvent::from(event)
                    }
                })
                .collect();
            metrics
                .events_forwarded
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let addrs = self.addrs();
            self.send(
                &addrs,
                owner.clone(),
                PeerMessage::ForwardEvents { req, events: batch },
            );
            waiting.push((owner, req, indices, rx));
        }
        for i in local {
            let (event, hops) = &events[i];
            outcomes[i] = Some(self.apply_as_owner(event, *hops).await);
        }
        for (owner, req, indices, rx) in waiting {
            let answer = tokio::time::timeout(self.rpc_timeout, rx).await;
            self.waiters().forwards.remove(&req);
            match answer {
                Ok(Ok(replies)) if replies.len() == indices.len() => {
                    for (i, outcome) in indices.into_iter().zip(replies) {
                        outcomes[i] = Some(outcome);
                    }
                }
                _ => {
                    for i in indices {
                        outcomes[i] = Some(refused(
                            ErrorCode::Unavailable,
                            format!("owner {owner} did not answer in time; retry (events are deduplicated)"),
                        ));
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| refused(ErrorCode::Internal, "no outcome")))
            .collect()
    }

    /// Applies events forwarded by `from` (this node is their owner) and answers it.
    pub(super) async fn on_forwarded(&self, from: NodeId, req: u64, events: Vec<WireEvent>) {
        let limits = self.engine.limits().clone();
        let mut outcomes = Vec::with_capacity(events.len());
        for wire in events {
            let outcome = match wire.to_event(&limits) {
                Ok(event) => self.apply_as_owner(&event, wire.hops).await,
                Err(e) => {
                    self.engine.metrics().count_error(ErrorCode::from(&e));
                    let reply = ErrorReply::of(&e);
                    refused(reply.code, reply.message)
                }
            };
            outcomes.push(outcome);
        }
        let addrs = self.addrs();
        self.send(&addrs, from, PeerMessage::ForwardReply { req, outcomes });
    }

    /// Applies one event here as its owner: admitted by replication, decided by the core, durable, then
    /// replicated.
    async fn apply_as_owner(&self, event: &Event, hops: u8) -> EventOutcome {
        let metrics = self.engine.metrics();
        let Ok(permit) = self.ingester.permits.try_acquire() else {
            Metrics::incr(&metrics.events_overloaded);
            return refused(ErrorCode::Unavailable, "ingest queue full; retry later");
        };
        let key = event.key();
        if let Some(canonical) = self.engine.alias_of(key) {
            drop(permit);
            return self.redirect(event, canonical, hops).await;
        }
        // A retried linking event needs no second link (it is a duplicate below).
        let link = link_of(event)
            .filter(|id| !self.engine.has_absorbed(key, id) && !self.engine.has_seen(key, event));
        let linked = match link {
            Some(id) => match self.prepare_link(key, id).await {
                Ok(state) => Some((id, state)),
                Err(outcome) => return outcome,
            },
            None => None,
        };
        let ticket = match self.repl().begin_local_write(key, 1) {
            Ok(ticket) => ticket,
            Err(e) => return refused(ErrorCode::from(&e), e.to_string()),
        };
        let definitions = self.ingester.definitions.clone();
        let result = match &linked {
            Some((id, state)) => {
                self.engine
                    .ingest_linking(key, event, id, state, &definitions)
                    .await
            }
            None => self.engine.ingest(key, event, &definitions).await,
        };
        let ingested = match result {
            Ok(ingested) => ingested,
            Err(reply) => {
                self.repl().abort_local_write(ticket);
                Metrics::incr(&metrics.events_refused);
                return refused(reply.code, reply.message);
            }
        };
        if ingested.duplicate {
            self.repl().abort_local_write(ticket);
            Metrics::incr(&metrics.events_duplicate);
            return EventOutcome::Duplicate;
        }
        if let Some(canonical) = ingested.redirect {
            // Linked since the check above (a redirect replicated in meanwhile).
            self.repl().abort_local_write(ticket);
            drop(permit);
            return self.redirect(event, canonical, hops).await;
        }
        if ingested.linked.is_some() {
            Metrics::incr(&metrics.identity_links);
        }
        let plan = self
            .repl()
            .on_local_write(ticket, key, &*self.engine, now_ms());
        if let Err(Response::Error(reply)) = self.replicate(plan).await {
            return refused(reply.code, reply.message);
        }
        Metrics::incr(&metrics.events_ingested);
        metrics.events_late.fetch_add(
            ingested.late.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        EventOutcome::Applied {
            late: ingested.late,
        }
    }
}

impl Cluster {
    /// Sends `event`, whose id was linked into `canonical`, to `canonical`'s owner as an event of that user.
    async fn redirect(&self, event: &Event, canonical: String, hops: u8) -> EventOutcome {
        let metrics = self.engine.metrics();
        if let Err(e) = check_redirect(event.key(), hops, self.engine.limits()) {
            Metrics::incr(&metrics.identity_refused);
            return refused(ErrorCode::from(&e), e.to_string());
        }
        Metrics::incr(&metrics.identity_redirects);
        let mut routed = event.clone();
        routed.user_id = Some(canonical);
        let mut outcomes = self.route_boxed(vec![(routed, hops + 1)]).await;
        outcomes
            .pop()
            .unwrap_or_else(|| refused(ErrorCode::Internal, "no outcome"))
    }

    /// Reads the state of `id` (to be linked into `key`) from its live replicas, merged.
    async fn read_linked(&self, id: &str) -> Result<Profile, EventOutcome> {
        let now = now_ms();
        let live = {
            let repl = self.repl();
            repl.replicas(id)
                .iter()
                .filter(|r| **r == self.me || repl.liveness(r, now) != Liveness::Down)
                .count()
        };
        match self.quorum_read(id, live.max(1)).await {
            Ok(state) => Ok(state.unwrap_or_default()),
            Err(_) => Err(refused(
                ErrorCode::Unavailable,
                format!("could not read {id:?} to link it; retry (events are deduplicated)"),
            )),
        }
    }

    /// The first steps of a link of `id` into `key` (see the module docs): check, redirect, read again.
    /// Returns the state to absorb.
    async fn prepare_link(&self, key: &str, id: &str) -> Result<Profile, EventOutcome> {
        let metrics = self.engine.metrics();
        let mut state = self.read_linked(id).await?;
        let canonical = self.engine.state(key).unwrap_or_default();
        if let Err(e) = check_link(&canonical, key, id, &state, self.engine.limits()) {
            Metrics::incr(&metrics.identity_refused);
            return Err(refused(ErrorCode::from(&e), e.to_string()));
        }
        let ticket = match self.repl().begin_local_write(id, 1) {
            Ok(ticket) => ticket,
            Err(e) => return Err(refused(ErrorCode::from(&e), e.to_string())),
        };
        if let Err(reply) = self.engine.set_alias(id, key).await {
            self.repl().abort_local_write(ticket);
            return Err(refused(reply.code, reply.message));
        }
        let plan = self
            .repl()
            .on_local_write(ticket, id, &*self.engine, now_ms());
        if let Err(Response::Error(reply)) = self.replicate(plan).await {
            return Err(refused(reply.code, reply.message));
        }
        // What the linked id's owner applied before the redirect reached it.
        state.merge(&self.read_linked(id).await?);
        Ok(state)
    }
}
