//! Size limits on everything a client can send, in one validated type.
//!
//! Guarantees: every limit has a default, `Limits::validate` rejects nonsensical settings (zero, or a frame
//! too small to carry the other limits), and each violation is a distinct [`Error`] variant so that it can be
//! counted and answered precisely. The frame limit is also the decoder's allocation budget (see
//! [`codec`](crate::wire::codec)), so no request can make a node allocate more than `max_frame_bytes` for its
//! decoded form.

use serde::{Deserialize, Serialize};

use crate::crdt::value::Value;
use crate::error::{truncate_for_error, Error, Result};

/// The hard ceiling on `max_frame_bytes` (16 MiB); configs above it are refused.
pub const FRAME_BYTES_CEILING: u32 = 16 * 1024 * 1024;

/// Configurable limits. Defaults suit behavioural profiles (a few hundred small features per user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum entity key length in bytes (UTF-8). Default 256.
    pub max_key_bytes: usize,
    /// Maximum feature name length in bytes. Default 128.
    pub max_feature_name_bytes: usize,
    /// Maximum size of a string value in bytes. Default 4096.
    pub max_value_bytes: usize,
    /// Maximum number of features (all kinds) per entity. Default 1024.
    pub max_features_per_entity: usize,
    /// Maximum number of concurrent siblings one flag may hold after a local write. Default 8.
    pub max_siblings: usize,
    /// Maximum items in one request (keys of a `get_many`, feature writes of a `put`/`increment`,
    /// projected feature names). Default 1000.
    pub max_batch: usize,
    /// Maximum payload of one frame in bytes; checked before anything is allocated. Default 4 MiB.
    pub max_frame_bytes: u32,
    /// Maximum size of one ingested event (its JSON) in bytes. Default 32 KiB (Segment's limit).
    pub max_event_bytes: usize,
    /// Maximum length of an event's message id in bytes. Default 100 (Segment's limit).
    pub max_message_id_bytes: usize,
    /// How long (event time) an ingested message id is remembered for deduplication. Default 24 h.
    pub dedup_window_ms: u64,
    /// Most message ids remembered per profile; beyond it the oldest are forgotten. Default 1024.
    pub max_seen_ids: u32,
    /// Most entries (writers) in the causal context a flag write carries. Default 256.
    pub max_context_entries: usize,
    /// Most identities (anonymous ids, earlier user ids) linked into one canonical profile; each is kept
    /// as a copy of the profile it had when it was linked. Default 32.
    pub max_identity_links: usize,
    /// Most identity redirects one event follows before it is refused (chains of aliases). Default 8.
    pub max_identity_depth: u8,
    /// The sketch size K of `distinct_count` features: values hashed and kept per node and bucket, so
    /// counts are exact below K and estimated (relative standard error about `1 / sqrt(K - 2)`) at and
    /// above it. Each slot holds at most K 8-byte hashes. Default 256; between 2 and
    /// [`MAX_DISTINCT_EXACT_CEILING`].
    pub max_distinct_exact: u32,
    /// Most buckets one window feature may hold: its span over its bucket width (rounded up), checked
    /// when the definitions are compiled. A window keeps its buckets in one sorted vector per profile, so
    /// this bounds both its memory and the cost of a late event's insert. Default 10,080 (a week of minutes;
    /// a definition's default bucket is a thirtieth of its window).
    pub max_window_buckets: usize,
    /// The byte budget of a node's dead-letter queue (its stored records). Beyond it new entries are
    /// refused and counted (`dlq_overflow`). Default 64 MiB.
    pub max_dead_letter_bytes: u64,
    /// Most entries in a node's dead-letter queue. Default 100,000.
    pub max_dead_letters: u64,
    /// Longest segment rule (its CEL text) in bytes. Default 4096.
    pub max_rule_bytes: usize,
    /// Deepest nesting of a segment rule: brackets and `?:` conditionals in its text, and levels of its
    /// parsed expression. The `cel` interpreter recurses once per level, so this bounds the stack an
    /// evaluation takes. Default 24; between 1 and [`RULE_DEPTH_CEILING`].
    pub max_rule_depth: usize,
    /// Most segments defined at once. Default 256.
    pub max_segments: usize,
    /// Most candidate instants one [`next_flip`](crate::segment::timer::next_flip) evaluates a rule at
    /// before it settles for a re-check deadline. Default 1024.
    pub max_flip_candidates: usize,
    /// Most entries a node's segment change log keeps; older ones are dropped (a subscriber whose cursor
    /// is older is told of the gap). Default 100,000.
    pub max_change_log_entries: usize,
    /// Most users a node holds a segment timer for at once; beyond it new timers are dropped and counted
    /// (`segment_timers_dropped`), and those users' time-driven transitions wait for their next event.
    /// Default 1,000,000.
    pub max_segment_timers: usize,
    /// Bytes after which a node's write-ahead log closes its segment file and folds it into the main
    /// store (also the most a restart replays from one segment). Default 32 MiB.
    pub wal_segment_bytes: u64,
    /// Most bytes of write-ahead log entries a node buffers in memory between flushes; a write beyond
    /// it is refused (not acknowledged) and counted (`wal_refused_full`). Default 64 MiB.
    pub max_wal_buffer_bytes: u64,
    /// Most peer messages a node sends on one QUIC stream (queued messages for one peer go out together
    /// rather than a stream each); at most [`PEER_BATCH_MESSAGES_CEILING`]. Default 64.
    pub max_peer_batch_messages: usize,
    /// Bytes after which a node closes a batch of peer messages (the first message of a batch goes alone
    /// whatever its size, up to `max_frame_bytes`). Default 256 KiB.
    pub max_peer_batch_bytes: usize,
}

