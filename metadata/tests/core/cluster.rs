//! Broker registration, heartbeats, fencing and controlled shutdown (kraft-anchors §1.10
//! items 1–4, 13, 22–23).

use crate::harness::*;
use kmeta_metadata::controller::cluster::*;
use kmeta_metadata::controller::replication::election::{
    balance_partition_leaders, broker_changes, enables_preferred_election, remove_broker_from_isrs,
};
use kmeta_metadata::controller::replication::topics::create_topics;
use kmeta_metadata::record::{BrokerScope, MetadataRecord, PartitionChangeRecord};
use kmeta_metadata::*;

#[test]
fn new_registration_takes_its_record_offset_as_epoch_and_starts_fenced() {
    let mut h = Harness::default();
    h.register(0);
    h.register(1);
    let epoch = h.register(2);
    assert_eq!(epoch, BrokerEpoch(2));
    let b = h.image.broker(BrokerId(2)).unwrap();
    assert_eq!(b.broker_epoch, BrokerEpoch(2));
    assert!(b.fenced);
}

#[test]
fn same_incarnation_keeps_its_epoch_and_a_new_incarnation_gets_a_new_one() {
    let mut h = Harness::default();
    let first = h.register_incarnation(1, 77, None);
    h.heartbeat(1, false, false).unwrap();
    h.apply(&[MetadataRecord::NoOp, MetadataRecord::NoOp]);
    let again = h.register_incarnation(1, 77, Some("r1"));
    assert_eq!(again, first);
    let b = h.image.broker(BrokerId(1)).unwrap();
    assert!(!b.fenced, "an amended registration keeps the fencing state");
    assert_eq!(b.rack.as_deref(), Some("r1"));

    h.now_ms += h.config.session_timeout_ms + 1;
    let offset = h.next_offset();
    let newer = h.register_incarnation(1, 78, None);
    assert_eq!(newer, BrokerEpoch(offset.0));
    assert!(h.image.broker(BrokerId(1)).unwrap().fenced);
}

#[test]
fn registration_with_the_wrong_cluster_id_is_inconsistent_cluster_id() {
    let h = Harness::default();
    let mut req = h.register_request(1, 5, None);
    req.cluster_id = "other".into();
    let err = h.try_register(&req).unwrap_err();
    assert_eq!(err.code, ErrorCode::InconsistentClusterId);
}

#[test]
fn new_incarnation_while_the_old_session_is_live_is_a_duplicate_registration() {
    let mut h = Harness::default();
    h.active_brokers(&[1]);
    let req = h.register_request(1, 99, None);
    let err = h.try_register(&req).unwrap_err();
    assert_eq!(err.code, ErrorCode::DuplicateBrokerRegistration);
    h.now_ms += h.config.session_timeout_ms + 1;
    assert!(h.try_register(&req).is_ok());
}

#[test]
fn a_new_incarnation_is_removed_from_the_isrs_of_the_old_one() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("t", &[&[1, 0, 2]]);
    h.now_ms += h.config.session_timeout_ms + 1;
    h.register_incarnation(1, 5555, None);
    let p = h.partition("t", 0);
    assert_eq!(p.isr.to_vec(), ids(&[0, 2]));
    assert_eq!(p.leader, BrokerId(0));
}

