//! Stall detection: whether this process was recently frozen (`SIGSTOP`, a VM pause, a swap storm), so
//! that events queued while it was frozen are not applied after their senders gave up on them.
//!
//! Why: while an owner is frozen, its peers judge it down and one of them acts as owner; a client's retry of
//! an event it sent to the frozen owner is applied there. When the frozen owner resumes it reads the
//! original (still queued in its sockets) and would apply it too, under its own window and counter slots:
//! the merge would count the event twice (the dedup set cannot help: neither owner had seen the other's
//! copy). Found by the harness (docs/harness.md, seed 3013).
//!
//! How: a task beats every [`BEAT`]; the guard reports a stall while the last beat is older than the
//! threshold (the process is frozen or starved right now) and for a grace period after a late beat (the
//! backlog of messages that queued up meanwhile is being read). Monotonic time only, so wall-clock jumps
//! are not stalls and stalls are seen whatever the clocks say.
//!
//! Caveats: an event whose apply had already begun when the process froze still completes; a starved
//! runtime (not frozen, just slow beyond the threshold) is treated as a stall too — its events are refused
//! with a retryable answer, which is safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the watch task beats.
pub const BEAT: Duration = Duration::from_millis(20);

/// Whether the process stalled recently; cheap to query from any thread.
#[derive(Debug)]
pub struct StallGuard {
    origin: Instant,
    /// Milliseconds since `origin` of the last beat.
    last_beat_ms: AtomicU64,
    /// Until when (ms since `origin`) a stall that ended is still reported.
    stalled_until_ms: AtomicU64,
    /// Stalls seen (each late beat counts once).
    stalls: AtomicU64,
    threshold_ms: u64,
    grace_ms: u64,
}

impl StallGuard {
    /// A guard that calls a gap of more than `threshold` between beats a stall, and keeps reporting it for
    /// `grace` after the late beat.
    pub fn new(threshold: Duration, grace: Duration) -> StallGuard {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        StallGuard {
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stalled_until_ms: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            threshold_ms: ms(threshold).max(1),
            grace_ms: ms(grace),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a beat; returns the gap since the previous one if it was a stall.
    pub fn beat(&self) -> Option<u64> {
        let now = self.now_ms();
        let gap = now.saturating_sub(self.last_beat_ms.swap(now, Ordering::AcqRel));
        if gap > self.threshold_ms {
            self.stalled_until_ms
                .fetch_max(now.saturating_add(self.grace_ms), Ordering::AcqRel);
            self.stalls.fetch_add(1, Ordering::Relaxed);
            return Some(gap);
        }
        None
    }

    /// Whether the process is stalled now (no beat for longer than the threshold) or stalled less than
    /// the grace period ago.
    pub fn stalled(&self) -> bool {
        let now = self.now_ms();
        now.saturating_sub(self.last_beat_ms.load(Ordering::Acquire)) > self.threshold_ms
            || now < self.stalled_until_ms.load(Ordering::Acquire)
    }

    /// Stalls seen so far.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Beats every [`BEAT`] until `shutdown`, logging each stall.
    pub fn spawn_watch(self: Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        self.beat();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(BEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = every.tick() => {
                        if let Some(gap_ms) = self.beat() {
                            tracing::warn!(
                                gap_ms, grace_ms = self.grace_ms,
                                "this process stalled; refusing to apply events as owner for the grace period"
                            );
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gap longer than the threshold is a stall while it lasts and for the grace period after it.
    #[test]
    fn a_late_beat_is_a_stall_for_the_grace_period() {
        // Generous bounds: a loaded test machine must not look stalled between the regular beats.
        let guard = StallGuard::new(Duration::from_millis(300), Duration::from_millis(300));
        assert_eq!(guard.beat(), None);
        assert!(!guard.stalled());
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            guard.stalled(),
            "no beat for longer than the threshold: stalled now"
        );
        assert!(guard.beat().is_some_and(|gap| gap >= 400));
        assert!(guard.stalled(), "within the grace period");
        assert_eq!(guard.stalls(), 1);
        // Regular beats through the grace period: then no stall any more.
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
            guard.beat();
        }
        assert!(!guard.stalled());
        assert_eq!(guard.stalls(), 1);
    }
}
