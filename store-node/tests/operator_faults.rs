//! Faults found when the node was run as an operator would (issue 11), each as a real-process regression
//! test: a node whose log reader has gone (a closed stderr pipe) still starts, serves and stops cleanly on
//! SIGTERM and SIGINT.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use featurestore::{FeatureView, Value};
use store_node::launch::{NodeProcess, Signal};

/// How long a node gets to exit after the signal (it stops in well under a second when healthy).
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Node `n1` in a fresh directory with certificates, logging at `debug` (so that every request and the
/// shutdown write log lines), its stderr piped to the test; returns the directory, the config path and the
/// process, not yet waited for.
fn node_with_piped_stderr() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().unwrap();
    store_node::certs::generate(
        &dir.path().join("certs"),
        &["n1".to_owned()],
        &["app".to_owned()],
    )
    .unwrap();
    let config = dir.path().join("node.toml");
    common::node_config("n1", "127.0.0.1:0".parse().unwrap(), "data", "")
        .write(&config, "")
        .unwrap();
    let mut command =
        NodeProcess::serve_command(env!("CARGO_BIN_EXE_store-node").as_ref(), &config);
    command
        .env("FEATURESTORE_LOG", "debug")
        .stderr(Stdio::piped());
    let node = NodeProcess::spawn_command(command, |_| {}).unwrap();
    (dir, node)
}

/// Writes a client config for the node at `addr` and does one write and one read through it.
async fn put_and_get(dir: &std::path::Path, addr: std::net::SocketAddr) {
    let text = format!(
        "ca_cert = \"certs/ca.pem\"\ncert = \"certs/client-app.pem\"\nkey = \"certs/client-app.key\"\n\
         request_timeout_ms = 10000\n[[nodes]]\nname = \"n1\"\naddr = \"{addr}\"\n"
    );
    let path = dir.join("client.toml");
    std::fs::write(&path, text).unwrap();
    let client = store_client::Client::connect(store_client::ClientConfig::load(&path).unwrap())
        .await
        .unwrap();
    client.put("u1", &[("score", Value::I64(7))]).await.unwrap();
    let view = client.get("u1", None).await.unwrap().unwrap();
    let FeatureView::Gauge { value, .. } = &view.features["score"] else {
        panic!("score is not a gauge: {view:?}");
    };
    assert_eq!(value, &Value::I64(7));
    client.close().await;
}

/// Sends `signal` and expects a clean exit (status 0) within [`STOP_GRACE`].
fn stops_cleanly_on(node: &mut NodeProcess, signal: Signal) {
    assert!(node.signal(signal).unwrap(), "could not signal the node");
    let begin = std::time::Instant::now();
    loop {
        if let Some(status) = node.try_wait().unwrap() {
            assert!(
                status.success(),
                "node exited with {status} after SIG{}",
                signal.name()
            );
            return;
        }
        assert!(
            begin.elapsed() < STOP_GRACE,
            "node still running {} s after SIG{} (its stderr reader is gone)",
            STOP_GRACE.as_secs(),
            signal.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stderr reader is gone before the node writes its first log line (`store-node serve 2>&1 | head
/// -c 0`, a log shipper that never started): the node starts, serves and stops on SIGTERM. Before the
/// fix it died at start-up with exit status 101 (a panic in the log subscriber's error report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_closed_stderr_starts_serves_and_stops_on_sigterm() {
    let (dir, mut node) = node_with_piped_stderr();
    drop(node.take_stderr());
    let ready = node
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("a node whose stderr is closed must still start: {e}"));
    put_and_get(dir.path(), ready.addr).await;
    stops_cleanly_on(&mut node, Signal::Term);
}

/// The stderr reader goes away while the node runs (a log shipper that died): the node keeps serving
/// and still stops on SIGINT. Before the fix the signal handler's log line panicked before the shutdown
/// token was cancelled, and the node ignored every further SIGINT and SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stderr_reader_died_still_stops_on_sigint() {
    let (dir, mut node) = node_with_piped_stderr();
    let stderr = node.take_stderr().unwrap();
    let ready = node.wait_ready(Duration::from_secs(60)).unwrap();
    // The startup lines are in the pipe (well under its buffer); close the read end unread.
    drop(stderr);
    put_and_get(dir.path(), ready.addr).await;
    stops_cleanly_on(&mut node, Signal::Int);
}
