//! Topics, placement, elections, AlterPartition and reassignment (kraft-anchors §1.10 items
//! 6, 14–21, 25–29).

use crate::harness::*;
use kmeta_metadata::controller::partition_change::{Election, PartitionChangeBuilder};
use kmeta_metadata::controller::replication::alter_partition::*;
use kmeta_metadata::controller::replication::election::*;
use kmeta_metadata::controller::replication::reassignment::*;
use kmeta_metadata::controller::replication::topics::*;
use kmeta_metadata::controller::replication::TopicRef;
use kmeta_metadata::controller::{LeaderAcceptance, MAX_ELECTIONS_PER_PASS};
use kmeta_metadata::record::*;
use kmeta_metadata::*;

#[test]
fn topics_created_in_one_millisecond_spread_their_leaders_over_the_brokers() {
    // The controller's topic ids begin with their creation time (UUIDv7): topics created in
    // one millisecond share the first half of their ids; only the second is random.
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    let mut random = 0x1234_5678_9abc_def0u64;
    for i in 0..300 {
        random = random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let mut t = h.creatable(&format!("t{i}"), 1, 3);
        t.topic_id = uuid::Uuid::from_u64_pair(0x0193_0000_0000_7000, random);
        h.create(t);
    }
    for b in 0..3 {
        let led = h.image.leader_count(BrokerId(b));
        assert!((70..=130).contains(&led), "broker {b} leads {led} of 300");
    }
}

#[test]
fn initial_isr_leaves_out_fenced_and_shutting_down_replicas() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3]);
    h.create_assigned("keep", &[&[3, 0]]);
    h.heartbeat(1, false, true).unwrap(); // leads nothing: straight to shutdown, fenced
    h.heartbeat(2, true, false).unwrap(); // fenced
    let id = h.create_assigned("foo", &[&[1, 0, 2]]);
    let p = h
        .image
        .partition(TopicIdPartition {
            topic_id: id,
            partition: 0,
        })
        .unwrap();
    assert_eq!(p.isr.to_vec(), ids(&[0]));
    assert_eq!(p.leader, BrokerId(0));
}

#[test]
fn manual_assignment_on_only_fenced_brokers_is_refused() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.register(1);
    h.register(2);
    let mut t = h.creatable("foo", -1, -1);
    t.assignments = vec![(0, ids(&[1, 2]))];
    let reply = create_topics(&h.image, &h.config, &[t], false).reply;
    assert_eq!(
        reply[0].error.as_ref().unwrap().code,
        ErrorCode::InvalidReplicaAssignment
    );
}

#[test]
fn create_partitions_fails_when_every_broker_is_fenced() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.create_topic("foo", 1, 1);
    h.heartbeat(0, true, false).unwrap();
    let reply = create_partitions(
        &h.image,
        &[CreatePartitionsTopic {
            name: "foo".into(),
            count: 2,
            assignments: None,
        }],
        false,
    )
    .reply;
    assert_eq!(
        reply[0].1.as_ref().unwrap().code,
        ErrorCode::InvalidReplicationFactor
    );
}

#[test]
fn create_partitions_adds_partitions_with_the_topic_replication_factor() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_topic("foo", 2, 2);
    let cases = [
        (1, Some(ErrorCode::InvalidPartitions)),
        (2, Some(ErrorCode::InvalidPartitions)),
        (5, None),
    ];
    for (count, expected) in cases {
        let result = create_partitions(
            &h.image,
            &[CreatePartitionsTopic {
                name: "foo".into(),
                count,
                assignments: None,
            }],
            false,
        );
        assert_eq!(
            result.reply[0].1.as_ref().map(|e| e.code),
            expected,
            "count {count}"
        );
        h.commit(result);
    }
    assert_eq!(h.image.topic_by_name("foo").unwrap().partitions.len(), 5);
    assert_eq!(h.partition("foo", 4).replicas.len(), 2);
    let unknown = create_partitions(
        &h.image,
        &[CreatePartitionsTopic {
            name: "nope".into(),
            count: 2,
            assignments: None,
        }],
        false,
    );
    assert_eq!(
        unknown.reply[0].1.as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
}

