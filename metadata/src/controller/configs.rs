//! Config validation and changes for topics and brokers (IncrementalAlterConfigs semantics).

use super::{check_batch_size, ControllerResult};
use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::{ConfigRecord, ConfigResource, ConfigResourceType, MetadataRecord};

/// Topic config keys Kafka defines, with the kind of value each takes.
const TOPIC_CONFIGS: &[(&str, Kind)] = &[
    ("cleanup.policy", Kind::CleanupPolicy),
    (
        "compression.type",
        Kind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    ),
    ("delete.retention.ms", Kind::Long { min: 0 }),
    ("file.delete.delay.ms", Kind::Long { min: 0 }),
    ("flush.messages", Kind::Long { min: 1 }),
    ("flush.ms", Kind::Long { min: 0 }),
    ("index.interval.bytes", Kind::Long { min: 0 }),
    ("max.compaction.lag.ms", Kind::Long { min: 1 }),
    ("max.message.bytes", Kind::Long { min: 0 }),
    (
        "message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    ("min.cleanable.dirty.ratio", Kind::Ratio),
    ("min.compaction.lag.ms", Kind::Long { min: 0 }),
    ("min.insync.replicas", Kind::Long { min: 1 }),
    ("preallocate", Kind::Bool),
    ("retention.bytes", Kind::Long { min: -1 }),
    ("retention.ms", Kind::Long { min: -1 }),
    ("segment.bytes", Kind::Long { min: 14 }),
    ("segment.index.bytes", Kind::Long { min: 4 }),
    ("segment.jitter.ms", Kind::Long { min: 0 }),
    ("segment.ms", Kind::Long { min: 1 }),
    ("unclean.leader.election.enable", Kind::Bool),
    ("message.downconversion.enable", Kind::Bool),
];

/// Broker-level keys kmeta accepts as dynamic config (per broker or cluster default).
const BROKER_CONFIGS: &[(&str, Kind)] = &[
    ("unclean.leader.election.enable", Kind::Bool),
    ("min.insync.replicas", Kind::Long { min: 1 }),
    ("log.retention.ms", Kind::Long { min: -1 }),
    ("log.retention.bytes", Kind::Long { min: -1 }),
];

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Long { min: i64 },
    Ratio,
    CleanupPolicy,
    OneOf(&'static [&'static str]),
}

fn validate(table: &[(&str, Kind)], what: &str, key: &str, value: &str) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(ErrorCode::InvalidConfig, why);
    let Some((_, kind)) = table.iter().find(|(k, _)| *k == key) else {
        return Err(invalid(format!("Unknown {what} config name: {key}")));
    };
    let ok = match kind {
        Kind::Bool => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        Kind::Long { min } => value.trim().parse::<i64>().is_ok_and(|v| v >= *min),
        Kind::Ratio => value
            .trim()
            .parse::<f64>()
            .is_ok_and(|v| (0.0..=1.0).contains(&v)),
        Kind::CleanupPolicy => value
            .split(',')
            .all(|p| matches!(p.trim(), "delete" | "compact")),
        Kind::OneOf(choices) => choices.contains(&value),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "Invalid value {value} for configuration {key}"
        )))
    }
}

/// Checks one topic config key and value.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), ApiError> {
    validate(TOPIC_CONFIGS, "topic", key, value)
}

/// One change of IncrementalAlterConfigs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set the key to a value.
    Set(String, String),
    /// Remove the key (back to the default).
    Delete(String),
}

/// Applies config changes to one resource, after validating all of them (all or nothing).
pub fn alter_configs(
    image: &MetadataImage,
    resource: &ConfigResource,
    ops: &[ConfigOp],
    validate_only: bool,
) -> Result<ControllerResult<()>, ApiError> {
    let table = match resource.resource_type {
        ConfigResourceType::Topic => {
            if image.topic_id(&resource.resource_name).is_none() {
                return Err(ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {} does not exist", resource.resource_name),
                ));
            }
            TOPIC_CONFIGS
        }
        ConfigResourceType::Broker => {
            let name = &resource.resource_name;
            if !name.is_empty() && name.parse::<i32>().map_or(true, |id| id < 0) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid broker id {name}"),
                ));
            }
            BROKER_CONFIGS
        }
    };
    let what = match resource.resource_type {
        ConfigResourceType::Topic => "topic",
        ConfigResourceType::Broker => "broker",
    };
    let mut records = Vec::with_capacity(ops.len());
    for op in ops {
        let (name, value) = match op {
            ConfigOp::Set(k, v) => {
                validate(table, what, k, v)?;
                (k, Some(v.clone()))
            }
            ConfigOp::Delete(k) => (k, None),
        };
        records.push(MetadataRecord::Config(ConfigRecord {
            resource: resource.clone(),
            name: name.clone(),
            value,
        }));
    }
    check_batch_size(records.len())?;
    if validate_only {
        records.clear();
    }
    Ok(ControllerResult::atomic(records, ()))
}
