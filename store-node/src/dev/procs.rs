//! Supervising the dev nodes: starting the child processes ([`crate::launch`]), relaying their output line
//! by line, noticing ready events and exits, and stopping them (SIGTERM, then SIGKILL).

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DevError, DevNode};
use crate::config::env_keys;
use crate::launch::{send_signal, NodeEvent, NodeProcess, Output, Signal};

/// How long nodes get to exit after SIGTERM before they are killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for killed nodes to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the helper threads of a child report.
pub(super) enum Event {
    /// Node `index` printed its ready line.
    Ready(usize),
    /// Node `index` exited (after its output was relayed completely).
    Exited(usize, std::io::Result<ExitStatus>),
}

/// A running (or exited) node process.
pub(super) struct Proc {
    pub(super) id: String,
    pub(super) pid: u32,
    pub(super) ready: bool,
    /// Set once its exit was reported.
    pub(super) exit: Option<String>,
    clean: bool,
}

/// The child processes and the channel their helper threads report on.
pub(super) struct Procs {
    pub(super) procs: Vec<Proc>,
    events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
}

/// Writes one relayed line with `prefix` to stdout or stderr. Write errors (a closed terminal or pipe)
/// are ignored: the node must keep running.
fn relay_line(prefix: &str, line: &str, to_stdout: bool) {
    if to_stdout {
        let _ = writeln!(std::io::stdout().lock(), "{prefix}{line}");
    } else {
        let _ = writeln!(std::io::stderr().lock(), "{prefix}{line}");
    }
}

/// Relays `reader`'s lines to stderr with `prefix`.
fn relay_stderr(reader: impl std::io::Read, prefix: &str) {
    let mut buf = Vec::new();
    let mut reader = BufReader::new(reader);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        relay_line(prefix, line.trim_end_matches(['\n', '\r']), false);
    }
}

impl Procs {
    pub(super) fn new() -> Procs {
        let (tx, events) = mpsc::unbounded_channel();
        Procs {
            procs: Vec::new(),
            events,
            tx,
        }
    }

    /// Starts `exe serve --config <node.config> --die-with-parent <this process>` with relayed output
    /// and returns its pid. Its stdout lines are relayed except the machine-readable events; its ready
    /// event is reported once.
    pub(super) fn spawn(&mut self, exe: &Path, node: &DevNode) -> Result<u32, DevError> {
        let mut command = NodeProcess::serve_command(exe, &node.config);
        // If this process dies (even by SIGKILL), the node gets SIGTERM (see `crate::supervision`).
        command
            .arg("--die-with-parent")
            .arg(std::process::id().to_string());
        command.stderr(Stdio::piped());
        for key in env_keys() {
            command.env_remove(key);
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let index = self.procs.len();
        let prefix = format!("[{}] ", node.id);
        let on_output = {
            let (prefix, id, tx) = (prefix.clone(), node.id.clone(), self.tx.clone());
            let mut ready = Some(tx);
            move |output: Output<'_>| match output {
                Output::Line(line) => relay_line(&prefix, line, true),
                Output::Event(NodeEvent::Ready(info)) if info.node.as_str() == id => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Event::Ready(index));
                    }
                }
                Output::Event(_) => {}
            }
        };
        let mut process =
            NodeProcess::spawn_command(command, on_output).map_err(|source| DevError::Spawn {
                node: node.id.clone(),
                exe: exe.to_owned(),
                source,
            })?;
        let stderr_relay = process
            .take_stderr()
            .map(|stderr| std::thread::spawn(move || relay_stderr(stderr, &prefix)));
        let tx = self.tx.clone();
        let pid = process.pid();
        std::thread::spawn(move || {
            // The pipes close when the node exits: relay its last lines before reporting the exit.
            let status = process.wait();
            if let Some(relay) = stderr_relay {
                let _ = relay.join();
            }
            let _ = tx.send(Event::Exited(index, status));
        });
        self.procs.push(Proc {
            id: node.id.clone(),
            pid,
            ready: false,
            exit: None,
            clean: false,
        });
        Ok(pid)
    }

    fn running(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.exit.is_none())
    }

    pub(super) fn any_running(&self) -> bool {
        self.running().next().is_some()
    }

    /// Records an event; returns the index of the node that exited, if it was an exit.
    pub(super) fn record(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Ready(i) => {
                self.procs[i].ready = true;
                None
            }
            Event::Exited(i, status) => {
                let p = &mut self.procs[i];
                match status {
                    Ok(status) => {
                        p.clean = status.success();
                        p.exit = Some(status.to_string());
                    }
                    Err(e) => p.exit = Some(format!("wait failed: {e}")),
                }
                Some(i)
            }
        }
    }

    /// The next event (never `None` while `self.tx` is alive).
    pub(super) async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Sends `signal` to every running node.
    async fn signal_running(&self, signal: Signal) {
        for p in self.running() {
            let (id, pid) = (p.id.clone(), p.pid);
            let sent = tokio::task::spawn_blocking(move || send_signal(pid, signal)).await;
            let signal = signal.name();
            match sent {
                Ok(Ok(true)) => tracing::debug!(node = %id, signal, "signal sent"),
                // Usually: it exited in the meantime (its exit event follows).
                Ok(Ok(false)) => tracing::debug!(node = %id, signal, "kill failed"),
                Ok(Err(e)) => tracing::error!(node = %id, signal, "could not run `kill`: {e}"),
                Err(e) => tracing::error!(node = %id, signal, "signal task failed: {e}"),
            }
        }
    }

    /// Waits until no node is running, `timeout` passed or `kill_now` is cancelled.
    async fn wait_all(&mut self, timeout: Duration, kill_now: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.any_running() {
            tokio::select! {
                event = self.next() => match event {
                    Some(event) => {
                        if let Some(i) = self.record(event) {
                            let p = &self.procs[i];
                            tracing::info!(node = %p.id, "exited ({})", p.exit.as_deref().unwrap_or("?"));
                        }
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
                () = kill_now.cancelled() => return,
            }
        }
    }

    /// SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL for the stragglers.
    pub(super) async fn stop(&mut self, kill_now: &CancellationToken) {
        if !self.any_running() {
            return;
        }
        if !kill_now.is_cancelled() {
            tracing::info!(
                "stopping {} node(s) (SIGTERM, up to {} s)",
                self.running().count(),
                STOP_TIMEOUT.as_secs()
            );
            self.signal_running(Signal::Term).await;
            self.wait_all(STOP_TIMEOUT, kill_now).await;
        }
        if self.any_running() {
            let names: Vec<&str> = self.running().map(|p| p.id.as_str()).collect();
            tracing::warn!("killing {} (SIGKILL)", names.join(", "));
            self.signal_running(Signal::Kill).await;
            self.wait_all(KILL_TIMEOUT, &CancellationToken::new()).await;
        }
    }

    /// `Ok` if every node exited with status 0.
    pub(super) fn outcome(&self) -> Result<(), DevError> {
        let bad: Vec<String> = self
            .procs
            .iter()
            .filter(|p| !p.clean)
            .map(|p| {
                format!(
                    "{} ({})",
                    p.id,
                    p.exit.as_deref().unwrap_or("still running")
                )
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(DevError::Unclean(bad.join(", ")))
        }
    }
}
