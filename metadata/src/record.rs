//! `MetadataRecord`: the versioned unit of the metadata log.
//!
//! Every fact the cluster agrees on is one of these records. Controllers generate them, Raft
//! orders them, and `MetadataImage::replay` applies them; nothing else changes state.
//!
//! # Encoding
//! A record is encoded as `[type: u16 LE][version: u8][payload]`, where the payload is the
//! record's struct for that version in postcard's format (a stable, documented wire format).
//! Record types reuse Kafka's metadata record api keys where Kafka has the same record, and
//! start at 1000 for kmeta's own records. A newer binary keeps a decoder for every
//! `(type, version)` it ever wrote, so an older log stays readable. To change a record, add a
//! new version with its own struct and keep the old decoder (converting to the new shape).
//!
//! # Sentinels
//! - `BrokerId(-1)` (`BrokerId::NONE`): no leader.
//! - In `PartitionChangeRecord`, `None` means "unchanged" for every optional field; a
//!   `leader` of `Some(BrokerId::NONE)` means "the partition now has no leader".
//! - `ConfigRecord.value = None` deletes the key.
//! - `ConfigRecord.resource_name = ""` with `ConfigResourceType::Broker` is the cluster-wide
//!   default for broker configs.

use crate::types::{
    BrokerEpoch, BrokerId, BrokerList, LeaderEpoch, LeaderRecoveryState, PartitionEpoch, TopicId,
    TopicIdPartition,
};
use serde::{Deserialize, Serialize};

/// One listener a broker accepts clients on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// Listener name, e.g. `PLAINTEXT`.
    pub name: String,
    /// Host clients should connect to.
    pub host: String,
    /// Port clients should connect to.
    pub port: u16,
    /// Kafka's security protocol id (0 = PLAINTEXT).
    pub security_protocol: i16,
}

/// A feature version range a broker supports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeatureRange {
    /// Feature name, e.g. `metadata.version`.
    pub name: String,
    /// Lowest supported level.
    pub min_version: u16,
    /// Highest supported level.
    pub max_version: u16,
}

/// A broker registered (or re-registered). Kafka api key 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBrokerRecord {
    /// The broker's `node.id`.
    pub broker_id: BrokerId,
    /// A UUID chosen once per broker process start.
    pub incarnation_id: uuid::Uuid,
    /// The offset of the first registration record of this incarnation.
    pub broker_epoch: BrokerEpoch,
    /// Client listeners, in the broker's order.
    pub listeners: Vec<Endpoint>,
    /// Supported feature ranges.
    pub features: Vec<FeatureRange>,
    /// `broker.rack`, if set.
    pub rack: Option<String>,
    /// New incarnations start fenced; an amended registration keeps the current state.
    pub fenced: bool,
    /// Whether the broker is in controlled shutdown.
    pub in_controlled_shutdown: bool,
}

/// A broker was removed from the cluster. Kafka api key 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnregisterBrokerRecord {
    /// The broker removed.
    pub broker_id: BrokerId,
    /// The epoch of the registration being removed (a guard against removing a newer one).
    pub broker_epoch: BrokerEpoch,
}

/// A delta on a broker registration. Kafka api key 17.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistrationChangeRecord {
    /// The broker changed.
    pub broker_id: BrokerId,
    /// The epoch of the registration being changed.
    pub broker_epoch: BrokerEpoch,
    /// `Some(true)` fences, `Some(false)` unfences, `None` leaves it.
    pub fenced: Option<bool>,
    /// `Some(true)` enters controlled shutdown, `None` leaves it.
    pub in_controlled_shutdown: Option<bool>,
}

/// A topic was created: name ↔ id. Kafka api key 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// The topic name (unique among live topics).
    pub name: String,
    /// The topic's UUID (never reused).
    pub topic_id: TopicId,
}

/// The full state of one partition; written when a partition is created (and in snapshots).
/// Kafka api key 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The topic.
    pub topic_id: TopicId,
    /// The partition index.
    pub partition: i32,
    /// All replicas, preferred leader first. During a reassignment, target order then removing.
    pub replicas: BrokerList,
    /// In-sync replicas: a subset of `replicas`.
    pub isr: BrokerList,
    /// Replicas being removed by an in-flight reassignment.
    pub removing_replicas: BrokerList,
    /// Replicas being added by an in-flight reassignment.
    pub adding_replicas: BrokerList,
    /// The leader, or `BrokerId::NONE`.
    pub leader: BrokerId,
    /// Whether the leader was elected uncleanly and is still recovering.
    pub leader_recovery_state: LeaderRecoveryState,
    /// Leader epoch (0 at creation).
    pub leader_epoch: LeaderEpoch,
    /// Partition epoch (0 at creation).
    pub partition_epoch: PartitionEpoch,
}

