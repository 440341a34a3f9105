//! Durable key → bytes storage for a node, and the durability policy that decides when writes are acked.
//!
//! # What it guarantees
//!
//! * [`Storage`] stores byte records under byte keys. The node encodes its records itself (including a
//!   format-version byte). This layer interprets a value in one place only: [`Storage::merge`] joins a
//!   profile record with a write's delta (module `merge`), through the core's checked decoder, so
//!   nothing read from disk is ever unwrapped or trusted here.
//! * A `put`/`remove` that returned before a [`Storage::flush`] call started is durable (fsynced) once that
//!   `flush` returns `Ok`. Nothing is promised for writes that were not covered by a successful flush.
//! * [`Durability`] turns that into an ack policy ([`DurabilityPolicy`]): in `sync` mode a write is acked
//!   only after a flush covering it succeeded (group commit: many writers share one fsync); in `periodic`
//!   mode writes are acked immediately and flushed every `interval_ms` (a crash may lose up to one interval).
//!
//! # How
//!
//! * [`WalStorage`] is the default engine (`storage = "sled"`): a write-ahead log in `<data>/wal` that
//!   group commit `fdatasync`s, folded in the background into a [`SledStorage`]: one sled `Db` with the
//!   trees `"profiles"`, `"meta"`, `"wal"` and `"names"` (the numbers its records give feature and node
//!   names), and sled's own background flusher disabled, so the [`Durability`] flusher thread alone
//!   decides when anything is synced. Its profile records are read back through
//!   [`Storage::record_decoder`].
//! * [`MemoryStorage`] is a `Mutex<HashMap>` for tests and `storage = "memory"`; it is never durable.
//! * Storage is read only at startup ([`Storage::for_each_record`], streamed); hot-path reads are served
//!   from the node's in-memory state.
//!
//! # Caveats
//!
//! * sled 0.34 describes itself as beta and has known disk-space growth; the trait boundary keeps a swap
//!   to another engine (redb, fjall) a change to this module only.
//! * sled flushes when the last handle is dropped; that drop blocks, so drop storage off the async
//!   runtime (or after [`Durability::shutdown`], which already flushed).
//! * `load_all` materialises every record in memory at once (tests and tools); the node's start-up uses
//!   `for_each_record`, which streams.

mod durability;
mod memory;
mod merge;
mod sled_store;
mod wal;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub use durability::{Durability, DurabilityPolicy, DurabilityStats, FlushHistograms, WriteTicket};
pub use memory::MemoryStorage;
pub use sled_store::SledStorage;
pub use wal::{WalSizes, WalStorage};

use crate::error::{Error, Result};

/// Durable key → bytes storage.
///
/// Implementations must be safe to call from many threads at once. All methods are blocking; callers on
/// an async runtime should keep `put`/`remove` short (they are for the engines used here) and must never
/// call `flush` on a runtime thread — [`Durability`] runs flushes on its own thread.
pub trait Storage: Send + Sync + 'static {
    /// Every stored record, for rebuilding the in-memory state at startup (order unspecified).
    fn load_all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Every stored record lent to `f` as it is read (order unspecified; `f` copies what it keeps): the
    /// node's start-up load, which so never holds every record twice and allocates nothing per record
    /// here. By default through [`Storage::load_all`].
    fn for_each_record(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for (key, value) in self.load_all()? {
            f(&key, &value);
        }
        Ok(())
    }
    /// Insert or replace one record. Not durable until a later `flush` returns.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Joins the profile record under `key` (absent: an empty profile) with `delta`, a profile encoded
    /// as a record, whose join with the state before it is the state after it (the delta of a write,
    /// or a state received from a replica). Not durable until a later `flush` returns.
    ///
    /// This is what lets a write log tens of bytes rather than its whole record: the write-ahead log
    /// appends the delta and joins it into the stored record when it folds (see [`WalStorage`]). A join
    /// is idempotent, so a delta folded twice after a crash is harmless. A record that cannot be decoded
    /// is replaced by the join of the deltas logged after it.
    fn merge(&self, key: &[u8], delta: &[u8]) -> Result<()>;
    /// Remove one record (absent is fine). Not durable until a later `flush` returns.
    fn remove(&self, key: &[u8]) -> Result<()>;
    /// Make every put/remove that returned before this call durable (fsync).
    fn flush(&self) -> Result<()>;
    /// Bytes used on disk (0 for memory).
    fn disk_bytes(&self) -> Result<u64>;
    /// Short name for logs/status ("sled" / "memory").
    fn kind(&self) -> &'static str;
    /// Reads a node metadata record (membership table, hints), kept apart from the profiles.
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Writes a node metadata record. Not durable until a later `flush` returns.
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()>;
    /// Removes a node metadata record (absent is fine). Not durable until a later `flush` returns.
    fn remove_meta(&self, name: &str) -> Result<()>;
    /// Every metadata record whose name starts with `prefix`.
    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// The engine's own counters, for status (none by default).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// What reads this engine's profile records as [`Storage::for_each_record`] lends them. Taken once
    /// before a load: it knows the names numbered so far. By default records are the node's own
    /// encoding (`featurestore::wire::codec::encode_record`).
    fn record_decoder(&self) -> RecordDecoder {
        RecordDecoder::default()
    }
}

