//! In-memory [`Storage`]: a `Mutex<HashMap>` for tests and `storage = "memory"`.
//!
//! Guarantees: every method behaves like a durable engine would *within the process* (a `put` is visible
//! to a later `load_all`, a `merge` is joined into what it returns), and `flush` always succeeds
//! instantly. A `merge` joins its delta into the key's pending join, not into the record, so a write costs
//! the size of its delta; the record and the pending join meet when records are read. The pending join is
//! a part of the key's state, so it never outgrows the profile. Caveat: nothing survives the process, so
//! the durability policy is meaningless with it; `disk_bytes` is always 0. A poisoned lock (a panic while
//! it was held) is recovered from, since every operation leaves the map consistent.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use featurestore::Profile;

use super::merge::{decode_delta, join_onto};
use super::Storage;
use crate::error::Result;

/// One key's record and the join of the deltas merged since it was written.
#[derive(Debug, Default)]
struct Slot {
    record: Option<Vec<u8>>,
    pending: Option<Profile>,
}

impl Slot {
    /// Joins the pending deltas into the record (a record that cannot be decoded is replaced).
    fn settle(&mut self) -> Result<&[u8]> {
        if let Some(pending) = self.pending.take() {
            let (record, _corrupt) = join_onto(self.record.as_deref(), &pending)?;
            self.record = Some(record);
        }
        Ok(self.record.as_deref().unwrap_or_default())
    }
}

/// Volatile storage backed by a `HashMap` behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    map: Mutex<HashMap<Vec<u8>, Slot>>,
    meta: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryStorage {
    fn map(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Slot>> {
        // Every critical section leaves each slot whole, so a poisoned map is still consistent.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of records currently stored.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no record is stored.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

impl Storage for MemoryStorage {
    fn load_all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut map = self.map();
        let mut out = Vec::with_capacity(map.len());
        for (key, slot) in map.iter_mut() {
            out.push((key.clone(), slot.settle()?.to_vec()));
        }
        Ok(out)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let slot = Slot {
            record: Some(value.to_vec()),
            pending: None,
        };
        self.map().insert(key.to_vec(), slot);
        Ok(())
    }

    fn merge(&self, key: &[u8], delta: &[u8]) -> Result<()> {
        let delta = decode_delta(delta)?;
        let mut map = self.map();
        let slot = match map.get_mut(key) {
            Some(slot) => slot,
            None => map.entry(key.to_vec()).or_default(),
        };
        slot.pending.get_or_insert_default().merge(&delta);
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<()> {
        self.map().remove(key);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn disk_bytes(&self) -> Result<u64> {
        Ok(0)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        Ok(meta.get(name).cloned())
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn remove_meta(&self, name: &str) -> Result<()> {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.remove(name);
        Ok(())
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        Ok(meta
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn put_replace_remove_load() {
        let s = MemoryStorage::default();
        assert!(s.is_empty());
        s.put(b"a", b"1").unwrap();
        s.put(b"a", b"2").unwrap();
        s.put(b"b", b"3").unwrap();
        s.remove(b"b").unwrap();
        s.remove(b"never-there").unwrap();
        s.flush().unwrap();
        assert_eq!(s.load_all().unwrap(), vec![(b"a".to_vec(), b"2".to_vec())]);
        assert_eq!(s.len(), 1);
    }

    /// Merges are joined into the record, and a put replaces what was merged before it.
    #[test]
    fn merges_join_into_the_record_and_a_put_replaces_them() {
        use featurestore::hlc::{Actor, Timestamp};
        use featurestore::wire::codec::{decode_record, encode_record};
        use featurestore::{Limits, NodeId};

        let actor = Actor::legacy(NodeId::new("n1").unwrap());
        let delta = |name: &str, at: u64| {
            let mut p = Profile::default();
            p.increment(
                &[(name, 1)],
                &actor,
                Timestamp::from_millis(at),
                &Limits::default(),
            )
            .unwrap();
            p
        };
        let s = MemoryStorage::default();
        s.merge(b"k", &encode_record(&delta("a", 1)).unwrap())
            .unwrap();
        s.merge(b"k", &encode_record(&delta("b", 2)).unwrap())
            .unwrap();
        let loaded = s.load_all().unwrap();
        let joined = decode_record(&loaded[0].1).unwrap();
        assert_eq!(joined.feature_count(), 2);
        s.put(b"k", &encode_record(&delta("c", 3)).unwrap())
            .unwrap();
        s.merge(b"k", &encode_record(&delta("d", 4)).unwrap())
            .unwrap();
        let loaded = s.load_all().unwrap();
        let names: Vec<String> = decode_record(&loaded[0].1)
            .unwrap()
            .counters
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(names, ["c", "d"]);
        assert!(s.merge(b"k", b"\x00not a delta").is_err());
    }
}
