//! CreateTopics, DeleteTopics and CreatePartitions.

use super::TopicRef;
use crate::controller::configs::validate_topic_config;
use crate::controller::placement::{place_replicas, usable_brokers};
use crate::controller::{check_batch_size, ControllerConfig, ControllerResult, LeaderAcceptance};
use crate::error::{ApiError, ErrorCode};
use crate::image::{collision_key, MetadataImage};
use crate::record::*;
use crate::types::*;
use std::collections::BTreeSet;

/// Longest legal topic name (Kafka's limit).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name by Kafka's rules.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(ErrorCode::InvalidTopicException, why);
    if name.is_empty() {
        return Err(invalid("Topic name is illegal, it can't be empty".into()));
    }
    if name == "." || name == ".." {
        return Err(invalid("Topic name cannot be \".\" or \"..\"".into()));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(invalid(format!(
            "Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_LEN} characters, topic name: {name}"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(format!(
            "Topic name {name} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// One topic of a CreateTopics request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatableTopic {
    /// The name.
    pub name: String,
    /// A fresh random id the runtime drew for this topic (the core draws no randomness).
    pub topic_id: TopicId,
    /// Partition count, or -1 for `num.partitions`.
    pub num_partitions: i32,
    /// Replication factor, or -1 for `default.replication.factor`.
    pub replication_factor: i16,
    /// Manual assignment: `(partition, replicas)`; then both counts must be -1.
    pub assignments: Vec<(i32, Vec<BrokerId>)>,
    /// Initial configs.
    pub configs: Vec<(String, String)>,
}

/// The outcome for one topic of CreateTopics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopicResult {
    /// The name.
    pub name: String,
    /// The error, or `None` on success.
    pub error: Option<ApiError>,
    /// The id on success.
    pub topic_id: Option<TopicId>,
    /// Partitions created.
    pub num_partitions: i32,
    /// Replication factor used.
    pub replication_factor: i16,
}

/// CreateTopics. Each topic succeeds or fails on its own; the records of all successful
/// topics form one atomic batch (bounded by `MAX_RECORDS_PER_BATCH`).
pub fn create_topics(
    image: &MetadataImage,
    config: &ControllerConfig,
    topics: &[CreatableTopic],
    validate_only: bool,
) -> ControllerResult<Vec<CreateTopicResult>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    let mut seen_names = BTreeSet::new();
    let duplicates: BTreeSet<&str> = topics
        .iter()
        .filter(|t| !seen_names.insert(t.name.as_str()))
        .map(|t| t.name.as_str())
        .collect();
    // The collision keys of the names this request creates; the image's own come from its
    // index.
    let mut collision_keys: BTreeSet<String> = BTreeSet::new();
    for topic in topics {
        let outcome = if duplicates.contains(topic.name.as_str()) {
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "Found multiple entries for this topic.",
            ))
        } else {
            create_one(image, config, topic, &collision_keys)
        };
        let result = match outcome.and_then(|(new, rf, n)| {
            check_batch_size(records.len() + new.len()).map(|_| (new, rf, n))
        }) {
            Ok((new, rf, n)) => {
                collision_keys.insert(collision_key(&topic.name));
                records.extend(new);
                CreateTopicResult {
                    name: topic.name.clone(),
                    error: None,
                    topic_id: Some(topic.topic_id),
                    num_partitions: n,
                    replication_factor: rf,
                }
            }
            Err(e) => CreateTopicResult {
                name: topic.name.clone(),
                error: Some(e),
                topic_id: None,
                num_partitions: -1,
                replication_factor: -1,
            },
        };
        results.push(result);
    }
    if validate_only {
        records.clear();
    }
    ControllerResult::atomic(records, results)
}

fn create_one(
    image: &MetadataImage,
    config: &ControllerConfig,
    topic: &CreatableTopic,
    collision_keys: &BTreeSet<String>,
) -> Result<(Vec<MetadataRecord>, i16, i32), ApiError> {
    validate_topic_name(&topic.name)?;
    if image.topic_id(&topic.name).is_some() {
        return Err(ApiError::new(
            ErrorCode::TopicAlreadyExists,
            format!("Topic '{}' already exists.", topic.name),
        ));
    }
    if image.has_colliding_topic(&topic.name)
        || collision_keys.contains(&collision_key(&topic.name))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidTopicException,
            format!(
                "Topic '{}' collides with an existing topic: names may not differ only in '.' and '_'",
                topic.name
            ),
        ));
    }
    if topic.topic_id.is_nil() || image.topic(&topic.topic_id).is_some() {
        return Err(ApiError::new(
            ErrorCode::UnknownServerError,
            "topic id unusable",
        ));
    }
    for (k, v) in &topic.configs {
        validate_topic_config(k, v)?;
    }
    let assignments = if topic.assignments.is_empty() {
        let partitions = match topic.num_partitions {
            -1 => config.default_num_partitions,
            n if n <= 0 => {
                return Err(ApiError::new(
                    ErrorCode::InvalidPartitions,
                    "Number of partitions was set to an invalid non-positive value.",
                ))
            }
            n => n,
        };
        let rf = match topic.replication_factor {
            -1 => config.default_replication_factor,
            r if r <= 0 => {
                return Err(ApiError::new(
                    ErrorCode::InvalidReplicationFactor,
                    "Replication factor must be larger than 0.",
                ))
            }
            r => r,
        };
        check_batch_size(partitions as usize + 1 + topic.configs.len())?;
        place_replicas(
            &usable_brokers(image),
            0,
            partitions,
            rf,
            placement_seed(&topic.topic_id),
            image.brokers().count(),
        )?
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "A manual partition assignment was specified, but numPartitions or replicationFactor was not set to -1.",
            ));
        }
        let mut sorted = topic.assignments.clone();
        sorted.sort_by_key(|(p, _)| *p);
        for (expected, (p, _)) in sorted.iter().enumerate() {
            if *p != expected as i32 {
                return Err(ApiError::new(
                    ErrorCode::InvalidReplicaAssignment,
                    "Partitions in the manual assignment must be numbered consecutively from 0.",
                ));
            }
        }
        check_batch_size(sorted.len() + 1 + topic.configs.len())?;
        let lists: Vec<Vec<BrokerId>> = sorted.into_iter().map(|(_, r)| r).collect();
        validate_manual_assignment(image, &lists, None)?;
        lists
    };
    let rf = assignments[0].len() as i16;
    let count = assignments.len() as i32;
    let mut records = Vec::with_capacity(assignments.len() + 1 + topic.configs.len());
    records.push(MetadataRecord::Topic(TopicRecord {
        name: topic.name.clone(),
        topic_id: topic.topic_id,
    }));
    for (index, replicas) in assignments.into_iter().enumerate() {
        records.push(MetadataRecord::Partition(new_partition(
            image,
            topic.topic_id,
            index as i32,
            replicas,
        )));
    }
    for (k, v) in &topic.configs {
        records.push(MetadataRecord::Config(ConfigRecord {
            resource: ConfigResource::topic(&topic.name),
            name: k.clone(),
            value: Some(v.clone()),
        }));
    }
    Ok((records, rf, count))
}

