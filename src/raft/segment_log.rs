//! `SegmentLog`: the durable, append-only file format under the Raft log store.
//!
//! Entries are opaque byte strings at consecutive indexes. They are stored in segment files
//! named after their first index (`00000000000000000001.log`); a segment is closed once it
//! passes `segment_bytes` and a new one begins. Each entry is one frame:
//!
//! ```text
//! [body_len: u32 LE][crc32: u32 LE over body][body = index: u64 LE ++ payload]
//! ```
//!
//! Durability: `append` writes a whole batch with one `write_all` and hands back the segment
//! file it wrote to; the caller flushes it (`sync_data`, one flush per batch however many
//! entries it holds, on a thread of its own in `log_store`). Truncation and segment deletion
//! fsync the file and the directory themselves.
//!
//! Preallocation: a segment file is written full of zeros to `segment_bytes`, and flushed,
//! before it takes entries. An append then overwrites blocks the file already has, so its
//! fdatasync flushes data only; appending past a file's end also changes its size, and ext4
//! commits that through its journal, shared by every process on the filesystem (measured in
//! `docs/BENCHMARKS.md`, issue 14). The zeros are written into a spare file
//! (`next-segment.*.zeros`, not a segment: its name does not end in `.log`) that is renamed
//! into place when a segment begins:
//! - a new, empty log writes its first spare while opening;
//! - a background thread writes the next one once the current segment is half full;
//! - a segment that begins while its spare is still being written begins empty instead (it
//!   grows as it is appended to): an append never waits for zeros;
//! - a spare left whole by an earlier run is used again; a partial one is deleted on open.
//!
//! A log opened only to be read ([`SegmentLog::open_read_only`], the metadata shell) writes
//! nothing at all: no spare, and a torn tail is skipped instead of cut.
//!
//! Crash safety: on open every frame is checked (length bound, checksum, consecutive index).
//! Where the frames end, the rest of the file must be zeros: what was never written. Anything
//! else after the last good frame of the last segment is a torn write from a crash: the file
//! is cut there and everything before it is kept (nothing after it was ever acknowledged,
//! because a batch is only acknowledged after its fdatasync). Cutting, like truncation,
//! leaves nothing but zeros (or the end of the file) after the last entry, so an old frame
//! can never reappear behind newer ones. A bad frame in an earlier, closed segment is real
//! corruption and opening fails with an error naming the file and position.
//!
//! Live entries are also kept in memory (the metadata log is bounded by snapshots, Kafka's
//! default 20 MiB between them), so reads never touch the disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FRAME_HEADER_BYTES: usize = 8;
const INDEX_BYTES: usize = 8;
/// The largest entry payload accepted (a Raft entry holds a batch of metadata records).
pub const MAX_ENTRY_BYTES: usize = 64 * 1024 * 1024;
/// Default size at which a segment is closed and a new one begun.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    len: u64,
}

#[derive(Clone, Debug)]
struct Stored {
    data: Arc<[u8]>,
    /// Which segment (by first index) and where in it the frame starts.
    segment: u64,
    position: u64,
}

/// A directory of segment files holding consecutive entries.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// The segment appended to, shared with whoever flushes its appends.
    active: Option<Arc<File>>,
    entries: BTreeMap<u64, Stored>,
    /// The next segment's file of zeros, if one is made or being made.
    spare: Option<Spare>,
    /// Opened only to be read: nothing is written, cut or preallocated.
    read_only: bool,
}

/// The file of zeros that becomes the next segment.
#[derive(Debug)]
enum Spare {
    /// A background thread is writing it.
    Zeroing(std::thread::JoinHandle<io::Result<PathBuf>>),
    /// Written and flushed.
    Ready(PathBuf),
}

const SPARE_PREFIX: &str = "next-segment.";
const SPARE_SUFFIX: &str = ".zeros";
/// Segments larger than this are not preallocated (the zeros would cost more than they save).
const MAX_PREALLOCATED_BYTES: u64 = 256 * 1024 * 1024;

