//! Who holds a key: the consistent-hash [`ring`], the gossiped [`membership`] table the rings are built
//! from, the [`detector`] that decides which members are live, and the [`placement`] of a key on the
//! current and target rings.
//!
//! Everything here is pure data and decisions; gossip timing and message exchange belong to
//! [`replication`](crate::replication).

pub mod detector;
pub mod membership;
pub mod placement;
pub mod ring;