#[test]
fn create_topics_applies_kafka_name_and_count_rules() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_topic("a.b", 1, 1);
    let long = "x".repeat(250);
    let mut manual_with_count = h.creatable("manual", 3, -1);
    manual_with_count.assignments = vec![(0, ids(&[0]))];
    let mut bad_config = h.creatable("cfg", 1, 1);
    bad_config.configs = vec![("retention.ms".into(), "soon".into())];
    let mut unknown_config = h.creatable("cfg2", 1, 1);
    unknown_config.configs = vec![("no.such.key".into(), "1".into())];
    let cases = vec![
        (
            h.creatable("", 1, 1),
            Some(ErrorCode::InvalidTopicException),
        ),
        (
            h.creatable("..", 1, 1),
            Some(ErrorCode::InvalidTopicException),
        ),
        (
            h.creatable(&long, 1, 1),
            Some(ErrorCode::InvalidTopicException),
        ),
        (
            h.creatable("bad name", 1, 1),
            Some(ErrorCode::InvalidTopicException),
        ),
        (
            h.creatable("a.b", 1, 1),
            Some(ErrorCode::TopicAlreadyExists),
        ),
        (
            h.creatable("a_b", 1, 1),
            Some(ErrorCode::InvalidTopicException),
        ),
        (
            h.creatable("zero", 0, 1),
            Some(ErrorCode::InvalidPartitions),
        ),
        (
            h.creatable("rf0", 1, 0),
            Some(ErrorCode::InvalidReplicationFactor),
        ),
        (
            h.creatable("rf4", 1, 4),
            Some(ErrorCode::InvalidReplicationFactor),
        ),
        (
            h.creatable("huge", 20_000, 1),
            Some(ErrorCode::PolicyViolation),
        ),
        (manual_with_count, Some(ErrorCode::InvalidRequest)),
        (bad_config, Some(ErrorCode::InvalidConfig)),
        (unknown_config, Some(ErrorCode::InvalidConfig)),
        (h.creatable("defaults", -1, -1), None),
    ];
    for (topic, expected) in cases {
        let name = topic.name.clone();
        let reply = create_topics(&h.image, &h.config, &[topic], false).reply;
        assert_eq!(
            reply[0].error.as_ref().map(|e| e.code),
            expected,
            "topic {name:?}"
        );
    }
    let t1 = h.creatable("dup", 1, 1);
    let t2 = h.creatable("dup", 1, 1);
    let reply = create_topics(&h.image, &h.config, &[t1, t2], false).reply;
    assert!(reply
        .iter()
        .all(|r| r.error.as_ref().unwrap().code == ErrorCode::InvalidRequest));
}

/// Names that differ only in '.' and '_' collide with the topics that exist now: a deleted
/// topic no longer blocks its twin, two twins in one request collide, and the image's index
/// of them is the same when rebuilt by replaying the log from scratch.
#[test]
fn a_topic_name_collides_only_with_topics_that_exist_now() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.create_topic("a.b", 1, 1);
    h.create_topic("ab", 1, 1);
    let code = |h: &mut Harness, names: &[&str]| -> Vec<Option<ErrorCode>> {
        let topics: Vec<_> = names.iter().map(|n| h.creatable(n, 1, 1)).collect();
        create_topics(&h.image, &h.config, &topics, false)
            .reply
            .iter()
            .map(|r| r.error.as_ref().map(|e| e.code))
            .collect()
    };
    assert_eq!(
        code(&mut h, &["a_b"]),
        vec![Some(ErrorCode::InvalidTopicException)]
    );
    assert_eq!(
        code(&mut h, &["a_c", "a.c"]),
        vec![None, Some(ErrorCode::InvalidTopicException)]
    );
    assert_eq!(code(&mut h, &["a-b", "a.b.c"]), vec![None, None]);
    h.commit(delete_topics(&h.image, &[TopicRef::Name("a.b".into())]));
    assert_eq!(code(&mut h, &["a_b"]), vec![None]);
    h.create_topic("a_b", 1, 1);
    assert_eq!(
        code(&mut h, &["a.b"]),
        vec![Some(ErrorCode::InvalidTopicException)]
    );
    assert_eq!(h.replayed_from_scratch(), h.image);
}

#[test]
fn validate_only_writes_nothing() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    let t = h.creatable("foo", 3, 1);
    let result = create_topics(&h.image, &h.config, &[t], true);
    assert!(result.records.is_empty());
    assert_eq!(result.reply[0].error, None);
    assert_eq!(result.reply[0].num_partitions, 3);
}

