//! The client-facing Kafka API of a broker, answered from the local image; writes are
//! forwarded to the active controller inside Envelope.

use super::authz::{Caller, Post};
use super::BrokerState;
use crate::controller::kafka_api::{
    forwardable_apis, ENVELOPE_COORDINATOR_TAG, ENVELOPE_DEADLINE_TAG, ENVELOPE_OFFSET_TAG,
};
use crate::kafka::listener::{Pipelining, Service};
use crate::kafka::wire::{encode_response, sb, versions, ApiSet, Request};
use bytes::Bytes;
use bytes::BytesMut;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::protocol::{Decodable, Encodable, Request as KafkaRequest};
use kmeta_metadata::record::{AclOperation, AclResourceType, ConfigResource};
use kmeta_metadata::{ErrorCode, MetadataImage};
use std::sync::Arc;
use std::time::Duration;

/// DescribeClusterBroker tagged field (kmeta extension): the broker epoch, i64 big-endian.
pub const BROKER_EPOCH_TAG: i32 = 10_000;
/// DescribeClusterBroker tagged field (kmeta extension): 1 if in controlled shutdown.
pub const CONTROLLED_SHUTDOWN_TAG: i32 = 10_001;

/// How long a forwarded write may take, retries included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between attempts of a forwarded write while no controller answers
/// (Kafka's `retry.backoff.ms`). Doubling up to a second made a write sent as the active
/// controller died wait up to a second past the new one's election.
pub const FORWARD_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// How long a reply waits for this broker's image to include the write.
pub const READ_YOUR_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Encodes a Metadata response (header and body) with `topics` in place of `head`'s own
/// (none), each topic encoded as it is described and then dropped: the same bytes as the
/// whole response encoded at once, without holding every topic's decoded form. At a million
/// partitions that form took 100 MiB of a broker's heap for each all-topics Metadata request
/// (heaptrack), against 40 MiB of encoded answer.
fn encode_metadata_streamed(
    correlation_id: i32,
    version: i16,
    head: MetadataResponse,
    topics: impl ExactSizeIterator<Item = metadata_response::MetadataResponseTopic>,
) -> Result<Bytes, String> {
    use bytes::BufMut;
    fn what<E: std::fmt::Display>(version: i16) -> impl Fn(E) -> String {
        move |e| format!("encoding a Metadata v{version} response: {e:#}")
    }
    if !head.topics.is_empty() || !head.unknown_tagged_fields.is_empty() {
        return Err("a streamed Metadata head carries topics or tagged fields".into());
    }
    let whole = encode_response(
        correlation_id,
        ApiKey::Metadata,
        version,
        &ResponseKind::from(head),
    )?;
    // After the (empty) topics array come: cluster_authorized_operations (v8-v10), the
    // top-level error code (v13+) and the tagged-field count (flexible versions, v9+).
    let flexible = version >= 9;
    let after = if (8..=10).contains(&version) { 4 } else { 0 }
        + if version >= 13 { 2 } else { 0 }
        + usize::from(flexible);
    let empty_array = if flexible { 1 } else { 4 };
    let split = whole
        .len()
        .checked_sub(after + empty_array)
        .ok_or("a Metadata head shorter than its fixed fields")?;
    let count = topics.len();
    let mut out = BytesMut::with_capacity(whole.len() + 64 * 1024);
    out.put_slice(&whole[..split]);
    if flexible {
        // A compact array's length is an unsigned varint of the count plus one.
        crate::kafka::wire::put_unsigned_varint(&mut out, count as u64 + 1);
    } else {
        out.put_i32(count as i32);
    }
    for topic in topics {
        topic.encode(&mut out, version).map_err(what(version))?;
    }
    out.put_slice(&whole[split + empty_array..]);
    Ok(out.freeze())
}

