//! Development / small-cluster certificate generation with `rcgen`.
//!
//! [`generate`] creates (or extends) a directory holding a private cluster CA and certificates for
//! nodes and clients:
//!
//! | file | contents |
//! |---|---|
//! | `ca.pem`, `ca.key` | self-signed cluster CA (`CA:true`, key usages keyCertSign + cRLSign) |
//! | `node-N.pem`, `node-N.key` | node `N`: CN `N`, SAN DNS `N.node.featurestore`, `localhost`, IP `127.0.0.1`; EKU serverAuth + clientAuth |
//! | `client-C.pem`, `client-C.key` | client `C`: CN `C`, SAN DNS `C.client.featurestore`; EKU clientAuth |
//! | `client-A.pem`, `client-A.key` | admin client `A` (`--admins A`): as a client, plus SAN URI [`ADMIN_ROLE_URI`] |
//!
//! # Roles
//!
//! A client certificate is an *application* certificate unless it carries the SAN URI
//! [`ADMIN_ROLE_URI`] (`urn:featurestore:role:admin`): then it is an *admin* certificate, which the node
//! also answers admin requests (`leave`, the per-replica reads `local` and `digests`, see
//! `featurestore::Request::is_admin`); an application certificate gets the typed `Forbidden` error for
//! them. The role is part of the signed certificate, so only the CA's holder can grant it. A name is
//! either a client or an admin: asking for an existing pair with the other role is an error (remove the
//! pair to reissue it).
//!
//! Guarantees:
//! - Names are validated before anything is written: 1..=63 characters of `[a-z0-9-]`, not starting
//!   or ending with `-` (a single DNS label), so `N.node.featurestore` is always a valid DNS name.
//! - Existing files are never overwritten (files are created with `create_new`). If `ca.pem` and
//!   `ca.key` exist, that CA is reused, so certificates issued earlier stay valid when nodes or
//!   clients are added later; existing node/client pairs are kept as they are.
//! - Private keys (ECDSA P-256, PKCS#8 PEM) are created with mode `0600` on unix.
//! - A pair with only one of its two files present is an error (never silently completed).
//!
//! Reusing the CA: the key is loaded with `KeyPair::from_pem` and the issuer (subject name, key
//! identifier, key usages) is read back from `ca.pem` with `rcgen::Issuer::from_ca_cert_pem`
//! (rcgen's `x509-parser` feature), so new certificates carry exactly the issuer name and authority
//! key identifier of the existing CA certificate, even if that certificate was not produced by
//! this module. The loaded key is checked to match the certificate's public key and the certificate
//! must be a CA.
//!
//! Caveats:
//! - Meant for development and small private clusters: certificates use rcgen's default validity
//!   (1975-01-01 to 4096-01-01), there is no revocation (CRL/OCSP) and no rotation. Production
//!   deployments should issue certificates with their own PKI using the same name scheme.
//! - Writing is not atomic across files: if the process dies between writing a key and its
//!   certificate, the next run reports the incomplete pair and the stray file must be removed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use rustls_pki_types::pem::PemObject;

use crate::error::{BoxError, Error, Result};

/// DNS suffix of node certificates: node `N` is `N.node.featurestore`.
pub const NODE_DOMAIN: &str = "node.featurestore";

/// DNS suffix of client certificates: client `C` is `C.client.featurestore`.
pub const CLIENT_DOMAIN: &str = "client.featurestore";

/// File name of the CA certificate inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";

/// File name of the CA private key inside a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// The SAN URI that makes a client certificate an admin certificate (see the module docs).
pub const ADMIN_ROLE_URI: &str = "urn:featurestore:role:admin";

/// Subject common name of CAs created by [`generate`].
const CA_COMMON_NAME: &str = "featurestore cluster CA";

/// Organization of every subject created by [`generate`].
const ORGANIZATION: &str = "featurestore";

/// The TLS server name (and SAN DNS name) of node `node`: `node.node.featurestore`.
pub fn node_server_name(node: &str) -> String {
    format!("{node}.{NODE_DOMAIN}")
}

/// The SAN DNS name of client `client`: `client.client.featurestore`.
pub fn client_name(client: &str) -> String {
    format!("{client}.{CLIENT_DOMAIN}")
}

