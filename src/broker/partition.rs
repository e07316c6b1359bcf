//! A partition replica on a broker: its log, its role (leader or follower) taken from the
//! metadata image, and, as leader, the followers' fetch state, the high watermark and the ISR
//! changes it proposes through AlterPartition (Kafka's `Partition.scala`; the rules and their
//! sources are in `shared/reference/kafka-data-plane.md` §1–§3).
//!
//! Every method locks the partition for a short, synchronous step (an append is one positioned
//! write to the page cache). Waiting (acks=all, long polls) happens outside, on
//! [`super::replicas::Replicas::changes`].

use super::changes::Health;
use super::log::batch::{self, BatchHeader};
use super::log::producers::Check;
use super::log::{LogConfig, PartitionLog};
use bytes::Bytes;
use kmeta_metadata::{ErrorCode, TopicIdPartition};
use std::sync::{Arc, Mutex, MutexGuard};

/// Milliseconds on a monotonic clock (follower lag and ISR timing).
pub fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// This broker's role for the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It leads: it takes produce requests and serves fetches.
    Leader,
    /// It copies the log of `leader`.
    Follower {
        /// The leader's broker id (-1: none elected).
        leader: i32,
    },
}

/// Broker ids of one partition (its replicas or ISR), held in place up to four: applying a
/// third of a million leader moves builds one of these per partition.
pub type BrokerIds = smallvec::SmallVec<[i32; 4]>;

/// The partition's state as the controller committed it (from the image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAndIsr {
    /// The leader (-1: none).
    pub leader: i32,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch.
    pub partition_epoch: i32,
    /// All replicas.
    pub replicas: BrokerIds,
    /// The in-sync replicas.
    pub isr: BrokerIds,
}

/// Settings of one partition, from the broker's config and the topic's overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    /// The log's settings, shared by the partitions of a topic (compared by value).
    pub log: Arc<LogConfig>,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_ms: i64,
}

/// What the leader knows of one follower (Kafka's `ReplicaState`).
#[derive(Clone, Copy, Debug)]
struct Follower {
    /// Its log end as of its last fetch; -1 until it fetches from this leader.
    leo: i64,
    last_fetch_ms: i64,
    last_fetch_leader_leo: i64,
    last_caught_up_ms: i64,
}

impl Follower {
    fn unknown(caught_up_ms: i64) -> Follower {
        Follower {
            leo: -1,
            last_fetch_ms: 0,
            last_fetch_leader_leo: -1,
            last_caught_up_ms: caught_up_ms,
        }
    }

    fn caught_up(&self, leader_leo: i64, now: i64, lag: i64) -> bool {
        self.leo >= 0 && (self.leo >= leader_leo || now - self.last_caught_up_ms <= lag)
    }
}

/// The followers a leader knows, by broker id: a short list (a replica set has a handful of
/// members), where a `BTreeMap` took a 400-byte node per led partition.
#[derive(Clone, Debug, Default)]
struct Followers(Vec<(i32, Follower)>);

impl Followers {
    fn get(&self, id: &i32) -> Option<&Follower> {
        self.0.iter().find(|(r, _)| r == id).map(|(_, f)| f)
    }

    /// The follower `id`, added as unknown if it is not listed.
    fn entry(&mut self, id: i32) -> &mut Follower {
        let i = match self.0.iter().position(|(r, _)| *r == id) {
            Some(i) => i,
            None => {
                self.0.push((id, Follower::unknown(0)));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// An ISR change sent to the controller and not answered yet.
#[derive(Clone, Debug)]
struct PendingIsr {
    /// The ISR proposed.
    proposed: Vec<i32>,
    /// The ISR the HW must wait for meanwhile: the larger of the committed and proposed.
    maximal: Vec<i32>,
    sent_ms: i64,
}

/// An ISR change to send (AlterPartition), with each member's broker epoch filled by the
/// caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    /// The partition.
    pub tp: TopicIdPartition,
    /// The leader epoch it is based on.
    pub leader_epoch: i32,
    /// The partition epoch it is based on.
    pub partition_epoch: i32,
    /// The new ISR.
    pub isr: Vec<i32>,
}

struct State {
    log: PartitionLog,
    role: Role,
    leader_epoch: i32,
    partition_epoch: i32,
    /// Boxed slices: exact size, a word less than a `Vec` each.
    replicas: Box<[i32]>,
    isr: Box<[i32]>,
    /// Boxed: rarely set, and a partition's state is kept small (one per hosted replica).
    pending: Option<Box<PendingIsr>>,
    followers: Followers,
    high_watermark: i64,
    /// The log end when this broker became leader in this epoch.
    epoch_start_offset: i64,
    /// Shared by the topic's partitions (compared by value when new metadata arrives).
    config: Arc<PartitionConfig>,
}

impl State {
    fn maximal_isr(&self) -> &[i32] {
        self.pending.as_ref().map_or(&self.isr, |p| &p.maximal)
    }

    /// What this replica adds to its broker's totals.
    fn health(&self) -> Health {
        let leads = self.role == Role::Leader;
        Health {
            leads,
            under_replicated: leads && self.isr.len() < self.replicas.len(),
            under_min_isr: leads && self.isr.len() < self.effective_min_isr(),
            log_bytes: self.log.size_bytes(),
        }
    }

    fn effective_min_isr(&self) -> usize {
        self.config
            .min_insync_replicas
            .min(self.replicas.len())
            .max(1)
    }

    /// Kafka's `maybeIncrementLeaderHW`: the smallest log end over the maximal ISR and the
    /// caught-up replicas about to join; not while the ISR is under min ISR. True if it rose.
    fn maybe_increment_hw(&mut self, me: i32, now: i64) -> bool {
        if self.role != Role::Leader || self.isr.len() < self.effective_min_isr() {
            return false;
        }
        let leo = self.log.log_end();
        let mut candidate = leo;
        for r in &self.replicas {
            if *r == me {
                continue;
            }
            let f = self
                .followers
                .get(r)
                .copied()
                .unwrap_or(Follower::unknown(0));
            let in_max = self.maximal_isr().contains(r);
            let joining = f.caught_up(leo, now, self.config.replica_lag_ms);
            if in_max || joining {
                candidate = candidate.min(if f.leo < 0 {
                    self.high_watermark
                } else {
                    f.leo
                });
            }
        }
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            return true;
        }
        false
    }

    fn check_epoch(&self, current_leader_epoch: i32) -> Result<(), ErrorCode> {
        if current_leader_epoch < 0 || current_leader_epoch == self.leader_epoch {
            Ok(())
        } else if current_leader_epoch < self.leader_epoch {
            Err(ErrorCode::FencedLeaderEpoch)
        } else {
            Err(ErrorCode::UnknownLeaderEpoch)
        }
    }

    fn check_leader(&self, current_leader_epoch: i32) -> Result<(), ErrorCode> {
        if self.role != Role::Leader {
            // Kafka fences the epoch first; a newer epoch means this broker is behind.
            if current_leader_epoch > self.leader_epoch {
                return Err(ErrorCode::UnknownLeaderEpoch);
            }
            return Err(ErrorCode::NotLeaderOrFollower);
        }
        self.check_epoch(current_leader_epoch)
    }
}

/// The outcome of a produce to one partition, before any wait for replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    /// The first offset assigned (or of the original batch, for a duplicate).
    pub base_offset: i64,
    /// The offset after the batch: acks=all waits until the HW reaches it.
    pub required_offset: i64,
    /// The broker time stamped on a LogAppendTime topic, else -1.
    pub log_append_time: i64,
    /// The log start offset.
    pub log_start: i64,
    /// The leader epoch it was appended in.
    pub leader_epoch: i32,
}

/// Offsets a fetch response reports with its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// The high watermark.
    pub high_watermark: i64,
    /// The log start offset.
    pub log_start: i64,
    /// The log end offset.
    pub log_end: i64,
}

