//! Kafka's v2 record batch, read from its 61-byte header (`DefaultRecordBatch`).
//!
//! Brokers keep batches exactly as producers sent them. The header alone is enough to assign
//! offsets, check the CRC, track producer sequences and serve fetches; records are never
//! decoded. `baseOffset` (bytes 0-7) and `partitionLeaderEpoch` (12-15) lie outside the CRC,
//! so the leader patches them in place.

/// Bytes of a v2 batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` ends: a batch is `LOG_OVERHEAD + batchLength` bytes.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

/// Attribute bit 3: the batch carries LogAppendTime timestamps.
pub const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

/// The fields of a v2 batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The first offset (0 as a producer sends it).
    pub base_offset: i64,
    /// Bytes after the length field.
    pub batch_length: i32,
    /// The epoch of the leader that appended it.
    pub leader_epoch: i32,
    /// Must be 2.
    pub magic: i8,
    /// CRC-32C of bytes 21.. (attributes to the end).
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// `records - 1` for producer batches.
    pub last_offset_delta: i32,
    /// The first record's timestamp.
    pub base_timestamp: i64,
    /// The largest timestamp in the batch.
    pub max_timestamp: i64,
    /// -1 for a producer without idempotence.
    pub producer_id: i64,
    /// The producer's epoch.
    pub producer_epoch: i16,
    /// The first record's sequence number, or -1.
    pub base_sequence: i32,
    /// Records in the batch.
    pub records_count: i32,
}

fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N]
        .try_into()
        .expect("length checked by the caller")
}

impl BatchHeader {
    /// Parses a header from the first 61 bytes of `b`; `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < HEADER_LEN {
            return None;
        }
        Some(BatchHeader {
            base_offset: i64::from_be_bytes(be(b, 0)),
            batch_length: i32::from_be_bytes(be(b, 8)),
            leader_epoch: i32::from_be_bytes(be(b, 12)),
            magic: b[16] as i8,
            crc: u32::from_be_bytes(be(b, 17)),
            attributes: i16::from_be_bytes(be(b, 21)),
            last_offset_delta: i32::from_be_bytes(be(b, 23)),
            base_timestamp: i64::from_be_bytes(be(b, 27)),
            max_timestamp: i64::from_be_bytes(be(b, 35)),
            producer_id: i64::from_be_bytes(be(b, 43)),
            producer_epoch: i16::from_be_bytes(be(b, 51)),
            base_sequence: i32::from_be_bytes(be(b, 53)),
            records_count: i32::from_be_bytes(be(b, 57)),
        })
    }

    /// The whole batch's size in bytes (header included).
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// The last offset in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// The offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// The last sequence number (wrapping past `i32::MAX` to 0, as Kafka does).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        if last > i32::MAX as i64 {
            (last - i32::MAX as i64 - 1) as i32
        } else {
            last as i32
        }
    }

    /// A control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// A transactional batch.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// Compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & 0x07
    }

    /// True when a producer id is set (idempotent or transactional).
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
}

/// Whether the CRC of one whole batch matches its header.
pub fn crc_ok(batch: &[u8]) -> bool {
    match BatchHeader::parse(batch) {
        Some(h) if batch.len() == h.size() => crc32c::crc32c(&batch[CRC_START..]) == h.crc,
        _ => false,
    }
}

/// Sets `baseOffset` (outside the CRC).
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// Sets `partitionLeaderEpoch` (outside the CRC).
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as LogAppendTime with `now` as its max timestamp, and recomputes the CRC
/// (both fields are inside it).
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = i16::from_be_bytes(be(batch, 21)) | TIMESTAMP_TYPE_BIT;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Why a run of bytes is not a sequence of whole v2 batches.
#[derive(Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A batch with a magic other than 2.
    Magic(i8),
    /// A batch header or body that runs past the end (a torn write, or a bad length).
    Truncated,
    /// A batch length too small to hold a header.
    BadLength(i32),
}