#[test]
fn heartbeat_state_table_matches_kraft() {
    use BrokerControlState::*;
    let req = |want_fence: bool, want_shut_down: bool, offset: i64| BrokerHeartbeatRequest {
        broker_id: BrokerId(0),
        broker_epoch: BrokerEpoch(10),
        current_metadata_offset: LogOffset(offset),
        want_fence,
        want_shut_down,
    };
    let reg = LogOffset(10);
    // (current, want_fence, want_shut_down, offset, leads, shutdown offset reached) -> next
    let table = [
        (Fenced, true, true, 20, false, false, ShutdownNow),
        (Fenced, false, false, 10, false, false, Unfenced),
        (Fenced, false, false, 9, false, false, Fenced),
        (Fenced, true, false, 20, false, false, Fenced),
        (Unfenced, true, true, 20, true, false, ShutdownNow),
        (Unfenced, true, false, 20, true, false, Fenced),
        (Unfenced, false, true, 20, true, false, ControlledShutdown),
        (Unfenced, false, true, 20, false, false, ShutdownNow),
        (Unfenced, false, false, 20, true, false, Unfenced),
        (
            ControlledShutdown,
            false,
            true,
            20,
            true,
            true,
            ControlledShutdown,
        ),
        (
            ControlledShutdown,
            false,
            true,
            20,
            false,
            false,
            ControlledShutdown,
        ),
        (
            ControlledShutdown,
            false,
            true,
            20,
            false,
            true,
            ShutdownNow,
        ),
    ];
    for (i, (current, wf, ws, offset, leads, reached, expected)) in table.into_iter().enumerate() {
        let next = next_broker_state(current, &req(wf, ws, offset), reg, leads, reached);
        assert_eq!(next, expected, "row {i}");
    }
}

#[test]
fn heartbeat_with_a_stale_epoch_or_before_registration_is_rejected() {
    let mut h = Harness::default();
    let err = h.heartbeat(3, false, false).unwrap_err();
    assert_eq!(err.code, ErrorCode::StaleBrokerEpoch);
    h.register(3);
    let req = BrokerHeartbeatRequest {
        broker_id: BrokerId(3),
        broker_epoch: BrokerEpoch(12345),
        current_metadata_offset: LogOffset(0),
        want_fence: false,
        want_shut_down: false,
    };
    let err = {
        let next = h.next_offset();
        process_heartbeat(&h.image, &h.config, &mut h.tracker, &req, next, h.now_ms)
    }
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::StaleBrokerEpoch);
}

#[test]
fn broker_unfences_only_once_caught_up_to_its_own_registration() {
    let mut h = Harness::default();
    let epoch = h.register(0);
    let req = BrokerHeartbeatRequest {
        broker_id: BrokerId(0),
        broker_epoch: epoch,
        current_metadata_offset: LogOffset(epoch.0 - 1),
        want_fence: false,
        want_shut_down: false,
    };
    let result = {
        let next = h.next_offset();
        process_heartbeat(&h.image, &h.config, &mut h.tracker, &req, next, h.now_ms)
    }
    .unwrap();
    assert!(result.records.is_empty());
    assert_eq!(
        result.reply,
        BrokerHeartbeatReply {
            is_caught_up: false,
            is_fenced: true,
            should_shut_down: false
        }
    );
    let reply = h.heartbeat(0, false, false).unwrap();
    assert_eq!(
        reply,
        BrokerHeartbeatReply {
            is_caught_up: true,
            is_fenced: false,
            should_shut_down: false
        }
    );
}

#[test]
fn topics_cannot_be_created_while_every_broker_is_fenced() {
    let mut h = Harness::default();
    h.register(0);
    let t = h.creatable("foo", 1, 1);
    let reply = create_topics(&h.image, &h.config, std::slice::from_ref(&t), false).reply;
    let err = reply[0].error.clone().unwrap();
    assert_eq!(err.code, ErrorCode::InvalidReplicationFactor);
    assert!(
        err.message.contains("All brokers are currently fenced."),
        "{}",
        err.message
    );
    h.heartbeat(0, false, false).unwrap();
    let reply = create_topics(&h.image, &h.config, &[t], false).reply;
    assert_eq!(reply[0].error, None);
}

#[test]
fn unregistering_a_broker_leaves_its_sole_replica_partitions_leaderless() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.create_topic("foo", 1, 1);
    let result = unregister_broker(&h.image, &h.config, BrokerId(0)).unwrap();
    h.commit(result);
    assert!(h.image.broker(BrokerId(0)).is_none());
    let p = h.partition("foo", 0);
    assert_eq!(p.leader, BrokerId::NONE);
    assert_eq!(
        p.isr.to_vec(),
        ids(&[0]),
        "without ELR the last ISR member stays"
    );
    let err = unregister_broker(&h.image, &h.config, BrokerId(0)).unwrap_err();
    assert_eq!(err.code, ErrorCode::BrokerIdNotRegistered);
}

