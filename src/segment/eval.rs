//! What a rule reads from a profile, and its evaluation.
//!
//! Each feature of the profile's read view ([`ProfileView`], so only visible values: nothing expired or
//! erased, and the profiles of linked identities combined) is bound under its name:
//!
//! | feature | reads as (CEL type) |
//! |---|---|
//! | counter | `int` |
//! | window `count`, `distinct_count` | `int` (the count; a distinct count's estimate above K, rounded) |
//! | window `sum`, `min`, `max` | `double` |
//! | window `first_seen`, `last_seen` (the event time) | `timestamp` |
//! | gauge | its value's type: `bool`, `int`, `double` or `string` |
//! | flag | `bool`: true if any visible sibling is true (concurrent writes that disagree read as true) |
//! | `now` | `timestamp`, the evaluation instant |
//!
//! Which windows hold event times is not in the view (a `last_seen` is a `max` of event times): the
//! [`Schema`] says it, built from the node's feature definitions. The schema also gives the value of a
//! defined feature that has no data yet: a `count`, `sum` or `distinct_count` of no events reads `0`
//! (`orders_30m == 0` holds for a user who never ordered). Every other absent feature (a `min`, `max`,
//! `first_seen` or `last_seen` of no events, a gauge or flag never written or expired, a name nothing
//! defines) is left unbound, and a rule whose result depends on it is `false`: no data is not a member.
//! A rule that wants "never, or long ago" says so with a count: `orders_all == 0 || now - last_order >
//! duration("720h")`.
//!
//! Guarantees: evaluation is a pure function of the rule, the view, the schema and `now_ms`; it never
//! panics; a run-time failure is [`Error::RuleEvaluation`](crate::error::Error).

use std::collections::{BTreeMap, BTreeSet};

use crate::crdt::value::Value;
use crate::crdt::window::Aggregation;
use crate::error::Result;
use crate::ingest::{Definitions, Input, Target};
use crate::profile::{FeatureView, Profile, ProfileView};
use crate::segment::rule::Rule;
use crate::segment::Reading;

/// What the feature definitions say about how features read: which windows hold event times, and what a
/// defined feature with no events reads as.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    timestamps: BTreeSet<String>,
    defaults: BTreeMap<String, Reading>,
}

impl Schema {
    /// The schema of a node's feature definitions: `first_seen`/`last_seen` windows are timestamps;
    /// `count` and `distinct_count` windows default to `0`, `sum` windows to `0.0`.
    pub fn from_definitions(defs: &Definitions) -> Schema {
        let mut schema = Schema::default();
        for def in &defs.features {
            let Target::Window(spec) = def.target else {
                continue;
            };
            if def.input == Input::EventTime {
                schema.timestamps.insert(def.name.clone());
                continue;
            }
            let default = match spec.aggregation {
                Aggregation::Count | Aggregation::DistinctCount => Reading::Int(0),
                Aggregation::Sum => Reading::Number(0.0),
                Aggregation::Min | Aggregation::Max => continue,
            };
            schema.defaults.insert(def.name.clone(), default);
        }
        schema
    }

    /// Whether the window `name` holds event times (reads as a timestamp).
    pub fn is_timestamp(&self, name: &str) -> bool {
        self.timestamps.contains(name)
    }

    /// What `name` reads as when the view has no value for it.
    pub fn absent(&self, name: &str) -> Reading {
        self.defaults.get(name).cloned().unwrap_or(Reading::Absent)
    }
}

/// How one visible feature reads (see the module docs).
fn reading(name: &str, view: &FeatureView, schema: &Schema) -> Reading {
    match view {
        FeatureView::Counter { value } => Reading::Int(*value),
        FeatureView::Gauge { value, .. } => match value {
            Value::Bool(b) => Reading::Bool(*b),
            Value::I64(i) => Reading::Int(*i),
            Value::F64(f) => Reading::Number(*f),
            Value::Str(s) => Reading::Text(s.to_string()),
        },
        FeatureView::Flag(flag) => Reading::Bool(flag.values.iter().any(|v| v.value)),
        FeatureView::Window {
            aggregation, value, ..
        } => match (aggregation, value) {
            (_, None) => schema.absent(name),
            (_, Some(ms)) if schema.is_timestamp(name) => {
                // Event times are whole milliseconds; a negative or non-finite one is not an instant.
                if ms.is_finite() && *ms >= 0.0 {
                    Reading::Time(*ms as u64)
                } else {
                    Reading::Absent
                }
            }
            (Aggregation::Count | Aggregation::DistinctCount, Some(n)) => Reading::Int(*n as i64),
            (Aggregation::Sum | Aggregation::Min | Aggregation::Max, Some(x)) => {
                Reading::Number(*x)
            }
        },
    }
}

