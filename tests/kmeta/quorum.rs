//! In-process controller quorums on 127.0.0.1: real TCP between nodes, real disks.

use kmeta::controller::Controller;
use kmeta::raft::log_store::LogStore;
use kmeta::raft::network::{serve, NetworkFactory, Raft};
use kmeta::raft::state_machine::StateMachine;
use kmeta::raft::types::MetadataBatch;
use kmeta_metadata::controller::ControllerConfig;
use kmeta_metadata::record::{FeatureLevelRecord, MetadataRecord};
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Node {
    pub raft: Raft,
    pub sm: StateMachine,
    pub controller: Controller,
    server: JoinHandle<()>,
    controller_task: JoinHandle<()>,
}

pub const SESSION_TIMEOUT_MS: u64 = 1_000;

fn config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            cluster_name: "kmeta-test".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        }
        .validate()
        .expect("valid raft config"),
    )
}

async fn start(id: u64, listener: TcpListener, dir: &Path) -> Node {
    let log = LogStore::open(&dir.join("log")).unwrap();
    let sm = StateMachine::open(&dir.join("sm")).unwrap();
    let raft = Raft::new(id, config(), NetworkFactory, log, sm.clone())
        .await
        .unwrap();
    let server = tokio::spawn(serve(
        listener,
        raft.clone(),
        sm.clone(),
        std::future::pending(),
    ));
    let config = ControllerConfig {
        cluster_id: "test-cluster".into(),
        session_timeout_ms: SESSION_TIMEOUT_MS,
        ..ControllerConfig::default()
    };
    let (controller, controller_task) = Controller::start(id, raft.clone(), sm.clone(), config);
    Node {
        raft,
        sm,
        controller,
        server,
        controller_task,
    }
}

pub async fn stop(node: Node) {
    node.controller_task.abort();
    node.server.abort();
    let _ = node.server.await;
    node.raft.shutdown().await.unwrap();
}

pub struct Cluster {
    _dir: tempfile::TempDir,
    dirs: BTreeMap<u64, PathBuf>,
    addrs: BTreeMap<u64, String>,
    pub nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    pub async fn start(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.insert(id, l.local_addr().unwrap().to_string());
            listeners.insert(id, l);
            dirs.insert(id, dir.path().join(format!("node-{id}")));
        }
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            nodes.insert(id, start(id, l, &dirs[&id]).await);
        }
        let members: BTreeMap<u64, BasicNode> = addrs
            .iter()
            .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
            .collect();
        nodes[&1].raft.initialize(members).await.unwrap();
        Cluster {
            _dir: dir,
            dirs,
            addrs,
            nodes,
        }
    }

    pub async fn leader(&self, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for node in self.nodes.values() {
                let m = node.raft.metrics().borrow_watched().clone();
                if let Some(l) = m.current_leader {
                    if self.nodes.contains_key(&l)
                        && self.nodes[&l]
                            .raft
                            .metrics()
                            .borrow_watched()
                            .current_leader
                            == Some(l)
                    {
                        return l;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes one batch through whoever leads, retrying while leadership moves (a deposed
    /// leader answers ForwardToLeader, as it must).
    async fn write(&self, n: u16) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.leader(Duration::from_secs(10)).await;
            let batch = MetadataBatch(vec![MetadataRecord::FeatureLevel(FeatureLevelRecord {
                name: format!("f{n}"),
                level: n + 1,
            })]);
            match self.nodes[&leader].raft.client_write(batch).await {
                Ok(r) => return r.log_id.index(),
                Err(e)
                    if e.forward_to_leader().is_some()
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("write {n} failed: {e}"),
            }
        }
    }

    pub async fn wait_applied(&self, index: u64) {
        for (id, node) in &self.nodes {
            node.raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(index), "applied")
                .await
                .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
        }
    }

    fn hashes(&self) -> Vec<[u8; 32]> {
        self.nodes
            .values()
            .map(|n| n.sm.image().canonical_hash())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_to_every_controller() {
    let cluster = Cluster::start(3).await;
    let mut last = 0;
    for n in 0..20 {
        last = cluster.write(n).await;
    }
    cluster.wait_applied(last).await;
    let hashes = cluster.hashes();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(cluster.nodes[&1].sm.image().features().len(), 20);
    for (_, node) in cluster.nodes {
        stop(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_node_catches_up_from_disk() {
    let mut cluster = Cluster::start(3).await;
    for n in 0..5 {
        cluster.write(n).await;
    }
    let old = cluster.leader(Duration::from_secs(10)).await;
    stop(cluster.nodes.remove(&old).unwrap()).await;
    let new = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    let mut last = 0;
    for n in 5..10 {
        last = cluster.write(n).await;
    }
    // The old leader comes back from its own directory and catches up.
    let listener = TcpListener::bind(&cluster.addrs[&old]).await.unwrap();
    let node = start(old, listener, &cluster.dirs[&old]).await;
    cluster.nodes.insert(old, node);
    cluster.wait_applied(last).await;
    let hashes = cluster.hashes();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "all controllers hold the same image"
    );
    assert_eq!(cluster.nodes[&old].sm.image().features().len(), 10);
    for (_, node) in cluster.nodes {
        stop(node).await;
    }
}
