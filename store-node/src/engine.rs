//! The node's data engine: the in-memory profiles, the clock, and the path of every request to and from
//! storage.
//!
//! Guarantees:
//! - Reads are served from memory, from one of [`SHARDS`] independently locked shards (never one global
//!   lock, never the disk).
//! - A write is validated, stamped by the node's hybrid logical clock and applied; its delta (what it
//!   changed) is encoded and handed to storage as a join into the stored record ([`Storage::merge`]);
//!   if storage refuses it, memory is unchanged. A client write is applied to the stored profile itself
//!   under the shard lock (the core's `apply_in_place`, which returns the delta and an undo that runs if
//!   storage refuses); an event, a link or a re-evaluation is applied to a *copy*, published only once
//!   storage accepted it. The whole profile is still encoded per write, into a reused
//!   buffer, for the record hash anti-entropy compares (it is not stored or logged), and stored whole
//!   only for a change that is not a join (the expiry sweep's). Under the `sync` policy the reply
//!   waits until a flush that covers the write has completed (group commit); under `periodic` it does
//!   not.
//! - At startup every stored record is decoded and the clock is moved past the largest timestamp found, so
//!   markers never go backwards across restarts. A record that cannot be decoded is logged and counted,
//!   left untouched on disk, and does not stop the node.
//!
//! Caveats:
//! - A write becomes visible to readers on this node as soon as storage accepted it, slightly before it is
//!   durable under `sync` (its acknowledgement waits; a concurrent read does not).
//! - The whole data set lives in memory; this is a feature store for hot profiles.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use featurestore::ingest::{
    apply_event_to_copy, apply_linking_event, Definitions, Event, Ingested,
};
use featurestore::profile::{apply_in_place, Applied, InPlace, ProfileView, Write};
use featurestore::replication::StoreError;
use featurestore::segment::{Reconciled, Scope};
use featurestore::wire::client::ErrorReply;
use featurestore::wire::codec::{encode_record, encode_record_into, record_hash, ReadFrame};
use featurestore::wire::segment::SegmentChange;
use featurestore::{Clock, ErrorCode, Limits, NodeId, Profile};

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::segments::log::{ChangeLog, Fence};
use crate::segments::SegmentRuntime;
use crate::shard_map::{Key, ShardMap, Stored};
use crate::storage::{Durability, RecordDecoder, Storage, WriteTicket};

/// Number of independently locked shards of the in-memory map.
pub const SHARDS: usize = 64;

thread_local! {
    /// The buffer a thread encodes a profile into to hash its record, reused so a write allocates no
    /// record (the record itself is no longer stored per write: the write's delta is).
    static HASH_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`record_hash`] of `profile`'s record, encoded into this thread's reused buffer.
fn hash_of(profile: &Profile) -> crate::Result<u64> {
    HASH_BUFFER.with(|buf| {
        let mut buf = buf.borrow_mut();
        encode_record_into(profile, &mut buf)?;
        let hash = record_hash(&buf);
        // A rare huge profile does not keep its buffer's size for the thread's life.
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        Ok(hash)
    })
}

type Shard = RwLock<ShardMap>;

/// The segment transitions one write decided: staged in the change log, published once durable.
#[derive(Debug, Clone, Default)]
pub struct Decided {
    /// The transitions, with their change-log records.
    pub changes: Vec<Arc<SegmentChange>>,
    /// Segments whose rule failed to evaluate (their memberships are unchanged).
    pub failed: usize,
    /// Segment rules evaluated (only those reading a changed feature, for an event).
    pub evaluated: usize,
    /// What the write changed in the profile ([`Profile::delta_from`] of the state before it), for
    /// replication to send instead of the whole profile.
    pub delta: Profile,
}

/// Publishes staged changes when dropped: after the durability wait, whether it succeeded, failed, or the
/// writing future was dropped during it.
struct PublishOnDrop<'a> {
    log: &'a ChangeLog,
    staged: Vec<Arc<SegmentChange>>,
    accepted_us: Option<u64>,
}

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        self.log.publish(&self.staged, self.accepted_us);
    }
}

/// The typed reply for a node error: core validation errors keep their code, anything else is a storage
/// failure (the write was not acknowledged and may or may not be applied).
pub fn error_reply(e: &crate::Error) -> ErrorReply {
    match e {
        crate::Error::Core(core) => ErrorReply::of(core),
        _ => ErrorReply {
            code: ErrorCode::Storage,
            message: e.to_string(),
        },
    }
}

/// The node's data engine.
pub struct Engine {
    node: NodeId,
    limits: Limits,
    clock: Mutex<Clock>,
    shards: Box<[Shard]>,
    storage: Arc<dyn Storage>,
    durability: Arc<Durability>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// The segment runtime, told of every merged state (its timers), once the cluster has set it.
    segments: std::sync::OnceLock<Arc<SegmentRuntime>>,
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

/// Records handed to a decoder at once during [`load`].
const LOAD_BATCH: usize = 512;

/// Most decoder threads during [`load`].
const MAX_LOAD_THREADS: usize = 8;

/// Records read during [`load`] and handed to a decoder together: every key and value copied back to
/// back into one buffer. Two allocations per batch instead of two per record, and the decoder frees them
/// (a `Vec` per record allocated by the reading thread and freed by a decoder made the threads queue on
/// the allocator's arena lock in a restart profile).
struct LoadBatch {
    /// Keys and values, back to back.
    bytes: Vec<u8>,
    /// Per record: where its key ends and where its value ends in `bytes`.
    ends: Vec<(usize, usize)>,
}

impl LoadBatch {
    fn with_capacity(records: usize) -> LoadBatch {
        LoadBatch {
            bytes: Vec::with_capacity(records * 1024),
            ends: Vec::with_capacity(records),
        }
    }

    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((key_end, self.bytes.len()));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Each record as (key, value).
    fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, end)| {
            let record = (&self.bytes[start..key_end], &self.bytes[key_end..end]);
            start = end;
            record
        })
    }
}

