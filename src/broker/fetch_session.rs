//! Incremental fetch sessions (KIP-227) for follower fetches.
//!
//! A follower opens a session with a full fetch (session id 0, epoch 0); the leader answers
//! with a session id and remembers every partition and where the follower fetches it from.
//! Each later fetch (that id, the next epoch) lists only the partitions whose fetch position
//! changed, and the ones to forget; the answer lists only the partitions with something new:
//! records, an error, a divergence, or a high watermark or log start that moved since the
//! last answer. A follower of many quiet partitions then sends and receives almost nothing,
//! where a sessionless fetch names every partition both ways, every half second.
//!
//! The leader reads only a session's *active* partitions: those the follower named (its
//! position moved), those that changed since the last answer (read from the broker's
//! [`ChangeLog`] from the session's cursor), those without a hosted replica, and those whose
//! last answer was not "at the log end, nothing to send". A follower at the log end of a
//! partition that did not change would get the same empty answer again. So a fetch costs
//! what changed, whatever the session holds.
//!
//! Kafka's leader reads every partition of the session on each fetch, which also records
//! each follower's fetch time for the ISR. Here the partition records a skipped fetch when
//! it is next read (`skipped_fetch_ms` of [`Partition::read_for_follower`]); until then the
//! follower is at the log end, which keeps it caught up by Kafka's rule.
//!
//! Only followers get sessions (`replica_id` ≥ 0): a consumer asking for one gets a full
//! answer with session id 0, which KIP-227 allows (the server may decline a session).

use super::changes::{ChangeLog, Since};
use super::partition::Partition;
use kmeta_metadata::TopicIdPartition;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// Sessions kept, at most (Kafka's `max.incremental.fetch.session.cache.slots` is 1,000).
/// Each follower broker holds at most one per leader (a new one replaces its older one).
pub const MAX_SESSIONS: usize = 1_000;

/// One partition of a session: where the follower fetches it from, and what it was last told.
/// A leader keeps one per follower of each partition it leads, so it holds no name of its
/// own: the key's shared one is used.
pub struct Cached {
    /// The topic's id.
    pub topic_id: uuid::Uuid,
    /// The follower's fetch position.
    pub fetch_offset: i64,
    /// The leader epoch the follower fetches in.
    pub current_leader_epoch: i32,
    /// The epoch of the follower's last batch (KIP-320).
    pub last_fetched_epoch: i32,
    /// The per-partition byte limit.
    pub max_bytes: i32,
    /// The hosted partition, resolved when first read (`None` until then or when not hosted).
    pub partition: Option<Arc<Partition>>,
    /// The high watermark last sent (-1: never sent).
    pub sent_hw: i64,
    /// The log start last sent.
    pub sent_log_start: i64,
}

/// A session partition's key: the topic's name as the follower names it (one copy per topic
/// in the session, [`Session::key`]), and the index.
pub type Key = (Arc<str>, i32);

/// A follower's session with this leader.
pub struct Session {
    /// The follower's broker id.
    pub replica: i32,
    /// The epoch the next fetch must carry.
    pub epoch: i32,
    /// Its partitions, by (topic, partition), in a stable order.
    pub parts: BTreeMap<Key, Cached>,
    /// When the latest fetch in this session arrived (monotonic ms; -1 before the first).
    pub fetch_ms: i64,
    /// The partitions the next read looks at (see the module documentation).
    pub active: BTreeSet<Key>,
    /// The name each resolved topic id was named by, to find the keys the change log names
    /// (one entry per topic: a map per partition took 75 bytes of every session entry).
    ids: HashMap<uuid::Uuid, Arc<str>>,
    /// Partitions with no hosted replica handle (looked up again when the hosted set changes).
    unresolved: BTreeSet<Key>,
    /// Where this session reads the change log from (`None` until the first read).
    cursor: Option<u64>,
    /// The topic names of the keys, each kept once.
    names: HashSet<Arc<str>>,
    /// The hosted set's generation the unresolved were last looked up in.
    resolved_at: Option<u64>,
}

impl Session {
    fn new(replica: i32) -> Session {
        Session {
            replica,
            epoch: 1,
            parts: BTreeMap::new(),
            fetch_ms: -1,
            active: BTreeSet::new(),
            ids: HashMap::new(),
            unresolved: BTreeSet::new(),
            cursor: None,
            resolved_at: None,
            names: HashSet::new(),
        }
    }

