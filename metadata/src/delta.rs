//! What a run of records changed, so that whatever reacts to the image (a broker's hosted
//! partitions) does work in proportion to the change, not to the whole image.

use crate::image::{MetadataImage, ReplayError};
use crate::record::{ConfigResourceType, MetadataRecord};
use crate::types::{BrokerId, LogOffset, TopicId, TopicIdPartition};
use std::collections::BTreeSet;

/// The partitions and topic configs a run of records touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDelta {
    /// Anything may have changed: a snapshot was loaded, or a broker or cluster config (which
    /// every partition's config falls back to) changed.
    pub all: bool,
    /// Partitions created or changed (leader, ISR, replicas, epochs).
    pub partitions: BTreeSet<TopicIdPartition>,
    /// Topics whose configs changed.
    pub topic_configs: BTreeSet<TopicId>,
    /// Partitions of deleted topics.
    pub removed: BTreeSet<TopicIdPartition>,
    /// Brokers that registered, unregistered, or were fenced or unfenced: which brokers may
    /// join an ISR changed, with no partition touched.
    pub brokers: BTreeSet<BrokerId>,
}

impl ImageDelta {
    /// A delta that says everything changed.
    pub fn everything() -> ImageDelta {
        ImageDelta {
            all: true,
            ..ImageDelta::default()
        }
    }

    /// True when nothing was touched.
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.partitions.is_empty()
            && self.topic_configs.is_empty()
            && self.removed.is_empty()
            && self.brokers.is_empty()
    }

    /// Notes `record`, about to be replayed onto `before`. A broker-wide record is noted by
    /// [`Self::replay`] from what its replay changed, never here.
    fn note(&mut self, before: &MetadataImage, record: &MetadataRecord) {
        match record {
            MetadataRecord::Partition(r) => {
                let tp = TopicIdPartition {
                    topic_id: r.topic_id,
                    partition: r.partition,
                };
                self.removed.remove(&tp);
                self.partitions.insert(tp);
            }
            MetadataRecord::PartitionChange(r) => {
                self.partitions.insert(TopicIdPartition {
                    topic_id: r.topic_id,
                    partition: r.partition,
                });
            }
            MetadataRecord::RemoveTopic(r) => {
                self.topic_configs.remove(&r.topic_id);
                if let Some(t) = before.topic(&r.topic_id) {
                    for &partition in t.partitions.keys() {
                        let tp = TopicIdPartition {
                            topic_id: r.topic_id,
                            partition,
                        };
                        self.partitions.remove(&tp);
                        self.removed.insert(tp);
                    }
                }
            }
            MetadataRecord::RegisterBroker(r) => {
                self.brokers.insert(r.broker_id);
            }
            MetadataRecord::UnregisterBroker(r) => {
                self.brokers.insert(r.broker_id);
            }
            MetadataRecord::BrokerRegistrationChange(r) => {
                self.brokers.insert(r.broker_id);
            }
            MetadataRecord::Config(r) => match r.resource.resource_type {
                ConfigResourceType::Topic => {
                    if let Some(id) = before.topic_id(&r.resource.resource_name) {
                        self.topic_configs.insert(id);
                    }
                }
                ConfigResourceType::Broker => self.all = true,
            },
            _ => {}
        }
    }

    /// Notes `record` and replays it onto `image` at `offset`. A broker-wide record's
    /// partitions are those its replay changed, listed by the replay itself: which of the
    /// broker's partitions it changes is known only by deciding each, so a walk beforehand
    /// would do that work twice. On error `image` is unchanged and the delta may hold what
    /// `record` would have touched.
    pub fn replay(
        &mut self,
        image: &mut MetadataImage,
        offset: LogOffset,
        record: &MetadataRecord,
    ) -> Result<(), ReplayError> {
        if !matches!(record, MetadataRecord::BrokerPartitions(_)) {
            self.note(image, record);
            return image.replay(offset, record);
        }
        let mut changed = Vec::new();
        image.replay_reporting(offset, record, &mut changed)?;
        // In replay order, which is key order: the set is built in bulk and merged in, not
        // grown an insert at a time.
        union_into(&mut self.partitions, changed.into_iter().collect());
        Ok(())
    }

    /// Adds what `later` touched.
    pub fn merge(&mut self, later: ImageDelta) {
        self.all |= later.all;
        self.brokers.extend(later.brokers);
        if !self.partitions.is_empty() {
            for tp in &later.removed {
                self.partitions.remove(tp);
            }
        }
        if !self.removed.is_empty() {
            for tp in &later.partitions {
                self.removed.remove(tp);
            }
        }
        union_into(&mut self.partitions, later.partitions);
        union_into(&mut self.topic_configs, later.topic_configs);
        union_into(&mut self.removed, later.removed);
    }
}

/// Adds `b` to `a`: the smaller into the larger one insert at a time, or, when they are of a
/// size, both merged into a new tree in one linear pass (`append`), so that a delta of a
/// million partitions moves into an empty one for nothing and merges into a large one in
/// O(n + m), never O(m log n) with a tree rebalanced all the way.
fn union_into<T: Ord>(a: &mut BTreeSet<T>, mut b: BTreeSet<T>) {
    if a.len() < b.len() {
        std::mem::swap(a, &mut b);
    }
    if b.len() < a.len() / 8 {
        a.extend(b);
    } else {
        a.append(&mut b);
    }
}
