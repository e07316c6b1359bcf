//! Property tests: random sequences of cluster operations keep every invariant (checked by the
//! harness after every record), and replaying the produced log — or the image's own snapshot
//! records — from an empty image reproduces the same image, byte for byte (same hash).

use crate::harness::*;
use kmeta_metadata::controller::cluster::*;
use kmeta_metadata::controller::offsets::*;
use kmeta_metadata::controller::replication::alter_partition::*;
use kmeta_metadata::controller::replication::election::*;
use kmeta_metadata::controller::replication::reassignment::*;
use kmeta_metadata::controller::replication::topics::*;
use kmeta_metadata::controller::replication::TopicRef;
use kmeta_metadata::*;
use proptest::prelude::*;

const BROKERS: i32 = 5;
const TOPICS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

#[derive(Clone, Debug)]
enum Op {
    Register {
        id: i32,
        incarnation: u8,
    },
    Heartbeat {
        id: i32,
        want_fence: bool,
        want_shut_down: bool,
    },
    Tick {
        ms: u64,
    },
    CreateTopic {
        topic: usize,
        partitions: i32,
        rf: i16,
    },
    DeleteTopic {
        topic: usize,
    },
    CreatePartitions {
        topic: usize,
        extra: i32,
    },
    CatchUp {
        topic: usize,
        partition: i32,
    },
    Shrink {
        topic: usize,
        partition: i32,
        drop: usize,
    },
    Reassign {
        topic: usize,
        partition: i32,
        target: Vec<i32>,
    },
    Cancel {
        topic: usize,
        partition: i32,
    },
    ElectPreferred,
    ElectUnclean {
        topic: usize,
        partition: i32,
    },
    Balance,
    UncleanPass,
    SetUnclean {
        topic: usize,
        enabled: bool,
    },
    Commit {
        group: u8,
        topic: usize,
        partition: i32,
        offset: i64,
    },
    Unregister {
        id: i32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..BROKERS;
    let topic = 0..TOPICS.len();
    let partition = 0..4i32;
    prop_oneof![
        3 => (id.clone(), 0..3u8).prop_map(|(id, incarnation)| Op::Register { id, incarnation }),
        6 => (id.clone(), prop::bool::weighted(0.15), prop::bool::weighted(0.1))
            .prop_map(|(id, want_fence, want_shut_down)| Op::Heartbeat { id, want_fence, want_shut_down }),
        2 => (0..6_000u64).prop_map(|ms| Op::Tick { ms }),
        3 => (topic.clone(), 1..5i32, 1..4i16).prop_map(|(topic, partitions, rf)| Op::CreateTopic { topic, partitions, rf }),
        1 => topic.clone().prop_map(|topic| Op::DeleteTopic { topic }),
        1 => (topic.clone(), 1..3i32).prop_map(|(topic, extra)| Op::CreatePartitions { topic, extra }),
        4 => (topic.clone(), partition.clone()).prop_map(|(topic, partition)| Op::CatchUp { topic, partition }),
        2 => (topic.clone(), partition.clone(), 0..3usize).prop_map(|(topic, partition, drop)| Op::Shrink { topic, partition, drop }),
        3 => (topic.clone(), partition.clone(), prop::collection::vec(0..BROKERS + 1, 1..4))
            .prop_map(|(topic, partition, target)| Op::Reassign { topic, partition, target }),
        1 => (topic.clone(), partition.clone()).prop_map(|(topic, partition)| Op::Cancel { topic, partition }),
        1 => Just(Op::ElectPreferred),
        1 => (topic.clone(), partition.clone()).prop_map(|(topic, partition)| Op::ElectUnclean { topic, partition }),
        1 => Just(Op::Balance),
        1 => Just(Op::UncleanPass),
        1 => (topic.clone(), any::<bool>()).prop_map(|(topic, enabled)| Op::SetUnclean { topic, enabled }),
        3 => (0..3u8, topic.clone(), partition.clone(), 0..1_000i64)
            .prop_map(|(group, topic, partition, offset)| Op::Commit { group, topic, partition, offset }),
        1 => id.prop_map(|id| Op::Unregister { id }),
    ]
}

fn apply_op(h: &mut Harness, op: &Op) {
    match op {
        Op::Register { id, incarnation } => {
            let req = h.register_request(
                *id,
                100 * *id as u128 + *incarnation as u128,
                Some(["r1", "r2"][*id as usize % 2]),
            );
            if let Ok(r) = register_broker(
                &h.image,
                &h.config,
                &h.tracker,
                &req,
                h.next_offset(),
                h.now_ms,
            ) {
                if let Some(old) = h.image.broker(BrokerId(*id)) {
                    if old.incarnation_id != req.incarnation_id {
                        h.tracker.remove(BrokerId(*id));
                    }
                }
                h.commit(r);
            }
        }
        Op::Heartbeat {
            id,
            want_fence,
            want_shut_down,
        } => {
            let _ = h.heartbeat(*id, *want_fence, *want_shut_down);
        }
        Op::Tick { ms } => {
            h.now_ms += ms;
            let result = fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms);
            h.commit(result);
        }
        Op::CreateTopic {
            topic,
            partitions,
            rf,
        } => {
            let t = h.creatable(TOPICS[*topic], *partitions, *rf);
            let result = create_topics(&h.image, &h.config, &[t], false);
            h.commit(result);
        }
        Op::DeleteTopic { topic } => {
            let result = delete_topics(&h.image, &[TopicRef::Name(TOPICS[*topic].into())]);
            h.commit(result);
        }
        Op::CreatePartitions { topic, extra } => {
            let Some(t) = h.image.topic_by_name(TOPICS[*topic]) else {
                return;
            };
            let count = t.partitions.len() as i32 + extra;
            let req = CreatePartitionsTopic {
                name: TOPICS[*topic].into(),
                count,
                assignments: None,
            };
            let result = create_partitions(&h.image, &[req], false);
            h.commit(result);
        }
        Op::CatchUp { topic, partition }
        | Op::Shrink {
            topic, partition, ..
        } => {
            let Some(tp) = replication_target(h, *topic, *partition) else {
                return;
            };
            let p = h.image.partition(tp).unwrap().clone();
            if p.leader.is_none() {
                return;
            }
            let mut isr: Vec<BrokerId> = match op {
                Op::CatchUp { .. } => p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| h.image.is_active_broker(*r))
                    .collect(),
                Op::Shrink { drop, .. } => {
                    let mut isr = p.isr.to_vec();
                    if *drop < isr.len() && isr[*drop] != p.leader {
                        isr.remove(*drop);
                    }
                    isr
                }
                _ => unreachable!(),
            };
            if !isr.contains(&p.leader) {
                isr.insert(0, p.leader);
            }
            let req = h.alter_isr(tp, &isr);
            if let Ok(result) = alter_partition(&h.image, &req) {
                h.commit(result);
            }
        }
        Op::Reassign {
            topic,
            partition,
            target,
        } => {
            let req = vec![(TOPICS[*topic].to_string(), *partition, Some(ids(target)))];
            let result = alter_partition_reassignments(&h.image, &h.config, &req);
            h.commit(result);
        }
        Op::Cancel { topic, partition } => {
            let req = vec![(TOPICS[*topic].to_string(), *partition, None)];
            let result = alter_partition_reassignments(&h.image, &h.config, &req);
            h.commit(result);
        }
        Op::ElectPreferred => {
            let result = elect_leaders(&h.image, ElectionType::Preferred, None);
            h.commit(result);
        }
        Op::ElectUnclean { topic, partition } => {
            let result = elect_leaders(
                &h.image,
                ElectionType::Unclean,
                Some(&[(TOPICS[*topic].into(), *partition)]),
            );
            h.commit(result);
        }
        Op::Balance => {
            let result = balance_partition_leaders(&h.image);
            h.commit(result);
        }
        Op::UncleanPass => {
            let result = elect_unclean_leaders(&h.image, &h.config);
            h.commit(result);
        }
        Op::SetUnclean { topic, enabled } => {
            if h.image.topic_id(TOPICS[*topic]).is_some() {
                let value = enabled.to_string();
                h.set_topic_config(TOPICS[*topic], "unclean.leader.election.enable", &value);
            }
        }
        Op::Commit {
            group,
            topic,
            partition,
            offset,
        } => {
            let req = OffsetCommitRequest {
                group_id: format!("group-{group}"),
                generation_id: -1,
                member_id: String::new(),
                coordinator: None,
                partitions: vec![OffsetCommitPartition {
                    topic: TOPICS[*topic].into(),
                    partition: *partition,
                    offset: *offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                }],
            };
            let result = commit_offsets(&h.image, &req, h.now_ms as i64);
            h.commit(result);
        }
        Op::Unregister { id } => {
            if let Ok(result) = unregister_broker(&h.image, &h.config, BrokerId(*id)) {
                h.tracker.remove(BrokerId(*id));
                h.commit(result);
            }
        }
    }
}