/// The ceiling on `max_peer_batch_messages`, and the most peer messages any node accepts on one stream:
/// nodes with different settings still understand each other's batches.
pub const PEER_BATCH_MESSAGES_CEILING: usize = 1024;

/// The ceiling on `max_rule_depth`: a rule this deep evaluates within 1.3 MB of stack even in a debug build
/// (measured about 38 KB per level there), well inside the 2 MiB of a test or tokio worker thread.
pub const RULE_DEPTH_CEILING: usize = 32;

/// The ceiling on `max_distinct_exact` (65,536 hashes: 512 KiB per window slot); configs above it are
/// refused.
pub const MAX_DISTINCT_EXACT_CEILING: u32 = 1 << 16;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 256,
            max_feature_name_bytes: 128,
            max_value_bytes: 4096,
            max_features_per_entity: 1024,
            max_siblings: 8,
            max_batch: 1000,
            max_frame_bytes: 4 * 1024 * 1024,
            max_event_bytes: 32 * 1024,
            max_message_id_bytes: 100,
            dedup_window_ms: 24 * 60 * 60 * 1000,
            max_seen_ids: 1024,
            max_context_entries: 256,
            max_identity_links: 32,
            max_identity_depth: 8,
            max_distinct_exact: 256,
            max_window_buckets: 7 * 24 * 60,
            max_dead_letter_bytes: 64 * 1024 * 1024,
            max_dead_letters: 100_000,
            max_rule_bytes: 4096,
            max_rule_depth: 24,
            max_segments: 256,
            max_flip_candidates: 1024,
            max_change_log_entries: 100_000,
            max_segment_timers: 1_000_000,
            wal_segment_bytes: 32 * 1024 * 1024,
            max_wal_buffer_bytes: 64 * 1024 * 1024,
            max_peer_batch_messages: 64,
            max_peer_batch_bytes: 256 * 1024,
        }
    }
}

