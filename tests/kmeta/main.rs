//! kmeta's one integration-test binary.

mod admin;
mod clients;
mod cluster;
mod controller;
mod dev;
mod hostile;
mod processes;
mod quorum;
mod raft_storage;
