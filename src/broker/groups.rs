//! Consumer-group requests of a broker: FindCoordinator, the classic membership protocol
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) on this broker's [`Coordinator`], and the
//! offset and admin requests (OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! DeleteGroups, OffsetDelete).
//!
//! A group's coordinator is [`MetadataImage::group_coordinator`]: any other broker answers
//! NOT_COORDINATOR. Writes (commits, deletions) are checked against the group's membership
//! here, then forwarded to the active controller with this broker's id in the envelope; the
//! controller refuses them if this broker no longer coordinates the group in its image.
//!
//! [`Coordinator`]: super::coordinator::Coordinator

use super::api::BrokerService;
use super::group::JoinRequest;
use crate::controller::kafka_api::offset_commit_response;
use crate::kafka::wire::{encode_response, sb};
use bytes::Bytes;
use kafka_protocol::messages::*;
use kmeta_metadata::{ErrorCode, MetadataImage, TopicIdPartition};

/// Committed offsets of one topic: `(partition, offset, leader epoch, metadata)`.
type TopicOffsets = (String, Vec<(i32, i64, i32, String)>);

impl BrokerService {
    /// Ok when this broker coordinates `group` in `image`; else the error Kafka gives.
    pub(super) fn coordinates(&self, image: &MetadataImage, group: &str) -> Result<(), ErrorCode> {
        if group.is_empty() {
            return Err(ErrorCode::InvalidGroupId);
        }
        match image.group_coordinator(group) {
            Some(b) if b.0 == self.state().node_id => Ok(()),
            Some(_) => Err(ErrorCode::NotCoordinator),
            None => Err(ErrorCode::CoordinatorNotAvailable),
        }
    }

    fn coordinates_now(&self, group: &str) -> Result<(), ErrorCode> {
        self.coordinates(&self.state().image().image, group)
    }

    pub(super) fn find_coordinator(
        &self,
        r: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        use find_coordinator_response::Coordinator;
        let published = self.state().image();
        let image = &published.image;
        let one = |key: &str| -> Coordinator {
            let c = Coordinator::default().with_key(sb(key));
            let failed = |code: ErrorCode, message: &str| {
                Coordinator::default()
                    .with_key(sb(key))
                    .with_error_code(code.code())
                    .with_error_message(Some(sb(message)))
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
            };
            if r.key_type != 0 {
                return failed(
                    ErrorCode::CoordinatorNotAvailable,
                    "kmeta coordinates consumer groups only (no transactions)",
                );
            }
            let endpoint = image.group_coordinator(key).and_then(|id| {
                let b = image.broker(id)?;
                let l = b.listeners.iter().find(|l| l.name == self.listener())?;
                Some((id.0, l.host.clone(), l.port))
            });
            match endpoint {
                Some((id, host, port)) => c
                    .with_node_id(BrokerId(id))
                    .with_host(sb(host))
                    .with_port(port as i32),
                None => failed(
                    ErrorCode::CoordinatorNotAvailable,
                    "no active broker to coordinate the group",
                ),
            }
        };
        if version >= 4 {
            FindCoordinatorResponse::default()
                .with_coordinators(r.coordinator_keys.iter().map(|k| one(k)).collect())
        } else {
            let c = one(&r.key);
            FindCoordinatorResponse::default()
                .with_error_code(c.error_code)
                .with_error_message(c.error_message)
                .with_node_id(c.node_id)
                .with_host(c.host)
                .with_port(c.port)
        }
    }

