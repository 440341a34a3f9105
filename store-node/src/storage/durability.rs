//! When a write may be acknowledged: the [`DurabilityPolicy`] and the [`Durability`] group-commit flusher.
//!
//! # Guarantees
//!
//! * `sync`: [`Durability::wait_durable`] resolves `Ok` only once a [`Storage::flush`] that **started after
//!   the ticket was issued** has returned `Ok`. Since the caller takes its ticket ([`Durability::written`])
//!   right after its `put`/`remove` returned, that flush covers the write. If the covering flush fails, the
//!   waiter gets [`Error::Storage`] — a write that is not durable is never acked as durable. Later flushes
//!   are still attempted (for later writes, and once more at shutdown).
//! * `periodic { interval_ms }`: `wait_durable` resolves immediately; the flusher fsyncs every
//!   `interval_ms` if anything was written since its last flush. A crash may lose the writes of roughly
//!   the last interval (plus the duration of one flush).
//! * [`Durability::shutdown`] performs a final flush of everything written and joins the flusher thread.
//!
//! # How
//!
//! * Tickets are a monotonically increasing sequence number (`AtomicU64`); `written` is one `fetch_add`
//!   plus (in `sync` mode) an `unpark` of the flusher — writers never take a lock, and no lock is held
//!   while flushing.
//! * ONE dedicated std thread, `fs-flusher`, does every flush (flushes block; they never run on the tokio
//!   runtime). In `sync` mode it reads the highest ticket issued so far, flushes once, publishes
//!   "durable up to T" (or "failed through T") through a `tokio::sync::watch` channel, and loops while
//!   more tickets arrived meanwhile; when idle it parks (no busy loop). So every writer that arrives while
//!   a flush is running shares the next flush: group commit with no artificial delay.
//! * Waiters only compare their ticket with the published watermarks, so memory is bounded: one watch
//!   value, no per-write queue.
//!
//! # Caveats
//!
//! * A flush covers every write that returned before it started, whichever [`Durability`] issued the
//!   ticket; but a ticket must only be waited on at the `Durability` that issued it.
//! * Call `written` for every `put`/`remove` (also in `periodic` mode: the flusher skips a tick when no
//!   ticket was issued since its last flush; the final flush at shutdown is unconditional).
//! * After a failed flush, the flusher does not retry on its own until a new ticket arrives or shutdown.
//!   Whether a later flush really covers the earlier writes is up to the engine (sled may stay failed).
//! * Once the flusher has stopped (after `shutdown`), `sync`-mode waits for writes not covered by the final
//!   flush fail with [`Error::Storage`].
//! * Dropping the last `Durability` without `shutdown` asks the thread to do its final flush and exit, but
//!   does not wait for it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Storage;
use crate::error::{Error, Result};

/// Name of the flusher thread (visible in `top -H`, debuggers and panics).
const THREAD_NAME: &str = "fs-flusher";

/// When a write is acknowledged relative to when it reaches the disk (config key `durability`).
///
/// In TOML: `mode = "sync"` or `mode = "periodic"` with `interval_ms = 100`. From a string (env/CLI):
/// `"sync"` or `"periodic:100"`.
///
/// Deserialisation is strict: unknown keys, `interval_ms` with `mode = "sync"` (serde's internally tagged
/// unit variants would silently ignore it), a missing or zero `interval_ms` with `periodic` are errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(
    tag = "mode",
    rename_all = "lowercase",
    deny_unknown_fields,
    try_from = "RawPolicy"
)]
pub enum DurabilityPolicy {
    /// Ack only after an fsync covering the write (group commit). The default.
    #[default]
    Sync,
    /// Ack immediately; fsync every `interval_ms` milliseconds (a crash may lose about one interval).
    Periodic {
        /// Milliseconds between flushes; must be at least 1.
        interval_ms: u64,
    },
}

