//! Server-side TLS: the node's `quinn` server configuration and the identity of a connected peer.
//!
//! Guarantees:
//! - TLS 1.3 only, with the `ring` provider passed explicitly (no process-wide default needed).
//! - Mutual TLS: every connection must present a client certificate that chains to the cluster CA
//!   (the CA file is the only trust root) and carries the clientAuth extended key usage; connections
//!   without one, or with one from another CA, fail during the handshake.
//! - Only the configured ALPN protocols are accepted (a client offering none of them is refused).
//! - No 0-RTT (`max_early_data_size = 0`): requests can never be replayed as early data.
//! - Connection migration is disabled, and the transport limits are the validated
//!   [`TransportLimits`].
//! - [`peer_identity`] derives the identity only from the SAN DNS names of the certificate that the
//!   handshake verified, never from the subject CN or anything the peer sends later.
//!
//! Caveats:
//! - No revocation checks (CRL/OCSP): removing a client means rotating the CA or its certificates.
//! - The ALPN a connection negotiated and the kind of its identity are independent: callers must
//!   check that client-ALPN connections carry a [`PeerIdentity::Client`] (or decide to allow nodes)
//!   and that peer-ALPN connections carry a [`PeerIdentity::Node`].

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use store_client::tls::{load_certs, load_key, provider, root_store, TlsError, TransportLimits};

use crate::certs::{validate_name, CLIENT_DOMAIN, NODE_DOMAIN};
use crate::error::{Error, Result};

/// Builds the node's `quinn` server configuration.
///
/// - `ca`: PEM file of the cluster CA; client certificates must chain to it;
/// - `cert`/`key`: PEM files of this node's certificate (chain, leaf first) and private key;
/// - `alpn`: the accepted ALPN protocols (e.g. `CLIENT_ALPN` and `PEER_ALPN`), at least one;
/// - `limits`: validated, then applied as the transport configuration.
///
/// Errors: [`Error::Io`] for an unreadable file, [`Error::CertificateFile`] for a file without a
/// usable certificate/key, [`Error::Transport`] for invalid limits or ALPN list, [`Error::Rustls`],
/// [`Error::ClientVerifier`] or [`Error::Tls`] if rustls/quinn reject the configuration (e.g.
/// [`Error::Rustls`] if the key does not match the certificate).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
    limits: &TransportLimits,
) -> Result<quinn::ServerConfig> {
    if alpn.is_empty() || alpn.iter().any(|p| p.is_empty()) {
        return Err(map_tls_error(TlsError::EmptyAlpn));
    }
    limits.validate().map_err(map_tls_error)?;

    let provider = provider();
    let roots = Arc::new(root_store(ca).map_err(map_tls_error)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(Error::ClientVerifier)?;
    let certs = load_certs(cert).map_err(map_tls_error)?;
    let key = load_key(key).map_err(map_tls_error)?;

    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Rustls {
            context: "TLS 1.3 only",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| Error::Rustls {
            context: "node certificate/key",
            source,
        })?;
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tls.max_early_data_size = 0;

    let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(TlsError::from(e)))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(limits.to_quinn()));
    config.migration(false);
    Ok(config)
}

/// Maps a client-crate TLS error onto the node's error type.
pub(crate) fn map_tls_error(e: TlsError) -> Error {
    match e {
        TlsError::Read { path, source } => Error::Io { path, source },
        e @ (TlsError::TooLarge { .. }
        | TlsError::Pem { .. }
        | TlsError::NoCertificates { .. }
        | TlsError::NoPrivateKey { .. }
        | TlsError::InvalidCa { .. }) => Error::CertificateFile(e),
        e @ (TlsError::EmptyAlpn | TlsError::InvalidLimits(_)) => Error::Transport(e),
        e => Error::Tls(e),
    }
}

/// Who is on the other end of a connection, as named by its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// Another node; the certificate names `<name>.node.featurestore`.
    Node(String),
    /// A client; the certificate names `<name>.client.featurestore`.
    Client(String),
}

impl PeerIdentity {
    /// The bare node or client name (without the DNS suffix).
    pub fn name(&self) -> &str {
        match self {
            Self::Node(name) | Self::Client(name) => name,
        }
    }

