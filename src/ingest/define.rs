//! Feature definitions: which events feed which feature, how, and over which window. Written in the node's
//! `features.toml` (`[[features]]` tables), validated once at start-up into [`Definitions`].
//!
//! A definition: `name`; `on` (the event type); `event` (for `track`: the event name to match; for `page` and
//! `screen`: the page or screen name, optional); `aggregation` (`count`, `sum`, `min`, `max`, `last`,
//! `first_seen`, `last_seen`, `distinct_count`); `property` (a dotted path into the properties: required for
//! `sum`, `min`, `max`, `last` and `distinct_count`); `window` (`"30m"`, `"24h"`, `"7d"`; absent: all
//! time) and `bucket` (the bucket width, default a thirtieth of the window, at least 1 s; the window is at
//! most `[limits] max_window_buckets` buckets). `identify` traits need no definition: every scalar trait
//! becomes a gauge of the same name.
//!
//! Guarantees: a definition that cannot work (unknown aggregation, a missing property, a bad duration, a
//! bucket wider than its window, a name that is not a valid feature name, two definitions of one name) is
//! refused at compile time with [`Error::InvalidDefinition`] naming the feature and the field.
//!
//! `distinct_count` counts the distinct values of its property (strings, numbers and bools, each by its JSON
//! text, so `1`, `1.0` and `"1"` are three values), exactly below `Limits::max_distinct_exact` (K) distinct
//! values and as a bottom-k sketch estimate at and above it (see [`crate::crdt::window`]); K is part of
//! the compiled window's parameters.

use serde::{Deserialize, Serialize};

use crate::crdt::window::{Aggregation, WindowSpec};
use crate::error::{Error, Result};
use crate::ingest::event::EventType;
use crate::limits::Limits;

/// One definition as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDefinition {
    /// The feature's name.
    pub name: String,
    /// The event type that feeds it.
    pub on: EventType,
    /// The event (track) or page/screen name to match; any if absent (not allowed for track).
    #[serde(default)]
    pub event: Option<String>,
    /// How events are aggregated.
    pub aggregation: String,
    /// The property read, a dotted path.
    #[serde(default)]
    pub property: Option<String>,
    /// The window, e.g. `"30m"`; all time if absent.
    #[serde(default)]
    pub window: Option<String>,
    /// The bucket width, e.g. `"1m"`.
    #[serde(default)]
    pub bucket: Option<String>,
}

/// What a compiled definition writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A window feature: each matching event adds its value (1 for count, the event time for
    /// first/last seen).
    Window(WindowSpec),
    /// A gauge holding the property's latest value by event time.
    Last,
}

/// What a window adds per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// 1 per event.
    One,
    /// The numeric property.
    Property,
    /// The event time.
    EventTime,
    /// The hash of the property's value (distinct counts).
    Distinct,
}

/// One validated definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The feature.
    pub name: String,
    /// The event type.
    pub on: EventType,
    /// The name to match, if any.
    pub event: Option<String>,
    /// The property path, if it reads one.
    pub property: Option<String>,
    /// What it writes.
    pub target: Target,
    /// What a window adds.
    pub input: Input,
}

/// The validated set of definitions a node ingests with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definitions {
    /// In definition order.
    pub features: Vec<Compiled>,
}

/// Parses `"30m"`, `"24h"`, `"7d"`, `"45s"` or `"500ms"` into milliseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).filter(|ms| *ms > 0)
}