#[test]
fn deleting_a_topic_removes_its_partitions_configs_and_offsets() {
    use kmeta_metadata::controller::offsets::*;
    let mut h = Harness::default();
    h.active_brokers(&[0, 1]);
    let mut t = h.creatable("foo", 2, 2);
    t.configs = vec![("cleanup.policy".into(), "compact".into())];
    let reply = h.commit(create_topics(&h.image, &h.config, &[t], false));
    let id = reply[0].topic_id.unwrap();
    let commit = OffsetCommitRequest {
        group_id: "g".into(),
        generation_id: -1,
        member_id: String::new(),
        coordinator: None,
        partitions: vec![OffsetCommitPartition {
            topic: "foo".into(),
            partition: 1,
            offset: 42,
            leader_epoch: -1,
            metadata: String::new(),
        }],
    };
    h.commit(commit_offsets(&h.image, &commit, 1));
    assert_eq!(
        h.image
            .config(&ConfigResource::topic("foo"), "cleanup.policy"),
        Some("compact")
    );
    let reply = h.commit(delete_topics(
        &h.image,
        &[TopicRef::Name("foo".into()), TopicRef::Name("bar".into())],
    ));
    assert_eq!(reply[0].error, None);
    assert_eq!(
        reply[1].error.as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
    assert!(h.image.topic(&id).is_none());
    assert_eq!(h.image.partition_count(), 0);
    assert!(h.image.configs(&ConfigResource::topic("foo")).is_none());
    assert!(h.image.group_offsets("g").is_none());
    assert_eq!(h.image.partitions_on_broker(BrokerId(0)).count(), 0);
    // A recreated topic of the same name starts clean, with a new id.
    let new_id = h.create_topic("foo", 1, 1);
    assert_ne!(new_id, id);
    let fetched = fetch_offsets(&h.image, "g", Some(&[("foo".into(), 1)])).unwrap();
    assert_eq!(fetched[0].offset, -1);
}

fn builder_case(
    h: &Harness,
    topic: &str,
    election: Election,
    isr: &[i32],
) -> Option<PartitionChangeRecord> {
    let tp = h.tp(topic, 0);
    let p = h.image.partition(tp).unwrap();
    PartitionChangeBuilder::new(tp, p, LeaderAcceptance::of(&h.image))
        .election(election)
        .target_isr(ids(isr))
        .build()
}

#[test]
fn leader_election_follows_preferred_online_and_unclean_rules() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2, 3]);
    h.create_assigned("foo", &[&[2, 1, 3]]);
    // Make 1 the leader, as in Kafka's testElectLeader fixture.
    let tp = h.tp("foo", 0);
    let p = h.partition("foo", 0);
    let r = PartitionChangeBuilder::new(tp, &p, LeaderAcceptance::of(&h.image))
        .target_isr(ids(&[1, 3]))
        .build()
        .unwrap();
    h.apply(&[MetadataRecord::PartitionChange(r)]);
    let r = PartitionChangeBuilder::new(tp, &h.partition("foo", 0), LeaderAcceptance::of(&h.image))
        .target_isr(ids(&[1, 2, 3]))
        .build()
        .unwrap();
    h.apply(&[MetadataRecord::PartitionChange(r)]);
    assert_eq!(h.partition("foo", 0).leader, BrokerId(1));

    let leader = |r: Option<PartitionChangeRecord>| r.and_then(|r| r.leader);
    assert_eq!(
        leader(builder_case(&h, "foo", Election::Preferred, &[2, 1, 3])),
        Some(BrokerId(2))
    );
    assert_eq!(
        leader(builder_case(&h, "foo", Election::Online, &[2, 1, 3])),
        None,
        "keeps 1"
    );
    // ISR [3] alone and 3 fenced: no clean leader.
    h.heartbeat(3, true, false).unwrap();
    let clean = builder_case(&h, "foo", Election::Online, &[3]).unwrap();
    assert_eq!(clean.leader, Some(BrokerId::NONE));
    let unclean = builder_case(&h, "foo", Election::Unclean, &[3]).unwrap();
    assert_eq!(unclean.leader, Some(BrokerId(2)));
    assert_eq!(unclean.isr.map(|l| l.to_vec()), Some(ids(&[2])));
    assert_eq!(
        unclean.leader_recovery_state,
        Some(LeaderRecoveryState::Recovering)
    );
}

#[test]
fn isr_changes_bump_the_partition_epoch_but_not_the_leader_epoch() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("foo", &[&[0, 1, 2]]);
    let before = h.partition("foo", 0);
    let shrink = builder_case(&h, "foo", Election::Online, &[0, 1]).unwrap();
    assert_eq!(shrink.leader, None);
    h.apply(&[MetadataRecord::PartitionChange(shrink)]);
    let grow = builder_case(&h, "foo", Election::Online, &[0, 1, 2]).unwrap();
    assert_eq!(grow.leader, None);
    h.apply(&[MetadataRecord::PartitionChange(grow)]);
    let after = h.partition("foo", 0);
    assert_eq!(after.leader_epoch, before.leader_epoch);
    assert_eq!(after.partition_epoch.0, before.partition_epoch.0 + 2);
    assert!(
        builder_case(&h, "foo", Election::Online, &[0, 1, 2]).is_none(),
        "no-op builds nothing"
    );
}

