//! The broker's metadata follower: long-polls the active controller for committed entries
//! (Kafka Fetch on `__cluster_metadata`), loads a snapshot when it is behind the kept log
//! (FetchSnapshot), replays into its own image and publishes it.

use super::BrokerState;
use crate::kafka::client::KafkaClient;
use crate::kafka::metadata_log::{decode_entries, METADATA_TOPIC};
use crate::raft::state_machine::{decode_batch, decode_image};
use crate::raft::types::MetadataBatch;
use bytes::BytesMut;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_snapshot_request::{
    PartitionSnapshot, SnapshotId, TopicSnapshot,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchSnapshotRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kmeta_metadata::delta::ImageDelta;
use kmeta_metadata::{ErrorCode, LogOffset, MetadataImage, MetadataRecord};
use std::sync::Arc;
use std::time::Duration;

/// How long one fetch waits at the controller for a new commit.
pub const FETCH_MAX_WAIT_MS: i32 = 500;
/// Bytes asked for per fetch.
pub const FETCH_MAX_BYTES: i32 = 8 * 1024 * 1024;
/// Bytes asked for per snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: i32 = 4 * 1024 * 1024;

const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// Follows the metadata log forever (until the task is dropped).
pub async fn run(state: Arc<BrokerState>) {
    let mut image = MetadataImage::new();
    let mut next: u64 = 0;
    let mut client: Option<KafkaClient> = None;
    loop {
        if client.is_none() {
            let addr = match state.controllers.leader_addr().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "no active controller yet");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    continue;
                }
            };
            match state
                .controllers
                .connect(
                    &addr,
                    Duration::from_millis(FETCH_MAX_WAIT_MS as u64) + Duration::from_secs(10),
                )
                .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, %addr, "cannot reach the controller");
                    state.controllers.forget_leader();
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected");
        match fetch_once(&state, c, &mut image, &mut next).await {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(error = %e, "metadata fetch failed; retrying");
                client = None;
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

async fn fetch_once(
    state: &BrokerState,
    client: &mut KafkaClient,
    image: &mut MetadataImage,
    next: &mut u64,
) -> Result<(), String> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(state.node_id))
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(*next as i64)
                .with_partition_max_bytes(FETCH_MAX_BYTES)])]);
    let response = client.send(&request, 12).await.map_err(|e| e.to_string())?;
    let p = response
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("an empty fetch response")?;
    if p.error_code == ErrorCode::NotLeaderOrFollower.code() {
        let leader = p.current_leader.leader_id.0;
        state
            .controllers
            .set_leader((leader >= 0).then_some(leader as u64));
        return Err(format!("not the leader (leader is {leader})"));
    }
    if p.error_code != 0 {
        return Err(format!("fetch error {}", p.error_code));
    }
    if p.snapshot_id.end_offset >= 0 {
        let end = p.snapshot_id.end_offset;
        let data = fetch_snapshot(state, client, end, p.snapshot_id.epoch).await?;
        let offset = (end - 1).max(0) as u64;
        *image = decode_image(&data, LogOffset(offset as i64)).map_err(|e| e.to_string())?;
        *next = end as u64;
        tracing::info!(offset, bytes = data.len(), "loaded a metadata snapshot");
        state.publish(image.clone(), offset, ImageDelta::everything());
        return Ok(());
    }
    let mut batches = Vec::new();
    for (offset, bytes) in decode_entries(p.records.clone().unwrap_or_default())? {
        if offset >= *next {
            batches.push((offset, decode_batch(&bytes).map_err(|e| e.to_string())?));
        }
    }
    let mut delta = ImageDelta::default();
    // Replay may take seconds (a broker-wide record at a million partitions): then the
    // worker's other tasks (client requests, follower fetches) move to another thread.
    let heavy = batches
        .iter()
        .map(|(_, b)| b.records().len())
        .sum::<usize>()
        >= 1_000
        || batches
            .iter()
            .any(|(_, b)| crate::heavy_to_replay(b.records()));
    let mut changed = if heavy {
        crate::cpu_bound(|| replay_entries(state, batches, image, next, &mut delta))?
    } else {
        replay_entries(state, batches, image, next, &mut delta)?
    };
    let reached = p.last_stable_offset;
    if reached >= 0 && reached as u64 + 1 > *next {
        *next = reached as u64 + 1;
        changed = true;
    }
    if changed {
        state.publish(image.clone(), next.saturating_sub(1), delta);
    }
    Ok(())
}

/// Replays fetched `batches` (from `*next` on) onto `image`, noting them in `delta`; an entry
/// holding a broker-wide record (a removal or an unfencing's elections) is published on its
/// own. True if anything is left to publish.
fn replay_entries(
    state: &BrokerState,
    batches: Vec<(u64, MetadataBatch)>,
    image: &mut MetadataImage,
    next: &mut u64,
    delta: &mut ImageDelta,
) -> Result<bool, String> {
    let mut changed = false;
    for (offset, batch) in batches {
        let mut broker_wide = None;
        let timer = crate::WorkTimer::start();
        for record in batch.records() {
            if let Err(e) = delta.replay(image, LogOffset(offset as i64), record) {
                // The image no longer matches the log: start over from a snapshot.
                tracing::error!(%e, offset, "a committed record does not replay here: resyncing");
                *image = MetadataImage::new();
                *next = 0;
                return Err(e.to_string());
            }
            if let MetadataRecord::BrokerPartitions(r) = record {
                broker_wide = Some(r.clone());
            }
        }
        *next = offset + 1;
        changed = true;
        if let Some(r) = broker_wide {
            // Such a record ends its entry so that its leader moves are shown before what
            // follows is even replayed (the controller proposes them apart; a fence's ISR
            // removals): publish here, not after the whole fetch, and let the partitions
            // move while the next entry replays.
            tracing::info!(
                offset,
                broker = %r.broker_id,
                scope = ?r.scope,
                partitions = delta.partitions.len(),
                replay_ms = timer.wall_ms(),
                replay_cpu_ms = timer.cpu_ms(),
                "replayed a record over a broker's partitions"
            );
            state.publish(image.clone(), offset, std::mem::take(delta));
            changed = false;
        }
    }
    Ok(changed)
}

async fn fetch_snapshot(
    state: &BrokerState,
    client: &mut KafkaClient,
    end_offset: i64,
    epoch: i32,
) -> Result<bytes::Bytes, String> {
    let mut data = BytesMut::new();
    loop {
        let request = FetchSnapshotRequest::default()
            .with_replica_id(BrokerId(state.node_id))
            .with_max_bytes(SNAPSHOT_CHUNK_BYTES)
            .with_topics(vec![TopicSnapshot::default()
                .with_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
                .with_partitions(vec![PartitionSnapshot::default()
                    .with_partition(0)
                    .with_snapshot_id(
                        SnapshotId::default()
                            .with_end_offset(end_offset)
                            .with_epoch(epoch),
                    )
                    .with_position(data.len() as i64)])]);
        let response = client.send(&request, 0).await.map_err(|e| e.to_string())?;
        let p = response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or("an empty snapshot response")?;
        if p.error_code != 0 {
            return Err(format!("snapshot fetch error {}", p.error_code));
        }
        if p.position != data.len() as i64 {
            return Err("a snapshot chunk at the wrong position".into());
        }
        data.extend_from_slice(&p.unaligned_records);
        if data.len() as i64 >= p.size {
            return Ok(data.freeze());
        }
        if p.unaligned_records.is_empty() {
            return Err("an empty snapshot chunk".into());
        }
    }
}