/// Streams every record from `storage` into `shards` with one decoder per core ([`load_with`]).
fn load(
    storage: &dyn Storage,
    shards: &[Shard],
) -> crate::Result<(Recovery, Option<featurestore::hlc::Timestamp>)> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    load_with(storage, shards, threads)
}

/// Streams every record from `storage` into `shards`: with two or more `threads`, this thread reads and
/// `threads` decoders (at most [`MAX_LOAD_THREADS`]) decode, fed batches through a bounded channel, so
/// at most a few batches are held besides the profiles. Decoded profiles are collected per shard, and
/// each shard's table is built once at its final size at the end. With one core the reading thread
/// decodes each record itself as sled lends it: a decoder thread on the same core would only add a copy
/// of every record into a batch and a context switch per batch. Returns what was loaded and the newest
/// timestamp seen (for the clock).
fn load_with(
    storage: &dyn Storage,
    shards: &[Shard],
    threads: usize,
) -> crate::Result<(Recovery, Option<featurestore::hlc::Timestamp>)> {
    let threads = threads.clamp(1, MAX_LOAD_THREADS);
    let loaded: Loaded = (0..shards.len()).map(|_| Mutex::default()).collect();
    let result = decode_all(storage, &loaded, threads);
    // Each shard's table is built once, at its final size, from what was decoded for it.
    for (shard, decoded) in shards.iter().zip(loaded.into_vec()) {
        let decoded = decoded.into_inner().unwrap_or_else(PoisonError::into_inner);
        shard
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(decoded);
    }
    result
}

/// The profiles a start-up load decoded, by shard.
type Loaded = Box<[Mutex<Vec<Box<Stored>>>]>;

/// Decodes every record from `storage` into `loaded` (see [`load_with`]).
fn decode_all(
    storage: &dyn Storage,
    loaded: &Loaded,
    threads: usize,
) -> crate::Result<(Recovery, Option<featurestore::hlc::Timestamp>)> {
    let decoder = &storage.record_decoder();
    if threads == 1 {
        let mut recovery = Recovery::default();
        let mut newest = None;
        storage.for_each_record(&mut |key, bytes| {
            load_record(key, bytes, decoder, loaded, &mut recovery, &mut newest);
        })?;
        return Ok((recovery, newest));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<LoadBatch>(threads * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let decoders: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut recovery = Recovery::default();
                    let mut newest = None;
                    loop {
                        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(batch) = next else {
                            return (recovery, newest);
                        };
                        for (key, bytes) in batch.records() {
                            load_record(key, bytes, decoder, loaded, &mut recovery, &mut newest);
                        }
                    }
                })
            })
            .collect();
        let mut batch = LoadBatch::with_capacity(LOAD_BATCH);
        let mut decoders_gone = false;
        let read = storage.for_each_record(&mut |key, bytes| {
            batch.push(key, bytes);
            if batch.len() >= LOAD_BATCH {
                let full = std::mem::replace(&mut batch, LoadBatch::with_capacity(LOAD_BATCH));
                decoders_gone |= tx.send(full).is_err();
            }
        });
        if batch.len() > 0 {
            decoders_gone |= tx.send(batch).is_err();
        }
        drop(tx);
        let mut recovery = Recovery::default();
        let mut newest = None;
        for decoder in decoders {
            match decoder.join() {
                Ok((part, part_newest)) => {
                    recovery.entities += part.entities;
                    recovery.corrupt += part.corrupt;
                    newest = newest.max(part_newest);
                }
                Err(_) => decoders_gone = true,
            }
        }
        read?;
        if decoders_gone {
            return Err(crate::Error::Storage(
                "a record decoder stopped during the load".into(),
            ));
        }
        Ok((recovery, newest))
    })
}

/// Decodes one stored record into its shard's part of `loaded`; a corrupt one is logged, counted and
/// skipped.
fn load_record(
    key: &[u8],
    bytes: &[u8],
    decoder: &RecordDecoder,
    loaded: &Loaded,
    recovery: &mut Recovery,
    newest: &mut Option<featurestore::hlc::Timestamp>,
) {
    let decoded = std::str::from_utf8(key)
        .map(Key::new)
        .map_err(|e| (Key::from(String::from_utf8_lossy(key)), e.to_string()));
    let decoded = decoded.and_then(|key| match decoder.decode(bytes) {
        Ok(decoded) => Ok((key, decoded)),
        Err(e) => Err((key, e.to_string())),
    });
    match decoded {
        Ok((key, (profile, hash))) => {
            *newest = (*newest).max(profile.max_timestamp());
            let Some(part) = loaded.get(shard_index(&key)) else {
                // `loaded` has one part per shard, so this cannot happen; if it did, the record is
                // left on disk and counted, as a corrupt one is.
                tracing::error!(%key, "no shard for the record; skipped");
                recovery.corrupt += 1;
                return;
            };
            part.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Box::new(Stored { key, hash, profile }));
            recovery.entities += 1;
        }
        Err((key, reason)) => {
            tracing::error!(%key, %reason, "corrupt record skipped");
            recovery.corrupt += 1;
        }
    }
}

