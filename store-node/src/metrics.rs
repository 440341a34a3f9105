//! Node counters: plain atomics, cheap enough for the hot path, reported by the `status` request.
//!
//! Every refused or failed input is counted under its own name, so an operator can tell a misbehaving
//! client (malformed frames) from a misconfigured one (TLS failures) from an application bug (limit or
//! kind errors).

use std::sync::atomic::{AtomicU64, Ordering};

use featurestore::ErrorCode;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The node's counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Every counter with its name, for the status reply.
            pub fn snapshot(&self) -> Vec<(String, u64)> {
                vec![$((stringify!($name).to_owned(), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Connections whose TLS handshake completed.
    connections_accepted,
    /// Connections refused during the handshake (no or bad client certificate, wrong ALPN, ...).
    tls_handshake_failures,
    /// Connections from a certificate that is not a client certificate, on the client ALPN.
    wrong_identity,
    /// Requests answered (all kinds, including errors).
    requests,
    /// Reads served (`get` keys and `get_many` keys).
    keys_read,
    /// Writes acknowledged.
    writes_acknowledged,
    /// Frames announcing a payload above `max_frame_bytes`.
    frames_oversized,
    /// Frames with an unknown protocol version.
    frames_bad_version,
    /// Frames that could not be decoded (bad encoding, bad UTF-8, unknown variant, truncated).
    frames_malformed,
    /// Requests refused by validation: limits, bad names, bad contexts, kind mismatches, clock skew.
    requests_rejected,
    /// Writes that failed to become durable (not acknowledged).
    storage_failures,
    /// Responses that would have exceeded `max_frame_bytes`.
    responses_too_large,
    /// Streams that timed out before a full request arrived.
    request_timeouts,
    /// Expired values physically dropped by the sweeper.
    expired_sweeps,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error reply under the counter its code belongs to.
    pub fn count_error(&self, code: ErrorCode) {
        let counter = match code {
            ErrorCode::FrameTooLarge => &self.frames_oversized,
            ErrorCode::UnsupportedVersion => &self.frames_bad_version,
            ErrorCode::MalformedFrame => &self.frames_malformed,
            ErrorCode::Storage => &self.storage_failures,
            ErrorCode::Unavailable | ErrorCode::Internal => return,
            ErrorCode::InvalidRequest
            | ErrorCode::LimitExceeded
            | ErrorCode::TooManySiblings
            | ErrorCode::ClockSkew
            | ErrorCode::KindMismatch
            | ErrorCode::CounterOverflow => &self.requests_rejected,
        };
        Metrics::incr(counter);
    }
}
