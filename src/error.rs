//! The one error type of the core crate.
//!
//! Every validation failure has its own variant, so that a node can count and report each kind of bad input
//! separately and a client can react to each (retry, shrink the batch, resolve siblings, ...). Each error maps
//! to a stable [`ErrorCode`](crate::wire::client::ErrorCode) that travels on the wire; that mapping lives
//! with the protocol (`From<&Error> for ErrorCode`), so this module is a leaf: it imports nothing of the crate.

/// Everything the core can refuse or fail at.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The entity key is empty.
    #[error("the key is empty")]
    EmptyKey,
    /// The entity key is longer than the configured limit.
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLong {
        /// Length of the offending key in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The entity key contains control characters.
    #[error("invalid key {key:?}: control characters are not allowed")]
    InvalidKey {
        /// The offending key, escaped and truncated.
        key: String,
    },
    /// A write asked for a time to live of 0 (it would be invisible the moment it is acknowledged).
    #[error("feature {name:?}: a TTL must be at least 1 ms")]
    ZeroTtl {
        /// The feature.
        name: String,
    },
    /// A flag write's causal context names more writers than the limit.
    #[error("causal context of {len} entries, the limit is {max}")]
    ContextTooLarge {
        /// Entries in the context.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A feature name is empty or contains characters outside `[A-Za-z0-9_.:-]`.
    #[error("invalid feature name {name:?}: use 1 or more of [A-Za-z0-9_.:-]")]
    InvalidFeatureName {
        /// The offending name (truncated to the name limit).
        name: String,
    },
    /// A feature name is longer than the configured limit.
    #[error("feature name is {len} bytes, the limit is {max}")]
    FeatureNameTooLong {
        /// Length of the offending name in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A string value is larger than the configured limit.
    #[error("value of feature {name:?} is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// The feature the value was written to.
        name: String,
        /// Size of the value in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A float value is NaN or infinite; such values have no total order and cannot be compared safely.
    #[error("value of feature {name:?} is not a finite number")]
    NonFiniteValue {
        /// The feature the value was written to.
        name: String,
    },
    /// The write would give the entity more features than the configured limit.
    #[error("entity would have {count} features, the limit is {max}")]
    TooManyFeatures {
        /// Feature count after the write.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The flag write would leave more concurrent siblings than the configured limit. Read the flag and write
    /// with the returned context to resolve them.
    #[error("flag {name:?} would have {count} siblings, the limit is {max}: read it and write with its context")]
    TooManySiblings {
        /// The flag.
        name: String,
        /// Sibling count the write would have produced.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A request carries more keys or feature writes than the configured batch limit.
    #[error("batch of {len} items, the limit is {max}")]
    BatchTooLarge {
        /// Items in the request.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A request carries no items where at least one is needed.
    #[error("empty batch: {what}")]
    EmptyBatch {
        /// What was empty.
        what: &'static str,
    },
    /// A frame announces a payload larger than the configured maximum; nothing was allocated for it.
    #[error("frame of {len} bytes, the limit is {max}")]
    FrameTooLarge {
        /// Announced payload length.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A frame carries a protocol version this build does not speak.
    #[error("unsupported protocol version {got}, this build speaks {supported}")]
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// A frame or record could not be decoded (bad encoding, bad UTF-8, unknown variant, trailing bytes, or
    /// a length beyond the decode limit).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded ("request", "response", "record").
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A value could not be encoded (should not happen for validated values).
    #[error("encoding failed: {0}")]
    Encode(String),
    /// A remote timestamp is further ahead of the local physical clock than `max_clock_skew` allows.
    #[error("timestamp {remote_ms} ms is {ahead_ms} ms ahead of the local clock, the limit is {max_ms} ms")]
    ClockSkew {
        /// The remote wall-clock reading.
        remote_ms: u64,
        /// How far ahead of the local clock it is.
        ahead_ms: u64,
        /// The configured maximum skew.
        max_ms: u64,
    },
    /// A feature name is already used by a feature of another kind on this entity.
    #[error("feature {name:?} is a {existing}, not a {requested}")]
    KindMismatch {
        /// The feature.
        name: String,
        /// The kind it already has.
        existing: &'static str,
        /// The kind the request needs.
        requested: &'static str,
    },
    /// A counter would leave the range of its representation.
    #[error("counter {name:?} overflowed")]
    CounterOverflow {
        /// The counter.
        name: String,
    },
    /// An event is older than its window's span (relative to the newest event the window holds): it is
    /// counted in no window.
    #[error("event at {at_ms} ms is older than the span of window {name:?}")]
    LateEvent {
        /// The window feature.
        name: String,
        /// The event time.
        at_ms: u64,
    },
    /// An ingested event is invalid; the defect says why.
    #[error("invalid event: {0}")]
    InvalidEvent(EventDefect),
    /// A feature definition is invalid.
    #[error("feature definition {feature:?}, field `{field}`: {reason}")]
    InvalidDefinition {
        /// The feature (or its position, `#N`, if it has no usable name).
        feature: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// This node has left the cluster and refuses client writes; send them to a current member.
    #[error("this node has left the cluster; send the write to a current member")]
    NodeLeft,
    /// The write asks for more acknowledging replicas (W) than the key has.
    #[error("W={quorum} exceeds the {replicas} replicas of the key")]
    QuorumTooLarge {
        /// The requested W.
        quorum: usize,
        /// Replicas the key has.
        replicas: usize,
    },
    /// A causal-context token could not be parsed.
    #[error("invalid causal context {token:?}: expected `actor:counter,...` (actor: `node` or `node.incarnation`)")]
    InvalidContext {
        /// The offending token (truncated).
        token: String,
    },
    /// A marker's text form could not be parsed.
    #[error("invalid version {text:?}: expected `<wall_ms>.<logical>@<node>`")]
    InvalidMarker {
        /// The offending text (truncated).
        text: String,
    },
    /// A node id is empty, too long, or has characters outside `[a-z0-9-]`.
    #[error("invalid node id {id:?}: use 1 to 63 of [a-z0-9-]")]
    InvalidNodeId {
        /// The offending id (truncated).
        id: String,
    },
    /// A node id this process has not seen arrived when the process already holds
    /// [`MAX_NODE_NAMES`](crate::compact::MAX_NODE_NAMES) node names (node ids are indices into a
    /// bounded process-wide table; see `compact::node_name`).
    #[error("node id {id:?} refused: this process already holds {limit} node names")]
    TooManyNodeIds {
        /// The refused id (truncated).
        id: String,
        /// The bound.
        limit: usize,
    },
    /// An identity link would make an id an alias of itself (directly, or through a chain of links).
    #[error(
        "identity loop: {id:?} cannot be linked into {into:?}, which is already linked into it"
    )]
    IdentityLoop {
        /// The id that was to be linked (truncated).
        id: String,
        /// The canonical id it was to be linked into (truncated).
        into: String,
    },
    /// An identity link names an id that is already linked into another canonical id.
    #[error("identity conflict: {id:?} is already linked into {linked_to:?}, not {into:?}")]
    IdentityConflict {
        /// The id that was to be linked (truncated).
        id: String,
        /// Where it is linked already (truncated).
        linked_to: String,
        /// Where it was to be linked (truncated).
        into: String,
    },
    /// A profile already holds the most linked identities `max_identity_links` allows.
    #[error("{key:?} already has {count} linked identities, the limit is {max}")]
    TooManyIdentityLinks {
        /// The canonical id (truncated).
        key: String,
        /// Linked identities it would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An event followed more identity redirects than `max_identity_depth` allows (a chain too long, or a
    /// loop created by concurrent links during a partition).
    #[error("identity chain of {key:?} is longer than {max} links")]
    IdentityTooDeep {
        /// The key the event had reached (truncated).
        key: String,
        /// The limit.
        max: u8,
    },
    /// A configuration value is out of range.
    #[error("invalid limit {name}: {reason}")]
    InvalidLimit {
        /// The limit's config key.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A segment rule is not valid: a CEL syntax error, or a `duration`/`timestamp` literal CEL cannot
    /// read (`duration("7d")`: CEL has no day unit). The position is 1-based, columns in characters.
    #[error("segment {segment:?}: {reason} (line {line}, column {column} of the {})", position_of(*.in_file))]
    InvalidRule {
        /// The segment (truncated).
        segment: String,
        /// Line of the error.
        line: u32,
        /// Column of the error, in characters.
        column: u32,
        /// Whether the position is in the definitions file (`true`) or in the rule text (`false`: the rule
        /// did not come from a file, or its string has escapes, so its characters do not map one to one).
        in_file: bool,
        /// What is wrong, as the CEL parser says it.
        reason: String,
    },
    /// A segment rule is longer than `max_rule_bytes`.
    #[error("segment {segment:?}: the rule is {len} bytes, the limit is {max}")]
    RuleTooLong {
        /// The segment (truncated).
        segment: String,
        /// The rule's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A segment rule nests deeper than `max_rule_depth` (brackets and conditionals in its text, or levels
    /// of its parsed expression: `x + x + ... + x` is as deep as it is long).
    #[error("segment {segment:?}: the rule nests {depth} deep, the limit is {max}")]
    RuleTooDeep {
        /// The segment (truncated).
        segment: String,
        /// How deep it nests (at least; counting stops past the limit).
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// More segments than `max_segments`.
    #[error("{count} segments, the limit is {max}")]
    TooManySegments {
        /// Segments defined.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The segment definitions are malformed: not TOML, an unknown or missing field, or a segment name that
    /// is invalid or defined twice. The position is in the definitions text, 1-based, columns in
    /// characters (`0, 0` when the parser gave none).
    #[error("segment definitions, line {line}, column {column}: {reason}")]
    InvalidSegments {
        /// Line of the error.
        line: u32,
        /// Column of the error, in characters.
        column: u32,
        /// What is wrong.
        reason: String,
    },
    /// A segment rule failed while it was evaluated: a type error found at run time (comparing a string
    /// with a number, adding an int to a double), a division by zero, an overflow, or a result that is not
    /// a bool. A feature that is absent is not an error (see `segment`).
    #[error("segment {segment:?}: the rule failed: {reason}")]
    RuleEvaluation {
        /// The segment (truncated).
        segment: String,
        /// What went wrong, as the CEL interpreter says it.
        reason: String,
    },
}

/// Where an [`Error::InvalidRule`] position counts from.
fn position_of(in_file: bool) -> &'static str {
    if in_file {
        "file"
    } else {
        "rule"
    }
}

/// What is wrong with an ingested event (one variant per defect, so each is counted and dead-lettered with
/// its reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDefect {
    /// The event is not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// The event carries neither `userId` nor `anonymousId`.
    #[error("neither userId nor anonymousId")]
    NoIdentity,
    /// A field that must be a string is something else.
    #[error("`{field}` must be a string")]
    NotAString {
        /// The field.
        field: &'static str,
    },
    /// A field that must be an object is something else.
    #[error("`{field}` must be an object")]
    NotAnObjectField {
        /// The field.
        field: &'static str,
    },
    /// The `type` is missing or not one this store knows.
    #[error("unknown type {got:?}")]
    UnknownType {
        /// The type given (truncated).
        got: String,
    },
    /// A `track` event without an `event` name.
    #[error("a track call needs `event`")]
    MissingEventName,
    /// An `alias` call without `previousId`.
    #[error("an alias call needs `previousId`")]
    MissingPreviousId,
    /// A timestamp is not RFC 3339 (ISO 8601 with a time zone).
    #[error("`{field}` is not an RFC 3339 timestamp: {text:?}")]
    BadTimestamp {
        /// The field.
        field: &'static str,
        /// The text (truncated).
        text: String,
    },
    /// The message id is longer than the limit.
    #[error("messageId is {len} bytes, the limit is {max}")]
    MessageIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The event is larger than the limit.
    #[error("the event is {len} bytes, the limit is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A property that a feature definition reads has the wrong type.
    #[error("feature {feature:?} reads `{path}`, which is not a {expected}")]
    WrongPropertyType {
        /// The feature.
        feature: String,
        /// The property path.
        path: String,
        /// What the feature needs.
        expected: &'static str,
    },
}

/// Truncates untrusted text before it is echoed back in an error, so errors stay small.
pub(crate) fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