/// The readings of every feature `rule` reads from `view` (`None`: the profile has no visible feature).
/// Names that are only dotted prefixes of other names read (`user` of `user.plan`) are left out unless
/// they have a value.
pub fn readings(
    rule: &Rule,
    view: Option<&ProfileView>,
    schema: &Schema,
) -> BTreeMap<String, Reading> {
    let reads = rule.reads();
    reads
        .iter()
        .filter_map(|name| {
            let found = view.and_then(|v| v.features.get(name.as_str()));
            let r = match found {
                Some(f) => reading(name, f, schema),
                None => schema.absent(name),
            };
            let prefix_only = reads.iter().any(|other| {
                other
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            });
            (r != Reading::Absent || !prefix_only).then(|| (name.clone(), r))
        })
        .collect()
}

/// Whether the profile whose view is `view` is a member of `rule`'s segment at `now_ms`.
pub fn evaluate(
    rule: &Rule,
    view: Option<&ProfileView>,
    schema: &Schema,
    now_ms: u64,
) -> Result<bool> {
    Ok(explain(rule, view, schema, now_ms)?.member)
}

/// [`evaluate`] on `profile`'s view at `now_ms`, projected to the features the rule reads.
pub fn evaluate_profile(
    rule: &Rule,
    profile: &Profile,
    schema: &Schema,
    now_ms: u64,
) -> Result<bool> {
    Ok(explain_profile(rule, profile, schema, now_ms)?.member)
}

/// [`explain`] on `profile`'s view at `now_ms`, projected to the features the rule reads.
pub fn explain_profile(
    rule: &Rule,
    profile: &Profile,
    schema: &Schema,
    now_ms: u64,
) -> Result<Evaluation> {
    let projection: Vec<String> = rule.reads().iter().cloned().collect();
    let view = profile.view(now_ms, Some(&projection));
    explain(rule, view.as_ref(), schema, now_ms)
}

/// An evaluation and what it read (the why-trace of a decision).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The rule's value: member or not.
    pub member: bool,
    /// Every feature the rule reads, as it read it.
    pub read: BTreeMap<String, Reading>,
}

