//! `MetadataImage`: the state the metadata log builds, and `replay`, the only way to change it.
//!
//! The image is built from persistent (structurally shared) ordered maps, so cloning it is O(1):
//! readers take a clone and keep a consistent view while the writer replays on. Iteration is
//! ordered, so anything produced from an image (records, replies, the canonical hash) is
//! deterministic.
//!
//! Replay validates every record against the current state and refuses one that does not fit
//! (a duplicate topic id, a change to an unknown partition, a broker epoch going backwards, a
//! partition shape that breaks leader ∈ ISR ⊆ replicas). A refused record means the log and the
//! image disagree: the caller must treat it as fatal, never skip it. On error the image is
//! left unchanged.
//!
//! Besides the primary state the image keeps derived indexes (partitions per broker, partitions
//! under reassignment, partitions without their preferred leader, leaderless partitions, groups
//! per topic) so that the controller's work is proportional to what it touches: fencing a broker
//! costs O(partitions it hosts), not O(all partitions).

use crate::record::*;
use crate::types::*;
use imbl::{OrdMap, OrdSet};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A registered broker as the image knows it: its latest registration record with fencing and
/// shutdown state applied.
pub type BrokerRegistration = RegisterBrokerRecord;

impl RegisterBrokerRecord {
    /// True when the broker may lead partitions and join ISRs: unfenced and not shutting down.
    pub fn is_active(&self) -> bool {
        !self.fenced && !self.in_controlled_shutdown
    }
}

/// The partitions that list one broker as a replica: by topic, each topic's indexes sorted
/// and shared until changed. A set of `TopicIdPartition`s took about 50 bytes per replica in
/// tree nodes (150 per partition at RF 3, on every controller and broker); indexes of a
/// topic's partitions take 4.
pub type BrokerPartitions = OrdMap<TopicId, Arc<Vec<i32>>>;

/// One partition's replication state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRegistration {
    /// All replicas, preferred leader first.
    pub replicas: BrokerList,
    /// In-sync replicas.
    pub isr: BrokerList,
    /// Replicas an in-flight reassignment removes.
    pub removing_replicas: BrokerList,
    /// Replicas an in-flight reassignment adds.
    pub adding_replicas: BrokerList,
    /// The leader, or `BrokerId::NONE`.
    pub leader: BrokerId,
    /// RECOVERING after an unclean election.
    pub leader_recovery_state: LeaderRecoveryState,
    /// Bumped on every leader change.
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change.
    pub partition_epoch: PartitionEpoch,
}

impl PartitionRegistration {
    /// The preferred leader: the first replica.
    pub fn preferred_leader(&self) -> BrokerId {
        self.replicas.first().copied().unwrap_or(BrokerId::NONE)
    }

    /// True when the ISR is smaller than the replica set.
    pub fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }

    /// True when no replica leads.
    pub fn is_leaderless(&self) -> bool {
        self.leader.is_none()
    }

    /// True while a reassignment is in flight (adding or removing replicas).
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// True when the preferred leader does not lead.
    pub fn has_imbalanced_leader(&self) -> bool {
        self.leader != self.preferred_leader()
    }

    /// The replicas the reassignment is moving to: `replicas − removing` (target order).
    pub fn target_replicas(&self) -> BrokerList {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }

    /// This partition with a change record applied: the partition epoch always bumps, the
    /// leader epoch bumps whenever the record names a leader.
    pub fn merge(&self, r: &PartitionChangeRecord) -> PartitionRegistration {
        let mut new = self.clone();
        if let Some(isr) = &r.isr {
            new.isr = isr.clone();
        }
        if let Some(leader) = r.leader {
            new.leader = leader;
            new.leader_epoch = self.leader_epoch.next();
        }
        if let Some(replicas) = &r.replicas {
            new.replicas = replicas.clone();
        }
        if let Some(removing) = &r.removing_replicas {
            new.removing_replicas = removing.clone();
        }
        if let Some(adding) = &r.adding_replicas {
            new.adding_replicas = adding.clone();
        }
        if let Some(state) = r.leader_recovery_state {
            new.leader_recovery_state = state;
        }
        new.partition_epoch = self.partition_epoch.next();
        new
    }

    fn from_record(r: &PartitionRecord) -> Self {
        PartitionRegistration {
            replicas: r.replicas.clone(),
            isr: r.isr.clone(),
            removing_replicas: r.removing_replicas.clone(),
            adding_replicas: r.adding_replicas.clone(),
            leader: r.leader,
            leader_recovery_state: r.leader_recovery_state,
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
        }
    }

    fn to_record(&self, tp: TopicIdPartition) -> PartitionRecord {
        PartitionRecord {
            topic_id: tp.topic_id,
            partition: tp.partition,
            replicas: self.replicas.clone(),
            isr: self.isr.clone(),
            removing_replicas: self.removing_replicas.clone(),
            adding_replicas: self.adding_replicas.clone(),
            leader: self.leader,
            leader_recovery_state: self.leader_recovery_state,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
        }
    }

    /// Checks the shape every partition must have. Returns a description of the first fault.
    pub fn shape_error(&self) -> Option<String> {
        if self.replicas.is_empty() {
            return Some("empty replica list".into());
        }
        if has_duplicates(&self.replicas) {
            return Some(format!("duplicate replicas {:?}", self.replicas));
        }
        if self.replicas.iter().any(|r| r.is_none()) {
            return Some(format!("negative replica id in {:?}", self.replicas));
        }
        if has_duplicates(&self.isr) {
            return Some(format!("duplicate ISR members {:?}", self.isr));
        }
        if let Some(r) = self.isr.iter().find(|r| !self.replicas.contains(r)) {
            return Some(format!("ISR member {r} is not a replica"));
        }
        if !self.leader.is_none() && !self.isr.contains(&self.leader) {
            return Some(format!("leader {} is not in the ISR", self.leader));
        }
        if self.leader.0 < BrokerId::NONE.0 {
            return Some(format!("invalid leader {}", self.leader));
        }
        for (name, set) in [
            ("adding", &self.adding_replicas),
            ("removing", &self.removing_replicas),
        ] {
            if has_duplicates(set) {
                return Some(format!("duplicate {name} replicas {set:?}"));
            }
            if let Some(r) = set.iter().find(|r| !self.replicas.contains(r)) {
                return Some(format!("{name} replica {r} is not a replica"));
            }
        }
        if let Some(r) = self
            .adding_replicas
            .iter()
            .find(|r| self.removing_replicas.contains(r))
        {
            return Some(format!("replica {r} is both adding and removing"));
        }
        if self.leader_recovery_state == LeaderRecoveryState::Recovering && self.isr.len() > 1 {
            return Some("a RECOVERING partition must have an ISR of one".into());
        }
        None
    }
}

