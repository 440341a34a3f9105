//! Ingest, sans-IO: an [`Event`] becomes feature updates on its profile, decided by [`apply_event`] (the
//! core entry point the node's ingest path and the simulation call, as `profile::apply` is for client
//! writes).
//!
//! - [`event`]: the event model and its validation (the Segment Tracking API spec).
//! - [`define`]: feature definitions (which event feeds which feature, how, over which window).
//!
//! Guarantees of [`apply_event`]:
//! - **Exactly once per message id** within the dedup window: the profile's [`Seen`](crate::crdt::seen::Seen)
//!   set replicates with it, so a retry that reaches another owner after a failover is still a duplicate.
//! - **All or nothing**: an event whose properties do not fit its definitions (a non-numeric value for a
//!   sum) is refused with a typed defect and changes nothing, not even the dedup set, so a replay after the
//!   definition is fixed is not mistaken for a duplicate.
//! - **Late events are not lost silently**: a window that refuses an event as older than its span is
//!   reported in [`Ingested::late`]; the event's other features still apply.
//! - **Redirected, not applied**, when the profile's id was linked into another (see [`identity`]): the
//!   answer names the canonical id, and the caller sends the event there.
//! - Windows are stamped with this node's HLC and slot, `last` gauges and identify traits with the event
//!   time (so a late event never overwrites a newer value), checked against `max_clock_skew`.

pub mod define;
pub mod event;
pub mod identity;

use serde_json::Value as Json;

pub use define::{Compiled, Definitions, FeatureDefinition, Input, Target};
pub use event::{Event, EventType};
pub use identity::{apply_linking_event, check_link, check_redirect, link_of};

use crate::crdt::value::Value;
use crate::crdt::window::{distinct_hash, Observation};
use crate::error::{Error, EventDefect, Result};
use crate::hlc::{Clock, Marker, Timestamp};
use crate::limits::Limits;
use crate::profile::{GaugeUpdate, Profile};

/// What one event did to its profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ingested {
    /// The message id was already ingested: nothing changed.
    pub duplicate: bool,
    /// Features written.
    pub features: Vec<String>,
    /// Window features that refused the event as late (counted, not applied).
    pub late: Vec<String>,
    /// The profile's id was linked into this canonical id: nothing changed, and the event belongs there.
    pub redirect: Option<String>,
    /// The id this event linked into the profile (see [`identity`]).
    pub linked: Option<String>,
}

/// One update derived from an event, before anything is applied.
enum Update<'a> {
    Observe {
        def: &'a Compiled,
        value: Observation,
    },
    Gauge {
        name: String,
        value: Value,
    },
}

/// The numeric value of a JSON property (numbers, and numeric strings as some SDKs send them).
fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64().filter(|f| f.is_finite()),
        Json::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// The distinct-count hash of a JSON scalar: of its JSON text (objects, arrays and nulls are not values).
fn distinct(v: &Json) -> Option<u64> {
    match v {
        Json::Bool(_) | Json::Number(_) | Json::String(_) => serde_json::to_string(v)
            .ok()
            .map(|t| distinct_hash(t.as_bytes())),
        _ => None,
    }
}

/// A JSON scalar as a gauge value (objects, arrays and nulls are not values).
fn scalar(v: &Json) -> Option<Value> {
    match v {
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Number(n) => n
            .as_i64()
            .map(Value::I64)
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(Value::F64)),
        Json::String(s) => Some(Value::Str(s.as_str().into())),
        _ => None,
    }
}

