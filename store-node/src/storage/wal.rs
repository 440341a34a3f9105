//! [`WalStorage`]: a write-ahead log in front of sled. Writes are appended to a log that group commit
//! `fdatasync`s; sled receives them later, on a background thread.
//!
//! # Guarantees
//!
//! * A `put`/`remove` (of a record or of a metadata record) that returned before [`Storage::flush`]
//!   started is durable once that `flush` returns `Ok`. `flush` writes the buffered log entries to the
//!   current segment file and `fdatasync`s it. That is one small sequential append per group of writes,
//!   where sled's own flush writes pages of whole records.
//! * Restart replays every log segment that was not yet folded into sled, in order. It stops at a
//!   segment's first torn or corrupt entry (which was never acknowledged: its flush did not complete).
//!   [`Storage::for_each_record`] then sees every durable write, a [`Storage::merge`] as the join of
//!   the record with every delta merged into it.
//! * Nothing grows without bound. The in-memory buffer is capped at `max_wal_buffer_bytes`; a `put`
//!   beyond it fails with [`Error::WalBufferFull`] and is not acknowledged. A segment is closed once it
//!   holds `wal_segment_bytes`, and the checkpointer folds closed segments into sled and deletes them.
//!
//! # How
//!
//! * A log is a directory `wal/` of segment files `<id>.wal` (16 hex digits), each an 8-byte header and
//!   then entries `len: u32 | crc32: u32 | kind: u8 | key_len: u32 | key | value`. Integers are
//!   little-endian; `len` counts the bytes after the CRC, and the CRC covers them. A `Merge` entry's
//!   value is a write's delta (tens of bytes for a write of one feature), a `Put`'s a whole record.
//! * `put` encodes the entry into a buffer under a mutex. That is a copy of the record: no system call,
//!   no sled call. A metadata write also goes into sled right away, because metadata is read back
//!   (`get_meta`, `scan_meta`) while the node runs. Profile records are only read at start-up, so they
//!   reach sled at the next fold.
//! * `flush` (the `fs-flusher` thread, see [`Durability`](super::Durability)) writes the buffer out and
//!   `fdatasync`s it under the log's mutex. Every writer that arrived meanwhile shares the next flush.
//! * The `fs-checkpoint` thread folds each closed segment into sled, in order, one sled operation per
//!   entry (not sled batches, which lock out every other sled call of the process while they apply). It flushes sled, records "folded through
//!   `id`" in sled's `wal` tree, flushes again, and deletes the file. A segment at or below that mark is never replayed, so
//!   a crash between the mark and the delete is harmless, as is one at any earlier step (replay is
//!   idempotent: a `Put` or `Remove` resets its key, and a `Merge` joins, which is idempotent).
//! * A fold collects a segment's profile entries per key first and writes each key once: a key merged
//!   a thousand times in a segment costs one sled read, one decode, one join and one insert, where
//!   logging whole records cost a thousand inserts.
//! * A background fold skips metadata entries: sled already holds those, or newer values of them. Only
//!   the start-up replay applies them, because sled may have lost them in a crash.
//! * Dropping the storage stops the checkpointer and folds everything, so a clean stop leaves no log to
//!   replay.
//!
//! # Caveats
//!
//! * A `Merge` entry holds the write's delta state, not the operation: an increment logs its counter's
//!   per-actor slots, a window observation the bucket's changed slots. That is what makes a replay a
//!   join (an operation replayed twice would count twice).
//! * Replay and folds decode records (the core's checked decoder): a start-up after a crash costs a
//!   decode and an encode per key the log touched. A stored record that cannot be decoded is replaced
//!   by the join of the deltas logged for it, counted in `wal_corrupt_bases`. A delta that cannot be
//!   decoded (only a bug writes one: its CRC matched) is skipped and counted in `wal_bad_deltas`.
//! * A log holding `Merge` entries (kind 5) cannot be replayed by a build from before them, which stops
//!   at the first such entry. A clean stop folds the log and leaves none to replay, so downgrade after
//!   a clean stop.
//! * After a failed write or `fdatasync` the segment is abandoned and the next flush opens a new one.
//!   Entries of the failed flush may still be replayed if their bytes reached the disk. Such writes were
//!   never acknowledged; replaying them is the same as a late arrival, which the stores' CRDTs allow.
//! * `load_all` and `for_each_record` first flush, close the segment and fold everything, so they see
//!   every write. That is meant for start-up and tools, not for the serving path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::sled_store::{SledStorage, Tree};
use super::{RecordDecoder, Storage};
use crate::error::{Error, Result};

/// Name of the thread that folds closed segments into sled.
const THREAD_NAME: &str = "fs-checkpoint";
/// The first bytes of every segment file (format version 1).
const MAGIC: &[u8; 8] = b"FSWAL\x00\x00\x01";
/// Bytes before an entry's body: its length and its CRC.
const ENTRY_HEADER: usize = 8;
/// A `put` writes the buffer out itself (without `fdatasync`) once it holds this much and the log is
/// free, so a long `periodic` interval does not build a large buffer.
const WRITE_OUT_BYTES: usize = 1 << 20;
/// How often the checkpointer looks for closed segments when no flush woke it.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// What an entry does. Its byte is stored in the log; the values are part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Put = 1,
    Remove = 2,
    PutMeta = 3,
    RemoveMeta = 4,
    /// A delta to join into the profile record (see [`Storage::merge`]).
    Merge = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Remove),
            3 => Some(Kind::PutMeta),
            4 => Some(Kind::RemoveMeta),
            5 => Some(Kind::Merge),
            _ => None,
        }
    }
}

