//! The cluster's membership table, gossiped between nodes, and the rings derived from it.
//!
//! Each member has a state (`Joining`, `Active`, `Leaving`, `Left`) and a version that only its owner (or
//! an operator acting for it) increases. Tables merge entry by entry: the higher version wins; equal
//! versions with different content resolve by a fixed order, so merge is a join (commutative,
//! associative, idempotent) and every node that has heard the same updates holds the same table.
//!
//! Rings:
//! - the *current* ring holds `Active` and `Leaving` members: it decides who serves reads and coordinates;
//! - the *target* ring holds `Active` and `Joining` members: it is where ownership is moving to.
//!
//! While they differ (a join or leave in progress), writes go to the union of both preference lists, so a
//! node that is gaining a range receives new writes while the old owners hand the existing data over.
//!
//! The ring version is the sum of all member versions: every change raises it, so "has the ring changed?"
//! is one integer comparison for clients and peers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::cluster::ring::Ring;
use crate::hlc::NodeId;

/// A member's place in the cluster lifecycle.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Receiving its ranges from the current owners; not serving them yet.
    Joining,
    /// Serving its ranges.
    Active,
    /// Handing its ranges over; still serving them until the handoff is complete.
    Leaving,
    /// Gone; kept as a tombstone so the departure is not undone by old gossip.
    Left,
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        })
    }
}

/// Where a member's peers and clients reach it: a socket address, parsed once when it enters the table
/// (from config, a peer or the disk) and encoded as its text form (the encoding of the string it replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberAddr(pub SocketAddr);

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<SocketAddr> for MemberAddr {
    fn from(addr: SocketAddr) -> Self {
        MemberAddr(addr)
    }
}

impl Serialize for MemberAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MemberAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map(MemberAddr)
            .map_err(serde::de::Error::custom)
    }
}

impl Encode for MemberAddr {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.0.to_string().encode(encoder)
    }
}

impl<C> Decode<C> for MemberAddr {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let text = String::decode(decoder)?;
        text.parse().map(MemberAddr).map_err(|_| {
            bincode::error::DecodeError::OtherString(format!("invalid member address {text:?}"))
        })
    }
}

bincode::impl_borrow_decode!(MemberAddr);

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Member {
    /// The node id.
    pub id: NodeId,
    /// Where its peers and clients reach it.
    pub addr: MemberAddr,
    /// Lifecycle state.
    pub state: MemberState,
    /// Raised on every change of this entry.
    pub version: u64,
}

/// The versioned membership table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct MembershipTable {
    /// Members by id.
    pub members: BTreeMap<NodeId, Member>,
}

impl MembershipTable {
    /// A table holding `members` as given.
    pub fn from_members(members: impl IntoIterator<Item = Member>) -> Self {
        MembershipTable {
            members: members.into_iter().map(|m| (m.id.clone(), m)).collect(),
        }
    }

    /// The sum of all versions: raised by every change.
    pub fn version(&self) -> u64 {
        self.members
            .values()
            .fold(0u64, |acc, m| acc.saturating_add(m.version))
    }

