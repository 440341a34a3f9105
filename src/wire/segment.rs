//! What crosses the wire about segments: the fenced [`SegmentChange`] a node's change log holds and
//! subscribers receive, the pages and reports of the segment requests, the replicated [`Catalog`] of
//! runtime definitions, and [`audience_event`], a change in the shape Segment's audiences send.
//!
//! Guarantees:
//! - **Fencing**: every change carries the node that decided it, the ring version it decided under and
//!   the membership flag's dot. `(segment, user, dot)` ([`ChangeEvent::dedup_key`]) is unique per
//!   decision, so a consumer that receives an event twice (a resumed subscription, two owners' logs)
//!   drops the repeat, and two owners' decisions during a partition are told apart.
//! - **Cursor**: `seq` is the position in the deciding node's log, increasing by one per change, never
//!   reused (a node continues after the highest stored one). A subscriber's cursor is one `seq` per node.
//! - **Catalog order**: catalogs are ordered by `(version, digest)`; merging keeps the larger, so every
//!   node that has seen the same catalogs holds the same one (a join), like the membership table.
//!
//! Caveats: `seq` is per node, not global: events of two nodes are merged by the subscriber in arrival
//! order; `at_ms` (the deciding node's clock) orders them only as well as the clocks agree.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::hlc::NodeId;
use crate::segment::{ChangeEvent, Reading, SegmentDef, Transition};

/// One change event as a node's change log keeps it: the event and its fencing fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct SegmentChange {
    /// Position in the deciding node's change log (from 1).
    pub seq: u64,
    /// The node that decided the transition (the user's acting owner then).
    pub owner: NodeId,
    /// The ring (membership) version the owner decided under.
    pub ring_version: u64,
    /// When the causing event was accepted by the first node that received it (Unix ms, that node's
    /// clock); none for a timer, a backfill or a conflict resolution.
    pub accepted_ms: Option<u64>,
    /// For a timer-fired transition: the deadline it was armed for (Unix ms).
    pub deadline_ms: Option<u64>,
    /// The entry or exit.
    pub change: ChangeEvent,
}

/// A page of a node's change log (answer to `SegmentChanges`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct ChangePage {
    /// The node whose log this is.
    pub node: Option<NodeId>,
    /// Changes with `seq >= from`, in order (only the requested segments).
    pub changes: Vec<SegmentChange>,
    /// The cursor to ask from next: one past the last change examined.
    pub next: u64,
    /// The oldest `seq` the log still holds; a cursor below it has missed `oldest - from` changes
    /// (dropped by retention).
    pub oldest: u64,
}

impl ChangePage {
    /// How many changes a cursor at `from` missed because retention dropped them.
    pub fn missed(&self, from: u64) -> u64 {
        self.oldest.saturating_sub(from.max(1))
    }
}

/// The answer to `SegmentWhy`: why a user is or is not a member of a segment, on the node that answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct WhyReport {
    /// The node that answered (from its copy of the profile).
    pub node: NodeId,
    /// The user.
    pub user: String,
    /// The segment.
    pub segment: String,
    /// The rule's text.
    pub rule: String,
    /// Whether the stored membership flag says member.
    pub member: bool,
    /// The rule's value now on this node's copy (an error message if it failed).
    pub value: Result<bool, String>,
    /// Every feature the rule reads, as it reads it now.
    pub read: BTreeMap<String, Reading>,
    /// The last transition of this user and segment in this node's change log, if it still holds one.
    pub last: Option<SegmentChange>,
    /// The next instant a timer would re-evaluate the rule for this user (Unix ms), if any.
    pub next_deadline_ms: Option<u64>,
}

/// A page of a segment's members held by one node as their primary owner (answer to
/// `SegmentMembers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct MembersPage {
    /// Members (user ids) after the requested one, in byte order.
    pub members: Vec<String>,
    /// The last member of this page if more may follow (the `after` of the next request).
    pub next: Option<String>,
}

/// A runtime segment-definition set that replicates between nodes: added definitions and removed
/// names, versioned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Catalog {
    /// Raised by every change (the change's node sets it to one more than the highest it has seen).
    pub version: u64,
    /// Definitions added at runtime (they win over a start-up file's definition of the same name).
    pub added: Vec<SegmentDef>,
    /// Names removed at runtime (also hides a start-up file's definition).
    pub removed: Vec<String>,
}