/// Paths of the certificate and key of one identity (CA, node or client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The node or client name (`"ca"` for the CA).
    pub name: String,
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
    /// `true` if both files were written by this call, `false` if they existed and were kept.
    pub created: bool,
}

/// What [`generate`] produced: every identity with its files, created or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCerts {
    /// The cluster CA (`ca.pem`, `ca.key`).
    pub ca: CertFiles,
    /// One entry per requested node, in request order.
    pub nodes: Vec<CertFiles>,
    /// One entry per requested client, in request order.
    pub clients: Vec<CertFiles>,
    /// One entry per requested admin client, in request order.
    pub admins: Vec<CertFiles>,
}

impl GeneratedCerts {
    /// The paths written by this call (certificate and key of every created pair).
    pub fn written(&self) -> Vec<&Path> {
        std::iter::once(&self.ca)
            .chain(&self.nodes)
            .chain(&self.clients)
            .chain(&self.admins)
            .filter(|f| f.created)
            .flat_map(|f| [f.cert.as_path(), f.key.as_path()])
            .collect()
    }
}

/// Checks a node or client name: 1..=63 characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid node/client name {name:?}: expected 1 to 63 characters of [a-z0-9-], \
             not starting or ending with '-'"
        )))
    }
}

/// Generates (or extends) the certificate directory `out_dir` with node and application client
/// certificates; see the module documentation. Same as [`generate_with_admins`] without admins.
pub fn generate(out_dir: &Path, nodes: &[String], clients: &[String]) -> Result<GeneratedCerts> {
    generate_with_admins(out_dir, nodes, clients, &[])
}