/// A delta on one partition. Replay bumps the partition epoch always and the leader epoch
/// whenever `leader` is `Some`. Kafka api key 5.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PartitionChangeRecord {
    /// The topic.
    pub topic_id: TopicId,
    /// The partition index.
    pub partition: i32,
    /// New ISR, or `None` if unchanged.
    pub isr: Option<BrokerList>,
    /// New leader (`BrokerId::NONE` = no leader), or `None` if unchanged. `Some(current)`
    /// forces a leader epoch bump without changing the leader.
    pub leader: Option<BrokerId>,
    /// New replica list, or `None` if unchanged.
    pub replicas: Option<BrokerList>,
    /// New removing set, or `None` if unchanged.
    pub removing_replicas: Option<BrokerList>,
    /// New adding set, or `None` if unchanged.
    pub adding_replicas: Option<BrokerList>,
    /// New leader recovery state, or `None` if unchanged.
    pub leader_recovery_state: Option<LeaderRecoveryState>,
}

/// A topic and all its partitions were deleted. Kafka api key 9.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveTopicRecord {
    /// The topic removed.
    pub topic_id: TopicId,
}

/// The kind of resource a config belongs to; Kafka's `ConfigResource.Type` wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigResourceType {
    /// A topic (wire value 2).
    Topic,
    /// A broker, or `""` for the cluster default (wire value 4).
    Broker,
}

impl ConfigResourceType {
    /// Kafka's wire value.
    pub fn wire_value(self) -> i8 {
        match self {
            ConfigResourceType::Topic => 2,
            ConfigResourceType::Broker => 4,
        }
    }
}

/// A resource configs attach to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigResource {
    /// Topic or broker.
    pub resource_type: ConfigResourceType,
    /// Topic name, broker id as text, or `""` for the cluster default.
    pub resource_name: String,
}

impl ConfigResource {
    /// The config resource of a topic.
    pub fn topic(name: &str) -> Self {
        ConfigResource {
            resource_type: ConfigResourceType::Topic,
            resource_name: name.to_string(),
        }
    }

    /// The cluster-wide default broker config resource.
    pub fn cluster_default() -> Self {
        ConfigResource {
            resource_type: ConfigResourceType::Broker,
            resource_name: String::new(),
        }
    }
}

/// Set (`value = Some`) or delete (`value = None`) one config key. Kafka api key 4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// The resource.
    pub resource: ConfigResource,
    /// The key, e.g. `cleanup.policy`.
    pub name: String,
    /// The new value; `None` deletes the key.
    pub value: Option<String>,
}

/// A finalized feature level, e.g. `metadata.version`. Kafka api key 12.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLevelRecord {
    /// Feature name.
    pub name: String,
    /// Finalized level; 0 removes the feature.
    pub level: u16,
}

/// One committed consumer-group offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The consumer group.
    pub group_id: String,
    /// The topic.
    pub topic_id: TopicId,
    /// The partition index.
    pub partition: i32,
    /// The next offset the group will consume.
    pub offset: i64,
    /// The leader epoch of the consumed record, or -1 when unknown.
    pub leader_epoch: i32,
    /// Free-form metadata from the client (bounded by `MAX_OFFSET_METADATA_BYTES`).
    pub metadata: String,
    /// When the controller accepted the commit, in milliseconds since the Unix epoch.
    pub commit_timestamp_ms: i64,
}

/// A batch of consumer-group offset commits, possibly from many groups. kmeta type 1000 (Kafka
/// keeps offsets in `__consumer_offsets`; kmeta replicates them in the metadata log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitRecord {
    /// The commits; a later entry for the same (group, partition) wins.
    pub offsets: Vec<CommittedOffset>,
}

/// Deletes committed offsets of one group: all of them (DeleteGroups) or the listed
/// partitions (OffsetDelete). kmeta type 1001.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetDeleteRecord {
    /// The consumer group.
    pub group_id: String,
    /// `None`: every offset of the group.
    pub partitions: Option<Vec<TopicIdPartition>>,
}

/// A block of producer ids handed to a broker (Kafka api key 15, `ProducerIdsRecord`): the
/// broker owns `[next_producer_id - block, next_producer_id)`; the next block starts here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdsRecord {
    /// The broker the block went to.
    pub broker_id: BrokerId,
    /// That broker's epoch when it asked.
    pub broker_epoch: BrokerEpoch,
    /// The first id not yet handed out.
    pub next_producer_id: i64,
}

/// A SCRAM mechanism (Kafka's `ScramMechanism`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// Both, in Kafka's order.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// Kafka's wire id (1 and 2).
    pub fn id(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The mechanism with Kafka's wire id `id`.
    pub fn from_id(id: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.id() == id)
    }

    /// The SASL mechanism name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism named `name`.
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The least and most iterations Kafka accepts for a credential.
    pub const MIN_ITERATIONS: u32 = 4096;
    /// See [`Self::MIN_ITERATIONS`].
    pub const MAX_ITERATIONS: u32 = 16384;
}

