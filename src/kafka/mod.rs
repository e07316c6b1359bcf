//! The Kafka wire protocol: frames, a hardened request decoder, a listener and a client.
//! Built on the `kafka-protocol` crate; see `docs/PROTOCOL.md` for what kmeta adds.

pub mod client;
pub mod connect;
pub mod consumer_protocol;
pub mod listener;
pub mod metadata_log;
pub mod wire;
