//! Gauge values: `f64 | i64 | bool | string`, with a total order used only to break ties deterministically.
//!
//! Guarantees: [`Value::total_cmp`] is a total order (floats by IEEE `total_cmp`), so two replicas holding
//! different values under the same marker still converge to the same one. Non-finite floats are refused at
//! the API boundary by [`Limits::check_value`](crate::limits::Limits::check_value).

use std::cmp::Ordering;
use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// The value of a gauge feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    I64(i64),
    /// A finite 64-bit float.
    F64(f64),
    /// A UTF-8 string, bounded by `max_value_bytes`.
    Str(String),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Bool(_) => 0,
            Value::I64(_) => 1,
            Value::F64(_) => 2,
            Value::Str(_) => 3,
        }
    }

    /// A total order over all values (by type, then by value). Used only as a deterministic tie-break.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::I64(a), Value::I64(b)) => a.cmp(b),
            (Value::F64(a), Value::F64(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::I64(i) => write!(f, "{i}"),
            Value::F64(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_order_is_total() {
        let vals = [
            Value::Bool(true),
            Value::I64(-1),
            Value::F64(-0.0),
            Value::F64(0.0),
            Value::Str("a".into()),
        ];
        for a in &vals {
            for b in &vals {
                assert_eq!(a.total_cmp(b), b.total_cmp(a).reverse());
            }
        }
    }

    /// The tie-break must tell every two different values apart (within a type too), or two replicas
    /// holding different values under one marker would each keep their own.
    #[test]
    fn only_identical_values_tie() {
        let vals = [
            Value::Bool(false),
            Value::Bool(true),
            Value::I64(-1),
            Value::I64(2),
            Value::F64(-0.0),
            Value::F64(0.0),
            Value::F64(1.5),
            Value::Str("a".into()),
            Value::Str("b".into()),
        ];
        for (i, a) in vals.iter().enumerate() {
            for (j, b) in vals.iter().enumerate() {
                assert_eq!(a.total_cmp(b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }
}
