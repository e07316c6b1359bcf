//! A tiny in-memory "log" for driving the pure controller: it appends a decision's records at
//! increasing offsets, replays them, and checks every invariant after every single record.

use kmeta_metadata::controller::cluster::*;
use kmeta_metadata::controller::heartbeat::BrokerHeartbeatTracker;
use kmeta_metadata::controller::replication::alter_partition::*;
use kmeta_metadata::controller::replication::topics::*;
use kmeta_metadata::controller::replication::TopicRef;
use kmeta_metadata::controller::{ControllerConfig, ControllerResult};
use kmeta_metadata::image::PartitionRegistration;
use kmeta_metadata::invariants;
use kmeta_metadata::record::*;
use kmeta_metadata::*;

pub const CLUSTER_ID: &str = "test-cluster";

pub struct Harness {
    pub image: MetadataImage,
    pub log: Vec<(LogOffset, MetadataRecord)>,
    pub tracker: BrokerHeartbeatTracker,
    pub config: ControllerConfig,
    pub now_ms: u64,
    next_topic: u128,
}

impl Default for Harness {
    fn default() -> Self {
        Harness {
            image: MetadataImage::new(),
            log: Vec::new(),
            tracker: BrokerHeartbeatTracker::new(),
            config: ControllerConfig {
                cluster_id: CLUSTER_ID.into(),
                ..ControllerConfig::default()
            },
            now_ms: 1_000_000,
            next_topic: 1,
        }
    }
}

impl Harness {
    /// The offset the next record will get.
    pub fn next_offset(&self) -> LogOffset {
        LogOffset(self.log.len() as i64)
    }

    /// Appends and replays records one by one, checking invariants after each.
    pub fn apply(&mut self, records: &[MetadataRecord]) {
        for r in records {
            let offset = self.next_offset();
            let before = self.image.clone();
            self.image
                .replay(offset, r)
                .unwrap_or_else(|e| panic!("replay of {r:?} failed: {e}"));
            let faults = invariants::check(&self.image);
            assert!(faults.is_empty(), "after {r:?}: {faults:?}");
            let faults = invariants::check_transition(&before, &self.image);
            assert!(faults.is_empty(), "after {r:?}: {faults:?}");
            if let MetadataRecord::BrokerPartitions(removal) = r {
                broker_record_is_its_changes_decided_before(&before, offset, removal, &self.image);
            }
            self.log.push((offset, r.clone()));
        }
    }

    /// Applies a result and returns its reply.
    pub fn commit<T>(&mut self, result: ControllerResult<T>) -> T {
        self.apply(&result.records);
        result.reply
    }

    /// Replays the whole log into a fresh image.
    pub fn replayed_from_scratch(&self) -> MetadataImage {
        let mut image = MetadataImage::new();
        for (offset, r) in &self.log {
            image.replay(*offset, r).expect("log replays");
        }
        image
    }

    /// The log replayed as nodes apply it: each offset's records in one
    /// [`MetadataImage::replay_batch`].
    pub fn replayed_in_batches(&self) -> MetadataImage {
        let mut image = MetadataImage::new();
        for entry in self.log.chunk_by(|a, b| a.0 == b.0) {
            image
                .replay_batch(entry[0].0, entry.iter().map(|(_, r)| r))
                .expect("log replays in batches");
        }
        image
    }

