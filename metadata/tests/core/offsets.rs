//! Consumer-group offset commits and fetches.

use crate::harness::*;
use kmeta_metadata::controller::offsets::*;
use kmeta_metadata::*;

fn commit(topic: &str, partition: i32, offset: i64, metadata: &str) -> OffsetCommitPartition {
    OffsetCommitPartition {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: 3,
        metadata: metadata.into(),
    }
}

fn request(partitions: Vec<OffsetCommitPartition>) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: "g1".into(),
        generation_id: -1,
        member_id: String::new(),
        coordinator: None,
        partitions,
    }
}

#[test]
fn committed_offsets_are_fetched_back_and_unknown_partitions_read_minus_one() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.create_topic("foo", 2, 1);
    let reply = h.commit(commit_offsets(
        &h.image,
        &request(vec![commit("foo", 0, 10, "m"), commit("foo", 1, 20, "")]),
        7,
    ));
    assert!(reply.values().all(Option::is_none));
    h.commit(commit_offsets(
        &h.image,
        &request(vec![commit("foo", 0, 11, "n")]),
        8,
    ));
    let asked = [
        ("foo".to_string(), 0),
        ("foo".to_string(), 1),
        ("foo".to_string(), 9),
        ("bar".to_string(), 0),
    ];
    let got = fetch_offsets(&h.image, "g1", Some(&asked)).unwrap();
    let offsets: Vec<i64> = got.iter().map(|f| f.offset).collect();
    assert_eq!(offsets, vec![11, 20, -1, -1]);
    assert_eq!(got[0].metadata, "n");
    assert_eq!(got[0].leader_epoch, 3);
    let all = fetch_offsets(&h.image, "g1", None).unwrap();
    assert_eq!(all.len(), 2);
    assert!(fetch_offsets(&h.image, "other", None).unwrap().is_empty());
    assert_eq!(
        fetch_offsets(&h.image, "", None).unwrap_err().code,
        ErrorCode::InvalidGroupId
    );
}

#[test]
fn bad_commits_get_per_partition_errors_and_write_only_the_good_ones() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.create_topic("foo", 1, 1);
    let big = "x".repeat(MAX_OFFSET_METADATA_BYTES + 1);
    let result = commit_offsets(
        &h.image,
        &request(vec![
            commit("foo", 0, 1, ""),
            commit("foo", 5, 1, ""),
            commit("nope", 0, 1, ""),
            commit("foo", 0, 2, &big),
        ]),
        1,
    );
    let reply = &result.reply;
    assert_eq!(
        reply[&("foo".to_string(), 5)],
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        reply[&("nope".to_string(), 0)],
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(result.records.len(), 1);
    h.commit(result);
    let mut member = request(vec![commit("foo", 0, 1, "")]);
    member.generation_id = 4;
    member.member_id = "m-1".into();
    let reply = commit_offsets(&h.image, &member, 1);
    assert!(reply.records.is_empty());
    assert_eq!(
        reply.reply[&("foo".to_string(), 0)],
        Some(ErrorCode::IllegalGeneration)
    );
    let mut empty = request(vec![commit("foo", 0, 1, "")]);
    empty.group_id.clear();
    assert_eq!(
        commit_offsets(&h.image, &empty, 1).reply[&("foo".to_string(), 0)],
        Some(ErrorCode::InvalidGroupId)
    );
}

fn fence(h: &mut Harness, id: i32) {
    let epoch = h.image.broker(BrokerId(id)).unwrap().broker_epoch;
    h.apply(&[MetadataRecord::BrokerRegistrationChange(
        kmeta_metadata::record::BrokerRegistrationChangeRecord {
            broker_id: BrokerId(id),
            broker_epoch: epoch,
            fenced: Some(true),
            in_controlled_shutdown: None,
        },
    )]);
}

