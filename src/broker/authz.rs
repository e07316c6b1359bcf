//! Authorization of what a broker answers itself, decided from its image with Kafka's
//! StandardAuthorizer rules (`kmeta_metadata::acl`) and Kafka's error codes: a request refused
//! whole is answered with its error; parts of one (topics, partitions, groups) the caller may
//! not touch are taken out before it is handled and answered TOPIC_AUTHORIZATION_FAILED or
//! GROUP_AUTHORIZATION_FAILED beside the rest; what the caller may not see is left out of
//! answers (Metadata, OffsetFetch of all topics, ListGroups). Admin requests are forwarded
//! with the caller's principal and address and decided on the active controller
//! (`controller::authz`).

use super::api::BrokerService;
use crate::kafka::wire::sb;
use crate::kafka::wire::take_denied;
pub(crate) use crate::kafka::wire::Caller;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kmeta_metadata::acl::CLUSTER_NAME;
use kmeta_metadata::record::{AclOperation as Op, AclResourceType as Res};
use kmeta_metadata::{ErrorCode, MetadataImage};

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;
const CLUSTER_DENIED: i16 = 31;

/// What was taken out of a request, or must be hidden in its answer.
pub(super) enum Post {
    /// Nothing.
    Nothing,
    /// Partitions of topics the caller may not touch (errors in the answer).
    Topics(Vec<(StrBytes, Vec<i32>)>),
    /// Groups the caller may not touch.
    Groups(Vec<GroupId>),
    /// Answers to filter by what the caller may see (read requests).
    Filter,
}

fn topics_denied<T>(
    topics: &mut Vec<T>,
    keep: impl Fn(&T) -> bool,
    parts: impl Fn(&T) -> (StrBytes, Vec<i32>),
) -> Post {
    let denied = crate::kafka::wire::take_denied(topics, keep, parts);
    if denied.is_empty() {
        Post::Nothing
    } else {
        Post::Topics(denied)
    }
}

impl BrokerService {
    /// Whether `caller` may do `op` on the resource `name` of `kind`, in `image`. Always true
    /// without an authorizer.
    pub(super) fn may(
        &self,
        image: &MetadataImage,
        caller: &Caller,
        op: Op,
        kind: Res,
        name: &str,
    ) -> bool {
        match &self.state().config.authorizer {
            None => true,
            Some(a) => a.authorize(image, &caller.principal, &caller.host, op, kind, name),
        }
    }

    fn may_cluster(&self, image: &MetadataImage, caller: &Caller, op: Op) -> bool {
        self.may(image, caller, op, Res::Cluster, CLUSTER_NAME)
    }

