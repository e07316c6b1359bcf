//! Replica fetchers: one task per leader broker this broker follows partitions of, each
//! long-polling that leader with Fetch v12 (`replica_id` = this broker) for all of them, as
//! Kafka's `ReplicaFetcherThread` does. A response's records are appended verbatim; a
//! `diverging_epoch` truncates the log where the histories fork (KIP-101, KIP-279, KIP-320)
//! before fetching on; OFFSET_OUT_OF_RANGE resets to the leader's range.

use super::partition::Partition;
use super::BrokerState;
use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId as WireBrokerId, FetchRequest, TopicName};
use kmeta_metadata::{BrokerId, ErrorCode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The Fetch version followers send (diverging epochs arrive from v12).
pub const FOLLOWER_FETCH_VERSION: i16 = 12;
/// `replica.fetch.wait.max.ms`.
pub const WAIT_MAX_MS: i32 = 500;
/// `replica.fetch.max.bytes` (per partition).
pub const PARTITION_MAX_BYTES: i32 = 1024 * 1024;
/// `replica.fetch.response.max.bytes`.
pub const RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
const BACKOFF: Duration = Duration::from_millis(200);
/// A fetcher with nothing to follow for this long stops (a new one starts when needed).
const IDLE_STOP: Duration = Duration::from_secs(30);

/// Starts a fetcher for each leader in `leaders` that has none.
pub fn ensure(state: &Arc<BrokerState>, leaders: impl IntoIterator<Item = i32>) {
    for leader in leaders {
        if leader != state.node_id && state.replicas.claim_fetcher(leader) {
            tokio::spawn(run(state.clone(), leader));
        }
    }
}

fn leader_addr(state: &BrokerState, leader: i32) -> Option<String> {
    let published = state.image();
    let b = published.image.broker(BrokerId(leader))?;
    let l = b
        .listeners
        .iter()
        .find(|l| l.name == state.config.listener_name)?;
    Some(format!("{}:{}", l.host, l.port))
}

/// Follows `leader` until nothing has followed it for a while.
async fn run(state: Arc<BrokerState>, leader: i32) {
    let replicas = state.replicas.clone();
    let mut changes = replicas.subscribe();
    let mut client: Option<KafkaClient> = None;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let parts = replicas.following(leader);
        if parts.is_empty() {
            if idle_since.elapsed() > IDLE_STOP {
                replicas.release_fetcher(leader);
                // A partition may have started following in between.
                if replicas.following(leader).is_empty() || !replicas.claim_fetcher(leader) {
                    return;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            continue;
        }
        idle_since = tokio::time::Instant::now();
        let Some(addr) = leader_addr(&state, leader) else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        if client.as_ref().is_some_and(|c| c.addr() != addr) {
            client = None;
        }
        if client.is_none() {
            match KafkaClient::connect(
                &addr,
                &state.client_id,
                Duration::from_millis(WAIT_MAX_MS as u64) + Duration::from_secs(10),
            )
            .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(leader, %addr, error = %e, "cannot reach the leader");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            }
        }
        // (topic, partition) → (partition, the epoch and offset fetched at).
        let mut asked: BTreeMap<(String, i32), (Arc<Partition>, i32, i64)> = BTreeMap::new();
        let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
        for p in parts {
            let Some((epoch, offset, last_epoch, log_start)) = p.follower_fetch_position(leader)
            else {
                continue;
            };
            topics.entry(p.topic.clone()).or_default().push(
                FetchPartition::default()
                    .with_partition(p.tp.partition)
                    .with_current_leader_epoch(epoch)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(last_epoch)
                    .with_log_start_offset(log_start)
                    .with_partition_max_bytes(PARTITION_MAX_BYTES),
            );
            asked.insert((p.topic.clone(), p.tp.partition), (p, epoch, offset));
        }
        if asked.is_empty() {
            continue;
        }
        let request = FetchRequest::default()
            .with_replica_id(WireBrokerId(state.node_id))
            .with_max_wait_ms(WAIT_MAX_MS)
            .with_min_bytes(1)
            .with_max_bytes(RESPONSE_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(sb(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let c = client.as_mut().expect("connected");
        let response = match c.send(&request, FOLLOWER_FETCH_VERSION).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "follower fetch failed");
                client = None;
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let mut backoff = response.error_code != 0;
        let mut progressed = false;
        for t in &response.responses {
            for pd in &t.partitions {
                let Some((p, epoch, offset)) =
                    asked.get(&(t.topic.0.to_string(), pd.partition_index))
                else {
                    continue;
                };
                if pd.error_code == ErrorCode::OffsetOutOfRange.code() {
                    if let Err(e) =
                        p.reset_out_of_range(*epoch, pd.log_start_offset, pd.high_watermark)
                    {
                        tracing::error!(error = %e, "cannot reset a follower log");
                    }
                    progressed = true;
                    continue;
                }
                if pd.error_code != 0 {
                    // NOT_LEADER_OR_FOLLOWER, FENCED/UNKNOWN_LEADER_EPOCH: metadata will move
                    // this partition to another leader or epoch.
                    backoff = true;
                    continue;
                }
                if pd.diverging_epoch.epoch >= 0 || pd.diverging_epoch.end_offset >= 0 {
                    match p.truncate_on_divergence(
                        *epoch,
                        pd.diverging_epoch.epoch,
                        pd.diverging_epoch.end_offset,
                    ) {
                        Ok(_) => progressed = true,
                        Err(e) => tracing::error!(error = %e, "cannot truncate a follower log"),
                    }
                    continue;
                }
                let records = pd.records.as_deref().unwrap_or(&[]);
                match p.append_as_follower(
                    *epoch,
                    *offset,
                    records,
                    pd.high_watermark,
                    pd.log_start_offset,
                ) {
                    Ok(_) => progressed |= !records.is_empty(),
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.tp.partition, error = %e, "follower append failed; refetching");
                        backoff = true;
                    }
                }
            }
        }
        if progressed {
            replicas.changed();
        }
        if backoff {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}