#[test]
fn a_leader_change_in_a_recovering_partition_keeps_it_recovering() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2]);
    h.create_assigned("foo", &[&[1, 2]]);
    h.heartbeat(1, true, false).unwrap();
    h.heartbeat(2, true, false).unwrap();
    assert_eq!(h.partition("foo", 0).isr.to_vec(), ids(&[2]));
    h.heartbeat(1, false, false).unwrap();
    let reply = h.commit(elect_leaders(
        &h.image,
        ElectionType::Unclean,
        Some(&[("foo".into(), 0)]),
    ));
    assert_eq!(reply["foo"][&0], None);
    let p = h.partition("foo", 0);
    assert_eq!(p.leader, BrokerId(1));
    assert_eq!(p.leader_recovery_state, LeaderRecoveryState::Recovering);
    h.heartbeat(2, false, false).unwrap();
    let r = builder_case(&h, "foo", Election::Online, &[1]);
    assert!(r.is_none_or(|r| r.leader_recovery_state.is_none()));
}

#[test]
fn preferred_election_needs_the_preferred_replica_and_never_goes_unclean() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("foo", &[&[0, 1, 2], &[1, 2, 0]]);
    h.heartbeat(0, true, false).unwrap();
    let all = [
        ("foo".to_string(), 0),
        ("foo".to_string(), 1),
        ("foo".to_string(), 7),
    ];
    let result = elect_leaders(&h.image, ElectionType::Preferred, Some(&all));
    assert!(result.records.is_empty());
    let reply = &result.reply["foo"];
    assert_eq!(
        reply[&0].as_ref().unwrap().code,
        ErrorCode::PreferredLeaderNotAvailable
    );
    assert_eq!(
        reply[&1].as_ref().unwrap().code,
        ErrorCode::ElectionNotNeeded
    );
    assert_eq!(
        reply[&7].as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
    // 0 comes back and rejoins the ISR through its leader's AlterPartition.
    h.heartbeat(0, false, false).unwrap();
    let req = h.alter_isr(h.tp("foo", 0), &ids(&[1, 2, 0]));
    h.commit(alter_partition(&h.image, &req).unwrap());
    let result = elect_leaders(&h.image, ElectionType::Preferred, None);
    let reply = h.commit(result);
    assert_eq!(
        reply["foo"].len(),
        1,
        "partitions needing no election are left out"
    );
    assert_eq!(h.partition("foo", 0).leader, BrokerId(0));
}

#[test]
fn unclean_election_happens_only_when_asked_or_allowed_and_a_replica_is_back() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1]);
    h.create_assigned("foo", &[&[0, 1]]);
    h.heartbeat(1, true, false).unwrap();
    h.heartbeat(0, true, false).unwrap();
    assert_eq!(h.partition("foo", 0).isr.to_vec(), ids(&[0]));
    let reply = elect_leaders(&h.image, ElectionType::Unclean, Some(&[("foo".into(), 0)])).reply;
    assert_eq!(
        reply["foo"][&0].as_ref().unwrap().code,
        ErrorCode::EligibleLeadersNotAvailable
    );
    h.heartbeat(1, false, false).unwrap();
    assert!(
        elect_unclean_leaders(&h.image, &h.config)
            .records
            .is_empty(),
        "topic does not allow it"
    );
    h.set_topic_config("foo", "unclean.leader.election.enable", "true");
    let result = elect_unclean_leaders(&h.image, &h.config);
    assert_eq!(result.records.len(), 1);
    h.commit(result);
    let p = h.partition("foo", 0);
    assert_eq!((p.leader, p.isr.to_vec()), (BrokerId(1), ids(&[1])));
}

#[test]
fn balancing_pass_restores_preferred_leaders_after_brokers_return() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_topic("foo", 6, 3);
    h.heartbeat(0, true, false).unwrap();
    h.heartbeat(0, false, false).unwrap();
    let imbalanced: Vec<_> = h.image.imbalanced_partitions().collect();
    assert!(!imbalanced.is_empty());
    assert!(
        balance_partition_leaders(&h.image).records.is_empty(),
        "0 is not back in the ISRs"
    );
    // The leaders re-add 0 to their ISRs.
    for tp in imbalanced {
        let mut isr = h.image.partition(tp).unwrap().isr.clone();
        isr.push(BrokerId(0));
        let req = h.alter_isr(tp, &isr);
        h.commit(alter_partition(&h.image, &req).unwrap());
    }
    let more = h.commit(balance_partition_leaders(&h.image));
    assert!(!more);
    assert_eq!(h.image.imbalanced_partitions().count(), 0);
}

fn alter_request(
    h: &Harness,
    requester: i32,
    isr: &[i32],
    tweak: impl FnOnce(&mut AlterPartitionData),
) -> AlterPartitionRequest {
    let p = h.partition("foo", 0);
    let mut data = AlterPartitionData {
        partition: 0,
        leader_epoch: p.leader_epoch,
        new_isr: isr.iter().map(|b| (BrokerId(*b), None)).collect(),
        leader_recovery_state: p.leader_recovery_state,
        partition_epoch: p.partition_epoch,
    };
    tweak(&mut data);
    AlterPartitionRequest {
        version: 2,
        broker_id: BrokerId(requester),
        broker_epoch: h.image.broker(BrokerId(requester)).unwrap().broker_epoch,
        topics: vec![(TopicRef::Name("foo".into()), vec![data])],
    }
}

