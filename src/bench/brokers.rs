//! `kmeta bench brokers`: the client-facing path. Three controllers and three brokers run in
//! this process (real TCP on 127.0.0.1, real fsync under the data directory) and Kafka-protocol
//! clients load them:
//!
//! - **offset commits/s**: C connections spread over the brokers each send OffsetCommit
//!   requests of P partitions in a loop; an offset counts when its reply arrives (committed on a
//!   majority of controllers and applied by the broker that forwarded it).
//! - **propagation**: one commit at a time through broker 1; the time from sending it until
//!   every broker's image holds the new offset (p50/p99 over N commits).
//! - **Metadata requests/s per broker**: C connections to one broker each send Metadata (all
//!   topics) in a loop.

use crate::broker::{BrokerConfig, BrokerHandle, BrokerState};
use crate::kafka::client::KafkaClient;
use crate::kafka::listener::Limits;
use crate::kafka::wire::sb;
use crate::local::LocalQuorum;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, GroupId, MetadataRequest, OffsetCommitRequest, TopicName,
};
use kmeta_metadata::controller::ControllerConfig;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 64;

/// What `kmeta bench brokers` measured.
#[derive(Debug)]
pub struct BrokersReport {
    /// Offsets committed per second, with the connections and partitions per request used.
    pub commits: Vec<(usize, usize, f64)>,
    /// Commit → every broker: p50, p99, max in milliseconds, over this many commits.
    pub propagation_ms: (f64, f64, f64, usize),
    /// Metadata requests per second on one broker, by connections.
    pub metadata: Vec<(usize, f64)>,
}

fn commit_request(
    group: &str,
    partitions: std::ops::Range<i32>,
    offset: i64,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(sb(TOPIC)))
            .with_partitions(
                partitions
                    .map(|p| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )])
}

/// The first of `prefix`, `prefix-1`, `prefix-2`, ... that `broker` coordinates.
fn coordinated_group(broker: &BrokerState, prefix: &str) -> String {
    let image = &broker.image().image;
    let me = kmeta_metadata::BrokerId(broker.node_id);
    (0..100_000)
        .map(|k| {
            if k == 0 {
                prefix.to_string()
            } else {
                format!("{prefix}-{k}")
            }
        })
        .find(|g| image.group_coordinator(g) == Some(me))
        .expect("every broker coordinates some group")
}

async fn connect(addr: &str) -> Result<KafkaClient, String> {
    KafkaClient::connect(addr, "kmeta-bench", Duration::from_secs(30))
        .await
        .map_err(|e| format!("{addr}: {e}"))
}