impl Engine {
    /// Loads every record from `storage` and returns a ready engine that writes as `actor` (this node in
    /// the incarnation it runs as).
    pub fn open(
        actor: featurestore::hlc::Actor,
        limits: Limits,
        max_clock_skew_ms: u64,
        storage: Arc<dyn Storage>,
        durability: Arc<Durability>,
        metrics: Arc<Metrics>,
    ) -> crate::Result<(Engine, Recovery)> {
        let node = actor.node.clone();
        let mut clock = Clock::for_actor(actor, max_clock_skew_ms);
        let shards: Box<[Shard]> = (0..SHARDS).map(|_| RwLock::default()).collect();
        let (recovery, newest) = load(&*storage, &shards)?;
        if let Some(ts) = newest {
            clock.recover(ts);
        }
        let engine = Engine {
            node,
            limits,
            clock: Mutex::new(clock),
            shards,
            storage,
            durability,
            metrics,
            started: Instant::now(),
            segments: std::sync::OnceLock::new(),
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
        &self.shards[shard_index(key)]
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one client write to `key` (decided by the core's [`apply_in_place`]), stores it, and
    /// waits for durability as the policy requires. The request was validated at the edge. Returns the
    /// outcome and its delta for replication (see `featurestore::profile::in_place`).
    pub async fn apply(
        &self,
        key: &str,
        write: Write<'_>,
    ) -> Result<(Applied, Profile), ErrorReply> {
        let now = now_ms();
        let (applied, ticket, delta) = self.store_in_place(key, write, now)?;
        self.wait_durable(key, ticket).await?;
        Ok((applied, delta))
    }

    /// The synchronous half of [`Engine::apply`]: under the shard lock, the write applied to the stored
    /// profile itself (the core's [`apply_in_place`]: no copy of the profile; a new key's profile is
    /// built outside the map and inserted once stored), its delta handed to storage, and the record hash
    /// updated. If storage refuses the delta, the write's undo puts the profile back as it was, so memory
    /// is unchanged, as for a refused write.
    fn store_in_place(
        &self,
        key: &str,
        write: Write<'_>,
        now: u64,
    ) -> Result<(Applied, WriteTicket, Profile), ErrorReply> {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(stored) = shard.get_mut(key) else {
            let mut profile = Profile::default();
            let done = apply_in_place(&mut profile, write, &mut self.clock(), now, &self.limits)
                .map_err(|e| error_reply(&e.into()))?;
            let ticket = self
                .store_locked(&mut shard, key, profile, Some(&done.delta))
                .map_err(|e| error_reply(&e))?;
            return Ok((done.applied, ticket, done.delta));
        };
        let InPlace {
            applied,
            delta,
            undo,
        } = apply_in_place(
            &mut stored.profile,
            write,
            &mut self.clock(),
            now,
            &self.limits,
        )
        .map_err(|e| error_reply(&e.into()))?;
        let persisted =
            hash_of(&stored.profile).and_then(|hash| Ok((self.persist_delta(key, &delta)?, hash)));
        match persisted {
            Ok((ticket, hash)) => {
                stored.hash = hash;
                Ok((applied, ticket, delta))
            }
            Err(e) => {
                undo.restore(&mut stored.profile);
                Err(error_reply(&e))
            }
        }
    }

    /// Applies one event to `key` as its owner (decided by the core's
    /// [`apply_event`](featurestore::ingest::apply_event)) and, in the same write, re-evaluates the
    /// segments whose rules read a feature it changed (the core's
    /// [`featurestore::segment::reconcile`]: membership flags), stages their change records in the log
    /// (before the profile record, see [`crate::segments::log`]), re-arms the user's timer, stores it,
    /// publishes it, waits for durability as the policy requires, and shows the changes to subscribers.
    pub async fn ingest(
        &self,
        key: &str,
        event: &Event,
        definitions: &Definitions,
        segments: &SegmentRuntime,
        fence: &Fence,
    ) -> Result<(Ingested, Decided), ErrorReply> {
        // A retry of an ingested message changes nothing: answer it without a copy, a store or a flush.
        // (A duplicate that races past this check is still caught by `apply_event` below.)
        // So is an event for an id linked into another (it is redirected there).
        let (seen, redirect) = {
            let shard = self
                .shard(key)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let profile = shard.get(key).map(|s| &s.profile);
            (
                profile.is_some_and(|p| p.has_seen(&event.message_id)),
                profile.and_then(|p| p.alias_of().map(str::to_owned)),
            )
        };
        if seen || redirect.is_some() {
            let ingested = Ingested {
                duplicate: seen,
                redirect: redirect.filter(|_| !seen),
                ..Ingested::default()
            };
            return Ok((ingested, Decided::default()));
        }
        let now = now_ms();
        let rules = segments.rules();
        let out = self
            .write_deciding(key, segments, fence, now, |p, clock| {
                // `p` is `store_change`'s copy, dropped on `Err`: no second copy here.
                let ingested =
                    apply_event_to_copy(p, event, definitions, clock, now, &self.limits)?;
                let reconciled = if ingested.duplicate || ingested.redirect.is_some() {
                    Reconciled::default()
                } else {
                    rules.reconcile(
                        p,
                        key,
                        Scope::Changed(&ingested.features),
                        Some(event),
                        clock,
                        now,
                        &self.limits,
                    )
                };
                Ok((ingested, reconciled))
            })
            .await?;
        Ok(out)
    }

    /// Applies a linking event (an identify or alias, see `featurestore::ingest::identity`) to the
    /// canonical profile `key` as its owner, absorbing `state`, the merged profile of the linked `id`;
    /// every segment is re-evaluated (the absorbed history may move any of them), as in [`Engine::ingest`].
    #[allow(clippy::too_many_arguments)]
    pub async fn ingest_linking(
        &self,
        key: &str,
        event: &Event,
        id: &str,
        state: &Profile,
        definitions: &Definitions,
        segments: &SegmentRuntime,
        fence: &Fence,
    ) -> Result<(Ingested, Decided), ErrorReply> {
        let now = now_ms();
        let rules = segments.rules();
        self.write_deciding(key, segments, fence, now, |p, clock| {
            let ingested = apply_linking_event(
                p,
                key,
                event,
                id,
                state,
                definitions,
                clock,
                now,
                &self.limits,
            )?;
            let reconciled = if ingested.duplicate {
                Reconciled::default()
            } else {
                rules.reconcile(p, key, Scope::All, Some(event), clock, now, &self.limits)
            };
            Ok((ingested, reconciled))
        })
        .await
    }

    /// Re-evaluates the segments `names` on `key` (a timer, a backfill, a conflict to collapse) and, if a
    /// membership moves, stores and logs it as [`Engine::ingest`] does. `Ok(None)`: nothing moved (or no
    /// such key), nothing was written; the user's timer is re-armed either way.
    pub async fn reevaluate(
        &self,
        key: &str,
        names: &[String],
        segments: &SegmentRuntime,
        fence: &Fence,
    ) -> Result<Option<Decided>, ErrorReply> {
        let now = now_ms();
        let rules = segments.rules();
        let moved = {
            let shard = self
                .shard(key)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(stored) = shard.get(key) else {
                return Ok(None);
            };
            // A dry run on a copy under the read lock: most re-evaluations move nothing.
            let mut copy = stored.profile.clone();
            let mut clock = Clock::for_actor(self.clock().actor().clone(), u64::MAX);
            let dry = rules.reconcile(
                &mut copy,
                key,
                Scope::Only(names),
                None,
                &mut clock,
                now,
                &self.limits,
            );
            if dry.changes.is_empty() {
                segments.arm(key, &stored.profile, now);
            }
            !dry.changes.is_empty()
        };
        if !moved {
            return Ok(None);
        }
        let ((), decided) = self
            .write_deciding(key, segments, fence, now, |p, clock| {
                let r = rules.reconcile(p, key, Scope::Only(names), None, clock, now, &self.limits);
                Ok(((), r))
            })
            .await?;
        Ok(Some(decided))
    }

    /// [`Engine::write`] for a change that also decides memberships: under the shard lock, the change's
    /// transitions are staged in the change log before the profile is stored and the user's timer is
    /// re-armed from the result; after the durability wait the transitions are published. If the profile
    /// could not be stored they are withdrawn; if the wait fails, or this future is dropped during it,
    /// they are published anyway (the node holds and serves the membership), so the log's watermark
    /// never waits on them.
    async fn write_deciding<T>(
        &self,
        key: &str,
        segments: &SegmentRuntime,
        fence: &Fence,
        now: u64,
        change: impl FnOnce(&mut Profile, &mut Clock) -> featurestore::Result<(T, Reconciled)>,
    ) -> Result<(T, Decided), ErrorReply> {
        let mut staged = Vec::new();
        let stored = self.store_change(key, |profile| {
            let (out, reconciled) = change(profile, &mut self.clock())?;
            staged = segments.log.stage(&reconciled.changes, fence)?;
            segments.arm(key, profile, now);
            Ok((out, reconciled.failed.len(), reconciled.evaluated))
        });
        let ((out, failed, evaluated), ticket, delta) = match stored {
            Ok(stored) => stored,
            Err(e) => {
                segments.log.withdraw(&staged);
                return Err(e);
            }
        };
        let publish = PublishOnDrop {
            log: &segments.log,
            staged,
            accepted_us: fence.accepted_us,
        };
        self.wait_durable(key, ticket).await?;
        let decided = Decided {
            changes: publish.staged.clone(),
            failed,
            evaluated,
            delta,
        };
        drop(publish);
        Ok((out, decided))
    }

    /// Calls `f` with every profile held (shard by shard, under each shard's read lock).
    pub fn for_each_profile(&self, f: &mut dyn FnMut(&str, &Profile)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (key, entry) in shard.iter() {
                f(key, &entry.profile);
            }
        }
    }

    /// `f` of `key`'s profile held here, under its shard's read lock (no copy).
    pub fn inspect<T>(&self, key: &str, f: impl FnOnce(&Profile) -> T) -> Option<T> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).map(|s| f(&s.profile))
    }

