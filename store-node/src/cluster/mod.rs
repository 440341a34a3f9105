//! The node's cluster runtime: it answers every client request, coordinating replication, and drives the
//! sans-IO [`Replication`] state machine of the core with real time, real peers and real storage.
//!
//! - Writes: applied and made durable locally by the [`Engine`], then handed to
//!   [`Replication::on_local_write`]; new hints are persisted before the client is answered. With `W > 1`
//!   the answer waits for `W - 1` replica acks (each replica acks only after its own durability wait); if
//!   they do not come within the RPC timeout the client gets `Unavailable` — the write stays applied where
//!   it landed and keeps replicating (no rollback, as in Dynamo).
//! - Reads: with `R = 1` on a replica, from local memory. With `R > 1`, or on a node that is not a replica
//!   of the key, the state is read from enough replicas, merged, and every replica that answered with an
//!   older state is repaired (read repair). Too few answers in time: `Unavailable`.
//! - Peer messages: merged through the engine; acknowledgements are sent only after the durability policy
//!   is satisfied for what was merged.
//! - A ticker drives timeouts, hint replay, gossip, anti-entropy and handoffs, and persists the hints and
//!   the membership table when they change.
//!
//! Parts: `meta` names and (de)codes the hint, membership and incarnation records in storage; `waiters`
//! holds the requests waiting for replica acks and read replies; `stall` tells the ingest path that this
//! process was just frozen.
//!
//! Caveat: the replication state machine sits behind one mutex; it is taken on writes and peer messages,
//! never on local reads (they route with a placement snapshot). Anti-entropy rounds hash every local
//! record while holding it.

pub mod dead_letters;
pub mod ingest;
pub(crate) mod meta;
pub mod segments;
pub mod stall;
mod waiters;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use featurestore::cluster::membership::{MemberState, MembershipTable};
use featurestore::cluster::placement::Placement;
use featurestore::replication::{
    merge_answers, Effect, HintChange, QuorumRead, Replication, ReplicationConfig, SendWhen,
    WritePlan,
};
use featurestore::wire::client::{
    ClusterView, ErrorReply, MemberStatus, NodeStatus, WriteOp, WriteReply,
};
use featurestore::wire::codec::ReadFrame;
use featurestore::wire::peer::PeerMessage;
use featurestore::{ErrorCode, NodeId, Profile, Request, Response};
use tokio::sync::oneshot;

use dead_letters::DeadLetterQueue;
use featurestore::ingest::Definitions;
use featurestore::wire::event::EventOutcome;
use ingest::{Ingester, Source};
use stall::StallGuard;
use waiters::Waiters;

use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::engine::{error_reply as node_error_reply, Engine};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::net::peer::Peers;
use crate::segments::SegmentRuntime;

/// What a client request gets back from [`Cluster::handle`].
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a `Response` is returned by value everywhere already; boxing it would add an allocation per request"
)]
pub enum Answer {
    /// A response, for the server to encode.
    Response(Response),
    /// A read answer, already encoded as a whole frame (header and payload).
    Frame(Vec<u8>),
}