fn has_duplicates(list: &[BrokerId]) -> bool {
    list.iter().enumerate().any(|(i, r)| list[..i].contains(r))
}

/// A topic and its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    /// The topic name.
    pub name: String,
    /// The topic UUID.
    pub id: TopicId,
    /// Partitions by index.
    pub partitions: OrdMap<i32, Arc<PartitionRegistration>>,
}

impl TopicImage {
    /// The partitions of this topic at `indexes` that exist, with their registrations: what
    /// [`MetadataImage::topics_on_broker`] gives per topic, walked.
    pub fn partitions_at<'a>(
        &'a self,
        indexes: &'a [i32],
    ) -> impl Iterator<Item = (TopicIdPartition, &'a Arc<PartitionRegistration>)> + 'a {
        indexes.iter().filter_map(move |&partition| {
            let p = self.partitions.get(&partition)?;
            let tp = TopicIdPartition {
                topic_id: self.id,
                partition,
            };
            Some((tp, p))
        })
    }
}

/// A committed consumer-group offset as the image stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    /// The committed offset.
    pub offset: i64,
    /// Leader epoch, or -1.
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
    /// When the controller accepted it (ms since the Unix epoch).
    pub commit_timestamp_ms: i64,
}

/// Why a record could not be replayed. Always fatal for the node replaying it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot replay record at offset {offset}: {reason}")]
pub struct ReplayError {
    /// The offset of the record.
    pub offset: LogOffset,
    /// What did not fit.
    pub reason: String,
}

/// The partitions of `set` after `after` (excluded), in order.
fn partitions_after(
    set: &OrdSet<TopicIdPartition>,
    after: TopicIdPartition,
) -> impl Iterator<Item = TopicIdPartition> + '_ {
    use std::ops::Bound::{Excluded, Unbounded};
    set.range((Excluded(after), Unbounded)).copied()
}

/// Whether a topic name can collide with another: only one holding '.' or '_'.
fn has_collision_chars(name: &str) -> bool {
    name.contains(['.', '_'])
}

/// The form two colliding topic names share: '.' written as '_'.
pub fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

/// An access control entry's place in the index by resource: type, pattern type, name, id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AclKey(AclResourceType, AclPatternType, String, uuid::Uuid);

impl AclKey {
    fn of(r: &AccessControlEntryRecord) -> AclKey {
        AclKey(
            r.resource_type,
            r.pattern_type,
            r.resource_name.clone(),
            r.id,
        )
    }
}

/// The whole metadata state at one log offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    offset: Option<LogOffset>,
    brokers: OrdMap<BrokerId, Arc<BrokerRegistration>>,
    topics: OrdMap<TopicId, Arc<TopicImage>>,
    /// Names as `Arc<str>` here and in the offsets and their index: a replay onto an image
    /// a reader still holds copies the path to each key it changes, keys and all, and a
    /// `String` key allocates as it is copied.
    topic_ids: OrdMap<Arc<str>, TopicId>,
    configs: OrdMap<ConfigResource, OrdMap<String, String>>,
    features: OrdMap<String, u16>,
    offsets: OrdMap<Arc<str>, OrdMap<TopicIdPartition, OffsetValue>>,
    /// The first producer id not yet handed to a broker.
    next_producer_id: i64,
    /// SCRAM credentials, by user and mechanism.
    scram: OrdMap<(String, ScramMechanism), Arc<UserScramCredentialRecord>>,
    /// Access control entries, by id.
    acls: OrdMap<uuid::Uuid, Arc<AccessControlEntryRecord>>,
    // Derived indexes, maintained by replay.
    partitions_by_broker: OrdMap<BrokerId, BrokerPartitions>,
    reassigning: OrdSet<TopicIdPartition>,
    imbalanced: OrdSet<TopicIdPartition>,
    leaderless: OrdSet<TopicIdPartition>,
    /// How many partitions each broker leads (no entry for none), so a heartbeat asks whether
    /// a broker leads anything without a scan of its partitions.
    leader_counts: OrdMap<BrokerId, usize>,
    groups_by_topic: OrdMap<TopicId, OrdSet<Arc<str>>>,
    /// Topic names holding '.' or '_', by [`collision_key`], with how many topics have each
    /// key: CreateTopics refuses a name that collides with one of them without reading every
    /// topic's name (which made each creation cost the active controller time in proportion
    /// to the topics there are).
    collision_keys: OrdMap<Arc<str>, u32>,
    /// The access control entries by the resources they name: a check looks up the name,
    /// `*` and each prefix of the name, never every entry.
    acls_by_resource: OrdMap<AclKey, Arc<AccessControlEntryRecord>>,
    partition_count: usize,
    /// Partitions whose ISR is smaller than their replica set, so that the gauge of them is
    /// read without a scan.
    under_replicated_count: usize,
}

impl MetadataImage {
    /// An empty image, before any record.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if `other` is this image or a clone of it, untouched since: every map shares its
    /// root with `other`'s and every scalar is equal. O(1); false says nothing (two images
    /// built apart may hold the same content). The active controller uses it to hand the
    /// image it built while deciding an entry to the state machine, which would otherwise
    /// replay the same records onto the same image again.
    pub fn is_same_as(&self, other: &MetadataImage) -> bool {
        // Destructured, so that a new field cannot be forgotten here.
        let MetadataImage {
            offset,
            brokers,
            topics,
            topic_ids,
            configs,
            features,
            offsets,
            next_producer_id,
            scram,
            acls,
            partitions_by_broker,
            reassigning,
            imbalanced,
            leaderless,
            leader_counts,
            groups_by_topic,
            collision_keys,
            acls_by_resource,
            partition_count,
            under_replicated_count,
        } = self;
        *offset == other.offset
            && brokers.ptr_eq(&other.brokers)
            && topics.ptr_eq(&other.topics)
            && topic_ids.ptr_eq(&other.topic_ids)
            && configs.ptr_eq(&other.configs)
            && features.ptr_eq(&other.features)
            && offsets.ptr_eq(&other.offsets)
            && *next_producer_id == other.next_producer_id
            && scram.ptr_eq(&other.scram)
            && acls.ptr_eq(&other.acls)
            && acls_by_resource.ptr_eq(&other.acls_by_resource)
            && partitions_by_broker.ptr_eq(&other.partitions_by_broker)
            && reassigning.ptr_eq(&other.reassigning)
            && imbalanced.ptr_eq(&other.imbalanced)
            && leaderless.ptr_eq(&other.leaderless)
            && leader_counts.ptr_eq(&other.leader_counts)
            && groups_by_topic.ptr_eq(&other.groups_by_topic)
            && collision_keys.ptr_eq(&other.collision_keys)
            && *partition_count == other.partition_count
            && *under_replicated_count == other.under_replicated_count
    }

