//! `store-node dev` as its supervisor role demands (issue 11): `kill -9` of the dev process leaves no node
//! running, the next `dev` on the directory reports the killed one and starts on the same ports, a second
//! `dev` on a directory in use is refused with a clear message, and a node a killed dev left running is
//! stopped by the next one.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: u16 = 3;

/// Whether `pid` is running: `/proc/<pid>/stat` exists and is not a zombie (`kill -0` succeeds on a
/// zombie, and an orphan's zombie may never be reaped in a container without an init).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A running `store-node dev` with its stdout lines on a channel and its stderr collected.
struct Dev {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Dev {
    fn start(dir: &Path, base: u16, nodes: u16) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-node"))
            .arg("dev")
            .arg("--dir")
            .arg(dir)
            .args(["--port", &base.to_string(), "--nodes", &nodes.to_string()])
            .env("FEATURESTORE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("dev> {line}");
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                eprint!("{text}");
                collected.lock().unwrap().push_str(&text);
            }
        });
        Dev {
            child: Some(child),
            lines,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for `dev cluster ready` and returns the node pids of the banner.
    fn wait_ready(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("dev not ready; stderr: {}", self.stderr()));
            if line.starts_with("dev cluster ready: ") {
                return pids;
            }
            if !line.starts_with('[') {
                if let Some(pid) = line.split(" pid ").nth(1) {
                    pids.push(pid.split_whitespace().next().unwrap().parse().unwrap());
                }
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) for the dev process to exit and returns whether it exited with status 0.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // Let the stderr thread collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return status.success();
            }
            assert!(Instant::now() < deadline, "dev did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    /// SIGTERM (the dev process stops its nodes), then SIGKILL.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill("TERM", child.id());
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) until none of `pids` runs; returns those still running at the limit.
fn wait_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| running(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Before the fix, the three nodes of a `kill -9`ed dev kept running and holding the ports, and the next
/// `dev` failed with "address in use".
#[test]
fn kill_9_of_dev_leaves_no_node_running_and_the_next_dev_reports_it_and_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let base = common::dev::free_port_base(NODES);

    let mut first = Dev::start(&dir, base, NODES);
    let pids = first.wait_ready();
    assert_eq!(pids.len(), usize::from(NODES));
    assert!(pids.iter().all(|p| running(*p)));
    let first_pid = first.pid();
    kill("KILL", first_pid);
    assert!(!first.wait_exit(Duration::from_secs(10)));
    let orphans = wait_gone(&pids, Duration::from_secs(30));
    // Do not leave them behind if the assertion fails.
    for pid in &orphans {
        kill("KILL", *pid);
    }
    assert!(
        orphans.is_empty(),
        "nodes {orphans:?} outlived their killed dev supervisor"
    );

    // Same directory, same ports: the next dev notices the killed one and starts.
    let mut second = Dev::start(&dir, base, NODES);
    let pids = second.wait_ready();
    assert_eq!(pids.len(), usize::from(NODES));
    let stderr = second.stderr();
    assert!(
        stderr.contains(&format!(
            "a previous `store-node dev` (pid {first_pid}) on {} did not stop its nodes",
            dir.display()
        )),
        "no stale-dev report: {stderr}"
    );

    // A second dev on the directory in use is refused at once, naming the running one.
    let mut third = Dev::start(&dir, common::dev::free_port_base(NODES), NODES);
    assert!(!third.wait_exit(Duration::from_secs(30)));
    let refused = third.stderr();
    assert!(
        refused.contains(&format!(
            "another `store-node dev` (pid {}) is running on {}",
            second.pid(),
            dir.display()
        )),
        "no clear refusal: {refused}"
    );
    assert!(
        pids.iter().all(|p| running(*p)),
        "the refused dev disturbed the running one"
    );

    // A clean stop leaves nothing to report.
    kill("TERM", second.pid());
    assert!(second.wait_exit(Duration::from_secs(30)));
    assert!(wait_gone(&pids, Duration::from_secs(10)).is_empty());
    let lock = std::fs::read_to_string(dir.join("dev.lock")).unwrap();
    assert_eq!(lock, "", "a clean stop empties the lock record");
}

/// A node that a killed dev left running (here: started by hand as the dev would, but without the
/// parent-death signal, as an older `store-node` did) is stopped by the next `dev`, which then starts on
/// its port.
#[test]
fn the_next_dev_stops_a_node_left_running_by_a_killed_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let base = common::dev::free_port_base(1);

    // A first dev lays the directory out; stop it cleanly.
    let mut first = Dev::start(&dir, base, 1);
    first.wait_ready();
    kill("TERM", first.pid());
    assert!(first.wait_exit(Duration::from_secs(30)));

    // The leftover: n1 running from the dev's own config, recorded in the lock file as a killed dev
    // (pid 1 never holds the lock) would have left it.
    let config = dir.join("n1.toml");
    let mut leftover = Command::new(env!("CARGO_BIN_EXE_store-node"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("FEATURESTORE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let record = serde_json::json!({
        "dev_pid": 1,
        "nodes": [{"id": "n1", "pid": leftover.id(), "config": config}],
    });
    std::fs::write(dir.join("dev.lock"), record.to_string()).unwrap();
    // Wait until it holds its port, as a real leftover does.
    let deadline = Instant::now() + Duration::from_secs(60);
    while UdpSocket::bind(("127.0.0.1", base)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the leftover node did not bind its port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut second = Dev::start(&dir, base, 1);
    second.wait_ready();
    let stderr = second.stderr();
    // The leftover was our child: reap it, then check it exited (the dev's SIGTERM made it stop cleanly).
    let status = leftover.wait().unwrap();
    assert!(
        status.success(),
        "the leftover was not stopped cleanly: {status}"
    );
    assert!(
        stderr.contains(&format!(
            "stopping its leftover node n1 (pid {}",
            leftover.id()
        )),
        "no cleanup report: {stderr}"
    );
    kill("TERM", second.pid());
    assert!(second.wait_exit(Duration::from_secs(30)));
}