/// The cluster runtime of one node.
pub struct Cluster {
    me: NodeId,
    advertise: SocketAddr,
    engine: Arc<Engine>,
    repl: Mutex<Replication>,
    /// Placement snapshot for routing decisions that must not wait for the replication mutex (reads).
    placement: std::sync::RwLock<Arc<Placement>>,
    peers: Peers,
    waiters: Mutex<Waiters>,
    next_id: AtomicU64,
    rpc_timeout: Duration,
    /// Feature definitions and the ingest bound.
    ingester: Ingester,
    /// Events this node could not ingest.
    dead_letters: DeadLetterQueue,
    /// Segments: definitions, change log, timers.
    segments: Arc<SegmentRuntime>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Builds the membership table a node starts from: the stored one, or one made from the configuration
/// ([`MembershipTable::bootstrap`]).
pub fn initial_table(config: &NodeConfig, stored: Option<MembershipTable>) -> MembershipTable {
    let seeds: Vec<(NodeId, SocketAddr)> = config
        .cluster
        .seeds
        .iter()
        .map(|seed| (seed.id.clone(), seed.addr))
        .collect();
    MembershipTable::bootstrap(
        &config.node_id,
        config.advertise(),
        &seeds,
        config.cluster.bootstrap,
        stored,
    )
}

impl Cluster {
    /// Restores the membership table and hints from storage and starts the replication state machine.
    pub fn open(config: &NodeConfig, engine: Arc<Engine>, peers: Peers) -> Result<Cluster> {
        let me = config.node_id.clone();
        let storage = engine.storage().clone();
        let stored_table = meta::load_table(&*storage)?;
        let hints = meta::load_hints(&*storage)?;
        let table = initial_table(config, stored_table);
        meta::store_table(&*storage, &table)?;
        let replication: ReplicationConfig = config.cluster.replication.clone();
        let rpc_timeout = Duration::from_millis(replication.rpc_timeout_ms);
        let repl = Replication::new(me.clone(), replication, table, hints, now_ms());
        let placement = std::sync::RwLock::new(Arc::new(repl.placement()));
        let definitions = match &config.ingest.features {
            Some(path) => crate::features::load(path, &config.limits)?,
            None => Definitions::default(),
        };
        let segments = match &config.ingest.segments {
            Some(path) => crate::segments::load(path, &definitions, &config.limits)?,
            None => crate::segments::SegmentRules::default(),
        };
        let mut ingester = Ingester::new(definitions, config.ingest.max_inflight_events);
        let segments = Arc::new(SegmentRuntime::open(
            me.clone(),
            ingester.definitions.clone(),
            &segments,
            config.limits.clone(),
            storage.clone(),
            engine.metrics().clone(),
        )?);
        engine.watch_merges(segments.clone());
        // A stall of half the RPC timeout is one a forwarded event's sender may have given up over.
        ingester.stall = Arc::new(StallGuard::new(rpc_timeout / 2, rpc_timeout));
        ingester.dead_letter_late = config.ingest.dead_letter_late;
        let dead_letters = DeadLetterQueue::open(
            engine.limits().clone(),
            storage.clone(),
            engine.durability().clone(),
            engine.metrics().clone(),
        )?;
        Ok(Cluster {
            me,
            advertise: config.advertise(),
            engine,
            repl: Mutex::new(repl),
            placement,
            peers,
            waiters: Mutex::default(),
            next_id: AtomicU64::new(1),
            rpc_timeout,
            ingester,
            dead_letters,
            segments,
        })
    }

    /// The stall guard of the ingest path (its watch task is started by the node).
    pub fn stall_guard(&self) -> &Arc<StallGuard> {
        &self.ingester.stall
    }