    /// Derives the identity from a DER certificate's SAN DNS names.
    ///
    /// Returns `None` if the certificate cannot be parsed, has no SAN extension, or does not name
    /// exactly one featurestore identity (`N.node.featurestore` or `C.client.featurestore` with a
    /// valid name, see [`validate_name`]). Other names (e.g. `localhost`) are ignored; a certificate
    /// naming two different identities is ambiguous and yields `None`.
    ///
    /// This function does not verify the certificate: only call it on certificates that the TLS
    /// handshake verified (as [`peer_identity`] does).
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let san = parsed.subject_alternative_name().ok()??;
        let mut found: Option<Self> = None;
        for name in &san.value.general_names {
            let x509_parser::extensions::GeneralName::DNSName(dns) = name else {
                continue;
            };
            let Some(identity) = Self::from_dns_name(dns) else {
                continue;
            };
            match &found {
                Some(existing) if *existing != identity => return None,
                _ => found = Some(identity),
            }
        }
        found
    }

    /// Parses `N.node.featurestore` / `C.client.featurestore`.
    fn from_dns_name(dns: &str) -> Option<Self> {
        let split = |domain: &str| {
            let name = dns.strip_suffix(domain)?.strip_suffix('.')?;
            validate_name(name).ok()?;
            Some(name.to_string())
        };
        split(NODE_DOMAIN)
            .map(Self::Node)
            .or_else(|| split(CLIENT_DOMAIN).map(Self::Client))
    }
}

/// The identity of the remote side of an established connection.
///
/// Reads the certificate chain that the handshake verified (`Connection::peer_identity`, a
/// `Vec<CertificateDer>`) and derives the identity from the leaf certificate with
/// [`PeerIdentity::from_certificate`]. Returns `None` if the handshake has not completed, the peer
/// presented no certificate (impossible with [`server_config`], which requires one), or the
/// certificate does not name exactly one featurestore node or client.
pub fn peer_identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    PeerIdentity::from_certificate(chain.first()?)
}

/// Whether the remote side's verified leaf certificate carries the admin role
/// ([`crate::certs::ADMIN_ROLE_URI`]); `false` if there is no verified certificate.
pub fn peer_is_admin(conn: &quinn::Connection) -> bool {
    let Some(identity) = conn.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    chain
        .first()
        .is_some_and(|leaf| crate::certs::has_admin_role(leaf.as_ref()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn dns_name_parsing() {
        assert_eq!(
            PeerIdentity::from_dns_name("n1.node.featurestore"),
            Some(PeerIdentity::Node("n1".into()))
        );
        assert_eq!(
            PeerIdentity::from_dns_name("app.client.featurestore"),
            Some(PeerIdentity::Client("app".into()))
        );
        for bad in [
            "localhost",
            "node.featurestore",
            ".node.featurestore",
            "a.b.node.featurestore",
            "n1node.featurestore",
            "N1.node.featurestore",
            "n1.node.featurestore.evil",
        ] {
            assert_eq!(PeerIdentity::from_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_from_generated_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let generated =
            crate::certs::generate(dir.path(), &names(&["n1"]), &names(&["app"])).unwrap();
        let leaf = |p: &Path| load_certs(p).unwrap().remove(0);
        assert_eq!(
            PeerIdentity::from_certificate(&leaf(&generated.nodes[0].cert)),
            Some(PeerIdentity::Node("n1".into()))
        );
        assert_eq!(
            PeerIdentity::from_certificate(&leaf(&generated.clients[0].cert)),
            Some(PeerIdentity::Client("app".into()))
        );
        // The CA has no SAN.
        assert_eq!(
            PeerIdentity::from_certificate(&leaf(&generated.ca.cert)),
            None
        );
        assert_eq!(
            PeerIdentity::from_certificate(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }

    #[test]
    fn config_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let limits = TransportLimits::default();
        assert!(matches!(
            server_config(&missing, &missing, &missing, &[b"x"], &limits),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            server_config(&missing, &missing, &missing, &[], &limits),
            Err(Error::Transport(_))
        ));
        let generated = crate::certs::generate(dir.path(), &["n1".to_string()], &[]).unwrap();
        let n1 = &generated.nodes[0];
        // The CA key does not match the node certificate.
        assert!(matches!(
            server_config(
                &generated.ca.cert,
                &n1.cert,
                &generated.ca.key,
                &[b"x"],
                &limits
            ),
            Err(Error::Rustls { .. })
        ));
        server_config(&generated.ca.cert, &n1.cert, &n1.key, &[b"x"], &limits).unwrap();
    }
}
