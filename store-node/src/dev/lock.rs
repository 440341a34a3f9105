//! The dev directory's lock file, `<dir>/dev.lock`: one `store-node dev` per directory, and the leftovers of
//! one that was killed found and cleaned up.
//!
//! How: the running dev process holds an exclusive advisory lock (`flock`, through
//! [`std::fs::File::try_lock`]) on `dev.lock` for its whole life, and keeps in it a small JSON record of
//! its own pid and its nodes' pids and config paths. The kernel releases the lock when the process dies,
//! however it dies; the record is emptied only when the dev process stops its nodes itself.
//!
//! - Lock held by someone else: another `store-node dev` runs on this directory; [`DevLock::acquire`]
//!   fails with [`DevError::AlreadyRunning`] (naming its pid) before any port is probed.
//! - Lock free but the record not empty: the previous dev process died without stopping its nodes
//!   (`kill -9`, a crash, the machine's OOM killer). Its nodes normally died with it (they run with a
//!   parent-death signal, see [`crate::supervision`]); any recorded node that is still running *and* is
//!   still `store-node serve --config <that node's config>` (checked in `/proc/<pid>/cmdline`, so a
//!   reused pid is never signalled) is stopped: SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL. Each step
//!   is logged.
//!
//! Caveat: the leftover check reads `/proc`, so it is Linux only; elsewhere leftovers are reported, not
//! stopped.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::procs::STOP_TIMEOUT;
use super::DevError;
use crate::error::Error;
use crate::launch::{send_signal, Signal};

/// The lock file's name inside the dev directory.
pub const LOCK_FILE: &str = "dev.lock";

/// What the running dev process keeps in the lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The dev process.
    dev_pid: u32,
    /// Its nodes.
    nodes: Vec<RecordedNode>,
}

/// One node of a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordedNode {
    id: String,
    pid: u32,
    /// The `--config` argument it was started with.
    config: PathBuf,
}

/// The held lock of a dev directory. Dropping it (the dev process stopping its nodes itself) empties the
/// record; the lock itself is released when the file is closed.
#[derive(Debug)]
pub struct DevLock {
    file: File,
    path: PathBuf,
    record: Record,
}

impl DevLock {
    /// Takes the lock of `dir` (created if missing), cleans up after a previous dev process that was
    /// killed (see the module docs), and records this process.
    pub fn acquire(dir: &Path) -> Result<DevLock, DevError> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(LOCK_FILE);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DevError::AlreadyRunning {
                    dir: dir.to_owned(),
                    pid: read_record(&mut file).map(|r| r.dev_pid),
                })
            }
            Err(TryLockError::Error(source)) => return Err(io(source).into()),
        }
        if let Some(stale) = read_record(&mut file) {
            clean_up(dir, &stale);
        }
        let mut lock = DevLock {
            file,
            path,
            record: Record {
                dev_pid: std::process::id(),
                nodes: Vec::new(),
            },
        };
        lock.write()?;
        Ok(lock)
    }

    /// Records a started node.
    pub fn add_node(&mut self, id: &str, pid: u32, config: &Path) -> Result<(), DevError> {
        self.record.nodes.push(RecordedNode {
            id: id.to_owned(),
            pid,
            config: config.to_owned(),
        });
        self.write()
    }

    fn write(&mut self) -> Result<(), DevError> {
        let text = serde_json::to_string(&self.record).unwrap_or_default();
        self.rewrite(text.as_bytes()).map_err(|source| {
            Error::Io {
                path: self.path.clone(),
                source,
            }
            .into()
        })
    }

    fn rewrite(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(bytes)?;
        self.file.sync_data()
    }
}

impl Drop for DevLock {
    /// The nodes were stopped by this process: nothing is left to clean up.
    fn drop(&mut self) {
        if let Err(e) = self.rewrite(b"") {
            tracing::warn!(path = %self.path.display(), "could not empty the dev lock file: {e}");
        }
    }
}

/// The record in `file`, if it holds one (an empty file: the last dev process exited cleanly).
fn read_record(file: &mut File) -> Option<Record> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    match serde_json::from_str(&text) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!("ignoring an unreadable {LOCK_FILE}: {e}");
            None
        }
    }
}

/// Stops what a killed dev process left running.
fn clean_up(dir: &Path, stale: &Record) {
    tracing::warn!(
        "a previous `store-node dev` (pid {}) on {} did not stop its nodes (was it killed?); cleaning up",
        stale.dev_pid,
        dir.display()
    );
    let mut left = 0;
    for node in &stale.nodes {
        if !is_node(node) {
            continue;
        }
        left += 1;
        tracing::warn!(
            "stopping its leftover node {} (pid {}, SIGTERM, up to {} s)",
            node.id,
            node.pid,
            STOP_TIMEOUT.as_secs()
        );
        if !stop(node.pid, Signal::Term, STOP_TIMEOUT) {
            tracing::warn!("{} (pid {}) did not stop: SIGKILL", node.id, node.pid);
            stop(node.pid, Signal::Kill, Duration::from_secs(5));
        }
    }
    tracing::warn!(
        "cleanup done: {left} leftover node(s) stopped; {} of them had already exited",
        stale.nodes.len() - left
    );
}

/// Sends `signal` to `pid` and waits up to `timeout` for it to be gone.
fn stop(pid: u32, signal: Signal, timeout: Duration) -> bool {
    let _ = send_signal(pid, signal);
    let begin = Instant::now();
    while begin.elapsed() < timeout {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Whether `pid` runs (a zombie, exited but not reaped, does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// Whether the recorded node still runs as that node: `store-node serve --config <its config>`.
#[cfg(target_os = "linux")]
fn is_node(node: &RecordedNode) -> bool {
    if !alive(node.pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", node.pid)) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let config = node.config.as_os_str().as_encoded_bytes();
    args.windows(2)
        .any(|w| w[0] == b"--config" && w[1] == config)
        && args.contains(&b"serve".as_slice())
}

/// Elsewhere: reported, never signalled (the pid may have been reused).
#[cfg(not(target_os = "linux"))]
fn is_node(node: &RecordedNode) -> bool {
    tracing::warn!(
        "{} (pid {}) may still be running; stop it by hand if so",
        node.id,
        node.pid
    );
    false
}
