//! `LogStore`: openraft's `RaftLogStorage` over [`SegmentLog`].
//!
//! Entries are postcard-encoded openraft entries in the segment log (one fdatasync per
//! appended batch). The vote, the committed log id and the last purged log id live in a small
//! state file replaced atomically (`raft-state`). The purge point is written before segments
//! are deleted; entries at or below it that a kept segment still holds are never returned.
//!
//! An append is written at once (readable, and sent to followers, straight away) and flushed
//! by a thread of its own, which then tells openraft the entries are durable: the leader's
//! own fdatasync runs beside the followers' instead of before it, as etcd's and Kafka's
//! leaders do; openraft counts the leader toward a quorum only once that flush is done.
//! Appends waiting for it together share one fdatasync. Truncation, purging and the vote wait
//! for every flush before them, so the disk sees them in the order openraft asked (the
//! simulation's disk model, `sim/disk.rs`, orders them the same way). Other file I/O runs
//! inline on the calling task: openraft serializes all log writes through one task.

use super::segment_log::{SegmentLog, DEFAULT_SEGMENT_BYTES};
use super::state_file::{read_checked, write_atomic, HintFile};
use super::types::{Entry, LogId, TypeConfig, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RaftState {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

struct Inner {
    log: SegmentLog,
    state: RaftState,
    state_path: PathBuf,
    /// The committed log id is a hint, not a safety fact: after a crash a node learns it again
    /// from the leader. It is rewritten in place without fsync, so a commit costs no disk
    /// write of its own.
    committed: Option<LogId>,
    committed_hint: HintFile,
    /// Bytes of entries appended since this store was opened (for the snapshot policy).
    appended_bytes: u64,
    /// The entries appended last, as appended: openraft reads each entry back right after
    /// appending it, to send it to every follower and for the state machine to apply it,
    /// and these are handed out instead of decoding the log's bytes again. Always the log's
    /// tail (appends, truncations and purges keep them in step), bounded by
    /// [`RECENT_ENTRIES`] and [`RECENT_BYTES`]; older entries are read from the log.
    recent: Recent,
}

/// At most this many entries are kept decoded after their append.
const RECENT_ENTRIES: usize = 1024;
/// And at most this many bytes of their encodings.
const RECENT_BYTES: u64 = 4 << 20;

/// The log's last entries, decoded, each with its encoded size.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<(Entry, u64)>,
    bytes: u64,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index())
    }

    fn last(&self) -> Option<&Entry> {
        self.entries.back().map(|(e, _)| e)
    }

    /// Adds entries just appended after the last one (or starts over when they do not follow
    /// it), dropping the oldest beyond the bounds.
    fn push(&mut self, appended: impl IntoIterator<Item = (Entry, u64)>) {
        for (entry, bytes) in appended {
            if self
                .last()
                .is_some_and(|last| last.log_id.index() + 1 != entry.log_id.index())
            {
                self.clear();
            }
            self.bytes += bytes;
            self.entries.push_back((entry, bytes));
        }
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            let Some((_, bytes)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= bytes;
        }
    }

    /// Keeps only entries up to `index` (none for `None`).
    fn truncate_after(&mut self, index: Option<u64>) {
        while let Some((entry, bytes)) = self.entries.back() {
            if index.is_some_and(|i| entry.log_id.index() <= i) {
                break;
            }
            self.bytes -= bytes;
            self.entries.pop_back();
        }
    }

    /// Drops entries up to `index`.
    fn purge_upto(&mut self, index: u64) {
        while let Some((entry, bytes)) = self.entries.front() {
            if entry.log_id.index() > index {
                break;
            }
            self.bytes -= bytes;
            self.entries.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries from `start` on while `in_range` holds, if `start` is at or after the
    /// first kept entry.
    fn from(&self, start: u64, in_range: impl Fn(u64) -> bool) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        Some(
            self.entries
                .iter()
                .skip((start - first) as usize)
                .map(|(e, _)| e)
                .take_while(|e| in_range(e.log_id.index()))
                .cloned()
                .collect(),
        )
    }
}

/// The durable Raft log of one controller. Cloning shares the same log (readers).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    flusher: Arc<Flusher>,
}

