//! The Raft layer: the durable metadata log and its openraft adapters.

pub mod log_store;
pub mod network;
pub mod segment_log;
pub mod state_file;
pub mod state_machine;
pub mod types;
