//! Consumer-group offsets: OffsetCommit validation and OffsetFetch.
//!
//! kmeta keeps committed offsets in the metadata log. Group membership is soft state on the
//! coordinator broker ([`MetadataImage::group_coordinator`]), which checks a member's
//! generation before it forwards the commit; the active controller then checks that the
//! forwarding broker still coordinates the group in its own image, so a broker that lost the
//! group (fenced, or moved away) cannot write its stale members' offsets. Commits that come
//! without a coordinator (straight to a controller) may only be simple ones: generation -1,
//! no member id.

use super::ControllerResult;
use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::OffsetDeleteRecord;
use crate::record::{CommittedOffset, MetadataRecord, OffsetCommitRecord};
use crate::types::{BrokerId, TopicIdPartition};
use std::collections::BTreeMap;

/// Longest metadata string a commit may carry (Kafka's `offset.metadata.max.bytes` default).
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;

/// One partition of an OffsetCommit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommitPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// Leader epoch, or -1.
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
}

/// An OffsetCommit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    /// The group.
    pub group_id: String,
    /// -1 for simple commits.
    pub generation_id: i32,
    /// Empty for simple commits.
    pub member_id: String,
    /// The offsets.
    pub partitions: Vec<OffsetCommitPartition>,
    /// The broker that validated the commit as the group's coordinator, when it came through
    /// one; `None` for a commit sent straight to a controller.
    pub coordinator: Option<BrokerId>,
}

/// `Err(NOT_COORDINATOR)` unless `coordinator` coordinates `group` in `image`.
fn check_coordinator(
    image: &MetadataImage,
    group: &str,
    coordinator: BrokerId,
) -> Result<(), ErrorCode> {
    if image.group_coordinator(group) == Some(coordinator) {
        Ok(())
    } else {
        Err(ErrorCode::NotCoordinator)
    }
}

/// Per-partition outcome, keyed by (topic, partition); `None` is success.
pub type OffsetCommitReply = BTreeMap<(String, i32), Option<ErrorCode>>;

/// Validates a commit and turns the valid partitions into one record. A request-level error
/// (bad group id, a member-based commit) fails every partition with that code.
pub fn commit_offsets(
    image: &MetadataImage,
    request: &OffsetCommitRequest,
    now_ms: i64,
) -> ControllerResult<OffsetCommitReply> {
    let group_error = if request.group_id.is_empty() {
        Some(ErrorCode::InvalidGroupId)
    } else if let Some(b) = request.coordinator {
        check_coordinator(image, &request.group_id, b).err()
    } else if request.generation_id >= 0 || !request.member_id.is_empty() {
        Some(ErrorCode::IllegalGeneration)
    } else {
        None
    };
    let mut reply = OffsetCommitReply::new();
    let mut offsets = Vec::new();
    for p in &request.partitions {
        let tp = image.topic_id(&p.topic).map(|topic_id| TopicIdPartition {
            topic_id,
            partition: p.partition,
        });
        let error = if let Some(code) = group_error {
            Some(code)
        } else if p.metadata.len() > MAX_OFFSET_METADATA_BYTES {
            Some(ErrorCode::OffsetMetadataTooLarge)
        } else if tp.is_none_or(|tp| image.partition(tp).is_none()) {
            Some(ErrorCode::UnknownTopicOrPartition)
        } else {
            None
        };
        if let (None, Some(tp)) = (error, tp) {
            offsets.push(CommittedOffset {
                group_id: request.group_id.clone(),
                topic_id: tp.topic_id,
                partition: tp.partition,
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata: p.metadata.clone(),
                commit_timestamp_ms: now_ms,
            });
        }
        reply.insert((p.topic.clone(), p.partition), error);
    }
    let records = if offsets.is_empty() {
        vec![]
    } else {
        vec![MetadataRecord::OffsetCommit(OffsetCommitRecord { offsets })]
    };
    ControllerResult::atomic(records, reply)
}

