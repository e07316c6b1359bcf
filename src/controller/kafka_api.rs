//! The controller's Kafka-protocol API, served on its `CONTROLLER` listener: what brokers
//! send (registration, heartbeats, AlterPartition, the metadata fetch), what operators and
//! brokers forward (admin requests, offset commits, inside Envelope or directly), and
//! DescribeQuorum. Every write is answered after its records commit; a request reaching a
//! standby controller gets NOT_CONTROLLER.

use super::Controller;
use crate::kafka::listener::{Pipelining, Service};
use crate::kafka::metadata_log::{encode_entries, METADATA_TOPIC};
use crate::kafka::wire::{
    decode_request, encode_response, sb, versions, ApiSet, Rejected, Request,
};
use crate::raft::network::Raft;
use crate::raft::state_machine::{CommittedRead, StateMachine};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Message, StrBytes, VersionRange};
use kmeta_metadata::controller::cluster::{
    unregister_broker, BrokerHeartbeatRequest as CoreHeartbeat,
    BrokerRegistrationRequest as CoreRegistration,
};
use kmeta_metadata::controller::offsets::{
    commit_offsets, delete_group, delete_offsets, OffsetCommitPartition,
    OffsetCommitRequest as CoreCommit,
};
use kmeta_metadata::controller::replication::alter_partition::{
    alter_partition, AlterPartitionData, AlterPartitionRequest as CoreAlterPartition,
};
use kmeta_metadata::controller::replication::election::{elect_leaders, ElectionType};
use kmeta_metadata::controller::replication::reassignment::{
    alter_partition_reassignments, list_partition_reassignments,
};
use kmeta_metadata::controller::replication::topics::{
    create_partitions, create_topics, delete_topics, CreatableTopic as CoreTopic,
    CreatePartitionsTopic as CorePartitions,
};
use kmeta_metadata::controller::replication::TopicRef;
use kmeta_metadata::controller::ControllerResult;
use kmeta_metadata::record::{Endpoint, FeatureRange};
use kmeta_metadata::{
    ApiError, BrokerEpoch, BrokerId as CoreBrokerId, ErrorCode, LeaderEpoch, LeaderRecoveryState,
    LogOffset, PartitionEpoch,
};
use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

/// The tagged field of an EnvelopeResponse that carries the metadata offset at which the
/// forwarded request's effects are visible (a kmeta extension; `docs/PROTOCOL.md`).
pub const ENVELOPE_OFFSET_TAG: i32 = 10_000;
/// The tagged field of an EnvelopeRequest (kmeta extension) that carries the forwarding
/// broker's deadline: wall-clock ms since the Unix epoch, i64 big-endian. The controller never
/// decides a forwarded request after it, so a write whose client has given up cannot land
/// after that client's next write.
pub const ENVELOPE_DEADLINE_TAG: i32 = 10_001;

/// The tagged field of an EnvelopeRequest that names the broker which checked a group write
/// (OffsetCommit, DeleteGroups, OffsetDelete) as the group's coordinator: its id, i32
/// big-endian. The controller refuses the write with NOT_COORDINATOR unless that broker
/// coordinates the group in the controller's image (a kmeta extension; `docs/PROTOCOL.md`).
pub const ENVELOPE_COORDINATOR_TAG: i32 = 10_002;
/// The tagged field of a BrokerRegistrationRequest (kmeta extension): u8 1 when the broker's
/// log directory holds everything its previous incarnation wrote (the same machine boot), so
/// a restart shown by `PreviousBrokerEpoch` keeps its ISR memberships.
pub const LOG_DIR_INTACT_TAG: i32 = 10_000;

/// The longest a forwarded request waits for a newly elected leader to become active.
const ACTIVATION_WAIT: Duration = Duration::from_secs(1);

/// The longest a broker's metadata fetch waits for new entries.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(10);

/// The largest FetchSnapshot chunk.
pub const MAX_SNAPSHOT_CHUNK: usize = 4 * 1024 * 1024;

/// Admin requests a broker may forward (inside Envelope), and their versions.
pub fn forwardable_apis() -> Vec<(ApiKey, VersionRange)> {
    vec![
        (ApiKey::CreateTopics, versions::<CreateTopicsRequest>()),
        (ApiKey::DeleteTopics, versions::<DeleteTopicsRequest>()),
        (
            ApiKey::CreatePartitions,
            versions::<CreatePartitionsRequest>(),
        ),
        (ApiKey::ElectLeaders, versions::<ElectLeadersRequest>()),
        (
            ApiKey::AlterPartitionReassignments,
            versions::<AlterPartitionReassignmentsRequest>(),
        ),
        (
            ApiKey::ListPartitionReassignments,
            versions::<ListPartitionReassignmentsRequest>(),
        ),
        (ApiKey::OffsetCommit, versions::<OffsetCommitRequest>()),
        (ApiKey::DeleteGroups, versions::<DeleteGroupsRequest>()),
        (ApiKey::OffsetDelete, versions::<OffsetDeleteRequest>()),
        (
            ApiKey::IncrementalAlterConfigs,
            versions::<IncrementalAlterConfigsRequest>(),
        ),
        (
            ApiKey::AlterUserScramCredentials,
            versions::<AlterUserScramCredentialsRequest>(),
        ),
        (ApiKey::CreateAcls, versions::<CreateAclsRequest>()),
        (ApiKey::DeleteAcls, versions::<DeleteAclsRequest>()),
    ]
}

fn controller_apis() -> Vec<(ApiKey, VersionRange)> {
    let mut apis = vec![
        (ApiKey::ApiVersions, versions::<ApiVersionsRequest>()),
        (
            ApiKey::BrokerRegistration,
            versions::<BrokerRegistrationRequest>(),
        ),
        (
            ApiKey::BrokerHeartbeat,
            versions::<BrokerHeartbeatRequest>(),
        ),
        (
            ApiKey::UnregisterBroker,
            versions::<UnregisterBrokerRequest>(),
        ),
        (ApiKey::AlterPartition, versions::<AlterPartitionRequest>()),
        (
            ApiKey::AllocateProducerIds,
            versions::<AllocateProducerIdsRequest>(),
        ),
        (ApiKey::DescribeQuorum, versions::<DescribeQuorumRequest>()),
        // Fetch of the metadata log: v12+ (flexible, with snapshot ids).
        (
            ApiKey::Fetch,
            VersionRange {
                min: 12,
                max: FetchRequest::VERSIONS.max,
            },
        ),
        (ApiKey::FetchSnapshot, versions::<FetchSnapshotRequest>()),
        (ApiKey::Envelope, versions::<EnvelopeRequest>()),
    ];
    apis.extend(forwardable_apis());
    apis
}