/// What the flushing thread is asked to do, in order.
enum Flush {
    /// Flush a segment's appends, then report them durable.
    Append(Arc<std::fs::File>, IOFlushed<TypeConfig>),
    /// Answer once everything asked before is flushed.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// A flush's outcome, copied to each append it covered.
type FlushResult = Result<(), (io::ErrorKind, String)>;

/// The thread that flushes appends (ends when the store is dropped).
struct Flusher {
    jobs: std::sync::mpsc::Sender<Flush>,
}

impl Flusher {
    fn start() -> Flusher {
        let (tx, rx) = std::sync::mpsc::channel::<Flush>();
        std::thread::Builder::new()
            .name("kmeta-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    // One fdatasync per segment file among them (almost always one).
                    let mut flushed: Vec<(Arc<std::fs::File>, FlushResult)> = Vec::new();
                    for job in &jobs {
                        if let Flush::Append(file, _) = job {
                            if !flushed.iter().any(|(f, _)| Arc::ptr_eq(f, file)) {
                                let r = file.sync_data().map_err(|e| (e.kind(), e.to_string()));
                                flushed.push((file.clone(), r));
                            }
                        }
                    }
                    for job in jobs {
                        match job {
                            Flush::Append(file, callback) => {
                                let result = flushed
                                    .iter()
                                    .find(|(f, _)| Arc::ptr_eq(f, &file))
                                    .map_or(Ok(()), |(_, r)| r.clone());
                                callback.io_completed(
                                    result.map_err(|(kind, e)| io::Error::new(kind, e)),
                                );
                            }
                            Flush::Barrier(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                }
            })
            .expect("spawning the log flush thread");
        Flusher { jobs: tx }
    }

    fn send(&self, job: Flush) -> io::Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the log flush thread stopped"))
    }

