//! AlterPartition: a partition leader changes its ISR (or reports recovery).
//!
//! Validation follows KRaft's order exactly (`ReplicationControlManager.validateAlterPartitionData`),
//! because brokers react to the specific error codes.

use super::TopicRef;
use crate::controller::partition_change::{Election, PartitionChangeBuilder};
use crate::controller::{ControllerResult, LeaderAcceptance};
use crate::error::{ApiError, ErrorCode};
use crate::image::{MetadataImage, PartitionRegistration};
use crate::record::MetadataRecord;
use crate::types::*;

/// One partition's requested change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionData {
    /// Partition index.
    pub partition: i32,
    /// The leader epoch the leader holds.
    pub leader_epoch: LeaderEpoch,
    /// The ISR it wants; with broker epochs from v3 (`None` for older versions).
    pub new_isr: Vec<(BrokerId, Option<BrokerEpoch>)>,
    /// RECOVERED or RECOVERING.
    pub leader_recovery_state: LeaderRecoveryState,
    /// The partition epoch the leader holds.
    pub partition_epoch: PartitionEpoch,
}

/// A whole AlterPartition request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionRequest {
    /// API version (errors differ for v0–1 versus v2+).
    pub version: i16,
    /// The requesting broker (the partitions' leader).
    pub broker_id: BrokerId,
    /// Its epoch.
    pub broker_epoch: BrokerEpoch,
    /// Changes per topic.
    pub topics: Vec<(TopicRef, Vec<AlterPartitionData>)>,
}

/// One partition's outcome: an error, and the partition's state after the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionResult {
    /// Partition index.
    pub partition: i32,
    /// `None` on success.
    pub error: Option<ErrorCode>,
    /// The partition state after the change (on success or NEW_LEADER_ELECTED).
    pub state: Option<PartitionRegistration>,
}

/// AlterPartition's reply: per topic, per partition outcomes.
pub type AlterPartitionReply = Vec<(TopicRef, Vec<AlterPartitionResult>)>;

/// AlterPartition. A stale requester epoch fails the whole request with STALE_BROKER_EPOCH;
/// otherwise each partition has its own outcome.
pub fn alter_partition(
    image: &MetadataImage,
    request: &AlterPartitionRequest,
) -> Result<ControllerResult<AlterPartitionReply>, ApiError> {
    match image.broker(request.broker_id) {
        Some(b) if b.broker_epoch == request.broker_epoch => {}
        _ => {
            return Err(ApiError::new(
                ErrorCode::StaleBrokerEpoch,
                format!(
                    "broker {} epoch {} is not current",
                    request.broker_id, request.broker_epoch
                ),
            ))
        }
    }
    let mut records = Vec::new();
    let mut reply = Vec::with_capacity(request.topics.len());
    for (topic, partitions) in &request.topics {
        let topic_id = topic.resolve(image);
        let mut results = Vec::with_capacity(partitions.len());
        for data in partitions {
            let outcome = match topic_id {
                None if matches!(topic, TopicRef::Id(_)) => Err(ErrorCode::UnknownTopicId),
                None => Err(ErrorCode::UnknownTopicOrPartition),
                Some(topic_id) => alter_one(
                    image,
                    request,
                    TopicIdPartition {
                        topic_id,
                        partition: data.partition,
                    },
                    data,
                ),
            };
            results.push(match outcome {
                Ok((record, state, error)) => {
                    records.extend(record.map(MetadataRecord::PartitionChange));
                    AlterPartitionResult {
                        partition: data.partition,
                        error,
                        state: Some(state),
                    }
                }
                Err(code) => AlterPartitionResult {
                    partition: data.partition,
                    error: Some(code),
                    state: None,
                },
            });
        }
        reply.push((topic.clone(), results));
    }
    Ok(ControllerResult::atomic(records, reply))
}

type AlterOutcome = (
    Option<crate::record::PartitionChangeRecord>,
    PartitionRegistration,
    Option<ErrorCode>,
);

fn alter_one(
    image: &MetadataImage,
    request: &AlterPartitionRequest,
    tp: TopicIdPartition,
    data: &AlterPartitionData,
) -> Result<AlterOutcome, ErrorCode> {
    let p = image
        .partition(tp)
        .ok_or(ErrorCode::UnknownTopicOrPartition)?;
    validate(image, request, p, data)?;
    let isr: Vec<BrokerId> = data.new_isr.iter().map(|(b, _)| *b).collect();
    let record = PartitionChangeBuilder::new(tp, p, LeaderAcceptance::of(image))
        .election(Election::Online)
        .target_isr(isr)
        .target_recovery(data.leader_recovery_state)
        .build();
    let state = record.as_ref().map_or_else(|| p.clone(), |r| p.merge(r));
    // Completing a reassignment may move leadership off the requester: the change is written,
    // but the old leader must learn it is no longer leader.
    let moved_code = if request.version >= 2 {
        ErrorCode::NewLeaderElected
    } else {
        ErrorCode::FencedLeaderEpoch
    };
    let error = (state.leader != p.leader).then_some(moved_code);
    Ok((record, state, error))
}

fn validate(
    image: &MetadataImage,
    request: &AlterPartitionRequest,
    p: &PartitionRegistration,
    data: &AlterPartitionData,
) -> Result<(), ErrorCode> {
    if data.leader_epoch > p.leader_epoch || data.partition_epoch > p.partition_epoch {
        // The requester knows a newer state than ours: we are not the real controller.
        return Err(ErrorCode::NotController);
    }
    if data.leader_epoch < p.leader_epoch {
        return Err(ErrorCode::FencedLeaderEpoch);
    }
    if request.broker_id != p.leader {
        return Err(ErrorCode::InvalidRequest);
    }
    if data.partition_epoch < p.partition_epoch {
        return Err(ErrorCode::InvalidUpdateVersion);
    }
    if data.new_isr.iter().any(|(b, _)| !p.replicas.contains(b)) {
        return Err(ErrorCode::InvalidRequest);
    }
    if !data.new_isr.iter().any(|(b, _)| *b == p.leader) {
        return Err(ErrorCode::InvalidRequest);
    }
    {
        let mut ids: Vec<BrokerId> = data.new_isr.iter().map(|(b, _)| *b).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != data.new_isr.len() {
            return Err(ErrorCode::InvalidRequest);
        }
    }
    if data.leader_recovery_state == LeaderRecoveryState::Recovering && data.new_isr.len() > 1 {
        return Err(ErrorCode::InvalidRequest);
    }
    if p.leader_recovery_state == LeaderRecoveryState::Recovered
        && data.leader_recovery_state == LeaderRecoveryState::Recovering
    {
        return Err(ErrorCode::InvalidRequest);
    }
    let ineligible = data
        .new_isr
        .iter()
        .any(|(b, epoch)| match image.broker(*b) {
            None => true,
            Some(reg) => !reg.is_active() || epoch.is_some_and(|e| e != reg.broker_epoch),
        });
    if ineligible {
        return Err(if request.version >= 2 {
            ErrorCode::IneligibleReplica
        } else {
            ErrorCode::OperationNotAttempted
        });
    }
    Ok(())
}
