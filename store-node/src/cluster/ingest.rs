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
//! - **Dead letters**: an event refused here as owner for what it is (a wrong property type for a
//!   definition, clock skew, ...), and with `[ingest] dead_letter_late` an event late for a window, is kept
//!   in this node's dead-letter queue ([`super::dead_letters`]) before it is answered. Retryable outcomes
//!   (`Unavailable`, storage failures) are not kept: the sender retries. A replay ([`Source::Replay`]) is
//!   not captured again.

use std::collections::BTreeMap;
use std::sync::Arc;

use featurestore::cluster::detector::Liveness;
use featurestore::ingest::{check_link, check_redirect, link_of, Definitions, Event};
use featurestore::wire::dead_letter::Capture;
use featurestore::wire::event::{EventOutcome, WireEvent};
use featurestore::wire::peer::PeerMessage;
use featurestore::{ErrorCode, ErrorReply, NodeId, Profile, Response};
use futures_util::StreamExt as _;
use tokio::sync::{oneshot, Semaphore};

use super::stall::StallGuard;
use super::Cluster;
use crate::clock::now_ms;
use crate::engine::Decided;
use crate::metrics::Metrics;
use crate::segments::log::now_us;

/// Most keys of one batch applied at once (each key's events stay in order, one after another).
pub const APPLY_CONCURRENCY: usize = 32;

/// What an owner needs to apply events: the compiled definitions and the bound on events in flight.
#[derive(Debug)]
pub struct Ingester {
    /// The feature definitions.
    pub definitions: Arc<Definitions>,
    /// Permits for events being applied here as owner.
    pub permits: Semaphore,
    /// Whether events late for a window are also kept as dead letters (`[ingest] dead_letter_late`).
    pub dead_letter_late: bool,
    /// Whether this process stalled recently: then it applies nothing as owner (see [`super::stall`]).
    pub stall: Arc<StallGuard>,
}

impl Ingester {
    /// An ingester with `definitions` applying at most `max_inflight` events at once.
    pub fn new(definitions: Definitions, max_inflight: usize) -> Ingester {
        Ingester {
            definitions: Arc::new(definitions),
            permits: Semaphore::new(max_inflight.max(1)),
            dead_letter_late: false,
            stall: Arc::new(StallGuard::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(2),
            )),
        }
    }
}

/// Where events come from, for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Received by a node: an HTTP write key's source name, `quic`, or `forward from NODE`.
    Named(String),
    /// A replay of dead letters: refusals are reported to the replay, not captured again.
    Replay,
}

/// Outcomes the sender retries (not dead letters).
pub fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Storage | ErrorCode::Internal
    )
}