/// A write's response with the offset at which it is visible.
fn written<R: Into<ResponseKind>>((response, at): (R, Option<u64>)) -> (ResponseKind, Option<u64>) {
    (response.into(), at)
}

fn msg(e: &ApiError) -> Option<StrBytes> {
    Some(sb(e.message.clone()))
}

/// The controller's Kafka service.
pub struct ControllerService {
    node_id: u64,
    pub(super) controller: Controller,
    raft: Raft,
    sm: StateMachine,
    apis: ApiSet,
    forwardable: ApiSet,
    authorizer: Option<std::sync::Arc<kmeta_metadata::acl::Authorizer>>,
}

impl ControllerService {
    /// A service for this node.
    pub fn new(node_id: u64, controller: Controller, raft: Raft, sm: StateMachine) -> Self {
        ControllerService {
            node_id,
            controller,
            raft,
            sm,
            apis: ApiSet::new(controller_apis()),
            forwardable: ApiSet::new(forwardable_apis()),
            authorizer: None,
        }
    }

    /// This service with `authorizer` deciding forwarded requests (`authorizer.class.name`).
    pub fn with_authorizer(
        mut self,
        authorizer: Option<std::sync::Arc<kmeta_metadata::acl::Authorizer>>,
    ) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// The authorizer, if one is configured.
    pub(super) fn authorizer(&self) -> Option<&kmeta_metadata::acl::Authorizer> {
        self.authorizer.as_deref()
    }

    /// The image this controller has applied.
    pub(super) fn image(&self) -> kmeta_metadata::MetadataImage {
        self.sm.image()
    }

