//! `ShardMap`: one shard of the engine's in-memory profiles, a hash table whose slots are one pointer.
//!
//! Each profile lives in one allocation with its key and its record hash ([`Stored`]), and the table
//! holds a pointer to it. A hash table is between 44 % and 88 % full (it doubles when it reaches 7/8),
//! so its empty slots cost as much as its full ones: with the key, the hash and the profile's pointer in
//! the slot (40 bytes), a shard of a million-profile node spent ≈ 86 bytes of table per profile; with one
//! pointer, ≈ 19, and the profile's allocation is 32 bytes larger.
//!
//! Guarantees: a key is held at most once; lookups hash the key with a keyed hasher (`RandomState`), so
//! no choice of keys can make them slow. Caveat: a lookup follows the slot's pointer to compare the key
//! (the slot's control byte filters all but one candidate first); the read that follows needs the
//! profile from that allocation anyway.

use std::hash::BuildHasher;

use featurestore::Profile;
use hashbrown::HashTable;

/// A key as a shard holds it: inline up to 24 bytes (`user-0001234`, a UUID's 36 bytes are not), so a
/// profile costs no allocation for its key.
pub type Key = compact_str::CompactString;

/// A profile with its key and the hash of its stored record (kept up to date on every write, so
/// anti-entropy and orphan scans never encode profiles, and never hold a lock while doing so).
#[derive(Debug)]
pub struct Stored {
    /// The profile's key.
    pub key: Key,
    /// [`record_hash`](featurestore::wire::codec::record_hash) of the profile's record.
    pub hash: u64,
    /// The profile.
    pub profile: Profile,
}

/// One shard's profiles by key.
#[derive(Default)]
pub struct ShardMap {
    table: HashTable<Box<Stored>>,
    hasher: std::hash::RandomState,
}

impl ShardMap {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Number of profiles.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the shard holds no profile.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The profile of `key`.
    pub fn get(&self, key: &str) -> Option<&Stored> {
        self.table
            .find(self.hash(key), |s| s.key == key)
            .map(|s| &**s)
    }

    /// The profile of `key`, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Stored> {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |s| s.key == key)
            .map(|s| &mut **s)
    }

    /// Sets `key`'s profile and record hash, replacing what it had (its key is not allocated again).
    pub fn insert(&mut self, key: &str, profile: Profile, hash: u64) {
        let h = self.hash(key);
        if let Some(stored) = self.table.find_mut(h, |s| s.key == key) {
            stored.profile = profile;
            stored.hash = hash;
            return;
        }
        let stored = Box::new(Stored {
            key: Key::new(key),
            hash,
            profile,
        });
        let hasher = &self.hasher;
        self.table
            .insert_unique(h, stored, |s| hasher.hash_one(s.key.as_str()));
    }

    /// Adds the profiles a start-up load decoded for this shard, the table grown once to hold them all
    /// (growing it step by step would rehash every slot at each doubling, each through its pointer). A
    /// key already held is replaced.
    pub fn extend(&mut self, loaded: Vec<Box<Stored>>) {
        let hasher = &self.hasher;
        self.table
            .reserve(loaded.len(), |s| hasher.hash_one(s.key.as_str()));
        for stored in loaded {
            let h = self.hash(&stored.key);
            match self.table.find_mut(h, |s| s.key == stored.key) {
                Some(held) => *held = stored,
                None => {
                    let hasher = &self.hasher;
                    self.table
                        .insert_unique(h, stored, |s| hasher.hash_one(s.key.as_str()));
                }
            }
        }
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let hash = self.hash(key);
        match self.table.find_entry(hash, |s| s.key == key) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Every profile with its key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Stored)> {
        self.table.iter().map(|s| (&s.key, &**s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_one_pointer_and_the_map_keeps_one_profile_per_key() {
        assert_eq!(std::mem::size_of::<Box<Stored>>(), 8);
        let mut map = ShardMap::default();
        assert!(map.is_empty() && map.get("a").is_none());
        map.insert("a", Profile::default(), 1);
        map.insert("b", Profile::default(), 2);
        map.insert("a", Profile::default(), 3);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a").map(|s| s.hash), Some(3));
        if let Some(s) = map.get_mut("b") {
            s.hash = 4;
        }
        let mut seen: Vec<(String, u64)> =
            map.iter().map(|(k, s)| (k.to_string(), s.hash)).collect();
        seen.sort();
        assert_eq!(seen, [("a".to_owned(), 3), ("b".to_owned(), 4)]);
        assert!(map.remove("a") && !map.remove("a"));
        assert_eq!(map.len(), 1);
        // Many keys: growth rehashes every slot from the key behind its pointer.
        for i in 0..10_000 {
            map.insert(&format!("user-{i}"), Profile::default(), i);
        }
        assert!((0..10_000).all(|i| map.get(&format!("user-{i}")).map(|s| s.hash) == Some(i)));
        // A load's batch: new keys added, a held key replaced.
        let stored = |key: &str, hash| {
            Box::new(Stored {
                key: Key::new(key),
                hash,
                profile: Profile::default(),
            })
        };
        map.extend(vec![stored("user-1", 99), stored("loaded", 7)]);
        assert_eq!(map.len(), 10_002);
        assert_eq!(map.get("user-1").map(|s| s.hash), Some(99));
        assert_eq!(map.get("loaded").map(|s| s.hash), Some(7));
    }
}
