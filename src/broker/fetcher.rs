//! Replica fetchers: one task per leader broker this broker follows partitions of, each
//! long-polling that leader with Fetch v12 (`replica_id` = this broker) for all of them, as
//! Kafka's `ReplicaFetcherThread` does, in an incremental fetch session (KIP-227): after the
//! first fetch, a request names only the partitions whose position changed. A response's
//! records are appended verbatim; a `diverging_epoch` truncates the log where the histories
//! fork (KIP-101, KIP-279, KIP-320) before fetching on; OFFSET_OUT_OF_RANGE resets to the
//! leader's range.

use super::changes::Since;
use super::partition::Partition;
use super::partition_table::{Keyed, PartitionHash, PartitionTable};
use super::BrokerState;
use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{BrokerId as WireBrokerId, FetchRequest, TopicName};
use kmeta_metadata::{BrokerId, ErrorCode, TopicIdPartition};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The Fetch version followers send (diverging epochs arrive from v12).
pub const FOLLOWER_FETCH_VERSION: i16 = 12;
/// `replica.fetch.wait.max.ms`.
pub const WAIT_MAX_MS: i32 = 500;
/// `replica.fetch.max.bytes` (per partition).
pub const PARTITION_MAX_BYTES: i32 = 1024 * 1024;
/// `replica.fetch.response.max.bytes`.
pub const RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
const BACKOFF: Duration = Duration::from_millis(200);
/// Partitions one fetch names (new positions plus forgotten), at most: about 45 bytes each,
/// so a request stays far below the leader's `socket.request.max.bytes` (8 MiB by default)
/// however many partitions are followed. The rest are named by the next fetches, sent at
/// once (no wait at the leader) while any remain. A session's first fetch of 333,000
/// partitions was a 14.5 MB request, and the leader closed the connection on each try.
pub const MAX_PARTITIONS_PER_FETCH: usize = 10_000;
/// A fetcher with nothing to follow for this long stops (a new one starts when needed).
const IDLE_STOP: Duration = Duration::from_secs(30);

/// A partition's fetch position: (current leader epoch, fetch offset, last fetched epoch,
/// log start offset).
type Position = (i32, i64, i32, i64);

/// An `Option<Position>` in the position's own 24 bytes: `None` is a leader epoch of
/// `i32::MIN`, which no partition has. With `Option`'s tag an [`Entry`] took 88 bytes instead
/// of 72; a fetcher keeps one per followed partition, in a table of up to twice as many slots,
/// and heaptrack put 222 MiB of a broker hosting a million partitions in these tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    epoch: i32,
    last_epoch: i32,
    offset: i64,
    log_start: i64,
}

impl Slot {
    const NONE: Slot = Slot {
        epoch: i32::MIN,
        last_epoch: 0,
        offset: 0,
        log_start: 0,
    };

    fn of(position: Option<Position>) -> Slot {
        match position {
            Some((epoch, offset, last_epoch, log_start)) => {
                debug_assert!(epoch != i32::MIN, "a leader epoch of i32::MIN");
                Slot {
                    epoch,
                    last_epoch,
                    offset,
                    log_start,
                }
            }
            None => Slot::NONE,
        }
    }

    fn get(self) -> Option<Position> {
        (self.epoch != i32::MIN).then_some((
            self.epoch,
            self.offset,
            self.last_epoch,
            self.log_start,
        ))
    }

    fn is_some(self) -> bool {
        self.epoch != i32::MIN
    }
}

/// One followed partition, as this fetcher knows it. Kept boxed: the table then holds an
/// 8-byte pointer per slot instead of the whole entry, and a table of up to twice as many
/// slots as entries (and two tables while one grows) costs little. At a million partitions,
/// a broker's fetcher tables held 188 MB at its peak with 72-byte entries in place (a
/// leader's fetcher growing from a third to a half of the partitions while the fetcher of a
/// leader just killed still held its own; heaptrack).
struct Entry {
    partition: Arc<Partition>,
    /// The partition's version when `position` was read.
    version: u64,
    /// Where it fetches from; none once it no longer follows this leader.
    position: Slot,
    /// The position the leader holds for it in the current session.
    sent: Slot,
    /// No longer followed from this leader: kept only until the leader is told to forget it.
    gone: bool,
}

impl Keyed for Entry {
    fn tp(&self) -> TopicIdPartition {
        self.partition.tp
    }
}

