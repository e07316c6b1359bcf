//! `kmeta brokers list`: id, endpoint, rack, state, epoch and heartbeat age of every broker.

use super::{print_json, print_table, Admin, Output};
use crate::broker::api::{BROKER_EPOCH_TAG, CONTROLLED_SHUTDOWN_TAG};
use kafka_protocol::messages::{DescribeClusterRequest, DescribeQuorumRequest};
use serde_json::json;
use std::collections::BTreeMap;

/// Lists the brokers (fenced ones included).
pub async fn list(admin: &mut Admin, output: Output) -> Result<(), String> {
    let cluster = admin
        .send(
            &DescribeClusterRequest::default().with_include_fenced_brokers(true),
            2,
        )
        .await?;
    // Heartbeat ages come from the active controller's view of the brokers (its observers).
    let quorum = admin.send(&DescribeQuorumRequest::default(), 2).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ages: BTreeMap<i32, i64> = quorum
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .flat_map(|p| p.observers.iter())
        .filter(|o| o.last_fetch_timestamp >= 0)
        .map(|o| (o.replica_id.0, now - o.last_fetch_timestamp))
        .collect();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut brokers: Vec<_> = cluster.brokers.iter().collect();
    brokers.sort_by_key(|b| b.broker_id.0);
    for b in brokers {
        let epoch = b
            .unknown_tagged_fields
            .get(&BROKER_EPOCH_TAG)
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(-1, i64::from_be_bytes);
        let shutting_down = b
            .unknown_tagged_fields
            .get(&CONTROLLED_SHUTDOWN_TAG)
            .is_some_and(|v| v.first() == Some(&1));
        let state = if shutting_down {
            "controlled shutdown"
        } else if b.is_fenced {
            "fenced"
        } else {
            "active"
        };
        let age = ages.get(&b.broker_id.0).copied();
        let endpoint = format!("{}:{}", &*b.host, b.port);
        let rack = b.rack.as_ref().map(|r| r.to_string());
        rows.push(vec![
            b.broker_id.0.to_string(),
            endpoint.clone(),
            rack.clone().unwrap_or_else(|| "-".into()),
            state.to_string(),
            epoch.to_string(),
            age.map_or("-".into(), |a| format!("{a} ms")),
        ]);
        out.push(
            json!({"id": b.broker_id.0, "endpoint": endpoint, "rack": rack, "state": state,
            "epoch": epoch, "last_heartbeat_ms_ago": age}),
        );
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(
            &["ID", "ENDPOINT", "RACK", "STATE", "EPOCH", "LAST HEARTBEAT"],
            &rows,
        ),
    }
    Ok(())
}
