//! Segments on the node: the definitions file (`[ingest] segments = "segments.toml"`, `[[segment]]` tables
//! with a name and a CEL rule), compiled once at start-up, and the owner's re-evaluation of memberships in
//! the same write as each event it applies (the core's [`featurestore::segment::reconcile`]).
//!
//! Guarantees: a file that does not parse, or a rule that does not compile, stops the node with an error
//! naming the file and the position (line and column). A rule that names a feature no definition produces
//! is allowed (it may be a gauge written by clients or an identify trait) but logged at start-up, since a
//! misspelt name reads as "no data" and the segment then never has members.
//!
//! Caveats (issue #12, in progress): memberships move only when an event changes a feature a rule reads;
//! time-driven transitions (a window bucket leaving, `now` passing a deadline) wait for the next event of
//! the user, because timers are not armed yet. Transitions are counted (`segment_entries`,
//! `segment_exits`) and stored as the membership flag `segment:NAME` on the profile, which replicates; a
//! change log and subscriptions are not built yet.

use std::path::Path;

use featurestore::ingest::{Definitions, Event};
use featurestore::segment::{reconcile, Cause, Reconciled, Schema, Segments};
use featurestore::{Clock, Limits, Profile};

use crate::error::{Error, Result};

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

    /// Re-evaluates, inside the write that applied `event` to `profile` (the user `user`'s), the segments
    /// whose rules read one of `changed` (all of them for `None`), and writes the membership flags that
    /// move. Rules that fail are logged with the user; their memberships stay as they were.
    #[allow(clippy::too_many_arguments)]
    pub fn reconcile(
        &self,
        profile: &mut Profile,
        user: &str,
        changed: Option<&[String]>,
        event: &Event,
        clock: &mut Clock,
        now_ms: u64,
        limits: &Limits,
    ) -> Reconciled {
        if self.segments.is_empty() {
            return Reconciled::default();
        }
        let cause = Cause {
            message_id: Some(&event.message_id),
            event_time_ms: Some(event.timestamp_ms),
        };
        let out = reconcile(
            profile,
            user,
            &self.segments,
            &self.schema,
            changed,
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

/// Reads and compiles the segment definitions at `path`, and logs the features their rules read that no
/// definition in `definitions` produces.
pub fn load(path: &Path, definitions: &Definitions, limits: &Limits) -> Result<SegmentRules> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let segments = Segments::from_toml(&text, limits)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
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
