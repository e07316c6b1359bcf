//! `kmeta quorum describe --status|--replication`, like `kafka-metadata-quorum.sh`.

use super::{error_text, print_json, print_table, Admin, Output};
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::describe_quorum_response::ReplicaState;
use kafka_protocol::messages::{DescribeQuorumRequest, TopicName};
use serde_json::json;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `quorum describe`: `replication` chooses the per-replica view.
pub async fn describe(admin: &mut Admin, replication: bool, output: Output) -> Result<(), String> {
    let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(super::sb(
            crate::kafka::metadata_log::METADATA_TOPIC,
        )))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let r = admin.send(&request, 2).await?;
    if r.error_code != 0 {
        return Err(error_text(r.error_code, r.error_message.as_ref()));
    }
    let p = r
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("an empty DescribeQuorum response")?;
    let hw = p.high_watermark;
    let now = now_ms();
    let ago = |t: i64| if t < 0 { -1 } else { now - t };
    let lag = |s: &ReplicaState| {
        if s.log_end_offset < 0 {
            -1
        } else {
            (hw - s.log_end_offset).max(0)
        }
    };
    if !replication {
        let max_lag = p.current_voters.iter().map(lag).max().unwrap_or(0);
        let voters: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
        let observers: Vec<i32> = p.observers.iter().map(|v| v.replica_id.0).collect();
        match output {
            Output::Json => print_json(
                &json!({"leader_id": p.leader_id.0, "leader_epoch": p.leader_epoch,
                "high_watermark": hw, "max_follower_lag": max_lag, "current_voters": voters,
                "current_observers": observers}),
            ),
            Output::Table => {
                println!("LeaderId:          {}", p.leader_id.0);
                println!("LeaderEpoch:       {}", p.leader_epoch);
                println!("HighWatermark:     {hw}");
                println!("MaxFollowerLag:    {max_lag}");
                println!("CurrentVoters:     {voters:?}");
                println!("CurrentObservers:  {observers:?}");
            }
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (s, kind) in p
        .current_voters
        .iter()
        .map(|s| {
            (
                s,
                if s.replica_id == p.leader_id {
                    "Leader"
                } else {
                    "Follower"
                },
            )
        })
        .chain(p.observers.iter().map(|s| (s, "Observer")))
    {
        rows.push(vec![
            s.replica_id.0.to_string(),
            s.log_end_offset.to_string(),
            lag(s).to_string(),
            ago(s.last_fetch_timestamp).to_string(),
            ago(s.last_caught_up_timestamp).to_string(),
            kind.to_string(),
        ]);
        out.push(
            json!({"node_id": s.replica_id.0, "log_end_offset": s.log_end_offset, "lag": lag(s),
            "last_fetch_ms_ago": ago(s.last_fetch_timestamp),
            "last_caught_up_ms_ago": ago(s.last_caught_up_timestamp), "status": kind}),
        );
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(
            &[
                "NodeId",
                "LogEndOffset",
                "Lag",
                "LastFetchTimestamp(ms ago)",
                "LastCaughtUpTimestamp(ms ago)",
                "Status",
            ],
            &rows,
        ),
    }
    Ok(())
}
