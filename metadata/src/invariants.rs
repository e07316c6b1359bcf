//! Checks every image must pass, and every step between two images.
//!
//! Replay already refuses records that break a single partition's shape; these checks look at
//! the image as a whole (leaders on active brokers, the derived indexes in step with the
//! primary state) and at transitions (epochs only grow). Tests run them after every record;
//! debug builds of the runtime may run them after every batch.

use crate::image::MetadataImage;
use crate::types::{BrokerId, TopicIdPartition};
use imbl::{OrdMap, OrdSet};

/// Every violated invariant of `image`, described; empty when the image is sound.
pub fn check(image: &MetadataImage) -> Vec<String> {
    let mut faults = Vec::new();
    let mut by_broker: OrdMap<BrokerId, OrdSet<TopicIdPartition>> = OrdMap::new();
    let mut reassigning = OrdSet::new();
    let mut imbalanced = OrdSet::new();
    let mut leaderless = OrdSet::new();
    let mut leader_counts: std::collections::BTreeMap<BrokerId, usize> = Default::default();
    let mut partitions = 0usize;
    let mut under_replicated = 0usize;
    for topic in image.topics_by_name() {
        if image.topic_id(&topic.name) != Some(topic.id) {
            faults.push(format!("topic {} is not indexed by name", topic.name));
        }
        for (&index, p) in topic.partitions.iter() {
            partitions += 1;
            under_replicated += usize::from(p.is_under_replicated());
            let tp = TopicIdPartition {
                topic_id: topic.id,
                partition: index,
            };
            if let Some(fault) = p.shape_error() {
                faults.push(format!("partition {}-{index}: {fault}", topic.name));
            }
            if !p.leader.is_none() && !image.is_active_broker(p.leader) {
                faults.push(format!(
                    "partition {}-{index} is led by broker {} which is not active",
                    topic.name, p.leader
                ));
            }
            for r in &p.replicas {
                by_broker.entry(*r).or_default().insert(tp);
            }
            if p.is_reassigning() {
                reassigning.insert(tp);
            }
            if p.has_imbalanced_leader() {
                imbalanced.insert(tp);
            }
            if p.leader.is_none() {
                leaderless.insert(tp);
            } else {
                *leader_counts.entry(p.leader).or_insert(0usize) += 1;
            }
        }
    }
    if image.topic_count() != image.topics_by_name().count() {
        faults.push("topic name index and topic map differ in size".into());
    }
    let derived = image.derived_indexes();
    let indexed: OrdMap<BrokerId, OrdSet<TopicIdPartition>> = derived
        .partitions_by_broker
        .keys()
        .map(|b| (*b, image.partitions_on_broker(*b).collect::<OrdSet<_>>()))
        .collect();
    let well_formed = derived.partitions_by_broker.values().all(|topics| {
        !topics.is_empty()
            && topics
                .values()
                .all(|ix| !ix.is_empty() && ix.windows(2).all(|w| w[0] < w[1]))
    });
    if indexed != by_broker || !well_formed {
        faults.push("partitions-by-broker index is out of step".into());
    }
    if *derived.reassigning != reassigning {
        faults.push("reassigning index is out of step".into());
    }
    if *derived.imbalanced != imbalanced {
        faults.push("imbalanced-leader index is out of step".into());
    }
    if *derived.leaderless != leaderless {
        faults.push("leaderless index is out of step".into());
    }
    if derived
        .leader_counts
        .iter()
        .map(|(b, n)| (*b, *n))
        .ne(leader_counts.iter().map(|(b, n)| (*b, *n)))
    {
        faults.push("leader-count index is out of step".into());
    }
    if derived.partition_count != partitions {
        faults.push(format!(
            "partition count {} but {partitions} partitions",
            derived.partition_count
        ));
    }
    if derived.under_replicated_count != under_replicated {
        faults.push(format!(
            "under-replicated count {} but {under_replicated} partitions under-replicated",
            derived.under_replicated_count
        ));
    }
    // The ACL index holds each entry once, under its own resource and id.
    let mut expected: Vec<_> = image
        .acls()
        .map(|a| {
            (
                a.resource_type,
                a.pattern_type,
                a.resource_name.as_str(),
                a.id,
                a.id,
            )
        })
        .collect();
    expected.sort();
    if derived.acls_by_resource != expected {
        faults.push("ACL index is out of step".into());
    }
    for group in image.groups() {
        for tp in image
            .group_offsets(group)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            if image.partition(*tp).is_none() {
                faults.push(format!(
                    "group {group} has an offset for unknown partition {tp}"
                ));
            }
            let indexed = derived
                .groups_by_topic
                .get(&tp.topic_id)
                .is_some_and(|g| g.contains(group));
            if !indexed {
                faults.push(format!(
                    "group {group} is not indexed under topic {}",
                    tp.topic_id
                ));
            }
        }
    }
    faults
}

/// Every way `after` went backwards from `before`: leader and partition epochs of surviving
/// partitions, and broker epochs of surviving registrations, only grow.
pub fn check_transition(before: &MetadataImage, after: &MetadataImage) -> Vec<String> {
    let mut faults = Vec::new();
    if after.offset() < before.offset() {
        faults.push(format!(
            "offset went back from {} to {}",
            before.offset(),
            after.offset()
        ));
    }
    for old in before.brokers() {
        if let Some(new) = after.broker(old.broker_id) {
            if new.broker_epoch < old.broker_epoch {
                faults.push(format!(
                    "broker {} epoch went back from {} to {}",
                    old.broker_id, old.broker_epoch, new.broker_epoch
                ));
            }
        }
    }
    for topic in before.topics_by_name() {
        let Some(new_topic) = after.topic(&topic.id) else {
            continue;
        };
        for (index, old) in topic.partitions.iter() {
            if let Some(new) = new_topic.partitions.get(index) {
                if new.leader_epoch < old.leader_epoch || new.partition_epoch < old.partition_epoch
                {
                    faults.push(format!("partition {}-{index} epoch went back", topic.name));
                }
                if new.leader != old.leader && new.leader_epoch == old.leader_epoch {
                    faults.push(format!(
                        "partition {}-{index} changed leader without a new leader epoch",
                        topic.name
                    ));
                }
                if new != old && new.partition_epoch == old.partition_epoch {
                    faults.push(format!(
                        "partition {}-{index} changed without a new partition epoch",
                        topic.name
                    ));
                }
            }
        }
    }
    faults
}