/// The followed partitions, kept across fetches. A position is read again only when the
/// broker's change log names the partition, and a request names only the partitions whose
/// position differs from what the session holds, so a fetch costs what changed.
#[derive(Default)]
struct Followed {
    entries: PartitionTable<Box<Entry>>,
    /// Entries whose position may differ from `sent` (or that are gone but still sent).
    dirty: HashSet<TopicIdPartition, PartitionHash>,
    /// Entries not gone.
    live: usize,
}

impl Followed {
    /// The session with the leader is over (lost, or left to expire): what only it needed
    /// goes, the entries no longer followed and what was sent, and a table left mostly empty
    /// gives its memory back. The next fetch opens a new session naming every entry.
    fn end_session(&mut self) {
        self.entries.retain(|e| !e.gone);
        self.entries.shrink_to_fit();
        self.dirty.clear();
        self.dirty.shrink_to_fit();
        for e in self.entries.values_mut() {
            e.sent = Slot::NONE;
            self.dirty.insert(e.partition.tp);
        }
    }

    /// Brings the entries in line with the partitions followed from the leader now; new ones
    /// are read.
    fn sync(&mut self, now: Vec<Arc<Partition>>, leader: i32) {
        let mut keep: HashSet<TopicIdPartition, PartitionHash> =
            HashSet::with_capacity_and_hasher(now.len(), PartitionHash);
        for p in now {
            keep.insert(p.tp);
            self.follow(p, leader);
        }
        let dropped: Vec<TopicIdPartition> = self
            .entries
            .keys()
            .filter(|tp| !keep.contains(tp))
            .collect();
        for tp in dropped {
            self.unfollow(tp);
        }
    }

    /// Applies the changes of the followed set since this fetcher last looked.
    fn apply(&mut self, changes: super::replicas::FollowChanges, leader: i32) {
        use super::replicas::FollowChanges;
        match changes {
            FollowChanges::None => {}
            FollowChanges::Everything(now) => self.sync(now, leader),
            FollowChanges::Changed(changed) => {
                for (tp, now) in changed {
                    match now {
                        Some(p) => self.follow(p, leader),
                        None => self.unfollow(tp),
                    }
                }
            }
        }
    }

    /// `p` is followed from the leader: a new entry (its position read) unless it is there.
    fn follow(&mut self, p: Arc<Partition>, leader: i32) {
        let tp = p.tp;
        let old = match self.entries.get(&tp) {
            Some(e) if Arc::ptr_eq(&e.partition, &p) && !e.gone => return,
            Some(_) => self.entries.remove(&tp),
            None => None,
        };
        if old.as_ref().is_some_and(|o| !o.gone) {
            self.live -= 1;
        }
        let mut e = Entry {
            partition: p,
            version: 0,
            position: Slot::NONE,
            // Replaced: the leader may still hold the old replica's position.
            sent: old.map_or(Slot::NONE, |o| o.sent),
            gone: false,
        };
        refresh(&mut e, leader);
        self.dirty.insert(tp);
        self.entries.insert(Box::new(e));
        self.live += 1;
    }

    /// `tp` is no longer followed from the leader: kept as gone until the leader is told to
    /// forget it, if the session holds it.
    fn unfollow(&mut self, tp: TopicIdPartition) {
        let Some(e) = self.entries.get_mut(&tp) else {
            return;
        };
        if e.gone {
            return;
        }
        self.live -= 1;
        if e.sent.is_some() {
            e.gone = true;
            e.position = Slot::NONE;
            self.dirty.insert(tp);
        } else {
            self.entries.remove(&tp);
            self.dirty.remove(&tp);
        }
    }

    /// Reads again the positions of `tps` (all entries when `None`).
    fn refresh(&mut self, tps: Option<Vec<TopicIdPartition>>, leader: i32) {
        let mut one = |tp: TopicIdPartition, e: &mut Entry| {
            if !e.gone && refresh(e, leader) {
                self.dirty.insert(tp);
            }
        };
        match tps {
            None => {
                for e in self.entries.values_mut() {
                    one(e.partition.tp, e);
                }
            }
            Some(tps) => {
                for tp in tps {
                    if let Some(e) = self.entries.get_mut(&tp) {
                        one(tp, e);
                    }
                }
            }
        }
    }
}

