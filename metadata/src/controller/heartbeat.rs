//! `BrokerHeartbeatTracker`: the active controller's soft state about broker sessions.
//!
//! Heartbeats are deliberately not written to the log: a busy log must never delay one long
//! enough to fence a healthy broker. The tracker keeps, per broker, when it was last heard
//! from and the metadata offset it reported, ordered by contact time so the stalest broker is
//! found in O(log n). It is rebuilt empty on every new active controller, which then seeds it
//! with "now" for every unfenced broker (KAFKA-18138 / KAFKA-19130).
//!
//! A heartbeat is counted on arrival, and a broker whose heartbeat is still waiting for its
//! answer (the controller's loop busy, or the answer parked until records commit) has a live
//! session: a broker sends its next heartbeat only after the answer to the last, so a slow
//! answer would otherwise fence a broker that did nothing wrong. KRaft gets the same by
//! handling heartbeats and the session check in one event queue, in order. On the answer, the
//! contact time becomes the answer's time.
//!
//! Times are milliseconds on a monotonic clock the runtime reads; this module never reads one.

use crate::image::MetadataImage;
use crate::types::{BrokerId, LogOffset};
use std::collections::{BTreeMap, BTreeSet};

/// What the tracker knows about one broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerContact {
    /// When the broker was last heard from.
    pub last_contact_ms: u64,
    /// The highest metadata offset the broker reported as applied.
    pub metadata_offset: LogOffset,
    /// The offset at which the broker entered controlled shutdown, if it did.
    pub controlled_shutdown_offset: Option<LogOffset>,
    /// Heartbeats received and not answered yet.
    pub awaiting_answer: u32,
    /// A heartbeat with the broker's current epoch was decided since this controller became
    /// active: the registered incarnation is alive. (Seeding at activation only assumes it.)
    pub heard: bool,
}

/// Last-contact times and reported offsets of brokers.
#[derive(Clone, Debug, Default)]
pub struct BrokerHeartbeatTracker {
    contacts: BTreeMap<BrokerId, BrokerContact>,
    by_contact: BTreeSet<(u64, BrokerId)>,
}

