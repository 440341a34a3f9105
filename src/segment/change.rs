//! Transitions and change events: [`decide`] compares the stored membership with the rule's value now, and
//! a [`ChangeEvent`] tells downstream systems about an entry or exit, with its [`Why`].
//!
//! Guarantees: [`decide`] yields a transition only when the value differs from the membership (an entry
//! only for a non-member, an exit only for a member), so re-evaluating a rule that did not change emits
//! nothing. Change events are wire-visible: serde (JSON for `storectl` and subscribers) and bincode
//! `Encode`/`Decode` (the node's change log and the client stream), like the other wire types.
//!
//! Caveats: the fencing fields a node stamps on each event (ring version, owner node, dot) and the
//! membership flag itself belong to the node's runtime and are added there; this type holds what the
//! sans-IO decision knows.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crdt::flag::FlagDot;
use crate::segment::eval::Evaluation;
use crate::segment::Reading;

/// An entry into or an exit from a segment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    /// The profile became a member.
    Entered,
    /// The profile stopped being a member.
    Exited,
}

/// The transition from `previous_member` to the rule's value `now_value`, if they differ.
pub fn decide(previous_member: bool, now_value: bool) -> Option<Transition> {
    match (previous_member, now_value) {
        (false, true) => Some(Transition::Entered),
        (true, false) => Some(Transition::Exited),
        _ => None,
    }
}

/// Why a transition happened: the values the rule read, and the event that caused it, if one did (none for
/// a timer or a backfill).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct Why {
    /// Every feature the rule reads, as it read it (feature name → value).
    pub read: BTreeMap<String, Reading>,
    /// The message id of the event whose ingestion caused the evaluation.
    pub message_id: Option<String>,
}

impl Why {
    /// The why-trace of an evaluation, caused by the event `message_id` if any.
    pub fn of(evaluation: &Evaluation, message_id: Option<&str>) -> Why {
        Why {
            read: evaluation.read.clone(),
            message_id: message_id.map(str::to_owned),
        }
    }
}

/// One entry into or exit from a segment, as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct ChangeEvent {
    /// The profile's (canonical) id.
    pub user: String,
    /// The segment.
    pub segment: String,
    /// Entered or exited.
    pub kind: Transition,
    /// When the node decided it (Unix ms): the evaluation instant, for a timer its deadline.
    pub at_ms: u64,
    /// The event time of the event that caused it, if one did.
    pub event_time_ms: Option<u64>,
    /// The values read and the causing event.
    pub why: Why,
    /// The dot of the membership-flag write that recorded this transition: unique per decision, so
    /// `(segment, user, dot)` de-duplicates redeliveries and tells two owners' decisions apart.
    pub dot: FlagDot,
    /// The sibling dots this decision replaced because they disagreed (a conflict left by two owners
    /// during a partition, collapsed by the owner after the heal); empty for an ordinary transition.
    pub resolves: Vec<FlagDot>,
}

impl ChangeEvent {
    /// The de-duplication key of this event: `segment/user/dot`.
    pub fn dedup_key(&self) -> String {
        format!(
            "{}/{}/{}:{}",
            self.segment, self.user, self.dot.actor, self.dot.counter
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_only_when_the_value_differs_from_the_membership() {
        assert_eq!(decide(false, true), Some(Transition::Entered));
        assert_eq!(decide(true, false), Some(Transition::Exited));
        assert_eq!(decide(true, true), None);
        assert_eq!(decide(false, false), None);
    }

    fn event() -> ChangeEvent {
        ChangeEvent {
            user: "u-1".into(),
            segment: "cart_abandoner".into(),
            kind: Transition::Entered,
            at_ms: 1_700_001_800_001,
            event_time_ms: None,
            why: Why {
                read: BTreeMap::from([
                    ("cart_adds_30m".to_owned(), Reading::Int(1)),
                    ("last_cart_add".to_owned(), Reading::Time(1_700_000_000_000)),
                    ("orders_30m".to_owned(), Reading::Int(0)),
                ]),
                message_id: Some("m-1".into()),
            },
            dot: FlagDot {
                actor: crate::hlc::Actor::new(crate::hlc::NodeId::new("n1").expect("valid"), 9),
                counter: 1,
            },
            resolves: Vec::new(),
        }
    }

    #[test]
    fn change_events_serialize_as_json_and_bincode() {
        let e = event();
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(json["kind"], "entered");
        assert_eq!(
            json["why"]["read"]["last_cart_add"],
            serde_json::json!({"type": "time", "value": 1_700_000_000_000u64})
        );
        assert_eq!(
            serde_json::from_value::<ChangeEvent>(json).expect("parses"),
            e
        );
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec(&e, config).expect("encodes");
        let (back, used): (ChangeEvent, usize) =
            bincode::decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!((back, used), (e, bytes.len()));
    }

    #[test]
    fn why_carries_the_evaluation_and_the_message_id() {
        let evaluation = Evaluation {
            member: true,
            read: event().why.read,
        };
        let why = Why::of(&evaluation, Some("m-1"));
        assert_eq!(why, event().why);
        assert_eq!(Why::of(&evaluation, None).message_id, None);
    }
}
