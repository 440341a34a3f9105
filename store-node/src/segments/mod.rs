//! Segments on the node: the definitions (a start-up file, `[ingest] segments = "segments.toml"`, and a
//! runtime [`Catalog`] that replicates between nodes), the owner's re-evaluation of memberships in the
//! same write as each event it applies (the core's [`featurestore::segment::reconcile`]), the change
//! [`log`], and the [`timers`] that re-evaluate when a time-dependent rule can flip.
//!
//! Guarantees:
//! - A file that does not parse, or a rule that does not compile, stops the node with an error naming the
//!   file and the position (line and column). A runtime definition that does not compile is refused with
//!   the same error before anything is stored. A rule that names a feature no definition produces is
//!   allowed (it may be a gauge written by clients or an identify trait) but logged, since a misspelt name
//!   reads as "no data" and the segment then never has members.
//! - Every node holding the same file and the same catalog evaluates the same set: catalogs merge by
//!   `(version, digest)` (a join), are persisted (`segments/catalog`) before they are used, and are
//!   exchanged by digest with every peer every few seconds.
//!
//! Caveats: the start-up file is per node; nodes started with different files evaluate different sets
//! (the catalog is the cluster-wide way to change them). A catalog that does not compile on a node
//! (possible only with such differing files) is kept, so it still replicates, but not applied there;
//! that is logged.

pub mod log;
pub mod timers;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use featurestore::ingest::{Definitions, Event};
use featurestore::segment::{
    conflicts, next_deadline, reconcile, Cause, Reconciled, Schema, Scope, SegmentDef, Segments,
};
use featurestore::wire::codec::{decode_catalog, encode_catalog};
use featurestore::wire::segment::{Backfill, Catalog};
use featurestore::{Clock, Limits, NodeId, Profile};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::storage::Storage;
use log::ChangeLog;
use timers::{Armed, TimerQueue};

/// The metadata record of the runtime catalog.
pub const CATALOG_RECORD: &str = "segments/catalog";

/// The compiled segments a node evaluates, with the schema of the features they read.
#[derive(Debug, Clone, Default)]
pub struct SegmentRules {
    /// The segments (none: nothing is evaluated).
    pub segments: Segments,
    /// How the defined features read (a `last_seen` window is a timestamp).
    pub schema: Schema,
}

impl SegmentRules {
    /// The segments of `segments` over the features of `definitions`.
    pub fn new(segments: Segments, definitions: &Definitions) -> SegmentRules {
        SegmentRules {
            segments,
            schema: Schema::from_definitions(definitions),
        }
    }

    /// Re-evaluates, inside the write that changed `profile` (the user `user`'s), the segments `scope`
    /// names, and writes the membership flags that move; `event` is the cause, if one is. Rules that fail
    /// are logged with the user; their memberships stay as they were.
    #[allow(clippy::too_many_arguments)]
    pub fn reconcile(
        &self,
        profile: &mut Profile,
        user: &str,
        scope: Scope<'_>,
        event: Option<&Event>,
        clock: &mut Clock,
        now_ms: u64,
        limits: &Limits,
    ) -> Reconciled {
        if self.segments.is_empty() {
            return Reconciled::default();
        }
        let cause = Cause {
            message_id: event.map(|e| e.message_id.as_str()),
            event_time_ms: event.map(|e| e.timestamp_ms),
        };
        let out = reconcile(
            profile,
            user,
            &self.segments,
            &self.schema,
            scope,
            cause,
            clock,
            now_ms,
            limits,
        );
        for (segment, error) in &out.failed {
            tracing::warn!(%user, %segment, %error, "segment not evaluated; its membership is unchanged");
        }
        out
    }
}

/// Warns about the features `segments` read that no definition produces.
fn warn_unknown_features(segments: &Segments, definitions: &Definitions) {
    for segment in segments.iter() {
        for name in segment.rule.reads() {
            if !definitions.features.iter().any(|f| f.name == *name) {
                tracing::warn!(
                    segment = segment.name(), feature = %name,
                    "a segment reads a feature no definition produces (a client gauge or trait, or a typo)"
                );
            }
        }
    }
}