/// Sizes of the log, from [`Limits`](featurestore::Limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalSizes {
    /// A segment is closed (and then folded into sled) once it holds this many bytes.
    pub segment_bytes: u64,
    /// Most bytes of entries buffered in memory before a flush writes them.
    pub max_buffer_bytes: u64,
}

impl WalSizes {
    /// The sizes set in `limits`.
    pub fn of(limits: &featurestore::Limits) -> WalSizes {
        WalSizes {
            segment_bytes: limits.wal_segment_bytes,
            max_buffer_bytes: limits.max_wal_buffer_bytes,
        }
    }
}

/// Counters of the log, for status.
#[derive(Debug, Default)]
struct Counters {
    appended: AtomicU64,
    appended_bytes: AtomicU64,
    syncs: AtomicU64,
    refused_full: AtomicU64,
    folds: AtomicU64,
    folded_records: AtomicU64,
    fold_failures: AtomicU64,
    replayed_entries: AtomicU64,
    torn_entries: AtomicU64,
    folded_deltas: AtomicU64,
    bad_deltas: AtomicU64,
    corrupt_bases: AtomicU64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Segment {
    file: File,
    id: u64,
    /// Bytes in the file, header included.
    bytes: u64,
    /// A write or sync failed: the next flush starts a new segment first.
    broken: bool,
    /// A spare buffer, swapped with the shared one at each flush so neither reallocates.
    spare: Vec<u8>,
}

/// State shared with the checkpointer thread.
#[derive(Debug)]
struct Shared {
    sled: SledStorage,
    dir: PathBuf,
    sizes: WalSizes,
    /// Encoded entries not yet written to the segment file.
    buffer: Mutex<Vec<u8>>,
    /// The current segment. Lock order: `segment`, then `buffer`.
    segment: Mutex<Segment>,
    /// Held while folding, so that one fold runs at a time.
    fold: Mutex<()>,
    /// Held across a metadata write's sled insert and its log append, so that the log's order of writes
    /// to one name is sled's order.
    meta_order: Mutex<()>,
    stop: AtomicBool,
    /// Set by tests that simulate a crash: drop without the final fold.
    #[cfg(test)]
    skip_final_fold: AtomicBool,
    counters: Counters,
    /// The checkpointer, woken when a segment is closed.
    checkpointer: OnceLock<thread::Thread>,
}

/// [`Storage`] as a write-ahead log in front of a [`SledStorage`]. See the module docs.
#[derive(Debug)]
pub struct WalStorage {
    shared: Arc<Shared>,
    checkpointer: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let context = what.to_owned();
    let path = path.to_path_buf();
    move |source| Error::Wal {
        context,
        path,
        source,
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

/// The ids of the segment files in `dir`, ascending. Other files are ignored.
fn segment_ids(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing the log", dir))? {
        let entry = entry.map_err(io_err("listing the log", dir))?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if hex.len() == 16 {
            if let Ok(id) = u64::from_str_radix(hex, 16) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes the directory's entries (a created or deleted segment) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the log directory", dir))
}

/// Appends one entry to `buf`.
fn encode_entry(buf: &mut Vec<u8>, kind: Kind, key: &[u8], value: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; ENTRY_HEADER]);
    buf.push(kind as u8);
    // Keys are bounded by `max_key_bytes` (and metadata names are short), far below 4 GiB.
    buf.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let body = &buf[start + ENTRY_HEADER..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Why reading a segment stopped before its end.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// The segment ended cleanly after its last entry.
    Clean,
    /// The bytes at `offset` are not a whole, intact entry (or the header is missing).
    Torn { offset: u64, why: String },
}

/// Reads the entries of one segment, stopping at the first torn or corrupt one. No entry may be longer
/// than the file, so a corrupt length never makes it allocate more than the file's size (and a lowered
/// `max_wal_buffer_bytes` never turns an entry logged under the old limit into a torn one).
fn read_segment(path: &Path, f: &mut dyn FnMut(Entry)) -> Result<(u64, Tail)> {
    let file = File::open(path).map_err(io_err("opening a log segment", path))?;
    let max_entry = file
        .metadata()
        .map_err(io_err("reading a log segment's size", path))?
        .len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut offset = 0u64;
    let mut count = 0u64;
    let torn = |offset: u64, why: &str| Tail::Torn {
        offset,
        why: why.to_owned(),
    };
    let mut magic = [0u8; 8];
    match read_full(&mut r, &mut magic).map_err(io_err("reading a log segment", path))? {
        8 if &magic == MAGIC => offset += 8,
        _ => return Ok((0, torn(0, "no segment header"))),
    }
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; ENTRY_HEADER];
        match read_full(&mut r, &mut header).map_err(io_err("reading a log segment", path))? {
            0 => return Ok((count, Tail::Clean)),
            ENTRY_HEADER => {}
            _ => return Ok((count, torn(offset, "entry header cut short"))),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if u64::from(len) > max_entry || len < 5 {
            return Ok((count, torn(offset, "entry length out of range")));
        }
        body.clear();
        body.resize(len as usize, 0);
        if read_full(&mut r, &mut body).map_err(io_err("reading a log segment", path))?
            != body.len()
        {
            return Ok((count, torn(offset, "entry cut short")));
        }
        if crc32fast::hash(&body) != crc {
            return Ok((count, torn(offset, "entry checksum mismatch")));
        }
        let Some(kind) = Kind::from_byte(body[0]) else {
            return Ok((count, torn(offset, "unknown entry kind")));
        };
        let key_len = u32::from_le_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let Some(rest) = body.get(5..) else {
            return Ok((count, torn(offset, "entry cut short")));
        };
        if key_len > rest.len() {
            return Ok((count, torn(offset, "key longer than its entry")));
        }
        let (key, value) = rest.split_at(key_len);
        f(Entry {
            kind,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        count += 1;
        offset += ENTRY_HEADER as u64 + u64::from(len);
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Deletes segment `id` (absent is fine).
fn remove_segment(dir: &Path, id: u64) -> Result<()> {
    let path = segment_path(dir, id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("deleting a folded log segment", &path)(e)),
    }
}

/// Distinct profile keys a fold holds pending before it writes them to sled (and starts over with the
/// rest of the segment), so a segment of many keys never holds all their states at once.
const FOLD_PENDING_KEYS: usize = 1024;

/// What a segment's entries so far did to one profile key, in order.
#[derive(Debug, Default)]
struct PendingKey {
    /// A `Put` (`Some(record)`) or `Remove` (`None`) replaced whatever sled held; absent if neither came.
    reset: Option<Option<Vec<u8>>>,
    /// The join of the deltas merged since (or since the segment's start).
    joined: Option<featurestore::Profile>,
}

/// Applies segment `id` to sled (metadata entries too if `with_meta`), records it as folded, and
/// deletes it.
///
/// Profile entries are collected per key first, in order: a `Put` or `Remove` replaces what came before
/// it, a `Merge` joins its delta into what is pending. Each key is then written once: its last `Put` or
/// sled's record, joined with the pending deltas. So a key merged a thousand times in a segment costs
/// one sled read, one decode and one insert. A fold that stops part-way (a crash) leaves sled holding
/// some of the segment's effects; the replay folds the whole segment again, which gives the same
/// records, because a `Put` or `Remove` resets the key and a join is idempotent.
fn fold_segment(
    sled: &SledStorage,
    dir: &Path,
    counters: &Counters,
    id: u64,
    with_meta: bool,
) -> Result<()> {
    let path = segment_path(dir, id);
    // Applied one sled insert or remove per key (or metadata entry). Not sled batches:
    // `Tree::apply_batch` takes sled's process-wide concurrency-control write lock for the whole batch,
    // which stopped every other sled call of the node (metadata writes on the request path among them)
    // while a few thousand records went in; with three nodes on one core that was long enough for a
    // client to judge a node down (150 ms of silence). Single operations take that lock for reading only.
    let mut records = 0u64;
    let mut failed = None;
    let mut pending: std::collections::HashMap<Vec<u8>, PendingKey> = Default::default();
    let (entries, tail) = read_segment(&path, &mut |e| {
        if failed.is_some() {
            return;
        }
        let result = match e.kind {
            Kind::PutMeta | Kind::RemoveMeta if !with_meta => Ok(()),
            Kind::PutMeta => sled.fold_entry(Tree::Meta, &e.key, Some(&e.value)),
            Kind::RemoveMeta => sled.fold_entry(Tree::Meta, &e.key, None),
            Kind::Put | Kind::Remove => {
                let value = (e.kind == Kind::Put).then_some(e.value);
                *pending.entry(e.key).or_default() = PendingKey {
                    reset: Some(value),
                    joined: None,
                };
                Ok(())
            }
            Kind::Merge => {
                match super::merge::decode_delta(&e.value) {
                    Ok(delta) => {
                        counters.folded_deltas.fetch_add(1, Relaxed);
                        pending
                            .entry(e.key)
                            .or_default()
                            .joined
                            .get_or_insert_default()
                            .merge(&delta);
                    }
                    Err(error) => {
                        // Only a bug writes such a delta (the CRC matched): skip it, loudly.
                        counters.bad_deltas.fetch_add(1, Relaxed);
                        tracing::error!(
                            segment = %path.display(), key = %String::from_utf8_lossy(&e.key),
                            %error, "a logged delta cannot be decoded; skipped"
                        );
                    }
                }
                Ok(())
            }
        };
        let result = result.and_then(|()| {
            if pending.len() >= FOLD_PENDING_KEYS {
                records += fold_pending(sled, counters, &mut pending)?;
            }
            Ok(())
        });
        if let Err(err) = result {
            failed = Some(err);
        }
    })?;
    if let Some(err) = failed {
        return Err(err);
    }
    records += fold_pending(sled, counters, &mut pending)?;
    if let Tail::Torn { offset, why } = &tail {
        counters.torn_entries.fetch_add(1, Relaxed);
        tracing::warn!(
            segment = %path.display(), offset, why = %why, entries,
            "write-ahead log segment ends in a torn or corrupt entry; replayed the entries before it \
             (the rest was never acknowledged)"
        );
    }
    Storage::flush(sled)?;
    sled.set_wal_folded_through(id)?;
    Storage::flush(sled)?;
    remove_segment(dir, id)?;
    counters.folds.fetch_add(1, Relaxed);
    counters.folded_records.fetch_add(records, Relaxed);
    if with_meta {
        counters.replayed_entries.fetch_add(entries, Relaxed);
    }
    tracing::debug!(
        segment = id,
        entries,
        records,
        "folded a log segment into sled"
    );
    Ok(())
}

/// Writes every pending key to sled and empties `pending`: the number of sled writes.
fn fold_pending(
    sled: &SledStorage,
    counters: &Counters,
    pending: &mut std::collections::HashMap<Vec<u8>, PendingKey>,
) -> Result<u64> {
    let mut written = 0;
    for (key, p) in pending.drain() {
        let value = match (p.reset, p.joined) {
            (reset, None) => reset.flatten(),
            (reset, Some(joined)) => {
                let base = match reset {
                    Some(base) => base,
                    None => sled.get_profile(&key)?,
                };
                let (record, corrupt) = sled.join(base.as_deref(), &joined)?;
                if corrupt {
                    counters.corrupt_bases.fetch_add(1, Relaxed);
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&key),
                        "a stored record that cannot be decoded was replaced by the deltas logged for it"
                    );
                }
                Some(record)
            }
        };
        sled.fold_entry(Tree::Profiles, &key, value.as_deref())?;
        written += 1;
    }
    Ok(written)
}

/// Creates segment `id` in `dir` with its header, durably (file and directory entry).
fn create_segment(dir: &Path, id: u64) -> Result<Segment> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err("creating a log segment", &path))?;
    file.write_all(MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(io_err("writing a log segment header", &path))?;
    sync_dir(dir)?;
    Ok(Segment {
        file,
        id,
        bytes: MAGIC.len() as u64,
        broken: false,
        spare: Vec::new(),
    })
}

impl Shared {
    fn create_segment(&self, id: u64) -> Result<Segment> {
        create_segment(&self.dir, id)
    }

