//! The partitions a broker hosts (Kafka's `ReplicaManager`): created and given their role from
//! each published metadata image, deleted when the replica moves away or the topic is deleted.
//! Background duties: retention, and starting a replica fetcher per leader followed.

use super::log::LogConfig;
use super::partition::{LeaderAndIsr, Partition, PartitionConfig, Role};
use super::partition_table::{PartitionHash, PartitionTable};
use kmeta_metadata::delta::ImageDelta;
use kmeta_metadata::image::{PartitionRegistration, TopicImage};
use kmeta_metadata::record::{ConfigResource, ConfigResourceType};
use kmeta_metadata::{BrokerId, MetadataImage, TopicIdPartition};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{watch, Notify};

/// The broker's data-plane settings (static config; topics and dynamic broker configs
/// override some of them per partition).
#[derive(Clone, Debug)]
pub struct DataConfig {
    /// The first of `log.dirs`: partition directories live here.
    pub log_dir: PathBuf,
    /// `log.segment.bytes`, `log.flush.interval.messages`, `log.retention.ms`,
    /// `log.retention.bytes`, `message.max.bytes`, `log.message.timestamp.type`.
    pub log: LogConfig,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_ms: i64,
    /// `log.retention.check.interval.ms`.
    pub retention_check_ms: u64,
}

impl DataConfig {
    /// Kafka's defaults, with logs under `log_dir`.
    pub fn new(log_dir: PathBuf) -> DataConfig {
        DataConfig {
            log_dir,
            log: LogConfig::default(),
            min_insync_replicas: 1,
            replica_lag_ms: 30_000,
            retention_check_ms: 300_000,
        }
    }
}

/// The hosted partitions.
pub struct Replicas {
    me: i32,
    config: DataConfig,
    partitions: RwLock<PartitionTable<Arc<Partition>>>,
    changes: watch::Sender<u64>,
    /// Woken when a leader may change an ISR (a follower caught up).
    pub isr_check: Notify,
    /// Set with `isr_check` when every led partition is to be asked (brokers changed).
    isr_everything: std::sync::atomic::AtomicBool,
    /// Led partitions whose follower may have caught up since the ISR duties last looked, so
    /// they look at just those instead of every hosted partition ([`Replicas::isr_candidates`]).
    candidates: Mutex<PartitionTable<Arc<Partition>>>,
    /// Bumped whenever a partition is added or removed, so a holder of partition handles
    /// (a fetch session) knows when to look them up again.
    generation: std::sync::atomic::AtomicU64,
    fetchers: Mutex<BTreeSet<i32>>,
    /// The partitions followed, by leader, kept as roles change so that a fetcher lists its
    /// own without a scan of every hosted partition.
    followed: Mutex<Followed>,
    /// Every version change of a hosted partition, in order.
    pub change_log: Arc<super::changes::ChangeLog>,
    /// The names of the directories the log directory held when the first partition was
    /// opened (`None` before), each taken out as its partition opens. A partition whose
    /// directory is not listed has none (this process creates each directory it writes, and
    /// deletes those it removes), so it opens without a lookup on disk: a lookup of a path
    /// that does not exist makes the kernel build a negative dentry, and those were 63% of
    /// the CPU a broker spent opening 300,000 new partitions (`perf`).
    found_on_disk: Mutex<Option<HashSet<String>>>,
}

/// The index behind [`Replicas::following`]. Each partition's own leader in this index is
/// kept on the partition ([`Partition::filed_leader`]) rather than in a map of every hosted
/// partition.
#[derive(Default)]
struct Followed {
    /// Each leader's followed partitions, with the journal of changes to that set.
    by_leader: HashMap<i32, FollowSet>,
}

/// The partitions followed from one leader, and the keys whose membership changed, in order,
/// so that a fetcher catches up with the set by what changed rather than by a copy of it.
#[derive(Default)]
struct FollowSet {
    parts: PartitionTable<Arc<Partition>>,
    /// The generation of `journal[0]`; the set's generation is `base + journal.len()`.
    base: u64,
    journal: Vec<TopicIdPartition>,
}

impl FollowSet {
    fn generation(&self) -> u64 {
        self.base + self.journal.len() as u64
    }

    fn changed(&mut self, tp: TopicIdPartition) {
        // Bounded: a journal longer than the set (and some slack) is dropped, and a fetcher
        // that was further behind copies the set instead.
        if self.journal.len() >= 2 * self.parts.len() + 1024 {
            self.base = self.generation();
            self.journal.clear();
        }
        self.journal.push(tp);
    }
}

