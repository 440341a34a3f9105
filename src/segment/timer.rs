//! Deadlines: [`next_flip`], the earliest instant after now at which a rule's value can change with no new
//! event, so the node arms one timer per (user, time-dependent segment) instead of scanning users.
//!
//! How: a profile's view changes by itself only at known instants, and a rule compares `now` with feature
//! values only through literals it names. So the candidate instants after `now_ms` are ([`candidates`]):
//! - for every window the rule reads: each bucket's start (a bucket dated ahead of now enters the window
//!   then) and, for a windowed span, `start + bucket + span`, the instant the bucket leaves the window (a
//!   read counts the buckets overlapping `[now - span, now]`, see [`crate::crdt::window`]);
//! - for every gauge and flag sibling the rule reads: the instant it expires;
//! - if the rule reads `now`: for every point `p` (every event time a `first_seen`/`last_seen` window the
//!   rule reads holds in any bucket, so also the values it will fall back to when its newest bucket
//!   leaves, and every `timestamp("...")` literal) and every delta `d` (0 and every `duration("...")`
//!   literal), the instants `p + d`, `p - d`, and one millisecond after each (a strict comparison such as
//!   `now - p > d` flips one millisecond after `p + d`).
//!
//! The rule is evaluated at the candidates in increasing order, at most `max_flip_candidates` of them,
//! and the first at which its value differs from its value at `now_ms` is a [`Timer::Flip`]. Between two
//! consecutive candidates nothing the rule can see changes, so for the rules this method covers, the value
//! just before a flip is the value at now (property-tested below).
//!
//! Caveats (what the method does not see):
//! - time arithmetic the literals do not name: sums or multiples of durations (`duration("30m") +
//!   duration("5m")`), calendar functions of `now` (`now.getHours() >= 18`), `int(now)`, timestamps parsed
//!   from string gauges at run time. For those the deadline is late or absent; the rule is still
//!   evaluated after every change of a feature it reads;
//! - when more than `max_flip_candidates` candidates come first, or the rule fails at a candidate, the
//!   answer is a [`Timer::Recheck`]: evaluate again at that instant and ask for the next deadline from
//!   there (a re-check that finds no change is harmless).

use std::collections::BTreeSet;

use crate::error::Result;
use crate::limits::Limits;
use crate::profile::Profile;
use crate::segment::define::Segments;
use crate::segment::eval::{evaluate_profile, Schema};
use crate::segment::rule::Rule;

/// When to evaluate a rule again with no new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// The rule's value changes at this instant (Unix ms), and not before.
    Flip(u64),
    /// The rule's value does not change before this instant and may change at it (the candidate budget ran
    /// out, or the rule fails there): evaluate then, and ask for the next deadline.
    Recheck(u64),
}

impl Timer {
    /// The instant to evaluate at (Unix ms).
    pub fn at_ms(&self) -> u64 {
        match self {
            Timer::Flip(at) | Timer::Recheck(at) => *at,
        }
    }
}

/// The instants after `now_ms` at which `rule`'s value on `profile` can change with no new event (see the
/// module docs), ascending.
pub fn candidates(rule: &Rule, profile: &Profile, schema: &Schema, now_ms: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut add = |t: i128| {
        if t > i128::from(now_ms) {
            if let Ok(t) = u64::try_from(t) {
                out.insert(t);
            }
        }
    };
    let mut points: BTreeSet<i128> = rule.instants_ms().iter().map(|&t| i128::from(t)).collect();
    let profiles = std::iter::once(profile).chain(profile.identity.absorbed.values());
    for p in profiles {
        for name in rule.reads() {
            if let Some(w) = p.windows.get(name.as_str()) {
                let width = i128::from(w.spec.bucket_ms.max(1));
                let span = i128::from(w.spec.span_ms);
                for start in w.buckets.keys() {
                    let start = i128::from(*start);
                    add(start);
                    if span != 0 {
                        add(start + width + span);
                    }
                }
                if schema.is_timestamp(name) {
                    for slot in w.buckets.values().flat_map(|slots| slots.values()) {
                        for v in [slot.min, slot.max] {
                            if v.is_finite() && v.abs() < 1e30 {
                                points.insert(v as i128);
                            }
                        }
                    }
                }
            }
            if let Some(at) = p
                .gauges
                .get(name.as_str())
                .and_then(|g| g.expires_at_ms.get())
            {
                add(i128::from(at));
            }
            if let Some(f) = p.flags.get(name.as_str()) {
                for at in f.siblings.iter().filter_map(|s| s.expires_at_ms) {
                    add(i128::from(at));
                }
            }
        }
    }
    if rule.reads_now() {
        let deltas: BTreeSet<i128> = std::iter::once(0)
            .chain(rule.durations_ms().iter().map(|&d| i128::from(d)))
            .collect();
        for p in &points {
            for d in &deltas {
                for t in [p + d, p - d] {
                    add(t);
                    add(t + 1);
                }
            }
        }
    }
    out
}