fn alter_error(h: &Harness, req: &AlterPartitionRequest) -> Option<ErrorCode> {
    alter_partition(&h.image, req).unwrap().reply[0].1[0].error
}

#[test]
fn alter_partition_validates_in_kraft_order() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3]);
    h.create_assigned("foo", &[&[0, 1, 2]]);
    h.heartbeat(3, true, false).unwrap();
    let cases: Vec<(&str, AlterPartitionRequest, Option<ErrorCode>)> = vec![
        ("ok", alter_request(&h, 0, &[0, 1], |_| {}), None),
        (
            "leader epoch ahead",
            alter_request(&h, 0, &[0, 1], |d| d.leader_epoch.0 = 500),
            Some(ErrorCode::NotController),
        ),
        (
            "partition epoch ahead",
            alter_request(&h, 0, &[0, 1], |d| d.partition_epoch.0 = 500),
            Some(ErrorCode::NotController),
        ),
        (
            "leader epoch behind",
            alter_request(&h, 0, &[0, 1], |d| d.leader_epoch.0 = -1),
            Some(ErrorCode::FencedLeaderEpoch),
        ),
        (
            "not the leader",
            alter_request(&h, 1, &[0, 1], |_| {}),
            Some(ErrorCode::InvalidRequest),
        ),
        (
            "partition epoch behind",
            alter_request(&h, 0, &[0, 1], |d| d.partition_epoch.0 = -1),
            Some(ErrorCode::InvalidUpdateVersion),
        ),
        (
            "isr has a non-replica",
            alter_request(&h, 0, &[0, 1, 3], |_| {}),
            Some(ErrorCode::InvalidRequest),
        ),
        (
            "isr lacks the leader",
            alter_request(&h, 0, &[1, 2], |_| {}),
            Some(ErrorCode::InvalidRequest),
        ),
        (
            "recovering with isr > 1",
            alter_request(&h, 0, &[0, 1], |d| {
                d.leader_recovery_state = LeaderRecoveryState::Recovering
            }),
            Some(ErrorCode::InvalidRequest),
        ),
        (
            "recovered to recovering",
            alter_request(&h, 0, &[0], |d| {
                d.leader_recovery_state = LeaderRecoveryState::Recovering
            }),
            Some(ErrorCode::InvalidRequest),
        ),
        (
            "stale member epoch",
            alter_request(&h, 0, &[0, 1], |d| d.new_isr[1].1 = Some(BrokerEpoch(999))),
            Some(ErrorCode::IneligibleReplica),
        ),
    ];
    for (name, req, expected) in cases {
        assert_eq!(alter_error(&h, &req), expected, "{name}");
    }
    let mut stale = alter_request(&h, 0, &[0, 1], |_| {});
    stale.broker_epoch = BrokerEpoch(12345);
    assert_eq!(
        alter_partition(&h.image, &stale).unwrap_err().code,
        ErrorCode::StaleBrokerEpoch
    );
    let mut unknown = alter_request(&h, 0, &[0, 1], |_| {});
    unknown.topics[0].0 = TopicRef::Id(uuid::Uuid::from_u128(5));
    assert_eq!(alter_error(&h, &unknown), Some(ErrorCode::UnknownTopicId));
}

#[test]
fn alter_partition_refuses_fenced_shutting_down_and_unregistered_replicas() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3]);
    h.create_assigned("foo", &[&[0, 1, 2]]);
    h.create_assigned("bar", &[&[1, 3]]);
    h.heartbeat(1, true, false).unwrap(); // fenced
    let req = alter_request(&h, 0, &[0, 2, 1], |_| {});
    assert_eq!(alter_error(&h, &req), Some(ErrorCode::IneligibleReplica));
    let mut old = req.clone();
    old.version = 1;
    assert_eq!(
        alter_error(&h, &old),
        Some(ErrorCode::OperationNotAttempted)
    );
    h.heartbeat(1, false, false).unwrap();
    h.heartbeat(3, false, true).unwrap(); // 3 leads bar? no: 1 leads bar; 3 shuts down at once
    let mut h2 = h;
    let p = h2.partition("foo", 0);
    let mut req = alter_request(&h2, 0, &[0, 2], |_| {});
    req.topics[0].1[0].partition_epoch = p.partition_epoch;
    h2.commit(alter_partition(&h2.image, &req).unwrap());
    // Broker 2 in controlled shutdown may not rejoin.
    h2.heartbeat(2, false, true).unwrap();
    let req = alter_request(&h2, 0, &[0, 2], |_| {});
    assert_eq!(alter_error(&h2, &req), Some(ErrorCode::IneligibleReplica));
}