impl Catalog {
    /// A stable digest of the content, the tie-breaker between equal versions.
    pub fn digest(&self) -> u64 {
        let mut text = String::new();
        for d in &self.added {
            text.push_str(&format!("+{}:{}\u{0}\n", d.name.len(), d.name));
            text.push_str(&d.rule);
            text.push('\u{0}');
        }
        for r in &self.removed {
            text.push_str(&format!("-{}:{}\u{0}", r.len(), r));
        }
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    /// Whether `other` should replace this catalog (a larger `(version, digest)`).
    pub fn is_superseded_by(&self, other: &Catalog) -> bool {
        (other.version, other.digest()) > (self.version, self.digest())
    }

    /// This catalog with `add` (replacing a definition of the same name) and without `remove`, at the
    /// next version.
    pub fn changed(&self, add: &[SegmentDef], remove: &[String]) -> Catalog {
        let mut next = self.clone();
        next.version = self.version.saturating_add(1);
        for def in add {
            next.added.retain(|d| d.name != def.name);
            next.removed.retain(|r| *r != def.name);
            next.added.push(def.clone());
        }
        for name in remove {
            next.added.retain(|d| d.name != *name);
            if !next.removed.contains(name) {
                next.removed.push(name.clone());
            }
        }
        next.added.sort_by(|a, b| a.name.cmp(&b.name));
        next.removed.sort();
        next
    }

    /// The effective definitions: `base` (a start-up file's) without the removed names, with the added
    /// definitions in place of (or after) those of the same name.
    pub fn apply_to(&self, base: &[SegmentDef]) -> Vec<SegmentDef> {
        let mut out: Vec<SegmentDef> = base
            .iter()
            .filter(|d| !self.removed.contains(&d.name))
            .filter(|d| !self.added.iter().any(|a| a.name == d.name))
            .cloned()
            .collect();
        out.extend(self.added.iter().cloned());
        out
    }
}

/// Backfill progress of one segment on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Backfill {
    /// The segment being backfilled.
    pub segment: String,
    /// Profiles evaluated so far.
    pub done: u64,
    /// Profiles this node owns to evaluate in all.
    pub total: u64,
}

/// The segments a node evaluates (answer to `Segments` and `DefineSegments`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct SegmentsView {
    /// The node that answered.
    pub node: Option<NodeId>,
    /// The runtime catalog it holds.
    pub catalog: Catalog,
    /// The effective definitions (start-up file and catalog), in evaluation order.
    pub segments: Vec<SegmentDef>,
    /// Backfills running on it.
    pub backfills: Vec<Backfill>,
    /// Per segment: entries and exits this node decided since it started.
    pub counts: Vec<SegmentCounts>,
    /// Event accepted → change emitted, for event-caused changes decided here (ms).
    pub event_latency: LatencySummary,
    /// Timer fired − deadline, for timer-fired changes decided here (ms).
    pub timer_lag: LatencySummary,
}

/// Entries, exits and (primary-owned) members of one segment on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct SegmentCounts {
    /// The segment.
    pub segment: String,
    /// Entries decided here since start.
    pub entries: u64,
    /// Exits decided here since start.
    pub exits: u64,
    /// Members among the profiles this node is the primary owner of (counted at most every few seconds).
    pub members: u64,
}

/// A latency distribution: count and percentiles, in milliseconds (fractions kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Histogram buckets: `(upper bound ms, samples at or below it)`, cumulative.
    pub buckets: Vec<(f64, u64)>,
}

