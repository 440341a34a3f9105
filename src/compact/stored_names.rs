//! Names as a node's stored records number them: the persisted symbol table.
//!
//! A profile record names each of its features and, in every marker, dot and slot, a node. Written as
//! text, the names are a large part of a twenty-feature record, and decoding them is a UTF-8 check and a
//! lookup in the interning tables per name, for forty names per record at every restart. A
//! [`StoredNames`] numbers the feature names and the node names a node's records use, once for the
//! node: a record written *with* it ([`StoredNames::encoding`]) carries small numbers instead, and a
//! record read with it ([`NameColumns::decoding`]) gets each name back as a copy of the table's
//! [`Symbol`] or [`NodeName`], with no text to check.
//!
//! # Guarantees
//!
//! * Inside [`StoredNames::encoding`] and [`NameColumns::decoding`] a name is one varint *tag*: `0`
//!   then the name's text (exactly as outside: a `String`), or `n + 1` for the name numbered `n`.
//!   Outside them (wire frames, logged deltas, the digests replicas compare) names are text, as they
//!   always were: the numbering is node-local and never leaves the node's own store.
//! * A name keeps its number for the life of the data directory: numbers are only ever appended. The
//!   storage engine persists the numbers an encoding added ([`StoredNames::unsaved`]) durably *before*
//!   any record that uses them, so a record on disk never names a number the table lost in a crash.
//! * Bounded: at most [`MAX_STORED_NAMES`] of each kind. A name past the bound is written as text (tag
//!   0), which every reader reads: correct, just not shorter.
//! * Reading never trusts the bytes: a number the table does not hold is a decode error (the record is
//!   counted corrupt by its caller), never a panic, and never another name.
//!
//! # How
//!
//! Symbol and node id encoders consult a thread-local slot that the two scopes fill for the duration
//! of one call, the way [`decoding_legacy_actors`](crate::hlc::decoding_legacy_actors) switches the
//! actor format: bincode's `Encode` takes no context, and one set of types then writes both forms. The
//! encoding scope moves the table into the slot and back out (no lock per name, no `unsafe`); the
//! decoding scope lends a shared, immutable snapshot ([`NameColumns`]) for the one call and takes it
//! back, so decoder threads read one table without a lock, and no thread keeps a snapshot alive after
//! its call (a kept one would make every new number copy the table: copy-on-write). [`Symbol`]'s bincode impls live here, beside the tag they read.
//!
//! # Caveats
//!
//! * A record written with the table can only be read with it: records are not portable between data
//!   directories as bytes (they never were shipped as bytes; replication sends text).
//! * The table never shrinks: a name no record uses any more keeps its number.
//! * Scopes do not nest on one thread: inside an encoding, another table's encoding numbers with the
//!   first one. On a thread being torn down (its thread-locals gone) an encoding writes text, which
//!   reads, and a decoding reads text, so a numbered record then fails to decode (counted corrupt)
//!   rather than reading as something else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

use super::{NodeName, Symbol};

/// The most names of each kind (features, nodes) a [`StoredNames`] numbers; past it names are stored
/// as text.
pub const MAX_STORED_NAMES: usize = 1 << 18;

/// Slots of a table's cache of feature numbers (a power of two).
const FEATURE_CACHE: usize = 256;

/// The two kinds of name a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A feature name (a [`Symbol`]).
    Feature,
    /// A node id's name (a [`NodeName`]).
    Node,
}

/// The numbered names, by number: what a decoder needs. A missing number (a gap left by a damaged
/// table) reads as a decode error.
#[derive(Clone, Debug, Default)]
pub struct NameColumns {
    features: Vec<Option<Symbol>>,
    nodes: Vec<Option<NodeName>>,
}

