//! The dead-letter queue, sans-IO: what a node keeps of an event it could not ingest, how that is stored,
//! how much of it a node keeps, and how a kept event is replayed.
//!
//! Guarantees:
//! - A [`DeadLetter`] holds the refusal's wire [`ErrorCode`] and message, the source (an HTTP write key's
//!   source name, `quic`, or `forward from NODE`), the receiving time, the event's key and message id when
//!   known, and its raw JSON payload, capped at `max_event_bytes` (a capped payload is marked
//!   `truncated`). An event the owner refused (already parsed) is kept as its canonical Segment JSON
//!   ([`segment_json`]), which parses back to the same event (same message id, same event time).
//! - Stored as a versioned record (`codec::encode_dead_letter`, like every metadata record) named
//!   `dlq/<id, 20 digits>` ([`record_name`]) so a name scan lists entries in id order. Decoding stored
//!   bytes never panics: a corrupt record is a typed [`Error::Malformed`]
//!   (`codec::decode_dead_letter`), which the node counts and skips.
//! - Bounded: [`admit`] decides, from the queue's current [`Usage`] and `Limits::max_dead_letter_bytes` /
//!   `max_dead_letters`, whether a new entry is kept; a full queue refuses new entries (the node counts
//!   them as `dlq_overflow`), it never evicts older ones.
//! - Replay ([`DeadLetter::replay_event`]) parses the payload again with the receiving time it was first
//!   received at, so the event time (Segment's skew correction) and a derived message id come out as they
//!   did the first time; the node then runs it through its normal ingest path, deduplicated by message id.
//!
//! Caveat: the queue is node-local (an operator's queue, like a Kafka Connect worker's dead-letter topic):
//! nothing here is replicated or merged.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::ingest::{Event, EventType};
use crate::limits::Limits;
use crate::wire::reply::ErrorCode;

/// The prefix of every dead-letter record's name in a node's metadata.
pub const RECORD_PREFIX: &str = "dlq/";

/// The stored name of dead letter `id`: `dlq/` and the id zero-padded to 20 digits (names sort by id).
pub fn record_name(id: u64) -> String {
    format!("{RECORD_PREFIX}{id:020}")
}

/// The id a record name stands for, if it is a dead-letter record's name.
pub fn parse_record_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(RECORD_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One event a node could not ingest, as it keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The node's sequence number of the entry (ids are never reused on a node).
    pub id: u64,
    /// The refusal's wire code.
    pub code: ErrorCode,
    /// The refusal's message (the defect).
    pub reason: String,
    /// Where the event came from: an HTTP write key's source name, `quic`, or `forward from NODE`.
    pub source: String,
    /// When the node first received it (Unix ms): replays parse the payload as of this time.
    pub received_ms: u64,
    /// The event's JSON text, at most `max_event_bytes` bytes.
    pub payload: String,
    /// Whether the payload was cut at `max_event_bytes` (such an entry cannot apply on replay).
    pub truncated: bool,
    /// The event's profile key, when it is known.
    pub key: Option<String>,
    /// The event's message id, when it is known.
    pub message_id: Option<String>,
}

/// A dead letter before the queue gave it an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The refusal's wire code.
    pub code: ErrorCode,
    /// The refusal's message.
    pub reason: String,
    /// Where the event came from.
    pub source: String,
    /// When it was received (Unix ms).
    pub received_ms: u64,
    /// The capped JSON text.
    pub payload: String,
    /// Whether the payload was capped.
    pub truncated: bool,
    /// The profile key, if known.
    pub key: Option<String>,
    /// The message id, if known.
    pub message_id: Option<String>,
}

