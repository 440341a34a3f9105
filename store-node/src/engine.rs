//! The node's data engine: the in-memory profiles, the clock, and the path of every request to and from
//! storage.
//!
//! Guarantees:
//! - Reads are served from memory, from one of [`SHARDS`] independently locked shards (never one global
//!   lock, never the disk).
//! - A write is validated, stamped by the node's hybrid logical clock, applied to a *copy* of the entity's
//!   profile, encoded as a versioned record, handed to storage, and only then published in memory; if
//!   storage refuses it, memory is unchanged. Under the `sync` policy the reply waits until a flush that
//!   covers the write has completed (group commit); under `periodic` it does not.
//! - At startup every stored record is decoded and the clock is moved past the largest timestamp found, so
//!   markers never go backwards across restarts. A record that cannot be decoded is logged and counted,
//!   left untouched on disk, and does not stop the node.
//!
//! Caveats:
//! - A write becomes visible to readers on this node as soon as storage accepted it, slightly before it is
//!   durable under `sync` (its acknowledgement waits; a concurrent read does not).
//! - The whole data set lives in memory; this is a feature store for hot profiles.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use featurestore::codec::{decode_record, encode_record};
use featurestore::profile::{FlagUpdate, GaugeUpdate, WriteOutcome};
use featurestore::protocol::{ErrorReply, NodeStatus, PutAck};
use featurestore::replication::record_hash;
use featurestore::{
    Clock, ErrorCode, Limits, Marker, NodeId, Profile, Request, Response, Timestamp,
};

use crate::metrics::Metrics;
use crate::storage::{Durability, Storage, WriteTicket};