    fn repl(&self) -> MutexGuard<'_, Replication> {
        self.repl.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine this cluster drives.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The peer transport.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    fn placement(&self) -> Arc<Placement> {
        self.placement
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Executes effects in order: persistence to storage (refreshing the placement snapshot when the
    /// table changed), messages that may leave now, resolved waiters. Returns the messages that may leave
    /// only once what was merged or persisted so far is durable ([`SendWhen::Durable`]).
    fn execute(&self, effects: Vec<Effect>) -> Result<Vec<(NodeId, PeerMessage)>> {
        let mut deferred = Vec::new();
        let mut persisted = false;
        let storage = self.engine.storage();
        let addrs = self.addrs();
        for effect in effects {
            match effect {
                Effect::PersistHint(HintChange::Added(target, key)) => {
                    meta::store_hint(&**storage, &target, &key)?;
                    persisted = true;
                }
                Effect::PersistHint(HintChange::Removed(target, key)) => {
                    meta::remove_hint(&**storage, &target, &key)?;
                    persisted = true;
                }
                Effect::PersistTable(table) => {
                    meta::store_table(&**storage, &table)?;
                    *self
                        .placement
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) =
                        Arc::new(self.repl().placement());
                    persisted = true;
                }
                Effect::Send {
                    to,
                    msg,
                    when: SendWhen::Durable,
                } => deferred.push((to, msg)),
                Effect::Send { to, msg, .. } => self.send(&addrs, to, msg),
                Effect::Acked { from, seq, .. } => {
                    if let Some(lag) = self.waiters().on_ack(seq, from) {
                        let h = &self.engine.metrics().histograms;
                        h.replication_ack_seconds.observe(lag.as_secs_f64());
                    }
                }
                Effect::IngestReply { req, outcomes, .. } => {
                    if let Some(tx) = self.waiters().forwards.remove(&req) {
                        let _ = tx.send(outcomes);
                    }
                }
                Effect::Catalog { from, message } => self.on_catalog(&addrs, from, message),
                Effect::Ingest { from, .. } => {
                    tracing::warn!(peer = %from, "forwarded events outside a peer message; dropped");
                }
                Effect::ReadReply { from, req, state } => {
                    if let Some(tx) = self.waiters().reads.get(&req) {
                        let _ = tx.send((from, state));
                    }
                }
            }
        }
        if persisted {
            // Let the flusher know (the periodic policy flushes only after writes).
            let _ticket = self.engine.durability().written();
        }
        Ok(deferred)
    }

    /// Every member's address.
    fn addrs(&self) -> HashMap<NodeId, SocketAddr> {
        self.repl()
            .table()
            .members
            .values()
            .map(|m| (m.id.clone(), m.addr.0))
            .collect()
    }

    fn send(&self, addrs: &HashMap<NodeId, SocketAddr>, to: NodeId, msg: PeerMessage) {
        match addrs.get(&to) {
            Some(addr) => self.peers.send(&to, *addr, msg),
            None => tracing::debug!(peer = %to, "no address for peer"),
        }
    }

    /// Waits until everything written so far is durable; then sends `deferred`.
    async fn send_when_durable(&self, deferred: Vec<(NodeId, PeerMessage)>) {
        if deferred.is_empty() {
            return;
        }
        let durability = self.engine.durability();
        if let Err(error) = durability.wait_durable(durability.written()).await {
            tracing::error!(%error, "replicated state not durable; not acknowledging");
            return;
        }
        let addrs = self.addrs();
        for (to, msg) in deferred {
            self.send(&addrs, to, msg);
        }
    }

    /// Handles a message from a peer.
    pub async fn on_peer_message(&self, from: NodeId, msg: PeerMessage) {
        let effects = self.repl().handle(&from, msg, &*self.engine, now_ms());
        let (forwarded, effects): (Vec<Effect>, Vec<Effect>) = effects
            .into_iter()
            .partition(|e| matches!(e, Effect::Ingest { .. }));
        match self.execute(effects) {
            Ok(deferred) => self.send_when_durable(deferred).await,
            Err(error) => tracing::error!(%error, "could not persist replication metadata"),
        }
        for effect in forwarded {
            if let Effect::Ingest {
                from,
                req,
                events,
                deadline_ms,
                accepted_us,
            } = effect
            {
                self.on_forwarded(from, req, events, deadline_ms, accepted_us)
                    .await;
            }
        }
    }

    /// One tick of the replication state machine (timeouts, hints, gossip, anti-entropy, handoffs).
    /// Returns the local time (Unix ms) of the state machine's next deadline: the ticker sleeps until
    /// then. Writes and peer messages never need an earlier tick: what they start (sends awaiting acks,
    /// new hints) is due later than the next gossip round, which bounds every sleep.
    pub fn tick(&self) -> u64 {
        let now = now_ms();
        let effects = self.repl().tick(&*self.engine, now);
        match self.execute(effects) {
            Ok(deferred) if !deferred.is_empty() => {
                // Ticks never acknowledge merged state today; if they ever do, the same rule applies.
                tokio::runtime::Handle::current().block_on(self.send_when_durable(deferred));
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "could not persist replication metadata"),
        }
        self.repl().next_deadline(now_ms())
    }

    /// Answers a client request: validated once here (the edge), counted once here, then routed.
    pub async fn handle(&self, request: Request) -> Answer {
        let metrics = self.engine.metrics();
        Metrics::incr(&metrics.requests);
        let is_write = request.is_write();
        let answer = match request.validate(self.engine.limits()) {
            Ok(()) if request.is_read() => self.read(request).await,
            Ok(()) => Answer::Response(self.route(request).await),
            Err(e) => Answer::Response(Response::Error(ErrorReply::of(&e))),
        };
        match &answer {
            Answer::Response(Response::Error(reply)) => {
                metrics.count_error(reply.code);
                tracing::debug!(code = ?reply.code, message = %reply.message, "request refused");
            }
            _ if is_write => Metrics::incr(&metrics.writes_acknowledged),
            _ => {}
        }
        answer
    }

    async fn route(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::Cluster => {
                let repl = self.repl();
                Response::Cluster(ClusterView {
                    table: repl.table().clone(),
                    vnodes: repl.config().vnodes,
                    replication_factor: u32::try_from(repl.config().replication_factor)
                        .unwrap_or(u32::MAX),
                })
            }
            Request::LocalState { key } => Response::LocalState(self.engine.state(&key)),
            Request::Digests { peer } => {
                let repl = self.repl();
                Response::Digests(repl.digests(&peer, &*self.engine))
            }
            Request::Leave => {
                let effects = self
                    .repl()
                    .set_own_state(self.advertise, MemberState::Leaving);
                if let Err(error) = self.execute(effects) {
                    return error_reply(ErrorCode::Storage, error.to_string());
                }
                tracing::info!(node = %self.me, "leaving: handing ranges over");
                Response::Leaving
            }
            Request::Get { .. } | Request::GetMany { .. } => {
                error_reply(ErrorCode::Internal, "reads are answered by `read`".into())
            }
            Request::Ingest { events } => Response::Ingested(self.ingest_wire(events).await),
            Request::DeadLetters { after, limit } => {
                let limits = self.engine.limits();
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                let max_bytes = u64::from(limits.max_frame_bytes / 2);
                Response::DeadLetters(self.dead_letters.page(
                    after,
                    limit.clamp(1, limits.max_batch),
                    max_bytes,
                ))
            }
            Request::DeadLetter { id } => Response::DeadLetter(self.dead_letters.get(id)),
            // Admin (`Request::is_admin`): dlq replay, dlq purge.
            Request::ReplayDeadLetters { ids, after } => {
                Response::Replayed(self.replay_dead_letters(ids, after).await)
            }
            Request::PurgeDeadLetters { ids } => match self.purge_dead_letters(ids).await {
                Ok(purged) => Response::Purged(purged),
                Err(e) => error_reply(ErrorCode::Storage, e.to_string()),
            },
            request @ (Request::SegmentChanges { .. }
            | Request::SegmentWhy { .. }
            | Request::SegmentMembers { .. }
            | Request::Segments
            | Request::DefineSegments { .. }) => self.segment_request(request).await,
            Request::Put { .. }
            | Request::Increment { .. }
            | Request::SetFlag { .. }
            | Request::Erase { .. } => self.write(&request).await,
            Request::Writes { writes } => Response::Written(self.writes(writes).await),
        }
    }

