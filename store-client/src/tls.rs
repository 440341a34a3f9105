//! Client-side TLS: PEM loading, QUIC transport limits and the `quinn` client configuration.
//!
//! Guarantees:
//! - Every configuration built here uses the `ring` crypto provider passed explicitly (see [`provider`]);
//!   no process-wide default provider has to be installed.
//! - TLS 1.3 only, the cluster CA given by the caller is the *only* trust root (no system/web roots),
//!   the client always presents its own certificate (mutual TLS), and 0-RTT is disabled
//!   (`enable_early_data = false`), so no request can be replayed as early data.
//! - Exactly one ALPN protocol is offered, so a client connection can never be mistaken for peer
//!   traffic or vice versa ([`CLIENT_ALPN`], [`PEER_ALPN`]).
//! - Loading never panics on file contents: a missing, oversized, empty or malformed PEM file is a
//!   typed [`TlsError`] naming the file.
//!
//! Caveats:
//! - Certificate revocation (CRLs/OCSP) is not checked; the cluster CA is expected to be private
//!   and short-lived certificates or CA rotation are the revocation mechanism.
//! - Encrypted (password-protected) private keys are not supported.
//! - The server name used when connecting must be one of the SAN names of the node certificate,
//!   e.g. `n1.node.featurestore` (or `localhost` / `127.0.0.1` for development).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig};
use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// ALPN protocol identifier of client → node traffic.
pub const CLIENT_ALPN: &[u8] = b"featurestore-client/1";

/// ALPN protocol identifier of node → node (peer) traffic.
pub const PEER_ALPN: &[u8] = b"featurestore-peer/1";

/// Largest PEM file (certificate chain, CA bundle or key) that will be read, in bytes.
///
/// Certificates and keys are a few kilobytes; the limit only stops a wrong path (e.g. a log file or
/// a device) from being read into memory.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Errors while loading certificates/keys or building a TLS/QUIC configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be opened or read (including "not found").
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{path} is larger than {limit} bytes; not a PEM certificate or key file")]
    TooLarge {
        /// The file involved.
        path: PathBuf,
        /// The size limit in bytes.
        limit: u64,
    },
    /// The file is not valid PEM.
    #[error("malformed PEM in {path}: {reason}")]
    Pem {
        /// The file involved.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// The file is empty or contains no `CERTIFICATE` section.
    #[error("no certificate found in {path}")]
    NoCertificates {
        /// The file involved.
        path: PathBuf,
    },
    /// The file is empty or contains no private key section (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key found in {path}")]
    NoPrivateKey {
        /// The file involved.
        path: PathBuf,
    },
    /// A certificate of the CA file could not be used as a trust root.
    #[error("invalid CA certificate in {path}: {reason}")]
    InvalidCa {
        /// The CA file involved.
        path: PathBuf,
        /// Why the certificate was rejected.
        reason: String,
    },
    /// No ALPN protocol (or an empty one) was given.
    #[error("at least one non-empty ALPN protocol is required")]
    EmptyAlpn,
    /// The transport limits are inconsistent (see [`TransportLimits::validate`]).
    #[error("invalid transport limits: {0}")]
    InvalidLimits(String),
    /// rustls rejected the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls configuration cannot be used for QUIC (no TLS 1.3 initial cipher suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The crypto provider used by every TLS configuration of featurestore (`ring`).
///
/// Passed explicitly to every rustls builder so that no process-wide default has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a whole PEM file, bounded by [`MAX_PEM_FILE_BYTES`].
fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_PEM_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// Loads every `CERTIFICATE` section of a PEM file, in file order (leaf first for a chain).
///
/// Errors: [`TlsError::Read`] if the file is missing or unreadable, [`TlsError::TooLarge`],
/// [`TlsError::Pem`] if it is not valid PEM, [`TlsError::NoCertificates`] if it is empty or holds no
/// certificate. Other PEM sections (e.g. a key in the same file) are ignored.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
///
/// Errors: [`TlsError::Read`] if the file is missing or unreadable, [`TlsError::TooLarge`],
/// [`TlsError::Pem`] if it is not valid PEM, [`TlsError::NoPrivateKey`] if it is empty or holds no
/// key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Builds a root store holding exactly the certificates of the CA file (the cluster CA).
///
/// Errors as [`load_certs`], plus [`TlsError::InvalidCa`] if a certificate cannot be a trust anchor.
pub fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::InvalidCa {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// QUIC transport limits shared by clients and nodes.
///
/// Deserialised from configuration with defaults for missing fields; unknown fields are an error.
/// Call [`TransportLimits::validate`] (done by `client_config` and the node's `server_config`)
/// before [`TransportLimits::to_quinn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportLimits {
    /// Bidirectional streams the peer may have open at once (one request per stream).
    pub max_concurrent_bidi_streams: u32,
    /// Per-stream receive window (flow control), in bytes.
    pub stream_receive_window: u32,
    /// Per-connection receive window (flow control), in bytes.
    pub receive_window: u32,
    /// Per-connection send buffer limit, in bytes.
    pub send_window: u64,
    /// Idle timeout in milliseconds; must be non-zero.
    pub idle_timeout_ms: u32,
    /// Keep-alive interval in milliseconds; `0` disables keep-alives. Must be below the idle timeout.
    pub keep_alive_ms: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_concurrent_bidi_streams: 1024,
            stream_receive_window: 1024 * 1024,
            receive_window: 16 * 1024 * 1024,
            send_window: 16 * 1024 * 1024,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 5_000,
        }
    }
}

