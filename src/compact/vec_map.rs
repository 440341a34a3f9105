//! A small ordered map kept as one sorted vector.
//!
//! Lookups are binary searches, an insert of a new key shifts the entries after it: that is cheaper than a
//! B-tree for the tens of entries a profile's maps hold, and it holds nothing but the entries (a
//! `BTreeMap` allocates nodes of eleven). Iteration is in key order, as a `BTreeMap`'s, so code that
//! walked the old maps sees the same sequence.
//!
//! Guarantees: keys are unique and sorted at all times (every way in, including decoding, keeps it so);
//! encoding with bincode and serde is the `BTreeMap` encoding (length, then the pairs in key order), and
//! decoding a repeated key keeps the last value, as a `BTreeMap` does. Caveat: an insert is O(n), so this
//! is for small maps only; the limits bound every map it backs (features per profile, slots per counter).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

/// A map from `K` to `V` in one vector sorted by key.
///
/// The vector is a [`ThinVec`]: one pointer (8 bytes, where a `Vec` takes 24), with the length and
/// capacity in front of the entries, and a shared static header while empty. A profile holds four of
/// these maps and most profiles leave three of them empty, so that is 64 bytes per profile; a non-empty
/// map's allocation is 16 bytes larger instead.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VecMap<K, V> {
    entries: ThinVec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: ThinVec::new(),
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        VecMap::default()
    }

    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The entry of `key`: the key as stored, and its value.
    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| {
            let (k, v) = &self.entries[i];
            (k, v)
        })
    }

    /// The value of `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.find(key) {
            Ok(i) => Some(&mut self.entries[i].1),
            Err(_) => None,
        }
    }

    /// Whether `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.make_room();
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, inserting `make()` under `make_key()` first if there is none.
    pub fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> &mut V
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.make_room();
                self.entries.insert(i, (make_key(), make()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Grows the vector by a quarter (at least two entries) when it is full, instead of `Vec`'s doubling:
    /// a profile's maps are written once and held for a long time, so a doubled capacity would be up to
    /// half wasted for the life of the profile. Growth stays geometric, so inserts stay amortised O(1)
    /// apart from the shift.
    fn make_room(&mut self) {
        let len = self.entries.len();
        if len == self.entries.capacity() {
            self.entries.reserve_exact((len / 4).max(2));
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.find(key) {
            Ok(i) => Some(self.entries.remove(i).1),
            Err(_) => None,
        }
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The entries in key order, values to change.
    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values in key order, to change.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// A map of `entries` in any order; a repeated key keeps its last value. The vector is kept (and
    /// shrunk to its length) when it is already sorted, as a decoded record's maps are.
    fn from_entries(mut entries: ThinVec<(K, V)>) -> Self {
        if entries.windows(2).all(|w| w[0].0 < w[1].0) {
            entries.shrink_to_fit();
            return VecMap { entries };
        }
        // Stable: among equal keys the later entry stays later, and `dedup_by` keeps the first of a run,
        // so reverse the run's order first by sorting on (key, reversed position).
        let mut indexed: Vec<(usize, (K, V))> = entries.into_iter().enumerate().collect();
        indexed.sort_by(|(ia, (ka, _)), (ib, (kb, _))| ka.cmp(kb).then(ib.cmp(ia)));
        indexed.dedup_by(|(_, (later, _)), (_, (kept, _))| later == kept);
        let mut entries: ThinVec<(K, V)> = indexed.into_iter().map(|(_, kv)| kv).collect();
        entries.shrink_to_fit();
        VecMap { entries }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        VecMap::from_entries(iter.into_iter().collect())
    }
}

impl<K: Ord, V> From<BTreeMap<K, V>> for VecMap<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        let mut entries: ThinVec<(K, V)> = map.into_iter().collect();
        entries.shrink_to_fit();
        VecMap { entries }
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = thin_vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        fn pair<K, V>((k, v): &(K, V)) -> (&K, &V) {
            (k, v)
        }
        self.entries.iter().map(pair)
    }
}

impl<K, V, Q> std::ops::Index<&Q> for VecMap<K, V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;
    /// The value of `key`. Panics if there is none (as `BTreeMap`'s index does; tests only).
    fn index(&self, key: &Q) -> &V {
        #[allow(clippy::expect_used)]
        self.get(key).expect("no entry for the key")
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<K, V>::deserialize(deserializer).map(VecMap::from)
    }
}

impl<K: Encode, V: Encode> Encode for VecMap<K, V> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // The `BTreeMap` encoding: the length, then each pair in key order.
        (self.entries.len() as u64).encode(encoder)?;
        for (k, v) in &self.entries {
            k.encode(encoder)?;
            v.encode(encoder)?;
        }
        Ok(())
    }
}

/// The length prefix of a map, as bincode writes it (a `u64`).
fn decode_len<D: bincode::de::Decoder>(
    decoder: &mut D,
) -> Result<usize, bincode::error::DecodeError> {
    let len = u64::decode(decoder)?;
    usize::try_from(len).map_err(|_| bincode::error::DecodeError::OutsideUsizeRange(len))
}

/// Entries reserved up front while decoding at most: the length is read from the input, so trusting it
/// would let a few bytes ask for gigabytes.
const DECODE_RESERVE: usize = 64;

