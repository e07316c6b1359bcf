//! `kmeta topics create|list|describe|delete|alter`.

use super::{error_text, ids, print_json, print_table, sb, topic_name, Admin, Output};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, ListPartitionReassignmentsRequest, TopicName,
};
use serde_json::json;
use std::collections::BTreeMap;

/// `topics create`.
pub async fn create(
    admin: &mut Admin,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[String],
    output: Output,
) -> Result<(), String> {
    let mut cfgs = Vec::new();
    for c in configs {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--config {c:?}: expected key=value"))?;
        cfgs.push(
            CreatableTopicConfig::default()
                .with_name(sb(k.trim()))
                .with_value(Some(sb(v.trim()))),
        );
    }
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb(topic)))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(cfgs)]);
    let r = admin.send(&request, 7).await?;
    let t = r.topics.first().ok_or("an empty CreateTopics response")?;
    if t.error_code != 0 {
        return Err(format!(
            "cannot create {topic}: {}",
            error_text(t.error_code, t.error_message.as_ref())
        ));
    }
    match output {
        Output::Json => print_json(&json!({"topic": topic, "topic_id": t.topic_id.to_string(),
            "partitions": t.num_partitions, "replication_factor": t.replication_factor})),
        Output::Table => println!(
            "Created topic {topic} ({} partitions, replication factor {}).",
            t.num_partitions, t.replication_factor
        ),
    }
    Ok(())
}

/// `topics list`.
pub async fn list(admin: &mut Admin, output: Output) -> Result<(), String> {
    let md = admin.metadata(None).await?;
    let mut names: Vec<String> = md.topics.iter().map(topic_name).collect();
    names.sort();
    match output {
        Output::Json => print_json(&json!(names)),
        Output::Table => names.iter().for_each(|n| println!("{n}")),
    }
    Ok(())
}

/// `topics describe [--topic T]`: every partition's leader, replicas, ISR and reassignment.
pub async fn describe(
    admin: &mut Admin,
    topic: Option<&str>,
    output: Output,
) -> Result<(), String> {
    let wanted: Option<Vec<String>> = topic.map(|t| vec![t.to_string()]);
    let md = admin.metadata(wanted.as_deref()).await?;
    let ongoing = admin
        .send(
            &ListPartitionReassignmentsRequest::default().with_topics(None),
            0,
        )
        .await?;
    let mut moving: BTreeMap<(String, i32), (Vec<i32>, Vec<i32>)> = BTreeMap::new();
    for t in &ongoing.topics {
        for p in &t.partitions {
            moving.insert(
                (t.name.0.to_string(), p.partition_index),
                (
                    p.adding_replicas.iter().map(|b| b.0).collect(),
                    p.removing_replicas.iter().map(|b| b.0).collect(),
                ),
            );
        }
    }
    let mut topics: Vec<_> = md.topics.iter().collect();
    topics.sort_by_key(|t| topic_name(t));
    let mut out = Vec::new();
    let mut rows = Vec::new();
    for t in topics {
        let name = topic_name(t);
        if t.error_code != 0 {
            return Err(format!("{name}: {}", error_text(t.error_code, None)));
        }
        let mut parts: Vec<_> = t.partitions.iter().collect();
        parts.sort_by_key(|p| p.partition_index);
        let mut jparts = Vec::new();
        for p in parts {
            let replicas: Vec<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
            let isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
            let (adding, removing) = moving
                .get(&(name.clone(), p.partition_index))
                .cloned()
                .unwrap_or_default();
            let reassigning = !adding.is_empty() || !removing.is_empty();
            rows.push(vec![
                name.clone(),
                p.partition_index.to_string(),
                p.leader_id.0.to_string(),
                ids(&replicas),
                ids(&isr),
                if reassigning {
                    format!("adding {} removing {}", ids(&adding), ids(&removing))
                } else {
                    String::new()
                },
            ]);
            jparts.push(
                json!({"partition": p.partition_index, "leader": p.leader_id.0,
                "leader_epoch": p.leader_epoch, "replicas": replicas, "isr": isr,
                "adding_replicas": adding, "removing_replicas": removing}),
            );
        }
        let configs = topic_configs(admin, &name).await?;
        out.push(json!({"topic": name, "topic_id": t.topic_id.to_string(), "configs": configs, "partitions": jparts}));
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(
            &[
                "TOPIC",
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "ISR",
                "REASSIGNMENT",
            ],
            &rows,
        ),
    }
    Ok(())
}

