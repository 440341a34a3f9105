//! Laying out the dev directory: the node plan for `--nodes`/`--port`, certificates, the node and client
//! configs, and the warnings about reusing a directory with a different shape. Nothing here starts a
//! process.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{DevError, DevOptions};
use crate::certs;
use featurestore::NodeId;

use crate::config::{NodeConfig, Overrides, Seed, TlsFiles, WriteKey};
use crate::error::Error;
use crate::storage::{DurabilityPolicy, StorageKind};

/// The dev application client's name (its certificate is `certs/client-app.pem`, used by `client.toml`).
pub const DEV_CLIENT: &str = "app";

/// The dev admin client's name (its certificate, with the admin role, is `certs/client-admin.pem`, used by
/// `admin.toml`).
pub const DEV_ADMIN: &str = "admin";

/// Most nodes `store-node dev` starts.
pub const MAX_NODES: u16 = 64;

/// One node of the dev cluster as laid out on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevNode {
    /// Node id, `n<i>`.
    pub id: String,
    /// Listen (and advertised) address.
    pub addr: SocketAddr,
    /// Its plain-HTTP listener: the same IP and port number, on TCP.
    pub http: SocketAddr,
    /// Its config file, `<dir>/n<i>.toml`.
    pub config: PathBuf,
    /// Its data directory, `<dir>/n<i>`.
    pub data_dir: PathBuf,
}

/// The files [`prepare`] wrote and what it noticed.
#[derive(Debug, Clone)]
pub struct DevLayout {
    /// The dev directory.
    pub dir: PathBuf,
    /// The nodes, `n1..nK`.
    pub nodes: Vec<DevNode>,
    /// `<dir>/client.toml`: the application certificate (data requests).
    pub client_config: PathBuf,
    /// `<dir>/admin.toml`: the admin certificate (also `leave`, `local`, `digests`).
    pub admin_config: PathBuf,
    /// `<dir>/features.toml`: the feature definitions every node loads.
    pub features: PathBuf,
    /// The segment definitions every node loads: `<dir>/segments.toml`, or `<dir>/segments.demo.toml`
    /// for `--demo`.
    pub segments: PathBuf,
    /// `<dir>/http.env`: `HTTP_URL` (n1's HTTP listener) and `WRITE_KEY`, shell-sourceable.
    pub http_env: PathBuf,
    /// The dev write key (source `dev`).
    pub write_key: String,
    /// Warnings about reusing the directory with a different shape (already logged).
    pub warnings: Vec<String>,
}

/// Writes the application client configuration of the dev cluster, `<dir>/client.toml` (paths relative
/// to `dir`).
pub fn write_client_config(
    dir: &Path,
    nodes: &[(String, SocketAddr)],
) -> crate::error::Result<PathBuf> {
    write_config_for(dir, "client.toml", DEV_CLIENT, nodes)
}

/// Writes the admin client configuration of the dev cluster, `<dir>/admin.toml`: as `client.toml`, with
/// the admin certificate.
pub fn write_admin_config(
    dir: &Path,
    nodes: &[(String, SocketAddr)],
) -> crate::error::Result<PathBuf> {
    write_config_for(dir, "admin.toml", DEV_ADMIN, nodes)
}

fn write_config_for(
    dir: &Path,
    file: &str,
    client: &str,
    nodes: &[(String, SocketAddr)],
) -> crate::error::Result<PathBuf> {
    let mut text = format!(
        "# Written by `store-node dev` on every run. Paths are relative to this file.\n\
         ca_cert = \"certs/ca.pem\"\n\
         cert = \"certs/client-{client}.pem\"\n\
         key = \"certs/client-{client}.key\"\n"
    );
    for (name, addr) in nodes {
        let _ = write!(text, "\n[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n");
    }
    let path = dir.join(file);
    write_file(&path, &text)?;
    Ok(path)
}

