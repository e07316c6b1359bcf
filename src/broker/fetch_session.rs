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
//! The leader still reads every partition of the session on each fetch (as Kafka's
//! incremental fetch context does), so that each follower's fetch position keeps counting for
//! the ISR and the high watermark; that read holds a cached partition handle, with no lookup.
//!
//! Only followers get sessions (`replica_id` ≥ 0): a consumer asking for one gets a full
//! answer with session id 0, which KIP-227 allows (the server may decline a session).

use super::partition::Partition;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// Sessions kept, at most (Kafka's `max.incremental.fetch.session.cache.slots` is 1,000).
/// Each follower broker holds at most one per leader (a new one replaces its older one).
pub const MAX_SESSIONS: usize = 1_000;

/// One partition of a session: where the follower fetches it from, and what it was last told.
pub struct Cached {
    /// The topic's name, as the follower names it.
    pub topic: kafka_protocol::messages::TopicName,
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

/// A follower's session with this leader.
pub struct Session {
    /// The follower's broker id.
    pub replica: i32,
    /// The epoch the next fetch must carry.
    pub epoch: i32,
    /// Its partitions, by (topic, partition), in a stable order.
    pub parts: BTreeMap<(String, i32), Cached>,
}

impl Session {
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
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            replica,
            epoch: 1,
            parts: BTreeMap::new(),
        }));
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
    fn session_epochs_wrap_to_one() {
        assert_eq!(Session::next_epoch(1), 2);
        assert_eq!(Session::next_epoch(i32::MAX), 1);
    }
}