impl BrokerHeartbeatTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `broker` was heard from at `now_ms`, reporting `metadata_offset`.
    /// Time never goes backwards for a broker: an older `now_ms` keeps the newer contact.
    pub fn touch(&mut self, broker: BrokerId, now_ms: u64, metadata_offset: LogOffset) {
        let entry = self.contacts.entry(broker).or_insert(BrokerContact {
            last_contact_ms: now_ms,
            metadata_offset,
            controlled_shutdown_offset: None,
            awaiting_answer: 0,
            heard: false,
        });
        self.by_contact.remove(&(entry.last_contact_ms, broker));
        entry.last_contact_ms = entry.last_contact_ms.max(now_ms);
        entry.metadata_offset = entry.metadata_offset.max(metadata_offset);
        self.by_contact.insert((entry.last_contact_ms, broker));
    }

    /// A heartbeat from `broker` arrived at `now_ms` and waits for its answer: a contact, and
    /// a live session until [`Self::heartbeat_answered`].
    pub fn heartbeat_received(
        &mut self,
        broker: BrokerId,
        now_ms: u64,
        metadata_offset: LogOffset,
    ) {
        self.touch(broker, now_ms, metadata_offset);
        if let Some(c) = self.contacts.get_mut(&broker) {
            c.awaiting_answer += 1;
        }
    }

    /// A heartbeat from `broker` was answered (or given up on) at `now_ms`: a contact then. A
    /// broker forgotten meanwhile (fenced, or registered anew) stays forgotten.
    pub fn heartbeat_answered(&mut self, broker: BrokerId, now_ms: u64) {
        let Some(c) = self.contacts.get_mut(&broker) else {
            return;
        };
        c.awaiting_answer = c.awaiting_answer.saturating_sub(1);
        let offset = c.metadata_offset;
        self.touch(broker, now_ms, offset);
    }

    /// Raises the metadata offset `broker` has applied, learned from its metadata fetches
    /// (a broker fetching from offset F has published everything before F). Neither a
    /// contact nor a session: a broker not tracked stays untracked.
    pub fn note_applied(&mut self, broker: BrokerId, metadata_offset: LogOffset) {
        if let Some(c) = self.contacts.get_mut(&broker) {
            c.metadata_offset = c.metadata_offset.max(metadata_offset);
        }
    }

    /// Notes that a heartbeat from `broker` with its current epoch was decided.
    pub fn mark_heard(&mut self, broker: BrokerId) {
        if let Some(c) = self.contacts.get_mut(&broker) {
            c.heard = true;
        }
    }

    /// True when a heartbeat from `broker`'s registered incarnation was decided since this
    /// controller became active.
    pub fn heard(&self, broker: BrokerId) -> bool {
        self.contacts.get(&broker).is_some_and(|c| c.heard)
    }

    /// Notes the offset at which `broker` entered controlled shutdown.
    pub fn set_controlled_shutdown_offset(&mut self, broker: BrokerId, offset: LogOffset) {
        if let Some(c) = self.contacts.get_mut(&broker) {
            c.controlled_shutdown_offset.get_or_insert(offset);
        }
    }

    /// Forgets a broker (unregistered, or registering a new incarnation).
    pub fn remove(&mut self, broker: BrokerId) {
        if let Some(c) = self.contacts.remove(&broker) {
            self.by_contact.remove(&(c.last_contact_ms, broker));
        }
    }

    /// Every tracked broker and its contact, by id.
    pub fn contacts(&self) -> impl Iterator<Item = (BrokerId, &BrokerContact)> + '_ {
        self.contacts.iter().map(|(b, c)| (*b, c))
    }

    /// What is known about a broker.
    pub fn contact(&self, broker: BrokerId) -> Option<&BrokerContact> {
        self.contacts.get(&broker)
    }

    /// Seeds a newly active controller: every unfenced broker counts as heard from now.
    /// Fenced brokers are left out so they need a real heartbeat to count as alive.
    pub fn seed_on_activation(&mut self, image: &MetadataImage, now_ms: u64) {
        self.contacts.clear();
        self.by_contact.clear();
        for b in image.brokers().filter(|b| !b.fenced) {
            self.touch(b.broker_id, now_ms, LogOffset::NONE);
        }
    }

    /// True when `broker` is unfenced and was heard from within the session timeout, or has a
    /// heartbeat waiting for its answer.
    pub fn has_valid_session(
        &self,
        image: &MetadataImage,
        broker: BrokerId,
        now_ms: u64,
        session_timeout_ms: u64,
    ) -> bool {
        let unfenced = image.broker(broker).is_some_and(|b| !b.fenced);
        unfenced
            && self.contacts.get(&broker).is_some_and(|c| {
                c.awaiting_answer > 0 || c.last_contact_ms + session_timeout_ms >= now_ms
            })
    }

    /// The unfenced broker heard from longest ago whose session expired, if any. Fenced or
    /// unregistered brokers in the tracker are skipped (they have nothing left to expire), and
    /// so are brokers with a heartbeat waiting for its answer.
    pub fn find_stale_broker(
        &self,
        image: &MetadataImage,
        now_ms: u64,
        session_timeout_ms: u64,
    ) -> Option<BrokerId> {
        for &(contact_ms, broker) in &self.by_contact {
            if contact_ms + session_timeout_ms >= now_ms {
                return None;
            }
            let awaiting = self
                .contacts
                .get(&broker)
                .is_some_and(|c| c.awaiting_answer > 0);
            if !awaiting && image.broker(broker).is_some_and(|b| !b.fenced) {
                return Some(broker);
            }
        }
        None
    }

    /// When the next session could expire: the oldest contact of an unfenced broker plus the
    /// session timeout. `None` when no unfenced broker is tracked.
    pub fn next_check_ms(&self, image: &MetadataImage, session_timeout_ms: u64) -> Option<u64> {
        self.by_contact
            .iter()
            .find(|(_, b)| image.broker(*b).is_some_and(|r| !r.fenced))
            .map(|(t, _)| t + session_timeout_ms)
    }

    /// The lowest metadata offset reported by any active (unfenced, not shutting down) broker,
    /// or `None` when there is none.
    pub fn lowest_active_offset(&self, image: &MetadataImage) -> Option<LogOffset> {
        image
            .brokers()
            .filter(|b| b.is_active())
            .map(|b| {
                self.contacts
                    .get(&b.broker_id)
                    .map(|c| c.metadata_offset)
                    .unwrap_or(LogOffset::NONE)
            })
            .min()
    }
}