impl TransportLimits {
    /// Checks that the limits are usable.
    ///
    /// Rules: at least one bidirectional stream; non-zero stream, connection and send windows; the
    /// connection receive window is at least the stream receive window; the idle timeout is
    /// non-zero (a connection without one could linger forever); a non-zero keep-alive interval is
    /// shorter than the idle timeout (otherwise keep-alives cannot keep the connection open).
    pub fn validate(&self) -> Result<(), TlsError> {
        let fail = |msg: String| Err(TlsError::InvalidLimits(msg));
        if self.max_concurrent_bidi_streams == 0 {
            return fail("max_concurrent_bidi_streams must be at least 1".into());
        }
        if self.stream_receive_window == 0 || self.receive_window == 0 || self.send_window == 0 {
            return fail(
                "stream_receive_window, receive_window and send_window must be non-zero".into(),
            );
        }
        if self.receive_window < self.stream_receive_window {
            return fail(format!(
                "receive_window ({}) must be at least stream_receive_window ({})",
                self.receive_window, self.stream_receive_window
            ));
        }
        if self.idle_timeout_ms == 0 {
            return fail("idle_timeout_ms must be non-zero".into());
        }
        if self.keep_alive_ms != 0 && self.keep_alive_ms >= self.idle_timeout_ms {
            return fail(format!(
                "keep_alive_ms ({}) must be below idle_timeout_ms ({})",
                self.keep_alive_ms, self.idle_timeout_ms
            ));
        }
        Ok(())
    }

    /// Converts the limits to a `quinn` transport configuration.
    ///
    /// Every limit is set explicitly. Unidirectional streams (node-to-node replication messages; a node
    /// never reads them on client connections) get the same limit as bidirectional ones; datagrams are
    /// disabled. `idle_timeout_ms = 0` maps to "no
    /// idle timeout" and `keep_alive_ms = 0` to "no keep-alive" (the former is rejected by
    /// [`TransportLimits::validate`]).
    pub fn to_quinn(&self) -> quinn::TransportConfig {
        let mut cfg = quinn::TransportConfig::default();
        cfg.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(self.max_concurrent_bidi_streams))
            .stream_receive_window(quinn::VarInt::from_u32(self.stream_receive_window))
            .receive_window(quinn::VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(match self.idle_timeout_ms {
                0 => None,
                ms => Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(ms))),
            })
            .keep_alive_interval(match self.keep_alive_ms {
                0 => None,
                ms => Some(Duration::from_millis(u64::from(ms))),
            })
            .datagram_receive_buffer_size(None);
        cfg
    }
}

/// Builds the `quinn` client configuration for mutual TLS against the cluster.
///
/// - `ca`: PEM file of the cluster CA, the only trust root;
/// - `cert`/`key`: PEM files of this client's certificate (chain, leaf first) and private key;
/// - `alpn`: the single ALPN protocol to offer ([`CLIENT_ALPN`], or [`PEER_ALPN`] for node → node);
/// - `limits`: validated, then applied as the transport configuration.
///
/// TLS 1.3 only, `ring` provider, no 0-RTT.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
    limits: &TransportLimits,
) -> Result<quinn::ClientConfig, TlsError> {
    if alpn.is_empty() {
        return Err(TlsError::EmptyAlpn);
    }
    limits.validate()?;
    let roots = root_store(ca)?;
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(limits.to_quinn()));
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn error_is_wrappable() {
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<TlsError>();
    }

    #[test]
    fn limits_defaults_and_unknown_fields() {
        let parsed: TransportLimits = serde_json::from_str(r#"{"keep_alive_ms": 1000}"#).unwrap();
        assert_eq!(
            parsed,
            TransportLimits {
                keep_alive_ms: 1000,
                ..TransportLimits::default()
            }
        );
        assert!(serde_json::from_str::<TransportLimits>(r#"{"bogus": 1}"#).is_err());
        TransportLimits::default().validate().unwrap();
    }

    #[test]
    fn limits_validation() {
        let bad = [
            TransportLimits {
                max_concurrent_bidi_streams: 0,
                ..Default::default()
            },
            TransportLimits {
                receive_window: 10,
                stream_receive_window: 20,
                ..Default::default()
            },
            TransportLimits {
                idle_timeout_ms: 0,
                ..Default::default()
            },
            TransportLimits {
                keep_alive_ms: 30_000,
                ..Default::default()
            },
        ];
        for limits in bad {
            assert!(
                matches!(limits.validate(), Err(TlsError::InvalidLimits(_))),
                "{limits:?}"
            );
        }
    }

    #[test]
    fn pem_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(load_certs(&missing), Err(TlsError::Read { .. })));
        assert!(matches!(load_key(&missing), Err(TlsError::Read { .. })));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            load_certs(&empty),
            Err(TlsError::NoCertificates { .. })
        ));
        assert!(matches!(
            load_key(&empty),
            Err(TlsError::NoPrivateKey { .. })
        ));

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(load_certs(&garbage), Err(TlsError::Pem { .. })));

        let err = client_config(
            &empty,
            &empty,
            &empty,
            CLIENT_ALPN,
            &TransportLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(matches!(
            client_config(&empty, &empty, &empty, b"", &TransportLimits::default()),
            Err(TlsError::EmptyAlpn)
        ));
    }
}
