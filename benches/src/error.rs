//! The error type of the load generator library.

use std::path::PathBuf;

/// What can go wrong while setting up or running a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter or an environment fact makes the run impossible (bad value, missing program, ...).
    #[error("{0}")]
    Setup(String),
    /// A file or process operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or program involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A server process did not start, or died.
    #[error("server process: {0}")]
    Process(String),
    /// The QUIC echo transport failed.
    #[error("echo transport: {0}")]
    Transport(String),
    /// The featurestore client failed.
    #[error("featurestore: {0}")]
    Featurestore(#[from] store_client::Error),
    /// The Redis client failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A server answered something other than what the workload expects (e.g. a loaded key is missing).
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// Reading `/proc` failed.
    #[error(transparent)]
    Proc(#[from] crate::stats::ProcError),
    /// Writing a report failed.
    #[error("report: {0}")]
    Report(String),
}

/// The result type of the load generator library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