    pub fn register_request(
        &self,
        id: i32,
        incarnation: u128,
        rack: Option<&str>,
    ) -> BrokerRegistrationRequest {
        BrokerRegistrationRequest {
            broker_id: BrokerId(id),
            cluster_id: CLUSTER_ID.into(),
            incarnation_id: uuid::Uuid::from_u128(incarnation),
            listeners: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092 + id as u16,
                security_protocol: 0,
            }],
            features: vec![],
            rack: rack.map(str::to_string),
            previous_broker_epoch: None,
            log_dir_intact: false,
        }
    }

    /// Decides `req` against the harness's image, sessions and clock (nothing applied).
    pub fn try_register(
        &self,
        req: &BrokerRegistrationRequest,
    ) -> Result<ControllerResult<BrokerEpoch>, ApiError> {
        register_broker(
            &self.image,
            &self.config,
            &self.tracker,
            req,
            self.next_offset(),
            self.now_ms,
        )
    }

    /// Registers a broker (incarnation = 1000 + id) and returns its epoch.
    pub fn register(&mut self, id: i32) -> BrokerEpoch {
        self.register_incarnation(id, 1000 + id as u128, None)
    }

    pub fn register_incarnation(
        &mut self,
        id: i32,
        incarnation: u128,
        rack: Option<&str>,
    ) -> BrokerEpoch {
        let req = self.register_request(id, incarnation, rack);
        let result = self.try_register(&req).expect("registration accepted");
        self.commit(result)
    }

    pub fn heartbeat(
        &mut self,
        id: i32,
        want_fence: bool,
        want_shut_down: bool,
    ) -> Result<BrokerHeartbeatReply, ApiError> {
        let result = self.heartbeat_result(id, want_fence, want_shut_down)?;
        Ok(self.commit(result))
    }

    /// A heartbeat of broker `id` decided, not yet committed.
    pub fn heartbeat_result(
        &mut self,
        id: i32,
        want_fence: bool,
        want_shut_down: bool,
    ) -> Result<ControllerResult<BrokerHeartbeatReply>, ApiError> {
        let epoch = self
            .image
            .broker(BrokerId(id))
            .map(|b| b.broker_epoch)
            .unwrap_or(BrokerEpoch(-1));
        let req = BrokerHeartbeatRequest {
            broker_id: BrokerId(id),
            broker_epoch: epoch,
            current_metadata_offset: self.image.offset(),
            want_fence,
            want_shut_down,
        };
        let next = self.next_offset();
        process_heartbeat(
            &self.image,
            &self.config,
            &mut self.tracker,
            &req,
            next,
            self.now_ms,
        )
    }

    /// Registers brokers and unfences them all.
    pub fn active_brokers(&mut self, ids: &[i32]) {
        for &id in ids {
            self.register(id);
        }
        for &id in ids {
            let reply = self.heartbeat(id, false, false).unwrap();
            assert!(!reply.is_fenced, "broker {id} should unfence");
        }
    }

    pub fn new_topic_id(&mut self) -> TopicId {
        self.next_topic += 1;
        uuid::Uuid::from_u128(0xABCD_0000_0000_0000_0000_0000_0000_0000 | self.next_topic)
    }

    pub fn creatable(&mut self, name: &str, partitions: i32, rf: i16) -> CreatableTopic {
        CreatableTopic {
            name: name.into(),
            topic_id: self.new_topic_id(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: vec![],
            configs: vec![],
        }
    }

    /// Creates a topic and asserts success.
    pub fn create_topic(&mut self, name: &str, partitions: i32, rf: i16) -> TopicId {
        let t = self.creatable(name, partitions, rf);
        self.create(t)
    }

    /// Creates a topic with a manual assignment and asserts success.
    pub fn create_assigned(&mut self, name: &str, assignment: &[&[i32]]) -> TopicId {
        let mut t = self.creatable(name, -1, -1);
        t.assignments = assignment
            .iter()
            .enumerate()
            .map(|(i, r)| (i as i32, r.iter().map(|b| BrokerId(*b)).collect()))
            .collect();
        self.create(t)
    }

    /// Creates `topics` topics named `{prefix}{i}` of `partitions` partitions each, all on
    /// `replicas`, replaying their records without the per-record invariant checks (for
    /// scale tests, where checking the whole image after every record is quadratic).
    pub fn create_many_unchecked(
        &mut self,
        prefix: &str,
        topics: usize,
        partitions: usize,
        replicas: &[i32],
    ) {
        for i in 0..topics {
            let mut t = self.creatable(&format!("{prefix}{i}"), -1, -1);
            t.assignments = (0..partitions)
                .map(|p| (p as i32, replicas.iter().map(|b| BrokerId(*b)).collect()))
                .collect();
            let result = create_topics(&self.image, &self.config, &[t], false);
            assert_eq!(result.reply[0].error, None, "{:?}", result.reply[0]);
            for r in &result.records {
                let offset = self.next_offset();
                self.image.replay(offset, r).expect("replays");
                self.log.push((offset, r.clone()));
            }
        }
    }

    pub fn create(&mut self, t: CreatableTopic) -> TopicId {
        let result = create_topics(&self.image, &self.config, &[t], false);
        let reply = self.commit(result);
        assert_eq!(reply[0].error, None, "{:?}", reply[0]);
        reply[0].topic_id.unwrap()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> PartitionRegistration {
        let id = self.image.topic_id(topic).expect("topic exists");
        self.image
            .partition(TopicIdPartition {
                topic_id: id,
                partition,
            })
            .expect("partition exists")
            .clone()
    }

    /// Sets a topic config through the controller and asserts success.
    pub fn set_topic_config(&mut self, topic: &str, key: &str, value: &str) {
        use kmeta_metadata::controller::configs::{alter_configs, ConfigOp};
        let op = ConfigOp::Set(key.into(), value.into());
        let result = alter_configs(&self.image, &ConfigResource::topic(topic), &[op], false)
            .expect("config accepted");
        self.commit(result);
    }

    /// An AlterPartition request (v3, with member epochs) from the partition's current leader,
    /// asking for `isr` at the partition's current epochs.
    pub fn alter_isr(&self, tp: TopicIdPartition, isr: &[BrokerId]) -> AlterPartitionRequest {
        let p = self.image.partition(tp).expect("partition exists");
        AlterPartitionRequest {
            version: 3,
            broker_id: p.leader,
            broker_epoch: self
                .image
                .broker(p.leader)
                .expect("leader registered")
                .broker_epoch,
            topics: vec![(
                TopicRef::Id(tp.topic_id),
                vec![AlterPartitionData {
                    partition: tp.partition,
                    leader_epoch: p.leader_epoch,
                    new_isr: isr
                        .iter()
                        .map(|b| (*b, self.image.broker(*b).map(|r| r.broker_epoch)))
                        .collect(),
                    leader_recovery_state: LeaderRecoveryState::Recovered,
                    partition_epoch: p.partition_epoch,
                }],
            )],
        }
    }

    pub fn tp(&self, topic: &str, partition: i32) -> TopicIdPartition {
        TopicIdPartition {
            topic_id: self.image.topic_id(topic).unwrap(),
            partition,
        }
    }
}

/// Broker id list from integers.
pub fn ids(list: &[i32]) -> Vec<BrokerId> {
    list.iter().map(|b| BrokerId(*b)).collect()
}

/// A `BrokerPartitionsRecord` replays to exactly the image its changes, each decided on the image
/// before the record, replay to; and the delta noted for it names every partition it changed.
fn broker_record_is_its_changes_decided_before(
    before: &MetadataImage,
    offset: LogOffset,
    removal: &BrokerPartitionsRecord,
    after: &MetadataImage,
) {
    use kmeta_metadata::controller::replication::election::broker_changes;
    let changes = broker_changes(before, removal).collect::<Vec<_>>();
    let mut expected = before.clone();
    for c in &changes {
        expected
            .replay(offset, &MetadataRecord::PartitionChange(c.clone()))
            .unwrap_or_else(|e| panic!("change {c:?} of {removal:?} failed: {e}"));
    }
    assert_eq!(
        &expected,
        after,
        "{removal:?} is not its {} changes",
        changes.len()
    );
    // A broker's delta of the record names exactly the partitions it changed.
    let mut delta = kmeta_metadata::delta::ImageDelta::default();
    let mut replayed = before.clone();
    delta
        .replay(
            &mut replayed,
            offset,
            &MetadataRecord::BrokerPartitions(removal.clone()),
        )
        .unwrap();
    assert_eq!(&replayed, after);
    let changed: std::collections::BTreeSet<TopicIdPartition> = changes
        .iter()
        .map(|c| TopicIdPartition {
            topic_id: c.topic_id,
            partition: c.partition,
        })
        .collect();
    assert_eq!(delta.partitions, changed, "{removal:?}: the delta");
}
