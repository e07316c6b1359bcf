//! The core crate's one integration-test binary.

mod cluster;
mod delta;
mod harness;
mod offsets;
mod properties;
mod replication;
