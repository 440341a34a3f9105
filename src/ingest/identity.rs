//! Identity links from events: `identify` carrying both a `userId` and an `anonymousId`, and `alias`
//! (`previousId` → `userId`), link one id into the canonical profile of another (the state they become is
//! described in [`profile::identity`](crate::profile::identity)).
//!
//! The decision is the core's, in three calls the node makes in order:
//! 1. [`link_of`]: which id, if any, an event asks to link into the profile it is applied to;
//! 2. [`check_link`]: whether that link is allowed (no loop, no id linked elsewhere, the link limit),
//!    before the node writes the redirect on the linked id's profile
//!    ([`Profile::set_alias`]);
//! 3. [`apply_linking_event`]: the event applied to the canonical profile together with the absorption of
//!    the linked id's state, all or nothing.
//!
//! Guarantees: a retried linking event is a duplicate like any other (its message id is in the canonical
//! profile's dedup set); absorbing is idempotent, so a link decided twice (a retry that reached another
//! owner, or both sides of a partition) counts nothing twice.

use crate::error::{truncate_for_error, Error, Result};
use crate::hlc::Clock;
use crate::ingest::{apply_event, Definitions, Event, EventType, Ingested};
use crate::limits::Limits;
use crate::profile::Profile;

/// The id `event` asks to link into the profile it is applied to: the `anonymousId` of an `identify` that
/// also carries a different `userId`, or the `previousId` of an `alias`. `None` for every other event.
pub fn link_of(event: &Event) -> Option<&str> {
    match event.kind {
        EventType::Identify => match (&event.user_id, &event.anonymous_id) {
            (Some(user), Some(anonymous)) if user != anonymous => Some(anonymous),
            _ => None,
        },
        EventType::Alias => event
            .previous_id
            .as_deref()
            .filter(|previous| Some(*previous) != event.user_id.as_deref()),
        _ => None,
    }
}

/// Whether an event for `key`, which was linked into another id, may follow one more redirect after the
/// `hops` it followed already.
pub fn check_redirect(key: &str, hops: u8, limits: &Limits) -> Result<()> {
    if hops >= limits.max_identity_depth {
        return Err(Error::IdentityTooDeep {
            key: truncate_for_error(key),
            max: limits.max_identity_depth,
        });
    }
    Ok(())
}

/// Whether linking `id` (whose merged state is `state`) into `canonical`, the profile of `key`, is allowed.
/// Changes nothing.
pub fn check_link(
    canonical: &Profile,
    key: &str,
    id: &str,
    state: &Profile,
    limits: &Limits,
) -> Result<()> {
    canonical.clone().absorb(key, id, state, limits).map(|_| ())
}

