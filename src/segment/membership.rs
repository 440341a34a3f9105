//! Membership as a flag on the profile, decided in the same write as the change that moved it.
//!
//! A profile's membership of segment `S` is the flag feature `segment:S` (a multi-value register with dotted
//! version vectors, [`crate::crdt::flag`]): it replicates, merges and is erased like any flag, and the
//! client reads it with the profile. [`reconcile`] re-evaluates the segments whose rules read a feature that
//! just changed and writes the flag of each one whose value differs from its membership, with a context that
//! covers every sibling it had (so it replaces them), returning one [`ChangeEvent`] per transition.
//!
//! Guarantees:
//! - One decision per change: the node calls [`reconcile`] inside the write that applied the event, so the
//!   feature values and the membership they decide are stored (and replicated) together, and a retry of the
//!   event (a duplicate) changes neither.
//! - A profile is a member when any visible sibling of its flag is `true`. Two owners that both decided a
//!   transition during a partition leave two siblings after the heal; the next evaluation on the owner
//!   writes one value over both (its context covers them), so the flag converges to the rule's value.
//! - A rule that fails to evaluate (a type error the rule only meets at run time) or a flag write the
//!   profile's limits refuse leaves that segment's membership unchanged and is reported in
//!   [`Reconciled::failed`]; the other segments, and the event itself, are not affected.
//!
//! Caveats: segment names are kept behind the `segment:` prefix, which a rule cannot read (a `:` is not a
//! CEL identifier), so one segment's rule never depends on another's membership. Time-driven transitions
//! (a window bucket leaving, `now` passing a deadline) need a timer to call [`reconcile`]; the node does not
//! arm them yet.

use crate::error::Error;
use crate::hlc::Clock;
use crate::limits::Limits;
use crate::profile::{FlagUpdate, Profile};
use crate::segment::change::{decide, ChangeEvent, Why};
use crate::segment::define::Segments;
use crate::segment::eval::{explain_profile, Schema};

/// The prefix of every membership flag's name.
pub const MEMBERSHIP_PREFIX: &str = "segment:";

/// The name of the flag that holds membership of `segment`.
pub fn membership_flag(segment: &str) -> String {
    format!("{MEMBERSHIP_PREFIX}{segment}")
}

/// Whether `profile` is a member of `segment` at `now_ms`: any visible sibling of its flag is `true`.
pub fn is_member(profile: &Profile, segment: &str, now_ms: u64) -> bool {
    profile
        .flags
        .get(&membership_flag(segment))
        .is_some_and(|f| f.visible(now_ms).any(|s| s.value))
}

/// What caused a reconciliation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cause<'a> {
    /// The message id of the event just applied, if an event caused it.
    pub message_id: Option<&'a str>,
    /// That event's time (Unix ms).
    pub event_time_ms: Option<u64>,
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    /// One change event per transition, in definition order.
    pub changes: Vec<ChangeEvent>,
    /// Segments evaluated.
    pub evaluated: usize,
    /// Segments whose rule failed or whose flag could not be written, with the error; their membership is
    /// unchanged.
    pub failed: Vec<(String, Error)>,
}

