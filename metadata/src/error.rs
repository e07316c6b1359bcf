//! Kafka error codes and the typed error every controller decision returns.
//!
//! These are operating errors: the caller did something the cluster refuses, and the reply
//! carries the code and a message. They never stop a node (that is `ReplayError`).

use std::fmt;

/// Kafka protocol error codes used by the controller and the brokers' data plane (values from Kafka's `Errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum ErrorCode {
    None,
    UnknownServerError,
    UnknownTopicOrPartition,
    LeaderNotAvailable,
    NotLeaderOrFollower,
    RequestTimedOut,
    OffsetMetadataTooLarge,
    CoordinatorNotAvailable,
    NotCoordinator,
    InvalidTopicException,
    IllegalGeneration,
    InvalidGroupId,
    UnknownMemberId,
    UnsupportedVersion,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    InvalidConfig,
    NotController,
    InvalidRequest,
    PolicyViolation,
    OperationNotAttempted,
    ReassignmentInProgress,
    GroupIdNotFound,
    FencedLeaderEpoch,
    StaleBrokerEpoch,
    PreferredLeaderNotAvailable,
    EligibleLeadersNotAvailable,
    ElectionNotNeeded,
    NoReassignmentInProgress,
    InvalidUpdateVersion,
    UnknownTopicId,
    DuplicateBrokerRegistration,
    BrokerIdNotRegistered,
    InconsistentClusterId,
    IneligibleReplica,
    NewLeaderElected,
    OffsetOutOfRange,
    CorruptMessage,
    MessageTooLarge,
    CoordinatorLoadInProgress,
    RecordListTooLarge,
    NotEnoughReplicas,
    NotEnoughReplicasAfterAppend,
    InvalidRequiredAcks,
    InvalidTimestamp,
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    TransactionalIdAuthorizationFailed,
    KafkaStorageError,
    UnknownLeaderEpoch,
    UnsupportedCompressionType,
    OffsetNotAvailable,
    InvalidRecord,
    FetchSessionIdNotFound,
    InvalidFetchSessionEpoch,
    InvalidSessionTimeout,
    InconsistentGroupProtocol,
    RebalanceInProgress,
    MemberIdRequired,
    FencedInstanceId,
    NonEmptyGroup,
    GroupSubscribedToTopic,
    UnsupportedSaslMechanism,
    ResourceNotFound,
    DuplicateResource,
    UnacceptableCredential,
    TopicAuthorizationFailed,
    GroupAuthorizationFailed,
    ClusterAuthorizationFailed,
    SecurityDisabled,
}

impl ErrorCode {
    /// The wire value.
    pub fn code(self) -> i16 {
        use ErrorCode::*;
        match self {
            None => 0,
            UnknownServerError => -1,
            UnknownTopicOrPartition => 3,
            LeaderNotAvailable => 5,
            NotLeaderOrFollower => 6,
            RequestTimedOut => 7,
            OffsetMetadataTooLarge => 12,
            CoordinatorNotAvailable => 15,
            NotCoordinator => 16,
            InvalidTopicException => 17,
            IllegalGeneration => 22,
            InvalidGroupId => 24,
            UnknownMemberId => 25,
            UnsupportedVersion => 35,
            TopicAlreadyExists => 36,
            InvalidPartitions => 37,
            InvalidReplicationFactor => 38,
            InvalidReplicaAssignment => 39,
            InvalidConfig => 40,
            NotController => 41,
            InvalidRequest => 42,
            PolicyViolation => 44,
            OperationNotAttempted => 55,
            ReassignmentInProgress => 60,
            GroupIdNotFound => 69,
            FencedLeaderEpoch => 74,
            StaleBrokerEpoch => 77,
            PreferredLeaderNotAvailable => 80,
            EligibleLeadersNotAvailable => 83,
            ElectionNotNeeded => 84,
            NoReassignmentInProgress => 85,
            InvalidUpdateVersion => 95,
            UnknownTopicId => 100,
            DuplicateBrokerRegistration => 101,
            BrokerIdNotRegistered => 102,
            InconsistentClusterId => 104,
            IneligibleReplica => 107,
            NewLeaderElected => 108,
            OffsetOutOfRange => 1,
            CorruptMessage => 2,
            MessageTooLarge => 10,
            CoordinatorLoadInProgress => 14,
            RecordListTooLarge => 18,
            NotEnoughReplicas => 19,
            NotEnoughReplicasAfterAppend => 20,
            InvalidRequiredAcks => 21,
            InvalidTimestamp => 32,
            OutOfOrderSequenceNumber => 45,
            InvalidProducerEpoch => 47,
            TransactionalIdAuthorizationFailed => 53,
            KafkaStorageError => 56,
            UnknownLeaderEpoch => 75,
            UnsupportedCompressionType => 76,
            OffsetNotAvailable => 78,
            InvalidRecord => 87,
            FetchSessionIdNotFound => 70,
            InvalidFetchSessionEpoch => 71,
            InvalidSessionTimeout => 26,
            InconsistentGroupProtocol => 23,
            RebalanceInProgress => 27,
            MemberIdRequired => 79,
            FencedInstanceId => 82,
            NonEmptyGroup => 68,
            GroupSubscribedToTopic => 86,
            UnsupportedSaslMechanism => 33,
            ResourceNotFound => 91,
            DuplicateResource => 92,
            UnacceptableCredential => 93,
            TopicAuthorizationFailed => 29,
            GroupAuthorizationFailed => 30,
            ClusterAuthorizationFailed => 31,
            SecurityDisabled => 54,
        }
    }
}

/// An error reply: a Kafka error code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The code sent on the wire.
    pub code: ErrorCode,
    /// Why, for the operator.
    pub message: String,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