/// `text` cut to at most `max` bytes (at a character boundary), and whether it was cut.
pub fn cap_payload(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

/// The canonical Segment JSON of a parsed event: type, ids, name, the event time as RFC 3339, properties
/// (or traits), `previousId`. [`Event::from_segment`] reads it back to the same event.
pub fn segment_json(event: &Event) -> Json {
    let mut obj = Map::new();
    let kind = match event.kind {
        EventType::Track => "track",
        EventType::Identify => "identify",
        EventType::Page => "page",
        EventType::Screen => "screen",
        EventType::Group => "group",
        EventType::Alias => "alias",
    };
    obj.insert("type".into(), Json::from(kind));
    obj.insert("messageId".into(), Json::from(event.message_id.clone()));
    if let Some(id) = &event.user_id {
        obj.insert("userId".into(), Json::from(id.clone()));
    }
    if let Some(id) = &event.anonymous_id {
        obj.insert("anonymousId".into(), Json::from(id.clone()));
    }
    if let Some(name) = &event.name {
        let field = if event.kind == EventType::Track {
            "event"
        } else {
            "name"
        };
        obj.insert(field.into(), Json::from(name.clone()));
    }
    if let Some(previous) = &event.previous_id {
        obj.insert("previousId".into(), Json::from(previous.clone()));
    }
    let nanos = i128::from(event.timestamp_ms) * 1_000_000;
    if let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        // RFC 3339 in UTC with milliseconds (event times are whole milliseconds).
        let text = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        );
        obj.insert("timestamp".into(), Json::from(text));
    }
    let field = match event.kind {
        EventType::Identify | EventType::Group => "traits",
        _ => "properties",
    };
    obj.insert(field.into(), Json::Object(event.properties.clone()));
    Json::Object(obj)
}

impl Capture {
    /// A capture of a raw JSON payload (capped at `max_event_bytes`).
    pub fn raw(
        code: ErrorCode,
        reason: impl Into<String>,
        source: impl Into<String>,
        received_ms: u64,
        payload: &str,
        limits: &Limits,
    ) -> Capture {
        let (payload, truncated) = cap_payload(payload, limits.max_event_bytes);
        Capture {
            code,
            reason: reason.into(),
            source: source.into(),
            received_ms,
            payload,
            truncated,
            key: None,
            message_id: None,
        }
    }

    /// A capture of a parsed event (kept as its [`segment_json`]), with its key and message id.
    pub fn event(
        event: &Event,
        code: ErrorCode,
        reason: impl Into<String>,
        source: impl Into<String>,
        received_ms: u64,
        limits: &Limits,
    ) -> Capture {
        let text = segment_json(event).to_string();
        Capture::raw(code, reason, source, received_ms, &text, limits)
            .with_ids(Some(event.key().to_owned()), Some(event.message_id.clone()))
    }

    /// The same capture with its key and message id (each cut to 256 bytes).
    pub fn with_ids(mut self, key: Option<String>, message_id: Option<String>) -> Capture {
        let cut = |s: String| cap_payload(&s, 256).0;
        self.key = key.filter(|k| !k.is_empty()).map(cut);
        self.message_id = message_id.filter(|m| !m.is_empty()).map(cut);
        self
    }

    /// The entry this capture becomes under `id`.
    pub fn into_entry(self, id: u64) -> DeadLetter {
        DeadLetter {
            id,
            code: self.code,
            reason: self.reason,
            source: self.source,
            received_ms: self.received_ms,
            payload: self.payload,
            truncated: self.truncated,
            key: self.key,
            message_id: self.message_id,
        }
    }
}

impl DeadLetter {
    /// The event to replay: the payload parsed again as of its first receiving time, then the key limit.
    /// A truncated payload, or one that is still invalid, is the error it was (or a new one).
    pub fn replay_event(&self, limits: &Limits) -> Result<Event> {
        let json: Json = serde_json::from_str(&self.payload).map_err(|e| Error::Malformed {
            what: "dead-letter payload",
            reason: if self.truncated {
                format!("truncated at {} bytes: {e}", self.payload.len())
            } else {
                e.to_string()
            },
        })?;
        let event = Event::from_segment(&json, None, self.received_ms, limits)?;
        limits.check_key(event.key())?;
        Ok(event)
    }
}