    /// Appends one entry to the buffer (refused when the buffer is full).
    fn append(&self, kind: Kind, key: &[u8], value: &[u8]) -> Result<()> {
        let size = ENTRY_HEADER + 5 + key.len() + value.len();
        let buffered = {
            let mut buf = lock(&self.buffer);
            if (buf.len() + size) as u64 > self.sizes.max_buffer_bytes {
                self.counters.refused_full.fetch_add(1, Relaxed);
                return Err(Error::WalBufferFull {
                    buffered: buf.len() as u64,
                    limit: self.sizes.max_buffer_bytes,
                });
            }
            encode_entry(&mut buf, kind, key, value);
            buf.len()
        };
        self.counters.appended.fetch_add(1, Relaxed);
        self.counters.appended_bytes.fetch_add(size as u64, Relaxed);
        if buffered >= WRITE_OUT_BYTES {
            // Only if no flush is running: a flush takes the buffer anyway, and writers never wait for
            // one here.
            if let Ok(mut segment) = self.segment.try_lock() {
                if let Err(e) = self.write_out(&mut segment) {
                    tracing::warn!(error = %e, "write-ahead log write-out failed; the next flush retries");
                }
            }
        }
        Ok(())
    }

    /// Writes the buffer to the current segment (no sync). Opens a new segment first if the current one
    /// is broken.
    fn write_out(&self, segment: &mut Segment) -> Result<()> {
        if segment.broken {
            let next = self.create_segment(segment.id + 1)?;
            tracing::warn!(
                abandoned = segment.id,
                next = next.id,
                "write-ahead log segment abandoned after a failed write; continuing in a new one"
            );
            *segment = next;
        }
        let mut chunk = std::mem::take(&mut segment.spare);
        std::mem::swap(&mut chunk, &mut *lock(&self.buffer));
        if chunk.is_empty() {
            segment.spare = chunk;
            return Ok(());
        }
        let path = segment_path(&self.dir, segment.id);
        let res = segment
            .file
            .write_all(&chunk)
            .map_err(io_err("appending to the log", &path));
        match res {
            Ok(()) => segment.bytes += chunk.len() as u64,
            Err(_) => segment.broken = true,
        }
        chunk.clear();
        segment.spare = chunk;
        res
    }