/// A user's SCRAM credential for one mechanism (Kafka api key 11,
/// `UserScramCredentialRecord`). It holds what RFC 5802 lets a server keep, never the password:
/// the salt, the iteration count, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and
/// ServerKey = HMAC(SaltedPassword, "Server Key").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserScramCredentialRecord {
    /// The user name (the principal is `User:<name>`).
    pub name: String,
    /// The mechanism.
    pub mechanism: ScramMechanism,
    /// The salt.
    pub salt: Vec<u8>,
    /// StoredKey.
    pub stored_key: Vec<u8>,
    /// ServerKey.
    pub server_key: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
}

/// A user's SCRAM credential for one mechanism is removed (Kafka api key 22,
/// `RemoveUserScramCredentialRecord`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveUserScramCredentialRecord {
    /// The user name.
    pub name: String,
    /// The mechanism.
    pub mechanism: ScramMechanism,
}

/// The kind of resource an ACL protects (Kafka's `ResourceType`, with its wire ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclResourceType {
    /// A topic, by name.
    Topic,
    /// A consumer group, by id.
    Group,
    /// The cluster (its one name is `kafka-cluster`).
    Cluster,
    /// A transactional id.
    TransactionalId,
    /// A delegation token.
    DelegationToken,
    /// A user (for quotas and delegation tokens).
    User,
}

impl AclResourceType {
    /// Every type, in Kafka's id order.
    pub const ALL: [AclResourceType; 6] = [
        AclResourceType::Topic,
        AclResourceType::Group,
        AclResourceType::Cluster,
        AclResourceType::TransactionalId,
        AclResourceType::DelegationToken,
        AclResourceType::User,
    ];

    /// Kafka's wire id (TOPIC is 2, ... USER 7; 0 is UNKNOWN and 1 ANY).
    pub fn id(self) -> i8 {
        match self {
            AclResourceType::Topic => 2,
            AclResourceType::Group => 3,
            AclResourceType::Cluster => 4,
            AclResourceType::TransactionalId => 5,
            AclResourceType::DelegationToken => 6,
            AclResourceType::User => 7,
        }
    }

    /// The type with wire id `id` (not ANY or UNKNOWN).
    pub fn from_id(id: i8) -> Option<AclResourceType> {
        AclResourceType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Kafka's name (`TOPIC`).
    pub fn name(self) -> &'static str {
        match self {
            AclResourceType::Topic => "TOPIC",
            AclResourceType::Group => "GROUP",
            AclResourceType::Cluster => "CLUSTER",
            AclResourceType::TransactionalId => "TRANSACTIONAL_ID",
            AclResourceType::DelegationToken => "DELEGATION_TOKEN",
            AclResourceType::User => "USER",
        }
    }
}

/// How an ACL's resource name matches (Kafka's `PatternType`, LITERAL or PREFIXED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclPatternType {
    /// The name itself, or every name when it is `*`.
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

impl AclPatternType {
    /// Kafka's wire id (LITERAL 3, PREFIXED 4).
    pub fn id(self) -> i8 {
        match self {
            AclPatternType::Literal => 3,
            AclPatternType::Prefixed => 4,
        }
    }

    /// The pattern type with wire id `id`.
    pub fn from_id(id: i8) -> Option<AclPatternType> {
        match id {
            3 => Some(AclPatternType::Literal),
            4 => Some(AclPatternType::Prefixed),
            _ => None,
        }
    }

    /// Kafka's name (`LITERAL`).
    pub fn name(self) -> &'static str {
        match self {
            AclPatternType::Literal => "LITERAL",
            AclPatternType::Prefixed => "PREFIXED",
        }
    }
}

/// What an ACL allows or denies (Kafka's `AclOperation`, with its wire ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclOperation {
    /// Every operation.
    All,
    /// Read (consume a topic, use a group).
    Read,
    /// Write (produce).
    Write,
    /// Create (topics).
    Create,
    /// Delete (topics, groups, offsets).
    Delete,
    /// Alter (partitions, reassignments, ACLs, credentials).
    Alter,
    /// Describe (see it exists, its metadata and offsets).
    Describe,
    /// Brokers' own requests (replica fetches).
    ClusterAction,
    /// Read configs.
    DescribeConfigs,
    /// Change configs.
    AlterConfigs,
    /// Idempotent produce.
    IdempotentWrite,
    /// Create delegation tokens.
    CreateTokens,
    /// Describe delegation tokens.
    DescribeTokens,
}