fn broker_apis() -> Vec<(ApiKey, VersionRange)> {
    let mut apis = vec![
        (ApiKey::ApiVersions, versions::<ApiVersionsRequest>()),
        (ApiKey::Metadata, versions::<MetadataRequest>()),
        (
            ApiKey::DescribeCluster,
            versions::<DescribeClusterRequest>(),
        ),
        (
            ApiKey::FindCoordinator,
            versions::<FindCoordinatorRequest>(),
        ),
        (ApiKey::OffsetCommit, versions::<OffsetCommitRequest>()),
        (ApiKey::OffsetFetch, versions::<OffsetFetchRequest>()),
        (ApiKey::ListGroups, versions::<ListGroupsRequest>()),
        (ApiKey::DescribeGroups, versions::<DescribeGroupsRequest>()),
        (
            ApiKey::DescribeConfigs,
            versions::<DescribeConfigsRequest>(),
        ),
        // kmeta has no client quotas; answering "none" lets kafka-python infer a modern broker.
        (
            ApiKey::DescribeClientQuotas,
            versions::<DescribeClientQuotasRequest>(),
        ),
        // The data plane (src/broker/data.rs). Produce stops at v10 (v11+ adds transaction
        // semantics), Fetch at v12 (v13+ names topics by id), ListOffsets at v7 (v8+ adds
        // tiered-storage timestamps).
        (ApiKey::Produce, VersionRange { min: 3, max: 10 }),
        (ApiKey::Fetch, VersionRange { min: 4, max: 12 }),
        (ApiKey::ListOffsets, VersionRange { min: 1, max: 7 }),
        (
            ApiKey::OffsetForLeaderEpoch,
            versions::<OffsetForLeaderEpochRequest>(),
        ),
        // Idempotent producers only (v5 adds transaction semantics).
        (ApiKey::InitProducerId, VersionRange { min: 0, max: 4 }),
        // The classic group protocol (src/broker/coordinator.rs). JoinGroup stops at v7: v8
        // adds only a reason, v9 the static leader's skip_assignment, which kmeta does not
        // implement.
        (ApiKey::JoinGroup, VersionRange { min: 0, max: 7 }),
        (ApiKey::SyncGroup, versions::<SyncGroupRequest>()),
        (ApiKey::Heartbeat, versions::<HeartbeatRequest>()),
        (ApiKey::LeaveGroup, versions::<LeaveGroupRequest>()),
        // Answered by the active controller (the broker relays it), as Kafka brokers do for
        // kafka-metadata-quorum.sh --bootstrap-server.
        (ApiKey::DescribeQuorum, versions::<DescribeQuorumRequest>()),
        // SASL (src/sasl): answered by the listener. After a v0 handshake the tokens come as
        // bare frames (src/kafka/listener.rs); librdkafka wants v0 listed to use SASL at all.
        (ApiKey::SaslHandshake, versions::<SaslHandshakeRequest>()),
        (
            ApiKey::SaslAuthenticate,
            versions::<SaslAuthenticateRequest>(),
        ),
        // From the image; AlterUserScramCredentials is forwarded.
        (
            ApiKey::DescribeUserScramCredentials,
            versions::<DescribeUserScramCredentialsRequest>(),
        ),
        // From the image; CreateAcls and DeleteAcls are forwarded.
        (ApiKey::DescribeAcls, versions::<DescribeAclsRequest>()),
    ];
    // Admin requests and offset commits: forwarded to the active controller, which serves
    // the same versions.
    apis.extend(forwardable_apis());
    apis
}

/// A broker's Kafka service.
pub struct BrokerService {
    state: Arc<BrokerState>,
    /// The listener this service answers on: clients learn endpoints on it.
    listener: String,
    apis: ApiSet,
    forwarded: ApiSet,
}

/// An active broker's client endpoint: `(id, host, port, rack)`.
pub(super) type BrokerEndpoint = (i32, String, u16, Option<String>);

impl BrokerService {
    /// The broker's state.
    pub(super) fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// The service of the broker with `state` on the listener named `listener`.
    pub fn new(state: Arc<BrokerState>, listener: String) -> Self {
        BrokerService {
            state,
            listener,
            apis: ApiSet::new(broker_apis()),
            forwarded: ApiSet::new(forwardable_apis()),
        }
    }