    pub(super) async fn join_group(
        &self,
        r: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let failed = |code: ErrorCode| {
            JoinGroupResponse::default()
                .with_error_code(code.code())
                .with_generation_id(-1)
                .with_member_id(r.member_id.clone())
        };
        if let Err(e) = self.coordinates_now(&r.group_id) {
            return failed(e);
        }
        let request = JoinRequest {
            member_id: r.member_id.to_string(),
            instance_id: r.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: if version >= 1 {
                r.rebalance_timeout_ms
            } else {
                r.session_timeout_ms
            },
            protocol_type: r.protocol_type.to_string(),
            protocols: r
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let result = self.state().groups.join(&r.group_id, request).await;
        let protocol_type = (result.error == ErrorCode::None).then(|| r.protocol_type.clone());
        JoinGroupResponse::default()
            .with_error_code(result.error.code())
            .with_generation_id(result.generation)
            .with_protocol_type(protocol_type)
            .with_protocol_name(result.protocol.map(sb))
            .with_leader(sb(result.leader))
            .with_member_id(sb(result.member_id))
            .with_members(
                result
                    .members
                    .into_iter()
                    .map(|(id, instance, metadata)| {
                        join_group_response::JoinGroupResponseMember::default()
                            .with_member_id(sb(id))
                            .with_group_instance_id(instance.map(sb))
                            .with_metadata(metadata)
                    })
                    .collect(),
            )
    }

    pub(super) async fn sync_group(&self, r: SyncGroupRequest) -> SyncGroupResponse {
        if let Err(e) = self.coordinates_now(&r.group_id) {
            return SyncGroupResponse::default().with_error_code(e.code());
        }
        let groups = &self.state().groups;
        if let (Some(t), Some(d)) = (&r.protocol_type, groups.describe(&r.group_id)) {
            if !d.protocol_type.is_empty() && **t != *d.protocol_type {
                return SyncGroupResponse::default()
                    .with_error_code(ErrorCode::InconsistentGroupProtocol.code());
            }
        }
        let assignments = r
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        let result = groups
            .sync(
                &r.group_id,
                &r.member_id,
                r.group_instance_id.as_deref(),
                r.generation_id,
                assignments,
            )
            .await;
        match result {
            Ok(assignment) => {
                let d = groups.describe(&r.group_id);
                SyncGroupResponse::default()
                    .with_protocol_type(d.as_ref().map(|d| sb(d.protocol_type.clone())))
                    .with_protocol_name(d.map(|d| sb(d.protocol)))
                    .with_assignment(assignment)
            }
            Err(e) => SyncGroupResponse::default().with_error_code(e.code()),
        }
    }

    pub(super) fn heartbeat(&self, r: HeartbeatRequest) -> HeartbeatResponse {
        let code = match self.coordinates_now(&r.group_id) {
            Err(e) => e,
            Ok(()) => self.state().groups.heartbeat(
                &r.group_id,
                &r.member_id,
                r.group_instance_id.as_deref(),
                r.generation_id,
            ),
        };
        HeartbeatResponse::default().with_error_code(code.code())
    }

    pub(super) fn leave_group(&self, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        use leave_group_response::MemberResponse;
        if let Err(e) = self.coordinates_now(&r.group_id) {
            return LeaveGroupResponse::default().with_error_code(e.code());
        }
        let members: Vec<(String, Option<String>)> = if version >= 3 {
            r.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(r.member_id.to_string(), None)]
        };
        let codes = self.state().groups.leave(&r.group_id, &members);
        if version >= 3 {
            LeaveGroupResponse::default().with_members(
                members
                    .into_iter()
                    .zip(codes)
                    .map(|((id, instance), code)| {
                        MemberResponse::default()
                            .with_member_id(sb(id))
                            .with_group_instance_id(instance.map(sb))
                            .with_error_code(code.code())
                    })
                    .collect(),
            )
        } else {
            LeaveGroupResponse::default().with_error_code(codes[0].code())
        }
    }

    /// Whether this broker coordinates the group and the commit's member and generation
    /// (or epoch) are the group's.
    fn commit_verdict(&self, r: &OffsetCommitRequest) -> Result<(), ErrorCode> {
        self.coordinates_now(&r.group_id).and_then(|()| {
            self.state().groups.validate_commit(
                &r.group_id,
                &r.member_id,
                r.group_instance_id.as_deref(),
                r.generation_id_or_member_epoch,
            )
        })
    }

