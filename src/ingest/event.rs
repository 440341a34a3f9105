//! Behaviour events as the Segment and RudderStack analytics SDKs send them (the Segment Tracking API
//! spec), parsed once at the edge into a typed [`Event`].
//!
//! Guarantees:
//! - Every defect is a typed [`EventDefect`] (no identity, unknown type, a track call without `event`, a bad
//!   timestamp, an oversized message id, ...), never a panic; the caller counts and dead-letters it.
//! - Event time follows Segment's rule for client clock skew: with `sentAt`, the event time is
//!   `receivedAt − (sentAt − timestamp)` (the client's clock error cancels out); without it, `timestamp`;
//!   without that, `receivedAt`. `originalTimestamp` stands for `timestamp` when present.
//! - An event without a `messageId` gets a deterministic one (a hash of its canonical JSON), so a retry of
//!   the same payload is still recognised as a duplicate.
//! - `identify` and `group` traits are read from `traits` and from `context.traits` (the top level wins).
//!
//! What it does not check: the size of the raw payload (the HTTP layer checks bytes before parsing, after
//! decompression); the key's length and characters are checked by the caller against [`Limits`].

use serde_json::{Map, Value as Json};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{truncate_for_error, Error, EventDefect, Result};
use crate::limits::Limits;

/// The call an event comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// `track`: something the user did (`event` names it).
    Track,
    /// `identify`: who the user is (traits).
    Identify,
    /// `page`: a page view (`name` optional).
    Page,
    /// `screen`: a mobile screen view.
    Screen,
    /// `group`: the user's account or company (traits).
    Group,
    /// `alias`: `previousId` is the same person as `userId`.
    Alias,
}

impl EventType {
    /// The type named `text` (`"track"`, ...).
    pub fn parse(text: &str) -> Option<EventType> {
        Some(match text {
            "track" => EventType::Track,
            "identify" => EventType::Identify,
            "page" => EventType::Page,
            "screen" => EventType::Screen,
            "group" => EventType::Group,
            "alias" => EventType::Alias,
            _ => return None,
        })
    }
}

/// One validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The delivery's unique id (deduplication).
    pub message_id: String,
    /// The known user, if any.
    pub user_id: Option<String>,
    /// The anonymous (device or cookie) id, if any.
    pub anonymous_id: Option<String>,
    /// The call.
    pub kind: EventType,
    /// `event` of a track call, `name` of a page or screen call.
    pub name: Option<String>,
    /// Event time in Unix ms, skew-corrected.
    pub timestamp_ms: u64,
    /// `properties` (track, page, screen) or the traits (identify, group).
    pub properties: Map<String, Json>,
    /// `previousId` of an alias call.
    pub previous_id: Option<String>,
}

fn defect(d: EventDefect) -> Error {
    Error::InvalidEvent(d)
}

fn string_field(obj: &Map<String, Json>, field: &'static str) -> Result<Option<String>> {
    match obj.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        // The SDKs send numeric user ids as numbers at times; Segment accepts them as strings.
        Some(Json::Number(n)) if field == "userId" || field == "anonymousId" => {
            Ok(Some(n.to_string()))
        }
        Some(_) => Err(defect(EventDefect::NotAString { field })),
    }
}

fn object_field(obj: &Map<String, Json>, field: &'static str) -> Result<Map<String, Json>> {
    match obj.get(field) {
        None | Some(Json::Null) => Ok(Map::new()),
        Some(Json::Object(m)) => Ok(m.clone()),
        Some(_) => Err(defect(EventDefect::NotAnObjectField { field })),
    }
}

fn timestamp_field(obj: &Map<String, Json>, field: &'static str) -> Result<Option<i128>> {
    let Some(text) = string_field(obj, field)? else {
        return Ok(None);
    };
    OffsetDateTime::parse(&text, &Rfc3339)
        .map(|t| Some(t.unix_timestamp_nanos() / 1_000_000))
        .map_err(|_| {
            defect(EventDefect::BadTimestamp {
                field,
                text: truncate_for_error(&text),
            })
        })
}

