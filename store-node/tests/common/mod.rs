//! Test support: real `store-node` processes with real certificates, sled files and QUIC.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod dev;
pub mod events;
pub mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use featurestore::NodeId;
use store_client::{Client, ClientConfig};
use store_node::config::{NodeConfig, Seed, TlsFiles};
use store_node::launch::{NodeProcess, ReadyInfo};

/// How long a node gets to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `store-node serve --config CONFIG` and waits (up to 60 s) for its ready event; returns the
/// process (killed when dropped) and what it reported.
pub fn spawn_node(config: &Path) -> (NodeProcess, ReadyInfo) {
    let mut command = NodeProcess::serve_command(env!("CARGO_BIN_EXE_store-node").as_ref(), config);
    command.env("FEATURESTORE_LOG", "warn");
    let mut node = NodeProcess::spawn_command(command, |_| {}).unwrap();
    match node.wait_ready(READY_TIMEOUT) {
        Ok(ready) => (node, ready),
        Err(e) => panic!("{}: {e}", config.display()),
    }
}

/// Node `id`'s config: listening on `addr`, data in `data_dir`, the certificates `certs/ca.pem` and
/// `certs/node-<id>.pem/.key` (paths relative to the config file), then `overlay` applied: TOML whose
/// keys replace the config's (tables are merged key by key).
pub fn node_config(id: &str, addr: SocketAddr, data_dir: &str, overlay: &str) -> NodeConfig {
    let tls = TlsFiles {
        ca_cert: "certs/ca.pem".into(),
        cert: format!("certs/node-{id}.pem").into(),
        key: format!("certs/node-{id}.key").into(),
    };
    let config = NodeConfig::new(NodeId::new(id).unwrap(), addr, data_dir.into(), tls);
    let toml::Value::Table(mut table) = toml::Value::try_from(&config).unwrap() else {
        unreachable!("a config is a table");
    };
    merge(&mut table, toml::from_str(overlay).unwrap());
    toml::Value::Table(table).try_into().unwrap()
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(overlay)) => merge(base, overlay),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Writes the cluster CA and the certificates of `nodes`, of the application client `app` and of the admin
/// client `admin` (admin role) into `<dir>/certs`.
pub fn generate_certs(dir: &Path, nodes: &[String]) {
    store_node::certs::generate_with_admins(
        &dir.join("certs"),
        nodes,
        &["app".to_owned()],
        &["admin".to_owned()],
    )
    .unwrap();
}

/// One node process and its files.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub child: Option<NodeProcess>,
    pub addr: SocketAddr,
    /// Extra TOML applied to the node config (e.g. a durability section), see [`node_config`].
    pub extra: String,
}

impl TestNode {
    /// Generates certificates (node `n1`, application client `app`, admin client `admin`) and starts the
    /// node; its `client.toml` uses `app`.
    pub fn start(extra: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        generate_certs(dir.path(), &["n1".to_owned()]);
        let mut node = TestNode {
            dir,
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            extra: extra.to_owned(),
        };
        node.launch();
        node
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self) -> PathBuf {
        let path = self.path().join("node.toml");
        node_config("n1", self.addr, "data", &self.extra)
            .write(&path, "")
            .unwrap();
        path
    }

    /// Starts the process (on the same port as before, if it ran before) and waits for its ready event.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let config = self.write_config();
        let (child, ready) = spawn_node(&config);
        self.addr = ready.addr;
        self.child = Some(child);
        self.write_client_config("client.toml", "app");
    }

    /// Writes a client config for certificate `client-<name>` under `certs_dir` (relative to the node dir).
    pub fn write_client_config(&self, file: &str, name: &str) -> PathBuf {
        let text = format!(
            "ca_cert = \"certs/ca.pem\"\ncert = \"certs/client-{name}.pem\"\nkey = \"certs/client-{name}.key\"\n\
             request_timeout_ms = 10000\n[[nodes]]\nname = \"n1\"\naddr = \"{}\"\n",
            self.addr
        );
        let path = self.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::load(self.path().join("client.toml")).unwrap()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config()).await.unwrap()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.child.take().expect("running").kill().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        match child.terminate(Duration::from_secs(15)).unwrap() {
            Some(status) => status,
            // Dropping `child` kills it.
            None => panic!("node did not exit within 15 s of SIGTERM"),
        }
    }
}

impl Drop for TestNode {
    /// Kills the node before its directory is removed.
    fn drop(&mut self) {
        drop(self.child.take());
    }
}

/// Picks `n` distinct free UDP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

/// Replication settings fast enough for tests (seconds, not minutes, to converge), as a [`node_config`]
/// overlay.
pub const FAST_CLUSTER: &str = "[cluster]\n\
tick_ms = 20\n\
[cluster.replication]\n\
rpc_timeout_ms = 500\n\
hint_replay_ms = 200\n\
gossip_ms = 100\n\
anti_entropy_ms = 1000\n\
[cluster.replication.detector]\n\
expected_interval_ms = 100\n\
startup_grace_ms = 2000\n";

