//! `kmeta elect-leaders --election-type preferred|unclean (--all-topic-partitions | --topic T --partition P)`.

use super::{error_text, print_json, print_table, sb, Admin, Output};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{ElectLeadersRequest, TopicName};
use serde_json::json;

/// Runs an election; `partition = None` with a topic means every partition of it.
pub async fn elect(
    admin: &mut Admin,
    unclean: bool,
    topic: Option<&str>,
    partition: Option<i32>,
    output: Output,
) -> Result<(), String> {
    let targets = match topic {
        None => None,
        Some(t) => {
            let parts = match partition {
                Some(p) => vec![p],
                None => {
                    let md = admin.metadata(Some(&[t.to_string()])).await?;
                    let topic = md.topics.first().ok_or("an empty Metadata response")?;
                    if topic.error_code != 0 {
                        return Err(format!("{t}: {}", error_text(topic.error_code, None)));
                    }
                    topic.partitions.iter().map(|p| p.partition_index).collect()
                }
            };
            Some(vec![TopicPartitions::default()
                .with_topic(TopicName(sb(t)))
                .with_partitions(parts)])
        }
    };
    let r = admin
        .send(
            &ElectLeadersRequest::default()
                .with_election_type(if unclean { 1 } else { 0 })
                .with_topic_partitions(targets)
                .with_timeout_ms(30_000),
            2,
        )
        .await?;
    if r.error_code != 0 {
        return Err(error_text(r.error_code, None));
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut failed = 0;
    for t in &r.replica_election_results {
        for p in &t.partition_result {
            // ELECTION_NOT_NEEDED (84) is not a failure: the leader is already the one asked for.
            let outcome = match p.error_code {
                0 => "elected".to_string(),
                84 => "not needed".to_string(),
                c => {
                    failed += 1;
                    error_text(c, p.error_message.as_ref())
                }
            };
            rows.push(vec![
                t.topic.0.to_string(),
                p.partition_id.to_string(),
                outcome.clone(),
            ]);
            out.push(json!({"topic": t.topic.0.to_string(), "partition": p.partition_id, "outcome": outcome}));
        }
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(&["TOPIC", "PARTITION", "OUTCOME"], &rows),
    }
    if failed > 0 {
        return Err(format!("{failed} election(s) failed"));
    }
    Ok(())
}
