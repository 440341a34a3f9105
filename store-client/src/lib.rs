//! The featurestore client.

pub mod tls;
