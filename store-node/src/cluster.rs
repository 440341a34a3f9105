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
//! Caveat: the replication state machine sits behind one mutex; it is taken on writes and peer messages,
//! never on local reads (they route with a placement snapshot). Anti-entropy rounds hash every local
//! record while holding it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use featurestore::codec::{decode_versioned, encode_versioned};
use featurestore::membership::{MemberState, MembershipTable};
use featurestore::protocol::{ClusterView, ErrorReply, MemberStatus, NodeStatus};
use featurestore::replication::{
    Effect, HintChange, PeerMessage, Placement, Replication, ReplicationConfig,
};
use featurestore::{ErrorCode, NodeId, Profile, Request, Response};
use tokio::sync::oneshot;

use crate::config::NodeConfig;
use crate::engine::{now_ms, Engine};
use crate::error::Result;
use crate::peer::Peers;

const META_MEMBERSHIP: &str = "membership";
/// Hints are stored one record each, named `hint/<target>/<key>` (node ids contain no `/`).
const META_HINT_PREFIX: &str = "hint/";

type Hints = BTreeMap<NodeId, BTreeSet<String>>;

/// Waiters for replica acknowledgements (W > 1) and read replies (R > 1).
#[derive(Default)]
struct Waiters {
    /// seq -> write waiter id
    acks: HashMap<u64, u64>,
    writes: HashMap<u64, WriteWaiter>,
    reads: HashMap<u64, tokio::sync::mpsc::UnboundedSender<(NodeId, Option<Profile>)>>,
}

