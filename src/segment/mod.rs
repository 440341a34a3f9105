//! Segments, sans-IO: named boolean rules over a profile's features and `now`, in CEL
//! (`cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration("30m")`).
//!
//! - [`rule`]: a compiled [`Rule`] (the only module that sees the `cel` crate), and the [`Reading`]s it
//!   binds.

pub mod rule;

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

pub use rule::Rule;

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
