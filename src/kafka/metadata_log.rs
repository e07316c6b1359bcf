//! How committed metadata entries travel from controllers to brokers inside Kafka Fetch
//! responses (`docs/PROTOCOL.md`): one record per Raft entry in a v2 record batch, the
//! record's offset the entry's index (its metadata offset) and its value the entry's records
//! in their versioned encoding ([`crate::raft::state_machine::encode_batch`]).

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The metadata log's topic name, as in KRaft.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Encodes `(offset, encoded entry)` pairs as one record batch.
pub fn encode_entries(entries: &[(u64, Bytes)]) -> Result<Bytes, String> {
    let Some(base) = entries.first().map(|(o, _)| *o as i64) else {
        return Ok(Bytes::new());
    };
    let records: Vec<Record> = entries
        .iter()
        .map(|(offset, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: *offset as i64,
            // The encoder starts a new batch whenever `offset - sequence` changes.
            sequence: (*offset as i64 - base) as i32,
            timestamp: 0,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("encoding metadata records: {e:#}"))?;
    Ok(out.freeze())
}

/// Decodes what [`encode_entries`] wrote.
pub fn decode_entries(mut bytes: Bytes) -> Result<Vec<(u64, Bytes)>, String> {
    let sets = RecordBatchDecoder::decode_all(&mut bytes)
        .map_err(|e| format!("decoding metadata records: {e:#}"))?;
    let mut out = Vec::new();
    for set in sets {
        for record in set.records {
            if record.offset < 0 {
                return Err(format!("a metadata record at offset {}", record.offset));
            }
            out.push((record.offset as u64, record.value.unwrap_or_default()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_a_record_batch_with_gaps_in_offsets() {
        let entries = vec![
            (3, Bytes::from_static(b"a")),
            (4, Bytes::from_static(b"bb")),
            (9, Bytes::from_static(b"")),
        ];
        let encoded = encode_entries(&entries).unwrap();
        assert_eq!(decode_entries(encoded).unwrap(), entries);
        assert!(decode_entries(encode_entries(&[]).unwrap())
            .unwrap()
            .is_empty());
    }
}
