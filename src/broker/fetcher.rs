//! Replica fetchers: one task per leader broker this broker follows partitions of, each
//! long-polling that leader with Fetch v12 (`replica_id` = this broker) for all of them, as
//! Kafka's `ReplicaFetcherThread` does, in an incremental fetch session (KIP-227): after the
//! first fetch, a request names only the partitions whose position changed. A response's
//! records are appended verbatim; a `diverging_epoch` truncates the log where the histories
//! fork (KIP-101, KIP-279, KIP-320) before fetching on; OFFSET_OUT_OF_RANGE resets to the
//! leader's range.

use super::partition::Partition;
use super::replicas::PartitionHash;
use super::BrokerState;
use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{BrokerId as WireBrokerId, FetchRequest, TopicName};
use kmeta_metadata::{BrokerId, ErrorCode, TopicIdPartition};
use std::collections::{BTreeMap, HashMap};
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

/// A partition's fetch position: (current leader epoch, fetch offset, last fetched epoch,
/// log start offset).
type Position = (i32, i64, i32, i64);

/// This fetcher's incremental fetch session with its leader (KIP-227): its id, the epoch the
/// next fetch carries, and the positions the leader holds for it.
struct FollowerSession {
    id: i32,
    epoch: i32,
    sent: Followed,
}

/// Followed partitions: where each fetches from, and the partition.
type Followed = HashMap<TopicIdPartition, (Position, Arc<Partition>), PartitionHash>;

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
    let mut session: Option<FollowerSession> = None;
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
            session = None;
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
        // Each followed partition and where it fetches from, keyed cheaply (this runs on
        // every fetch, over every partition followed from this leader).
        let mut positions: Followed = HashMap::with_capacity_and_hasher(parts.len(), PartitionHash);
        for p in parts {
            let Some(position) = p.follower_fetch_position(leader) else {
                continue;
            };
            positions.insert(p.tp, (position, p));
        }
        if positions.is_empty() {
            continue;
        }
        // In a session only what changed is named; without one (or to open one), everything.
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        let mut forgotten: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (tp, (position, p)) in &positions {
            if session
                .as_ref()
                .is_some_and(|s| s.sent.get(tp).is_some_and(|(sent, _)| sent == position))
            {
                continue;
            }
            let (epoch, offset, last_epoch, log_start) = *position;
            topics.entry(p.topic.as_str()).or_default().push(
                FetchPartition::default()
                    .with_partition(tp.partition)
                    .with_current_leader_epoch(epoch)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(last_epoch)
                    .with_log_start_offset(log_start)
                    .with_partition_max_bytes(PARTITION_MAX_BYTES),
            );
        }
        if let Some(s) = &session {
            for (tp, (_, p)) in s.sent.iter().filter(|(tp, _)| !positions.contains_key(*tp)) {
                forgotten
                    .entry(p.topic.as_str())
                    .or_default()
                    .push(tp.partition);
            }
        }
        let (session_id, session_epoch) = session.as_ref().map_or((0, 0), |s| (s.id, s.epoch));
        let request = FetchRequest::default()
            .with_replica_id(WireBrokerId(state.node_id))
            .with_max_wait_ms(WAIT_MAX_MS)
            .with_min_bytes(1)
            .with_max_bytes(RESPONSE_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(session_id)
            .with_session_epoch(session_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(sb(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            )
            .with_forgotten_topics_data(
                forgotten
                    .into_iter()
                    .map(|(t, ps)| {
                        ForgottenTopic::default()
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
                session = None;
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        if response.error_code == ErrorCode::FetchSessionIdNotFound.code()
            || response.error_code == ErrorCode::InvalidFetchSessionEpoch.code()
        {
            // The leader lost the session (restarted, evicted it): open a new one at once.
            tracing::debug!(
                leader,
                error_code = response.error_code,
                "fetch session lost"
            );
            session = None;
            continue;
        }
        // The session this answer leaves (set once the answer is read: it takes `positions`).
        let next_session = (response.error_code == 0).then(|| {
            (response.session_id > 0).then(|| {
                let epoch = if session_id == response.session_id {
                    crate::broker::fetch_session::Session::next_epoch(session_epoch)
                } else {
                    1
                };
                (response.session_id, epoch)
            })
        });
        let mut backoff = response.error_code != 0;
        let mut progressed = false;
        let published = state.image();
        for t in &response.responses {
            let Some(topic_id) = published.image.topic_id(&t.topic.0) else {
                continue;
            };
            for pd in &t.partitions {
                let tp = TopicIdPartition {
                    topic_id,
                    partition: pd.partition_index,
                };
                let Some(((epoch, offset, _, _), p)) = positions.get(&tp) else {
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
        if let Some(next) = next_session {
            session = next.map(|(id, epoch)| FollowerSession {
                id,
                epoch,
                sent: positions,
            });
        }
        if progressed {
            replicas.changed();
        }
        if backoff {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}