/// The on-disk shape of [`DurabilityPolicy`], validated by `TryFrom`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: RawMode,
    interval_ms: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Sync,
    Periodic,
}

impl TryFrom<RawPolicy> for DurabilityPolicy {
    type Error = String;

    fn try_from(raw: RawPolicy) -> Result<Self, String> {
        match (raw.mode, raw.interval_ms) {
            (RawMode::Sync, None) => Ok(DurabilityPolicy::Sync),
            (RawMode::Sync, Some(_)) => {
                Err("durability mode \"sync\" takes no interval_ms".to_owned())
            }
            (RawMode::Periodic, None) => {
                Err("durability mode \"periodic\" requires interval_ms".to_owned())
            }
            (RawMode::Periodic, Some(interval_ms)) => {
                let policy = DurabilityPolicy::Periodic { interval_ms };
                policy.validate().map_err(|e| e.to_string())?;
                Ok(policy)
            }
        }
    }
}

impl DurabilityPolicy {
    /// Checks the policy's parameters (`interval_ms` must be at least 1).
    pub fn validate(&self) -> Result<()> {
        match self {
            DurabilityPolicy::Periodic { interval_ms: 0 } => Err(Error::Config(
                "durability: periodic interval_ms must be at least 1".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for DurabilityPolicy {
    /// Prints the same form [`FromStr`] parses: `sync` or `periodic:<ms>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurabilityPolicy::Sync => f.write_str("sync"),
            DurabilityPolicy::Periodic { interval_ms } => write!(f, "periodic:{interval_ms}"),
        }
    }
}

impl FromStr for DurabilityPolicy {
    type Err = Error;

    /// Parses `"sync"` or `"periodic:<ms>"` with `<ms>` ≥ 1 (surrounding whitespace is ignored).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "sync" {
            return Ok(DurabilityPolicy::Sync);
        }
        if let Some(ms) = s.strip_prefix("periodic:") {
            let interval_ms: u64 = ms.trim().parse().map_err(|e| Error::ConfigValue {
                what: format!("durability {s:?}: interval {ms:?} is not a number of milliseconds"),
                source: Box::new(e),
            })?;
            let policy = DurabilityPolicy::Periodic { interval_ms };
            policy.validate()?;
            return Ok(policy);
        }
        Err(Error::Config(format!(
            "unknown durability policy {s:?} (expected \"sync\" or \"periodic:<ms>\")"
        )))
    }
}

/// Proof that a write was issued, to wait on with [`Durability::wait_durable`].
///
/// Obtained from [`Durability::written`] right after the storage `put`/`remove` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[must_use = "wait on the ticket with Durability::wait_durable before acking the write"]
pub struct WriteTicket(u64);

impl WriteTicket {
    /// The write's sequence number (1 for the first write of a `Durability`), for logs.
    pub fn seq(self) -> u64 {
        self.0
    }
}

/// Counters of a [`Durability`], for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DurabilityStats {
    /// Flushes that succeeded.
    pub flushes: u64,
    /// Flushes that failed.
    pub flush_failures: u64,
    /// Tickets issued by [`Durability::written`] (the highest sequence number).
    pub writes: u64,
    /// Every ticket up to this sequence number is durable.
    pub durable_seq: u64,
    /// Wall time of the most recent flush attempt, in microseconds.
    pub last_flush_micros: u64,
}

/// The flusher's histograms, for `GET /metrics` (clones share the same buckets).
#[derive(Clone, Debug)]
pub struct FlushHistograms {
    /// Seconds per flush attempt.
    pub seconds: prometheus_client::metrics::histogram::Histogram,
    /// Write tickets made durable by one successful flush (the group of a group commit).
    pub group_size: prometheus_client::metrics::histogram::Histogram,
}

