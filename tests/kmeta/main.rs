//! kmeta's one integration-test binary.

mod quorum;
mod raft_storage;
