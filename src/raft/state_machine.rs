//! `StateMachine`: openraft's `RaftStateMachine`, replaying committed entries into the
//! `MetadataImage`.
//!
//! Every record of an entry is replayed at the entry's index (the metadata offset), if the
//! entry's stamp is admitted by the [`ProposalChain`] (a proposal that did not land where its
//! session predicted commits as a no-op on every replica). A record of an admitted entry that
//! does not replay is a fatal fault: `apply` returns an error and openraft stops the node,
//! never skipping it. Snapshots are the image's snapshot records (`MetadataImage::to_records`)
//! and the chain, written to `snapshot` in the data directory atomically (temporary file,
//! fsync, rename); the newest one is loaded at start, and the log replays on top of it.

use super::state_file::{read_checked, write_atomic};
use super::types::{
    BatchApplied, LogId, MetadataBatch, Proposal, ProposalChain, Stamp, TypeConfig,
};
// postcard writes a length as this LEB128 varint.
use crate::kafka::wire::put_unsigned_varint;
use bytes::Bytes;
use futures_util::StreamExt;
use kmeta_metadata::{LogOffset, MetadataImage, MetadataRecord};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Bytes of recently applied entries kept in memory for brokers fetching the log. A broker
/// further behind is sent a snapshot of the image instead.
pub const MAX_TAIL_BYTES: usize = 64 * 1024 * 1024;

/// A Raft snapshot's content: postcard of [`SnapshotContent`].
pub type SnapshotData = Vec<u8>;

/// What a Raft snapshot holds: the proposal chain and the encoded records that rebuild the
/// image (brokers' snapshots hold the records only). Written by [`encode_snapshot`] without
/// this struct (the same bytes), and read borrowing each record from the snapshot's bytes, so
/// that neither side holds a million small allocations at once.
#[derive(Deserialize)]
struct SnapshotContent<'a> {
    chain: ProposalChain,
    #[serde(borrow)]
    records: Vec<&'a [u8]>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    data: SnapshotData,
}

struct Inner {
    image: MetadataImage,
    chain: ProposalChain,
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshot: Option<SnapshotFile>,
    snapshot_path: PathBuf,
    tail: Tail,
    broker_snapshot: Option<(u64, Bytes)>,
    /// Entries this node proposed as the active controller, oldest first, each with the image
    /// its records were decided on and the image they made (see [`StateMachine::expect`]).
    expected: VecDeque<Expected>,
    /// Why an entry failed to replay, leaving the image partly replayed (the node stops):
    /// no snapshot is taken of it.
    broken: Option<String>,
}

/// An entry the active controller proposed: the speculative images before and after it.
struct Expected {
    stamp: Stamp,
    base: MetadataImage,
    after: MetadataImage,
}

/// At most this many proposals wait in [`Inner::expected`] (the controller keeps a few in
/// flight; older ones have been applied or will never be).
const MAX_EXPECTED: usize = 64;

impl Inner {
    /// True if this node decided the proposal it expects at `index` (it may still not be
    /// adopted: see [`Inner::adopt`]).
    fn expects(&self, index: u64) -> bool {
        self.expected.iter().any(|e| e.stamp.offset == index)
    }

    /// The image entry `index` makes if it is the proposal this node expects there and the
    /// image now is the one that proposal was decided on; `None` otherwise (replay it).
    /// Forgets every expectation up to `index`.
    fn adopt(&mut self, index: u64, stamp: Option<&Stamp>) -> Option<MetadataImage> {
        while self
            .expected
            .front()
            .is_some_and(|e| e.stamp.offset < index)
        {
            self.expected.pop_front();
        }
        if self.expected.front()?.stamp.offset != index {
            return None;
        }
        let e = self.expected.pop_front()?;
        (Some(&e.stamp) == stamp && e.base.is_same_as(&self.image)).then_some(e.after)
    }
}

