//! kmeta's one integration-test binary.

mod acls;
mod admin;
mod brokers;
mod clients;
mod cluster;
mod controller;
mod data;
mod dev;
mod groups;
mod hostile;
mod node_security;
mod processes;
mod quorum;
mod raft_storage;
mod security;
mod sim;
mod versions;
