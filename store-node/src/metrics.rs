//! Node counters: plain atomics, cheap enough for the hot path, reported by the `status` request and, as
//! `featurestore_<name>_total`, by `GET /metrics` ([`crate::telemetry`]).
//!
//! Every refused or failed input is counted under its own name, so an operator can tell a misbehaving
//! client (malformed frames) from a misconfigured one (TLS failures) from an application bug (limit or
//! kind errors).

use std::sync::atomic::{AtomicU64, Ordering};

use featurestore::ErrorCode;

/// Declares a struct of `AtomicU64` counters with a `snapshot` that names each counter after its field,
/// behind an optional prefix: `struct PeerMetrics as "peer_" { sent }` reports `peer_sent`.
/// Fields after the counters, in `extra { name: Type }`, are carried along (they need `Debug` and `Default`)
/// and not part of the snapshot.
macro_rules! counters {
    (
        $(#[$struct_doc:meta])*
        $vis:vis struct $ty:ident as $prefix:literal {
            $($(#[$doc:meta])* $name:ident),* $(,)?
        }
        $(extra { $($(#[$xdoc:meta])* $xname:ident: $xty:ty),* $(,)? })?
    ) => {
        $(#[$struct_doc])*
        #[derive(Debug, Default)]
        $vis struct $ty {
            $($(#[$doc])* pub $name: ::std::sync::atomic::AtomicU64,)*
            $($($(#[$xdoc])* pub $xname: $xty,)*)?
        }

        impl $ty {
            /// Every counter with its name, for the status reply.
            pub fn snapshot(&self) -> Vec<(String, u64)> {
                vec![$((
                    concat!($prefix, stringify!($name)).to_owned(),
                    self.$name.load(::std::sync::atomic::Ordering::Relaxed),
                ),)*]
            }
        }
    };
    ($(#[$struct_doc:meta])* $vis:vis struct $ty:ident { $($body:tt)* }) => {
        $crate::metrics::counters! { $(#[$struct_doc])* $vis struct $ty as "" { $($body)* } }
    };
}
pub(crate) use counters;

counters! {
    /// The node's counters, and the latency histograms of `GET /metrics` ([`crate::telemetry`]).
    pub struct Metrics as "" {
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
        /// Admin requests refused because the client certificate has no admin role.
        requests_forbidden,
        /// Writes that failed to become durable (not acknowledged).
        storage_failures,
        /// Responses that would have exceeded `max_frame_bytes`.
        responses_too_large,
        /// Streams that timed out before a full request arrived.
        request_timeouts,
        /// Expired values physically dropped by the sweeper.
        expired_sweeps,
        /// Events applied here as their owner.
        events_ingested,
        /// Events whose message id had already been ingested (nothing changed).
        events_duplicate,
        /// Events refused here as owner (wrong property type for a definition, storage failure, ...).
        events_refused,
        /// Events forwarded to their owner.
        events_forwarded,
        /// Identities linked into a canonical profile (identify with both ids, alias).
        identity_links,
        /// Events redirected from a linked id to its canonical id.
        identity_redirects,
        /// Identity links refused (loop, conflict, limit) and events refused for a chain too long.
        identity_refused,
        /// Window features that refused an event as older than their span.
        events_late,
        /// Events refused because the ingest queue was full (the sender retries).
        events_overloaded,
        /// Forwarded events refused because they reached the owner after their sender's deadline (the
        /// sender retries).
        events_expired,
        /// Events refused because this process had just stalled (frozen or starved; the sender retries).
        events_stalled,
        /// Segment entries decided here as owner (a membership flag set to true).
        segment_entries,
        /// Segment exits decided here as owner.
        segment_exits,
        /// Segment rules that failed to evaluate (a run-time type error; the membership is unchanged).
        segment_failures,
        /// Segment rules evaluated (after an event: only those reading a feature it changed).
        segment_evaluations,
        /// Segment timers fired here as owner (a deadline reached with no new event).
        segment_timers_fired,
        /// Segment timers not armed because `max_segment_timers` users had one.
        segment_timers_dropped,
        /// Profiles evaluated by the backfill of a segment added at runtime.
        segment_backfilled,
        /// Segment changes that could not be written to the change log (the membership write failed with
        /// them and the event was not acknowledged).
        segment_log_failures,
        /// HTTP requests to the ingest API (`/v1/*`).
        http_requests,
        /// HTTP requests refused for a missing or unknown write key (401).
        http_unauthorized,
        /// HTTP requests refused whole: invalid JSON, too large, too many events, every event invalid,
        /// too slow (400, 408).
        http_rejected,
        /// HTTP requests refused because `max_inflight_requests` were being handled (429).
        http_overloaded,
        /// HTTP requests answered 503 or 500 because some of their events could not be applied (the client
        /// retries).
        http_retry_later,
        /// Events in HTTP requests that were read and authenticated.
        http_events_received,
        /// Events received over HTTP and applied, or recognised as duplicates.
        http_events_accepted,
        /// Events received over HTTP and refused: invalid at the edge, or for their definitions on the owner.
        http_events_refused,
        /// Events received over HTTP whose owner was unavailable or could not store them (answered 503/500).
        http_events_retry,
        /// HTTP connections closed at once because `max_connections` were open.
        http_connections_refused,
        /// HTTPS handshakes that failed or timed out.
        http_tls_failures,
        /// Refused events kept in this node's dead-letter queue.
        dlq_captured,
        /// Refused events not kept because the dead-letter queue was full.
        dlq_overflow,
        /// Refused events not kept again because their message id was already in the queue.
        dlq_repeats,
        /// Dead-letter entries replayed and removed (applied, or duplicates).
        dlq_replayed,
        /// Dead-letter entries purged.
        dlq_purged,
        /// Dead-letter records that could not be decoded (skipped, left on disk).
        dlq_corrupt,
        /// Dead letters that could not be stored (or made durable).
        dlq_failures,
    }
    extra {
        /// Request, replication and ingest latencies.
        histograms: crate::telemetry::Histograms,
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts an error reply under the counter its code belongs to.
    pub fn count_error(&self, code: ErrorCode) {
        let counter = match code {
            ErrorCode::FrameTooLarge => &self.frames_oversized,
            ErrorCode::UnsupportedVersion => &self.frames_bad_version,
            ErrorCode::MalformedFrame => &self.frames_malformed,
            ErrorCode::Storage => &self.storage_failures,
            ErrorCode::Forbidden => &self.requests_forbidden,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(snapshot: Vec<(String, u64)>) -> Vec<String> {
        snapshot.into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn counters_are_named_after_their_fields_behind_the_prefix() {
        let node = Metrics::default();
        Metrics::incr(&node.requests);
        let snapshot = node.snapshot();
        // 15 request counters, 19 of the ingest path (3 of identity, 8 of segments), 11 of the HTTP
        // listener, 7 of the dead-letter queue.
        assert_eq!(snapshot.len(), 52);
        assert_eq!(snapshot[0].0, "connections_accepted");
        assert_eq!(snapshot[44].0, "http_tls_failures");
        assert_eq!(snapshot[51].0, "dlq_failures");
        assert!(snapshot.contains(&("requests".to_owned(), 1)));

        let peer = crate::net::peer::PeerMetrics::default();
        assert_eq!(
            names(peer.snapshot()),
            [
                "peer_sent",
                "peer_queue_drops",
                "peer_unreachable_drops",
                "peer_received",
                "peer_bad_frames",
                "peer_batches"
            ]
        );
    }
}
