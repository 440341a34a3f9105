//! The cluster runtime's records in the storage's metadata keyspace: their names and their (de)coding, in
//! one place.
//!
//! - `membership`: the membership table, a versioned record ([`encode_versioned`]).
//! - `incarnation`: the incarnation this node's data belongs to and whether it last shut down cleanly
//!   ([`featurestore::hlc::StoredIncarnation`], a versioned record); see [`begin_incarnation`].
//! - `hint/<target>/<key>`: one empty record per hint (the replica `target` misses `key`). Node ids contain
//!   no `/` (`[a-z0-9-]`), so the first `/` after the prefix ends the target; the key may contain `/`.

use std::collections::{BTreeMap, BTreeSet};

use featurestore::cluster::membership::MembershipTable;
use featurestore::hlc::{incarnation_after, StoredIncarnation};
use featurestore::wire::codec::{decode_versioned, encode_versioned};
use featurestore::NodeId;

use crate::error::Result;
use crate::storage::Storage;

/// The name of the membership table's record.
pub const META_MEMBERSHIP: &str = "membership";

/// The name of the incarnation record.
pub const META_INCARNATION: &str = "incarnation";

/// The prefix of every hint record's name.
pub const META_HINT_PREFIX: &str = "hint/";

/// Hinted keys per target, as the replication state machine starts from.
pub type Hints = BTreeMap<NodeId, BTreeSet<String>>;

/// The name of the record of the hint `(target, key)`.
pub fn hint_record(target: &NodeId, key: &str) -> String {
    format!("{META_HINT_PREFIX}{target}/{key}")
}

/// The hint a record name stands for, if it is one.
pub fn parse_hint_record(name: &str) -> Option<(NodeId, &str)> {
    let rest = name.strip_prefix(META_HINT_PREFIX)?;
    let (target, key) = rest.split_once('/')?;
    Some((NodeId::new(target).ok()?, key))
}

/// The stored membership table, if there is one.
pub fn load_table(storage: &dyn Storage) -> Result<Option<MembershipTable>> {
    Ok(storage
        .get_meta(META_MEMBERSHIP)?
        .map(|b| decode_versioned::<MembershipTable>(&b, "membership table"))
        .transpose()?)
}

/// Stores the membership table (not durable until the next flush).
pub fn store_table(storage: &dyn Storage, table: &MembershipTable) -> Result<()> {
    storage.put_meta(META_MEMBERSHIP, &encode_versioned(table)?)
}

/// Decides the incarnation this start runs as (the core's [`incarnation_after`] of the stored record, with
/// `fresh` as the new one it draws) and records it as running, durably, before the node applies anything:
/// a `kill -9` from here on leaves a record that is not clean, so the next start is a new actor. An
/// unreadable record counts as none (a new incarnation is always safe). Blocking: it flushes.
pub fn begin_incarnation(
    storage: &dyn Storage,
    fresh: u64,
) -> Result<(u64, Option<StoredIncarnation>)> {
    let previous = match storage.get_meta(META_INCARNATION)? {
        None => None,
        Some(bytes) => match decode_versioned::<StoredIncarnation>(&bytes, "incarnation") {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable incarnation record: starting a new incarnation");
                None
            }
        },
    };
    let incarnation = incarnation_after(previous, fresh);
    let running = StoredIncarnation {
        incarnation,
        clean: false,
    };
    storage.put_meta(META_INCARNATION, &encode_versioned(&running)?)?;
    storage.flush()?;
    Ok((incarnation, previous))
}

/// Records that `incarnation` shut down cleanly (every write it applied is flushed with this record), so
/// the next start continues it. Blocking: it flushes. Call it only once nothing applies writes any more.
pub fn end_incarnation(storage: &dyn Storage, incarnation: u64) -> Result<()> {
    let clean = StoredIncarnation {
        incarnation,
        clean: true,
    };
    storage.put_meta(META_INCARNATION, &encode_versioned(&clean)?)?;
    storage.flush()
}

/// Every stored hint; malformed hint records are logged and skipped.
pub fn load_hints(storage: &dyn Storage) -> Result<Hints> {
    let mut hints = Hints::new();
    for (name, _) in storage.scan_meta(META_HINT_PREFIX)? {
        match parse_hint_record(&name) {
            Some((target, key)) => {
                hints.entry(target).or_default().insert(key.to_owned());
            }
            None => tracing::warn!(record = %name, "ignoring a malformed hint record"),
        }
    }
    Ok(hints)
}

/// Stores the hint `(target, key)` (not durable until the next flush).
pub fn store_hint(storage: &dyn Storage, target: &NodeId, key: &str) -> Result<()> {
    storage.put_meta(&hint_record(target, key), &[])
}

/// Removes the hint `(target, key)` (not durable until the next flush).
pub fn remove_hint(storage: &dyn Storage, target: &NodeId, key: &str) -> Result<()> {
    storage.remove_meta(&hint_record(target, key))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn hint_records_round_trip_and_keys_may_contain_slashes() {
        let n2 = NodeId::new("n2").unwrap();
        let name = hint_record(&n2, "user/42");
        assert_eq!(name, "hint/n2/user/42");
        assert_eq!(parse_hint_record(&name), Some((n2.clone(), "user/42")));
        assert_eq!(parse_hint_record("membership"), None);
        assert_eq!(parse_hint_record("hint/N 2/k"), None);
        assert_eq!(parse_hint_record("hint/n2"), None);

        let storage = MemoryStorage::default();
        store_hint(&storage, &n2, "user/42").unwrap();
        store_hint(&storage, &n2, "k").unwrap();
        storage.put_meta("hint/bad", &[]).unwrap();
        let hints = load_hints(&storage).unwrap();
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[&n2].len(), 2);
        remove_hint(&storage, &n2, "k").unwrap();
        assert_eq!(load_hints(&storage).unwrap()[&n2].len(), 1);
        assert_eq!(load_table(&storage).unwrap(), None);
    }

    /// A crash (no clean end) and a missing or unreadable record start a new incarnation; a clean end
    /// continues the same one.
    #[test]
    fn only_a_clean_end_continues_an_incarnation() {
        let storage = MemoryStorage::default();
        let (first, previous) = begin_incarnation(&storage, 11).unwrap();
        assert_eq!((first, previous), (11, None));
        // kill -9: no end_incarnation.
        let (second, previous) = begin_incarnation(&storage, 22).unwrap();
        assert_eq!(second, 22);
        assert_eq!(previous.map(|p| p.clean), Some(false));
        end_incarnation(&storage, second).unwrap();
        let (third, _) = begin_incarnation(&storage, 33).unwrap();
        assert_eq!(third, 22, "a clean shutdown continues");
        storage.put_meta(META_INCARNATION, b"garbage").unwrap();
        let (fourth, previous) = begin_incarnation(&storage, 44).unwrap();
        assert_eq!((fourth, previous), (44, None));
    }
}