impl AclOperation {
    /// Every operation, in Kafka's id order.
    pub const ALL: [AclOperation; 13] = [
        AclOperation::All,
        AclOperation::Read,
        AclOperation::Write,
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::ClusterAction,
        AclOperation::DescribeConfigs,
        AclOperation::AlterConfigs,
        AclOperation::IdempotentWrite,
        AclOperation::CreateTokens,
        AclOperation::DescribeTokens,
    ];

    /// Kafka's wire id (ALL is 2, ... DESCRIBE_TOKENS 14; 0 is UNKNOWN and 1 ANY).
    pub fn id(self) -> i8 {
        AclOperation::ALL
            .iter()
            .position(|o| *o == self)
            .expect("every operation is listed") as i8
            + 2
    }

    /// The operation with wire id `id` (not ANY or UNKNOWN).
    pub fn from_id(id: i8) -> Option<AclOperation> {
        usize::try_from(id - 2)
            .ok()
            .and_then(|i| AclOperation::ALL.get(i).copied())
    }

    /// Kafka's name (`DESCRIBE_CONFIGS`).
    pub fn name(self) -> &'static str {
        match self {
            AclOperation::All => "ALL",
            AclOperation::Read => "READ",
            AclOperation::Write => "WRITE",
            AclOperation::Create => "CREATE",
            AclOperation::Delete => "DELETE",
            AclOperation::Alter => "ALTER",
            AclOperation::Describe => "DESCRIBE",
            AclOperation::ClusterAction => "CLUSTER_ACTION",
            AclOperation::DescribeConfigs => "DESCRIBE_CONFIGS",
            AclOperation::AlterConfigs => "ALTER_CONFIGS",
            AclOperation::IdempotentWrite => "IDEMPOTENT_WRITE",
            AclOperation::CreateTokens => "CREATE_TOKENS",
            AclOperation::DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    /// The operation named `name`, in Kafka's form (`DESCRIBE_CONFIGS`) or the tools' form
    /// (`DescribeConfigs`), any case.
    pub fn from_name(name: &str) -> Option<AclOperation> {
        let plain: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_uppercase();
        AclOperation::ALL
            .into_iter()
            .find(|o| o.name().replace('_', "") == plain)
    }
}

/// Whether an ACL allows or denies (Kafka's `AclPermissionType`: DENY 2, ALLOW 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclPermission {
    /// Denies; a matching deny wins over any allow.
    Deny,
    /// Allows.
    Allow,
}

impl AclPermission {
    /// Kafka's wire id.
    pub fn id(self) -> i8 {
        match self {
            AclPermission::Deny => 2,
            AclPermission::Allow => 3,
        }
    }

    /// The permission with wire id `id`.
    pub fn from_id(id: i8) -> Option<AclPermission> {
        match id {
            2 => Some(AclPermission::Deny),
            3 => Some(AclPermission::Allow),
            _ => None,
        }
    }

    /// Kafka's name (`ALLOW`).
    pub fn name(self) -> &'static str {
        match self {
            AclPermission::Deny => "DENY",
            AclPermission::Allow => "ALLOW",
        }
    }
}

/// One access control entry (Kafka api key 6, `AccessControlEntryRecord`): `principal` from
/// `host` is allowed or denied `operation` on the resources `pattern_type` and
/// `resource_name` match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessControlEntryRecord {
    /// Its id, chosen by the controller that created it.
    pub id: uuid::Uuid,
    /// The kind of resource.
    pub resource_type: AclResourceType,
    /// The name, prefix, or `*` (every name, literal only).
    pub resource_name: String,
    /// How the name matches.
    pub pattern_type: AclPatternType,
    /// `User:alice`, or `User:*` for every principal.
    pub principal: String,
    /// The client's address, or `*` for any.
    pub host: String,
    /// The operation.
    pub operation: AclOperation,
    /// Allow or deny.
    pub permission: AclPermission,
}

/// An access control entry is removed (Kafka api key 7, `RemoveAccessControlEntryRecord`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveAccessControlEntryRecord {
    /// The entry's id.
    pub id: uuid::Uuid,
}

/// Which of a broker's partitions a [`BrokerPartitionsRecord`] changes, and how.
/// `Leadership`, `Led`, `Followed` and `LeadershipExcept` take the broker out of leaderships
/// or ISRs (it is never an acceptable leader for them, [`BrokerScope::removes`]);
/// `Leaderless` and `Preferred` hand it leaderships (it is acceptable as the image says).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerScope {
    /// The partitions it leads get another in-sync leader (ONLINE election); it stays in
    /// their ISRs. A broker back with its log directory intact.
    Leadership,
    /// The partitions it leads get another leader and lose it from their ISR (the
    /// topic's unclean rule applies). The first half of a fence or a controlled shutdown.
    Led,
    /// The partitions it does not lead but whose ISR holds it lose it from the ISR. The
    /// second half of a fence.
    Followed,
    /// The leaderless partitions it is a replica of get a leader (ONLINE election, or
    /// UNCLEAN where the topic's rule allows it). Follows its unfencing, as KRaft elects
    /// leaders for the leaderless partitions when a broker is unfenced.
    Leaderless,
    /// The partitions led by another broker where it is the preferred replica and in the
    /// ISR get it back as leader (PREFERRED election). Follows its unfencing when automatic
    /// leader balancing is on, so leadership returns at once rather than by balancing passes.
    Preferred,
    /// As `Leadership`, and the brokers listed may not take it either: those the active
    /// controller had not heard from since it became active when the broker came back. After
    /// a restart of every broker they are restarting too, and leadership handed to them would
    /// only move again when they register (the partition waits, leaderless, for the broker or
    /// another ISR member to be unfenced).
    LeadershipExcept(Vec<BrokerId>),
}