/// The recently applied entries, encoded as [`encode_batch`] does. It covers every index
/// from `start` to the last applied one; entries without records (Raft's own) are absent.
struct Tail {
    start: u64,
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Tail {
    fn new(start: u64) -> Tail {
        Tail {
            start,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, index: u64, encoded: Bytes) {
        self.bytes += encoded.len();
        self.entries.push_back((index, encoded));
        while self.bytes > MAX_TAIL_BYTES {
            let Some((i, e)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= e.len();
            self.start = i + 1;
        }
    }
}

/// What a broker fetching from offset `from` gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommittedRead {
    /// The committed entries from `from` on (possibly none yet), each `(offset, encoded batch)`.
    Entries {
        /// The entries, in order.
        entries: Vec<(u64, Bytes)>,
        /// The offset to fetch from next.
        next: u64,
        /// The last applied (committed) offset.
        high_watermark: u64,
    },
    /// `from` is older than the entries kept: load a snapshot first.
    SnapshotNeeded,
}

/// Encodes an entry's records for brokers: a sequence of record encodings (as in the Raft log).
pub fn encode_batch(batch: &MetadataBatch) -> Bytes {
    Bytes::from(postcard::to_allocvec(batch).expect("postcard into a Vec is infallible"))
}

/// Decodes what [`encode_batch`] wrote.
pub fn decode_batch(bytes: &[u8]) -> io::Result<MetadataBatch> {
    postcard::from_bytes(bytes).map_err(invalid)
}

/// The replicated metadata image of one controller. Cloning shares it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    /// The index of the last applied entry, for those who wait for the next. Not the image:
    /// a copy held here would make every replay copy what it changes.
    applied: watch::Sender<u64>,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Appends the image's records as postcard writes a list of byte strings (`Vec<Vec<u8>>`):
/// the count, then each record's length and encoding. The encodings go into one buffer
/// first, since the count comes before them.
fn put_records(out: &mut Vec<u8>, image: &MetadataImage) {
    let mut body = Vec::new();
    let mut lengths: Vec<u32> = Vec::new();
    image.for_each_record(|r| {
        let at = body.len();
        r.encode_into(&mut body);
        lengths.push((body.len() - at) as u32);
    });
    out.reserve(body.len() + 3 * lengths.len() + 10);
    put_unsigned_varint(out, lengths.len() as u64);
    let mut at = 0;
    for len in lengths {
        let len = len as usize;
        put_unsigned_varint(out, len as u64);
        out.extend_from_slice(&body[at..at + len]);
        at += len;
    }
}

/// A broker snapshot: the postcard list of the image's record encodings.
fn encode_records(image: &MetadataImage) -> Vec<u8> {
    let mut out = Vec::new();
    put_records(&mut out, image);
    out
}

/// A Raft snapshot: the postcard of a [`SnapshotContent`].
fn encode_snapshot(image: &MetadataImage, chain: ProposalChain) -> SnapshotData {
    let mut out = postcard::to_allocvec(&chain).expect("postcard into a Vec is infallible");
    put_records(&mut out, image);
    out
}

fn image_of<'a>(
    records: impl IntoIterator<Item = &'a [u8]>,
    offset: LogOffset,
) -> io::Result<MetadataImage> {
    // Decoded a slice at a time and replayed as a batch: a topic's partitions are stored a
    // topic at a time (a run cut at a slice's end continues in the next).
    const SLICE: usize = 4096;
    let mut image = MetadataImage::new();
    let mut slice = Vec::with_capacity(SLICE);
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        slice.clear();
        for bytes in records.by_ref().take(SLICE) {
            slice.push(MetadataRecord::decode(bytes).map_err(invalid)?);
        }
        image.replay_batch(offset, &slice).map_err(invalid)?;
    }
    Ok(image)
}

/// Rebuilds an image from a broker snapshot taken at `offset`.
pub fn decode_image(data: &[u8], offset: LogOffset) -> io::Result<MetadataImage> {
    let records: Vec<&[u8]> = postcard::from_bytes(data).map_err(invalid)?;
    image_of(records, offset)
}

