//! Interned names.
//!
//! [`Symbol::new`] looks the text up in a process-wide table and returns the one shared copy, adding it
//! if it is new. The table is sharded (16 read-write locks chosen by a hash of the text) so decoder
//! threads rarely wait for each other, and lookups of a known name take only a read lock.
//!
//! Guarantees: a `Symbol` compares, orders and hashes as its text, whether or not it is interned, so the
//! table is an optimisation that cannot change a merge or an encoding. The table holds at most
//! [`MAX_INTERNED`] names: names come from clients and peers, so an unbounded table would be a memory
//! leak an attacker could drive. Past the bound a new name gets its own allocation (correct, just not
//! shared) and the table never shrinks: names are few in practice (a catalog's features), and freeing
//! them would need a sweep the hot path should not pay for.
//!
//! In front of the table each thread keeps a small two-way cache of the names it interned last
//! ([`RECENT_SLOTS`] entries, chosen by the same hash). A hit costs the hash and one comparison (the
//! copy of a static name counts nothing, see below); it takes no lock, so decoder threads loading a
//! million records at start-up do not contend on the table's locks for every name (they did: the read
//! lock's shared counter was most of `Symbol::new`'s time in a restart profile). The cache only holds
//! names the table already holds, so it keeps nothing alive that would otherwise be freed.
//!
//! A `Symbol` is one thin pointer (8 bytes: an [`ArcStr`], whose length lives behind the pointer): every
//! feature name in a profile is one word (node ids are smaller still: [`super::NodeName`]). The text is one
//! more indirection away, in a table entry that every profile shares, so it is hot in the cache.
//!
//! An interned name is made *static* when the table takes it ([`ArcStr::leak`]): the table never lets
//! go of a name anyway, and a static `ArcStr` is copied and dropped without touching its reference
//! count. So copies of one name made on many threads at once (the decoder threads of a start-up load,
//! forty names per record) write nothing shared: with a counted `Arc` each copy was an atomic increment
//! on a cache line the other core had just written, a quarter of a restart's CPU. A name the table does
//! not take (too long, or the table is full) stays an ordinary counted string and is freed with its
//! last copy.
//!
//! The table is process state but not I/O: it reads no clock, draws nothing random and its contents
//! never change a result, so the core stays deterministic under the simulation.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, RwLock};

use arcstr::ArcStr;
use serde::{Deserialize, Serialize};

/// The most names the process-wide table holds (feature names; node ids have their own table). At the limit's
/// length of a name that is a few tens of megabytes at most; a name beyond it is not shared.
pub const MAX_INTERNED: usize = 1 << 18;

/// Names longer than this are never interned (feature names are far shorter; a longer text
/// is most likely not a name at all).
const MAX_INTERNED_LEN: usize = 256;

const SHARDS: usize = 16;

/// The shared text of a name: a thin pointer (the `str`'s length is inside the allocation), static once
/// the table holds it.
type Text = ArcStr;

/// A table entry: looked up by its text.
#[derive(PartialEq, Eq, Hash)]
struct Entry(Text);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0
    }
}

struct Table {
    shards: [RwLock<HashSet<Entry>>; SHARDS],
    len: AtomicUsize,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| Table {
    shards: std::array::from_fn(|_| RwLock::new(HashSet::new())),
    len: AtomicUsize::new(0),
});

/// Entries of each thread's cache of recently interned names (a power of two).
const RECENT_SLOTS: usize = 256;

thread_local! {
    /// This thread's recently interned names, indexed by the text's hash.
    static RECENT: std::cell::RefCell<[Option<Text>; RECENT_SLOTS]> =
        const { std::cell::RefCell::new([const { None }; RECENT_SLOTS]) };
}