impl Default for FlushHistograms {
    fn default() -> FlushHistograms {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        FlushHistograms {
            // 50 µs doubling up to about 3 s.
            seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1, 2, 4, ... 4096 writes.
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

/// What the flusher publishes to waiters.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Every ticket `<=` this is durable.
    durable: u64,
    /// The highest target of a failed flush: waiters `<=` this and `> durable` get an error.
    failed_through: u64,
    /// The most recent flush error.
    last_error: Option<Arc<str>>,
}

impl Progress {
    /// The outcome for ticket `seq`, or `None` while undecided.
    fn outcome(&self, seq: u64) -> Option<Result<()>> {
        if self.durable >= seq {
            Some(Ok(()))
        } else if self.failed_through >= seq {
            let why = self.last_error.as_deref().unwrap_or("unknown error");
            Some(Err(Error::Storage(format!(
                "write #{seq} is not durable: flush failed: {why}"
            ))))
        } else {
            None
        }
    }
}

/// State shared by the handle and the flusher thread.
struct Shared {
    storage: Arc<dyn Storage>,
    /// The highest ticket issued.
    next_seq: AtomicU64,
    shutdown: AtomicBool,
    flushes: AtomicU64,
    flush_failures: AtomicU64,
    durable_seq: AtomicU64,
    last_flush_micros: AtomicU64,
    histograms: FlushHistograms,
}

impl Shared {
    /// Flushes once, covering every ticket `<= target` (all issued before this call), and publishes the
    /// outcome.
    fn flush_through(&self, target: u64, tx: &watch::Sender<Progress>) -> Result<()> {
        let started = Instant::now();
        let res = self.storage.flush();
        let elapsed = started.elapsed();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.last_flush_micros.store(micros, SeqCst);
        self.histograms.seconds.observe(elapsed.as_secs_f64());
        match res {
            Ok(()) => {
                self.flushes.fetch_add(1, SeqCst);
                let before = self.durable_seq.fetch_max(target, SeqCst);
                if target > before {
                    self.histograms.group_size.observe((target - before) as f64);
                }
                tx.send_modify(|p| p.durable = p.durable.max(target));
                Ok(())
            }
            Err(e) => {
                self.flush_failures.fetch_add(1, SeqCst);
                tracing::error!(
                    error = %e,
                    storage = self.storage.kind(),
                    through_seq = target,
                    "storage flush failed; writes it covered are not acknowledged"
                );
                let msg: Arc<str> = e.to_string().into();
                tx.send_modify(|p| {
                    p.failed_through = p.failed_through.max(target);
                    p.last_error = Some(msg);
                });
                Err(e)
            }
        }
    }

    /// The flusher thread's body; returns the outcome of the final flush.
    fn run(&self, policy: DurabilityPolicy, tx: watch::Sender<Progress>) -> Result<()> {
        // The highest ticket a flush was attempted for (successfully or not).
        let mut attempted = 0;
        match policy {
            DurabilityPolicy::Sync => loop {
                let target = self.next_seq.load(SeqCst);
                if target > attempted {
                    attempted = target;
                    // A failure is published to its waiters and logged; keep serving later writes.
                    let _ = self.flush_through(target, &tx);
                    continue;
                }
                if self.shutdown.load(SeqCst) {
                    break;
                }
                // `written` bumps `next_seq` before `unpark`, and an unpark before this park leaves a
                // token, so no wake-up is lost; spurious wake-ups just re-check.
                thread::park();
            },
            DurabilityPolicy::Periodic { interval_ms } => {
                let interval = Duration::from_millis(interval_ms.max(1));
                let mut next_tick = Instant::now() + interval;
                'ticks: loop {
                    loop {
                        if self.shutdown.load(SeqCst) {
                            break 'ticks;
                        }
                        let now = Instant::now();
                        if now >= next_tick {
                            break;
                        }
                        thread::park_timeout(next_tick - now);
                    }
                    let target = self.next_seq.load(SeqCst);
                    if target > attempted {
                        attempted = target;
                        let _ = self.flush_through(target, &tx);
                    }
                    next_tick = Instant::now() + interval;
                }
            }
        }
        // Final flush, unconditional: also covers writes whose ticket was never taken, and retries a
        // failed last flush.
        let target = self.next_seq.load(SeqCst);
        self.flush_through(target, &tx)
    }
}

/// The durability driver: issues write tickets and runs every flush on one dedicated thread.
///
/// Create one per node with [`Durability::start`]; share the returned `Arc`.
pub struct Durability {
    shared: Arc<Shared>,
    policy: DurabilityPolicy,
    progress: watch::Receiver<Progress>,
    flusher: Thread,
    join: Mutex<Option<JoinHandle<Result<()>>>>,
}

impl fmt::Debug for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Durability")
            .field("storage", &self.shared.storage.kind())
            .field("policy", &self.policy)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Durability {
    /// Starts the `fs-flusher` thread for `storage` under `policy`.
    ///
    /// A `periodic` interval of 0 is treated as 1 ms (use [`DurabilityPolicy::validate`] to reject it
    /// in config). Fails only if the thread cannot be spawned.
    pub fn start(storage: Arc<dyn Storage>, policy: DurabilityPolicy) -> Result<Arc<Durability>> {
        if let Err(e) = policy.validate() {
            tracing::warn!(error = %e, "using a 1 ms flush interval instead");
        }
        let shared = Arc::new(Shared {
            storage,
            next_seq: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            durable_seq: AtomicU64::new(0),
            last_flush_micros: AtomicU64::new(0),
            histograms: FlushHistograms::default(),
        });
        let (tx, progress) = watch::channel(Progress::default());
        let thread_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || thread_shared.run(policy, tx))
            .map_err(|source| Error::Thread {
                context: format!("cannot spawn the {THREAD_NAME} thread"),
                source,
            })?;
        tracing::debug!(storage = shared.storage.kind(), %policy, "durability flusher started");
        Ok(Arc::new(Durability {
            shared,
            policy,
            progress,
            flusher: handle.thread().clone(),
            join: Mutex::new(Some(handle)),
        }))
    }

