//! Cluster helpers for the quorum tests: a [`TestCluster`] with chosen replication settings, a client with
//! generous time bounds, SIGSTOP/SIGCONT of one node by pid, and what the admin requests say about a key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use featurestore::cluster::detector::Liveness;
use featurestore::{NodeId, Profile, Value};
use store_client::{Client, ClientConfig, NodeStatus};
use store_node::config::Seed;
use store_node::launch::Signal;

use super::{free_ports, node_config, ClusterNode, TestCluster};

/// Replication settings (a [`node_config`] overlay) under which a replica that missed a write stays stale
/// until a read repairs it: hints are dropped at once (a budget of 0 bytes per target), anti-entropy runs
/// once at start and then every hour, and moves no key (`ae_max_keys = 0`). Read repair is then the only
/// path that can bring a stale replica up to date. RPC timeout 1 s.
pub const NO_BACKGROUND_REPAIR: &str = "[cluster]\n\
tick_ms = 20\n\
[cluster.replication]\n\
rpc_timeout_ms = 1000\n\
hint_replay_ms = 3600000\n\
max_hint_bytes_per_target = 0\n\
gossip_ms = 100\n\
anti_entropy_ms = 3600000\n\
ae_max_keys = 0\n\
[cluster.replication.detector]\n\
expected_interval_ms = 100\n\
startup_grace_ms = 2000\n";

/// Starts `n` nodes n1..nN that bootstrap one cluster, like [`TestCluster::start`], with `overlay` (a
/// [`node_config`] overlay: the `[cluster]` settings) in place of [`super::FAST_CLUSTER`]. Also writes
/// `slow-client.toml` (every node as a seed, 30 s per request: see [`slow_client`]).
pub fn start_with(n: usize, overlay: &str) -> TestCluster {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    super::generate_certs(dir.path(), &ids);
    let addrs: Vec<SocketAddr> = free_ports(n)
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let seeds: Vec<Seed> = ids
        .iter()
        .zip(&addrs)
        .map(|(id, addr)| Seed {
            id: NodeId::new(id.as_str()).unwrap(),
            addr: *addr,
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, addr) in ids.iter().zip(&addrs) {
        let mut node = node_config(id, *addr, id, overlay);
        node.cluster.bootstrap = true;
        node.cluster.seeds = seeds.clone();
        let config = dir.path().join(format!("{id}.toml"));
        node.write(&config, "").unwrap();
        nodes.push(ClusterNode {
            id: id.clone(),
            addr: *addr,
            http: None,
            child: None,
            config,
        });
    }
    let mut cluster = TestCluster { dir, nodes };
    for i in 0..n {
        cluster.launch(i);
    }
    cluster.write_client_config();
    let mut text = "ca_cert = \"certs/ca.pem\"\ncert = \"certs/client-admin.pem\"\nkey = \"certs/client-admin.key\"\n\
                    request_timeout_ms = 30000\nconnect_timeout_ms = 2000\n"
        .to_owned();
    for node in &cluster.nodes {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
            node.id, node.addr
        ));
    }
    std::fs::write(slow_client_config(&cluster), text).unwrap();
    cluster
}

fn slow_client_config(cluster: &TestCluster) -> PathBuf {
    cluster.dir.path().join("slow-client.toml")
}

/// A new client of a cluster made by [`start_with`] (its own connections, nothing backed off), routed by
/// the ring, whose requests may take 30 s: longer than any RPC timeout of these tests, so a node's own
/// `Unavailable` is never mistaken for a client timeout.
pub async fn slow_client(cluster: &TestCluster) -> Client {
    Client::connect(ClientConfig::load(slow_client_config(cluster)).unwrap())
        .await
        .unwrap()
}