    /// A member's entry.
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Sets `id`'s state and address, raising its version. Used by a node for itself (join, leave) and
    /// by the seeds of a fresh cluster.
    pub fn set(&mut self, id: &NodeId, addr: SocketAddr, state: MemberState) {
        let version = self.members.get(id).map_or(1, |m| m.version + 1);
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                addr: MemberAddr(addr),
                state,
                version,
            },
        );
    }

    /// The table a node starts from: the `stored` one if it has one, else one made from its seeds. A
    /// node that bootstraps a new cluster lists every seed and itself as `Active`; a node joining an
    /// existing cluster lists the seeds at version 0 (just enough to gossip with them: their own entries
    /// win) and itself as `Joining`. A restart on another address announces the new one.
    pub fn bootstrap(
        me: &NodeId,
        advertise: SocketAddr,
        seeds: &[(NodeId, SocketAddr)],
        bootstrap: bool,
        stored: Option<MembershipTable>,
    ) -> MembershipTable {
        let mut table = stored.unwrap_or_else(|| {
            let mut t = MembershipTable::default();
            for (id, addr) in seeds.iter().filter(|(id, _)| id != me) {
                if bootstrap {
                    t.set(id, *addr, MemberState::Active);
                } else {
                    t.members.insert(
                        id.clone(),
                        Member {
                            id: id.clone(),
                            addr: MemberAddr(*addr),
                            state: MemberState::Active,
                            version: 0,
                        },
                    );
                }
            }
            let state = if bootstrap {
                MemberState::Active
            } else {
                MemberState::Joining
            };
            t.set(me, advertise, state);
            t
        });
        if let Some(m) = table.get(me).cloned() {
            if m.addr.0 != advertise {
                table.set(me, advertise, m.state);
            }
        }
        table
    }

    /// Merges another table into this one. Returns true if anything changed.
    pub fn merge(&mut self, other: &MembershipTable) -> bool {
        let mut changed = false;
        for (id, theirs) in &other.members {
            let replace = match self.members.get(id) {
                None => true,
                Some(ours) => {
                    (theirs.version, theirs.state, &theirs.addr)
                        > (ours.version, ours.state, &ours.addr)
                }
            };
            if replace {
                self.members.insert(id.clone(), theirs.clone());
                changed = true;
            }
        }
        changed
    }

    /// Members in a state accepted by `keep`.
    fn ids(&self, keep: impl Fn(MemberState) -> bool) -> Vec<NodeId> {
        self.members
            .values()
            .filter(|m| keep(m.state))
            .map(|m| m.id.clone())
            .collect()
    }

    /// The ring that serves now: `Active` and `Leaving` members.
    pub fn current_ring(&self, vnodes: u32) -> Ring {
        let ids = self.ids(|s| matches!(s, MemberState::Active | MemberState::Leaving));
        Ring::new(self.version(), ids, vnodes)
    }

    /// The ring ownership is moving to: `Active` and `Joining` members.
    pub fn target_ring(&self, vnodes: u32) -> Ring {
        let ids = self.ids(|s| matches!(s, MemberState::Active | MemberState::Joining));
        Ring::new(self.version(), ids, vnodes)
    }

    /// Whether a join or leave is in progress.
    pub fn in_transition(&self) -> bool {
        self.members
            .values()
            .any(|m| matches!(m.state, MemberState::Joining | MemberState::Leaving))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn id(i: u8) -> NodeId {
        NodeId::new(format!("n{i}")).expect("valid")
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// The typed address and the validating node id keep the encoding of the strings they replaced, so
    /// stored tables and peers of the previous format read the same bytes.
    #[test]
    fn typed_members_encode_as_their_text() {
        #[derive(bincode::Encode)]
        struct OldMember {
            id: String,
            addr: String,
            state: MemberState,
            version: u64,
        }
        let old = OldMember {
            id: "n1".into(),
            addr: "127.0.0.1:7001".into(),
            state: MemberState::Active,
            version: 3,
        };
        let new = Member {
            id: id(1),
            addr: MemberAddr(SocketAddr::from(([127, 0, 0, 1], 7001))),
            state: MemberState::Active,
            version: 3,
        };
        let config = bincode::config::standard();
        let old_bytes = bincode::encode_to_vec(&old, config).expect("encodes");
        assert_eq!(
            bincode::encode_to_vec(&new, config).expect("encodes"),
            old_bytes
        );
        let (back, _): (Member, usize) =
            bincode::decode_from_slice(&old_bytes, config).expect("decodes");
        assert_eq!(back, new);
    }

    /// Parse, don't validate: a bad id or address from a peer or the disk is a decode error, never a value.
    #[test]
    fn a_bad_node_id_or_address_does_not_decode() {
        #[derive(bincode::Encode)]
        struct Raw {
            id: String,
            addr: String,
            state: MemberState,
            version: u64,
        }
        let config = bincode::config::standard();
        for (bad_id, bad_addr) in [
            ("N1/../x", "127.0.0.1:1"),
            ("n1", "not an address"),
            ("", "127.0.0.1:1"),
        ] {
            let raw = Raw {
                id: bad_id.into(),
                addr: bad_addr.into(),
                state: MemberState::Active,
                version: 1,
            };
            let bytes = bincode::encode_to_vec(&raw, config).expect("encodes");
            let decoded: Result<(Member, usize), _> = bincode::decode_from_slice(&bytes, config);
            assert!(
                decoded.is_err(),
                "{bad_id:?} / {bad_addr:?} must not decode"
            );
        }
        assert!(serde_json::from_str::<NodeId>("\"Bad Id\"").is_err());
        assert!(serde_json::from_str::<NodeId>("\"n7\"").is_ok());
    }

    fn member() -> impl Strategy<Value = Member> {
        (0u8..4, 0u8..4, 0u64..4, 0u8..2).prop_map(|(i, s, version, a)| Member {
            id: id(i),
            addr: MemberAddr(SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(a)))),
            state: [
                MemberState::Joining,
                MemberState::Active,
                MemberState::Leaving,
                MemberState::Left,
            ][s as usize],
            version,
        })
    }

    pub(crate) fn table() -> impl Strategy<Value = MembershipTable> {
        proptest::collection::vec(member(), 0..6).prop_map(MembershipTable::from_members)
    }

    fn merged(a: &MembershipTable, b: &MembershipTable) -> MembershipTable {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in table(), b in table(), c in table()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            prop_assert!(merged(&a, &b).version() >= a.version());
        }
    }

    #[test]
    fn rings_follow_the_lifecycle() {
        let mut t = MembershipTable::default();
        for i in 1..=3 {
            t.set(&id(i), addr(), MemberState::Active);
        }
        assert!(!t.in_transition());
        let v0 = t.version();
        t.set(&id(4), addr(), MemberState::Joining);
        assert!(t.version() > v0);
        assert_eq!(t.current_ring(16).len(), 3);
        assert_eq!(t.target_ring(16).len(), 4);
        t.set(&id(4), addr(), MemberState::Active);
        t.set(&id(1), addr(), MemberState::Leaving);
        assert_eq!(t.current_ring(16).len(), 4);
        assert_eq!(t.target_ring(16).len(), 3);
        t.set(&id(1), addr(), MemberState::Left);
        assert_eq!(t.current_ring(16).len(), 3);
        assert!(!t.in_transition());
    }
}
