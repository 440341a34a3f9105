//! The node's segment change log: every entry into or exit from a segment this node decided, fenced
//! ([`SegmentChange`]: owner, ring version, dot), persisted as node metadata records (`seglog/<seq>`) and
//! served to subscribers from a cursor.
//!
//! Guarantees:
//! - **Written with the decision**: the owner stages a transition's record inside the write that stores
//!   the membership flag, before the profile record, under the same shard lock ([`ChangeLog::stage`]), so
//!   the storage's durability wait covers both; a subscriber is shown a change only after that wait
//!   ([`ChangeLog::publish`]). A crash can therefore leave a staged record whose write was never
//!   acknowledged (the event is retried and decided again, with another dot): subscribers get
//!   at-least-once delivery, never a decided-and-acknowledged transition without its record. A staged
//!   change whose profile could not be stored is withdrawn ([`ChangeLog::withdraw`]); one whose durability
//!   wait failed or was abandoned is published anyway, because the node serves the membership it stored.
//! - **Shown in seq order**: writes of different users stage and finish concurrently, so changes settle
//!   out of order; the published watermark advances only over a contiguous run of settled seqs. A page
//!   (and so every cursor, the dashboard's feed included) never passes a change that is still in flight,
//!   and never shows one before its own durability wait ended.
//! - **Cursor**: `seq` increases by one per change and continues after the highest stored record at
//!   start, so a cursor never names two changes.
//! - **Bounded**: at most `max_change_log_entries` records are kept (memory and disk); the oldest go first,
//!   and a page says where the log now starts, so a subscriber behind it learns how many it missed.
//!
//! Caveats: node-local, like the dead-letter queue: a change is in the log of the node that decided it,
//! and is lost with that node's disk (its effect, the membership flag, replicates). Stats (entries, exits,
//! latency histograms) are since the process started.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use featurestore::segment::{ChangeEvent, Transition};
use featurestore::wire::codec::{decode_change, encode_change};
use featurestore::wire::segment::{ChangePage, LatencySummary, SegmentChange};
use featurestore::NodeId;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::storage::Storage;

/// The prefix of the change log's metadata records.
pub const RECORD_PREFIX: &str = "seglog/";

fn record_name(seq: u64) -> String {
    format!("{RECORD_PREFIX}{seq:020}")
}

fn parse_record_name(name: &str) -> Option<u64> {
    name.strip_prefix(RECORD_PREFIX)?.parse().ok()
}

/// What fences a decision: who decided it, under which ring, and what caused it.
#[derive(Debug, Clone)]
pub struct Fence {
    /// This node.
    pub owner: NodeId,
    /// The ring version now.
    pub ring_version: u64,
    /// For an event: when the first node accepted it (Unix µs).
    pub accepted_us: Option<u64>,
    /// For a timer: the deadline it was armed for (Unix ms).
    pub deadline_ms: Option<u64>,
}

/// Latency histograms, in microseconds.
#[derive(Debug)]
struct Latencies {
    event: Histogram<u64>,
    timer: Histogram<u64>,
}

impl Latencies {
    /// Histograms from 1 µs to an hour, 3 significant digits.
    fn new() -> Result<Latencies> {
        let make = || {
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| Error::Config(format!("latency histogram: {e}")))
        };
        Ok(Latencies {
            event: make()?,
            timer: make()?,
        })
    }
}

/// The histogram bucket bounds the summaries report (ms).
const BUCKETS_MS: [f64; 14] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 60000.0,
];

fn summary(h: &Histogram<u64>) -> LatencySummary {
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        buckets: BUCKETS_MS
            .iter()
            .map(|&b| (b, h.count_between(0, (b * 1000.0) as u64)))
            .collect(),
    }
}

#[derive(Debug)]
struct State {
    /// The retained changes, oldest first (staged ones included).
    entries: VecDeque<Arc<SegmentChange>>,
    /// The next seq to give.
    next_seq: u64,
    /// Every seq up to this one is settled (published or withdrawn): what pages show.
    published: u64,
    /// Settled seqs above `published`, waiting for an earlier one still in flight.
    settled: BTreeSet<u64>,
    /// Per segment: entries and exits published since start.
    counts: BTreeMap<String, (u64, u64)>,
    latencies: Latencies,
}

