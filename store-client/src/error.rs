//! The client's error type.
//!
//! Every fallible call of this crate returns [`Error`]. The variants separate what a caller may want to
//! handle differently: configuration and TLS problems (fix the setup), [`Error::Connect`] and
//! [`Error::Transport`] (the network or the node is down: retry later or elsewhere), [`Error::Timeout`]
//! (the call's deadline passed; the outcome of a write is unknown), [`Error::Server`] (the node refused
//! the request, with a stable [`ErrorCode`]), [`Error::Forbidden`] (an admin request without the admin
//! role), and [`Error::Protocol`] / [`Error::UnexpectedResponse`] (a bug or version mismatch).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use featurestore::ErrorCode;

use crate::tls::TlsError;

/// One failed connection attempt, as listed by [`Error::Connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAttempt {
    /// The node's name.
    pub node: String,
    /// The address tried.
    pub addr: SocketAddr,
    /// Why it failed.
    pub error: String,
}

impl fmt::Display for ConnectAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.node, self.addr, self.error)
    }
}

fn list_attempts(attempts: &[ConnectAttempt]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of the featurestore client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client configuration could not be read, parsed or validated.
    #[error("client configuration: {0}")]
    Config(String),
    /// Certificates or keys could not be loaded, or the TLS configuration was rejected.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// No configured node could be reached; every attempt is listed, in order.
    #[error("could not connect to any node: {}", list_attempts(attempts))]
    Connect {
        /// One entry per node tried.
        attempts: Vec<ConnectAttempt>,
    },
    /// The call's deadline passed (`request_timeout_ms`, or the duration given to
    /// [`Client::with_deadline`](crate::Client::with_deadline)) before any node answered: one deadline
    /// covers every attempt, hedge and retry of the call. For a write, the outcome is unknown: it may
    /// or may not have been applied.
    #[error("request timed out after {} ms", after.as_millis())]
    Timeout {
        /// The deadline that elapsed (the call's whole budget).
        after: Duration,
    },
    /// The QUIC connection or stream failed (connection lost, stream reset, local I/O error).
    #[error("transport: {0}")]
    Transport(String),
    /// A frame could not be encoded, or the node's answer could not be decoded (bad header, oversize,
    /// unknown version, malformed payload, stream ended early).
    #[error("protocol: {0}")]
    Protocol(#[from] featurestore::Error),
    /// The node refused the request or failed to execute it.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// The node refused an admin request (`leave`, `local_state`, `digests`) because this client's
    /// certificate does not carry the admin role ([`ErrorCode::Forbidden`]). Not retried: connect with an
    /// admin certificate (`store-node certs --admins NAME`).
    #[error("forbidden: {message}")]
    Forbidden {
        /// The node's explanation.
        message: String,
    },
    /// The node answered with a response that does not fit the request (a bug or version mismatch).
    #[error("unexpected response: expected {expected}, got {got}")]
    UnexpectedResponse {
        /// What the request calls for.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// A node-directed call named a node that is neither in the cached cluster view (with an address,
    /// and not `Left`) nor a configured seed.
    #[error("unknown node {0}: not a member of the cluster view nor a seed")]
    UnknownNode(String),
    /// [`Client::close`](crate::Client::close) was called; this client (and its clones) no longer sends
    /// requests.
    #[error("the client was closed")]
    Closed,
}

impl Error {
    /// The node's error code, if this is an error reply from a node ([`Error::Server`]).
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::Forbidden { .. } => Some(ErrorCode::Forbidden),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<Error>();
    }

    #[test]
    fn server_code_and_messages() {
        let e = Error::Server {
            code: ErrorCode::LimitExceeded,
            message: "key is 300 bytes".into(),
        };
        assert_eq!(e.server_code(), Some(ErrorCode::LimitExceeded));
        assert_eq!(
            e.to_string(),
            "server error LimitExceeded: key is 300 bytes"
        );
        assert_eq!(Error::Closed.server_code(), None);

        let e = Error::Connect {
            attempts: vec![
                ConnectAttempt {
                    node: "n1".into(),
                    addr: "127.0.0.1:1".parse().expect("addr"),
                    error: "timed out".into(),
                },
                ConnectAttempt {
                    node: "n2".into(),
                    addr: "127.0.0.1:2".parse().expect("addr"),
                    error: "refused".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "could not connect to any node: n1 (127.0.0.1:1): timed out; n2 (127.0.0.1:2): refused"
        );
        let e = Error::Timeout {
            after: Duration::from_millis(250),
        };
        assert_eq!(e.to_string(), "request timed out after 250 ms");
        assert_eq!(
            Error::UnknownNode("n9".into()).to_string(),
            "unknown node n9: not a member of the cluster view nor a seed"
        );
    }
}