    /// The policy this driver runs.
    pub fn policy(&self) -> DurabilityPolicy {
        self.policy
    }

    /// Records that a `put`/`remove` just returned and returns its ticket; call it right after the
    /// storage call. Never blocks; in `sync` mode it wakes the flusher.
    pub fn written(&self) -> WriteTicket {
        let seq = self.shared.next_seq.fetch_add(1, SeqCst) + 1;
        if self.policy == DurabilityPolicy::Sync {
            self.flusher.unpark();
        }
        WriteTicket(seq)
    }

    /// Resolves when the write behind `ticket` may be acknowledged.
    ///
    /// `sync`: once a flush that started after the ticket was issued succeeded; [`Error::Storage`] if that
    /// flush failed or the flusher stopped before covering it. `periodic`: immediately. Cancel-safe.
    pub async fn wait_durable(&self, ticket: WriteTicket) -> Result<()> {
        if self.policy != DurabilityPolicy::Sync {
            return Ok(());
        }
        let seq = ticket.0;
        let mut rx = self.progress.clone();
        loop {
            // The borrow guard is dropped at the end of the statement, before any await.
            let outcome = rx.borrow_and_update().outcome(seq);
            if let Some(res) = outcome {
                return res;
            }
            if rx.changed().await.is_err() {
                // The flusher exited; its last publication is final.
                let outcome = rx.borrow().outcome(seq);
                return outcome.unwrap_or_else(|| {
                    Err(Error::Storage(format!(
                        "write #{seq} is not durable: the {THREAD_NAME} thread stopped before flushing it"
                    )))
                });
            }
        }
    }