    /// Decides a request before it is handled: `Err` answers it whole with an error;
    /// otherwise it may have lost the parts the caller may not touch, returned for
    /// [`Self::restrict`].
    // The refusal is the answer itself, made once per request and encoded at once.
    #[allow(clippy::result_large_err)]
    pub(super) fn authorize(
        &self,
        caller: &Caller,
        body: &mut RequestKind,
    ) -> Result<Post, ResponseKind> {
        if self.state().config.authorizer.is_none() {
            return Ok(Post::Nothing);
        }
        let published = self.state().image();
        let image = &published.image;
        let group = |op: Op, id: &str| self.may(image, caller, op, Res::Group, id);
        let topic = |op: Op, name: &str| self.may(image, caller, op, Res::Topic, name);
        let cluster = |op: Op| self.may_cluster(image, caller, op);
        Ok(match body {
            RequestKind::DescribeCluster(_) if !cluster(Op::Describe) => {
                return Err(DescribeClusterResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .with_error_message(Some(sb("Cluster authorization failed.")))
                    .into())
            }
            RequestKind::DescribeQuorum(_) if !cluster(Op::Describe) => {
                return Err(DescribeQuorumResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .into())
            }
            RequestKind::DescribeUserScramCredentials(_) if !cluster(Op::Describe) => {
                return Err(DescribeUserScramCredentialsResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .with_error_message(Some(sb("Cluster authorization failed.")))
                    .into())
            }
            RequestKind::DescribeClientQuotas(_) if !cluster(Op::DescribeConfigs) => {
                return Err(DescribeClientQuotasResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .into())
            }
            RequestKind::DescribeAcls(_) if !cluster(Op::Describe) => {
                return Err(DescribeAclsResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .with_error_message(Some(sb("Cluster authorization failed.")))
                    .into())
            }
            RequestKind::InitProducerId(r) => {
                let allowed = match &r.transactional_id {
                    // Kafka: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic.
                    None => {
                        cluster(Op::IdempotentWrite)
                            || self.state().config.authorizer.as_ref().is_some_and(|a| {
                                a.authorize_any(
                                    image,
                                    &caller.principal,
                                    &caller.host,
                                    Op::Write,
                                    Res::Topic,
                                )
                            })
                    }
                    Some(id) => self.may(image, caller, Op::Write, Res::TransactionalId, id),
                };
                if !allowed {
                    let code = if r.transactional_id.is_some() {
                        ErrorCode::TransactionalIdAuthorizationFailed.code()
                    } else {
                        CLUSTER_DENIED
                    };
                    return Err(InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1)
                        .into());
                }
                Post::Nothing
            }
            RequestKind::JoinGroup(r) if !group(Op::Read, &r.group_id) => {
                return Err(JoinGroupResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .with_generation_id(-1)
                    .with_member_id(r.member_id.clone())
                    .into())
            }
            RequestKind::SyncGroup(r) if !group(Op::Read, &r.group_id) => {
                return Err(SyncGroupResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .into())
            }
            RequestKind::Heartbeat(r) if !group(Op::Read, &r.group_id) => {
                return Err(HeartbeatResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .into())
            }
            RequestKind::LeaveGroup(r) if !group(Op::Read, &r.group_id) => {
                return Err(LeaveGroupResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .into())
            }
            RequestKind::OffsetCommit(r) => {
                if !group(Op::Read, &r.group_id) {
                    return Err(
                        crate::controller::kafka_api::offset_commit_response(r, |_, _| {
                            GROUP_DENIED
                        })
                        .into(),
                    );
                }
                topics_denied(
                    &mut r.topics,
                    |t| topic(Op::Read, &t.name),
                    |t| {
                        let parts = t.partitions.iter().map(|p| p.partition_index).collect();
                        (t.name.0.clone(), parts)
                    },
                )
            }
            RequestKind::OffsetDelete(r) => {
                if !group(Op::Delete, &r.group_id) {
                    return Err(OffsetDeleteResponse::default()
                        .with_error_code(GROUP_DENIED)
                        .into());
                }
                topics_denied(
                    &mut r.topics,
                    |t| topic(Op::Read, &t.name),
                    |t| {
                        let parts = t.partitions.iter().map(|p| p.partition_index).collect();
                        (t.name.0.clone(), parts)
                    },
                )
            }
            RequestKind::DeleteGroups(r) => Post::Groups(take_denied(
                &mut r.groups_names,
                |g| group(Op::Delete, g),
                Clone::clone,
            )),
            RequestKind::Produce(r) => topics_denied(
                &mut r.topic_data,
                |t| topic(Op::Write, &t.name),
                |t| {
                    let parts = t.partition_data.iter().map(|p| p.index).collect();
                    (t.name.0.clone(), parts)
                },
            ),
            RequestKind::Fetch(r) if r.replica_id.0 >= 0 => {
                if !cluster(Op::ClusterAction) {
                    return Err(FetchResponse::default()
                        .with_error_code(CLUSTER_DENIED)
                        .into());
                }
                Post::Nothing
            }
            RequestKind::Fetch(r) => {
                let post = topics_denied(
                    &mut r.topics,
                    |t| topic(Op::Read, &t.topic),
                    |t| {
                        let parts = t.partitions.iter().map(|p| p.partition).collect();
                        (t.topic.0.clone(), parts)
                    },
                );
                // Nothing left to wait for: answer the refusals at once.
                if r.topics.is_empty() && matches!(post, Post::Topics(_)) {
                    r.max_wait_ms = 0;
                }
                post
            }
            RequestKind::OffsetForLeaderEpoch(r) if r.replica_id.0 >= 0 => {
                if !cluster(Op::ClusterAction) {
                    return Err(offset_for_leader_epoch_denied(r, CLUSTER_DENIED).into());
                }
                Post::Nothing
            }
            RequestKind::OffsetForLeaderEpoch(_)
            | RequestKind::ListOffsets(_)
            | RequestKind::OffsetFetch(_)
            | RequestKind::FindCoordinator(_)
            | RequestKind::ListGroups(_)
            | RequestKind::DescribeGroups(_)
            | RequestKind::DescribeConfigs(_) => Post::Filter,
            _ => Post::Nothing,
        })
    }

    /// Puts errors for what [`Self::authorize`] took out into the answer, and leaves out or
    /// refuses what the caller may not see.
    pub(super) fn restrict(
        &self,
        caller: &Caller,
        post: Post,
        request: Option<&RequestKind>,
        response: &mut ResponseKind,
    ) {
        match (post, response) {
            (Post::Nothing, _) => {}
            (Post::Topics(denied), ResponseKind::OffsetCommit(out)) => {
                out.topics.extend(denied.into_iter().map(|(name, parts)| {
                    offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(TopicName(name))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|p| {
                                    offset_commit_response::OffsetCommitResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(TOPIC_DENIED)
                                })
                                .collect(),
                        )
                }))
            }
            (Post::Topics(denied), ResponseKind::OffsetDelete(out)) => {
                out.topics.extend(denied.into_iter().map(|(name, parts)| {
                    offset_delete_response::OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(name))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|p| {
                                    offset_delete_response::OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(TOPIC_DENIED)
                                })
                                .collect(),
                        )
                }))
            }
            (Post::Topics(denied), ResponseKind::Produce(out)) => {
                out.responses
                    .extend(denied.into_iter().map(|(name, parts)| {
                        produce_response::TopicProduceResponse::default()
                            .with_name(TopicName(name))
                            .with_partition_responses(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        produce_response::PartitionProduceResponse::default()
                                            .with_index(p)
                                            .with_error_code(TOPIC_DENIED)
                                            .with_base_offset(-1)
                                            .with_log_append_time_ms(-1)
                                            .with_log_start_offset(-1)
                                    })
                                    .collect(),
                            )
                    }))
            }
            (Post::Topics(denied), ResponseKind::Fetch(out)) => {
                out.responses
                    .extend(denied.into_iter().map(|(name, parts)| {
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(TopicName(name))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p)
                                            .with_error_code(TOPIC_DENIED)
                                            .with_high_watermark(-1)
                                            .with_last_stable_offset(-1)
                                            .with_log_start_offset(-1)
                                    })
                                    .collect(),
                            )
                    }))
            }
            (Post::Groups(denied), ResponseKind::DeleteGroups(out)) => {
                out.results.extend(denied.into_iter().map(|g| {
                    delete_groups_response::DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(GROUP_DENIED)
                }))
            }
            (Post::Filter, response) => {
                let published = self.state().image();
                self.filter(&published.image, caller, request, response)
            }
            (_, _) => {}
        }
    }

    /// Hides or refuses, in an answer to a read, what the caller may not see.
    fn filter(
        &self,
        image: &MetadataImage,
        caller: &Caller,
        request: Option<&RequestKind>,
        response: &mut ResponseKind,
    ) {
        let group = |op: Op, id: &str| self.may(image, caller, op, Res::Group, id);
        let topic = |op: Op, name: &str| self.may(image, caller, op, Res::Topic, name);
        match response {
            ResponseKind::ListOffsets(out) => {
                for t in &mut out.topics {
                    if !topic(Op::Describe, &t.name) {
                        for p in &mut t.partitions {
                            *p = list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_DENIED)
                                .with_timestamp(-1)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                        }
                    }
                }
            }
            ResponseKind::OffsetForLeaderEpoch(out) => {
                for t in &mut out.topics {
                    if !topic(Op::Describe, &t.topic) {
                        for p in &mut t.partitions {
                            p.error_code = TOPIC_DENIED;
                            p.leader_epoch = -1;
                            p.end_offset = -1;
                        }
                    }
                }
            }
            ResponseKind::FindCoordinator(out) => {
                let group_key = match request {
                    Some(RequestKind::FindCoordinator(r)) => r.key_type == 0,
                    _ => true,
                };
                if !group_key {
                    return;
                }
                if out.coordinators.is_empty() {
                    if let Some(RequestKind::FindCoordinator(r)) = request {
                        if !group(Op::Describe, &r.key) {
                            out.error_code = GROUP_DENIED;
                            out.error_message = Some(sb("Group authorization failed."));
                            out.node_id = BrokerId(-1);
                            out.host = sb("");
                            out.port = -1;
                        }
                    }
                }
                for c in &mut out.coordinators {
                    if !group(Op::Describe, &c.key) {
                        c.error_code = GROUP_DENIED;
                        c.error_message = Some(sb("Group authorization failed."));
                        c.node_id = BrokerId(-1);
                        c.host = sb("");
                        c.port = -1;
                    }
                }
            }
            ResponseKind::ListGroups(out) if !self.may_cluster(image, caller, Op::Describe) => {
                out.groups.retain(|g| group(Op::Describe, &g.group_id));
            }
            ResponseKind::DescribeGroups(out) => {
                for g in &mut out.groups {
                    if !group(Op::Describe, &g.group_id) {
                        *g = describe_groups_response::DescribedGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(GROUP_DENIED)
                            .with_error_message(Some(sb("Group authorization failed.")));
                    }
                }
            }
            ResponseKind::DescribeConfigs(out) => {
                for r in &mut out.results {
                    let allowed = match r.resource_type {
                        2 => topic(Op::DescribeConfigs, &r.resource_name),
                        _ => self.may_cluster(image, caller, Op::DescribeConfigs),
                    };
                    if !allowed {
                        let (code, what) = if r.resource_type == 2 {
                            (TOPIC_DENIED, "Topic")
                        } else {
                            (CLUSTER_DENIED, "Cluster")
                        };
                        r.error_code = code;
                        r.error_message = Some(sb(format!("{what} authorization failed.")));
                        r.configs.clear();
                    }
                }
            }
            ResponseKind::OffsetFetch(out) => {
                let explicit = |group_id: &str| match request {
                    Some(RequestKind::OffsetFetch(r)) if r.groups.is_empty() => r.topics.is_some(),
                    Some(RequestKind::OffsetFetch(r)) => r
                        .groups
                        .iter()
                        .find(|g| g.group_id.0.as_str() == group_id)
                        .is_some_and(|g| g.topics.is_some()),
                    _ => true,
                };
                // v0-v7: one group, named in the request.
                if let Some(RequestKind::OffsetFetch(r)) = request {
                    if r.groups.is_empty() {
                        if !group(Op::Describe, &r.group_id) {
                            out.topics.clear();
                            out.error_code = GROUP_DENIED;
                            return;
                        }
                        let keep_all = explicit(&r.group_id);
                        out.topics.retain_mut(|t| {
                            if topic(Op::Describe, &t.name) {
                                return true;
                            }
                            for p in &mut t.partitions {
                                p.error_code = TOPIC_DENIED;
                                p.committed_offset = -1;
                                p.metadata = None;
                            }
                            keep_all
                        });
                    }
                }
                for g in &mut out.groups {
                    if !group(Op::Describe, &g.group_id) {
                        g.topics.clear();
                        g.error_code = GROUP_DENIED;
                        continue;
                    }
                    let keep_all = explicit(&g.group_id);
                    g.topics.retain_mut(|t| {
                        if topic(Op::Describe, &t.name) {
                            return true;
                        }
                        for p in &mut t.partitions {
                            p.error_code = TOPIC_DENIED;
                            p.committed_offset = -1;
                            p.metadata = None;
                        }
                        keep_all
                    });
                }
            }
            _ => {}
        }
    }
}