impl BrokerScope {
    /// True for the scopes that take the broker out (it may not lead what they change).
    pub fn removes(&self) -> bool {
        matches!(
            self,
            BrokerScope::Leadership
                | BrokerScope::Led
                | BrokerScope::Followed
                | BrokerScope::LeadershipExcept(_)
        )
    }

    /// Brokers the scope names as not to be handed leadership, besides the broker itself.
    pub fn also_excluded(&self) -> &[BrokerId] {
        match self {
            BrokerScope::LeadershipExcept(brokers) => brokers,
            _ => &[],
        }
    }
}

/// One rule applied to every partition a broker hosts, in one record: replay applies, to each
/// partition in `scope`, the change `PartitionChangeBuilder` makes (with `broker_id`
/// unacceptable as a leader where the scope removes it), decided on the image as it stands
/// before this record (`controller::replication::election::broker_change`). kmeta type 1002
/// (KRaft writes one `PartitionChangeRecord` per partition instead: at a million partitions a
/// fence was a million records to replicate, store and decode on every node). Scopes are
/// added at the end of [`BrokerScope`], so older entries decode unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerPartitionsRecord {
    /// The broker (registered when the record is written).
    pub broker_id: BrokerId,
    /// Which of its partitions change.
    pub scope: BrokerScope,
    /// The controller's `unclean.leader.election.enable` when it wrote the record, for
    /// topics and clusters that do not set it (it is a node setting, not in the image).
    pub unclean_default: bool,
}

impl BrokerPartitionsRecord {
    /// True when a partition with this leader, ISR and preferred replica is in the record's
    /// scope: it may change (it does unless no change is possible, e.g. no other replica may
    /// lead).
    pub fn covers(&self, leader: BrokerId, isr: &[BrokerId], preferred: BrokerId) -> bool {
        let broker = self.broker_id;
        let leads = leader == broker;
        match self.scope {
            BrokerScope::Leadership | BrokerScope::Led | BrokerScope::LeadershipExcept(_) => leads,
            BrokerScope::Followed => !leads && isr.contains(&broker),
            BrokerScope::Leaderless => leader.is_none(),
            BrokerScope::Preferred => {
                !leads && !leader.is_none() && preferred == broker && isr.contains(&broker)
            }
        }
    }
}

/// Every record that can appear in the metadata log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataRecord {
    /// See [`RegisterBrokerRecord`].
    RegisterBroker(RegisterBrokerRecord),
    /// See [`UnregisterBrokerRecord`].
    UnregisterBroker(UnregisterBrokerRecord),
    /// See [`TopicRecord`].
    Topic(TopicRecord),
    /// See [`PartitionRecord`].
    Partition(PartitionRecord),
    /// See [`ConfigRecord`].
    Config(ConfigRecord),
    /// See [`PartitionChangeRecord`].
    PartitionChange(PartitionChangeRecord),
    /// See [`RemoveTopicRecord`].
    RemoveTopic(RemoveTopicRecord),
    /// See [`FeatureLevelRecord`].
    FeatureLevel(FeatureLevelRecord),
    /// See [`BrokerRegistrationChangeRecord`].
    BrokerRegistrationChange(BrokerRegistrationChangeRecord),
    /// An empty record that only advances the log (Kafka api key 20).
    NoOp,
    /// See [`OffsetCommitRecord`].
    OffsetCommit(OffsetCommitRecord),
    /// See [`ProducerIdsRecord`].
    ProducerIds(ProducerIdsRecord),
    /// See [`OffsetDeleteRecord`].
    OffsetDelete(OffsetDeleteRecord),
    /// See [`BrokerPartitionsRecord`].
    BrokerPartitions(BrokerPartitionsRecord),
    /// See [`UserScramCredentialRecord`].
    UserScramCredential(UserScramCredentialRecord),
    /// See [`RemoveUserScramCredentialRecord`].
    RemoveUserScramCredential(RemoveUserScramCredentialRecord),
    /// See [`AccessControlEntryRecord`].
    AccessControlEntry(AccessControlEntryRecord),
    /// See [`RemoveAccessControlEntryRecord`].
    RemoveAccessControlEntry(RemoveAccessControlEntryRecord),
}

