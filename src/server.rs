//! `kmeta server`: runs one node from its configuration.
//!
//! A controller opens its metadata log and image from `log.dirs`, serves Raft on its
//! `CONTROLLER` listener, and joins the quorum named by `controller.quorum.voters`. On an empty
//! log every voter initializes the cluster with that same voter set (openraft allows identical
//! initialization on several nodes; the vote picks one leader).

use crate::config::NodeConfig;
use crate::raft::log_store::LogStore;
use crate::raft::network::{serve, NetworkFactory, Raft};
use crate::raft::state_machine::StateMachine;
use openraft::{BasicNode, SnapshotPolicy};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Raft timing derived from `controller.quorum.election.timeout.ms`: elections start after
/// one to two election timeouts of silence; the leader heartbeats five times per timeout.
pub fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>, String> {
    let election = config.election_timeout_ms;
    let raft = openraft::Config {
        cluster_name: "kmeta".into(),
        heartbeat_interval: (election / 5).max(10),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // Snapshot by entry count: each entry is one controller batch. Byte and age triggers
        // (metadata.log.max.record.bytes.between.snapshots / .snapshot.interval.ms) come with
        // the controller loop.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    };
    raft.validate()
        .map(Arc::new)
        .map_err(|e| format!("controller.quorum.election.timeout.ms: {e}"))
}

/// Runs the node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let meta = crate::storage::check_formatted(&config)?;
    for key in &config.unknown_keys {
        tracing::warn!(key = %key, "unknown config key ignored");
    }
    if config.roles.broker {
        return Err(
            "process.roles: the broker role is not implemented yet; run controllers only".into(),
        );
    }
    let listener_cfg = config
        .listener(&config.controller_listener_name)
        .expect("validated: controllers have a controller listener");
    let listener = TcpListener::bind(listener_cfg.addr())
        .await
        .map_err(|e| format!("listeners: cannot bind {}: {e}", listener_cfg.addr()))?;
    let dir = config.metadata_dir();
    let log = LogStore::open(&dir.join("log"))
        .map_err(|e| format!("metadata log in {}: {e}", dir.display()))?;
    let sm = StateMachine::open(&dir.join("sm"))
        .map_err(|e| format!("metadata image in {}: {e}", dir.display()))?;
    let raft = Raft::new(
        config.node_id,
        raft_config(&config)?,
        NetworkFactory::new(config.node_id),
        log,
        sm.clone(),
    )
    .await
    .map_err(|e| format!("raft failed to start: {e}"))?;
    tracing::info!(
        node_id = config.node_id,
        cluster_id = %meta.cluster_id,
        listener = %listener_cfg.addr(),
        "controller started"
    );
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| format!("raft: {e}"))?;
    if !initialized {
        let voters: BTreeMap<u64, BasicNode> = config
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        if let Err(e) = raft.initialize(voters).await {
            tracing::info!(%e, "quorum already initialized elsewhere");
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, raft.clone(), sm, async {
        let _ = stop_rx.await;
    }));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = server.await;
    raft.shutdown()
        .await
        .map_err(|e| format!("raft shutdown: {e}"))?;
    Ok(())
}