fn derive<'a>(event: &'a Event, defs: &'a Definitions, limits: &Limits) -> Result<Vec<Update<'a>>> {
    let mut updates = Vec::new();
    for def in defs.matching(event.kind, event.name.as_deref()) {
        let property = || def.property.as_deref().unwrap_or_default();
        let wrong = |expected| {
            Error::InvalidEvent(EventDefect::WrongPropertyType {
                feature: def.name.clone(),
                path: property().to_owned(),
                expected,
            })
        };
        match (def.target, def.input) {
            (Target::Window(_), Input::One) => updates.push(Update::Observe {
                def,
                value: Observation::Value(1.0),
            }),
            (Target::Window(_), Input::EventTime) => updates.push(Update::Observe {
                def,
                value: Observation::Value(event.timestamp_ms as f64),
            }),
            (Target::Window(_), Input::Distinct) => match event.property(property()) {
                None | Some(Json::Null) => {}
                Some(v) => {
                    let hash = distinct(v).ok_or_else(|| wrong("scalar"))?;
                    updates.push(Update::Observe {
                        def,
                        value: Observation::Distinct(hash),
                    });
                }
            },
            (Target::Window(_), Input::Property) => {
                // An event without the property contributes nothing; one with a non-number is refused.
                match event.property(property()) {
                    None | Some(Json::Null) => {}
                    Some(v) => {
                        let value = number(v).ok_or_else(|| wrong("number"))?;
                        updates.push(Update::Observe {
                            def,
                            value: Observation::Value(value),
                        });
                    }
                }
            }
            (Target::Last, _) => match event.property(property()) {
                None | Some(Json::Null) => {}
                Some(v) => {
                    let value = scalar(v).ok_or_else(|| wrong("scalar"))?;
                    limits.check_value(&def.name, &value)?;
                    updates.push(Update::Gauge {
                        name: def.name.clone(),
                        value,
                    });
                }
            },
        }
    }
    if event.kind == EventType::Identify {
        for (trait_name, v) in &event.properties {
            // Traits that are not plain scalars or valid feature names are not features; skip them.
            let Some(value) = scalar(v) else { continue };
            if limits.check_feature_name(trait_name).is_err()
                || limits.check_value(trait_name, &value).is_err()
            {
                continue;
            }
            updates.push(Update::Gauge {
                name: trait_name.clone(),
                value,
            });
        }
    }
    Ok(updates)
}