impl<C, K: Ord + Decode<C>, V: Decode<C>> Decode<C> for VecMap<K, V> {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let len = decode_len(decoder)?;
        decoder.claim_container_read::<(K, V)>(len)?;
        let mut entries = ThinVec::with_capacity(len.min(DECODE_RESERVE));
        for _ in 0..len {
            // As bincode's own maps do: the claim above covered the in-memory size, the pair's decode
            // claims its own bytes again.
            decoder.unclaim_bytes_read(std::mem::size_of::<(K, V)>());
            let key = K::decode(decoder)?;
            let value = V::decode(decoder)?;
            entries.push((key, value));
        }
        Ok(VecMap::from_entries(entries))
    }
}

impl<'de, C, K: Ord + bincode::BorrowDecode<'de, C>, V: bincode::BorrowDecode<'de, C>>
    bincode::BorrowDecode<'de, C> for VecMap<K, V>
{
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let len = decode_len(decoder)?;
        decoder.claim_container_read::<(K, V)>(len)?;
        let mut entries = ThinVec::with_capacity(len.min(DECODE_RESERVE));
        for _ in 0..len {
            decoder.unclaim_bytes_read(std::mem::size_of::<(K, V)>());
            let key = K::borrow_decode(decoder)?;
            let value = V::borrow_decode(decoder)?;
            entries.push((key, value));
        }
        Ok(VecMap::from_entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Inserting one key at a time wastes at most a quarter of the entries (plus the minimum step), not
    /// half as `Vec`'s doubling would: a profile built by single-feature writes stays compact.
    #[test]
    fn one_at_a_time_inserts_grow_by_a_quarter() {
        let mut map = VecMap::new();
        for i in 0..20u32 {
            map.insert(i, i);
            assert!(
                map.entries.capacity() <= map.len() + (map.len() / 4).max(2),
                "capacity {} for {} entries",
                map.entries.capacity(),
                map.len()
            );
        }
        let mut other = VecMap::new();
        for i in 0..20u32 {
            other.get_or_insert_with(&i, || i, || i);
        }
        assert!(other.entries.capacity() <= 25);
    }

    proptest! {
        /// Any sequence of inserts and removes leaves a `VecMap` equal to a `BTreeMap` given the same:
        /// same entries, same order, same encoding, and decoding either's bytes gives the same map.
        #[test]
        fn it_behaves_and_encodes_as_a_btree_map(ops in proptest::collection::vec((0u8..24, any::<Option<u16>>()), 0..80)) {
            let mut ours: VecMap<u8, u16> = VecMap::new();
            let mut model: BTreeMap<u8, u16> = BTreeMap::new();
            for (k, v) in ops {
                match v {
                    Some(v) => prop_assert_eq!(ours.insert(k, v), model.insert(k, v)),
                    None => prop_assert_eq!(ours.remove(&k), model.remove(&k)),
                }
                prop_assert_eq!(ours.get(&k), model.get(&k));
            }
            prop_assert!(ours.iter().eq(model.iter()));
            let cfg = bincode::config::standard();
            let bytes = bincode::encode_to_vec(&ours, cfg).expect("encodes");
            prop_assert_eq!(&bytes, &bincode::encode_to_vec(&model, cfg).expect("encodes"));
            let (back, _): (VecMap<u8, u16>, usize) = bincode::decode_from_slice(&bytes, cfg).expect("decodes");
            prop_assert_eq!(back, ours.clone());
            let json = serde_json::to_string(&ours).expect("serializes");
            prop_assert_eq!(&json, &serde_json::to_string(&model).expect("serializes"));
        }
    }

    #[test]
    fn decoding_a_repeated_or_unsorted_key_keeps_the_last_value_like_a_btree_map() {
        let cfg = bincode::config::standard();
        // Hand-made pairs: (3, 30), (1, 10), (3, 31).
        let pairs: Vec<(u8, u16)> = vec![(3, 30), (1, 10), (3, 31)];
        let bytes = bincode::encode_to_vec(&pairs, cfg).expect("encodes");
        let (ours, _): (VecMap<u8, u16>, usize) =
            bincode::decode_from_slice(&bytes, cfg).expect("decodes");
        let (model, _): (BTreeMap<u8, u16>, usize) =
            bincode::decode_from_slice(&bytes, cfg).expect("decodes");
        assert!(ours.iter().eq(model.iter()));
        assert_eq!(ours.get(&3), Some(&31));
    }

    #[test]
    fn a_huge_declared_length_is_an_error_not_an_allocation() {
        let cfg = bincode::config::standard().with_limit::<1024>();
        let bytes =
            bincode::encode_to_vec(u64::MAX / 2, bincode::config::standard()).expect("encodes");
        let out: Result<(VecMap<u8, u16>, usize), _> = bincode::decode_from_slice(&bytes, cfg);
        assert!(out.is_err());
        let unlimited: Result<(VecMap<u8, u16>, usize), _> =
            bincode::decode_from_slice(&bytes, bincode::config::standard());
        assert!(
            unlimited.is_err(),
            "the input ends long before the declared entries"
        );
    }
}
