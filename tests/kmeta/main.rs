//! kmeta's one integration-test binary.

mod raft_storage;