/// A new partition: the ISR is its active replicas, the leader the first of them.
fn new_partition(
    image: &MetadataImage,
    topic_id: TopicId,
    partition: i32,
    replicas: Vec<BrokerId>,
) -> PartitionRecord {
    let acceptance = LeaderAcceptance::of(image);
    let isr: BrokerList = replicas
        .iter()
        .copied()
        .filter(|r| acceptance.accepts(*r))
        .collect();
    PartitionRecord {
        topic_id,
        partition,
        leader: isr.first().copied().unwrap_or(BrokerId::NONE),
        replicas: replicas.into(),
        isr,
        removing_replicas: BrokerList::new(),
        adding_replicas: BrokerList::new(),
        leader_recovery_state: LeaderRecoveryState::Recovered,
        leader_epoch: LeaderEpoch(0),
        partition_epoch: PartitionEpoch(0),
    }
}

/// Checks a manual assignment: non-empty, no duplicates, every broker registered, one
/// replication factor, and at least one active broker per partition.
fn validate_manual_assignment(
    image: &MetadataImage,
    lists: &[Vec<BrokerId>],
    expected_rf: Option<usize>,
) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(ErrorCode::InvalidReplicaAssignment, why);
    let rf = expected_rf.unwrap_or_else(|| lists.first().map_or(0, Vec::len));
    for (i, replicas) in lists.iter().enumerate() {
        if replicas.is_empty() {
            return Err(invalid(format!(
                "The manual partition assignment includes an empty replica list for partition {i}."
            )));
        }
        if replicas.len() != rf {
            return Err(invalid(format!(
                "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {rf} replica(s).",
                replicas.len()
            )));
        }
        let distinct: BTreeSet<_> = replicas.iter().collect();
        if distinct.len() != replicas.len() {
            return Err(invalid(format!(
                "The manual partition assignment for partition {i} contains duplicate replicas."
            )));
        }
        if let Some(b) = replicas.iter().find(|b| image.broker(**b).is_none()) {
            return Err(invalid(format!(
                "The manual partition assignment includes broker {b}, but no such broker is registered."
            )));
        }
        if !replicas.iter().any(|b| image.is_active_broker(*b)) {
            return Err(invalid(format!(
                "All brokers specified in the manual partition assignment for partition {i} are fenced or in controlled shutdown."
            )));
        }
    }
    Ok(())
}