    /// Read in place: a copy of openraft's metrics (its replication and membership maps)
    /// for each request cost an allocation per map.
    fn leader(&self) -> (Option<u64>, u64) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        (crate::raft::network::known_leader(&m), m.current_term)
    }

    fn is_leader(&self) -> bool {
        self.leader().0 == Some(self.node_id)
    }

    /// Answers one request; also returns the offset at which a write's effects are visible.
    ///
    /// `coordinator`: the broker that checked a forwarded group write as the group's
    /// coordinator (`ENVELOPE_COORDINATOR_TAG`).
    async fn dispatch(
        &self,
        body: RequestKind,
        version: i16,
        coordinator: Option<i32>,
    ) -> Result<(ResponseKind, Option<u64>), String> {
        Ok(match body {
            RequestKind::ApiVersions(_) => (self.apis.api_versions_response().into(), None),
            RequestKind::BrokerRegistration(r) => (self.register(r).await.into(), None),
            RequestKind::BrokerHeartbeat(r) => (self.heartbeat(r).await.into(), None),
            RequestKind::UnregisterBroker(r) => (self.unregister(r).await.into(), None),
            RequestKind::AlterPartition(r) => (self.alter_partition(r).await.into(), None),
            RequestKind::AllocateProducerIds(r) => {
                (self.allocate_producer_ids(r).await.into(), None)
            }
            RequestKind::DescribeQuorum(_) => (self.describe_quorum(version).into(), None),
            RequestKind::Fetch(r) => (self.fetch(r).await?.into(), None),
            RequestKind::FetchSnapshot(r) => (self.fetch_snapshot(r).into(), None),
            RequestKind::CreateTopics(r) => written(self.create_topics(r).await),
            RequestKind::DeleteTopics(r) => written(self.delete_topics(r).await),
            RequestKind::CreatePartitions(r) => written(self.create_partitions(r).await),
            RequestKind::ElectLeaders(r) => written(self.elect_leaders(r).await),
            RequestKind::AlterPartitionReassignments(r) => {
                written(self.alter_reassignments(r).await)
            }
            RequestKind::ListPartitionReassignments(r) => written(self.list_reassignments(r).await),
            RequestKind::OffsetCommit(r) => written(self.offset_commit(r, coordinator).await),
            RequestKind::DeleteGroups(r) => written(self.delete_groups(r, coordinator).await),
            RequestKind::OffsetDelete(r) => written(self.offset_delete(r, coordinator).await),
            RequestKind::IncrementalAlterConfigs(r) => written(self.alter_configs(r).await),
            RequestKind::AlterUserScramCredentials(r) => written(self.alter_scram(r).await),
            RequestKind::CreateAcls(r) => written(self.create_acls(r).await),
            RequestKind::DeleteAcls(r) => written(self.delete_acls(r).await),
            other => return Err(format!("unexpected request {other:?}")),
        })
    }

    async fn envelope(&self, envelope: EnvelopeRequest) -> Result<EnvelopeResponse, String> {
        // A newly elected leader becomes active once it has applied the log's tail, within
        // milliseconds. A forwarded request waits for that rather than being decided now and
        // refused inside its answer (NOT_CONTROLLER in the client's own response, which
        // kmeta's commands do not retry); past the wait the broker retries the envelope.
        // The common case costs one look at the Raft metrics and one atomic load.
        let not_controller =
            || Ok(EnvelopeResponse::default().with_error_code(ErrorCode::NotController.code()));
        if !self.is_leader() {
            return not_controller();
        }
        let waiting_since = std::time::Instant::now();
        while !self.controller.is_active() {
            if waiting_since.elapsed() > ACTIVATION_WAIT || !self.is_leader() {
                return not_controller();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let caller = super::authz::envelope_caller(&envelope);
        let mut inner = match decode_request(envelope.request_data, &self.forwardable) {
            Ok(r) => r,
            Err(Rejected::Reply(bytes)) => {
                return Ok(EnvelopeResponse::default().with_response_data(Some(bytes)))
            }
            Err(Rejected::Close(reason)) => {
                tracing::warn!(%reason, "refusing a forwarded request");
                return Ok(
                    EnvelopeResponse::default().with_error_code(ErrorCode::InvalidRequest.code())
                );
            }
        };
        let deadline_ms = envelope
            .unknown_tagged_fields
            .get(&ENVELOPE_DEADLINE_TAG)
            .filter(|t| t.len() == 8)
            .map(|t| i64::from_be_bytes(t[..8].try_into().expect("8 bytes")));
        if deadline_ms.is_some_and(|d| crate::controller::wall_ms() > d) {
            return Ok(
                EnvelopeResponse::default().with_error_code(ErrorCode::RequestTimedOut.code())
            );
        }
        let coordinator = envelope
            .unknown_tagged_fields
            .get(&ENVELOPE_COORDINATOR_TAG)
            .filter(|t| t.len() == 4)
            .map(|t| i32::from_be_bytes(t[..4].try_into().expect("4 bytes")));
        // Decided on the image as the activation wait above left it.
        let auth = self.authorization();
        let denied = match Self::authorize_forwarded(auth.as_ref(), &caller, &mut inner.body) {
            Ok(denied) => denied,
            Err(refused) => {
                let data = encode_response(
                    inner.header.correlation_id,
                    inner.api_key,
                    inner.version,
                    &refused,
                )?;
                return Ok(EnvelopeResponse::default().with_response_data(Some(data)));
            }
        };
        let dispatch = self.dispatch(inner.body, inner.version, coordinator);
        let (mut response, at) = match deadline_ms {
            Some(d) => {
                crate::controller::WRITE_DEADLINE_MS
                    .scope(d, dispatch)
                    .await?
            }
            None => dispatch.await?,
        };
        Self::add_denied(denied, &mut response);
        Self::hide_configs(auth.as_ref(), &caller, &mut response);
        let data = encode_response(
            inner.header.correlation_id,
            inner.api_key,
            inner.version,
            &response,
        )?;
        let mut reply = EnvelopeResponse::default().with_response_data(Some(data));
        if let Some(at) = at {
            let mut tag = BytesMut::with_capacity(8);
            tag.put_u64(at);
            reply
                .unknown_tagged_fields
                .insert(ENVELOPE_OFFSET_TAG, tag.freeze());
        }
        Ok(reply)
    }

    async fn register(&self, r: BrokerRegistrationRequest) -> BrokerRegistrationResponse {
        let request = CoreRegistration {
            broker_id: CoreBrokerId(r.broker_id.0),
            cluster_id: r.cluster_id.to_string(),
            incarnation_id: r.incarnation_id,
            listeners: r
                .listeners
                .iter()
                .map(|l| Endpoint {
                    name: l.name.to_string(),
                    host: l.host.to_string(),
                    port: l.port,
                    security_protocol: l.security_protocol,
                })
                .collect(),
            features: r
                .features
                .iter()
                .map(|f| FeatureRange {
                    name: f.name.to_string(),
                    min_version: f.min_supported_version.max(0) as u16,
                    max_version: f.max_supported_version.max(0) as u16,
                })
                .collect(),
            rack: r.rack.as_ref().map(|s| s.to_string()),
            previous_broker_epoch: (r.previous_broker_epoch >= 0)
                .then_some(kmeta_metadata::BrokerEpoch(r.previous_broker_epoch)),
            log_dir_intact: r
                .unknown_tagged_fields
                .get(&LOG_DIR_INTACT_TAG)
                .is_some_and(|v| v.as_ref() == [1]),
        };
        match self.controller.register_broker(request).await {
            Ok(epoch) => BrokerRegistrationResponse::default().with_broker_epoch(epoch.0),
            Err(e) => BrokerRegistrationResponse::default()
                .with_error_code(e.code.code())
                .with_broker_epoch(-1),
        }
    }

    async fn heartbeat(&self, r: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
        let request = CoreHeartbeat {
            broker_id: CoreBrokerId(r.broker_id.0),
            broker_epoch: BrokerEpoch(r.broker_epoch),
            current_metadata_offset: LogOffset(r.current_metadata_offset),
            want_fence: r.want_fence,
            want_shut_down: r.want_shut_down,
        };
        match self.controller.heartbeat(request).await {
            Ok(reply) => BrokerHeartbeatResponse::default()
                .with_is_caught_up(reply.is_caught_up)
                .with_is_fenced(reply.is_fenced)
                .with_should_shut_down(reply.should_shut_down),
            Err(e) => BrokerHeartbeatResponse::default()
                .with_error_code(e.code.code())
                .with_is_fenced(true),
        }
    }

    async fn unregister(&self, r: UnregisterBrokerRequest) -> UnregisterBrokerResponse {
        let broker = CoreBrokerId(r.broker_id.0);
        match self
            .controller
            .submit(move |ctx| unregister_broker(ctx.image, ctx.config, broker))
            .await
        {
            Ok(()) => UnregisterBrokerResponse::default(),
            Err(e) => UnregisterBrokerResponse::default()
                .with_error_code(e.code.code())
                .with_error_message(msg(&e)),
        }
    }

    async fn allocate_producer_ids(
        &self,
        r: AllocateProducerIdsRequest,
    ) -> AllocateProducerIdsResponse {
        let broker = CoreBrokerId(r.broker_id.0);
        let epoch = BrokerEpoch(r.broker_epoch);
        match self
            .controller
            .submit(move |ctx| {
                kmeta_metadata::controller::producer_ids::allocate_producer_ids(
                    ctx.image, broker, epoch,
                )
            })
            .await
        {
            Ok((start, len)) => AllocateProducerIdsResponse::default()
                .with_producer_id_start(ProducerId(start))
                .with_producer_id_len(len),
            Err(e) => AllocateProducerIdsResponse::default()
                .with_error_code(e.code.code())
                .with_producer_id_start(ProducerId(-1)),
        }
    }

    async fn alter_partition(&self, r: AlterPartitionRequest) -> AlterPartitionResponse {
        let request = CoreAlterPartition {
            version: 3,
            broker_id: CoreBrokerId(r.broker_id.0),
            broker_epoch: BrokerEpoch(r.broker_epoch),
            topics: r
                .topics
                .iter()
                .map(|t| {
                    let parts = t
                        .partitions
                        .iter()
                        .map(|p| AlterPartitionData {
                            partition: p.partition_index,
                            leader_epoch: LeaderEpoch(p.leader_epoch),
                            new_isr: p
                                .new_isr_with_epochs
                                .iter()
                                .map(|b| {
                                    (
                                        CoreBrokerId(b.broker_id.0),
                                        Some(BrokerEpoch(b.broker_epoch)),
                                    )
                                })
                                .collect(),
                            leader_recovery_state: LeaderRecoveryState::from_wire(
                                p.leader_recovery_state,
                            )
                            .unwrap_or_default(),
                            partition_epoch: PartitionEpoch(p.partition_epoch),
                        })
                        .collect();
                    (TopicRef::Id(t.topic_id), parts)
                })
                .collect(),
        };
        match self
            .controller
            .submit(move |ctx| alter_partition(ctx.image, &request))
            .await
        {
            Ok(reply) => AlterPartitionResponse::default().with_topics(
                reply
                    .into_iter()
                    .map(|(topic, results)| {
                        let topic_id = match topic {
                            TopicRef::Id(id) => id,
                            TopicRef::Name(_) => Default::default(),
                        };
                        alter_partition_response::TopicData::default()
                            .with_topic_id(topic_id)
                            .with_partitions(
                                results
                                    .into_iter()
                                    .map(|r| {
                                        let mut p =
                                            alter_partition_response::PartitionData::default()
                                                .with_partition_index(r.partition)
                                                .with_error_code(r.error.map_or(0, |c| c.code()));
                                        if let Some(s) = r.state {
                                            p = p
                                                .with_leader_id(BrokerId(s.leader.0))
                                                .with_leader_epoch(s.leader_epoch.0)
                                                .with_isr(
                                                    s.isr.iter().map(|b| BrokerId(b.0)).collect(),
                                                )
                                                .with_leader_recovery_state(
                                                    s.leader_recovery_state.wire_value(),
                                                )
                                                .with_partition_epoch(s.partition_epoch.0);
                                        }
                                        p
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
            Err(e) => AlterPartitionResponse::default().with_error_code(e.code.code()),
        }
    }

    fn describe_quorum(&self, version: i16) -> DescribeQuorumResponse {
        use describe_quorum_response::{Node, PartitionData, ReplicaState, TopicData};
        let mut m = self.raft.metrics().borrow_watched().clone();
        m.current_leader = crate::raft::network::known_leader(&m);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Kafka's high watermark: the offset after the last committed one.
        let high_watermark = m.cluster_committed.map_or(0, |l| l.index() as i64 + 1);
        let replication = m.replication.clone().unwrap_or_default();
        let membership = m.membership_config.membership();
        let mut voters = Vec::new();
        let mut nodes = Vec::new();
        for (id, node) in membership.nodes() {
            let log_end = if Some(*id) == m.current_leader && *id == self.node_id {
                m.last_log_index.map_or(-1, |i| i as i64 + 1)
            } else {
                replication
                    .get(id)
                    .and_then(|l| l.as_ref())
                    .map_or(-1, |l| l.index() as i64 + 1)
            };
            let caught_up = log_end >= high_watermark;
            let mut state = ReplicaState::default()
                .with_replica_id(BrokerId(*id as i32))
                .with_log_end_offset(log_end);
            if version >= 1 {
                state = state
                    .with_last_fetch_timestamp(if log_end >= 0 { now_ms } else { -1 })
                    .with_last_caught_up_timestamp(if caught_up { now_ms } else { -1 });
            }
            voters.push(state);
            let (host, port) = node
                .addr
                .rsplit_once(':')
                .unwrap_or((node.addr.as_str(), "0"));
            nodes.push(
                Node::default()
                    .with_node_id(BrokerId(*id as i32))
                    .with_listeners(vec![describe_quorum_response::Listener::default()
                        .with_name(sb("CONTROLLER"))
                        .with_host(sb(host))
                        .with_port(port.parse().unwrap_or(0))]),
            );
        }
        // Observers: the brokers, with the offset and time of their last heartbeat.
        let mut observers = Vec::new();
        if Some(self.node_id) == m.current_leader {
            for (broker, age_ms, offset) in self.controller.broker_contacts() {
                let mut state = ReplicaState::default()
                    .with_replica_id(BrokerId(broker.0))
                    .with_log_end_offset(if offset.0 >= 0 { offset.0 + 1 } else { -1 });
                if version >= 1 {
                    let at = now_ms - age_ms as i64;
                    state = state
                        .with_last_fetch_timestamp(at)
                        .with_last_caught_up_timestamp(if offset.0 + 1 >= high_watermark {
                            at
                        } else {
                            -1
                        });
                }
                observers.push(state);
            }
        }
        if version < 2 {
            nodes.clear();
        }
        let leader_id = m.current_leader.map_or(-1, |l| l as i32);
        DescribeQuorumResponse::default()
            .with_topics(vec![TopicData::default()
                .with_topic_name(TopicName(sb(METADATA_TOPIC)))
                .with_partitions(vec![PartitionData::default()
                    .with_partition_index(0)
                    .with_leader_id(BrokerId(leader_id))
                    .with_leader_epoch(m.current_term as i32)
                    .with_high_watermark(high_watermark)
                    .with_current_voters(voters)
                    .with_observers(observers)])])
            .with_nodes(nodes)
    }

    async fn fetch(&self, r: FetchRequest) -> Result<FetchResponse, String> {
        use fetch_response::{FetchableTopicResponse, LeaderIdAndEpoch, PartitionData, SnapshotId};
        let from = r
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(0, |p| p.fetch_offset.max(0) as u64);
        if r.replica_id.0 >= 0 && from > 0 {
            // A broker's metadata fetcher publishes each response before its next fetch.
            self.controller.note_broker_applied(
                kmeta_metadata::BrokerId(r.replica_id.0),
                kmeta_metadata::LogOffset(from as i64 - 1),
            );
        }
        let max_bytes =
            (r.max_bytes.max(1) as usize).min(crate::kafka::wire::MAX_RESPONSE_BYTES / 2);
        let wait = Duration::from_millis(r.max_wait_ms.max(0) as u64).min(MAX_FETCH_WAIT);
        let (leader, term) = self.leader();
        let mut partition = PartitionData::default()
            .with_partition_index(0)
            .with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader.map_or(-1, |l| l as i32)))
                    .with_leader_epoch(term as i32),
            );
        if leader != Some(self.node_id) {
            partition = partition.with_error_code(ErrorCode::NotLeaderOrFollower.code());
        } else {
            let mut changes = self.sm.subscribe();
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match self.sm.read_committed(from, max_bytes) {
                    CommittedRead::SnapshotNeeded => {
                        let (offset, _) = self.sm.broker_snapshot();
                        partition = partition.with_snapshot_id(
                            SnapshotId::default()
                                .with_end_offset(offset as i64 + 1)
                                .with_epoch(0),
                        );
                        break;
                    }
                    CommittedRead::Entries {
                        entries,
                        next,
                        high_watermark,
                    } => {
                        if entries.is_empty() && next <= from {
                            let changed =
                                tokio::time::timeout_at(deadline, changes.changed()).await;
                            if matches!(changed, Ok(Ok(()))) {
                                continue;
                            }
                        }
                        partition = partition
                            .with_high_watermark(high_watermark as i64)
                            // kmeta: the offset this response brings the fetcher to.
                            .with_last_stable_offset(next as i64 - 1)
                            .with_records(Some(encode_entries(&entries)?));
                        break;
                    }
                }
            }
        }
        if partition.records.is_none() {
            partition.records = Some(Bytes::new());
        }
        Ok(
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(sb(METADATA_TOPIC)))
                .with_partitions(vec![partition])]),
        )
    }

    fn fetch_snapshot(&self, r: FetchSnapshotRequest) -> FetchSnapshotResponse {
        use fetch_snapshot_response::{PartitionSnapshot, SnapshotId, TopicSnapshot};
        let Some(p) = r.topics.first().and_then(|t| t.partitions.first()) else {
            return FetchSnapshotResponse::default()
                .with_error_code(ErrorCode::InvalidRequest.code());
        };
        let mut out = PartitionSnapshot::default()
            .with_index(0)
            .with_snapshot_id(
                SnapshotId::default()
                    .with_end_offset(p.snapshot_id.end_offset)
                    .with_epoch(p.snapshot_id.epoch),
            )
            .with_position(p.position);
        if !self.is_leader() {
            out = out.with_error_code(ErrorCode::NotLeaderOrFollower.code());
        } else {
            match self
                .sm
                .broker_snapshot_at((p.snapshot_id.end_offset - 1).max(0) as u64)
            {
                None => out = out.with_error_code(98), // SNAPSHOT_NOT_FOUND
                Some(data) => {
                    let start = (p.position.max(0) as usize).min(data.len());
                    let len = (r.max_bytes.max(1) as usize).min(MAX_SNAPSHOT_CHUNK);
                    let end = (start + len).min(data.len());
                    out = out
                        .with_size(data.len() as i64)
                        .with_unaligned_records(data.slice(start..end));
                }
            }
        }
        FetchSnapshotResponse::default().with_topics(vec![TopicSnapshot::default()
            .with_name(TopicName(sb(METADATA_TOPIC)))
            .with_partitions(vec![out])])
    }

    async fn create_topics(&self, r: CreateTopicsRequest) -> (CreateTopicsResponse, Option<u64>) {
        use create_topics_response::CreatableTopicResult;
        let topics: Vec<CoreTopic> = r
            .topics
            .iter()
            .map(|t| CoreTopic {
                name: t.name.0.to_string(),
                // Time first (UUIDv7): a new topic's records go at the end of every map keyed
                // by topic id, where the last creation's already went, rather than anywhere
                // (docs/BENCHMARKS.md). 74 bits stay random; unique as Kafka's random ids.
                topic_id: uuid::Uuid::now_v7(),
                num_partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                assignments: t
                    .assignments
                    .iter()
                    .map(|a| {
                        (
                            a.partition_index,
                            a.broker_ids.iter().map(|b| CoreBrokerId(b.0)).collect(),
                        )
                    })
                    .collect(),
                configs: t
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect(),
            })
            .collect();
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        let validate_only = r.validate_only;
        let result = self
            .controller
            .submit_at(move |ctx| Ok(create_topics(ctx.image, ctx.config, &topics, validate_only)))
            .await;
        let (results, at) = match result {
            Ok((results, at)) => (
                results
                    .into_iter()
                    .map(|t| {
                        let mut out = CreatableTopicResult::default()
                            .with_name(TopicName(sb(t.name)))
                            .with_num_partitions(t.num_partitions)
                            .with_replication_factor(t.replication_factor);
                        if let Some(id) = t.topic_id {
                            out = out.with_topic_id(id);
                        }
                        if let Some(e) = t.error {
                            out = out
                                .with_error_code(e.code.code())
                                .with_error_message(msg(&e))
                                .with_num_partitions(-1)
                                .with_replication_factor(-1);
                        }
                        out
                    })
                    .collect(),
                Some(at),
            ),
            Err(e) => (
                names
                    .into_iter()
                    .map(|n| {
                        CreatableTopicResult::default()
                            .with_name(TopicName(sb(n)))
                            .with_error_code(e.code.code())
                            .with_error_message(msg(&e))
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    })
                    .collect(),
                None,
            ),
        };
        (CreateTopicsResponse::default().with_topics(results), at)
    }

    async fn delete_topics(&self, r: DeleteTopicsRequest) -> (DeleteTopicsResponse, Option<u64>) {
        use delete_topics_response::DeletableTopicResult;
        let mut refs: Vec<TopicRef> = r
            .topic_names
            .iter()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .collect();
        for t in &r.topics {
            refs.push(match &t.name {
                Some(n) if !n.0.is_empty() => TopicRef::Name(n.0.to_string()),
                _ => TopicRef::Id(t.topic_id),
            });
        }
        let asked = refs.clone();
        let result = self
            .controller
            .submit_at(move |ctx| Ok(delete_topics(ctx.image, &refs)))
            .await;
        let (responses, at) = match result {
            Ok((results, at)) => (
                results
                    .into_iter()
                    .map(|t| {
                        let mut out = DeletableTopicResult::default()
                            .with_name(t.name.map(|n| TopicName(sb(n))));
                        if let Some(id) = t.topic_id {
                            out = out.with_topic_id(id);
                        }
                        if let TopicRef::Name(n) = &t.topic {
                            out.name = Some(TopicName(sb(n.clone())));
                        }
                        if let Some(e) = t.error {
                            out = out
                                .with_error_code(e.code.code())
                                .with_error_message(msg(&e));
                        }
                        out
                    })
                    .collect(),
                Some(at),
            ),
            Err(e) => (
                asked
                    .into_iter()
                    .map(|t| {
                        let out = DeletableTopicResult::default()
                            .with_error_code(e.code.code())
                            .with_error_message(msg(&e));
                        match t {
                            TopicRef::Name(n) => out.with_name(Some(TopicName(sb(n)))),
                            TopicRef::Id(id) => out.with_topic_id(id),
                        }
                    })
                    .collect(),
                None,
            ),
        };
        (
            DeleteTopicsResponse::default().with_responses(responses),
            at,
        )
    }

    async fn create_partitions(
        &self,
        r: CreatePartitionsRequest,
    ) -> (CreatePartitionsResponse, Option<u64>) {
        use create_partitions_response::CreatePartitionsTopicResult;
        let topics: Vec<CorePartitions> = r
            .topics
            .iter()
            .map(|t| CorePartitions {
                name: t.name.0.to_string(),
                count: t.count,
                assignments: t.assignments.as_ref().map(|a| {
                    a.iter()
                        .map(|x| x.broker_ids.iter().map(|b| CoreBrokerId(b.0)).collect())
                        .collect()
                }),
            })
            .collect();
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        let validate_only = r.validate_only;
        let result = self
            .controller
            .submit_at(move |ctx| Ok(create_partitions(ctx.image, &topics, validate_only)))
            .await;
        let (results, at): (Vec<(String, Option<ApiError>)>, _) = match result {
            Ok((results, at)) => (results, Some(at)),
            Err(e) => (
                names.into_iter().map(|n| (n, Some(e.clone()))).collect(),
                None,
            ),
        };
        let results = results
            .into_iter()
            .map(|(name, e)| {
                let out = CreatePartitionsTopicResult::default().with_name(TopicName(sb(name)));
                match e {
                    Some(e) => out
                        .with_error_code(e.code.code())
                        .with_error_message(msg(&e)),
                    None => out,
                }
            })
            .collect();
        (
            CreatePartitionsResponse::default().with_results(results),
            at,
        )
    }

    async fn elect_leaders(&self, r: ElectLeadersRequest) -> (ElectLeadersResponse, Option<u64>) {
        use elect_leaders_response::{PartitionResult, ReplicaElectionResult};
        let election = match r.election_type {
            0 => ElectionType::Preferred,
            1 => ElectionType::Unclean,
            other => {
                tracing::debug!(other, "unknown election type");
                return (
                    ElectLeadersResponse::default()
                        .with_error_code(ErrorCode::InvalidRequest.code()),
                    None,
                );
            }
        };
        let partitions: Option<Vec<(String, i32)>> = r.topic_partitions.as_ref().map(|tps| {
            tps.iter()
                .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
                .collect()
        });
        let asked = partitions.clone();
        let result = self
            .controller
            .submit_at(move |ctx| Ok(elect_leaders(ctx.image, election, partitions.as_deref())))
            .await;
        let (reply, at) = match result {
            Ok((reply, at)) => (reply, Some(at)),
            Err(e) => {
                let mut reply = std::collections::BTreeMap::new();
                for (t, p) in asked.unwrap_or_default() {
                    reply
                        .entry(t)
                        .or_insert_with(std::collections::BTreeMap::new)
                        .insert(p, Some(e.clone()));
                }
                (reply, None)
            }
        };
        let results = reply
            .into_iter()
            .map(|(topic, parts)| {
                ReplicaElectionResult::default()
                    .with_topic(TopicName(sb(topic)))
                    .with_partition_result(
                        parts
                            .into_iter()
                            .map(|(p, e)| {
                                let out = PartitionResult::default().with_partition_id(p);
                                match e {
                                    Some(e) => out
                                        .with_error_code(e.code.code())
                                        .with_error_message(msg(&e)),
                                    None => out,
                                }
                            })
                            .collect(),
                    )
            })
            .collect();
        (
            ElectLeadersResponse::default().with_replica_election_results(results),
            at,
        )
    }

    async fn alter_reassignments(
        &self,
        r: AlterPartitionReassignmentsRequest,
    ) -> (AlterPartitionReassignmentsResponse, Option<u64>) {
        use alter_partition_reassignments_response::{
            ReassignablePartitionResponse, ReassignableTopicResponse,
        };
        let requests: Vec<(String, i32, Option<Vec<CoreBrokerId>>)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        p.replicas
                            .as_ref()
                            .map(|rs| rs.iter().map(|b| CoreBrokerId(b.0)).collect()),
                    )
                })
            })
            .collect();
        let result = self
            .controller
            .submit_at(move |ctx| {
                Ok(alter_partition_reassignments(
                    ctx.image, ctx.config, &requests,
                ))
            })
            .await;
        match result {
            Ok((reply, at)) => (
                AlterPartitionReassignmentsResponse::default().with_responses(
                    reply
                        .into_iter()
                        .map(|(topic, parts)| {
                            ReassignableTopicResponse::default()
                                .with_name(TopicName(sb(topic)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, e)| {
                                            let out = ReassignablePartitionResponse::default()
                                                .with_partition_index(p);
                                            match e {
                                                Some(e) => out
                                                    .with_error_code(e.code.code())
                                                    .with_error_message(msg(&e)),
                                                None => out,
                                            }
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
                Some(at),
            ),
            Err(e) => (
                AlterPartitionReassignmentsResponse::default()
                    .with_error_code(e.code.code())
                    .with_error_message(msg(&e)),
                None,
            ),
        }
    }

    async fn list_reassignments(
        &self,
        r: ListPartitionReassignmentsRequest,
    ) -> (ListPartitionReassignmentsResponse, Option<u64>) {
        use list_partition_reassignments_response::{
            OngoingPartitionReassignment, OngoingTopicReassignment,
        };
        let partitions: Option<Vec<(String, i32)>> = r.topics.as_ref().map(|ts| {
            ts.iter()
                .flat_map(|t| {
                    t.partition_indexes
                        .iter()
                        .map(|p| (t.name.0.to_string(), *p))
                })
                .collect()
        });
        let result = self
            .controller
            .submit_at(move |ctx| {
                Ok(ControllerResult::reply_only(list_partition_reassignments(
                    ctx.image,
                    partitions.as_deref(),
                )))
            })
            .await;
        match result {
            Ok((ongoing, at)) => {
                let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
                for o in ongoing {
                    let part = OngoingPartitionReassignment::default()
                        .with_partition_index(o.partition)
                        .with_replicas(o.replicas.iter().map(|b| BrokerId(b.0)).collect())
                        .with_adding_replicas(
                            o.adding_replicas.iter().map(|b| BrokerId(b.0)).collect(),
                        )
                        .with_removing_replicas(
                            o.removing_replicas.iter().map(|b| BrokerId(b.0)).collect(),
                        );
                    match topics.last_mut() {
                        Some(t) if *t.name.0 == *o.topic => t.partitions.push(part),
                        _ => topics.push(
                            OngoingTopicReassignment::default()
                                .with_name(TopicName(sb(o.topic)))
                                .with_partitions(vec![part]),
                        ),
                    }
                }
                (
                    ListPartitionReassignmentsResponse::default().with_topics(topics),
                    Some(at),
                )
            }
            Err(e) => (
                ListPartitionReassignmentsResponse::default()
                    .with_error_code(e.code.code())
                    .with_error_message(msg(&e)),
                None,
            ),
        }
    }

    async fn alter_configs(
        &self,
        r: IncrementalAlterConfigsRequest,
    ) -> (IncrementalAlterConfigsResponse, Option<u64>) {
        use incremental_alter_configs_response::AlterConfigsResourceResponse;
        use kmeta_metadata::controller::configs::{alter_configs, ConfigOp};
        use kmeta_metadata::record::{ConfigResource, ConfigResourceType};
        // Each resource succeeds or fails on its own; the successful ones commit together.
        let mut asked: Vec<Result<(ConfigResource, Vec<ConfigOp>), ApiError>> = Vec::new();
        for res in &r.resources {
            let resource_type = match res.resource_type {
                2 => ConfigResourceType::Topic,
                4 => ConfigResourceType::Broker,
                t => {
                    asked.push(Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("resource type {t} has no configs in kmeta"),
                    )));
                    continue;
                }
            };
            let mut ops = Vec::new();
            let mut bad = None;
            for c in &res.configs {
                match (c.config_operation, &c.value) {
                    (0, Some(v)) => ops.push(ConfigOp::Set(c.name.to_string(), v.to_string())),
                    (1, _) => ops.push(ConfigOp::Delete(c.name.to_string())),
                    (0, None) => bad = Some(format!("{}: SET needs a value", &*c.name)),
                    (op, _) => {
                        bad = Some(format!(
                            "{}: operation {op} (APPEND/SUBTRACT) is not supported; use SET",
                            &*c.name
                        ))
                    }
                }
            }
            asked.push(match bad {
                Some(why) => Err(ApiError::new(ErrorCode::InvalidRequest, why)),
                None => Ok((
                    ConfigResource {
                        resource_type,
                        resource_name: res.resource_name.to_string(),
                    },
                    ops,
                )),
            });
        }
        let count = asked.len();
        let validate_only = r.validate_only;
        let result = self
            .controller
            .submit_at(move |ctx| {
                let mut records = Vec::new();
                let mut outcomes = Vec::with_capacity(asked.len());
                for a in &asked {
                    let outcome = a.clone().and_then(|(resource, ops)| {
                        alter_configs(ctx.image, &resource, &ops, validate_only)
                    });
                    match outcome {
                        Ok(result) => {
                            records.extend(result.records);
                            outcomes.push(None);
                        }
                        Err(e) => outcomes.push(Some(e)),
                    }
                }
                kmeta_metadata::controller::check_batch_size(records.len())?;
                Ok(ControllerResult::atomic(records, outcomes))
            })
            .await;
        let (outcomes, at) = match result {
            Ok((o, at)) => (o, Some(at)),
            Err(e) => (vec![Some(e); count], None),
        };
        let responses = r
            .resources
            .iter()
            .zip(outcomes)
            .map(|(res, e)| {
                let out = AlterConfigsResourceResponse::default()
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone());
                match e {
                    Some(e) => out
                        .with_error_code(e.code.code())
                        .with_error_message(msg(&e)),
                    None => out,
                }
            })
            .collect();
        (
            IncrementalAlterConfigsResponse::default().with_responses(responses),
            at,
        )
    }

    /// AlterUserScramCredentials: the keys are derived here from the salted password the
    /// client sent (which is never stored or logged); the core decides per user.
    async fn alter_scram(
        &self,
        r: AlterUserScramCredentialsRequest,
    ) -> (AlterUserScramCredentialsResponse, Option<u64>) {
        use alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
        use kmeta_metadata::controller::scram::{alter_scram_credentials, ScramAlteration};
        use kmeta_metadata::record::{ScramMechanism, UserScramCredentialRecord};
        // Users refused here: an unknown mechanism, or no salted password to derive keys from.
        let mut refused: std::collections::BTreeMap<String, ApiError> = Default::default();
        let unknown = |id: i8| {
            ApiError::new(
                ErrorCode::UnsupportedSaslMechanism,
                format!("unknown SCRAM mechanism {id}"),
            )
        };
        let mut alterations = Vec::new();
        for d in &r.deletions {
            match ScramMechanism::from_id(d.mechanism) {
                Some(mechanism) => alterations.push(ScramAlteration::Delete {
                    name: d.name.to_string(),
                    mechanism,
                }),
                None => {
                    refused.insert(d.name.to_string(), unknown(d.mechanism));
                }
            }
        }
        for u in &r.upsertions {
            let Some(mechanism) = ScramMechanism::from_id(u.mechanism) else {
                refused.insert(u.name.to_string(), unknown(u.mechanism));
                continue;
            };
            if u.salted_password.is_empty() {
                refused.insert(
                    u.name.to_string(),
                    ApiError::new(
                        ErrorCode::UnacceptableCredential,
                        "the salt or the salted password is empty",
                    ),
                );
                continue;
            }
            let (stored_key, server_key) = crate::sasl::scram::keys(mechanism, &u.salted_password);
            alterations.push(ScramAlteration::Upsert(UserScramCredentialRecord {
                name: u.name.to_string(),
                mechanism,
                salt: u.salt.to_vec(),
                stored_key,
                server_key,
                iterations: u32::try_from(u.iterations).unwrap_or(0),
            }));
        }
        // A user refused here fails as a whole.
        alterations.retain(|a| !refused.contains_key(a.user()));
        let result = self
            .controller
            .submit_at(move |ctx| {
                let (records, outcomes) = alter_scram_credentials(ctx.image, &alterations);
                kmeta_metadata::controller::check_batch_size(records.len())?;
                Ok(ControllerResult::atomic(records, outcomes))
            })
            .await;
        let (outcomes, at) = match result {
            Ok((o, at)) => (o, Some(at)),
            Err(e) => {
                let users = r
                    .deletions
                    .iter()
                    .map(|d| d.name.to_string())
                    .chain(r.upsertions.iter().map(|u| u.name.to_string()));
                (users.map(|u| (u, Some(e.clone()))).collect(), None)
            }
        };
        let mut all: std::collections::BTreeMap<String, Option<ApiError>> = outcomes;
        for (user, e) in refused {
            all.insert(user, Some(e));
        }
        let results = all
            .into_iter()
            .map(|(user, e)| {
                let out = AlterUserScramCredentialsResult::default().with_user(sb(user));
                match e {
                    Some(e) => out
                        .with_error_code(e.code.code())
                        .with_error_message(msg(&e)),
                    None => out,
                }
            })
            .collect();
        (
            AlterUserScramCredentialsResponse::default().with_results(results),
            at,
        )
    }

    async fn delete_groups(
        &self,
        r: DeleteGroupsRequest,
        coordinator: Option<i32>,
    ) -> (DeleteGroupsResponse, Option<u64>) {
        use delete_groups_response::DeletableGroupResult;
        let mut results = Vec::new();
        let mut last = None;
        for g in r.groups_names {
            let code = match coordinator {
                // Only a coordinator knows whether the group has members.
                None => ErrorCode::NotCoordinator.code(),
                Some(c) => {
                    let group = g.0.to_string();
                    match self
                        .controller
                        .submit_at(move |ctx| Ok(delete_group(ctx.image, &group, CoreBrokerId(c))))
                        .await
                    {
                        Ok((Ok(()), at)) => {
                            last = last.max(Some(at));
                            0
                        }
                        Ok((Err(code), _)) => code.code(),
                        Err(e) => e.code.code(),
                    }
                }
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(g)
                    .with_error_code(code),
            );
        }
        (DeleteGroupsResponse::default().with_results(results), last)
    }

    async fn offset_delete(
        &self,
        r: OffsetDeleteRequest,
        coordinator: Option<i32>,
    ) -> (OffsetDeleteResponse, Option<u64>) {
        use offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
        let Some(c) = coordinator else {
            return (
                OffsetDeleteResponse::default().with_error_code(ErrorCode::NotCoordinator.code()),
                None,
            );
        };
        let group = r.group_id.0.to_string();
        let partitions: Vec<(String, i32)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.partition_index))
            })
            .collect();
        let result = self
            .controller
            .submit_at(move |ctx| {
                Ok(delete_offsets(
                    ctx.image,
                    &group,
                    CoreBrokerId(c),
                    &partitions,
                ))
            })
            .await;
        let (reply, at) = match result {
            Ok((Ok(reply), at)) => (reply, at),
            Ok((Err(code), _)) => {
                return (
                    OffsetDeleteResponse::default().with_error_code(code.code()),
                    None,
                )
            }
            Err(e) => {
                return (
                    OffsetDeleteResponse::default().with_error_code(e.code.code()),
                    None,
                )
            }
        };
        let topics = r
            .topics
            .iter()
            .map(|t| {
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                let code = reply
                                    .get(&(t.name.0.to_string(), p.partition_index))
                                    .copied()
                                    .flatten()
                                    .map_or(0, |c| c.code());
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        (
            OffsetDeleteResponse::default().with_topics(topics),
            Some(at),
        )
    }

    async fn offset_commit(
        &self,
        r: OffsetCommitRequest,
        coordinator: Option<i32>,
    ) -> (OffsetCommitResponse, Option<u64>) {
        let request = CoreCommit {
            group_id: r.group_id.0.to_string(),
            generation_id: r.generation_id_or_member_epoch,
            member_id: r.member_id.to_string(),
            coordinator: coordinator.map(CoreBrokerId),
            partitions: r
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(move |p| OffsetCommitPartition {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    })
                })
                .collect(),
        };
        let result = self
            .controller
            .submit_at(move |ctx| Ok(commit_offsets(ctx.image, &request, ctx.wall_ms)))
            .await;
        let (reply, failed, at) = match result {
            Ok((reply, at)) => (reply, None, Some(at)),
            Err(e) => (Default::default(), Some(e.code.code()), None),
        };
        let codes = |t: &str, p: i32| -> i16 {
            failed.unwrap_or_else(|| {
                reply
                    .get(&(t.to_string(), p))
                    .copied()
                    .flatten()
                    .map_or(0, |c| c.code())
            })
        };
        (offset_commit_response(&r, codes), at)
    }
}