    /// OffsetCommit: checked against the group's membership here, then written by the active
    /// controller.
    pub(super) async fn offset_commit(
        &self,
        r: OffsetCommitRequest,
        version: i16,
        caller: &super::authz::Caller,
    ) -> Result<OffsetCommitResponse, String> {
        if let Err(code) = self.commit_verdict(&r) {
            return Ok(offset_commit_response(&r, |_, _| code.code()));
        }
        self.forward_as_coordinator(&r, version, caller).await
    }

    /// OffsetCommit of a request nothing was taken out of: checked as [`offset_commit`]
    /// does, then forwarded as the client sent it (`raw`, header and all), and the
    /// controller's answer, encoded with the client's correlation id at the client's version,
    /// goes back as it is. Kafka's brokers forward a request's bytes the same way; this
    /// spares decoding and encoding the request and the answer once more each.
    ///
    /// [`offset_commit`]: Self::offset_commit
    pub(super) async fn offset_commit_as_sent(
        &self,
        r: &OffsetCommitRequest,
        raw: Bytes,
        correlation_id: i32,
        version: i16,
        caller: &super::authz::Caller,
    ) -> Result<Bytes, String> {
        if let Err(code) = self.commit_verdict(r) {
            let refused = offset_commit_response(r, |_, _| code.code());
            return encode_response(
                correlation_id,
                ApiKey::OffsetCommit,
                version,
                &refused.into(),
            );
        }
        let reply = self
            .forward(raw, Some(self.state().node_id), caller)
            .await?;
        // The answer must be this request's: the controller writes the forwarded header's
        // correlation id first.
        match reply.get(..4) {
            Some(id) if id == correlation_id.to_be_bytes() => Ok(reply),
            _ => Err("a forwarded OffsetCommit answered with another correlation id".into()),
        }
    }