    /// DescribeUserScramCredentials from the image: each user's mechanisms and iteration
    /// counts (never a salt or key); all users when none is named.
    fn describe_scram(
        &self,
        r: DescribeUserScramCredentialsRequest,
    ) -> DescribeUserScramCredentialsResponse {
        use describe_user_scram_credentials_response::{
            CredentialInfo, DescribeUserScramCredentialsResult,
        };
        let published = self.state.image();
        let image = &published.image;
        let mut users: std::collections::BTreeMap<String, Vec<CredentialInfo>> = Default::default();
        for c in image.scram_credentials() {
            users.entry(c.name.clone()).or_default().push(
                CredentialInfo::default()
                    .with_mechanism(c.mechanism.id())
                    .with_iterations(c.iterations as i32),
            );
        }
        let results = match r.users {
            None => users
                .into_iter()
                .map(|(user, infos)| {
                    DescribeUserScramCredentialsResult::default()
                        .with_user(sb(user))
                        .with_credential_infos(infos)
                })
                .collect(),
            Some(asked) => {
                let mut seen = std::collections::BTreeSet::new();
                let duplicated: std::collections::BTreeSet<String> = asked
                    .iter()
                    .filter(|u| !seen.insert(u.name.to_string()))
                    .map(|u| u.name.to_string())
                    .collect();
                let mut done = std::collections::BTreeSet::new();
                asked
                    .iter()
                    .filter(|u| done.insert(u.name.to_string()))
                    .map(|u| {
                        let out =
                            DescribeUserScramCredentialsResult::default().with_user(u.name.clone());
                        if duplicated.contains(&*u.name) {
                            return out
                                .with_error_code(ErrorCode::DuplicateResource.code())
                                .with_error_message(Some(sb(format!(
                                    "user {:?} is named more than once",
                                    &*u.name
                                ))));
                        }
                        match users.get(&*u.name) {
                            Some(infos) => out.with_credential_infos(infos.clone()),
                            None => out
                                .with_error_code(ErrorCode::ResourceNotFound.code())
                                .with_error_message(Some(sb(format!(
                                    "user {:?} has no SCRAM credential",
                                    &*u.name
                                )))),
                        }
                    })
                    .collect()
            }
        };
        DescribeUserScramCredentialsResponse::default().with_results(results)
    }

    /// The listener this service answers on.
    pub(super) fn listener(&self) -> &str {
        &self.listener
    }

    /// Active brokers with an endpoint on the client listener, by id.
    pub(super) fn live_endpoints(&self, image: &MetadataImage) -> Vec<BrokerEndpoint> {
        let name = &self.listener;
        image
            .brokers()
            .filter(|b| b.is_active())
            .filter_map(|b| {
                let l = b.listeners.iter().find(|l| &l.name == name)?;
                Some((b.broker_id.0, l.host.clone(), l.port, b.rack.clone()))
            })
            .collect()
    }

    /// The broker named as controller in Metadata: this one while it is active (it forwards),
    /// else the lowest active one.
    fn controller_id(&self, live: &[BrokerEndpoint]) -> i32 {
        if live.iter().any(|b| b.0 == self.state.node_id) {
            self.state.node_id
        } else {
            live.first().map_or(-1, |b| b.0)
        }
    }

    /// True for a Metadata request whose answer is large: every topic, or many of them, on a
    /// broker that knows many partitions.
    fn is_large_metadata(&self, r: &MetadataRequest) -> bool {
        const LARGE: usize = 10_000;
        let asked = r.topics.as_ref().map_or(usize::MAX, Vec::len);
        asked > 100 && self.state.image().image.partition_count() > LARGE
    }

    fn metadata(&self, r: MetadataRequest, version: i16, caller: &Caller) -> MetadataResponse {
        let (head, topics) = self.metadata_parts(r, version, caller);
        head.with_topics(topics.collect())
    }