impl BrokerService {
    /// DescribeAcls, from this broker's image: the entries the filter matches, by resource
    /// pattern. SECURITY_DISABLED without an authorizer, as in Kafka.
    pub(super) fn describe_acls(&self, r: DescribeAclsRequest) -> DescribeAclsResponse {
        use describe_acls_response::{AclDescription, DescribeAclsResource};
        if self.state().config.authorizer.is_none() {
            return DescribeAclsResponse::default()
                .with_error_code(ErrorCode::SecurityDisabled.code())
                .with_error_message(Some(sb("No Authorizer is configured.")));
        }
        let filter = match kmeta_metadata::acl::AclFilter::from_wire(
            r.resource_type_filter,
            r.resource_name_filter.as_deref(),
            r.pattern_type_filter,
            r.principal_filter.as_deref(),
            r.host_filter.as_deref(),
            r.operation,
            r.permission_type,
        ) {
            Ok(f) => f,
            Err(e) => {
                return DescribeAclsResponse::default()
                    .with_error_code(e.code.code())
                    .with_error_message(Some(sb(e.message)))
            }
        };
        let published = self.state().image();
        let mut by_resource: std::collections::BTreeMap<_, Vec<AclDescription>> =
            Default::default();
        for acl in published.image.acls().filter(|a| filter.matches(a)) {
            by_resource
                .entry((
                    acl.resource_type,
                    acl.resource_name.clone(),
                    acl.pattern_type,
                ))
                .or_default()
                .push(
                    AclDescription::default()
                        .with_principal(sb(acl.principal.clone()))
                        .with_host(sb(acl.host.clone()))
                        .with_operation(acl.operation.id())
                        .with_permission_type(acl.permission.id()),
                );
        }
        DescribeAclsResponse::default().with_resources(
            by_resource
                .into_iter()
                .map(|((kind, name, pattern), acls)| {
                    DescribeAclsResource::default()
                        .with_resource_type(kind.id())
                        .with_resource_name(sb(name))
                        .with_pattern_type(pattern.id())
                        .with_acls(acls)
                })
                .collect(),
        )
    }
}

fn offset_for_leader_epoch_denied(
    r: &OffsetForLeaderEpochRequest,
    code: i16,
) -> OffsetForLeaderEpochResponse {
    use offset_for_leader_epoch_response::*;
    OffsetForLeaderEpochResponse::default().with_topics(
        r.topics
            .iter()
            .map(|t| {
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                EpochEndOffset::default()
                                    .with_partition(p.partition)
                                    .with_error_code(code)
                                    .with_leader_epoch(-1)
                                    .with_end_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