/// Applies one validated event to `profile` on the owner whose clock is `clock`, at local time `now_ms`.
/// On `Err` nothing changed (see the module docs): the event is applied to a copy, which replaces
/// `profile` once every update went in.
pub fn apply_event(
    profile: &mut Profile,
    event: &Event,
    defs: &Definitions,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Result<Ingested> {
    let mut next = profile.clone();
    let out = apply_event_to_copy(&mut next, event, defs, clock, now_ms, limits)?;
    *profile = next;
    Ok(out)
}

/// [`apply_event`] without its copy, for a caller that already works on a copy of the profile and drops
/// it on `Err` (the node's engine, which keeps the state before the write anyway, to compute the
/// write's delta). On `Err`, `profile` may hold part of the event; it must then be dropped, not stored.
/// On `Ok` the result is exactly [`apply_event`]'s.
pub fn apply_event_to_copy(
    profile: &mut Profile,
    event: &Event,
    defs: &Definitions,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Result<Ingested> {
    if profile.has_seen(&event.message_id) {
        return Ok(Ingested {
            duplicate: true,
            ..Ingested::default()
        });
    }
    if let Some(canonical) = profile.alias_of() {
        return Ok(Ingested {
            redirect: Some(canonical.to_owned()),
            ..Ingested::default()
        });
    }
    let updates = derive(event, defs, limits)?;
    // Event-time stamps for values; refused if the event claims to come from too far in the future.
    let event_ts = Timestamp::from_millis(event.timestamp_ms);
    if updates.iter().any(|u| matches!(u, Update::Gauge { .. })) {
        clock.check_skew(event_ts, now_ms)?;
    }
    let next = profile;
    let mut out = Ingested::default();
    let actor = clock.actor().clone();
    for update in updates {
        match update {
            Update::Observe { def, value } => {
                let Target::Window(spec) = def.target else {
                    continue;
                };
                let ts = clock.tick(now_ms);
                match next.observe(
                    &def.name,
                    spec,
                    &actor,
                    event.timestamp_ms,
                    value,
                    ts,
                    limits,
                ) {
                    Ok(()) => out.features.push(def.name.clone()),
                    Err(Error::LateEvent { .. }) => out.late.push(def.name.clone()),
                    Err(e) => return Err(e),
                }
            }
            Update::Gauge { name, value } => {
                let marker = Marker {
                    ts: event_ts,
                    node: actor.node.clone(),
                };
                let u = GaugeUpdate {
                    name: &name,
                    value: &value,
                    expires_at_ms: None,
                };
                next.put_gauges(&[u], &marker, limits)?;
                out.features.push(name);
            }
        }
    }
    next.seen.get_mut().insert(
        &event.message_id,
        event.timestamp_ms,
        limits.dedup_window_ms,
        limits.max_seen_ids,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hlc::NodeId;
    use crate::profile::FeatureView;

    const NOW: u64 = 1_700_000_000_000;

    fn defs() -> Definitions {
        let toml_like = json!([
            {"name": "page_views", "on": "page", "aggregation": "count"},
            {"name": "cart_adds_30m", "on": "track", "event": "Product Added", "aggregation": "count", "window": "30m"},
            {"name": "orders_30m", "on": "track", "event": "Order Completed", "aggregation": "count", "window": "30m"},
            {"name": "revenue_7d", "on": "track", "event": "Order Completed", "aggregation": "sum", "property": "revenue", "window": "7d"},
            {"name": "last_cart_add", "on": "track", "event": "Product Added", "aggregation": "last_seen"},
            {"name": "last_sku", "on": "track", "event": "Product Added", "aggregation": "last", "property": "sku"},
            {"name": "distinct_skus_7d", "on": "track", "event": "Product Added", "aggregation": "distinct_count", "property": "sku", "window": "7d"}
        ]);
        let defs: Vec<FeatureDefinition> = serde_json::from_value(toml_like).expect("definitions");
        Definitions::compile(&defs, &Limits::default()).expect("valid")
    }

    fn event(j: Json) -> Event {
        Event::from_segment(&j, None, NOW, &Limits::default()).expect("valid event")
    }

    fn clock(n: &str) -> Clock {
        Clock::new(NodeId::new(n).expect("valid"), 60_000)
    }

    fn feature(p: &Profile, name: &str) -> Option<FeatureView> {
        p.view(NOW, None)
            .and_then(|v| v.features.get(name).cloned())
    }

    fn window_value(p: &Profile, name: &str) -> Option<f64> {
        match feature(p, name) {
            Some(FeatureView::Window { value, .. }) => value,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn events_become_windowed_features_and_values() {
        let (d, mut c, limits) = (defs(), clock("n1"), Limits::default());
        let mut p = Profile::default();
        for (i, ev) in [
            json!({"type": "page", "userId": "u", "messageId": "p1"}),
            json!({"type": "track", "event": "Product Added", "userId": "u", "messageId": "a1", "properties": {"sku": "s-1"}, "timestamp": "2023-11-14T22:10:00Z"}),
            json!({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "o1", "properties": {"revenue": 40}}),
            json!({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "o2", "properties": {"revenue": "2.5"}}),
        ]
        .into_iter()
        .enumerate()
        {
            let out = apply_event(&mut p, &event(ev), &d, &mut c, NOW + i as u64, &limits).expect("applies");
            assert!(!out.duplicate && out.late.is_empty());
        }
        assert_eq!(window_value(&p, "page_views"), Some(1.0));
        assert_eq!(window_value(&p, "cart_adds_30m"), Some(1.0));
        assert_eq!(window_value(&p, "orders_30m"), Some(2.0));
        assert_eq!(window_value(&p, "revenue_7d"), Some(42.5));
        assert_eq!(window_value(&p, "last_cart_add"), Some(1_699_999_800_000.0));
        assert!(
            matches!(feature(&p, "last_sku"), Some(FeatureView::Gauge { value: Value::Str(s), .. }) if s == "s-1")
        );
    }

    /// Without its copy, an event gives the same profile and outcome, retries and late events included.
    #[test]
    fn applying_to_a_copy_gives_what_apply_event_gives() {
        let (d, limits) = (defs(), Limits::default());
        let (mut c1, mut c2) = (clock("n1"), clock("n1"));
        let (mut guarded, mut unguarded) = (Profile::default(), Profile::default());
        for (i, ev) in [
            json!({"type": "page", "userId": "u", "messageId": "p1"}),
            json!({"type": "track", "event": "Product Added", "userId": "u", "messageId": "a1", "properties": {"sku": "s-1"}}),
            json!({"type": "page", "userId": "u", "messageId": "p1"}),
            json!({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "o1", "properties": {"revenue": 40}, "timestamp": "2020-01-01T00:00:00Z"}),
            json!({"type": "identify", "userId": "u", "messageId": "i1", "traits": {"plan": "pro"}}),
        ]
        .into_iter()
        .enumerate()
        {
            let ev = event(ev);
            let now = NOW + i as u64;
            let a = apply_event(&mut guarded, &ev, &d, &mut c1, now, &limits).expect("applies");
            let b = apply_event_to_copy(&mut unguarded, &ev, &d, &mut c2, now, &limits)
                .expect("applies");
            assert_eq!(a, b, "event {i}");
            assert_eq!(guarded, unguarded, "event {i}");
        }
        assert_eq!(window_value(&guarded, "page_views"), Some(1.0));
    }

    #[test]
    fn a_retry_counts_once_even_at_another_owner() {
        let (d, limits) = (defs(), Limits::default());
        let ev = event(json!({"type": "page", "userId": "u", "messageId": "m-1"}));
        let mut at_n1 = Profile::default();
        apply_event(&mut at_n1, &ev, &d, &mut clock("n1"), NOW, &limits).expect("applies");
        // The owner changed; the new owner has the replicated profile.
        let mut at_n2 = Profile::default();
        at_n2.merge(&at_n1);
        let out =
            apply_event(&mut at_n2, &ev, &d, &mut clock("n2"), NOW + 5, &limits).expect("applies");
        assert!(out.duplicate);
        assert_eq!(window_value(&at_n2, "page_views"), Some(1.0));
    }

    #[test]
    fn an_event_that_does_not_fit_changes_nothing_not_even_the_dedup_set() {
        let (d, mut c, limits) = (defs(), clock("n1"), Limits::default());
        let mut p = Profile::default();
        let bad = event(
            json!({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "o9", "properties": {"revenue": {"amount": 3}}}),
        );
        let err = apply_event(&mut p, &bad, &d, &mut c, NOW, &limits).expect_err("refused");
        assert!(
            matches!(
                err,
                Error::InvalidEvent(EventDefect::WrongPropertyType { .. })
            ),
            "{err}"
        );
        assert!(
            p.is_empty(),
            "nothing applied, and the id is not remembered"
        );
    }

    #[test]
    fn a_late_event_is_reported_and_counted_in_no_window() {
        let (d, mut c, limits) = (defs(), clock("n1"), Limits::default());
        let mut p = Profile::default();
        let now = event(
            json!({"type": "track", "event": "Product Added", "userId": "u", "messageId": "a1"}),
        );
        apply_event(&mut p, &now, &d, &mut c, NOW, &limits).expect("applies");
        let old = event(
            json!({"type": "track", "event": "Product Added", "userId": "u", "messageId": "a0", "timestamp": "2023-11-14T20:00:00Z"}),
        );
        let out = apply_event(&mut p, &old, &d, &mut c, NOW + 1, &limits).expect("applies");
        assert_eq!(out.late, vec!["cart_adds_30m".to_owned()]);
        assert_eq!(window_value(&p, "cart_adds_30m"), Some(1.0));
    }

    #[test]
    fn identify_traits_become_gauges_ordered_by_event_time() {
        let (d, mut c, limits) = (defs(), clock("n1"), Limits::default());
        let mut p = Profile::default();
        let newer = event(
            json!({"type": "identify", "userId": "u", "messageId": "i2", "traits": {"plan": "gold", "address": {"city": "x"}}, "timestamp": "2023-11-14T22:00:00Z"}),
        );
        let older = event(
            json!({"type": "identify", "userId": "u", "messageId": "i1", "traits": {"plan": "free"}, "timestamp": "2023-11-14T21:00:00Z"}),
        );
        apply_event(&mut p, &newer, &d, &mut c, NOW, &limits).expect("applies");
        apply_event(&mut p, &older, &d, &mut c, NOW + 1, &limits).expect("applies");
        assert!(
            matches!(feature(&p, "plan"), Some(FeatureView::Gauge { value: Value::Str(s), .. }) if s == "gold")
        );
        assert_eq!(feature(&p, "address"), None, "objects are not gauge values");
    }

    fn added(id: &str, sku: Json) -> Event {
        event(
            json!({"type": "track", "event": "Product Added", "userId": "u", "messageId": id, "properties": {"sku": sku}}),
        )
    }

    #[test]
    fn distinct_counts_count_each_scalar_value_once_by_its_json_text() {
        let (d, mut c, limits) = (defs(), clock("n1"), Limits::default());
        let mut p = Profile::default();
        let skus = [
            json!("s-1"),
            json!("s-2"),
            json!("s-1"),
            json!(7),
            json!("7"),
            json!(true),
            json!(7),
        ];
        for (i, sku) in skus.into_iter().enumerate() {
            let out = apply_event(
                &mut p,
                &added(&format!("a{i}"), sku),
                &d,
                &mut c,
                NOW,
                &limits,
            )
            .expect("applies");
            assert!(out.features.contains(&"distinct_skus_7d".to_owned()));
        }
        // Without the property: counted as an event of the other features, not as a value.
        let bare = event(
            json!({"type": "track", "event": "Product Added", "userId": "u", "messageId": "bare"}),
        );
        let out = apply_event(&mut p, &bare, &d, &mut c, NOW, &limits).expect("applies");
        assert!(!out.features.contains(&"distinct_skus_7d".to_owned()));
        assert_eq!(
            feature(&p, "distinct_skus_7d"),
            Some(FeatureView::Window {
                aggregation: crate::crdt::window::Aggregation::DistinctCount,
                value: Some(5.0),
                events: 7,
            }),
            "s-1, s-2, 7, \"7\" and true"
        );
        let json = serde_json::to_value(feature(&p, "distinct_skus_7d")).expect("serialises");
        assert_eq!(
            json,
            json!({"kind": "window", "aggregation": "distinct_count", "value": 5.0, "events": 7})
        );
        // An object is not a value: the event is refused and changes nothing.
        let only: Vec<FeatureDefinition> = serde_json::from_value(json!([
            {"name": "distinct_skus_7d", "on": "track", "event": "Product Added", "aggregation": "distinct_count", "property": "sku", "window": "7d"}
        ]))
        .expect("definitions");
        let only = Definitions::compile(&only, &limits).expect("valid");
        let before = p.clone();
        let err = apply_event(
            &mut p,
            &added("obj", json!({"id": 1})),
            &only,
            &mut c,
            NOW,
            &limits,
        )
        .expect_err("refused");
        assert!(
            matches!(&err, Error::InvalidEvent(EventDefect::WrongPropertyType { feature, expected: "scalar", .. }) if feature == "distinct_skus_7d"),
            "{err}"
        );
        assert_eq!(p, before);
    }

    #[test]
    fn two_owners_during_a_split_merge_to_the_distinct_count_of_one_owner() {
        let (d, limits) = (defs(), Limits::default());
        let (mut a, mut b, mut one) = (Profile::default(), Profile::default(), Profile::default());
        let (mut ca, mut cb, mut c1) = (clock("n1"), clock("n2"), clock("n3"));
        // n1 sees skus 0..300, n2 sees 200..600 (overlapping; together past K = 256 per slot).
        for i in 0..300u64 {
            let ev = added(&format!("a{i}"), json!(format!("s-{i}")));
            apply_event(&mut a, &ev, &d, &mut ca, NOW + i, &limits).expect("applies");
            apply_event(&mut one, &ev, &d, &mut c1, NOW + i, &limits).expect("applies");
        }
        for i in 200..600u64 {
            let ev = added(&format!("b{i}"), json!(format!("s-{i}")));
            apply_event(&mut b, &ev, &d, &mut cb, NOW + i, &limits).expect("applies");
            apply_event(&mut one, &ev, &d, &mut c1, NOW + i, &limits).expect("applies");
        }
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        assert_eq!(ab, ba);
        let merged = feature(&ab, "distinct_skus_7d");
        assert_eq!(merged, feature(&one, "distinct_skus_7d"));
        let Some(FeatureView::Window {
            value: Some(v),
            events,
            ..
        }) = merged
        else {
            panic!("{merged:?}");
        };
        assert_eq!(events, 700);
        assert!((v - 600.0).abs() < 0.25 * 600.0, "estimate {v} of 600");
    }

    #[test]
    fn two_owners_during_a_split_merge_to_the_exact_counts() {
        let (d, limits) = (defs(), Limits::default());
        let (mut a, mut b) = (Profile::default(), Profile::default());
        let (mut ca, mut cb) = (clock("n1"), clock("n2"));
        for i in 0..5 {
            let ev = event(
                json!({"type": "track", "event": "Order Completed", "userId": "u", "messageId": format!("a{i}"), "properties": {"revenue": 1}}),
            );
            apply_event(&mut a, &ev, &d, &mut ca, NOW + i, &limits).expect("applies");
        }
        for i in 0..3 {
            let ev = event(
                json!({"type": "track", "event": "Order Completed", "userId": "u", "messageId": format!("b{i}"), "properties": {"revenue": 10}}),
            );
            apply_event(&mut b, &ev, &d, &mut cb, NOW + i, &limits).expect("applies");
        }
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(window_value(&ab, "orders_30m"), Some(8.0));
        assert_eq!(window_value(&ab, "revenue_7d"), Some(35.0));
    }
}