/// Applies `event` to `profile`, the canonical profile of `key`, and links `id` (whose merged state is
/// `state`) into it. A duplicate or a redirect changes nothing, as for [`apply_event`]; on `Err` nothing
/// changed.
#[allow(clippy::too_many_arguments)]
pub fn apply_linking_event(
    profile: &mut Profile,
    key: &str,
    event: &Event,
    id: &str,
    state: &Profile,
    defs: &Definitions,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Result<Ingested> {
    if profile.has_seen(&event.message_id) || profile.alias_of().is_some() {
        return apply_event(profile, event, defs, clock, now_ms, limits);
    }
    let mut next = profile.clone();
    next.absorb(key, id, state, limits)?;
    // `next` is a copy, dropped on `Err`: no second one.
    let mut out = super::apply_event_to_copy(&mut next, event, defs, clock, now_ms, limits)?;
    out.linked = Some(id.to_owned());
    *profile = next;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;
    use crate::ingest::FeatureDefinition;
    use crate::profile::FeatureView;
    use serde_json::{json, Value as Json};

    const NOW: u64 = 1_700_000_000_000;

    fn defs() -> Definitions {
        let defs: Vec<FeatureDefinition> = serde_json::from_value(json!([
            {"name": "page_views", "on": "page", "aggregation": "count"},
            {"name": "cart_adds_30m", "on": "track", "event": "Product Added", "aggregation": "count", "window": "30m"},
            {"name": "revenue", "on": "track", "event": "Order Completed", "aggregation": "sum", "property": "revenue"}
        ]))
        .expect("definitions");
        Definitions::compile(&defs, &Limits::default()).expect("valid")
    }

    fn event(j: Json) -> Event {
        Event::from_segment(&j, None, NOW, &Limits::default()).expect("valid event")
    }

    fn clock(n: &str) -> Clock {
        Clock::new(NodeId::new(n).expect("valid"), 60_000)
    }

    fn value(p: &Profile, name: &str) -> Option<f64> {
        match p.view(NOW + 1_000, None)?.features.get(name)? {
            FeatureView::Window { value, .. } => *value,
            FeatureView::Counter { value } => Some(*value as f64),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// Applies `events` (JSON) to `p` at owner `c`.
    fn ingest(p: &mut Profile, c: &mut Clock, events: &[Json]) {
        for (i, e) in events.iter().enumerate() {
            apply_event(
                p,
                &event(e.clone()),
                &defs(),
                c,
                NOW + i as u64,
                &Limits::default(),
            )
            .expect("applies");
        }
    }

    fn page(id: &str, anon: &str) -> Json {
        json!({"type": "page", "anonymousId": anon, "messageId": id})
    }

    fn identify(id: &str, user: &str, anon: &str) -> Event {
        event(
            json!({"type": "identify", "userId": user, "anonymousId": anon, "messageId": id, "traits": {"plan": "pro"}}),
        )
    }

    #[test]
    fn identify_and_alias_name_the_id_to_link() {
        assert_eq!(link_of(&identify("i", "u", "a")), Some("a"));
        let same =
            event(json!({"type": "identify", "userId": "u", "anonymousId": "u", "messageId": "i"}));
        assert_eq!(link_of(&same), None);
        let alias =
            event(json!({"type": "alias", "userId": "v", "previousId": "u", "messageId": "l"}));
        assert_eq!(link_of(&alias), Some("u"));
        let track = event(
            json!({"type": "track", "event": "x", "userId": "u", "anonymousId": "a", "messageId": "t"}),
        );
        assert_eq!(link_of(&track), None, "only identify and alias link");
    }

    /// The anonymous history is merged into the user once: retried, re-linked, or replayed under the user
    /// id, nothing is counted twice.
    #[test]
    fn a_link_merges_the_anonymous_profile_once() {
        let limits = Limits::default();
        let (mut anon, mut user) = (Profile::default(), Profile::default());
        ingest(
            &mut anon,
            &mut clock("n1"),
            &[
                page("p1", "a"),
                page("p2", "a"),
                json!({"type": "track", "event": "Product Added", "anonymousId": "a", "messageId": "c1"}),
            ],
        );
        ingest(
            &mut user,
            &mut clock("n1"),
            &[json!({"type": "page", "userId": "u", "messageId": "p9"})],
        );
        let link = identify("i1", "u", "a");
        check_link(&user, "u", "a", &anon, &limits).expect("allowed");
        let out = apply_linking_event(
            &mut user,
            "u",
            &link,
            "a",
            &anon,
            &defs(),
            &mut clock("n1"),
            NOW + 10,
            &limits,
        )
        .expect("links");
        assert_eq!(out.linked.as_deref(), Some("a"));
        assert_eq!(value(&user, "page_views"), Some(3.0), "own 1 + anonymous 2");
        assert_eq!(value(&user, "cart_adds_30m"), Some(1.0));
        assert!(user.has_seen("p1") && user.has_seen("i1"));

        // The retry of the identify is a duplicate; linking the same state again changes nothing.
        let again = apply_linking_event(
            &mut user,
            "u",
            &link,
            "a",
            &anon,
            &defs(),
            &mut clock("n1"),
            NOW + 20,
            &limits,
        )
        .expect("answers");
        assert!(again.duplicate);
        assert_eq!(user.absorb("u", "a", &anon, &limits), Ok(false));
        // An anonymous event retried under the user id (after the link) is a duplicate.
        let replay =
            event(json!({"type": "page", "userId": "u", "anonymousId": "a", "messageId": "p1"}));
        let out = apply_event(
            &mut user,
            &replay,
            &defs(),
            &mut clock("n2"),
            NOW + 30,
            &limits,
        )
        .expect("answers");
        assert!(out.duplicate);
        assert_eq!(value(&user, "page_views"), Some(3.0));
    }

    #[test]
    fn a_linked_id_redirects_its_events() {
        let limits = Limits::default();
        let mut anon = Profile::default();
        ingest(&mut anon, &mut clock("n1"), &[page("p1", "a")]);
        let mut c = clock("n1");
        anon.set_alias("u", c.stamp(NOW), &limits).expect("valid");
        let out = apply_event(
            &mut anon,
            &event(page("p2", "a")),
            &defs(),
            &mut c,
            NOW + 1,
            &limits,
        )
        .expect("answers");
        assert_eq!(out.redirect.as_deref(), Some("u"));
        assert!(
            !anon.has_seen("p2"),
            "a redirected event is not applied here"
        );
        assert_eq!(value(&anon, "page_views"), Some(1.0));
    }

    #[test]
    fn loops_conflicts_and_the_link_limit_are_refused() {
        let limits = Limits::default();
        let mut user = Profile::default();
        let anon = Profile::default();
        // Into oneself.
        assert!(matches!(
            check_link(&user, "u", "u", &anon, &limits),
            Err(Error::IdentityLoop { .. })
        ));
        // `v` absorbed `u` earlier: linking `v` into `u` would close a loop.
        let mut v = Profile::default();
        v.absorb("v", "u", &user, &limits).expect("links");
        assert!(matches!(
            check_link(&user, "u", "v", &v, &limits),
            Err(Error::IdentityLoop { .. })
        ));
        // `a` already redirects to `w`.
        let mut linked = Profile::default();
        linked
            .set_alias("w", clock("n1").stamp(NOW), &limits)
            .expect("valid");
        assert!(matches!(
            check_link(&user, "u", "a", &linked, &limits),
            Err(Error::IdentityConflict { .. })
        ));
        // The limit.
        let small = Limits {
            max_identity_links: 2,
            ..Limits::default()
        };
        user.absorb("u", "a1", &anon, &small).expect("1");
        user.absorb("u", "a2", &anon, &small).expect("2");
        let before = user.clone();
        assert!(matches!(
            user.absorb("u", "a3", &anon, &small),
            Err(Error::TooManyIdentityLinks { .. })
        ));
        assert_eq!(user, before, "a refused link changes nothing");
    }

    /// `a → u`, then `u → v`: `v` holds `a` and `u` side by side, counted once each.
    #[test]
    fn chains_stay_flat() {
        let limits = Limits::default();
        let (mut a, mut u, mut v) = (Profile::default(), Profile::default(), Profile::default());
        ingest(&mut a, &mut clock("n1"), &[page("p1", "a")]);
        ingest(
            &mut u,
            &mut clock("n2"),
            &[json!({"type": "page", "userId": "u", "messageId": "p2"})],
        );
        u.absorb("u", "a", &a, &limits).expect("links");
        v.absorb("v", "u", &u, &limits).expect("links");
        assert_eq!(
            v.identity.absorbed.keys().collect::<Vec<_>>(),
            vec!["a", "u"]
        );
        assert!(v.identity.absorbed.values().all(|p| p.identity.is_empty()));
        assert_eq!(value(&v, "page_views"), Some(2.0));
    }

    #[test]
    fn erasing_the_user_erases_what_was_linked_into_it() {
        let limits = Limits::default();
        let (mut a, mut u) = (Profile::default(), Profile::default());
        ingest(&mut a, &mut clock("n1"), &[page("p1", "a")]);
        u.absorb("u", "a", &a, &limits).expect("links");
        let mut c = clock("n1");
        u.erase(c.stamp(NOW + 5_000));
        assert_eq!(u.view(NOW + 6_000, None), None);
        // A replica that still has the link merges into the erased state without bringing it back.
        let mut stale = Profile::default();
        stale.absorb("u", "a", &a, &limits).expect("links");
        u.merge(&stale);
        assert_eq!(u.view(NOW + 6_000, None), None);
    }
}
