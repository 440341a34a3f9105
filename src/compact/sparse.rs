//! `Sparse<T>`: a part of a profile that most profiles leave empty, in 8 bytes and no allocation while
//! empty.
//!
//! A profile carries its dedup set and its identity links whether or not it ever ingested an event or
//! was linked (72 bytes inline between them); a profile written only through `put` never fills either.
//! `Sparse` holds such a part as a pointer that is null while the part is empty: reading it then reads a
//! shared, static empty value ([`Empty::empty`]), and the first write allocates it.
//!
//! Guarantees: a `Sparse<T>` compares, prints and encodes (serde and bincode) exactly as the `T` it
//! holds, so the representation can never change a merge or a record: an empty part decodes to the
//! null pointer, and an allocated part that became empty again still equals an empty one. Mutable access
//! is explicit: [`Sparse::get_mut`] allocates (for a write), [`Sparse::present_mut`] does not (for a
//! pass over what is there, such as an erasure), so a merge or a scan of a million empty parts allocates
//! nothing. Caveat: a part emptied by a write keeps its allocation until the profile is next decoded.

use std::fmt;
use std::ops::Deref;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type with a shared, static empty value: what a [`Sparse`] reads while it holds nothing.
pub trait Empty: Default + PartialEq + 'static {
    /// The empty value (equal to `T::default()`).
    fn empty() -> &'static Self;
}

/// A `T` that is usually empty: a null pointer until the first write.
pub struct Sparse<T>(Option<Box<T>>);

impl<T: Empty> Sparse<T> {
    /// Holds `value`, allocating only if it is not empty.
    pub fn new(value: T) -> Self {
        if value == *T::empty() {
            Sparse(None)
        } else {
            Sparse(Some(Box::new(value)))
        }
    }

    /// The value, for a write: allocated (empty) first if it was not.
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }

    /// The value if it was ever written, for a pass that only changes what is there.
    pub fn present_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// The value if it was ever written (it may have been emptied since).
    pub fn present(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// The value, owned.
    pub fn into_inner(self) -> T {
        self.0.map(|b| *b).unwrap_or_default()
    }
}

impl<T> Default for Sparse<T> {
    fn default() -> Self {
        Sparse(None)
    }
}

impl<T: Empty> Deref for Sparse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(value) => value,
            None => T::empty(),
        }
    }
}

impl<T: Empty> From<T> for Sparse<T> {
    fn from(value: T) -> Self {
        Sparse::new(value)
    }
}

impl<T: Clone> Clone for Sparse<T> {
    fn clone(&self) -> Self {
        Sparse(self.0.clone())
    }
}

impl<T: Empty> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + fmt::Debug> fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Sparse::new)
    }
}

impl<T: Empty + Encode> Encode for Sparse<T> {
    /// As the `T`.
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (**self).encode(encoder)
    }
}

impl<C, T: Empty + Decode<C>> Decode<C> for Sparse<T> {
    /// As the `T`; an empty one allocates nothing.
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        T::decode(decoder).map(Sparse::new)
    }
}

impl<'de, C, T: Empty + BorrowDecode<'de, C>> BorrowDecode<'de, C> for Sparse<T> {
    /// As the `T`; an empty one allocates nothing.
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        T::borrow_decode(decoder).map(Sparse::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Encode, Decode)]
    struct Part {
        n: u32,
        names: Vec<String>,
    }

    impl Empty for Part {
        fn empty() -> &'static Self {
            static EMPTY: Part = Part {
                n: 0,
                names: Vec::new(),
            };
            &EMPTY
        }
    }

    #[test]
    fn empty_is_a_null_pointer_and_reads_as_the_empty_value() {
        assert_eq!(std::mem::size_of::<Sparse<Part>>(), 8);
        let s = Sparse::<Part>::default();
        assert!(s.present().is_none());
        assert_eq!(*s, Part::default());
        assert!(Sparse::new(Part::default()).present().is_none());
    }

    #[test]
    fn a_write_allocates_and_a_pass_over_what_is_there_does_not() {
        let mut s = Sparse::<Part>::default();
        assert!(s.present_mut().is_none(), "nothing to pass over");
        assert!(s.present().is_none(), "and asking allocated nothing");
        s.get_mut().n = 3;
        assert_eq!(s.n, 3);
        s.get_mut().n = 0;
        assert!(s.present().is_some(), "emptied by a write, still allocated");
        assert_eq!(s, Sparse::default(), "but equal to the empty one");
    }

    /// Encodes as the `T` both ways, and an empty part decodes to the null pointer.
    #[test]
    fn encodes_as_the_value() {
        let cfg = bincode::config::standard();
        for part in [
            Part::default(),
            Part {
                n: 7,
                names: vec!["a".into()],
            },
        ] {
            let sparse = Sparse::new(part.clone());
            let bytes = bincode::encode_to_vec(&sparse, cfg).expect("encodes");
            assert_eq!(bytes, bincode::encode_to_vec(&part, cfg).expect("encodes"));
            let (back, _): (Sparse<Part>, usize) =
                bincode::decode_from_slice(&bytes, cfg).expect("decodes");
            let (borrowed, _): (Sparse<Part>, usize) =
                bincode::borrow_decode_from_slice(&bytes, cfg).expect("decodes");
            assert_eq!(back.present().is_some(), part != Part::default());
            assert_eq!(back.into_inner(), part);
            assert_eq!(borrowed.into_inner(), part);
            let json = serde_json::to_string(&sparse).expect("serializes");
            assert_eq!(json, serde_json::to_string(&part).expect("serializes"));
            let back: Sparse<Part> = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(*back, part);
        }
    }
}