/// Number of independently locked shards of the in-memory map.
pub const SHARDS: usize = 64;

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A profile with the hash of its stored record (kept up to date on every write, so anti-entropy and
/// orphan scans never re-encode profiles).
#[derive(Debug, Clone)]
struct Stored {
    profile: Profile,
    hash: u64,
}

type Shard = RwLock<HashMap<String, Stored>>;

/// A failed request, before it becomes an error reply.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl From<featurestore::Error> for Refusal {
    fn from(e: featurestore::Error) -> Self {
        Refusal {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<crate::Error> for Refusal {
    fn from(e: crate::Error) -> Self {
        let code = match &e {
            crate::Error::Core(core) => core.code(),
            _ => ErrorCode::Storage,
        };
        Refusal {
            code,
            message: e.to_string(),
        }
    }
}

/// The node's data engine.
pub struct Engine {
    node: NodeId,
    limits: Limits,
    clock: Mutex<Clock>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    storage: Arc<dyn Storage>,
    durability: Arc<Durability>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What [`Engine::open`] found on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Entities loaded.
    pub entities: usize,
    /// Records that could not be decoded (left on disk, not served).
    pub corrupt: usize,
}

impl Engine {
    /// Loads every record from `storage` and returns a ready engine.
    pub fn open(
        node: NodeId,
        limits: Limits,
        max_clock_skew_ms: u64,
        storage: Arc<dyn Storage>,
        durability: Arc<Durability>,
        metrics: Arc<Metrics>,
    ) -> crate::Result<(Engine, Recovery)> {
        let mut clock = Clock::new(node.clone(), max_clock_skew_ms);
        let shards: Box<[Shard]> = (0..SHARDS).map(|_| RwLock::default()).collect();
        let hasher = RandomState::new();
        let mut recovery = Recovery::default();
        for (key, bytes) in storage.load_all()? {
            let decoded = String::from_utf8(key.clone())
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    decode_record(&bytes)
                        .map(|p| (k, p))
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok((key, profile)) => {
                    if let Some(ts) = profile.max_timestamp() {
                        clock.recover(ts);
                    }
                    let shard = &shards[shard_index(&hasher, &key)];
                    let hash = record_hash(&bytes);
                    shard
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key, Stored { profile, hash });
                    recovery.entities += 1;
                }
                Err(reason) => {
                    tracing::error!(key = %String::from_utf8_lossy(&key), %reason, "corrupt record skipped");
                    recovery.corrupt += 1;
                }
            }
        }
        let engine = Engine {
            node,
            limits,
            clock: Mutex::new(clock),
            shards,
            hasher,
            storage,
            durability,
            metrics,
            started: Instant::now(),
        };
        Ok((engine, recovery))
    }

    /// The limits requests are validated against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[shard_index(&self.hasher, key)]
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request. Validation, limit and storage failures become [`Response::Error`].
    pub async fn handle(&self, request: Request) -> Response {
        Metrics::incr(&self.metrics.requests);
        let is_write = request.is_write();
        let result = match request.validate(&self.limits) {
            Ok(()) => self.dispatch(request).await,
            Err(e) => Err(Refusal::from(e)),
        };
        match result {
            Ok(response) => {
                if is_write {
                    Metrics::incr(&self.metrics.writes_acknowledged);
                }
                response
            }
            Err(refusal) => {
                self.metrics.count_error(refusal.code);
                tracing::debug!(code = ?refusal.code, message = %refusal.message, "request refused");
                Response::Error(ErrorReply {
                    code: refusal.code,
                    message: refusal.message,
                })
            }
        }
    }

    async fn dispatch(&self, request: Request) -> Result<Response, Refusal> {
        let now = now_ms();
        match request {
            Request::Get { key, features, .. } => {
                Metrics::incr(&self.metrics.keys_read);
                Ok(Response::Profile(self.read(&key, now, features.as_deref())))
            }
            Request::GetMany { keys, features, .. } => {
                let views = keys
                    .iter()
                    .map(|k| self.read(k, now, features.as_deref()))
                    .collect();
                self.metrics
                    .keys_read
                    .fetch_add(keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(Response::Profiles(views))
            }
            Request::Put {
                key,
                gauges,
                timestamp_ms,
                ..
            } => {
                let marker = match timestamp_ms {
                    None => self.clock().stamp(now),
                    Some(t) => {
                        let ts = Timestamp::from_millis(t);
                        self.clock().observe(ts, now)?;
                        Marker {
                            ts,
                            node: self.node.clone(),
                        }
                    }
                };
                let base = timestamp_ms.unwrap_or(now);
                let updates: Vec<GaugeUpdate<'_>> = gauges
                    .iter()
                    .map(|g| GaugeUpdate {
                        name: &g.name,
                        value: &g.value,
                        expires_at_ms: g.ttl_ms.map(|ttl| base.saturating_add(ttl)),
                    })
                    .collect();
                let outcomes = self
                    .write(&key, |p| p.put_gauges(&updates, &marker, &self.limits))
                    .await?;
                let superseded = gauges
                    .iter()
                    .zip(outcomes)
                    .filter(|(_, o)| *o == WriteOutcome::Superseded)
                    .map(|(g, _)| g.name.clone())
                    .collect();
                Ok(Response::Put(PutAck {
                    version: marker,
                    superseded,
                }))
            }
            Request::Increment { key, deltas, .. } => {
                let ts = self.clock().tick(now);
                let pairs: Vec<(&str, i64)> =
                    deltas.iter().map(|d| (d.name.as_str(), d.delta)).collect();
                let values = self
                    .write(&key, |p| p.increment(&pairs, &self.node, ts, &self.limits))
                    .await?;
                Ok(Response::Incremented(values))
            }
            Request::SetFlag {
                key,
                name,
                value,
                context,
                ttl_ms,
                ..
            } => {
                let marker = self.clock().stamp(now);
                let update = FlagUpdate {
                    name: &name,
                    value,
                    context: &context,
                    marker,
                    expires_at_ms: ttl_ms.map(|ttl| now.saturating_add(ttl)),
                };
                let view = self
                    .write(&key, |p| {
                        p.set_flag(update, now, &self.limits)?;
                        Ok(p.flag_view(&name, now))
                    })
                    .await?;
                Ok(Response::Flag(view))
            }
            Request::Erase { key, .. } => {
                let watermark = self.clock().stamp(now);
                let w = watermark.clone();
                self.write(&key, move |p| {
                    p.erase(w);
                    Ok(())
                })
                .await?;
                Ok(Response::Erased { watermark })
            }
            Request::Status => Ok(Response::Status(self.status())),
            Request::Cluster
            | Request::LocalState { .. }
            | Request::Digests { .. }
            | Request::Leave => Err(Refusal {
                code: ErrorCode::Internal,
                message: "cluster requests are answered by the cluster layer".into(),
            }),
        }
    }

    /// The state of `key` held here.
    pub fn state(&self, key: &str) -> Option<Profile> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).map(|s| s.profile.clone())
    }

    /// The storage engine.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The durability policy runner.
    pub fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    /// Merges a state from another replica (replication, anti-entropy, read repair). Refuses states
    /// stamped further ahead than the clock-skew limit; advances the clock past the state otherwise.
    /// Stores the result if it changed; the caller waits for durability before acknowledging.
    pub fn merge_state(&self, key: &str, incoming: &Profile) -> crate::Result<bool> {
        self.limits.check_key(key)?;
        if let Some(ts) = incoming.max_timestamp() {
            self.clock().observe(ts, now_ms())?;
        }
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut profile = shard
            .get(key)
            .map(|s| s.profile.clone())
            .unwrap_or_default();
        if !profile.merge(incoming) && shard.contains_key(key) {
            return Ok(false);
        }
        // The caller waits for durability (of everything written so far) before acknowledging.
        let _ticket = self.store_locked(&mut shard, key, profile)?;
        Ok(true)
    }

    /// Encodes `profile`, hands it to storage and publishes it in `shard` (only if storage accepted it).
    /// Returns the durability ticket of the write.
    fn store_locked(
        &self,
        shard: &mut HashMap<String, Stored>,
        key: &str,
        profile: Profile,
    ) -> crate::Result<WriteTicket> {
        let record = encode_record(&profile)?;
        self.storage.put(key.as_bytes(), &record)?;
        let ticket = self.durability.written();
        let hash = record_hash(&record);
        shard.insert(key.to_owned(), Stored { profile, hash });
        Ok(ticket)
    }

    fn read(
        &self,
        key: &str,
        now: u64,
        features: Option<&[String]>,
    ) -> Option<featurestore::ProfileView> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).and_then(|s| s.profile.view(now, features))
    }

    /// Applies `change` to a copy of `key`'s profile, stores it, publishes it, and waits for durability as
    /// the policy requires.
    async fn write<T>(
        &self,
        key: &str,
        change: impl FnOnce(&mut Profile) -> featurestore::Result<T>,
    ) -> Result<T, Refusal> {
        let (out, ticket) = {
            let mut shard = self
                .shard(key)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut profile = shard
                .get(key)
                .map(|s| s.profile.clone())
                .unwrap_or_default();
            let out = change(&mut profile)?;
            let ticket = self.store_locked(&mut shard, key, profile)?;
            (out, ticket)
        };
        if let Err(e) = self.durability.wait_durable(ticket).await {
            tracing::error!(%key, error = %e, "write not durable, not acknowledged");
            return Err(Refusal::from(e));
        }
        Ok(out)
    }

    /// Physically drops expired values (gauges become tombstones, flag siblings go) and stores the smaller
    /// records. Returns the number of entities rewritten.
    pub fn sweep_expired(&self, now: u64) -> usize {
        let mut rewritten = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            for (key, entry) in shard.iter_mut() {
                if !entry.profile.has_expired(now) {
                    continue;
                }
                let mut copy = entry.profile.clone();
                copy.expire(now);
                let stored = encode_record(&copy)
                    .map_err(crate::Error::from)
                    .and_then(|r| {
                        self.storage.put(key.as_bytes(), &r)?;
                        Ok(record_hash(&r))
                    });
                match stored {
                    Ok(hash) => {
                        *entry = Stored {
                            profile: copy,
                            hash,
                        };
                        let _ticket = self.durability.written();
                        rewritten += 1;
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "expiry sweep could not store"),
                }
            }
        }
        self.metrics
            .expired_sweeps
            .fetch_add(rewritten as u64, std::sync::atomic::Ordering::Relaxed);
        rewritten
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        let entities = self
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len() as u64)
            .sum();
        let mut counters = self.metrics.snapshot();
        let d = self.durability.stats();
        counters.extend([
            ("flushes".to_owned(), d.flushes),
            ("flush_failures".to_owned(), d.flush_failures),
            ("durable_writes".to_owned(), d.durable_seq),
            ("last_flush_micros".to_owned(), d.last_flush_micros),
        ]);
        NodeStatus {
            node_id: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            entities,
            storage: self.storage.kind().to_owned(),
            durability: self.durability.policy().to_string(),
            disk_bytes: self.storage.disk_bytes().unwrap_or(0),
            counters,
            ring_version: 0,
            members: Vec::new(),
        }
    }
}

impl featurestore::replication::LocalStore for Engine {
    fn state(&self, key: &str) -> Option<Profile> {
        Engine::state(self, key)
    }

    fn merge_remote(&self, key: &str, state: &Profile) -> Result<(), String> {
        self.merge_state(key, state)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn for_each_key(&self, f: &mut dyn FnMut(&str, u64)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (key, entry) in shard.iter() {
                f(key, entry.hash);
            }
        }
    }

    fn remove_if_unchanged(&self, key: &str, expected: u64) -> Result<bool, String> {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let unchanged = shard.get(key).is_some_and(|s| s.hash == expected);
        if !unchanged {
            return Ok(false);
        }
        self.storage
            .remove(key.as_bytes())
            .map_err(|e| e.to_string())?;
        let _ticket = self.durability.written();
        shard.remove(key);
        Ok(true)
    }
}

fn shard_index(hasher: &RandomState, key: &str) -> usize {
    (hasher.hash_one(key) % SHARDS as u64) as usize
}