/// Rebuilds the image and chain from a Raft snapshot taken at `offset`.
fn decode_snapshot(data: &[u8], offset: LogOffset) -> io::Result<(MetadataImage, ProposalChain)> {
    let content: SnapshotContent = postcard::from_bytes(data).map_err(invalid)?;
    Ok((image_of(content.records, offset)?, content.chain))
}

/// Applies one normal entry at `index` to `image`: `Ok(false)` when the chain does not admit
/// it (nothing changes but the chain), `Err` when an admitted record does not replay (fatal:
/// the chain has moved and `image` is partly replayed, so the caller must stop using both).
///
/// Replayed in place, not onto a copy: whatever of `image` no one else holds is changed
/// where it lies. Replaying onto a copy while the original lived on made every insert copy
/// its path through each persistent map the record touches: on a follower controller with
/// 100,000 topics, that was half its CPU under a load of creations (docs/BENCHMARKS.md).
pub fn apply_proposal(
    image: &mut MetadataImage,
    chain: &mut ProposalChain,
    index: u64,
    proposal: &Proposal,
) -> Result<bool, kmeta_metadata::image::ReplayError> {
    if !chain.admit(index, proposal.stamp.as_ref()) {
        return Ok(false);
    }
    image.replay_batch(LogOffset(index as i64), proposal.batch.records())?;
    Ok(true)
}

/// `image` with `records` replayed onto it at offset `index` (`image` itself unchanged).
fn replayed(
    image: &MetadataImage,
    index: u64,
    records: &[MetadataRecord],
) -> Result<MetadataImage, kmeta_metadata::image::ReplayError> {
    let mut next = image.clone();
    next.replay_batch(LogOffset(index as i64), records)?;
    Ok(next)
}

fn offset_of(log_id: &Option<LogId>) -> LogOffset {
    log_id
        .as_ref()
        .map_or(LogOffset::NONE, |l| LogOffset(l.index() as i64))
}