    /// The writes of one [`Request::Writes`]: each validated and coordinated as if it had come alone
    /// ([`Cluster::write`]), all at once, so their durability waits share a flush; one reply per write,
    /// in order. Each one's outcome is counted as a lone write's is, and its latency (from the batch's
    /// arrival to its own answer) is observed under its own kind (`put`, `increment`, ...), so the
    /// request-duration histograms mean the same with and without coalescing clients.
    async fn writes(&self, writes: Vec<WriteOp>) -> Vec<WriteReply> {
        let metrics = self.engine.metrics();
        let limits = self.engine.limits();
        let started = std::time::Instant::now();
        let each = writes.into_iter().map(|op| async move {
            let request = Request::from(op);
            let response = match request.validate(limits) {
                Ok(()) => self.write(&request).await,
                Err(e) => Response::Error(ErrorReply::of(&e)),
            };
            metrics
                .histograms
                .observe_request(request.kind(), started.elapsed().as_secs_f64());
            response
        });
        let replies = futures_util::future::join_all(each).await;
        replies
            .into_iter()
            .map(|response| {
                match &response {
                    Response::Error(reply) => metrics.count_error(reply.code),
                    _ => Metrics::incr(&metrics.writes_acknowledged),
                }
                WriteReply::from(response)
            })
            .collect()
    }

