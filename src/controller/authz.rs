//! Authorization of forwarded admin requests on the active controller, with the principal and
//! client address the forwarding broker put in the Envelope (Kafka's model: the broker
//! forwards, the controller decides). Decided on the controller's applied image with the
//! StandardAuthorizer's rules; refusals carry Kafka's error codes and messages, and the
//! parts of a request the caller may act on go ahead. Group writes (OffsetCommit,
//! DeleteGroups, OffsetDelete) were checked by the group's coordinator broker.
//!
//! Also CreateAcls and DeleteAcls, decided by the core (`controller::acls`).

use super::kafka_api::ControllerService;
use crate::kafka::wire::{sb, take_denied, Caller};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kmeta_metadata::acl::{Authorizer, CLUSTER_NAME};
use kmeta_metadata::controller::ControllerResult;
use kmeta_metadata::record::{AclOperation as Op, AclResourceType as Res};
use kmeta_metadata::{ApiError, ErrorCode, MetadataImage};

const TOPIC_DENIED: i16 = 29;
const CLUSTER_DENIED: i16 = 31;

fn denied_message(what: &str) -> Option<StrBytes> {
    Some(sb(format!("{what} authorization failed.")))
}

/// What authorization took out of a forwarded request, answered beside the rest.
pub(super) enum Denied {
    /// Nothing.
    Nothing,
    /// CreateTopics, DeleteTopics (name, id) or CreatePartitions of these topics.
    Topics(Vec<(Option<TopicName>, uuid::Uuid)>),
    /// IncrementalAlterConfigs of these resources (type, name).
    Configs(Vec<(i8, StrBytes)>),
    /// DeleteGroups of these groups.
    Groups(Vec<GroupId>),
}

/// The caller an Envelope names: its principal (UTF-8, `User:alice`; `User:ANONYMOUS` if
/// absent) and the client's address (4 or 16 bytes).
pub(super) fn envelope_caller(envelope: &EnvelopeRequest) -> Caller {
    let principal = envelope
        .request_principal
        .as_ref()
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|p| !p.is_empty())
        .unwrap_or(crate::kafka::wire::ANONYMOUS);
    let address = &envelope.client_host_address;
    let host = if let Ok(a) = <[u8; 4]>::try_from(address.as_ref()) {
        std::net::Ipv4Addr::from(a).to_string()
    } else if let Ok(a) = <[u8; 16]>::try_from(address.as_ref()) {
        std::net::Ipv6Addr::from(a).to_string()
    } else {
        String::new()
    };
    Caller {
        principal: principal.into(),
        host,
    }
}

/// What a request is authorized against: the authorizer and the controller's applied image,
/// taken once for the request (the image is a copy taken under the state machine's lock).
pub(super) struct Authorization<'a> {
    authorizer: &'a Authorizer,
    image: MetadataImage,
}

impl Authorization<'_> {
    fn may(&self, caller: &Caller, op: Op, kind: Res, name: &str) -> bool {
        self.authorizer
            .authorize(&self.image, &caller.principal, &caller.host, op, kind, name)
    }
}