struct WriteWaiter {
    needed: usize,
    from: HashSet<NodeId>,
    done: Option<oneshot::Sender<()>>,
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
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Builds the membership table a node starts from: the stored one, or one made from the configuration.
pub fn initial_table(
    config: &NodeConfig,
    stored: Option<MembershipTable>,
) -> Result<MembershipTable> {
    let me = config.node_id()?;
    let advertise = config.advertise().to_string();
    let mut table = match stored {
        Some(t) => t,
        None => {
            let mut t = MembershipTable::default();
            if config.cluster.bootstrap {
                for seed in &config.cluster.seeds {
                    let id = NodeId::new(seed.id.as_str())?;
                    if id != me {
                        t.set(&id, &seed.addr.to_string(), MemberState::Active);
                    }
                }
                t.set(&me, &advertise, MemberState::Active);
            } else {
                // Seeds at version 0: just enough to gossip with them; their own entries win.
                for seed in &config.cluster.seeds {
                    let id = NodeId::new(seed.id.as_str())?;
                    if id != me {
                        t.members.insert(
                            id.clone(),
                            featurestore::membership::Member {
                                id,
                                addr: seed.addr.to_string(),
                                state: MemberState::Active,
                                version: 0,
                            },
                        );
                    }
                }
                t.set(&me, &advertise, MemberState::Joining);
            }
            t
        }
    };
    // A restart on another address announces the new one.
    if let Some(m) = table.get(&me).cloned() {
        if m.addr != advertise {
            table.set(&me, &advertise, m.state);
        }
    }
    Ok(table)
}

impl Cluster {
    /// Restores the membership table and hints from storage and starts the replication state machine.
    pub fn open(config: &NodeConfig, engine: Arc<Engine>, peers: Peers) -> Result<Cluster> {
        let me = config.node_id()?;
        let storage = engine.storage().clone();
        let stored_table = storage
            .get_meta(META_MEMBERSHIP)?
            .map(|b| decode_versioned::<MembershipTable>(&b, "membership table"))
            .transpose()?;
        let mut hints: Hints = BTreeMap::new();
        for (name, _) in storage.scan_meta(META_HINT_PREFIX)? {
            let rest = &name[META_HINT_PREFIX.len()..];
            match rest.split_once('/').map(|(t, k)| (NodeId::new(t), k)) {
                Some((Ok(target), key)) => {
                    hints.entry(target).or_default().insert(key.to_owned());
                }
                _ => tracing::warn!(record = %name, "ignoring a malformed hint record"),
            }
        }
        let table = initial_table(config, stored_table)?;
        storage.put_meta(META_MEMBERSHIP, &encode_versioned(&table)?)?;
        let replication: ReplicationConfig = config.cluster.replication.clone();
        let rpc_timeout = Duration::from_millis(replication.rpc_timeout_ms);
        let repl = Replication::new(me.clone(), replication, table, hints, now_ms());
        let placement = std::sync::RwLock::new(Arc::new(repl.placement()));
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
        })
    }

    fn repl(&self) -> MutexGuard<'_, Replication> {
        self.repl.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Persists the hints and the membership table if they changed (and refreshes the placement snapshot
    /// when the table did). Returns whether anything was written.
    fn persist_dirty(&self, repl: &mut Replication) -> Result<bool> {
        let (hints, table) = repl.take_dirty();
        if table {
            *self
                .placement
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Arc::new(repl.placement());
        }
        let storage = self.engine.storage();
        let changed = !hints.is_empty() || table;
        for change in hints {
            match change {
                HintChange::Added(target, key) => {
                    storage.put_meta(&format!("{META_HINT_PREFIX}{target}/{key}"), &[])?;
                }
                HintChange::Removed(target, key) => {
                    storage.remove_meta(&format!("{META_HINT_PREFIX}{target}/{key}"))?;
                }
            }
        }
        if table {
            storage.put_meta(META_MEMBERSHIP, &encode_versioned(repl.table())?)?;
        }
        if changed {
            // Let the flusher know (periodic policy flushes only after writes).
            let _ticket = self.engine.durability().written();
        }
        Ok(changed)
    }

    /// Executes effects: sends messages, resolves waiters.
    fn dispatch(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let addrs: HashMap<NodeId, SocketAddr> = {
            let repl = self.repl();
            repl.table()
                .members
                .values()
                .filter_map(|m| m.addr.parse().ok().map(|a| (m.id.clone(), a)))
                .collect()
        };
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => match addrs.get(&to) {
                    Some(addr) => self.peers.send(&to, *addr, msg),
                    None => tracing::debug!(peer = %to, "no address for peer"),
                },
                Effect::Acked { from, seq, .. } => {
                    let mut w = self.waiters();
                    if let Some(id) = w.acks.remove(&seq) {
                        if let Some(waiter) = w.writes.get_mut(&id) {
                            waiter.from.insert(from);
                            if waiter.from.len() >= waiter.needed {
                                if let Some(done) = waiter.done.take() {
                                    let _ = done.send(());
                                }
                            }
                        }
                    }
                }
                Effect::ReadReply { from, req, state } => {
                    if let Some(tx) = self.waiters().reads.get(&req) {
                        let _ = tx.send((from, state));
                    }
                }
            }
        }
    }

    /// Handles a message from a peer.
    pub async fn on_peer_message(&self, from: NodeId, msg: PeerMessage) {
        let is_replicate = matches!(msg, PeerMessage::Replicate { .. });
        let effects = {
            let mut repl = self.repl();
            let effects = repl.handle(&from, msg, &*self.engine, now_ms());
            if let Err(error) = self.persist_dirty(&mut repl) {
                tracing::error!(%error, "could not persist replication metadata");
            }
            effects
        };
        if is_replicate {
            // Acknowledge only what the durability policy has made durable.
            let durability = self.engine.durability();
            if let Err(error) = durability.wait_durable(durability.written()).await {
                tracing::error!(%error, "replicated write not durable; not acknowledging");
                return;
            }
        }
        self.dispatch(effects);
    }

    /// One tick of the replication state machine (timeouts, hints, gossip, anti-entropy, handoffs).
    pub fn tick(&self) {
        let effects = {
            let mut repl = self.repl();
            let effects = repl.tick(&*self.engine, now_ms());
            if let Err(error) = self.persist_dirty(&mut repl) {
                tracing::error!(%error, "could not persist replication metadata");
            }
            effects
        };
        self.dispatch(effects);
    }

    /// Answers a client request.
    pub async fn handle(&self, request: Request) -> Response {
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
                {
                    let mut repl = self.repl();
                    repl.set_own_state(&self.advertise.to_string(), MemberState::Leaving);
                    if let Err(error) = self.persist_dirty(&mut repl) {
                        return error_reply(ErrorCode::Storage, error.to_string());
                    }
                }
                tracing::info!(node = %self.me, "leaving: handing ranges over");
                Response::Leaving
            }
            Request::Get { .. } | Request::GetMany { .. } => self.read(request).await,
            _ => self.write(request).await,
        }
    }

    async fn write(&self, request: Request) -> Response {
        let Some(key) = request.key().map(str::to_owned) else {
            return self.engine.handle(request).await;
        };
        let quorum = request.quorum();
        let replicas = self.placement().replicas(&key).len();
        if quorum > replicas.max(1) {
            return error_reply(
                ErrorCode::InvalidRequest,
                format!("W={quorum} exceeds the {replicas} replicas of the key"),
            );
        }
        if !self.repl().begin_local_write() {
            return error_reply(
                ErrorCode::Unavailable,
                "this node has left the cluster; send the write to a current member".into(),
            );
        }
        let response = self.engine.handle(request).await;
        if matches!(response, Response::Error(_)) {
            self.repl().abort_local_write();
            return response;
        }
        let (effects, persisted) = {
            let mut repl = self.repl();
            let effects = repl.on_local_write(&key, &*self.engine, now_ms());
            (effects, self.persist_dirty(&mut repl))
        };
        match persisted {
            Ok(true) => {
                // New hints (a replica down, or a sloppy-quorum write) are durable before the ack.
                let durability = self.engine.durability();
                if let Err(e) = durability.wait_durable(durability.written()).await {
                    return error_reply(ErrorCode::Storage, e.to_string());
                }
            }
            Ok(false) => {}
            Err(e) => return error_reply(ErrorCode::Storage, e.to_string()),
        }
        let mut wait = None;
        if quorum > 1 {
            let seqs: Vec<u64> = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Send {
                        msg: PeerMessage::Replicate { seq, .. },
                        ..
                    } => Some(*seq),
                    _ => None,
                })
                .collect();
            let (tx, rx) = oneshot::channel();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut w = self.waiters();
            for seq in &seqs {
                w.acks.insert(*seq, id);
            }
            w.writes.insert(
                id,
                WriteWaiter {
                    needed: quorum - 1,
                    from: HashSet::new(),
                    done: Some(tx),
                },
            );
            wait = Some((id, seqs, rx));
        }
        self.dispatch(effects);
        let Some((id, seqs, rx)) = wait else {
            return response;
        };
        let reached = tokio::time::timeout(self.rpc_timeout, rx)
            .await
            .is_ok_and(|r| r.is_ok());
        let acked = {
            let mut w = self.waiters();
            for seq in &seqs {
                w.acks.remove(seq);
            }
            w.writes.remove(&id).map_or(0, |w| w.from.len())
        };
        if reached {
            response
        } else {
            error_reply(
                ErrorCode::Unavailable,
                format!(
                    "write applied on this node and acknowledged by {acked} other replica(s); \
                     W={quorum} not reached in time (it keeps replicating)"
                ),
            )
        }
    }

    async fn read(&self, request: Request) -> Response {
        let quorum = request.quorum();
        let (keys, features, many) = match request {
            Request::Get { key, features, .. } => (vec![key], features, false),
            Request::GetMany { keys, features, .. } => (keys, features, true),
            other => return self.engine.handle(other).await,
        };
        let local_only = quorum == 1 && {
            let placement = self.placement();
            keys.iter()
                .all(|k| placement.replicas(k).contains(&self.me))
        };
        if local_only {
            let request = if many {
                Request::GetMany {
                    keys,
                    features,
                    quorum: 1,
                }
            } else {
                let key = keys.into_iter().next().unwrap_or_default();
                Request::Get {
                    key,
                    features,
                    quorum: 1,
                }
            };
            return self.engine.handle(request).await;
        }
        // Validate as the engine would, then read each key from enough replicas.
        let check = if many {
            Request::GetMany {
                keys: keys.clone(),
                features: features.clone(),
                quorum: 1,
            }
        } else {
            Request::Get {
                key: keys.first().cloned().unwrap_or_default(),
                features: features.clone(),
                quorum: 1,
            }
        };
        if let Err(e) = check.validate(self.engine.limits()) {
            self.engine.metrics().count_error(e.code());
            return error_reply(e.code(), e.to_string());
        }
        let mut views = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.quorum_read(key, quorum).await {
                Ok(state) => views.push(state.and_then(|p| p.view(now_ms(), features.as_deref()))),
                Err(reply) => return reply,
            }
        }
        if many {
            Response::Profiles(views)
        } else {
            Response::Profile(views.pop().flatten())
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
                .map(|to| Effect::Send {
                    to: to.clone(),
                    msg: PeerMessage::ReadState {
                        req,
                        key: key.to_owned(),
                    },
                })
                .collect();
            self.dispatch(effects);
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
        let mut merged: Option<Profile> = None;
        for (_, state) in &answers {
            if let Some(s) = state {
                merged.get_or_insert_with(Profile::default).merge(s);
            }
        }
        if let Some(m) = &merged {
            // Read repair: every replica that answered with less gets the merged state.
            let mut effects = Vec::new();
            for (node, state) in &answers {
                if state.as_ref() == Some(m) || !replicas.contains(node) {
                    continue;
                }
                if *node == self.me {
                    if let Err(error) = self.engine.merge_state(key, m) {
                        tracing::warn!(%key, %error, "local read repair failed");
                    }
                } else {
                    effects.extend(self.repl().repair(node, key, m.clone(), now_ms()));
                }
            }
            self.dispatch(effects);
        }
        Ok(merged)
    }

    /// The node's status, with the membership as this node sees it.
    pub fn status(&self) -> NodeStatus {
        let mut status = self.engine.status();
        let now = now_ms();
        let repl = self.repl();
        status.ring_version = repl.table().version();
        status.members = repl
            .table()
            .members
            .values()
            .map(|m| MemberStatus {
                id: m.id.clone(),
                addr: m.addr.clone(),
                state: m.state,
                liveness: repl.liveness(&m.id, now),
                hints_queued: repl.hint_count(&m.id) as u64,
            })
            .collect();
        let s = repl.stats();
        status.counters.extend([
            ("hints_queued".to_owned(), s.hints_queued),
            ("hints_dropped".to_owned(), s.hints_dropped),
            ("hints_delivered".to_owned(), s.hints_delivered),
            ("replication_send_timeouts".to_owned(), s.send_timeouts),
            ("ae_rounds".to_owned(), s.ae_rounds),
            ("ae_keys_repaired".to_owned(), s.ae_keys_repaired),
            ("handoff_keys".to_owned(), s.handoff_keys),
            ("orphans_moved".to_owned(), s.orphans_moved),
        ]);
        status.counters.extend(self.peers.metrics().snapshot());
        status
    }
}

fn error_reply(code: ErrorCode, message: String) -> Response {
    Response::Error(ErrorReply { code, message })
}
