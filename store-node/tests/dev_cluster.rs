//! `store-node dev` end to end: the real binary starts three node processes, a client writes and reads
//! back through the generated `client.toml`, and SIGTERM stops everything cleanly.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use featurestore::{FeatureView, Value};
use store_client::{Client, ClientConfig};

const NODES: u16 = 3;

/// A base port with `base..base + NODES` free on 127.0.0.1 (UDP), found by binding ephemeral sockets.
fn free_port_base() -> u16 {
    for _ in 0..50 {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base.checked_add(NODES).is_none() {
            continue;
        }
        let all_free = (base..base + NODES).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

/// Stops the dev process (and so its nodes) with SIGTERM if the test fails half way.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_three_nodes_serves_a_client_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let base = free_port_base();
    let child = Command::new(env!("CARGO_BIN_EXE_store-node"))
        .arg("dev")
        .arg("--dir")
        .arg(&dir)
        .args(["--port", &base.to_string(), "--nodes", &NODES.to_string()])
        .env("FEATURESTORE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Keep draining stdout until the dev process exits, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("dev> {line}");
            let _ = tx.send(line);
        }
    });

    // `[n<i>] store-node n<i> ready on <addr>` for every node, then the dev banner with the PIDs.
    let mut ready: Vec<(String, SocketAddr)> = Vec::new();
    let mut pids: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("dev cluster not ready in time");
        if let Some((prefix, rest)) = line.split_once("] store-node ") {
            let (id, addr) = rest.split_once(" ready on ").unwrap();
            assert_eq!(prefix, format!("[{id}"));
            ready.push((id.to_owned(), addr.trim().parse().unwrap()));
        } else if let Some(pid) = line.split(" pid ").nth(1) {
            pids.push(pid.split_whitespace().next().unwrap().parse().unwrap());
        } else if line.starts_with("dev cluster ready: ") {
            assert_eq!(line, "dev cluster ready: n1,n2,n3");
            break;
        }
    }
    ready.sort();
    let expected: Vec<(String, SocketAddr)> = (0..NODES)
        .map(|i| {
            (
                format!("n{}", i + 1),
                SocketAddr::from(([127, 0, 0, 1], base + i)),
            )
        })
        .collect();
    assert_eq!(ready, expected);
    assert_eq!(pids.len(), usize::from(NODES));
    for i in 1..=NODES {
        assert!(dir.join(format!("n{i}.toml")).exists());
    }

    // A client from the generated client.toml writes and reads back.
    let config = ClientConfig::load(dir.join("client.toml")).unwrap();
    assert_eq!(config.nodes.len(), usize::from(NODES));
    let client = Client::connect(config).await.unwrap();
    client
        .put("u1", &[("cart_value", Value::F64(42.5))])
        .await
        .unwrap();
    let view = client.get("u1", None).await.unwrap().unwrap();
    let FeatureView::Gauge { value, .. } = &view.features["cart_value"] else {
        panic!("not a gauge: {view:?}");
    };
    assert_eq!(*value, Value::F64(42.5));
    client.close().await;

    // SIGTERM: the dev process stops every node and exits 0 within 20 s.
    let mut child = guard.0.take().unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dev did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dev exited with {status}");

    // No node is left: the PIDs are gone and every port can be bound again.
    for pid in pids {
        assert!(!pid_alive(pid), "node process {pid} still running");
    }
    for (id, addr) in &expected {
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("{id}'s port {addr} still taken: {e}"));
    }
}