/// What a dead-letter queue holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Entries held.
    pub entries: u64,
    /// Bytes of their records (names and encodings).
    pub bytes: u64,
}

/// Whether a new entry is kept ([`admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Keep it.
    Admit,
    /// Refuse it (count it as an overflow): the reason.
    Full(String),
}

/// The bytes a record of `encoded_len` bytes takes in the budget: its encoding and its name.
pub fn record_bytes(encoded_len: usize) -> u64 {
    (encoded_len + RECORD_PREFIX.len() + 20) as u64
}

/// Decides whether an entry of `bytes` (see [`record_bytes`]) fits a queue that holds `usage`: at most
/// `max_dead_letters` entries and `max_dead_letter_bytes` bytes; a full queue refuses, never evicts.
pub fn admit(usage: Usage, bytes: u64, limits: &Limits) -> Admission {
    if usage.entries >= limits.max_dead_letters {
        return Admission::Full(format!(
            "the dead-letter queue holds {} entries, the limit is {}",
            usage.entries, limits.max_dead_letters
        ));
    }
    let total = usage.bytes.saturating_add(bytes);
    if total > limits.max_dead_letter_bytes {
        return Admission::Full(format!(
            "the dead-letter queue holds {} bytes, an entry of {bytes} more exceeds the limit of {}",
            usage.bytes, limits.max_dead_letter_bytes
        ));
    }
    Admission::Admit
}

/// One page of a node's dead-letter queue (answer to `Request::DeadLetters`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DeadLetterPage {
    /// The entries, in id order.
    pub entries: Vec<DeadLetter>,
    /// Ask again with `after = next` for more; `None` when this page ends the queue.
    pub next: Option<u64>,
    /// Entries in the queue.
    pub total_entries: u64,
    /// Bytes of the queue's records.
    pub total_bytes: u64,
}

/// What a replay did with one entry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Replayed {
    /// Applied now; the entry was removed.
    Applied,
    /// Already ingested (a replay before, or the event applied with late windows); removed.
    Duplicate,
    /// Refused again; the entry stays, with this reason.
    Refused {
        /// The wire code.
        code: ErrorCode,
        /// The reason.
        message: String,
    },
    /// Not applied for a retryable reason (owner unavailable, storage); the entry stays unchanged.
    Retry {
        /// The wire code.
        code: ErrorCode,
        /// The reason.
        message: String,
    },
    /// No entry of this id.
    Missing,
}

/// One entry's replay outcome.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ReplayOutcome {
    /// The entry.
    pub id: u64,
    /// What became of it.
    #[serde(flatten)]
    pub result: Replayed,
}

/// Answer to `Request::ReplayDeadLetters`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ReplayReport {
    /// One outcome per entry replayed, in id order.
    pub outcomes: Vec<ReplayOutcome>,
    /// For a replay of every entry: more entries follow; ask again with `after = next`.
    pub next: Option<u64>,
}