/// A node's numbering of the names its stored records use (see the module's documentation).
#[derive(Debug)]
pub struct StoredNames {
    columns: Arc<NameColumns>,
    feature_numbers: HashMap<Symbol, u32>,
    /// In front of `feature_numbers`: interned names by their address, direct-mapped
    /// ([`FEATURE_CACHE`] slots, allocated at the first encoding), so a record's twenty names cost no
    /// text hash each.
    feature_cache: Box<[(usize, u32)]>,
    /// Node numbers by the node's [`NodeName::process_index`] (`u32::MAX`: none yet): a cluster names
    /// few nodes, and the process table numbers them densely.
    node_numbers: Vec<u32>,
    /// How many of each kind the storage has persisted: numbers from these on are [`Self::unsaved`].
    saved_features: usize,
    saved_nodes: usize,
}

thread_local! {
    /// The table an encoding on this thread numbers names with ([`StoredNames::encoding`]).
    static ENCODING: RefCell<Option<StoredNames>> = const { RefCell::new(None) };
    /// The snapshot a decoding on this thread reads numbers with ([`NameColumns::decoding`]); `None`
    /// outside one.
    static DECODING: RefCell<Option<Arc<NameColumns>>> = const { RefCell::new(None) };
}

/// The empty snapshot every empty table shares, so the placeholder an encoding leaves behind
/// ([`StoredNames::encoding`] moves the table out) allocates nothing.
static NO_COLUMNS: LazyLock<Arc<NameColumns>> = LazyLock::new(Arc::default);

impl Default for StoredNames {
    fn default() -> StoredNames {
        StoredNames {
            columns: Arc::clone(&NO_COLUMNS),
            feature_numbers: HashMap::new(),
            feature_cache: Box::default(),
            node_numbers: Vec::new(),
            saved_features: 0,
            saved_nodes: 0,
        }
    }
}

impl StoredNames {
    /// An empty table (a new data directory).
    pub fn new() -> StoredNames {
        StoredNames::default()
    }

    /// The table as persisted: each name with its number, `None` for an entry whose text was damaged
    /// (its number stays taken and reads as an error, so it is never given to another name). Entries
    /// past [`MAX_STORED_NAMES`] are ignored (records then hold such names as text). Everything
    /// restored counts as saved.
    pub fn restore(
        features: impl IntoIterator<Item = (u32, Option<Symbol>)>,
        nodes: impl IntoIterator<Item = (u32, Option<NodeName>)>,
    ) -> StoredNames {
        fn place<T>(column: &mut Vec<Option<T>>, number: u32, value: Option<T>) -> bool {
            let at = number as usize;
            if at >= MAX_STORED_NAMES {
                return false;
            }
            if column.len() <= at {
                column.resize_with(at + 1, || None);
            }
            column[at] = value;
            true
        }
        let mut names = StoredNames::default();
        let mut columns = NameColumns::default();
        for (number, symbol) in features {
            if place(&mut columns.features, number, symbol.clone()) {
                if let Some(symbol) = symbol {
                    names.feature_numbers.insert(symbol, number);
                }
            }
        }
        for (number, node) in nodes {
            if place(&mut columns.nodes, number, node) {
                if let Some(node) = node {
                    names.set_node_number(node, number);
                }
            }
        }
        names.saved_features = columns.features.len();
        names.saved_nodes = columns.nodes.len();
        names.columns = Arc::new(columns);
        names
    }

    /// How many names of each kind are numbered (features, nodes), gaps included.
    pub fn len(&self) -> (usize, usize) {
        (self.columns.features.len(), self.columns.nodes.len())
    }

    /// Whether no name is numbered.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// The snapshot decoders read with; it does not see numbers added after it was taken.
    pub fn columns(&self) -> Arc<NameColumns> {
        Arc::clone(&self.columns)
    }

