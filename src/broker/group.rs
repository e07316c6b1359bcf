//! The classic consumer-group protocol of one group, as a synchronous state machine (Kafka's
//! `ClassicGroup` and `GroupMetadataManager` rules, `kafka-data-plane.md` §7). Time comes in as
//! milliseconds; replies that wait (JoinGroup until the join phase completes, SyncGroup until
//! the leader's assignment arrives) come out of [`Group::tick`], [`Group::join`] or
//! [`Group::sync`] as [`Reply`] values for the caller to deliver.
//! [`super::coordinator`] wraps it for the request handlers.

use bytes::Bytes;
use kmeta_metadata::ErrorCode;
use std::collections::BTreeMap;

/// Coordinator settings (`group.*` broker configs).
#[derive(Clone, Copy, Debug)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`.
    pub min_session_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_ms: i32,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: i64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_ms: 6_000,
            max_session_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// The group's state (Kafka's `ClassicGroupState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Assigned.
    Stable,
}

impl State {
    /// The name DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A JoinGroup as the coordinator sees it.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// "" for a new member.
    pub member_id: String,
    /// `group.instance.id` (static membership).
    pub instance_id: Option<String>,
    /// The client id, for generated member ids and DescribeGroups.
    pub client_id: String,
    /// The client's address, for DescribeGroups.
    pub client_host: String,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `rebalance.timeout.ms` (v1+; else the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Usually "consumer".
    pub protocol_type: String,
    /// `(assignor name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new dynamic member must rejoin with the id it is given (KIP-394).
    pub require_known_member_id: bool,
}

/// What a JoinGroup gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResult {
    /// NONE, MEMBER_ID_REQUIRED, ...
    pub error: ErrorCode,
    /// The generation.
    pub generation: i32,
    /// The chosen assignor.
    pub protocol: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// For the leader only: every member's `(id, instance id, metadata)`.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    /// A refusal (or MEMBER_ID_REQUIRED) for `member_id`.
    pub fn error(error: ErrorCode, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// A reply the caller delivers to a waiting request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// To the JoinGroup parked for this member.
    Join(String, JoinResult),
    /// To the SyncGroup parked for this member: the assignment or an error.
    Sync(String, Result<Bytes, ErrorCode>),
}

/// What a request gets now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The answer.
    Now(T),
    /// Wait: the answer comes as a [`Reply`] for this member id.
    Parked(String),
}

/// A group as DescribeGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// The state.
    pub state: State,
    /// "consumer", or empty without members.
    pub protocol_type: String,
    /// The chosen assignor, or empty.
    pub protocol: String,
    /// The members.
    pub members: Vec<MemberDescription>,
}

/// One member as DescribeGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// `group.instance.id`.
    pub instance_id: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Its assignment (Stable only).
    pub assignment: Bytes,
}

#[derive(Clone, Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat_ms: i64,
    awaiting_join: bool,
    awaiting_sync: bool,
}

/// One classic group.
#[derive(Debug)]
pub struct Group {
    config: GroupConfig,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Dynamic members told MEMBER_ID_REQUIRED, until they rejoin or their session passes.
    pending: BTreeMap<String, i64>,
    /// When the join phase ends at the latest.
    join_deadline_ms: Option<i64>,
    /// The first rebalance of an Empty group waits this long for more members
    /// (`group.initial.rebalance.delay.ms`, extended by each new member).
    join_not_before_ms: Option<i64>,
    /// When the sync phase ends at the latest.
    sync_deadline_ms: Option<i64>,
    next_id: u64,
}

impl Group {
    /// An empty group.
    pub fn new(config: GroupConfig) -> Group {
        Group {
            config,
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            join_deadline_ms: None,
            join_not_before_ms: None,
            sync_deadline_ms: None,
            next_id: 0,
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Member ids.
    pub fn member_ids(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// No members, and none told to rejoin with a new id: nothing to keep in memory.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// The protocol type ("consumer") while the group has members.
    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// What DescribeGroups shows.
    pub fn describe(&self) -> Description {
        let chosen = self.protocol.as_ref();
        Description {
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: self.protocol.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    // Kafka shows the metadata only once a protocol is chosen.
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(p, _)| Some(p) == chosen)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: if self.state == State::Stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    /// Every member's metadata for every protocol it offers (OffsetDelete reads the
    /// subscriptions from it).
    pub fn member_metadata(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.members
            .values()
            .flat_map(|m| m.protocols.iter().map(|(_, b)| b))
    }

    fn new_member_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        let uuid = uuid::Uuid::new_v4();
        format!("{prefix}-{uuid}")
    }

    /// The longest rebalance timeout of the members: how long a rebalance phase may last.
    pub fn rebalance_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.rebalance_timeout_ms().max(0) as u64)
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms as i64)
            .max()
            .unwrap_or(0)
    }

