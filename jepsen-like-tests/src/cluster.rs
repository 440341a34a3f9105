//! The cluster under test: `store-node serve` processes, each started with
//! `ip netns exec <its namespace> store-node serve --config <its config>` (so the process id is the
//! node's own: `ip netns exec` execs it), with real certificates, sled data dirs and `durability = sync`.
//!
//! Each node gets the test-only clock control file (`[test] clock_control_file`) that the clock nemesis
//! writes, and replication settings fast enough for a test (anti-entropy every second, hints replayed
//! every 200 ms). Certificates come from [`issue_certs`], the one place that knows which certificates
//! the harness needs. Stderr of every incarnation of a node is appended to `<node>/node.log`.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use featurestore::NodeId;
use store_node::config::{NodeConfig, Seed, TlsFiles};
use store_node::launch::{NodeProcess, Signal};

use crate::netns::Net;

/// The UDP port every node listens on (each has its own address).
pub const PORT: u16 = 7000;

/// How long a node gets to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The client certificate the worker uses (`certs/client-app.*`, with the admin role).
pub const CLIENT: &str = "app";

/// Writes the cluster CA, one certificate per node and the (admin) client certificate into `dir`.
pub fn issue_certs(dir: &Path, nodes: &[String]) -> anyhow::Result<()> {
    // The harness's client reads each replica's raw state (`LocalState`) and asks members to leave:
    // admin requests, so its certificate carries the admin role.
    store_node::certs::generate_with_admins(dir, nodes, &[], &[CLIENT.to_owned()])?;
    Ok(())
}

/// The feature definitions every node loads: an all-time count of `Hit` events (the ingest workload).
pub const FEATURES: &str =
    "[[features]]\nname = \"hits\"\non = \"track\"\nevent = \"Hit\"\naggregation = \"count\"\n";

/// One node of the cluster.
#[derive(Debug)]
pub struct Node {
    /// Its id (`n1`, ...).
    pub id: String,
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its directory (config, data, log, clock file).
    pub dir: PathBuf,
    /// The running process, if any.
    pub process: Option<NodeProcess>,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    /// Asked to leave the cluster.
    pub left: bool,
    /// Whether it was ever started (spare nodes start only when the membership nemesis adds them).
    pub member: bool,
    /// Host time its data dir was last wiped, ms.
    pub wiped_at: Option<u64>,
}

impl Node {
    /// Its config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    /// Its data dir.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    /// Its log (stderr of every incarnation).
    pub fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    /// The file its clock offset is read from.
    pub fn clock_file(&self) -> PathBuf {
        self.dir.join("clock-offset")
    }
    /// Whether it runs (started, not paused, not left).
    pub fn is_up(&self) -> bool {
        self.process.is_some() && !self.paused && !self.left
    }
}

/// Every node, the binary and the run directory.
#[derive(Debug)]
pub struct Cluster {
    /// The run directory.
    pub dir: PathBuf,
    /// The `store-node` binary.
    pub bin: PathBuf,
    /// The nodes: the first `initial` form the cluster, the rest are spares for joins.
    pub nodes: Vec<Node>,
    /// How many nodes bootstrap the cluster.
    pub initial: usize,
}

impl Cluster {
    /// Writes certificates and configs for `initial + spare` nodes whose namespaces `net` holds as
    /// members `n1..`; nothing is started.
    pub fn prepare(
        dir: &Path,
        bin: &Path,
        net: &Net,
        initial: usize,
        spare: usize,
    ) -> anyhow::Result<Cluster> {
        let ids: Vec<String> = (1..=initial + spare).map(|i| format!("n{i}")).collect();
        issue_certs(&dir.join("certs"), &ids)?;
        let mut nodes = Vec::new();
        for id in &ids {
            let member = net.member(id)?;
            let node_dir = dir.join(id);
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(Node {
                id: id.clone(),
                ns: member.ns.clone(),
                addr: SocketAddr::new(member.ip.into(), PORT),
                dir: node_dir,
                process: None,
                paused: false,
                left: false,
                member: false,
                wiped_at: None,
            });
        }
        let cluster = Cluster {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            nodes,
            initial,
        };
        for i in 0..cluster.nodes.len() {
            cluster.write_config(i, i < initial)?;
            std::fs::write(cluster.nodes[i].clock_file(), "0\n")?;
        }
        cluster.write_client_config()?;
        std::fs::write(dir.join("features.toml"), FEATURES)?;
        Ok(cluster)
    }

