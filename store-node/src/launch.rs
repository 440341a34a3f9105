//! Starting `store-node serve` processes and waiting for their ready signal: the one launcher the dev
//! supervisor ([`crate::dev`]), the integration tests and the benchmarks share.
//!
//! # The ready signal
//!
//! Once a node accepts connections it prints two lines on stdout, in this order:
//!
//! ```text
//! store-node n1 ready on 127.0.0.1:7401
//! {"event":"ready","node":"n1","addr":"127.0.0.1:7401","http":null,"pid":4242}
//! ```
//!
//! The first is for people. The second is the machine-readable one ([`NodeEvent::Ready`]): one JSON
//! object on one line, with an `event` field. Readers must skip lines that are not JSON objects, events
//! they do not know and fields they do not know (more may come). `addr` is the bound QUIC address (the
//! chosen port when `listen` has port 0), `http` the HTTP listener's address once the node has one
//! (`null` today), `pid` the node's process id.
//!
//! # Launching
//!
//! [`NodeProcess::spawn`] starts `BINARY serve --config CONFIG`; [`NodeProcess::spawn_command`] starts
//! any prepared command (a `taskset` prefix, extra flags, its own stderr) and hands every stdout line to
//! a callback. A thread reads the node's stdout until it closes, so the node never blocks on a full
//! pipe. [`NodeProcess::wait_ready`] waits, bounded, for the ready event, and fails early if the node
//! exits first. A `NodeProcess` that is dropped kills (SIGKILL) and reaps its node.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use featurestore::NodeId;
use serde::{Deserialize, Serialize};

/// What a node reports once it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// The node's id.
    pub node: NodeId,
    /// The address its QUIC endpoint is bound to.
    pub addr: SocketAddr,
    /// The address of its HTTP listener, if it has one (none yet).
    pub http: Option<SocketAddr>,
    /// Its process id.
    pub pid: u32,
}

/// A machine-readable line a node prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeEvent {
    /// The node accepts connections.
    Ready(ReadyInfo),
}

impl NodeEvent {
    /// The event as one line of JSON (without the newline).
    pub fn to_line(&self) -> String {
        // Cannot fail: plain fields, no maps, no fallible `Serialize` impls.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The event on `line`, if it is one this version knows.
    pub fn parse(line: &str) -> Option<NodeEvent> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }
}

/// One line of a node's stdout, as the callback of [`NodeProcess::spawn_command`] sees it.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// A machine-readable event line.
    Event(&'a NodeEvent),
    /// Any other line (without its line ending).
    Line(&'a str),
}

/// Why [`NodeProcess::wait_ready`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The node exited (or closed its stdout) before it reported ready.
    #[error("store-node (pid {pid}) exited before it was ready ({status})")]
    Exited {
        /// Its process id.
        pid: u32,
        /// How it exited, as text (`still running` if it only closed its stdout).
        status: String,
    },
    /// The node did not report ready in time (it is still running).
    #[error("store-node (pid {pid}) did not report ready within {} ms", timeout.as_millis())]
    NotReady {
        /// Its process id.
        pid: u32,
        /// How long it was given.
        timeout: Duration,
    },
}

/// A signal [`send_signal`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain and stop.
    Term,
    /// SIGINT (Ctrl-C): drain and stop, as SIGTERM.
    Int,
    /// SIGKILL.
    Kill,
    /// SIGSTOP: pause.
    Stop,
    /// SIGCONT: resume after [`Signal::Stop`].
    Cont,
}