/// A topic's configs that differ from the defaults.
async fn topic_configs(admin: &mut Admin, topic: &str) -> Result<BTreeMap<String, String>, String> {
    let r = admin
        .send(
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(sb(topic))
                    .with_configuration_keys(None),
            ]),
            4,
        )
        .await?;
    let res = r
        .results
        .first()
        .ok_or("an empty DescribeConfigs response")?;
    if res.error_code != 0 {
        return Err(format!(
            "{topic}: {}",
            error_text(res.error_code, res.error_message.as_ref())
        ));
    }
    Ok(res
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            )
        })
        .collect())
}

/// `topics delete --topic T`.
pub async fn delete(admin: &mut Admin, topic: &str, output: Output) -> Result<(), String> {
    let r = admin
        .send(
            &DeleteTopicsRequest::default()
                .with_topic_names(vec![TopicName(sb(topic))])
                .with_timeout_ms(30_000),
            3,
        )
        .await?;
    let t = r
        .responses
        .first()
        .ok_or("an empty DeleteTopics response")?;
    if t.error_code != 0 {
        return Err(format!(
            "cannot delete {topic}: {}",
            error_text(t.error_code, t.error_message.as_ref())
        ));
    }
    match output {
        Output::Json => print_json(&json!({"deleted": topic})),
        Output::Table => println!("Deleted topic {topic}."),
    }
    Ok(())
}

/// `topics alter --topic T [--partitions N] [--config k=v]... [--delete-config k]...`: adds
/// partitions and changes topic configs.
pub async fn alter(
    admin: &mut Admin,
    topic: &str,
    partitions: Option<i32>,
    set: &[String],
    delete: &[String],
    output: Output,
) -> Result<(), String> {
    if partitions.is_none() && set.is_empty() && delete.is_empty() {
        return Err("topics alter: give --partitions, --config or --delete-config".into());
    }
    if let Some(n) = partitions {
        let r = admin
            .send(
                &CreatePartitionsRequest::default()
                    .with_timeout_ms(30_000)
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(TopicName(sb(topic)))
                        .with_count(n)
                        .with_assignments(None)]),
                3,
            )
            .await?;
        let t = r
            .results
            .first()
            .ok_or("an empty CreatePartitions response")?;
        if t.error_code != 0 {
            return Err(format!(
                "cannot alter {topic}: {}",
                error_text(t.error_code, t.error_message.as_ref())
            ));
        }
    }
    if !set.is_empty() || !delete.is_empty() {
        let mut configs = Vec::new();
        for c in set {
            let (k, v) = c
                .split_once('=')
                .ok_or_else(|| format!("--config {c:?}: expected key=value"))?;
            configs.push(
                AlterableConfig::default()
                    .with_name(sb(k.trim()))
                    .with_config_operation(0)
                    .with_value(Some(sb(v.trim()))),
            );
        }
        for k in delete {
            configs.push(
                AlterableConfig::default()
                    .with_name(sb(k.trim()))
                    .with_config_operation(1),
            );
        }
        let r = admin
            .send(
                &IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(sb(topic))
                        .with_configs(configs),
                ]),
                1,
            )
            .await?;
        let res = r
            .responses
            .first()
            .ok_or("an empty IncrementalAlterConfigs response")?;
        if res.error_code != 0 {
            return Err(format!(
                "cannot alter {topic}: {}",
                error_text(res.error_code, res.error_message.as_ref())
            ));
        }
    }
    match output {
        Output::Json => print_json(
            &json!({"topic": topic, "partitions": partitions, "set": set, "deleted": delete}),
        ),
        Output::Table => println!("Altered topic {topic}."),
    }
    Ok(())
}
