//! Segment definitions: `[[segment]]` tables of TOML (`name = "cart_abandoner"`, `rule = "..."`), validated
//! and compiled once into [`Segments`], which also keeps the dependency index: which segments read which
//! feature, so the node re-evaluates only the rules a change can affect.
//!
//! Guarantees:
//! - A definition that cannot work is refused with its position: TOML syntax errors, unknown or missing
//!   fields, and names that are invalid or defined twice with [`Error::InvalidSegments`] (line and column
//!   in the text); a rule that does not parse with [`Error::InvalidRule`] naming the segment, at the line and
//!   column of the error in the file when the rule's string maps one to one onto the file (a literal string,
//!   or a basic string without escapes), else in the rule text (`in_file: false`).
//! - Sizes are bounded: `max_rule_bytes` per rule ([`Error::RuleTooLong`]) and `max_segments`
//!   ([`Error::TooManySegments`]).
//! - A segment name follows the feature-name rules (`[A-Za-z0-9_.:-]`, at most `max_feature_name_bytes`),
//!   since membership is stored as a flag on the profile.
//! - [`Segments::affected_by`] returns every segment whose rule reads a changed feature (a superset of the
//!   ones whose value can change, never fewer), in definition order, each once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{truncate_for_error, Error, Result};
use crate::limits::Limits;
use crate::segment::rule::Rule;

/// One segment as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(deny_unknown_fields)]
pub struct SegmentDef {
    /// The segment's name.
    pub name: String,
    /// Its rule, in CEL.
    pub rule: String,
}

/// One compiled segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The compiled rule (it carries the segment's name and text).
    pub rule: Rule,
}

impl Segment {
    /// Validates the name against `limits`, and compiles the rule within them.
    pub fn new(def: &SegmentDef, limits: &Limits) -> Result<Segment> {
        limits
            .check_feature_name(&def.name)
            .map_err(|e| Error::InvalidSegments {
                line: 0,
                column: 0,
                reason: format!("segment name: {e}"),
            })?;
        Ok(Segment {
            rule: Rule::compile_within(&def.name, &def.rule, limits)?,
        })
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.rule.name()
    }

    /// The definition it was compiled from.
    pub fn def(&self) -> SegmentDef {
        SegmentDef {
            name: self.rule.name().to_owned(),
            rule: self.rule.text().to_owned(),
        }
    }
}

/// The compiled set of segments a node evaluates, with the dependency index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    segments: Vec<Segment>,
    /// Feature name → indices into `segments` of the rules that read it.
    readers: BTreeMap<String, Vec<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    segment: Vec<RawSegment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    name: toml::Spanned<String>,
    rule: toml::Spanned<String>,
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> (u32, u32) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// Where the characters of the string `value`, written at `span` of `text`, start in `text`, if they are
/// written there one to one (no escapes).
fn verbatim_start(text: &str, span: &Range<usize>, value: &str) -> Option<usize> {
    let raw = text.get(span.clone())?;
    for delimiter in ["\"\"\"", "'''", "\"", "'"] {
        let d = delimiter.len();
        if raw.len() < 2 * d || !raw.starts_with(delimiter) || !raw.ends_with(delimiter) {
            continue;
        }
        let mut start = d;
        if d == 3 {
            // A newline right after the opening delimiter of a multi-line string is trimmed.
            if raw[start..].starts_with("\r\n") {
                start += 2;
            } else if raw[start..].starts_with('\n') {
                start += 1;
            }
        }
        let body = raw.get(start..raw.len() - d)?;
        return (body == value).then_some(span.start + start);
    }
    None
}

/// The byte offset in `rule` of the character at 1-based `line`, `column`.
fn offset_in(rule: &str, line: u32, column: u32) -> usize {
    let mut offset = 0;
    for (i, l) in rule.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            let within: usize = l
                .chars()
                .take(column.saturating_sub(1) as usize)
                .map(char::len_utf8)
                .sum();
            return offset + within;
        }
        offset += l.len();
    }
    rule.len()
}

