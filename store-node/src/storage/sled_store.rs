//! [`Storage`] on sled `=0.34.7`: one `Db`, with the trees `"profiles"`, `"meta"`, `"wal"` and `"names"`.
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
//! A profile record this store joins ([`Storage::merge`], and the write-ahead log's folds through
//! [`SledStorage::join`]) is written *numbered*: its feature and node names as numbers of the store's
//! name table ([`StoredNames`], the tree `"names"`): a third less disk than the text form for the
//! benchmark's profiles, and read back without a UTF-8 check or an interning lookup per name
//! ([`Storage::record_decoder`]). A name's number
//! is inserted *and flushed* before the record that first uses it is handed back to be inserted, so no
//! crash leaves a record naming a number the table lost. A record stored whole ([`Storage::put`]: the
//! expiry sweep's rewrites, tools) is kept as given, and every record version is read.
//!
//! # Caveats
//!
//! * sled 0.34 is beta upstream and known for disk-space growth (segments are reclaimed lazily).
//! * sled flushes (and blocks) when the last handle is dropped; dropping on an async runtime thread stalls it.
//! * sled holds an exclusive lock on its directory: a second `open` of the same `dir` while the first is
//!   alive fails.
//! * Errors after an I/O failure: sled may stay in a failed state where every later operation errors.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use featurestore::compact::{NameKind, StoredNames, Symbol};
use featurestore::{NodeId, Profile};

use super::{RecordDecoder, Storage};
use crate::error::{Error, Result};

/// Name of the one sled tree holding every record.
const TREE: &str = "profiles";
const META_TREE: &str = "meta";
/// The tree of the write-ahead log's own records (how far it was folded).
const WAL_TREE: &str = "wal";
/// The key, in [`WAL_TREE`], of the id of the last log segment folded into the other trees.
const FOLDED_THROUGH: &[u8] = b"folded_through";
/// The tree of the name table numbered records use: key `[kind][number, u32 big-endian]`, value the
/// name's text. Kind `f`: a feature name, `n`: a node id.
const NAMES_TREE: &str = "names";

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
    names_tree: sled::Tree,
    /// The name table and the scratch buffer a numbered encoding hashes through; one join at a time.
    names: Mutex<Names>,
    dir: PathBuf,
}