#[test]
fn fencing_a_broker_moves_only_the_groups_it_coordinated() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2, 3, 4, 5]);
    let groups: Vec<String> = (0..500).map(|i| format!("group-{i}")).collect();
    let before: Vec<BrokerId> = groups
        .iter()
        .map(|g| h.image.group_coordinator(g).unwrap())
        .collect();
    for b in 1..=5 {
        let n = before.iter().filter(|c| c.0 == b).count();
        assert!((50..=150).contains(&n), "broker {b} coordinates {n} of 500");
    }
    fence(&mut h, 3);
    for (g, old) in groups.iter().zip(&before) {
        let now = h.image.group_coordinator(g).unwrap();
        if old.0 == 3 {
            assert_ne!(now.0, 3, "{g} stayed on the fenced broker");
        } else {
            assert_eq!(now, *old, "{g} moved although its coordinator is alive");
        }
    }
    for b in [1, 2, 4, 5] {
        fence(&mut h, b);
    }
    assert_eq!(h.image.group_coordinator("group-1"), None);
}

#[test]
fn a_commit_through_a_broker_that_no_longer_coordinates_the_group_writes_nothing() {
    let mut h = Harness::default();
    h.active_brokers(&[1, 2, 3]);
    h.create_topic("foo", 1, 1);
    let coordinator = h.image.group_coordinator("g1").unwrap();
    let other = (1..=3).map(BrokerId).find(|b| *b != coordinator).unwrap();
    let mut member = request(vec![commit("foo", 0, 5, "")]);
    member.generation_id = 3;
    member.member_id = "m-1".into();
    member.coordinator = Some(other);
    let refused = commit_offsets(&h.image, &member, 1);
    assert!(refused.records.is_empty());
    assert_eq!(
        refused.reply[&("foo".to_string(), 0)],
        Some(ErrorCode::NotCoordinator)
    );
    // The coordinator validated the member: the controller writes it.
    member.coordinator = Some(coordinator);
    let reply = h.commit(commit_offsets(&h.image, &member, 1));
    assert_eq!(reply[&("foo".to_string(), 0)], None);
    assert_eq!(
        fetch_offsets(&h.image, "g1", Some(&[("foo".into(), 0)])).unwrap()[0].offset,
        5
    );
    // Once it is fenced, its commits are refused.
    fence(&mut h, coordinator.0);
    member.partitions[0].offset = 6;
    let stale = commit_offsets(&h.image, &member, 2);
    assert!(stale.records.is_empty());
    assert_eq!(
        stale.reply[&("foo".to_string(), 0)],
        Some(ErrorCode::NotCoordinator)
    );
}

#[test]
fn deleting_a_group_or_some_of_its_offsets_removes_exactly_those() {
    let mut h = Harness::default();
    h.active_brokers(&[1]);
    h.create_topic("foo", 2, 1);
    h.create_topic("bar", 1, 1);
    let b = BrokerId(1);
    h.commit(commit_offsets(
        &h.image,
        &request(vec![
            commit("foo", 0, 1, ""),
            commit("foo", 1, 2, ""),
            commit("bar", 0, 3, ""),
        ]),
        1,
    ));
    let reply = h
        .commit(delete_offsets(
            &h.image,
            "g1",
            b,
            &[("foo".into(), 1), ("foo".into(), 9), ("nope".into(), 0)],
        ))
        .unwrap();
    assert_eq!(reply[&("foo".to_string(), 1)], None);
    assert_eq!(
        reply[&("foo".to_string(), 9)],
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        reply[&("nope".to_string(), 0)],
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    let mut left: Vec<(String, i32, i64)> = fetch_offsets(&h.image, "g1", None)
        .unwrap()
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    left.sort();
    assert_eq!(left, vec![("bar".into(), 0, 3), ("foo".into(), 0, 1)]);
    let at = h.next_offset();
    h.commit(delete_group(&h.image, "g1", b)).unwrap();
    assert!(h.next_offset() > at, "the deletion is a record");
    assert!(h.image.group_offsets("g1").is_none());
    assert_eq!(h.image.groups().count(), 0);
    // Deleting again writes nothing; another broker may not delete it at all.
    let again = delete_group(&h.image, "g1", b);
    assert!(again.records.is_empty());
    assert_eq!(
        delete_group(&h.image, "g1", BrokerId(2)).reply,
        Err(ErrorCode::NotCoordinator)
    );
    assert_eq!(
        h.commit(delete_offsets(&h.image, "g1", b, &[("foo".into(), 0)])),
        Err(ErrorCode::GroupIdNotFound)
    );
    assert_eq!(h.replayed_from_scratch(), h.image);
}
