//! The node's dead-letter queue: events this node could not ingest, kept as node metadata records
//! (`dlq/<id>`, see [`featurestore::wire::dead_letter`]) for an operator to list, replay or purge.
//!
//! Guarantees:
//! - **Durable like a write**: a capture is stored, then waited for per the node's durability policy
//!   (`sync`: fsynced, with group commit) before the refused event is answered, so an answered refusal
//!   survives a `kill -9`.
//! - **Recovered at start**: every record is decoded; a corrupt one is counted (`dlq_corrupt`), logged and
//!   skipped (left on disk), and ids continue after the highest id found, corrupt records included, so an
//!   id is never reused.
//! - **Bounded**: the core's [`admit`] decides against `max_dead_letter_bytes` and `max_dead_letters`; a
//!   capture that does not fit is dropped and counted (`dlq_overflow`). One event (by message id) is kept
//!   once: a client retrying a batch with an invalid event does not fill the queue (`dlq_repeats`).
//! - **Bounded answers**: a page holds at most `limit` entries and at most `max_bytes` of records.
//!
//! Caveats: node-local and not replicated (an operator's queue, like a Kafka Connect worker's
//! dead-letter topic): an entry is on the node that refused the event, and is lost with that node's disk.
//! A storage failure while capturing is logged and counted (`dlq_failures`); the refusal is still
//! answered (the sender got the reason).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use featurestore::wire::codec::{decode_dead_letter, encode_dead_letter};
use featurestore::wire::dead_letter::{
    admit, parse_record_name, record_bytes, record_name, Admission, Capture, DeadLetter,
    DeadLetterPage, Purged, ReplayOutcome, ReplayReport, Replayed, Usage, RECORD_PREFIX,
};
use featurestore::wire::event::EventOutcome;
use featurestore::{ErrorCode, ErrorReply, Limits};

use super::ingest::{retryable, Source};
use super::Cluster;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::storage::{Durability, Storage};

/// What the index keeps of one entry.
#[derive(Debug, Clone)]
struct Held {
    bytes: u64,
    message_id: Option<String>,
}

#[derive(Debug, Default)]
struct Index {
    entries: BTreeMap<u64, Held>,
    by_message: HashMap<String, u64>,
    usage: Usage,
    next_id: u64,
}

impl Index {
    fn insert(&mut self, id: u64, held: Held) {
        if let Some(m) = &held.message_id {
            self.by_message.insert(m.clone(), id);
        }
        self.usage.entries += 1;
        self.usage.bytes = self.usage.bytes.saturating_add(held.bytes);
        self.entries.insert(id, held);
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(held) = self.entries.remove(&id) else {
            return false;
        };
        if let Some(m) = &held.message_id {
            if self.by_message.get(m) == Some(&id) {
                self.by_message.remove(m);
            }
        }
        self.usage.entries -= 1;
        self.usage.bytes = self.usage.bytes.saturating_sub(held.bytes);
        true
    }
}

/// The node's dead-letter queue.
pub struct DeadLetterQueue {
    limits: Limits,
    storage: Arc<dyn Storage>,
    durability: Arc<Durability>,
    metrics: Arc<Metrics>,
    index: Mutex<Index>,
}