    /// Writes the buffer out and `fdatasync`s the segment; closes it if it is full.
    fn flush(&self) -> Result<()> {
        let mut segment = lock(&self.segment);
        self.write_out(&mut segment)?;
        let path = segment_path(&self.dir, segment.id);
        if let Err(e) = segment.file.sync_data() {
            segment.broken = true;
            return Err(io_err("syncing the log", &path)(e));
        }
        self.counters.syncs.fetch_add(1, Relaxed);
        if segment.bytes >= self.sizes.segment_bytes {
            *segment = self.create_segment(segment.id + 1)?;
            drop(segment);
            if let Some(t) = self.checkpointer.get() {
                t.unpark();
            }
        }
        Ok(())
    }

    /// Closes the current segment if it holds any entry (so a fold takes it), after flushing.
    fn close_segment(&self) -> Result<()> {
        let mut segment = lock(&self.segment);
        self.write_out(&mut segment)?;
        if segment.bytes > MAGIC.len() as u64 || segment.broken {
            let path = segment_path(&self.dir, segment.id);
            segment
                .file
                .sync_data()
                .map_err(io_err("syncing the log", &path))?;
            *segment = self.create_segment(segment.id + 1)?;
        }
        Ok(())
    }

    /// Folds every closed segment into sled, oldest first; the number of segments folded.
    fn fold_closed(&self) -> Result<usize> {
        let _one_at_a_time = lock(&self.fold);
        let current = lock(&self.segment).id;
        let through = self.sled.wal_folded_through()?;
        let mut folded = 0;
        for id in segment_ids(&self.dir)? {
            if id >= current {
                break;
            }
            if id <= through {
                // Folded before a crash that came before its delete.
                self.remove_segment(id)?;
                continue;
            }
            fold_segment(&self.sled, &self.dir, &self.counters, id, false)?;
            folded += 1;
        }
        Ok(folded)
    }

