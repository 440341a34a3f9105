//! The one error type of the `store-node` library.
//!
//! Every variant that wraps a failure of a library (sled, rcgen, rustls, toml, tokio, the OS) keeps that
//! error as its [`source`](std::error::Error::source). Message-only are the checks this crate makes itself
//! ([`Error::Config`], [`Error::InvalidCertificate`]) and [`Error::Storage`] (see there). The messages say
//! which of four areas failed (`certificate error`, `TLS configuration error`, `storage error`,
//! `configuration error`) and, like [`Error::Io`], repeat the source's message, so a one-line `Display`
//! is complete.

use std::net::SocketAddr;
use std::path::PathBuf;

use store_client::tls::TlsError;

/// A source error of any type, for variants whose failures come from several libraries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong inside a node outside of the core's own validation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be created, read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The node's UDP socket could not be bound, handed to QUIC, or asked for its address.
    #[error("I/O error on udp://{addr}: {source}")]
    Socket {
        /// The address the socket is (to be) bound to.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The HTTP listener's TCP socket could not be bound or asked for its address.
    #[error("I/O error on tcp://{addr}: {source}")]
    HttpSocket {
        /// The address the socket is (to be) bound to.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// rcgen could not generate, sign or load a certificate or key.
    #[error("certificate error: {context}: {source}")]
    Certificate {
        /// What was being done (and with which file).
        context: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// A CA certificate file could not be parsed (as PEM, or as X.509).
    #[error("certificate error: cannot parse CA certificate {path}: {source}")]
    CaCertificate {
        /// The CA certificate file.
        path: PathBuf,
        /// The PEM or X.509 parser's error.
        source: BoxError,
    },
    /// The certificate files are unusable for a reason this crate checks itself: half of a pair is
    /// missing, a CA certificate is not a CA, a CA key does not belong to its certificate.
    #[error("certificate error: {0}")]
    InvalidCertificate(String),
    /// A certificate or key file cannot be used for TLS: too large, not PEM, no certificate or key in
    /// it, or an unusable CA certificate.
    #[error("certificate error: {0}")]
    CertificateFile(#[source] TlsError),
    /// A TLS configuration could not be built from the certificate files (the client crate's loader).
    #[error("TLS configuration error: {0}")]
    Tls(#[source] TlsError),
    /// rustls rejected the server configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration error: {context}: {source}")]
    Rustls {
        /// The step that failed.
        context: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA.
    #[error("TLS configuration error: client certificate verifier: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// sled failed.
    #[error("storage error: {context}: {source}")]
    Sled {
        /// What was being done, and in which directory.
        context: String,
        /// The sled error.
        source: sled::Error,
    },
    /// The write-ahead log could not create, write, sync, read or delete one of its files.
    #[error("storage error: write-ahead log: {context}: {path}: {source}")]
    Wal {
        /// What was being done.
        context: String,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The write-ahead log's buffer is full: the disk is not keeping up with the writes (the write is
    /// refused, not acknowledged; counted as `wal_refused_full`).
    #[error(
        "storage error: write-ahead log buffer full ({buffered} bytes buffered, limit \
         max_wal_buffer_bytes = {limit}); the disk is not keeping up"
    )]
    WalBufferFull {
        /// Bytes waiting for a flush.
        buffered: u64,
        /// The limit, `max_wal_buffer_bytes`.
        limit: u64,
    },
    /// A storage thread could not be started.
    #[error("storage error: {context}: {source}")]
    Thread {
        /// Which thread.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A blocking storage task panicked or was cancelled.
    #[error("storage error: {context}: {source}")]
    Task {
        /// Which task.
        context: String,
        /// The join error.
        source: tokio::task::JoinError,
    },
    /// The storage failed without an error value to keep: a write whose flush failed earlier (the flush
    /// error is shared by every waiting write as text), a storage thread that panicked, or a failure
    /// reported by a [`Storage`](crate::storage::Storage) implementation.
    #[error("storage error: {0}")]
    Storage(String),
    /// The operating system's random number generator failed (needed for a new incarnation).
    #[error("no randomness from the operating system: {0}")]
    Random(ring::error::Unspecified),
    /// A config file is not valid TOML or does not match the config's shape.
    #[error("configuration error: {path}: {source}")]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A config value given as text (a durability interval) could not be parsed.
    #[error("configuration error: {what}: {source}")]
    ConfigValue {
        /// Which value, as the user wrote it.
        what: String,
        /// The parser's error.
        source: BoxError,
    },
    /// A config could not be written as TOML (e.g. a path that is not UTF-8).
    #[error("configuration error: cannot write {path}: {source}")]
    ConfigWrite {
        /// The config file to be written.
        path: PathBuf,
        /// The TOML error.
        source: toml::ser::Error,
    },
    /// The transport limits or the ALPN list are invalid.
    #[error("configuration error: {0}")]
    Transport(#[source] TlsError),
    /// A client config this node wrote (the dev cluster's `client.toml`) does not load.
    #[error("configuration error: generated client config: {0}")]
    ClientConfig(#[source] store_client::Error),
    /// The configuration is invalid (a check of this crate, without an underlying error).
    #[error("configuration error: {0}")]
    Config(String),
    /// A validation or protocol error from the core.
    #[error(transparent)]
    Core(#[from] featurestore::Error),
}

/// Result alias for the node library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