    /// The key of `topic`'s partition `partition`, sharing the session's copy of the name.
    pub fn key(&mut self, topic: &str, partition: i32) -> Key {
        let name = match self.names.get(topic) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(topic);
                self.names.insert(n.clone());
                n
            }
        };
        (name, partition)
    }

    /// The follower named `key` (a new partition, or a new position): returns its entry,
    /// which the next read looks at. `topic_id` is nil if the topic is unknown here.
    pub fn name(&mut self, key: Key, topic_id: uuid::Uuid) -> &mut Cached {
        self.active.insert(key.clone());
        if !self.parts.contains_key(&key) {
            self.unresolved.insert(key.clone());
            self.resolved_at = None;
        }
        self.parts.entry(key).or_insert_with(|| Cached {
            topic_id,
            fetch_offset: 0,
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
            max_bytes: 0,
            partition: None,
            sent_hw: -1,
            sent_log_start: -1,
        })
    }

    /// The follower forgot `topic`'s partition `partition`.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        let Some(name) = self.names.get(topic).cloned() else {
            return;
        };
        let key = (name, partition);
        self.parts.remove(&key);
        self.active.remove(&key);
        self.unresolved.remove(&key);
        let name = key.0;
        let named = (name.clone(), i32::MIN)..=(name.clone(), i32::MAX);
        if self.parts.range(named).next().is_none() {
            self.names.remove(&name);
            self.ids.retain(|_, n| !Arc::ptr_eq(n, &name));
        }
    }

    /// Before a read: marks active what changed since the last look (all of it if the
    /// session's cursor fell behind the log), drops handles of replicas no longer hosted,
    /// and, when the hosted set's `generation` moved, looks up the handles missing
    /// (`topic_id` finds a topic's id by name, `get` a hosted replica).
    pub fn refresh(
        &mut self,
        changes: &ChangeLog,
        generation: u64,
        topic_id: impl Fn(&str) -> Option<uuid::Uuid>,
        get: impl Fn(&TopicIdPartition) -> Option<Arc<Partition>>,
    ) {
        let since = match self.cursor {
            // A new session: every partition was just named.
            None => {
                self.cursor = Some(changes.end());
                Since::Changed(Vec::new())
            }
            Some(cursor) => {
                let (since, next) = changes.since(cursor);
                self.cursor = Some(next);
                since
            }
        };
        // One search of the session per changed partition: after a fence at a million
        // partitions a third of a million changed, and each follower fetch's refresh was a
        // fifth of a broker's CPU, most of it in searches of these trees.
        let mut changed = |key: Key, c: &mut Cached| {
            if c.partition.as_ref().is_some_and(|p| p.is_removed()) {
                c.partition = None;
                self.unresolved.insert(key.clone());
            }
            key
        };
        match since {
            Since::Everything => {
                // Every key (the active ones are among them), in order: built in bulk.
                let all: BTreeSet<Key> = self
                    .parts
                    .iter_mut()
                    .map(|(key, c)| changed(key.clone(), c))
                    .collect();
                self.active = all;
            }
            Since::Changed(tps) => {
                for tp in &tps {
                    let Some(name) = self.ids.get(&tp.topic_id) else {
                        continue;
                    };
                    let key = (name.clone(), tp.partition);
                    let Some(c) = self.parts.get_mut(&key) else {
                        continue;
                    };
                    if c.partition.is_none() || c.topic_id != tp.topic_id {
                        continue;
                    }
                    self.active.insert(changed(key, c));
                }
            }
        }
        if self.resolved_at != Some(generation) {
            self.resolved_at = Some(generation);
            let keys: Vec<Key> = self.unresolved.iter().cloned().collect();
            for key in keys {
                let Some(c) = self.parts.get_mut(&key) else {
                    continue;
                };
                let Some(id) = topic_id(&key.0) else {
                    continue;
                };
                c.topic_id = id;
                let tp = TopicIdPartition {
                    topic_id: id,
                    partition: key.1,
                };
                if let Some(p) = get(&tp) {
                    c.partition = Some(p);
                    self.ids.insert(id, key.0.clone());
                    self.unresolved.remove(&key);
                    self.active.insert(key);
                }
            }
        }
    }

    /// The epoch after `epoch` (1 after the largest: 0 only opens a session).
    pub fn next_epoch(epoch: i32) -> i32 {
        if epoch == i32::MAX {
            1
        } else {
            epoch + 1
        }
    }
}

/// The sessions of this broker's partitions' followers.
#[derive(Default)]
pub struct FetchSessions {
    next_id: AtomicI32,
    sessions: Mutex<HashMap<i32, Entry>>,
    uses: std::sync::atomic::AtomicU64,
}

struct Entry {
    /// When it was last used (a counter).
    used: u64,
    replica: i32,
    session: Arc<tokio::sync::Mutex<Session>>,
}