    fn remove_segment(&self, id: u64) -> Result<()> {
        remove_segment(&self.dir, id)
    }

    /// Flushes, closes the segment and folds everything into sled.
    fn fold_all(&self) -> Result<()> {
        self.close_segment()?;
        self.fold_closed().map(drop)
    }

    /// The checkpointer thread's body.
    fn run_checkpointer(&self) {
        while !self.stop.load(SeqCst) {
            thread::park_timeout(CHECKPOINT_POLL);
            if self.stop.load(SeqCst) {
                break;
            }
            if let Err(e) = self.fold_closed() {
                self.counters.fold_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "folding the write-ahead log into sled failed; retrying later");
            }
        }
    }
}

impl WalStorage {
    /// Opens sled in `dir` (with a page cache of `cache_bytes`) and its log in `dir/wal`, replays every
    /// segment not yet folded, and starts the checkpointer.
    ///
    /// Blocks while replaying; run it at start-up or in a blocking context.
    pub fn open(dir: &Path, cache_bytes: u64, sizes: WalSizes) -> Result<WalStorage> {
        let sled = SledStorage::open_with_cache(dir, cache_bytes)?;
        let wal_dir = dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err("creating the log directory", &wal_dir))?;
        let through = sled.wal_folded_through()?;
        let ids = segment_ids(&wal_dir)?;
        let next = ids.last().copied().unwrap_or(0).max(through) + 1;
        let counters = Counters::default();
        for id in ids {
            if id <= through {
                remove_segment(&wal_dir, id)?;
            } else {
                fold_segment(&sled, &wal_dir, &counters, id, true)?;
            }
        }
        let segment = create_segment(&wal_dir, next)?;
        let shared = Shared {
            sled,
            dir: wal_dir,
            sizes,
            buffer: Mutex::new(Vec::new()),
            segment: Mutex::new(segment),
            fold: Mutex::new(()),
            meta_order: Mutex::new(()),
            stop: AtomicBool::new(false),
            #[cfg(test)]
            skip_final_fold: AtomicBool::new(false),
            counters,
            checkpointer: OnceLock::new(),
        };
        let shared = Arc::new(shared);
        let thread_shared = Arc::clone(&shared);
        let checkpointer = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || thread_shared.run_checkpointer())
            .map_err(|source| Error::Thread {
                context: format!("cannot spawn the {THREAD_NAME} thread"),
                source,
            })?;
        let _ = shared.checkpointer.set(checkpointer.thread().clone());
        Ok(WalStorage {
            shared,
            checkpointer: Some(checkpointer),
        })
    }
}

impl Drop for WalStorage {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(handle) = self.checkpointer.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
        #[cfg(test)]
        if self.shared.skip_final_fold.load(SeqCst) {
            return;
        }
        if let Err(e) = self.shared.fold_all() {
            tracing::error!(error = %e, "final fold of the write-ahead log failed; the next start replays it");
        }
    }
}