    /// The protocol every member supports with the most first-choice votes.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let votes = |name: &String| {
            self.members
                .values()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .map(|(p, _)| p)
                        .find(|p| candidates.contains(p))
                        == Some(name)
                })
                .count()
        };
        candidates
            .iter()
            .max_by_key(|n| {
                (
                    votes(n),
                    std::cmp::Reverse(candidates.iter().position(|c| c == *n)),
                )
            })
            .map(|n| (*n).clone())
    }

    fn prepare_rebalance(&mut self, now: i64, out: &mut Vec<Reply>) {
        if self.state == State::PreparingRebalance {
            return;
        }
        // Members waiting in a sync phase are told to rejoin.
        self.sync_deadline_ms = None;
        self.fail_sync(out);
        let initial = self.state == State::Empty;
        let timeout = self.rebalance_timeout_ms();
        self.state = State::PreparingRebalance;
        self.join_deadline_ms = Some(now + timeout);
        self.join_not_before_ms =
            initial.then(|| now + self.config.initial_rebalance_delay_ms.min(timeout));
    }

    /// The join phase is over: everyone is back (and an initial delay has passed), or the
    /// rebalance timeout ran out.
    fn join_done(&self, now: i64) -> bool {
        self.state == State::PreparingRebalance
            && (self.join_deadline_ms.is_some_and(|d| now >= d)
                || (self.all_joined() && self.join_not_before_ms.is_none_or(|t| now >= t)))
    }

    fn all_joined(&self) -> bool {
        !self.members.is_empty()
            && self.members.values().all(|m| m.awaiting_join)
            && self.pending.is_empty()
    }

    /// Ends the join phase: drops members that did not rejoin, bumps the generation, answers
    /// every parked JoinGroup.
    fn complete_join(&mut self, now: i64, out: &mut Vec<Reply>) {
        self.members.retain(|_, m| m.awaiting_join);
        self.join_deadline_ms = None;
        self.join_not_before_ms = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.generation += 1;
            self.leader = None;
            self.protocol = None;
            self.protocol_type = None;
            return;
        }
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.generation += 1;
        self.protocol = self.select_protocol();
        self.state = State::CompletingRebalance;
        self.sync_deadline_ms = Some(now + self.rebalance_timeout_ms());
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone();
        let everyone = self.members_for_leader();
        for (id, m) in self.members.iter_mut() {
            m.awaiting_join = false;
            m.last_heartbeat_ms = now;
            out.push(Reply::Join(
                id.clone(),
                JoinResult {
                    error: ErrorCode::None,
                    generation: self.generation,
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
        }
    }

    /// A JoinGroup answered with the group's current generation, protocol and leader.
    fn current_generation(
        &self,
        member_id: String,
        members: Vec<(String, Option<String>, Bytes)>,
    ) -> JoinResult {
        JoinResult {
            error: ErrorCode::None,
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id,
            members,
        }
    }

    /// What the leader's JoinGroup carries: every member's id, instance id and metadata for
    /// the chosen protocol.
    fn members_for_leader(&self) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(p, _)| Some(p) == self.protocol.as_ref())
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect()
    }

    /// JoinGroup.
    pub fn join(&mut self, r: JoinRequest, now: i64, out: &mut Vec<Reply>) -> Outcome<JoinResult> {
        if r.session_timeout_ms < self.config.min_session_ms
            || r.session_timeout_ms > self.config.max_session_ms
        {
            return Outcome::Now(JoinResult::error(
                ErrorCode::InvalidSessionTimeout,
                &r.member_id,
            ));
        }
        if r.protocols.is_empty()
            || self
                .protocol_type
                .as_ref()
                .is_some_and(|t| *t != r.protocol_type && !self.members.is_empty())
            || (!self.members.is_empty()
                && !self.members.values().all(|m| {
                    m.protocols
                        .iter()
                        .any(|(p, _)| r.protocols.iter().any(|(q, _)| q == p))
                }))
        {
            return Outcome::Now(JoinResult::error(
                ErrorCode::InconsistentGroupProtocol,
                &r.member_id,
            ));
        }
        let mut member_id = r.member_id.clone();
        if member_id.is_empty() {
            if let Some(instance) = &r.instance_id {
                // A static member: replaces any member with its instance id, no second join.
                let old = self
                    .members
                    .iter()
                    .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                    .map(|(id, _)| id.clone());
                member_id = self.new_member_id(instance);
                if let Some(old) = old {
                    let mut m = self.members.remove(&old).expect("found");
                    // Requests parked under the old id are fenced by the new one.
                    if m.awaiting_join {
                        out.push(Reply::Join(
                            old.clone(),
                            JoinResult::error(ErrorCode::FencedInstanceId, &old),
                        ));
                    }
                    if m.awaiting_sync {
                        out.push(Reply::Sync(old.clone(), Err(ErrorCode::FencedInstanceId)));
                    }
                    m.awaiting_join = false;
                    m.awaiting_sync = false;
                    m.client_id = r.client_id.clone();
                    m.client_host = r.client_host.clone();
                    m.protocols = r.protocols.clone();
                    if self.leader.as_ref() == Some(&old) {
                        self.leader = Some(member_id.clone());
                    }
                    let stable = self.state == State::Stable;
                    self.members.insert(member_id.clone(), m);
                    if stable {
                        // Same protocols, stable group: the old assignment, no rebalance. A
                        // returning leader gets the members, as every leader does (its
                        // SyncGroup in a stable group keeps the assignment in force).
                        let members = if self.leader.as_ref() == Some(&member_id) {
                            self.members_for_leader()
                        } else {
                            Vec::new()
                        };
                        return Outcome::Now(self.current_generation(member_id, members));
                    }
                }
            } else {
                member_id = self.new_member_id(&r.client_id);
                if r.require_known_member_id {
                    self.pending
                        .insert(member_id.clone(), now + r.session_timeout_ms as i64);
                    return Outcome::Now(JoinResult::error(
                        ErrorCode::MemberIdRequired,
                        &member_id,
                    ));
                }
            }
        } else if !self.members.contains_key(&member_id) && !self.pending.contains_key(&member_id) {
            return Outcome::Now(JoinResult::error(ErrorCode::UnknownMemberId, &member_id));
        }
        self.pending.remove(&member_id);
        self.protocol_type = Some(r.protocol_type.clone());
        let known = self.members.contains_key(&member_id);
        let changed = self
            .members
            .get(&member_id)
            .is_some_and(|m| m.protocols != r.protocols);
        let is_leader = self.leader.as_ref() == Some(&member_id);
        let m = self.members.entry(member_id.clone()).or_insert(Member {
            instance_id: r.instance_id.clone(),
            client_id: r.client_id.clone(),
            client_host: r.client_host.clone(),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: r.rebalance_timeout_ms,
            protocols: r.protocols.clone(),
            assignment: Bytes::new(),
            last_heartbeat_ms: now,
            awaiting_join: false,
            awaiting_sync: false,
        });
        m.protocols = r.protocols;
        m.session_timeout_ms = r.session_timeout_ms;
        m.rebalance_timeout_ms = r.rebalance_timeout_ms;
        m.last_heartbeat_ms = now;
        // A known member with unchanged metadata gets the current generation, unless it is
        // a Stable group's leader (its rejoin rebalances).
        let current = known
            && !changed
            && match self.state {
                State::CompletingRebalance => true,
                State::Stable => !is_leader,
                _ => false,
            };
        if current {
            return Outcome::Now(self.current_generation(member_id, Vec::new()));
        }
        self.members
            .get_mut(&member_id)
            .expect("inserted")
            .awaiting_join = true;
        if self.state == State::PreparingRebalance && !known {
            // A new member during the initial delay extends it, up to the rebalance timeout.
            if let (Some(t), Some(d)) = (self.join_not_before_ms, self.join_deadline_ms) {
                self.join_not_before_ms =
                    Some(t.max((now + self.config.initial_rebalance_delay_ms).min(d)));
            }
        }
        self.prepare_rebalance(now, out);
        if self.join_done(now) {
            self.complete_join(now, out);
            if let Some(pos) = out
                .iter()
                .position(|r| matches!(r, Reply::Join(id, _) if *id == member_id))
            {
                if let Reply::Join(_, result) = out.remove(pos) {
                    return Outcome::Now(result);
                }
            }
        }
        Outcome::Parked(member_id)
    }

    fn validate(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), ErrorCode> {
        let Some(m) = self.members.get(member_id) else {
            if let Some(i) = instance_id {
                if self
                    .members
                    .values()
                    .any(|m| m.instance_id.as_deref() == Some(i))
                {
                    return Err(ErrorCode::FencedInstanceId);
                }
            }
            return Err(ErrorCode::UnknownMemberId);
        };
        if instance_id.is_some() && m.instance_id.as_deref() != instance_id {
            return Err(ErrorCode::FencedInstanceId);
        }
        Ok(())
    }

    /// SyncGroup: the leader brings `assignments`; followers wait for it.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: i64,
        out: &mut Vec<Reply>,
    ) -> Outcome<Result<Bytes, ErrorCode>> {
        if self.state == State::Empty {
            return Outcome::Now(Err(ErrorCode::UnknownMemberId));
        }
        if let Err(e) = self.validate(member_id, instance_id) {
            return Outcome::Now(Err(e));
        }
        if generation != self.generation {
            return Outcome::Now(Err(ErrorCode::IllegalGeneration));
        }
        match self.state {
            State::PreparingRebalance => Outcome::Now(Err(ErrorCode::RebalanceInProgress)),
            State::Stable => Outcome::Now(Ok(self.members[member_id].assignment.clone())),
            State::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.awaiting_sync = true;
                    m.last_heartbeat_ms = now;
                }
                if self.leader.as_deref() == Some(member_id) {
                    for m in self.members.values_mut() {
                        m.assignment = Bytes::new();
                    }
                    for (id, a) in assignments {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.assignment = a;
                        }
                    }
                    self.state = State::Stable;
                    self.sync_deadline_ms = None;
                    let mut mine = Bytes::new();
                    for (id, m) in self.members.iter_mut() {
                        if m.awaiting_sync {
                            m.awaiting_sync = false;
                            if id == member_id {
                                mine = m.assignment.clone();
                            } else {
                                out.push(Reply::Sync(id.clone(), Ok(m.assignment.clone())));
                            }
                        }
                    }
                    return Outcome::Now(Ok(mine));
                }
                Outcome::Parked(member_id.to_string())
            }
            State::Empty => unreachable!("handled above"),
        }
    }

    /// Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> ErrorCode {
        if self.state == State::Empty {
            return ErrorCode::UnknownMemberId;
        }
        if let Err(e) = self.validate(member_id, instance_id) {
            return e;
        }
        if generation != self.generation {
            return ErrorCode::IllegalGeneration;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat_ms = now;
        }
        match self.state {
            State::PreparingRebalance => ErrorCode::RebalanceInProgress,
            _ => ErrorCode::None,
        }
    }

    /// LeaveGroup of one member (by id, or a static member by instance id with an empty id).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: i64,
        out: &mut Vec<Reply>,
    ) -> ErrorCode {
        if self.pending.remove(member_id).is_some() {
            return ErrorCode::None;
        }
        let id = if member_id.is_empty() {
            match self
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_deref() == instance_id && instance_id.is_some())
            {
                Some((id, _)) => id.clone(),
                None => return ErrorCode::UnknownMemberId,
            }
        } else {
            if let Err(e) = self.validate(member_id, instance_id) {
                return e;
            }
            member_id.to_string()
        };
        self.remove_member(&id, now, out);
        ErrorCode::None
    }

    fn remove_member(&mut self, id: &str, now: i64, out: &mut Vec<Reply>) {
        let Some(m) = self.members.remove(id) else {
            return;
        };
        if m.awaiting_join {
            out.push(Reply::Join(
                id.to_string(),
                JoinResult::error(ErrorCode::UnknownMemberId, id),
            ));
        }
        if m.awaiting_sync {
            out.push(Reply::Sync(id.to_string(), Err(ErrorCode::UnknownMemberId)));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            State::PreparingRebalance => {
                if self.members.is_empty() || self.join_done(now) {
                    self.complete_join(now, out);
                }
            }
            _ if self.members.is_empty() => {
                self.fail_sync(out);
                self.state = State::Empty;
                self.generation += 1;
                self.protocol = None;
                self.protocol_type = None;
            }
            _ => self.prepare_rebalance(now, out),
        }
    }

    fn fail_sync(&mut self, out: &mut Vec<Reply>) {
        for (id, m) in self.members.iter_mut() {
            if m.awaiting_sync {
                m.awaiting_sync = false;
                out.push(Reply::Sync(id.clone(), Err(ErrorCode::RebalanceInProgress)));
            }
        }
    }

    /// Whether OffsetCommit from this member may write (classic rules, §7.4).
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorCode> {
        if generation < 0 && member_id.is_empty() {
            return if self.state == State::Empty {
                Ok(())
            } else {
                Err(ErrorCode::UnknownMemberId)
            };
        }
        self.validate(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ErrorCode::IllegalGeneration);
        }
        if self.state == State::CompletingRebalance {
            return Err(ErrorCode::RebalanceInProgress);
        }
        Ok(())
    }

    /// Advances time: session expiries, the end of a join phase, a sync phase that ran out.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Reply>) {
        self.pending.retain(|_, until| *until > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                !m.awaiting_join && now - m.last_heartbeat_ms > m.session_timeout_ms as i64
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_member(&id, now, out);
        }
        if self.join_done(now) {
            self.complete_join(now, out);
        }
        if self.state == State::CompletingRebalance
            && self.sync_deadline_ms.is_some_and(|d| now >= d)
        {
            // Members that never synced are removed, and the rest rebalance.
            let lagging: Vec<String> = self
                .members
                .iter()
                .filter(|(_, m)| !m.awaiting_sync)
                .map(|(id, _)| id.clone())
                .collect();
            self.sync_deadline_ms = None;
            for id in lagging {
                self.remove_member(&id, now, out);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A dynamic member's JoinGroup (v4+: MEMBER_ID_REQUIRED first), "range" only.
    pub(crate) fn join(member: &str) -> JoinRequest {
        JoinRequest {
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    /// A dynamic member through MEMBER_ID_REQUIRED and the join; its parked reply.
    fn first_join(g: &mut Group, now: i64, out: &mut Vec<Reply>) -> String {
        let Outcome::Now(r) = g.join(join(""), now, out) else {
            panic!("MEMBER_ID_REQUIRED answers at once")
        };
        assert_eq!(r.error, ErrorCode::MemberIdRequired);
        match g.join(join(&r.member_id), now, out) {
            Outcome::Parked(id) => id,
            Outcome::Now(r) => panic!("{r:?}"),
        }
    }

    #[test]
    fn two_members_join_after_the_initial_delay_and_the_leader_assigns() {
        let mut g = Group::new(GroupConfig::default());
        let mut out = Vec::new();
        let a = first_join(&mut g, 0, &mut out);
        let b = first_join(&mut g, 100, &mut out);
        g.tick(2_000, &mut out);
        assert!(out.is_empty(), "the initial rebalance delay holds the join");
        g.tick(3_100, &mut out);
        let joins: BTreeMap<String, JoinResult> = out
            .drain(..)
            .map(|r| match r {
                Reply::Join(id, r) => (id, r),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joins.len(), 2);
        let leader = joins[&a].leader.clone();
        assert_eq!(joins[&leader].members.len(), 2);
        assert_eq!(joins[&a].generation, 1);
        let follower = if leader == a { b.clone() } else { a.clone() };
        assert_eq!(
            g.sync(&follower, None, 1, vec![], 3_200, &mut out),
            Outcome::Parked(follower.clone())
        );
        let assignment = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let mine = g.sync(&leader, None, 1, assignment, 3_300, &mut out);
        assert!(matches!(mine, Outcome::Now(Ok(_))));
        assert_eq!(g.state(), State::Stable);
        assert_eq!(out.len(), 1, "the parked follower is answered");
        assert_eq!(g.heartbeat(&a, None, 1, 4_000), ErrorCode::None);
        assert_eq!(
            g.heartbeat(&a, None, 0, 4_000),
            ErrorCode::IllegalGeneration
        );
        assert_eq!(g.validate_commit(&a, None, 1), Ok(()));
        assert_eq!(
            g.validate_commit("nobody", None, 1),
            Err(ErrorCode::UnknownMemberId)
        );
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_and_the_rest_rebalance() {
        let mut g = Group::new(GroupConfig::default());
        let mut out = Vec::new();
        let a = first_join(&mut g, 0, &mut out);
        let b = first_join(&mut g, 0, &mut out);
        g.tick(3_000, &mut out);
        out.clear();
        let leader = g.leader.clone().unwrap();
        let follower = if leader == a { b.clone() } else { a.clone() };
        let _ = g.sync(&follower, None, 1, vec![], 3_000, &mut out);
        let _ = g.sync(&leader, None, 1, vec![], 3_000, &mut out);
        out.clear();
        // Only the leader heartbeats.
        for t in (4_000..14_000).step_by(1_000) {
            g.heartbeat(&leader, None, 1, t);
            g.tick(t, &mut out);
        }
        g.tick(14_000, &mut out);
        assert_eq!(g.member_ids(), vec![leader.clone()]);
        assert_eq!(g.state(), State::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&leader, None, 1, 14_000),
            ErrorCode::RebalanceInProgress
        );
        // It rejoins; being the only member, the join completes at once.
        let r = g.join(join(&leader), 14_100, &mut out);
        assert!(
            matches!(r, Outcome::Now(JoinResult { generation: 2, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn a_restarted_static_member_gets_its_assignment_without_a_rebalance() {
        let mut g = Group::new(GroupConfig::default());
        let mut out = Vec::new();
        let mut req = join("");
        req.instance_id = Some("inst".into());
        let Outcome::Parked(first) = g.join(req.clone(), 0, &mut out) else {
            panic!("a static member joins without MEMBER_ID_REQUIRED")
        };
        g.tick(3_000, &mut out);
        let _ = g.sync(
            &first,
            Some("inst"),
            1,
            vec![(first.clone(), Bytes::from_static(b"P"))],
            3_000,
            &mut out,
        );
        assert_eq!(g.state(), State::Stable);
        let Outcome::Now(again) = g.join(req, 5_000, &mut out) else {
            panic!("no rebalance for a known static member")
        };
        assert_eq!(again.generation, 1);
        assert_ne!(again.member_id, first);
        assert_eq!(
            g.heartbeat(&first, Some("inst"), 1, 5_000),
            ErrorCode::FencedInstanceId
        );
        assert_eq!(
            g.sync(&again.member_id, Some("inst"), 1, vec![], 5_000, &mut out),
            Outcome::Now(Ok(Bytes::from_static(b"P")))
        );
    }

    #[test]
    fn commits_and_heartbeats_follow_kafka_rules_through_a_rebalance() {
        let mut g = Group::new(GroupConfig::default());
        let mut out = Vec::new();
        let a = first_join(&mut g, 0, &mut out);
        let b = first_join(&mut g, 0, &mut out);
        g.tick(3_000, &mut out);
        let leader = g.leader.clone().unwrap();
        let follower = if leader == a { b.clone() } else { a.clone() };
        let _ = g.sync(&follower, None, 1, vec![], 3_000, &mut out);
        let _ = g.sync(&leader, None, 1, vec![], 3_000, &mut out);
        out.clear();
        assert_eq!(g.state(), State::Stable);
        // A third member: the group prepares a rebalance.
        let c = first_join(&mut g, 4_000, &mut out);
        assert_eq!(g.state(), State::PreparingRebalance);
        assert_eq!(
            g.validate_commit(&a, None, 1),
            Ok(()),
            "the old generation may commit"
        );
        assert_eq!(
            g.heartbeat(&a, None, 1, 4_000),
            ErrorCode::RebalanceInProgress
        );
        assert_eq!(
            g.validate_commit("", None, -1),
            Err(ErrorCode::UnknownMemberId),
            "no simple commits into a group with members"
        );
        // Everyone rejoins: generation 2 waits for the leader's assignment.
        for m in [&a, &b] {
            let _ = g.join(join(m), 4_100, &mut out);
        }
        assert_eq!(g.state(), State::CompletingRebalance);
        assert_eq!(g.generation(), 2);
        assert_eq!(out.len(), 2, "the parked joins of {a} and {c} are answered");
        out.clear();
        assert_eq!(
            g.validate_commit(&a, None, 2),
            Err(ErrorCode::RebalanceInProgress)
        );
        assert_eq!(
            g.validate_commit(&a, None, 1),
            Err(ErrorCode::IllegalGeneration)
        );
        let leader = g.leader.clone().unwrap();
        let follower = [&a, &b, &c]
            .into_iter()
            .find(|m| **m != leader)
            .unwrap()
            .clone();
        assert_eq!(
            g.sync(&follower, None, 2, vec![], 4_200, &mut out),
            Outcome::Parked(follower.clone())
        );
        // The leader leaves before assigning: the parked follower is told to rejoin.
        assert_eq!(g.leave(&leader, None, 4_300, &mut out), ErrorCode::None);
        assert_eq!(
            out,
            vec![Reply::Sync(follower, Err(ErrorCode::RebalanceInProgress))]
        );
        assert_eq!(g.state(), State::PreparingRebalance);
    }
}