/// A read from the log.
#[derive(Debug)]
pub enum Read {
    /// Whole batches (possibly none).
    Records(Bytes, Marks),
    /// The requester's last fetched epoch ends at `end_offset` here (KIP-320): truncate.
    Diverging {
        /// The largest epoch ≤ the requester's this log knows.
        epoch: i32,
        /// Where it ends.
        end_offset: i64,
        /// The marks.
        marks: Marks,
    },
}

/// What a follower fetch did on the leader.
pub struct FollowerFetch {
    /// The read.
    pub read: Read,
    /// The HW rose (acks=all waiters may complete).
    pub hw_changed: bool,
    /// The follower may now join the ISR.
    pub may_expand: bool,
    /// The follower is at the log end, everything is committed and nothing diverged: until
    /// the version changes, the same fetch gets the same empty answer.
    pub at_end: bool,
}

/// One partition replica.
pub struct Partition {
    /// The partition.
    pub tp: TopicIdPartition,
    /// Its topic's name (shared by the topic's partitions).
    pub topic: Arc<str>,
    me: i32,
    state: Mutex<State>,
    /// Set once the broker stops hosting this replica (a holder of the handle looks again).
    removed: std::sync::atomic::AtomicBool,
    /// Bumped, under the state lock, by every change of what a fetch of this replica can
    /// return or send: the log, the HW, the log start, the role, epochs, replicas and ISR.
    /// Not by a follower's fetch bookkeeping, so followers' reads do not make each other's
    /// sessions read again. A holder of a read taken at version v knows that nothing changed
    /// while the version is still v.
    version: std::sync::atomic::AtomicU64,
    /// Where a version change is announced (set once by the broker's partition set).
    changes: std::sync::OnceLock<Arc<super::changes::ChangeLog>>,
    /// The leader the broker's partition set files this replica under as followed (-1:
    /// none); changed only under that set's lock.
    filed: std::sync::atomic::AtomicI32,
}

/// A partition's state locked by a step that may change its [`Health`]: when the step lets
/// go, the broker's totals take in how the health moved.
struct Changing<'a> {
    partition: &'a Partition,
    state: MutexGuard<'a, State>,
    before: Health,
}

impl std::ops::Deref for Changing<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let after = self.state.health();
        if after != self.before {
            if let Some(changes) = self.partition.counted_in() {
                changes.totals.shift(self.before, after);
            }
        }
    }
}

/// An error on a partition, with the marks to report alongside where known.
pub type PartitionError = (ErrorCode, Option<Marks>);

impl Partition {
    /// A replica of `tp` on broker `me`, its log in `dir` (opened, or created on first write).
    pub fn open(
        tp: TopicIdPartition,
        topic: Arc<str>,
        me: i32,
        dir: std::path::PathBuf,
        config: impl Into<Arc<PartitionConfig>>,
    ) -> std::io::Result<Partition> {
        let config = config.into();
        let log = PartitionLog::open(dir, tp.topic_id, config.log.clone())?;
        Ok(Partition::with_log(tp, topic, me, log, config))
    }

    /// [`Self::open`] for a caller that knows `dir` does not exist: an empty log, created on
    /// first write, without a lookup on disk.
    pub fn new_empty(
        tp: TopicIdPartition,
        topic: Arc<str>,
        me: i32,
        dir: std::path::PathBuf,
        config: impl Into<Arc<PartitionConfig>>,
    ) -> Partition {
        let config = config.into();
        let log = PartitionLog::empty(dir, tp.topic_id, config.log.clone());
        Partition::with_log(tp, topic, me, log, config)
    }

    fn with_log(
        tp: TopicIdPartition,
        topic: Arc<str>,
        me: i32,
        log: PartitionLog,
        config: Arc<PartitionConfig>,
    ) -> Partition {
        Partition {
            tp,
            topic,
            me,
            state: Mutex::new(State {
                log,
                role: Role::Follower { leader: -1 },
                leader_epoch: -1,
                partition_epoch: -1,
                replicas: Box::default(),
                isr: Box::default(),
                pending: None,
                followers: Followers::default(),
                high_watermark: 0,
                epoch_start_offset: 0,
                config,
            }),
            removed: Default::default(),
            version: std::sync::atomic::AtomicU64::new(1),
            changes: std::sync::OnceLock::new(),
            filed: std::sync::atomic::AtomicI32::new(-1),
        }
    }

    /// The leader this replica is filed under as followed (see the field).
    pub fn filed_leader(&self) -> Option<i32> {
        let l = self.filed.load(std::sync::atomic::Ordering::Acquire);
        (l >= 0).then_some(l)
    }

    /// Files this replica under `leader` as followed (`None`: not followed).
    pub fn file_leader(&self, leader: Option<i32>) {
        self.filed
            .store(leader.unwrap_or(-1), std::sync::atomic::Ordering::Release);
    }

    /// Announces each later version change in `changes`, and counts this replica in its
    /// totals from now until [`Self::mark_removed`].
    pub fn announce_to(&self, changes: Arc<super::changes::ChangeLog>) {
        // Under the lock, so that no step is halfway between its health before and after.
        let s = self.lock();
        if !self.is_removed() && self.changes.get().is_none() {
            changes.totals.join(s.health());
            let _ = self.changes.set(changes);
        }
    }

