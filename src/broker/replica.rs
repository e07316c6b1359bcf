//! The ISR duties of a partition leader (Kafka's `Partition.maybeShrinkIsr`/`maybeExpandIsr`
//! and `AlterPartitionManager`): every `replica.lag.time.max.ms / 2` ask each led partition
//! for an ISR change (a shrink is found only this way), and whenever follower fetches say
//! followers may have caught up, ask just those partitions (all of them when a broker
//! registered or its fencing changed: a caught-up follower may have become eligible); send the changes in
//! AlterPartition requests to the active controller, one after another while more are
//! waiting. A partition keeps at most one change in flight; the controller's answer (or new
//! metadata) settles it.

use super::partition::LeaderAndIsr;
use super::BrokerState;
use kafka_protocol::messages::alter_partition_request::{
    BrokerState as WireBroker, PartitionData, TopicData,
};
use kafka_protocol::messages::{AlterPartitionRequest, BrokerId as WireBrokerId};
use kmeta_metadata::{BrokerId, ErrorCode, TopicIdPartition};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Partitions in one AlterPartition request, at most (the controller writes one request's
/// changes as one entry, of at most 10,000 records).
pub const MAX_PARTITIONS_PER_REQUEST: usize = 5_000;

/// Partitions asked for an ISR change between two yields to the runtime. The periodic look
/// at every hosted partition found no change at all on a healthy broker, so it went through
/// all of them (a million, about a second) without a yield, every 15 s, and whatever waited
/// on that runtime worker waited with it: one change's propagation to every broker, timed
/// 3,000 times at 1M, took up to 965 ms.
const ASKED_PER_SLICE: usize = 2_000;

fn error_code(code: i16) -> ErrorCode {
    [
        ErrorCode::OperationNotAttempted,
        ErrorCode::IneligibleReplica,
        ErrorCode::FencedLeaderEpoch,
        ErrorCode::InvalidUpdateVersion,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::UnknownTopicId,
        ErrorCode::InvalidRequest,
        ErrorCode::NewLeaderElected,
        ErrorCode::NotController,
    ]
    .into_iter()
    .find(|e| e.code() == code)
    .unwrap_or(ErrorCode::UnknownServerError)
}

/// Runs the ISR duties until the task is dropped.
pub async fn run(state: Arc<BrokerState>) {
    let replicas = state.replicas.clone();
    let period = Duration::from_millis((replicas.config().replica_lag_ms / 2).max(50) as u64);
    let mut tick = tokio::time::interval(period);
    // Partitions still to ask, beyond one request's worth: all of them after the periodic
    // tick, else the candidates noted since.
    let mut waiting: Vec<Arc<super::partition::Partition>> = Vec::new();
    loop {
        if waiting.is_empty() {
            let everything = tokio::select! {
                _ = replicas.isr_check.notified() => replicas.take_ask_every_isr(),
                _ = tick.tick() => true,
            };
            if everything {
                // Every led partition is asked: the noted ones are among them.
                replicas.isr_candidates();
                waiting = replicas.not_followed();
            }
        }
        let epoch = state.broker_epoch();
        if epoch < 0 || state.is_fenced() {
            waiting.clear();
            continue;
        }
        let published = state.image();
        let image = &published.image;
        let eligible = |r: i32| image.is_active_broker(BrokerId(r));
        let mut proposals = Vec::new();
        waiting.extend(replicas.isr_candidates());
        let mut asked = 0;
        while proposals.len() < MAX_PARTITIONS_PER_REQUEST && asked < ASKED_PER_SLICE {
            let Some(p) = waiting.pop() else { break };
            asked += 1;
            if let Some(proposal) = p.isr_proposal(eligible) {
                proposals.push((p, proposal));
            }
        }
        if proposals.is_empty() {
            if !waiting.is_empty() {
                tokio::task::yield_now().await;
            }
            continue;
        }
        let mut topics: BTreeMap<uuid::Uuid, Vec<PartitionData>> = BTreeMap::new();
        for (_, prop) in &proposals {
            let isr = prop
                .isr
                .iter()
                .map(|b| {
                    WireBroker::default()
                        .with_broker_id(WireBrokerId(*b))
                        .with_broker_epoch(
                            image.broker(BrokerId(*b)).map_or(-1, |r| r.broker_epoch.0),
                        )
                })
                .collect();
            topics.entry(prop.tp.topic_id).or_default().push(
                PartitionData::default()
                    .with_partition_index(prop.tp.partition)
                    .with_leader_epoch(prop.leader_epoch)
                    .with_new_isr_with_epochs(isr)
                    .with_leader_recovery_state(0)
                    .with_partition_epoch(prop.partition_epoch),
            );
        }
        let request = AlterPartitionRequest::default()
            .with_broker_id(WireBrokerId(state.node_id))
            .with_broker_epoch(epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(id, parts)| {
                        TopicData::default()
                            .with_topic_id(id)
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        let by_tp: BTreeMap<TopicIdPartition, _> = proposals
            .iter()
            .map(|(p, prop)| (prop.tp, p.clone()))
            .collect();
        let mut hw_changed = false;
        match state.controllers.send(&request, 3).await {
            Ok(r) if r.error_code == 0 => {
                for t in &r.topics {
                    for part in &t.partitions {
                        let tp = TopicIdPartition {
                            topic_id: t.topic_id,
                            partition: part.partition_index,
                        };
                        let Some(p) = by_tp.get(&tp) else { continue };
                        let result = if part.error_code == 0 {
                            Ok(LeaderAndIsr {
                                leader: part.leader_id.0,
                                leader_epoch: part.leader_epoch,
                                partition_epoch: part.partition_epoch,
                                replicas: Default::default(),
                                isr: part.isr.iter().map(|b| b.0).collect(),
                            })
                        } else {
                            tracing::debug!(
                                ?tp,
                                error_code = part.error_code,
                                "ISR change refused"
                            );
                            Err(error_code(part.error_code))
                        };
                        hw_changed |= p.isr_result(result);
                    }
                }
                tracing::debug!(partitions = proposals.len(), "ISR changes sent");
            }
            other => {
                match other {
                    Ok(r) => {
                        if r.error_code == ErrorCode::NotController.code() {
                            state.controllers.forget_leader();
                        }
                        tracing::debug!(error_code = r.error_code, "AlterPartition refused")
                    }
                    Err(e) => tracing::debug!(error = %e, "AlterPartition failed"),
                }
                // Nothing was decided: drop the pending changes and propose again later.
                for (p, _) in &proposals {
                    p.isr_result(Err(ErrorCode::OperationNotAttempted));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                for (p, _) in &proposals {
                    replicas.note_isr_candidate(p);
                }
            }
        }
        if hw_changed {
            replicas.changed();
        }
    }
}
