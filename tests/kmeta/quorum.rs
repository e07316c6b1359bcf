//! In-process controller quorums on 127.0.0.1: real TCP between nodes, real disks.

use kmeta::local::LocalQuorum;
use kmeta::raft::types::{MetadataBatch, Proposal};
use kmeta_metadata::controller::ControllerConfig;
use kmeta_metadata::record::{FeatureLevelRecord, MetadataRecord};
use openraft::async_runtime::WatchReceiver;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

pub const SESSION_TIMEOUT_MS: u64 = 1_000;

/// A local quorum plus the temporary directory it lives in.
pub struct Cluster {
    quorum: LocalQuorum,
    _dir: tempfile::TempDir,
}

impl Deref for Cluster {
    type Target = LocalQuorum;
    fn deref(&self) -> &LocalQuorum {
        &self.quorum
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalQuorum {
        &mut self.quorum
    }
}

impl Cluster {
    pub async fn start(n: u64) -> Cluster {
        // The nodes' logs, printed with a failing test's output (elections, renounces).
        let _ = tracing_subscriber::fmt()
            .with_env_filter("openraft=warn,kmeta=info")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let config = ControllerConfig {
            cluster_id: "test-cluster".into(),
            session_timeout_ms: SESSION_TIMEOUT_MS,
            ..ControllerConfig::default()
        };
        let quorum = LocalQuorum::start(n, dir.path(), config).await.unwrap();
        Cluster { quorum, _dir: dir }
    }

    pub async fn leader(&self, within: Duration) -> u64 {
        self.quorum
            .leader(within)
            .await
            .expect("a leader is elected")
    }

    /// Writes one batch through whoever leads, retrying while leadership moves (a deposed
    /// leader answers ForwardToLeader, as it must).
    async fn write(&self, n: u16) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.leader(Duration::from_secs(10)).await;
            let batch =
                Proposal::unstamped(MetadataBatch::new(vec![MetadataRecord::FeatureLevel(
                    FeatureLevelRecord {
                        name: format!("f{n}"),
                        level: n + 1,
                    },
                )]));
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

