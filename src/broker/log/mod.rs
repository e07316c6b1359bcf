//! One partition's log on a broker's disk: segments of Kafka v2 record batches kept exactly as
//! the producer sent them, in Kafka's layout (`<log.dir>/<topic>-<partition>/<base offset,
//! 20 digits>.log`), a leader-epoch checkpoint and the topic id (`partition.metadata`).
//!
//! - **Lazy**: a log has no directory or file until its first append, so a broker hosting many
//!   partitions opens nothing for those never written.
//! - **Indexes in memory**: the sparse offset index (one entry per `index.interval.bytes`),
//!   the time index, the epoch cache and the producer table are rebuilt from the batch headers
//!   when a log is opened; Kafka's `.index`/`.timeindex` files and producer snapshots are not
//!   written. Opening costs one header read per batch.
//! - **Recovery**: every batch of the last segment has its CRC checked at open; the first torn
//!   or corrupt batch and everything after it are cut off (a `kill -9` mid-write).
//! - **Flush**: nothing is fsynced unless `flush.messages` says so (Kafka's default too;
//!   durability comes from replication).
//!
//! Files are written with positioned writes under the owning partition's lock; every method
//! here is synchronous.

pub mod batch;
pub mod epochs;
pub mod producers;

use batch::{BatchHeader, HEADER_LEN};
use bytes::Bytes;
use epochs::EpochCache;
use producers::Producers;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Per-topic log settings (Kafka's keys; topic configs override the broker's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes` / `log.segment.bytes`.
    pub segment_bytes: u64,
    /// `flush.messages` / `log.flush.interval.messages`: fsync after this many messages.
    pub flush_messages: u64,
    /// `retention.ms` / `log.retention.ms` (-1: forever).
    pub retention_ms: i64,
    /// `retention.bytes` / `log.retention.bytes` (-1: no limit).
    pub retention_bytes: i64,
    /// `max.message.bytes` / `message.max.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type=LogAppendTime`.
    pub log_append_time: bool,
    /// `index.interval.bytes`.
    pub index_interval_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            flush_messages: u64::MAX,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            log_append_time: false,
            index_interval_bytes: 4096,
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

const PARTITION_METADATA: &str = "partition.metadata";

struct Segment {
    base: i64,
    path: PathBuf,
    file: File,
    size: u64,
    /// `(offset, position)` of batch starts, one per `index_interval_bytes`.
    index: Vec<(i64, u64)>,
    bytes_since_index: u64,
    /// `(max timestamp so far, offset of the batch holding it)`, increasing timestamps.
    times: Vec<(i64, i64)>,
    next_offset: i64,
}

impl Segment {
    fn file_name(base: i64) -> String {
        format!("{base:020}.log")
    }

    fn create(dir: &Path, base: i64) -> io::Result<Segment> {
        let path = dir.join(Self::file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Segment {
            base,
            path,
            file,
            size: 0,
            index: Vec::new(),
            bytes_since_index: u64::MAX,
            times: Vec::new(),
            next_offset: base,
        })
    }

    fn max_timestamp(&self) -> i64 {
        self.times.last().map_or(-1, |t| t.0)
    }

    fn note_batch(&mut self, h: &BatchHeader, pos: u64, interval: u64) {
        if self.bytes_since_index >= interval {
            self.index.push((h.base_offset, pos));
            self.bytes_since_index = 0;
        }
        self.bytes_since_index = self.bytes_since_index.saturating_add(h.size() as u64);
        if h.max_timestamp > self.max_timestamp() {
            self.times.push((h.max_timestamp, h.base_offset));
        }
        self.next_offset = h.next_offset();
    }

    fn header_at(&self, pos: u64) -> io::Result<BatchHeader> {
        let mut buf = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut buf, pos)?;
        BatchHeader::parse(&buf).ok_or_else(|| io::Error::other("short header"))
    }

    /// The position of the batch holding `offset` (or of the first batch after it).
    fn position_of(&self, offset: i64) -> io::Result<(u64, Option<BatchHeader>)> {
        let i = self.index.partition_point(|(o, _)| *o <= offset);
        let mut pos = if i == 0 { 0 } else { self.index[i - 1].1 };
        while pos < self.size {
            let h = self.header_at(pos)?;
            if h.last_offset() >= offset {
                return Ok((pos, Some(h)));
            }
            pos += h.size() as u64;
        }
        Ok((self.size, None))
    }
}

/// What an append wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The first offset.
    pub first_offset: i64,
    /// The last offset.
    pub last_offset: i64,
}

/// Why bytes were not appended.
#[derive(Debug)]
pub enum AppendError {
    /// A follower append not at the log end.
    UnexpectedOffset {
        /// The log end.
        expected: i64,
        /// The batch's base offset.
        got: i64,
    },
    /// Malformed or corrupt batches.
    Corrupt(String),
    /// The disk failed.
    Io(io::Error),
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> Self {
        AppendError::Io(e)
    }
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::UnexpectedOffset { expected, got } => {
                write!(f, "append at offset {got}, the log ends at {expected}")
            }
            AppendError::Corrupt(why) => write!(f, "corrupt batch: {why}"),
            AppendError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A partition's log.
pub struct PartitionLog {
    /// Boxed (no spare capacity) and the settings shared: a broker keeps one log per hosted
    /// replica, most of them empty.
    dir: Box<Path>,
    topic_id: uuid::Uuid,
    config: std::sync::Arc<LogConfig>,
    /// Oldest first; empty until the first append.
    segments: Vec<Segment>,
    log_start: i64,
    log_end: i64,
    epochs: EpochCache,
    producers: Producers,
    unflushed: u64,
}

impl PartitionLog {
    /// An empty log that creates `dir` on its first append, for a caller that knows `dir`
    /// does not exist: nothing is looked up on disk.
    pub fn empty(
        dir: PathBuf,
        topic_id: uuid::Uuid,
        config: impl Into<std::sync::Arc<LogConfig>>,
    ) -> Self {
        PartitionLog {
            dir: dir.into_boxed_path(),
            topic_id,
            config: config.into(),
            segments: Vec::new(),
            log_start: 0,
            log_end: 0,
            epochs: EpochCache::default(),
            producers: Producers::default(),
            unflushed: 0,
        }
    }

    /// Opens the log in `dir` if it exists (recovering a torn tail), or prepares an empty one
    /// that creates `dir` on its first append. A directory left by another topic of the same
    /// name (another topic id) is deleted.
    pub fn open(
        dir: PathBuf,
        topic_id: uuid::Uuid,
        config: impl Into<std::sync::Arc<LogConfig>>,
    ) -> io::Result<Self> {
        let mut log = PartitionLog::empty(dir, topic_id, config);
        if !log.dir.exists() {
            return Ok(log);
        }
        let owner = std::fs::read_to_string(log.dir.join(PARTITION_METADATA)).unwrap_or_default();
        if !owner.contains(&topic_id.to_string()) {
            tracing::info!(dir = %log.dir.display(), "removing the log of a deleted topic");
            std::fs::remove_dir_all(&log.dir)?;
            return Ok(log);
        }
        let mut bases: Vec<i64> = Vec::new();
        for entry in std::fs::read_dir(&log.dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        let checkpoint = EpochCache::load(&log.dir).unwrap_or_default();
        for (i, base) in bases.iter().enumerate() {
            let path = log.dir.join(Segment::file_name(*base));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let mut seg = Segment {
                base: *base,
                path,
                file,
                size,
                index: Vec::new(),
                bytes_since_index: u64::MAX,
                times: Vec::new(),
                next_offset: *base,
            };
            let last = i + 1 == bases.len();
            log.scan(&mut seg, last)?;
            log.segments.push(seg);
        }
        log.log_start = log.segments.first().map_or(0, |s| s.base);
        log.log_end = log.segments.last().map_or(0, |s| s.next_offset);
        // Entries written at elections (no batch carries them) come from the checkpoint.
        for (e, o) in checkpoint.entries() {
            if *o <= log.log_end && *e > log.epochs.latest_epoch() {
                log.epochs.assign(*e, *o);
            }
        }
        log.epochs.truncate_from_end(log.log_end + 1);
        log.epochs.truncate_from_start(log.log_start);
        log.epochs.store(&log.dir)?;
        Ok(log)
    }

    /// Reads the headers of one segment (checking every CRC in the last one), rebuilding the
    /// indexes, epochs and producers; cuts a torn tail off the last segment.
    fn scan(&mut self, seg: &mut Segment, last: bool) -> io::Result<()> {
        let mut pos = 0u64;
        let mut body = Vec::new();
        while pos < seg.size {
            let valid = match seg.header_at(pos) {
                Ok(h)
                    if h.magic == 2
                        && h.size() >= HEADER_LEN
                        && pos + h.size() as u64 <= seg.size =>
                {
                    if last {
                        body.resize(h.size(), 0);
                        seg.file.read_exact_at(&mut body, pos)?;
                        batch::crc_ok(&body).then_some(h)
                    } else {
                        Some(h)
                    }
                }
                _ => None,
            };
            let Some(h) = valid.filter(|h| h.base_offset >= seg.next_offset) else {
                tracing::warn!(
                    segment = %seg.path.display(),
                    position = pos,
                    cut = seg.size - pos,
                    "truncating a torn or corrupt tail"
                );
                seg.file.set_len(pos)?;
                seg.size = pos;
                break;
            };
            seg.note_batch(&h, pos, self.config.index_interval_bytes);
            self.epochs.assign(h.leader_epoch, h.base_offset);
            self.producers.update(&h, h.max_timestamp);
            pos += h.size() as u64;
        }
        Ok(())
    }

    /// Rebuilds the producer table from every batch header (after a truncation).
    fn reload_producers(&mut self) -> io::Result<()> {
        let mut producers = Producers::default();
        for seg in &self.segments {
            let mut pos = 0;
            while pos < seg.size {
                let h = seg.header_at(pos)?;
                producers.update(&h, h.max_timestamp);
                pos += h.size() as u64;
            }
        }
        self.producers = producers;
        Ok(())
    }

    /// The first offset in the log.
    pub fn log_start(&self) -> i64 {
        self.log_start
    }

    /// The offset after the last batch (LEO).
    pub fn log_end(&self) -> i64 {
        self.log_end
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// The segment count.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The epoch cache.
    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// The producer table.
    pub fn producers(&self) -> &Producers {
        &self.producers
    }

    /// The settings in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings (a topic config changed); they apply from the next append.
    pub fn set_config(&mut self, config: std::sync::Arc<LogConfig>) {
        self.config = config;
    }

    /// Records that `epoch` starts at `offset` (a new leader, before it writes anything).
    pub fn assign_epoch(&mut self, epoch: i32, offset: i64) -> io::Result<()> {
        if self.epochs.assign(epoch, offset) && !self.segments.is_empty() {
            self.epochs.store(&self.dir)?;
        }
        Ok(())
    }

    fn materialize(&mut self) -> io::Result<()> {
        if !self.segments.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(
            &self.dir.join(PARTITION_METADATA),
            format!("version: 0\ntopic_id: {}\n", self.topic_id).as_bytes(),
        )?;
        self.segments
            .push(Segment::create(&self.dir, self.log_end)?);
        self.log_start = self.log_end;
        self.epochs.store(&self.dir)?;
        Ok(())
    }

    /// Appends whole, validated batches whose offsets are already set and start at the log
    /// end (a leader after assigning offsets, or a follower copying the leader).
    pub fn append(&mut self, bytes: &[u8]) -> Result<Appended, AppendError> {
        let batches = batch::split(bytes).map_err(|e| AppendError::Corrupt(format!("{e:?}")))?;
        let Some(first) = batches.first().map(|b| b.1) else {
            return Ok(Appended {
                first_offset: self.log_end,
                last_offset: self.log_end - 1,
            });
        };
        if first.base_offset != self.log_end {
            return Err(AppendError::UnexpectedOffset {
                expected: self.log_end,
                got: first.base_offset,
            });
        }
        let mut expect = self.log_end;
        for (at, h) in &batches {
            if h.base_offset != expect || h.last_offset_delta < 0 {
                return Err(AppendError::Corrupt(format!(
                    "batch at offset {} where {expect} was expected",
                    h.base_offset
                )));
            }
            if !batch::crc_ok(&bytes[*at..*at + h.size()]) {
                return Err(AppendError::Corrupt(format!(
                    "CRC mismatch in the batch at offset {}",
                    h.base_offset
                )));
            }
            expect = h.next_offset();
        }
        self.materialize()?;
        let roll = {
            let active = self.segments.last().expect("materialized");
            active.size > 0 && active.size + bytes.len() as u64 > self.config.segment_bytes
        };
        if roll {
            if self.config.flush_messages != u64::MAX {
                self.segments
                    .last()
                    .expect("materialized")
                    .file
                    .sync_data()?;
            }
            let seg = Segment::create(&self.dir, self.log_end)?;
            self.segments.push(seg);
        }
        let interval = self.config.index_interval_bytes;
        let active = self.segments.last_mut().expect("materialized");
        active.file.write_all_at(bytes, active.size)?;
        let start = active.size;
        active.size += bytes.len() as u64;
        let mut epochs_changed = false;
        let mut messages = 0u64;
        for (at, h) in &batches {
            active.note_batch(h, start + *at as u64, interval);
            epochs_changed |= self.epochs.assign(h.leader_epoch, h.base_offset);
            self.producers.update(h, h.max_timestamp);
            messages += h.records_count.max(0) as u64;
        }
        self.log_end = expect;
        if epochs_changed {
            self.epochs.store(&self.dir)?;
        }
        self.unflushed += messages;
        if self.unflushed >= self.config.flush_messages {
            self.flush()?;
        }
        Ok(Appended {
            first_offset: first.base_offset,
            last_offset: expect - 1,
        })
    }

    /// fsyncs the active segment.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(s) = self.segments.last() {
            s.file.sync_data()?;
        }
        self.unflushed = 0;
        Ok(())
    }

    /// Whole batches from the one holding `from`, each starting below `upper`, up to
    /// `max_bytes` (but at least one batch when `min_one`). Empty at or past `upper`.
    pub fn read(
        &self,
        from: i64,
        max_bytes: usize,
        upper: i64,
        min_one: bool,
    ) -> io::Result<Bytes> {
        if from >= upper || from >= self.log_end || self.segments.is_empty() {
            return Ok(Bytes::new());
        }
        let i = self.segments.partition_point(|s| s.base <= from).max(1) - 1;
        let seg = &self.segments[i];
        let (start, first) = seg.position_of(from)?;
        let Some(h) = first else {
            // `from` is past this segment: the next one starts at it.
            return match self.segments.get(i + 1) {
                Some(next) => self.read(next.base, max_bytes, upper, min_one),
                None => Ok(Bytes::new()),
            };
        };
        // One read covering up to `max_bytes` (at least the first batch when `min_one`),
        // then whole batches cut from it: no read per batch header.
        let mut want = max_bytes as u64;
        if min_one {
            want = want.max(h.size() as u64);
        }
        let want = want.min(seg.size - start) as usize;
        let mut out = vec![0u8; want];
        seg.file.read_exact_at(&mut out, start)?;
        let mut end = 0usize;
        while end < out.len() {
            let Some(next) = BatchHeader::parse(&out[end..]) else {
                break;
            };
            if next.base_offset >= upper || end + next.size() > out.len() {
                break;
            }
            end += next.size();
        }
        out.truncate(end);
        Ok(Bytes::from(out))
    }

    /// Removes everything at or after `offset` (a follower whose history diverged). A batch
    /// spanning `offset` goes whole.
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<()> {
        if offset >= self.log_end {
            // Nothing to cut but epochs starting here (an election entry with no records).
            if self.epochs.truncate_from_end(offset) && !self.segments.is_empty() {
                self.epochs.store(&self.dir)?;
            }
            return Ok(());
        }
        if offset <= self.log_start {
            return self.truncate_fully_and_start_at(offset.max(self.log_start));
        }
        while self.segments.len() > 1 && self.segments.last().expect("nonempty").base >= offset {
            let s = self.segments.pop().expect("nonempty");
            std::fs::remove_file(&s.path)?;
        }
        let interval = self.config.index_interval_bytes;
        let seg = self.segments.last_mut().expect("offset > log start");
        let (pos, _) = seg.position_of(offset)?;
        seg.file.set_len(pos)?;
        seg.size = pos;
        // Rebuild the segment's in-memory state from the headers left.
        seg.index.clear();
        seg.times.clear();
        seg.bytes_since_index = u64::MAX;
        seg.next_offset = seg.base;
        let mut at = 0;
        while at < pos {
            let h = seg.header_at(at)?;
            seg.note_batch(&h, at, interval);
            at += h.size() as u64;
        }
        let next = seg.next_offset;
        self.log_end = next;
        if self.epochs.truncate_from_end(self.log_end) {
            self.epochs.store(&self.dir)?;
        }
        self.reload_producers()
    }

    /// Deletes every batch and restarts the log at `offset` (a follower behind the leader's
    /// log start, or truncated below its own).
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> io::Result<()> {
        for s in self.segments.drain(..) {
            std::fs::remove_file(&s.path)?;
        }
        self.log_start = offset;
        self.log_end = offset;
        self.epochs = EpochCache::default();
        self.producers = Producers::default();
        if self.dir.exists() {
            self.segments.push(Segment::create(&self.dir, offset)?);
            self.epochs.store(&self.dir)?;
        }
        Ok(())
    }

    /// Moves the log start up to `offset` (≤ the HW; the leader's retention, or a follower
    /// adopting the leader's), deleting segments wholly below it.
    pub fn advance_log_start(&mut self, offset: i64) -> io::Result<()> {
        if offset <= self.log_start {
            return Ok(());
        }
        if offset >= self.log_end {
            return self.truncate_fully_and_start_at(offset);
        }
        while self.segments.len() > 1 && self.segments[1].base <= offset {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path)?;
        }
        self.log_start = offset;
        if self.epochs.truncate_from_start(offset) {
            self.epochs.store(&self.dir)?;
        }
        Ok(())
    }

    /// Retention: deletes the oldest segments, never the active one nor any holding offsets
    /// at or above `high_watermark`, while they are older than `retention.ms` (by their
    /// largest timestamp) or the log is larger than `retention.bytes`. Returns the segments
    /// deleted.
    pub fn enforce_retention(&mut self, high_watermark: i64, now_ms: i64) -> io::Result<usize> {
        let mut deleted = 0;
        let mut size = self.size_bytes() as i64;
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            let upper = self.segments[1].base;
            if upper > high_watermark {
                break;
            }
            let by_bytes = self.config.retention_bytes >= 0
                && size - s.size as i64 >= self.config.retention_bytes;
            let by_time = self.config.retention_ms >= 0
                && now_ms - s.max_timestamp() > self.config.retention_ms;
            if !(by_bytes || by_time) {
                break;
            }
            size -= s.size as i64;
            self.advance_log_start(upper)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// ListOffsets by timestamp, at batch granularity: the base offset of the first batch
    /// whose largest timestamp is ≥ `ts`, with that timestamp (Kafka finds the record inside
    /// the batch; records are not decoded here). `None` when no batch is that late.
    pub fn offset_for_timestamp(&self, ts: i64) -> io::Result<Option<(i64, i64)>> {
        for seg in self.segments.iter().filter(|s| s.max_timestamp() >= ts) {
            let mut pos = 0;
            while pos < seg.size {
                let h = seg.header_at(pos)?;
                if h.max_timestamp >= ts {
                    return Ok(Some((h.base_offset.max(self.log_start), h.max_timestamp)));
                }
                pos += h.size() as u64;
            }
        }
        Ok(None)
    }

    /// The offset and timestamp of the batch with the largest timestamp (ListOffsets -3).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.segments
            .iter()
            .filter_map(|s| s.times.last().map(|(t, o)| (*o, *t)))
            .max_by_key(|(o, t)| (*t, -*o))
    }

    /// Deletes the log's directory (the partition moved away or its topic was deleted).
    pub fn delete(&mut self) -> io::Result<()> {
        self.segments.clear();
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
