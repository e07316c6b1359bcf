//! What a run of records changed, so that whatever reacts to the image (a broker's hosted
//! partitions) does work in proportion to the change, not to the whole image.

use crate::image::MetadataImage;
use crate::record::{ConfigResourceType, MetadataRecord};
use crate::types::{TopicId, TopicIdPartition};
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
    /// A broker registered, unregistered, or was fenced or unfenced: which brokers may join
    /// an ISR changed, with no partition touched.
    pub brokers: bool,
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
            && !self.brokers
    }

    /// Notes `record`, about to be replayed onto `before`.
    pub fn note(&mut self, before: &MetadataImage, record: &MetadataRecord) {
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
            MetadataRecord::ReplicaRemoval(r) => {
                // The partitions in its scope: those it may change. They come sorted, so the
                // set is built in bulk and merged in (`append`), not grown an insert at a time,
                // unless it is small beside what is noted already.
                let mut covered: BTreeSet<TopicIdPartition> = before
                    .topics_on_broker(r.broker_id)
                    .flat_map(|(topic, indexes)| {
                        indexes.iter().filter_map(move |&partition| {
                            let p = topic.partitions.get(&partition)?;
                            r.covers(p.leader, &p.isr).then_some(TopicIdPartition {
                                topic_id: topic.id,
                                partition,
                            })
                        })
                    })
                    .collect();
                if covered.len() < self.partitions.len() / 8 {
                    self.partitions.extend(covered);
                } else {
                    self.partitions.append(&mut covered);
                }
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
            MetadataRecord::RegisterBroker(_)
            | MetadataRecord::UnregisterBroker(_)
            | MetadataRecord::BrokerRegistrationChange(_) => self.brokers = true,
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

    /// Adds what `later` touched.
    pub fn merge(&mut self, later: ImageDelta) {
        self.all |= later.all;
        self.brokers |= later.brokers;
        for tp in &later.removed {
            self.partitions.remove(tp);
        }
        for tp in &later.partitions {
            self.removed.remove(tp);
        }
        self.partitions.extend(later.partitions);
        self.topic_configs.extend(later.topic_configs);
        self.removed.extend(later.removed);
    }
}
