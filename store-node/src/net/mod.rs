//! The transport below the cluster runtime: how bytes get between nodes, and who is on the other end.
//!
//! - [`peer`]: QUIC connections to the other nodes (the peer ALPN), one unidirectional stream per
//!   replication message, bounded outbound queues, and the inbound stream reader.
//! - [`tls`]: the node's mutual-TLS server configuration and the identity (node or client) a verified
//!   certificate names.
//!
//! Frames are read with [`store_client::frame::read_frame`], the one frame reader that the client, the
//! client server and the peer transport share.
//!
//! Layering: `net` knows nothing of the cluster runtime, the engine or the client server. `cluster` drives
//! replication *through* [`peer::Peers`], and `server` (the client-facing QUIC server, which sits *above*
//! `cluster`) uses [`tls`] to tell clients from nodes and hands peer connections to
//! [`peer::read_peer_streams`]. That is why `server.rs` is not in this folder: it would make an import
//! point up.

pub mod peer;
pub mod tls;