/// The node's change log.
pub struct ChangeLog {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    max_entries: usize,
    state: Mutex<State>,
    /// The published watermark ([`State::published`]), for subscribers to wait on.
    published: watch::Sender<u64>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Current wall-clock time in Unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl ChangeLog {
    /// Loads the stored records (a corrupt one is logged and skipped; seqs continue after it) and keeps
    /// at most `max_entries`.
    pub fn open(
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        max_entries: usize,
    ) -> Result<ChangeLog> {
        let mut state = State {
            entries: VecDeque::new(),
            next_seq: 1,
            published: 0,
            settled: BTreeSet::new(),
            counts: BTreeMap::new(),
            latencies: Latencies::new()?,
        };
        let mut loaded = BTreeMap::new();
        for (name, bytes) in storage.scan_meta(RECORD_PREFIX)? {
            let Some(seq) = parse_record_name(&name) else {
                tracing::warn!(record = %name, "ignoring a malformed change-log record name");
                continue;
            };
            state.next_seq = state.next_seq.max(seq.saturating_add(1));
            match decode_change(&bytes, seq) {
                Ok(change) => {
                    loaded.insert(seq, Arc::new(change));
                }
                Err(error) => {
                    tracing::error!(record = %name, %error, "corrupt change-log record skipped")
                }
            }
        }
        state.entries = loaded.into_values().collect();
        state.published = state.next_seq - 1;
        let log = ChangeLog {
            storage,
            metrics,
            max_entries: max_entries.max(1),
            published: watch::channel(state.published).0,
            state: Mutex::new(state),
        };
        log.trim(&mut log.state());
        Ok(log)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the oldest published records beyond the bound (a change in flight is kept until it settles,
    /// so the log may hold up to the number of writes in flight more).
    /// A record that cannot be removed stays on disk (logged) and is dropped at the next start.
    fn trim(&self, state: &mut State) {
        while state.entries.len() > self.max_entries
            && state
                .entries
                .front()
                .is_some_and(|c| c.seq <= state.published)
        {
            if let Some(old) = state.entries.pop_front() {
                self.remove_record(&old);
            }
        }
    }

    /// Gives `changes` their seqs and fence and stores their records (not yet durable, not yet shown):
    /// called inside the write that stores their membership flags, before the profile record. All or
    /// nothing: if a record cannot be stored, those stored before it are removed and no seq is used.
    /// Each staged change must later be [published](ChangeLog::publish) or
    /// [withdrawn](ChangeLog::withdraw), or the changes after it are never shown.
    pub fn stage(&self, changes: &[ChangeEvent], fence: &Fence) -> Result<Vec<Arc<SegmentChange>>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.state();
        let mut out: Vec<Arc<SegmentChange>> = Vec::with_capacity(changes.len());
        for change in changes {
            let record = SegmentChange {
                seq: state.next_seq + out.len() as u64,
                owner: fence.owner.clone(),
                ring_version: fence.ring_version,
                accepted_ms: fence.accepted_us.map(|us| us / 1000),
                deadline_ms: fence.deadline_ms,
                change: change.clone(),
            };
            let stored = encode_change(&record)
                .map_err(Error::from)
                .and_then(|bytes| self.storage.put_meta(&record_name(record.seq), &bytes));
            if let Err(e) = stored {
                Metrics::incr(&self.metrics.segment_log_failures);
                for staged in &out {
                    self.remove_record(staged);
                }
                return Err(e);
            }
            out.push(Arc::new(record));
        }
        state.next_seq += out.len() as u64;
        state.entries.extend(out.iter().cloned());
        self.trim(&mut state);
        Ok(out)
    }

    fn remove_record(&self, change: &SegmentChange) {
        if let Err(error) = self.storage.remove_meta(&record_name(change.seq)) {
            tracing::warn!(seq = change.seq, %error, "could not remove a change-log record");
        }
    }

    /// Takes back `staged` changes whose profile write failed (their memberships were not stored): never
    /// shown, and their records removed.
    pub fn withdraw(&self, staged: &[Arc<SegmentChange>]) {
        if staged.is_empty() {
            return;
        }
        let mut state = self.state();
        for change in staged {
            self.remove_record(change);
        }
        state
            .entries
            .retain(|c| !staged.iter().any(|s| s.seq == c.seq));
        self.settle(&mut state, staged);
    }

    /// Marks `staged` settled and moves the watermark over the contiguous run now settled.
    fn settle(&self, state: &mut State, staged: &[Arc<SegmentChange>]) {
        state.settled.extend(staged.iter().map(|c| c.seq));
        let before = state.published;
        while state.settled.remove(&(state.published + 1)) {
            state.published += 1;
        }
        if state.published > before {
            let published = state.published;
            self.published.send_replace(published);
        }
    }

    /// Shows `staged` (now durable) to subscribers once every earlier change has settled too, and counts
    /// them: transitions, and the latency from the causing event's acceptance (`accepted_us`) or the
    /// timer's deadline to now.
    pub fn publish(&self, staged: &[Arc<SegmentChange>], accepted_us: Option<u64>) {
        if staged.is_empty() {
            return;
        }
        let now = now_us();
        {
            let mut state = self.state();
            for c in staged {
                let entry = state.counts.entry(c.change.segment.clone()).or_default();
                match c.change.kind {
                    Transition::Entered => {
                        entry.0 += 1;
                        Metrics::incr(&self.metrics.segment_entries);
                    }
                    Transition::Exited => {
                        entry.1 += 1;
                        Metrics::incr(&self.metrics.segment_exits);
                    }
                }
                let histograms = &self.metrics.histograms;
                if let Some(accepted) = accepted_us {
                    let took = now.saturating_sub(accepted).max(1);
                    let _ = state.latencies.event.record(took);
                    histograms.segment_change_seconds.observe(took as f64 / 1e6);
                } else if let Some(deadline) = c.deadline_ms {
                    let lag = now.saturating_sub(deadline.saturating_mul(1000)).max(1);
                    let _ = state.latencies.timer.record(lag);
                    histograms
                        .segment_timer_lag_seconds
                        .observe(lag as f64 / 1e6);
                }
            }
            self.settle(&mut state, staged);
            self.trim(&mut state);
        }
    }

    /// A page of published changes with `seq >= from`, at most `limit` (and `max_bytes` of records),
    /// only of `segments` if given.
    pub fn page(
        &self,
        node: &NodeId,
        from: u64,
        limit: usize,
        segments: Option<&[String]>,
    ) -> ChangePage {
        let state = self.state();
        let published = state.published;
        let oldest = state.entries.front().map_or(state.next_seq, |c| c.seq);
        // A cursor beyond the watermark (`u64::MAX`: "from now") is brought back to it, so a change
        // still in flight is not passed over.
        let mut page = ChangePage {
            node: Some(node.clone()),
            changes: Vec::new(),
            next: from.max(oldest).min(published + 1),
            oldest,
        };
        // Seqs may have gaps (a corrupt record skipped at start): search, do not index.
        let start = state.entries.partition_point(|c| c.seq < page.next);
        for c in state.entries.iter().skip(start) {
            if c.seq > published || page.changes.len() >= limit {
                break;
            }
            page.next = c.seq + 1;
            if segments.is_none_or(|s| s.contains(&c.change.segment)) {
                page.changes.push((**c).clone());
            }
        }
        page
    }

    /// Waits until a change after `seq` is published, or `wait` passes.
    pub async fn wait_after(&self, seq: u64, wait: std::time::Duration) {
        let mut rx = self.published.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v >= seq)).await;
    }