    /// Arms segment timers after merges of other replicas' states (set once by the cluster).
    pub fn watch_merges(&self, segments: Arc<SegmentRuntime>) {
        let _ = self.segments.set(segments);
    }

    /// Marks `key` as linked into `canonical` (a fresh marker of this node), stores it and waits for
    /// durability as the policy requires. Returns what changed (the delta, for replication).
    pub async fn set_alias(&self, key: &str, canonical: &str) -> Result<Profile, ErrorReply> {
        let now = now_ms();
        let ((), delta) = self
            .write(key, |p| {
                let marker = self.clock().stamp(now);
                Ok(p.set_alias(canonical, marker, &self.limits)?)
            })
            .await?;
        Ok(delta)
    }

    /// The canonical id `key` was linked into, if this node's copy says so.
    pub fn alias_of(&self, key: &str) -> Option<String> {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .and_then(|s| s.profile.alias_of().map(str::to_owned))
    }

    /// Whether this node's copy of `key` has ingested `event` already.
    pub fn has_seen(&self, key: &str, event: &Event) -> bool {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some_and(|s| s.profile.has_seen(&event.message_id))
    }

    /// Whether this node's copy of `key` has `id` linked into it.
    pub fn has_absorbed(&self, key: &str, id: &str) -> bool {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some_and(|s| s.profile.has_absorbed(id))
    }