#[test]
fn session_expiry_fences_the_stalest_broker_one_per_call() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2, 3, 4]);
    h.create_assigned("foo", &[&[0, 1, 2, 3, 4]]);
    let start = h.now_ms;
    // Brokers 0, 2, 3, 4 stop; broker 1 keeps heartbeating. Broker 2 was heard from last.
    for (id, t) in [(0, 0), (3, 1), (4, 2), (2, 3)] {
        h.now_ms = start + t;
        h.heartbeat(id, false, false).unwrap();
    }
    let timeout = h.config.session_timeout_ms;
    assert_eq!(
        h.tracker.next_check_ms(&h.image, timeout),
        Some(start + timeout)
    );
    let mut fenced = vec![];
    for step in 0..10 {
        h.now_ms = start + timeout + 10 + step;
        h.heartbeat(1, false, false).unwrap();
        let result = fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms);
        match h.commit(result) {
            Some(b) => fenced.push(b.0),
            None => break,
        }
    }
    assert_eq!(
        fenced,
        vec![0, 3, 4, 2],
        "oldest contact first, one per call"
    );
    let p = h.partition("foo", 0);
    assert_eq!(p.isr.to_vec(), ids(&[1]));
    assert_eq!(p.leader, BrokerId(1));
    assert!(p.has_imbalanced_leader());
    assert!(h.image.broker(BrokerId(0)).unwrap().fenced);
    assert!(!h.image.broker(BrokerId(1)).unwrap().fenced);
}

#[test]
fn a_broker_heard_from_within_the_timeout_keeps_its_session() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    let t = h.config.session_timeout_ms;
    h.now_ms += t;
    assert!(h
        .tracker
        .has_valid_session(&h.image, BrokerId(0), h.now_ms, t));
    assert_eq!(
        fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms).reply,
        None
    );
    h.now_ms += 1;
    assert!(!h
        .tracker
        .has_valid_session(&h.image, BrokerId(0), h.now_ms, t));
}

#[test]
fn a_broker_whose_heartbeat_awaits_its_answer_keeps_its_session_until_a_timeout_after_the_answer() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1]);
    let t = h.config.session_timeout_ms;
    let start = h.now_ms;
    h.tracker
        .heartbeat_received(BrokerId(0), start, LogOffset::NONE);
    // Long past the timeout, its answer still pending: live. Broker 1, silent, is not.
    h.now_ms = start + 3 * t;
    assert!(h
        .tracker
        .has_valid_session(&h.image, BrokerId(0), h.now_ms, t));
    let result = fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms);
    assert_eq!(h.commit(result), Some(BrokerId(1)));
    assert_eq!(
        fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms).reply,
        None
    );
    // Answered: a contact then, and a full timeout from there.
    let answered = h.now_ms;
    h.tracker.heartbeat_answered(BrokerId(0), answered);
    h.now_ms = answered + t;
    assert_eq!(
        fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms).reply,
        None
    );
    h.now_ms += 1;
    let result = fence_stale_broker(&h.image, &h.config, &h.tracker, h.now_ms);
    assert_eq!(h.commit(result), Some(BrokerId(0)));
    // A broker forgotten while its heartbeat waited (the loop forgets a broker it fences)
    // stays forgotten.
    h.tracker
        .heartbeat_received(BrokerId(0), h.now_ms, LogOffset::NONE);
    h.tracker.remove(BrokerId(0));
    h.tracker.heartbeat_answered(BrokerId(0), h.now_ms);
    assert!(h.tracker.contact(BrokerId(0)).is_none());
}