/// Sends `signal` (SIGSTOP, SIGCONT) to node `i`'s process, by its pid. For SIGSTOP, returns only once
/// every thread of the process shows as stopped: `kill` returns once the signal is queued and the threads
/// stop asynchronously, so without the wait a test cannot be sure the node is frozen before it sends.
pub fn signal(cluster: &mut TestCluster, i: usize, signal: Signal) {
    let node = cluster.nodes[i].child.as_mut().expect("node is running");
    let pid = node.pid();
    let sent = node.signal(signal).unwrap();
    assert!(sent, "kill -{} {pid} failed", signal.name());
    if matches!(signal, Signal::Stop) {
        let begin = std::time::Instant::now();
        while !all_threads_stopped(pid) {
            assert!(
                begin.elapsed() < Duration::from_secs(5),
                "node {pid} not stopped 5 s after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether every thread of `pid` is in state `T` (stopped) per `/proc/PID/task/*/stat`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the parenthesised command name, which may itself hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t")
        })
    })
}

/// The first key `PREFIX-0`, `PREFIX-1`, ... whose replicas (in the client's ring, in preference order)
/// satisfy `want`. Panics if the client does not see `n` replicas per key.
pub fn key_where(
    client: &Client,
    prefix: &str,
    n: usize,
    want: impl Fn(&[NodeId]) -> bool,
) -> String {
    for i in 0..10_000 {
        let key = format!("{prefix}-{i}");
        let replicas = client.replicas(&key);
        assert_eq!(replicas.len(), n, "{key}: replicas {replicas:?}");
        if want(&replicas) {
            return key;
        }
    }
    panic!("no key with the wanted replicas among 10,000");
}

/// A node's raw state of `key` (admin `LocalState`), as `storectl local KEY --node N` shows it.
pub async fn local(client: &Client, node: &NodeId, key: &str) -> Result<Option<Profile>, String> {
    client
        .local_state(node, key)
        .await
        .map_err(|e| format!("local state of {key} on {node}: {e}"))
}

/// The gauge `name` of a raw state (`None` if absent).
pub fn gauge(state: &Option<Profile>, name: &str) -> Option<Value> {
    state.as_ref()?.gauges.get(name)?.value.clone()
}

/// The counter `name` of a raw state (0 if absent).
pub fn counter(state: &Option<Profile>, name: &str) -> i64 {
    state
        .as_ref()
        .and_then(|s| s.counters.get(name))
        .map_or(0, |c| c.value())
}

/// The status counter `name` of `node` (an error if the node does not answer or lacks it).
pub async fn status_counter(client: &Client, node: &NodeId, name: &str) -> Result<u64, String> {
    let status: NodeStatus = client
        .status_of(node)
        .await
        .map_err(|e| format!("status of {node}: {e}"))?;
    status
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("{node} reports no counter {name}"))
}

/// Retries `check` every 200 ms until it returns `Ok` (returned) or `limit` passes (panics with the last
/// error).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(e) if start.elapsed() > limit => panic!("{what} not reached in {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits (up to 60 s) until every node of `cluster` answers its status and finds every other member alive.
pub async fn all_alive(cluster: &TestCluster, client: &Client) {
    let nodes: Vec<NodeId> = cluster
        .nodes
        .iter()
        .map(|n| NodeId::new(n.id.as_str()).unwrap())
        .collect();
    eventually(
        "every node sees every other alive",
        Duration::from_secs(60),
        || async {
            for node in &nodes {
                let status = client
                    .status_of(node)
                    .await
                    .map_err(|e| format!("status of {node}: {e}"))?;
                for m in status.members.iter().filter(|m| m.id != *node) {
                    if m.liveness != Liveness::Alive {
                        return Err(format!("{node} sees {} as {:?}", m.id, m.liveness));
                    }
                }
            }
            Ok(())
        },
    )
    .await;
}

/// The real `storectl` with the cluster's client config (`client.toml`); its stdout as JSON. It is run from
/// the target directory next to the test's executable (`cargo test --workspace` builds it; alone: `cargo
/// build -p store-client --bin storectl` first).
pub fn storectl(cluster: &TestCluster, args: &[&str]) -> serde_json::Value {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("storectl");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build -p store-client --bin storectl` (cargo test --workspace builds it)",
        bin.display()
    );
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(cluster.dir.path().join("client.toml"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "storectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
