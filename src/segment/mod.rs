//! Segments, sans-IO: named boolean rules over a profile's features and `now`, in CEL
//! (`cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration("30m")`), and everything the
//! owning node needs to decide memberships without doing I/O: compiled rules with their dependency index,
//! evaluation, the deadline at which a rule can flip with no new event, and the transition and change-event
//! types.
//!
//! - [`rule`]: a compiled [`Rule`] (the only module that sees the `cel` crate).
//! - [`define`]: [`SegmentDef`]s from TOML (`[[segment]] name = "...", rule = "..."`) into [`Segments`],
//!   with the dependency index (which rules read which features).
//! - [`eval`]: what a rule reads from a [`ProfileView`](crate::profile::ProfileView) ([`Schema`],
//!   [`Reading`]s) and [`evaluate`].
//! - [`timer`]: [`next_flip`], the earliest instant after now at which a rule's value can change by itself.
//! - [`change`]: [`decide`] a [`Transition`], and the [`ChangeEvent`] with its [`Why`].
//! - [`membership`]: membership as the flag `segment:NAME` on the profile, and [`reconcile`], which
//!   re-evaluates the affected segments inside the write that changed their features.
//!
//! Guarantees: nothing here reads a clock or allocates beyond the limits: rule length, segment count and
//! candidate instants per deadline are bounded by [`Limits`](crate::limits::Limits) (`max_rule_bytes`,
//! `max_segments`, `max_flip_candidates`). Evaluation never panics; "no data" is "not a member" (see
//! [`eval`] for how each kind of feature reads and what an absent one does).
//!
//! Caveats: the rule language is CEL as the `cel` crate (0.15) implements it: no static type checker, so a
//! type error surfaces when a rule is evaluated, as [`Error::RuleEvaluation`](crate::error::Error). The
//! fencing fields of a change event (ring version, owner, dot) belong to the node and are not here.

pub mod change;
pub mod define;
pub mod eval;
pub mod membership;
pub mod rule;
pub mod timer;

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

pub use change::{decide, ChangeEvent, Transition, Why};
pub use define::{Segment, SegmentDef, Segments};
pub use eval::{
    evaluate, evaluate_profile, explain, explain_profile, readings, Evaluation, Schema,
};
pub use membership::{conflicts, is_member, membership_flag, reconcile, Cause, Reconciled, Scope};
pub use rule::Rule;
pub use timer::{next_deadline, next_flip, Timer};

/// The value of one feature as a rule reads it (and as a why-trace shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Reading {
    /// No visible value: left unbound, so a rule whose result depends on it is `false`.
    Absent,
    /// A CEL `int`: counters, counts and distinct counts of windows, integer gauges.
    Int(i64),
    /// A CEL `double`: sums, minimums and maximums of windows, float gauges.
    Number(f64),
    /// A CEL `bool`: flags (true if any visible sibling is true), boolean gauges.
    Bool(bool),
    /// A CEL `string`: string gauges.
    Text(String),
    /// A CEL `timestamp`, in Unix ms: `first_seen`/`last_seen` windows (and `now`).
    Time(u64),
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reading::Absent => write!(f, "(absent)"),
            Reading::Int(i) => write!(f, "{i}"),
            Reading::Number(x) => write!(f, "{x}"),
            Reading::Bool(b) => write!(f, "{b}"),
            Reading::Text(s) => write!(f, "{s:?}"),
            Reading::Time(ms) => write!(f, "{}", rule::format_time(*ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_show_as_a_user_reads_them_and_round_trip() {
        let shown: Vec<String> = [
            Reading::Absent,
            Reading::Int(3),
            Reading::Number(2.5),
            Reading::Bool(true),
            Reading::Text("pro".into()),
            Reading::Time(1_700_000_000_000),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            shown,
            [
                "(absent)",
                "3",
                "2.5",
                "true",
                "\"pro\"",
                "2023-11-14T22:13:20.000Z"
            ]
        );
        let json = serde_json::to_string(&Reading::Time(5)).expect("serializes");
        assert_eq!(json, r#"{"type":"time","value":5}"#);
        assert_eq!(
            serde_json::from_str::<Reading>(&json).expect("parses"),
            Reading::Time(5)
        );
    }
}