/// Three controllers and three brokers in this process, with data under `dir`, once every
/// broker is unfenced and sees the others: the quorum and `(address, handle)` per broker.
pub async fn start_cluster(
    dir: &Path,
) -> Result<(LocalQuorum, Vec<(String, BrokerHandle)>), String> {
    let config = ControllerConfig {
        cluster_id: "bench".into(),
        ..ControllerConfig::default()
    };
    let quorum = LocalQuorum::start(3, dir, config)
        .await
        .map_err(|e| e.to_string())?;
    let voters = quorum.addrs.clone();
    let mut brokers: Vec<(String, BrokerHandle)> = Vec::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let handle = BrokerHandle::spawn(
            BrokerConfig {
                node_id: id,
                cluster_id: "bench".into(),
                voters: voters.clone(),
                listener_name: "PLAINTEXT".into(),
                advertised_host: "127.0.0.1".into(),
                advertised_port: port,
                rack: None,
                heartbeat_interval: Duration::from_millis(2000),
                session_timeout: Duration::from_millis(9000),
                limits: Limits::default(),
                extra_listeners: Vec::new(),
                data: crate::broker::replicas::DataConfig::new(dir.join(format!("broker-{id}"))),
                groups: crate::broker::group::GroupConfig::default(),
                authorizer: None,
                controller_tls: None,
                inter_broker_tls: None,
            },
            listener,
        );
        brokers.push((format!("127.0.0.1:{port}"), handle));
    }
    let states: Vec<Arc<BrokerState>> = brokers.iter().map(|(_, h)| h.state.clone()).collect();
    let start = Instant::now();
    while !states
        .iter()
        .all(|s| !s.is_fenced() && s.image().image.brokers().filter(|b| b.is_active()).count() == 3)
    {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("brokers did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((quorum, brokers))
}

/// Runs the benchmark with its data under `dir`.
pub async fn brokers(
    dir: &Path,
    seconds: u64,
    connections: &[usize],
    partitions_per_commit: usize,
    propagation_samples: usize,
) -> Result<BrokersReport, String> {
    let (quorum, brokers) = start_cluster(dir).await?;
    let states: Vec<Arc<BrokerState>> = brokers.iter().map(|(_, h)| h.state.clone()).collect();
    let addrs: Vec<String> = brokers.iter().map(|(a, _)| a.clone()).collect();
    let mut admin = connect(&addrs[0]).await?;
    let created = admin
        .send(
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(sb(TOPIC)))
                .with_num_partitions(PARTITIONS)
                .with_replication_factor(3)]),
            7,
        )
        .await
        .map_err(|e| e.to_string())?;
    if created.topics.first().map_or(-1, |t| t.error_code) != 0 {
        return Err(format!("creating the topic: {created:?}"));
    }

    // Offset commits per second.
    let mut commits = Vec::new();
    for &c in connections {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..c {
            let addr = addrs[i % addrs.len()].clone();
            // A group this connection's broker coordinates: commits go to the coordinator.
            let group = coordinated_group(&states[i % states.len()], &format!("bench-{i}"));
            let (stop, done) = (stop.clone(), done.clone());
            let p = partitions_per_commit.min(PARTITIONS as usize) as i32;
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&addr).await?;
                let mut offset = 0;
                while !stop.load(Ordering::Relaxed) {
                    offset += 1;
                    let r = client
                        .send(&commit_request(&group, 0..p, offset), 9)
                        .await
                        .map_err(|e| e.to_string())?;
                    let ok = r
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .filter(|p| p.error_code == 0)
                        .count();
                    done.fetch_add(ok as u64, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            }));
        }
        let t0 = Instant::now();
        let before = done.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let n = done.load(Ordering::Relaxed) - before;
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        commits.push((c, partitions_per_commit, rate));
    }

    // Commit → every broker.
    let mut client = connect(&addrs[0]).await?;
    let mut samples = Vec::with_capacity(propagation_samples);
    let group = &coordinated_group(&states[0], "bench-propagation");
    let topic_id = states[0]
        .image()
        .image
        .topic_id(TOPIC)
        .ok_or("the bench topic is missing")?;
    let tp = kmeta_metadata::TopicIdPartition {
        topic_id,
        partition: 0,
    };
    for i in 1..=propagation_samples as i64 {
        let t0 = Instant::now();
        let request = commit_request(group, 0..1, i);
        let send = client.send(&request, 9);
        let everywhere = async {
            for s in &states {
                let mut applied = s.subscribe_applied();
                loop {
                    let has = s
                        .image()
                        .image
                        .group_offsets(group)
                        .and_then(|o| o.get(&tp).map(|v| v.offset))
                        == Some(i);
                    if has {
                        break;
                    }
                    if applied.changed().await.is_err() {
                        break;
                    }
                }
            }
            t0.elapsed()
        };
        let (sent, elapsed) = tokio::join!(send, everywhere);
        sent.map_err(|e| e.to_string())?;
        samples.push(elapsed.as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let propagation_ms = (
        pct(0.5),
        pct(0.99),
        *samples.last().unwrap_or(&0.0),
        samples.len(),
    );

    // Metadata requests per second on broker 1.
    let mut metadata = Vec::new();
    for &c in connections {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..c {
            let addr = addrs[0].clone();
            let (stop, done) = (stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&addr).await?;
                let req = MetadataRequest::default().with_topics(None);
                while !stop.load(Ordering::Relaxed) {
                    client.send(&req, 12).await.map_err(|e| e.to_string())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            }));
        }
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let rate = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        metadata.push((c, rate));
    }

    for (_, b) in brokers {
        let _ = tokio::time::timeout(Duration::from_secs(10), b.shutdown()).await;
    }
    quorum.stop().await;
    Ok(BrokersReport {
        commits,
        propagation_ms,
        metadata,
    })
}