impl std::fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl DeadLetterQueue {
    /// Loads the stored entries (corrupt ones counted and skipped).
    pub fn open(
        limits: Limits,
        storage: Arc<dyn Storage>,
        durability: Arc<Durability>,
        metrics: Arc<Metrics>,
    ) -> Result<DeadLetterQueue> {
        let mut index = Index {
            next_id: 1,
            ..Index::default()
        };
        for (name, bytes) in storage.scan_meta(RECORD_PREFIX)? {
            let Some(id) = parse_record_name(&name) else {
                tracing::warn!(record = %name, "ignoring a malformed dead-letter record name");
                Metrics::incr(&metrics.dlq_corrupt);
                continue;
            };
            index.next_id = index.next_id.max(id.saturating_add(1));
            match decode_dead_letter(&bytes, id) {
                Ok(entry) => index.insert(
                    id,
                    Held {
                        bytes: record_bytes(bytes.len()),
                        message_id: entry.message_id,
                    },
                ),
                Err(error) => {
                    tracing::error!(record = %name, %error, "corrupt dead-letter record skipped");
                    Metrics::incr(&metrics.dlq_corrupt);
                }
            }
        }
        Ok(DeadLetterQueue {
            limits,
            storage,
            durability,
            metrics,
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> Usage {
        self.index().usage
    }

    /// Keeps `capture` (if it fits, and its message id is not kept already) and waits until it is durable
    /// per the node's policy. Returns the entry's id, `None` if it was not kept.
    pub async fn capture(&self, capture: Capture) -> Option<u64> {
        let ticket = {
            let mut index = self.index();
            if let Some(id) = capture
                .message_id
                .as_ref()
                .and_then(|m| index.by_message.get(m))
            {
                Metrics::incr(&self.metrics.dlq_repeats);
                return Some(*id);
            }
            let id = index.next_id;
            let entry = capture.into_entry(id);
            let bytes = match encode_dead_letter(&entry) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(%error, "could not encode a dead letter");
                    Metrics::incr(&self.metrics.dlq_failures);
                    return None;
                }
            };
            let size = record_bytes(bytes.len());
            if let Admission::Full(reason) = admit(index.usage, size, &self.limits) {
                Metrics::incr(&self.metrics.dlq_overflow);
                tracing::warn!(%reason, source = %entry.source, "dead letter dropped");
                return None;
            }
            if let Err(error) = self.storage.put_meta(&record_name(id), &bytes) {
                tracing::error!(%error, "could not store a dead letter");
                Metrics::incr(&self.metrics.dlq_failures);
                return None;
            }
            index.next_id = id.saturating_add(1);
            index.insert(
                id,
                Held {
                    bytes: size,
                    message_id: entry.message_id,
                },
            );
            (id, self.durability.written())
        };
        let (id, ticket) = ticket;
        if let Err(error) = self.durability.wait_durable(ticket).await {
            tracing::error!(%error, id, "dead letter not durable");
            Metrics::incr(&self.metrics.dlq_failures);
        }
        Metrics::incr(&self.metrics.dlq_captured);
        Some(id)
    }

    /// The stored entry `id` (`None` if there is none, or its record is corrupt: counted).
    pub fn get(&self, id: u64) -> Option<DeadLetter> {
        if !self.index().entries.contains_key(&id) {
            return None;
        }
        let read = self.storage.get_meta(&record_name(id));
        match read.map(|b| b.map(|b| decode_dead_letter(&b, id))) {
            Ok(Some(Ok(entry))) => Some(entry),
            Ok(None) => None,
            Ok(Some(Err(error))) => {
                tracing::error!(id, %error, "corrupt dead-letter record skipped");
                Metrics::incr(&self.metrics.dlq_corrupt);
                None
            }
            Err(error) => {
                tracing::error!(id, %error, "could not read a dead letter");
                None
            }
        }
    }

    /// Ids of entries above `after`, at most `limit`, and whether more follow.
    pub fn ids_after(&self, after: Option<u64>, limit: usize) -> (Vec<u64>, bool) {
        let index = self.index();
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut ids = index.entries.range(from..).map(|(id, _)| *id);
        let page: Vec<u64> = ids.by_ref().take(limit).collect();
        let more = ids.next().is_some();
        (page, more)
    }

    /// A page of entries above `after`: at most `limit` entries and `max_bytes` of records (at least one
    /// entry if there is one).
    pub fn page(&self, after: Option<u64>, limit: usize, max_bytes: u64) -> DeadLetterPage {
        let (ids, mut more) = self.ids_after(after, limit);
        let mut entries = Vec::new();
        let mut used = 0u64;
        let mut last = None;
        for id in ids.iter().copied() {
            let size = self.index().entries.get(&id).map_or(0, |h| h.bytes);
            if !entries.is_empty() && used.saturating_add(size) > max_bytes {
                more = true;
                break;
            }
            used = used.saturating_add(size);
            last = Some(id);
            if let Some(entry) = self.get(id) {
                entries.push(entry);
            }
        }
        let usage = self.usage();
        DeadLetterPage {
            entries,
            next: if more { last } else { None },
            total_entries: usage.entries,
            total_bytes: usage.bytes,
        }
    }

    /// Stores `entry` again (a replay refused it with a new reason).
    pub async fn update(&self, entry: &DeadLetter) {
        let ticket = {
            let mut index = self.index();
            if !index.entries.contains_key(&entry.id) {
                return;
            }
            let bytes = match encode_dead_letter(entry) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(%error, "could not encode a dead letter");
                    return;
                }
            };
            if let Err(error) = self.storage.put_meta(&record_name(entry.id), &bytes) {
                tracing::error!(%error, id = entry.id, "could not update a dead letter");
                Metrics::incr(&self.metrics.dlq_failures);
                return;
            }
            index.remove(entry.id);
            index.insert(
                entry.id,
                Held {
                    bytes: record_bytes(bytes.len()),
                    message_id: entry.message_id.clone(),
                },
            );
            self.durability.written()
        };
        if let Err(error) = self.durability.wait_durable(ticket).await {
            tracing::error!(%error, id = entry.id, "dead-letter update not durable");
        }
    }

    /// Removes the entries `ids` (`None`: every entry) and waits until that is durable. Returns the ids
    /// removed and the asked-for ids that had no entry.
    pub async fn remove(&self, ids: Option<&[u64]>) -> Result<(Vec<u64>, Vec<u64>)> {
        let (removed, missing, ticket) = {
            let mut index = self.index();
            let wanted: Vec<u64> = match ids {
                Some(ids) => ids.to_vec(),
                None => index.entries.keys().copied().collect(),
            };
            let (mut removed, mut missing) = (Vec::new(), Vec::new());
            for id in wanted {
                if !index.entries.contains_key(&id) {
                    missing.push(id);
                    continue;
                }
                self.storage.remove_meta(&record_name(id))?;
                index.remove(id);
                removed.push(id);
            }
            (removed, missing, self.durability.written())
        };
        self.durability.wait_durable(ticket).await?;
        Ok((removed, missing))
    }
}

