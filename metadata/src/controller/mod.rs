//! Every decision the active controller makes, as pure functions:
//! `(image, request, now) → records + reply`.
//!
//! A decision reads the image (which, on the active controller, already includes records that
//! were proposed but not yet committed), and returns the records to append and the reply to
//! send once they commit. It never changes the image itself. Soft state that is deliberately
//! kept out of the log (broker heartbeat times) lives in [`heartbeat::BrokerHeartbeatTracker`],
//! which the runtime owns and passes in.
//!
//! Layout follows Kafka's control managers: [`cluster`] (registration, heartbeats, fencing),
//! [`replication`] (topics, partitions, elections, ISR, reassignment), [`configs`],
//! [`offsets`]. [`partition_change`] is the one place a partition change record is built.

pub mod acls;
pub mod cluster;
pub mod configs;
pub mod heartbeat;
pub mod offsets;
pub mod partition_change;
pub mod placement;
pub mod producer_ids;
pub mod replication;
pub mod scram;

use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::{ConfigResource, MetadataRecord};
use crate::types::{BrokerId, LogOffset};

/// At most this many records in one atomic result (Kafka's `MAX_RECORDS_PER_USER_OP`).
pub const MAX_RECORDS_PER_BATCH: usize = 10_000;

/// True for a record after which the runtime ends the entry, in a non-atomic result with more
/// records after it: one whose replay does work in proportion to a broker's partitions
/// (`BrokerPartitions`). What follows is then decided and replicated while it is applied, and
/// brokers apply and show a fence's leader moves before its ISR removals.
pub fn ends_entry(record: &MetadataRecord) -> bool {
    matches!(record, MetadataRecord::BrokerPartitions(_))
}

/// How many entries come before the one that holds a record written after `records`, when the
/// runtime writes them and it as one non-atomic result from a fresh entry: entries of at most
/// `MAX_RECORDS_PER_BATCH` records, each also ended after an [`ends_entry`] record. What an
/// offset the result carries (a broker epoch) adds to the next offset.
pub fn entries_before_next(records: &[MetadataRecord]) -> usize {
    let mut entries = 0;
    let mut in_entry = 0;
    for r in records {
        if in_entry == MAX_RECORDS_PER_BATCH {
            entries += 1;
            in_entry = 0;
        }
        in_entry += 1;
        if ends_entry(r) {
            entries += 1;
            in_entry = 0;
        }
    }
    entries + usize::from(in_entry == MAX_RECORDS_PER_BATCH)
}

/// At most this many leader elections per balancing or unclean-election pass.
pub const MAX_ELECTIONS_PER_PASS: usize = 1_000;

/// Static controller settings (from the node's config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The cluster id brokers must present when registering.
    pub cluster_id: String,
    /// `num.partitions`: partitions of a topic created without a count.
    pub default_num_partitions: i32,
    /// `default.replication.factor`: replicas of a topic created without a factor.
    pub default_replication_factor: i16,
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// `unclean.leader.election.enable` for the cluster (a topic config overrides it).
    pub unclean_leader_election_enable: bool,
    /// How often the active controller runs its leader-balancing and unclean-election passes
    /// (`leader.imbalance.check.interval.seconds`, in ms); 0 turns automatic balancing off
    /// (`auto.leader.rebalance.enable=false`). The runtime schedules; the passes are pure.
    pub leader_balance_interval_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            cluster_id: String::new(),
            default_num_partitions: 1,
            default_replication_factor: 1,
            session_timeout_ms: 9_000,
            unclean_leader_election_enable: false,
            leader_balance_interval_ms: 300_000,
        }
    }
}

/// The output of a decision: records to append, and the reply to send once they commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerResult<T> {
    /// Records to append, in order.
    pub records: Vec<MetadataRecord>,
    /// The reply.
    pub reply: T,
    /// When true the records must commit in one batch (all or nothing), and there are at most
    /// `MAX_RECORDS_PER_BATCH` of them. When false the runtime may split them.
    pub atomic: bool,
    /// `Some(n)`: the reply is released once the first `n` records have committed (a
    /// non-atomic result whose requester needs only that prefix; the rest follows, and its
    /// records are safe to lose to a failover). `None`: once all have.
    pub reply_after: Option<usize>,
}