/// The feature definitions `store-node dev` ships (`store-node/features.example.toml`).
pub const EXAMPLE_FEATURES: &str = include_str!("../../features.example.toml");

/// The segment definitions `store-node dev` ships (`store-node/segments.example.toml`).
pub const EXAMPLE_SEGMENTS: &str = include_str!("../../segments.example.toml");

/// The segment definitions of `store-node dev --demo` (`store-node/segments.demo.toml`).
pub const DEMO_SEGMENTS: &str = include_str!("../../segments.demo.toml");

/// The write key's source name in the dev configs.
pub const DEV_SOURCE: &str = "dev";

/// The config of `node`, with every node of `all` as a bootstrap seed (paths relative to the dev dir),
/// the dev feature definitions, the segment definitions of `segments_file`, and plain HTTP on loopback
/// accepting `write_key`.
fn node_config(
    node: &DevNode,
    all: &[DevNode],
    write_key: &str,
    segments_file: &str,
) -> crate::error::Result<NodeConfig> {
    let id = &node.id;
    let tls = TlsFiles {
        ca_cert: "certs/ca.pem".into(),
        cert: format!("certs/node-{id}.pem").into(),
        key: format!("certs/node-{id}.key").into(),
    };
    let mut config = NodeConfig::new(NodeId::new(id.as_str())?, node.addr, id.into(), tls);
    config.storage = StorageKind::Sled;
    config.durability = DurabilityPolicy::Sync;
    config.cluster.bootstrap = true;
    for seed in all {
        config.cluster.seeds.push(Seed {
            id: NodeId::new(seed.id.as_str())?,
            addr: seed.addr,
        });
    }
    config.ingest.features = Some(FEATURES_FILE.into());
    config.ingest.segments = Some(segments_file.into());
    config.http.listen = Some(node.http);
    config.http.plaintext = true;
    // The dashboard on every node, each reading the others for the cluster-wide view.
    config.http.dashboard = true;
    config.http.dashboard_peers = all
        .iter()
        .filter(|other| other.id != node.id)
        .map(|other| format!("http://{}", other.http))
        .collect();
    config.http.write_keys = vec![WriteKey {
        source: DEV_SOURCE.to_owned(),
        key: write_key.to_owned(),
    }];
    Ok(config)
}

const FEATURES_FILE: &str = "features.toml";
const SEGMENTS_FILE: &str = "segments.toml";
const DEMO_SEGMENTS_FILE: &str = "segments.demo.toml";
const HTTP_ENV_FILE: &str = "http.env";

/// Writes `<dir>/<file>` from the shipped example `text` if it does not exist (an edited file is kept).
fn ensure_example(dir: &Path, file: &str, text: &str) -> crate::error::Result<PathBuf> {
    let path = dir.join(file);
    if !path.exists() {
        write_file(&path, text)?;
        tracing::info!(path = %path.display(), "generated");
    }
    Ok(path)
}

/// The write key of the previous run's `http.env`, if it holds a usable one.
fn previous_write_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("WRITE_KEY="))?
        .trim()
        .to_owned();
    let usable = key.len() >= 16 && key.bytes().all(|b| b.is_ascii_alphanumeric());
    usable.then_some(key)
}

/// A new random write key: 32 hex digits.
fn new_write_key() -> crate::error::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Config("no randomness for the dev write key".into()))?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Writes `<dir>/http.env` (`HTTP_URL` of `first`, `WRITE_KEY`), readable by its owner only.
fn write_http_env(dir: &Path, first: SocketAddr, write_key: &str) -> crate::error::Result<PathBuf> {
    let path = dir.join(HTTP_ENV_FILE);
    let text = format!(
        "# Written by `store-node dev` on every run (the key is kept across runs). Source it: . {}\n\
         HTTP_URL=http://{first}\n\
         WRITE_KEY={write_key}\n",
        path.display()
    );
    write_file(&path, &text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| Error::Io {
                path: path.clone(),
                source,
            },
        )?;
    }
    Ok(path)
}