/// The outcome of deleting one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTopicResult {
    /// The topic as named in the request.
    pub topic: TopicRef,
    /// Its name, when found.
    pub name: Option<String>,
    /// Its id, when found.
    pub topic_id: Option<TopicId>,
    /// The error, or `None` on success.
    pub error: Option<ApiError>,
}

/// DeleteTopics: one RemoveTopic record per existing topic; offsets and configs of the topic
/// go with it.
pub fn delete_topics(
    image: &MetadataImage,
    topics: &[TopicRef],
) -> ControllerResult<Vec<DeleteTopicResult>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    let mut seen = BTreeSet::new();
    let duplicates: BTreeSet<&TopicRef> = topics.iter().filter(|t| !seen.insert(*t)).collect();
    let mut removed = BTreeSet::new();
    for topic in topics {
        let id = topic.resolve(image);
        let error = if duplicates.contains(topic) {
            Some(ApiError::new(
                ErrorCode::InvalidRequest,
                "Duplicate topic in request.",
            ))
        } else if id.is_none() {
            let code = match topic {
                TopicRef::Name(_) => ErrorCode::UnknownTopicOrPartition,
                TopicRef::Id(_) => ErrorCode::UnknownTopicId,
            };
            Some(ApiError::new(code, "This server does not host this topic."))
        } else if !removed.insert(id) {
            Some(ApiError::new(
                ErrorCode::InvalidRequest,
                "Topic named twice in request.",
            ))
        } else {
            None
        };
        if let (None, Some(id)) = (&error, id) {
            records.push(MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: id,
            }));
        }
        results.push(DeleteTopicResult {
            topic: topic.clone(),
            name: id.and_then(|id| image.topic(&id)).map(|t| t.name.clone()),
            topic_id: id,
            error,
        });
    }
    ControllerResult::atomic(records, results)
}

/// One topic of CreatePartitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePartitionsTopic {
    /// The topic.
    pub name: String,
    /// The new total partition count.
    pub count: i32,
    /// Replicas of each new partition, or `None` for automatic placement.
    pub assignments: Option<Vec<Vec<BrokerId>>>,
}

/// CreatePartitions: per-topic outcome (`None` is success), all new partitions in one batch.
pub fn create_partitions(
    image: &MetadataImage,
    topics: &[CreatePartitionsTopic],
    validate_only: bool,
) -> ControllerResult<Vec<(String, Option<ApiError>)>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    let mut seen = BTreeSet::new();
    for t in topics {
        let outcome = if !seen.insert(t.name.as_str()) {
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "Duplicate topic in request.",
            ))
        } else {
            create_partitions_one(image, t)
                .and_then(|new| check_batch_size(records.len() + new.len()).map(|_| new))
        };
        match outcome {
            Ok(new) => {
                records.extend(new);
                results.push((t.name.clone(), None));
            }
            Err(e) => results.push((t.name.clone(), Some(e))),
        }
    }
    if validate_only {
        records.clear();
    }
    ControllerResult::atomic(records, results)
}

fn create_partitions_one(
    image: &MetadataImage,
    t: &CreatePartitionsTopic,
) -> Result<Vec<MetadataRecord>, ApiError> {
    let topic = image.topic_by_name(&t.name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("Topic {} does not exist.", t.name),
        )
    })?;
    let current = topic.partitions.len() as i32;
    if t.count < current {
        return Err(ApiError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "The topic {} currently has {current} partition(s); {} would not be an increase.",
                t.name, t.count
            ),
        ));
    }
    if t.count == current {
        return Err(ApiError::new(
            ErrorCode::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    let added = t.count - current;
    check_batch_size(added as usize)?;
    let rf = topic
        .partitions
        .values()
        .next()
        .map(|p| p.target_replicas().len())
        .unwrap_or(1);
    let lists = match &t.assignments {
        Some(lists) => {
            if lists.len() != added as usize {
                return Err(ApiError::new(
                    ErrorCode::InvalidReplicaAssignment,
                    format!("Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.", lists.len()),
                ));
            }
            validate_manual_assignment(image, lists, Some(rf))?;
            lists.clone()
        }
        None => place_replicas(
            &usable_brokers(image),
            current,
            added,
            rf as i16,
            placement_seed(&topic.id),
            image.brokers().count(),
        )?,
    };
    Ok(lists
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| {
            MetadataRecord::Partition(new_partition(image, topic.id, current + i as i32, replicas))
        })
        .collect())
}

/// The seed of a topic's replica placement: both halves of its id. Ids the controller makes
/// begin with their creation time (UUIDv7, so that a new topic's entries go at the end of the
/// maps keyed by topic id), and topics created in one millisecond share most of the first
/// half; the second is random.
fn placement_seed(id: &uuid::Uuid) -> u64 {
    let (high, low) = id.as_u64_pair();
    high ^ low
}