/// Re-evaluates, on `profile` (the user `user`'s, just changed) at `now_ms`, the segments whose rules read
/// one of the `changed` features (every segment when `changed` is `None`: a backfill or a new definition),
/// and writes the membership flag of each whose value differs from it (stamped by `clock`). See the module
/// docs.
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    profile: &mut Profile,
    user: &str,
    segments: &Segments,
    schema: &Schema,
    changed: Option<&[String]>,
    cause: Cause<'_>,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Reconciled {
    let chosen = match changed {
        Some(names) => segments.affected_by(names.iter().map(String::as_str)),
        None => segments.iter().collect(),
    };
    let mut out = Reconciled::default();
    for segment in chosen {
        out.evaluated += 1;
        let name = segment.name();
        let evaluation = match explain_profile(&segment.rule, profile, schema, now_ms) {
            Ok(e) => e,
            Err(e) => {
                out.failed.push((name.to_owned(), e));
                continue;
            }
        };
        let Some(kind) = decide(is_member(profile, name, now_ms), evaluation.member) else {
            continue;
        };
        let flag = membership_flag(name);
        let context = profile
            .flags
            .get(&flag)
            .map(|f| f.clock.clone())
            .unwrap_or_default();
        let update = FlagUpdate {
            name: &flag,
            value: evaluation.member,
            context: &context,
            marker: clock.stamp(now_ms),
            actor: clock.actor().clone(),
            expires_at_ms: None,
        };
        if let Err(e) = profile.set_flag(update, now_ms, limits) {
            out.failed.push((name.to_owned(), e));
            continue;
        }
        out.changes.push(ChangeEvent {
            user: user.to_owned(),
            segment: name.to_owned(),
            kind,
            at_ms: now_ms,
            event_time_ms: cause.event_time_ms,
            why: Why::of(&evaluation, cause.message_id),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hlc::{Actor, NodeId};
    use crate::ingest::Definitions;
    use crate::segment::change::Transition;
    use crate::segment::eval::tests::{clock, definitions, track};

    const T0: u64 = 1_700_000_000_000;

    fn segments() -> Segments {
        Segments::from_toml(
            r#"
            [[segment]]
            name = "cart_abandoner"
            rule = 'cart_adds_30m >= 1 && orders_30m == 0'

            [[segment]]
            name = "big_spender"
            rule = 'revenue_7d > 100.0'
            "#,
            &Limits::default(),
        )
        .expect("valid segments")
    }

    fn run(
        profile: &mut Profile,
        clock: &mut Clock,
        changed: &[&str],
        now_ms: u64,
        defs: &Definitions,
    ) -> Reconciled {
        let changed: Vec<String> = changed.iter().map(|s| (*s).to_owned()).collect();
        reconcile(
            profile,
            "u",
            &segments(),
            &Schema::from_definitions(defs),
            Some(&changed),
            Cause {
                message_id: Some("m"),
                event_time_ms: Some(now_ms),
            },
            clock,
            now_ms,
            &Limits::default(),
        )
    }

    /// An add to cart enters the cart abandoner; an order exits it; only the segments whose rules read the
    /// changed features are evaluated, and a second evaluation with nothing new changes nothing.
    #[test]
    fn transitions_follow_the_features_and_are_stored_as_a_flag() {
        let defs = definitions();
        let (mut p, mut c) = (Profile::default(), clock());
        track(&mut p, &mut c, "Product Added", T0, json!({"sku": "a"}));
        let first = run(
            &mut p,
            &mut c,
            &["cart_adds_30m", "last_cart_add"],
            T0,
            &defs,
        );
        assert_eq!(first.evaluated, 1, "big_spender reads neither feature");
        assert_eq!(first.changes.len(), 1);
        assert_eq!(first.changes[0].kind, Transition::Entered);
        assert_eq!(first.changes[0].segment, "cart_abandoner");
        assert_eq!(first.changes[0].why.message_id.as_deref(), Some("m"));
        assert!(is_member(&p, "cart_abandoner", T0));
        assert!(p.flags.contains_key("segment:cart_abandoner"));

        let again = run(&mut p, &mut c, &["cart_adds_30m"], T0 + 1, &defs);
        assert!(again.changes.is_empty(), "{again:?}");

        track(
            &mut p,
            &mut c,
            "Order Completed",
            T0 + 2,
            json!({"revenue": 150.0}),
        );
        let order = run(&mut p, &mut c, &["orders_30m", "revenue_7d"], T0 + 2, &defs);
        let kinds: Vec<(&str, Transition)> = order
            .changes
            .iter()
            .map(|e| (e.segment.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("cart_abandoner", Transition::Exited),
                ("big_spender", Transition::Entered)
            ]
        );
        assert!(!is_member(&p, "cart_abandoner", T0 + 2));
        let flag = &p.flags["segment:cart_abandoner"];
        assert_eq!(flag.siblings.len(), 1, "the exit replaced the entry");
    }

    /// Two owners that both decided an entry during a partition leave two siblings; after the merge the
    /// profile is a member, and the next decision (an exit) replaces both.
    #[test]
    fn concurrent_decisions_converge_on_the_next_one() {
        let defs = definitions();
        let mut a = Profile::default();
        let mut b = Profile::default();
        let mut ca = clock();
        let mut cb = Clock::for_actor(Actor::new(NodeId::new("n2").expect("valid"), 7), 60_000);
        track(&mut a, &mut ca, "Product Added", T0, json!({"sku": "a"}));
        track(
            &mut b,
            &mut cb,
            "Product Added",
            T0 + 5,
            json!({"sku": "b"}),
        );
        assert_eq!(
            run(&mut a, &mut ca, &["cart_adds_30m"], T0, &defs)
                .changes
                .len(),
            1
        );
        assert_eq!(
            run(&mut b, &mut cb, &["cart_adds_30m"], T0 + 5, &defs)
                .changes
                .len(),
            1
        );
        a.merge(&b);
        assert_eq!(a.flags["segment:cart_abandoner"].siblings.len(), 2);
        assert!(is_member(&a, "cart_abandoner", T0 + 10));
        track(
            &mut a,
            &mut ca,
            "Order Completed",
            T0 + 10,
            json!({"revenue": 1.0}),
        );
        let exit = run(&mut a, &mut ca, &["orders_30m"], T0 + 10, &defs);
        assert_eq!(exit.changes[0].kind, Transition::Exited);
        assert_eq!(a.flags["segment:cart_abandoner"].siblings.len(), 1);
        // b, which has not seen the exit, takes it in a merge: the exit dominates both entries.
        b.merge(&a);
        assert!(!is_member(&b, "cart_abandoner", T0 + 10));
    }

    /// A rule that fails at run time leaves its membership alone and is reported; the others still run.
    #[test]
    fn a_failing_rule_is_reported_and_changes_nothing() {
        let defs = definitions();
        let broken = Segments::from_toml(
            r#"
            [[segment]]
            name = "broken"
            rule = 'cart_adds_30m + 0.5 > 1.0'

            [[segment]]
            name = "adder"
            rule = 'cart_adds_30m >= 1'
            "#,
            &Limits::default(),
        )
        .expect("compiles");
        let (mut p, mut c) = (Profile::default(), clock());
        track(&mut p, &mut c, "Product Added", T0, json!({"sku": "a"}));
        let out = reconcile(
            &mut p,
            "u",
            &broken,
            &Schema::from_definitions(&defs),
            None,
            Cause::default(),
            &mut c,
            T0,
            &Limits::default(),
        );
        assert_eq!(out.evaluated, 2);
        assert_eq!(out.failed.len(), 1, "{out:?}");
        assert_eq!(out.failed[0].0, "broken");
        assert_eq!(out.changes.len(), 1);
        assert!(!p.flags.contains_key("segment:broken"));
        assert!(is_member(&p, "adder", T0));
    }
}