/// The comment at the top of every node config `store-node dev` writes.
const NODE_CONFIG_COMMENT: &str =
    "Written by `store-node dev` on every run (edits are overwritten). Paths are relative to this file.";

fn write_file(path: &Path, text: &str) -> crate::error::Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// The node layout for `options` (no file access).
pub(super) fn plan(options: &DevOptions) -> Result<Vec<DevNode>, DevError> {
    if options.nodes == 0 || options.nodes > MAX_NODES {
        return Err(DevError::Options(format!(
            "--nodes must be between 1 and {MAX_NODES}, got {}",
            options.nodes
        )));
    }
    let last = u32::from(options.port) + u32::from(options.nodes) - 1;
    if options.port == 0 || last > u32::from(u16::MAX) {
        return Err(DevError::Options(format!(
            "--port must leave room for {} consecutive ports in 1..=65535, got {}",
            options.nodes, options.port
        )));
    }
    Ok((1..=options.nodes)
        .map(|i| {
            let id = format!("n{i}");
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, options.port + (i - 1)));
            DevNode {
                addr,
                http: addr,
                config: options.dir.join(format!("{id}.toml")),
                data_dir: options.dir.join(&id),
                id,
            }
        })
        .collect())
}

/// Indices `i` of the non-empty `n<i>/` directories in `dir`, sorted.
fn existing_data(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let i: u32 = name.to_str()?.strip_prefix('n')?.parse().ok()?;
            let non_empty =
                entry.path().is_dir() && std::fs::read_dir(entry.path()).ok()?.next().is_some();
            (i > 0 && non_empty).then_some(i)
        })
        .collect();
    found.sort_unstable();
    found
}