#[test]
fn a_new_active_controller_counts_unfenced_brokers_as_just_heard_from_but_not_fenced_ones() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.register(1);
    let mut tracker = kmeta_metadata::controller::heartbeat::BrokerHeartbeatTracker::new();
    tracker.seed_on_activation(&h.image, 5);
    assert_eq!(
        tracker.contact(BrokerId(0)).map(|c| c.last_contact_ms),
        Some(5)
    );
    assert!(tracker.contact(BrokerId(1)).is_none());
}

#[test]
fn a_controlled_shutdown_waits_for_its_leader_moves_and_leaves_its_followed_isrs_after_its_fence() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    // Broker 0 leads t-0 and follows t-1 and t-2.
    h.create_assigned("t", &[&[0, 1, 2], &[1, 0, 2], &[2, 0, 1]]);
    let entering = h.heartbeat_result(0, false, true).unwrap();
    // Entering: only the move of what it leads, then the mark.
    assert_eq!(entering.records.len(), 2, "{:?}", entering.records);
    assert_eq!(entering.reply_after, None);
    h.commit(entering);
    assert_eq!(h.partition("t", 0).leader, BrokerId(1));
    assert!(!h.partition("t", 0).isr.contains(&BrokerId(0)));
    // It still replicates what it follows: still in those ISRs while it shuts down.
    assert!(h.partition("t", 1).isr.contains(&BrokerId(0)));
    assert!(h.partition("t", 2).isr.contains(&BrokerId(0)));
    h.heartbeat(1, false, false).unwrap();
    h.heartbeat(2, false, false).unwrap();
    // Stopping: the fence first, and the reply once it has committed; then the removals
    // from the ISRs it follows in, as one record.
    let stopping = h.heartbeat_result(0, false, true).unwrap();
    assert!(stopping.reply.should_shut_down);
    assert_eq!(stopping.reply_after, Some(1));
    assert!(matches!(
        &stopping.records[0],
        MetadataRecord::BrokerRegistrationChange(c) if c.fenced == Some(true)
    ));
    assert!(
        matches!(
            &stopping.records[1..],
            [MetadataRecord::BrokerPartitions(r)] if r.scope == BrokerScope::Followed
        ),
        "{:?}",
        stopping.records
    );
    h.commit(stopping);
    for p in 0..3 {
        assert!(!h.partition("t", p).isr.contains(&BrokerId(0)), "t-{p}");
    }
    assert!(h.image.broker(BrokerId(0)).unwrap().fenced);
    assert!(invariants::check(&h.image).is_empty());
}

#[test]
fn a_controlled_shutdown_completes_under_a_controller_that_became_active_after_it_began() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("t", &[&[0, 1, 2], &[1, 0, 2]]);
    let entering = h.heartbeat_result(0, false, true).unwrap();
    h.commit(entering);
    assert_eq!(h.partition("t", 0).leader, BrokerId(1));
    // Another controller becomes active: its heartbeat tracker starts from the image, with
    // no controlled-shutdown offset for broker 0 (it lived in the old one's memory).
    let mut tracker = kmeta_metadata::controller::heartbeat::BrokerHeartbeatTracker::new();
    tracker.seed_on_activation(&h.image, h.now_ms);
    h.tracker = tracker;
    h.heartbeat(1, false, false).unwrap();
    h.heartbeat(2, false, false).unwrap();
    // Every broker has the image with the mark and the moves: the shutdown is granted, not
    // left to wait out the session timeout.
    let reply = h.heartbeat(0, false, true).unwrap();
    assert!(reply.should_shut_down);
    assert!(h.image.broker(BrokerId(0)).unwrap().fenced);
}