/// Reads `e`'s position if its partition's version moved; true if the position changed.
fn refresh(e: &mut Entry, leader: i32) -> bool {
    let version = e.partition.version();
    if version == e.version {
        return false;
    }
    e.version = version;
    let position = Slot::of(e.partition.follower_fetch_position(leader));
    let changed = position != e.position;
    e.position = position;
    changed
}

/// Starts a fetcher for each leader in `leaders` that has none.
pub fn ensure(state: &Arc<BrokerState>, leaders: impl IntoIterator<Item = i32>) {
    for leader in leaders {
        if leader != state.node_id && state.replicas.claim_fetcher(leader) {
            tokio::spawn(run(state.clone(), leader));
        }
    }
}

fn leader_addr(state: &BrokerState, leader: i32) -> Option<String> {
    let published = state.image();
    let b = published.image.broker(BrokerId(leader))?;
    let l = b
        .listeners
        .iter()
        .find(|l| l.name == state.config.listener_name)?;
    Some(format!("{}:{}", l.host, l.port))
}

/// Follows `leader` until nothing has followed it for a while.
async fn run(state: Arc<BrokerState>, leader: i32) {
    let replicas = state.replicas.clone();
    let mut changes = replicas.subscribe();
    let mut client: Option<KafkaClient> = None;
    // The incremental fetch session (KIP-227): its id and the epoch the next fetch carries.
    let mut session: Option<(i32, i32)> = None;
    let mut followed = Followed::default();
    // The leader declined a session (KIP-227 lets it): every fetch then names everything.
    let mut sessionless = false;
    let mut known_generation: Option<u64> = None;
    let mut cursor = replicas.change_log.end();
    let mut idle_since = tokio::time::Instant::now();
    loop {
        // Positions are read again only where a partition changed.
        let (since, next) = replicas.change_log.since(cursor);
        cursor = next;
        let (generation, set_changes) = replicas.following_since(leader, known_generation);
        known_generation = Some(generation);
        followed.apply(set_changes, leader);
        followed.refresh(
            match since {
                Since::Changed(tps) => Some(tps),
                Since::Everything => None,
            },
            leader,
        );
        if followed.live == 0 {
            // Nothing to fetch: the leader's session is left to expire, and the entries kept
            // only to be forgotten in it go now (after a leader dies, a third of a million of
            // them stayed until this fetcher stopped).
            if session.take().is_some() || !followed.entries.is_empty() {
                followed.end_session();
            }
            if idle_since.elapsed() > IDLE_STOP {
                replicas.release_fetcher(leader);
                // A partition may have started following in between.
                if replicas.following(leader).is_empty() || !replicas.claim_fetcher(leader) {
                    return;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            continue;
        }
        idle_since = tokio::time::Instant::now();
        let Some(addr) = leader_addr(&state, leader) else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        if client.as_ref().is_some_and(|c| c.addr() != addr) {
            client = None;
        }
        if client.is_none() {
            session = None;
            let connected = match crate::kafka::connect::node_security(
                state.config.inter_broker_tls.as_ref(),
            ) {
                Ok(security) => {
                    KafkaClient::connect_with(
                        &addr,
                        &state.client_id,
                        Duration::from_millis(WAIT_MAX_MS as u64) + Duration::from_secs(10),
                        &security,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match connected {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(leader, %addr, error = %e, "cannot reach the leader");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            }
        }
        if session.is_none() {
            // A new session starts from nothing: everything is named, nothing forgotten.
            followed.end_session();
        }
        // In a session only what changed is named; without one (or to open one), everything.
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        let mut forgotten: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        let mut named: Vec<TopicIdPartition> = Vec::new();
        let mut settled: Vec<TopicIdPartition> = Vec::new();
        let mut more = false;
        for tp in &followed.dirty {
            let Some(e) = followed.entries.get(tp) else {
                settled.push(*tp);
                continue;
            };
            if named.len() >= MAX_PARTITIONS_PER_FETCH && !sessionless {
                more = true;
                break;
            }
            match e.position.get() {
                Some(position) if e.sent.get() != Some(position) => {
                    let (epoch, offset, last_epoch, log_start) = position;
                    topics.entry(&*e.partition.topic).or_default().push(
                        FetchPartition::default()
                            .with_partition(tp.partition)
                            .with_current_leader_epoch(epoch)
                            .with_fetch_offset(offset)
                            .with_last_fetched_epoch(last_epoch)
                            .with_log_start_offset(log_start)
                            .with_partition_max_bytes(PARTITION_MAX_BYTES),
                    );
                    named.push(*tp);
                }
                None if e.sent.is_some() => {
                    forgotten
                        .entry(&*e.partition.topic)
                        .or_default()
                        .push(tp.partition);
                    named.push(*tp);
                }
                _ => settled.push(*tp),
            }
        }
        for tp in settled {
            followed.dirty.remove(&tp);
        }
        let (session_id, session_epoch) = session.unwrap_or((0, 0));
        let request = FetchRequest::default()
            .with_replica_id(WireBrokerId(state.node_id))
            .with_max_wait_ms(if more { 0 } else { WAIT_MAX_MS })
            .with_min_bytes(1)
            .with_max_bytes(RESPONSE_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(session_id)
            .with_session_epoch(session_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(sb(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            )
            .with_forgotten_topics_data(
                forgotten
                    .into_iter()
                    .map(|(t, ps)| {
                        ForgottenTopic::default()
                            .with_topic(TopicName(sb(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let c = client.as_mut().expect("connected");
        let response = match c.send(&request, FOLLOWER_FETCH_VERSION).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "follower fetch failed");
                client = None;
                session = None;
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        if response.error_code == ErrorCode::FetchSessionIdNotFound.code()
            || response.error_code == ErrorCode::InvalidFetchSessionEpoch.code()
        {
            // The leader lost the session (restarted, evicted it): open a new one at once.
            tracing::debug!(
                leader,
                error_code = response.error_code,
                "fetch session lost"
            );
            session = None;
            continue;
        }
        let mut backoff = response.error_code != 0;
        let mut progressed = false;
        let published = state.image();
        for t in &response.responses {
            let Some(topic_id) = published.image.topic_id(&t.topic.0) else {
                continue;
            };
            for pd in &t.partitions {
                let tp = TopicIdPartition {
                    topic_id,
                    partition: pd.partition_index,
                };
                let Some(e) = followed.entries.get(&tp) else {
                    continue;
                };
                let Some((epoch, offset, _, _)) = e.position.get() else {
                    continue;
                };
                let p = &e.partition;
                if pd.error_code == ErrorCode::OffsetOutOfRange.code() {
                    if let Err(e) =
                        p.reset_out_of_range(epoch, pd.log_start_offset, pd.high_watermark)
                    {
                        tracing::error!(error = %e, "cannot reset a follower log");
                    }
                    progressed = true;
                    continue;
                }
                if pd.error_code != 0 {
                    // NOT_LEADER_OR_FOLLOWER, FENCED/UNKNOWN_LEADER_EPOCH: metadata will move
                    // this partition to another leader or epoch.
                    backoff = true;
                    continue;
                }
                if pd.diverging_epoch.epoch >= 0 || pd.diverging_epoch.end_offset >= 0 {
                    match p.truncate_on_divergence(
                        epoch,
                        pd.diverging_epoch.epoch,
                        pd.diverging_epoch.end_offset,
                    ) {
                        Ok(_) => progressed = true,
                        Err(e) => tracing::error!(error = %e, "cannot truncate a follower log"),
                    }
                    continue;
                }
                let records = pd.records.as_deref().unwrap_or(&[]);
                match p.append_as_follower(
                    epoch,
                    offset,
                    records,
                    pd.high_watermark,
                    pd.log_start_offset,
                ) {
                    Ok(_) => progressed |= !records.is_empty(),
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.tp.partition, error = %e, "follower append failed; refetching");
                        backoff = true;
                    }
                }
            }
        }
        drop(published);
        // The session this answer leaves: the leader now holds what was named.
        if response.error_code == 0 {
            if response.session_id > 0 {
                let epoch = if session_id == response.session_id {
                    crate::broker::fetch_session::Session::next_epoch(session_epoch)
                } else {
                    1
                };
                session = Some((response.session_id, epoch));
                for tp in named {
                    followed.dirty.remove(&tp);
                    if let Some(e) = followed.entries.get_mut(&tp) {
                        e.sent = e.position;
                        if e.gone {
                            followed.entries.remove(&tp);
                        }
                    }
                }
            } else {
                session = None;
                sessionless = true;
            }
        }
        if progressed {
            replicas.changed();
        }
        if backoff {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::partition::PartitionConfig;
    use crate::broker::replicas::{DataConfig, Replicas};

    #[test]
    fn a_followed_partition_takes_an_8_byte_slot_and_a_72_byte_entry() {
        // One per followed partition, in a table of up to twice as many slots: at a million
        // partitions each byte more in a slot is up to 2 MiB per broker.
        assert_eq!(std::mem::size_of::<Box<Entry>>(), 8);
        assert!(
            std::mem::size_of::<Entry>() <= 72,
            "{}",
            std::mem::size_of::<Entry>()
        );
        let p = (3, 100, 2, 0);
        assert_eq!(Slot::of(Some(p)).get(), Some(p));
        assert_eq!(Slot::of(None).get(), None);
        assert!(!Slot::NONE.is_some());
    }

    fn partition(dir: &std::path::Path, i: i32) -> Arc<Partition> {
        let tp = TopicIdPartition {
            topic_id: uuid::Uuid::from_u128(9),
            partition: i,
        };
        let config = PartitionConfig {
            log: Default::default(),
            min_insync_replicas: 1,
            replica_lag_ms: 30_000,
        };
        Arc::new(Partition::open(tp, "t".into(), 1, dir.join(format!("p{i}")), config).unwrap())
    }

    fn live(f: &Followed) -> Vec<i32> {
        let mut v: Vec<i32> = f
            .entries
            .values()
            .filter(|e| !e.gone)
            .map(|e| e.partition.tp.partition)
            .collect();
        v.sort();
        v
    }

    fn followed_from(r: &Replicas, leader: i32) -> Vec<i32> {
        let mut v: Vec<i32> = r.following(leader).iter().map(|p| p.tp.partition).collect();
        v.sort();
        v
    }

    #[test]
    fn a_fetcher_whose_session_ends_keeps_nothing_it_no_longer_follows() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<Arc<Partition>> = (0..2_000).map(|i| partition(dir.path(), i)).collect();
        let mut f = Followed::default();
        for p in &parts {
            f.follow(p.clone(), 2);
        }
        // The leader holds them all in a session; then all but ten move to other leaders.
        for e in f.entries.values_mut() {
            e.sent = Slot::of(Some((0, 0, -1, 0)));
        }
        for p in &parts[10..] {
            f.unfollow(p.tp);
        }
        assert_eq!(f.live, 10);
        // Kept as gone until the leader is told to forget them in the session.
        assert_eq!(f.entries.len(), 2_000);
        let capacity = f.entries.capacity();
        f.end_session();
        assert_eq!(f.entries.len(), 10);
        assert!(
            f.entries.capacity() < capacity / 10,
            "{}",
            f.entries.capacity()
        );
        // The next session names every entry left.
        assert_eq!(f.dirty.len(), 10);
        assert!(f.entries.values().all(|e| !e.sent.is_some() && !e.gone));
    }

    #[test]
    fn a_fetcher_catching_up_by_the_journal_of_changes_holds_exactly_the_followed_set() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replicas::new(1, DataConfig::new(dir.path().into()));
        let parts: Vec<Arc<Partition>> = (0..40).map(|i| partition(dir.path(), i)).collect();
        // Fetchers for leader 2 that look after every step, every 7th step, and once at the
        // end; the set moves between leaders 2 and 3 and nobody, in a fixed pseudo-random walk.
        let mut fetchers: Vec<(usize, Followed, Option<u64>)> = vec![
            (1, Followed::default(), None),
            (7, Followed::default(), None),
            (1_000_000, Followed::default(), None),
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 1..=3_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = &parts[(x % 40) as usize];
            let leader = [Some(2), Some(3), None][((x >> 8) % 3) as usize];
            r.file_following(p, leader);
            for (every, f, known) in fetchers.iter_mut() {
                if step % *every == 0 {
                    let (generation, changes) = r.following_since(2, *known);
                    *known = Some(generation);
                    f.apply(changes, 2);
                    assert_eq!(live(f), followed_from(&r, 2), "after step {step}");
                    assert_eq!(f.live, live(f).len());
                }
            }
        }
        for (_, f, known) in fetchers.iter_mut() {
            let (generation, changes) = r.following_since(2, *known);
            *known = Some(generation);
            f.apply(changes, 2);
            assert_eq!(live(f), followed_from(&r, 2));
            assert_eq!(f.live, live(f).len());
        }
        // Nothing changed since: nothing to apply.
        let (_, changes) = r.following_since(2, fetchers[0].2);
        assert!(matches!(
            changes,
            crate::broker::replicas::FollowChanges::None
        ));
    }
}