fn replication_target(h: &Harness, topic: usize, partition: i32) -> Option<TopicIdPartition> {
    let id = h.image.topic_id(TOPICS[topic])?;
    let tp = TopicIdPartition {
        topic_id: id,
        partition,
    };
    h.image.partition(tp).map(|_| tp)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_invariants_and_replay_reproduces_the_image(ops in prop::collection::vec(op(), 1..150)) {
        // Start from a live cluster so random operations land on real state.
        let mut h = Harness::default();
        h.active_brokers(&[0, 1, 2, 3, 4]);
        h.create_topic(TOPICS[0], 3, 3);
        for op in &ops {
            apply_op(&mut h, op);
        }
        let replayed = h.replayed_from_scratch();
        prop_assert_eq!(replayed.canonical_hash(), h.image.canonical_hash());
        prop_assert_eq!(&replayed, &h.image);
        // Replayed a batch at a time (partitions a topic at a time), every derived index too.
        prop_assert_eq!(&h.replayed_in_batches(), &h.image);

        let mut from_snapshot = MetadataImage::new();
        for r in h.image.to_records() {
            from_snapshot.replay(h.image.offset(), &r).expect("snapshot records replay");
        }
        prop_assert!(kmeta_metadata::invariants::check(&from_snapshot).is_empty());
        prop_assert_eq!(from_snapshot.canonical_hash(), h.image.canonical_hash());
        // A snapshot loaded as a batch is the image loaded a record at a time.
        let mut batched = MetadataImage::new();
        batched
            .replay_batch(h.image.offset(), &h.image.to_records())
            .expect("snapshot records replay as a batch");
        prop_assert_eq!(&batched, &from_snapshot);
    }
}

#[test]
fn canonical_hash_tells_different_images_apart() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1]);
    let before = h.image.canonical_hash();
    h.create_topic("foo", 1, 2);
    assert_ne!(h.image.canonical_hash(), before);
    let clone = h.image.clone();
    assert_eq!(clone.canonical_hash(), h.image.canonical_hash());
}
