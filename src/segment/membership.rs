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
//! - Partitions: two owners that decided opposite transitions leave two disagreeing siblings after the
//!   heal (the profile reads as a member). The owner's next [`reconcile`] of that segment (the node asks
//!   for one as soon as it merges such a state) writes the rule's value over both and emits a change
//!   event whose `resolves` names the dots it replaced: the consumer's last word for that membership.
//!
//! Caveats: segment names are kept behind the `segment:` prefix, which a rule cannot read (a `:` is not a
//! CEL identifier), so one segment's rule never depends on another's membership. Time-driven transitions
//! (a window bucket leaving, `now` passing a deadline) need the caller to [`reconcile`] at the deadline
//! [`next_deadline`](crate::segment::timer::next_deadline) gives.

use crate::crdt::flag::{CausalContext, FlagDot};
use crate::error::Error;
use crate::hlc::Clock;
use crate::limits::Limits;
use crate::profile::{FlagUpdate, Profile};
use crate::segment::change::{decide, ChangeEvent, Transition, Why};
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
        .get(membership_flag(segment).as_str())
        .is_some_and(|f| f.visible(now_ms).any(|s| s.value))
}

/// The segments (of those defined) whose membership flag on `profile` holds disagreeing visible siblings
/// at `now_ms`: conflicts left by a partition, which the owner collapses with a [`reconcile`].
pub fn conflicts<'a>(profile: &Profile, segments: &'a Segments, now_ms: u64) -> Vec<&'a str> {
    segments
        .iter()
        .map(|s| s.name())
        .filter(|name| {
            profile
                .flags
                .get(membership_flag(name).as_str())
                .is_some_and(|f| {
                    f.visible(now_ms).any(|s| s.value) && f.visible(now_ms).any(|s| !s.value)
                })
        })
        .collect()
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

/// Which segments a [`reconcile`] re-evaluates.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Those whose rules read one of these features (just changed by an event): the dependency index.
    Changed(&'a [String]),
    /// Every segment (a linking event, whose absorbed history may move any of them).
    All,
    /// These segments, by name (a timer's due segments, a backfill of new definitions); unknown names
    /// are skipped.
    Only(&'a [String]),
}

/// Re-evaluates, on `profile` (the user `user`'s, just changed) at `now_ms`, the segments `scope` names,
/// and writes the membership flag of each whose value differs from it (stamped by `clock`). See the module
/// docs.
///
/// A flag whose visible siblings disagree (two owners decided opposite transitions during a partition) is
/// collapsed here too: one write of the rule's current value over all of them, reported as a change event
/// of that value whose `resolves` lists the replaced dots, so a consumer that saw both decisions learns
/// the outcome.
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    profile: &mut Profile,
    user: &str,
    segments: &Segments,
    schema: &Schema,
    scope: Scope<'_>,
    cause: Cause<'_>,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Reconciled {
    let chosen = match scope {
        Scope::Changed(names) => segments.affected_by(names.iter().map(String::as_str)),
        Scope::All => segments.iter().collect(),
        Scope::Only(names) => names.iter().filter_map(|n| segments.get(n)).collect(),
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
        let flag = membership_flag(name);
        let (context, visible) = match profile.flags.get(flag.as_str()) {
            Some(f) => (
                f.clock.clone(),
                f.visible(now_ms)
                    .map(|s| (s.dot.clone(), s.value))
                    .collect::<Vec<_>>(),
            ),
            None => (CausalContext::default(), Vec::new()),
        };
        let member = visible.iter().any(|(_, v)| *v);
        let conflict = visible.iter().any(|(_, v)| *v) && visible.iter().any(|(_, v)| !*v);
        let kind = match decide(member, evaluation.member) {
            Some(kind) => kind,
            None if conflict && evaluation.member => Transition::Entered,
            None if conflict => Transition::Exited,
            None => continue,
        };
        let actor = clock.actor().clone();
        let update = FlagUpdate {
            name: &flag,
            value: evaluation.member,
            context: &context,
            marker: clock.stamp(now_ms),
            actor: actor.clone(),
            expires_at_ms: None,
        };
        if let Err(e) = profile.set_flag(update, now_ms, limits) {
            out.failed.push((name.to_owned(), e));
            continue;
        }
        let dot = profile
            .flags
            .get(flag.as_str())
            .and_then(|f| {
                f.siblings
                    .iter()
                    .filter(|s| s.dot.actor == actor)
                    .map(|s| s.dot.clone())
                    .max()
            })
            .unwrap_or(FlagDot { actor, counter: 0 });
        out.changes.push(ChangeEvent {
            user: user.to_owned(),
            segment: name.to_owned(),
            kind,
            at_ms: now_ms,
            event_time_ms: cause.event_time_ms,
            why: Why::of(&evaluation, cause.message_id),
            dot,
            resolves: if conflict {
                visible.into_iter().map(|(d, _)| d).collect()
            } else {
                Vec::new()
            },
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
            Scope::Changed(&changed),
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

    /// A split: both owners decide the entry (distinct dots, so a consumer keeps both and can tell them
    /// apart); then one side exits while the other does not hear of it. After the heal the flag holds
    /// disagreeing siblings; the owner's reconcile collapses them into the rule's value and says so.
    #[test]
    fn a_split_yields_de_duplicable_events_and_the_conflict_is_collapsed_after_the_heal() {
        let defs = definitions();
        let (mut a, mut b) = (Profile::default(), Profile::default());
        let mut ca = clock();
        let mut cb = Clock::for_actor(Actor::new(NodeId::new("n2").expect("valid"), 7), 60_000);
        track(&mut a, &mut ca, "Product Added", T0, json!({"sku": "a"}));
        let base = a.clone();
        b.merge(&base);
        let ea = run(&mut a, &mut ca, &["cart_adds_30m"], T0, &defs).changes;
        let eb = run(&mut b, &mut cb, &["cart_adds_30m"], T0 + 1, &defs).changes;
        assert_eq!((ea.len(), eb.len()), (1, 1));
        assert_ne!(
            ea[0].dedup_key(),
            eb[0].dedup_key(),
            "two decisions, two keys"
        );
        assert_eq!(
            ea[0].dedup_key(),
            ea[0].clone().dedup_key(),
            "a redelivery, one key"
        );
        // Side b sees an order and exits; side a never hears of it.
        track(
            &mut b,
            &mut cb,
            "Order Completed",
            T0 + 2,
            json!({"revenue": 1.0}),
        );
        let exit = run(&mut b, &mut cb, &["orders_30m"], T0 + 2, &defs).changes;
        assert_eq!(exit[0].kind, Transition::Exited);
        // Heal: a merges b. a's entry sibling is concurrent with b's exit.
        a.merge(&b);
        let segs = segments();
        assert_eq!(conflicts(&a, &segs, T0 + 3), vec!["cart_abandoner"]);
        let names = vec!["cart_abandoner".to_owned()];
        let fixed = reconcile(
            &mut a,
            "u",
            &segs,
            &Schema::from_definitions(&defs),
            Scope::Only(&names),
            Cause::default(),
            &mut ca,
            T0 + 3,
            &Limits::default(),
        );
        assert_eq!(fixed.changes.len(), 1, "{fixed:?}");
        assert_eq!(
            fixed.changes[0].kind,
            Transition::Exited,
            "the order is seen"
        );
        assert_eq!(fixed.changes[0].resolves.len(), 2);
        assert!(conflicts(&a, &segs, T0 + 3).is_empty());
        b.merge(&a);
        assert_eq!(a.flags, b.flags, "converged");
        assert!(!is_member(&b, "cart_abandoner", T0 + 3));
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
            Scope::All,
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