/// Why bytes could not be decoded into a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than the 3 header bytes.
    #[error("record too short: {0} bytes")]
    TooShort(usize),
    /// A type/version this binary does not know (written by a newer kmeta?).
    #[error("unknown record type {record_type} version {version}")]
    UnknownType {
        /// The type found.
        record_type: u16,
        /// The version found.
        version: u8,
    },
    /// The payload does not match the declared type and version.
    #[error("malformed record type {record_type} version {version}: {reason}")]
    Malformed {
        /// The type found.
        record_type: u16,
        /// The version found.
        version: u8,
        /// What postcard said.
        reason: String,
    },
}

/// Record type ids (Kafka's metadata api keys where they exist).
pub mod record_type {
    /// RegisterBrokerRecord.
    pub const REGISTER_BROKER: u16 = 0;
    /// UnregisterBrokerRecord.
    pub const UNREGISTER_BROKER: u16 = 1;
    /// TopicRecord.
    pub const TOPIC: u16 = 2;
    /// PartitionRecord.
    pub const PARTITION: u16 = 3;
    /// ConfigRecord.
    pub const CONFIG: u16 = 4;
    /// PartitionChangeRecord.
    pub const PARTITION_CHANGE: u16 = 5;
    /// AccessControlEntryRecord.
    pub const ACCESS_CONTROL_ENTRY: u16 = 6;
    /// RemoveAccessControlEntryRecord.
    pub const REMOVE_ACCESS_CONTROL_ENTRY: u16 = 7;
    /// RemoveTopicRecord.
    pub const REMOVE_TOPIC: u16 = 9;
    /// FeatureLevelRecord.
    pub const FEATURE_LEVEL: u16 = 12;
    /// UserScramCredentialRecord.
    pub const USER_SCRAM_CREDENTIAL: u16 = 11;
    /// ProducerIdsRecord.
    pub const PRODUCER_IDS: u16 = 15;
    /// RemoveUserScramCredentialRecord.
    pub const REMOVE_USER_SCRAM_CREDENTIAL: u16 = 22;
    /// BrokerRegistrationChangeRecord.
    pub const BROKER_REGISTRATION_CHANGE: u16 = 17;
    /// NoOpRecord.
    pub const NO_OP: u16 = 20;
    /// OffsetCommitRecord (kmeta's own).
    pub const OFFSET_COMMIT: u16 = 1000;
    /// OffsetDeleteRecord (kmeta's own).
    pub const OFFSET_DELETE: u16 = 1001;
    /// BrokerPartitionsRecord (kmeta's own).
    pub const BROKER_PARTITIONS: u16 = 1002;
}

/// The version every record type is written at by this binary.
pub const CURRENT_VERSION: u8 = 0;

impl MetadataRecord {
    /// The record's type id.
    pub fn record_type(&self) -> u16 {
        use record_type::*;
        match self {
            MetadataRecord::RegisterBroker(_) => REGISTER_BROKER,
            MetadataRecord::UnregisterBroker(_) => UNREGISTER_BROKER,
            MetadataRecord::Topic(_) => TOPIC,
            MetadataRecord::Partition(_) => PARTITION,
            MetadataRecord::Config(_) => CONFIG,
            MetadataRecord::PartitionChange(_) => PARTITION_CHANGE,
            MetadataRecord::RemoveTopic(_) => REMOVE_TOPIC,
            MetadataRecord::FeatureLevel(_) => FEATURE_LEVEL,
            MetadataRecord::BrokerRegistrationChange(_) => BROKER_REGISTRATION_CHANGE,
            MetadataRecord::NoOp => NO_OP,
            MetadataRecord::OffsetCommit(_) => OFFSET_COMMIT,
            MetadataRecord::ProducerIds(_) => PRODUCER_IDS,
            MetadataRecord::OffsetDelete(_) => OFFSET_DELETE,
            MetadataRecord::BrokerPartitions(_) => BROKER_PARTITIONS,
            MetadataRecord::UserScramCredential(_) => USER_SCRAM_CREDENTIAL,
            MetadataRecord::RemoveUserScramCredential(_) => REMOVE_USER_SCRAM_CREDENTIAL,
            MetadataRecord::AccessControlEntry(_) => ACCESS_CONTROL_ENTRY,
            MetadataRecord::RemoveAccessControlEntry(_) => REMOVE_ACCESS_CONTROL_ENTRY,
        }
    }