/// How the set of partitions followed from a leader differs from what a fetcher last saw.
pub enum FollowChanges {
    /// Nothing changed.
    None,
    /// These keys changed: each with its partition if it is followed from the leader now.
    Changed(Vec<(TopicIdPartition, Option<Arc<Partition>>)>),
    /// Too much changed to list: the whole set.
    Everything(Vec<Arc<Partition>>),
}

impl Followed {
    /// Files `p` under `leader` (`None`: followed from nobody, or led here, or gone).
    fn set(&mut self, p: &Arc<Partition>, leader: Option<i32>) {
        let old = p.filed_leader();
        p.file_leader(leader);
        if old == leader {
            return;
        }
        if let Some(old) = old {
            if let Some(set) = self.by_leader.get_mut(&old) {
                set.parts.remove(&p.tp);
                set.changed(p.tp);
            }
        }
        if let Some(l) = leader {
            let set = self.by_leader.entry(l).or_default();
            set.parts.insert(p.clone());
            set.changed(p.tp);
        }
    }
}

/// The name of a partition's directory under the log directory, as Kafka names it.
fn partition_dir_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// The topic last looked up while applying an image or a delta: partitions of a topic come
/// together (keys are ordered by topic id), so its settings are derived once and its name and
/// log settings are shared by all of its partitions instead of copied into each.
#[derive(Default)]
struct TopicCache {
    topic: Option<(uuid::Uuid, Arc<str>, Arc<PartitionConfig>)>,
}

impl TopicCache {
    /// The name and settings of topic `id`, from `derive` unless it was the last one asked.
    fn get(
        &mut self,
        id: uuid::Uuid,
        derive: impl FnOnce() -> (Arc<str>, Arc<PartitionConfig>),
    ) -> (Arc<str>, Arc<PartitionConfig>) {
        match &self.topic {
            Some((last, name, config)) if *last == id => (name.clone(), config.clone()),
            _ => {
                let (name, config) = derive();
                self.topic = Some((id, name.clone(), config.clone()));
                (name, config)
            }
        }
    }
}

fn parse<T: std::str::FromStr>(v: Option<&String>) -> Option<T> {
    v.and_then(|v| v.trim().parse().ok())
}

impl Replicas {
    /// No partitions yet.
    pub fn new(me: i32, config: DataConfig) -> Replicas {
        Replicas {
            me,
            config,
            partitions: RwLock::new(PartitionTable::default()),
            changes: watch::channel(0).0,
            isr_check: Notify::new(),
            isr_everything: Default::default(),
            candidates: Mutex::new(PartitionTable::default()),
            generation: Default::default(),
            fetchers: Mutex::new(BTreeSet::new()),
            followed: Mutex::new(Followed::default()),
            change_log: Default::default(),
            found_on_disk: Mutex::new(None),
        }
    }