    /// A Metadata response without its topics, and the topics, described one at a time as
    /// the iterator is read (see [`encode_metadata_streamed`]).
    fn metadata_parts(
        &self,
        r: MetadataRequest,
        version: i16,
        caller: &Caller,
    ) -> (
        MetadataResponse,
        impl ExactSizeIterator<Item = metadata_response::MetadataResponseTopic>,
    ) {
        use metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        };
        let published = self.state.image();
        let live = self.live_endpoints(&published.image);
        let brokers = live
            .iter()
            .map(|(id, host, port, rack)| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(*id))
                    .with_host(sb(host.clone()))
                    .with_port(*port as i32)
                    .with_rack(rack.clone().map(sb))
            })
            .collect();
        let head = MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(sb(self.state.config.cluster_id.clone())))
            .with_controller_id(BrokerId(self.controller_id(&live)));
        let describe = |image: &MetadataImage, name: &str| -> MetadataResponseTopic {
            let Some(t) = image.topic_by_name(name) else {
                return MetadataResponseTopic::default()
                    .with_name(Some(TopicName(sb(name))))
                    .with_error_code(ErrorCode::UnknownTopicOrPartition.code());
            };
            let partitions = t
                .partitions
                .iter()
                .map(|(index, p)| {
                    let offline: Vec<BrokerId> = p
                        .replicas
                        .iter()
                        .filter(|b| !image.is_active_broker(**b))
                        .map(|b| BrokerId(b.0))
                        .collect();
                    MetadataResponsePartition::default()
                        .with_partition_index(*index)
                        .with_error_code(if p.leader.is_none() {
                            ErrorCode::LeaderNotAvailable.code()
                        } else {
                            0
                        })
                        .with_leader_id(BrokerId(p.leader.0))
                        .with_leader_epoch(p.leader_epoch.0)
                        .with_replica_nodes(p.replicas.iter().map(|b| BrokerId(b.0)).collect())
                        .with_isr_nodes(p.isr.iter().map(|b| BrokerId(b.0)).collect())
                        .with_offline_replicas(offline)
                })
                .collect();
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(sb(t.name.clone()))))
                .with_topic_id(t.id)
                .with_partitions(partitions)
        };
        let all = match &r.topics {
            None => true,
            Some(t) => t.is_empty() && version == 0,
        };
        // Topics the caller may not describe: left out of an all-topics answer, refused by
        // name (TOPIC_AUTHORIZATION_FAILED) when asked for.
        let hidden: std::collections::HashSet<String> = match &self.state.config.authorizer {
            None => Default::default(),
            Some(_) => {
                let names: Box<dyn Iterator<Item = String>> = if all {
                    Box::new(published.image.topics_by_name().map(|t| t.name.clone()))
                } else {
                    Box::new(r.topics.iter().flatten().filter_map(|t| match &t.name {
                        Some(n) => Some(n.0.to_string()),
                        None => published.image.topic(&t.topic_id).map(|t| t.name.clone()),
                    }))
                };
                names
                    .filter(|n| {
                        !self.may(
                            &published.image,
                            caller,
                            AclOperation::Describe,
                            AclResourceType::Topic,
                            n,
                        )
                    })
                    .collect()
            }
        };
        // What to describe, in order: a topic by name, or one asked for by an id.
        let asked: Vec<Result<String, uuid::Uuid>> = if all {
            published
                .image
                .topics_by_name()
                .filter(|t| !hidden.contains(&t.name))
                .map(|t| Ok(t.name.clone()))
                .collect()
        } else {
            r.topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| match t.name {
                    Some(n) => Ok(n.0.to_string()),
                    None => Err(t.topic_id),
                })
                .collect()
        };
        let denied = |name: &str, id: uuid::Uuid| {
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(sb(name))))
                .with_topic_id(id)
                .with_error_code(ErrorCode::TopicAuthorizationFailed.code())
        };
        let topics = asked.into_iter().map(move |t| {
            let image = &published.image;
            match t {
                Ok(name) if hidden.contains(&name) => denied(&name, uuid::Uuid::nil()),
                Ok(name) => describe(image, &name),
                Err(id) => match image.topic(&id) {
                    Some(topic) if hidden.contains(&topic.name) => denied(&topic.name, id),
                    Some(topic) => describe(image, &topic.name),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(id)
                        .with_error_code(ErrorCode::UnknownTopicId.code()),
                },
            }
        });
        (head, topics)
    }

    fn describe_cluster(&self, r: DescribeClusterRequest) -> DescribeClusterResponse {
        use describe_cluster_response::DescribeClusterBroker;
        let published = self.state.image();
        let image = &published.image;
        let live = self.live_endpoints(image);
        let name = &self.listener;
        let brokers = image
            .brokers()
            .filter(|b| b.is_active() || (r.include_fenced_brokers && b.fenced))
            .filter_map(|b| {
                let l = b.listeners.iter().find(|l| &l.name == name)?;
                let mut out = DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.broker_id.0))
                    .with_host(sb(l.host.clone()))
                    .with_port(l.port as i32)
                    .with_rack(b.rack.clone().map(sb))
                    .with_is_fenced(b.fenced);
                // kmeta extensions (docs/PROTOCOL.md): the broker epoch and whether it is in
                // controlled shutdown, for `kmeta brokers list`.
                out.unknown_tagged_fields.insert(
                    BROKER_EPOCH_TAG,
                    Bytes::copy_from_slice(&b.broker_epoch.0.to_be_bytes()),
                );
                out.unknown_tagged_fields.insert(
                    CONTROLLED_SHUTDOWN_TAG,
                    Bytes::copy_from_slice(&[b.in_controlled_shutdown as u8]),
                );
                Some(out)
            })
            .collect();
        DescribeClusterResponse::default()
            .with_endpoint_type(r.endpoint_type)
            .with_cluster_id(sb(self.state.config.cluster_id.clone()))
            .with_controller_id(BrokerId(self.controller_id(&live)))
            .with_brokers(brokers)
    }

    fn describe_configs(&self, r: DescribeConfigsRequest) -> DescribeConfigsResponse {
        use describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
        let published = self.state.image();
        let image = &published.image;
        let results = r
            .resources
            .iter()
            .map(|res| {
                let out = DescribeConfigsResult::default()
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone());
                let wanted = |k: &str| {
                    res.configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|w| &**w == k))
                };
                match res.resource_type {
                    2 => {
                        let name = res.resource_name.to_string();
                        if image.topic_by_name(&name).is_none() {
                            return out
                                .with_error_code(ErrorCode::UnknownTopicOrPartition.code())
                                .with_error_message(Some(sb(format!(
                                    "Topic {name} does not exist"
                                ))));
                        }
                        let configs = image
                            .configs(&ConfigResource::topic(&name))
                            .into_iter()
                            .flat_map(|m| m.iter())
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, v)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(sb(k.clone()))
                                    .with_value(Some(sb(v.clone())))
                                    .with_config_source(1) // DYNAMIC_TOPIC_CONFIG
                            })
                            .collect();
                        out.with_configs(configs)
                    }
                    4 => {
                        // A broker id, or "" for the cluster-wide defaults.
                        let resource = ConfigResource {
                            resource_type: kmeta_metadata::record::ConfigResourceType::Broker,
                            resource_name: res.resource_name.to_string(),
                        };
                        let configs = image
                            .configs(&resource)
                            .into_iter()
                            .flat_map(|m| m.iter())
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, v)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(sb(k.clone()))
                                    .with_value(Some(sb(v.clone())))
                                    // DYNAMIC_DEFAULT_BROKER_CONFIG or DYNAMIC_BROKER_CONFIG
                                    .with_config_source(if res.resource_name.is_empty() {
                                        4
                                    } else {
                                        3
                                    })
                            })
                            .collect();
                        out.with_configs(configs)
                    }
                    _ => out
                        .with_error_code(ErrorCode::InvalidRequest.code())
                        .with_error_message(Some(sb("unsupported resource type"))),
                }
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    /// Forwards a write to the active controller and returns the controller's reply once this
    /// broker's image includes the write.
    ///
    /// `coordinator`: this broker's id when it checked the request as the group's coordinator
    /// (the controller refuses it if this broker no longer coordinates the group).
    pub(super) async fn forward(
        &self,
        raw: Bytes,
        coordinator: Option<i32>,
        caller: &Caller,
    ) -> Result<Bytes, String> {
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        // The controller must not decide this request after the broker has given up on it
        // (Kafka clients' request.timeout.ms is 30 s by default, like FORWARD_TIMEOUT).
        let deadline_ms = crate::controller::wall_ms() + FORWARD_TIMEOUT.as_millis() as i64;
        let address = match caller.host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => Bytes::copy_from_slice(&a.octets()),
            Ok(std::net::IpAddr::V6(a)) => Bytes::copy_from_slice(&a.octets()),
            Err(_) => Bytes::from_static(&[127, 0, 0, 1]),
        };
        let mut envelope = EnvelopeRequest::default()
            .with_request_data(raw)
            .with_request_principal(Some(Bytes::copy_from_slice(caller.principal.as_bytes())))
            .with_client_host_address(address);
        envelope.unknown_tagged_fields.insert(
            ENVELOPE_DEADLINE_TAG,
            Bytes::copy_from_slice(&deadline_ms.to_be_bytes()),
        );
        if let Some(id) = coordinator {
            envelope.unknown_tagged_fields.insert(
                ENVELOPE_COORDINATOR_TAG,
                Bytes::copy_from_slice(&id.to_be_bytes()),
            );
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.state.controllers.send(&envelope, 0).await {
                Ok(r) if r.error_code == 0 => {
                    let data = r.response_data.ok_or("an empty forwarded response")?;
                    if let Some(tag) = r.unknown_tagged_fields.get(&ENVELOPE_OFFSET_TAG) {
                        if tag.len() == 8 {
                            let at = u64::from_be_bytes(tag[..8].try_into().expect("8 bytes"));
                            if !self
                                .state
                                .wait_for_offset(at, READ_YOUR_WRITE_TIMEOUT)
                                .await
                            {
                                tracing::warn!(
                                    offset = at,
                                    "replying before this broker's image includes the write"
                                );
                            }
                        }
                    }
                    return Ok(data);
                }
                Ok(r) if r.error_code == ErrorCode::NotController.code() => {
                    self.state.controllers.forget_leader();
                }
                Ok(r) => {
                    return Err(format!(
                        "the controller refused a forwarded request ({})",
                        r.error_code
                    ))
                }
                Err(e) => tracing::debug!(error = %e, "forwarding failed; retrying"),
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return Err("no active controller answered in time".into());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
        }
    }
}

