//! Node ids as small indices: a process-wide, append-only table of node names.
//!
//! A [`NodeName`] is a `u32` index into the table. Markers, dots and slots hold a node id each, so a
//! million profiles hold tens of millions of them: four bytes instead of an eight-byte pointer, and,
//! with the packed [`Timestamp`](crate::hlc::Timestamp), a [`Marker`](crate::hlc::Marker) of 16 bytes
//! instead of 24 (every gauge carries one).
//!
//! Guarantees:
//! - One name, one index, for the life of the process: [`NodeName::intern`] of equal texts returns equal
//!   indices, so equality is the index's. The index is *process-local*: it is never encoded, hashed
//!   into anything shared or compared for order (callers order and hash by [`NodeName::as_str`]), so
//!   two processes that interned names in different orders still agree on every merge and encoding.
//! - [`NodeName::as_str`] takes no lock and writes nothing shared: the table is fixed-size chunks of
//!   write-once slots, read with two acquire loads. So the encoders of many threads (a record per write,
//!   a view per read) never contend on it.
//! - Bounded: at most [`MAX_NODE_NAMES`] names. Node names come from peers and from stored records, so an
//!   unbounded table would be a leak a peer could drive. Past the bound `intern` returns `None` and the
//!   caller refuses the id with a typed error ([`Error::TooManyNodeIds`](crate::Error::TooManyNodeIds)):
//!   an index cannot fall back to a private copy the way a [`Symbol`](super::Symbol) does.
//!
//! Caveat: the table never shrinks. A cluster's node names are few (its members, past and present), and
//! each costs its text once.
//!
//! In front of the table each thread keeps a direct-mapped cache of the names it interned last, so a
//! start-up load that decodes forty markers per record takes no lock per marker (the lesson of the
//! symbol table, see [`super::symbol`]). The table is process state but not I/O: it reads no clock and
//! draws nothing random, so the core stays deterministic under the simulation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};

/// The most node names one process holds. Names are at most 63 bytes, so a full table is a few tens of
/// megabytes; no real cluster comes near it (it counts every name the process has ever seen).
pub const MAX_NODE_NAMES: usize = 1 << 20;

/// Slots per chunk: chunks are allocated as the table fills.
const CHUNK: usize = 1 << 12;

/// Slots of the per-thread cache (direct-mapped by the name's hash).
const RECENT_SLOTS: usize = 64;

/// A node name, as its index in the process-wide table. Equal names have equal indices.
///
/// Not `Ord` or `Hash` on purpose: the index depends on the order this process met the names, so
/// ordering or hashing by it would differ between processes. Order and hash [`NodeName::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeName(u32);

