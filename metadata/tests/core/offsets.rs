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