    /// What a client sees of `key` at `now`, optionally only some features (served from memory).
    pub fn view(&self, key: &str, now: u64, features: Option<&[String]>) -> Option<ProfileView> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).and_then(|s| s.profile.view(now, features))
    }

    /// Appends what a client sees of `key` at `now` to a read answer, encoded straight from the profile
    /// under the shard's read lock ([`ReadFrame::push`]): the view is never built or copied.
    pub fn push_view(
        &self,
        frame: &mut ReadFrame,
        key: &str,
        now: u64,
        features: Option<&[String]>,
    ) -> crate::Result<()> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        frame.push(shard.get(key).map(|s| &s.profile), now, features)?;
        Ok(())
    }

    /// The state of `key` held here.
    pub fn state(&self, key: &str) -> Option<Profile> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).map(|s| Profile::clone(&s.profile))
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
    ///
    /// The merge is made in place (a join cannot fail, so unlike a client write's it keeps no undo).
    /// If storage then refuses the record, the merged state stays in memory unacknowledged (the sender
    /// retries, and the key's next stored write persists it); the key's record hash is left as it
    /// was, so anti-entropy sees the difference.
    pub fn merge_state(&self, key: &str, incoming: &Profile) -> crate::Result<bool> {
        self.limits.check_key(key)?;
        if let Some(ts) = incoming.max_timestamp() {
            self.clock().observe(ts, now_ms())?;
        }
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(stored) = shard.get_mut(key) else {
            let mut profile = Profile::default();
            profile.merge(incoming);
            if let Some(segments) = self.segments.get() {
                segments.arm(key, &profile, now_ms());
            }
            let _ticket = self.store_locked(&mut shard, key, profile, Some(incoming))?;
            return Ok(true);
        };
        if !stored.profile.merge(incoming) {
            return Ok(false);
        }
        if let Some(segments) = self.segments.get() {
            segments.arm(key, &stored.profile, now_ms());
        }
        // The stored state joined with `incoming` is the merged state: `incoming` is what is logged.
        // The caller waits for durability (of everything written so far) before acknowledging.
        let hash = hash_of(&stored.profile)?;
        let _ticket = self.persist_delta(key, incoming)?;
        stored.hash = hash;
        Ok(true)
    }

    /// Hands `delta` to storage as a join into `key`'s record (see [`Storage::merge`]): the durability
    /// ticket of the write. Only the delta is encoded and logged, not the profile.
    fn persist_delta(&self, key: &str, delta: &Profile) -> crate::Result<WriteTicket> {
        let record = encode_record(delta)?;
        self.storage.merge(key.as_bytes(), &record)?;
        Ok(self.durability.written())
    }

    /// Hands `profile` to storage and publishes it in `shard` (only if storage accepted it): as a join of
    /// `delta` into the stored record if given (the stored record joined with `delta` must be
    /// `profile`), or else as the whole record (for a change that is not a join, such as the expiry
    /// sweep's). Returns the durability ticket of the write.
    fn store_locked(
        &self,
        shard: &mut ShardMap,
        key: &str,
        profile: Profile,
        delta: Option<&Profile>,
    ) -> crate::Result<WriteTicket> {
        let (ticket, hash) = match delta {
            Some(delta) => {
                let hash = hash_of(&profile)?;
                (self.persist_delta(key, delta)?, hash)
            }
            None => {
                let record = encode_record(&profile)?;
                self.storage.put(key.as_bytes(), &record)?;
                (self.durability.written(), record_hash(&record))
            }
        };
        // Replaced in place when the key is known: no new allocation per write.
        shard.insert(key, profile, hash);
        Ok(ticket)
    }

    /// Applies `change` to a copy of `key`'s profile, stores it, publishes it, and waits for durability as
    /// the policy requires. Returns `change`'s result and what it changed (the delta).
    async fn write<T>(
        &self,
        key: &str,
        change: impl FnOnce(&mut Profile) -> crate::Result<T>,
    ) -> Result<(T, Profile), ErrorReply> {
        let (out, ticket, delta) = self.store_change(key, change)?;
        self.wait_durable(key, ticket).await?;
        Ok((out, delta))
    }

    /// The synchronous half of [`Engine::write`]: under the shard lock, `change` applied to a copy of
    /// `key`'s profile and the result stored; the ticket to wait on for its durability, and the delta
    /// of the change for replication ([`Profile::delta_from`] the one before it). The delta is also
    /// what storage logs, so the one before it joined with the delta must be the new profile (the
    /// core's property tests check that changes only grow a state).
    fn store_change<T>(
        &self,
        key: &str,
        change: impl FnOnce(&mut Profile) -> crate::Result<T>,
    ) -> Result<(T, WriteTicket, Profile), ErrorReply> {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let empty = Profile::default();
        let old = shard.get(key).map(|s| &s.profile);
        let mut profile = old.cloned().unwrap_or_default();
        let out = change(&mut profile).map_err(|e| error_reply(&e))?;
        let delta = profile.delta_from(old.unwrap_or(&empty));
        let ticket = self
            .store_locked(&mut shard, key, profile, Some(&delta))
            .map_err(|e| error_reply(&e))?;
        Ok((out, ticket, delta))
    }

    /// Waits for `ticket`'s durability as the policy requires; a failure is logged and returned.
    async fn wait_durable(&self, key: &str, ticket: WriteTicket) -> Result<(), ErrorReply> {
        self.durability.wait_durable(ticket).await.map_err(|e| {
            tracing::error!(%key, error = %e, "write not durable, not acknowledged");
            error_reply(&e)
        })
    }

    /// Physically drops expired values (gauges become tombstones, flag siblings go) and stores the smaller
    /// records. Returns the number of entities rewritten.
    pub fn sweep_expired(&self, now: u64) -> usize {
        let mut rewritten = 0;
        for shard in self.shards.iter() {
            // Find the expired entries under a read lock; rewrite each under a short write lock.
            let due: Vec<Key> = shard
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(_, entry)| entry.profile.has_expired(now))
                .map(|(key, _)| key.clone())
                .collect();
            for key in due {
                let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
                let Some(mut copy) = shard.get(key.as_str()).map(|s| s.profile.clone()) else {
                    continue;
                };
                if !copy.expire(now) {
                    continue;
                }
                // Dropping expired values is not a join, so the whole record is stored.
                match self.store_locked(&mut shard, &key, copy, None) {
                    Ok(_ticket) => rewritten += 1,
                    Err(e) => tracing::warn!(%key, error = %e, "expiry sweep could not store"),
                }
            }
        }
        self.metrics
            .expired_sweeps
            .fetch_add(rewritten as u64, std::sync::atomic::Ordering::Relaxed);
        rewritten
    }

    /// The engine's part of the node's status: data, storage, durability and their counters (the
    /// cluster runtime adds the membership, see `Cluster::status`).
    pub fn status(&self) -> EngineStatus {
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
        counters.extend(
            self.storage
                .counters()
                .into_iter()
                .map(|(name, v)| (name.to_owned(), v)),
        );
        EngineStatus {
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            entities,
            storage: self.storage.kind(),
            durability: self.durability.policy().to_string(),
            disk_bytes: self.storage.disk_bytes().unwrap_or(0),
            counters,
        }
    }
}