impl Cluster {
    /// This node's dead-letter queue.
    pub fn dead_letters(&self) -> &DeadLetterQueue {
        &self.dead_letters
    }

    /// Replays entries (`None`: every entry above `after`, at most `max_batch`): each payload is parsed
    /// again and run through [`Cluster::ingest`] with the current definitions, deduplicated by message
    /// id. Applied entries and duplicates are removed; entries refused again stay with the new reason;
    /// retryable outcomes leave them unchanged.
    pub(super) async fn replay_dead_letters(
        &self,
        ids: Option<Vec<u64>>,
        after: Option<u64>,
    ) -> ReplayReport {
        let limits = self.engine.limits().clone();
        let (ids, more) = match ids {
            Some(ids) => (ids, false),
            None => self.dead_letters.ids_after(after, limits.max_batch),
        };
        let mut results: Vec<Option<Replayed>> = vec![None; ids.len()];
        let mut entries: Vec<Option<DeadLetter>> = Vec::with_capacity(ids.len());
        let (mut events, mut at) = (Vec::new(), Vec::new());
        for (i, id) in ids.iter().enumerate() {
            let entry = self.dead_letters.get(*id);
            match entry.as_ref().map(|e| e.replay_event(&limits)) {
                None => results[i] = Some(Replayed::Missing),
                Some(Ok(event)) => {
                    events.push(event);
                    at.push(i);
                }
                Some(Err(e)) => {
                    let reply = ErrorReply::of(&e);
                    results[i] = Some(Replayed::Refused {
                        code: reply.code,
                        message: reply.message,
                    });
                }
            }
            entries.push(entry);
        }
        let outcomes = if events.is_empty() {
            Vec::new()
        } else {
            self.ingest(events, &Source::Replay).await
        };
        for (i, outcome) in at.into_iter().zip(outcomes) {
            results[i] = Some(match outcome {
                EventOutcome::Applied { .. } => Replayed::Applied,
                EventOutcome::Duplicate => Replayed::Duplicate,
                EventOutcome::Refused { code, message } if retryable(code) => {
                    Replayed::Retry { code, message }
                }
                EventOutcome::Refused { code, message } => Replayed::Refused { code, message },
            });
        }
        let mut report = Vec::with_capacity(ids.len());
        for ((id, entry), result) in ids.iter().zip(entries).zip(results) {
            let result = result.unwrap_or(Replayed::Retry {
                code: ErrorCode::Internal,
                message: "no outcome".into(),
            });
            match (&result, entry) {
                (Replayed::Applied | Replayed::Duplicate, _) => {
                    match self.dead_letters.remove(Some(&[*id])).await {
                        Ok(_) => Metrics::incr(&self.engine.metrics().dlq_replayed),
                        Err(error) => {
                            tracing::error!(id, %error, "replayed dead letter not removed");
                        }
                    }
                }
                (Replayed::Refused { code, message }, Some(mut entry))
                    if entry.code != *code || entry.reason != *message =>
                {
                    entry.code = *code;
                    entry.reason.clone_from(message);
                    self.dead_letters.update(&entry).await;
                }
                _ => {}
            }
            report.push(ReplayOutcome { id: *id, result });
        }
        ReplayReport {
            next: if more { ids.last().copied() } else { None },
            outcomes: report,
        }
    }

