//! In-memory [`Storage`]: a `Mutex<HashMap>` for tests and `storage = "memory"`.
//!
//! Guarantees: every method behaves like a durable engine would *within the process* (a `put` is visible
//! to a later `load_all`), and `flush` always succeeds instantly. Caveat: nothing survives the process, so
//! the durability policy is meaningless with it; `disk_bytes` is always 0. A poisoned lock (a panic while
//! it was held) is recovered from, since every operation leaves the map consistent.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::Storage;
use crate::error::Result;

/// Volatile storage backed by a `HashMap` behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    map: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    meta: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryStorage {
    fn map(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        // Every critical section is a single map operation, so a poisoned map is still consistent.
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
        Ok(self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.map().insert(key.to_vec(), value.to_vec());
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
}