    /// A client write: admitted by replication (refused on a node that left, or W above the replicas),
    /// decided and made durable by the engine, then replicated; answered when the [`WritePlan`] allows.
    async fn write(&self, request: &Request) -> Response {
        let Some((key, write)) = request.write() else {
            return error_reply(ErrorCode::Internal, "not a write".into());
        };
        let ticket = match self.repl().begin_local_write(key, request.quorum()) {
            Ok(ticket) => ticket,
            Err(e) => return Response::Error(ErrorReply::of(&e)),
        };
        let (applied, delta) = match self.engine.apply(key, write).await {
            Ok(applied) => applied,
            Err(reply) => {
                self.repl().abort_local_write(ticket);
                return Response::Error(reply);
            }
        };
        let plan = self
            .repl()
            .on_local_write(ticket, key, Some(&delta), &*self.engine, now_ms());
        match self.replicate(plan).await {
            Ok(()) => Response::from(applied),
            Err(reply) => reply,
        }
    }

    /// Executes a write's plan: persists what it says (and waits for that to be durable if the
    /// acknowledgement depends on it), sends, and waits for W − 1 replica acknowledgements.
    async fn replicate(&self, plan: WritePlan) -> std::result::Result<(), Response> {
        let WritePlan {
            effects,
            ack_after_durable,
            replica_acks_needed,
            replica_sends,
        } = plan;
        self.waiters()
            .sent(&replica_sends, std::time::Instant::now());
        let wait = (replica_acks_needed > 0).then(|| {
            let (tx, rx) = oneshot::channel();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.waiters()
                .add_write(id, &replica_sends, replica_acks_needed, tx);
            (id, rx)
        });
        let deferred = self
            .execute(effects)
            .map_err(|e| error_reply(ErrorCode::Storage, e.to_string()))?;
        if ack_after_durable {
            // New hints (a replica down, or a sloppy-quorum write) are durable before the ack.
            let durability = self.engine.durability();
            if let Err(e) = durability.wait_durable(durability.written()).await {
                return Err(node_error_reply_response(&e));
            }
        }
        self.send_when_durable(deferred).await;
        let Some((id, rx)) = wait else {
            return Ok(());
        };
        let reached = tokio::time::timeout(self.rpc_timeout, rx)
            .await
            .is_ok_and(|r| r.is_ok());
        let acked = self.waiters().remove_write(id, &replica_sends);
        if reached {
            Ok(())
        } else {
            Err(error_reply(
                ErrorCode::Unavailable,
                format!(
                    "write applied on this node and acknowledged by {acked} other replica(s); \
                     W={} not reached in time (it keeps replicating)",
                    replica_acks_needed + 1
                ),
            ))
        }
    }

