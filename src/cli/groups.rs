//! `kmeta groups list|describe|delete|reset-offsets`, in the habit of
//! `kafka-consumer-groups.sh`: group requests go to the group's coordinator (FindCoordinator),
//! log end offsets come from each partition's leader (ListOffsets).

use super::{error_text, print_json, print_table, sb, topic_name, Admin, Output};
use crate::kafka::consumer_protocol::assigned_partitions;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest,
    ListOffsetsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Connects to the coordinator of `group`, as every group request must.
async fn coordinator(admin: &mut Admin, group: &str) -> Result<(i32, Admin), String> {
    let (id, addr) = admin.group_coordinator(group).await?;
    Ok((id, admin.connect_like(&addr).await?))
}

/// `host:port` of every broker in Metadata, by id.
async fn brokers(admin: &mut Admin) -> Result<BTreeMap<i32, String>, String> {
    let md = admin.metadata(Some(&[])).await?;
    Ok(md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", &*b.host, b.port)))
        .collect())
}

/// `groups list`: every broker's groups (each broker lists those it coordinates).
pub async fn list(admin: &mut Admin, output: Output) -> Result<(), String> {
    let mut rows: Vec<(String, String, String, i32)> = Vec::new();
    for (id, addr) in brokers(admin).await? {
        let mut b = admin.connect_like(&addr).await?;
        let r = b.send(&ListGroupsRequest::default(), 4).await?;
        if r.error_code != 0 {
            return Err(format!("broker {id}: {}", error_text(r.error_code, None)));
        }
        for g in r.groups {
            rows.push((
                g.group_id.0.to_string(),
                g.group_state.to_string(),
                g.protocol_type.to_string(),
                id,
            ));
        }
    }
    rows.sort();
    match output {
        Output::Json => print_json(&json!(rows
            .iter()
            .map(
                |(g, s, t, c)| json!({"group": g, "state": s, "protocol_type": t, "coordinator": c})
            )
            .collect::<Vec<_>>())),
        Output::Table => print_table(
            &["GROUP", "STATE", "PROTOCOL TYPE", "COORDINATOR"],
            &rows
                .iter()
                .map(|(g, s, t, c)| vec![g.clone(), s.clone(), t.clone(), c.to_string()])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// A group's state and members: `(state, [(member id, client id, host, assigned)])`.
type Members = (String, Vec<(String, String, String, Vec<(String, i32)>)>);

async fn describe_members(c: &mut Admin, group: &str) -> Result<Members, String> {
    let r = c
        .send(
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(sb(group))]),
            5,
        )
        .await?;
    let g = r.groups.first().ok_or("an empty DescribeGroups response")?;
    if g.error_code != 0 {
        return Err(format!(
            "cannot describe group {group}: {}",
            error_text(g.error_code, g.error_message.as_ref())
        ));
    }
    let members = g
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.client_id.to_string(),
                m.client_host.to_string(),
                assigned_partitions(&m.member_assignment),
            )
        })
        .collect();
    Ok((g.group_state.to_string(), members))
}

/// Committed offsets of `group`, by `(topic, partition)`.
async fn committed(c: &mut Admin, group: &str) -> Result<BTreeMap<(String, i32), i64>, String> {
    let r = c
        .send(
            &OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(sb(group)))
                .with_topics(None)]),
            8,
        )
        .await?;
    let g = r.groups.first().ok_or("an empty OffsetFetch response")?;
    if g.error_code != 0 {
        return Err(format!(
            "cannot fetch offsets of {group}: {}",
            error_text(g.error_code, None)
        ));
    }
    Ok(g.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.committed_offset >= 0)
                .map(move |p| {
                    (
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    )
                })
        })
        .collect())
}

