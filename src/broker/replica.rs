//! The replica role of a partition leader, behind a seam.
//!
//! A Kafka partition leader adds a follower to the ISR once the follower has fetched up to the
//! leader's log end. kmeta brokers hold no message data, so the default [`AssumeCaughtUp`]
//! treats every live assigned replica as caught up. The leader then sends AlterPartition to
//! add it, which is what lets a restarted broker rejoin ISRs and lets reassignments complete.
//! A broker with a real data path would implement [`ReplicaCatchUp`] from its fetch state.

use super::BrokerState;
use kafka_protocol::messages::alter_partition_request::{
    BrokerState as WireBroker, PartitionData, TopicData,
};
use kafka_protocol::messages::{AlterPartitionRequest, BrokerId as WireBrokerId};
use kmeta_metadata::{BrokerId, TopicIdPartition};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Partitions in one AlterPartition request, at most.
pub const MAX_PARTITIONS_PER_REQUEST: usize = 1_000;

/// Decides whether a follower has caught up with this leader's log for a partition.
pub trait ReplicaCatchUp: Send + Sync + 'static {
    /// True when `replica` may join the ISR of `partition`, which this broker leads.
    fn is_caught_up(&self, partition: TopicIdPartition, replica: BrokerId) -> bool;
}

/// kmeta's brokers store no records: every live replica is as caught up as the leader.
pub struct AssumeCaughtUp;

impl ReplicaCatchUp for AssumeCaughtUp {
    fn is_caught_up(&self, _: TopicIdPartition, _: BrokerId) -> bool {
        true
    }
}

/// Watches the image and asks the controller to expand the ISR of partitions this broker
/// leads whenever a live assigned replica is missing from it.
pub async fn run<C: ReplicaCatchUp>(state: Arc<BrokerState>, catch_up: C) {
    let mut applied = state.applied.subscribe();
    // Requests already sent, by partition: the partition epoch they were based on.
    let mut sent: BTreeMap<TopicIdPartition, i32> = BTreeMap::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = retry.tick() => sent.clear(),
        }
        let epoch = state.broker_epoch();
        if epoch < 0 || state.is_fenced() {
            continue;
        }
        let me = BrokerId(state.node_id);
        let published = state.image();
        let image = &published.image;
        let mut topics: BTreeMap<uuid::Uuid, Vec<PartitionData>> = BTreeMap::new();
        let mut count = 0;
        for tp in image.partitions_on_broker(me) {
            let Some(p) = image.partition(tp) else {
                continue;
            };
            if p.leader != me || sent.get(&tp) == Some(&p.partition_epoch.0) {
                continue;
            }
            let missing: Vec<BrokerId> = p
                .replicas
                .iter()
                .copied()
                .filter(|r| {
                    !p.isr.contains(r)
                        && image.is_active_broker(*r)
                        && catch_up.is_caught_up(tp, *r)
                })
                .collect();
            if missing.is_empty() {
                continue;
            }
            let new_isr: Vec<WireBroker> = p
                .isr
                .iter()
                .chain(missing.iter())
                .map(|b| {
                    WireBroker::default()
                        .with_broker_id(WireBrokerId(b.0))
                        .with_broker_epoch(image.broker(*b).map_or(-1, |r| r.broker_epoch.0))
                })
                .collect();
            topics.entry(tp.topic_id).or_default().push(
                PartitionData::default()
                    .with_partition_index(tp.partition)
                    .with_leader_epoch(p.leader_epoch.0)
                    .with_new_isr_with_epochs(new_isr)
                    .with_leader_recovery_state(p.leader_recovery_state.wire_value())
                    .with_partition_epoch(p.partition_epoch.0),
            );
            sent.insert(tp, p.partition_epoch.0);
            count += 1;
            if count >= MAX_PARTITIONS_PER_REQUEST {
                break;
            }
        }
        if topics.is_empty() {
            continue;
        }
        let request = AlterPartitionRequest::default()
            .with_broker_id(WireBrokerId(state.node_id))
            .with_broker_epoch(epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(id, parts)| {
                        TopicData::default()
                            .with_topic_id(id)
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        match state.controllers.send(&request, 3).await {
            Ok(r) if r.error_code == 0 => {
                let refused: usize = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .filter(|p| p.error_code != 0)
                    .count();
                tracing::debug!(partitions = count, refused, "ISR expansion sent");
            }
            Ok(r) => tracing::debug!(error_code = r.error_code, "AlterPartition refused"),
            Err(e) => tracing::debug!(error = %e, "AlterPartition failed"),
        }
    }
}
