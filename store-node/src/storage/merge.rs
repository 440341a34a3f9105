//! Joining a profile record with a logged delta: what [`Storage::merge`](super::Storage::merge) means,
//! shared by every engine.
//!
//! # Guarantees
//!
//! * [`join_onto`] turns a stored record and a delta (a profile, decoded from a record of the same
//!   encoding) into the record of their join, `base ⊔ delta`. The core's merge is a join
//!   (commutative, associative, idempotent), so folding the same delta twice, or a delta onto a base
//!   that already holds it, gives the same record: a replay after a crash at any point of a fold is
//!   harmless.
//! * A base that cannot be decoded is replaced by the join of the deltas alone, and reported as
//!   corrupt, never unwrapped. That matches the node's memory: its start-up load skipped that record,
//!   so the writes it logged since were computed from an empty profile.
//!
//! # Caveats
//!
//! * A join decodes and re-encodes the whole stored record; engines do it once per key per fold, not
//!   once per write (see [`WalStorage`](super::WalStorage)).

use featurestore::compact::StoredNames;
use featurestore::wire::codec::{
    decode_record, decode_stored_record, encode_numbered_record_into, encode_record,
};
use featurestore::Profile;

use crate::error::Result;

/// The record of `base ⊔ delta` (`base` absent: just `delta`), and whether `base` was present but could
/// not be decoded (and was so replaced).
pub(super) fn join_onto(base: Option<&[u8]>, delta: &Profile) -> Result<(Vec<u8>, bool)> {
    let (mut profile, corrupt) = match base.map(decode_record) {
        None => (Profile::default(), false),
        Some(Ok(profile)) => (profile, false),
        Some(Err(_)) => (Profile::default(), true),
    };
    profile.merge(delta);
    Ok((encode_record(&profile)?, corrupt))
}

/// [`join_onto`] for a store with a name table: `base` is any record the store holds (numbered or not),
/// and the join is written numbered with `names` (which may gain numbers: the caller persists
/// [`StoredNames::unsaved`] before the record). `scratch` is reused between calls.
pub(super) fn join_numbered(
    base: Option<&[u8]>,
    delta: &Profile,
    names: &mut StoredNames,
    scratch: &mut Vec<u8>,
) -> Result<(Vec<u8>, bool)> {
    let decoded = base.map(|b| decode_stored_record(b, &names.columns()));
    let (mut profile, corrupt) = match decoded {
        None => (Profile::default(), false),
        Some(Ok((profile, _hash))) => (profile, false),
        Some(Err(_)) => (Profile::default(), true),
    };
    // The snapshot is dropped by now: numbers the encoding adds do not copy the table.
    profile.merge(delta);
    let mut record = Vec::with_capacity(base.map_or(256, |b| b.len() + 64));
    encode_numbered_record_into(&profile, names, scratch, &mut record)?;
    Ok((record, corrupt))
}

/// Decodes a logged delta (a record as `encode_record` wrote it).
pub(super) fn decode_delta(bytes: &[u8]) -> Result<Profile> {
    Ok(decode_record(bytes)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use featurestore::hlc::{Actor, Timestamp};
    use featurestore::{Limits, NodeId};

    fn counted(name: &str, by: i64, at: u64) -> Profile {
        let actor = Actor::legacy(NodeId::new("n1").unwrap());
        let mut p = Profile::default();
        p.increment(
            &[(name, by)],
            &actor,
            Timestamp::from_millis(at),
            &Limits::default(),
        )
        .unwrap();
        p
    }

    #[test]
    fn a_join_is_idempotent_and_a_corrupt_base_is_replaced() {
        let a = counted("a", 1, 1);
        let b = counted("b", 2, 2);
        let (ab, corrupt) = join_onto(Some(&encode_record(&a).unwrap()), &b).unwrap();
        assert!(!corrupt);
        let (again, _) = join_onto(Some(&ab), &b).unwrap();
        assert_eq!(again, ab, "folding a delta twice changes nothing");
        let joined = decode_record(&ab).unwrap();
        assert_eq!(joined.feature_count(), 2);

        let (fresh, corrupt) = join_onto(Some(b"\x00garbage"), &b).unwrap();
        assert!(corrupt);
        assert_eq!(decode_record(&fresh).unwrap(), b);
        let (absent, corrupt) = join_onto(None, &b).unwrap();
        assert!(!corrupt);
        assert_eq!(absent, fresh);
    }
}