/// ListOffsets of `partitions` at `timestamp` (-1 latest, -2 earliest), asked of each
/// partition's leader.
async fn list_offsets(
    admin: &mut Admin,
    partitions: &BTreeSet<(String, i32)>,
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let topics: Vec<String> = partitions
        .iter()
        .map(|(t, _)| t.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let md = admin.metadata(Some(&topics)).await?;
    let addrs: BTreeMap<i32, String> = md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", &*b.host, b.port)))
        .collect();
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for t in &md.topics {
        let name = topic_name(t);
        for p in &t.partitions {
            if partitions.contains(&(name.clone(), p.partition_index)) {
                by_leader
                    .entry(p.leader_id.0)
                    .or_default()
                    .push((name.clone(), p.partition_index));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (leader, parts) in by_leader {
        let addr = addrs
            .get(&leader)
            .ok_or_else(|| format!("partition {}-{} has no leader", parts[0].0, parts[0].1))?;
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &parts {
            topics.entry(t).or_default().push(*p);
        }
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(sb(*t)))
                            .with_partitions(
                                ps.iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(*p)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let r = admin.connect_like(addr).await?.send(&request, 5).await?;
        for t in r.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "ListOffsets of {}-{}: {}",
                        &*t.name.0,
                        p.partition_index,
                        error_text(p.error_code, None)
                    ));
                }
                out.insert((t.name.0.to_string(), p.partition_index), p.offset);
            }
        }
    }
    Ok(out)
}