/// The OffsetCommit response to `r`: every partition it names, with `code(topic, partition)`.
pub fn offset_commit_response(
    r: &OffsetCommitRequest,
    code: impl Fn(&str, i32) -> i16,
) -> OffsetCommitResponse {
    use offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
    let topics = r
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code(&t.name.0, p.partition_index))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

impl Service for ControllerService {
    fn apis(&self) -> &ApiSet {
        &self.apis
    }

    /// A broker's forwarded requests (Envelopes) on one connection run beside each other:
    /// the broker puts two in flight together only when their order does not matter (its
    /// own listener holds back a client's write until the one before it that it must follow
    /// is answered). Everything else is handled one at a time, in order.
    fn pipelining(&self, request: &Request) -> Pipelining {
        match request.body {
            RequestKind::Envelope(_) => Pipelining::Unordered,
            _ => Pipelining::Barrier,
        }
    }

    async fn handle(&self, request: Request) -> Result<Bytes, String> {
        let Request {
            header,
            api_key,
            version,
            body,
            client_host,
            principal,
            ..
        } = request;
        let caller = crate::kafka::wire::Caller::new(principal, &client_host);
        let auth = self.authorization();
        if let Some(refused) = Self::authorize_node_request(auth.as_ref(), &caller, &body) {
            return encode_response(header.correlation_id, api_key, version, &refused);
        }
        let response: ResponseKind = match body {
            RequestKind::Envelope(envelope) => {
                // The forwarded request is decided on the image after the activation wait.
                drop(auth);
                self.envelope(envelope).await?.into()
            }
            // An admin request sent here directly is authorized as its connection's.
            mut other if self.forwardable.versions(api_key).is_some() => {
                match Self::authorize_forwarded(auth.as_ref(), &caller, &mut other) {
                    Err(refused) => refused,
                    Ok(denied) => {
                        let mut response = self.dispatch(other, version, None).await?.0;
                        Self::add_denied(denied, &mut response);
                        Self::hide_configs(auth.as_ref(), &caller, &mut response);
                        response
                    }
                }
            }
            other => self.dispatch(other, version, None).await?.0,
        };
        encode_response(header.correlation_id, api_key, version, &response)
    }
}