impl Definitions {
    /// Validates every definition.
    pub fn compile(defs: &[FeatureDefinition], limits: &Limits) -> Result<Definitions> {
        let mut features: Vec<Compiled> = Vec::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            let err = |field: &'static str, reason: String| Error::InvalidDefinition {
                feature: if d.name.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    d.name.clone()
                },
                field,
                reason,
            };
            limits
                .check_feature_name(&d.name)
                .map_err(|e| err("name", e.to_string()))?;
            if features.iter().any(|f| f.name == d.name) {
                return Err(err("name", "defined twice".into()));
            }
            if d.on == EventType::Track && d.event.is_none() {
                return Err(err(
                    "event",
                    "a track feature names the event it counts".into(),
                ));
            }
            if matches!(d.on, EventType::Alias) {
                return Err(err(
                    "on",
                    "alias calls link identities; they feed no feature".into(),
                ));
            }
            let (aggregation, input) = match d.aggregation.as_str() {
                "count" => (Some(Aggregation::Count), Input::One),
                "sum" => (Some(Aggregation::Sum), Input::Property),
                "min" => (Some(Aggregation::Min), Input::Property),
                "max" => (Some(Aggregation::Max), Input::Property),
                "first_seen" => (Some(Aggregation::Min), Input::EventTime),
                "last_seen" => (Some(Aggregation::Max), Input::EventTime),
                "last" => (None, Input::Property),
                "distinct_count" => (Some(Aggregation::DistinctCount), Input::Distinct),
                other => {
                    return Err(err(
                        "aggregation",
                        format!(
                            "unknown {other:?}: use count, sum, min, max, last, first_seen, last_seen or distinct_count"
                        ),
                    ))
                }
            };
            if matches!(input, Input::Property | Input::Distinct)
                && d.property.as_deref().is_none_or(str::is_empty)
            {
                return Err(err(
                    "property",
                    format!("{} needs a property", d.aggregation),
                ));
            }
            let span_ms = match &d.window {
                None => 0,
                Some(w) => parse_duration(w).ok_or_else(|| {
                    err(
                        "window",
                        format!("{w:?} is not a duration like 30m, 24h or 7d"),
                    )
                })?,
            };
            let bucket_ms = match &d.bucket {
                None => (span_ms / 30).max(1_000),
                Some(b) => parse_duration(b)
                    .ok_or_else(|| err("bucket", format!("{b:?} is not a duration")))?,
            };
            if span_ms != 0 && bucket_ms > span_ms {
                return Err(err("bucket", "wider than the window".into()));
            }
            // The buckets a window holds: those starting less than a span before the newest one.
            let buckets = span_ms.div_ceil(bucket_ms.max(1));
            if buckets > limits.max_window_buckets as u64 {
                return Err(err(
                    "bucket",
                    format!(
                        "{buckets} buckets per window, more than [limits] max_window_buckets ({}): \
                         widen the bucket",
                        limits.max_window_buckets
                    ),
                ));
            }
            let target = match aggregation {
                Some(aggregation) => Target::Window(WindowSpec {
                    aggregation,
                    bucket_ms,
                    span_ms,
                    max_exact: if aggregation == Aggregation::DistinctCount {
                        limits.max_distinct_exact
                    } else {
                        0
                    },
                }),
                None if d.window.is_some() => {
                    return Err(err(
                        "window",
                        "last is a value, not a windowed aggregate".into(),
                    ))
                }
                None => Target::Last,
            };
            features.push(Compiled {
                name: d.name.clone(),
                on: d.on,
                event: d.event.clone(),
                property: d.property.clone(),
                target,
                input,
            });
        }
        Ok(Definitions { features })
    }

    /// The definitions an event of `kind` named `name` feeds.
    pub fn matching<'a>(
        &'a self,
        kind: EventType,
        name: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.features
            .iter()
            .filter(move |f| f.on == kind && f.event.as_deref().is_none_or(|e| Some(e) == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, on: EventType, event: Option<&str>, agg: &str) -> FeatureDefinition {
        FeatureDefinition {
            name: name.into(),
            on,
            event: event.map(Into::into),
            aggregation: agg.into(),
            property: None,
            window: None,
            bucket: None,
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Some(1_800_000));
        assert_eq!(parse_duration("24h"), Some(86_400_000));
        assert_eq!(parse_duration("7d"), Some(604_800_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        for bad in ["", "m", "30", "30x", "-5m", "0s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn definitions_compile_to_windows_and_gauges() {
        let mut orders = def(
            "orders_30m",
            EventType::Track,
            Some("Order Completed"),
            "count",
        );
        orders.window = Some("30m".into());
        let mut revenue = def(
            "revenue_7d",
            EventType::Track,
            Some("Order Completed"),
            "sum",
        );
        revenue.property = Some("revenue".into());
        revenue.window = Some("7d".into());
        let mut last = def("last_sku", EventType::Track, Some("Product Added"), "last");
        last.property = Some("product.sku".into());
        let pages = def("page_views", EventType::Page, None, "count");
        let d = Definitions::compile(&[orders, revenue, last, pages], &Limits::default())
            .expect("valid");
        assert_eq!(
            d.features[0].target,
            Target::Window(WindowSpec {
                aggregation: Aggregation::Count,
                bucket_ms: 60_000,
                span_ms: 1_800_000,
                max_exact: 0,
            })
        );
        assert_eq!(d.features[2].target, Target::Last);
        assert_eq!(
            d.matching(EventType::Track, Some("Order Completed"))
                .count(),
            2
        );
        assert_eq!(d.matching(EventType::Page, Some("Home")).count(), 1);
        assert_eq!(d.matching(EventType::Track, Some("Other")).count(), 0);
    }

    #[test]
    fn distinct_counts_compile_with_the_sketch_size_of_the_limits() {
        let mut skus = def(
            "distinct_products_7d",
            EventType::Track,
            Some("Product Viewed"),
            "distinct_count",
        );
        skus.property = Some("product_id".into());
        skus.window = Some("7d".into());
        let mut all_time = def("distinct_pages", EventType::Page, None, "distinct_count");
        all_time.property = Some("path".into());
        let limits = Limits {
            max_distinct_exact: 64,
            ..Limits::default()
        };
        let d = Definitions::compile(&[skus, all_time], &limits).expect("valid");
        assert_eq!(
            d.features[0].target,
            Target::Window(WindowSpec {
                aggregation: Aggregation::DistinctCount,
                bucket_ms: 20_160_000,
                span_ms: 604_800_000,
                max_exact: 64,
            })
        );
        assert_eq!(d.features[0].input, Input::Distinct);
        assert!(
            matches!(d.features[1].target, Target::Window(s) if s.span_ms == 0 && s.max_exact == 64)
        );
        let no_property = def("d", EventType::Page, None, "distinct_count");
        match Definitions::compile(&[no_property], &limits) {
            Err(Error::InvalidDefinition { field, reason, .. }) => {
                assert_eq!(field, "property");
                assert!(reason.contains("distinct_count"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A window's span over its bucket width is bounded by `max_window_buckets`: at the limit it
    /// compiles, one bucket more is refused on the `bucket` field, with the limit named.
    #[test]
    fn a_window_of_more_buckets_than_the_limit_is_refused() {
        let limits = Limits {
            max_window_buckets: 60,
            ..Limits::default()
        };
        let mut at_limit = def("hour_of_minutes", EventType::Page, None, "count");
        at_limit.window = Some("1h".into());
        at_limit.bucket = Some("1m".into());
        assert!(Definitions::compile(&[at_limit], &limits).is_ok());
        let mut over = def("hour_of_seconds", EventType::Page, None, "count");
        over.window = Some("1h".into());
        over.bucket = Some("59s".into());
        match Definitions::compile(&[over], &limits) {
            Err(Error::InvalidDefinition { field, reason, .. }) => {
                assert_eq!(field, "bucket");
                assert!(reason.contains("max_window_buckets"), "{reason}");
                // 3,600 s over 59 s buckets: a window holds 62 of them (61 whole ones and a partial one).
                assert!(reason.starts_with("62 buckets"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_definition_names_the_feature_and_the_field() {
        let mut no_prop = def("s", EventType::Track, Some("x"), "sum");
        no_prop.window = Some("1h".into());
        let mut bad_window = def("w", EventType::Page, None, "count");
        bad_window.window = Some("soon".into());
        let mut wide = def("b", EventType::Page, None, "count");
        wide.window = Some("1m".into());
        wide.bucket = Some("1h".into());
        let cases = [
            (def("c", EventType::Track, None, "count"), "event"),
            (no_prop, "property"),
            (bad_window, "window"),
            (wide, "bucket"),
            (def("d", EventType::Page, None, "median"), "aggregation"),
            (def("bad name!", EventType::Page, None, "count"), "name"),
            (def("a", EventType::Alias, None, "count"), "on"),
        ];
        for (d, field) in cases {
            match Definitions::compile(std::slice::from_ref(&d), &Limits::default()) {
                Err(Error::InvalidDefinition {
                    feature, field: f, ..
                }) => {
                    assert_eq!((feature.as_str(), f), (d.name.as_str(), field))
                }
                other => panic!("{d:?}: {other:?}"),
            }
        }
        let twice = def("p", EventType::Page, None, "count");
        assert!(Definitions::compile(&[twice.clone(), twice], &Limits::default()).is_err());
    }
}