/// A spare file name no other log in this process uses: a log dropped while its spare is
/// still being written leaves that thread writing into its own file, never into one a log
/// reopened on the same directory has made a segment.
fn spare_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{SPARE_PREFIX}{}-{n}{SPARE_SUFFIX}", std::process::id())
}

/// Writes `path` full of `bytes` zeros and flushes it.
fn write_zeros(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let chunk = vec![0u8; bytes.min(1 << 20) as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.log")
}

fn corrupt(path: &Path, position: u64, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: corrupt entry at byte {position}: {why}",
            path.display()
        ),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: impl Into<PathBuf>, segment_bytes: u64) -> io::Result<SegmentLog> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut log = Self::load(dir, segment_bytes, false)?;
        log.open_active()?;
        log.find_spare();
        Ok(log)
    }

    /// Opens the log in `dir` to read it: writes nothing (a torn tail is left in place and
    /// not read), and refuses appends.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> io::Result<SegmentLog> {
        Self::load(dir.into(), u64::MAX, true)
    }

    fn load(dir: PathBuf, segment_bytes: u64, read_only: bool) -> io::Result<SegmentLog> {
        let mut firsts: Vec<u64> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut log = SegmentLog {
            dir,
            segment_bytes: segment_bytes.max(1),
            segments: Vec::new(),
            active: None,
            entries: BTreeMap::new(),
            spare: None,
            read_only,
        };
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            log.load_segment(first, i + 1 == count)?;
        }
        Ok(log)
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "this metadata log was opened read-only",
            ));
        }
        Ok(())
    }

    fn preallocates(&self) -> bool {
        !self.read_only && self.segment_bytes <= MAX_PREALLOCATED_BYTES
    }

    /// On open: keeps one whole spare an earlier run left and deletes the rest (partial ones,
    /// or ones of another size); a log with no segment makes its first spare now, so its first
    /// segment is preallocated too.
    fn find_spare(&mut self) {
        if !self.preallocates() {
            return;
        }
        let names: Vec<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(SPARE_PREFIX) && n.ends_with(SPARE_SUFFIX))
            .collect();
        for name in names {
            let path = self.dir.join(name);
            let whole = fs::metadata(&path).is_ok_and(|m| m.len() == self.segment_bytes);
            if whole && self.spare.is_none() {
                self.spare = Some(Spare::Ready(path));
            } else if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a stale metadata log spare");
            }
        }
        if self.spare.is_none() && self.segments.is_empty() {
            let path = self.dir.join(spare_name());
            match write_zeros(&path, self.segment_bytes) {
                Ok(()) => self.spare = Some(Spare::Ready(path)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not preallocate the first metadata log segment");
                    let _ = fs::remove_file(&path);
                }
            }
        } else {
            self.spare_if_half_full();
        }
    }

    /// Starts writing the next segment's zeros in the background once the active segment is
    /// half full (a short-lived log never writes a spare it will not use).
    fn spare_if_half_full(&mut self) {
        let half_full = self
            .segments
            .last()
            .is_some_and(|s| s.len >= self.segment_bytes / 2);
        if self.spare.is_none() && half_full && self.preallocates() {
            let path = self.dir.join(spare_name());
            let bytes = self.segment_bytes;
            self.spare = Some(Spare::Zeroing(std::thread::spawn(move || {
                write_zeros(&path, bytes).map(|()| path)
            })));
        }
    }

    /// The spare file if it is ready, never waiting for one still being written (it is kept
    /// for the segment after); `None` if there is none (the segment then begins empty).
    fn take_spare(&mut self) -> Option<PathBuf> {
        match self.spare.take()? {
            Spare::Ready(path) => Some(path),
            Spare::Zeroing(handle) if !handle.is_finished() => {
                self.spare = Some(Spare::Zeroing(handle));
                None
            }
            Spare::Zeroing(handle) => match handle.join() {
                Ok(Ok(path)) => Some(path),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not preallocate the next metadata log segment");
                    None
                }
                Err(_) => None,
            },
        }
    }

    fn load_segment(&mut self, first_index: u64, is_last: bool) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_index));
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let mut position = 0usize;
        let mut expected = first_index;
        if let Some(last) = self.last_index() {
            if last + 1 != first_index {
                return Err(corrupt(
                    &path,
                    0,
                    &format!("segment starts at {first_index}, log ends at {last}"),
                ));
            }
        }
        let mut loaded = Vec::new();
        let fault = loop {
            if position == bytes.len() {
                break None;
            }
            match parse_frame(&bytes[position..], expected) {
                Ok((data, frame_len)) => {
                    loaded.push((expected, data, position as u64));
                    position += frame_len;
                    expected += 1;
                }
                Err(why) => break Some(why),
            }
        };
        // Zeros after the last frame are the unwritten rest of a preallocated file.
        let fault = fault.filter(|_| bytes[position..].iter().any(|b| *b != 0));
        if let Some(why) = fault {
            if !is_last {
                return Err(corrupt(&path, position as u64, why));
            }
        }
        if let Some(why) = fault.filter(|_| !self.read_only) {
            tracing::warn!(
                path = %path.display(),
                position,
                reason = why,
                "cutting a torn tail from the metadata log"
            );
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(position as u64)?;
            file.sync_all()?;
        }
        for (index, data, pos) in loaded {
            self.entries.insert(
                index,
                Stored {
                    data: data.into(),
                    segment: first_index,
                    position: pos,
                },
            );
        }
        self.segments.push(Segment {
            first_index,
            path,
            len: position as u64,
        });
        Ok(())
    }

    /// Index of the first live entry.
    pub fn first_index(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// One entry.
    pub fn get(&self, index: u64) -> Option<Arc<[u8]>> {
        self.entries.get(&index).map(|s| s.data.clone())
    }

    /// Entries in `range`, in order.
    pub fn range(
        &self,
        range: impl std::ops::RangeBounds<u64>,
    ) -> impl Iterator<Item = (u64, Arc<[u8]>)> + '_ {
        self.entries.range(range).map(|(i, s)| (*i, s.data.clone()))
    }

    /// Appends entries at consecutive indexes following the last one (any index to start an
    /// empty log), without flushing them: they are readable at once, and durable once the
    /// returned file (the segment written to) has been flushed with `sync_data`. A later
    /// segment's flush does not cover an earlier one's. `None` when there was nothing to
    /// append.
    pub fn append(&mut self, entries: &[(u64, &[u8])]) -> io::Result<Option<Arc<File>>> {
        let Some(&(first, _)) = entries.first() else {
            return Ok(None);
        };
        self.writable()?;
        let start = self.last_index().map_or(first, |last| last + 1);
        for (expected, (index, data)) in (start..).zip(entries) {
            if *index != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("append at index {index}, expected {expected}: the log must stay consecutive"),
                ));
            }
            if data.len() > MAX_ENTRY_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "entry {index} has {} bytes, more than {MAX_ENTRY_BYTES}",
                        data.len()
                    ),
                ));
            }
        }
        let needs_new_segment = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.segment_bytes);
        if needs_new_segment {
            self.start_segment(first)?;
        }
        let segment = self.segments.last_mut().expect("a segment is active");
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, d)| d.len() + 24).sum());
        let mut placed = Vec::with_capacity(entries.len());
        for (index, data) in entries {
            placed.push((*index, segment.len + buf.len() as u64));
            encode_frame(&mut buf, *index, data);
        }
        let file = self.active.clone().expect("active segment is open");
        (&*file).write_all(&buf)?;
        let segment_first = segment.first_index;
        segment.len += buf.len() as u64;
        for ((index, position), (_, data)) in placed.into_iter().zip(entries) {
            self.entries.insert(
                index,
                Stored {
                    data: Arc::from(*data),
                    segment: segment_first,
                    position,
                },
            );
        }
        self.spare_if_half_full();
        Ok(Some(file))
    }

    fn start_segment(&mut self, first_index: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_index));
        let file = match self.take_spare() {
            Some(spare) => {
                fs::rename(&spare, &path)?;
                OpenOptions::new().write(true).open(&path)?
            }
            None => OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)?,
        };
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first_index,
            path,
            len: 0,
        });
        self.active = Some(Arc::new(file));
        Ok(())
    }

    fn open_active(&mut self) -> io::Result<()> {
        self.active = match self.segments.last() {
            Some(s) => {
                let mut file = OpenOptions::new().write(true).open(&s.path)?;
                file.seek(SeekFrom::Start(s.len))?;
                Some(Arc::new(file))
            }
            None => None,
        };
        Ok(())
    }

    /// Removes every entry after `index` (all of them for `None`), durably.
    pub fn truncate_after(&mut self, index: Option<u64>) -> io::Result<()> {
        self.writable()?;
        let from = index.map_or(0, |i| i + 1);
        let Some(cut) = self.entries.range(from..).next().map(|(_, s)| s.clone()) else {
            return Ok(());
        };
        // Delete whole segments after the cut, newest first, so no hole appears on a crash.
        while self
            .segments
            .last()
            .is_some_and(|s| s.first_index > cut.segment)
        {
            let s = self.segments.pop().expect("checked");
            fs::remove_file(&s.path)?;
        }
        let segment = self.segments.last_mut().expect("the cut's segment exists");
        let file = OpenOptions::new().write(true).open(&segment.path)?;
        file.set_len(cut.position)?;
        file.sync_all()?;
        segment.len = cut.position;
        if segment.len == 0 {
            let s = self.segments.pop().expect("checked");
            fs::remove_file(&s.path)?;
        }
        sync_dir(&self.dir)?;
        self.entries.split_off(&from);
        self.open_active()
    }

    /// Forgets entries up to and including `index`, deleting segments that hold nothing newer.
    /// The caller records the purge point durably first (entries at or below it in a kept
    /// segment may reappear on open and must be skipped by the caller).
    pub fn purge_upto(&mut self, index: u64) -> io::Result<()> {
        self.writable()?;
        if self.last_index().is_none_or(|last| index >= last) {
            // Everything goes (e.g. a snapshot was installed past the log's end): the next
            // append starts a fresh segment at whatever index follows the snapshot.
            self.entries.clear();
            self.active = None;
            for s in self.segments.drain(..) {
                fs::remove_file(&s.path)?;
            }
            return sync_dir(&self.dir);
        }
        let keep = self.entries.split_off(&(index + 1));
        self.entries = keep;
        let mut removed = false;
        // A segment can go when the next one starts at or below index + 1; never the active one.
        while self.segments.len() > 1 && self.segments[1].first_index <= index + 1 {
            let s = self.segments.remove(0);
            fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn encode_frame(buf: &mut Vec<u8>, index: u64, data: &[u8]) {
    let body_len = (INDEX_BYTES + data.len()) as u32;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(data);
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(data);
}

/// Parses one frame at the start of `bytes`; returns the payload and the frame's length.
fn parse_frame(bytes: &[u8], expected_index: u64) -> Result<(Vec<u8>, usize), &'static str> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err("truncated frame header");
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if !(INDEX_BYTES..=INDEX_BYTES + MAX_ENTRY_BYTES).contains(&body_len) {
        return Err("impossible frame length");
    }
    let Some(body) = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len) else {
        return Err("truncated frame body");
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let index = u64::from_le_bytes(body[..INDEX_BYTES].try_into().expect("8 bytes"));
    if index != expected_index {
        return Err("index out of sequence");
    }
    Ok((body[INDEX_BYTES..].to_vec(), FRAME_HEADER_BYTES + body_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| {
                (
                    i,
                    format!("entry-{i}")
                        .repeat(1 + (i % 7) as usize)
                        .into_bytes(),
                )
            })
            .collect()
    }

    /// Appends `list` and flushes it, as the log store's flush thread does.
    fn append(log: &mut SegmentLog, list: &[(u64, Vec<u8>)]) {
        let refs: Vec<(u64, &[u8])> = list.iter().map(|(i, d)| (*i, d.as_slice())).collect();
        if let Some(file) = log.append(&refs).unwrap() {
            file.sync_data().unwrap();
        }
    }

    fn contents(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
        log.range(..).map(|(i, d)| (i, d.to_vec())).collect()
    }

    #[test]
    fn appended_entries_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries(1..200);
        {
            let mut log = SegmentLog::open(dir.path(), 512).unwrap();
            for chunk in all.chunks(7) {
                append(&mut log, chunk);
            }
            assert!(log.segment_count() > 3);
        }
        let log = SegmentLog::open(dir.path(), 512).unwrap();
        assert_eq!(contents(&log), all);
    }

    /// The length of the frames of `list`, one after another.
    fn frame_ends(list: &[(u64, Vec<u8>)]) -> Vec<usize> {
        let mut pos = 0;
        list.iter()
            .map(|(_, d)| {
                pos += FRAME_HEADER_BYTES + INDEX_BYTES + d.len();
                pos
            })
            .collect()
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_possible_crash_point_keeping_whole_entries() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries(1..6);
        let prealloc = 4096;
        {
            let mut log = SegmentLog::open(dir.path(), prealloc).unwrap();
            append(&mut log, &all[..3]);
            append(&mut log, &all[3..]);
        }
        let path = dir.path().join(segment_name(1));
        let ends = frame_ends(&all);
        let written = *ends.last().unwrap();
        let full = fs::read(&path).unwrap();
        assert_eq!(full.len() as u64, prealloc, "the segment was preallocated");
        assert!(full[written..].iter().all(|b| *b == 0));
        // A crash leaves a prefix of the last write on disk, in a file that is either
        // preallocated (zeros follow) or not (an older log, or a segment begun without a
        // spare): every whole entry in the prefix is kept, and after the last one there is
        // nothing but zeros or the end of the file.
        for zeros_after in [false, true] {
            for cut in 0..=written {
                let mut bytes = full[..cut].to_vec();
                if zeros_after {
                    bytes.resize(prealloc as usize, 0);
                }
                fs::write(&path, &bytes).unwrap();
                let log = SegmentLog::open(dir.path(), prealloc).unwrap();
                let whole = ends.iter().filter(|end| **end <= cut).count();
                assert_eq!(contents(&log), all[..whole].to_vec(), "cut at {cut}");
                let end = ends[..whole].last().copied().unwrap_or(0);
                let after = fs::read(&path).unwrap();
                assert!(after.len() >= end);
                assert!(after[end..].iter().all(|b| *b == 0), "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_reopened_log_appends_in_place_into_its_preallocated_segment() {
        let dir = tempfile::tempdir().unwrap();
        let prealloc = 1 << 16;
        {
            let mut log = SegmentLog::open(dir.path(), prealloc).unwrap();
            append(&mut log, &entries(1..4));
        }
        let path = dir.path().join(segment_name(1));
        {
            let mut log = SegmentLog::open(dir.path(), prealloc).unwrap();
            assert_eq!(contents(&log), entries(1..4));
            append(&mut log, &entries(4..9));
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), prealloc);
        let log = SegmentLog::open(dir.path(), prealloc).unwrap();
        assert_eq!(contents(&log), entries(1..9));
        // Only segments end in `.log`: the spare being zeroed is not one.
        assert_eq!(log.segment_count(), 1);
    }

    /// Every file in `dir` with its contents, by name.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    }

    fn spares(dir: &Path) -> Vec<String> {
        files(dir)
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| n.ends_with(SPARE_SUFFIX))
            .collect()
    }

    #[test]
    fn a_log_opened_to_be_read_writes_nothing_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries(1..6);
        {
            let mut log = SegmentLog::open(dir.path(), 4096).unwrap();
            append(&mut log, &all);
        }
        // A torn write after the last entry: a writer would cut it, a reader leaves it.
        let path = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[*frame_ends(&all).last().unwrap() + 3] = 0xff;
        fs::write(&path, &bytes).unwrap();
        let before = files(dir.path());
        let mut log = SegmentLog::open_read_only(dir.path()).unwrap();
        assert_eq!(contents(&log), all);
        assert!(log.append(&[(6, b"x".as_slice())]).is_err());
        assert!(log.truncate_after(Some(2)).is_err());
        assert!(log.purge_upto(2).is_err());
        drop(log);
        assert_eq!(files(dir.path()), before, "the directory is as it was");
    }

    #[test]
    fn a_whole_spare_left_by_an_earlier_run_becomes_the_next_segment_and_a_partial_one_goes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let bytes = 4096;
        {
            let mut log = SegmentLog::open(dir.path(), bytes).unwrap();
            append(&mut log, &entries(1..3));
        }
        assert!(spares(dir.path()).is_empty(), "a short log wrote no spare");
        // What a run stopped while writing spares leaves behind.
        let whole = dir.path().join("next-segment.1-0.zeros");
        fs::write(&whole, vec![0u8; bytes as usize]).unwrap();
        fs::write(dir.path().join("next-segment.1-1.zeros"), vec![0u8; 100]).unwrap();
        let inode = fs::metadata(&whole).unwrap().ino();
        let mut log = SegmentLog::open(dir.path(), bytes).unwrap();
        assert_eq!(
            spares(dir.path()),
            vec!["next-segment.1-0.zeros".to_string()]
        );
        // Fill the first segment, then begin the second: it is the spare, renamed.
        append(&mut log, &[(3, vec![7u8; bytes as usize])]);
        append(&mut log, &entries(4..6));
        assert_eq!(log.segment_count(), 2);
        let second = dir.path().join(segment_name(4));
        assert_eq!(fs::metadata(&second).unwrap().ino(), inode);
        assert_eq!(fs::metadata(&second).unwrap().len(), bytes);
        drop(log);
        let log = SegmentLog::open(dir.path(), bytes).unwrap();
        let mut expected = entries(1..3);
        expected.push((3, vec![7u8; bytes as usize]));
        expected.extend(entries(4..6));
        assert_eq!(contents(&log), expected);
    }

    #[test]
    fn an_entry_cut_by_truncation_never_reappears_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 1 << 16).unwrap();
        let first = entries(1..10);
        append(&mut log, &first);
        log.truncate_after(Some(5)).unwrap();
        // Entries of the same lengths as the cut ones: their frames end where the old ones
        // did, so an old frame left behind them would parse as the next entry.
        let again: Vec<(u64, Vec<u8>)> = first[5..7]
            .iter()
            .map(|(i, d)| (*i, d.iter().map(|b| b ^ 0x20).collect()))
            .collect();
        append(&mut log, &again);
        drop(log);
        let log = SegmentLog::open(dir.path(), 1 << 16).unwrap();
        let mut expected = first[..5].to_vec();
        expected.extend(again);
        assert_eq!(contents(&log), expected);
    }

    #[test]
    fn a_corrupted_last_entry_is_dropped_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries(1..5);
        {
            let mut log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            append(&mut log, &all);
        }
        let path = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let last = frame_ends(&all).last().unwrap() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let mut log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.last_index(), Some(3));
        append(&mut log, &entries(4..6));
        drop(log);
        let log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(contents(&log), entries(1..6));
    }

    #[test]
    fn corruption_inside_a_closed_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), 64).unwrap();
            for chunk in entries(1..20).chunks(2) {
                append(&mut log, chunk);
            }
        }
        let path = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = SegmentLog::open(dir.path(), 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupt entry"), "{err}");
    }

    #[test]
    fn truncate_after_removes_the_tail_durably() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 256).unwrap();
        for chunk in entries(1..60).chunks(5) {
            append(&mut log, chunk);
        }
        log.truncate_after(Some(23)).unwrap();
        assert_eq!(log.last_index(), Some(23));
        append(&mut log, &entries(24..30));
        drop(log);
        let mut log = SegmentLog::open(dir.path(), 256).unwrap();
        assert_eq!(contents(&log), entries(1..30));
        log.truncate_after(None).unwrap();
        assert_eq!(log.last_index(), None);
        drop(log);
        assert_eq!(
            SegmentLog::open(dir.path(), 256).unwrap().last_index(),
            None
        );
    }

    #[test]
    fn purge_deletes_whole_segments_behind_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 128).unwrap();
        for chunk in entries(1..80).chunks(4) {
            append(&mut log, chunk);
        }
        let before = log.segment_count();
        log.purge_upto(50).unwrap();
        assert_eq!(log.first_index(), Some(51));
        assert!(log.segment_count() < before);
        drop(log);
        let log = SegmentLog::open(dir.path(), 128).unwrap();
        assert!(
            log.first_index().unwrap() <= 51,
            "kept segments may hold purged entries"
        );
        assert_eq!(log.last_index(), Some(79));
        assert_eq!(log.get(51).unwrap().to_vec(), entries(51..52)[0].1);
    }

    #[test]
    fn appends_must_stay_consecutive_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        append(&mut log, &entries(5..7));
        assert!(log.append(&[(9, b"x".as_slice())]).is_err());
        let huge = vec![0u8; MAX_ENTRY_BYTES + 1];
        assert!(log.append(&[(7, huge.as_slice())]).is_err());
        assert_eq!(log.last_index(), Some(6));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append(usize),
        Truncate(u64),
        Purge(u64),
        Reopen,
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// The log behaves like an ordered map of entries across any mix of appends,
        /// truncations, purges and reopens.
        #[test]
        fn log_matches_a_simple_model(ops in proptest::collection::vec(
            proptest::prop_oneof![
                5 => (1usize..6).prop_map(Op::Append),
                1 => (0u64..40).prop_map(Op::Truncate),
                1 => (0u64..40).prop_map(Op::Purge),
                2 => proptest::strategy::Just(Op::Reopen),
            ],
            1..60,
        )) {
            use proptest::prop_assert_eq;
            let dir = tempfile::tempdir().unwrap();
            let mut log = SegmentLog::open(dir.path(), 200).unwrap();
            let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut purged: Option<u64> = None;
            for op in ops {
                match op {
                    Op::Append(n) => {
                        let start = log.last_index().or(purged).map_or(1, |l| l + 1);
                        let batch = entries(start..start + n as u64);
                        append(&mut log, &batch);
                        model.extend(batch);
                    }
                    Op::Truncate(i) => {
                        let keep = i.max(purged.unwrap_or(0));
                        log.truncate_after(Some(keep)).unwrap();
                        model.split_off(&(keep + 1));
                    }
                    Op::Purge(i) => {
                        // Like openraft: never behind an earlier purge; may pass the log's end.
                        if purged.is_none_or(|p| i > p) {
                            log.purge_upto(i).unwrap();
                            purged = Some(i);
                            if model.keys().next_back().is_none_or(|l| *l <= i) {
                                model.clear();
                            }
                        }
                    }
                    Op::Reopen => {
                        drop(log);
                        log = SegmentLog::open(dir.path(), 200).unwrap();
                    }
                }
                let live: Vec<(u64, Vec<u8>)> = log
                    .range(purged.map_or(0, |p| p + 1)..)
                    .map(|(i, d)| (i, d.to_vec()))
                    .collect();
                let expected: Vec<(u64, Vec<u8>)> = model
                    .range(purged.map_or(0, |p| p + 1)..)
                    .map(|(i, d)| (*i, d.clone()))
                    .collect();
                prop_assert_eq!(live, expected);
            }
        }
    }
}
