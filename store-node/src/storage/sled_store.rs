//! [`Storage`] on sled `=0.34.7`: one `Db`, one tree named `"profiles"`.
//!
//! # Guarantees
//!
//! A `put`/`remove` that returned before [`Storage::flush`] started survives a crash once `flush` returned
//! `Ok`: `flush` calls `Db::flush`, which writes sled's dirty log buffers and fsyncs the file. sled's own
//! periodic background flusher is disabled (`flush_every_ms(None)`), so durability follows the node's
//! [`DurabilityPolicy`](super::DurabilityPolicy) only — nothing becomes durable behind its back "by
//! accident" that a test could then wrongly rely on.
//!
//! # How
//!
//! Values are stored verbatim (opaque bytes); sled checksums its log, and the node's record encoding
//! carries its own version byte. Every sled error is mapped to [`Error::Sled`] with what was being done.
//!
//! # Caveats
//!
//! * sled 0.34 is beta upstream and known for disk-space growth (segments are reclaimed lazily).
//! * sled flushes (and blocks) when the last handle is dropped; dropping on an async runtime thread stalls it.
//! * sled holds an exclusive lock on its directory: a second `open` of the same `dir` while the first is
//!   alive fails.
//! * Errors after an I/O failure: sled may stay in a failed state where every later operation errors.

use std::path::{Path, PathBuf};

use super::Storage;
use crate::error::{Error, Result};

/// Name of the one sled tree holding every record.
const TREE: &str = "profiles";
const META_TREE: &str = "meta";
/// The tree of the write-ahead log's own records (how far it was folded).
const WAL_TREE: &str = "wal";
/// The key, in [`WAL_TREE`], of the id of the last log segment folded into the other trees.
const FOLDED_THROUGH: &[u8] = b"folded_through";

/// A tree a write-ahead log entry is folded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Tree {
    /// The profile records.
    Profiles,
    /// The node's metadata records.
    Meta,
}

/// Storage on an embedded sled database.
#[derive(Debug)]
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
    meta: sled::Tree,
    wal: sled::Tree,
    dir: PathBuf,
}

impl SledStorage {
    /// Opens (creating if needed) the sled database in `dir`, with sled's default page cache (1 GiB).
    ///
    /// Blocks while sled recovers its log; run it at startup or in a blocking context.
    pub fn open(dir: &Path) -> Result<SledStorage> {
        SledStorage::open_with_cache(dir, 1024 * 1024 * 1024)
    }