    /// Runs `encode` with names written as numbers from this table, adding a number for each name it
    /// does not hold yet (while there is room). The added numbers are [`Self::unsaved`] until
    /// [`Self::mark_saved`].
    pub fn encoding<T>(&mut self, encode: impl FnOnce() -> T) -> T {
        /// Takes the table back however `encode` ends.
        struct Return<'a>(&'a mut StoredNames);
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Ok(Some(table)) = ENCODING.try_with(|slot| slot.borrow_mut().take()) {
                    *self.0 = table;
                }
            }
        }
        // Scopes do not nest: inside another encoding on this thread, that one's table numbers.
        let free = ENCODING.try_with(|slot| slot.try_borrow().is_ok_and(|s| s.is_none()));
        if free != Ok(true) {
            return encode();
        }
        let table = std::mem::take(self);
        let _ = ENCODING.try_with(|slot| *slot.borrow_mut() = Some(table));
        let _return = Return(self);
        encode()
    }

    /// The names numbered since the last [`Self::mark_saved`]: (kind, number, text), in number order.
    pub fn unsaved(&self) -> Vec<(NameKind, u32, &str)> {
        let features = self.columns.features.iter().enumerate();
        let features = features
            .skip(self.saved_features)
            .filter_map(|(n, s)| Some((NameKind::Feature, n as u32, s.as_ref()?.as_str())));
        let nodes = self.columns.nodes.iter().enumerate().skip(self.saved_nodes);
        let nodes =
            nodes.filter_map(|(n, s)| Some((NameKind::Node, n as u32, s.as_ref()?.as_str())));
        features.chain(nodes).collect()
    }

    /// Records that every number so far is persisted.
    pub fn mark_saved(&mut self) {
        (self.saved_features, self.saved_nodes) = self.len();
    }

    /// The number of `symbol`, added if new and there is room.
    fn feature_number(&mut self, symbol: &Symbol) -> Option<u32> {
        let cached = symbol.interned_address().map(|address| {
            if self.feature_cache.is_empty() {
                self.feature_cache = vec![(0, 0); FEATURE_CACHE].into_boxed_slice();
            }
            (address, (address >> 3) % FEATURE_CACHE)
        });
        if let Some((address, slot)) = cached {
            if let Some(&(held, n)) = self.feature_cache.get(slot) {
                if held == address {
                    return Some(n);
                }
            }
        }
        let n = match self.feature_numbers.get(symbol) {
            Some(&n) => n,
            None => {
                let n = self.columns.features.len();
                if n >= MAX_STORED_NAMES {
                    return None;
                }
                Arc::make_mut(&mut self.columns)
                    .features
                    .push(Some(symbol.clone()));
                self.feature_numbers.insert(symbol.clone(), n as u32);
                n as u32
            }
        };
        if let Some((address, slot)) = cached {
            if let Some(entry) = self.feature_cache.get_mut(slot) {
                *entry = (address, n);
            }
        }
        Some(n)
    }

    /// The number of `node`, added if new and there is room.
    fn node_number(&mut self, node: NodeName) -> Option<u32> {
        let known = self.node_numbers.get(node.process_index() as usize);
        if let Some(&n) = known.filter(|&&n| n != u32::MAX) {
            return Some(n);
        }
        let n = self.columns.nodes.len();
        if n >= MAX_STORED_NAMES {
            return None;
        }
        Arc::make_mut(&mut self.columns).nodes.push(Some(node));
        self.set_node_number(node, n as u32);
        Some(n as u32)
    }

    fn set_node_number(&mut self, node: NodeName, number: u32) {
        let at = node.process_index() as usize;
        if self.node_numbers.len() <= at {
            self.node_numbers.resize(at + 1, u32::MAX);
        }
        self.node_numbers[at] = number;
    }
}