impl BrokerService {
    /// Forwards a group write this broker checked as the group's coordinator, and decodes
    /// the controller's reply.
    pub(super) async fn forward_as_coordinator<R: KafkaRequest>(
        &self,
        request: &R,
        version: i16,
        caller: &Caller,
    ) -> Result<R::Response, String> {
        let api_key = ApiKey::try_from(R::KEY).map_err(|_| "unknown api key".to_string())?;
        let mut raw = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_client_id(Some(sb(self.state.client_id.clone())))
            .encode(&mut raw, api_key.request_header_version(version))
            .map_err(|e| format!("encoding a forwarded {api_key:?} header: {e:#}"))?;
        request
            .encode(&mut raw, version)
            .map_err(|e| format!("encoding a forwarded {api_key:?}: {e:#}"))?;
        let mut reply = self
            .forward(raw.freeze(), Some(self.state.node_id), caller)
            .await?;
        ResponseHeader::decode(&mut reply, api_key.response_header_version(version))
            .map_err(|e| format!("decoding a forwarded {api_key:?} reply header: {e:#}"))?;
        R::Response::decode(&mut reply, version)
            .map_err(|e| format!("decoding a forwarded {api_key:?} reply: {e:#}"))
    }
}

impl Service for BrokerService {
    fn apis(&self) -> &ApiSet {
        &self.apis
    }

