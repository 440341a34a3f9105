//! `store-node dev`: a local node on loopback with generated certificates and embedded storage.
//!
//! Layout under the dev directory (default `./data/dev`):
//! `certs/` (cluster CA, node and client certificates, generated on first run and reused after),
//! `n1/` (the node's sled data), `client.toml` (what `storectl` and the client crate need to connect).
//! Everything is kept across runs, so data written in one session is there in the next.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::certs;
use crate::config::{NodeConfig, TlsFiles};
use crate::error::{Error, Result};

/// The dev client's name (its certificate is `certs/client-app.pem`).
pub const DEV_CLIENT: &str = "app";

/// Options of `store-node dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where certificates, data and `client.toml` live.
    pub dir: PathBuf,
    /// UDP port of the first node.
    pub port: u16,
}

/// Writes the client configuration for the dev cluster (paths relative to `dir`).
pub fn write_client_config(dir: &Path, nodes: &[(String, SocketAddr)]) -> Result<PathBuf> {
    let mut text = format!(
        "# Written by `store-node dev`. Paths are relative to this file.\n\
         ca_cert = \"certs/ca.pem\"\n\
         cert = \"certs/client-{DEV_CLIENT}.pem\"\n\
         key = \"certs/client-{DEV_CLIENT}.key\"\n"
    );
    for (name, addr) in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    let path = dir.join("client.toml");
    std::fs::write(&path, text).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Prepares certificates and configs, then runs the dev node until `shutdown` is cancelled.
pub async fn run(options: DevOptions, shutdown: CancellationToken) -> Result<()> {
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let cert_dir = dir.join("certs");
    let node = "n1";
    certs::generate(&cert_dir, &[node.to_owned()], &[DEV_CLIENT.to_owned()])?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, options.port));
    let tls = TlsFiles {
        ca_cert: cert_dir.join("ca.pem"),
        cert: cert_dir.join(format!("node-{node}.pem")),
        key: cert_dir.join(format!("node-{node}.key")),
    };
    let config = NodeConfig::new(node, listen, dir.join(node), tls);
    config.validate()?;
    let client_toml = write_client_config(dir, &[(node.to_owned(), listen)])?;
    println!(
        "featurestore dev: node {node} on {listen}, data in {}\n\
         client config: {}\n\
         next, in another terminal:\n  \
         cargo run --release -p store-client --bin storectl -- --config {} put u1 cart_value=42.5\n  \
         cargo run --release -p store-client --bin storectl -- --config {} get u1\n\
         Ctrl-C stops the node cleanly.",
        dir.join(node).display(),
        client_toml.display(),
        client_toml.display(),
        client_toml.display(),
    );
    crate::node::run(config, shutdown).await
}