/// Generates (or extends) the certificate directory `out_dir`: node certificates, application client
/// certificates (`clients`) and admin client certificates (`admins`, with the admin role); see the
/// module documentation.
///
/// All names are validated (and checked for duplicates, also across `clients` and `admins`) before
/// anything is written. The directory is created if missing. An existing client pair whose role is not
/// the requested one is an error.
pub fn generate_with_admins(
    out_dir: &Path,
    nodes: &[String],
    clients: &[String],
    admins: &[String],
) -> Result<GeneratedCerts> {
    for (kind, names) in [("node", nodes), ("client", clients), ("admin", admins)] {
        for (i, name) in names.iter().enumerate() {
            validate_name(name)?;
            if names[..i].contains(name) {
                return Err(Error::Config(format!("{kind} name {name:?} listed twice")));
            }
        }
    }
    if let Some(both) = clients.iter().find(|c| admins.contains(c)) {
        return Err(Error::Config(format!(
            "{both:?} is listed as a client and as an admin; a certificate has one role"
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;

    let (issuer, ca) = load_or_create_ca(out_dir)?;

    let mut generated = GeneratedCerts {
        ca,
        nodes: Vec::with_capacity(nodes.len()),
        clients: Vec::with_capacity(clients.len()),
        admins: Vec::with_capacity(admins.len()),
    };
    for node in nodes {
        let files = pair_paths(out_dir, &format!("node-{node}"), node);
        let params = || {
            leaf_params(
                node,
                vec![
                    node_server_name(node),
                    "localhost".into(),
                    "127.0.0.1".into(),
                ],
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            )
        };
        generated
            .nodes
            .push(issue_if_missing(files, params, &issuer)?);
    }
    for (names, admin) in [(clients, false), (admins, true)] {
        for client in names {
            let files = pair_paths(out_dir, &format!("client-{client}"), client);
            let params = || client_params(client, admin);
            let files = issue_if_missing(files, params, &issuer)?;
            if !files.created && is_admin_certificate(&files.cert)? != admin {
                let (has, wanted) = if admin {
                    ("an application", "an admin")
                } else {
                    ("an admin", "an application")
                };
                return Err(Error::InvalidCertificate(format!(
                    "{} exists as {has} certificate but {wanted} certificate was asked for; remove \
                     {} and {} to reissue it, or choose another name",
                    files.cert.display(),
                    files.cert.display(),
                    files.key.display()
                )));
            }
            if admin {
                generated.admins.push(files);
            } else {
                generated.clients.push(files);
            }
        }
    }
    Ok(generated)
}

/// Parameters of client `client`'s certificate, with the admin role if `admin`.
fn client_params(client: &str, admin: bool) -> Result<CertificateParams> {
    let mut params = leaf_params(
        client,
        vec![client_name(client)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    if admin {
        let uri = rcgen::string::Ia5String::try_from(ADMIN_ROLE_URI)
            .map_err(cert_err("encoding the admin role URI"))?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    Ok(params)
}

/// Whether the DER certificate carries the admin role (SAN URI [`ADMIN_ROLE_URI`]). Does not verify
/// the certificate: only call it on certificates a TLS handshake verified, or on local files.
pub fn has_admin_role(der: &[u8]) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| {
        matches!(name, x509_parser::extensions::GeneralName::URI(uri) if *uri == ADMIN_ROLE_URI)
    })
}

/// Whether the PEM certificate at `path` carries the admin role.
fn is_admin_certificate(path: &Path) -> Result<bool> {
    let pem = read_to_string(path)?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::InvalidCertificate(format!("cannot parse {}: {e}", path.display())))?;
    Ok(has_admin_role(&der))
}

/// The `CertFiles` (with `created = false`) of `<stem>.pem` / `<stem>.key` in `dir`.
fn pair_paths(dir: &Path, stem: &str, name: &str) -> CertFiles {
    CertFiles {
        name: name.to_string(),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        created: false,
    }
}

/// Whether both files of a pair exist; an error if exactly one does.
fn pair_exists(files: &CertFiles) -> Result<bool> {
    match (files.cert.exists(), files.key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (cert, _) => {
            let (present, missing) = if cert {
                (&files.cert, &files.key)
            } else {
                (&files.key, &files.cert)
            };
            Err(Error::InvalidCertificate(format!(
                "{} exists but {} does not; remove the stray file or restore the missing one",
                present.display(),
                missing.display()
            )))
        }
    }
}

/// Loads the CA of `dir` or creates a new one.
fn load_or_create_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, CertFiles)> {
    let mut files = CertFiles {
        name: "ca".into(),
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
        created: false,
    };
    if pair_exists(&files)? {
        let issuer = load_ca(&files)?;
        return Ok((issuer, files));
    }

    let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(cert_err("self-signing the CA certificate"))?;
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    files.created = true;
    Ok((Issuer::new(params, key), files))
}

/// Loads an existing CA, checking that the key belongs to the certificate and that it is a CA.
fn load_ca(files: &CertFiles) -> Result<Issuer<'static, KeyPair>> {
    let key_pem = read_to_string(&files.key)?;
    let cert_pem = read_to_string(&files.cert)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| Error::Certificate {
        context: format!("cannot parse CA key {}", files.key.display()),
        source,
    })?;

    let unparsable = |source: BoxError| Error::CaCertificate {
        path: files.cert.clone(),
        source,
    };
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| unparsable(Box::new(e)))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| unparsable(Box::new(e)))?;
    if !parsed.is_ca() {
        return Err(Error::InvalidCertificate(format!(
            "{} is not a CA certificate (basicConstraints CA:true missing)",
            files.cert.display()
        )));
    }
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(Error::InvalidCertificate(format!(
            "CA key {} does not belong to CA certificate {}",
            files.key.display(),
            files.cert.display()
        )));
    }

    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| Error::Certificate {
        context: format!("cannot use {} as issuer", files.cert.display()),
        source,
    })
}