    /// The published watermark, to wait on for new changes (then read them with [`ChangeLog::page`]).
    pub fn watermark(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The newest published change of `user` in `segment` still held.
    pub fn last_of(&self, user: &str, segment: &str) -> Option<SegmentChange> {
        let state = self.state();
        state
            .entries
            .iter()
            .rev()
            .filter(|c| c.seq <= state.published)
            .find(|c| c.change.user == user && c.change.segment == segment)
            .map(|c| (**c).clone())
    }

    /// Entries and exits per segment since start.
    pub fn counts(&self) -> BTreeMap<String, (u64, u64)> {
        self.state().counts.clone()
    }

    /// Event accepted → change published, and timer deadline → change published.
    pub fn latencies(&self) -> (LatencySummary, LatencySummary) {
        let state = self.state();
        (
            summary(&state.latencies.event),
            summary(&state.latencies.timer),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use featurestore::crdt::flag::FlagDot;
    use featurestore::hlc::Actor;
    use featurestore::segment::Why;

    fn change(user: &str, segment: &str) -> ChangeEvent {
        ChangeEvent {
            user: user.into(),
            segment: segment.into(),
            kind: Transition::Entered,
            at_ms: 1,
            event_time_ms: None,
            why: Why::default(),
            dot: FlagDot {
                actor: Actor::new(NodeId::new("n1").expect("valid"), 1),
                counter: 1,
            },
            resolves: Vec::new(),
        }
    }

    fn fence() -> Fence {
        Fence {
            owner: NodeId::new("n1").expect("valid"),
            ring_version: 3,
            accepted_us: Some(now_us()),
            deadline_ms: None,
        }
    }

    #[tokio::test]
    async fn staged_changes_show_after_publish_survive_a_reopen_and_are_bounded() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::default());
        let metrics = Arc::new(Metrics::default());
        let n1 = NodeId::new("n1").expect("valid");
        let log = ChangeLog::open(storage.clone(), metrics.clone(), 3).expect("opens");
        let staged = log
            .stage(&[change("u1", "a"), change("u2", "b")], &fence())
            .expect("stages");
        assert_eq!(staged.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(
            log.page(&n1, 0, 10, None).changes.is_empty(),
            "not yet durable"
        );
        log.publish(&staged, Some(now_us()));
        let page = log.page(&n1, 0, 10, None);
        assert_eq!(page.changes.len(), 2);
        assert_eq!(page.changes[0].ring_version, 3);
        assert_eq!(page.next, 3);
        let only_b = log.page(&n1, 1, 10, Some(&["b".to_owned()]));
        assert_eq!(only_b.changes.len(), 1);
        assert_eq!(
            only_b.next, 3,
            "the filtered-out change still moves the cursor"
        );
        assert_eq!(log.counts()["a"], (1, 0));
        assert_eq!(log.latencies().0.count, 2);

        // Two more: the oldest is dropped (bound 3), on disk too; the cursor continues after a reopen.
        let more = log
            .stage(&[change("u3", "a"), change("u4", "a")], &fence())
            .expect("stages");
        log.publish(&more, None);
        let page = log.page(&n1, 1, 10, None);
        assert_eq!(page.oldest, 2);
        assert_eq!(page.missed(1), 1);
        drop(log);
        let log = ChangeLog::open(storage, metrics, 3).expect("reopens");
        let page = log.page(&n1, 0, 10, None);
        assert_eq!(
            page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        let next = log.stage(&[change("u5", "a")], &fence()).expect("stages");
        assert_eq!(next[0].seq, 5);
        assert_eq!(log.last_of("u4", "a").map(|c| c.seq), Some(4));
    }

    /// A corrupt record skipped at start leaves a gap in the seqs; a cursor after it still gets the
    /// next change (pages search by seq, they do not index by offset).
    #[tokio::test]
    async fn a_gap_left_by_a_corrupt_record_skips_nothing_after_it() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::default());
        let metrics = Arc::new(Metrics::default());
        let n1 = NodeId::new("n1").expect("valid");
        let log = ChangeLog::open(storage.clone(), metrics.clone(), 10).expect("opens");
        let changes: Vec<ChangeEvent> = (1..=4).map(|i| change(&format!("u{i}"), "a")).collect();
        let staged = log.stage(&changes, &fence()).expect("stages");
        log.publish(&staged, None);
        drop(log);
        storage
            .put_meta(&record_name(2), b"garbage")
            .expect("writes");
        let log = ChangeLog::open(storage, metrics, 10).expect("reopens");
        let seqs = |from| -> Vec<u64> {
            log.page(&n1, from, 10, None)
                .changes
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        assert_eq!(seqs(0), [1, 3, 4]);
        assert_eq!(seqs(3), [3, 4]);
        assert_eq!(seqs(4), [4]);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_on_publish() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::default());
        let log =
            Arc::new(ChangeLog::open(storage, Arc::new(Metrics::default()), 10).expect("opens"));
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move {
                log.wait_after(1, std::time::Duration::from_secs(30)).await;
            })
        };
        tokio::task::yield_now().await;
        let staged = log.stage(&[change("u", "a")], &fence()).expect("stages");
        log.publish(&staged, None);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woke")
            .expect("joined");
    }
}