/// [`evaluate`], also returning the values read.
pub fn explain(
    rule: &Rule,
    view: Option<&ProfileView>,
    schema: &Schema,
    now_ms: u64,
) -> Result<Evaluation> {
    let read = readings(rule, view, schema);
    let member = rule.eval(read.iter().map(|(n, r)| (n.as_str(), r)), now_ms)?;
    Ok(Evaluation { member, read })
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::Error;
    use crate::hlc::{Clock, NodeId};
    use crate::ingest::{apply_event, Event, FeatureDefinition};
    use crate::limits::Limits;
    use crate::profile::{apply, GaugeWrite, Write};

    /// The definitions of the segment tests: cart adds and orders over 30 minutes (1-minute buckets), the
    /// last cart add, revenue, the largest basket and distinct products.
    pub(crate) fn definitions() -> Definitions {
        let text = r#"
            [[features]]
            name = "cart_adds_30m"
            on = "track"
            event = "Product Added"
            aggregation = "count"
            window = "30m"
            bucket = "1m"

            [[features]]
            name = "orders_30m"
            on = "track"
            event = "Order Completed"
            aggregation = "count"
            window = "30m"
            bucket = "1m"

            [[features]]
            name = "last_cart_add"
            on = "track"
            event = "Product Added"
            aggregation = "last_seen"

            [[features]]
            name = "revenue_7d"
            on = "track"
            event = "Order Completed"
            aggregation = "sum"
            property = "revenue"
            window = "7d"

            [[features]]
            name = "largest_basket"
            on = "track"
            event = "Order Completed"
            aggregation = "max"
            property = "revenue"

            [[features]]
            name = "products_30m"
            on = "track"
            event = "Product Added"
            aggregation = "distinct_count"
            property = "sku"
            window = "30m"
            bucket = "1m"
        "#;
        #[derive(serde::Deserialize)]
        struct File {
            features: Vec<FeatureDefinition>,
        }
        let file: File = toml::from_str(text).expect("valid TOML");
        Definitions::compile(&file.features, &Limits::default()).expect("valid definitions")
    }

    /// Ingests a track event `name` for user `u` at event time `at_ms` (received at the same instant).
    pub(crate) fn track(
        profile: &mut Profile,
        clock: &mut Clock,
        name: &str,
        at_ms: u64,
        properties: serde_json::Value,
    ) {
        let limits = Limits::default();
        let t = crate::segment::rule::format_time(at_ms);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("m-{n}");
        let raw = json!({
            "type": "track", "event": name, "userId": "u", "messageId": id,
            "timestamp": t, "properties": properties,
        });
        let event = Event::from_segment(&raw, None, at_ms, &limits).expect("valid event");
        apply_event(profile, &event, &definitions(), clock, at_ms, &limits).expect("applies");
    }

    pub(crate) fn clock() -> Clock {
        Clock::new(NodeId::new("n1").expect("valid"), 60_000)
    }

    const T0: u64 = 1_700_000_000_000;

    fn rule(text: &str) -> Rule {
        Rule::compile("s", text).expect("compiles")
    }

    #[test]
    fn each_kind_of_feature_reads_as_documented() {
        let schema = Schema::from_definitions(&definitions());
        let (mut p, mut c) = (Profile::default(), clock());
        track(&mut p, &mut c, "Product Added", T0, json!({"sku": "a"}));
        track(
            &mut p,
            &mut c,
            "Product Added",
            T0 + 1_000,
            json!({"sku": "b"}),
        );
        track(
            &mut p,
            &mut c,
            "Product Added",
            T0 + 2_000,
            json!({"sku": "a"}),
        );
        track(
            &mut p,
            &mut c,
            "Order Completed",
            T0 + 3_000,
            json!({"revenue": 12.5}),
        );
        let limits = Limits::default();
        let gauges = [
            GaugeWrite {
                name: "plan".into(),
                value: Value::Str("pro".into()),
                ttl_ms: None,
            },
            GaugeWrite {
                name: "age".into(),
                value: Value::I64(41),
                ttl_ms: None,
            },
        ];
        apply(
            &mut p,
            Write::Put {
                gauges: &gauges,
                timestamp_ms: None,
            },
            &mut c,
            T0 + 4_000,
            &limits,
        )
        .expect("put");
        let context = Default::default();
        apply(
            &mut p,
            Write::SetFlag {
                name: "vip",
                value: true,
                context: &context,
                ttl_ms: None,
            },
            &mut c,
            T0 + 4_000,
            &limits,
        )
        .expect("flag");
        let r = rule(
            "cart_adds_30m == 3 && products_30m == 2 && orders_30m == 1 && revenue_7d == 12.5 \
             && largest_basket == 12.5 && last_cart_add == timestamp('2023-11-14T22:13:22Z') \
             && plan == 'pro' && age > 40 && vip && type(cart_adds_30m) == int \
             && type(revenue_7d) == double",
        );
        let view = p.view(T0 + 5_000, None);
        let e = explain(&r, view.as_ref(), &schema, T0 + 5_000).expect("evaluates");
        assert!(e.member, "{:?}", e.read);
        assert_eq!(e.read["last_cart_add"], Reading::Time(T0 + 2_000));
        assert_eq!(e.read["cart_adds_30m"], Reading::Int(3));
        assert_eq!(e.read["vip"], Reading::Bool(true));
        assert_eq!(evaluate_profile(&r, &p, &schema, T0 + 5_000), Ok(true));
    }

    #[test]
    fn no_data_is_not_a_member_and_defined_counts_read_zero() {
        let schema = Schema::from_definitions(&definitions());
        let never = Profile::default();
        let abandoner =
            rule("cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration('30m')");
        assert_eq!(evaluate_profile(&abandoner, &never, &schema, T0), Ok(false));
        let no_orders = rule("orders_30m == 0 && revenue_7d == 0.0 && products_30m == 0");
        assert_eq!(evaluate_profile(&no_orders, &never, &schema, T0), Ok(true));
        let e = explain(&abandoner, None, &schema, T0).expect("evaluates");
        assert_eq!(e.read["orders_30m"], Reading::Int(0));
        assert_eq!(e.read["last_cart_add"], Reading::Absent);
        for text in [
            "largest_basket > 10",
            "!(largest_basket > 10)",
            "vip",
            "plan == 'pro'",
        ] {
            assert_eq!(
                evaluate_profile(&rule(text), &never, &schema, T0),
                Ok(false),
                "{text}"
            );
        }
    }

    #[test]
    fn a_type_error_is_an_error_not_a_panic_nor_a_membership() {
        let schema = Schema::from_definitions(&definitions());
        let (mut p, mut c) = (Profile::default(), clock());
        track(&mut p, &mut c, "Product Added", T0, json!({"sku": "a"}));
        let r = rule("last_cart_add > 5");
        assert!(matches!(
            evaluate_profile(&r, &p, &schema, T0),
            Err(Error::RuleEvaluation { .. })
        ));
        // Without the schema, the last_seen window is its raw number of ms, so timestamp arithmetic fails.
        let timed = rule("now - last_cart_add > duration('1m')");
        assert!(matches!(
            evaluate_profile(&timed, &p, &Schema::default(), T0),
            Err(Error::RuleEvaluation { .. })
        ));
        assert_eq!(evaluate_profile(&timed, &p, &schema, T0 + 60_001), Ok(true));
    }

    #[test]
    fn prefixes_of_dotted_names_are_not_listed_as_absent() {
        let r = rule("user.plan == 'pro'");
        let read = readings(&r, None, &Schema::default());
        assert_eq!(
            read.into_iter().collect::<Vec<_>>(),
            [("user.plan".to_owned(), Reading::Absent)]
        );
    }
}