impl Limits {
    /// Checks that the limits are usable together.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_key_bytes", self.max_key_bytes),
            ("max_feature_name_bytes", self.max_feature_name_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_features_per_entity", self.max_features_per_entity),
            ("max_siblings", self.max_siblings),
            ("max_batch", self.max_batch),
            ("max_event_bytes", self.max_event_bytes),
            ("max_message_id_bytes", self.max_message_id_bytes),
            ("max_seen_ids", self.max_seen_ids as usize),
            ("max_context_entries", self.max_context_entries),
            ("max_identity_links", self.max_identity_links),
            ("max_identity_depth", usize::from(self.max_identity_depth)),
            (
                "max_dead_letter_bytes",
                usize::try_from(self.max_dead_letter_bytes).unwrap_or(usize::MAX),
            ),
            (
                "max_dead_letters",
                usize::try_from(self.max_dead_letters).unwrap_or(usize::MAX),
            ),
            ("max_window_buckets", self.max_window_buckets),
            ("max_rule_bytes", self.max_rule_bytes),
            ("max_rule_depth", self.max_rule_depth),
            ("max_segments", self.max_segments),
            ("max_flip_candidates", self.max_flip_candidates),
            ("max_change_log_entries", self.max_change_log_entries),
            ("max_segment_timers", self.max_segment_timers),
            ("max_peer_batch_messages", self.max_peer_batch_messages),
            ("max_peer_batch_bytes", self.max_peer_batch_bytes),
            (
                "wal_segment_bytes",
                usize::try_from(self.wal_segment_bytes).unwrap_or(usize::MAX),
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::InvalidLimit {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if !(2..=MAX_DISTINCT_EXACT_CEILING).contains(&self.max_distinct_exact) {
            return Err(Error::InvalidLimit {
                name: "max_distinct_exact",
                reason: format!(
                    "must be between 2 and {MAX_DISTINCT_EXACT_CEILING} (the estimate above it divides by K - 1)"
                ),
            });
        }
        if self.max_rule_depth > RULE_DEPTH_CEILING {
            return Err(Error::InvalidLimit {
                name: "max_rule_depth",
                reason: format!(
                    "must be at most {RULE_DEPTH_CEILING} (each level takes stack when a rule is evaluated)"
                ),
            });
        }
        if self.max_frame_bytes > FRAME_BYTES_CEILING {
            return Err(Error::InvalidLimit {
                name: "max_frame_bytes",
                reason: format!("must be at most {FRAME_BYTES_CEILING}"),
            });
        }
        if self.max_peer_batch_messages > PEER_BATCH_MESSAGES_CEILING {
            return Err(Error::InvalidLimit {
                name: "max_peer_batch_messages",
                reason: format!(
                    "must be at most {PEER_BATCH_MESSAGES_CEILING} (what every node accepts on one stream)"
                ),
            });
        }
        // The log's buffer must hold any record a frame can carry, or such a write could never be stored.
        let wal_floor = u64::from(self.max_frame_bytes) + 1024;
        if self.max_wal_buffer_bytes < wal_floor {
            return Err(Error::InvalidLimit {
                name: "max_wal_buffer_bytes",
                reason: format!(
                    "must be at least {wal_floor} (max_frame_bytes plus an entry header), so that \
                     every record fits"
                ),
            });
        }
        // A frame must at least hold one maximal key plus one maximal value.
        let floor = self.max_key_bytes + self.max_feature_name_bytes + self.max_value_bytes + 1024;
        if (self.max_frame_bytes as usize) < floor {
            return Err(Error::InvalidLimit {
                name: "max_frame_bytes",
                reason: format!(
                    "must be at least {floor} to carry one maximal key, name and value"
                ),
            });
        }
        Ok(())
    }

    /// Checks an entity key: not empty, within the length limit, no control characters (they break logs,
    /// terminals and the text tools operators use on keys).
    pub fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        if key.chars().any(char::is_control) {
            return Err(Error::InvalidKey {
                key: truncate_for_error(&key.escape_default().to_string()),
            });
        }
        Ok(())
    }

    /// Checks a time to live: zero would be acknowledged and invisible at once, so it is refused.
    pub fn check_ttl(&self, name: &str, ttl_ms: Option<u64>) -> Result<()> {
        if ttl_ms == Some(0) {
            return Err(Error::ZeroTtl {
                name: truncate_for_error(name),
            });
        }
        Ok(())
    }

    /// Checks the size of a flag write's causal context.
    pub fn check_context(&self, entries: usize) -> Result<()> {
        if entries > self.max_context_entries {
            return Err(Error::ContextTooLarge {
                len: entries,
                max: self.max_context_entries,
            });
        }
        Ok(())
    }

    /// Checks a feature name: length, then the allowed characters `[A-Za-z0-9_.:-]`.
    pub fn check_feature_name(&self, name: &str) -> Result<()> {
        if name.len() > self.max_feature_name_bytes {
            return Err(Error::FeatureNameTooLong {
                len: name.len(),
                max: self.max_feature_name_bytes,
            });
        }
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if !ok {
            return Err(Error::InvalidFeatureName {
                name: truncate_for_error(name),
            });
        }
        Ok(())
    }

    /// Checks a gauge value: string size and finiteness of floats.
    pub fn check_value(&self, name: &str, value: &Value) -> Result<()> {
        match value {
            Value::Str(s) if s.len() > self.max_value_bytes => Err(Error::ValueTooLarge {
                name: truncate_for_error(name),
                len: s.len(),
                max: self.max_value_bytes,
            }),
            Value::F64(f) if !f.is_finite() => Err(Error::NonFiniteValue {
                name: truncate_for_error(name),
            }),
            _ => Ok(()),
        }
    }

    /// Checks the number of items in one request.
    pub fn check_batch(&self, len: usize, what: &'static str) -> Result<()> {
        if len == 0 {
            return Err(Error::EmptyBatch { what });
        }
        if len > self.max_batch {
            return Err(Error::BatchTooLarge {
                len,
                max: self.max_batch,
            });
        }
        Ok(())
    }

    /// Checks the feature count an entity would have after a write.
    pub fn check_feature_count(&self, count: usize) -> Result<()> {
        if count > self.max_features_per_entity {
            return Err(Error::TooManyFeatures {
                count,
                max: self.max_features_per_entity,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn each_violation_has_its_own_error() {
        let l = Limits::default();
        assert_eq!(l.check_key(""), Err(Error::EmptyKey));
        assert!(matches!(
            l.check_key(&"k".repeat(257)),
            Err(Error::KeyTooLong { len: 257, .. })
        ));
        assert!(matches!(
            l.check_feature_name(&"f".repeat(129)),
            Err(Error::FeatureNameTooLong { .. })
        ));
        assert!(matches!(
            l.check_feature_name("a b"),
            Err(Error::InvalidFeatureName { .. })
        ));
        assert!(matches!(
            l.check_feature_name(""),
            Err(Error::InvalidFeatureName { .. })
        ));
        assert!(matches!(
            l.check_value("f", &Value::Str("x".repeat(4097).into())),
            Err(Error::ValueTooLarge { .. })
        ));
        assert!(matches!(
            l.check_value("f", &Value::F64(f64::NAN)),
            Err(Error::NonFiniteValue { .. })
        ));
        assert!(matches!(
            l.check_batch(1001, "keys"),
            Err(Error::BatchTooLarge { .. })
        ));
        assert!(matches!(
            l.check_batch(0, "keys"),
            Err(Error::EmptyBatch { .. })
        ));
        assert!(matches!(
            l.check_feature_count(1025),
            Err(Error::TooManyFeatures { .. })
        ));
        assert_eq!(l.check_feature_name("cart_value:30m.v-2"), Ok(()));
    }

    #[test]
    fn nonsensical_limits_are_refused() {
        let l = Limits {
            max_siblings: 0,
            ..Limits::default()
        };
        assert!(matches!(
            l.validate(),
            Err(Error::InvalidLimit {
                name: "max_siblings",
                ..
            })
        ));
        for k in [0, 1, MAX_DISTINCT_EXACT_CEILING + 1] {
            let l = Limits {
                max_distinct_exact: k,
                ..Limits::default()
            };
            assert!(
                matches!(
                    l.validate(),
                    Err(Error::InvalidLimit {
                        name: "max_distinct_exact",
                        ..
                    })
                ),
                "{k}"
            );
        }
        for k in [2, MAX_DISTINCT_EXACT_CEILING] {
            let l = Limits {
                max_distinct_exact: k,
                ..Limits::default()
            };
            assert_eq!(l.validate(), Ok(()), "{k}");
        }
        for (depth, ok) in [
            (0, false),
            (1, true),
            (RULE_DEPTH_CEILING, true),
            (RULE_DEPTH_CEILING + 1, false),
        ] {
            let l = Limits {
                max_rule_depth: depth,
                ..Limits::default()
            };
            assert_eq!(l.validate().is_ok(), ok, "max_rule_depth {depth}");
        }
        let l = Limits {
            max_frame_bytes: 100,
            ..Limits::default()
        };
        assert!(matches!(
            l.validate(),
            Err(Error::InvalidLimit {
                name: "max_frame_bytes",
                ..
            })
        ));
    }
}