/// What [`SledStorage::join`] holds while it joins.
#[derive(Debug, Default)]
struct Names {
    table: StoredNames,
    scratch: Vec<u8>,
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
        let names_tree = db.open_tree(NAMES_TREE).map_err(failed(format!(
            "opening tree {NAMES_TREE:?} in {}",
            dir.display()
        )))?;
        let table = restore_names(&names_tree, dir)?;
        tracing::debug!(
            dir = %dir.display(), recovered = db.was_recovered(), names = ?table.len(),
            "opened sled storage"
        );
        Ok(SledStorage {
            db,
            tree,
            meta,
            wal,
            names_tree,
            names: Mutex::new(Names {
                table,
                scratch: Vec::new(),
            }),
            dir: dir.to_path_buf(),
        })
    }

    fn names(&self) -> MutexGuard<'_, Names> {
        // A join that panicked left at worst numbers not yet saved, which the next join saves.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record of `base ⊔ delta` (`base`: a record of this store, absent for a new key), numbered,
    /// and whether `base` could not be decoded (and was so replaced). Any number the join added to the
    /// name table is durable when this returns, so the caller may insert the record at once.
    pub(super) fn join(&self, base: Option<&[u8]>, delta: &Profile) -> Result<(Vec<u8>, bool)> {
        let mut names = self.names();
        let Names { table, scratch } = &mut *names;
        let joined = super::merge::join_numbered(base, delta, table, scratch)?;
        self.save_names(table)?;
        Ok(joined)
    }

    /// Inserts the names `table` numbered since it was last saved, and flushes: before any record that
    /// uses them is inserted. A failure leaves them unsaved, to be saved by the next join.
    fn save_names(&self, table: &mut StoredNames) -> Result<()> {
        let unsaved = table.unsaved();
        if unsaved.is_empty() {
            return Ok(());
        }
        for (kind, number, text) in &unsaved {
            self.names_tree
                .insert(name_key(*kind, *number), text.as_bytes())
                .map_err(|e| self.err("saving a name's number", e))?;
        }
        self.db
            .flush()
            .map_err(|e| self.err("flushing the name table", e))?;
        tracing::debug!(
            added = unsaved.len(),
            "numbered new names for stored records"
        );
        table.mark_saved();
        Ok(())
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

/// The key of a name's number in [`NAMES_TREE`].
fn name_key(kind: NameKind, number: u32) -> [u8; 5] {
    let [a, b, c, d] = number.to_be_bytes();
    let kind = match kind {
        NameKind::Feature => b'f',
        NameKind::Node => b'n',
    };
    [kind, a, b, c, d]
}

/// The name table as [`NAMES_TREE`] holds it. An entry whose text is not a well-formed name keeps its
/// number taken, unreadable: a record naming it then fails to decode (the load counts it corrupt), and
/// no other name is ever given that number. A key that is not an entry's is skipped. Both are logged.
fn restore_names(tree: &sled::Tree, dir: &Path) -> Result<StoredNames> {
    let mut features = Vec::new();
    let mut nodes = Vec::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(|source| Error::Sled {
            context: format!("sled reading the name table in {}", dir.display()),
            source,
        })?;
        let text = std::str::from_utf8(&value).map_err(|e| e.to_string());
        let damaged = match key.as_ref() {
            [b'f', number @ ..] | [b'n', number @ ..] if number.len() == 4 => {
                let number = u32::from_be_bytes([number[0], number[1], number[2], number[3]]);
                if key[0] == b'f' {
                    features.push((number, text.as_deref().ok().map(Symbol::new)));
                    text.err()
                } else {
                    let node = text.and_then(|t| NodeId::new(t).map_err(|e| e.to_string()));
                    nodes.push((number, node.as_ref().ok().map(NodeId::name)));
                    node.err()
                }
            }
            _ => Some(format!("not an entry's key ({} bytes)", key.len())),
        };
        if let Some(why) = damaged {
            tracing::warn!(
                dir = %dir.display(), key = ?key.as_ref(), %why,
                "a damaged entry of the stored name table: records naming it will not decode"
            );
        }
    }
    Ok(StoredNames::restore(features, nodes))
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
        let (record, corrupt) = self.join(base.as_deref(), &delta)?;
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

    fn record_decoder(&self) -> RecordDecoder {
        RecordDecoder::with_names(self.names().table.columns())
    }

    /// How many feature and node names the name table numbers (each kind is bounded by
    /// `featurestore::compact::MAX_STORED_NAMES`; past it, names are stored as text).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let (features, nodes) = self.names().table.len();
        vec![
            ("stored_feature_names", features as u64),
            ("stored_node_names", nodes as u64),
        ]
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use featurestore::hlc::{Actor, Timestamp};
    use featurestore::wire::codec::{
        encode_record, state_hash, NUMBERED_RECORD_VERSION, PROFILE_RECORD_VERSION,
    };
    use featurestore::Limits;

    fn counted(names: &[&str], node: &str, at: u64) -> Profile {
        let actor = Actor::legacy(NodeId::new(node).unwrap());
        let by: Vec<(&str, i64)> = names.iter().map(|n| (*n, 1)).collect();
        let mut p = Profile::default();
        p.increment(&by, &actor, Timestamp::from_millis(at), &Limits::default())
            .unwrap();
        p
    }

    /// Joined records are numbered and smaller; the numbers are in the `names` tree before the records
    /// (so after a reopen, which restores the table, every record reads and keeps its state hash); a
    /// record stored whole keeps its version.
    #[test]
    fn joined_records_are_numbered_and_read_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let wide: Vec<String> = (0..20).map(|i| format!("sled_numbered_{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let a = counted(&wide, "n1", 1);
        let b = counted(&["sled_numbered_later"], "n2", 2);
        let whole = counted(&["sled_numbered_whole"], "n3", 3);
        {
            let s = SledStorage::open_with_cache(dir.path(), 1 << 22).unwrap();
            s.merge(b"a", &encode_record(&a).unwrap()).unwrap();
            assert_eq!(s.names_tree.len(), 21, "20 features and n1");
            s.merge(b"a", &encode_record(&b).unwrap()).unwrap();
            s.put(b"whole", &encode_record(&whole).unwrap()).unwrap();
            s.flush().unwrap();
        }
        let s = SledStorage::open_with_cache(dir.path(), 1 << 22).unwrap();
        assert_eq!(s.names().table.len(), (21, 2));
        assert_eq!(
            s.counters(),
            [("stored_feature_names", 21), ("stored_node_names", 2)]
        );
        let decoder = s.record_decoder();
        let mut joined = a.clone();
        joined.merge(&b);
        let mut seen = Vec::new();
        s.for_each_record(&mut |key, record| {
            let (profile, hash) = decoder.decode(record).unwrap();
            assert_eq!(hash, state_hash(&profile), "the hash every node computes");
            seen.push((key.to_vec(), record[0], profile));
        })
        .unwrap();
        let text_len = encode_record(&joined).unwrap().len();
        let numbered_len = s.get_profile(b"a").unwrap().unwrap().len();
        assert!(
            numbered_len * 10 < text_len * 7,
            "{numbered_len} against {text_len}"
        );
        assert_eq!(
            seen,
            [
                (b"a".to_vec(), NUMBERED_RECORD_VERSION, joined),
                (b"whole".to_vec(), PROFILE_RECORD_VERSION, whole),
            ]
        );
    }

    /// A damaged entry of the name table is skipped at open, and a record naming its number fails to
    /// decode with a typed error (the load counts it corrupt) instead of reading as another name.
    #[test]
    fn a_damaged_name_entry_makes_its_records_fail_to_decode() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open_with_cache(dir.path(), 1 << 22).unwrap();
            let p = counted(&["sled_damaged_0", "sled_damaged_1"], "n1", 1);
            s.merge(b"k", &encode_record(&p).unwrap()).unwrap();
            // The feature numbered 1 loses its text; a stray key appears.
            s.names_tree
                .insert(name_key(NameKind::Feature, 1), &[0xff, 0xfe][..])
                .unwrap();
            s.names_tree.insert(b"junk", &b"x"[..]).unwrap();
            s.flush().unwrap();
        }
        let s = SledStorage::open_with_cache(dir.path(), 1 << 22).unwrap();
        let record = s.get_profile(b"k").unwrap().unwrap();
        let err = s.record_decoder().decode(&record).unwrap_err();
        assert!(
            err.to_string().contains("not in the stored name table"),
            "{err}"
        );
        // A join onto it replaces it, as for any record that cannot be decoded, and numbers afresh
        // after the table's last number, never reusing the gap.
        let (record, corrupt) = s
            .join(Some(&record), &counted(&["sled_damaged_2"], "n1", 2))
            .unwrap();
        assert!(corrupt);
        assert_eq!(
            s.names().table.len(),
            (3, 1),
            "number 2: the damaged 1 stays taken"
        );
        let (profile, _) = s.record_decoder().decode(&record).unwrap();
        assert_eq!(profile.feature_count(), 1);
    }
}