/// The engine's part of a node's status ([`Engine::status`]); the fields mean what they mean in
/// [`NodeStatus`](featurestore::wire::client::NodeStatus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    /// Milliseconds since the engine was opened.
    pub uptime_ms: u64,
    /// Entities held.
    pub entities: u64,
    /// Storage engine (`sled` or `memory`).
    pub storage: &'static str,
    /// Durability policy (`sync` or `periodic:<ms>`).
    pub durability: String,
    /// Bytes on disk (0 if unknown).
    pub disk_bytes: u64,
    /// The request, error and durability counters.
    pub counters: Vec<(String, u64)>,
}

impl featurestore::replication::LocalStore for Engine {
    fn state(&self, key: &str) -> Option<Profile> {
        Engine::state(self, key)
    }

    fn merge_remote(&self, key: &str, state: &Profile) -> Result<(), StoreError> {
        self.merge_state(key, state).map(drop).map_err(Into::into)
    }

    fn for_each_key(&self, f: &mut dyn FnMut(&str, u64)) {
        for slice in 0..SHARDS {
            self.for_each_key_in(slice, f);
        }
    }

    /// A slice is a lock shard: the rolling scan holds one shard's read lock at a time.
    fn slices(&self) -> usize {
        SHARDS
    }

    fn for_each_key_in(&self, slice: usize, f: &mut dyn FnMut(&str, u64)) {
        let Some(shard) = self.shards.get(slice) else {
            return;
        };
        let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
        for (key, entry) in shard.iter() {
            f(key, entry.hash);
        }
    }

    fn remove_if_unchanged(&self, key: &str, expected: u64) -> Result<bool, StoreError> {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let unchanged = shard.get(key).is_some_and(|s| s.hash == expected);
        if !unchanged {
            return Ok(false);
        }
        self.storage.remove(key.as_bytes())?;
        let _ticket = self.durability.written();
        shard.remove(key);
        Ok(true)
    }
}

