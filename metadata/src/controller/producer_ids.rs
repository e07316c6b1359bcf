//! Producer-id blocks for idempotent producers (Kafka's `ProducerIdControlManager`): a broker
//! asks for a block (AllocateProducerIds), the controller hands out the next
//! [`BLOCK_SIZE`] ids and records where the next block starts, so no id is ever given twice,
//! across brokers, restarts and controller failovers.

use super::ControllerResult;
use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::{MetadataRecord, ProducerIdsRecord};
use crate::types::{BrokerEpoch, BrokerId};

/// Ids per block (Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const BLOCK_SIZE: i64 = 1000;

/// AllocateProducerIds: the first id and the length of the block given to `broker`.
pub fn allocate_producer_ids(
    image: &MetadataImage,
    broker: BrokerId,
    broker_epoch: BrokerEpoch,
) -> Result<ControllerResult<(i64, i32)>, ApiError> {
    let registered = image.broker(broker).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BrokerIdNotRegistered,
            format!("Broker ID {broker} is not currently registered"),
        )
    })?;
    if registered.broker_epoch != broker_epoch {
        return Err(ApiError::new(
            ErrorCode::StaleBrokerEpoch,
            format!(
                "Expected broker epoch {}, got {}",
                registered.broker_epoch.0, broker_epoch.0
            ),
        ));
    }
    let start = image.next_producer_id();
    let next = start.checked_add(BLOCK_SIZE).ok_or_else(|| {
        ApiError::new(ErrorCode::UnknownServerError, "producer ids are exhausted")
    })?;
    Ok(ControllerResult::atomic(
        vec![MetadataRecord::ProducerIds(ProducerIdsRecord {
            broker_id: broker,
            broker_epoch,
            next_producer_id: next,
        })],
        (start, BLOCK_SIZE as i32),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RegisterBrokerRecord;
    use crate::types::LogOffset;

    fn registered_image(broker: BrokerId) -> (MetadataImage, BrokerEpoch) {
        let mut image = MetadataImage::new();
        let epoch = BrokerEpoch(5);
        let record = MetadataRecord::RegisterBroker(RegisterBrokerRecord {
            broker_id: broker,
            incarnation_id: uuid::Uuid::nil(),
            broker_epoch: epoch,
            listeners: Vec::new(),
            features: Vec::new(),
            rack: None,
            fenced: false,
            in_controlled_shutdown: false,
        });
        image.replay(LogOffset(5), &record).unwrap();
        (image, epoch)
    }

    #[test]
    fn blocks_never_overlap_and_stale_epochs_are_refused() {
        let (mut image, epoch) = registered_image(BrokerId(1));
        let first = allocate_producer_ids(&image, BrokerId(1), epoch).unwrap();
        assert_eq!(first.reply, (0, 1000));
        for r in &first.records {
            image.replay(LogOffset(100), r).unwrap();
        }
        let second = allocate_producer_ids(&image, BrokerId(1), epoch).unwrap();
        assert_eq!(second.reply, (1000, 1000));
        let stale = allocate_producer_ids(&image, BrokerId(1), BrokerEpoch(epoch.0 - 1));
        assert_eq!(stale.err().unwrap().code, ErrorCode::StaleBrokerEpoch);
        let unknown = allocate_producer_ids(&image, BrokerId(9), epoch);
        assert_eq!(
            unknown.err().unwrap().code,
            ErrorCode::BrokerIdNotRegistered
        );
    }
}