impl StateMachine {
    /// Opens the state machine in `dir`, loading the newest snapshot if there is one.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let timer = crate::WorkTimer::start();
        let snapshot_path = dir.join("snapshot");
        let snapshot: Option<SnapshotFile> = match read_checked(&snapshot_path)? {
            Some(bytes) => Some(postcard::from_bytes(&bytes).map_err(invalid)?),
            None => None,
        };
        let ((image, chain), last_applied, membership) = match &snapshot {
            Some(s) => (
                decode_snapshot(&s.data, offset_of(&s.meta.last_log_id))?,
                s.meta.last_log_id,
                s.meta.last_membership.clone(),
            ),
            None => (
                (MetadataImage::new(), ProposalChain::default()),
                None,
                StoredMembership::default(),
            ),
        };
        if let Some(s) = &snapshot {
            tracing::info!(
                offset = offset_of(&s.meta.last_log_id).0,
                bytes = s.data.len(),
                partitions = image.partition_count(),
                load_ms = timer.wall_ms(),
                load_cpu_ms = timer.cpu_ms(),
                "loaded the metadata snapshot"
            );
        }
        let (applied, _) = watch::channel(last_applied.map_or(0, |l| l.index()));
        let tail = Tail::new(last_applied.map_or(0, |l| l.index() + 1));
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(Inner {
                image,
                chain,
                last_applied,
                membership,
                snapshot,
                snapshot_path,
                tail,
                broker_snapshot: None,
                expected: VecDeque::new(),
                broken: None,
            })),
            applied,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The committed image now.
    pub fn image(&self) -> MetadataImage {
        self.lock().image.clone()
    }

    /// The committed image and the proposal chain after the last applied entry.
    pub fn image_and_chain(&self) -> (MetadataImage, ProposalChain) {
        let inner = self.lock();
        (inner.image.clone(), inner.chain)
    }

    /// Announces an entry this node is proposing as the active controller, stamped `stamp`:
    /// its records were replayed onto `base` (the committed image, or the one the previous
    /// expected entry makes) and made `after`. When that entry is applied at the offset it
    /// was stamped for, onto an image that is still `base` (shared, not merely equal), the
    /// state machine takes `after` instead of replaying the records a second time on this
    /// node. Anything else (another proposal at that index, a refused stamp, a snapshot
    /// installed meanwhile) replays as usual.
    pub fn expect(&self, stamp: Stamp, base: MetadataImage, after: MetadataImage) {
        let mut inner = self.lock();
        // Kept in offset order: a new session proposes from the committed end again, and
        // what an earlier one expected at those offsets can no longer be its entries.
        while inner
            .expected
            .back()
            .is_some_and(|e| e.stamp.offset >= stamp.offset)
        {
            inner.expected.pop_back();
        }
        if inner.expected.len() == MAX_EXPECTED {
            inner.expected.pop_front();
        }
        inner.expected.push_back(Expected { stamp, base, after });
    }

    /// Drops every expectation (see [`StateMachine::expect`]): the session that made them
    /// ended, and the images they hold should not outlive it.
    pub fn forget_expected(&self) {
        self.lock().expected.clear();
    }

    /// The index of the last entry applied to the image, if any.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.lock().last_applied.map(|l| l.index())
    }

    /// The last index covered by the current snapshot, if there is one.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.lock()
            .snapshot
            .as_ref()
            .and_then(|s| s.meta.last_log_id.map(|l| l.index()))
    }

    /// The size of the newest snapshot's data, if there is one.
    pub fn snapshot_bytes(&self) -> Option<usize> {
        self.lock().snapshot.as_ref().map(|s| s.data.len())
    }

    /// Committed entries from offset `from` on, at most about `max_bytes` of them (always at
    /// least one when there is one).
    pub fn read_committed(&self, from: u64, max_bytes: usize) -> CommittedRead {
        let inner = self.lock();
        let high_watermark = inner.last_applied.map_or(0, |l| l.index());
        if from < inner.tail.start {
            return CommittedRead::SnapshotNeeded;
        }
        let skip = inner.tail.entries.partition_point(|(i, _)| *i < from);
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut next = high_watermark.max(from.saturating_sub(1)) + 1;
        for (i, e) in inner.tail.entries.iter().skip(skip) {
            if !entries.is_empty() && bytes + e.len() > max_bytes {
                next = *i;
                break;
            }
            bytes += e.len();
            entries.push((*i, e.clone()));
        }
        CommittedRead::Entries {
            entries,
            next,
            high_watermark,
        }
    }

    /// A snapshot for brokers: `(last offset it covers, snapshot data)`. Reused while brokers
    /// can continue from it with the kept entries; rebuilt from the image otherwise.
    pub fn broker_snapshot(&self) -> (u64, Bytes) {
        let (image, offset) = {
            let inner = self.lock();
            if let Some((offset, data)) = &inner.broker_snapshot {
                if offset + 1 >= inner.tail.start {
                    return (*offset, data.clone());
                }
            }
            (
                inner.image.clone(),
                inner.last_applied.map_or(0, |l| l.index()),
            )
        };
        let data = Bytes::from(encode_records(&image));
        self.lock().broker_snapshot = Some((offset, data.clone()));
        (offset, data)
    }

    /// The broker snapshot covering `offset`, if it is still the one kept.
    pub fn broker_snapshot_at(&self, offset: u64) -> Option<Bytes> {
        match &self.lock().broker_snapshot {
            Some((o, data)) if *o == offset => Some(data.clone()),
            _ => None,
        }
    }

    /// A watch of the last applied index, changed after every applied entry.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let (image, chain, meta, path) = {
            let inner = self.lock();
            if let Some(why) = &inner.broken {
                return Err(io::Error::other(format!(
                    "no snapshot of an image an entry failed to replay into: {why}"
                )));
            }
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            };
            (
                inner.image.clone(),
                inner.chain,
                meta,
                inner.snapshot_path.clone(),
            )
        };
        let started = std::time::Instant::now();
        // Encoding and writing a snapshot of 1,000,000 partitions takes seconds of CPU: on a
        // thread of its own, not on one of the runtime's workers, where it held up the Raft
        // core and its heartbeats until the leader lost its lease (docs/BENCHMARKS.md). Not at
        // a lower priority: tried twice, it did not keep the lease, and a snapshot stretched
        // over 8-20 s overlapped whatever came next (docs/BENCHMARKS.md).
        let write = {
            let meta = meta.clone();
            move || -> Result<(SnapshotFile, usize), io::Error> {
                let file = SnapshotFile {
                    meta,
                    data: encode_snapshot(&image, chain),
                };
                let bytes = postcard::to_allocvec(&file).map_err(invalid)?;
                write_atomic(&path, &bytes)?;
                Ok((file, bytes.len()))
            }
        };
        let (file, len) = tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| io::Error::other(format!("the snapshot writer failed: {e}")))??;
        tracing::info!(
            offset = meta.last_log_id.map_or(0, |l| l.index()),
            bytes = len,
            ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        let data = file.data.clone();
        self.lock().snapshot = Some(file);
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index();
            let mut admitted = true;
            // A follower replaying a broker-wide record at a million partitions takes
            // seconds. It does so outside the lock: the readers of this state machine (the
            // snapshot policy every second, the metrics endpoint, broker fetches on the
            // leader) wait on the lock on a runtime worker, and with every worker waiting,
            // this controller stopped answering the leader, whose lease lapsed. Only this
            // task writes the image and the chain (openraft applies entries and installs
            // snapshots one at a time), so what was replayed outside is stored as it is.
            let mut replayed_outside = None;
            if let EntryPayload::Normal(proposal) = &entry.payload {
                if crate::heavy_to_replay(proposal.batch.records()) {
                    let (base, chain, expected) = {
                        let inner = self.lock();
                        (inner.image.clone(), inner.chain, inner.expects(index))
                    };
                    if !expected {
                        let (mut image, mut chain) = (base.clone(), chain);
                        let admit = crate::cpu_bound(|| {
                            apply_proposal(&mut image, &mut chain, index, proposal)
                        });
                        replayed_outside = Some((base, image, chain, admit));
                    }
                }
            }
            {
                let mut inner = self.lock();
                let inner = &mut *inner;
                match &entry.payload {
                    EntryPayload::Blank => inner.chain.skip(),
                    EntryPayload::Normal(proposal) => {
                        admitted = match inner.adopt(index, proposal.stamp.as_ref()) {
                            // This node decided it on this very image: what it built then is
                            // what replaying the records would build now.
                            Some(after) => {
                                let admit = inner.chain.admit(index, proposal.stamp.as_ref());
                                if admit {
                                    debug_assert!(
                                        inner.image.partition_count() > 10_000
                                            || replayed(&inner.image, index, proposal.batch.records())
                                                .is_ok_and(|r| r == after),
                                        "an adopted image differs from the replay of its entry"
                                    );
                                    inner.image = after;
                                }
                                admit
                            }
                            None => match replayed_outside.take() {
                                Some((base, image, chain, admit)) => admit.inspect(|_| {
                                    debug_assert!(inner.image.is_same_as(&base));
                                    inner.image = image;
                                    inner.chain = chain;
                                }),
                                None => apply_proposal(
                                    &mut inner.image,
                                    &mut inner.chain,
                                    index,
                                    proposal,
                                ),
                            }
                            .map_err(|e| {
                                    tracing::error!(%e, index, "a committed record does not replay: stopping");
                                    inner.broken = Some(e.to_string());
                                    invalid(e)
                                })?,
                        };
                        if admitted {
                            inner.tail.push(index, encode_batch(&proposal.batch));
                        } else {
                            tracing::info!(
                                index,
                                stamp = ?proposal.stamp,
                                "a proposal landed where its controller did not predict: committed as a no-op"
                            );
                        }
                    }
                    EntryPayload::Membership(m) => {
                        inner.chain.skip();
                        inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    }
                }
                inner.last_applied = Some(entry.log_id);
                self.applied.send_replace(index);
            }
            if let Some(responder) = responder {
                responder.send(BatchApplied {
                    offset: index,
                    admitted,
                });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let (image, chain) = decode_snapshot(&snapshot, offset_of(&meta.last_log_id))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot,
        };
        let path = self.lock().snapshot_path.clone();
        write_atomic(&path, &postcard::to_allocvec(&file).map_err(invalid)?)?;
        let mut inner = self.lock();
        inner.image = image;
        inner.expected.clear();
        inner.chain = chain;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(file);
        inner.tail = Tail::new(meta.last_log_id.map_or(0, |l| l.index() + 1));
        inner.broken = None;
        self.applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index()));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        Ok(self.lock().snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: s.data.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Entry, SessionId};
    use kmeta_metadata::record::{FeatureLevelRecord, UnregisterBrokerRecord};

    const SESSION: SessionId = SessionId {
        term: 2,
        node: 101,
        nonce: 1,
    };

    fn feature(name: &str, level: u16) -> MetadataRecord {
        MetadataRecord::FeatureLevel(FeatureLevelRecord {
            name: name.to_string(),
            level,
        })
    }

    fn stamp(session: SessionId, offset: u64) -> Stamp {
        Stamp {
            session,
            first_offset: 1,
            offset,
        }
    }

    /// Applies one normal entry at `index` through openraft's `apply`.
    async fn apply(sm: &mut StateMachine, index: u64, stamp: Stamp, records: Vec<MetadataRecord>) {
        try_apply(sm, index, stamp, records).await.expect("applies");
    }

    async fn try_apply(
        sm: &mut StateMachine,
        index: u64,
        stamp: Stamp,
        records: Vec<MetadataRecord>,
    ) -> io::Result<()> {
        let entry = Entry {
            log_id: LogId::new(
                openraft::vote::leader_id_adv::LeaderId {
                    term: 2,
                    node_id: 101,
                },
                index,
            ),
            payload: EntryPayload::Normal(Proposal {
                stamp: Some(stamp),
                batch: MetadataBatch::new(records),
            }),
        };
        let entries = futures_util::stream::iter(vec![Ok((entry, None))]);
        sm.apply(entries).await
    }

    #[tokio::test]
    async fn an_entry_that_fails_to_replay_halfway_is_never_snapshotted() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply(
            &mut sm,
            1,
            stamp(SESSION, 1),
            vec![feature("metadata.version", 1)],
        )
        .await;
        // Replayed in place: the first record lands, the second fails, and the image is
        // left between the two.
        let failing = vec![
            feature("kraft.version", 1),
            MetadataRecord::UnregisterBroker(UnregisterBrokerRecord {
                broker_id: kmeta_metadata::BrokerId(7),
                broker_epoch: kmeta_metadata::BrokerEpoch(1),
            }),
        ];
        let err = try_apply(&mut sm, 2, stamp(SESSION, 2), failing).await;
        assert!(
            err.is_err(),
            "a committed record that does not replay is fatal"
        );
        let Err(why) = sm.build_snapshot().await else {
            panic!("a snapshot of a half-replayed image");
        };
        let why = why.to_string();
        assert!(why.contains("broker 7 is not registered"), "{why}");
        assert!(
            !dir.path().join("snapshot").exists(),
            "nothing written for the half-replayed image"
        );
    }

    #[test]
    fn snapshots_are_written_as_postcard_writes_the_list_of_record_encodings() {
        #[derive(Serialize)]
        struct Owned {
            chain: ProposalChain,
            records: Vec<Vec<u8>>,
        }
        let mut image = MetadataImage::new();
        // Enough records that counts and lengths take more than one varint byte.
        for i in 0..300u16 {
            let name = "f".repeat(usize::from(i));
            image.replay(LogOffset(1), &feature(&name, i + 1)).unwrap();
        }
        let mut records = Vec::new();
        image.for_each_record(|r| records.push(r.encode()));
        let chain = ProposalChain::default();
        let owned = Owned {
            chain,
            records: records.clone(),
        };
        assert_eq!(
            encode_snapshot(&image, chain),
            postcard::to_allocvec(&owned).unwrap()
        );
        assert_eq!(
            encode_records(&image),
            postcard::to_allocvec(&records).unwrap()
        );
        let (decoded, _) = decode_snapshot(&encode_snapshot(&image, chain), LogOffset(1)).unwrap();
        assert_eq!(decoded.canonical_hash(), image.canonical_hash());
        let decoded = decode_image(&encode_records(&image), LogOffset(1)).unwrap();
        assert_eq!(decoded.canonical_hash(), image.canonical_hash());
    }

    #[tokio::test]
    async fn the_active_controllers_own_entry_is_applied_as_the_image_it_built_without_a_second_replay(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let records = vec![feature("metadata.version", 1)];
        let base = sm.image();
        let after = replayed(&base, 1, &records).unwrap();
        sm.expect(stamp(SESSION, 1), base, after.clone());
        apply(&mut sm, 1, stamp(SESSION, 1), records.clone()).await;
        // The very image the controller built (shared), not a copy replayed again.
        assert!(sm.image().is_same_as(&after));
        // And the next one chains on it.
        let next = vec![feature("kraft.version", 1)];
        let after2 = replayed(&after, 2, &next).unwrap();
        sm.expect(stamp(SESSION, 2), after.clone(), after2.clone());
        apply(&mut sm, 2, stamp(SESSION, 2), next).await;
        assert!(sm.image().is_same_as(&after2));
    }

    #[tokio::test]
    async fn an_entry_that_is_not_the_expected_one_on_the_expected_image_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let records = vec![feature("metadata.version", 1)];
        // A wrong "after" to tell adoption from replay.
        let wrong = replayed(&sm.image(), 1, &[feature("metadata.version", 9)]).unwrap();

        // Another session's proposal at the expected offset.
        let other = SessionId {
            nonce: 2,
            ..SESSION
        };
        sm.expect(stamp(other, 1), sm.image(), wrong.clone());
        let base = sm.image();
        apply(&mut sm, 1, stamp(SESSION, 1), records.clone()).await;
        assert_eq!(sm.image(), replayed(&base, 1, &records).unwrap());
        assert_ne!(sm.image(), wrong);

        // The expected stamp, but decided on an image that is equal, not the one applied to.
        let next = vec![feature("kraft.version", 1)];
        let equal_copy = replayed(&MetadataImage::new(), 1, &records).unwrap();
        assert_eq!(equal_copy, sm.image());
        let wrong = replayed(&equal_copy, 2, &[feature("kraft.version", 9)]).unwrap();
        sm.expect(stamp(SESSION, 2), equal_copy, wrong.clone());
        let base = sm.image();
        apply(&mut sm, 2, stamp(SESSION, 2), next.clone()).await;
        assert_eq!(sm.image(), replayed(&base, 2, &next).unwrap());
        assert_ne!(sm.image(), wrong);

        // Forgotten when the session ends.
        let last = vec![feature("group.version", 1)];
        let base = sm.image();
        sm.expect(stamp(SESSION, 3), base.clone(), wrong.clone());
        sm.forget_expected();
        apply(&mut sm, 3, stamp(SESSION, 3), last.clone()).await;
        assert_eq!(sm.image(), replayed(&base, 3, &last).unwrap());
    }
}