/// Counts the rule evaluations and failures of one decision (transitions are counted by the change log
/// when they are published).
pub(super) fn count_decided(metrics: &Metrics, decided: &Decided) {
    for change in &decided.changes {
        tracing::debug!(
            user = %change.change.user, segment = %change.change.segment, kind = ?change.change.kind,
            seq = change.seq, "segment transition"
        );
    }
    metrics
        .segment_failures
        .fetch_add(decided.failed as u64, std::sync::atomic::Ordering::Relaxed);
    metrics.segment_evaluations.fetch_add(
        decided.evaluated as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn refused(code: ErrorCode, message: impl Into<String>) -> EventOutcome {
    EventOutcome::Refused {
        code,
        message: message.into(),
    }
}

impl Cluster {
    /// The node that applies events for `key`: the first replica not considered down, else this node.
    pub(super) fn owner_of(&self, key: &str) -> NodeId {
        let now = now_ms();
        let repl = self.repl();
        repl.replicas(key)
            .into_iter()
            .find(|r| repl.liveness(r, now) != Liveness::Down)
            .unwrap_or_else(|| self.me.clone())
    }

    /// Ingests validated events received by this node: each goes to its owner; the answer is one outcome
    /// per event, in order.
    pub async fn ingest(&self, events: Vec<Event>, source: &Source) -> Vec<EventOutcome> {
        self.route_events(
            events.into_iter().map(|e| (e, 0)).collect(),
            source,
            now_us(),
        )
        .await
    }

    /// [`Cluster::route_events`], boxed: the redirect of a linked id routes again from inside the owner's
    /// path.
    fn route_boxed<'a>(
        &'a self,
        events: Vec<(Event, u8)>,
        source: &'a Source,
        accepted_us: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<EventOutcome>> + Send + 'a>> {
        Box::pin(self.route_events(events, source, accepted_us))
    }

    /// Sends each event (with the identity redirects it followed so far) to its owner; one outcome per
    /// event, in order.
    async fn route_events(
        &self,
        events: Vec<(Event, u8)>,
        source: &Source,
        accepted_us: u64,
    ) -> Vec<EventOutcome> {
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
            // The owner must not begin after half our wait: the other half covers clock skew and the
            // apply itself, so an event it applies is one we are still waiting for.
            let budget = u64::try_from((self.rpc_timeout / 2).as_millis()).unwrap_or(u64::MAX);
            self.send(
                &addrs,
                owner.clone(),
                PeerMessage::ForwardEvents {
                    req,
                    events: batch,
                    deadline_ms: now_ms().saturating_add(budget),
                    accepted_us,
                },
            );
            waiting.push((owner, req, indices, rx));
        }
        let mine: Vec<(usize, &Event, u8)> = local
            .into_iter()
            .map(|i| (i, &events[i].0, events[i].1))
            .collect();
        for (i, outcome) in self.apply_batch(mine, source, accepted_us, None).await {
            outcomes[i] = Some(outcome);
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

    /// Applies events forwarded by `from` (this node is their owner) and answers it. Events it reaches
    /// after `deadline_ms` (the sender's clock) are refused as retryable: the sender may have given up.
    pub(super) async fn on_forwarded(
        &self,
        from: NodeId,
        req: u64,
        events: Vec<WireEvent>,
        deadline_ms: u64,
        accepted_us: u64,
    ) {
        let limits = self.engine.limits().clone();
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; events.len()];
        let source = Source::Named(format!("forward from {from}"));
        let mut valid = Vec::with_capacity(events.len());
        for (i, wire) in events.iter().enumerate() {
            match wire.to_event(&limits) {
                Ok(event) => valid.push((i, event, wire.hops)),
                Err(e) => {
                    self.engine.metrics().count_error(ErrorCode::from(&e));
                    let reply = ErrorReply::of(&e);
                    self.keep_wire(&source, wire, &reply).await;
                    outcomes[i] = Some(refused(reply.code, reply.message));
                }
            }
        }
        let batch: Vec<(usize, &Event, u8)> = valid.iter().map(|(i, e, h)| (*i, e, *h)).collect();
        for (i, outcome) in self
            .apply_batch(batch, &source, accepted_us, Some((deadline_ms, &from)))
            .await
        {
            outcomes[i] = Some(outcome);
        }
        let outcomes: Vec<EventOutcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| refused(ErrorCode::Internal, "no outcome")))
            .collect();
        let addrs = self.addrs();
        self.send(&addrs, from, PeerMessage::ForwardReply { req, outcomes });
    }

    /// Applies `events` here as their owner, returning each one's outcome with its index: one key's events
    /// one after another in their order, and up to [`APPLY_CONCURRENCY`] keys at once, so a batch waits
    /// for about one durability flush per event of its longest key rather than one per event (the flushes
    /// of concurrent keys are grouped). A batch with a linking event (`identify`, `alias`) is applied one
    /// event at a time in order: a link changes where later events of other keys go. With `deadline`
    /// (forwarded events: the sender's deadline and name), an event not begun by then is refused as
    /// retryable.
    async fn apply_batch(
        &self,
        events: Vec<(usize, &Event, u8)>,
        source: &Source,
        accepted_us: u64,
        deadline: Option<(u64, &NodeId)>,
    ) -> Vec<(usize, EventOutcome)> {
        let mut out = Vec::with_capacity(events.len());
        if events.len() <= 1 || events.iter().any(|(_, e, _)| link_of(e).is_some()) {
            for (i, event, hops) in events {
                out.push((
                    i,
                    self.apply_before(event, hops, source, accepted_us, deadline)
                        .await,
                ));
            }
            return out;
        }
        let mut by_key: BTreeMap<&str, Vec<(usize, &Event, u8)>> = BTreeMap::new();
        for (i, event, hops) in events {
            by_key
                .entry(event.key())
                .or_default()
                .push((i, event, hops));
        }
        // Futures collected first: a closure mapping to them would not be `Send` for every lifetime.
        let mut chains = Vec::with_capacity(by_key.len());
        for chain in by_key.into_values() {
            chains.push(self.apply_chain(chain, source, accepted_us, deadline));
        }
        let mut running = futures_util::stream::iter(chains).buffer_unordered(APPLY_CONCURRENCY);
        while let Some(done) = running.next().await {
            out.extend(done);
        }
        out
    }

    /// One key's events of a batch, one after another in order.
    async fn apply_chain(
        &self,
        chain: Vec<(usize, &Event, u8)>,
        source: &Source,
        accepted_us: u64,
        deadline: Option<(u64, &NodeId)>,
    ) -> Vec<(usize, EventOutcome)> {
        let mut done = Vec::with_capacity(chain.len());
        for (i, event, hops) in chain {
            let outcome = self
                .apply_before(event, hops, source, accepted_us, deadline)
                .await;
            done.push((i, outcome));
        }
        done
    }

    /// [`Cluster::apply_as_owner`], or with `deadline` passed a retryable refusal.
    async fn apply_before(
        &self,
        event: &Event,
        hops: u8,
        source: &Source,
        accepted_us: u64,
        deadline: Option<(u64, &NodeId)>,
    ) -> EventOutcome {
        if let Some((deadline_ms, from)) = deadline {
            if now_ms() > deadline_ms {
                Metrics::incr(&self.engine.metrics().events_expired);
                return refused(
                    ErrorCode::Unavailable,
                    format!(
                        "forwarded by {from} too long ago (the sender may have given up); retry"
                    ),
                );
            }
        }
        self.apply_as_owner(event, hops, source, accepted_us).await
    }

    /// Applies one event here as its owner: admitted by replication, decided by the core, durable, then
    /// replicated.
    async fn apply_as_owner(
        &self,
        event: &Event,
        hops: u8,
        source: &Source,
        accepted_us: u64,
    ) -> EventOutcome {
        let metrics = self.engine.metrics();
        let Ok(permit) = self.ingester.permits.try_acquire() else {
            Metrics::incr(&metrics.events_overloaded);
            return refused(ErrorCode::Unavailable, "ingest queue full; retry later");
        };
        if self.ingester.stall.stalled() {
            // Its sender may have given up while this process was frozen, and a retry may already be
            // applied elsewhere.
            Metrics::incr(&metrics.events_stalled);
            return refused(
                ErrorCode::Unavailable,
                "this node stalled a moment ago; retry (events are deduplicated)",
            );
        }
        let key = event.key();
        // A linking event needs the key's canonical id before anything is linked; any other event learns
        // of a redirect from the engine's answer below (one lookup on the common path).
        let link = link_of(event);
        if link.is_some() {
            if let Some(canonical) = self.engine.alias_of(key) {
                drop(permit);
                return self
                    .redirect(event, canonical, hops, source, accepted_us)
                    .await;
            }
        }
        // A retried linking event needs no second link (it is a duplicate below).
        let link = link
            .filter(|id| !self.engine.has_absorbed(key, id) && !self.engine.has_seen(key, event));
        let linked = match link {
            Some(id) => match self.prepare_link(key, id).await {
                Ok(state) => Some((id, state)),
                Err(outcome) => {
                    // A link that cannot be made (a loop, a conflict, the limit) is kept like any
                    // refusal; an unavailable replica is retried by the sender.
                    if let EventOutcome::Refused { code, message } = &outcome {
                        if !retryable(*code) {
                            self.keep(source, event, *code, message).await;
                        }
                    }
                    return outcome;
                }
            },
            None => None,
        };
        let ticket = match self.repl().begin_local_write(key, 1) {
            Ok(ticket) => ticket,
            Err(e) => return refused(ErrorCode::from(&e), e.to_string()),
        };
        let definitions = self.ingester.definitions.clone();
        let fence = self.fence(Some(accepted_us), None);
        let result = match &linked {
            Some((id, state)) => {
                self.engine
                    .ingest_linking(key, event, id, state, &definitions, &self.segments, &fence)
                    .await
            }
            None => {
                self.engine
                    .ingest(key, event, &definitions, &self.segments, &fence)
                    .await
            }
        };
        let (ingested, decided) = match result {
            Ok(out) => out,
            Err(reply) => {
                self.repl().abort_local_write(ticket);
                Metrics::incr(&metrics.events_refused);
                if !retryable(reply.code) {
                    self.keep(source, event, reply.code, &reply.message).await;
                }
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
            return self
                .redirect(event, canonical, hops, source, accepted_us)
                .await;
        }
        if ingested.linked.is_some() {
            Metrics::incr(&metrics.identity_links);
        }
        let plan =
            self.repl()
                .on_local_write(ticket, key, Some(&decided.delta), &*self.engine, now_ms());
        if let Err(Response::Error(reply)) = self.replicate(plan).await {
            return refused(reply.code, reply.message);
        }
        Metrics::incr(&metrics.events_ingested);
        count_decided(metrics, &decided);
        metrics.events_late.fetch_add(
            ingested.late.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.ingester.dead_letter_late && !ingested.late.is_empty() {
            let reason = format!(
                "late for window(s) {}: counted in no window (its other features applied)",
                ingested.late.join(", ")
            );
            self.keep(source, event, ErrorCode::InvalidRequest, &reason)
                .await;
        }
        EventOutcome::Applied {
            late: ingested.late,
        }
    }
}

impl Cluster {
    /// Sends `event`, whose id was linked into `canonical`, to `canonical`'s owner as an event of that user.
    async fn redirect(
        &self,
        event: &Event,
        canonical: String,
        hops: u8,
        source: &Source,
        accepted_us: u64,
    ) -> EventOutcome {
        let metrics = self.engine.metrics();
        if let Err(e) = check_redirect(event.key(), hops, self.engine.limits()) {
            Metrics::incr(&metrics.identity_refused);
            let code = ErrorCode::from(&e);
            self.keep(source, event, code, &e.to_string()).await;
            return refused(code, e.to_string());
        }
        Metrics::incr(&metrics.identity_redirects);
        let mut routed = event.clone();
        routed.user_id = Some(canonical);
        let mut outcomes = self
            .route_boxed(vec![(routed, hops + 1)], source, accepted_us)
            .await;
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
        let delta = match self.engine.set_alias(id, key).await {
            Ok(delta) => delta,
            Err(reply) => {
                self.repl().abort_local_write(ticket);
                return Err(refused(reply.code, reply.message));
            }
        };
        let plan = self
            .repl()
            .on_local_write(ticket, id, Some(&delta), &*self.engine, now_ms());
        if let Err(Response::Error(reply)) = self.replicate(plan).await {
            return Err(refused(reply.code, reply.message));
        }
        // What the linked id's owner applied before the redirect reached it.
        state.merge(&self.read_linked(id).await?);
        Ok(state)
    }

    /// Keeps `event` as a dead letter refused with `code` and `reason` (not for a replay).
    async fn keep(&self, source: &Source, event: &Event, code: ErrorCode, reason: &str) {
        if let Source::Named(name) = source {
            let capture = Capture::event(
                event,
                code,
                reason,
                name.clone(),
                now_ms(),
                self.engine.limits(),
            );
            self.dead_letters.capture(capture).await;
        }
    }

    /// Keeps an event that failed validation on the wire as a dead letter (its fields as JSON).
    pub(super) async fn keep_wire(&self, source: &Source, wire: &WireEvent, reply: &ErrorReply) {
        let Source::Named(name) = source else {
            return;
        };
        let properties = serde_json::from_str::<serde_json::Value>(&wire.properties_json)
            .unwrap_or_else(|_| serde_json::Value::String(wire.properties_json.clone()));
        let payload = serde_json::json!({
            "messageId": wire.message_id, "userId": wire.user_id, "anonymousId": wire.anonymous_id,
            "kind": wire.kind, "name": wire.name, "timestampMs": wire.timestamp_ms,
            "properties": properties, "previousId": wire.previous_id,
        });
        let key = wire.user_id.clone().or_else(|| wire.anonymous_id.clone());
        let capture = Capture::raw(
            reply.code,
            reply.message.clone(),
            name.clone(),
            now_ms(),
            &payload.to_string(),
            self.engine.limits(),
        )
        .with_ids(key, Some(wire.message_id.clone()));
        self.dead_letters.capture(capture).await;
    }
}