impl<T> ControllerResult<T> {
    /// An atomic result.
    pub fn atomic(records: Vec<MetadataRecord>, reply: T) -> Self {
        debug_assert!(records.len() <= MAX_RECORDS_PER_BATCH);
        ControllerResult {
            records,
            reply,
            atomic: true,
            reply_after: None,
        }
    }

    /// A result the runtime may split into several batches.
    pub fn non_atomic(records: Vec<MetadataRecord>, reply: T) -> Self {
        ControllerResult {
            records,
            reply,
            atomic: false,
            reply_after: None,
        }
    }

    /// This non-atomic result's reply is released once its first `n` records have committed.
    /// The runtime ends an entry after them, so the rest never delays the reply.
    pub fn reply_after(mut self, n: usize) -> Self {
        debug_assert!(!self.atomic && n > 0);
        self.reply_after = Some(n);
        self
    }

    /// A reply with no records (a read, or a refused request).
    pub fn reply_only(reply: T) -> Self {
        ControllerResult {
            records: Vec::new(),
            reply,
            atomic: true,
            reply_after: None,
        }
    }
}

/// Whether unclean leader election is enabled for a topic: its own config, else the
/// cluster-wide dynamic default, else the static config.
pub fn unclean_election_enabled(
    image: &MetadataImage,
    config: &ControllerConfig,
    topic: &str,
) -> bool {
    unclean_election_enabled_or(image, topic, config.unclean_leader_election_enable)
}

/// [`unclean_election_enabled`] with the node's default given as a value (a record carries
/// the default of the controller that wrote it).
pub fn unclean_election_enabled_or(image: &MetadataImage, topic: &str, default: bool) -> bool {
    const KEY: &str = "unclean.leader.election.enable";
    image
        .config(&ConfigResource::topic(topic), KEY)
        .or_else(|| image.config(&ConfigResource::cluster_default(), KEY))
        .map_or(default, |v| v.eq_ignore_ascii_case("true"))
}

/// Which brokers may lead, taking into account a broker whose state the same decision is
/// changing (its record is not yet replayed).
#[derive(Clone, Copy, Debug)]
pub struct LeaderAcceptance<'a> {
    image: &'a MetadataImage,
    /// A broker being fenced, shut down or removed: never acceptable.
    pub excluded: Option<BrokerId>,
    /// A broker being unfenced: acceptable although its record is not replayed yet.
    pub included: Option<BrokerId>,
    /// Brokers a record names as not to be handed leadership
    /// ([`crate::record::BrokerScope::LeadershipExcept`]).
    pub also_excluded: &'a [BrokerId],
}

impl<'a> LeaderAcceptance<'a> {
    /// Acceptance as the image says.
    pub fn of(image: &'a MetadataImage) -> Self {
        LeaderAcceptance {
            image,
            excluded: None,
            included: None,
            also_excluded: &[],
        }
    }

    /// The same acceptance, with `broker` never acceptable (it is being fenced or removed).
    pub fn excluding(self, broker: BrokerId) -> Self {
        LeaderAcceptance {
            excluded: Some(broker),
            ..self
        }
    }

    /// The same acceptance, with `broker` acceptable (it is being unfenced).
    pub fn including(self, broker: BrokerId) -> Self {
        LeaderAcceptance {
            included: Some(broker),
            ..self
        }
    }

    /// The same acceptance, with `brokers` never acceptable either.
    pub fn excluding_also(self, brokers: &'a [BrokerId]) -> Self {
        LeaderAcceptance {
            also_excluded: brokers,
            ..self
        }
    }

    /// True if `broker` may lead (or join an ISR).
    pub fn accepts(&self, broker: BrokerId) -> bool {
        if Some(broker) == self.excluded || self.also_excluded.contains(&broker) {
            return false;
        }
        if Some(broker) == self.included {
            return self.image.broker(broker).is_some();
        }
        self.image.is_active_broker(broker)
    }
}

/// Refuses a result that would be too large to append atomically.
pub fn check_batch_size(records: usize) -> Result<(), ApiError> {
    if records > MAX_RECORDS_PER_BATCH {
        return Err(ApiError::new(
            ErrorCode::PolicyViolation,
            format!(
                "the request would write {records} records; at most {MAX_RECORDS_PER_BATCH} fit one atomic batch"
            ),
        ));
    }
    Ok(())
}

/// The offset a decision's first record will be written at, as the runtime knows it.
pub type NextOffset = LogOffset;