impl Storage for WalStorage {
    fn load_all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.shared.fold_all()?;
        self.shared.sled.load_all()
    }

    fn for_each_record(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        self.shared.fold_all()?;
        self.shared.sled.for_each_record(f)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.shared.append(Kind::Put, key, value)
    }

    fn merge(&self, key: &[u8], delta: &[u8]) -> Result<()> {
        self.shared.append(Kind::Merge, key, delta)
    }

    fn remove(&self, key: &[u8]) -> Result<()> {
        self.shared.append(Kind::Remove, key, &[])
    }

    fn flush(&self) -> Result<()> {
        self.shared.flush()
    }

    fn disk_bytes(&self) -> Result<u64> {
        let mut bytes = self.shared.sled.disk_bytes()?;
        for id in segment_ids(&self.shared.dir)? {
            if let Ok(m) = fs::metadata(segment_path(&self.shared.dir, id)) {
                bytes += m.len();
            }
        }
        Ok(bytes)
    }

    fn kind(&self) -> &'static str {
        "sled"
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.shared.sled.get_meta(name)
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        // Into sled first, so a read sees it at once; the log makes it durable at the next flush.
        let _order = lock(&self.shared.meta_order);
        self.shared.sled.put_meta(name, value)?;
        self.shared.append(Kind::PutMeta, name.as_bytes(), value)
    }

    fn remove_meta(&self, name: &str) -> Result<()> {
        let _order = lock(&self.shared.meta_order);
        self.shared.sled.remove_meta(name)?;
        self.shared.append(Kind::RemoveMeta, name.as_bytes(), &[])
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.shared.sled.scan_meta(prefix)
    }

    /// After folding everything, as [`Storage::for_each_record`] does first: the decoder then knows every
    /// number the records it will read use.
    fn record_decoder(&self) -> RecordDecoder {
        if let Err(error) = self.shared.fold_all() {
            // `for_each_record` folds again and reports the failure; records folded before it read.
            tracing::warn!(%error, "folding the write-ahead log before a load failed");
        }
        self.shared.sled.record_decoder()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.shared.counters;
        vec![
            ("wal_appends", c.appended.load(Relaxed)),
            ("wal_appended_bytes", c.appended_bytes.load(Relaxed)),
            ("wal_syncs", c.syncs.load(Relaxed)),
            ("wal_refused_full", c.refused_full.load(Relaxed)),
            ("wal_folds", c.folds.load(Relaxed)),
            ("wal_folded_records", c.folded_records.load(Relaxed)),
            ("wal_fold_failures", c.fold_failures.load(Relaxed)),
            ("wal_replayed_entries", c.replayed_entries.load(Relaxed)),
            ("wal_torn_segments", c.torn_entries.load(Relaxed)),
            ("wal_folded_deltas", c.folded_deltas.load(Relaxed)),
            ("wal_bad_deltas", c.bad_deltas.load(Relaxed)),
            ("wal_corrupt_bases", c.corrupt_bases.load(Relaxed)),
        ]
        .into_iter()
        .chain(self.shared.sled.counters())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn sizes(segment_bytes: u64, max_buffer_bytes: u64) -> WalSizes {
        WalSizes {
            segment_bytes,
            max_buffer_bytes,
        }
    }

    fn default_sizes() -> WalSizes {
        WalSizes::of(&featurestore::Limits::default())
    }

    /// Reopens `dir`; sled's threads may hold its lock for a moment after a drop in this process.
    fn reopen(dir: &Path, sizes: WalSizes) -> WalStorage {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match WalStorage::open(dir, 1 << 24, sizes) {
                Ok(s) => return s,
                Err(e) if format!("{e:?}").contains("WouldBlock") => {
                    assert!(std::time::Instant::now() < deadline, "sled kept its lock");
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("reopen failed: {e:?}"),
            }
        }
    }

    impl WalStorage {
        /// Folds every log entry into sled now.
        fn fold_all_for_test(&self) {
            self.shared.fold_all().unwrap();
        }
    }

    /// Drops `s` as a crash would leave it: no final fold, so the profile records exist only in the log.
    fn crash(s: WalStorage) {
        s.shared.skip_final_fold.store(true, SeqCst);
        drop(s);
    }

    fn counter(s: &WalStorage, name: &str) -> u64 {
        s.counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    fn records(s: &WalStorage) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = s.load_all().unwrap();
        v.sort();
        v
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let wal = dir.join("wal");
        let ids = segment_ids(&wal).unwrap();
        let with_entries: Vec<u64> = ids
            .into_iter()
            .filter(|id| fs::metadata(segment_path(&wal, *id)).unwrap().len() > 8)
            .collect();
        assert_eq!(with_entries.len(), 1, "{with_entries:?}");
        segment_path(&wal, with_entries[0])
    }

    #[test]
    fn a_crash_after_flush_replays_puts_removes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, default_sizes()).unwrap();
        s.put(b"a", b"1").unwrap();
        s.put(b"b", b"2").unwrap();
        s.put(b"b", b"3").unwrap();
        s.remove(b"a").unwrap();
        s.put_meta("m", b"x").unwrap();
        s.flush().unwrap();
        crash(s);

        let s = reopen(dir.path(), default_sizes());
        assert_eq!(counter(&s, "wal_replayed_entries"), 5);
        assert_eq!(records(&s), vec![(b"b".to_vec(), b"3".to_vec())]);
        assert_eq!(s.get_meta("m").unwrap(), Some(b"x".to_vec()));
    }

    /// Writes to profiles as a node does: each increment's delta ([`Profile::delta_from`] the state
    /// before it), encoded as a record.
    #[derive(Default)]
    struct Writer {
        profiles: std::collections::HashMap<Vec<u8>, featurestore::Profile>,
        at: u64,
    }

    impl Writer {
        fn incr(&mut self, key: &[u8], name: &str, by: i64) -> Vec<u8> {
            use featurestore::hlc::{Actor, Timestamp};
            let actor = Actor::legacy(featurestore::NodeId::new("n1").unwrap());
            self.at += 1;
            let old = self.profiles.entry(key.to_vec()).or_default();
            let mut new = old.clone();
            new.increment(
                &[(name, by)],
                &actor,
                Timestamp::from_millis(self.at),
                &featurestore::Limits::default(),
            )
            .unwrap();
            let delta = new.delta_from(old);
            *old = new;
            featurestore::wire::codec::encode_record(&delta).unwrap()
        }

        /// Forgets `key` (a remove).
        fn forget(&mut self, key: &[u8]) {
            self.profiles.remove(key);
        }
    }

    /// `(counter, value)` of the record under `key`.
    fn counters_of(
        s: &WalStorage,
        records: &[(Vec<u8>, Vec<u8>)],
        key: &[u8],
    ) -> Vec<(String, i64)> {
        let (_, record) = records.iter().find(|(k, _)| k == key).unwrap();
        let (profile, _hash) = s.record_decoder().decode(record).unwrap();
        profile
            .counters
            .iter()
            .map(|(name, c)| (name.as_str().to_owned(), c.value()))
            .collect()
    }

    /// Merge entries are joined into the record at replay: every delta of a key counts (a replay that
    /// kept only the last delta, as a put would, fails here), a put resets what came before it, and a
    /// remove drops it.
    #[test]
    fn a_crash_replays_merged_deltas_as_their_join() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, default_sizes()).unwrap();
        let mut w = Writer::default();
        // Already in sled before the log's entries: the base the deltas join onto.
        s.merge(b"u", &w.incr(b"u", "clicks", 1)).unwrap();
        s.fold_all_for_test();
        s.merge(b"u", &w.incr(b"u", "views", 2)).unwrap();
        s.merge(b"u", &w.incr(b"u", "clicks", 4)).unwrap();
        s.merge(b"reset", &w.incr(b"reset", "gone", 1)).unwrap();
        // A put of a record that is not a join of what came before (as the expiry sweep writes).
        w.forget(b"reset");
        s.put(b"reset", &w.incr(b"reset", "kept", 7)).unwrap();
        s.merge(b"reset", &w.incr(b"reset", "after", 1)).unwrap();
        s.merge(b"removed", &w.incr(b"removed", "x", 1)).unwrap();
        s.remove(b"removed").unwrap();
        s.flush().unwrap();
        crash(s);

        let s = reopen(dir.path(), default_sizes());
        assert_eq!(counter(&s, "wal_folded_deltas"), 5);
        let records = records(&s);
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(
            counters_of(&s, &records, b"u"),
            [("clicks".to_owned(), 5), ("views".to_owned(), 2)]
        );
        assert_eq!(
            counters_of(&s, &records, b"reset"),
            [("after".to_owned(), 1), ("kept".to_owned(), 7)]
        );
    }

    /// A segment folded twice (a crash after sled took part of a fold, before the fold mark) gives the
    /// same records as once, also across the fold's per-chunk writes; a stored record that cannot be
    /// decoded is replaced by the deltas logged for it, and counted.
    #[test]
    fn folding_a_segment_twice_gives_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, default_sizes()).unwrap();
        s.shared.sled.put(b"bad", b"\x00not a record").unwrap();
        let mut w = Writer::default();
        let keys = FOLD_PENDING_KEYS + 100;
        for by in 1..=2 {
            for i in 0..keys {
                let key = format!("k{i}");
                s.merge(key.as_bytes(), &w.incr(key.as_bytes(), "n", by))
                    .unwrap();
            }
        }
        s.merge(b"bad", &w.incr(b"bad", "fresh", 1)).unwrap();
        s.flush().unwrap();
        let seg = only_segment(dir.path());
        let copy = dir.path().join("copy.wal");
        fs::copy(&seg, &copy).unwrap();
        let once = records(&s);
        assert_eq!(counter(&s, "wal_corrupt_bases"), 1);
        assert_eq!(once.len(), keys + 1);
        assert_eq!(counters_of(&s, &once, b"k0"), [("n".to_owned(), 3)]);
        assert_eq!(counters_of(&s, &once, b"bad"), [("fresh".to_owned(), 1)]);
        // The same segment again, as a replay after a crash before its fold mark would.
        fs::rename(&copy, segment_path(&s.shared.dir, 1 << 40)).unwrap();
        fold_segment(
            &s.shared.sled,
            &s.shared.dir,
            &s.shared.counters,
            1 << 40,
            true,
        )
        .unwrap();
        assert_eq!(records(&s), once);
    }

    #[test]
    fn writes_not_covered_by_a_flush_are_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, default_sizes()).unwrap();
        s.put(b"flushed", b"1").unwrap();
        s.flush().unwrap();
        s.put(b"buffered", b"2").unwrap();
        crash(s);

        let s = reopen(dir.path(), default_sizes());
        assert_eq!(records(&s), vec![(b"flushed".to_vec(), b"1".to_vec())]);
    }

    /// A log holding three flushed puts (`k1`..`k3`, value `"value"`) and nothing folded.
    fn three_entries_then_crash() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, default_sizes()).unwrap();
        for k in [b"k1", b"k2", b"k3"] {
            s.put(k, b"value").unwrap();
        }
        s.flush().unwrap();
        crash(s);
        dir
    }

    #[test]
    fn a_torn_tail_is_dropped_and_everything_before_it_replayed() {
        let dir = three_entries_then_crash();
        // Cut the last entry short, as a crash during its write would.
        let path = only_segment(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let s = reopen(dir.path(), default_sizes());
        assert_eq!(counter(&s, "wal_torn_segments"), 1);
        let keys: Vec<Vec<u8>> = records(&s).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
        // The replayed log is gone: a second restart sees the same data and no torn entry.
        drop(s);
        let s = reopen(dir.path(), default_sizes());
        assert_eq!(counter(&s, "wal_torn_segments"), 0);
        assert_eq!(records(&s).len(), 2);
    }

    #[test]
    fn a_corrupt_entry_stops_the_replay_of_its_segment() {
        let dir = three_entries_then_crash();
        // Flip one byte of the second entry's value.
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let entry = ENTRY_HEADER + 5 + 2 + 5;
        let second_value = 8 + entry + ENTRY_HEADER + 5 + 2;
        bytes[second_value] ^= 0xff;
        fs::write(&path, &bytes).unwrap();

        let s = reopen(dir.path(), default_sizes());
        assert_eq!(counter(&s, "wal_torn_segments"), 1);
        let keys: Vec<Vec<u8>> = records(&s).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"k1".to_vec()]);
    }

    #[test]
    fn a_segment_at_or_below_the_fold_mark_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, default_sizes()).unwrap();
        s.put(b"a", b"new").unwrap();
        s.flush().unwrap();
        let folded = lock(&s.shared.segment).id;
        s.shared.fold_all().unwrap();
        assert_eq!(s.shared.sled.wal_folded_through().unwrap(), folded);
        crash(s);
        // A crash between the fold mark and the delete leaves the folded segment behind; here it even
        // holds an older value, which must not win.
        let wal = dir.path().join("wal");
        let mut stale = MAGIC.to_vec();
        encode_entry(&mut stale, Kind::Put, b"a", b"old");
        fs::write(segment_path(&wal, folded), stale).unwrap();

        let s = reopen(dir.path(), default_sizes());
        assert_eq!(counter(&s, "wal_replayed_entries"), 0);
        assert_eq!(records(&s), vec![(b"a".to_vec(), b"new".to_vec())]);
        assert!(!segment_path(&wal, folded).exists());
    }

    #[test]
    fn full_segments_are_folded_in_the_background_and_a_clean_stop_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let small = sizes(4096, 1 << 20);
        let s = WalStorage::open(dir.path(), 1 << 24, small).unwrap();
        for i in 0..200u32 {
            s.put(format!("user:{i:03}").as_bytes(), &[7u8; 200])
                .unwrap();
            s.flush().unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while counter(&s, "wal_folds") == 0 {
            assert!(std::time::Instant::now() < deadline, "no background fold");
            thread::sleep(Duration::from_millis(10));
        }
        // Closed segments do not pile up: at most the ones not yet folded plus the current one.
        assert!(segment_ids(&dir.path().join("wal")).unwrap().len() < 20);
        assert_eq!(records(&s).len(), 200);
        drop(s);

        let s = reopen(dir.path(), small);
        assert_eq!(counter(&s, "wal_replayed_entries"), 0);
        assert_eq!(records(&s).len(), 200);
    }

    #[test]
    fn a_full_buffer_refuses_writes_until_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalStorage::open(dir.path(), 1 << 24, sizes(1 << 20, 2048)).unwrap();
        let mut accepted = 0;
        let err = loop {
            match s.put(format!("k{accepted}").as_bytes(), &[1u8; 100]) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 100, "the buffer never filled");
        };
        assert!(
            matches!(err, Error::WalBufferFull { limit: 2048, .. }),
            "{err:?}"
        );
        assert_eq!(counter(&s, "wal_refused_full"), 1);
        s.flush().unwrap();
        s.put(b"after", b"flush").unwrap();
        assert_eq!(records(&s).len(), accepted + 1);
    }

    proptest! {
        /// Whatever prefix of a segment survives a crash, the reader returns exactly the whole entries
        /// in it, in order.
        #[test]
        fn a_cut_segment_reads_back_as_the_whole_entries_before_the_cut(
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..60)),
                0..12,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = MAGIC.to_vec();
            let mut ends = vec![bytes.len()];
            for (k, v) in &entries {
                encode_entry(&mut bytes, Kind::Put, k, v);
                ends.push(bytes.len());
            }
            let cut = cut.index(bytes.len() + 1);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("0000000000000001.wal");
            fs::write(&path, &bytes[..cut]).unwrap();
            let mut read = Vec::new();
            let (n, tail) = read_segment(&path, &mut |e| read.push((e.key, e.value))).unwrap();
            let whole = ends.iter().filter(|&&end| end <= cut).count().saturating_sub(1);
            prop_assert_eq!(n as usize, whole);
            prop_assert_eq!(&read[..], &entries[..whole]);
            prop_assert_eq!(tail == Tail::Clean, ends.contains(&cut) && cut >= MAGIC.len());
        }
    }
}
