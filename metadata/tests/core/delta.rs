//! ImageDelta: what a run of records touched, so brokers apply only that.

use crate::harness::*;
use kmeta_metadata::controller::configs::{alter_configs, ConfigOp};
use kmeta_metadata::controller::replication::alter_partition::alter_partition;
use kmeta_metadata::controller::replication::election::remove_broker_from_isrs;
use kmeta_metadata::controller::replication::topics::*;
use kmeta_metadata::controller::replication::TopicRef;
use kmeta_metadata::delta::ImageDelta;
use kmeta_metadata::record::ConfigResource;
use kmeta_metadata::*;
use std::collections::BTreeSet;

/// The delta of the records `h` logged from `from` on, replayed onto `image` as a broker does.
fn delta_since(h: &Harness, mut image: MetadataImage, from: usize) -> ImageDelta {
    let mut delta = ImageDelta::default();
    for (offset, r) in &h.log[from..] {
        delta.replay(&mut image, *offset, r).unwrap();
    }
    delta
}

#[test]
fn a_delta_names_exactly_the_partitions_and_topic_configs_its_records_touched() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2, 3]);
    h.create_topic("a", 3, 3);
    h.create_topic("b", 2, 3);
    h.create_topic("untouched", 4, 3);
    let (start, image) = (h.log.len(), h.image.clone());
    h.set_topic_config("a", "retention.ms", "1000");
    let b0 = h.tp("b", 0);
    h.commit(alter_partition(&h.image, &h.alter_isr(b0, &ids(&[1, 2]))).unwrap());
    h.commit(delete_topics(&h.image, &[TopicRef::Name("b".into())]));
    let c = h.create_topic("c", 2, 3);
    let delta = delta_since(&h, image, start);
    assert!(!delta.all);
    assert_eq!(delta.topic_configs, BTreeSet::from([h.tp("a", 0).topic_id]));
    let created: BTreeSet<TopicIdPartition> = (0..2)
        .map(|partition| TopicIdPartition {
            topic_id: c,
            partition,
        })
        .collect();
    assert_eq!(
        delta.partitions, created,
        "b-0's change is superseded by b's deletion"
    );
    assert_eq!(delta.removed.len(), 2);
    assert!(delta.removed.contains(&b0));
    // Merging keeps the later word: a partition removed later is not also "changed".
    let mut merged = ImageDelta::default();
    merged.partitions.insert(b0);
    merged.merge(delta.clone());
    assert!(!merged.partitions.contains(&b0) && merged.removed.contains(&b0));
    // A broker-level config reaches every partition's config: everything changed.
    let from = h.log.len();
    let image = h.image.clone();
    let result = alter_configs(
        &h.image,
        &ConfigResource::cluster_default(),
        &[ConfigOp::Set("min.insync.replicas".into(), "2".into())],
        false,
    )
    .unwrap();
    h.commit(result);
    assert!(delta_since(&h, image, from).all);
}

#[test]
fn a_broker_registering_or_changing_fencing_is_noted_with_no_partition_touched() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2]);
    h.create_topic("a", 2, 2);
    let (start, image) = (h.log.len(), h.image.clone());
    h.create_topic("b", 1, 2);
    assert!(
        delta_since(&h, image, start).brokers.is_empty(),
        "topics are not brokers"
    );
    // A new broker registers and is unfenced: leaders may now add it to ISRs, though no
    // partition record says so.
    let (start, image) = (h.log.len(), h.image.clone());
    h.active_brokers(&[3]);
    let delta = delta_since(&h, image, start);
    assert_eq!(delta.brokers, BTreeSet::from([BrokerId(3)]));
    assert!(delta.partitions.is_empty() && !delta.all);
    assert!(!delta.is_empty());
    let mut merged = ImageDelta::default();
    merged.merge(delta);
    assert_eq!(merged.brokers, BTreeSet::from([BrokerId(3)]));
}

/// Every partition whose registration differs between `before` and `after`.
fn changed_between(before: &MetadataImage, after: &MetadataImage) -> BTreeSet<TopicIdPartition> {
    after
        .topics_by_name()
        .flat_map(|t| {
            t.partitions.iter().map(move |(&partition, p)| {
                let tp = TopicIdPartition {
                    topic_id: t.id,
                    partition,
                };
                (tp, p.clone())
            })
        })
        .filter(|(tp, p)| before.partition(*tp) != Some(p.as_ref()))
        .map(|(tp, _)| tp)
        .collect()
}

#[test]
fn a_broker_wide_record_replayed_into_a_delta_names_exactly_the_partitions_it_changed() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2, 3]);
    // Broker 1 leads a-0 and a-1 and follows a-2; b-0 has broker 1 as its only replica (it
    // loses its leader, and keeps its last ISR member); c is not on broker 1 at all.
    h.create_assigned("a", &[&[1, 2, 3], &[1, 3, 2], &[2, 1, 3]]);
    h.create_assigned("b", &[&[1]]);
    h.create_assigned("c", &[&[2, 3]]);
    let records = remove_broker_from_isrs(&h.image, &h.config, BrokerId(1));
    assert_eq!(records.len(), 2, "the leader moves, then the ISR removals");
    let mut image = h.image.clone();
    let offset = h.next_offset();
    for record in &records {
        let before = image.clone();
        let mut delta = ImageDelta::default();
        delta.replay(&mut image, offset, record).unwrap();
        let changed = changed_between(&before, &image);
        assert!(!changed.is_empty());
        assert_eq!(delta.partitions, changed, "{record:?}");
        assert!(!changed.contains(&h.tp("c", 0)));
    }
    // Replaying the same records with `MetadataImage::replay` builds the same image.
    let mut plain = h.image.clone();
    for record in &records {
        plain.replay(offset, record).unwrap();
    }
    assert_eq!(plain, image);
}