    /// Marks this replica as no longer hosted (and no longer counted in the totals).
    pub fn mark_removed(&self) {
        let s = self.lock();
        if let Some(changes) = self.counted_in() {
            changes.totals.leave(s.health());
        }
        self.removed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Where this replica is counted, if it is.
    fn counted_in(&self) -> Option<&super::changes::ChangeLog> {
        self.changes
            .get()
            .filter(|_| !self.is_removed())
            .map(|c| c.as_ref())
    }

    /// True once this replica is no longer hosted here.
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks for a step that may change the role, the ISR, the replicas, the config or the
    /// log's size (see [`Changing`]).
    fn lock_to_change(&self) -> Changing<'_> {
        let state = self.lock();
        let before = state.health();
        Changing {
            partition: self,
            state,
            before,
        }
    }

    /// The version (see the field): unchanged means no fetch would see anything new.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks a change; called with the state lock held, so a reader holding the lock sees
    /// the version that goes with the state it reads.
    fn bump(&self, _locked: &State) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(changes) = self.changes.get() {
            changes.push(self.tp);
        }
    }

    /// The role, leader epoch and log end offset.
    pub fn role(&self) -> (Role, i32) {
        let s = self.lock();
        (s.role, s.leader_epoch)
    }

    /// The high watermark, log start and log end.
    pub fn marks(&self) -> Marks {
        let s = self.lock();
        Marks {
            high_watermark: s.high_watermark,
            log_start: s.log.log_start(),
            log_end: s.log.log_end(),
        }
    }

    /// The committed ISR and the maximal ISR.
    pub fn isr(&self) -> (Vec<i32>, Vec<i32>) {
        let s = self.lock();
        (s.isr.to_vec(), s.maximal_isr().to_vec())
    }

    /// Applies the controller's committed state. Returns true if this broker's role or leader
    /// epoch changed (a follower must then restart fetching).
    pub fn apply(
        &self,
        new: &LeaderAndIsr,
        config: impl Into<Arc<PartitionConfig>>,
    ) -> std::io::Result<bool> {
        let config = config.into();
        let now = mono_ms();
        let mut s = self.lock_to_change();
        self.bump(&s);
        if s.config != config {
            s.log.set_config(config.log.clone());
            s.config = config;
        }
        let role = if new.leader == self.me {
            Role::Leader
        } else {
            Role::Follower { leader: new.leader }
        };
        if new.leader_epoch < s.leader_epoch
            || (new.leader_epoch == s.leader_epoch && new.partition_epoch <= s.partition_epoch)
        {
            return Ok(false);
        }
        if role == Role::Leader && new.leader_epoch < s.log.epochs().latest_epoch() {
            // This log already holds a later epoch: the state is stale (an image replayed
            // from the past). Leading it would truncate the epoch cache; wait for newer state.
            tracing::warn!(tp = ?self.tp, epoch = new.leader_epoch, latest = s.log.epochs().latest_epoch(), "ignoring leadership in an epoch older than the log's");
            return Ok(false);
        }
        let epoch_changed = new.leader_epoch != s.leader_epoch || role != s.role;
        s.leader_epoch = new.leader_epoch;
        s.partition_epoch = new.partition_epoch;
        // Most changes (an ISR shrink, a leader move) keep one of the two as it was.
        if *s.replicas != new.replicas[..] {
            s.replicas = new.replicas.as_slice().into();
        }
        if *s.isr != new.isr[..] {
            s.isr = new.isr.as_slice().into();
        }
        s.pending = None;
        if epoch_changed {
            match role {
                Role::Leader => {
                    // KIP-279: the new epoch starts at the log end, before anything is written.
                    let leo = s.log.log_end();
                    s.log.assign_epoch(new.leader_epoch, leo)?;
                    s.epoch_start_offset = leo;
                    let mut followers: Vec<(i32, Follower)> = s
                        .replicas
                        .iter()
                        .filter(|r| **r != self.me)
                        .map(|r| {
                            let at = if s.isr.contains(r) { now } else { 0 };
                            (*r, Follower::unknown(at))
                        })
                        .collect();
                    followers.shrink_to_fit();
                    s.followers = Followers(followers);
                    tracing::debug!(tp = ?self.tp, epoch = new.leader_epoch, leo, "became leader");
                }
                Role::Follower { leader } => {
                    s.followers.clear();
                    let leo = s.log.log_end();
                    s.high_watermark = s.high_watermark.min(leo);
                    tracing::debug!(tp = ?self.tp, epoch = new.leader_epoch, leader, "became follower");
                }
            }
            s.role = role;
        }
        s.maybe_increment_hw(self.me, now);
        Ok(epoch_changed)
    }

    /// Produce on the leader: validates the one batch, checks min ISR for acks=all, assigns
    /// offsets, deduplicates idempotent retries and appends. Kafka's order (§1.2).
    pub fn append_as_leader(
        &self,
        records: &[u8],
        acks: i16,
        wall_ms: i64,
    ) -> Result<Produced, PartitionError> {
        let now = mono_ms();
        let mut s = self.lock_to_change();
        s.check_leader(-1).map_err(|e| (e, None))?;
        if acks == -1 && s.isr.len() < s.effective_min_isr() {
            return Err((ErrorCode::NotEnoughReplicas, None));
        }
        let max = s.config.log.max_message_bytes;
        if records.len() > max {
            return Err((ErrorCode::MessageTooLarge, None));
        }
        let mut bytes = records.to_vec();
        let h = BatchHeader::parse(&bytes).ok_or((ErrorCode::InvalidRecord, None))?;
        if h.base_offset != 0
            || h.last_offset_delta + 1 != h.records_count
            || h.records_count <= 0
            || h.is_control()
            || (h.has_producer_id() && h.base_sequence < 0)
        {
            return Err((ErrorCode::InvalidRecord, None));
        }
        if h.is_transactional() {
            // kmeta has no transaction coordinator.
            return Err((ErrorCode::TransactionalIdAuthorizationFailed, None));
        }
        if !batch::crc_ok(&bytes) {
            return Err((ErrorCode::CorruptMessage, None));
        }
        if bytes.len() as u64 > s.config.log.segment_bytes {
            return Err((ErrorCode::RecordListTooLarge, None));
        }
        let log_start = s.log.log_start();
        match s.log.producers().check(&h) {
            Err(code) => return Err((code, None)),
            Ok(Check::Duplicate(b)) => {
                return Ok(Produced {
                    base_offset: b.first_offset,
                    required_offset: b.last_offset + 1,
                    log_append_time: if s.config.log.log_append_time {
                        b.timestamp
                    } else {
                        -1
                    },
                    log_start,
                    leader_epoch: s.leader_epoch,
                })
            }
            Ok(Check::Append) => {}
        }
        let base = s.log.log_end();
        batch::set_base_offset(&mut bytes, base);
        batch::set_leader_epoch(&mut bytes, s.leader_epoch);
        let log_append_time = if s.config.log.log_append_time {
            batch::set_log_append_time(&mut bytes, wall_ms);
            wall_ms
        } else {
            -1
        };
        self.bump(&s);
        let appended = s.log.append(&bytes).map_err(|e| {
            tracing::error!(tp = ?self.tp, error = %e, "append failed");
            (ErrorCode::KafkaStorageError, None)
        })?;
        s.maybe_increment_hw(self.me, now);
        Ok(Produced {
            base_offset: appended.first_offset,
            required_offset: appended.last_offset + 1,
            log_append_time,
            log_start,
            leader_epoch: s.leader_epoch,
        })
    }

    /// For an acks=all produce appended in `leader_epoch`: `None` while the HW is below
    /// `required_offset`; then Ok, or NOT_ENOUGH_REPLICAS_AFTER_APPEND if the maximal ISR
    /// dropped under min ISR, or NOT_LEADER_OR_FOLLOWER if leadership moved.
    pub fn produce_outcome(&self, required_offset: i64, leader_epoch: i32) -> Option<ErrorCode> {
        let s = self.lock();
        if s.role != Role::Leader || s.leader_epoch != leader_epoch {
            return Some(ErrorCode::NotLeaderOrFollower);
        }
        if s.high_watermark < required_offset {
            return None;
        }
        if s.maximal_isr().len() < s.effective_min_isr() {
            return Some(ErrorCode::NotEnoughReplicasAfterAppend);
        }
        Some(ErrorCode::None)
    }

    fn read_locked(
        s: &State,
        fetch_offset: i64,
        last_fetched_epoch: i32,
        max_bytes: usize,
        min_one: bool,
        upper: i64,
    ) -> Result<Read, PartitionError> {
        let marks = Marks {
            high_watermark: s.high_watermark,
            log_start: s.log.log_start(),
            log_end: s.log.log_end(),
        };
        if last_fetched_epoch >= 0 {
            let (epoch, end) = s
                .log
                .epochs()
                .end_offset_for(last_fetched_epoch, marks.log_end);
            if epoch < 0 || end < 0 || fetch_offset < marks.log_start {
                return Err((ErrorCode::OffsetOutOfRange, Some(marks)));
            }
            if epoch < last_fetched_epoch || end < fetch_offset {
                return Ok(Read::Diverging {
                    epoch,
                    end_offset: end,
                    marks,
                });
            }
        }
        if fetch_offset < marks.log_start || fetch_offset > marks.log_end {
            return Err((ErrorCode::OffsetOutOfRange, Some(marks)));
        }
        let records = s
            .log
            .read(fetch_offset, max_bytes, upper, min_one)
            .map_err(|e| {
                tracing::error!(error = %e, "read failed");
                (ErrorCode::KafkaStorageError, Some(marks))
            })?;
        Ok(Read::Records(records, marks))
    }

    /// A consumer's fetch: up to the HW (read_committed has the same bound: no transactions).
    pub fn read_for_consumer(
        &self,
        fetch_offset: i64,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Read, PartitionError> {
        let s = self.lock();
        s.check_leader(current_leader_epoch)
            .map_err(|e| (e, None))?;
        let hw = s.high_watermark;
        Self::read_locked(&s, fetch_offset, last_fetched_epoch, max_bytes, min_one, hw)
    }

    /// A follower's fetch: up to the log end. Updates what the leader knows of `replica`
    /// (unless the histories diverged) and maybe the HW.
    ///
    /// `skipped_fetch_ms` is the time of the follower's latest earlier fetch that left this
    /// partition unread (a session fetch skips a partition whose version has not moved since
    /// its last answer), or -1: at that fetch the follower was where it is now and the log
    /// was as last read, so it counts as a fetch then, as Kafka's leader would have recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn read_for_follower(
        &self,
        replica: i32,
        fetch_offset: i64,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        max_bytes: usize,
        min_one: bool,
        skipped_fetch_ms: i64,
    ) -> Result<FollowerFetch, PartitionError> {
        let now = mono_ms();
        let mut s = self.lock();
        s.check_leader(current_leader_epoch)
            .map_err(|e| (e, None))?;
        if !s.replicas.contains(&replica) || replica == self.me {
            return Err((
                if current_leader_epoch >= 0 {
                    ErrorCode::UnknownLeaderEpoch
                } else {
                    ErrorCode::NotLeaderOrFollower
                },
                None,
            ));
        }
        let leo = s.log.log_end();
        let read = Self::read_locked(
            &s,
            fetch_offset,
            last_fetched_epoch,
            max_bytes,
            min_one,
            leo,
        )?;
        if matches!(read, Read::Diverging { .. }) {
            return Ok(FollowerFetch {
                read,
                hw_changed: false,
                may_expand: false,
                at_end: false,
            });
        }
        let f = s.followers.entry(replica);
        if skipped_fetch_ms > f.last_fetch_ms && fetch_offset == f.leo {
            // The skipped fetch, as if read: the leader's log end then was the one last seen.
            if f.last_fetch_leader_leo >= 0 && fetch_offset >= f.last_fetch_leader_leo {
                f.last_caught_up_ms = skipped_fetch_ms;
            }
            f.last_fetch_ms = skipped_fetch_ms;
        }
        if fetch_offset >= leo {
            f.last_caught_up_ms = now;
        } else if f.last_fetch_leader_leo >= 0 && fetch_offset >= f.last_fetch_leader_leo {
            f.last_caught_up_ms = f.last_fetch_ms;
        }
        f.leo = fetch_offset;
        f.last_fetch_ms = now;
        f.last_fetch_leader_leo = leo;
        let hw_changed = s.maybe_increment_hw(self.me, now);
        if hw_changed {
            self.bump(&s);
        }
        let may_expand = s.pending.is_none()
            && !s.isr.contains(&replica)
            && fetch_offset >= s.high_watermark
            && fetch_offset >= s.epoch_start_offset;
        let read = match read {
            Read::Records(r, mut marks) => {
                marks.high_watermark = s.high_watermark;
                Read::Records(r, marks)
            }
            d => d,
        };
        Ok(FollowerFetch {
            read,
            hw_changed,
            may_expand,
            // Everything committed too: while the HW is below the log end, time alone can
            // move it (a joining follower's lag runs out), so the partition is read on.
            at_end: fetch_offset >= leo && s.high_watermark >= leo,
        })
    }

    /// A follower appends what its leader sent and takes the leader's HW and log start.
    /// `Ok(false)` if this broker no longer follows in `leader_epoch`.
    pub fn append_as_follower(
        &self,
        leader_epoch: i32,
        fetch_offset: i64,
        records: &[u8],
        leader_hw: i64,
        leader_log_start: i64,
    ) -> Result<bool, String> {
        let mut s = self.lock_to_change();
        self.bump(&s);
        if s.role == Role::Leader || s.leader_epoch != leader_epoch {
            return Ok(false);
        }
        if s.log.log_end() != fetch_offset {
            // The log changed under this fetch (a truncation); the next fetch starts over.
            return Ok(false);
        }
        if !records.is_empty() {
            s.log.append(records).map_err(|e| e.to_string())?;
        }
        let leo = s.log.log_end();
        let hw = leader_hw.min(leo).max(s.high_watermark.min(leo));
        s.high_watermark = hw;
        if leader_log_start > s.log.log_start() {
            let to = leader_log_start.min(hw);
            s.log.advance_log_start(to).map_err(|e| e.to_string())?;
        }
        Ok(true)
    }

    /// A follower told that its history diverged: truncates as Kafka's fetcher does
    /// (`getOffsetTruncationState`, §3.5). Returns the new log end.
    pub fn truncate_on_divergence(
        &self,
        leader_epoch: i32,
        epoch: i32,
        end_offset: i64,
    ) -> std::io::Result<Option<i64>> {
        let mut s = self.lock_to_change();
        self.bump(&s);
        if s.role == Role::Leader || s.leader_epoch != leader_epoch {
            return Ok(None);
        }
        let leo = s.log.log_end();
        let (mine, my_end) = s.log.epochs().end_offset_for(epoch, leo);
        let to = if mine == epoch {
            my_end.min(end_offset).min(leo)
        } else if mine >= 0 {
            // This log never had `epoch`: cut to the end of the epoch it has, ask again.
            my_end.min(leo)
        } else {
            end_offset.min(leo)
        };
        tracing::info!(tp = ?self.tp, from = leo, to, epoch, end_offset, "truncating a diverged log");
        s.log.truncate_to(to)?;
        let leo = s.log.log_end();
        s.high_watermark = s.high_watermark.min(leo);
        Ok(Some(leo))
    }

    /// A follower whose fetch offset is out of the leader's range: restart at the leader's
    /// log start if behind it, else cut back to the leader's HW and fetch on.
    pub fn reset_out_of_range(
        &self,
        leader_epoch: i32,
        leader_log_start: i64,
        leader_hw: i64,
    ) -> std::io::Result<()> {
        let mut s = self.lock_to_change();
        self.bump(&s);
        if s.role == Role::Leader || s.leader_epoch != leader_epoch {
            return Ok(());
        }
        if s.log.log_end() < leader_log_start {
            s.log.truncate_fully_and_start_at(leader_log_start)?;
        } else if leader_hw >= 0 && leader_hw < s.log.log_end() {
            s.log.truncate_to(leader_hw)?;
        }
        let leo = s.log.log_end();
        s.high_watermark = s.high_watermark.min(leo);
        Ok(())
    }

    /// What a follower sends for this partition: `(leader epoch, fetch offset, last fetched
    /// epoch, log start)`, or `None` unless it follows `leader`.
    pub fn follower_fetch_position(&self, leader: i32) -> Option<(i32, i64, i32, i64)> {
        let s = self.lock();
        match s.role {
            Role::Follower { leader: l } if l == leader && l >= 0 => Some((
                s.leader_epoch,
                s.log.log_end(),
                s.log.epochs().latest_epoch(),
                s.log.log_start(),
            )),
            _ => None,
        }
    }

    /// OffsetForLeaderEpoch on the leader (§3.3).
    pub fn end_offset_for(
        &self,
        current_leader_epoch: i32,
        requested: i32,
    ) -> Result<(i32, i64), ErrorCode> {
        let s = self.lock();
        s.check_leader(current_leader_epoch)?;
        Ok(s.log.epochs().end_offset_for(requested, s.log.log_end()))
    }

    /// ListOffsets on the leader (§5.1): `(offset, timestamp)`. `replica` requests (≥ 0) see
    /// the log end for "latest".
    pub fn list_offset(
        &self,
        timestamp: i64,
        current_leader_epoch: i32,
        from_replica: bool,
    ) -> Result<(i64, i64, i32), ErrorCode> {
        let s = self.lock();
        s.check_leader(current_leader_epoch)?;
        let hw = s.high_watermark;
        let epoch = s.leader_epoch;
        let fetchable = if from_replica { s.log.log_end() } else { hw };
        let lagging = !from_replica && hw < s.epoch_start_offset;
        match timestamp {
            -2 | -4 => Ok((s.log.log_start(), -1, epoch)),
            -1 | -5 => {
                if lagging {
                    Err(ErrorCode::OffsetNotAvailable)
                } else {
                    Ok((fetchable, -1, epoch))
                }
            }
            -3 => match s.log.max_timestamp() {
                Some((o, t)) if o < fetchable => Ok((o, t, epoch)),
                _ => Ok((-1, -1, epoch)),
            },
            t if t >= 0 => {
                if lagging {
                    return Err(ErrorCode::OffsetNotAvailable);
                }
                match s.log.offset_for_timestamp(t) {
                    Ok(Some((o, ts))) if o < fetchable => Ok((o, ts, epoch)),
                    Ok(_) => Ok((-1, -1, epoch)),
                    Err(_) => Err(ErrorCode::KafkaStorageError),
                }
            }
            _ => Err(ErrorCode::InvalidRequest),
        }
    }

    /// The ISR change this leader would propose now, if any (and marks it pending): drop
    /// followers that have not caught up within `replica.lag.time.max.ms`, add followers that
    /// reached the HW and the epoch start and are `eligible`.
    pub fn isr_proposal(&self, eligible: impl Fn(i32) -> bool) -> Option<IsrProposal> {
        let now = mono_ms();
        let mut s = self.lock();
        if s.role != Role::Leader {
            return None;
        }
        if let Some(p) = &s.pending {
            // A reply that never came (or a rejection that new metadata did not follow):
            // try again after a while.
            if now - p.sent_ms < 10_000 {
                return None;
            }
            s.pending = None;
            self.bump(&s);
        }
        let leo = s.log.log_end();
        let lag = s.config.replica_lag_ms;
        let out: Vec<i32> = s
            .isr
            .iter()
            .copied()
            .filter(|r| *r != self.me)
            .filter(|r| {
                !s.followers
                    .get(r)
                    .is_some_and(|f| f.caught_up(leo, now, lag))
            })
            .filter(|r| {
                // A follower this leader has not heard from yet gets the lag time from the
                // election before it is dropped.
                s.followers
                    .get(r)
                    .is_some_and(|f| now - f.last_caught_up_ms > lag)
            })
            .collect();
        let (proposed, maximal) = if !out.is_empty() {
            let proposed: Vec<i32> = s.isr.iter().copied().filter(|r| !out.contains(r)).collect();
            (proposed, s.isr.to_vec())
        } else {
            let joining: Vec<i32> = s
                .replicas
                .iter()
                .copied()
                .filter(|r| *r != self.me && !s.isr.contains(r))
                .filter(|r| {
                    s.followers.get(r).is_some_and(|f| {
                        f.leo >= 0 && f.leo >= s.high_watermark && f.leo >= s.epoch_start_offset
                    })
                })
                .filter(|r| eligible(*r))
                .collect();
            if joining.is_empty() {
                return None;
            }
            let mut proposed = s.isr.to_vec();
            proposed.extend(joining);
            (proposed.clone(), proposed)
        };
        self.bump(&s);
        s.pending = Some(Box::new(PendingIsr {
            proposed: proposed.clone(),
            maximal,
            sent_ms: now,
        }));
        Some(IsrProposal {
            tp: self.tp,
            leader_epoch: s.leader_epoch,
            partition_epoch: s.partition_epoch,
            isr: proposed,
        })
    }

    /// The controller's answer to an ISR proposal: the committed state on success, else the
    /// error. Kafka's `handleAlterPartitionUpdate`/`handleAlterPartitionError` rules.
    pub fn isr_result(&self, result: Result<LeaderAndIsr, ErrorCode>) -> bool {
        let now = mono_ms();
        let mut s = self.lock_to_change();
        self.bump(&s);
        if s.pending.is_none() || s.role != Role::Leader {
            return false;
        }
        match result {
            Ok(new) => {
                if new.leader_epoch != s.leader_epoch || new.partition_epoch <= s.partition_epoch {
                    return false;
                }
                s.isr = new.isr.as_slice().into();
                s.partition_epoch = new.partition_epoch;
                s.pending = None;
                s.maybe_increment_hw(self.me, now)
            }
            Err(ErrorCode::OperationNotAttempted) | Err(ErrorCode::IneligibleReplica) => {
                s.pending = None;
                false
            }
            // Stale or fenced: new metadata will replace the state; until then stay pending.
            Err(_) => false,
        }
    }

    /// Retention (leader and followers alike, never at or above the HW).
    pub fn enforce_retention(&self, wall_ms: i64) -> std::io::Result<usize> {
        let mut s = self.lock_to_change();
        let hw = s.high_watermark;
        let deleted = s.log.enforce_retention(hw, wall_ms)?;
        if deleted > 0 {
            self.bump(&s);
        }
        Ok(deleted)
    }

    /// Bytes of log on disk.
    pub fn size_bytes(&self) -> u64 {
        self.lock().log.size_bytes()
    }

    /// Deletes the log (the replica moved away, or its topic was deleted). The partition
    /// then refuses every request: its role is "follower of nobody" in an epoch no request
    /// can name.
    pub fn delete(&self) -> std::io::Result<()> {
        let mut s = self.lock_to_change();
        self.bump(&s);
        s.role = Role::Follower { leader: -1 };
        s.leader_epoch = i32::MAX;
        s.partition_epoch = i32::MAX;
        s.log.delete()
    }

    /// The pending proposal's ISR, for diagnostics.
    pub fn pending_isr(&self) -> Option<Vec<i32>> {
        self.lock().pending.as_ref().map(|p| p.proposed.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::log::batch::build;

    fn config(min_isr: usize) -> PartitionConfig {
        PartitionConfig {
            log: Arc::new(LogConfig::default()),
            min_insync_replicas: min_isr,
            replica_lag_ms: 30_000,
        }
    }

    fn tp() -> TopicIdPartition {
        TopicIdPartition {
            topic_id: uuid::Uuid::from_u128(7),
            partition: 0,
        }
    }

    fn replica(dir: &std::path::Path, me: i32, min_isr: usize) -> Partition {
        Partition::open(
            tp(),
            "t".into(),
            me,
            dir.join(format!("b{me}")),
            config(min_isr),
        )
        .unwrap()
    }

    fn state(leader: i32, epoch: i32, isr: &[i32]) -> LeaderAndIsr {
        LeaderAndIsr {
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
            replicas: smallvec::smallvec![1, 2, 3],
            isr: isr.into(),
        }
    }

    /// The controller's answer to broker 1's shrink of its ISR to itself (epoch 1).
    fn shrunk_to_1() -> LeaderAndIsr {
        LeaderAndIsr {
            leader: 1,
            leader_epoch: 1,
            partition_epoch: 2,
            replicas: BrokerIds::new(),
            isr: smallvec::smallvec![1],
        }
    }

    fn produce(p: &Partition, value: &str) -> Result<Produced, ErrorCode> {
        p.append_as_leader(&build(&[value.as_bytes()], 1, None), -1, 1)
            .map_err(|e| e.0)
    }

    /// One follower fetch round: the follower asks, appends or truncates. True if it moved.
    fn fetch_round(leader: &Partition, follower: &Partition, id: i32) -> bool {
        let (_, epoch) = follower.role();
        let Some((_, offset, last_epoch, _)) = follower
            .follower_fetch_position(1)
            .or_else(|| follower.follower_fetch_position(2))
            .or_else(|| follower.follower_fetch_position(3))
        else {
            return false;
        };
        match leader.read_for_follower(id, offset, epoch, last_epoch, 1 << 20, true, -1) {
            Ok(f) => match f.read {
                Read::Records(r, m) => {
                    let moved = !r.is_empty();
                    follower
                        .append_as_follower(epoch, offset, &r, m.high_watermark, m.log_start)
                        .unwrap();
                    moved
                }
                Read::Diverging {
                    epoch: e,
                    end_offset,
                    ..
                } => {
                    follower
                        .truncate_on_divergence(epoch, e, end_offset)
                        .unwrap();
                    true
                }
            },
            Err(e) => panic!("follower fetch failed: {e:?}"),
        }
    }

    fn values(p: &Partition) -> Vec<String> {
        let s = p.lock();
        let bytes = s
            .log
            .read(s.log.log_start(), 1 << 30, s.log.log_end(), true)
            .unwrap();
        crate::broker::log::batch::split(&bytes)
            .unwrap()
            .iter()
            .flat_map(|(at, h)| {
                crate::broker::log::batch::values(&bytes[*at..*at + h.size()]).unwrap()
            })
            .map(|v| String::from_utf8(v.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn leadership_in_an_epoch_older_than_the_log_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = replica(dir.path(), 1, 1);
        p.apply(&state(1, 5, &[1]), config(1)).unwrap();
        produce(&p, "a").unwrap();
        drop(p);
        // Reopened (a restart) and shown a stale state in which it led epoch 3.
        let p = replica(dir.path(), 1, 1);
        assert!(!p.apply(&state(1, 3, &[1]), config(1)).unwrap());
        assert_ne!(p.role().0, Role::Leader);
        assert_eq!(p.lock().log.epochs().entries(), &[(5, 0)]);
        assert!(p.apply(&state(1, 6, &[1]), config(1)).unwrap());
        assert_eq!(p.role().0, Role::Leader);
    }

    #[test]
    fn an_unclean_leader_wins_and_the_old_leaders_extra_messages_are_lost_as_in_kafka() {
        // ISR {A}; B is behind (m1 only) when A, holding m1 m2 (acks=1), dies. An unclean
        // election makes B leader in epoch 2; B writes m3. A comes back as follower: its m2
        // goes, the documented cost of unclean.leader.election.enable.
        let dir = tempfile::tempdir().unwrap();
        let a = replica(dir.path(), 1, 1);
        let b = replica(dir.path(), 2, 1);
        a.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        b.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        produce(&a, "m1").unwrap();
        fetch_round(&a, &b, 2);
        a.apply(
            &LeaderAndIsr {
                partition_epoch: 2,
                ..state(1, 1, &[1])
            },
            config(1),
        )
        .unwrap();
        a.append_as_leader(&build(&[b"m2"], 1, None), 1, 1).unwrap();
        b.apply(&state(2, 2, &[2]), config(1)).unwrap();
        produce(&b, "m3").unwrap();
        a.apply(&state(2, 2, &[2]), config(1)).unwrap();
        while fetch_round(&b, &a, 1) {}
        assert_eq!(values(&a), vec!["m1", "m3"]);
        assert_eq!(values(&b), vec!["m1", "m3"]);
    }

    #[test]
    fn acks_all_under_min_isr_is_refused_and_appends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let leader = replica(dir.path(), 1, 2);
        leader.apply(&state(1, 1, &[1]), config(2)).unwrap();
        assert_eq!(produce(&leader, "a"), Err(ErrorCode::NotEnoughReplicas));
        assert_eq!(leader.marks().log_end, 0);
        // acks=1 is not held to min ISR, but the HW stays put under min ISR.
        leader
            .append_as_leader(&build(&[b"b"], 1, None), 1, 1)
            .unwrap();
        assert_eq!(leader.marks().log_end, 1);
        assert_eq!(leader.marks().high_watermark, 0);
    }

    #[test]
    fn the_high_watermark_waits_for_every_in_sync_follower_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let leader = replica(dir.path(), 1, 2);
        let f2 = replica(dir.path(), 2, 2);
        let f3 = replica(dir.path(), 3, 2);
        for p in [&leader, &f2, &f3] {
            p.apply(&state(1, 1, &[1, 2, 3]), config(2)).unwrap();
        }
        let done = produce(&leader, "a").unwrap();
        assert_eq!(leader.produce_outcome(done.required_offset, 1), None);
        fetch_round(&leader, &f2, 2);
        fetch_round(&leader, &f2, 2); // reports its new log end
        assert_eq!(
            leader.marks().high_watermark,
            0,
            "follower 3 has not fetched"
        );
        fetch_round(&leader, &f3, 3);
        fetch_round(&leader, &f3, 3);
        assert_eq!(leader.marks().high_watermark, 1);
        assert_eq!(
            leader.produce_outcome(done.required_offset, 1),
            Some(ErrorCode::None)
        );
        // Followers learn the HW from the leader.
        fetch_round(&leader, &f2, 2);
        assert_eq!(f2.marks().high_watermark, 1);
        // A leader change: the old answer is refused.
        leader.apply(&state(2, 2, &[1, 2, 3]), config(2)).unwrap();
        assert_eq!(
            leader.produce_outcome(done.required_offset, 1),
            Some(ErrorCode::NotLeaderOrFollower)
        );
    }

    #[test]
    fn a_follower_truncates_exactly_where_its_history_forks_kip_101() {
        // A (leader, epoch 1) has m1 m2; B has m1 only. B becomes leader (epoch 2) and
        // writes m3 at offset 1. A must drop m2 and take m3: the logs end equal.
        let dir = tempfile::tempdir().unwrap();
        let a = replica(dir.path(), 1, 1);
        let b = replica(dir.path(), 2, 1);
        a.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        b.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        produce(&a, "m1").unwrap();
        fetch_round(&a, &b, 2);
        a.append_as_leader(&build(&[b"m2"], 1, None), 1, 1).unwrap();
        b.apply(&state(2, 2, &[2]), config(1)).unwrap();
        a.apply(&state(2, 2, &[2]), config(1)).unwrap();
        produce(&b, "m3").unwrap();
        while fetch_round(&b, &a, 1) {}
        assert_eq!(values(&a), vec!["m1", "m3"]);
        assert_eq!(values(&a), values(&b));
    }

    #[test]
    fn a_double_failover_truncates_over_several_rounds_kip_279() {
        // A leads epoch 1 (m1). B leads epoch 2 and writes m2 that nobody fetches. A leads
        // again in epoch 3 and writes m3. B, following A, must drop m2 (an epoch A never saw).
        let dir = tempfile::tempdir().unwrap();
        let a = replica(dir.path(), 1, 1);
        let b = replica(dir.path(), 2, 1);
        a.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        b.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        produce(&a, "m1").unwrap();
        fetch_round(&a, &b, 2);
        b.apply(&state(2, 2, &[2]), config(1)).unwrap();
        b.append_as_leader(&build(&[b"m2"], 1, None), 1, 1).unwrap();
        a.apply(&state(1, 3, &[1]), config(1)).unwrap();
        b.apply(&state(1, 3, &[1]), config(1)).unwrap();
        produce(&a, "m3").unwrap();
        for _ in 0..5 {
            fetch_round(&a, &b, 2);
        }
        assert_eq!(values(&b), vec!["m1", "m3"]);
        assert_eq!(values(&a), values(&b));
    }

    #[test]
    fn an_idempotent_retry_gets_its_original_offset_on_a_new_leader() {
        let dir = tempfile::tempdir().unwrap();
        let a = replica(dir.path(), 1, 1);
        let b = replica(dir.path(), 2, 1);
        a.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        b.apply(&state(1, 1, &[1, 2]), config(1)).unwrap();
        let batch = build(&[b"x"], 1, Some((42, 0, 0)));
        let first = a.append_as_leader(&batch, -1, 1).unwrap();
        fetch_round(&a, &b, 2);
        // The answer was lost; A fails; the producer retries on B.
        b.apply(&state(2, 2, &[2]), config(1)).unwrap();
        let retry = b.append_as_leader(&batch, -1, 1).unwrap();
        assert_eq!(retry.base_offset, first.base_offset);
        assert_eq!(b.marks().log_end, 1, "nothing appended twice");
        let gap = build(&[b"y"], 1, Some((42, 0, 5)));
        assert_eq!(
            b.append_as_leader(&gap, -1, 1).err().map(|e| e.0),
            Some(ErrorCode::OutOfOrderSequenceNumber)
        );
    }

    #[test]
    fn a_fetch_session_skip_of_a_quiet_partition_counts_as_a_caught_up_fetch() {
        // A session leaves a quiet partition unread; when the leader appends after the lag
        // time, the follower's next read carries the skipped fetch's time and it stays in
        // sync, as it would in Kafka, whose leader reads every fetch. Without it, the same
        // read would leave the follower out of sync.
        let lag = PartitionConfig {
            replica_lag_ms: 50,
            ..config(1)
        };
        let proposal_after_quiet = |skipped: bool| {
            let dir = tempfile::tempdir().unwrap();
            let leader =
                Partition::open(tp(), "t".into(), 1, dir.path().join("b1"), lag.clone()).unwrap();
            let f2 =
                Partition::open(tp(), "t".into(), 2, dir.path().join("b2"), lag.clone()).unwrap();
            leader.apply(&state(1, 1, &[1, 2]), lag.clone()).unwrap();
            f2.apply(&state(1, 1, &[1, 2]), lag.clone()).unwrap();
            produce(&leader, "a").unwrap();
            while fetch_round(&leader, &f2, 2) {}
            fetch_round(&leader, &f2, 2);
            let quiet = leader.version();
            std::thread::sleep(std::time::Duration::from_millis(120));
            assert_eq!(leader.version(), quiet, "nothing changed while quiet");
            let skipped_fetch = mono_ms();
            produce(&leader, "b").unwrap();
            assert_ne!(leader.version(), quiet, "an append is a change");
            let (_, offset, last_epoch, _) = f2.follower_fetch_position(1).unwrap();
            assert_eq!(offset, 1);
            leader
                .read_for_follower(
                    2,
                    offset,
                    1,
                    last_epoch,
                    1 << 20,
                    true,
                    if skipped { skipped_fetch } else { -1 },
                )
                .unwrap();
            leader.isr_proposal(|_| true).map(|p| p.isr)
        };
        assert_eq!(proposal_after_quiet(true), None, "still in sync");
        assert_eq!(proposal_after_quiet(false), Some(vec![1]));
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let lag = PartitionConfig {
            replica_lag_ms: 50,
            ..config(1)
        };
        let leader =
            Partition::open(tp(), "t".into(), 1, dir.path().join("b1"), lag.clone()).unwrap();
        let f2 = Partition::open(tp(), "t".into(), 2, dir.path().join("b2"), lag.clone()).unwrap();
        leader.apply(&state(1, 1, &[1, 2]), lag.clone()).unwrap();
        f2.apply(&state(1, 1, &[1, 2]), lag.clone()).unwrap();
        produce(&leader, "a").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        let shrink = leader.isr_proposal(|_| true).expect("a shrink");
        assert_eq!(shrink.isr, vec![1]);
        // The HW still waits for 2 while the shrink is pending (the maximal ISR).
        assert_eq!(leader.marks().high_watermark, 0);
        assert!(
            leader.isr_proposal(|_| true).is_none(),
            "one change in flight"
        );
        leader.isr_result(Ok(shrunk_to_1()));
        assert_eq!(leader.marks().high_watermark, 1);
        // The follower catches up; an ineligible broker is not added, an eligible one is.
        f2.apply(
            &LeaderAndIsr {
                partition_epoch: 2,
                isr: smallvec::smallvec![1],
                ..state(1, 1, &[1])
            },
            lag.clone(),
        )
        .unwrap();
        while fetch_round(&leader, &f2, 2) {}
        fetch_round(&leader, &f2, 2);
        assert!(leader.isr_proposal(|_| false).is_none());
        let expand = leader.isr_proposal(|_| true).expect("an expansion");
        assert_eq!(expand.isr, vec![1, 2]);
    }

    #[test]
    fn the_broker_totals_move_with_every_change_as_a_count_of_each_replica_would() {
        use crate::broker::changes::{ChangeLog, TotalsNow};
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ChangeLog::default());
        // Followers fall out of the ISR after 50 ms without a fetch.
        let config = |min_isr| PartitionConfig {
            replica_lag_ms: 50,
            ..config(min_isr)
        };
        let open = |me: i32| {
            Partition::open(
                tp(),
                "t".into(),
                me,
                dir.path().join(format!("b{me}")),
                config(2),
            )
            .unwrap()
        };
        let (b1, b2) = (open(1), open(2));
        let counted = |ps: &[&Partition]| {
            let mut t = TotalsNow::default();
            for p in ps.iter().filter(|p| p.counted_in().is_some()) {
                t.add(p.lock().health());
            }
            t
        };
        let check = |step: &str| {
            assert_eq!(log.totals.now(), counted(&[&b1, &b2]), "after {step}");
        };
        check("nothing announced");
        b1.announce_to(log.clone());
        b2.announce_to(log.clone());
        check("two empty replicas announced");
        b1.apply(&state(1, 1, &[1, 2]), config(2)).unwrap();
        b2.apply(&state(1, 1, &[1, 2]), config(2)).unwrap();
        check("1 leads, under-replicated (3 replicas, ISR 2)");
        assert_eq!(log.totals.now().under_replicated, 1);
        produce(&b1, "a").unwrap();
        produce(&b1, "b").unwrap();
        while fetch_round(&b1, &b2, 2) {}
        check("appends on the leader and the follower");
        assert!(log.totals.now().log_bytes > 0);
        // 2 falls behind.
        produce(&b1, "c").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert_eq!(b1.isr_proposal(|_| true).expect("a shrink").isr, vec![1]);
        b1.isr_result(Ok(shrunk_to_1()));
        check("the leader's own ISR change, answered");
        assert_eq!(log.totals.now().under_min_isr, 1);
        b1.apply(&state(2, 2, &[2]), config(3)).unwrap();
        b2.apply(&state(2, 2, &[2]), config(3)).unwrap();
        check("leadership moved, a new min ISR");
        assert_eq!(log.totals.now().leading, 1);
        b2.append_as_leader(&build(&[b"d"], 1, None), 1, 1).unwrap();
        fetch_round(&b2, &b1, 1);
        check("the new leader's history fetched");
        b2.mark_removed();
        check("one replica removed");
        b2.mark_removed();
        b2.announce_to(log.clone());
        check("removed twice, announced again");
        assert_eq!(log.totals.now().hosted, 1);
    }

    #[test]
    fn a_hosted_replica_stays_in_the_320_byte_allocation_class() {
        // A broker keeps one per hosted replica: at a million partitions each allocation
        // class above this one (384, 448, ...) is another 61 MiB. An Arc adds two counters.
        let arc = std::mem::size_of::<Partition>() + 2 * std::mem::size_of::<usize>();
        assert!(arc <= 320, "Arc<Partition> takes {arc} bytes");
    }
}