    /// Removes entries (`None`: every entry).
    pub(super) async fn purge_dead_letters(&self, ids: Option<Vec<u64>>) -> Result<Purged> {
        let (removed, missing) = self.dead_letters.remove(ids.as_deref()).await?;
        Metrics::add(&self.engine.metrics().dlq_purged, removed.len());
        Ok(Purged {
            removed: removed.len() as u64,
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::{DurabilityPolicy, MemoryStorage};

    fn queue(storage: &Arc<MemoryStorage>, limits: Limits) -> DeadLetterQueue {
        let storage: Arc<dyn Storage> = storage.clone();
        let durability = Durability::start(storage.clone(), DurabilityPolicy::Sync).unwrap();
        DeadLetterQueue::open(limits, storage, durability, Arc::default()).unwrap()
    }

    fn capture(message_id: &str) -> Capture {
        Capture::raw(
            ErrorCode::InvalidRequest,
            "invalid event: neither userId nor anonymousId",
            "web",
            1,
            r#"{"type":"track","event":"x"}"#,
            &Limits::default(),
        )
        .with_ids(None, Some(message_id.into()))
    }

    #[tokio::test]
    async fn entries_are_recovered_ids_continue_and_corrupt_records_are_skipped() {
        let storage = Arc::new(MemoryStorage::default());
        let q = queue(&storage, Limits::default());
        assert_eq!(q.capture(capture("m-1")).await, Some(1));
        assert_eq!(q.capture(capture("m-2")).await, Some(2));
        assert_eq!(q.capture(capture("m-1")).await, Some(1), "kept once");
        assert_eq!(
            q.metrics
                .dlq_repeats
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        storage.put_meta(&record_name(7), b"garbage").unwrap();
        let q = queue(&storage, Limits::default());
        assert_eq!(q.usage().entries, 2);
        assert_eq!(
            q.metrics
                .dlq_corrupt
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            q.capture(capture("m-3")).await,
            Some(8),
            "after the corrupt id"
        );
        let page = q.page(None, 2, u64::MAX);
        assert_eq!(
            page.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(page.next, Some(2));
        let rest = q.page(page.next, 10, u64::MAX);
        assert_eq!((rest.entries.len(), rest.next), (1, None));
        let (removed, missing) = q.remove(Some(&[1, 5])).await.unwrap();
        assert_eq!((removed, missing), (vec![1], vec![5]));
        assert_eq!(q.get(1), None);
        assert_eq!(
            q.capture(capture("m-1")).await,
            Some(9),
            "gone, so kept anew"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let storage = Arc::new(MemoryStorage::default());
        let q = queue(
            &storage,
            Limits {
                max_dead_letters: 2,
                ..Limits::default()
            },
        );
        for m in ["a", "b", "c", "d"] {
            q.capture(capture(m)).await;
        }
        assert_eq!(q.usage().entries, 2);
        assert_eq!(
            q.metrics
                .dlq_overflow
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        let page = q.page(None, 10, 1);
        assert_eq!(
            page.entries.len(),
            1,
            "at least one entry, then the byte bound"
        );
        assert_eq!(page.next, Some(1));
        q.remove(None).await.unwrap();
        assert_eq!(q.usage(), Usage::default());
        assert!(storage.scan_meta(RECORD_PREFIX).unwrap().is_empty());
    }
}