    /// Flushes everything written, stops the flusher thread and joins it.
    ///
    /// Returns the outcome of the final flush. Later calls wait for the thread to be gone and return `Ok`.
    pub async fn shutdown(&self) -> Result<()> {
        let handle = self
            .join
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.shared.shutdown.store(true, SeqCst);
        self.flusher.unpark();
        let Some(handle) = handle else {
            // Someone else is shutting down: wait until the flusher dropped its end of the channel.
            let mut rx = self.progress.clone();
            while rx.changed().await.is_ok() {}
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(res)) => {
                tracing::debug!("durability flusher stopped");
                res
            }
            Ok(Err(_panic)) => Err(Error::Storage(format!("the {THREAD_NAME} thread panicked"))),
            Err(source) => Err(Error::Task {
                context: format!("joining the {THREAD_NAME} thread"),
                source,
            }),
        }
    }

    /// The flusher's histograms (the clones share their buckets with the flusher).
    pub fn flush_histograms(&self) -> FlushHistograms {
        self.shared.histograms.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DurabilityStats {
        let s = &self.shared;
        DurabilityStats {
            flushes: s.flushes.load(SeqCst),
            flush_failures: s.flush_failures.load(SeqCst),
            writes: s.next_seq.load(SeqCst),
            durable_seq: s.durable_seq.load(SeqCst),
            last_flush_micros: s.last_flush_micros.load(SeqCst),
        }
    }
}

impl Drop for Durability {
    /// Asks the flusher for its final flush and exit, without waiting (use `shutdown` to wait).
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.flusher.unpark();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn policy_strings_round_trip() {
        for p in [
            DurabilityPolicy::Sync,
            DurabilityPolicy::Periodic { interval_ms: 100 },
        ] {
            assert_eq!(p.to_string().parse::<DurabilityPolicy>().unwrap(), p);
        }
        assert!("periodic:0".parse::<DurabilityPolicy>().is_err());
        assert!("periodic:".parse::<DurabilityPolicy>().is_err());
        assert!("periodic:-5".parse::<DurabilityPolicy>().is_err());
        assert!("SYNC".parse::<DurabilityPolicy>().is_err());
    }

    #[test]
    fn policy_json_and_unknown_fields() {
        let p: DurabilityPolicy = serde_json::from_str(r#"{"mode":"sync"}"#).unwrap();
        assert_eq!(p, DurabilityPolicy::Sync);
        let p: DurabilityPolicy =
            serde_json::from_str(r#"{"mode":"periodic","interval_ms":7}"#).unwrap();
        assert_eq!(p, DurabilityPolicy::Periodic { interval_ms: 7 });
        assert!(serde_json::from_str::<DurabilityPolicy>(
            r#"{"mode":"periodic","interval_ms":7,"extra":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<DurabilityPolicy>(r#"{"mode":"periodic"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&DurabilityPolicy::Periodic { interval_ms: 7 }).unwrap(),
            r#"{"mode":"periodic","interval_ms":7}"#
        );
    }

    #[test]
    fn progress_outcomes() {
        let p = Progress {
            durable: 5,
            failed_through: 8,
            last_error: Some("disk on fire".into()),
        };
        assert!(matches!(p.outcome(5), Some(Ok(()))));
        assert!(matches!(p.outcome(6), Some(Err(Error::Storage(m))) if m.contains("disk on fire")));
        assert!(p.outcome(9).is_none());
    }

    #[tokio::test]
    async fn sync_memory_basic_and_shutdown() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let d = Durability::start(Arc::clone(&storage), DurabilityPolicy::Sync).unwrap();
        storage.put(b"k", b"v").unwrap();
        let t = d.written();
        assert_eq!(t.seq(), 1);
        d.wait_durable(t).await.unwrap();
        let st = d.stats();
        assert!(st.flushes >= 1);
        assert_eq!(st.writes, 1);
        assert_eq!(st.durable_seq, 1);
        d.shutdown().await.unwrap();
        // Idempotent.
        d.shutdown().await.unwrap();
        // After shutdown a new write cannot become durable: the waiter errors instead of hanging.
        let late = d.written();
        assert!(d.wait_durable(late).await.is_err());
    }
}