    /// Writes node `i`'s config: bootstrapping the initial cluster, or joining it (`bootstrap` false).
    pub fn write_config(&self, i: usize, bootstrap: bool) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let tls = TlsFiles {
            ca_cert: "../certs/ca.pem".into(),
            cert: format!("../certs/node-{}.pem", node.id).into(),
            key: format!("../certs/node-{}.key", node.id).into(),
        };
        let mut config = NodeConfig::new(
            NodeId::new(node.id.as_str())?,
            node.addr,
            "data".into(),
            tls,
        );
        config.cluster.bootstrap = bootstrap;
        config.cluster.seeds = self.nodes[..self.initial]
            .iter()
            .filter(|n| bootstrap || n.id != node.id)
            .map(|n| {
                Ok(Seed {
                    id: NodeId::new(n.id.as_str())?,
                    addr: n.addr,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        config.cluster.tick_ms = 20;
        let r = &mut config.cluster.replication;
        r.rpc_timeout_ms = 500;
        r.hint_replay_ms = 200;
        r.gossip_ms = 100;
        r.anti_entropy_ms = 1000;
        r.detector.expected_interval_ms = 100;
        r.detector.startup_grace_ms = 2000;
        config.test.clock_control_file = Some("clock-offset".into());
        config.ingest.features = Some("../features.toml".into());
        config.write(
            &node.config(),
            "written by jepsen-like-tests (test-only clock control enabled)",
        )?;
        Ok(())
    }

    /// Writes `client.toml`: the initial nodes as seeds, 2 s per request.
    pub fn write_client_config(&self) -> anyhow::Result<()> {
        let mut text = format!(
            "ca_cert = \"certs/ca.pem\"\ncert = \"certs/client-{CLIENT}.pem\"\nkey = \"certs/client-{CLIENT}.key\"\n\
             request_timeout_ms = 2000\nconnect_timeout_ms = 1000\n"
        );
        for n in &self.nodes[..self.initial] {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
                n.id, n.addr
            ));
        }
        std::fs::write(self.dir.join("client.toml"), text)?;
        Ok(())
    }

    /// The index of node `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Starts node `i` in its namespace and waits for its ready event.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        anyhow::ensure!(node.process.is_none(), "{} already runs", node.id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log())?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &node.ns])
            .arg(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(node.config())
            .env("FEATURESTORE_LOG", "warn")
            .stderr(Stdio::from(log));
        let mut process = NodeProcess::spawn_command(command, |_| {})
            .with_context(|| format!("starting {}", node.id))?;
        process
            .wait_ready(READY_TIMEOUT)
            .with_context(|| format!("{} did not start (see {})", node.id, node.log().display()))?;
        node.process = Some(process);
        node.member = true;
        node.paused = false;
        Ok(())
    }

    /// `kill -9` node `i` (and reaps it).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if let Some(mut p) = node.process.take() {
            p.kill()?;
        }
        node.paused = false;
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to node `i`.
    pub fn pause(&mut self, i: usize, stop: bool) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if let Some(p) = node.process.as_mut() {
            p.signal(if stop { Signal::Stop } else { Signal::Cont })?;
            node.paused = stop;
        }
        Ok(())
    }

    /// Removes node `i`'s data dir (the node must be stopped).
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        anyhow::ensure!(node.process.is_none(), "wipe {} while it runs", node.id);
        let data = node.data();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        node.wiped_at = Some(crate::now_ms());
        Ok(())
    }

    /// Sets node `i`'s clock offset (through its control file, polled every 100 ms).
    pub fn set_clock(&self, i: usize, offset_ms: i64) -> anyhow::Result<()> {
        let path = self.nodes[i].clock_file();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_ms}\n"))?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Indexes of the nodes that run and serve (not paused, not left).
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_up())
            .collect()
    }

    /// The resident memory of node `i`, in KiB (from /proc), if it runs.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.nodes[i].process.as_ref()?.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Kills every node (SIGCONT first, so a paused one dies promptly).
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.pause(i, false);
            let _ = self.kill(i);
        }
    }
}

/// The `store-node` binary next to this executable (`target/<profile>/store-node`).
pub fn find_store_node() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("the harness executable has no directory")?;
    // `target/debug/store-node`, also when the harness runs from `target/debug/deps` (a test).
    for candidate in [dir.join("store-node"), dir.join("../store-node")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no store-node binary next to {} : build it first with `cargo build -p store-node` \
         (with --release for a release harness), or pass --store-node PATH",
        exe.display()
    )
}

/// The address of a node as the client sees it.
pub fn node_ip(cluster: &Cluster, id: &str) -> Option<Ipv4Addr> {
    cluster
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map(|n| match n.addr {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        })
}