/// Several node processes sharing one CA, each with its own directory.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ClusterNode>,
}

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    pub id: String,
    pub addr: SocketAddr,
    /// Its HTTP listener's address, as its last ready event reported it (`[http] listen`).
    pub http: Option<SocketAddr>,
    pub child: Option<NodeProcess>,
    pub config: PathBuf,
}

impl TestCluster {
    /// Starts `n` nodes n1..nN that bootstrap one cluster.
    pub fn start(n: usize) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (1..=n + 2).map(|i| format!("n{i}")).collect();
        generate_certs(dir.path(), &ids);
        let ports = free_ports(n);
        let addrs: Vec<SocketAddr> = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
            .collect();
        let mut cluster = TestCluster {
            dir,
            nodes: Vec::new(),
        };
        let seeds: Vec<(String, SocketAddr)> = (0..n).map(|i| (ids[i].clone(), addrs[i])).collect();
        for (id, addr) in &seeds {
            cluster.add_node(id, *addr, &seeds, true);
        }
        for i in 0..n {
            cluster.launch(i);
        }
        cluster.write_client_config();
        cluster
    }

    fn add_node(
        &mut self,
        id: &str,
        addr: SocketAddr,
        seeds: &[(String, SocketAddr)],
        bootstrap: bool,
    ) {
        let mut node = node_config(id, addr, id, FAST_CLUSTER);
        node.cluster.bootstrap = bootstrap;
        node.cluster.seeds = seeds
            .iter()
            .map(|(sid, saddr)| Seed {
                id: NodeId::new(sid.as_str()).unwrap(),
                addr: *saddr,
            })
            .collect();
        let config = self.dir.path().join(format!("{id}.toml"));
        node.write(&config, "").unwrap();
        self.nodes.push(ClusterNode {
            id: id.to_owned(),
            addr,
            http: None,
            child: None,
            config,
        });
    }

    /// Adds a node that joins the running cluster through the existing nodes as seeds, and starts it.
    pub fn join_new_node(&mut self) -> usize {
        let i = self.nodes.len();
        let id = format!("n{}", i + 1);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_ports(1)[0]).parse().unwrap();
        let seeds: Vec<(String, SocketAddr)> =
            self.nodes.iter().map(|n| (n.id.clone(), n.addr)).collect();
        self.add_node(&id, addr, &seeds, false);
        self.launch(i);
        self.write_client_config();
        i
    }

    /// Starts node `i` and waits for its ready event.
    pub fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} already running", node.id);
        let (child, ready) = spawn_node(&node.config);
        node.http = ready.http;
        node.child = Some(child);
    }

    /// `kill -9` node `i`.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].child.take().expect("running").kill().unwrap();
    }

    /// Writes `client.toml` (all nodes as seeds) and one `client-<id>.toml` per node (that node only),
    /// with the admin certificate (these tests act as operators too), and `app-<id>.toml` with the
    /// application certificate.
    pub fn write_client_config(&self) {
        let head = |name: &str| {
            format!(
                "ca_cert = \"certs/ca.pem\"\ncert = \"certs/client-{name}.pem\"\nkey = \"certs/client-{name}.key\"\n\
                 request_timeout_ms = 5000\nconnect_timeout_ms = 2000\n"
            )
        };
        let mut all = head("admin");
        for n in &self.nodes {
            let entry = format!("[[nodes]]\nname = \"{}\"\naddr = \"{}\"\n", n.id, n.addr);
            all.push_str(&entry);
            for (file, cert) in [("client", "admin"), ("app", "app")] {
                std::fs::write(
                    self.dir.path().join(format!("{file}-{}.toml", n.id)),
                    format!("{}{entry}", head(cert)),
                )
                .unwrap();
            }
        }
        std::fs::write(self.dir.path().join("client.toml"), all).unwrap();
    }

    /// A client with the application certificate whose only seed is node `i`.
    pub async fn app_node_client(&self, i: usize) -> Client {
        let path = self
            .dir
            .path()
            .join(format!("app-{}.toml", self.nodes[i].id));
        Client::connect(ClientConfig::load(path).unwrap())
            .await
            .unwrap()
    }

    /// A client routed by the ring (seeds: every node).
    pub async fn client(&self) -> Client {
        Client::connect(ClientConfig::load(self.dir.path().join("client.toml")).unwrap())
            .await
            .unwrap()
    }

    /// A client whose only seed is node `i` (for admin requests to that node).
    pub async fn node_client(&self, i: usize) -> Client {
        let path = self
            .dir
            .path()
            .join(format!("client-{}.toml", self.nodes[i].id));
        Client::connect(ClientConfig::load(path).unwrap())
            .await
            .unwrap()
    }
}

impl Drop for TestCluster {
    /// Kills the nodes before their directory is removed.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            drop(n.child.take());
        }
    }
}