impl FetchSessions {
    /// Opens a session for `replica`, replacing any older session of that follower (each
    /// follower broker fetches from this one over a single connection).
    pub fn open(&self, replica: i32) -> (i32, Arc<tokio::sync::Mutex<Session>>) {
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if id > 0 {
                break id;
            }
            self.next_id.store(0, Ordering::Relaxed);
        };
        let session = Arc::new(tokio::sync::Mutex::new(Session::new(replica)));
        let used = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| e.replica != replica);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            id,
            Entry {
                used,
                replica,
                session: session.clone(),
            },
        );
        (id, session)
    }

    /// The session `id`, if it is still kept.
    pub fn get(&self, id: i32) -> Option<Arc<tokio::sync::Mutex<Session>>> {
        let used = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.get_mut(&id).map(|e| {
            e.used = used;
            e.session.clone()
        })
    }

    /// Forgets session `id`.
    pub fn close(&self, id: i32) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_opening_a_new_session_replaces_its_old_one_and_ids_are_positive() {
        let s = FetchSessions::default();
        let (a, _) = s.open(1);
        let (b, _) = s.open(2);
        let (c, _) = s.open(1);
        assert!(a > 0 && b > 0 && c > 0);
        assert!(s.get(a).is_none(), "the follower's older session is gone");
        assert!(s.get(b).is_some() && s.get(c).is_some());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_cache_keeps_at_most_max_sessions_dropping_the_least_recently_used() {
        let s = FetchSessions::default();
        let first = s.open(0).0;
        let second = s.open(1).0;
        s.get(first);
        for r in 2..(MAX_SESSIONS as i32 + 1) {
            s.open(r);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(first).is_some(), "used recently");
        assert!(s.get(second).is_none(), "the least recently used went");
    }

    #[test]
    fn a_session_reads_only_what_was_named_or_changed_since_its_last_answer() {
        use crate::broker::partition::{LeaderAndIsr, PartitionConfig};
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ChangeLog::default());
        let topic_id = uuid::Uuid::from_u128(9);
        let config = PartitionConfig {
            log: Default::default(),
            min_insync_replicas: 1,
            replica_lag_ms: 30_000,
        };
        let hosted: HashMap<TopicIdPartition, Arc<Partition>> = (0..3)
            .map(|i| {
                let tp = TopicIdPartition {
                    topic_id,
                    partition: i,
                };
                let p = Partition::open(
                    tp,
                    "t".into(),
                    1,
                    dir.path().join(format!("t-{i}")),
                    config.clone(),
                )
                .unwrap();
                p.announce_to(log.clone());
                let state = LeaderAndIsr {
                    leader: 1,
                    leader_epoch: 1,
                    partition_epoch: 1,
                    replicas: smallvec::smallvec![1, 2],
                    isr: smallvec::smallvec![1, 2],
                };
                p.apply(&state, config.clone()).unwrap();
                (tp, Arc::new(p))
            })
            .collect();
        let mut s = Session::new(2);
        for i in 0..3 {
            let key = s.key("t", i);
            s.name(key, topic_id);
        }
        let refresh =
            |s: &mut Session| s.refresh(&log, 1, |_| Some(topic_id), |tp| hosted.get(tp).cloned());
        refresh(&mut s);
        assert_eq!(s.active.len(), 3, "all named");
        assert!(
            s.parts.values().all(|c| c.partition.is_some()),
            "all resolved"
        );
        // An answer found them all quiet.
        s.active.clear();
        refresh(&mut s);
        assert!(s.active.is_empty(), "nothing changed: nothing to read");
        // A produce to partition 1 changes it, and only it.
        let p1 = &hosted[&TopicIdPartition {
            topic_id,
            partition: 1,
        }];
        let batch = crate::broker::log::batch::build(&[b"x".as_slice()], 1, None);
        p1.append_as_leader(&batch, 1, 1).unwrap();
        refresh(&mut s);
        assert_eq!(
            s.active.iter().collect::<Vec<_>>(),
            vec![&(Arc::from("t"), 1)]
        );
        s.active.clear();
        // Named again by the follower (its position moved): read.
        let key = s.key("t", 2);
        s.name(key, topic_id);
        refresh(&mut s);
        assert_eq!(
            s.active.iter().collect::<Vec<_>>(),
            vec![&(Arc::from("t"), 2)]
        );
        // Forgotten: never read again.
        s.forget("t", 2);
        s.active.clear();
        p1.append_as_leader(&batch, 1, 1).unwrap();
        refresh(&mut s);
        assert_eq!(s.active.len(), 1);
        assert_eq!(s.parts.len(), 2);
    }

    #[test]
    fn session_epochs_wrap_to_one() {
        assert_eq!(Session::next_epoch(1), 2);
        assert_eq!(Session::next_epoch(i32::MAX), 1);
    }
}