    /// The offset of the last record replayed, or `LogOffset::NONE`.
    pub fn offset(&self) -> LogOffset {
        self.offset.unwrap_or(LogOffset::NONE)
    }

    /// The first producer id not yet handed to a broker (0 before any).
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// `user`'s SCRAM credential for `mechanism`.
    pub fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<&UserScramCredentialRecord> {
        self.scram
            .get(&(user.to_string(), mechanism))
            .map(|c| c.as_ref())
    }

    /// Every SCRAM credential, by user then mechanism.
    pub fn scram_credentials(&self) -> impl Iterator<Item = &UserScramCredentialRecord> + '_ {
        self.scram.values().map(|c| c.as_ref())
    }

    /// Every access control entry, by id.
    pub fn acls(&self) -> impl Iterator<Item = &AccessControlEntryRecord> + '_ {
        self.acls.values().map(|a| a.as_ref())
    }

    /// The access control entry `id`.
    pub fn acl(&self, id: uuid::Uuid) -> Option<&AccessControlEntryRecord> {
        self.acls.get(&id).map(|a| a.as_ref())
    }

    /// The entries whose pattern is exactly (`resource_type`, `pattern_type`, `name`).
    pub fn acls_on<'a>(
        &'a self,
        resource_type: AclResourceType,
        pattern_type: AclPatternType,
        name: &str,
    ) -> impl Iterator<Item = &'a AccessControlEntryRecord> + 'a {
        let key = |id| AclKey(resource_type, pattern_type, name.to_string(), id);
        self.acls_by_resource
            .range(key(uuid::Uuid::nil())..=key(uuid::Uuid::max()))
            .map(|(_, a)| a.as_ref())
    }

    /// The entries that apply to the resource `name` of `resource_type`: LITERAL ones naming
    /// it or `*`, and PREFIXED ones naming a prefix of it (itself included).
    pub fn acls_matching<'a>(
        &'a self,
        resource_type: AclResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a AccessControlEntryRecord> + 'a {
        let literal = self
            .acls_on(resource_type, AclPatternType::Literal, name)
            .chain(
                (name != "*")
                    .then(|| self.acls_on(resource_type, AclPatternType::Literal, "*"))
                    .into_iter()
                    .flatten(),
            );
        let prefixes = name
            .char_indices()
            .map(|(i, _)| i)
            .skip(1)
            .chain(std::iter::once(name.len()))
            .filter(|&end| end > 0);
        literal.chain(prefixes.flat_map(move |end| {
            self.acls_on(resource_type, AclPatternType::Prefixed, &name[..end])
        }))
    }

    /// The access control entries on resources of `resource_type`.
    pub fn acls_of_type(
        &self,
        resource_type: AclResourceType,
    ) -> impl Iterator<Item = &AccessControlEntryRecord> + '_ {
        let from = AclKey(
            resource_type,
            AclPatternType::Literal,
            String::new(),
            uuid::Uuid::nil(),
        );
        self.acls_by_resource
            .range(from..)
            .take_while(move |(k, _)| k.0 == resource_type)
            .map(|(_, a)| a.as_ref())
    }

    /// A registered broker.
    pub fn broker(&self, id: BrokerId) -> Option<&BrokerRegistration> {
        self.brokers.get(&id).map(|b| b.as_ref())
    }

    /// All registered brokers, by id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> + '_ {
        self.brokers.values().map(|b| b.as_ref())
    }

    /// True when the broker is registered, unfenced and not shutting down.
    pub fn is_active_broker(&self, id: BrokerId) -> bool {
        self.broker(id).is_some_and(BrokerRegistration::is_active)
    }

    /// A topic by id.
    pub fn topic(&self, id: &TopicId) -> Option<&TopicImage> {
        self.topics.get(id).map(|t| t.as_ref())
    }

    /// A topic's id by name.
    pub fn topic_id(&self, name: &str) -> Option<TopicId> {
        self.topic_ids.get(name).copied()
    }

    /// A topic by name.
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_id(name).and_then(|id| self.topic(&id))
    }

    /// Whether a topic other than one named `name` would collide with it: Kafka refuses
    /// topic names that differ only in '.' and '_' (both become '_' in metric names). A topic
    /// named exactly `name` counts too; callers check for it first.
    pub fn has_colliding_topic(&self, name: &str) -> bool {
        has_collision_chars(name)
            && self
                .collision_keys
                .contains_key(collision_key(name).as_str())
    }

    /// All topics, ordered by name.
    pub fn topics_by_name(&self) -> impl Iterator<Item = &TopicImage> + '_ {
        self.topic_ids.values().filter_map(|id| self.topic(id))
    }

    /// Number of topics.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Number of partitions across all topics.
    pub fn partition_count(&self) -> usize {
        self.partition_count
    }

    /// Number of partitions whose ISR is smaller than their replica set (the cluster-wide
    /// under-replicated count).
    pub fn under_replicated_count(&self) -> usize {
        self.under_replicated_count
    }

    /// Number of partitions whose leader is not the preferred replica (Kafka's
    /// PreferredReplicaImbalanceCount).
    pub fn imbalanced_count(&self) -> usize {
        self.imbalanced.len()
    }

    /// One partition.
    pub fn partition(&self, tp: TopicIdPartition) -> Option<&PartitionRegistration> {
        self.topic(&tp.topic_id)
            .and_then(|t| t.partitions.get(&tp.partition))
            .map(|p| p.as_ref())
    }

    /// Partitions that list `broker` as a replica (including adding/removing replicas).
    pub fn partitions_on_broker(
        &self,
        broker: BrokerId,
    ) -> impl Iterator<Item = TopicIdPartition> + '_ {
        self.partitions_by_broker
            .get(&broker)
            .into_iter()
            .flat_map(|topics| {
                topics.iter().flat_map(|(topic_id, indexes)| {
                    indexes.iter().map(move |&partition| TopicIdPartition {
                        topic_id: *topic_id,
                        partition,
                    })
                })
            })
    }

    /// The partitions that list `broker` as a replica with their registrations, a topic at a
    /// time (topic-id order, indexes ascending, as [`Self::partitions_on_broker`]): each
    /// topic is looked up once, not once per partition.
    pub fn topics_on_broker(
        &self,
        broker: BrokerId,
    ) -> impl Iterator<Item = (&TopicImage, &[i32])> + '_ {
        self.partitions_by_broker
            .get(&broker)
            .into_iter()
            .flat_map(move |topics| {
                topics.iter().filter_map(move |(topic_id, indexes)| {
                    Some((self.topic(topic_id)?, indexes.as_slice()))
                })
            })
    }

    /// How many partitions list `broker` as a replica: O(topics it hosts).
    pub fn partition_count_on_broker(&self, broker: BrokerId) -> usize {
        self.partitions_by_broker
            .get(&broker)
            .map_or(0, |topics| topics.values().map(|ix| ix.len()).sum())
    }

    /// Partitions with a reassignment in flight.
    pub fn reassigning_partitions(&self) -> impl Iterator<Item = TopicIdPartition> + '_ {
        self.reassigning.iter().copied()
    }

    /// Partitions whose leader is not the preferred replica (including leaderless ones).
    pub fn imbalanced_partitions(&self) -> impl Iterator<Item = TopicIdPartition> + '_ {
        self.imbalanced.iter().copied()
    }

    /// [`Self::imbalanced_partitions`] after `after` (excluded), then from the first up to
    /// `after` (included): a sweep that starts where an earlier one stopped.
    pub fn imbalanced_partitions_after(
        &self,
        after: TopicIdPartition,
    ) -> impl Iterator<Item = TopicIdPartition> + '_ {
        partitions_after(&self.imbalanced, after).chain(self.imbalanced.range(..=after).copied())
    }

    /// [`Self::leaderless_partitions`] after `after` (excluded).
    pub fn leaderless_partitions_after(
        &self,
        after: TopicIdPartition,
    ) -> impl Iterator<Item = TopicIdPartition> + '_ {
        partitions_after(&self.leaderless, after)
    }

    /// Partitions with no leader.
    pub fn leaderless_partitions(&self) -> impl Iterator<Item = TopicIdPartition> + '_ {
        self.leaderless.iter().copied()
    }

    /// Number of partitions with no leader (Kafka's OfflinePartitionsCount).
    pub fn leaderless_count(&self) -> usize {
        self.leaderless.len()
    }

    /// How many partitions `broker` leads.
    pub fn leader_count(&self, broker: BrokerId) -> usize {
        self.leader_counts.get(&broker).copied().unwrap_or(0)
    }

    /// Configs of one resource (empty when none are set).
    pub fn configs(&self, resource: &ConfigResource) -> Option<&OrdMap<String, String>> {
        self.configs.get(resource)
    }

    /// One config value.
    pub fn config(&self, resource: &ConfigResource, key: &str) -> Option<&str> {
        self.configs
            .get(resource)
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }

    /// Finalized feature levels.
    pub fn features(&self) -> &OrdMap<String, u16> {
        &self.features
    }

    /// The committed offsets of one group, by partition.
    pub fn group_offsets(&self, group: &str) -> Option<&OrdMap<TopicIdPartition, OffsetValue>> {
        self.offsets.get(group)
    }

    /// The broker coordinating `group`: rendezvous hashing over the active brokers, so that
    /// when a broker dies or is fenced only the groups it coordinated move, and each to one
    /// survivor, while every other group keeps its coordinator. `None` with no active broker.
    /// Brokers answer FindCoordinator with it; the active controller checks commits against it.
    pub fn group_coordinator(&self, group: &str) -> Option<BrokerId> {
        self.brokers()
            .filter(|b| b.is_active())
            .map(|b| (coordinator_weight(group, b.broker_id), b.broker_id))
            .max()
            .map(|(_, id)| id)
    }

    /// All groups that have committed offsets, ordered.
    pub fn groups(&self) -> impl Iterator<Item = &str> + '_ {
        self.offsets.keys().map(|g| &**g)
    }

    /// Applies one record at `offset`. On error the image is unchanged.
    pub fn replay(
        &mut self,
        offset: LogOffset,
        record: &MetadataRecord,
    ) -> Result<(), ReplayError> {
        self.replay_reporting(offset, record, &mut Vec::new())
    }

    /// [`Self::replay`], also pushing onto `changed` each partition a broker-wide record
    /// ([`MetadataRecord::BrokerPartitions`]) changes, in the order it changes them (topic id,
    /// then index); other records push nothing. What a broker-wide record changes is known
    /// only by deciding each partition, which replay does: a caller that wants the list (a
    /// broker's delta) gets it from the same walk instead of a second one over a third of a
    /// million partitions. On error `changed` is as it was.
    pub fn replay_reporting(
        &mut self,
        offset: LogOffset,
        record: &MetadataRecord,
        changed: &mut Vec<TopicIdPartition>,
    ) -> Result<(), ReplayError> {
        let fail = |reason: String| ReplayError { offset, reason };
        self.check_offset(offset).map_err(fail)?;
        match record {
            MetadataRecord::RegisterBroker(r) => self.replay_register_broker(r),
            MetadataRecord::UnregisterBroker(r) => self.replay_unregister_broker(r),
            MetadataRecord::BrokerRegistrationChange(r) => self.replay_broker_change(r),
            MetadataRecord::Topic(r) => self.replay_topic(r),
            MetadataRecord::Partition(r) => self.replay_partition(r),
            MetadataRecord::PartitionChange(r) => self.replay_partition_change(r),
            MetadataRecord::BrokerPartitions(r) => self.replay_broker_partitions(r, changed),
            MetadataRecord::RemoveTopic(r) => self.replay_remove_topic(r),
            MetadataRecord::Config(r) => self.replay_config(r),
            MetadataRecord::FeatureLevel(r) => {
                if r.level == 0 {
                    self.features.remove(&r.name);
                } else {
                    self.features.insert(r.name.clone(), r.level);
                }
                Ok(())
            }
            MetadataRecord::NoOp => Ok(()),
            MetadataRecord::OffsetCommit(r) => self.replay_offset_commit(r),
            MetadataRecord::OffsetDelete(r) => {
                self.replay_offset_delete(r);
                Ok(())
            }
            MetadataRecord::UserScramCredential(r) => {
                self.scram
                    .insert((r.name.clone(), r.mechanism), Arc::new(r.clone()));
                Ok(())
            }
            MetadataRecord::RemoveUserScramCredential(r) => self
                .scram
                .remove(&(r.name.clone(), r.mechanism))
                .map(|_| ())
                .ok_or_else(|| {
                    format!(
                        "no {} credential of user {:?} to remove",
                        r.mechanism.name(),
                        r.name
                    )
                }),
            MetadataRecord::AccessControlEntry(r) => {
                if self.acls.contains_key(&r.id) {
                    Err(format!("access control entry {} exists", r.id))
                } else {
                    let acl = Arc::new(r.clone());
                    self.acls_by_resource.insert(AclKey::of(r), acl.clone());
                    self.acls.insert(r.id, acl);
                    Ok(())
                }
            }
            MetadataRecord::RemoveAccessControlEntry(r) => match self.acls.remove(&r.id) {
                Some(acl) => {
                    self.acls_by_resource.remove(&AclKey::of(&acl));
                    Ok(())
                }
                None => Err(format!("no access control entry {} to remove", r.id)),
            },
            MetadataRecord::ProducerIds(r) => {
                if r.next_producer_id <= self.next_producer_id {
                    Err(format!(
                        "next producer id {} does not grow past {}",
                        r.next_producer_id, self.next_producer_id
                    ))
                } else {
                    self.next_producer_id = r.next_producer_id;
                    Ok(())
                }
            }
        }
        .map_err(fail)?;
        self.offset = Some(offset);
        Ok(())
    }

    /// Replays `records` at `offset` in order, as [`Self::replay`] of each would, but each
    /// run of partition records of one topic in ascending index order (a snapshot holds
    /// nothing else between its topic records; a created topic's entry is one) is stored a
    /// topic at a time: the topic's map taken out and stored back once, each broker's index
    /// of the topic extended once. Loading a snapshot of a million partitions spent most of
    /// its time in per-record lookups of the same topic and indexes. On error, what came
    /// before the failing record's run stays replayed (callers treat it as fatal).
    pub fn replay_batch<'a>(
        &mut self,
        offset: LogOffset,
        records: impl IntoIterator<Item = &'a MetadataRecord>,
    ) -> Result<(), ReplayError> {
        let mut run: Vec<&PartitionRecord> = Vec::new();
        for record in records {
            if let MetadataRecord::Partition(p) = record {
                let extends = run
                    .last()
                    .is_none_or(|last| last.topic_id == p.topic_id && last.partition < p.partition);
                if !extends {
                    self.replay_partitions(offset, &run)?;
                    run.clear();
                }
                run.push(p);
                continue;
            }
            self.replay_partitions(offset, &run)?;
            run.clear();
            self.replay(offset, record)?;
        }
        self.replay_partitions(offset, &run)
    }

    /// Replays `run`, new partitions of one topic in ascending index order, as
    /// [`Self::replay`] of each would. On error the image is unchanged.
    fn replay_partitions(
        &mut self,
        offset: LogOffset,
        run: &[&PartitionRecord],
    ) -> Result<(), ReplayError> {
        let fail = |reason: String| ReplayError { offset, reason };
        let Some(first) = run.first() else {
            return Ok(());
        };
        self.check_offset(offset).map_err(fail)?;
        // Every record is checked before any is stored. Indexes ascend, so none of the run
        // can collide with another of it.
        let added: Vec<PartitionRegistration> = run
            .iter()
            .map(|r| self.new_partition(r))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let topic_id = first.topic_id;
        let mut partitions = self
            .topic(&topic_id)
            .expect("checked above")
            .partitions
            .clone();
        let mut indexes: Vec<(BrokerId, Vec<i32>)> = Vec::new();
        let mut leaders = LeaderCounts::default();
        for (r, partition) in run.iter().zip(added) {
            let tp = TopicIdPartition {
                topic_id,
                partition: r.partition,
            };
            for &b in &partition.replicas {
                match indexes.iter_mut().find(|(broker, _)| *broker == b) {
                    Some((_, list)) => list.push(r.partition),
                    None => indexes.push((b, vec![r.partition])),
                }
            }
            self.index_membership(tp, None, &partition, &mut leaders);
            partitions.insert(r.partition, Arc::new(partition));
        }
        self.partition_count += run.len();
        self.store_partitions(topic_id, partitions);
        for (broker, added) in indexes {
            let topics = self.partitions_by_broker.entry(broker).or_default();
            let list = Arc::make_mut(topics.entry(topic_id).or_default());
            let in_order = list.last().is_none_or(|last| *last < added[0]);
            list.extend(added);
            if !in_order {
                list.sort_unstable();
            }
        }
        self.count_leaders(leaders);
        self.offset = Some(offset);
        Ok(())
    }

    /// An error unless records may be replayed at `offset` (never before the last one).
    fn check_offset(&self, offset: LogOffset) -> Result<(), String> {
        match self.offset {
            Some(current) if offset < current => {
                Err(format!("offset goes backwards from {current}"))
            }
            _ => Ok(()),
        }
    }

    /// The registration partition record `r` creates, or why it does not fit the image.
    fn new_partition(&self, r: &PartitionRecord) -> Result<PartitionRegistration, String> {
        let tp = TopicIdPartition {
            topic_id: r.topic_id,
            partition: r.partition,
        };
        let topic = self
            .topics
            .get(&r.topic_id)
            .ok_or_else(|| format!("partition {tp} of unknown topic"))?;
        if r.partition < 0 {
            return Err(format!("negative partition index in {tp}"));
        }
        if topic.partitions.contains_key(&r.partition) {
            return Err(format!("partition {tp} already exists"));
        }
        let partition = PartitionRegistration::from_record(r);
        if let Some(fault) = partition.shape_error() {
            return Err(format!("partition {tp}: {fault}"));
        }
        Ok(partition)
    }

    fn replay_register_broker(&mut self, r: &RegisterBrokerRecord) -> Result<(), String> {
        if r.broker_id.is_none() {
            return Err(format!("invalid broker id {}", r.broker_id));
        }
        if let Some(old) = self.brokers.get(&r.broker_id) {
            if old.incarnation_id == r.incarnation_id && old.broker_epoch != r.broker_epoch {
                return Err(format!(
                    "broker {} re-registered the same incarnation with epoch {} (was {})",
                    r.broker_id, r.broker_epoch, old.broker_epoch
                ));
            }
            if old.incarnation_id != r.incarnation_id && r.broker_epoch <= old.broker_epoch {
                return Err(format!(
                    "broker {} epoch goes backwards from {} to {}",
                    r.broker_id, old.broker_epoch, r.broker_epoch
                ));
            }
        }
        self.brokers.insert(r.broker_id, Arc::new(r.clone()));
        Ok(())
    }

    fn registered(&self, id: BrokerId, epoch: BrokerEpoch) -> Result<&BrokerRegistration, String> {
        match self.brokers.get(&id) {
            None => Err(format!("broker {id} is not registered")),
            Some(b) if b.broker_epoch != epoch => Err(format!(
                "broker {id} has epoch {}, record names {epoch}",
                b.broker_epoch
            )),
            Some(b) => Ok(b),
        }
    }

    fn replay_unregister_broker(&mut self, r: &UnregisterBrokerRecord) -> Result<(), String> {
        self.registered(r.broker_id, r.broker_epoch)?;
        self.brokers.remove(&r.broker_id);
        Ok(())
    }

    fn replay_broker_change(&mut self, r: &BrokerRegistrationChangeRecord) -> Result<(), String> {
        let mut broker = self.registered(r.broker_id, r.broker_epoch)?.clone();
        if let Some(fenced) = r.fenced {
            broker.fenced = fenced;
        }
        if let Some(shutdown) = r.in_controlled_shutdown {
            broker.in_controlled_shutdown = shutdown;
        }
        self.brokers.insert(r.broker_id, Arc::new(broker));
        Ok(())
    }

    fn replay_topic(&mut self, r: &TopicRecord) -> Result<(), String> {
        if let Some(id) = self.topic_ids.get(r.name.as_str()) {
            return Err(format!("topic {} already exists with id {id}", r.name));
        }
        if let Some(t) = self.topics.get(&r.topic_id) {
            return Err(format!(
                "topic id {} already used by {}",
                r.topic_id, t.name
            ));
        }
        if r.topic_id.is_nil() {
            return Err("nil topic id".into());
        }
        self.topic_ids
            .insert(Arc::from(r.name.as_str()), r.topic_id);
        if has_collision_chars(&r.name) {
            *self
                .collision_keys
                .entry(Arc::from(collision_key(&r.name)))
                .or_insert(0) += 1;
        }
        self.topics.insert(
            r.topic_id,
            Arc::new(TopicImage {
                name: r.name.clone(),
                id: r.topic_id,
                partitions: OrdMap::new(),
            }),
        );
        Ok(())
    }

    fn replay_partition(&mut self, r: &PartitionRecord) -> Result<(), String> {
        let partition = self.new_partition(r)?;
        let tp = TopicIdPartition {
            topic_id: r.topic_id,
            partition: r.partition,
        };
        self.partition_count += 1;
        self.put_partition(tp, None, partition);
        Ok(())
    }

    fn replay_partition_change(&mut self, r: &PartitionChangeRecord) -> Result<(), String> {
        let tp = TopicIdPartition {
            topic_id: r.topic_id,
            partition: r.partition,
        };
        // The old state shared, not copied: `merge` makes the one copy.
        let old = self
            .topic(&tp.topic_id)
            .and_then(|t| t.partitions.get(&tp.partition))
            .cloned()
            .ok_or_else(|| format!("change to unknown partition {tp}"))?;
        self.apply_partition_change(tp, &old, r)
    }

    /// Replays change `r` onto partition `tp`, whose registration is `old`.
    fn apply_partition_change(
        &mut self,
        tp: TopicIdPartition,
        old: &PartitionRegistration,
        r: &PartitionChangeRecord,
    ) -> Result<(), String> {
        let new = old.merge(r);
        if let Some(fault) = new.shape_error() {
            return Err(format!("partition {tp}: {fault}"));
        }
        self.put_partition(tp, Some(old), new);
        Ok(())
    }

    /// Applies to every partition on the broker the change `broker_change` decides for it on
    /// the image before this record. Each partition's change depends only on its own state,
    /// the brokers and the configs, none of which an earlier change in the same record
    /// touches, so deciding each just before applying it is deciding all on the image before.
    ///
    /// The changes come a topic at a time, so the topic's map is taken out once and stored
    /// back once, and leader counts are summed and stored at the end: per partition, what is
    /// left is its own entry and the sets whose membership it changes.
    fn replay_broker_partitions(
        &mut self,
        r: &BrokerPartitionsRecord,
        changed: &mut Vec<TopicIdPartition>,
    ) -> Result<(), String> {
        use crate::controller::replication::election::broker_changes_of;
        if self.broker(r.broker_id).is_none() {
            return Err(format!("removal of unregistered broker {}", r.broker_id));
        }
        let before = self.clone();
        let reported = changed.len();
        let mut leaders = LeaderCounts::default();
        // The topic being changed, with its partitions as changed so far.
        let mut open: Option<(TopicId, OrdMap<i32, Arc<PartitionRegistration>>)> = None;
        let result = broker_changes_of(&before, r).try_for_each(|(old, change)| {
            let tp = TopicIdPartition {
                topic_id: change.topic_id,
                partition: change.partition,
            };
            changed.push(tp);
            let new = old.merge(&change);
            if let Some(fault) = new.shape_error() {
                return Err(format!("partition {tp}: {fault}"));
            }
            self.index_partition(tp, Some(old), &new, &mut leaders);
            if open.as_ref().is_none_or(|(id, _)| *id != tp.topic_id) {
                if let Some((id, partitions)) = open.take() {
                    self.store_partitions(id, partitions);
                }
                let partitions = before
                    .topic(&tp.topic_id)
                    .expect("changes are of partitions the image holds")
                    .partitions
                    .clone();
                open = Some((tp.topic_id, partitions));
            }
            let (_, partitions) = open.as_mut().expect("opened above");
            partitions.insert(tp.partition, Arc::new(new));
            Ok(())
        });
        if result.is_err() {
            *self = before;
            changed.truncate(reported);
            return result;
        }
        if let Some((id, partitions)) = open {
            self.store_partitions(id, partitions);
        }
        self.count_leaders(leaders);
        Ok(())
    }

    /// Replaces topic `id`'s partitions (the topic exists).
    fn store_partitions(
        &mut self,
        id: TopicId,
        partitions: OrdMap<i32, Arc<PartitionRegistration>>,
    ) {
        let topic = self
            .topics
            .get_mut(&id)
            .expect("callers check that the topic exists");
        Arc::make_mut(topic).partitions = partitions;
    }

    /// Stores a partition and keeps every derived index in step.
    fn put_partition(
        &mut self,
        tp: TopicIdPartition,
        old: Option<&PartitionRegistration>,
        new: PartitionRegistration,
    ) {
        let mut leaders = LeaderCounts::default();
        self.index_partition(tp, old, &new, &mut leaders);
        self.count_leaders(leaders);
        let topic = Arc::make_mut(
            self.topics
                .get_mut(&tp.topic_id)
                .expect("callers check that the topic exists"),
        );
        topic.partitions.insert(tp.partition, Arc::new(new));
    }

    /// Keeps every derived index in step with partition `tp` going from `old` to `new`, but
    /// for the leader counts, whose changes go to `leaders` for the caller to store.
    fn index_partition(
        &mut self,
        tp: TopicIdPartition,
        old: Option<&PartitionRegistration>,
        new: &PartitionRegistration,
        leaders: &mut LeaderCounts,
    ) {
        let old_replicas: &[BrokerId] = old.map(|p| p.replicas.as_slice()).unwrap_or(&[]);
        if old_replicas != new.replicas.as_slice() {
            for r in old_replicas.iter().filter(|r| !new.replicas.contains(r)) {
                self.unindex_broker(*r, tp);
            }
            for r in new.replicas.iter().filter(|r| !old_replicas.contains(r)) {
                self.index_broker(*r, tp);
            }
        }
        self.index_membership(tp, old, new, leaders);
    }

    /// [`Self::index_partition`] but for the index of partitions by broker: the sets, the
    /// under-replicated count, and the leader counts (into `leaders`).
    fn index_membership(
        &mut self,
        tp: TopicIdPartition,
        old: Option<&PartitionRegistration>,
        new: &PartitionRegistration,
        leaders: &mut LeaderCounts,
    ) {
        // Each set is touched only where membership changes: most changes keep two of the
        // three as they were, and a lookup in a set of a million costs as much as an insert.
        let was = |f: fn(&PartitionRegistration) -> bool| old.is_some_and(f);
        if was(PartitionRegistration::is_reassigning) != new.is_reassigning() {
            set_membership(&mut self.reassigning, tp, new.is_reassigning());
        }
        if was(PartitionRegistration::has_imbalanced_leader) != new.has_imbalanced_leader() {
            set_membership(&mut self.imbalanced, tp, new.has_imbalanced_leader());
        }
        if was(PartitionRegistration::is_leaderless) != new.is_leaderless() {
            set_membership(&mut self.leaderless, tp, new.is_leaderless());
        }
        let was_under = old.is_some_and(|p| p.is_under_replicated());
        match (was_under, new.is_under_replicated()) {
            (false, true) => self.under_replicated_count += 1,
            (true, false) => self.under_replicated_count -= 1,
            _ => {}
        }
        let old_leader = old.map_or(BrokerId::NONE, |p| p.leader);
        if old_leader != new.leader {
            leaders.add(old_leader, -1);
            leaders.add(new.leader, 1);
        }
    }

    /// Stores the summed changes of leader counts.
    fn count_leaders(&mut self, leaders: LeaderCounts) {
        for (broker, by) in leaders.0 {
            if by != 0 {
                self.count_leader(broker, by);
            }
        }
    }

    fn count_leader(&mut self, broker: BrokerId, by: isize) {
        if broker.is_none() {
            return;
        }
        let n = self.leader_count(broker).saturating_add_signed(by);
        if n == 0 {
            self.leader_counts.remove(&broker);
        } else {
            self.leader_counts.insert(broker, n);
        }
    }

    fn index_broker(&mut self, broker: BrokerId, tp: TopicIdPartition) {
        let topics = self.partitions_by_broker.entry(broker).or_default();
        let indexes = topics.entry(tp.topic_id).or_default();
        // Partitions are created in index order: this is an append but for a reassignment.
        if let Err(at) = indexes.binary_search(&tp.partition) {
            Arc::make_mut(indexes).insert(at, tp.partition);
        }
    }

    fn unindex_broker(&mut self, broker: BrokerId, tp: TopicIdPartition) {
        let Some(topics) = self.partitions_by_broker.get_mut(&broker) else {
            return;
        };
        if let Some(indexes) = topics.get_mut(&tp.topic_id) {
            if let Ok(at) = indexes.binary_search(&tp.partition) {
                Arc::make_mut(indexes).remove(at);
            }
            if indexes.is_empty() {
                topics.remove(&tp.topic_id);
            }
        }
        if topics.is_empty() {
            self.partitions_by_broker.remove(&broker);
        }
    }

    fn replay_remove_topic(&mut self, r: &RemoveTopicRecord) -> Result<(), String> {
        let topic = self
            .topics
            .remove(&r.topic_id)
            .ok_or_else(|| format!("removal of unknown topic id {}", r.topic_id))?;
        self.topic_ids.remove(topic.name.as_str());
        if has_collision_chars(&topic.name) {
            let key = collision_key(&topic.name);
            match self.collision_keys.get(key.as_str()) {
                Some(n) if *n > 1 => {
                    self.collision_keys.insert(Arc::from(key), n - 1);
                }
                _ => {
                    self.collision_keys.remove(key.as_str());
                }
            }
        }
        for (&partition, p) in topic.partitions.iter() {
            let tp = TopicIdPartition {
                topic_id: r.topic_id,
                partition,
            };
            for &b in &p.replicas {
                self.unindex_broker(b, tp);
            }
            self.reassigning.remove(&tp);
            self.imbalanced.remove(&tp);
            self.leaderless.remove(&tp);
            self.count_leader(p.leader, -1);
            self.under_replicated_count -= usize::from(p.is_under_replicated());
        }
        self.partition_count -= topic.partitions.len();
        self.configs.remove(&ConfigResource::topic(&topic.name));
        if let Some(groups) = self.groups_by_topic.remove(&r.topic_id) {
            for group in groups.iter() {
                if let Some(offsets) = self.offsets.get_mut(&**group) {
                    let low = TopicIdPartition {
                        topic_id: r.topic_id,
                        partition: i32::MIN,
                    };
                    let high = TopicIdPartition {
                        topic_id: r.topic_id,
                        partition: i32::MAX,
                    };
                    let gone: Vec<TopicIdPartition> =
                        offsets.range(low..=high).map(|(tp, _)| *tp).collect();
                    for tp in gone {
                        offsets.remove(&tp);
                    }
                    if offsets.is_empty() {
                        self.offsets.remove(&**group);
                    }
                }
            }
        }
        Ok(())
    }

    fn replay_config(&mut self, r: &ConfigRecord) -> Result<(), String> {
        if r.resource.resource_type == ConfigResourceType::Topic
            && !self
                .topic_ids
                .contains_key(r.resource.resource_name.as_str())
        {
            return Err(format!(
                "config for unknown topic {}",
                r.resource.resource_name
            ));
        }
        match &r.value {
            Some(value) => {
                self.configs
                    .entry(r.resource.clone())
                    .or_default()
                    .insert(r.name.clone(), value.clone());
            }
            None => {
                if let Some(map) = self.configs.get_mut(&r.resource) {
                    map.remove(&r.name);
                    if map.is_empty() {
                        self.configs.remove(&r.resource);
                    }
                }
            }
        }
        Ok(())
    }

    fn replay_offset_commit(&mut self, r: &OffsetCommitRecord) -> Result<(), String> {
        for c in &r.offsets {
            let tp = TopicIdPartition {
                topic_id: c.topic_id,
                partition: c.partition,
            };
            if self.partition(tp).is_none() {
                return Err(format!("offset commit for unknown partition {tp}"));
            }
        }
        for c in &r.offsets {
            let tp = TopicIdPartition {
                topic_id: c.topic_id,
                partition: c.partition,
            };
            let value = OffsetValue {
                offset: c.offset,
                leader_epoch: c.leader_epoch,
                metadata: c.metadata.clone(),
                commit_timestamp_ms: c.commit_timestamp_ms,
            };
            // The group's name is allocated once, when it first commits, and shared by the
            // index of groups by topic; a commit of a group already indexed under its topic
            // leaves that index untouched (an insert would copy its path anyway).
            let group: Arc<str> = match self.offsets.get_key_value(c.group_id.as_str()) {
                Some((group, _)) => group.clone(),
                None => Arc::from(c.group_id.as_str()),
            };
            self.offsets
                .entry(group.clone())
                .or_default()
                .insert(tp, value);
            let indexed = self
                .groups_by_topic
                .get(&c.topic_id)
                .is_some_and(|groups| groups.contains(&group));
            if !indexed {
                self.groups_by_topic
                    .entry(c.topic_id)
                    .or_default()
                    .insert(group);
            }
        }
        Ok(())
    }

    fn replay_offset_delete(&mut self, r: &OffsetDeleteRecord) {
        let Some(offsets) = self.offsets.get_mut(r.group_id.as_str()) else {
            return;
        };
        let gone: Vec<TopicIdPartition> = match &r.partitions {
            None => offsets.keys().copied().collect(),
            Some(list) => list.clone(),
        };
        for tp in &gone {
            offsets.remove(tp);
        }
        let left: OrdSet<TopicId> = offsets.keys().map(|tp| tp.topic_id).collect();
        if offsets.is_empty() {
            self.offsets.remove(r.group_id.as_str());
        }
        for tp in gone {
            if !left.contains(&tp.topic_id) {
                if let Some(groups) = self.groups_by_topic.get_mut(&tp.topic_id) {
                    groups.remove(r.group_id.as_str());
                    if groups.is_empty() {
                        self.groups_by_topic.remove(&tp.topic_id);
                    }
                }
            }
        }
    }

    /// Records that rebuild this image from empty: the content of a snapshot. Replaying them
    /// in order into an empty image yields an image equal to this one (offsets aside).
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        self.for_each_record(|r| out.push(r));
        out
    }

    /// Like [`to_records`](Self::to_records) without materializing the whole list.
    pub fn for_each_record(&self, mut f: impl FnMut(MetadataRecord)) {
        for (name, &level) in self.features.iter() {
            f(MetadataRecord::FeatureLevel(FeatureLevelRecord {
                name: name.clone(),
                level,
            }));
        }
        for b in self.brokers.values() {
            f(MetadataRecord::RegisterBroker(b.as_ref().clone()));
        }
        for topic in self.topics_by_name() {
            f(MetadataRecord::Topic(TopicRecord {
                name: topic.name.clone(),
                topic_id: topic.id,
            }));
            for (&partition, p) in topic.partitions.iter() {
                let tp = TopicIdPartition {
                    topic_id: topic.id,
                    partition,
                };
                f(MetadataRecord::Partition(p.to_record(tp)));
            }
        }
        for (resource, map) in self.configs.iter() {
            for (name, value) in map.iter() {
                f(MetadataRecord::Config(ConfigRecord {
                    resource: resource.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                }));
            }
        }
        if self.next_producer_id > 0 {
            f(MetadataRecord::ProducerIds(
                crate::record::ProducerIdsRecord {
                    broker_id: BrokerId::NONE,
                    broker_epoch: crate::types::BrokerEpoch(-1),
                    next_producer_id: self.next_producer_id,
                },
            ));
        }
        for c in self.scram.values() {
            f(MetadataRecord::UserScramCredential(c.as_ref().clone()));
        }
        for a in self.acls.values() {
            f(MetadataRecord::AccessControlEntry(a.as_ref().clone()));
        }
        const OFFSETS_PER_RECORD: usize = 1000;
        for (group, offsets) in self.offsets.iter() {
            let all: Vec<CommittedOffset> = offsets
                .iter()
                .map(|(tp, v)| CommittedOffset {
                    group_id: group.to_string(),
                    topic_id: tp.topic_id,
                    partition: tp.partition,
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata.clone(),
                    commit_timestamp_ms: v.commit_timestamp_ms,
                })
                .collect();
            for chunk in all.chunks(OFFSETS_PER_RECORD) {
                f(MetadataRecord::OffsetCommit(OffsetCommitRecord {
                    offsets: chunk.to_vec(),
                }));
            }
        }
    }

    /// SHA-256 over the canonical encoding of the state (the snapshot records in order).
    /// Two images hold the same state exactly when their hashes are equal.
    pub fn canonical_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut buf = Vec::with_capacity(256);
        self.for_each_record(|r| {
            buf.clear();
            r.encode_into(&mut buf);
            hasher.update((buf.len() as u64).to_le_bytes());
            hasher.update(&buf);
        });
        hasher.finalize().into()
    }

    /// The canonical hash as lowercase hex.
    pub fn canonical_hash_hex(&self) -> String {
        self.canonical_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn derived_indexes(&self) -> DerivedIndexes<'_> {
        DerivedIndexes {
            partitions_by_broker: &self.partitions_by_broker,
            reassigning: &self.reassigning,
            imbalanced: &self.imbalanced,
            leaderless: &self.leaderless,
            leader_counts: &self.leader_counts,
            groups_by_topic: &self.groups_by_topic,
            partition_count: self.partition_count,
            under_replicated_count: self.under_replicated_count,
            acls_by_resource: self
                .acls_by_resource
                .iter()
                .map(|(k, a)| (k.0, k.1, k.2.as_str(), k.3, a.id))
                .collect(),
        }
    }
}