/// DeleteGroups of one group, forwarded by its coordinator once it found the group without
/// members (the coordinator also answers GROUP_ID_NOT_FOUND for a group it has never seen):
/// removes every committed offset.
pub fn delete_group(
    image: &MetadataImage,
    group: &str,
    coordinator: BrokerId,
) -> ControllerResult<Result<(), ErrorCode>> {
    let verdict = if group.is_empty() {
        Err(ErrorCode::InvalidGroupId)
    } else {
        check_coordinator(image, group, coordinator)
    };
    if let Err(e) = verdict {
        return ControllerResult::atomic(vec![], Err(e));
    }
    if image.group_offsets(group).is_none() {
        return ControllerResult::atomic(vec![], Ok(()));
    }
    ControllerResult::atomic(
        vec![MetadataRecord::OffsetDelete(OffsetDeleteRecord {
            group_id: group.to_string(),
            partitions: None,
        })],
        Ok(()),
    )
}

/// OffsetDelete, forwarded by the coordinator with the partitions of topics the group's
/// members are subscribed to already answered (GROUP_SUBSCRIBED_TO_TOPIC). Unknown topics
/// and partitions get UNKNOWN_TOPIC_OR_PARTITION; a partition without a committed offset is
/// deleted trivially, as in Kafka. Request-level: GROUP_ID_NOT_FOUND when the group has no
/// offsets at all.
pub fn delete_offsets(
    image: &MetadataImage,
    group: &str,
    coordinator: BrokerId,
    partitions: &[(String, i32)],
) -> ControllerResult<Result<OffsetCommitReply, ErrorCode>> {
    if group.is_empty() {
        return ControllerResult::atomic(vec![], Err(ErrorCode::InvalidGroupId));
    }
    if let Err(e) = check_coordinator(image, group, coordinator) {
        return ControllerResult::atomic(vec![], Err(e));
    }
    let Some(committed) = image.group_offsets(group) else {
        return ControllerResult::atomic(vec![], Err(ErrorCode::GroupIdNotFound));
    };
    let mut reply = OffsetCommitReply::new();
    let mut gone = Vec::new();
    for (topic, partition) in partitions {
        let tp = image.topic_id(topic).map(|topic_id| TopicIdPartition {
            topic_id,
            partition: *partition,
        });
        match tp.filter(|tp| image.partition(*tp).is_some()) {
            None => {
                reply.insert(
                    (topic.clone(), *partition),
                    Some(ErrorCode::UnknownTopicOrPartition),
                );
            }
            Some(tp) => {
                if committed.contains_key(&tp) {
                    gone.push(tp);
                }
                reply.insert((topic.clone(), *partition), None);
            }
        }
    }
    let records = if gone.is_empty() {
        vec![]
    } else {
        vec![MetadataRecord::OffsetDelete(OffsetDeleteRecord {
            group_id: group.to_string(),
            partitions: Some(gone),
        })]
    };
    ControllerResult::atomic(records, Ok(reply))
}

/// A fetched offset: -1 with empty metadata when nothing is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The committed offset or -1.
    pub offset: i64,
    /// Leader epoch or -1.
    pub leader_epoch: i32,
    /// Metadata or empty.
    pub metadata: String,
}

/// OffsetFetch. With `partitions = None`, every partition the group committed; otherwise
/// each named partition, -1 where nothing is committed or the partition does not exist
/// (no error, as Kafka answers).
pub fn fetch_offsets(
    image: &MetadataImage,
    group_id: &str,
    partitions: Option<&[(String, i32)]>,
) -> Result<Vec<FetchedOffset>, ApiError> {
    if group_id.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidGroupId,
            "group id is empty",
        ));
    }
    let committed = image.group_offsets(group_id);
    let name_of = |tp: &TopicIdPartition| image.topic(&tp.topic_id).map(|t| t.name.clone());
    Ok(match partitions {
        None => committed
            .into_iter()
            .flat_map(|m| m.iter())
            .filter_map(|(tp, v)| {
                Some(FetchedOffset {
                    topic: name_of(tp)?,
                    partition: tp.partition,
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata.clone(),
                })
            })
            .collect(),
        Some(list) => list
            .iter()
            .map(|(topic, partition)| {
                let value = image.topic_id(topic).and_then(|topic_id| {
                    committed?.get(&TopicIdPartition {
                        topic_id,
                        partition: *partition,
                    })
                });
                FetchedOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: value.map_or(-1, |v| v.offset),
                    leader_epoch: value.map_or(-1, |v| v.leader_epoch),
                    metadata: value.map(|v| v.metadata.clone()).unwrap_or_default(),
                }
            })
            .collect(),
    })
}