/// The segments of one node at run time: the compiled set in use, the catalog, the change log, the
/// timers and the backfills.
pub struct SegmentRuntime {
    node: NodeId,
    definitions: Arc<Definitions>,
    /// The start-up file's definitions.
    base: Vec<SegmentDef>,
    limits: Limits,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    rules: RwLock<Arc<SegmentRules>>,
    catalog: Mutex<Catalog>,
    /// The change log.
    pub log: ChangeLog,
    timers: Mutex<TimerQueue>,
    /// Woken when a timer earlier than every other is armed.
    pub timer_wake: tokio::sync::Notify,
    backfills: Mutex<BTreeMap<String, Backfill>>,
    /// Segments to backfill, for the node's backfill task.
    backfill_tx: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
    backfill_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Vec<String>>>>,
    /// Members per segment among the profiles this node is the primary owner of, as last counted (by the
    /// node's counting task, off the runtime threads).
    pub member_counts: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for SegmentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentRuntime")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl SegmentRuntime {
    /// The runtime of node `node` with the start-up `file` segments over `definitions`, the stored
    /// catalog applied over them, and the stored change log.
    pub fn open(
        node: NodeId,
        definitions: Arc<Definitions>,
        file: &SegmentRules,
        limits: Limits,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
    ) -> Result<SegmentRuntime> {
        let catalog = match storage.get_meta(CATALOG_RECORD)? {
            Some(bytes) => decode_catalog(&bytes)?,
            None => Catalog::default(),
        };
        let base: Vec<SegmentDef> = file.segments.iter().map(|s| s.def()).collect();
        let log = ChangeLog::open(
            storage.clone(),
            metrics.clone(),
            limits.max_change_log_entries,
        )?;
        let (backfill_tx, backfill_rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = SegmentRuntime {
            node,
            definitions,
            base,
            limits,
            storage,
            metrics,
            rules: RwLock::new(Arc::new(file.clone())),
            catalog: Mutex::new(Catalog::default()),
            log,
            timers: Mutex::new(TimerQueue::default()),
            timer_wake: tokio::sync::Notify::new(),
            member_counts: Mutex::new(BTreeMap::new()),
            backfills: Mutex::new(BTreeMap::new()),
            backfill_tx,
            backfill_rx: Mutex::new(Some(backfill_rx)),
        };
        if catalog != Catalog::default() {
            // Applied as at start-up: nothing to backfill (it was backfilled when it arrived).
            runtime.adopt(catalog, false)?;
        }
        Ok(runtime)
    }

    /// The segments in use now.
    pub fn rules(&self) -> Arc<SegmentRules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The catalog held.
    pub fn catalog(&self) -> Catalog {
        self.lock_catalog().clone()
    }

    fn lock_catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn compile(&self, catalog: &Catalog) -> Result<Segments> {
        Segments::from_defs(&catalog.apply_to(&self.base), &self.limits).map_err(Error::from)
    }

    /// Adds or replaces `add` and removes `remove` in the catalog (at its next version), after checking
    /// that the result compiles; stores it, applies it, and queues the new or changed segments for
    /// backfill. Returns the new catalog (the caller gossips it).
    pub fn define(&self, add: &[SegmentDef], remove: &[String]) -> Result<Catalog> {
        let next = self.catalog().changed(add, remove);
        self.compile(&next)?;
        self.adopt(next.clone(), true)?;
        Ok(next)
    }

    /// Keeps `catalog` if it supersedes the one held: stores it, then applies it if it compiles (and, with
    /// `backfill`, queues the segments it adds or changes). Returns whether it was kept.
    pub fn adopt(&self, catalog: Catalog, backfill: bool) -> Result<bool> {
        let mut held = self.lock_catalog();
        if !held.is_superseded_by(&catalog) {
            return Ok(false);
        }
        let bytes = encode_catalog(&catalog)?;
        self.storage.put_meta(CATALOG_RECORD, &bytes)?;
        let old = self.rules();
        match self.compile(&catalog) {
            Ok(segments) => {
                warn_unknown_features(&segments, &self.definitions);
                let changed: Vec<String> = segments
                    .iter()
                    .filter(|s| {
                        old.segments
                            .get(s.name())
                            .is_none_or(|o| o.rule.text() != s.rule.text())
                    })
                    .map(|s| s.name().to_owned())
                    .collect();
                *self.rules.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(SegmentRules::new(segments, &self.definitions));
                tracing::info!(
                    version = catalog.version, changed = ?changed,
                    "segment catalog applied"
                );
                if backfill && !changed.is_empty() {
                    let _ = self.backfill_tx.send(changed);
                }
            }
            Err(error) => tracing::error!(
                version = catalog.version, %error,
                "segment catalog kept but not applied here: it does not compile with this node's file"
            ),
        }
        *held = catalog;
        Ok(true)
    }

    /// The receiver of segments to backfill (taken once, by the node's backfill task).
    pub fn take_backfill_queue(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<String>>> {
        self.backfill_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Records backfill progress of `segments`: `done` of `total`; finished ones are dropped.
    pub fn backfill_progress(&self, segments: &[String], done: u64, total: u64) {
        let mut b = self
            .backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for s in segments {
            if done >= total {
                b.remove(s);
            } else {
                b.insert(
                    s.clone(),
                    Backfill {
                        segment: s.clone(),
                        done,
                        total,
                    },
                );
            }
        }
    }

    /// Backfills running.
    pub fn backfills(&self) -> Vec<Backfill> {
        self.backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Arms (or clears) `user`'s timer from its profile now: the earliest deadline of its time-dependent
    /// segments, or now for segments whose flag holds a conflict to collapse.
    pub fn arm(&self, user: &str, profile: &Profile, now_ms: u64) {
        let rules = self.rules();
        if rules.segments.is_empty() {
            return;
        }
        let conflicted: Vec<String> = conflicts(profile, &rules.segments, now_ms)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let deadline = if conflicted.is_empty() {
            next_deadline(
                profile,
                &rules.segments,
                &rules.schema,
                now_ms,
                &self.limits,
            )
        } else {
            Some((now_ms, conflicted))
        };
        let armed = self
            .lock_timers()
            .arm(user, deadline, self.limits.max_segment_timers);
        match armed {
            Armed::Set { earliest: true } => self.timer_wake.notify_one(),
            Armed::Dropped => Metrics::incr(&self.metrics.segment_timers_dropped),
            _ => {}
        }
    }

    fn lock_timers(&self) -> MutexGuard<'_, TimerQueue> {
        self.timers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes and returns up to `max` timers due at `now_ms`.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<(String, u64, Vec<String>)> {
        self.lock_timers().due(now_ms, max)
    }

    /// The next timer's deadline.
    pub fn next_timer(&self) -> Option<u64> {
        self.lock_timers().next()
    }

    /// `user`'s armed deadline.
    pub fn timer_of(&self, user: &str) -> Option<u64> {
        self.lock_timers().of(user)
    }

    /// Users with a timer armed.
    pub fn timers_armed(&self) -> usize {
        self.lock_timers().len()
    }
}

/// Reads and compiles the segment definitions at `path`, and logs the features their rules read that no
/// definition in `definitions` produces.
pub fn load(path: &Path, definitions: &Definitions, limits: &Limits) -> Result<SegmentRules> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let segments = Segments::from_toml(&text, limits)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    warn_unknown_features(&segments, definitions);
    Ok(SegmentRules::new(segments, definitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example segments compile against the shipped example features.
    #[test]
    fn the_example_segments_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let limits = Limits::default();
        let defs =
            crate::features::load(&dir.join("features.example.toml"), &limits).expect("valid");
        let rules = load(&dir.join("segments.example.toml"), &defs, &limits).expect("valid");
        assert!(rules.segments.len() >= 3);
        for segment in rules.segments.iter() {
            for name in segment.rule.reads() {
                assert!(
                    defs.features.iter().any(|f| f.name == *name),
                    "{} reads {name}, which the example features do not define",
                    segment.name()
                );
            }
        }
    }

    /// A rule that does not compile names the file and the position.
    #[test]
    fn a_bad_rule_names_the_file_and_the_position() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segments.toml");
        std::fs::write(&path, "[[segment]]\nname = \"x\"\nrule = 'a >= '\n").expect("writes");
        let err = load(&path, &Definitions::default(), &Limits::default()).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("segments.toml"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }
}
