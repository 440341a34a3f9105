//! Segment timers: one per user, armed at the earliest deadline the core's
//! [`next_deadline`](featurestore::segment::next_deadline) computes for the user's time-dependent
//! segments, fired by the node's timer task when it comes.
//!
//! Guarantees: a user has at most one timer (re-arming replaces it), at most `max_segment_timers` users
//! have one (further ones are dropped and counted), and [`TimerQueue::due`] hands out each timer once.
//! Every replica arms timers (after its own writes and after merging another replica's), but only the
//! user's acting owner at fire time evaluates; so when the owner dies, the next replica already holds the
//! timer, and a restarted node arms its timers again by scanning its profiles.
//!
//! Caveats: in memory only; the start-up scan restores them, so a timer due while the node was down fires
//! right after the scan reaches its user (its lag then includes the downtime).

use std::collections::{BTreeSet, HashMap};

/// The node's segment timers.
#[derive(Debug, Default)]
pub struct TimerQueue {
    by_time: BTreeSet<(u64, String)>,
    by_user: HashMap<String, (u64, Vec<String>)>,
}

/// What arming a timer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Armed {
    /// Armed (or moved); `earliest` if it is now the first timer due.
    Set {
        /// Whether it is the next timer due (the timer task should wake).
        earliest: bool,
    },
    /// Already armed at that instant for those segments.
    Unchanged,
    /// Cleared (no deadline).
    Cleared,
    /// Not armed: `max` users already have a timer.
    Dropped,
}

impl TimerQueue {
    /// Arms `user`'s timer at `deadline` for `segments` (replacing any), or clears it for `None`.
    pub fn arm(&mut self, user: &str, deadline: Option<(u64, Vec<String>)>, max: usize) -> Armed {
        let Some((at, segments)) = deadline else {
            if let Some((old, _)) = self.by_user.remove(user) {
                self.by_time.remove(&(old, user.to_owned()));
                return Armed::Cleared;
            }
            return Armed::Unchanged;
        };
        match self.by_user.get(user) {
            Some((old, s)) if *old == at && *s == segments => return Armed::Unchanged,
            Some((old, _)) => {
                self.by_time.remove(&(*old, user.to_owned()));
            }
            None if self.by_user.len() >= max => return Armed::Dropped,
            None => {}
        }
        self.by_user.insert(user.to_owned(), (at, segments));
        self.by_time.insert((at, user.to_owned()));
        let earliest = self.by_time.first().is_some_and(|(t, _)| *t == at);
        Armed::Set { earliest }
    }

    /// Removes and returns up to `max` timers due at `now_ms`: `(user, deadline, segments)`, earliest
    /// first.
    pub fn due(&mut self, now_ms: u64, max: usize) -> Vec<(String, u64, Vec<String>)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((at, _)) = self.by_time.first() else {
                break;
            };
            if *at > now_ms {
                break;
            }
            let Some((at, user)) = self.by_time.pop_first() else {
                break;
            };
            if let Some((_, segments)) = self.by_user.remove(&user) {
                out.push((user, at, segments));
            }
        }
        out
    }

    /// The next deadline, if any.
    pub fn next(&self) -> Option<u64> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// The deadline armed for `user`.
    pub fn of(&self, user: &str) -> Option<u64> {
        self.by_user.get(user).map(|(t, _)| *t)
    }

    /// Users with a timer.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn one_timer_per_user_fired_once_in_deadline_order_and_bounded() {
        let mut q = TimerQueue::default();
        assert_eq!(
            q.arm("u1", Some((30, segs(&["a"]))), 2),
            Armed::Set { earliest: true }
        );
        assert_eq!(
            q.arm("u2", Some((10, segs(&["b"]))), 2),
            Armed::Set { earliest: true }
        );
        assert_eq!(q.arm("u2", Some((10, segs(&["b"]))), 2), Armed::Unchanged);
        assert_eq!(q.arm("u3", Some((5, segs(&["a"]))), 2), Armed::Dropped);
        // Re-arming moves the timer.
        assert_eq!(
            q.arm("u1", Some((20, segs(&["a"]))), 2),
            Armed::Set { earliest: false }
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(), Some(10));
        assert!(q.due(9, 10).is_empty());
        assert_eq!(
            q.due(25, 10),
            vec![
                ("u2".to_owned(), 10, segs(&["b"])),
                ("u1".to_owned(), 20, segs(&["a"]))
            ]
        );
        assert!(q.due(100, 10).is_empty(), "each timer fires once");
        q.arm("u1", Some((50, segs(&["a"]))), 2);
        assert_eq!(q.arm("u1", None, 2), Armed::Cleared);
        assert!(q.is_empty());
    }
}