/// `CHUNK` write-once slots, allocated when the table reaches them.
type Chunk = Box<[OnceLock<&'static str>]>;

/// An append-only table of names: `capacity` write-once slots in chunks, and a map from name to index.
struct Names {
    capacity: usize,
    by_name: RwLock<HashMap<&'static str, u32>>,
    chunks: Box<[OnceLock<Chunk>]>,
}

impl Names {
    fn with_capacity(capacity: usize) -> Names {
        Names {
            capacity,
            by_name: RwLock::new(HashMap::new()),
            chunks: (0..capacity.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The table's copy of `text` and its index, adding it if there is room.
    fn intern(&self, text: &str) -> Option<(&'static str, u32)> {
        // A poisoned lock only means another thread panicked while holding it; the map is still valid.
        if let Some((&name, &index)) = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get_key_value(text)
        {
            return Some((name, index));
        }
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&name, &index)) = by_name.get_key_value(text) {
            return Some((name, index));
        }
        let index = by_name.len();
        if index >= self.capacity {
            return None;
        }
        let name: &'static str = Box::leak(text.to_owned().into_boxed_str());
        let chunk = self.chunks[index / CHUNK]
            .get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        // The slot is new: only this writer (holding the write lock) sets it, and only once.
        let _ = chunk[index % CHUNK].set(name);
        let index = u32::try_from(index).ok()?;
        by_name.insert(name, index);
        Some((name, index))
    }

    /// The name at `index` (`None` only for an index this table never handed out).
    fn get(&self, index: u32) -> Option<&'static str> {
        let index = usize::try_from(index).ok()?;
        self.chunks
            .get(index / CHUNK)?
            .get()?
            .get(index % CHUNK)?
            .get()
            .copied()
    }

    fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

static TABLE: LazyLock<Names> = LazyLock::new(|| Names::with_capacity(MAX_NODE_NAMES));

thread_local! {
    /// This thread's recently interned names, by hash: the name (the table's copy) and its index.
    static RECENT: RefCell<[Option<(&'static str, u32)>; RECENT_SLOTS]> =
        const { RefCell::new([None; RECENT_SLOTS]) };
}

impl NodeName {
    /// The index of `text` in the process-wide table, adding it if there is room; `None` once the table
    /// holds [`MAX_NODE_NAMES`] other names. The caller validates the text first.
    pub fn intern(text: &str) -> Option<NodeName> {
        let slot = (xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as usize) % RECENT_SLOTS;
        // `try_with`: during thread teardown the cache may be gone; the table still answers.
        let cached = RECENT.try_with(|recent| {
            let recent = recent.try_borrow().ok()?;
            recent[slot]
                .filter(|(name, _)| name.as_bytes() == text.as_bytes())
                .map(|(_, index)| index)
        });
        if let Ok(Some(index)) = cached {
            return Some(NodeName(index));
        }
        let (name, index) = TABLE.intern(text)?;
        let _ = RECENT.try_with(|recent| {
            if let Ok(mut recent) = recent.try_borrow_mut() {
                recent[slot] = Some((name, index));
            }
        });
        Some(NodeName(index))
    }

    /// The name's text: the table's one copy, which lives as long as the process.
    pub fn as_str(self) -> &'static str {
        // Every `NodeName` was handed out by `intern`, which filled its slot before returning it, and
        // the value reached this thread through whatever synchronised its hand-over; the slot is
        // write-once. So the slot is set: the empty text is unreachable, not a fallback.
        TABLE.get(self.0).unwrap_or("")
    }

    /// The name's index in this process's table: equal names have equal indices, so a process-local
    /// map may key on it. Never encode, order or hash anything shared by it.
    pub fn process_index(self) -> u32 {
        self.0
    }

    /// How many names the process-wide table holds (for telemetry and tests).
    pub fn interned() -> usize {
        TABLE.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_one_index_and_its_text_back() {
        let a = NodeName::intern("node-name-test-a").expect("room");
        let b = NodeName::intern("node-name-test-b").expect("room");
        assert_ne!(a, b);
        assert_eq!(NodeName::intern("node-name-test-a"), Some(a));
        assert_eq!(a.as_str(), "node-name-test-a");
        assert_eq!(b.as_str(), "node-name-test-b");
    }

    #[test]
    fn names_interned_on_other_threads_are_shared() {
        let here = NodeName::intern("node-name-test-threads").expect("room");
        let there =
            std::thread::spawn(|| NodeName::intern("node-name-test-threads").expect("room"))
                .join()
                .expect("thread");
        assert_eq!(here, there);
        let made_there =
            std::thread::spawn(|| NodeName::intern("node-name-test-other").expect("room"))
                .join()
                .expect("thread");
        assert_eq!(made_there.as_str(), "node-name-test-other");
    }

    #[test]
    fn a_full_table_refuses_new_names_and_keeps_the_old() {
        // A small table of its own (the process-wide one is shared by every test of this binary), with
        // more than one chunk.
        let names = Names::with_capacity(CHUNK + 3);
        let indices: Vec<u32> = (0..CHUNK + 3)
            .map(|i| names.intern(&format!("full-{i}")).expect("room").1)
            .collect();
        assert_eq!(names.intern("one-too-many"), None);
        assert_eq!(names.len(), CHUNK + 3);
        // Known names still answer, across the chunk boundary.
        assert_eq!(names.intern("full-0"), Some(("full-0", indices[0])));
        assert_eq!(
            names.get(indices[CHUNK + 2]),
            Some(&*format!("full-{}", CHUNK + 2))
        );
        assert_eq!(names.get(u32::MAX), None);
    }

    #[test]
    fn a_cache_slot_shared_by_two_names_answers_each_right() {
        // Far more names than cache slots: every slot is contended, and each answer must still be the
        // table's, not the cached neighbour's.
        let names: Vec<String> = (0..4 * RECENT_SLOTS)
            .map(|i| format!("cache-{i}"))
            .collect();
        let first: Vec<NodeName> = names
            .iter()
            .map(|n| NodeName::intern(n).expect("room"))
            .collect();
        for (name, index) in names.iter().zip(&first).rev() {
            assert_eq!(NodeName::intern(name), Some(*index));
            assert_eq!(index.as_str(), name);
        }
    }
}
