//! `store-node dev` end to end: the real binary starts three node processes, a client writes and reads
//! back through the generated `client.toml`, the README's `curl` of `/v1/batch` with `http.env` becomes
//! features, and SIGTERM stops everything cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use featurestore::{FeatureView, Value};
use store_client::{Client, ClientConfig};

const NODES: u16 = 3;

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
    let base = common::dev::free_port_base(NODES);
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

    // The README's tour: `. data/dev/http.env`, then a curl of /v1/batch with Basic auth.
    let env = std::fs::read_to_string(dir.join("http.env")).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from http.env: {env}"))
            .to_owned()
    };
    let (url, key) = (var("HTTP_URL"), var("WRITE_KEY"));
    assert_eq!(url, format!("http://127.0.0.1:{base}"));
    let target = common::http::Target::plain(url.trim_start_matches("http://").parse().unwrap());
    let batch = serde_json::json!({"batch": [
        {"type": "page", "userId": "u1", "name": "Home"},
        {"type": "track", "userId": "u1", "event": "Product Added", "properties": {"product_id": "p-1"}},
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 42.5}},
    ]});
    let reply = common::http::post(
        &target,
        "/v1/batch",
        Some(&key),
        batch.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Applied on the owner before the 200; a read that lands on another replica may need a moment.
    let windows = |view: &featurestore::ProfileView| -> Vec<Option<f64>> {
        ["page_views", "cart_adds_30m", "orders_30m", "revenue_7d"]
            .iter()
            .map(|name| match view.features.get(*name) {
                Some(FeatureView::Window { value, .. }) => *value,
                _ => None,
            })
            .collect()
    };
    let want = vec![Some(1.0), Some(1.0), Some(1.0), Some(42.5)];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = client.get("u1", None).await.unwrap().unwrap();
        if windows(&view) == want {
            // The shipped segments ran on the owner: the add to cart entered `open_cart`, the order
            // exited it (the README's tour says so).
            let Some(FeatureView::Flag(open_cart)) = view.features.get("segment:open_cart") else {
                panic!("no open_cart membership: {view:?}");
            };
            let values: Vec<bool> = open_cart.values.iter().map(|v| v.value).collect();
            assert_eq!(values, vec![false], "{view:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "features of the batch not readable: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("{id}'s HTTP port {addr} still taken: {e}"));
    }
}
