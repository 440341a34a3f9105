//! `store-node dev --demo` end to end: the real binary starts three nodes and the demo; the generator's
//! events arrive over HTTP (a generated user's profile has features and identify traits, read through
//! the generated `client.toml`), segment transitions and status lines are printed, and SIGTERM stops the
//! demo and then every node, with exit status 0. Bounds are generous and nothing asserts a rate: the test
//! must pass on a loaded 2-core machine.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use store_client::{Client, ClientConfig};

const NODES: u16 = 3;
const USERS: u32 = 40;

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

/// `[demo] <user> entered <segment> (<cause>) on <node>`, parsed.
fn entered(line: &str) -> Option<(String, String, String, String)> {
    let rest = line.strip_prefix("[demo] ")?;
    let (user, rest) = rest.split_once(" entered ")?;
    let (segment, rest) = rest.split_once(" (")?;
    let (cause, node) = rest.split_once(") on ")?;
    Some((user.into(), segment.into(), cause.into(), node.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_posts_events_prints_transitions_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let base = common::dev::free_port_base(NODES);
    let child = Command::new(env!("CARGO_BIN_EXE_store-node"))
        .arg("dev")
        .arg("--dir")
        .arg(&dir)
        .args(["--port", &base.to_string(), "--nodes", &NODES.to_string()])
        .args(["--demo", "--demo-users", &USERS.to_string()])
        .args(["--demo-rate", "150", "--demo-seed", "7"])
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
    let next_line = |deadline: Instant, what: &str| -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
    };

    // The banner names the demo, its segments and the dashboard, before `dev cluster ready`.
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = next_line(deadline, "the dev cluster to be ready");
        if line.starts_with("dev cluster ready: ") {
            assert_eq!(line, "dev cluster ready: n1,n2,n3");
            break;
        }
        banner.push(line);
    }
    let has = |needle: &str| banner.iter().any(|l| l.contains(needle));
    assert!(
        has(&format!("dashboard: http://127.0.0.1:{base}/ui")),
        "{banner:#?}"
    );
    assert!(has("demo: 40 users (u-0000 .. u-0039)"), "{banner:#?}");
    assert!(has("segments.demo.toml"), "{banner:#?}");

    // Transitions and a status line are printed.
    let mut transition = None;
    let mut status = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while transition.is_none() || status.is_none() {
        let line = next_line(deadline, "an `entered` line and a status line");
        if let Some(t) = entered(&line) {
            transition.get_or_insert(t);
        } else if line.starts_with("[demo] status: ") {
            status.get_or_insert(line);
        }
    }
    let (user, segment, cause, node) = transition.unwrap();
    assert!(!user.is_empty());
    assert!(
        [
            "cart_abandoner",
            "high_intent",
            "vip_at_risk",
            "open_cart",
            "big_spender"
        ]
        .contains(&segment.as_str()),
        "{segment}"
    );
    assert!(["event", "timer"].contains(&cause.as_str()), "{cause}");
    assert!(["n1", "n2", "n3"].contains(&node.as_str()), "{node}");
    let status = status.unwrap();
    for part in [
        "events/s sent",
        "HTTP errors",
        "transitions/s",
        "event→segment",
        "timer lag",
    ] {
        assert!(status.contains(part), "{part} missing: {status}");
    }

    // The generator's events arrived: some generated user has identified (its anonymous history merged
    // in), with traits and behaviour features, as the client reads them.
    let config = ClientConfig::load(dir.join("client.toml")).unwrap();
    let client = Client::connect(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    'found: loop {
        for i in 0..USERS {
            let id = format!("u-{i:04}");
            let Ok(Some(view)) = client.get(&id, None).await else {
                continue;
            };
            if view.features.contains_key("email") && view.features.contains_key("page_views") {
                break 'found;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no generated user with traits and page views"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client.close().await;

    // SIGTERM: the demo stops, then every node, and dev exits 0.
    let mut child = guard.0.take().unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dev --demo did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dev --demo exited with {status}");
    // The relay thread ends at the pipe's end of file, which follows the exit.
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l.starts_with("[demo] stopped: ")),
        "{rest:#?}"
    );
    for p in base..base + NODES {
        UdpSocket::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p} still taken: {e}"));
        TcpListener::bind(("127.0.0.1", p))
            .unwrap_or_else(|e| panic!("HTTP port {p} still taken: {e}"));
    }
}
