//! The one error type of the `store-node` library.

use std::path::PathBuf;

/// Everything that can go wrong inside a node outside of the core's own validation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A certificate or key could not be generated, read or parsed.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored record is corrupt or has an unknown format version.
    #[error("corrupt record for key {key:?}: {reason}")]
    CorruptRecord {
        /// The key of the record (lossy UTF-8).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("configuration error: {0}")]
    Config(String),
    /// A validation or protocol error from the core.
    #[error(transparent)]
    Core(#[from] featurestore::Error),
}

/// Result alias for the node library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
