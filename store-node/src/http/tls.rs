//! The HTTPS server configuration of the HTTP listener: the node's rustls setup (the `ring` provider
//! passed explicitly, the same PEM loaders as the QUIC server), but for analytics SDKs rather than
//! cluster members:
//!
//! - no client certificate is asked for (SDKs authenticate with write keys);
//! - ALPN `h2` and `http/1.1`;
//! - TLS 1.2 and 1.3 (rustls' safe defaults; SDKs on older runtimes still speak only 1.2), no 0-RTT.
//!
//! The certificate is the node's own (`tls.cert`/`tls.key`: its SANs name `localhost` and `127.0.0.1`
//! besides the node) unless `[http] cert`/`key` name another, e.g. one for the public host name that SDKs
//! verify against the system's roots.

use std::path::Path;
use std::sync::Arc;

use store_client::tls::{load_certs, load_key, provider};

use crate::error::{Error, Result};
use crate::net::tls::map_tls_error;

/// The ALPN protocols offered, in order of preference.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Builds the HTTPS configuration from a certificate chain and its key (PEM files).
///
/// Errors: [`Error::Io`] for an unreadable file, [`Error::CertificateFile`] for one without a usable
/// certificate or key, [`Error::Rustls`] when rustls refuses them (the key does not match).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = load_certs(cert).map_err(map_tls_error)?;
    let key = load_key(key).map_err(map_tls_error)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rustls {
            context: "HTTPS protocol versions",
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| Error::Rustls {
            context: "HTTPS certificate/key",
            source,
        })?;
    tls.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
    tls.max_early_data_size = 0;
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_node_certificate_serves_https_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generated = crate::certs::generate(dir.path(), &["n1".to_string()], &[]).unwrap();
        let n1 = &generated.nodes[0];
        let config = server_config(&n1.cert, &n1.key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(matches!(
            server_config(&n1.cert, &generated.ca.key),
            Err(Error::Rustls { .. })
        ));
        assert!(matches!(
            server_config(&dir.path().join("missing.pem"), &n1.key),
            Err(Error::Io { .. })
        ));
    }
}