#[test]
fn controlled_shutdown_moves_leadership_away_then_allows_shutdown() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("foo", &[&[0, 1, 2]]);
    let epoch = h.image.broker(BrokerId(0)).unwrap().broker_epoch;
    let req = BrokerHeartbeatRequest {
        broker_id: BrokerId(0),
        broker_epoch: epoch,
        current_metadata_offset: h.image.offset(),
        want_fence: false,
        want_shut_down: true,
    };
    let tp = h.tp("foo", 0);
    let result = {
        let next = h.next_offset();
        process_heartbeat(&h.image, &h.config, &mut h.tracker, &req, next, h.now_ms)
    }
    .unwrap();
    // Exactly: the removal moving leadership to 1, then the shutdown marker. (KRaft writes
    // the marker first; kmeta's image invariants hold after every record, and a leader in
    // controlled shutdown would break "every leader is active" in between.)
    assert_eq!(result.records.len(), 2);
    match &result.records[0] {
        MetadataRecord::BrokerPartitions(r) => {
            assert_eq!(
                (r.broker_id, r.scope.clone()),
                (BrokerId(0), BrokerScope::Led)
            );
            let changes = broker_changes(&h.image, r).collect::<Vec<_>>();
            assert_eq!(changes.len(), 1);
            let c = &changes[0];
            assert_eq!((c.topic_id, c.partition), (tp.topic_id, 0));
            assert_eq!(c.isr.as_ref().map(|l| l.to_vec()), Some(ids(&[1, 2])));
            assert_eq!(c.leader, Some(BrokerId(1)));
        }
        other => panic!("unexpected {other:?}"),
    }
    let reply = h.commit(result);
    assert!(!reply.should_shut_down);
    // The other brokers catch up past the shutdown record; then the broker may stop.
    h.heartbeat(1, false, false).unwrap();
    h.heartbeat(2, false, false).unwrap();
    let reply = h.heartbeat(0, false, true).unwrap();
    assert!(reply.should_shut_down);
    assert!(reply.is_fenced);
    assert!(h.image.broker(BrokerId(0)).unwrap().fenced);
}

#[test]
fn unfencing_a_broker_elects_it_where_partitions_had_no_leader() {
    let mut h = Harness::default();
    h.active_brokers(&[0]);
    h.create_topic("foo", 3, 1);
    h.heartbeat(0, true, false).unwrap();
    assert_eq!(h.image.leaderless_count(), 3);
    h.heartbeat(0, false, false).unwrap();
    assert_eq!(h.image.leaderless_count(), 0);
    assert_eq!(h.partition("foo", 2).leader, BrokerId(0));
}

#[test]
fn a_restart_showing_its_previous_epoch_takes_the_registration_back_while_the_session_is_live() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("t", &[&[1, 0, 2]]);
    let old_epoch = h.image.broker(BrokerId(1)).unwrap().broker_epoch;
    // Another process with the same id (it cannot know the epoch) is refused.
    for wrong in [None, Some(BrokerEpoch(old_epoch.0 + 1))] {
        let mut req = h.register_request(1, 77, None);
        req.previous_broker_epoch = wrong;
        let err = h.try_register(&req).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::DuplicateBrokerRegistration,
            "{wrong:?}"
        );
    }
    // The restarted process, which read the epoch from its locked log directory, is not.
    let mut req = h.register_request(1, 78, None);
    req.previous_broker_epoch = Some(old_epoch);
    let result = h
        .try_register(&req)
        .expect("a restart from the same log directory is taken back at once");
    let epoch = h.commit(result);
    assert!(epoch.0 > old_epoch.0);
    let b = h.image.broker(BrokerId(1)).unwrap();
    assert!(b.fenced, "the new incarnation starts fenced");
    assert_eq!(b.incarnation_id, uuid::Uuid::from_u128(78));
    // Its old incarnation may have lost unflushed data: it leaves every ISR.
    let p = h.partition("t", 0);
    assert_eq!(p.isr.to_vec(), ids(&[0, 2]));
    assert_eq!(p.leader, BrokerId(0));
}