/// Answer to `Request::PurgeDeadLetters`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Purged {
    /// Entries removed.
    pub removed: u64,
    /// Asked-for ids that had no entry.
    pub missing: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RECEIVED: u64 = 1_700_000_010_000;

    fn entry(id: u64, payload: &str) -> DeadLetter {
        Capture::raw(
            ErrorCode::InvalidRequest,
            "invalid event: neither userId nor anonymousId",
            "web",
            RECEIVED,
            payload,
            &Limits::default(),
        )
        .with_ids(None, Some("m-1".into()))
        .into_entry(id)
    }

    #[test]
    fn names_sort_by_id_and_parse_back() {
        assert_eq!(record_name(7), "dlq/00000000000000000007");
        assert!(record_name(9) < record_name(10));
        assert_eq!(parse_record_name(&record_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "dlq/7",
            "dlq/0000000000000000000x",
            "hint/n1/k",
            "dlq/",
            "membership",
        ] {
            assert_eq!(parse_record_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn payloads_are_capped_at_a_char_boundary() {
        let limits = Limits {
            max_event_bytes: 5,
            ..Limits::default()
        };
        let c = Capture::raw(
            ErrorCode::LimitExceeded,
            "big",
            "web",
            1,
            "abcdé-more",
            &limits,
        );
        assert_eq!((c.payload.as_str(), c.truncated), ("abcd", true));
        let c = Capture::raw(ErrorCode::LimitExceeded, "ok", "web", 1, "abc", &limits);
        assert_eq!((c.payload.as_str(), c.truncated), ("abc", false));
        let e = c.into_entry(1);
        let truncated = DeadLetter {
            payload: "{\"type\":".into(),
            truncated: true,
            ..e
        };
        assert!(matches!(
            truncated.replay_event(&Limits::default()),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn a_refused_event_kept_as_segment_json_replays_to_the_same_event() {
        let limits = Limits::default();
        for raw in [
            json!({"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m-1",
                   "properties": {"revenue": "twelve"}, "timestamp": "2023-11-14T22:13:20.123Z",
                   "sentAt": "2023-11-14T22:13:25Z"}),
            json!({"type": "identify", "anonymousId": "a-1", "traits": {"plan": "gold"}}),
            json!({"type": "page", "userId": "u", "name": "Home", "properties": {}}),
            json!({"type": "alias", "userId": "u", "previousId": "a-1"}),
        ] {
            let event = Event::from_segment(&raw, None, RECEIVED, &limits).expect("valid");
            let capture = Capture::event(
                &event,
                ErrorCode::InvalidRequest,
                "wrong type",
                "forward from n2",
                RECEIVED + 50,
                &limits,
            );
            assert_eq!(capture.key.as_deref(), Some(event.key()));
            assert_eq!(
                capture.message_id.as_deref(),
                Some(event.message_id.as_str())
            );
            let replayed = capture.into_entry(1).replay_event(&limits).expect("parses");
            assert_eq!(replayed, event);
        }
    }

    #[test]
    fn a_raw_payload_replays_as_of_its_receiving_time() {
        // With sentAt the event time depends on receivedAt: a replay days later gets the same time.
        let raw = json!({"type": "track", "event": "x", "userId": "u", "messageId": "m",
                         "timestamp": "2023-11-14T22:13:20Z", "sentAt": "2023-11-14T22:13:25Z"});
        let limits = Limits::default();
        let first = Event::from_segment(&raw, None, RECEIVED, &limits).expect("valid");
        let e = entry(1, &raw.to_string());
        assert_eq!(e.replay_event(&limits).expect("valid"), first);
        let invalid = entry(2, r#"{"type":"track","event":"x"}"#);
        assert!(matches!(
            invalid.replay_event(&limits),
            Err(Error::InvalidEvent(_))
        ));
    }

    #[test]
    fn a_full_queue_refuses_new_entries_by_count_and_by_bytes() {
        let limits = Limits {
            max_dead_letters: 2,
            max_dead_letter_bytes: 1000,
            ..Limits::default()
        };
        let empty = Usage::default();
        assert_eq!(admit(empty, 1000, &limits), Admission::Admit);
        assert!(matches!(admit(empty, 1001, &limits), Admission::Full(_)));
        let one = Usage {
            entries: 1,
            bytes: 600,
        };
        assert_eq!(admit(one, 400, &limits), Admission::Admit);
        assert!(matches!(admit(one, 401, &limits), Admission::Full(_)));
        let two = Usage {
            entries: 2,
            bytes: 10,
        };
        assert!(matches!(admit(two, 1, &limits), Admission::Full(m) if m.contains("2 entries")));
        let huge = Usage {
            entries: 0,
            bytes: u64::MAX,
        };
        assert!(matches!(admit(huge, u64::MAX, &limits), Admission::Full(_)));
        assert!(record_bytes(100) > 100, "the name counts");
    }
}