impl Signal {
    /// The name `kill -<NAME>` takes.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// Sends `signal` to process `pid` with the `kill` command (Unix). `Ok(false)` if `kill` failed, usually
/// because the process is gone.
pub fn send_signal(pid: u32, signal: Signal) -> std::io::Result<bool> {
    let status = Command::new("kill")
        .arg(format!("-{}", signal.name()))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok(status.success())
}

/// How long [`LaunchError::Exited`] waits for the exit status after the node closed its stdout.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);

/// A running (or exited) `store-node serve` process.
#[derive(Debug)]
pub struct NodeProcess {
    /// `None` once given away by [`NodeProcess::into_child`].
    child: Option<Child>,
    pid: u32,
    ready_rx: mpsc::Receiver<ReadyInfo>,
    ready: Option<ReadyInfo>,
    stdout_reader: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl NodeProcess {
    /// The command `binary serve --config config`.
    pub fn serve_command(binary: &Path, config: &Path) -> Command {
        let mut command = Command::new(binary);
        command.arg("serve").arg("--config").arg(config);
        command
    }

    /// Starts `binary serve --config config` with stderr inherited and stdout read (and dropped) here.
    pub fn spawn(binary: &Path, config: &Path) -> std::io::Result<NodeProcess> {
        NodeProcess::spawn_command(NodeProcess::serve_command(binary, config), |_| {})
    }

    /// Starts `command`, which must run `store-node serve` (possibly behind a prefix such as `taskset`
    /// that execs it). Stdin is closed and stdout piped; stderr is left as `command` says (take a piped
    /// stderr with [`NodeProcess::take_stderr`]). A thread reads stdout to its end and hands each line to
    /// `on_output`, in order.
    pub fn spawn_command(
        mut command: Command,
        mut on_output: impl FnMut(Output<'_>) + Send + 'static,
    ) -> std::io::Result<NodeProcess> {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let pid = child.id();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no stdout pipe"));
        };
        let (tx, ready_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                match NodeEvent::parse(line) {
                    Some(event) => {
                        let NodeEvent::Ready(info) = &event;
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(info.clone());
                        }
                        on_output(Output::Event(&event));
                    }
                    None => on_output(Output::Line(line)),
                }
            }
        });
        Ok(NodeProcess {
            child: Some(child),
            pid,
            ready_rx,
            ready: None,
            stdout_reader: Some(reader),
            exit: None,
        })
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the node reported, once [`NodeProcess::wait_ready`] saw it.
    pub fn ready(&self) -> Option<&ReadyInfo> {
        self.ready.as_ref()
    }

    /// The node's stderr, if `command` piped it (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }

    /// Waits up to `timeout` for the ready event (returns at once if it was seen before). Fails if the
    /// node exits first; on a timeout the node keeps running.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<ReadyInfo, LaunchError> {
        if let Some(ready) = &self.ready {
            return Ok(ready.clone());
        }
        match self.ready_rx.recv_timeout(timeout) {
            Ok(info) => {
                self.ready = Some(info.clone());
                Ok(info)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LaunchError::NotReady {
                pid: self.pid,
                timeout,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed: the node is exiting. Its status follows shortly.
                let begin = Instant::now();
                let status = loop {
                    match self.try_wait() {
                        Ok(Some(status)) => break status.to_string(),
                        Ok(None) if begin.elapsed() < EXIT_STATUS_WAIT => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok(None) => break "still running".to_owned(),
                        Err(e) => break format!("wait failed: {e}"),
                    }
                };
                Err(LaunchError::Exited {
                    pid: self.pid,
                    status,
                })
            }
        }
    }