impl ControllerService {
    /// The authorizer and the image to decide requests against now; `None` without an
    /// authorizer (everything is allowed).
    pub(super) fn authorization(&self) -> Option<Authorization<'_>> {
        Some(Authorization {
            authorizer: self.authorizer()?,
            image: self.image(),
        })
    }

    /// Decides a request of the controller's own APIs, which only cluster nodes send
    /// (registration, heartbeats, AlterPartition, producer ids, the metadata fetch and
    /// snapshots, Envelope): CLUSTER_ACTION on the cluster, as Kafka asks; DescribeQuorum
    /// needs DESCRIBE. Returns the refusal, if refused.
    pub(super) fn authorize_node_request(
        auth: Option<&Authorization<'_>>,
        caller: &Caller,
        body: &RequestKind,
    ) -> Option<ResponseKind> {
        let auth = auth?;
        let op = match body {
            RequestKind::DescribeQuorum(_) => Op::Describe,
            RequestKind::BrokerRegistration(_)
            | RequestKind::BrokerHeartbeat(_)
            | RequestKind::UnregisterBroker(_)
            | RequestKind::AlterPartition(_)
            | RequestKind::AllocateProducerIds(_)
            | RequestKind::Fetch(_)
            | RequestKind::FetchSnapshot(_)
            | RequestKind::Envelope(_) => Op::ClusterAction,
            _ => return None,
        };
        if auth.may(caller, op, Res::Cluster, CLUSTER_NAME) {
            return None;
        }
        tracing::warn!(principal = %caller.principal, host = %caller.host, op = op.name(), "refusing a request: the principal may not do this on the cluster");
        Some(match body {
            RequestKind::DescribeQuorum(_) => DescribeQuorumResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            RequestKind::BrokerRegistration(_) => BrokerRegistrationResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            RequestKind::BrokerHeartbeat(_) => BrokerHeartbeatResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            RequestKind::UnregisterBroker(_) => UnregisterBrokerResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .with_error_message(denied_message("Cluster"))
                .into(),
            RequestKind::AlterPartition(_) => AlterPartitionResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            RequestKind::AllocateProducerIds(_) => AllocateProducerIdsResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            RequestKind::Fetch(_) => FetchResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            RequestKind::FetchSnapshot(_) => FetchSnapshotResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
            _ => EnvelopeResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .into(),
        })
    }

    /// Decides a forwarded request: `Err` answers it whole with an error; otherwise it may
    /// have lost the parts the caller may not act on, answered by [`Self::add_denied`].
    // The refusal is the answer itself, made once per request and encoded at once.
    #[allow(clippy::result_large_err)]
    pub(super) fn authorize_forwarded(
        auth: Option<&Authorization<'_>>,
        caller: &Caller,
        body: &mut RequestKind,
    ) -> Result<Denied, ResponseKind> {
        let Some(auth) = auth else {
            return Ok(Denied::Nothing);
        };
        let image = &auth.image;
        let topic = |op: Op, name: &str| auth.may(caller, op, Res::Topic, name);
        let group = |op: Op, id: &str| auth.may(caller, op, Res::Group, id);
        let cluster = |op: Op| auth.may(caller, op, Res::Cluster, CLUSTER_NAME);
        Ok(match body {
            RequestKind::CreateTopics(r) => {
                if cluster(Op::Create) {
                    return Ok(Denied::Nothing);
                }
                Denied::Topics(take_denied(
                    &mut r.topics,
                    |t| topic(Op::Create, &t.name),
                    |t| (Some(t.name.clone()), uuid::Uuid::nil()),
                ))
            }
            RequestKind::DeleteTopics(r) => {
                let mut denied = take_denied(
                    &mut r.topic_names,
                    |n| topic(Op::Delete, n),
                    |n| (Some(n.clone()), uuid::Uuid::nil()),
                );
                denied.extend(take_denied(
                    &mut r.topics,
                    |t| {
                        let name = match &t.name {
                            Some(n) => Some(n.0.to_string()),
                            None => image.topic(&t.topic_id).map(|t| t.name.clone()),
                        };
                        // An id no topic has is answered UNKNOWN_TOPIC_ID by the deletion.
                        name.as_deref().is_none_or(|n| topic(Op::Delete, n))
                    },
                    |t| (t.name.clone(), t.topic_id),
                ));
                Denied::Topics(denied)
            }
            RequestKind::CreatePartitions(r) => Denied::Topics(take_denied(
                &mut r.topics,
                |t| topic(Op::Alter, &t.name),
                |t| (Some(t.name.clone()), uuid::Uuid::nil()),
            )),
            RequestKind::IncrementalAlterConfigs(r) => Denied::Configs(take_denied(
                &mut r.resources,
                |c| match c.resource_type {
                    2 => topic(Op::AlterConfigs, &c.resource_name),
                    _ => cluster(Op::AlterConfigs),
                },
                |c| (c.resource_type, c.resource_name.clone()),
            )),
            RequestKind::AlterPartitionReassignments(_) if !cluster(Op::Alter) => {
                return Err(AlterPartitionReassignmentsResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .with_error_message(denied_message("Cluster"))
                    .into())
            }
            RequestKind::ListPartitionReassignments(_) if !cluster(Op::Describe) => {
                return Err(ListPartitionReassignmentsResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .with_error_message(denied_message("Cluster"))
                    .into())
            }
            RequestKind::ElectLeaders(r) if !cluster(Op::Alter) => {
                use elect_leaders_response::{PartitionResult, ReplicaElectionResult};
                let results = r
                    .topic_partitions
                    .iter()
                    .flatten()
                    .map(|t| {
                        ReplicaElectionResult::default()
                            .with_topic(t.topic.clone())
                            .with_partition_result(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        PartitionResult::default()
                                            .with_partition_id(*p)
                                            .with_error_code(CLUSTER_DENIED)
                                            .with_error_message(denied_message("Cluster"))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return Err(ElectLeadersResponse::default()
                    .with_error_code(CLUSTER_DENIED)
                    .with_replica_election_results(results)
                    .into());
            }
            RequestKind::AlterUserScramCredentials(r) if !cluster(Op::Alter) => {
                use alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
                let users: std::collections::BTreeSet<StrBytes> = r
                    .deletions
                    .iter()
                    .map(|d| d.name.clone())
                    .chain(r.upsertions.iter().map(|u| u.name.clone()))
                    .collect();
                return Err(AlterUserScramCredentialsResponse::default()
                    .with_results(
                        users
                            .into_iter()
                            .map(|u| {
                                AlterUserScramCredentialsResult::default()
                                    .with_user(u)
                                    .with_error_code(CLUSTER_DENIED)
                                    .with_error_message(denied_message("Cluster"))
                            })
                            .collect(),
                    )
                    .into());
            }
            RequestKind::CreateAcls(r) if !cluster(Op::Alter) => {
                return Err(CreateAclsResponse::default()
                    .with_results(
                        r.creations
                            .iter()
                            .map(|_| {
                                create_acls_response::AclCreationResult::default()
                                    .with_error_code(CLUSTER_DENIED)
                                    .with_error_message(denied_message("Cluster"))
                            })
                            .collect(),
                    )
                    .into())
            }
            RequestKind::DeleteAcls(r) if !cluster(Op::Alter) => {
                return Err(DeleteAclsResponse::default()
                    .with_filter_results(
                        r.filters
                            .iter()
                            .map(|_| {
                                delete_acls_response::DeleteAclsFilterResult::default()
                                    .with_error_code(CLUSTER_DENIED)
                                    .with_error_message(denied_message("Cluster"))
                            })
                            .collect(),
                    )
                    .into())
            }
            // Group writes: the coordinator broker checked the topics too; a write sent
            // here directly is held to its group.
            RequestKind::OffsetCommit(r) if !group(Op::Read, &r.group_id) => {
                return Err(super::kafka_api::offset_commit_response(r, |_, _| {
                    ErrorCode::GroupAuthorizationFailed.code()
                })
                .into())
            }
            RequestKind::OffsetDelete(r) if !group(Op::Delete, &r.group_id) => {
                return Err(OffsetDeleteResponse::default()
                    .with_error_code(ErrorCode::GroupAuthorizationFailed.code())
                    .into())
            }
            RequestKind::DeleteGroups(r) => Denied::Groups(take_denied(
                &mut r.groups_names,
                |g| group(Op::Delete, g),
                Clone::clone,
            )),
            _ => Denied::Nothing,
        })
    }

    /// A created topic's configs, partition count and replication factor go only to a
    /// caller allowed DESCRIBE_CONFIGS on it; others get TOPIC_AUTHORIZATION_FAILED in
    /// `topic_config_error_code` instead, as in Kafka (the creation itself stands).
    pub(super) fn hide_configs(
        auth: Option<&Authorization<'_>>,
        caller: &Caller,
        response: &mut ResponseKind,
    ) {
        let (Some(auth), ResponseKind::CreateTopics(out)) = (auth, response) else {
            return;
        };
        for t in out.topics.iter_mut().filter(|t| t.error_code == 0) {
            if !auth.may(caller, Op::DescribeConfigs, Res::Topic, &t.name) {
                t.topic_config_error_code = TOPIC_DENIED;
                t.configs = None;
                t.num_partitions = -1;
                t.replication_factor = -1;
            }
        }
    }

    /// Answers what [`Self::authorize_forwarded`] took out, beside the rest.
    pub(super) fn add_denied(denied: Denied, response: &mut ResponseKind) {
        match (denied, response) {
            (Denied::Topics(topics), ResponseKind::CreateTopics(out)) => {
                out.topics
                    .extend(topics.into_iter().filter_map(|(name, _)| {
                        Some(
                            create_topics_response::CreatableTopicResult::default()
                                .with_name(name?)
                                .with_error_code(TOPIC_DENIED)
                                .with_error_message(denied_message("Topic"))
                                .with_num_partitions(-1)
                                .with_replication_factor(-1),
                        )
                    }))
            }
            (Denied::Topics(topics), ResponseKind::DeleteTopics(out)) => {
                out.responses.extend(topics.into_iter().map(|(name, id)| {
                    delete_topics_response::DeletableTopicResult::default()
                        .with_name(name)
                        .with_topic_id(id)
                        .with_error_code(TOPIC_DENIED)
                        .with_error_message(denied_message("Topic"))
                }))
            }
            (Denied::Topics(topics), ResponseKind::CreatePartitions(out)) => {
                out.results
                    .extend(topics.into_iter().filter_map(|(name, _)| {
                        Some(
                            create_partitions_response::CreatePartitionsTopicResult::default()
                                .with_name(name?)
                                .with_error_code(TOPIC_DENIED)
                                .with_error_message(denied_message("Topic")),
                        )
                    }))
            }
            (Denied::Configs(resources), ResponseKind::IncrementalAlterConfigs(out)) => out
                .responses
                .extend(resources.into_iter().map(|(kind, name)| {
                    let (code, what) = if kind == 2 {
                        (TOPIC_DENIED, "Topic")
                    } else {
                        (CLUSTER_DENIED, "Cluster")
                    };
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_resource_type(kind)
                        .with_resource_name(name)
                        .with_error_code(code)
                        .with_error_message(denied_message(what))
                })),
            (Denied::Groups(groups), ResponseKind::DeleteGroups(out)) => {
                out.results.extend(groups.into_iter().map(|g| {
                    delete_groups_response::DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(ErrorCode::GroupAuthorizationFailed.code())
                }))
            }
            _ => {}
        }
    }

    /// CreateAcls: each creation decided on its own by the core; SECURITY_DISABLED without
    /// an authorizer.
    pub(super) async fn create_acls(
        &self,
        r: CreateAclsRequest,
    ) -> (CreateAclsResponse, Option<u64>) {
        use create_acls_response::AclCreationResult;
        use kmeta_metadata::record::{
            AccessControlEntryRecord, AclOperation, AclPatternType, AclPermission, AclResourceType,
        };
        let result = |e: Option<ApiError>| match e {
            None => AclCreationResult::default(),
            Some(e) => AclCreationResult::default()
                .with_error_code(e.code.code())
                .with_error_message(Some(sb(e.message))),
        };
        if self.authorizer().is_none() {
            let e = ApiError::new(ErrorCode::SecurityDisabled, "No Authorizer is configured.");
            let results = r
                .creations
                .iter()
                .map(|_| result(Some(e.clone())))
                .collect();
            return (CreateAclsResponse::default().with_results(results), None);
        }
        // Each creation parsed here, or refused with its reason.
        let parsed: Vec<Result<AccessControlEntryRecord, ApiError>> = r
            .creations
            .iter()
            .map(|c| {
                let invalid = |what: &str, id: i8| {
                    ApiError::new(ErrorCode::InvalidRequest, format!("Invalid {what} {id}"))
                };
                Ok(AccessControlEntryRecord {
                    id: uuid::Uuid::now_v7(),
                    resource_type: AclResourceType::from_id(c.resource_type)
                        .ok_or_else(|| invalid("resource type", c.resource_type))?,
                    resource_name: c.resource_name.to_string(),
                    pattern_type: AclPatternType::from_id(c.resource_pattern_type)
                        .ok_or_else(|| invalid("pattern type", c.resource_pattern_type))?,
                    principal: c.principal.to_string(),
                    host: c.host.to_string(),
                    operation: AclOperation::from_id(c.operation)
                        .ok_or_else(|| invalid("operation", c.operation))?,
                    permission: AclPermission::from_id(c.permission_type)
                        .ok_or_else(|| invalid("permission type", c.permission_type))?,
                })
            })
            .collect();
        let valid: Vec<AccessControlEntryRecord> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let decided = self
            .controller
            .submit_at(move |ctx| {
                let (records, outcomes) =
                    kmeta_metadata::controller::acls::create_acls(ctx.image, &valid);
                kmeta_metadata::controller::check_batch_size(records.len())?;
                Ok(ControllerResult::atomic(records, outcomes))
            })
            .await;
        let (mut outcomes, at) = match decided {
            Ok((o, at)) => (o.into_iter(), Some(at)),
            Err(e) => (vec![Some(e); parsed.len()].into_iter(), None),
        };
        let results = parsed
            .into_iter()
            .map(|p| match p {
                Err(e) => result(Some(e)),
                Ok(_) => result(outcomes.next().flatten()),
            })
            .collect();
        (CreateAclsResponse::default().with_results(results), at)
    }

    /// DeleteAcls: each filter removes the entries it matches; SECURITY_DISABLED without an
    /// authorizer.
    pub(super) async fn delete_acls(
        &self,
        r: DeleteAclsRequest,
    ) -> (DeleteAclsResponse, Option<u64>) {
        use delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
        let failed = |e: &ApiError| {
            DeleteAclsFilterResult::default()
                .with_error_code(e.code.code())
                .with_error_message(Some(sb(e.message.clone())))
        };
        if self.authorizer().is_none() {
            let e = ApiError::new(ErrorCode::SecurityDisabled, "No Authorizer is configured.");
            let results = r.filters.iter().map(|_| failed(&e)).collect();
            return (
                DeleteAclsResponse::default().with_filter_results(results),
                None,
            );
        }
        let filters: Vec<_> = r
            .filters
            .iter()
            .map(|f| {
                kmeta_metadata::acl::AclFilter::from_wire(
                    f.resource_type_filter,
                    f.resource_name_filter.as_deref(),
                    f.pattern_type_filter,
                    f.principal_filter.as_deref(),
                    f.host_filter.as_deref(),
                    f.operation,
                    f.permission_type,
                )
            })
            .collect();
        let count = filters.len();
        let decided = self
            .controller
            .submit_at(move |ctx| {
                let (records, outcomes) =
                    kmeta_metadata::controller::acls::delete_acls(ctx.image, &filters);
                kmeta_metadata::controller::check_batch_size(records.len())?;
                Ok(ControllerResult::atomic(records, outcomes))
            })
            .await;
        let (outcomes, at) = match decided {
            Ok((o, at)) => (o, Some(at)),
            Err(e) => (vec![Err(e); count], None),
        };
        let results = outcomes
            .iter()
            .map(|o| match o {
                Err(e) => failed(e),
                Ok(removed) => DeleteAclsFilterResult::default().with_matching_acls(
                    removed
                        .iter()
                        .map(|a| {
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(a.resource_type.id())
                                .with_resource_name(sb(a.resource_name.clone()))
                                .with_pattern_type(a.pattern_type.id())
                                .with_principal(sb(a.principal.clone()))
                                .with_host(sb(a.host.clone()))
                                .with_operation(a.operation.id())
                                .with_permission_type(a.permission.id())
                        })
                        .collect(),
                ),
            })
            .collect();
        (
            DeleteAclsResponse::default().with_filter_results(results),
            at,
        )
    }
}
