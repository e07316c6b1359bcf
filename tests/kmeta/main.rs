//! kmeta's one integration-test binary.

mod controller;
mod processes;
mod quorum;
mod raft_storage;