    /// [`SledStorage::open`] with a page cache of `cache_bytes`. The node serves reads from its own
    /// memory, so the cache only helps writes and the start-up scan; the default 1 GiB would hold the
    /// records a second time (W7 in docs/benchmarks.md).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStorage> {
        // Mode: LowSpace (sled's default, chosen explicitly). Reads are served from the node's memory and
        // writes are bounded by fsync latency under group commit, so sled's extra write throughput from
        // HighThroughput buys little, while disk growth is sled's known weak spot (design §7, W7 measures
        // disk bytes per profile). Note: in sled 0.34.7 the mode is recorded but no code path reads it
        // yet, so this is a statement of intent for when it does.
        //
        // flush_every_ms(None): no sled background flusher; `Durability` decides when to fsync.
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None);
        let failed = |context: String| move |source| Error::Sled { context, source };
        let db = config.open().map_err(failed(format!(
            "opening sled database in {}",
            dir.display()
        )))?;
        let tree = db.open_tree(TREE).map_err(failed(format!(
            "opening tree {TREE:?} in {}",
            dir.display()
        )))?;
        let meta = db.open_tree(META_TREE).map_err(failed(format!(
            "opening tree {META_TREE:?} in {}",
            dir.display()
        )))?;
        let wal = db.open_tree(WAL_TREE).map_err(failed(format!(
            "opening tree {WAL_TREE:?} in {}",
            dir.display()
        )))?;
        tracing::debug!(dir = %dir.display(), recovered = db.was_recovered(), "opened sled storage");
        Ok(SledStorage {
            db,
            tree,
            meta,
            wal,
            dir: dir.to_path_buf(),
        })
    }

    /// The directory this database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies one write-ahead log entry: `value` stored under `key` in `tree`, or `key` removed for
    /// `None`. Not durable until a later flush.
    pub(super) fn fold_entry(&self, tree: Tree, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let target = match tree {
            Tree::Profiles => &self.tree,
            Tree::Meta => &self.meta,
        };
        match value {
            Some(value) => target.insert(key, value).map(drop),
            None => target.remove(key).map(drop),
        }
        .map_err(|e| self.err("folding a log entry", e))
    }

    /// The profile record stored under `key`, if any (the base a folded delta joins onto).
    pub(super) fn get_profile(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err("reading a record", e))
    }

    /// The id of the last write-ahead log segment folded into this database (0 if none).
    pub(super) fn wal_folded_through(&self) -> Result<u64> {
        let Some(bytes) = self
            .wal
            .get(FOLDED_THROUGH)
            .map_err(|e| self.err("reading the log's fold mark", e))?
        else {
            return Ok(0);
        };
        let raw: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
            Error::Storage(format!(
                "the write-ahead log's fold mark in {} is {} bytes, not 8",
                self.dir.display(),
                bytes.len()
            ))
        })?;
        Ok(u64::from_le_bytes(raw))
    }

    /// Records that every log segment up to `id` is folded. Not durable until a later flush.
    pub(super) fn set_wal_folded_through(&self, id: u64) -> Result<()> {
        self.wal
            .insert(FOLDED_THROUGH, &id.to_le_bytes())
            .map(drop)
            .map_err(|e| self.err("writing the log's fold mark", e))
    }

    fn err(&self, what: &str, source: sled::Error) -> Error {
        Error::Sled {
            context: format!("sled {what} in {}", self.dir.display()),
            source,
        }
    }
}

impl Storage for SledStorage {
    fn load_all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // Not `Vec::with_capacity(tree.len())`: sled's `len` is itself a full scan.
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| self.err("scan", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn for_each_record(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| self.err("scan", e))?;
            f(&k, &v);
        }
        Ok(())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree
            .insert(key, value)
            .map(drop)
            .map_err(|e| self.err("insert", e))
    }

    /// A read, a join and an insert: not atomic against a concurrent write of the same key (the
    /// node writes a key under its shard lock, and the node's engine is [`WalStorage`](super::WalStorage),
    /// which joins at fold time).
    fn merge(&self, key: &[u8], delta: &[u8]) -> Result<()> {
        let delta = super::merge::decode_delta(delta)?;
        let base = self.get_profile(key)?;
        let (record, corrupt) = super::merge::join_onto(base.as_deref(), &delta)?;
        if corrupt {
            tracing::warn!(
                key = %String::from_utf8_lossy(key),
                "a stored record that cannot be decoded was replaced by the delta written to it"
            );
        }
        self.put(key, &record)
    }

    fn remove(&self, key: &[u8]) -> Result<()> {
        self.tree
            .remove(key)
            .map(drop)
            .map_err(|e| self.err("remove", e))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(drop).map_err(|e| self.err("flush", e))
    }

    fn disk_bytes(&self) -> Result<u64> {
        self.db
            .size_on_disk()
            .map_err(|e| self.err("size_on_disk", e))
    }

    fn kind(&self) -> &'static str {
        "sled"
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.meta
            .get(name.as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err("meta get", e))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.meta
            .insert(name.as_bytes(), value)
            .map(drop)
            .map_err(|e| self.err("meta insert", e))
    }

    fn remove_meta(&self, name: &str) -> Result<()> {
        self.meta
            .remove(name.as_bytes())
            .map(drop)
            .map_err(|e| self.err("meta remove", e))
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item.map_err(|e| self.err("meta scan", e))?;
            // Names are written from `&str`; a name that is not UTF-8 is not ours and is skipped.
            if let Ok(name) = String::from_utf8(k.to_vec()) {
                out.push((name, v.to_vec()));
            }
        }
        Ok(out)
    }
}
