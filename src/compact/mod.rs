//! Compact in-memory representations: what keeps a profile small without changing what it means.
//!
//! - [`Symbol`]: an interned, immutable name (feature names). Every copy of one name shares one
//!   allocation, so a million profiles with the same twenty feature names hold twenty strings, not twenty
//!   million; a copy of an interned name touches no reference count (it is static).
//! - [`NodeName`]: a node id as a 4-byte index into a process-wide table of node names, so a marker
//!   (timestamp and node) is 16 bytes; ordered and hashed by its text, never by the index.
//! - [`Sparse`]: a part most profiles leave empty (the dedup set, the identity links) as one pointer,
//!   null while empty, reading as a shared static empty value.
//! - [`StoredNames`]: the node's persisted numbering of the names its stored records use, so a record
//!   names a feature or a node by a small number instead of its text (names stay text everywhere else).
//! - [`Text`]: a gauge's string value in 16 bytes, inline up to 13 bytes, else one shared allocation.
//! - [`VecMap`]: a map kept as one sorted vector, for the small maps a profile is made of (its features
//!   of each kind, a counter's slots). A `BTreeMap` allocates nodes of eleven entries, so a map of two
//!   entries costs as much as one of eleven; a `VecMap` holds exactly its entries.
//!
//! Guarantees: each encodes exactly as the type it replaces (`String`, `BTreeMap`), with serde and with
//! bincode, so wire frames, logged deltas and version-4 records keep their format (inside a numbered
//! stored record, written and read only through a [`StoredNames`] scope, a name is its number); equality, order and hashing are those
//! of the text and of the sorted entries. Caveat: the interning table only grows, up to
//! [`MAX_INTERNED`] names; a name beyond it still works but is not shared (see [`symbol`]).

pub mod node_name;
pub mod sparse;
pub mod stored_names;
pub mod symbol;
pub mod text;
pub mod vec_map;

pub use node_name::{NodeName, MAX_NODE_NAMES};
pub use sparse::{Empty, Sparse};
pub use stored_names::{NameColumns, NameKind, StoredNames, MAX_STORED_NAMES};
pub use symbol::{Symbol, MAX_INTERNED};
pub use text::{Text, INLINE_TEXT};
pub use vec_map::VecMap;