/// Read access to the derived indexes, for the invariant checker.
pub(crate) struct DerivedIndexes<'a> {
    pub partitions_by_broker: &'a OrdMap<BrokerId, BrokerPartitions>,
    pub reassigning: &'a OrdSet<TopicIdPartition>,
    pub imbalanced: &'a OrdSet<TopicIdPartition>,
    pub leaderless: &'a OrdSet<TopicIdPartition>,
    pub leader_counts: &'a OrdMap<BrokerId, usize>,
    pub groups_by_topic: &'a OrdMap<TopicId, OrdSet<Arc<str>>>,
    pub partition_count: usize,
    pub under_replicated_count: usize,
    /// The ACL index's entries: (resource type, pattern type, name, key id, entry id).
    pub acls_by_resource: Vec<(
        AclResourceType,
        AclPatternType,
        &'a str,
        uuid::Uuid,
        uuid::Uuid,
    )>,
}

/// Changes of how many partitions each broker leads, summed before they are stored: a few
/// brokers, so a list.
#[derive(Default)]
struct LeaderCounts(Vec<(BrokerId, isize)>);

impl LeaderCounts {
    fn add(&mut self, broker: BrokerId, by: isize) {
        if broker.is_none() {
            return;
        }
        match self.0.iter_mut().find(|(b, _)| *b == broker) {
            Some((_, n)) => *n += by,
            None => self.0.push((broker, by)),
        }
    }
}

fn set_membership(set: &mut OrdSet<TopicIdPartition>, tp: TopicIdPartition, member: bool) {
    if member {
        set.insert(tp);
    } else {
        set.remove(&tp);
    }
}

/// A stable 64-bit weight of `(group, broker)` for rendezvous hashing: FNV-1a over the group's
/// bytes and the broker id, then a SplitMix64 finalizer so that nearby broker ids spread.
fn coordinator_weight(group: &str, broker: BrokerId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.as_bytes().iter().chain(&broker.0.to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
