//! `PartitionChangeBuilder`: the one place a partition change is computed.
//!
//! Given a partition and the targets a caller wants (ISR, replicas, reassignment sets), it
//! completes a reassignment when the ISR allows, elects a leader by the requested rules, bumps
//! the leader epoch when a replica is dropped, and returns at most one
//! `PartitionChangeRecord`, or nothing when nothing changes. It follows Kafka's
//! `PartitionChangeBuilder` without eligible leader replicas (ELR is off by default in Kafka 4.0).
//!
//! Election rules:
//! - a valid leader is in the target ISR and acceptable (registered, unfenced, not shutting
//!   down; see [`LeaderAcceptance`]);
//! - ONLINE keeps a valid current leader, else takes the first valid replica;
//! - PREFERRED takes the first replica if valid, else behaves as ONLINE;
//! - UNCLEAN behaves as ONLINE, then falls back to the first acceptable replica outside the
//!   ISR; the ISR becomes just that leader and the partition is RECOVERING.
//!
//! Without ELR an ISR is never emptied: when no member remains, the old ISR is kept and the
//! partition is leaderless, so the last replica standing can lead cleanly when it returns.

use super::LeaderAcceptance;
use crate::image::PartitionRegistration;
use crate::record::PartitionChangeRecord;
use crate::types::{BrokerId, BrokerList, LeaderRecoveryState, TopicIdPartition};

/// How to pick a leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Election {
    /// Prefer the first replica.
    Preferred,
    /// Keep a valid leader, else any valid ISR member.
    Online,
    /// As Online, then any acceptable replica even outside the ISR.
    Unclean,
}

/// Builds at most one change record for one partition.
#[derive(Clone, Debug)]
pub struct PartitionChangeBuilder<'a> {
    tp: TopicIdPartition,
    partition: &'a PartitionRegistration,
    acceptance: LeaderAcceptance<'a>,
    election: Election,
    target_isr: BrokerList,
    target_replicas: BrokerList,
    target_removing: BrokerList,
    target_adding: BrokerList,
    target_recovery: LeaderRecoveryState,
}

impl<'a> PartitionChangeBuilder<'a> {
    /// A builder whose targets start as the partition's current state.
    pub fn new(
        tp: TopicIdPartition,
        partition: &'a PartitionRegistration,
        acceptance: LeaderAcceptance<'a>,
    ) -> Self {
        PartitionChangeBuilder {
            tp,
            partition,
            acceptance,
            election: Election::Online,
            target_isr: partition.isr.clone(),
            target_replicas: partition.replicas.clone(),
            target_removing: partition.removing_replicas.clone(),
            target_adding: partition.adding_replicas.clone(),
            target_recovery: partition.leader_recovery_state,
        }
    }

    /// The election rules to apply.
    pub fn election(mut self, election: Election) -> Self {
        self.election = election;
        self
    }

    /// The ISR wanted.
    pub fn target_isr(mut self, isr: impl Into<BrokerList>) -> Self {
        self.target_isr = isr.into();
        self
    }

    /// The replica list wanted.
    pub fn target_replicas(mut self, replicas: impl Into<BrokerList>) -> Self {
        self.target_replicas = replicas.into();
        self
    }

    /// The reassignment sets wanted.
    pub fn target_reassignment(
        mut self,
        removing: impl Into<BrokerList>,
        adding: impl Into<BrokerList>,
    ) -> Self {
        self.target_removing = removing.into();
        self.target_adding = adding.into();
        self
    }

    /// The leader recovery state wanted.
    pub fn target_recovery(mut self, state: LeaderRecoveryState) -> Self {
        self.target_recovery = state;
        self
    }

    fn is_valid_leader(&self, broker: BrokerId) -> bool {
        self.target_isr.contains(&broker) && self.acceptance.accepts(broker)
    }

    /// Completes a reassignment once every target replica is in the ISR.
    fn complete_reassignment_if_possible(&mut self) {
        if self.target_removing.is_empty() && self.target_adding.is_empty() {
            return;
        }
        let removing = &self.target_removing;
        let isr: BrokerList = self
            .target_isr
            .iter()
            .copied()
            .filter(|r| !removing.contains(r))
            .collect();
        let replicas: BrokerList = self
            .target_replicas
            .iter()
            .copied()
            .filter(|r| !removing.contains(r))
            .collect();
        if isr.is_empty() || replicas.is_empty() || !replicas.iter().all(|r| isr.contains(r)) {
            return;
        }
        self.target_isr = isr;
        self.target_replicas = replicas;
        self.target_removing.clear();
        self.target_adding.clear();
    }

    /// Returns the new leader and whether the election was unclean.
    fn elect(&self) -> (BrokerId, bool) {
        let current = self.partition.leader;
        if self.election == Election::Preferred {
            if let Some(&first) = self.target_replicas.first() {
                if self.is_valid_leader(first) {
                    return (first, false);
                }
            }
        }
        if !current.is_none() && self.is_valid_leader(current) {
            return (current, false);
        }
        if let Some(&r) = self
            .target_replicas
            .iter()
            .find(|r| self.is_valid_leader(**r))
        {
            return (r, false);
        }
        if self.election == Election::Unclean {
            if let Some(&r) = self
                .target_replicas
                .iter()
                .find(|r| self.acceptance.accepts(**r))
            {
                return (r, true);
            }
        }
        (BrokerId::NONE, false)
    }

    /// The change record, or `None` when the partition would not change.
    pub fn build(mut self) -> Option<PartitionChangeRecord> {
        let mut record = PartitionChangeRecord {
            topic_id: self.tp.topic_id,
            partition: self.tp.partition,
            ..Default::default()
        };
        self.complete_reassignment_if_possible();

        let (leader, unclean) = self.elect();
        if leader != self.partition.leader {
            record.leader = Some(leader);
            if unclean {
                record.isr = Some(BrokerList::from_slice(&[leader]));
                self.target_recovery = LeaderRecoveryState::Recovering;
            }
        }
        // Dropping a replica must fence the old replica set: bump the leader epoch.
        if record.leader.is_none()
            && !self
                .partition
                .replicas
                .iter()
                .all(|r| self.target_replicas.contains(r))
        {
            record.leader = Some(self.partition.leader);
        }
        if record.isr.is_none()
            && !self.target_isr.is_empty()
            && self.target_isr != self.partition.isr
        {
            record.isr = Some(self.target_isr.clone());
        }
        if !self.target_replicas.is_empty() && self.target_replicas != self.partition.replicas {
            record.replicas = Some(self.target_replicas.clone());
        }
        if self.target_removing != self.partition.removing_replicas {
            record.removing_replicas = Some(self.target_removing.clone());
        }
        if self.target_adding != self.partition.adding_replicas {
            record.adding_replicas = Some(self.target_adding.clone());
        }
        if self.target_recovery != self.partition.leader_recovery_state {
            record.leader_recovery_state = Some(self.target_recovery);
        }
        let unchanged = record.isr.is_none()
            && record.leader.is_none()
            && record.replicas.is_none()
            && record.removing_replicas.is_none()
            && record.adding_replicas.is_none()
            && record.leader_recovery_state.is_none();
        (!unchanged).then_some(record)
    }
}