    /// Appends this record's encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.record_type().to_le_bytes());
        out.push(CURRENT_VERSION);
        let result = match self {
            MetadataRecord::RegisterBroker(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::UnregisterBroker(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::Topic(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::Partition(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::Config(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::PartitionChange(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::RemoveTopic(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::FeatureLevel(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::BrokerRegistrationChange(r) => {
                postcard::to_extend(r, std::mem::take(out))
            }
            MetadataRecord::NoOp => Ok(std::mem::take(out)),
            MetadataRecord::OffsetCommit(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::ProducerIds(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::OffsetDelete(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::BrokerPartitions(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::UserScramCredential(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::RemoveUserScramCredential(r) => {
                postcard::to_extend(r, std::mem::take(out))
            }
            MetadataRecord::AccessControlEntry(r) => postcard::to_extend(r, std::mem::take(out)),
            MetadataRecord::RemoveAccessControlEntry(r) => {
                postcard::to_extend(r, std::mem::take(out))
            }
        };
        // Serializing plain structs into a Vec cannot fail: postcard only errors on
        // unsupported serde features (none used here) or a full fixed buffer (not a Vec).
        *out = result.expect("postcard serialization into a Vec is infallible");
    }

    /// This record's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Decodes one record; the whole slice must be consumed.
    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, DecodeError> {
        use record_type::*;
        if bytes.len() < 3 {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        let record_type = u16::from_le_bytes([bytes[0], bytes[1]]);
        let version = bytes[2];
        let payload = &bytes[3..];
        if version != CURRENT_VERSION {
            return Err(DecodeError::UnknownType {
                record_type,
                version,
            });
        }
        fn parse<T: serde::de::DeserializeOwned>(
            payload: &[u8],
            record_type: u16,
            version: u8,
        ) -> Result<T, DecodeError> {
            let malformed = |reason: String| DecodeError::Malformed {
                record_type,
                version,
                reason,
            };
            let (value, rest) =
                postcard::take_from_bytes(payload).map_err(|e| malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(malformed(format!("{} trailing bytes", rest.len())));
            }
            Ok(value)
        }
        let (t, v) = (record_type, version);
        Ok(match record_type {
            REGISTER_BROKER => MetadataRecord::RegisterBroker(parse(payload, t, v)?),
            UNREGISTER_BROKER => MetadataRecord::UnregisterBroker(parse(payload, t, v)?),
            TOPIC => MetadataRecord::Topic(parse(payload, t, v)?),
            PARTITION => MetadataRecord::Partition(parse(payload, t, v)?),
            CONFIG => MetadataRecord::Config(parse(payload, t, v)?),
            PARTITION_CHANGE => MetadataRecord::PartitionChange(parse(payload, t, v)?),
            REMOVE_TOPIC => MetadataRecord::RemoveTopic(parse(payload, t, v)?),
            FEATURE_LEVEL => MetadataRecord::FeatureLevel(parse(payload, t, v)?),
            BROKER_REGISTRATION_CHANGE => {
                MetadataRecord::BrokerRegistrationChange(parse(payload, t, v)?)
            }
            NO_OP if payload.is_empty() => MetadataRecord::NoOp,
            NO_OP => {
                return Err(DecodeError::Malformed {
                    record_type,
                    version,
                    reason: format!("{} trailing bytes", payload.len()),
                })
            }
            OFFSET_COMMIT => MetadataRecord::OffsetCommit(parse(payload, t, v)?),
            PRODUCER_IDS => MetadataRecord::ProducerIds(parse(payload, t, v)?),
            OFFSET_DELETE => MetadataRecord::OffsetDelete(parse(payload, t, v)?),
            BROKER_PARTITIONS => MetadataRecord::BrokerPartitions(parse(payload, t, v)?),
            USER_SCRAM_CREDENTIAL => MetadataRecord::UserScramCredential(parse(payload, t, v)?),
            REMOVE_USER_SCRAM_CREDENTIAL => {
                MetadataRecord::RemoveUserScramCredential(parse(payload, t, v)?)
            }
            ACCESS_CONTROL_ENTRY => MetadataRecord::AccessControlEntry(parse(payload, t, v)?),
            REMOVE_ACCESS_CONTROL_ENTRY => {
                MetadataRecord::RemoveAccessControlEntry(parse(payload, t, v)?)
            }
            _ => {
                return Err(DecodeError::UnknownType {
                    record_type,
                    version,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<MetadataRecord> {
        let topic_id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        vec![
            MetadataRecord::RegisterBroker(RegisterBrokerRecord {
                broker_id: BrokerId(1),
                incarnation_id: uuid::Uuid::from_u128(7),
                broker_epoch: BrokerEpoch(42),
                listeners: vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "h".into(),
                    port: 9092,
                    security_protocol: 0,
                }],
                features: vec![],
                rack: Some("r1".into()),
                fenced: true,
                in_controlled_shutdown: false,
            }),
            MetadataRecord::Topic(TopicRecord {
                name: "t".into(),
                topic_id,
            }),
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id,
                partition: 3,
                isr: Some(BrokerList::from_slice(&[BrokerId(1)])),
                leader: Some(BrokerId::NONE),
                ..Default::default()
            }),
            MetadataRecord::NoOp,
            MetadataRecord::OffsetCommit(OffsetCommitRecord {
                offsets: vec![CommittedOffset {
                    group_id: "g".into(),
                    topic_id,
                    partition: 0,
                    offset: 10,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: 5,
                }],
            }),
            MetadataRecord::ProducerIds(ProducerIdsRecord {
                broker_id: BrokerId(2),
                broker_epoch: BrokerEpoch(7),
                next_producer_id: 2000,
            }),
            MetadataRecord::OffsetDelete(OffsetDeleteRecord {
                group_id: "g".into(),
                partitions: Some(vec![TopicIdPartition {
                    topic_id,
                    partition: 0,
                }]),
            }),
            MetadataRecord::OffsetDelete(OffsetDeleteRecord {
                group_id: "g".into(),
                partitions: None,
            }),
            MetadataRecord::BrokerPartitions(BrokerPartitionsRecord {
                broker_id: BrokerId(3),
                scope: BrokerScope::Followed,
                unclean_default: true,
            }),
            MetadataRecord::BrokerPartitions(BrokerPartitionsRecord {
                broker_id: BrokerId(3),
                scope: BrokerScope::LeadershipExcept(vec![BrokerId(1), BrokerId(2)]),
                unclean_default: false,
            }),
            MetadataRecord::UserScramCredential(UserScramCredentialRecord {
                name: "alice".into(),
                mechanism: ScramMechanism::Sha512,
                salt: vec![1, 2, 3],
                stored_key: vec![4; 64],
                server_key: vec![5; 64],
                iterations: 8192,
            }),
            MetadataRecord::RemoveUserScramCredential(RemoveUserScramCredentialRecord {
                name: "alice".into(),
                mechanism: ScramMechanism::Sha256,
            }),
            MetadataRecord::AccessControlEntry(AccessControlEntryRecord {
                id: uuid::Uuid::from_u128(9),
                resource_type: AclResourceType::Topic,
                resource_name: "orders-".into(),
                pattern_type: AclPatternType::Prefixed,
                principal: "User:alice".into(),
                host: "*".into(),
                operation: AclOperation::DescribeConfigs,
                permission: AclPermission::Deny,
            }),
            MetadataRecord::RemoveAccessControlEntry(RemoveAccessControlEntryRecord {
                id: uuid::Uuid::from_u128(9),
            }),
        ]
    }

    #[test]
    fn every_record_round_trips_through_its_encoding() {
        for record in sample_records() {
            let bytes = record.encode();
            assert_eq!(MetadataRecord::decode(&bytes), Ok(record));
        }
    }

    /// Pins the on-disk bytes: if this fails, a change broke the encoding of existing logs.
    /// Add a new record version instead of changing an old one.
    #[test]
    fn encoding_of_existing_record_versions_never_changes() {
        let topic_id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let record = MetadataRecord::PartitionChange(PartitionChangeRecord {
            topic_id,
            partition: 3,
            isr: Some(BrokerList::from_slice(&[BrokerId(1), BrokerId(2)])),
            leader: Some(BrokerId::NONE),
            ..Default::default()
        });
        let hex: String = record.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "050000100123456789abcdef0123456789abcdef0601020204010100000000"
        );
        let record = MetadataRecord::BrokerPartitions(BrokerPartitionsRecord {
            broker_id: BrokerId(3),
            scope: BrokerScope::Followed,
            unclean_default: true,
        });
        let hex: String = record.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ea0300060201");
        let record = MetadataRecord::BrokerPartitions(BrokerPartitionsRecord {
            broker_id: BrokerId(3),
            scope: BrokerScope::LeadershipExcept(vec![BrokerId(1), BrokerId(2)]),
            unclean_default: false,
        });
        let hex: String = record.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ea0300060502020400");
    }

    #[test]
    fn truncated_or_unknown_bytes_are_errors_not_panics() {
        assert_eq!(MetadataRecord::decode(&[]), Err(DecodeError::TooShort(0)));
        assert!(matches!(
            MetadataRecord::decode(&[0xff, 0xff, 0]),
            Err(DecodeError::UnknownType { .. })
        ));
        assert!(matches!(
            MetadataRecord::decode(&[0, 0, 9]),
            Err(DecodeError::UnknownType { version: 9, .. })
        ));
        for record in sample_records() {
            let bytes = record.encode();
            for cut in 0..bytes.len() {
                // Never panics; a shorter prefix is either an error or (for prefixes that
                // happen to parse) a different record, never a crash.
                let _ = MetadataRecord::decode(&bytes[..cut]);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(MetadataRecord::decode(&longer).is_err());
        }
    }
}