#[test]
fn a_restart_with_its_log_directory_intact_keeps_its_isrs_and_gives_up_only_its_leadership() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("t", &[&[1, 0, 2], &[0, 1, 2]]);
    h.create_assigned("solo", &[&[1]]);
    let old_epoch = h.image.broker(BrokerId(1)).unwrap().broker_epoch;
    // The claim alone proves nothing: without the old epoch it is another process.
    let mut req = h.register_request(1, 77, None);
    req.log_dir_intact = true;
    let err = h.try_register(&req).unwrap_err();
    assert_eq!(err.code, ErrorCode::DuplicateBrokerRegistration);
    let mut req = h.register_request(1, 78, None);
    req.previous_broker_epoch = Some(old_epoch);
    req.log_dir_intact = true;
    let result = h.try_register(&req).expect("taken back at once");
    h.commit(result);
    assert!(h.image.broker(BrokerId(1)).unwrap().fenced);
    // It led t-0: another in-sync replica leads, and 1 stays in the ISR.
    let p = h.partition("t", 0);
    assert_eq!(p.leader, BrokerId(0));
    assert_eq!(p.isr.to_vec(), ids(&[1, 0, 2]));
    // It followed t-1: nothing changes.
    let p = h.partition("t", 1);
    assert_eq!((p.leader, p.isr.to_vec()), (BrokerId(0), ids(&[0, 1, 2])));
    // It was solo-0's only replica: leaderless until it is back, its ISR kept.
    let p = h.partition("solo", 0);
    assert!(p.leader.is_none());
    assert_eq!(p.isr.to_vec(), ids(&[1]));
    assert!(invariants::check(&h.image).is_empty());
    // Unfenced, it leads solo-0 again, cleanly, and t-0, where it is the preferred replica
    // and never left the ISR, comes back to it in the same heartbeat: one record for each,
    // with no balancing pass to wait for.
    let unfence = h.heartbeat_result(1, false, false).unwrap();
    let records = unfence.records.clone();
    h.commit(unfence);
    let scopes: Vec<BrokerScope> = records
        .iter()
        .filter_map(|r| match r {
            MetadataRecord::BrokerPartitions(r) => Some(r.scope.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(scopes, [BrokerScope::Leaderless, BrokerScope::Preferred]);
    assert!(!records
        .iter()
        .any(|r| enables_preferred_election(&h.image, r)));
    let p = h.partition("solo", 0);
    assert_eq!(p.leader, BrokerId(1));
    assert_eq!(p.leader_recovery_state, LeaderRecoveryState::Recovered);
    let p = h.partition("t", 0);
    assert_eq!((p.leader, p.isr.to_vec()), (BrokerId(1), ids(&[1, 0, 2])));
    assert_eq!(
        h.partition("t", 1).leader,
        BrokerId(0),
        "1 is not t-1's preferred"
    );
    assert!(h.image.imbalanced_partitions().next().is_none());
    assert!(invariants::check(&h.image).is_empty());
}

/// Every broker restarts with its log directory intact, and so do the controllers (a full
/// restart): the new active controller has heard from no broker. Each registration leaves its
/// broker's partitions leaderless rather than hand them to brokers about to register too, so
/// each moves only that broker's own. Once all are unfenced, each partition is led by its
/// preferred replica again, written as at most two records per unfencing, with no balancing
/// pass; with automatic balancing off, the leaders stay where the unfencing elected them.
fn restart_every_broker(h: &mut Harness) -> Vec<MetadataRecord> {
    h.tracker.seed_on_activation(&h.image, h.now_ms);
    for id in 0..3 {
        let old_epoch = h.image.broker(BrokerId(id)).unwrap().broker_epoch;
        let mut req = h.register_request(id, 500 + id as u128, None);
        req.previous_broker_epoch = Some(old_epoch);
        req.log_dir_intact = true;
        let result = h.try_register(&req).expect("taken back at once");
        for r in &result.records {
            if let MetadataRecord::BrokerPartitions(r) = r {
                let moved = broker_changes(&h.image, r).count();
                assert_eq!(moved, 100, "broker {id}'s registration moves its own 100");
            }
        }
        h.commit(result);
    }
    assert_eq!(h.image.leaderless_partitions().count(), 300);
    let mut written = Vec::new();
    for id in 0..3 {
        let unfence = h.heartbeat_result(id, false, false).unwrap();
        written.extend(unfence.records.iter().cloned());
        h.commit(unfence);
        assert!(!h.image.broker(BrokerId(id)).unwrap().fenced);
    }
    written
}

#[test]
fn after_every_broker_restarts_the_unfencings_alone_give_each_partition_back_to_its_preferred_replica(
) {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    for (i, order) in [[0, 1, 2], [1, 2, 0], [2, 0, 1]].iter().enumerate() {
        h.create_many_unchecked(&format!("t{i}-"), 1, 100, order);
    }
    let written = restart_every_broker(&mut h);
    assert!(written.len() <= 3 * 3, "{written:?}");
    assert!(h.image.leaderless_partitions().next().is_none());
    assert!(
        h.image.imbalanced_partitions().next().is_none(),
        "every partition is led by its preferred replica"
    );
    for id in 0..3 {
        assert_eq!(h.image.leader_count(BrokerId(id)), 100);
    }
    assert!(invariants::check(&h.image).is_empty());

    let mut h = Harness::default();
    h.config.leader_balance_interval_ms = 0;
    h.active_brokers(&[0, 1, 2]);
    for (i, order) in [[0, 1, 2], [1, 2, 0], [2, 0, 1]].iter().enumerate() {
        h.create_many_unchecked(&format!("t{i}-"), 1, 100, order);
    }
    let written = restart_every_broker(&mut h);
    assert!(!written.iter().any(|r| matches!(
        r,
        MetadataRecord::BrokerPartitions(r) if r.scope == BrokerScope::Preferred
    )));
    assert!(h.image.leaderless_partitions().next().is_none());
    assert_eq!(
        h.image.leader_count(BrokerId(0)),
        300,
        "the first unfenced leads all"
    );
}

#[test]
fn a_broker_back_right_after_a_controller_failover_hands_its_leadership_only_to_brokers_heard_from_since(
) {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("t", &[&[1, 0, 2], &[1, 2, 0]]);
    h.tracker.seed_on_activation(&h.image, h.now_ms);
    // 2 has heartbeated to the new active controller; 0 not yet.
    h.heartbeat(2, false, false).unwrap();
    let old_epoch = h.image.broker(BrokerId(1)).unwrap().broker_epoch;
    let mut req = h.register_request(1, 78, None);
    req.previous_broker_epoch = Some(old_epoch);
    req.log_dir_intact = true;
    let result = h.try_register(&req).expect("taken back at once");
    assert!(result.records.iter().any(|r| matches!(
        r,
        MetadataRecord::BrokerPartitions(r)
            if r.scope == BrokerScope::LeadershipExcept(vec![BrokerId(0)])
    )));
    h.commit(result);
    // t-0's next in-sync replica is 0, unheard: 2 takes it. t-1's is 2.
    assert_eq!(h.partition("t", 0).leader, BrokerId(2));
    assert_eq!(h.partition("t", 1).leader, BrokerId(2));
    assert_eq!(h.partition("t", 0).isr.to_vec(), ids(&[1, 0, 2]));
    assert!(invariants::check(&h.image).is_empty());
}

#[test]
fn a_re_registration_out_of_many_isrs_is_two_small_entries_with_the_registration_last() {
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_many_unchecked("t", 25, 1_000, &[1, 0, 2]);
    let old_epoch = h.image.broker(BrokerId(1)).unwrap().broker_epoch;
    let mut req = h.register_request(1, 78, None);
    req.previous_broker_epoch = Some(old_epoch);
    let next = h.next_offset();
    let result = h.try_register(&req).expect("accepted");
    // 25,000 ISR removals (it leads them all) are one record, which ends its entry; the
    // registration is in the next, and that entry's offset is the epoch.
    assert!(
        matches!(
            &result.records[..],
            [MetadataRecord::BrokerPartitions(r), MetadataRecord::RegisterBroker(_)]
                if r.scope == BrokerScope::Led
        ),
        "{:?}",
        result.records
    );
    assert_eq!(result.reply, BrokerEpoch(next.0 + 1));
    h.commit(result);
    for partition in [0, 999] {
        let p = h.partition("t0", partition);
        assert_eq!((p.leader, p.isr.to_vec()), (BrokerId(0), ids(&[0, 2])));
    }
    assert_eq!(h.image.leader_count(BrokerId(1)), 0);
    assert!(invariants::check(&h.image).is_empty());
}

#[test]
fn a_preferred_replica_rejoining_the_isr_calls_for_a_balancing_pass_and_nothing_else_does() {
    use kmeta_metadata::controller::replication::alter_partition::alter_partition;
    use kmeta_metadata::controller::replication::election::enables_preferred_election;
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    h.create_assigned("t", &[&[1, 0, 2]]);
    let tp = h.tp("t", 0);
    // Broker 1, the preferred leader, restarts: out of the ISR, leadership on 0.
    let old_epoch = h.image.broker(BrokerId(1)).unwrap().broker_epoch;
    let mut req = h.register_request(1, 78, None);
    req.previous_broker_epoch = Some(old_epoch);
    let result = h.try_register(&req).unwrap();
    let records = result.records.clone();
    h.commit(result);
    assert!(
        records
            .iter()
            .all(|r| !enables_preferred_election(&h.image, r)),
        "leaving the ISR enables nothing"
    );
    h.heartbeat(1, false, false).unwrap();
    // The leader shrinks the ISR further: still nothing to balance.
    let shrink = alter_partition(&h.image, &h.alter_isr(tp, &ids(&[0]))).unwrap();
    let records = shrink.records.clone();
    h.commit(shrink);
    assert!(records
        .iter()
        .all(|r| !enables_preferred_election(&h.image, r)));
    // 1 catches up and rejoins: now a pass would move leadership back to it.
    let expand = alter_partition(&h.image, &h.alter_isr(tp, &ids(&[0, 1]))).unwrap();
    let records = expand.records.clone();
    h.commit(expand);
    assert!(records
        .iter()
        .any(|r| enables_preferred_election(&h.image, r)));
    h.commit(balance_partition_leaders(&h.image));
    assert_eq!(h.partition("t", 0).leader, BrokerId(1));
}

#[test]
fn removing_a_broker_writes_its_leader_moves_before_its_isr_removals() {
    // A fence or a controlled shutdown of a broker hosting many partitions is written as
    // several entries; the partitions it leads, whose clients wait, move in the first ones.
    let mut h = Harness::default();
    h.active_brokers(&[0, 1, 2]);
    let assignment: Vec<&[i32]> = (0..30)
        .map(|i| -> &[i32] {
            match i % 3 {
                0 => &[1, 0, 2],
                1 => &[0, 1, 2],
                _ => &[2, 1, 0],
            }
        })
        .collect();
    h.create_assigned("foo", &assignment);
    let records = remove_broker_from_isrs(&h.image, &h.config, BrokerId(0));
    let changes: Vec<Vec<PartitionChangeRecord>> = records
        .iter()
        .map(|r| match r {
            MetadataRecord::BrokerPartitions(r) => broker_changes(&h.image, r).collect(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(h.image.leader_count(BrokerId(0)), 10);
    assert_eq!(changes.len(), 2, "{records:?}");
    assert!(changes[0].iter().all(|c| c.leader.is_some()));
    assert_eq!(changes[0].len(), 10, "the moves first");
    assert!(changes[1].iter().all(|c| c.leader.is_none()));
    assert_eq!(
        changes[1].len(),
        20,
        "every other partition has broker 0 in its ISR"
    );
}