impl Segments {
    /// Parses and compiles the `[[segment]]` tables of `text` (see the module docs for the errors).
    pub fn from_toml(text: &str, limits: &Limits) -> Result<Segments> {
        let file: File = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| position(text, s.start));
            Error::InvalidSegments {
                line,
                column,
                reason: e.message().to_owned(),
            }
        })?;
        if file.segment.len() > limits.max_segments {
            return Err(Error::TooManySegments {
                count: file.segment.len(),
                max: limits.max_segments,
            });
        }
        let mut segments = Segments::default();
        for raw in &file.segment {
            let def = SegmentDef {
                name: raw.name.get_ref().clone(),
                rule: raw.rule.get_ref().clone(),
            };
            // A refusal of the segment itself (its name, the segment count) is placed at its name.
            let at_name = |e: Error| match e {
                Error::InvalidSegments { reason, .. } => {
                    let (line, column) = position(text, raw.name.span().start);
                    Error::InvalidSegments {
                        line,
                        column,
                        reason,
                    }
                }
                other => other,
            };
            let segment = Segment::new(&def, limits).map_err(|e| match e {
                Error::InvalidRule {
                    segment,
                    line,
                    column,
                    in_file: false,
                    reason,
                } => match verbatim_start(text, &raw.rule.span(), &def.rule) {
                    Some(start) => {
                        let (line, column) =
                            position(text, start + offset_in(&def.rule, line, column));
                        Error::InvalidRule {
                            segment,
                            line,
                            column,
                            in_file: true,
                            reason,
                        }
                    }
                    None => Error::InvalidRule {
                        segment,
                        line,
                        column,
                        in_file: false,
                        reason,
                    },
                },
                other => at_name(other),
            })?;
            segments.insert(segment, limits).map_err(at_name)?;
        }
        Ok(segments)
    }

    /// Compiles `defs` (definitions that came from elsewhere than a file, e.g. cluster metadata).
    pub fn from_defs(defs: &[SegmentDef], limits: &Limits) -> Result<Segments> {
        if defs.len() > limits.max_segments {
            return Err(Error::TooManySegments {
                count: defs.len(),
                max: limits.max_segments,
            });
        }
        let mut segments = Segments::default();
        for def in defs {
            segments.insert(Segment::new(def, limits)?, limits)?;
        }
        Ok(segments)
    }

    /// Adds a compiled segment. Refuses a name already defined and more than `max_segments` segments.
    pub fn insert(&mut self, segment: Segment, limits: &Limits) -> Result<()> {
        if self.get(segment.name()).is_some() {
            return Err(Error::InvalidSegments {
                line: 0,
                column: 0,
                reason: format!(
                    "segment {:?} is defined twice",
                    truncate_for_error(segment.name())
                ),
            });
        }
        if self.segments.len() >= limits.max_segments {
            return Err(Error::TooManySegments {
                count: self.segments.len() + 1,
                max: limits.max_segments,
            });
        }
        let index = self.segments.len();
        for name in segment.rule.reads() {
            self.readers.entry(name.clone()).or_default().push(index);
        }
        self.segments.push(segment);
        Ok(())
    }

    /// Removes the segment `name`; returns it if it was defined.
    pub fn remove(&mut self, name: &str) -> Option<Segment> {
        let at = self.segments.iter().position(|s| s.name() == name)?;
        let removed = self.segments.remove(at);
        self.readers.clear();
        for (index, s) in self.segments.iter().enumerate() {
            for feature in s.rule.reads() {
                self.readers.entry(feature.clone()).or_default().push(index);
            }
        }
        Some(removed)
    }

    /// The segment `name`, if defined.
    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name() == name)
    }

    /// Every segment, in definition order.
    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether there is no segment.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The segments whose rules read at least one of the `changed` features, in definition order, each
    /// once: the only ones a change of those features can move.
    pub fn affected_by<'a, I>(&self, changed: I) -> Vec<&Segment>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut hit = BTreeSet::new();
        for name in changed {
            if let Some(readers) = self.readers.get(name) {
                hit.extend(readers.iter().copied());
            }
        }
        hit.into_iter()
            .filter_map(|i| self.segments.get(i))
            .collect()
    }

    /// The segments whose value can change with time alone (they read `now`, or any feature: a window
    /// may expire a bucket, a gauge or flag may expire). The node asks [`next_flip`](crate::segment::next_flip)
    /// for these after each evaluation.
    pub fn timed(&self) -> impl Iterator<Item = &Segment> {
        self.segments
            .iter()
            .filter(|s| s.rule.reads_now() || !s.rule.reads().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
# Example segments.
[[segment]]
name = "cart_abandoner"
rule = "cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration('30m')"

[[segment]]
name = "high_intent"
rule = '''
products_30m >= 3 &&
  cart_adds_30m >= 1'''

[[segment]]
name = "vip_at_risk"
rule = "revenue_7d > 500.0 && now - last_order > duration('336h')"
"#;

    fn names(v: &[&Segment]) -> Vec<String> {
        v.iter().map(|s| s.name().to_owned()).collect()
    }

    #[test]
    fn a_file_compiles_with_its_dependency_index() {
        let s = Segments::from_toml(FILE, &Limits::default()).expect("valid");
        assert_eq!(s.len(), 3);
        assert_eq!(
            names(&s.affected_by(["cart_adds_30m"])),
            ["cart_abandoner", "high_intent"]
        );
        assert_eq!(
            names(&s.affected_by(["last_order", "orders_30m"])),
            ["cart_abandoner", "vip_at_risk"]
        );
        assert!(
            s.affected_by(["page_views", "plan"]).is_empty(),
            "no rule reads them"
        );
        assert_eq!(
            s.get("high_intent").expect("defined").def().rule,
            "products_30m >= 3 &&\n  cart_adds_30m >= 1"
        );
        assert_eq!(s.timed().count(), 3);
        assert_eq!(
            Segments::from_toml("", &Limits::default()),
            Ok(Segments::default())
        );
    }

    #[test]
    fn removing_a_segment_rebuilds_the_index() {
        let mut s = Segments::from_toml(FILE, &Limits::default()).expect("valid");
        assert!(s.remove("cart_abandoner").is_some());
        assert!(s.remove("cart_abandoner").is_none());
        assert_eq!(names(&s.affected_by(["cart_adds_30m"])), ["high_intent"]);
        assert_eq!(names(&s.affected_by(["revenue_7d"])), ["vip_at_risk"]);
        let limits = Limits::default();
        let back = Segment::new(
            &SegmentDef {
                name: "cart_abandoner".into(),
                rule: "orders_30m == 0".into(),
            },
            &limits,
        )
        .expect("valid");
        s.insert(back, &limits).expect("room");
        assert_eq!(names(&s.affected_by(["orders_30m"])), ["cart_abandoner"]);
        assert_eq!(
            names(&s.affected_by(["orders_30m", "cart_adds_30m", "orders_30m"])),
            ["high_intent", "cart_abandoner"],
            "in definition order, each once"
        );
    }

    fn rule_error(text: &str) -> (String, u32, u32, bool) {
        match Segments::from_toml(text, &Limits::default()) {
            Err(Error::InvalidRule {
                segment,
                line,
                column,
                in_file,
                ..
            }) => (segment, line, column, in_file),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rule_error_names_the_segment_and_its_line_and_column_in_the_file() {
        let text = "[[segment]]\nname = \"ok\"\nrule = \"a > 1\"\n\n[[segment]]\nname = \"broken\"\nrule = \"orders_30m >= && x\"\n";
        assert_eq!(rule_error(text), ("broken".into(), 7, 23, true));
        let multi = "[[segment]]\nname = \"m\"\nrule = '''\na > 1 &&\n  (b ||'''\n";
        assert_eq!(rule_error(multi), ("m".into(), 5, 8, true));
        let literal = "[[segment]]\nname = \"d\"\nrule = 'now - t > duration(\"7d\")'\n";
        assert_eq!(rule_error(literal), ("d".into(), 3, 28, true));
        // An escape: the rule's characters are not the file's, so the position is in the rule.
        let escaped = "[[segment]]\nname = \"e\"\nrule = \"x == \\\"a\\\" &&\"\n";
        assert_eq!(rule_error(escaped), ("e".into(), 1, 12, false));
    }

    fn file_error(text: &str, limits: &Limits) -> Error {
        Segments::from_toml(text, limits).expect_err("refused")
    }

    #[test]
    fn malformed_files_bad_names_and_sizes_are_refused_with_positions() {
        let limits = Limits::default();
        match file_error(
            "[[segment]]\nname = \"a\"\nrule = \"x\"\ncolour = 1\n",
            &limits,
        ) {
            Error::InvalidSegments { line, reason, .. } => {
                assert_eq!(line, 4, "{reason}");
                assert!(reason.contains("colour"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match file_error("[[segment]]\nname = \"a\"\n", &limits) {
            Error::InvalidSegments { reason, .. } => assert!(reason.contains("rule"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            file_error("[[segment]\n", &limits),
            Error::InvalidSegments { line: 1, .. }
        ));
        let twice =
            "[[segment]]\nname = \"a\"\nrule = \"x\"\n[[segment]]\nname = \"a\"\nrule = \"y\"\n";
        match file_error(twice, &limits) {
            Error::InvalidSegments {
                line,
                column,
                reason,
            } => {
                assert_eq!((line, column), (5, 8));
                assert!(reason.contains("twice"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match file_error("[[segment]]\nname = \"bad name\"\nrule = \"x\"\n", &limits) {
            Error::InvalidSegments {
                line: 2, reason, ..
            } => {
                assert!(reason.contains("bad name"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let small = Limits {
            max_rule_bytes: 8,
            max_segments: 1,
            ..Limits::default()
        };
        assert!(matches!(
            file_error(
                "[[segment]]\nname = \"a\"\nrule = \"x > 1 && y > 2\"\n",
                &small
            ),
            Error::RuleTooLong {
                len: 14,
                max: 8,
                ..
            }
        ));
        assert!(matches!(
            file_error(
                twice
                    .replace("\"a\"\nrule = \"y\"", "\"b\"\nrule = \"y\"")
                    .as_str(),
                &small
            ),
            Error::TooManySegments { count: 2, max: 1 }
        ));
        let mut one =
            Segments::from_toml("[[segment]]\nname = \"a\"\nrule = \"x\"\n", &small).expect("fits");
        let b = Segment::new(
            &SegmentDef {
                name: "b".into(),
                rule: "y".into(),
            },
            &small,
        )
        .expect("valid");
        assert!(matches!(
            one.insert(b, &small),
            Err(Error::TooManySegments { .. })
        ));
    }

    #[test]
    fn definitions_round_trip_through_from_defs() {
        let s = Segments::from_toml(FILE, &Limits::default()).expect("valid");
        let defs: Vec<SegmentDef> = s.iter().map(Segment::def).collect();
        assert_eq!(Segments::from_defs(&defs, &Limits::default()), Ok(s));
    }
}
