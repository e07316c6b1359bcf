//! Idempotent producers' state in one partition: per producer id, its epoch and its last
//! five batches (Kafka's `ProducerStateEntry`, `NUM_BATCHES_TO_RETAIN`). Leaders check each
//! new batch against it; followers and recovery rebuild it from the batch headers, so a retry
//! after a failover is deduplicated by the new leader.

use super::batch::BatchHeader;
use kmeta_metadata::ErrorCode;
use std::collections::{BTreeMap, VecDeque};

/// Batches remembered per producer (the client limit on in-flight requests).
pub const BATCHES_RETAINED: usize = 5;

/// One appended batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    /// First sequence.
    pub first_seq: i32,
    /// Last sequence.
    pub last_seq: i32,
    /// First offset.
    pub first_offset: i64,
    /// Last offset.
    pub last_offset: i64,
    /// The batch's max timestamp (or the log-append time).
    pub timestamp: i64,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
}

/// What the leader does with a batch from an idempotent producer.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Append it.
    Append,
    /// A retry of a batch already in the log: answer with its offsets, append nothing.
    Duplicate(BatchMeta),
}

/// The producer table of one partition. Boxed, and only once an idempotent producer writes:
/// a broker keeps one per hosted replica, most never written by one.
#[derive(Clone, Debug, Default)]
pub struct Producers {
    // Boxed on purpose: one word where an empty map takes three, in every hosted replica.
    #[allow(clippy::box_collection)]
    entries: Option<Box<BTreeMap<i64, Entry>>>,
}

fn next_seq(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

impl Producers {
    /// Producers known.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    /// True when no producer is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kafka's validation order for a client batch: duplicate, older epoch, new epoch not at
    /// sequence 0, sequence gap. A producer with no state may start at any sequence.
    pub fn check(&self, h: &BatchHeader) -> Result<Check, ErrorCode> {
        if !h.has_producer_id() {
            return Ok(Check::Append);
        }
        let Some(e) = self.entries.as_ref().and_then(|e| e.get(&h.producer_id)) else {
            return Ok(Check::Append);
        };
        if h.producer_epoch == e.epoch {
            if let Some(b) = e
                .batches
                .iter()
                .find(|b| b.first_seq == h.base_sequence && b.last_seq == h.last_sequence())
            {
                return Ok(Check::Duplicate(*b));
            }
        }
        if h.producer_epoch < e.epoch {
            return Err(ErrorCode::InvalidProducerEpoch);
        }
        if h.producer_epoch != e.epoch {
            return if h.base_sequence == 0 {
                Ok(Check::Append)
            } else {
                Err(ErrorCode::OutOfOrderSequenceNumber)
            };
        }
        match e.batches.back() {
            Some(last) if h.base_sequence != next_seq(last.last_seq) => {
                Err(ErrorCode::OutOfOrderSequenceNumber)
            }
            _ => Ok(Check::Append),
        }
    }

    /// Records an appended batch (`h` carries its assigned offsets).
    pub fn update(&mut self, h: &BatchHeader, timestamp: i64) {
        if !h.has_producer_id() || h.is_control() {
            return;
        }
        let e = self
            .entries
            .get_or_insert_with(Default::default)
            .entry(h.producer_id)
            .or_default();
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        e.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            timestamp,
        });
        while e.batches.len() > BATCHES_RETAINED {
            e.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::{build, set_base_offset, BatchHeader};
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: usize, offset: i64) -> BatchHeader {
        let values: Vec<&[u8]> = (0..count).map(|_| b"v".as_slice()).collect();
        let mut b = build(&values, 1, Some((pid, epoch, seq)));
        set_base_offset(&mut b, offset);
        BatchHeader::parse(&b).unwrap()
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_and_a_gap_or_old_epoch_is_refused() {
        let mut p = Producers::default();
        let first = header(7, 0, 0, 2, 0);
        assert_eq!(p.check(&first), Ok(Check::Append));
        p.update(&first, 1);
        let second = header(7, 0, 2, 1, 2);
        assert_eq!(p.check(&second), Ok(Check::Append));
        p.update(&second, 1);
        match p.check(&header(7, 0, 0, 2, 0)) {
            Ok(Check::Duplicate(b)) => assert_eq!((b.first_offset, b.last_offset), (0, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.check(&header(7, 0, 5, 1, 0)),
            Err(ErrorCode::OutOfOrderSequenceNumber)
        );
        p.update(&header(7, 1, 0, 1, 3), 1);
        assert_eq!(
            p.check(&header(7, 0, 3, 1, 0)),
            Err(ErrorCode::InvalidProducerEpoch)
        );
        assert_eq!(
            p.check(&header(7, 2, 4, 1, 0)),
            Err(ErrorCode::OutOfOrderSequenceNumber)
        );
        assert_eq!(p.check(&header(8, 0, 99, 1, 0)), Ok(Check::Append));
    }
}
