//! `kmeta bench failover`: `kill -9` of the active controller → the next acknowledged write
//! through a broker, on real processes (3 controllers + 3 brokers from this binary on
//! 127.0.0.1, default settings: `controller.quorum.election.timeout.ms=1000`).
//!
//! Each trial asks a controller which one leads, kills that process, and sends at once a
//! CreateTopics of a new 1-partition topic through broker 1 (the broker retries it until an
//! active controller decides it, as it does every forwarded write); the figure is the time from
//! the kill to the answer, which must be a success. The killed controller is then restarted and
//! the next trial waits until it has caught up (a write through it succeeds and every
//! controller reports the same last offset).

use super::percentile;
use super::scale::{self, Nodes, ScaleOptions};
use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{DescribeQuorumRequest, TopicName};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The leader and high watermark as controller `id` reports them.
async fn quorum_view(nodes: &Nodes, id: u64) -> Option<(i32, i64)> {
    let mut c = KafkaClient::connect(
        &nodes.addr(id),
        "kmeta-bench-failover",
        Duration::from_secs(2),
    )
    .await
    .ok()?;
    let r = c
        .send(
            &DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
                .with_topic_name(TopicName(sb(crate::kafka::metadata_log::METADATA_TOPIC)))
                .with_partitions(vec![PartitionData::default().with_partition_index(0)])]),
            0,
        )
        .await
        .ok()?;
    let p = r.topics.first()?.partitions.first()?;
    (r.error_code == 0 && p.error_code == 0).then_some((p.leader_id.0, p.high_watermark))
}

/// Creates a 1-partition topic `name` through broker 1 (NOT_CONTROLLER, from a controller
/// elected but not yet active, is retried as Kafka's admin client retries it).
async fn create(nodes: &Nodes, name: &str) -> Result<(), String> {
    scale::create(&nodes.addr(1), vec![scale::creatable(name.to_string(), 1)]).await
}

/// Waits until every controller names the same leader and high watermark (the restarted one
/// has caught up) and a write through broker 1 succeeds.
async fn settled(nodes: &Nodes, trial: usize) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut views = Vec::new();
        for id in scale::CONTROLLERS {
            views.push(quorum_view(nodes, id).await);
        }
        let first = views[0];
        if first.is_some_and(|(leader, _)| leader >= 0) && views.iter().all(|v| *v == first) {
            create(nodes, &format!("settle-{trial}")).await?;
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("the quorum did not settle within 60 s: {views:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `trials` failovers with the nodes' data under `data_dir`; the times in ms.
pub async fn failover(trials: usize, data_dir: PathBuf, keep: bool) -> Result<Vec<f64>, String> {
    let mut nodes = Nodes::start(&ScaleOptions {
        partitions: 1,
        data_dir,
        session_timeout_ms: 9_000,
        samples: 0,
        keep,
        node_log: "info,openraft=warn".into(),
        secure: false,
    })?;
    scale::until_all(&nodes, &scale::BROKERS, Duration::from_secs(60), |s| {
        s.live_brokers == 3
    })
    .await
    .ok_or("the brokers never all registered")?;
    let mut times = Vec::new();
    for trial in 1..=trials {
        settled(&nodes, trial).await?;
        // Let the restarted controller's session and the brokers' links settle as in a
        // cluster that has run a while.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (leader, _) = quorum_view(&nodes, scale::CONTROLLERS[0])
            .await
            .ok_or("no controller answered DescribeQuorum")?;
        let leader = u64::try_from(leader).map_err(|_| "no leader")?;
        let killed = Instant::now();
        nodes.kill(leader);
        create(&nodes, &format!("failover-{trial}")).await?;
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        println!(
            "  trial {trial}: kill -9 of controller {leader} → next acknowledged write {ms:.0} ms"
        );
        times.push(ms);
        nodes.spawn(leader)?;
    }
    Ok(times)
}

/// p50, p99 and max of `times` (ms), sorted in place.
pub fn summary(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    (
        percentile(times, 0.5).unwrap_or(0.0),
        percentile(times, 0.99).unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0),
    )
}
