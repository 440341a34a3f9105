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
//! shared) and the table never shrinks: names are few in practice (a catalog's features, a cluster's
//! nodes), and freeing them would need a sweep the hot path should not pay for.
//!
//! The table is process state but not I/O: it reads no clock, draws nothing random and its contents
//! never change a result, so the core stays deterministic under the simulation.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// The most names the process-wide table holds (feature names and node ids together). At the limit's
/// length of a name that is a few tens of megabytes at most; a name beyond it is not shared.
pub const MAX_INTERNED: usize = 1 << 18;

/// Names longer than this are never interned (feature names and node ids are far shorter; a longer text
/// is most likely not a name at all).
const MAX_INTERNED_LEN: usize = 256;

const SHARDS: usize = 16;

struct Table {
    shards: [RwLock<HashSet<Arc<str>>>; SHARDS],
    len: AtomicUsize,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| Table {
    shards: std::array::from_fn(|_| RwLock::new(HashSet::new())),
    len: AtomicUsize::new(0),
});

fn shard_of(text: &str) -> usize {
    // The low bits of a fast hash of the text; the sets hash again with their own keys.
    (xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as usize) % SHARDS
}

/// An interned, immutable string: a feature name or a node id.
#[derive(Clone)]
pub struct Symbol(Arc<str>);

impl Symbol {
    /// The shared copy of `text` (interned if there is room, else a fresh one).
    pub fn new(text: &str) -> Symbol {
        if text.len() > MAX_INTERNED_LEN {
            return Symbol(Arc::from(text));
        }
        let table = &*TABLE;
        let shard = &table.shards[shard_of(text)];
        // A poisoned lock only means another thread panicked while holding it; the set is still valid.
        if let Some(found) = shard.read().unwrap_or_else(|e| e.into_inner()).get(text) {
            return Symbol(found.clone());
        }
        let mut set = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = set.get(text) {
            return Symbol(found.clone());
        }
        let fresh: Arc<str> = Arc::from(text);
        if table.len.load(Ordering::Relaxed) < MAX_INTERNED {
            table.len.fetch_add(1, Ordering::Relaxed);
            set.insert(fresh.clone());
        }
        Symbol(fresh)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
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
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Symbol {}

impl PartialEq<str> for Symbol {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Symbol {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialOrd for Symbol {
    fn partial_cmp(&self, other: &Symbol) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Symbol {
    fn cmp(&self, other: &Symbol) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(&other.0)
    }
}

impl Hash for Symbol {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so `Borrow<str>` lookups in hash maps agree.
        (*self.0).hash(state)
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
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

impl Encode for Symbol {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // Exactly as a `String` encodes: length, then the bytes.
        (*self.0).encode(encoder)
    }
}

impl<C> Decode<C> for Symbol {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let text = String::decode(decoder)?;
        Ok(Symbol::new(&text))
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for Symbol {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let text = <&str as bincode::BorrowDecode<'de, C>>::borrow_decode(decoder)?;
        Ok(Symbol::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_one_name_share_one_allocation_and_compare_as_text() {
        let a = Symbol::new("cart_value_symbol_test");
        let b = Symbol::new(&String::from("cart_value_symbol_test"));
        assert!(Arc::ptr_eq(&a.0, &b.0), "interned: one allocation");
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
    fn a_name_that_is_not_interned_still_equals_orders_and_hashes_as_its_text() {
        use std::collections::hash_map::DefaultHasher;
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        let a = Symbol::new(&long);
        let b = Symbol::new(&long);
        assert!(!Arc::ptr_eq(&a.0, &b.0), "too long to intern");
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
