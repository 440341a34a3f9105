//! The featurestore node: durable storage, the QUIC server and the runtime that wires the I/O-free core
//! (`featurestore`) to the network and the disk.

pub mod certs;
pub mod error;
pub mod storage;
pub mod tls;

pub use error::Error;