impl NameColumns {
    /// Runs `decode` with names read as numbers of this snapshot (tag `0`: text).
    pub fn decoding<T>(self: &Arc<Self>, decode: impl FnOnce() -> T) -> T {
        /// Puts back what the slot held however `decode` ends.
        struct Leave(Option<Arc<NameColumns>>);
        impl Drop for Leave {
            fn drop(&mut self) {
                let before = self.0.take();
                let _ = DECODING.try_with(|slot| *slot.borrow_mut() = before);
            }
        }
        let lent = DECODING.try_with(|slot| {
            let mut slot = slot.try_borrow_mut().ok()?;
            Some(slot.replace(Arc::clone(self)))
        });
        match lent {
            Ok(Some(before)) => {
                let _leave = Leave(before);
                decode()
            }
            // The thread is being torn down: a record needing the table then fails to decode.
            _ => decode(),
        }
    }
}

/// How one name is written.
enum Written {
    /// Outside any encoding scope: the text alone, as a `String` encodes.
    Text,
    /// Inside one, without a number (no room): tag 0, then the text.
    TaggedText,
    /// Inside one, numbered.
    Number(u32),
}

/// How this thread writes a name now, numbering it with `number` inside an encoding scope.
fn written(number: impl FnOnce(&mut StoredNames) -> Option<u32>) -> Written {
    ENCODING
        .try_with(|slot| match slot.try_borrow_mut() {
            Ok(mut slot) => match slot.as_mut() {
                None => Written::Text,
                Some(table) => number(table).map_or(Written::TaggedText, Written::Number),
            },
            // Only `written` borrows the slot, and it encodes nothing while it does; were it ever
            // busy, a scope is open, so its readers expect a tag.
            Err(_) => Written::TaggedText,
        })
        .unwrap_or(Written::Text)
}

fn encode_name<E: Encoder>(
    written: Written,
    text: &str,
    encoder: &mut E,
) -> Result<(), EncodeError> {
    match written {
        Written::Text => text.encode(encoder),
        Written::TaggedText => {
            0u32.encode(encoder)?;
            text.encode(encoder)
        }
        Written::Number(n) => (n + 1).encode(encoder),
    }
}

/// Inside a decoding scope, reads a name's tag: `Ok(Some(_))` for a number (looked up in `column`),
/// `Ok(None)` when the text follows (tag 0, or outside any scope).
fn read_tagged<T: Clone, D: Decoder>(
    decoder: &mut D,
    column: fn(&NameColumns) -> &[Option<T>],
    what: &str,
) -> Result<Option<T>, DecodeError> {
    let read = DECODING.try_with(|slot| {
        let slot = slot.try_borrow().ok()?;
        let columns = slot.as_deref()?;
        let read = u32::decode(decoder).and_then(|tag| {
            let Some(number) = tag.checked_sub(1) else {
                return Ok(None);
            };
            match column(columns).get(number as usize) {
                Some(Some(name)) => Ok(Some(name.clone())),
                _ => Err(DecodeError::OtherString(format!(
                    "{what} number {number} is not in the stored name table"
                ))),
            }
        });
        Some(read)
    });
    // Outside a decoding scope (or on a thread being torn down) names are text.
    read.ok().flatten().unwrap_or(Ok(None))
}

impl Encode for Symbol {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        // Outside a stored record: exactly as a `String` encodes, length then bytes.
        let written = written(|table| table.feature_number(self));
        encode_name(written, self.as_str(), encoder)
    }
}

impl<C> Decode<C> for Symbol {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        if let Some(symbol) = read_tagged(decoder, |c| c.features.as_slice(), "feature name")? {
            return Ok(symbol);
        }
        let text = String::decode(decoder)?;
        Ok(Symbol::new(&text))
    }
}

impl<'de, C> BorrowDecode<'de, C> for Symbol {
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        if let Some(symbol) = read_tagged(decoder, |c| c.features.as_slice(), "feature name")? {
            return Ok(symbol);
        }
        let text = <&str as BorrowDecode<'de, C>>::borrow_decode(decoder)?;
        Ok(Symbol::new(text))
    }
}