/// The next instant after `now_ms` at which `rule`'s value on `profile` changes with no new event
/// ([`Timer::Flip`]), or may change ([`Timer::Recheck`]); `None` if it never does by itself. Evaluates
/// the rule at most `limits.max_flip_candidates + 1` times. An error evaluating at `now_ms` is returned.
pub fn next_flip(
    rule: &Rule,
    profile: &Profile,
    schema: &Schema,
    now_ms: u64,
    limits: &Limits,
) -> Result<Option<Timer>> {
    let at_now = evaluate_profile(rule, profile, schema, now_ms)?;
    for (examined, at) in candidates(rule, profile, schema, now_ms)
        .into_iter()
        .enumerate()
    {
        if examined >= limits.max_flip_candidates {
            return Ok(Some(Timer::Recheck(at)));
        }
        match evaluate_profile(rule, profile, schema, at) {
            Ok(v) if v == at_now => {}
            Ok(_) => return Ok(Some(Timer::Flip(at))),
            Err(_) => return Ok(Some(Timer::Recheck(at))),
        }
    }
    Ok(None)
}

/// The earliest instant after `now_ms` at which any of the time-dependent `segments` may change on
/// `profile` with no new event, and the segments due then: what the node arms one timer per user for.
/// A segment whose rule fails at `now_ms` has no deadline (its failure is reported when it is evaluated).
pub fn next_deadline(
    profile: &Profile,
    segments: &Segments,
    schema: &Schema,
    now_ms: u64,
    limits: &Limits,
) -> Option<(u64, Vec<String>)> {
    // A linked id is no longer a user: its history is part of the canonical profile, which is evaluated
    // and timed instead (a timer here would decide a second, contradicting membership for one person).
    if profile.alias_of().is_some() {
        return None;
    }
    let mut best: Option<(u64, Vec<String>)> = None;
    for segment in segments.timed() {
        let Ok(Some(timer)) = next_flip(&segment.rule, profile, schema, now_ms, limits) else {
            continue;
        };
        let at = timer.at_ms();
        match &mut best {
            Some((t, names)) if *t == at => names.push(segment.name().to_owned()),
            Some((t, _)) if *t < at => {}
            _ => best = Some((at, vec![segment.name().to_owned()])),
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::crdt::value::Value;
    use crate::ingest::Definitions;
    use crate::profile::{apply, GaugeWrite, Write};
    use crate::segment::eval::tests::{clock, definitions, track};

    const MIN: u64 = 60_000;
    /// A cart add at 22:13:20.000, 20 s into its one-minute bucket (which starts at 22:13:00).
    const T: u64 = 1_700_000_000_000;
    const BUCKET: u64 = T - 20_000;

    fn schema() -> Schema {
        Schema::from_definitions(&definitions())
    }

    fn rule(text: &str) -> Rule {
        Rule::compile("s", text).expect("compiles")
    }

    fn at(rule: &Rule, p: &Profile, now: u64) -> bool {
        evaluate_profile(rule, p, &schema(), now).expect("evaluates")
    }

    fn cart_add_at(t: u64) -> Profile {
        let (mut p, mut c) = (Profile::default(), clock());
        track(&mut p, &mut c, "Product Added", t, json!({"sku": "a"}));
        p
    }

    #[test]
    fn added_to_cart_and_did_not_buy_flips_false_when_the_cart_bucket_leaves_the_window() {
        let p = cart_add_at(T);
        let r = rule("cart_adds_30m >= 1 && orders_30m == 0");
        let limits = Limits::default();
        assert!(at(&r, &p, T));
        let leaves = BUCKET + MIN + 30 * MIN;
        assert_eq!(
            next_flip(&r, &p, &schema(), T, &limits),
            Ok(Some(Timer::Flip(leaves)))
        );
        assert!(at(&r, &p, leaves - 1), "still a member 1 ms before");
        assert!(!at(&r, &p, leaves));
        assert_eq!(
            next_flip(&r, &p, &schema(), leaves, &limits),
            Ok(None),
            "nothing left to expire"
        );
    }

    #[test]
    fn thirty_minutes_after_the_last_cart_add_flips_true_exactly_then() {
        let p = cart_add_at(T);
        let limits = Limits::default();
        let strict = rule("now - last_cart_add > duration(\"30m\")");
        assert_eq!(
            next_flip(&strict, &p, &schema(), T, &limits),
            Ok(Some(Timer::Flip(T + 30 * MIN + 1))),
            "`>` holds from the first millisecond past 30 minutes"
        );
        let inclusive = rule("now - last_cart_add >= duration(\"30m\")");
        assert_eq!(
            next_flip(&inclusive, &p, &schema(), T, &limits),
            Ok(Some(Timer::Flip(T + 30 * MIN)))
        );
        assert_eq!(
            next_flip(&inclusive, &p, &schema(), T + 30 * MIN, &limits),
            Ok(None),
            "true for ever after"
        );
    }

    #[test]
    fn a_linked_id_has_no_deadline_its_canonical_profile_has() {
        let limits = Limits::default();
        let segments = Segments::from_toml(
            "[[segment]]\nname = \"abandoner\"\nrule = 'cart_adds_30m >= 1 && now - last_cart_add > duration(\"30m\")'\n",
            &limits,
        )
        .expect("valid");
        let mut anon = cart_add_at(T);
        assert_eq!(
            next_deadline(&anon, &segments, &schema(), T, &limits),
            Some((T + 30 * MIN + 1, vec!["abandoner".to_owned()]))
        );
        anon.set_alias("u", clock().stamp(T), &limits)
            .expect("valid");
        assert_eq!(next_deadline(&anon, &segments, &schema(), T, &limits), None);
    }

    #[test]
    fn the_cart_abandoner_enters_and_exits_by_timers_alone() {
        let p = cart_add_at(T);
        let limits = Limits::default();
        let r =
            rule("cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration('30m')");
        assert!(!at(&r, &p, T));
        let entered = next_flip(&r, &p, &schema(), T, &limits).expect("evaluates");
        assert_eq!(entered, Some(Timer::Flip(T + 30 * MIN + 1)));
        let exited = next_flip(&r, &p, &schema(), T + 30 * MIN + 1, &limits).expect("evaluates");
        assert_eq!(
            exited,
            Some(Timer::Flip(BUCKET + 31 * MIN)),
            "the cart add leaves the 30-minute window with its bucket"
        );
        // An order before the deadline: no entry at all.
        let (mut ordered, mut c) = (p.clone(), clock());
        track(
            &mut ordered,
            &mut c,
            "Order Completed",
            T + MIN,
            json!({"revenue": 5}),
        );
        let next = next_flip(&r, &ordered, &schema(), T + MIN, &limits).expect("evaluates");
        assert_eq!(next, None, "the order leaves the window after the cart add");
    }

    #[test]
    fn an_expiring_gauge_is_a_deadline_and_a_timeless_rule_has_none() {
        let (mut p, mut c) = (Profile::default(), clock());
        let limits = Limits::default();
        let gauges = [GaugeWrite {
            name: "trial".into(),
            value: Value::Bool(true),
            ttl_ms: Some(5_000),
        }];
        apply(
            &mut p,
            Write::Put {
                gauges: &gauges,
                timestamp_ms: None,
            },
            &mut c,
            T,
            &limits,
        )
        .expect("put");
        let r = rule("trial == true");
        assert_eq!(
            next_flip(&r, &p, &schema(), T, &limits),
            Ok(Some(Timer::Flip(T + 5_000)))
        );
        assert_eq!(
            next_flip(&rule("largest_basket > 3.0"), &p, &schema(), T, &limits),
            Ok(None)
        );
    }

    #[test]
    fn past_the_candidate_budget_the_answer_is_a_recheck() {
        let (mut p, mut c) = (Profile::default(), clock());
        for k in 0..10 {
            track(
                &mut p,
                &mut c,
                "Product Added",
                T + k * MIN,
                json!({"sku": k}),
            );
        }
        let r = rule("cart_adds_30m >= 1");
        let tight = Limits {
            max_flip_candidates: 3,
            ..Limits::default()
        };
        let now = T + 9 * MIN;
        let cands: Vec<u64> = candidates(&r, &p, &schema(), now).into_iter().collect();
        assert_eq!(cands.len(), 10, "one departure per bucket: {cands:?}");
        assert_eq!(
            next_flip(&r, &p, &schema(), now, &tight),
            Ok(Some(Timer::Recheck(cands[3])))
        );
        assert_eq!(
            next_flip(&r, &p, &schema(), now, &Limits::default()),
            Ok(Some(Timer::Flip(cands[9])))
        );
    }

    #[test]
    fn an_error_at_now_is_returned() {
        let p = cart_add_at(T);
        assert!(next_flip(
            &rule("last_cart_add > 1"),
            &p,
            &schema(),
            T,
            &Limits::default()
        )
        .is_err());
    }

    const TEMPLATES: [&str; 7] = [
        "cart_adds_30m >= {k} && orders_30m == 0",
        "now - last_cart_add > duration('{d}')",
        "now - last_cart_add >= duration('{d}')",
        "cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration('{d}')",
        "last_cart_add + duration('{d}') < now || orders_30m >= {k}",
        "products_30m >= {k} && now < last_cart_add + duration('{d}')",
        "revenue_7d > 0.0 && !(now - last_cart_add <= duration('{d}'))",
    ];

    /// A profile from up to 12 events, `(kind, minutes after T, seconds)` in event-time order.
    fn profile_of(events: &[(u8, u64, u64)], defs: &Definitions) -> Profile {
        let _ = defs;
        let (mut p, mut c) = (Profile::default(), clock());
        let mut evs = events.to_vec();
        evs.sort_by_key(|e| (e.1, e.2));
        for (kind, minute, second) in evs {
            let t = T + minute * MIN + second * 1_000;
            let (name, props) = match kind {
                0 => ("Order Completed", json!({"revenue": 3})),
                _ => ("Product Added", json!({"sku": second % 3})),
            };
            track(&mut p, &mut c, name, t, props);
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// `next_flip` is after now; just before it the rule has its value at now, at it the other value;
        /// and at sampled instants in between (or over the next two days if there is no deadline) the
        /// value is the one at now, so no flip was missed.
        #[test]
        fn next_flip_is_the_first_change(
            events in proptest::collection::vec((0u8..3, 0u64..120, 0u64..60), 0..12),
            template in 0usize..TEMPLATES.len(),
            k in 1u64..4,
            d_seconds in 1u64..5_400,
            now_offset in 0u64..(180 * MIN),
            samples in proptest::collection::vec(0.0f64..1.0, 16),
        ) {
            let defs = definitions();
            let p = profile_of(&events, &defs);
            let text = TEMPLATES[template]
                .replace("{k}", &k.to_string())
                .replace("{d}", &format!("{d_seconds}s"));
            let r = rule(&text);
            let now = T + now_offset;
            let v0 = at(&r, &p, now);
            let next = next_flip(&r, &p, &schema(), now, &Limits::default()).expect("evaluates");
            let horizon = match next {
                Some(Timer::Flip(t)) => {
                    prop_assert!(t > now);
                    prop_assert_eq!(at(&r, &p, t - 1), v0, "{} just before {}", text, t);
                    prop_assert_ne!(at(&r, &p, t), v0, "{} at {}", text, t);
                    t
                }
                Some(Timer::Recheck(t)) => {
                    prop_assert!(false, "no recheck expected for {} at {}", text, t);
                    t
                }
                None => now + 2 * 24 * 60 * MIN,
            };
            for s in samples {
                let t = now + ((horizon - now) as f64 * s) as u64;
                if t < horizon {
                    prop_assert_eq!(at(&r, &p, t), v0, "{} changed at {} before {}", text, t, horizon);
                }
            }
        }
    }
}
