//! Newtypes for the ids, epochs and offsets that flow through the metadata log.
//!
//! Each wraps Kafka's wire integer so conversions at the protocol edge are trivial, while
//! the core can never mix up, say, a broker epoch with a leader epoch.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! int_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
        )]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_newtype!(
    /// A broker's `node.id`. Non-negative for real brokers; `BrokerId::NONE` (-1) means "no broker".
    BrokerId(i32)
);
int_newtype!(
    /// The epoch of one broker incarnation: the log offset of its registration record.
    BrokerEpoch(i64)
);
int_newtype!(
    /// Bumped on every change of a partition's leader (including to and from "no leader").
    LeaderEpoch(i32)
);
int_newtype!(
    /// Bumped on every change to a partition (ISR, replicas, leader, reassignment state).
    PartitionEpoch(i32)
);
int_newtype!(
    /// A position in the metadata log. `LogOffset::NONE` (-1) means "nothing applied yet".
    LogOffset(i64)
);

/// A partition's list of brokers (its replicas, its ISR, or the replicas a reassignment adds
/// or removes), held in place up to four. A replica set rarely holds more, so a partition's
/// registration is one allocation, and a change record or a snapshot's partition record
/// decodes without one per list; on the wire (postcard, JSON) it is a sequence, as a `Vec` is.
pub type BrokerList = smallvec::SmallVec<[BrokerId; 4]>;

impl BrokerId {
    /// The sentinel for "no broker", used as a partition leader when none is available.
    pub const NONE: BrokerId = BrokerId(-1);

    /// True for the sentinel `NONE`.
    pub fn is_none(self) -> bool {
        self.0 < 0
    }
}

impl LogOffset {
    /// Before any record is applied.
    pub const NONE: LogOffset = LogOffset(-1);
}

impl LeaderEpoch {
    /// The epoch following this one.
    pub fn next(self) -> LeaderEpoch {
        LeaderEpoch(self.0 + 1)
    }
}

impl PartitionEpoch {
    /// The epoch following this one.
    pub fn next(self) -> PartitionEpoch {
        PartitionEpoch(self.0 + 1)
    }
}

/// A topic's UUID, as Kafka assigns it at creation. Never reused.
pub type TopicId = uuid::Uuid;

/// One partition of one topic, identified by the topic's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicIdPartition {
    /// The topic.
    pub topic_id: TopicId,
    /// The partition index, `0..partition_count`.
    pub partition: i32,
}

impl fmt::Display for TopicIdPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic_id, self.partition)
    }
}

/// After an unclean election the new leader is RECOVERING until it reports RECOVERED (KIP-704).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum LeaderRecoveryState {
    /// Normal state; wire value 0.
    #[default]
    Recovered,
    /// The leader was elected uncleanly and the ISR is just the leader; wire value 1.
    Recovering,
}

impl LeaderRecoveryState {
    /// Kafka's wire value.
    pub fn wire_value(self) -> i8 {
        match self {
            LeaderRecoveryState::Recovered => 0,
            LeaderRecoveryState::Recovering => 1,
        }
    }

    /// From Kafka's wire value; `None` for anything but 0 and 1.
    pub fn from_wire(value: i8) -> Option<Self> {
        match value {
            0 => Some(LeaderRecoveryState::Recovered),
            1 => Some(LeaderRecoveryState::Recovering),
            _ => None,
        }
    }
}