/// Warnings about starting `nodes` in a directory that holds data of a differently shaped cluster.
/// `previous` is the seed list of the previous run's `n1.toml`, if it could be read; `data` the indices of
/// the existing data directories.
fn shape_warnings(
    dir: &Path,
    nodes: &[DevNode],
    previous: Option<&[Seed]>,
    data: &[u32],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if data.is_empty() {
        return warnings;
    }
    let k = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let list = |ids: &[u32]| {
        ids.iter()
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let beyond: Vec<u32> = data.iter().copied().filter(|&i| i > k).collect();
    if !beyond.is_empty() {
        warnings.push(format!(
            "{} holds data of {} which this run does not start (--nodes {k}): the other nodes still \
             count them as members, see them as down and keep hints for them",
            dir.display(),
            list(&beyond)
        ));
    }
    let fresh: Vec<u32> = (1..=k).filter(|i| !data.contains(i)).collect();
    if !fresh.is_empty() && data.iter().any(|&i| i <= k) {
        warnings.push(format!(
            "{} start without data next to nodes that have some: they bootstrap from the seeds instead \
             of joining the stored cluster",
            list(&fresh)
        ));
    }
    if let Some(previous) = previous {
        let now: Vec<(&str, SocketAddr)> = nodes.iter().map(|n| (n.id.as_str(), n.addr)).collect();
        let before: Vec<(&str, SocketAddr)> =
            previous.iter().map(|s| (s.id.as_str(), s.addr)).collect();
        if now != before {
            let show = |v: &[(&str, SocketAddr)]| {
                v.iter()
                    .map(|(id, addr)| format!("{id}@{addr}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            warnings.push(format!(
                "the cluster layout changed since the last run (was: {}; now: {}); the nodes' stored \
                 membership still describes the old one",
                show(&before),
                show(&now)
            ));
        }
    }
    if !warnings.is_empty() {
        warnings.push(format!(
            "to change --nodes or --port, use a fresh --dir (or delete {})",
            dir.display()
        ));
    }
    warnings
}

/// Creates the dev directory, certificates (first run), `features.toml` and `segments.toml` (when
/// missing), node configs,
/// `client.toml` and `http.env` (the write key is generated once, then read back from it), and logs a warning
/// if the directory holds data of a differently shaped cluster. Does not start anything.
pub fn prepare(options: &DevOptions) -> Result<DevLayout, DevError> {
    prepare_for(options, false)
}

/// As [`prepare`]; for `demo`, the nodes load `segments.demo.toml` ([`DEMO_SEGMENTS`], written when
/// missing) instead of `segments.toml`, and the features those segments read must be defined in
/// `features.toml` (an older copy kept from an earlier run may lack them: [`DevError::Options`] then).
pub fn prepare_for(options: &DevOptions, demo: bool) -> Result<DevLayout, DevError> {
    let nodes = plan(options)?;
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;

    let previous_config = dir.join("n1.toml");
    let previous = previous_config
        .exists()
        .then(|| NodeConfig::load(&previous_config, &Overrides::default()).ok())
        .flatten()
        .map(|c| c.cluster.seeds);
    let warnings = shape_warnings(dir, &nodes, previous.as_deref(), &existing_data(dir));
    for w in &warnings {
        tracing::warn!("{w}");
    }

    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let generated = certs::generate_with_admins(
        &dir.join("certs"),
        &ids,
        &[DEV_CLIENT.to_owned()],
        &[DEV_ADMIN.to_owned()],
    )?;
    for path in generated.written() {
        tracing::info!(path = %path.display(), "generated");
    }
    let features = ensure_example(dir, FEATURES_FILE, EXAMPLE_FEATURES)?;
    let segments_file = if demo {
        ensure_example(dir, DEMO_SEGMENTS_FILE, DEMO_SEGMENTS)?;
        check_demo_features(&features, &dir.join(DEMO_SEGMENTS_FILE))?;
        DEMO_SEGMENTS_FILE
    } else {
        ensure_example(dir, SEGMENTS_FILE, EXAMPLE_SEGMENTS)?;
        SEGMENTS_FILE
    };
    let http_env_path = dir.join(HTTP_ENV_FILE);
    let write_key = match previous_write_key(&http_env_path) {
        Some(key) => key,
        None => new_write_key()?,
    };
    for node in &nodes {
        node_config(node, &nodes, &write_key, segments_file)?
            .write(&node.config, NODE_CONFIG_COMMENT)?;
        // Read it back exactly as `serve` will, so a config the node would refuse fails here.
        NodeConfig::load(&node.config, &Overrides::default())?;
    }
    let pairs: Vec<(String, SocketAddr)> = nodes.iter().map(|n| (n.id.clone(), n.addr)).collect();
    let client_config = write_client_config(dir, &pairs)?;
    store_client::ClientConfig::load(&client_config).map_err(Error::ClientConfig)?;
    let admin_config = write_admin_config(dir, &pairs)?;
    store_client::ClientConfig::load(&admin_config).map_err(Error::ClientConfig)?;
    let http_env = write_http_env(dir, nodes[0].http, &write_key)?;
    Ok(DevLayout {
        dir: dir.clone(),
        nodes,
        client_config,
        admin_config,
        features,
        segments: dir.join(segments_file),
        http_env,
        write_key,
        warnings,
    })
}

/// Compiles the demo's `segments` file against `features` as a node will, and fails if a rule reads a
/// feature that no definition produces (the node would only log that, and the segment would never have
/// members).
pub(super) fn check_demo_features(features: &Path, segments: &Path) -> Result<(), DevError> {
    let limits = featurestore::Limits::default();
    let defs = crate::features::load(features, &limits)?;
    let rules = crate::segments::load(segments, &defs, &limits)?;
    let mut missing = Vec::new();
    for segment in rules.segments.iter() {
        for name in segment.rule.reads() {
            if !defs.features.iter().any(|f| f.name == *name) {
                missing.push(format!("{name} (read by {})", segment.name()));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(DevError::Options(format!(
        "{} does not define {} which the demo segments in {} need: it was probably kept from an \
         earlier run; add them (see store-node/features.example.toml), delete the file to get the \
         current example, or use a fresh --dir",
        features.display(),
        missing.join(", "),
        segments.display()
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options(dir: &Path, nodes: u16) -> DevOptions {
        DevOptions {
            dir: dir.to_owned(),
            port: 7401,
            nodes,
        }
    }

    #[test]
    fn prepare_writes_configs_every_node_can_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let layout = prepare(&options(&dir, 3)).unwrap();
        assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
        assert_eq!(layout.nodes.len(), 3);
        for (i, node) in layout.nodes.iter().enumerate() {
            let c = NodeConfig::load(&node.config, &Overrides::default()).unwrap();
            assert_eq!(c.node_id.as_str(), format!("n{}", i + 1));
            assert_eq!(c.listen.port(), 7401 + u16::try_from(i).unwrap());
            assert_eq!(c.data_dir, dir.join(c.node_id.as_str()));
            assert_eq!(
                c.tls.cert,
                dir.join(format!("certs/node-{}.pem", c.node_id))
            );
            assert!(c.tls.cert.exists());
            assert!(c.cluster.bootstrap);
            let seeds: Vec<&str> = c.cluster.seeds.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(seeds, ["n1", "n2", "n3"]);
            assert_eq!(c.storage, crate::storage::StorageKind::Sled);
            assert_eq!(c.durability, crate::storage::DurabilityPolicy::Sync);
        }
        let client = store_client::ClientConfig::load(&layout.client_config).unwrap();
        assert_eq!(client.nodes.len(), 3);
        // Every node loads the shipped definitions and serves plain HTTP on loopback with the dev key.
        assert_eq!(
            std::fs::read_to_string(&layout.features).unwrap(),
            EXAMPLE_FEATURES
        );
        for (i, node) in layout.nodes.iter().enumerate() {
            let c = NodeConfig::load(&node.config, &Overrides::default()).unwrap();
            assert_eq!(c.ingest.features, Some(dir.join("features.toml")));
            let defs =
                crate::features::load(c.ingest.features.as_ref().unwrap(), &c.limits).unwrap();
            assert_eq!(c.ingest.segments, Some(dir.join("segments.toml")));
            crate::segments::load(c.ingest.segments.as_ref().unwrap(), &defs, &c.limits).unwrap();
            let port = 7401 + u16::try_from(i).unwrap();
            assert_eq!(
                c.http.listen,
                Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            );
            assert!(c.http.plaintext);
            assert_eq!(c.http.write_keys.len(), 1);
            assert_eq!(c.http.write_keys[0].key, layout.write_key);
        }
        let env = std::fs::read_to_string(&layout.http_env).unwrap();
        assert!(env.contains("\nHTTP_URL=http://127.0.0.1:7401\n"), "{env}");
        assert!(
            env.contains(&format!("\nWRITE_KEY={}\n", layout.write_key)),
            "{env}"
        );
        assert_eq!(layout.write_key.len(), 32);
        assert_eq!(client.cert, dir.join("certs/client-app.pem"));
        // admin.toml: the same nodes, the admin certificate (with the role); client.toml's has none.
        let admin = store_client::ClientConfig::load(&layout.admin_config).unwrap();
        assert_eq!(admin.nodes, client.nodes);
        assert_eq!(admin.cert, dir.join("certs/client-admin.pem"));
        let der = |path: &Path| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_file(path).unwrap()
        };
        assert!(certs::has_admin_role(&der(&admin.cert)));
        assert!(!certs::has_admin_role(&der(&client.cert)));
        // The texts are relative: nothing refers to the temporary directory.
        let text = std::fs::read_to_string(dir.join("n2.toml")).unwrap();
        assert!(!text.contains(&*tmp.path().to_string_lossy()), "{text}");

        // A second run reuses the CA and rewrites configs for the new port.
        let ca = std::fs::read(dir.join("certs/ca.pem")).unwrap();
        let again = prepare(&DevOptions {
            port: 9000,
            ..options(&dir, 3)
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join("certs/ca.pem")).unwrap(), ca);
        assert_eq!(again.nodes[2].addr.port(), 9002);
        // The write key is kept, the URL follows the port, an edited features.toml is kept.
        assert_eq!(again.write_key, layout.write_key);
        let env = std::fs::read_to_string(&again.http_env).unwrap();
        assert!(env.contains("HTTP_URL=http://127.0.0.1:9000\n"), "{env}");
        std::fs::write(&layout.features, "# mine\n").unwrap();
        prepare(&options(&dir, 3)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&layout.features).unwrap(),
            "# mine\n"
        );
        // No data yet, so no warning.
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    }

    #[test]
    fn the_demo_layout_loads_the_demo_segments_and_refuses_stale_features() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let layout = prepare_for(&options(&dir, 3), true).unwrap();
        assert_eq!(layout.segments, dir.join("segments.demo.toml"));
        assert_eq!(
            std::fs::read_to_string(&layout.segments).unwrap(),
            DEMO_SEGMENTS
        );
        for node in &layout.nodes {
            let c = NodeConfig::load(&node.config, &Overrides::default()).unwrap();
            assert_eq!(c.ingest.segments, Some(dir.join("segments.demo.toml")));
        }
        // Without --demo the nodes are back on segments.toml; the demo file stays.
        let plain = prepare(&options(&dir, 3)).unwrap();
        assert_eq!(plain.segments, dir.join("segments.toml"));
        assert!(layout.segments.exists());
        // A features.toml kept from before the demo's features existed is refused, naming what is missing.
        std::fs::write(
            &layout.features,
            "[[features]]\nname = \"page_views\"\non = \"page\"\naggregation = \"count\"\n",
        )
        .unwrap();
        let Err(DevError::Options(text)) = prepare_for(&options(&dir, 3), true) else {
            panic!("stale features accepted");
        };
        assert!(text.contains("revenue_30d (read by vip_at_risk)"), "{text}");
        assert!(text.contains("fresh --dir"), "{text}");
    }

    #[test]
    fn changing_the_shape_of_a_used_directory_warns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        prepare(&options(dir, 3)).unwrap();
        for i in 1..=3 {
            std::fs::create_dir_all(dir.join(format!("n{i}"))).unwrap();
            std::fs::write(dir.join(format!("n{i}/db")), b"x").unwrap();
        }
        assert!(prepare(&options(dir, 3)).unwrap().warnings.is_empty());

        let fewer = prepare(&options(dir, 2)).unwrap().warnings;
        assert!(
            fewer
                .iter()
                .any(|w| w.contains("n3 which this run does not start")),
            "{fewer:?}"
        );
        // n1.toml now describes 2 nodes: going back to 3 is a change again, and n3's data is back in use.
        let more = prepare(&options(dir, 4)).unwrap().warnings;
        assert!(
            more.iter().any(|w| w.starts_with("n4 start without data")),
            "{more:?}"
        );
        assert!(
            more.iter().any(|w| w.contains("layout changed")),
            "{more:?}"
        );
        assert!(more.last().unwrap().contains("fresh --dir"), "{more:?}");
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let dir = Path::new("unused");
        for (port, nodes) in [(7401, 0), (7401, MAX_NODES + 1), (0, 3), (65535, 2)] {
            let o = DevOptions {
                dir: dir.to_owned(),
                port,
                nodes,
            };
            assert!(
                matches!(plan(&o), Err(DevError::Options(_))),
                "{port} {nodes}"
            );
        }
        let o = DevOptions {
            dir: dir.to_owned(),
            port: 65534,
            nodes: 2,
        };
        assert_eq!(plan(&o).unwrap()[1].addr.port(), 65535);
    }
}