/// Encodes a node's name: text outside a stored record, a number (or tag 0 and text) inside one. For
/// [`NodeId`](crate::hlc::NodeId)'s encoder.
pub fn encode_node<E: Encoder>(node: NodeName, encoder: &mut E) -> Result<(), EncodeError> {
    let written = written(|table| table.node_number(node));
    encode_name(written, node.as_str(), encoder)
}

/// Reads a node's name where it is numbered: `Ok(Some(_))` for a number, `Ok(None)` when the text
/// follows (outside a stored record, or tag 0), for the caller to read and validate. For
/// [`NodeId`](crate::hlc::NodeId)'s decoder.
pub fn decode_node<D: Decoder>(decoder: &mut D) -> Result<Option<NodeName>, DecodeError> {
    read_tagged(decoder, |c| c.nodes.as_slice(), "node name")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(symbol: &Symbol) -> Vec<u8> {
        bincode::encode_to_vec(symbol, bincode::config::standard()).expect("encodes")
    }

    fn decoded(bytes: &[u8]) -> Result<Symbol, DecodeError> {
        bincode::decode_from_slice(bytes, bincode::config::standard()).map(|(s, _)| s)
    }

    /// Inside an encoding a name is its number plus one; outside, its text; the table comes back to its
    /// owner even when the encoding panics.
    #[test]
    fn a_scope_numbers_names_and_always_returns_the_table() {
        let name = Symbol::new("stored_names_test_a");
        let text = encoded(&name);
        let mut names = StoredNames::new();
        let numbered = names.encoding(|| encoded(&name));
        assert_eq!(numbered, [1], "number 0, tag 1");
        assert_eq!(encoded(&name), text, "text outside the scope");
        assert_eq!(names.len(), (1, 0));

        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            names.encoding(|| {
                let _ = encoded(&Symbol::new("stored_names_test_b"));
                panic!("an encoder failed");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(
            names.len(),
            (2, 0),
            "the table, with what it numbered, is back"
        );
        assert_eq!(encoded(&name), text, "and the scope is closed");

        // Decoding: a number reads as its name, tag 0 as text, and nothing outside the scope.
        let columns = names.columns();
        assert_eq!(
            columns.decoding(|| decoded(&numbered)).expect("decodes"),
            name
        );
        let mut tagged_text = vec![0];
        tagged_text.extend_from_slice(&text);
        assert_eq!(
            columns.decoding(|| decoded(&tagged_text)).expect("decodes"),
            name
        );
        assert!(
            columns.decoding(|| decoded(&[9])).is_err(),
            "number 8 is not held"
        );
        assert_eq!(
            decoded(&text).expect("decodes"),
            name,
            "text outside the scope"
        );
    }

    /// A restored table leaves gaps and damaged entries unreadable, numbers new names after its last
    /// number (a damaged one included), and counts what it restored as saved.
    #[test]
    fn a_restored_table_appends_after_its_last_number() {
        let mut names = StoredNames::restore(
            [
                (0, Some(Symbol::new("r0"))),
                (2, Some(Symbol::new("r2"))),
                (4, None),
            ],
            [],
        );
        assert_eq!(names.len(), (5, 0));
        assert!(names.unsaved().is_empty());
        let columns = names.columns();
        assert!(columns.decoding(|| decoded(&[2])).is_err(), "the gap");
        assert!(
            columns.decoding(|| decoded(&[5])).is_err(),
            "the damaged entry"
        );
        assert_eq!(names.encoding(|| encoded(&Symbol::new("r2"))), [3]);
        assert_eq!(names.encoding(|| encoded(&Symbol::new("r5"))), [6]);
        assert_eq!(
            names.unsaved(),
            vec![(NameKind::Feature, 5, "r5")],
            "only the new name waits to be saved"
        );
        // A snapshot taken before does not see it: a reader takes the snapshot after the writes.
        assert!(columns.decoding(|| decoded(&[6])).is_err());
        assert_eq!(
            names.columns().decoding(|| decoded(&[6])).expect("decodes"),
            Symbol::new("r5")
        );
    }
}
