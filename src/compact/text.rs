//! `Text`: a gauge's string value in 16 bytes.
//!
//! Up to [`INLINE_TEXT`] bytes live inside the value itself (a plan, a country, a platform: what most
//! string features hold), with no allocation. A longer text is one shared allocation ([`ArcStr`]: a thin
//! pointer with the length behind it), so a copy of it, as a view or a delta makes, counts a reference and
//! copies no bytes. Sixteen bytes, where `CompactString` (24 inline) took 24: with it the whole
//! [`Value`](crate::crdt::value::Value) is 16 bytes, and a gauge register 40.
//!
//! Guarantees: a `Text` is always valid UTF-8 (it is only made from a `str`), and it compares, orders,
//! hashes, prints and encodes (serde and bincode) exactly as the `str` it holds, whichever way it is
//! stored, so the representation can never change a merge or a record. Caveat: reading an inline text as
//! a `str` checks its (at most 13) bytes as UTF-8 each time, which costs a few nanoseconds (no `unsafe`
//! here); encoding it does not ([`Text::as_bytes`]).
//! A text of 14 to 24 bytes, inline in the `CompactString` this replaced, now has an allocation of its
//! own.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use arcstr::ArcStr;
use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest text held inline, in bytes.
pub const INLINE_TEXT: usize = 13;

/// A string value: inline up to [`INLINE_TEXT`] bytes, else one shared allocation. 16 bytes.
pub struct Text(Repr);

enum Repr {
    /// A text of up to [`INLINE_TEXT`] bytes.
    Inline(Inline),
    /// A text longer than [`INLINE_TEXT`] bytes.
    Shared(ArcStr),
}

/// `bytes[..len]` is the text (valid UTF-8; the rest is zero). Aligned to 2 bytes, so it sits at
/// offset 2 of the value, after the tag: with 14 bytes at offset 1, the compiler copied the 7 bytes
/// before offset 8 through the stack with overlapping 4-byte stores, and a profile's clone spent most
/// of its time stalled on them (`perf annotate`; `merge/clone_profile_20_gauges` 262 ns, 89 ns after).
#[derive(Clone, Copy)]
#[repr(C, align(2))]
struct Inline {
    len: u8,
    bytes: [u8; INLINE_TEXT],
}

impl Clone for Text {
    fn clone(&self) -> Text {
        match &self.0 {
            Repr::Inline(inline) => Text(Repr::Inline(*inline)),
            Repr::Shared(s) => Text(Repr::Shared(s.clone())),
        }
    }
}

impl Text {
    /// The text of `s`.
    pub fn new(s: &str) -> Text {
        if s.len() <= INLINE_TEXT {
            let mut bytes = [0u8; INLINE_TEXT];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            // `s.len() <= INLINE_TEXT` (13), so it fits in a `u8`.
            let len = s.len() as u8;
            Text(Repr::Inline(Inline { len, bytes }))
        } else {
            Text(Repr::Shared(ArcStr::from(s)))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ever filled from a `str` (see `new`), cut at that `str`'s length: the check cannot
            // fail, and if it somehow did the text would read as empty rather than panic.
            Repr::Inline(Inline { len, bytes }) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(s) => s.as_str(),
        }
    }

    /// The text's bytes, without checking them as UTF-8 again (they were checked when the text was made).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(Inline { len, bytes }) => &bytes[..usize::from(*len)],
            Repr::Shared(s) => s.as_bytes(),
        }
    }

    /// Whether the text has its own allocation (it is longer than [`INLINE_TEXT`] bytes).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared(_))
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::new("")
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::new(s)
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::new(&s)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Text) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Text) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text, E> {
                Ok(Text::new(s))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Encode for Text {
    /// As a `str` (bincode writes a `str` as its bytes: the length, then the bytes), from the bytes
    /// directly: an encode on the read path does not check an inline text as UTF-8 again.
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_bytes().encode(encoder)
    }
}

impl<C> Decode<C> for Text {
    /// As a `String` (its length and UTF-8 checked by bincode, under the decoder's byte limit).
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Text::from(String::decode(decoder)?))
    }
}

impl<'de, C> BorrowDecode<'de, C> for Text {
    /// Borrows the bytes from the input: a short text is copied inline, with no allocation.
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(Text::new(<&str>::borrow_decode(decoder)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_text_is_sixteen_bytes_and_short_ones_are_inline() {
        assert_eq!(std::mem::size_of::<Text>(), 16);
        assert_eq!(std::mem::size_of::<Option<Text>>(), 16);
        assert!(!Text::new("android").is_shared());
        assert!(!Text::new("thirteen byte").is_shared());
        assert!(Text::new("fourteen bytes").is_shared());
        assert!(!Text::default().is_shared());
        assert_eq!(Text::default().as_str(), "");
    }

    proptest! {
        /// Whatever the storage, a `Text` is its `str`: the same text back, the same order, the same
        /// encoding with bincode (owned and borrowed decode) and serde.
        #[test]
        fn a_text_is_its_str(a in "\\PC{0,20}", b in "\\PC{0,20}") {
            let (ta, tb) = (Text::new(&a), Text::new(&b));
            prop_assert_eq!(ta.as_str(), a.as_str());
            prop_assert_eq!(ta.as_bytes(), a.as_bytes());
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
            prop_assert_eq!(ta == tb, a == b);
            let cfg = bincode::config::standard();
            let ours = bincode::encode_to_vec(&ta, cfg).expect("encodes");
            prop_assert_eq!(&ours, &bincode::encode_to_vec(&a, cfg).expect("encodes"));
            let (owned, _): (Text, usize) = bincode::decode_from_slice(&ours, cfg).expect("decodes");
            let (borrowed, _): (Text, usize) =
                bincode::borrow_decode_from_slice(&ours, cfg).expect("decodes");
            prop_assert_eq!(&owned, &ta);
            prop_assert_eq!(&borrowed, &ta);
            let json = serde_json::to_string(&ta).expect("serializes");
            prop_assert_eq!(&json, &serde_json::to_string(&a).expect("serializes"));
            let back: Text = serde_json::from_str(&json).expect("deserializes");
            prop_assert_eq!(back, ta);
        }
    }

    /// A text that is not valid UTF-8 is a decode error, not a panic.
    #[test]
    fn invalid_utf8_is_refused() {
        let bytes = [2u8, 0xff, 0xfe];
        let cfg = bincode::config::standard();
        assert!(bincode::decode_from_slice::<Text, _>(&bytes, cfg).is_err());
        assert!(bincode::borrow_decode_from_slice::<Text, _>(&bytes, cfg).is_err());
    }
}
