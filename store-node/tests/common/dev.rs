//! A real `store-node dev` process for the tests: a free port range, its stdout as lines, SIGTERM on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A base port with `base..base + nodes` free on 127.0.0.1 (UDP for QUIC, TCP for HTTP).
pub fn free_port_base(nodes: u16) -> u16 {
    for _ in 0..50 {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base.checked_add(nodes).is_none() {
            continue;
        }
        let all_free = (base..base + nodes).all(|p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

/// A running `store-node dev`, stopped with SIGTERM when dropped.
pub struct Dev {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// The dev directory.
    pub dir: PathBuf,
    /// The first node's port (QUIC and HTTP).
    pub base: u16,
    _tmp: tempfile::TempDir,
}

impl Dev {
    /// Starts `store-node dev` with 3 nodes in a temporary directory and `extra` arguments, and waits (up
    /// to 90 s) for `dev cluster ready`.
    pub fn start(extra: &[&str]) -> Dev {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let base = free_port_base(3);
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-node"))
            .arg("dev")
            .arg("--dir")
            .arg(&dir)
            .args(["--port", &base.to_string(), "--nodes", "3"])
            .args(extra)
            .env("FEATURESTORE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Keep draining stdout until the dev process exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("dev> {line}");
                let _ = tx.send(line);
            }
        });
        let dev = Dev {
            child: Some(child),
            lines,
            dir,
            base,
            _tmp: tmp,
        };
        dev.line_where(Duration::from_secs(90), |l| {
            l.starts_with("dev cluster ready: ")
        });
        dev
    }

    /// The next stdout line that `matches`, within `limit`; panics otherwise.
    pub fn line_where(&self, limit: Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("no such line from dev in time");
            if matches(&line) {
                return line;
            }
        }
    }

    /// The HTTP address of node `n<i+1>`.
    pub fn http(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + i))
    }

    /// The write key from `http.env`.
    pub fn write_key(&self) -> String {
        let env = std::fs::read_to_string(self.dir.join("http.env")).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix("WRITE_KEY="))
            .unwrap()
            .to_owned()
    }

    /// Stops dev with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        terminate(&mut child)
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap()
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}
