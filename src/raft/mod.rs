//! The Raft layer: durable storage of the metadata log, and (next) the openraft adapters.

pub mod segment_log;
