//! Events on the wire: the batch a client ingests over QUIC and a node forwards to a user's owner.
//!
//! An [`Event`](crate::ingest::Event)'s properties are a JSON map; they travel as their JSON text
//! ([`WireEvent::properties_json`]) and are parsed again by the receiver, bounded by `max_event_bytes`, so
//! the encoding stays bincode like every other message and a hostile batch cannot make a node allocate
//! beyond its frame budget.

use bincode::{Decode, Encode};

use crate::error::{Error, EventDefect, Result};
use crate::ingest::{Event, EventType};
use crate::limits::Limits;

/// One validated event as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WireEvent {
    /// The delivery's unique id.
    pub message_id: String,
    /// The known user.
    pub user_id: Option<String>,
    /// The anonymous id.
    pub anonymous_id: Option<String>,
    /// The call (`EventType` as its index: track 0, identify 1, page 2, screen 3, group 4, alias 5).
    pub kind: u8,
    /// Event or page name.
    pub name: Option<String>,
    /// Event time, Unix ms (already skew-corrected by the node that received it).
    pub timestamp_ms: u64,
    /// Properties or traits, as a JSON object.
    pub properties_json: String,
    /// `previousId` of an alias.
    pub previous_id: Option<String>,
    /// Identity redirects the event followed so far (0 from a client): an owner that would redirect it
    /// once more than `max_identity_depth` refuses it instead.
    pub hops: u8,
}

const KINDS: [EventType; 6] = [
    EventType::Track,
    EventType::Identify,
    EventType::Page,
    EventType::Screen,
    EventType::Group,
    EventType::Alias,
];

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> WireEvent {
        WireEvent {
            message_id: e.message_id.clone(),
            user_id: e.user_id.clone(),
            anonymous_id: e.anonymous_id.clone(),
            kind: KINDS.iter().position(|k| *k == e.kind).unwrap_or(0) as u8,
            name: e.name.clone(),
            timestamp_ms: e.timestamp_ms,
            properties_json: serde_json::Value::Object(e.properties.clone()).to_string(),
            previous_id: e.previous_id.clone(),
            hops: 0,
        }
    }
}

impl WireEvent {
    /// The event, validated again: its size, message id, identity and properties.
    pub fn to_event(&self, limits: &Limits) -> Result<Event> {
        let invalid = |d| Err(Error::InvalidEvent(d));
        if self.properties_json.len() > limits.max_event_bytes {
            return invalid(EventDefect::TooLarge {
                len: self.properties_json.len(),
                max: limits.max_event_bytes,
            });
        }
        if self.message_id.is_empty() || self.message_id.len() > limits.max_message_id_bytes {
            return invalid(EventDefect::MessageIdTooLong {
                len: self.message_id.len(),
                max: limits.max_message_id_bytes,
            });
        }
        if self.user_id.is_none() && self.anonymous_id.is_none() {
            return invalid(EventDefect::NoIdentity);
        }
        let Some(kind) = KINDS.get(usize::from(self.kind)).copied() else {
            return invalid(EventDefect::UnknownType {
                got: self.kind.to_string(),
            });
        };
        let properties = match serde_json::from_str(&self.properties_json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return invalid(EventDefect::NotAnObjectField {
                    field: "properties",
                })
            }
        };
        Ok(Event {
            message_id: self.message_id.clone(),
            user_id: self.user_id.clone(),
            anonymous_id: self.anonymous_id.clone(),
            kind,
            name: self.name.clone(),
            timestamp_ms: self.timestamp_ms,
            properties,
            previous_id: self.previous_id.clone(),
        })
    }
}

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum EventOutcome {
    /// Applied on its owner and durable there; `late` names the windows that counted it as late.
    Applied {
        /// Windows that refused it as older than their span.
        late: Vec<String>,
    },
    /// Its message id had already been ingested: nothing changed.
    Duplicate,
    /// Refused (invalid for its definitions, or not storable): the reason.
    Refused {
        /// The error code.
        code: crate::wire::reply::ErrorCode,
        /// The reason.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_survives_the_wire() {
        let limits = Limits::default();
        let e = Event::from_segment(
            &json!({"type": "screen", "userId": "u", "messageId": "m", "name": "Home", "properties": {"a": [1, {"b": null}]}}),
            None,
            1_000,
            &limits,
        )
        .expect("valid");
        let wire = WireEvent::from(&e);
        assert_eq!(wire.to_event(&limits).expect("valid"), e);
    }

    #[test]
    fn a_hostile_wire_event_is_refused_with_its_defect() {
        let limits = Limits::default();
        let good = WireEvent {
            message_id: "m".into(),
            user_id: Some("u".into()),
            anonymous_id: None,
            kind: 0,
            name: Some("x".into()),
            timestamp_ms: 1,
            properties_json: "{}".into(),
            previous_id: None,
            hops: 0,
        };
        assert!(good.to_event(&limits).is_ok());
        let cases = [
            WireEvent {
                kind: 9,
                ..good.clone()
            },
            WireEvent {
                properties_json: "[1]".into(),
                ..good.clone()
            },
            WireEvent {
                properties_json: "{".into(),
                ..good.clone()
            },
            WireEvent {
                user_id: None,
                ..good.clone()
            },
            WireEvent {
                message_id: String::new(),
                ..good.clone()
            },
            WireEvent {
                properties_json: format!("{{\"a\":\"{}\"}}", "x".repeat(40_000)),
                ..good.clone()
            },
        ];
        for c in cases {
            assert!(
                matches!(c.to_event(&limits), Err(Error::InvalidEvent(_))),
                "{c:?}"
            );
        }
    }
}
