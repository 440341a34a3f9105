//! Everything that crosses a process boundary: the [`client`] protocol, the [`peer`] messages between
//! nodes, ingested [`event`]s, the records of a node's [`dead_letter`] queue, [`encoded_view`]s read where they lie, and the [`codec`] that turns both (and stored records) into bytes and back under a decode budget.
//!
//! Only this layer knows the encoding; the layers below it (`crdt`, `profile`, `cluster`) derive
//! `Encode`/`Decode` on their types but never encode or decode themselves.

pub mod client;
pub mod codec;
pub mod dead_letter;
pub mod encoded_view;
pub mod event;
pub mod peer;
pub mod reply;
pub mod segment;
