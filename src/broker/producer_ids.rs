//! Producer ids for idempotent producers (InitProducerId without a transactional id): served
//! from blocks the active controller hands out through the metadata log (AllocateProducerIds),
//! so no id is given twice across brokers or restarts. The next block is fetched once 90% of
//! the current one is used (Kafka's `RPCProducerIdManager`).

use super::BrokerState;
use kafka_protocol::messages::{AllocateProducerIdsRequest, BrokerId as WireBrokerId};
use kmeta_metadata::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// `[next, end)` of the block in use, and the one fetched ahead.
#[derive(Default)]
struct Blocks {
    start: i64,
    next: i64,
    end: i64,
    ahead: Option<(i64, i64)>,
    fetching: bool,
}

/// The broker's producer-id source.
#[derive(Default)]
pub struct ProducerIds {
    blocks: Mutex<Blocks>,
}

async fn allocate(state: &BrokerState) -> Result<(i64, i64), String> {
    let request = AllocateProducerIdsRequest::default()
        .with_broker_id(WireBrokerId(state.node_id))
        .with_broker_epoch(state.broker_epoch());
    let r = state
        .controllers
        .send(&request, 0)
        .await
        .map_err(|e| e.to_string())?;
    if r.error_code == ErrorCode::NotController.code() {
        state.controllers.forget_leader();
    }
    if r.error_code != 0 || r.producer_id_len <= 0 {
        return Err(format!("AllocateProducerIds refused ({})", r.error_code));
    }
    Ok((
        r.producer_id_start.0,
        r.producer_id_start.0 + r.producer_id_len as i64,
    ))
}

impl ProducerIds {
    /// A new producer id, or COORDINATOR_LOAD_IN_PROGRESS (retriable) while no block can be had.
    pub async fn next_id(&self, state: &Arc<BrokerState>) -> Result<i64, ErrorCode> {
        let mut b = self.blocks.lock().await;
        if b.next >= b.end {
            if let Some((next, end)) = b.ahead.take() {
                b.start = next;
                b.next = next;
                b.end = end;
            } else {
                match tokio::time::timeout(Duration::from_secs(5), allocate(state)).await {
                    Ok(Ok((next, end))) => {
                        b.start = next;
                        b.next = next;
                        b.end = end;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "no producer-id block");
                        return Err(ErrorCode::CoordinatorLoadInProgress);
                    }
                    Err(_) => return Err(ErrorCode::CoordinatorLoadInProgress),
                }
            }
        }
        let id = b.next;
        b.next += 1;
        let used_enough = (b.next - b.start) * 10 >= (b.end - b.start) * 9;
        if used_enough && b.ahead.is_none() && !b.fetching {
            b.fetching = true;
            let state = state.clone();
            tokio::spawn(async move {
                let fetched = allocate(&state).await;
                let ids = &state.producer_ids;
                let mut b = ids.blocks.lock().await;
                b.fetching = false;
                match fetched {
                    Ok(block) => b.ahead = Some(block),
                    Err(e) => tracing::debug!(error = %e, "prefetching producer ids failed"),
                }
            });
        }
        Ok(id)
    }
}