fn reassign(h: &mut Harness, target: Option<&[i32]>) -> Option<ErrorCode> {
    let req = vec![("foo".to_string(), 0, target.map(ids))];
    let result = alter_partition_reassignments(&h.image, &h.config, &req);
    let code = result.reply["foo"][&0].as_ref().map(|e| e.code);
    h.commit(result);
    code
}

/// The leader of foo-0 adds every live replica to the ISR (what a kmeta broker does).
fn catch_up(h: &mut Harness) -> Option<ErrorCode> {
    let p = h.partition("foo", 0);
    let isr: Vec<i32> = p
        .replicas
        .iter()
        .filter(|r| h.image.is_active_broker(**r))
        .map(|r| r.0)
        .collect();
    let req = alter_request(h, p.leader.0, &isr, |_| {});
    let result = alter_partition(&h.image, &req).unwrap();
    let code = result.reply[0].1[0].error;
    h.commit(result);
    code
}

#[test]
fn reassignment_adds_targets_waits_for_the_isr_then_drops_removed_replicas() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3]);
    h.create_assigned("foo", &[&[3, 2, 1]]);
    assert_eq!(reassign(&mut h, Some(&[1, 2, 3])), None, "pure reordering");
    let p = h.partition("foo", 0);
    assert_eq!(p.replicas.to_vec(), ids(&[1, 2, 3]));
    assert!(!p.is_reassigning());
    assert_eq!(reassign(&mut h, Some(&[0, 2, 1])), None);
    let p = h.partition("foo", 0);
    assert_eq!(p.replicas.to_vec(), ids(&[0, 2, 1, 3]));
    assert_eq!(p.adding_replicas.to_vec(), ids(&[0]));
    assert_eq!(p.removing_replicas.to_vec(), ids(&[3]));
    let listed = list_partition_reassignments(&h.image, None);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].adding_replicas.to_vec(), ids(&[0]));
    // The leader (3) is being removed: completing moves leadership, NEW_LEADER_ELECTED.
    assert_eq!(p.leader, BrokerId(3));
    assert_eq!(catch_up(&mut h), Some(ErrorCode::NewLeaderElected));
    let p = h.partition("foo", 0);
    assert_eq!(p.replicas.to_vec(), ids(&[0, 2, 1]));
    assert!(!p.is_reassigning());
    assert_ne!(p.leader, BrokerId(3));
    assert!(list_partition_reassignments(&h.image, None).is_empty());
    assert_eq!(
        reassign(&mut h, None),
        Some(ErrorCode::NoReassignmentInProgress)
    );
    let req = vec![("nope".to_string(), 0, Some(ids(&[0])))];
    let reply = alter_partition_reassignments(&h.image, &h.config, &req).reply;
    assert_eq!(
        reply["nope"][&0].as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        reassign(&mut h, Some(&[0, 9])),
        Some(ErrorCode::InvalidReplicaAssignment)
    );
    assert_eq!(
        reassign(&mut h, Some(&[0, 0])),
        Some(ErrorCode::InvalidReplicaAssignment)
    );
}

#[test]
fn cancelling_a_reassignment_restores_the_original_replicas() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3]);
    h.create_assigned("foo", &[&[0, 1]]);
    let before = h.partition("foo", 0);
    assert_eq!(reassign(&mut h, Some(&[2, 3])), None);
    assert_eq!(reassign(&mut h, None), None);
    let p = h.partition("foo", 0);
    assert_eq!(p.replicas, before.replicas);
    assert_eq!(p.isr, before.isr);
    assert!(!p.is_reassigning());
}

#[test]
fn cancel_that_needs_an_unclean_leader_is_refused_unless_allowed() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("foo", &[&[0]]);
    assert_eq!(reassign(&mut h, Some(&[1, 2])), None);
    // Leader 0 lets 1 (but not yet 2) into the ISR, then 0 is fenced: only an adding replica
    // is in sync, so reverting to [0] would need an unclean election.
    let req = alter_request(&h, 0, &[0, 1], |_| {});
    assert_eq!(alter_error(&h, &req), None);
    h.commit(alter_partition(&h.image, &req).unwrap());
    h.heartbeat(0, true, false).unwrap();
    assert_eq!(h.partition("foo", 0).isr.to_vec(), ids(&[1]));
    assert_eq!(
        reassign(&mut h, None),
        Some(ErrorCode::InvalidReplicaAssignment)
    );
    assert!(
        h.partition("foo", 0).is_reassigning(),
        "a refused cancel changes nothing"
    );
    h.set_topic_config("foo", "unclean.leader.election.enable", "true");
    assert_eq!(reassign(&mut h, None), None);
    let p = h.partition("foo", 0);
    assert_eq!(
        (p.replicas.to_vec(), p.isr.to_vec(), p.leader),
        (ids(&[0]), ids(&[0]), BrokerId::NONE)
    );
    h.heartbeat(0, false, false).unwrap();
    assert_eq!(h.partition("foo", 0).leader, BrokerId(0));
}