/// Reads stored profile records: the node's version-4 records, and the numbered records (version 5) a
/// store with a name table writes ([`featurestore::compact::StoredNames`]). Cheap to share between
/// decoder threads (`&self`, nothing locked per record).
#[derive(Clone, Debug, Default)]
pub struct RecordDecoder {
    names: Arc<featurestore::compact::NameColumns>,
}

impl RecordDecoder {
    /// A decoder with the name table snapshot `names`.
    pub fn with_names(names: Arc<featurestore::compact::NameColumns>) -> RecordDecoder {
        RecordDecoder { names }
    }

    /// The profile a record holds and its state hash (what anti-entropy compares).
    pub fn decode(&self, record: &[u8]) -> Result<(featurestore::Profile, u64)> {
        Ok(featurestore::wire::codec::decode_stored_record(
            record,
            &self.names,
        )?)
    }
}

/// Which storage engine a node uses (config key `storage`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// The embedded sled engine, durable (the default).
    #[default]
    Sled,
    /// In-memory only; everything is lost when the process exits. For tests and benchmarks.
    Memory,
}

impl StorageKind {
    /// The lowercase name used in config files, logs and [`Storage::kind`].
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Sled => "sled",
            StorageKind::Memory => "memory",
        }
    }
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StorageKind {
    type Err = Error;

    /// Parses `"sled"` or `"memory"` (for environment and CLI overrides).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "sled" => Ok(StorageKind::Sled),
            "memory" => Ok(StorageKind::Memory),
            other => Err(Error::Config(format!(
                "unknown storage kind {other:?} (expected \"sled\" or \"memory\")"
            ))),
        }
    }
}

/// Opens the storage engine `kind` in directory `dir` (ignored for [`StorageKind::Memory`]): for
/// [`StorageKind::Sled`], a [`WalStorage`] with log segments sized by `wal` in front of sled with a page
/// cache of `cache_bytes`.
///
/// Opening creates `dir` if needed and blocks while sled recovers and the log replays; call it before
/// serving, or from a blocking context.
pub fn open(
    kind: StorageKind,
    dir: &Path,
    cache_bytes: u64,
    wal: WalSizes,
) -> Result<Arc<dyn Storage>> {
    match kind {
        StorageKind::Sled => Ok(Arc::new(WalStorage::open(dir, cache_bytes, wal)?)),
        StorageKind::Memory => Ok(Arc::new(MemoryStorage::default())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn storage_kind_parses_and_prints() {
        assert_eq!("sled".parse::<StorageKind>().unwrap(), StorageKind::Sled);
        assert_eq!(
            " memory ".parse::<StorageKind>().unwrap(),
            StorageKind::Memory
        );
        assert!("rocks".parse::<StorageKind>().is_err());
        assert_eq!(StorageKind::default(), StorageKind::Sled);
        assert_eq!(StorageKind::Memory.to_string(), "memory");
        let k: StorageKind = serde_json::from_str("\"memory\"").unwrap();
        assert_eq!(k, StorageKind::Memory);
    }

    #[test]
    fn memory_open_ignores_dir() {
        let s = open(
            StorageKind::Memory,
            Path::new("/nonexistent/dir"),
            1 << 24,
            WalSizes::of(&featurestore::Limits::default()),
        )
        .unwrap();
        assert_eq!(s.kind(), "memory");
        assert_eq!(s.disk_bytes().unwrap(), 0);
    }
}
