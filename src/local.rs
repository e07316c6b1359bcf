//! `LocalQuorum`: several controllers in one process on 127.0.0.1, each with its own data
//! directory and real TCP between them. Used by tests, the benchmarks, and (next) `kmeta dev`.

use crate::controller::kafka_api::ControllerService;
use crate::controller::Controller;
use crate::kafka::listener::Limits;
use crate::raft::log_store::LogStore;
use crate::raft::network::{serve, LinkFaults, NetworkFactory, Raft, DEFAULT_REQUEST_TIMEOUT};
use crate::raft::state_machine::StateMachine;
use kmeta_metadata::controller::ControllerConfig;
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One controller of a local quorum.
pub struct LocalNode {
    /// Its Raft instance.
    pub raft: Raft,
    /// Its committed image.
    pub sm: StateMachine,
    /// Its controller loop.
    pub controller: Controller,
    /// Its Raft log.
    pub log: LogStore,
    server: JoinHandle<()>,
    controller_task: JoinHandle<()>,
}

impl LocalNode {
    /// Starts a controller on `listener` with data in `dir`.
    pub async fn start(
        id: u64,
        listener: TcpListener,
        dir: &Path,
        raft_config: Arc<openraft::Config>,
        controller_config: ControllerConfig,
        faults: LinkFaults,
    ) -> io::Result<LocalNode> {
        let log = LogStore::open(&dir.join("log"))?;
        let sm = StateMachine::open(&dir.join("sm"))?;
        let raft = Raft::new(
            id,
            raft_config,
            NetworkFactory::with_faults(id, DEFAULT_REQUEST_TIMEOUT, faults),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
        let (controller, controller_task) =
            Controller::start(id, raft.clone(), sm.clone(), controller_config);
        let kafka = Arc::new(ControllerService::new(
            id,
            controller.clone(),
            raft.clone(),
            sm.clone(),
        ));
        let server = tokio::spawn(serve(
            listener,
            raft.clone(),
            sm.clone(),
            kafka,
            Limits::default(),
            Default::default(),
            std::future::pending(),
        ));
        Ok(LocalNode {
            raft,
            sm,
            controller,
            log,
            server,
            controller_task,
        })
    }

    /// Stops the node: no more RPCs served, Raft shut down (its files stay).
    pub async fn stop(self) {
        self.controller_task.abort();
        self.server.abort();
        let _ = self.server.await;
        let _ = self.raft.shutdown().await;
    }
}

/// A quorum of controllers in this process.
pub struct LocalQuorum {
    /// Data directory per node.
    pub dirs: BTreeMap<u64, PathBuf>,
    /// `host:port` per node.
    pub addrs: BTreeMap<u64, String>,
    /// Running nodes (a stopped node is removed).
    pub nodes: BTreeMap<u64, LocalNode>,
    raft_config: Arc<openraft::Config>,
    controller_config: ControllerConfig,
    /// Injected link faults between the nodes (tests cut and heal links here).
    pub faults: LinkFaults,
}

/// Raft timing for local quorums: the server's at its default 1,000 ms election timeout
/// (an election after 1.05–1.2 s of silence).
pub fn local_raft_config() -> Arc<openraft::Config> {
    crate::server::raft_timing(1_000).expect("valid raft config")
}

impl LocalQuorum {
    /// Starts `n` controllers under `base` on ephemeral ports and initializes the quorum.
    pub async fn start(
        n: u64,
        base: &Path,
        controller_config: ControllerConfig,
    ) -> io::Result<LocalQuorum> {
        let raft_config = local_raft_config();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            addrs.insert(id, l.local_addr()?.to_string());
            listeners.insert(id, l);
            dirs.insert(id, base.join(format!("controller-{id}")));
        }
        let faults = LinkFaults::default();
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            let node = LocalNode::start(
                id,
                l,
                &dirs[&id],
                raft_config.clone(),
                controller_config.clone(),
                faults.clone(),
            )
            .await?;
            nodes.insert(id, node);
        }
        let members: BTreeMap<u64, BasicNode> = addrs
            .iter()
            .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
            .collect();
        for node in nodes.values() {
            // Identical initialization on every voter is safe; the vote picks one leader.
            let _ = node.raft.initialize(members.clone()).await;
        }
        Ok(LocalQuorum {
            dirs,
            addrs,
            nodes,
            raft_config,
            controller_config,
            faults,
        })
    }

    /// The node every running node agrees leads, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for node in self.nodes.values() {
                if let Some(l) = node.raft.metrics().borrow_watched().current_leader {
                    let agreed = self.nodes.get(&l).is_some_and(|n| {
                        n.raft.metrics().borrow_watched().current_leader == Some(l)
                    });
                    if agreed {
                        return Some(l);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The leading node and its controller, once that controller is active (it answers a
    /// decision), waiting up to `within`.
    pub async fn active_controller(&self, within: Duration) -> Option<(u64, Controller)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(leader) = self.leader(Duration::from_millis(200)).await {
                let c = self.nodes[&leader].controller.clone();
                let probe = c
                    .submit(|_| Ok(kmeta_metadata::controller::ControllerResult::reply_only(())))
                    .await;
                if probe.is_ok() {
                    return Some((leader, c));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops one node (its files stay).
    pub async fn stop_node(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.stop().await;
        }
    }

    /// Restarts a stopped node from its directory on its old address.
    pub async fn restart_node(&mut self, id: u64) -> io::Result<()> {
        let listener = TcpListener::bind(&self.addrs[&id]).await?;
        let node = LocalNode::start(
            id,
            listener,
            &self.dirs[&id],
            self.raft_config.clone(),
            self.controller_config.clone(),
            self.faults.clone(),
        )
        .await?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops every node.
    pub async fn stop(self) {
        for (_, node) in self.nodes {
            node.stop().await;
        }
    }
}