#[test]
fn a_new_reassignment_supersedes_one_in_flight() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3, 4]);
    h.create_assigned("foo", &[&[0, 1, 2]]);
    assert_eq!(reassign(&mut h, Some(&[3, 4, 2])), None);
    assert_eq!(h.partition("foo", 0).adding_replicas.to_vec(), ids(&[3, 4]));
    // The new target drops 4, which was being added, and keeps 3.
    assert_eq!(reassign(&mut h, Some(&[0, 1, 3])), None);
    let p = h.partition("foo", 0);
    assert_eq!(p.replicas.to_vec(), ids(&[0, 1, 3, 2]));
    assert_eq!(p.adding_replicas.to_vec(), ids(&[3]));
    assert_eq!(p.removing_replicas.to_vec(), ids(&[2]));
    assert_eq!(catch_up(&mut h), None);
    let p = h.partition("foo", 0);
    assert_eq!(p.replicas.to_vec(), ids(&[0, 1, 3]));
    assert!(!p.is_reassigning());
}

#[test]
fn a_removed_leader_is_demoted_even_when_no_new_leader_is_eligible() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3]);
    h.create_assigned("foo", &[&[0, 1]]);
    assert_eq!(reassign(&mut h, Some(&[2, 3])), None);
    // 2 and 3 join the ISR but are shut down before the completion is processed.
    let tp = h.tp("foo", 0);
    let p = h.partition("foo", 0);
    let acceptance = LeaderAcceptance::of(&h.image).excluding(BrokerId(2));
    let record = PartitionChangeBuilder::new(tp, &p, acceptance)
        .target_isr(ids(&[0, 1, 2, 3]))
        .build()
        .unwrap();
    // 3 is acceptable, so it leads; now the same with 3 excluded as well via a fenced 3.
    assert_eq!(record.leader, Some(BrokerId(3)));
    h.heartbeat(2, true, false).unwrap();
    h.heartbeat(3, true, false).unwrap();
    let p = h.partition("foo", 0);
    let record = PartitionChangeBuilder::new(tp, &p, LeaderAcceptance::of(&h.image))
        .target_isr(ids(&[0, 1, 2, 3]))
        .build()
        .unwrap();
    assert_eq!(record.replicas.map(|l| l.to_vec()), Some(ids(&[2, 3])));
    assert_eq!(
        record.leader,
        Some(BrokerId::NONE),
        "leader 0 must not stay"
    );
}

#[test]
fn replaying_a_second_topic_with_the_same_name_or_id_is_refused() {
    let mut image = MetadataImage::new();
    let id = uuid::Uuid::from_u128(1);
    let topic = |name: &str, id| {
        MetadataRecord::Topic(TopicRecord {
            name: name.into(),
            topic_id: id,
        })
    };
    image.replay(LogOffset(0), &topic("foo", id)).unwrap();
    let before = image.clone();
    assert!(image
        .replay(LogOffset(1), &topic("foo", uuid::Uuid::from_u128(2)))
        .is_err());
    assert!(image.replay(LogOffset(1), &topic("bar", id)).is_err());
    assert_eq!(image, before, "a refused record leaves the image unchanged");
    let change = MetadataRecord::PartitionChange(PartitionChangeRecord {
        topic_id: id,
        partition: 0,
        leader: Some(BrokerId(1)),
        ..Default::default()
    });
    assert!(
        image.replay(LogOffset(2), &change).is_err(),
        "unknown partition"
    );
    assert!(
        image.replay(LogOffset(-5), &MetadataRecord::NoOp).is_err(),
        "offset backwards"
    );
}

/// Replays `records` onto the harness image without the per-record invariant checks (the
/// image is large; the checks are quadratic over it).
fn replay_unchecked(h: &mut Harness, records: &[MetadataRecord]) {
    for r in records {
        let offset = h.next_offset();
        h.image.replay(offset, r).expect("replays");
        h.log.push((offset, r.clone()));
    }
}

fn lead_elsewhere(
    h: &mut Harness,
    prefix: &str,
    topics: usize,
    partitions: i32,
    isr: Option<&[i32]>,
) {
    let mut records = Vec::new();
    for t in 0..topics {
        let topic_id = h.image.topic_id(&format!("{prefix}{t}")).unwrap();
        for partition in 0..partitions {
            records.push(MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id,
                partition,
                leader: Some(BrokerId(1)),
                isr: isr.map(|isr| ids(isr).into()),
                ..Default::default()
            }));
        }
    }
    replay_unchecked(h, &records);
}

