//! The group coordinator of one broker: every classic group this broker coordinates
//! ([`kmeta_metadata::MetadataImage::group_coordinator`]), each a [`Group`] state machine, with
//! the JoinGroup and SyncGroup requests that wait for a rebalance parked on oneshot channels.
//!
//! Membership is soft state, as in Kafka; committed offsets are in the metadata log. When the
//! image says another broker now coordinates a group (this one was fenced, or a broker came
//! back), [`Coordinator::tick`] drops the group here: its parked requests get
//! NOT_COORDINATOR, and its members find the new coordinator and join there from scratch.

use super::group::{Description, Group, GroupConfig, JoinRequest, JoinResult, Outcome, Reply};
use bytes::Bytes;
use kmeta_metadata::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often session timers and rebalance deadlines are checked.
pub const TICK: Duration = Duration::from_millis(100);

/// A parked request's margin past the deadline the group enforces itself.
const PARK_MARGIN: Duration = Duration::from_secs(5);

type SyncReply = Result<Bytes, ErrorCode>;

struct Slot {
    group: Group,
    joins: HashMap<String, oneshot::Sender<JoinResult>>,
    syncs: HashMap<String, oneshot::Sender<SyncReply>>,
}

impl Slot {
    fn deliver(&mut self, out: Vec<Reply>) {
        for reply in out {
            match reply {
                Reply::Join(id, r) => {
                    if let Some(tx) = self.joins.remove(&id) {
                        let _ = tx.send(r);
                    }
                }
                Reply::Sync(id, r) => {
                    if let Some(tx) = self.syncs.remove(&id) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }
}

/// The groups this broker coordinates.
pub struct Coordinator {
    config: GroupConfig,
    start: Instant,
    groups: Mutex<HashMap<String, Slot>>,
}

impl Coordinator {
    /// No groups yet.
    pub fn new(config: GroupConfig) -> Coordinator {
        Coordinator {
            config,
            start: Instant::now(),
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    fn with<T>(&self, group: &str, f: impl FnOnce(&mut Slot, i64) -> T) -> T {
        let now = self.now();
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let slot = groups.entry(group.to_string()).or_insert_with(|| Slot {
            group: Group::new(self.config),
            joins: HashMap::new(),
            syncs: HashMap::new(),
        });
        f(slot, now)
    }

    fn read<T>(&self, group: &str, f: impl FnOnce(Option<&Group>) -> T) -> T {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        f(groups.get(group).map(|s| &s.group))
    }

    /// JoinGroup; waits while the join phase runs.
    pub async fn join(&self, group: &str, request: JoinRequest) -> JoinResult {
        let wait = Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64) + PARK_MARGIN;
        let parked = self.with(group, |slot, now| {
            let mut out = Vec::new();
            let outcome = slot.group.join(request, now, &mut out);
            slot.deliver(out);
            match outcome {
                Outcome::Now(r) => Err(r),
                Outcome::Parked(id) => {
                    let (tx, rx) = oneshot::channel();
                    // A second join from the same member replaces the first; the first
                    // is told to rejoin.
                    slot.joins.insert(id.clone(), tx);
                    Ok((id, rx))
                }
            }
        });
        let (id, rx) = match parked {
            Err(now) => return now,
            Ok(p) => p,
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => JoinResult::error(ErrorCode::NotCoordinator, &id),
            Err(_) => JoinResult::error(ErrorCode::RebalanceInProgress, &id),
        }
    }

    /// SyncGroup; followers wait for the leader's assignment.
    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncReply {
        let parked = self.with(group, |slot, now| {
            let mut out = Vec::new();
            let outcome = slot.group.sync(
                member_id,
                instance_id,
                generation,
                assignments,
                now,
                &mut out,
            );
            slot.deliver(out);
            match outcome {
                Outcome::Now(r) => Err(r),
                Outcome::Parked(id) => {
                    let (tx, rx) = oneshot::channel();
                    slot.syncs.insert(id, tx);
                    Ok((rx, slot.group.rebalance_timeout()))
                }
            }
        });
        let (rx, timeout) = match parked {
            Err(now) => return now,
            Ok(p) => p,
        };
        match tokio::time::timeout(timeout + PARK_MARGIN, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ErrorCode::NotCoordinator),
            Err(_) => Err(ErrorCode::RebalanceInProgress),
        }
    }

    /// Heartbeat.
    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> ErrorCode {
        self.with(group, |slot, now| {
            slot.group
                .heartbeat(member_id, instance_id, generation, now)
        })
    }

    /// LeaveGroup of each `(member id, instance id)`.
    pub fn leave(&self, group: &str, members: &[(String, Option<String>)]) -> Vec<ErrorCode> {
        self.with(group, |slot, now| {
            let mut out = Vec::new();
            let codes = members
                .iter()
                .map(|(m, i)| slot.group.leave(m, i.as_deref(), now, &mut out))
                .collect();
            slot.deliver(out);
            codes
        })
    }

    /// Whether an OffsetCommit from this member may be written (Kafka's classic rules).
    pub fn validate_commit(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorCode> {
        self.read(group, |g| match g {
            Some(g) => g.validate_commit(member_id, instance_id, generation),
            None => Group::new(self.config).validate_commit(member_id, instance_id, generation),
        })
    }

    /// DescribeGroups of one group, `None` when this broker holds no state for it.
    pub fn describe(&self, group: &str) -> Option<Description> {
        self.read(group, |g| g.map(Group::describe))
    }

    /// True when the group has members or members about to join.
    pub fn has_members(&self, group: &str) -> bool {
        self.read(group, |g| g.is_some_and(|g| !g.is_idle()))
    }

    /// The topics the group's members subscribe to, from their consumer-protocol metadata.
    pub fn subscribed_topics(&self, group: &str) -> Vec<String> {
        self.read(group, |g| {
            let Some(g) = g else { return Vec::new() };
            if g.protocol_type() != Some("consumer") {
                return Vec::new();
            }
            let mut topics: Vec<String> = g
                .member_metadata()
                .flat_map(crate::kafka::consumer_protocol::subscription_topics)
                .collect();
            topics.sort();
            topics.dedup();
            topics
        })
    }

    /// Every group with members here: `(id, state, protocol type)`.
    pub fn list(&self) -> Vec<(String, &'static str, String)> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .iter()
            .filter(|(_, s)| !s.group.is_idle())
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.group.state().name(),
                    s.group.protocol_type().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Forgets a group (after DeleteGroups).
    pub fn remove(&self, group: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.remove(group);
    }

    /// Advances every group's timers, drops groups this broker no longer coordinates
    /// (`mine` is false; their parked requests get NOT_COORDINATOR) and idle ones.
    pub fn tick(&self, mine: impl Fn(&str) -> bool) {
        let now = self.now();
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|id, slot| {
            if !mine(id) {
                tracing::info!(group = %id, "no longer the coordinator: dropping the group");
                return false;
            }
            let mut out = Vec::new();
            slot.group.tick(now, &mut out);
            slot.deliver(out);
            slot.joins.retain(|_, tx| !tx.is_closed());
            slot.syncs.retain(|_, tx| !tx.is_closed());
            !(slot.group.is_idle() && slot.joins.is_empty() && slot.syncs.is_empty())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::group::tests::join;
    use super::*;

    #[tokio::test]
    async fn a_parked_join_is_answered_by_the_timer_or_told_the_group_moved() {
        let config = GroupConfig {
            initial_rebalance_delay_ms: 200,
            ..GroupConfig::default()
        };
        let coordinator = std::sync::Arc::new(Coordinator::new(config));
        let first = coordinator.join("g", join("")).await;
        assert_eq!(first.error, ErrorCode::MemberIdRequired);
        let parked = {
            let c = coordinator.clone();
            let id = first.member_id.clone();
            tokio::spawn(async move { c.join("g", join(&id)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        coordinator.tick(|_| true);
        assert!(!parked.is_finished(), "the initial delay holds the join");
        tokio::time::sleep(Duration::from_millis(250)).await;
        coordinator.tick(|_| true);
        let joined = parked.await.unwrap();
        assert_eq!((joined.error, joined.generation), (ErrorCode::None, 1));
        assert_eq!(joined.leader, joined.member_id);
        // A second group whose join is parked when the image gives the group to another
        // broker: the waiting member is told NOT_COORDINATOR, and the state is gone.
        let other = coordinator.join("h", join("")).await;
        let parked = {
            let c = coordinator.clone();
            tokio::spawn(async move { c.join("h", join(&other.member_id)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        coordinator.tick(|g| g != "h");
        assert_eq!(parked.await.unwrap().error, ErrorCode::NotCoordinator);
        assert!(coordinator.describe("h").is_none());
        assert!(coordinator.describe("g").is_some());
    }
}