    /// OffsetCommits of different groups, and CreateTopics of one topic each of different
    /// names, run beside each other on one connection (each waits for the controller's
    /// commit, so a connection of one-at-a-time requests gave the controller one write at a
    /// time to batch); two of one group or one topic name never do, and every other request
    /// waits for all before it (a Fetch, an OffsetFetch or a Metadata after a write on the
    /// same connection sees it, as on a Kafka broker).
    fn pipelining(&self, request: &Request) -> Pipelining {
        match &request.body {
            RequestKind::OffsetCommit(r) => Pipelining::Key(format!("group {}", &*r.group_id.0)),
            RequestKind::CreateTopics(r) if r.topics.len() == 1 && !r.validate_only => {
                Pipelining::Key(format!("topic {}", &*r.topics[0].name.0))
            }
            _ => Pipelining::Barrier,
        }
    }

    async fn handle(&self, request: Request) -> Result<Bytes, String> {
        let Request {
            header,
            api_key,
            version,
            mut body,
            raw,
            client_host,
            principal,
        } = request;
        // Nothing is answered before the broker has registered and caught up: the
        // connection is open, its requests wait (as on a Kafka broker before it enables
        // request processing).
        self.state.wait_until_serving().await;
        let caller = Caller::new(principal, &client_host);
        // Admin requests go to the active controller as they came, which authorizes them;
        // group writes are checked by the group's coordinator first (groups.rs).
        if self.forwarded.versions(api_key).is_some() && !super::groups::is_group_write(api_key) {
            return self.forward(raw, None, &caller).await;
        }
        let post = match self.authorize(&caller, &mut body) {
            Ok(post) => post,
            Err(refused) => {
                return encode_response(header.correlation_id, api_key, version, &refused)
            }
        };
        if let (RequestKind::OffsetCommit(r), Post::Nothing) = (&body, &post) {
            return self
                .offset_commit_as_sent(r, raw, header.correlation_id, version, &caller)
                .await;
        }
        // A read whose answer is filtered keeps what it asked for.
        let asked = matches!(post, Post::Filter)
            .then(|| match &body {
                RequestKind::FindCoordinator(r) => Some(RequestKind::FindCoordinator(r.clone())),
                RequestKind::OffsetFetch(r) => Some(RequestKind::OffsetFetch(r.clone())),
                _ => None,
            })
            .flatten();
        let client_id = header.client_id.as_deref().unwrap_or_default();
        let mut response: ResponseKind = match body {
            RequestKind::ApiVersions(_) => self.apis.api_versions_response().into(),
            RequestKind::Metadata(r) if self.is_large_metadata(&r) => {
                // Hundreds of milliseconds to build and encode at a million partitions, more
                // on a saturated machine: the runtime's other tasks (heartbeats, a shutdown
                // waiting on its listeners) move to another thread meanwhile.
                return crate::cpu_bound(|| {
                    let (head, topics) = self.metadata_parts(r, version, &caller);
                    encode_metadata_streamed(header.correlation_id, version, head, topics)
                });
            }
            RequestKind::Metadata(r) => self.metadata(r, version, &caller).into(),
            RequestKind::DescribeCluster(r) => self.describe_cluster(r).into(),
            RequestKind::FindCoordinator(r) => self.find_coordinator(r, version).into(),
            RequestKind::OffsetFetch(r) => self.offset_fetch(r, version).into(),
            RequestKind::ListGroups(r) => self.list_groups(r).into(),
            RequestKind::JoinGroup(r) => self
                .join_group(r, version, client_id, &client_host)
                .await
                .into(),
            RequestKind::SyncGroup(r) => self.sync_group(r).await.into(),
            RequestKind::Heartbeat(r) => self.heartbeat(r).into(),
            RequestKind::LeaveGroup(r) => self.leave_group(r, version).into(),
            RequestKind::OffsetCommit(r) => self.offset_commit(r, version, &caller).await?.into(),
            RequestKind::DeleteGroups(r) => self.delete_groups(r, version, &caller).await?.into(),
            RequestKind::OffsetDelete(r) => self.offset_delete(r, version, &caller).await?.into(),
            RequestKind::DescribeGroups(r) => self.describe_groups(r, version).into(),
            RequestKind::DescribeConfigs(r) => self.describe_configs(r).into(),
            RequestKind::ListOffsets(r) => self.list_offsets(r, version).into(),
            RequestKind::DescribeQuorum(r) => self
                .state
                .controllers
                .send(&r, version)
                .await
                .map_err(|e| format!("relaying DescribeQuorum: {e}"))?
                .into(),
            RequestKind::Fetch(r) => self.fetch(r, version).await.into(),
            RequestKind::Produce(r) => match self.produce(r, version).await? {
                Some(response) => response.into(),
                // acks=0: no response at all.
                None => return Ok(Bytes::new()),
            },
            RequestKind::OffsetForLeaderEpoch(r) => self.offset_for_leader_epoch(r).into(),
            RequestKind::InitProducerId(r) => self.init_producer_id(r).await.into(),
            RequestKind::DescribeClientQuotas(_) => DescribeClientQuotasResponse::default()
                .with_entries(Some(Vec::new()))
                .into(),
            RequestKind::DescribeUserScramCredentials(r) => self.describe_scram(r).into(),
            RequestKind::DescribeAcls(r) => self.describe_acls(r).into(),
            other => return Err(format!("unexpected request {other:?}")),
        };
        self.restrict(&caller, post, asked.as_ref(), &mut response);
        encode_response(header.correlation_id, api_key, version, &response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;
    use metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };

    fn topics(n: usize) -> Vec<MetadataResponseTopic> {
        (0..n)
            .map(|i| {
                if i % 3 == 2 {
                    return MetadataResponseTopic::default()
                        .with_name(Some(TopicName(sb(format!("missing-{i}")))))
                        .with_error_code(ErrorCode::UnknownTopicOrPartition.code());
                }
                MetadataResponseTopic::default()
                    .with_name(Some(TopicName(sb(format!("topic-{i}")))))
                    .with_topic_id(uuid::Uuid::from_u128(i as u128 + 1))
                    .with_partitions(
                        (0..(i % 4) as i32)
                            .map(|p| {
                                MetadataResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_leader_id(BrokerId(p % 3))
                                    .with_leader_epoch(p + 7)
                                    .with_replica_nodes(vec![BrokerId(0), BrokerId(1), BrokerId(2)])
                                    .with_isr_nodes(vec![BrokerId(p % 3)])
                                    .with_offline_replicas(vec![BrokerId(2)])
                            })
                            .collect(),
                    )
            })
            .collect()
    }

    #[test]
    fn a_streamed_metadata_response_is_byte_for_byte_the_whole_one_at_every_version() {
        let head = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(sb("localhost".to_string()))
                .with_port(9092)
                .with_rack(Some(sb("r1".to_string())))])
            .with_cluster_id(Some(sb("cluster".to_string())))
            .with_controller_id(BrokerId(1));
        // 200 topics: a compact array's length takes two varint bytes.
        for n in [0, 1, 5, 200] {
            for version in MetadataRequest::VERSIONS.min..=MetadataRequest::VERSIONS.max {
                let whole = encode_response(
                    41,
                    ApiKey::Metadata,
                    version,
                    &ResponseKind::from(head.clone().with_topics(topics(n))),
                )
                .unwrap();
                let streamed =
                    encode_metadata_streamed(41, version, head.clone(), topics(n).into_iter())
                        .unwrap();
                assert_eq!(streamed, whole, "{n} topics at v{version}");
            }
        }
    }
}