/// A fast hash of the text: its low bits pick the table shard, the next ones the thread's cache slot
/// (the sets hash again with their own keys).
fn hash_of(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// An interned, immutable string: a feature name.
#[derive(Clone)]
pub struct Symbol(Text);

impl Symbol {
    /// The shared copy of `text` (interned if there is room, else a fresh one).
    pub fn new(text: &str) -> Symbol {
        if text.len() > MAX_INTERNED_LEN {
            return Symbol(ArcStr::from(text));
        }
        let hash = hash_of(text);
        // Two ways: the slot the hash picks and its neighbour.
        let slot = (hash as usize / SHARDS) % RECENT_SLOTS;
        let ways = [slot, slot ^ 1];
        // `try_with`: during thread teardown the cache may be gone; the table still answers.
        let recent = RECENT.try_with(|recent| {
            let recent = recent.try_borrow().ok()?;
            ways.iter().find_map(|&way| {
                recent[way]
                    .as_ref()
                    .filter(|cached| cached.as_bytes() == text.as_bytes())
                    .cloned()
            })
        });
        if let Ok(Some(found)) = recent {
            return Symbol(found);
        }
        let (symbol, interned) = Symbol::from_table(text, hash);
        if interned {
            let _ = RECENT.try_with(|recent| {
                if let Ok(mut recent) = recent.try_borrow_mut() {
                    let way = if recent[slot].is_none() || recent[slot ^ 1].is_some() {
                        slot
                    } else {
                        slot ^ 1
                    };
                    recent[way] = Some(symbol.0.clone());
                }
            });
        }
        symbol
    }

    /// The table's copy of `text` (adding it if there is room), and whether the table holds it.
    fn from_table(text: &str, hash: u64) -> (Symbol, bool) {
        let table = &*TABLE;
        let shard = &table.shards[hash as usize % SHARDS];
        // A poisoned lock only means another thread panicked while holding it; the set is still valid.
        if let Some(found) = shard.read().unwrap_or_else(|e| e.into_inner()).get(text) {
            return (Symbol(found.0.clone()), true);
        }
        let mut set = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = set.get(text) {
            return (Symbol(found.0.clone()), true);
        }
        let fresh = ArcStr::from(text);
        if table.len.load(Ordering::Relaxed) < MAX_INTERNED {
            table.len.fetch_add(1, Ordering::Relaxed);
            // The table keeps it for the life of the process: static from now on, so its copies count
            // nothing (see the module's doc).
            let _: &'static str = fresh.leak();
            set.insert(Entry(fresh.clone()));
            return (Symbol(fresh), true);
        }
        (Symbol(fresh), false)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address of the table's one copy of this name, if it is interned: equal interned names
    /// have equal addresses, so a process-local cache may key on it. Never encode or order by it.
    pub fn interned_address(&self) -> Option<usize> {
        ArcStr::is_static(&self.0).then(|| self.0.as_ptr() as usize)
    }

    /// How many names the process-wide table holds (for telemetry and tests).
    pub fn interned() -> usize {
        TABLE.len.load(Ordering::Relaxed)
    }
}

impl Deref for Symbol {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Symbol {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Symbol {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Symbol {
    fn eq(&self, other: &Symbol) -> bool {
        ArcStr::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Symbol {}

impl PartialEq<str> for Symbol {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Symbol {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Symbol {
    fn partial_cmp(&self, other: &Symbol) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Symbol {
    fn cmp(&self, other: &Symbol) -> std::cmp::Ordering {
        if ArcStr::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(&other.0)
    }
}

impl Hash for Symbol {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so `Borrow<str>` lookups in hash maps agree.
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Symbol {
    fn from(text: &str) -> Symbol {
        Symbol::new(text)
    }
}

impl From<&String> for Symbol {
    fn from(text: &String) -> Symbol {
        Symbol::new(text)
    }
}

impl From<String> for Symbol {
    fn from(text: String) -> Symbol {
        Symbol::new(&text)
    }
}

impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Symbol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Symbol, E> {
                Ok(Symbol::new(text))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

// Its bincode impls are in `super::stored_names`: inside a stored record a name is a number.

#[cfg(test)]
mod tests {
    use super::*;

    /// One word per name: what every feature of every profile, and every marker's node, costs.
    #[test]
    fn a_symbol_is_one_thin_pointer() {
        assert_eq!(std::mem::size_of::<Symbol>(), 8);
        assert_eq!(std::mem::size_of::<Option<Symbol>>(), 8);
    }

    #[test]
    fn copies_of_one_name_share_one_allocation_and_compare_as_text() {
        let a = Symbol::new("cart_value_symbol_test");
        let b = Symbol::new(&String::from("cart_value_symbol_test"));
        assert!(ArcStr::ptr_eq(&a.0, &b.0), "interned: one allocation");
        // Interned names are static: copying one counts nothing.
        assert!(ArcStr::is_static(&a.0));
        assert_eq!(ArcStr::strong_count(&a.clone().0), None);
        assert_eq!(a, b);
        assert_eq!(a, "cart_value_symbol_test");
        let c = Symbol::new("cart_value_symbol_tesu");
        assert!(a < c && c > b);
        assert_eq!(
            a.cmp(&c),
            "cart_value_symbol_test".cmp("cart_value_symbol_tesu")
        );
    }

    #[test]
    fn the_thread_cache_answers_every_name_with_the_tables_copy() {
        // More names than cache slots, so slots are shared and overwritten; each answer must still be
        // the name asked for, and the very allocation another thread gets from the table.
        let names: Vec<String> = (0..RECENT_SLOTS * 4)
            .map(|i| format!("recent_cache_test_{i}"))
            .collect();
        for round in 0..3 {
            for name in &names {
                let here = Symbol::new(name);
                assert_eq!(here.as_str(), name, "round {round}");
                let there =
                    std::thread::scope(|s| s.spawn(|| Symbol::new(name)).join()).expect("thread");
                assert!(ArcStr::ptr_eq(&here.0, &there.0), "{name}: one shared copy");
            }
        }
    }

    #[test]
    fn a_name_that_is_not_interned_still_equals_orders_and_hashes_as_its_text() {
        use std::collections::hash_map::DefaultHasher;
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        let a = Symbol::new(&long);
        let b = Symbol::new(&long);
        assert!(!ArcStr::ptr_eq(&a.0, &b.0), "too long to intern");
        // Counted, so freed with its last copy (an interned name is static instead).
        assert_eq!(ArcStr::strong_count(&a.0), Some(1));
        let copy = a.clone();
        assert_eq!(ArcStr::strong_count(&a.0), Some(2));
        drop(copy);
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        let hash = |h: &dyn Fn(&mut DefaultHasher)| {
            let mut s = DefaultHasher::new();
            h(&mut s);
            s.finish()
        };
        assert_eq!(hash(&|s| a.hash(s)), hash(&|s| long.as_str().hash(s)));
    }

    #[test]
    fn it_encodes_as_a_string_does() {
        let cfg = bincode::config::standard();
        let s = Symbol::new("page_views");
        let bytes = bincode::encode_to_vec(&s, cfg).expect("encodes");
        assert_eq!(
            bytes,
            bincode::encode_to_vec("page_views", cfg).expect("encodes")
        );
        let (back, _): (Symbol, usize) = bincode::decode_from_slice(&bytes, cfg).expect("decodes");
        assert_eq!(back, s);
        let (borrowed, _): (Symbol, usize) =
            bincode::borrow_decode_from_slice(&bytes, cfg).expect("decodes");
        assert_eq!(borrowed, s);
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(json, "\"page_views\"");
        let from_json: Symbol = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(from_json, s);
    }
}
