//! Server processes under test: a `store-node`, a `redis-server`, and the echo server (this binary's
//! `echo-server` subcommand), each optionally pinned to a core with `taskset`.
//!
//! Guarantees:
//! - Every server listens on 127.0.0.1 only.
//! - A [`ServerProcess`] is killed (SIGKILL) and reaped when dropped, so an error or a panic in the
//!   load generator never leaves a server behind; [`ServerProcess::terminate`] stops it gracefully
//!   (SIGTERM, bounded wait, then SIGKILL).
//! - Every wait is bounded: for a ready line, for a port to answer, for an exit.
//! - A server's stderr goes to a log file in its directory; its path is in every startup error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use featurestore::NodeId;
use store_node::config::{NodeConfig, TlsFiles};
use store_node::launch::NodeProcess;

use crate::error::{Error, Result};

/// A running server process.
#[derive(Debug)]
pub struct ServerProcess {
    /// What it is (for messages).
    pub name: String,
    /// Its address on loopback.
    pub addr: SocketAddr,
    /// Its log file (stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// The process id (also the pid `taskset` exec'ed into).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, wait up to `grace` for the exit, then SIGKILL. Returns how long the exit took.
    pub fn terminate(&mut self, grace: Duration) -> Duration {
        let begin = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        while begin.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return begin.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        begin.elapsed()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where servers and the client run: with `taskset` when the machine has at least two cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinning {
    /// The core servers are pinned to, if pinning.
    pub server_core: Option<usize>,
    /// The core this process is pinned to, if pinning.
    pub client_core: Option<usize>,
}

impl Pinning {
    /// Servers on core 0 and the client on core 1 if there are at least two cores and `taskset` exists;
    /// otherwise no pinning.
    pub fn detect(enabled: bool) -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let total = std::fs::read_to_string("/proc/cpuinfo")
            .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(cores)
            .max(cores);
        if enabled && total >= 2 && find_program("taskset").is_some() {
            Pinning {
                server_core: Some(0),
                client_core: Some(1),
            }
        } else {
            Pinning {
                server_core: None,
                client_core: None,
            }
        }
    }

    /// Pins this process (all its threads) to the client core.
    pub fn pin_self(&self) -> Result<()> {
        let Some(core) = self.client_core else {
            return Ok(());
        };
        let status = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &core.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .map_err(Error::io("running taskset", "taskset"))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Setup(format!(
                "taskset could not pin the load generator to core {core}"
            )))
        }
    }

    /// A command for `program`, prefixed with `taskset -c <server core>` when pinning.
    pub fn server_command(&self, program: &Path) -> Command {
        match self.server_core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// The first executable named `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A program next to this executable (e.g. `target/release/store-node` beside `target/release/loadgen`).
pub fn sibling_program(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// A free TCP port on loopback (bound and released; a race with another process is possible but unlikely).
pub fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(Error::io("finding a free port", "127.0.0.1:0"))?;
    let port = l
        .local_addr()
        .map_err(Error::io("finding a free port", "127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// A free UDP port on loopback (bound and released; see [`free_tcp_port`]). A node must listen on an explicit
/// port: it advertises its listen address to ring-aware clients.
pub fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(Error::io("finding a free port", "udp://127.0.0.1:0"))?;
    let port = s
        .local_addr()
        .map_err(Error::io("finding a free port", "udp://127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// Spawns `cmd` (stdout piped, stderr to `log`) and waits up to `timeout` for a stdout line containing
/// `marker`; returns the child and the text after the marker. For the echo server (store-node processes
/// are started by [`store_node::launch`]).
fn spawn_until_ready(
    mut cmd: Command,
    log: &Path,
    marker: &'static str,
    timeout: Duration,
) -> Result<(Child, String)> {
    let log_file = std::fs::File::create(log).map_err(Error::io("creating a log file", log))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    let mut child = cmd
        .spawn()
        .map_err(Error::io("starting a server", format!("{cmd:?}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Process("no stdout pipe".into()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout after the ready line so the server never blocks on a full pipe.
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if let Some(rest) = line.split(marker).nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(rest) => Ok((child, rest)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = log_tail(log);
            Err(Error::Process(format!(
                "{cmd:?} did not print {marker:?} within {} s; log {}:\n{tail}",
                timeout.as_secs(),
                log.display()
            )))
        }
    }
}

/// The last 2 KiB of a log file.
pub fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(2048);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// Runs `store-node certs` to write a CA, node `n1`'s and client `app`'s certificates into `dir`.
pub fn generate_certs(store_node: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(store_node)
        .args(["certs", "--nodes", "n1", "--clients", "app", "--out"])
        .arg(dir)
        .env("FEATURESTORE_LOG", "warn")
        .output()
        .map_err(Error::io("running store-node certs", store_node))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Process(format!(
            "store-node certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// How a featurestore node stores data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// `sled` or `memory`.
    pub storage: String,
    /// `sync` or `periodic:<ms>`.
    pub durability: String,
}

/// Everything needed to (re)start one featurestore node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The `store-node` binary.
    pub binary: PathBuf,
    /// The node's directory (config, data, log).
    pub dir: PathBuf,
    /// The certificates written by [`generate_certs`].
    pub certs: PathBuf,
    /// Storage and durability.
    pub settings: NodeSettings,
    /// Where it runs.
    pub pinning: Pinning,
}

impl NodeSpec {
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the node on `listen` (port 0 picks a free port) and waits up to `timeout` for its ready
    /// event ([`store_node::launch`]). Returns the process and the time from spawn to the ready event.
    pub fn start(
        &self,
        listen: SocketAddr,
        timeout: Duration,
    ) -> Result<(ServerProcess, Duration)> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("creating", &self.dir))?;
        let config = self.dir.join("node.toml");
        let certs = &self.certs;
        let tls = TlsFiles {
            ca_cert: certs.join("ca.pem"),
            cert: certs.join("node-n1.pem"),
            key: certs.join("node-n1.key"),
        };
        let node_id = NodeId::new("n1").map_err(|e| Error::Setup(e.to_string()))?;
        NodeConfig::new(node_id, listen, self.data_dir(), tls)
            .write(&config, "")
            .map_err(|e| Error::Setup(format!("writing {}: {e}", config.display())))?;
        let mut cmd = self.pinning.server_command(&self.binary);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(["--storage", &self.settings.storage])
            .args(["--durability", &self.settings.durability])
            .env("FEATURESTORE_LOG", "warn");
        let log = self.dir.join("node.log");
        let log_file =
            std::fs::File::create(&log).map_err(Error::io("creating a log file", &log))?;
        cmd.stderr(Stdio::from(log_file));
        let begin = Instant::now();
        let mut node = NodeProcess::spawn_command(cmd, |_| {})
            .map_err(Error::io("starting a server", &self.binary))?;
        let ready = match node.wait_ready(timeout) {
            Ok(ready) => ready,
            Err(e) => {
                drop(node);
                return Err(Error::Process(format!(
                    "{e}; log {}:\n{}",
                    log.display(),
                    log_tail(&log)
                )));
            }
        };
        let elapsed = begin.elapsed();
        Ok((
            ServerProcess {
                name: format!(
                    "store-node ({}, {})",
                    self.settings.storage, self.settings.durability
                ),
                addr: ready.addr,
                log,
                child: Some(node.into_child()),
            },
            elapsed,
        ))
    }
}

/// How a Redis server persists data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `appendonly yes` (with `appendfsync`) or no AOF at all.
    pub appendonly: bool,
    /// `everysec` or `always`.
    pub appendfsync: String,
}

/// Everything needed to (re)start one Redis server.
#[derive(Debug, Clone)]
pub struct RedisSpec {
    /// The `redis-server` binary.
    pub binary: PathBuf,
    /// Its working directory (RDB, AOF, log).
    pub dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Persistence.
    pub settings: RedisSettings,
    /// Where it runs.
    pub pinning: Pinning,
}

impl RedisSpec {
    /// Starts `redis-server` and waits up to `timeout` until it answers `PING` with `PONG` (a server still
    /// loading its RDB answers `-LOADING`, so this waits for the load too). Returns the process and the
    /// time from spawn to the first `PONG`.
    pub fn start(&self, timeout: Duration) -> Result<(ServerProcess, Duration)> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("creating", &self.dir))?;
        let log = self.dir.join("redis.log");
        let mut cmd = self.pinning.server_command(&self.binary);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--dbfilename", "dump.rdb"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args([
                "--appendonly",
                if self.settings.appendonly {
                    "yes"
                } else {
                    "no"
                },
            ])
            .args(["--appendfsync", &self.settings.appendfsync])
            .arg("--logfile")
            .arg(&log);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let begin = Instant::now();
        let child = cmd
            .spawn()
            .map_err(Error::io("starting redis-server", &self.binary))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut server = ServerProcess {
            name: format!(
                "redis-server (appendonly {}, appendfsync {})",
                if self.settings.appendonly {
                    "yes"
                } else {
                    "no"
                },
                self.settings.appendfsync
            ),
            addr,
            log: log.clone(),
            child: Some(child),
        };
        while begin.elapsed() < timeout {
            if !server.is_running() {
                return Err(Error::Process(format!(
                    "redis-server exited at startup; log {}:\n{}",
                    log.display(),
                    log_tail(&log)
                )));
            }
            if ping(addr) {
                return Ok((server, begin.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(Error::Process(format!(
            "redis-server did not answer PING within {} s; log {}:\n{}",
            timeout.as_secs(),
            log.display(),
            log_tail(&log)
        )))
    }
}

/// One `PING` over a fresh connection; true on `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Starts the echo server (`<this binary> echo-server`) and waits for its ready line.
pub fn start_echo(
    loadgen: &Path,
    certs: &Path,
    dir: &Path,
    pinning: Pinning,
) -> Result<ServerProcess> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let mut cmd = pinning.server_command(loadgen);
    cmd.args(["echo-server", "--listen", "127.0.0.1:0", "--certs"])
        .arg(certs);
    let log = dir.join("echo.log");
    let (child, rest) = spawn_until_ready(cmd, &log, "echo ready on ", Duration::from_secs(30))?;
    let addr = rest
        .parse()
        .map_err(|_| Error::Process(format!("echo server printed a bad address {rest:?}")))?;
    Ok(ServerProcess {
        name: "echo server".into(),
        addr,
        log,
        child: Some(child),
    })
}
