//! kmeta's one integration-test binary.

mod processes;
mod quorum;
mod raft_storage;
