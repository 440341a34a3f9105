//! Gauge values: `f64 | i64 | bool | string`, with a total order used only to break ties deterministically.
//!
//! Guarantees: [`Value::total_cmp`] is a total order (floats by IEEE `total_cmp`), so two replicas holding
//! different values under the same marker still converge to the same one. Non-finite floats are refused at
//! the API boundary by [`Limits::check_value`](crate::limits::Limits::check_value).

use std::cmp::Ordering;
use std::fmt;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use serde::{Deserialize, Serialize};

pub use crate::compact::Text;

/// The value of a gauge feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    I64(i64),
    /// A finite 64-bit float.
    F64(f64),
    /// A UTF-8 string, bounded by `max_value_bytes`; inline up to 13 bytes ([`Text`]).
    Str(Text),
}

/// Variant indices of the encoding: the order of the variants, as `#[derive(Encode)]` numbers them (the
/// format of every record and frame written before strings were inline).
const BOOL: u32 = 0;
const I64: u32 = 1;
const F64: u32 = 2;
const STR: u32 = 3;

impl Encode for Value {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Value::Bool(b) => {
                BOOL.encode(encoder)?;
                b.encode(encoder)
            }
            Value::I64(i) => {
                I64.encode(encoder)?;
                i.encode(encoder)
            }
            Value::F64(x) => {
                F64.encode(encoder)?;
                x.encode(encoder)
            }
            Value::Str(s) => {
                STR.encode(encoder)?;
                s.encode(encoder)
            }
        }
    }
}

impl<C> Decode<C> for Value {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(match u32::decode(decoder)? {
            BOOL => Value::Bool(bool::decode(decoder)?),
            I64 => Value::I64(i64::decode(decoder)?),
            F64 => Value::F64(f64::decode(decoder)?),
            STR => Value::Str(Text::decode(decoder)?),
            found => return Err(unknown_variant(found)),
        })
    }
}

impl<'de, C> BorrowDecode<'de, C> for Value {
    /// Borrows a string's bytes from the input: a short one is copied inline, with no allocation.
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(match u32::borrow_decode(decoder)? {
            BOOL => Value::Bool(bool::borrow_decode(decoder)?),
            I64 => Value::I64(i64::borrow_decode(decoder)?),
            F64 => Value::F64(f64::borrow_decode(decoder)?),
            STR => Value::Str(Text::borrow_decode(decoder)?),
            found => return Err(unknown_variant(found)),
        })
    }
}

fn unknown_variant(found: u32) -> DecodeError {
    DecodeError::UnexpectedVariant {
        type_name: "Value",
        allowed: &bincode::error::AllowedEnumVariants::Range {
            min: BOOL,
            max: STR,
        },
        found,
    }
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
    use bincode::config;
    use proptest::prelude::*;

    /// `Value` as it was derived before its strings were inline: the format every stored record and
    /// frame has.
    #[derive(Debug, Clone, PartialEq, Encode, Decode)]
    enum DerivedValue {
        Bool(bool),
        I64(i64),
        F64(f64),
        Str(String),
    }

    fn derived(v: &Value) -> DerivedValue {
        match v {
            Value::Bool(b) => DerivedValue::Bool(*b),
            Value::I64(i) => DerivedValue::I64(*i),
            Value::F64(x) => DerivedValue::F64(*x),
            Value::Str(s) => DerivedValue::Str(s.to_string()),
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::I64),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::F64),
            // Both sides of the inline limit (13 bytes), multi-byte characters included.
            "\\PC{0,40}".prop_map(|s| Value::Str(s.into())),
        ]
    }

    proptest! {
        /// The hand-written encoding is the derived one, byte for byte, and each decodes the other's
        /// bytes (owned and borrowed), so records and frames written before inline strings still read.
        #[test]
        fn the_encoding_is_the_derived_one(v in value()) {
            let cfg = config::standard();
            let ours = bincode::encode_to_vec(&v, cfg).expect("encodes");
            let theirs = bincode::encode_to_vec(derived(&v), cfg).expect("encodes");
            prop_assert_eq!(&ours, &theirs);
            let (owned, _): (Value, usize) =
                bincode::decode_from_slice(&theirs, cfg).expect("decodes");
            let (borrowed, _): (Value, usize) =
                bincode::borrow_decode_from_slice(&theirs, cfg).expect("decodes");
            prop_assert_eq!(&owned, &v);
            prop_assert_eq!(&borrowed, &v);
            let (back, _): (DerivedValue, usize) =
                bincode::decode_from_slice(&ours, cfg).expect("decodes");
            prop_assert_eq!(back, derived(&v));
        }
    }

    /// An unknown variant index is a typed decode error, not a panic or a default.
    #[test]
    fn an_unknown_variant_is_refused() {
        let bytes = [4u8, 0];
        let owned = bincode::decode_from_slice::<Value, _>(&bytes, config::standard());
        let borrowed = bincode::borrow_decode_from_slice::<Value, _>(&bytes, config::standard());
        assert!(matches!(
            owned,
            Err(DecodeError::UnexpectedVariant { found: 4, .. })
        ));
        assert!(matches!(
            borrowed,
            Err(DecodeError::UnexpectedVariant { found: 4, .. })
        ));
    }

    /// Short strings are inline (no heap allocation of their own), and the value is 16 bytes (a
    /// `String` made it 32, a `CompactString` 24).
    #[test]
    fn short_strings_are_inline() {
        assert_eq!(std::mem::size_of::<Value>(), 16);
        assert_eq!(std::mem::size_of::<Option<Value>>(), 16);
        let Value::Str(s) = Value::Str("a plan, 13 b.".into()) else {
            unreachable!()
        };
        assert!(!s.is_shared());
    }

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