/// Parameters of a leaf (node or client) certificate.
fn leaf_params(
    common_name: &str,
    subject_alt_names: Vec<String>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(subject_alt_names)
        .map_err(cert_err("building certificate parameters"))?;
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = extended_key_usages;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Issues a certificate for `files` unless the pair already exists.
fn issue_if_missing(
    mut files: CertFiles,
    params: impl FnOnce() -> Result<CertificateParams>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<CertFiles> {
    if pair_exists(&files)? {
        return Ok(files);
    }
    let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
    let cert = params()?
        .signed_by(&key, issuer)
        .map_err(cert_err("signing a certificate"))?;
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    files.created = true;
    Ok(files)
}

/// `CN=<common_name>, O=featurestore`.
fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

/// Maps an rcgen error to [`Error::Certificate`] with context.
fn cert_err(context: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |source| Error::Certificate {
        context: context.to_owned(),
        source,
    }
}

/// Reads a small text file (certificate or key).
fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the key (mode 0600 on unix) and then the certificate; both must not exist yet.
///
/// If the certificate cannot be written, the freshly written key is removed again (best effort).
fn write_pair(files: &CertFiles, cert_pem: &str, key_pem: &str) -> Result<()> {
    write_new(&files.key, key_pem.as_bytes(), true)?;
    if let Err(e) = write_new(&files.cert, cert_pem.as_bytes(), false) {
        let _ = std::fs::remove_file(&files.key);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` (failing if it exists), writes `contents` and syncs it to disk.
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn name_validation() {
        for ok in ["a", "n1", "node-1", &"x".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(generate(dir.path(), &names(&["ok", "Bad"]), &[]).is_err());
        assert!(generate(dir.path(), &names(&["n1", "n1"]), &[]).is_err());
        // Nothing was written.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn files_modes_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), &names(&["n1"]), &names(&["app"])).unwrap();
        assert!(first.ca.created && first.nodes[0].created && first.clients[0].created);
        assert_eq!(first.written().len(), 6);
        for f in ["ca", "node-n1", "client-app"] {
            assert!(dir.path().join(format!("{f}.pem")).is_file());
            assert!(dir.path().join(format!("{f}.key")).is_file());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.key", "node-n1.key", "client-app.key"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }

        let before = std::fs::read(dir.path().join("node-n1.pem")).unwrap();
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let second = generate(dir.path(), &names(&["n1", "n2"]), &[]).unwrap();
        assert!(!second.ca.created && !second.nodes[0].created && second.nodes[1].created);
        assert_eq!(second.written().len(), 2);
        assert_eq!(
            std::fs::read(dir.path().join("node-n1.pem")).unwrap(),
            before
        );
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    }

    #[test]
    fn admin_certificates_carry_the_role_and_roles_never_change() {
        let dir = tempfile::tempdir().unwrap();
        let der = |name: &str| {
            let pem = std::fs::read(dir.path().join(format!("client-{name}.pem"))).unwrap();
            rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
        };
        let made = generate_with_admins(
            dir.path(),
            &names(&["n1"]),
            &names(&["app"]),
            &names(&["ops"]),
        )
        .unwrap();
        assert!(made.admins[0].created && made.clients[0].created);
        assert!(has_admin_role(&der("ops")));
        assert!(!has_admin_role(&der("app")));
        let node = std::fs::read(dir.path().join("node-n1.pem")).unwrap();
        let node = rustls_pki_types::CertificateDer::from_pem_slice(&node).unwrap();
        assert!(!has_admin_role(&node));
        // Reused as they are when asked again with the same role.
        let again =
            generate_with_admins(dir.path(), &[], &names(&["app"]), &names(&["ops"])).unwrap();
        assert!(again.written().is_empty());
        // Never silently given (or kept with) another role.
        let promote = generate_with_admins(dir.path(), &[], &[], &names(&["app"])).unwrap_err();
        assert!(
            promote
                .to_string()
                .contains("an admin certificate was asked for"),
            "{promote}"
        );
        let demote = generate(dir.path(), &[], &names(&["ops"])).unwrap_err();
        assert!(
            demote.to_string().contains("as an admin certificate"),
            "{demote}"
        );
        assert!(generate_with_admins(dir.path(), &[], &names(&["x"]), &names(&["x"])).is_err());
    }

    #[test]
    fn incomplete_pair_and_mismatched_ca_key_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &names(&["n1"]), &[]).unwrap();
        std::fs::remove_file(dir.path().join("node-n1.key")).unwrap();
        assert!(matches!(
            generate(dir.path(), &names(&["n1"]), &[]),
            Err(Error::InvalidCertificate(_))
        ));

        let other = tempfile::tempdir().unwrap();
        generate(other.path(), &[], &[]).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let err = generate(dir.path(), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        assert!(matches!(
            generate(dir.path(), &[], &[]),
            Err(Error::Certificate { .. })
        ));
    }

    #[test]
    fn names_helpers() {
        assert_eq!(node_server_name("n1"), "n1.node.featurestore");
        assert_eq!(client_name("app"), "app.client.featurestore");
    }
}