#[test]
fn balancing_passes_resume_where_the_last_stopped_and_wrap_around_electing_each_partition_once() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1]);
    // Created first, so they sort first: 2,000 partitions whose preferred replica (0) is out
    // of the ISR, which every pass that starts from the beginning would step over.
    h.create_many_unchecked("out", 2, 1_000, &[0, 1]);
    lead_elsewhere(&mut h, "out", 2, 1_000, Some(&[1]));
    // 2,500 partitions whose preferred replica may lead again.
    h.create_many_unchecked("back", 5, 500, &[0, 1]);
    lead_elsewhere(&mut h, "back", 5, 500, None);
    assert_eq!(h.image.imbalanced_partitions().count(), 4_500);

    let mut elected = std::collections::BTreeSet::new();
    let mut pass = |h: &mut Harness, from| {
        let result = balance_partition_leaders_after(&h.image, from);
        for r in &result.records {
            let MetadataRecord::PartitionChange(c) = r else {
                panic!("{r:?}")
            };
            assert_eq!(c.leader, Some(BrokerId(0)));
            assert!(
                elected.insert((c.topic_id, c.partition)),
                "elected twice: {c:?}"
            );
        }
        let n = result.records.len();
        let reply = result.reply;
        replay_unchecked(h, &result.records);
        (n, reply)
    };
    let (n, first) = pass(&mut h, None);
    assert_eq!(n, MAX_ELECTIONS_PER_PASS);
    let first = first.expect("stopped at its bound");
    let (n, second) = pass(&mut h, Some(first));
    assert_eq!(n, MAX_ELECTIONS_PER_PASS);
    let second = second.expect("stopped at its bound");
    assert!(second > first);
    // One partition before where the passes stopped becomes eligible: the next pass wraps
    // around to it.
    let early = TopicIdPartition {
        topic_id: h.image.topic_id("out0").unwrap(),
        partition: 7,
    };
    assert!(early < first);
    replay_unchecked(
        &mut h,
        &[MetadataRecord::PartitionChange(PartitionChangeRecord {
            topic_id: early.topic_id,
            partition: early.partition,
            isr: Some(ids(&[1, 0]).into()),
            ..Default::default()
        })],
    );
    let (n, third) = pass(&mut h, Some(second));
    assert_eq!(
        (n, third),
        (501, None),
        "the rest, and the one before, in one sweep"
    );
    assert_eq!(h.image.imbalanced_partitions().count(), 1_999);
    assert_eq!(pass(&mut h, None), (0, None));
    assert!(invariants::check(&h.image).is_empty());
}

#[test]
fn an_unclean_pass_steps_over_topics_that_do_not_allow_it_and_elects_in_those_that_do() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1]);
    h.create_many_unchecked("strict", 3, 200, &[0, 1]);
    h.create_many_unchecked("loose", 2, 600, &[0, 1]);
    h.create_many_unchecked("strict-too", 1, 200, &[0, 1]);
    // Every partition leaderless with only 0 in its ISR, and 0 fenced: 1 is out of sync.
    let mut records = Vec::new();
    for name in [
        "strict0",
        "strict1",
        "strict2",
        "loose0",
        "loose1",
        "strict-too0",
    ] {
        let topic_id = h.image.topic_id(name).unwrap();
        let n = h.image.topic(&topic_id).unwrap().partitions.len() as i32;
        for partition in 0..n {
            records.push(MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id,
                partition,
                leader: Some(BrokerId::NONE),
                isr: Some(ids(&[0]).into()),
                ..Default::default()
            }));
        }
    }
    replay_unchecked(&mut h, &records);
    h.heartbeat(0, true, false).unwrap();
    assert!(h.image.broker(BrokerId(0)).unwrap().fenced);
    assert_eq!(h.image.leaderless_partitions().count(), 2_000);
    assert!(elect_unclean_leaders(&h.image, &h.config)
        .records
        .is_empty());
    for name in ["loose0", "loose1"] {
        h.set_topic_config(name, "unclean.leader.election.enable", "true");
    }
    let loose: std::collections::BTreeSet<TopicId> = [
        h.image.topic_id("loose0").unwrap(),
        h.image.topic_id("loose1").unwrap(),
    ]
    .into();
    let first = elect_unclean_leaders(&h.image, &h.config);
    assert_eq!(
        (first.records.len(), first.reply),
        (MAX_ELECTIONS_PER_PASS, true)
    );
    h.commit(first);
    let second = elect_unclean_leaders(&h.image, &h.config);
    assert_eq!((second.records.len(), second.reply), (200, false));
    for r in &second.records {
        let MetadataRecord::PartitionChange(c) = r else {
            panic!("{r:?}")
        };
        assert!(loose.contains(&c.topic_id));
        assert_eq!(c.leader, Some(BrokerId(1)));
    }
    h.commit(second);
    assert_eq!(h.image.leaderless_partitions().count(), 800);
}