    /// A `Get` or `GetMany`, answered as an encoded frame: each view is written straight from the
    /// profile ([`featurestore::wire::codec::ReadFrame`]), from memory when this node holds every key and
    /// R = 1, else from the merged replies of a quorum read.
    async fn read(&self, request: Request) -> Answer {
        let quorum = request.quorum();
        let (keys, features, many) = match request {
            Request::Get { key, features, .. } => (vec![key], features, false),
            Request::GetMany { keys, features, .. } => (keys, features, true),
            _ => return Answer::Response(error_reply(ErrorCode::Internal, "not a read".into())),
        };
        self.engine
            .metrics()
            .keys_read
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let local_only = quorum == 1 && {
            let placement = self.placement();
            keys.iter().all(|k| placement.is_replica(k, &self.me))
        };
        let frame = if many {
            ReadFrame::many(keys.len())
        } else {
            ReadFrame::one()
        };
        let mut frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Answer::Response(error_reply(ErrorCode::Internal, e.to_string())),
        };
        let now = now_ms();
        for key in &keys {
            let pushed = if local_only {
                self.engine
                    .push_view(&mut frame, key, now, features.as_deref())
            } else {
                match self.quorum_read(key, quorum).await {
                    Ok(state) => frame
                        .push(state.as_ref(), now_ms(), features.as_deref())
                        .map_err(crate::Error::from),
                    Err(reply) => return Answer::Response(reply),
                }
            };
            if let Err(e) = pushed {
                return Answer::Response(error_reply(ErrorCode::Internal, e.to_string()));
            }
        }
        match frame.finish() {
            Ok(bytes) => Answer::Frame(bytes),
            Err(e) => Answer::Response(error_reply(ErrorCode::Internal, e.to_string())),
        }
    }