    /// True if the log directory held `name` when the first partition was opened, and it
    /// was not taken before.
    fn take_found_on_disk(&self, name: &str) -> bool {
        let mut found = self.found_on_disk.lock().unwrap_or_else(|p| p.into_inner());
        let found = found.get_or_insert_with(|| {
            std::fs::read_dir(&self.config.log_dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default()
        });
        let taken = found.remove(name);
        if taken && found.is_empty() {
            found.shrink_to_fit();
        }
        taken
    }

    /// The settings.
    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    /// A hosted partition.
    pub fn get(&self, tp: &TopicIdPartition) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tp)
            .cloned()
    }

    /// Changes whenever a partition is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump_generation(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Notes that a follower of `p` may have caught up, and wakes the ISR duties.
    pub fn note_isr_candidate(&self, p: &Arc<Partition>) {
        self.candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p.clone());
        self.isr_check.notify_one();
    }

    /// Has the ISR duties ask every led partition (the whole image changed: a snapshot).
    pub fn ask_every_isr(&self) {
        self.isr_everything
            .store(true, std::sync::atomic::Ordering::Release);
        self.isr_check.notify_one();
    }

    /// Has the ISR duties ask the partitions this broker leads where `broker` is a replica:
    /// it became eligible to join their ISRs (registered or unfenced), which changes no
    /// partition. A broker fenced or gone needs nothing here (the controller removes it from
    /// ISRs itself), so a fence costs the ISR duties nothing.
    pub fn ask_isrs_hosting(&self, image: &MetadataImage, broker: BrokerId) {
        let me = BrokerId(self.me);
        let led: Vec<Arc<Partition>> = image
            .topics_on_broker(broker)
            .flat_map(|(topic, indexes)| topic.partitions_at(indexes))
            .filter(|(_, p)| p.leader == me)
            .filter_map(|(tp, _)| self.get(&tp))
            .collect();
        if led.is_empty() {
            return;
        }
        let mut candidates = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        for p in led {
            candidates.insert(p);
        }
        drop(candidates);
        self.isr_check.notify_one();
    }

    /// True (once) after [`Replicas::ask_every_isr`].
    pub fn take_ask_every_isr(&self) -> bool {
        self.isr_everything
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Takes the partitions noted by [`Replicas::note_isr_candidate`].
    pub fn isr_candidates(&self) -> Vec<Arc<Partition>> {
        self.candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_values()
    }

    /// Every hosted partition.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The hosted partitions not followed from another broker: those led here (and those
    /// without a leader), the only ones whose ISR this broker may change. About a third of
    /// what is hosted at RF 3; each is told apart by its filed leader, without its lock.
    pub fn not_followed(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.filed_leader().is_none())
            .cloned()
            .collect()
    }

    /// Partitions this broker follows `leader` for.
    pub fn following(&self, leader: i32) -> Vec<Arc<Partition>> {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_leader
            .get(&leader)
            .map(|set| set.parts.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Files `p` as followed from `leader` (`None`: from nobody), as role changes do.
    #[cfg(test)]
    pub(super) fn file_following(&self, p: &Arc<Partition>, leader: Option<i32>) {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(p, leader);
    }

    /// How the partitions followed from `leader` changed since generation `known` (`None`:
    /// never seen), and the generation now. Costs what changed, unless the journal no
    /// longer reaches back to `known`. The journal is dropped up to now: one fetcher reads
    /// it per leader, and any other reader behind it is given the whole set.
    pub fn following_since(&self, leader: i32, known: Option<u64>) -> (u64, FollowChanges) {
        let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(set) = followed.by_leader.get_mut(&leader) else {
            return match known {
                Some(0) => (0, FollowChanges::None),
                _ => (0, FollowChanges::Everything(Vec::new())),
            };
        };
        let now = set.generation();
        let changes = match known {
            Some(g) if g == now => return (now, FollowChanges::None),
            Some(g) if g >= set.base && g < now => {
                let mut seen = std::collections::HashSet::with_hasher(PartitionHash);
                let changed = set.journal[(g - set.base) as usize..]
                    .iter()
                    .filter(|tp| seen.insert(**tp))
                    .map(|tp| (*tp, set.parts.get(tp).cloned()))
                    .collect();
                FollowChanges::Changed(changed)
            }
            _ => FollowChanges::Everything(set.parts.values().cloned().collect()),
        };
        set.base = now;
        if set.journal.capacity() > 4096 {
            set.journal = Vec::new();
        } else {
            set.journal.clear();
        }
        (now, changes)
    }

    /// A receiver woken on every log end, HW or role change of any partition.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes waiters: a log end, HW or role changed.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The partition's settings: topic config, else the cluster's dynamic default, else this
    /// broker's static config.
    pub fn partition_config(&self, image: &MetadataImage, topic: &str) -> PartitionConfig {
        let empty = Default::default();
        let t = image
            .configs(&ConfigResource::topic(topic))
            .unwrap_or(&empty);
        let me = ConfigResource {
            resource_type: ConfigResourceType::Broker,
            resource_name: self.me.to_string(),
        };
        let broker = image.configs(&me).unwrap_or(&empty);
        let cluster = image
            .configs(&ConfigResource::cluster_default())
            .unwrap_or(&empty);
        let dynamic = |key: &str| broker.get(key).or_else(|| cluster.get(key));
        let d = &self.config.log;
        let log = LogConfig {
            segment_bytes: parse(t.get("segment.bytes")).unwrap_or(d.segment_bytes),
            flush_messages: parse(t.get("flush.messages")).unwrap_or(d.flush_messages),
            retention_ms: parse(t.get("retention.ms"))
                .or_else(|| parse(dynamic("log.retention.ms")))
                .unwrap_or(d.retention_ms),
            retention_bytes: parse(t.get("retention.bytes"))
                .or_else(|| parse(dynamic("log.retention.bytes")))
                .unwrap_or(d.retention_bytes),
            max_message_bytes: parse(t.get("max.message.bytes")).unwrap_or(d.max_message_bytes),
            log_append_time: t
                .get("message.timestamp.type")
                .map_or(d.log_append_time, |v| v == "LogAppendTime"),
            index_interval_bytes: parse(t.get("index.interval.bytes"))
                .unwrap_or(d.index_interval_bytes)
                .max(1),
        };
        PartitionConfig {
            log: Arc::new(log),
            min_insync_replicas: parse(t.get("min.insync.replicas"))
                .or_else(|| parse(dynamic("min.insync.replicas")))
                .unwrap_or(self.config.min_insync_replicas),
            replica_lag_ms: self.config.replica_lag_ms,
        }
    }

    /// Brings the hosted partitions in line with `image`. Returns the leaders now followed.
    pub fn apply_image(&self, image: &MetadataImage) -> BTreeSet<i32> {
        let me = BrokerId(self.me);
        let count = image.partition_count_on_broker(me);
        {
            let mut map = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            let more = count.saturating_sub(map.len());
            map.reserve(more);
        }
        let mut hosted: HashSet<TopicIdPartition, PartitionHash> =
            HashSet::with_capacity_and_hasher(count, PartitionHash);
        let mut leaders = BTreeSet::new();
        let mut changed = false;
        let mut cache = TopicCache::default();
        for (topic, indexes) in image.topics_on_broker(me) {
            for (tp, reg) in topic.partitions_at(indexes) {
                hosted.insert(tp);
                changed |= self.apply_one(image, topic, tp, reg, &mut leaders, &mut cache);
            }
        }
        let gone: Vec<TopicIdPartition> = {
            let map = self.partitions.read().unwrap_or_else(|p| p.into_inner());
            map.keys().filter(|k| !hosted.contains(k)).collect()
        };
        changed |= self.remove(&gone);
        if changed {
            self.changed();
        }
        leaders
    }

    /// Brings the partitions `delta` touched in line with `image` (all of them when the delta
    /// says everything changed). Returns the leaders that touched partitions now follow.
    pub fn apply_delta(&self, image: &MetadataImage, delta: &ImageDelta) -> BTreeSet<i32> {
        if delta.all {
            return self.apply_image(image);
        }
        let me = BrokerId(self.me);
        // The partitions of topics whose configs changed, beyond those the delta names.
        let mut reconfigured = Vec::new();
        for id in &delta.topic_configs {
            if let Some(t) = image.topic(id) {
                reconfigured.extend(
                    t.partitions
                        .keys()
                        .map(|&partition| TopicIdPartition {
                            topic_id: *id,
                            partition,
                        })
                        .filter(|tp| !delta.partitions.contains(tp)),
                );
            }
        }
        let mut leaders = BTreeSet::new();
        let mut changed = false;
        let mut gone: Vec<TopicIdPartition> = delta.removed.iter().copied().collect();
        let mut cache = TopicCache::default();
        // Touched partitions come a topic at a time: each topic is looked up once.
        let mut topic: Option<&TopicImage> = None;
        for tp in delta.partitions.iter().chain(&reconfigured).copied() {
            if topic.is_none_or(|t| t.id != tp.topic_id) {
                topic = image.topic(&tp.topic_id);
            }
            let reg = topic
                .and_then(|t| t.partitions.get(&tp.partition))
                .filter(|p| p.replicas.contains(&me));
            match (topic, reg) {
                (Some(t), Some(reg)) => {
                    changed |= self.apply_one(image, t, tp, reg, &mut leaders, &mut cache);
                }
                _ => gone.push(tp),
            }
        }
        changed |= self.remove(&gone);
        if changed {
            self.changed();
        }
        leaders
    }

    /// Applies one hosted partition's state, `reg` of `topic` in `image`, opening its log the
    /// first time; adds the leader it follows to `leaders`. True if its state changed.
    fn apply_one(
        &self,
        image: &MetadataImage,
        topic: &TopicImage,
        tp: TopicIdPartition,
        reg: &PartitionRegistration,
        leaders: &mut BTreeSet<i32>,
        cache: &mut TopicCache,
    ) -> bool {
        let (name, config) = cache.get(tp.topic_id, || {
            (
                Arc::from(topic.name.as_str()),
                Arc::new(self.partition_config(image, &topic.name)),
            )
        });
        let partition = match self.get(&tp) {
            Some(p) => p,
            None => {
                let dir_name = partition_dir_name(&topic.name, tp.partition);
                let dir = self.config.log_dir.join(&dir_name);
                let opened = if self.take_found_on_disk(&dir_name) {
                    Partition::open(tp, name, self.me, dir, config.clone())
                } else {
                    Ok(Partition::new_empty(tp, name, self.me, dir, config.clone()))
                };
                match opened {
                    Ok(p) => {
                        p.announce_to(self.change_log.clone());
                        let p = Arc::new(p);
                        self.partitions
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(p.clone());
                        self.bump_generation();
                        p
                    }
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition = tp.partition, error = %e, "cannot open the partition's log");
                        return false;
                    }
                }
            }
        };
        let state = LeaderAndIsr {
            leader: reg.leader.0,
            leader_epoch: reg.leader_epoch.0,
            partition_epoch: reg.partition_epoch.0,
            replicas: reg.replicas.iter().map(|b| b.0).collect(),
            isr: reg.isr.iter().map(|b| b.0).collect(),
        };
        let changed = match partition.apply(&state, config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(tp = ?tp, error = %e, "cannot apply the partition state");
                false
            }
        };
        let leader = match partition.role() {
            (Role::Follower { leader }, _) if leader >= 0 => Some(leader),
            _ => None,
        };
        if let Some(l) = leader {
            leaders.insert(l);
        }
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(&partition, leader);
        changed
    }

    /// Drops and deletes the replicas of `tps` hosted here (moved away or deleted). True if
    /// there were any.
    fn remove(&self, tps: &[TopicIdPartition]) -> bool {
        let gone: Vec<Arc<Partition>> = {
            let mut map = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            tps.iter().filter_map(|k| map.remove(k)).collect()
        };
        if !gone.is_empty() {
            self.bump_generation();
            let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
            for p in &gone {
                followed.set(p, None);
            }
        }
        for p in &gone {
            p.mark_removed();
            tracing::info!(topic = %p.topic, partition = p.tp.partition, "deleting a replica no longer hosted here");
            if let Err(e) = p.delete() {
                tracing::warn!(error = %e, "cannot delete a partition directory");
                // It may still be there: if the partition comes back, open it from disk.
                // (Before the first open nothing is listed yet, and the listing will see it.)
                let mut found = self.found_on_disk.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(found) = found.as_mut() {
                    found.insert(partition_dir_name(&p.topic, p.tp.partition));
                }
            }
        }
        !gone.is_empty()
    }

    /// Deletes partition directories under `log.dirs` that `image` does not place on this
    /// broker: replicas moved away or topics deleted while the broker was down. Only
    /// directories with a `partition.metadata` file are considered (never the metadata log).
    /// Call it once the image has caught up, never on a partial one.
    pub fn remove_strays(&self, image: &MetadataImage) -> usize {
        let hosted: BTreeSet<(String, i32)> = image
            .partitions_on_broker(BrokerId(self.me))
            .filter_map(|tp| {
                image
                    .topic(&tp.topic_id)
                    .map(|t| (t.name.clone(), tp.partition))
            })
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.config.log_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.join("partition.metadata").exists() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let Some((topic, partition)) = name
                .rsplit_once('-')
                .and_then(|(t, p)| p.parse::<i32>().ok().map(|p| (t.to_string(), p)))
            else {
                continue;
            };
            if hosted.contains(&(topic, partition)) {
                continue;
            }
            tracing::info!(dir = %path.display(), "deleting a partition directory no longer hosted here");
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(dir = %path.display(), error = %e, "cannot delete"),
            }
        }
        removed
    }

    /// Marks `leader` as having a fetcher; false if it already had one.
    pub fn claim_fetcher(&self, leader: i32) -> bool {
        self.fetchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(leader)
    }

    /// Releases `leader`'s fetcher slot (it stopped with nothing to follow).
    pub fn release_fetcher(&self, leader: i32) {
        self.fetchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&leader);
    }

    /// Runs retention on every partition every `log.retention.check.interval.ms`.
    pub async fn retention_loop(self: Arc<Self>) {
        let every = std::time::Duration::from_millis(self.config.retention_check_ms.max(100));
        loop {
            tokio::time::sleep(every).await;
            let now = crate::controller::wall_ms();
            let mut deleted = 0;
            for p in self.all() {
                match p.enforce_retention(now) {
                    Ok(n) => deleted += n,
                    Err(e) => tracing::warn!(topic = %p.topic, error = %e, "retention failed"),
                }
            }
            if deleted > 0 {
                tracing::info!(segments = deleted, "retention deleted old segments");
                self.changed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::log::batch::build;
    use kmeta_metadata::record::*;
    use kmeta_metadata::{BrokerList, LeaderEpoch, LeaderRecoveryState, LogOffset, PartitionEpoch};

    /// Records of `topic` (its id from its name's length) and its partitions `0..count`,
    /// each hosted and led by broker 1 alone, replayed onto `image`.
    fn add_topic(image: &mut MetadataImage, topic: &str, count: i32) {
        let topic_id = uuid::Uuid::from_u128(topic.len() as u128);
        let mut records = vec![MetadataRecord::Topic(TopicRecord {
            name: topic.into(),
            topic_id,
        })];
        records.extend((0..count).map(|partition| {
            MetadataRecord::Partition(PartitionRecord {
                topic_id,
                partition,
                replicas: BrokerList::from_slice(&[BrokerId(1)]),
                isr: BrokerList::from_slice(&[BrokerId(1)]),
                removing_replicas: BrokerList::new(),
                adding_replicas: BrokerList::new(),
                leader: BrokerId(1),
                leader_recovery_state: LeaderRecoveryState::Recovered,
                leader_epoch: LeaderEpoch(0),
                partition_epoch: PartitionEpoch(0),
            })
        }));
        for r in &records {
            image.replay(image.offset().max(LogOffset(0)), r).unwrap();
        }
    }

    /// Each hosted partition's log end, by index.
    fn log_ends(replicas: &Replicas, image: &MetadataImage, topic: &str) -> Vec<i64> {
        let t = image.topic_by_name(topic).unwrap();
        t.partitions
            .keys()
            .map(|&partition| {
                let tp = TopicIdPartition {
                    topic_id: t.id,
                    partition,
                };
                replicas.get(&tp).unwrap().marks().log_end
            })
            .collect()
    }

    /// Partitions open without a lookup on disk unless the log directory held theirs when
    /// the broker started: a restarted broker must still find every log it wrote, and a
    /// partition new to it (here, a second topic) starts empty and writes a log of its own.
    #[test]
    fn a_restarted_broker_opens_the_logs_it_wrote_and_new_partitions_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = MetadataImage::new();
        add_topic(&mut first, "written", 3);
        let replicas = Replicas::new(1, DataConfig::new(dir.path().into()));
        replicas.apply_image(&first);
        let t = first.topic_by_name("written").unwrap();
        for partition in [0, 2] {
            let tp = TopicIdPartition {
                topic_id: t.id,
                partition,
            };
            let p = replicas.get(&tp).unwrap();
            for _ in 0..=partition {
                p.append_as_leader(&build(&[b"m"], 1, None), -1, 1).unwrap();
            }
        }
        assert_eq!(log_ends(&replicas, &first, "written"), [1, 0, 3]);
        drop(replicas);

        // The broker restarts; the image now has a second topic it hosts too.
        let mut second = first.clone();
        add_topic(&mut second, "fresh", 2);
        let fresh = second.topic_by_name("fresh").unwrap();
        let replicas = Replicas::new(1, DataConfig::new(dir.path().into()));
        replicas.apply_image(&second);
        assert_eq!(log_ends(&replicas, &second, "written"), [1, 0, 3]);
        assert_eq!(log_ends(&replicas, &second, "fresh"), [0, 0]);
        let tp = TopicIdPartition {
            topic_id: fresh.id,
            partition: 1,
        };
        let p = replicas.get(&tp).unwrap();
        p.append_as_leader(&build(&[b"m"], 1, None), -1, 1).unwrap();
        assert!(
            dir.path().join("fresh-1").is_dir(),
            "the new log was not written"
        );
        drop(replicas);

        let replicas = Replicas::new(1, DataConfig::new(dir.path().into()));
        replicas.apply_image(&second);
        assert_eq!(log_ends(&replicas, &second, "fresh"), [0, 1]);
        assert_eq!(log_ends(&replicas, &second, "written"), [1, 0, 3]);
    }
}
