//! Typed error replies: the stable [`ErrorCode`]s that travel on the wire, and the mapping from the core's
//! [`Error`] to them (it lives here, with the protocol, so the error type itself depends on nothing).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, EventDefect};

/// A typed error reply.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ErrorReply {
    /// What kind of error.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Stable error codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed in content (empty key, bad name, bad context, ...).
    InvalidRequest,
    /// A size limit was exceeded.
    LimitExceeded,
    /// A flag has too many siblings; resolve them by writing with the read context.
    TooManySiblings,
    /// The frame announced more bytes than the node accepts.
    FrameTooLarge,
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion,
    /// The frame could not be decoded.
    MalformedFrame,
    /// A timestamp was too far in the future.
    ClockSkew,
    /// The feature exists with another kind.
    KindMismatch,
    /// A counter would overflow.
    CounterOverflow,
    /// The node could not make the write durable; it was not acknowledged and may or may not be applied.
    Storage,
    /// The node is shutting down or overloaded; retry elsewhere or later.
    Unavailable,
    /// A bug or unexpected condition on the node.
    Internal,
    /// The request is an admin request ([`Request::is_admin`](crate::Request::is_admin)) and the client's
    /// certificate does not carry the admin role. Not retried: ask with an admin certificate.
    Forbidden,
}

impl From<&Error> for ErrorCode {
    /// The stable wire code of a core error (the mapping lives with the protocol, so the core's error type
    /// does not depend on the wire).
    fn from(error: &Error) -> ErrorCode {
        match error {
            Error::EmptyKey
            | Error::InvalidKey { .. }
            | Error::ZeroTtl { .. }
            | Error::InvalidFeatureName { .. }
            | Error::NonFiniteValue { .. }
            | Error::EmptyBatch { .. }
            | Error::InvalidContext { .. }
            | Error::InvalidMarker { .. }
            | Error::InvalidNodeId { .. }
            | Error::TooManyNodeIds { .. }
            | Error::InvalidLimit { .. }
            | Error::QuorumTooLarge { .. }
            | Error::LateEvent { .. }
            | Error::InvalidDefinition { .. }
            | Error::IdentityLoop { .. }
            | Error::IdentityConflict { .. }
            | Error::IdentityTooDeep { .. }
            | Error::InvalidRule { .. }
            | Error::InvalidSegments { .. }
            | Error::RuleEvaluation { .. } => ErrorCode::InvalidRequest,
            Error::InvalidEvent(
                EventDefect::TooLarge { .. } | EventDefect::MessageIdTooLong { .. },
            ) => ErrorCode::LimitExceeded,
            Error::InvalidEvent(_) => ErrorCode::InvalidRequest,
            Error::NodeLeft => ErrorCode::Unavailable,
            Error::KeyTooLong { .. }
            | Error::FeatureNameTooLong { .. }
            | Error::ValueTooLarge { .. }
            | Error::TooManyFeatures { .. }
            | Error::ContextTooLarge { .. }
            | Error::BatchTooLarge { .. }
            | Error::TooManyIdentityLinks { .. }
            | Error::RuleTooLong { .. }
            | Error::RuleTooDeep { .. }
            | Error::TooManySegments { .. } => ErrorCode::LimitExceeded,
            Error::TooManySiblings { .. } => ErrorCode::TooManySiblings,
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Error::Malformed { .. } => ErrorCode::MalformedFrame,
            Error::Encode(_) => ErrorCode::Internal,
            Error::ClockSkew { .. } => ErrorCode::ClockSkew,
            Error::KindMismatch { .. } => ErrorCode::KindMismatch,
            Error::CounterOverflow { .. } => ErrorCode::CounterOverflow,
        }
    }
}

impl ErrorReply {
    /// The typed reply for a core error.
    pub fn of(error: &Error) -> ErrorReply {
        ErrorReply {
            code: ErrorCode::from(error),
            message: error.to_string(),
        }
    }
}