    /// Writes one batch for each of `ns` (see [`Cluster::write`]); the last one's index.
    async fn write_range(&self, ns: std::ops::Range<u16>) -> u64 {
        let mut last = 0;
        for n in ns {
            last = self.write(n).await;
        }
        last
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

    pub fn hashes(&self) -> Vec<[u8; 32]> {
        self.nodes
            .values()
            .map(|n| n.sm.image().canonical_hash())
            .collect()
    }

    pub async fn shutdown(self) {
        self.quorum.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_to_every_controller() {
    let cluster = Cluster::start(3).await;
    let last = cluster.write_range(0..20).await;
    cluster.wait_applied(last).await;
    let hashes = cluster.hashes();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(cluster.nodes[&1].sm.image().features().len(), 20);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_controllers_keep_committing_with_two_of_them_down() {
    let mut cluster = Cluster::start(5).await;
    for n in 0..3 {
        cluster.write(n).await;
    }
    // Stop the leader and one follower: three of five remain, still a majority.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.stop_node(leader).await;
    cluster.stop_node(follower).await;
    let last = cluster.write_range(3..8).await;
    cluster.restart_node(leader).await.unwrap();
    cluster.restart_node(follower).await.unwrap();
    cluster.wait_applied(last).await;
    let hashes = cluster.hashes();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "all five hold the same image"
    );
    assert_eq!(cluster.nodes[&leader].sm.image().features().len(), 8);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_node_catches_up_from_disk() {
    let mut cluster = Cluster::start(3).await;
    for n in 0..5 {
        cluster.write(n).await;
    }
    let old = cluster.leader(Duration::from_secs(10)).await;
    cluster.stop_node(old).await;
    let new = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    let last = cluster.write_range(5..10).await;
    // The old leader comes back from its own directory and catches up.
    cluster.restart_node(old).await.unwrap();
    cluster.wait_applied(last).await;
    let hashes = cluster.hashes();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "all controllers hold the same image"
    );
    assert_eq!(cluster.nodes[&old].sm.image().features().len(), 10);
    cluster.shutdown().await;
}

/// `kmeta metadata-shell` reads a stopped controller's directory and returns. Before, opening
/// its copy of the log started writing a spare segment of zeros as large as the reader's
/// unbounded segment size, and waited for it: the shell wrote until the disk was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_shell_reads_a_stopped_controller_and_returns() {
    let mut cluster = Cluster::start(3).await;
    let last = cluster.write_range(0..5).await;
    cluster.wait_applied(last).await;
    cluster.stop_node(1).await;
    let dir = cluster.dirs[&1].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(kmeta::cli::metadata_shell::read(&dir));
    });
    let offline = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the shell returns within 30 s")
        .expect("the shell reads the directory");
    assert_eq!(offline.image.features().len(), 5);
    cluster.shutdown().await;
}

fn feature(name: &str) -> Proposal {
    Proposal::unstamped(MetadataBatch::new(vec![MetadataRecord::FeatureLevel(
        FeatureLevelRecord {
            name: name.into(),
            level: 1,
        },
    )]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_commits_nothing_and_converges_after_healing() {
    let cluster = Cluster::start(3).await;
    cluster.write(0).await;
    let old = cluster.leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != old)
        .collect();
    cluster.faults.isolate(old, others.clone());

    // The isolated leader cannot commit: its write never succeeds.
    let minority = tokio::time::timeout(
        Duration::from_secs(3),
        cluster.nodes[&old].raft.client_write(feature("minority")),
    )
    .await;
    assert!(
        !matches!(minority, Ok(Ok(_))),
        "a minority leader committed a write"
    );

    // The majority elects a new leader and commits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let majority_index = loop {
        let leader = others.iter().copied().find(|id| {
            cluster.nodes[id]
                .raft
                .metrics()
                .borrow_watched()
                .current_leader
                == Some(*id)
        });
        if let Some(l) = leader {
            if let Ok(r) = cluster.nodes[&l]
                .raft
                .client_write(feature("majority"))
                .await
            {
                break r.log_id.index();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the majority did not commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Healed, every node converges on the majority's history.
    cluster.faults.heal();
    cluster.wait_applied(majority_index).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hashes = cluster.hashes();
        if hashes.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not converge"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in cluster.nodes.values() {
        let image = node.sm.image();
        assert!(image.features().contains_key("majority"));
        assert!(
            !image.features().contains_key("minority"),
            "an uncommitted write survived"
        );
    }
    cluster.shutdown().await;
}

/// Writes 30 batches, then has every node snapshot and drop its log behind the snapshot, so
/// that a node that lost its files can only catch up by snapshot. Returns the last index.
async fn snapshot_and_purge_everywhere(cluster: &Cluster) -> u64 {
    let last = cluster.write_range(0..30).await;
    cluster.wait_applied(last).await;
    for node in cluster.nodes.values() {
        node.raft.trigger().snapshot().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while node.sm.snapshot_index().is_none_or(|i| i < last) {
            assert!(tokio::time::Instant::now() < deadline, "no snapshot taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for node in cluster.nodes.values() {
        node.raft.trigger().purge_log(last).await.unwrap();
    }
    // The trigger only asks: wait until every node has dropped the log, or a node that is
    // behind may still be sent the entries instead of the snapshot.
    for node in cluster.nodes.values() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while node
            .raft
            .metrics()
            .borrow_watched()
            .purged
            .is_none_or(|p| p.index() < last)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log was not purged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    last
}

/// Stops a follower (its files stay). Returns its id.
async fn stop_a_follower(cluster: &mut Cluster) -> u64 {
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let victim = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.stop_node(victim).await;
    victim
}

/// Writes once more and checks that every node, `behind` included (which must have
/// installed a snapshot to get there), holds the same image.
async fn check_caught_up_by_snapshot(cluster: &Cluster, behind: u64) {
    let index = cluster.write(100).await;
    cluster.wait_applied(index).await;
    let hashes = cluster.hashes();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "the node that was behind holds the same image"
    );
    let m = cluster.nodes[&behind]
        .raft
        .metrics()
        .borrow_watched()
        .clone();
    assert!(
        m.snapshot.is_some(),
        "the node that was behind installed a snapshot"
    );
    assert_eq!(cluster.nodes[&behind].sm.image().features().len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_controller_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3).await;
    snapshot_and_purge_everywhere(&cluster).await;
    let victim = stop_a_follower(&mut cluster).await;
    std::fs::remove_dir_all(&cluster.dirs[&victim]).unwrap();
    cluster.restart_node(victim).await.unwrap();
    // The log it needs is gone everywhere: only a snapshot can bring it up to date.
    check_caught_up_by_snapshot(&cluster, victim).await;
    cluster.shutdown().await;
}

/// Every Raft RPC is given `controller.quorum.request.timeout.ms` (2 s), not openraft's
/// heartbeat-interval TTL: a follower whose answers take longer than that (a slow network,
/// a slow disk, a machine saturated by a fence of a million partitions) still receives
/// entries and snapshots. Before, every attempt to such a follower was cut off after 60 ms
/// here (150 ms at default settings; 200 ms for a snapshot) and resent from the start, and
/// it never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_whose_answers_are_slower_than_the_heartbeat_interval_still_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let victim = stop_a_follower(&mut cluster).await;
    // The others go on without it and drop the log it would need.
    snapshot_and_purge_everywhere(&cluster).await;
    let others: Vec<u64> = cluster.nodes.keys().copied().collect();
    cluster
        .faults
        .slow_down(victim, others, Duration::from_millis(250));
    cluster.restart_node(victim).await.unwrap();
    check_caught_up_by_snapshot(&cluster, victim).await;
    // And by the log, entry by entry, over the same slow link.
    let last = cluster.write_range(200..210).await;
    cluster.wait_applied(last).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_controller_restarted_from_disk_comes_back_with_the_same_image() {
    let mut cluster = Cluster::start(3).await;
    let last = cluster.write_range(0..15).await;
    cluster.wait_applied(last).await;
    let before = cluster.hashes();
    assert!(before.windows(2).all(|w| w[0] == w[1]));
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.stop_node(*id).await;
    }
    for id in &ids {
        cluster.restart_node(*id).await.unwrap();
    }
    // Each node replays its own log back to the image it had before the restart.
    cluster.wait_applied(last).await;
    let restored = cluster.hashes();
    assert_eq!(
        restored[0], before[0],
        "the image after a full restart equals the one before"
    );
    assert!(restored.windows(2).all(|w| w[0] == w[1]));
    // A new term starts; the log replays on every node and a new write commits.
    let index = cluster.write(99).await;
    cluster.wait_applied(index).await;
    for node in cluster.nodes.values() {
        let image = node.sm.image();
        assert_eq!(image.features().len(), 16);
    }
    let after = cluster.hashes();
    assert!(
        after.windows(2).all(|w| w[0] == w[1]),
        "all controllers agree after a full restart"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_once_enough_log_bytes_accumulate() {
    let cluster = Cluster::start(3).await;
    let node = &cluster.nodes[&1];
    let policy = tokio::spawn(kmeta::server::snapshot_policy(
        node.raft.clone(),
        node.log.clone(),
        node.sm.clone(),
        256,
        0,
    ));
    assert_eq!(node.sm.snapshot_index(), None);
    let last = cluster.write_range(0..40).await;
    cluster.wait_applied(last).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.sm.snapshot_index().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot after {} bytes",
            node.log.appended_bytes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.log.appended_bytes() >= 256);
    policy.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_snapshot_waits_for_as_many_log_bytes_as_the_last_snapshot_holds() {
    let cluster = Cluster::start(3).await;
    let node = &cluster.nodes[&1];
    // A first snapshot of an image larger than the byte trigger.
    let mut last = cluster.write_range(0..200).await;
    cluster.wait_applied(last).await;
    node.raft.trigger().snapshot().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.sm.snapshot_index().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no first snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = node.sm.snapshot_index();
    let size = node.sm.snapshot_bytes().unwrap() as u64;
    let trigger = 256;
    assert!(
        size > 4 * trigger,
        "the image ({size} bytes) outgrew the trigger"
    );
    let policy = tokio::spawn(kmeta::server::snapshot_policy(
        node.raft.clone(),
        node.log.clone(),
        node.sm.clone(),
        trigger,
        0,
    ));
    // More than the trigger, less than the snapshot: no new snapshot.
    let start = node.log.appended_bytes();
    let mut n = 1000;
    while node.log.appended_bytes() - start < size / 2 {
        last = cluster.write(n).await;
        n += 1;
    }
    cluster.wait_applied(last).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        node.sm.snapshot_index(),
        first,
        "a snapshot after {} log bytes, with the last one {size} bytes",
        node.log.appended_bytes() - start
    );
    // Past the snapshot's size: the next one comes.
    while node.log.appended_bytes() - start < size + trigger {
        last = cluster.write(n).await;
        n += 1;
    }
    cluster.wait_applied(last).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.sm.snapshot_index() == first {
        assert!(tokio::time::Instant::now() < deadline, "no second snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    policy.abort();
    cluster.shutdown().await;
}

/// A future that counts how often it is polled: each poll after the first is a wake-up.
struct CountPolls<F> {
    inner: std::pin::Pin<Box<F>>,
    polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<F: std::future::Future> std::future::Future for CountPolls<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_for_a_stopped_raft_sleeps_through_writes_and_wakes_when_it_stops() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.write_range(0..5).await;
    let term = || {
        cluster.nodes[&leader]
            .raft
            .metrics()
            .borrow_watched()
            .current_term
    };
    let term_before = term();
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = tokio::spawn(CountPolls {
        inner: Box::pin(kmeta::server::raft_stopped(
            cluster.nodes[&leader].raft.clone(),
        )),
        polls: polls.clone(),
    });
    let last = cluster.write_range(5..105).await;
    cluster.wait_applied(last).await;
    let woken = polls.load(std::sync::atomic::Ordering::Relaxed) as u64;
    // openraft publishes its full metrics several times per entry; a watch on those woke for
    // each (408 polls here). Elections are the only thing this watch may wake for: a few
    // wake-ups each, should a slow machine see one.
    let elections = term() - term_before;
    assert!(
        woken <= 3 + 10 * elections,
        "the watch was polled {woken} times over 100 entries and {elections} elections"
    );
    assert!(!watch.is_finished(), "the watch resolved while raft runs");
    let _ = cluster.nodes[&leader].raft.shutdown().await;
    let why = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("the watch resolves once raft stops")
        .unwrap();
    assert!(!why.is_empty());
    cluster.shutdown().await;
}