    /// The exit status, if the node has exited (does not block).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.exit = child.try_wait()?;
            }
        }
        Ok(self.exit)
    }

    /// Whether the node is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.try_wait(), Ok(None))
    }

    /// Waits for the node to exit, then for the rest of its stdout to be handed to the callback.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = match (self.exit, self.child.as_mut()) {
            (Some(status), _) => status,
            (None, Some(child)) => child.wait()?,
            (None, None) => return Err(std::io::Error::other("the child was given away")),
        };
        self.exit = Some(status);
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// Sends `signal` to the node (see [`send_signal`]); `Ok(false)` if it has exited.
    pub fn signal(&mut self, signal: Signal) -> std::io::Result<bool> {
        if !self.is_running() {
            return Ok(false);
        }
        send_signal(self.pid, signal)
    }

    /// SIGKILL, then reaps the node.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let (None, Some(child)) = (self.exit, self.child.as_mut()) {
            // Fails only if it has exited already; `wait` then reaps it.
            let _ = child.kill();
        }
        self.wait()
    }

    /// SIGTERM, then waits up to `grace` for the exit. `Ok(None)` if the node is still running then.
    pub fn terminate(&mut self, grace: Duration) -> std::io::Result<Option<ExitStatus>> {
        self.signal(Signal::Term)?;
        let begin = Instant::now();
        loop {
            if self.try_wait()?.is_some() {
                return self.wait().map(Some);
            }
            if begin.elapsed() >= grace {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Gives up supervising the node: returns its child process (no longer killed on drop; stdout keeps
    /// being read, and dropped, until it closes).
    pub fn into_child(mut self) -> Child {
        self.stdout_reader = None;
        // `spawn_command` always stores the child; only this method takes it, consuming `self`.
        self.child
            .take()
            .unwrap_or_else(|| unreachable!("NodeProcess without its child"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info() -> ReadyInfo {
        ReadyInfo {
            node: NodeId::new("n1").unwrap(),
            addr: "127.0.0.1:7001".parse().unwrap(),
            http: None,
            pid: 123,
        }
    }

    #[test]
    fn the_ready_line_is_one_json_object_and_parses_back() {
        let line = NodeEvent::Ready(info()).to_line();
        assert_eq!(
            line,
            r#"{"event":"ready","node":"n1","addr":"127.0.0.1:7001","http":null,"pid":123}"#
        );
        assert_eq!(NodeEvent::parse(&line), Some(NodeEvent::Ready(info())));
        // Unknown fields are skipped; a missing `http` is none.
        let more = r#" {"event":"ready","pid":123,"node":"n1","addr":"127.0.0.1:7001","x":[1]} "#;
        assert_eq!(NodeEvent::parse(more), Some(NodeEvent::Ready(info())));
        for other in [
            "store-node n1 ready on 127.0.0.1:7001",
            r#"{"event":"stopping","node":"n1"}"#,
            r#"{"event":"ready","node":"n1"}"#,
            "{not json",
            "",
        ] {
            assert_eq!(NodeEvent::parse(other), None, "{other}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn wait_ready_sees_the_event_or_the_early_exit() {
        let script = |text: &str| {
            let mut c = Command::new("sh");
            c.arg("-c").arg(text);
            c
        };
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let ready = NodeEvent::Ready(info()).to_line();
        let mut p = NodeProcess::spawn_command(
            script(&format!(
                "echo hello; echo '{ready}'; echo after; exec sleep 30"
            )),
            move |out| {
                if let Output::Line(l) = out {
                    seen.lock().unwrap().push(l.to_owned());
                }
            },
        )
        .unwrap();
        assert_eq!(p.wait_ready(Duration::from_secs(10)).unwrap(), info());
        assert!(p.is_running());
        // The script prints `after` only after the ready line, so it may not have run yet: wait for it
        // (relayed, not swallowed as the ready event) before stopping the process.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*lines.lock().unwrap(), ["hello", "after"]);
        assert!(p.terminate(Duration::from_secs(5)).unwrap().is_some());

        let mut early = NodeProcess::spawn_command(script("echo no; exit 3"), |_| {}).unwrap();
        let err = early.wait_ready(Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&err, LaunchError::Exited { status, .. } if status.contains('3')),
            "{err}"
        );

        let mut slow = NodeProcess::spawn_command(script("exec sleep 30"), |_| {}).unwrap();
        let err = slow.wait_ready(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, LaunchError::NotReady { .. }), "{err}");
        let pid = slow.pid();
        drop(slow);
        assert!(!send_signal(pid, Signal::Cont).unwrap(), "killed on drop");
    }
}