    pub(super) fn offset_fetch(&self, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        use offset_fetch_response::*;
        let published = self.state().image();
        let image = &published.image;
        // (topic, partition) → (offset, leader epoch, metadata); -1 when nothing is committed.
        let lookup = |group: &str, asked: Option<Vec<(String, Vec<i32>)>>| -> Vec<TopicOffsets> {
            let offsets = image.group_offsets(group);
            let name_of = |tp: &TopicIdPartition| image.topic(&tp.topic_id).map(|t| t.name.clone());
            match asked {
                Some(topics) => topics
                    .into_iter()
                    .map(|(t, parts)| {
                        let id = image.topic_id(&t);
                        let rows = parts
                            .into_iter()
                            .map(|p| {
                                let v = id.and_then(|id| {
                                    offsets.and_then(|o| {
                                        o.get(&TopicIdPartition {
                                            topic_id: id,
                                            partition: p,
                                        })
                                    })
                                });
                                match v {
                                    Some(v) => (p, v.offset, v.leader_epoch, v.metadata.clone()),
                                    None => (p, -1, -1, String::new()),
                                }
                            })
                            .collect();
                        (t, rows)
                    })
                    .collect(),
                None => {
                    let mut out: Vec<TopicOffsets> = Vec::new();
                    for (tp, v) in offsets.into_iter().flat_map(|o| o.iter()) {
                        let Some(name) = name_of(tp) else { continue };
                        let row = (tp.partition, v.offset, v.leader_epoch, v.metadata.clone());
                        match out.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, rows)) => rows.push(row),
                            None => out.push((name, vec![row])),
                        }
                    }
                    out
                }
            }
        };
        if version >= 8 {
            let groups = r
                .groups
                .iter()
                .map(|g| {
                    if let Err(e) = self.coordinates(image, &g.group_id) {
                        return OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(e.code());
                    }
                    let asked = g.topics.as_ref().map(|ts| {
                        ts.iter()
                            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                            .collect()
                    });
                    let topics = lookup(&g.group_id.0, asked)
                        .into_iter()
                        .map(|(t, rows)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(sb(t)))
                                .with_partitions(
                                    rows.into_iter()
                                        .map(|(p, o, e, m)| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(o)
                                                .with_committed_leader_epoch(e)
                                                .with_metadata(Some(sb(m)))
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_topics(topics)
                })
                .collect();
            OffsetFetchResponse::default().with_groups(groups)
        } else {
            let asked: Option<Vec<(String, Vec<i32>)>> = r.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            if let Err(e) = self.coordinates(image, &r.group_id) {
                // v2+ carries the error at the top; v1 only per partition.
                let topics = asked
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(sb(t)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_error_code(e.code())
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                let out = OffsetFetchResponse::default().with_topics(topics);
                return if version >= 2 {
                    out.with_error_code(e.code())
                } else {
                    out
                };
            }
            let topics = lookup(&r.group_id.0, asked)
                .into_iter()
                .map(|(t, rows)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(sb(t)))
                        .with_partitions(
                            rows.into_iter()
                                .map(|(p, o, e, m)| {
                                    let mut part = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(o)
                                        .with_metadata(Some(sb(m)));
                                    if version >= 5 {
                                        part = part.with_committed_leader_epoch(e);
                                    }
                                    part
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
    }

    pub(super) fn list_groups(&self, r: ListGroupsRequest) -> ListGroupsResponse {
        use list_groups_response::ListedGroup;
        let published = self.state().image();
        let image = &published.image;
        // Groups with members here, then groups known only by their committed offsets.
        let mut groups: Vec<(String, &'static str, String)> = self.state().groups.list();
        groups.retain(|(id, _, _)| self.coordinates(image, id).is_ok());
        for g in image.groups() {
            if !groups.iter().any(|(id, _, _)| id == g) && self.coordinates(image, g).is_ok() {
                groups.push((g.to_string(), "Empty", "consumer".to_string()));
            }
        }
        groups.sort();
        let state_ok = |s: &str| {
            r.states_filter.is_empty() || r.states_filter.iter().any(|f| f.eq_ignore_ascii_case(s))
        };
        let type_ok = r.types_filter.is_empty()
            || r.types_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case("classic"));
        ListGroupsResponse::default().with_groups(
            groups
                .into_iter()
                .filter(|(_, state, _)| type_ok && state_ok(state))
                .map(|(id, state, protocol_type)| {
                    ListedGroup::default()
                        .with_group_id(GroupId(sb(id)))
                        .with_protocol_type(sb(protocol_type))
                        .with_group_state(sb(state))
                        .with_group_type(sb("classic"))
                })
                .collect(),
        )
    }

    pub(super) fn describe_groups(
        &self,
        r: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        use describe_groups_response::{DescribedGroup, DescribedGroupMember};
        let published = self.state().image();
        let image = &published.image;
        let groups = r
            .groups
            .iter()
            .map(|g| {
                let out = DescribedGroup::default().with_group_id(g.clone());
                if let Err(e) = self.coordinates(image, g) {
                    return out.with_error_code(e.code()).with_group_state(sb("Dead"));
                }
                if let Some(d) = self
                    .state()
                    .groups
                    .describe(g)
                    .filter(|d| !d.members.is_empty())
                {
                    return out
                        .with_group_state(sb(d.state.name()))
                        .with_protocol_type(sb(d.protocol_type))
                        .with_protocol_data(sb(d.protocol))
                        .with_members(
                            d.members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(sb(m.member_id))
                                        .with_group_instance_id(m.instance_id.map(sb))
                                        .with_client_id(sb(m.client_id))
                                        .with_client_host(sb(m.client_host))
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                })
                                .collect(),
                        );
                }
                if image.group_offsets(&g.0).is_some() {
                    out.with_group_state(sb("Empty"))
                        .with_protocol_type(sb("consumer"))
                } else if version >= 6 {
                    out.with_group_state(sb("Dead"))
                        .with_error_code(ErrorCode::GroupIdNotFound.code())
                        .with_error_message(Some(sb(format!("Group {} not found.", &*g.0))))
                } else {
                    out.with_group_state(sb("Dead"))
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    /// DeleteGroups: groups with members get NON_EMPTY_GROUP; the others' offsets are
    /// deleted by the active controller.
    pub(super) async fn delete_groups(
        &self,
        r: DeleteGroupsRequest,
        version: i16,
        caller: &super::authz::Caller,
    ) -> Result<DeleteGroupsResponse, String> {
        use delete_groups_response::DeletableGroupResult;
        let published = self.state().image();
        let image = &published.image;
        let groups = &self.state().groups;
        let mut results = Vec::new();
        let mut forwarded = Vec::new();
        for g in &r.groups_names {
            let verdict = self.coordinates(image, g).and_then(|()| {
                if groups.has_members(g) {
                    Err(ErrorCode::NonEmptyGroup)
                } else if image.group_offsets(g).is_none() && groups.describe(g).is_none() {
                    Err(ErrorCode::GroupIdNotFound)
                } else {
                    Ok(())
                }
            });
            match verdict {
                Ok(()) => forwarded.push(g.clone()),
                Err(e) => results.push(
                    DeletableGroupResult::default()
                        .with_group_id(g.clone())
                        .with_error_code(e.code()),
                ),
            }
        }
        if !forwarded.is_empty() {
            let request = DeleteGroupsRequest::default().with_groups_names(forwarded);
            let reply = self
                .forward_as_coordinator(&request, version, caller)
                .await?;
            for result in reply.results {
                if result.error_code == 0 {
                    groups.remove(&result.group_id);
                }
                results.push(result);
            }
        }
        Ok(DeleteGroupsResponse::default().with_results(results))
    }

    /// OffsetDelete: partitions of topics the group's members subscribe to get
    /// GROUP_SUBSCRIBED_TO_TOPIC; the rest are deleted by the active controller.
    pub(super) async fn offset_delete(
        &self,
        r: OffsetDeleteRequest,
        version: i16,
        caller: &super::authz::Caller,
    ) -> Result<OffsetDeleteResponse, String> {
        use offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
        let published = self.state().image();
        let image = &published.image;
        let groups = &self.state().groups;
        let verdict = self.coordinates(image, &r.group_id).and_then(|()| {
            if image.group_offsets(&r.group_id).is_none() && !groups.has_members(&r.group_id) {
                Err(ErrorCode::GroupIdNotFound)
            } else {
                Ok(())
            }
        });
        if let Err(e) = verdict {
            return Ok(OffsetDeleteResponse::default().with_error_code(e.code()));
        }
        let subscribed = groups.subscribed_topics(&r.group_id);
        let (held, free): (Vec<_>, Vec<_>) = r
            .topics
            .iter()
            .cloned()
            .partition(|t| subscribed.iter().any(|s| **s == *t.name.0));
        let mut topics: Vec<OffsetDeleteResponseTopic> = held
            .into_iter()
            .map(|t| {
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(ErrorCode::GroupSubscribedToTopic.code())
                            })
                            .collect(),
                    )
            })
            .collect();
        if !free.is_empty() {
            let request = OffsetDeleteRequest::default()
                .with_group_id(r.group_id.clone())
                .with_topics(free);
            let reply = self
                .forward_as_coordinator(&request, version, caller)
                .await?;
            if reply.error_code != 0 {
                return Ok(reply);
            }
            topics.extend(reply.topics);
        }
        Ok(OffsetDeleteResponse::default().with_topics(topics))
    }
}

/// The consumer-group APIs a broker serves itself (not relayed as they came).
pub fn is_group_write(key: ApiKey) -> bool {
    matches!(
        key,
        ApiKey::OffsetCommit | ApiKey::DeleteGroups | ApiKey::OffsetDelete
    )
}
