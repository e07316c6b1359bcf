//! Partition reassignment (KIP-455): AlterPartitionReassignments and ListPartitionReassignments.
//!
//! Starting a reassignment writes one change: `replicas = target ++ removing`, with
//! `adding = target − current` and `removing = current − target`. The reassignment completes
//! (inside the partition change builder) once the ISR holds every target replica; then the
//! removed replicas go. `None` as the target cancels: back to `replicas − adding`. A new target
//! for a partition already moving is computed from the original replicas, so it supersedes the
//! old one.

use super::find_partition;
use crate::controller::partition_change::{Election, PartitionChangeBuilder};
use crate::controller::{
    check_batch_size, unclean_election_enabled, ControllerConfig, ControllerResult,
    LeaderAcceptance,
};
use crate::error::{ApiError, ErrorCode};
use crate::image::{MetadataImage, PartitionRegistration};
use crate::record::{MetadataRecord, PartitionChangeRecord};
use crate::types::*;
use std::collections::{BTreeMap, BTreeSet};

/// Per-topic, per-partition outcome: `None` is success.
pub type ReassignmentReply = BTreeMap<String, BTreeMap<i32, Option<ApiError>>>;

/// AlterPartitionReassignments: `(topic, partition, Some(target) | None to cancel)`.
/// Each partition has its own outcome; all changes form one atomic batch.
pub fn alter_partition_reassignments(
    image: &MetadataImage,
    config: &ControllerConfig,
    requests: &[(String, i32, Option<Vec<BrokerId>>)],
) -> ControllerResult<ReassignmentReply> {
    let mut records = Vec::new();
    let mut reply = ReassignmentReply::new();
    let mut seen = BTreeSet::new();
    for (topic, partition, target) in requests {
        let outcome = if !seen.insert((topic, *partition)) {
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "Partition named twice in request.",
            ))
        } else {
            match find_partition(image, topic, *partition) {
                None => Err(ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("{topic}-{partition} does not exist"),
                )),
                Some(tp) => {
                    let unclean = unclean_election_enabled(image, config, topic);
                    match target {
                        Some(target) => reassign(image, tp, target, unclean),
                        None => cancel(image, tp, unclean),
                    }
                }
            }
        }
        .and_then(|r| check_batch_size(records.len() + 1).map(|_| r));
        match outcome {
            Ok(record) => {
                records.extend(record.map(MetadataRecord::PartitionChange));
                reply
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, None);
            }
            Err(e) => {
                reply
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, Some(e));
            }
        }
    }
    ControllerResult::atomic(records, reply)
}

/// The state a partition had before its in-flight reassignment: adding replicas taken out.
struct Reverted {
    replicas: Vec<BrokerId>,
    isr: Vec<BrokerId>,
}

fn revert(p: &PartitionRegistration) -> Reverted {
    let keep = |r: &BrokerId| !p.adding_replicas.contains(r);
    Reverted {
        replicas: p.replicas.iter().copied().filter(keep).collect(),
        isr: p.isr.iter().copied().filter(keep).collect(),
    }
}

fn validate_target(image: &MetadataImage, target: &[BrokerId]) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(ErrorCode::InvalidReplicaAssignment, why);
    if target.is_empty() {
        return Err(invalid("The replica list is empty.".into()));
    }
    let distinct: BTreeSet<_> = target.iter().collect();
    if distinct.len() != target.len() {
        return Err(invalid(format!("Duplicate replicas in {target:?}.")));
    }
    if let Some(b) = target.iter().find(|b| image.broker(**b).is_none()) {
        return Err(invalid(format!(
            "The manual partition assignment includes broker {b}, but no such broker is registered."
        )));
    }
    Ok(())
}

fn reassign(
    image: &MetadataImage,
    tp: TopicIdPartition,
    target: &[BrokerId],
    unclean: bool,
) -> Result<Option<PartitionChangeRecord>, ApiError> {
    validate_target(image, target)?;
    let p = image.partition(tp).expect("resolved");
    let original = revert(p);
    let removing: Vec<BrokerId> = original
        .replicas
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    let adding: Vec<BrokerId> = target
        .iter()
        .copied()
        .filter(|r| !original.replicas.contains(r))
        .collect();
    let replicas: Vec<BrokerId> = target.iter().chain(removing.iter()).copied().collect();
    // Adding replicas of a superseded reassignment that the new target drops leave the ISR.
    let isr: Vec<BrokerId> = p
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    if isr.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidReplicaAssignment,
            "The new assignment would leave the partition with no in-sync replica.",
        ));
    }
    Ok(
        PartitionChangeBuilder::new(tp, p, LeaderAcceptance::of(image))
            .election(if unclean {
                Election::Unclean
            } else {
                Election::Online
            })
            .target_replicas(replicas)
            .target_isr(isr)
            .target_reassignment(removing, adding)
            .build(),
    )
}

fn cancel(
    image: &MetadataImage,
    tp: TopicIdPartition,
    unclean: bool,
) -> Result<Option<PartitionChangeRecord>, ApiError> {
    let p = image.partition(tp).expect("resolved");
    if !p.is_reassigning() {
        return Err(ApiError::new(
            ErrorCode::NoReassignmentInProgress,
            "No reassignment is in progress for this partition.",
        ));
    }
    let mut original = revert(p);
    let mut election = Election::Online;
    if original.isr.is_empty() {
        if !unclean {
            return Err(ApiError::new(
                ErrorCode::InvalidReplicaAssignment,
                "Unable to revert the reassignment: no original replica is in sync, and unclean leader election is disabled.",
            ));
        }
        original.isr = vec![original.replicas[0]];
        election = Election::Unclean;
    }
    Ok(
        PartitionChangeBuilder::new(tp, p, LeaderAcceptance::of(image))
            .election(election)
            .target_replicas(original.replicas)
            .target_isr(original.isr)
            .target_reassignment(vec![], vec![])
            .build(),
    )
}

/// One in-flight reassignment, as ListPartitionReassignments reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OngoingReassignment {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Current replica list (target then removing).
    pub replicas: Vec<BrokerId>,
    /// Replicas being added.
    pub adding_replicas: Vec<BrokerId>,
    /// Replicas being removed.
    pub removing_replicas: Vec<BrokerId>,
}

/// ListPartitionReassignments: all in-flight reassignments, or those of the named partitions
/// (partitions not reassigning, or unknown, are left out, as Kafka does).
pub fn list_partition_reassignments(
    image: &MetadataImage,
    partitions: Option<&[(String, i32)]>,
) -> Vec<OngoingReassignment> {
    let tps: Vec<TopicIdPartition> = match partitions {
        None => image.reassigning_partitions().collect(),
        Some(list) => list
            .iter()
            .filter_map(|(t, p)| find_partition(image, t, *p))
            .collect(),
    };
    let mut out: Vec<OngoingReassignment> = tps
        .into_iter()
        .filter_map(|tp| {
            let p = image.partition(tp).filter(|p| p.is_reassigning())?;
            Some(OngoingReassignment {
                topic: image.topic(&tp.topic_id)?.name.clone(),
                partition: tp.partition,
                replicas: p.replicas.to_vec(),
                adding_replicas: p.adding_replicas.to_vec(),
                removing_replicas: p.removing_replicas.to_vec(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    out
}