/// A deterministic message id for an event that has none: FNV-1a of its canonical JSON.
fn derived_message_id(obj: &Map<String, Json>) -> String {
    let canonical = serde_json::to_string(obj).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("derived-{h:016x}")
}

impl Event {
    /// Parses one event of the Segment Tracking API. `default_type` is the type of the endpoint it was
    /// posted to (`/v1/track` ...), used when the event names none; `received_at_ms` is when this node
    /// received it.
    pub fn from_segment(
        json: &Json,
        default_type: Option<EventType>,
        received_at_ms: u64,
        limits: &Limits,
    ) -> Result<Event> {
        let Json::Object(obj) = json else {
            return Err(defect(EventDefect::NotAnObject));
        };
        let kind = match obj.get("type") {
            Some(Json::String(t)) => EventType::parse(t).ok_or_else(|| {
                defect(EventDefect::UnknownType {
                    got: truncate_for_error(t),
                })
            })?,
            None | Some(Json::Null) => default_type
                .ok_or_else(|| defect(EventDefect::UnknownType { got: String::new() }))?,
            Some(_) => return Err(defect(EventDefect::NotAString { field: "type" })),
        };
        let user_id = string_field(obj, "userId")?;
        let anonymous_id = string_field(obj, "anonymousId")?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(defect(EventDefect::NoIdentity));
        }
        let message_id = match string_field(obj, "messageId")? {
            Some(id) => id,
            None => derived_message_id(obj),
        };
        if message_id.len() > limits.max_message_id_bytes {
            return Err(defect(EventDefect::MessageIdTooLong {
                len: message_id.len(),
                max: limits.max_message_id_bytes,
            }));
        }
        let name = match kind {
            EventType::Track => Some(
                string_field(obj, "event")?.ok_or_else(|| defect(EventDefect::MissingEventName))?,
            ),
            EventType::Page | EventType::Screen => string_field(obj, "name")?,
            _ => None,
        };
        let previous_id = match kind {
            EventType::Alias => Some(
                string_field(obj, "previousId")?
                    .ok_or_else(|| defect(EventDefect::MissingPreviousId))?,
            ),
            _ => None,
        };
        let properties = match kind {
            EventType::Identify | EventType::Group => {
                let context = object_field(obj, "context")?;
                let mut traits = match context.get("traits") {
                    Some(Json::Object(t)) => t.clone(),
                    _ => Map::new(),
                };
                traits.extend(object_field(obj, "traits")?);
                traits
            }
            _ => object_field(obj, "properties")?,
        };
        let original = match timestamp_field(obj, "originalTimestamp")? {
            Some(t) => Some(t),
            None => timestamp_field(obj, "timestamp")?,
        };
        let sent_at = timestamp_field(obj, "sentAt")?;
        let received = i128::from(received_at_ms);
        let event_ms = match (original, sent_at) {
            (Some(t), Some(sent)) => received - (sent - t),
            (Some(t), None) => t,
            (None, _) => received,
        };
        let timestamp_ms = u64::try_from(event_ms.max(0)).unwrap_or(u64::MAX);
        Ok(Event {
            message_id,
            user_id,
            anonymous_id,
            kind,
            name,
            timestamp_ms,
            properties,
            previous_id,
        })
    }

    /// The profile key the event belongs to: the user id, else the anonymous id.
    pub fn key(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// The property at a dotted `path` (`"product.price"`).
    pub fn property(&self, path: &str) -> Option<&Json> {
        let mut parts = path.split('.');
        let first = self.properties.get(parts.next()?)?;
        parts.try_fold(first, |v, part| v.get(part))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RECEIVED: u64 = 1_700_000_010_000; // 2023-11-14T22:13:30Z

    fn parse(j: Json) -> Result<Event> {
        Event::from_segment(&j, None, RECEIVED, &Limits::default())
    }

    #[test]
    fn a_track_call_as_the_sdks_send_it() {
        let e = parse(json!({
            "type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m-1",
            "properties": {"revenue": 42.5, "product": {"sku": "a"}},
            "timestamp": "2023-11-14T22:13:20.000Z", "context": {"library": {"name": "analytics-python"}}
        }))
        .expect("valid");
        assert_eq!(e.kind, EventType::Track);
        assert_eq!(e.name.as_deref(), Some("Order Completed"));
        assert_eq!(e.key(), "u1");
        assert_eq!(e.timestamp_ms, RECEIVED - 10_000);
        assert_eq!(e.property("revenue"), Some(&json!(42.5)));
        assert_eq!(e.property("product.sku"), Some(&json!("a")));
        assert_eq!(e.property("product.missing"), None);
    }

    #[test]
    fn client_clock_skew_is_corrected_as_segment_does() {
        // The client's clock is an hour ahead: its timestamp and sentAt both are.
        let e = parse(json!({
            "type": "page", "anonymousId": "a1", "messageId": "m-2",
            "timestamp": "2023-11-14T23:13:25Z", "sentAt": "2023-11-14T23:13:28Z"
        }))
        .expect("valid");
        assert_eq!(
            e.timestamp_ms,
            RECEIVED - 3_000,
            "receivedAt - (sentAt - timestamp)"
        );
        assert_eq!(e.key(), "a1");
        let none = parse(json!({"type": "page", "userId": "u", "messageId": "m"})).expect("valid");
        assert_eq!(none.timestamp_ms, RECEIVED, "no timestamp: received at");
    }

    #[test]
    fn identify_traits_come_from_traits_and_context_traits() {
        let e = parse(json!({
            "type": "identify", "userId": "u1", "messageId": "m",
            "traits": {"plan": "gold"}, "context": {"traits": {"plan": "free", "email": "x@y"}}
        }))
        .expect("valid");
        assert_eq!(
            e.properties.get("plan"),
            Some(&json!("gold")),
            "top level wins"
        );
        assert_eq!(e.properties.get("email"), Some(&json!("x@y")));
    }

    #[test]
    fn every_defect_has_its_own_reason() {
        let cases = [
            (json!([1, 2]), EventDefect::NotAnObject),
            (
                json!({"type": "track", "event": "x"}),
                EventDefect::NoIdentity,
            ),
            (
                json!({"type": "bogus", "userId": "u"}),
                EventDefect::UnknownType {
                    got: "bogus".into(),
                },
            ),
            (
                json!({"type": "track", "userId": "u"}),
                EventDefect::MissingEventName,
            ),
            (
                json!({"type": "alias", "userId": "u"}),
                EventDefect::MissingPreviousId,
            ),
            (
                json!({"type": "track", "event": "x", "userId": "u", "timestamp": "yesterday"}),
                EventDefect::BadTimestamp {
                    field: "timestamp",
                    text: "yesterday".into(),
                },
            ),
            (
                json!({"type": "track", "event": "x", "userId": "u", "messageId": "m".repeat(101)}),
                EventDefect::MessageIdTooLong { len: 101, max: 100 },
            ),
            (
                json!({"type": "track", "event": "x", "userId": "u", "properties": [1]}),
                EventDefect::NotAnObjectField {
                    field: "properties",
                },
            ),
            (
                json!({"type": 7, "userId": "u"}),
                EventDefect::NotAString { field: "type" },
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(
                parse(event.clone()),
                Err(Error::InvalidEvent(expected)),
                "{event}"
            );
        }
    }

    #[test]
    fn a_missing_message_id_is_derived_deterministically() {
        let j = json!({"type": "track", "event": "x", "userId": "u", "properties": {"a": 1}});
        let a = parse(j.clone()).expect("valid");
        let b = parse(j).expect("valid");
        assert_eq!(a.message_id, b.message_id);
        assert!(a.message_id.starts_with("derived-"));
        let other =
            parse(json!({"type": "track", "event": "x", "userId": "u", "properties": {"a": 2}}))
                .expect("valid");
        assert_ne!(a.message_id, other.message_id);
    }

    #[test]
    fn the_endpoints_type_is_used_when_the_event_names_none() {
        let j = json!({"userId": "u", "event": "Signed Up"});
        let e = Event::from_segment(&j, Some(EventType::Track), RECEIVED, &Limits::default())
            .expect("valid");
        assert_eq!(e.kind, EventType::Track);
    }
}