    /// Reads `key` from `quorum` replicas (this node counts if it is one), merges, repairs stale ones.
    async fn quorum_read(
        &self,
        key: &str,
        quorum: usize,
    ) -> std::result::Result<Option<Profile>, Response> {
        let now = now_ms();
        let (replicas, alive_first) = {
            let repl = self.repl();
            let replicas = repl.replicas(key);
            let mut ordered: Vec<NodeId> = replicas
                .iter()
                .filter(|r| **r != self.me)
                .cloned()
                .collect();
            ordered.sort_by_key(|r| repl.liveness(r, now) as u8);
            (replicas, ordered)
        };
        let local = replicas.contains(&self.me);
        let remote_needed = quorum
            .saturating_sub(usize::from(local))
            .min(alive_first.len());
        if quorum > replicas.len() {
            return Err(error_reply(
                ErrorCode::InvalidRequest,
                format!(
                    "R={quorum} exceeds the {} replicas of the key",
                    replicas.len()
                ),
            ));
        }
        let mut answers: Vec<(NodeId, Option<Profile>)> = Vec::new();
        if local {
            answers.push((self.me.clone(), self.engine.state(key)));
        }
        if remote_needed > 0 {
            let req = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            self.waiters().reads.insert(req, tx);
            // Ask every other replica, use the first `remote_needed` answers.
            let effects = alive_first
                .iter()
                .map(|to| {
                    Effect::send(
                        to.clone(),
                        PeerMessage::ReadState {
                            req,
                            key: key.to_owned(),
                        },
                    )
                })
                .collect();
            if let Err(error) = self.execute(effects) {
                tracing::warn!(%key, %error, "quorum read: could not execute sends");
            }
            let deadline = tokio::time::Instant::now() + self.rpc_timeout;
            let mut got = 0;
            while got < remote_needed {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(answer)) => {
                        answers.push(answer);
                        got += 1;
                    }
                    _ => break,
                }
            }
            self.waiters().reads.remove(&req);
            if got < remote_needed {
                return Err(error_reply(
                    ErrorCode::Unavailable,
                    format!(
                        "R={quorum}: only {} replica(s) answered in time",
                        answers.len()
                    ),
                ));
            }
        }
        let QuorumRead { merged, stale } = merge_answers(&answers, &replicas);
        if let Some(m) = &merged {
            // Read repair: every replica that answered with less gets the merged state.
            let mut effects = Vec::new();
            for node in stale {
                if node == self.me {
                    if let Err(error) = self.engine.merge_state(key, m) {
                        tracing::warn!(%key, %error, "local read repair failed");
                    }
                } else {
                    effects.extend(self.repl().repair(&node, key, m.clone(), now_ms()));
                }
            }
            if let Err(error) = self.execute(effects) {
                tracing::warn!(%key, %error, "read repair: could not execute sends");
            }
        }
        Ok(merged)
    }

    /// The node's status: the engine's part, the membership as this node sees it, and the replication
    /// and peer counters.
    pub fn status(&self) -> NodeStatus {
        let engine = self.engine.status();
        let now = now_ms();
        let repl = self.repl();
        let members = repl
            .table()
            .members
            .values()
            .map(|m| MemberStatus {
                id: m.id.clone(),
                addr: m.addr.to_string(),
                state: m.state,
                liveness: repl.liveness(&m.id, now),
                hints_queued: repl.hint_count(&m.id) as u64,
            })
            .collect();
        let mut counters = engine.counters;
        let s = repl.stats();
        counters.extend([
            ("hints_queued".to_owned(), s.hints_queued),
            ("hints_dropped".to_owned(), s.hints_dropped),
            ("hints_delivered".to_owned(), s.hints_delivered),
            ("replication_send_timeouts".to_owned(), s.send_timeouts),
            ("replication_delta_sends".to_owned(), s.delta_sends),
            ("replication_full_sends".to_owned(), s.full_sends),
            ("ae_rounds".to_owned(), s.ae_rounds),
            ("ae_keys_repaired".to_owned(), s.ae_keys_repaired),
            ("handoff_keys".to_owned(), s.handoff_keys),
            ("orphans_moved".to_owned(), s.orphans_moved),
        ]);
        counters.extend(self.peers.metrics().snapshot());
        let dlq = self.dead_letters.usage();
        counters.extend([
            ("dlq_entries".to_owned(), dlq.entries),
            ("dlq_bytes".to_owned(), dlq.bytes),
        ]);
        NodeStatus {
            node_id: self.me.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: engine.uptime_ms,
            entities: engine.entities,
            storage: engine.storage.to_owned(),
            durability: engine.durability,
            disk_bytes: engine.disk_bytes,
            counters,
            ring_version: repl.table().version(),
            members,
        }
    }
}

impl Cluster {
    /// Ingests a client's batch: each event validated again (a bad one refused with its defect), the
    /// valid ones routed to their owners; one outcome per event, in order.
    async fn ingest_wire(
        &self,
        events: Vec<featurestore::wire::event::WireEvent>,
    ) -> Vec<EventOutcome> {
        let limits = self.engine.limits().clone();
        let source = Source::Named("quic".to_owned());
        let mut outcomes: Vec<Option<EventOutcome>> = Vec::with_capacity(events.len());
        let mut valid = Vec::new();
        let mut at = Vec::new();
        for (i, wire) in events.into_iter().enumerate() {
            match wire.to_event(&limits) {
                Ok(event) => {
                    valid.push(event);
                    at.push(i);
                    outcomes.push(None);
                }
                Err(e) => {
                    let reply = ErrorReply::of(&e);
                    self.keep_wire(&source, &wire, &reply).await;
                    outcomes.push(Some(EventOutcome::Refused {
                        code: reply.code,
                        message: reply.message,
                    }));
                }
            }
        }
        for (i, outcome) in at.into_iter().zip(self.ingest(valid, &source).await) {
            outcomes[i] = Some(outcome);
        }
        outcomes.into_iter().flatten().collect()
    }
}

fn error_reply(code: ErrorCode, message: String) -> Response {
    Response::Error(ErrorReply { code, message })
}

fn node_error_reply_response(e: &crate::Error) -> Response {
    Response::Error(node_error_reply(e))
}