/// The `(start, header)` of each whole batch in `bytes`, in order.
pub fn split(bytes: &[u8]) -> Result<Vec<(usize, BatchHeader)>, SplitError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(h) = BatchHeader::parse(&bytes[at..]) else {
            return Err(SplitError::Truncated);
        };
        if h.magic != 2 {
            return Err(SplitError::Magic(h.magic));
        }
        if (h.batch_length as usize) < HEADER_LEN - LOG_OVERHEAD || h.batch_length < 0 {
            return Err(SplitError::BadLength(h.batch_length));
        }
        if at + h.size() > bytes.len() {
            return Err(SplitError::Truncated);
        }
        out.push((at, h));
        at += h.size();
    }
    Ok(out)
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// The record values of one whole uncompressed batch (`None` for a null value), or `None` if
/// it is compressed or malformed. For checks and tools: the broker never decodes records.
pub fn values(batch: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let h = BatchHeader::parse(batch)?;
    if h.compression() != 0 || batch.len() < h.size() {
        return None;
    }
    let body = &batch[HEADER_LEN..h.size()];
    let mut at = 0;
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    for _ in 0..h.records_count {
        let len = read_varint(body, &mut at)?;
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        let rec = body.get(at..end)?;
        let mut r = 1; // attributes
        read_varint(rec, &mut r)?; // timestamp delta
        read_varint(rec, &mut r)?; // offset delta
        let klen = read_varint(rec, &mut r)?;
        if klen > 0 {
            r += klen as usize;
        }
        let vlen = read_varint(rec, &mut r)?;
        if vlen < 0 {
            out.push(None);
        } else {
            out.push(Some(rec.get(r..r + vlen as usize)?.to_vec()));
        }
        at = end;
    }
    Some(out)
}

/// Builds an uncompressed v2 batch holding `values` (keys null, no headers) with CreateTime
/// `timestamp_ms`: for kmeta's own producer (benchmarks) and tests.
pub fn build(values: &[&[u8]], timestamp_ms: i64, producer: Option<(i64, i16, i32)>) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, v: i64) {
        // Kafka's VARINT: zigzag, then unsigned LEB128.
        crate::kafka::wire::put_unsigned_varint(out, ((v << 1) ^ (v >> 63)) as u64);
    }
    let mut records = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut body = Vec::with_capacity(v.len() + 8);
        body.push(0); // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, i as i64); // offset delta
        varint(&mut body, -1); // null key
        varint(&mut body, v.len() as i64);
        body.extend_from_slice(v);
        varint(&mut body, 0); // no headers
        varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let (pid, pepoch, seq) = producer.unwrap_or((-1, -1, -1));
    let mut b = Vec::with_capacity(HEADER_LEN + records.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&((values.len() as i32) - 1).to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&pepoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(values.len() as i32).to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patching_offset_and_epoch_keeps_the_crc_valid_and_a_flipped_body_byte_breaks_it() {
        let mut b = build(&[b"a", b"bc"], 1_000, None);
        assert!(crc_ok(&b));
        set_base_offset(&mut b, 42);
        set_leader_epoch(&mut b, 7);
        assert!(crc_ok(&b));
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.leader_epoch),
            (42, 43, 7)
        );
        set_log_append_time(&mut b, 5_000);
        assert!(crc_ok(&b));
        assert_eq!(BatchHeader::parse(&b).unwrap().max_timestamp, 5_000);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(!crc_ok(&b));
    }

    #[test]
    fn split_finds_whole_batches_and_reports_a_torn_tail() {
        let mut two = build(&[b"x"], 1, None);
        two.extend(build(&[b"y", b"z"], 2, None));
        let parts = split(&two).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1.records_count, 2);
        assert_eq!(split(&two[..two.len() - 1]), Err(SplitError::Truncated));
        let mut old = build(&[b"x"], 1, None);
        old[16] = 1;
        assert_eq!(split(&old), Err(SplitError::Magic(1)));
    }

    #[test]
    fn values_decode_what_build_encodes() {
        let b = build(&[b"one", b"", b"three"], 9, None);
        let v = values(&b).unwrap();
        assert_eq!(
            v,
            vec![
                Some(b"one".to_vec()),
                Some(Vec::new()),
                Some(b"three".to_vec())
            ]
        );
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let mut b = build(&[b"a", b"b", b"c"], 1, Some((5, 0, i32::MAX - 1)));
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.last_sequence(), 0);
        b[53..57].copy_from_slice(&3i32.to_be_bytes());
        assert_eq!(BatchHeader::parse(&b).unwrap().last_sequence(), 5);
    }
}