/// A change in the shape of a Segment audience's track event (`Audience Entered` / `Audience Exited`),
/// which existing Segment destinations understand: `messageId` is the de-duplication key,
/// `properties.<segment>` the membership, `context.personas` names the audience.
pub fn audience_event(change: &SegmentChange) -> serde_json::Value {
    let c = &change.change;
    let entered = c.kind == Transition::Entered;
    let mut properties = serde_json::Map::new();
    properties.insert("audience_key".into(), c.segment.clone().into());
    properties.insert(c.segment.clone(), entered.into());
    properties.insert(
        "why".into(),
        serde_json::to_value(&c.why).unwrap_or(serde_json::Value::Null),
    );
    serde_json::json!({
        "type": "track",
        "event": if entered { "Audience Entered" } else { "Audience Exited" },
        "userId": c.user,
        "messageId": c.dedup_key(),
        "timestamp": crate::segment::rule::format_time(c.at_ms),
        "properties": properties,
        "context": {
            "personas": {
                "computation_class": "audience",
                "computation_key": c.segment,
                "computation_id": c.segment,
                "namespace": "featurestore",
            },
            "featurestore": {
                "owner": change.owner.as_str(),
                "ring_version": change.ring_version,
                "seq": change.seq,
                "dot": format!("{}:{}", c.dot.actor, c.dot.counter),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::flag::FlagDot;
    use crate::hlc::Actor;
    use crate::segment::Why;

    fn change() -> SegmentChange {
        let n1 = NodeId::new("n1").expect("valid");
        SegmentChange {
            seq: 7,
            owner: n1.clone(),
            ring_version: 3,
            accepted_ms: Some(1_700_000_000_000),
            deadline_ms: None,
            change: ChangeEvent {
                user: "u-1".into(),
                segment: "cart_abandoner".into(),
                kind: Transition::Entered,
                at_ms: 1_700_000_000_001,
                event_time_ms: Some(1_700_000_000_000),
                why: Why::default(),
                dot: FlagDot {
                    actor: Actor::new(n1, 0xab),
                    counter: 2,
                },
                resolves: Vec::new(),
            },
        }
    }

    #[test]
    fn the_audience_shape_is_a_segment_track_event_with_the_dedup_key() {
        let e = audience_event(&change());
        assert_eq!(e["type"], "track");
        assert_eq!(e["event"], "Audience Entered");
        assert_eq!(e["userId"], "u-1");
        assert_eq!(e["properties"]["cart_abandoner"], true);
        assert_eq!(e["properties"]["audience_key"], "cart_abandoner");
        assert_eq!(
            e["context"]["personas"]["computation_key"],
            "cart_abandoner"
        );
        assert_eq!(e["messageId"], change().change.dedup_key());
        assert_eq!(e["context"]["featurestore"]["ring_version"], 3);
        let mut exit = change();
        exit.change.kind = Transition::Exited;
        assert_eq!(audience_event(&exit)["event"], "Audience Exited");
        assert_eq!(audience_event(&exit)["properties"]["cart_abandoner"], false);
    }

    fn def(name: &str, rule: &str) -> SegmentDef {
        SegmentDef {
            name: name.into(),
            rule: rule.into(),
        }
    }

    #[test]
    fn catalogs_merge_by_version_and_digest_and_apply_over_the_file() {
        let base = vec![def("a", "x > 1"), def("b", "y > 1")];
        let empty = Catalog::default();
        let one = empty.changed(&[def("c", "z > 1"), def("a", "x > 2")], &["b".into()]);
        assert_eq!(one.version, 1);
        assert!(empty.is_superseded_by(&one));
        assert!(!one.is_superseded_by(&empty));
        let names: Vec<(String, String)> = one
            .apply_to(&base)
            .into_iter()
            .map(|d| (d.name, d.rule))
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_owned(), "x > 2".to_owned()),
                ("c".to_owned(), "z > 1".to_owned())
            ]
        );
        // Two concurrent changes at the same version: both nodes keep the same one.
        let other = empty.changed(&[def("d", "w > 1")], &[]);
        let winner = if one.is_superseded_by(&other) {
            &other
        } else {
            &one
        };
        assert!(!winner.is_superseded_by(&one) && !winner.is_superseded_by(&other));
        // Re-adding a removed name un-removes it.
        let back = one.changed(&[def("b", "y > 5")], &[]);
        assert!(back.removed.is_empty());
        assert_eq!(back.apply_to(&base).len(), 3);
    }

    #[test]
    fn a_page_counts_what_retention_dropped() {
        let page = ChangePage {
            oldest: 10,
            ..ChangePage::default()
        };
        assert_eq!(page.missed(1), 9);
        assert_eq!(page.missed(0), 9);
        assert_eq!(page.missed(12), 0);
    }
}