/// The shard of `key`: an unkeyed XXH3 of its bytes (a few nanoseconds for a short key; a keyed SipHash
/// was used before, and the map then hashes the key again). Unkeyed is safe here: keys chosen to
/// collide only share a lock; inside a shard the map's own hasher is keyed (`RandomState`), so no input
/// can make its lookups slow.
fn shard_index(key: &str) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use featurestore::profile::GaugeWrite;
    use featurestore::Value;

    use super::*;
    use crate::storage::{DurabilityPolicy, MemoryStorage};

    fn open(storage: &Arc<dyn Storage>) -> (Engine, Recovery) {
        let actor = featurestore::hlc::Actor::new(NodeId::new("n1").expect("valid"), 1);
        let durability =
            Durability::start(storage.clone(), DurabilityPolicy::Sync).expect("durability");
        Engine::open(
            actor,
            Limits::default(),
            60_000,
            storage.clone(),
            durability,
            Arc::new(Metrics::default()),
        )
        .expect("opens")
    }

    #[test]
    fn a_load_batch_gives_back_exactly_the_records_pushed() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"one".to_vec()),
            (Vec::new(), b"empty key".to_vec()),
            (b"empty value".to_vec(), Vec::new()),
            (Vec::new(), Vec::new()),
            (b"k".repeat(3000), b"v".repeat(5000)),
            (b"last".to_vec(), b"\x00\xff".to_vec()),
        ];
        let mut batch = LoadBatch::with_capacity(2);
        for (key, value) in &records {
            batch.push(key, value);
        }
        assert_eq!(batch.len(), records.len());
        let back: Vec<(Vec<u8>, Vec<u8>)> = batch
            .records()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(back, records);
    }

    /// The one-core load (records decoded on the reading thread) and the threaded one load the same.
    #[test]
    fn a_load_on_one_core_loads_what_decoder_threads_load() {
        let storage = MemoryStorage::default();
        let n = LOAD_BATCH * 2 + 3;
        for i in 0..n {
            let mut profile = featurestore::Profile::default();
            let mut clock = Clock::for_actor(
                featurestore::hlc::Actor::new(NodeId::new("n1").expect("valid"), 1),
                1_000,
            );
            let ts = clock.tick(1_000 + i as u64);
            profile
                .increment(&[("c", 1)], clock.actor(), ts, &Limits::default())
                .expect("valid");
            let record = featurestore::wire::codec::encode_record(&profile).expect("encodes");
            storage
                .put(format!("user-{i}").as_bytes(), &record)
                .expect("put");
        }
        storage.put(b"user-bad", b"\x00not a record").expect("put");
        let loads: Vec<_> = [1, 2]
            .into_iter()
            .map(|threads| {
                let shards: Box<[Shard]> = (0..SHARDS).map(|_| RwLock::default()).collect();
                let (recovery, newest) = load_with(&storage, &shards, threads).expect("loads");
                let keys = shards
                    .iter()
                    .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
                    .sum::<usize>();
                (recovery, newest, keys)
            })
            .collect();
        assert_eq!(
            loads[0].0,
            Recovery {
                entities: n,
                corrupt: 1
            }
        );
        assert_eq!(loads[0].2, n);
        assert!(loads[0].1.is_some());
        assert_eq!(loads[0], loads[1]);
    }

    /// A [`MemoryStorage`] that refuses every `merge` while `refuse` is set.
    #[derive(Default)]
    struct RefusingStorage {
        inner: MemoryStorage,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl Storage for RefusingStorage {
        fn load_all(&self) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.load_all()
        }
        fn put(&self, key: &[u8], value: &[u8]) -> crate::Result<()> {
            self.inner.put(key, value)
        }
        fn merge(&self, key: &[u8], delta: &[u8]) -> crate::Result<()> {
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::Error::Storage("injected merge refusal".into()));
            }
            self.inner.merge(key, delta)
        }
        fn remove(&self, key: &[u8]) -> crate::Result<()> {
            self.inner.remove(key)
        }
        fn flush(&self) -> crate::Result<()> {
            self.inner.flush()
        }
        fn disk_bytes(&self) -> crate::Result<u64> {
            self.inner.disk_bytes()
        }
        fn kind(&self) -> &'static str {
            "refusing"
        }
        fn get_meta(&self, name: &str) -> crate::Result<Option<Vec<u8>>> {
            self.inner.get_meta(name)
        }
        fn put_meta(&self, name: &str, value: &[u8]) -> crate::Result<()> {
            self.inner.put_meta(name, value)
        }
        fn remove_meta(&self, name: &str) -> crate::Result<()> {
            self.inner.remove_meta(name)
        }
        fn scan_meta(&self, prefix: &str) -> crate::Result<Vec<(String, Vec<u8>)>> {
            self.inner.scan_meta(prefix)
        }
    }

    /// A client write is applied in place, so a write storage refuses must be undone: memory (the
    /// profile and its record hash) is what it was, for every kind of write, a new key is not
    /// created, and the next accepted write lands on the old state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_storage_refuses_leaves_memory_as_it_was() {
        use featurestore::crdt::flag::CausalContext;
        use featurestore::profile::CounterDelta;
        use featurestore::replication::LocalStore;

        let refusing = Arc::new(RefusingStorage::default());
        let storage: Arc<dyn Storage> = refusing.clone();
        let (engine, _) = open(&storage);
        let hash_of_key = |engine: &Engine, key: &str| {
            let mut hash = None;
            engine.for_each_key(&mut |k, h| {
                if k == key {
                    hash = Some(h);
                }
            });
            hash
        };
        let gauges = [GaugeWrite {
            name: "g".into(),
            value: Value::I64(1),
            ttl_ms: None,
        }];
        let put = Write::Put {
            gauges: &gauges,
            timestamp_ms: None,
        };
        let deltas = [CounterDelta {
            name: "c".into(),
            delta: 2,
        }];
        let incr = Write::Increment { deltas: &deltas };
        engine.apply("k", put).await.expect("put");
        engine.apply("k", incr).await.expect("increment");
        let before = engine.state("k").expect("written");
        let hash = hash_of_key(&engine, "k");

        refusing
            .refuse
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let other = [
            GaugeWrite {
                name: "g".into(),
                value: Value::I64(9),
                ttl_ms: None,
            },
            GaugeWrite {
                name: "new".into(),
                value: Value::I64(9),
                ttl_ms: None,
            },
        ];
        let context = CausalContext::default();
        let writes = [
            Write::Put {
                gauges: &other,
                timestamp_ms: None,
            },
            incr,
            Write::SetFlag {
                name: "f",
                value: true,
                context: &context,
                ttl_ms: None,
            },
            Write::Erase,
        ];
        for write in writes {
            let refused = engine.apply("k", write).await;
            assert!(refused.is_err(), "{write:?} was refused by storage");
            assert_eq!(
                engine.state("k").as_ref(),
                Some(&before),
                "{write:?} undone"
            );
            assert_eq!(hash_of_key(&engine, "k"), hash, "{write:?}: hash kept");
        }
        assert!(engine.apply("fresh", put).await.is_err());
        assert!(
            engine.state("fresh").is_none(),
            "a refused new key is not created"
        );

        refusing
            .refuse
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (_, delta) = engine.apply("k", incr).await.expect("increment");
        let after = engine.state("k").expect("written");
        assert_eq!(after.counters["c"].value(), 4, "landed on the old state");
        assert_eq!(after.gauges, before.gauges);
        let mut joined = before.clone();
        joined.merge(&delta);
        assert_eq!(
            joined, after,
            "the old state joined with the delta is the new one"
        );
    }

    /// Writes log deltas, yet a restart loads each key exactly as memory held it, with the same
    /// record hash a replica holding that profile computes: client puts and increments on one key, a
    /// state merged from another replica, and the expiry sweep's whole record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_after_delta_writes_loads_what_memory_held() {
        use featurestore::profile::CounterDelta;
        use featurestore::replication::LocalStore;

        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let keys = ["hot", "merged", "swept"];
        let mut held = Vec::new();
        {
            let (engine, _) = open(&storage);
            for i in 0..50i64 {
                let gauges = [GaugeWrite {
                    name: format!("g{}", i % 7),
                    value: Value::I64(i),
                    ttl_ms: None,
                }];
                let put = Write::Put {
                    gauges: &gauges,
                    timestamp_ms: None,
                };
                engine.apply("hot", put).await.expect("put");
                let deltas = [CounterDelta {
                    name: format!("c{}", i % 3),
                    delta: i,
                }];
                let incr = Write::Increment { deltas: &deltas };
                engine.apply("hot", incr).await.expect("increment");
            }
            let short = [GaugeWrite {
                name: "short".into(),
                value: Value::I64(1),
                ttl_ms: Some(1),
            }];
            let put = Write::Put {
                gauges: &short,
                timestamp_ms: None,
            };
            engine.apply("hot", put).await.expect("put");
            let mut remote = engine.state("hot").expect("written");
            let other = featurestore::hlc::Actor::new(NodeId::new("n2").expect("valid"), 1);
            let ts = engine.clock().tick(now_ms());
            remote
                .increment(&[("remote", 5)], &other, ts, &Limits::default())
                .expect("valid");
            engine.merge_state("merged", &remote).expect("merged");
            let deltas = [CounterDelta {
                name: "local".into(),
                delta: 1,
            }];
            let incr = Write::Increment { deltas: &deltas };
            engine.apply("merged", incr).await.expect("increment");
            engine.merge_state("swept", &remote).expect("merged");
            // `short` was written with a 1 ms TTL: the sweep drops it and stores the whole record.
            assert!(engine.sweep_expired(now_ms() + 10) >= 1);
            for key in keys {
                let mut hash = None;
                engine.for_each_key(&mut |k, h| {
                    if k == key {
                        hash = Some(h);
                    }
                });
                held.push((engine.state(key).expect("held"), hash.expect("listed")));
            }
        }
        let (engine, recovery) = open(&storage);
        assert_eq!(recovery.entities, keys.len());
        for (key, (profile, hash)) in keys.iter().zip(held) {
            assert_eq!(engine.state(key).as_ref(), Some(&profile), "{key}");
            let mut loaded = None;
            engine.for_each_key(&mut |k, h| {
                if k == *key {
                    loaded = Some(h);
                }
            });
            assert_eq!(
                loaded,
                Some(hash),
                "{key}: the record hash after the restart"
            );
        }
    }

    /// The streaming load: more records than the decoders take in one batch each, two corrupt ones
    /// (bad bytes, a key that is not UTF-8) counted and skipped, every other profile back as stored, and
    /// the clock past every stored timestamp.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_loads_every_record_skips_corrupt_ones_and_recovers_the_clock() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let n = LOAD_BATCH * MAX_LOAD_THREADS + 7;
        let mut newest = None;
        {
            let (engine, _) = open(&storage);
            for i in 0..n {
                let gauges = [GaugeWrite {
                    name: "score".into(),
                    value: Value::I64(i as i64),
                    ttl_ms: None,
                }];
                let write = Write::Put {
                    gauges: &gauges,
                    timestamp_ms: None,
                };
                engine
                    .apply(&format!("user-{i}"), write)
                    .await
                    .expect("applied");
            }
            for i in 0..n {
                let ts = engine
                    .state(&format!("user-{i}"))
                    .and_then(|p| p.max_timestamp());
                newest = newest.max(ts);
            }
        }
        storage.put(b"user-bad", b"\x00not a record").expect("put");
        storage.put(b"\xff\xfe", b"\x00").expect("put");
        let (engine, recovery) = open(&storage);
        assert_eq!((recovery.entities, recovery.corrupt), (n, 2));
        for i in [0, n / 2, n - 1] {
            let view = engine
                .state(&format!("user-{i}"))
                .and_then(|p| p.view(now_ms(), None))
                .expect("loaded");
            let score = match view.features.get("score") {
                Some(featurestore::FeatureView::Gauge { value, .. }) => Some(value.clone()),
                _ => None,
            };
            assert_eq!(score, Some(Value::I64(i as i64)), "user-{i}");
        }
        // Stamped in the past of the test's wall clock, so only a recovered clock passes it.
        let stamped = newest.expect("stamped");
        assert!(engine.clock().tick(stamped.wall_ms.saturating_sub(60_000)) > stamped);
    }
}