    /// Waits until every flush asked for before this call is done, without holding up the
    /// runtime's thread (a flush can take long on a busy disk).
    async fn wait(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Flush::Barrier(tx))?;
        rx.await
            .map_err(|_| io::Error::other("the log flush thread stopped"))
    }
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl LogStore {
    /// Opens the log in `dir` (creating it), recovering a torn tail.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Self::open_with_segment_bytes(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// As [`open`](Self::open), with a chosen segment size.
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<LogStore> {
        let log = SegmentLog::open(dir.join("log"), segment_bytes)?;
        let state_path = dir.join("raft-state");
        let state = match read_checked(&state_path)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(invalid)?,
            None => RaftState::default(),
        };
        let committed_path = dir.join("raft-committed");
        // A torn or missing hint is no loss: start without it.
        let committed = read_checked(&committed_path)
            .ok()
            .flatten()
            .and_then(|bytes| postcard::from_bytes::<Option<LogId>>(&bytes).ok())
            .flatten();
        let committed_hint = HintFile::open(&committed_path)?;
        let mut inner = Inner {
            log,
            state,
            state_path,
            committed: None,
            committed_hint,
            appended_bytes: 0,
            recent: Recent::default(),
        };
        // Nor is one that names an entry the log does not hold: a hint written after an
        // append that was not flushed yet can outlive it in a power loss. Every entry up to
        // the committed one was in the log then, and what the log still holds of them is the
        // same (only truncations cut it, after the commit point, and durably).
        inner.committed = committed.filter(|c| inner.holds(c));
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            flusher: Arc::new(Flusher::start()),
        })
    }

    /// Bytes of entries appended since this store was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.lock().appended_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn save_state(&self) -> io::Result<()> {
        let bytes = postcard::to_allocvec(&self.state).map_err(invalid)?;
        write_atomic(&self.state_path, &bytes)
    }

    fn first_live_index(&self) -> u64 {
        self.state.last_purged.as_ref().map_or(0, |l| l.index() + 1)
    }

    fn decode(bytes: &[u8]) -> io::Result<Entry> {
        postcard::from_bytes(bytes).map_err(invalid)
    }

    /// Whether the log holds `id` (or purged it behind a snapshot).
    fn holds(&self, id: &LogId) -> bool {
        if id.index() < self.first_live_index() {
            return true;
        }
        self.log
            .get(id.index())
            .and_then(|bytes| Self::decode(&bytes).ok())
            .is_some_and(|e| e.log_id == *id)
    }

    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        if let Some(last) = self.recent.last() {
            return Ok(Some(last.log_id));
        }
        match self.log.last_index() {
            Some(i) if i >= self.first_live_index() => {
                let bytes = self.log.get(i).expect("last index exists");
                Ok(Some(Self::decode(&bytes)?.log_id))
            }
            _ => Ok(self.state.last_purged),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let inner = self.lock();
        let floor = inner.first_live_index();
        let start = match range.start_bound() {
            Bound::Included(s) => (*s).max(floor),
            Bound::Excluded(s) => (*s + 1).max(floor),
            Bound::Unbounded => floor,
        };
        let empty = match range.end_bound() {
            Bound::Included(e) => start > *e,
            Bound::Excluded(e) => start >= *e,
            Bound::Unbounded => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        if let Some(entries) = inner.recent.from(start, |i| range.contains(&i)) {
            return Ok(entries);
        }
        inner
            .log
            .range((Bound::Included(start), range.end_bound().cloned()))
            .map(|(_, bytes)| Inner::decode(&bytes))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().state.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.state.last_purged,
            last_log_id: inner.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.flusher.wait().await?;
        let mut inner = self.lock();
        inner.state.vote = Some(*vote);
        inner.save_state()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        inner.committed = committed;
        let bytes = postcard::to_allocvec(&committed).map_err(invalid)?;
        inner.committed_hint.write(&bytes)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| Ok((e.log_id.index(), postcard::to_allocvec(e).map_err(invalid)?)))
            .collect::<io::Result<_>>()?;
        let refs: Vec<(u64, &[u8])> = encoded.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        let bytes: u64 = encoded.iter().map(|(_, b)| b.len() as u64).sum();
        let result = {
            let mut inner = self.lock();
            let r = inner.log.append(&refs);
            if r.is_ok() {
                inner.appended_bytes += bytes;
                let sizes = encoded.iter().map(|(_, b)| b.len() as u64);
                inner.recent.push(entries.into_iter().zip(sizes));
            } else {
                // What the log holds after a failed append is read from the log.
                inner.recent.clear();
            }
            r
        };
        match result {
            Ok(Some(file)) => self.flusher.send(Flush::Append(file, callback)),
            Ok(None) => {
                // Nothing was written: durable once everything before it is.
                self.flusher.wait().await?;
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.flusher.wait().await?;
        let mut inner = self.lock();
        let index = last_log_id.map(|l| l.index());
        let r = inner.log.truncate_after(index);
        match r {
            Ok(()) => inner.recent.truncate_after(index),
            Err(_) => inner.recent.clear(),
        }
        r
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.flusher.wait().await?;
        let mut inner = self.lock();
        let index = log_id.index();
        inner.state.last_purged = Some(log_id);
        inner.save_state()?;
        inner.recent.purge_upto(index);
        inner.log.purge_upto(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{MetadataBatch, Proposal};
    use kmeta_metadata::record::{MetadataRecord, TopicRecord};
    use openraft::storage::IOFlushed;
    use openraft::testing::log_id;
    use openraft::EntryPayload;
    use proptest::strategy::Strategy;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id::<TypeConfig>(term, 1, index),
            payload: EntryPayload::Normal(Proposal::unstamped(MetadataBatch::new(vec![
                MetadataRecord::Topic(TopicRecord {
                    name: format!("t{term}-{index}"),
                    topic_id: uuid::Uuid::from_u128(index as u128 + 1),
                }),
            ]))),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Truncate(u64),
        Purge(u64),
        Reopen,
        Read(u64),
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// What openraft reads back is what the log holds, whether it comes from the entries
        /// kept after their append or from the log's bytes: across appends (each under a new
        /// term, so an entry cut by truncation and written again differs), truncations,
        /// purges, reopens and reads from any index.
        #[test]
        fn entries_read_back_are_the_logs_through_appends_truncations_purges_and_reopens(
            ops in proptest::collection::vec(
                proptest::prop_oneof![
                    5 => (1usize..5).prop_map(Op::Append),
                    1 => (0u64..30).prop_map(Op::Truncate),
                    1 => (0u64..30).prop_map(Op::Purge),
                    1 => proptest::strategy::Just(Op::Reopen),
                    2 => (0u64..30).prop_map(Op::Read),
                ],
                1..50,
            )
        ) {
            use proptest::prop_assert_eq;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let mut store = LogStore::open_with_segment_bytes(dir.path(), 300).unwrap();
                let mut model: Vec<Entry> = Vec::new();
                let mut purged: Option<u64> = None;
                let mut term = 1;
                for op in ops {
                    let mut from = 0;
                    match op {
                        Op::Append(n) => {
                            term += 1;
                            let start = model.last().map(|e| e.log_id.index() + 1)
                                .or(purged.map(|p| p + 1)).unwrap_or(1);
                            let batch: Vec<Entry> =
                                (start..start + n as u64).map(|i| entry(term, i)).collect();
                            store.append(batch.clone(), IOFlushed::noop()).await.unwrap();
                            model.extend(batch);
                        }
                        Op::Truncate(i) => {
                            let keep = i.max(purged.unwrap_or(0));
                            let id = model.iter().find(|e| e.log_id.index() == keep).map(|e| e.log_id);
                            if id.is_some() || keep == 0 {
                                store.truncate_after(id).await.unwrap();
                                model.retain(|e| e.log_id.index() <= keep);
                            }
                        }
                        Op::Purge(i) => {
                            if purged.is_none_or(|p| i > p) {
                                if let Some(e) = model.iter().find(|e| e.log_id.index() == i) {
                                    store.purge(e.log_id).await.unwrap();
                                    purged = Some(i);
                                    model.retain(|e| e.log_id.index() > i);
                                }
                            }
                        }
                        Op::Reopen => {
                            drop(store);
                            store = LogStore::open_with_segment_bytes(dir.path(), 300).unwrap();
                        }
                        Op::Read(i) => from = i,
                    }
                    let read = store.try_get_log_entries(from..).await.unwrap();
                    let expected: Vec<Entry> =
                        model.iter().filter(|e| e.log_id.index() >= from).cloned().collect();
                    prop_assert_eq!(read, expected);
                    let last = store.get_log_state().await.unwrap().last_log_id;
                    let expected_last = model.last().map(|e| e.log_id).or_else(|| {
                        store.lock().state.last_purged
                    });
                    prop_assert_eq!(last, expected_last);
                }
                Ok(())
            })?;
        }
    }
}
