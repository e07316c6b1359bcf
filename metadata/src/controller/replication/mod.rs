//! Replication control: topics, partitions, leader election, ISR changes and reassignment.
//!
//! Every function here reads the image and returns records; partition changes all go through
//! [`PartitionChangeBuilder`](super::partition_change::PartitionChangeBuilder).

pub mod alter_partition;
pub mod election;
pub mod reassignment;
pub mod topics;

use crate::image::MetadataImage;
use crate::types::{TopicId, TopicIdPartition};

/// A topic named by name (older API versions) or by id (newer ones).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TopicRef {
    /// By name.
    Name(String),
    /// By id.
    Id(TopicId),
}

impl TopicRef {
    /// The topic's id in `image`, if it exists.
    pub fn resolve(&self, image: &MetadataImage) -> Option<TopicId> {
        match self {
            TopicRef::Name(name) => image.topic_id(name),
            TopicRef::Id(id) => image.topic(id).map(|t| t.id),
        }
    }
}

/// Resolves `topic`-`partition` by name to an existing partition.
pub fn find_partition(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
) -> Option<TopicIdPartition> {
    let topic_id = image.topic_id(topic)?;
    let tp = TopicIdPartition {
        topic_id,
        partition,
    };
    image.partition(tp).map(|_| tp)
}