/// `groups describe`: members, assignment, committed offset, log end and lag per partition.
pub async fn describe(admin: &mut Admin, group: &str, output: Output) -> Result<(), String> {
    let (coordinator_id, mut c) = coordinator(admin, group).await?;
    let (state, members) = describe_members(&mut c, group).await?;
    let offsets = committed(&mut c, group).await?;
    let mut partitions: BTreeSet<(String, i32)> = offsets.keys().cloned().collect();
    let mut owner: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for tp in &m.3 {
            partitions.insert(tp.clone());
            owner.insert(tp.clone(), i);
        }
    }
    let ends = list_offsets(admin, &partitions, -1).await?;
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for tp in &partitions {
        let current = offsets.get(tp).copied();
        let end = ends.get(tp).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => Some((e - c).max(0)),
            (None, Some(e)) => Some(e),
            _ => None,
        };
        let m = owner.get(tp).map(|i| &members[*i]);
        let dash = || "-".to_string();
        rows.push(vec![
            group.to_string(),
            tp.0.clone(),
            tp.1.to_string(),
            current.map_or_else(dash, |v| v.to_string()),
            end.map_or_else(dash, |v| v.to_string()),
            lag.map_or_else(dash, |v| v.to_string()),
            m.map_or_else(dash, |m| m.0.clone()),
            m.map_or_else(dash, |m| m.2.clone()),
            m.map_or_else(dash, |m| m.1.clone()),
        ]);
        json_rows.push(
            json!({"topic": tp.0, "partition": tp.1, "current_offset": current,
            "log_end_offset": end, "lag": lag, "member_id": m.map(|m| &m.0),
            "host": m.map(|m| &m.2), "client_id": m.map(|m| &m.1)}),
        );
    }
    match output {
        Output::Json => print_json(&json!({"group": group, "state": state,
            "coordinator": coordinator_id, "members": members.len(), "partitions": json_rows})),
        Output::Table => {
            println!(
                "Group {group} is {state} with {} member(s), coordinator {coordinator_id}.",
                members.len()
            );
            print_table(
                &[
                    "GROUP",
                    "TOPIC",
                    "PARTITION",
                    "CURRENT-OFFSET",
                    "LOG-END-OFFSET",
                    "LAG",
                    "CONSUMER-ID",
                    "HOST",
                    "CLIENT-ID",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// `groups delete`: only a group without members can be deleted (NON_EMPTY_GROUP).
pub async fn delete(admin: &mut Admin, group: &str, output: Output) -> Result<(), String> {
    let (_, mut c) = coordinator(admin, group).await?;
    let r = c
        .send(
            &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(sb(group))]),
            2,
        )
        .await?;
    let result = r.results.first().ok_or("an empty DeleteGroups response")?;
    if result.error_code != 0 {
        return Err(format!(
            "cannot delete group {group}: {}",
            error_text(result.error_code, None)
        ));
    }
    match output {
        Output::Json => print_json(&json!({"group": group, "deleted": true})),
        Output::Table => println!("Deleted group {group}."),
    }
    Ok(())
}

/// Where `reset-offsets` moves each partition.
#[derive(Clone, Copy, Debug)]
pub enum ResetTo {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// An absolute offset (clamped into the log).
    Offset(i64),
    /// The committed offset plus this (clamped into the log).
    Shift(i64),
}

/// `groups reset-offsets`: plans new committed offsets for `topics` (`topic` or
/// `topic:0,2`; empty with `all_topics` for every partition the group has committed), prints
/// the plan, and commits it with `execute`. The group must have no members.
pub async fn reset_offsets(
    admin: &mut Admin,
    group: &str,
    topics: &[String],
    all_topics: bool,
    to: ResetTo,
    execute: bool,
    output: Output,
) -> Result<(), String> {
    let (_, mut c) = coordinator(admin, group).await?;
    let (state, members) = match describe_members(&mut c, group).await {
        Ok(d) => d,
        // A group that has never committed can still be given offsets.
        Err(e) if e.contains("GroupIdNotFound") => ("Dead".into(), Vec::new()),
        Err(e) => return Err(e),
    };
    if !members.is_empty() {
        return Err(format!(
            "assignments can only be reset if the group '{group}' is inactive, but the current state is {state}"
        ));
    }
    let current = committed(&mut c, group).await?;
    let mut partitions: BTreeSet<(String, i32)> = BTreeSet::new();
    if all_topics {
        partitions.extend(current.keys().cloned());
    }
    for spec in topics {
        let (topic, list) = match spec.split_once(':') {
            Some((t, l)) => (t, Some(l)),
            None => (spec.as_str(), None),
        };
        let md = admin.metadata(Some(&[topic.to_string()])).await?;
        let t = md.topics.first().ok_or("an empty Metadata response")?;
        if t.error_code != 0 {
            return Err(format!("topic {topic}: {}", error_text(t.error_code, None)));
        }
        let known: BTreeSet<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        match list {
            None => partitions.extend(known.iter().map(|p| (topic.to_string(), *p))),
            Some(l) => {
                for p in l.split(',') {
                    let p: i32 = p
                        .trim()
                        .parse()
                        .map_err(|_| format!("--topic {spec}: {p:?} is not a partition"))?;
                    if !known.contains(&p) {
                        return Err(format!("topic {topic} has no partition {p}"));
                    }
                    partitions.insert((topic.to_string(), p));
                }
            }
        }
    }
    if partitions.is_empty() {
        return Err(
            "nothing to reset: name --topic, or --all-topics for a group with offsets".into(),
        );
    }
    let earliest = list_offsets(admin, &partitions, -2).await?;
    let latest = list_offsets(admin, &partitions, -1).await?;
    let mut plan = Vec::new();
    for tp in &partitions {
        let (lo, hi) = (earliest[tp], latest[tp]);
        let target = match to {
            ResetTo::Earliest => lo,
            ResetTo::Latest => hi,
            ResetTo::Offset(o) => o,
            ResetTo::Shift(d) => current.get(tp).copied().unwrap_or(lo).saturating_add(d),
        };
        plan.push((tp.clone(), target.clamp(lo, hi)));
    }
    if execute {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for ((t, p), o) in &plan {
            by_topic.entry(t).or_default().push((*p, *o));
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(sb(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(
                by_topic
                    .iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(sb(*t)))
                            .with_partitions(
                                ps.iter()
                                    .map(|(p, o)| {
                                        OffsetCommitRequestPartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(*o)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let r = c.send(&request, 8).await?;
        for t in &r.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "committing {}-{}: {}",
                        &*t.name.0,
                        p.partition_index,
                        error_text(p.error_code, None)
                    ));
                }
            }
        }
    }
    match output {
        Output::Json => print_json(&json!({"group": group, "executed": execute,
            "offsets": plan.iter().map(|((t, p), o)| json!({"topic": t, "partition": p,
            "new_offset": o})).collect::<Vec<_>>()})),
        Output::Table => {
            print_table(
                &["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
                &plan
                    .iter()
                    .map(|((t, p), o)| {
                        vec![group.to_string(), t.clone(), p.to_string(), o.to_string()]
                    })
                    .collect::<Vec<_>>(),
            );
            if !execute {
                println!("Dry run: nothing was committed (add --execute).");
            }
        }
    }
    Ok(())
}
