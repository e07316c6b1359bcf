//! Leader elections: on broker fence/unfence/shutdown, ElectLeaders, and the periodic passes
//! (preferred-leader balancing, unclean election for leaderless partitions).

use super::find_partition;
use crate::controller::partition_change::{Election, PartitionChangeBuilder};
use crate::controller::{
    unclean_election_enabled, unclean_election_enabled_or, ControllerConfig, ControllerResult,
    LeaderAcceptance, MAX_ELECTIONS_PER_PASS,
};
use crate::error::{ApiError, ErrorCode};
use crate::image::{MetadataImage, PartitionRegistration};
use crate::record::{BrokerPartitionsRecord, BrokerScope, MetadataRecord, PartitionChangeRecord};
use crate::types::{BrokerId, BrokerList, TopicIdPartition};
use std::collections::BTreeMap;
use std::sync::Arc;

fn topic_name(image: &MetadataImage, tp: TopicIdPartition) -> &str {
    image
        .topic(&tp.topic_id)
        .map(|t| t.name.as_str())
        .unwrap_or_default()
}

/// The election rule for an ISR shrink or a leaderless partition of `topic`: UNCLEAN when
/// the topic allows it (`unclean_default` for topics and clusters that do not say).
fn shrink_election_of(image: &MetadataImage, unclean_default: bool, topic: &str) -> Election {
    if unclean_election_enabled_or(image, topic, unclean_default) {
        Election::Unclean
    } else {
        Election::Online
    }
}

/// The change a [`BrokerPartitionsRecord`] makes to partition `tp`, registered as `p` in the
/// image as it stands before the record, or `None` when it makes none. Replay applies
/// exactly this to every partition on the broker, so it is part of the log's format: a
/// different rule needs a new record version. `acceptance` is [`record_acceptance`]; `shrink`
/// is the topic's election rule for an ISR shrink or a leaderless partition
/// ([`shrink_election_of`]).
fn broker_change(
    p: &PartitionRegistration,
    tp: TopicIdPartition,
    acceptance: LeaderAcceptance<'_>,
    record: &BrokerPartitionsRecord,
    shrink: Election,
) -> Option<PartitionChangeRecord> {
    if !record.covers(p.leader, &p.isr, p.preferred_leader()) {
        return None;
    }
    let builder = PartitionChangeBuilder::new(tp, p, acceptance);
    let broker = record.broker_id;
    match record.scope {
        BrokerScope::Leadership | BrokerScope::LeadershipExcept(_) => {
            builder.election(Election::Online).build()
        }
        BrokerScope::Led | BrokerScope::Followed => {
            let isr: BrokerList = p.isr.iter().copied().filter(|r| *r != broker).collect();
            builder.election(shrink).target_isr(isr).build()
        }
        BrokerScope::Leaderless => builder.election(shrink).build(),
        BrokerScope::Preferred => builder.election(Election::Preferred).build(),
    }
}

/// Which brokers may lead when `record` replays onto `image`: as the image says, except that
/// a broker the record removes never may, nor those its scope names.
fn record_acceptance<'a>(
    image: &'a MetadataImage,
    record: &'a BrokerPartitionsRecord,
) -> LeaderAcceptance<'a> {
    let acceptance = LeaderAcceptance::of(image).excluding_also(record.scope.also_excluded());
    if record.scope.removes() {
        acceptance.excluding(record.broker_id)
    } else {
        acceptance
    }
}

/// Every change `record` makes to `image`, in the order replay applies them (the broker's
/// partitions by topic id, then index), each decided as it is reached, with the partition's
/// registration before it: replay, the controller's check that a record changes anything,
/// and tools all walk this. Each topic is looked up, and its election rule read, once.
pub fn broker_changes_of<'a>(
    image: &'a MetadataImage,
    record: &'a BrokerPartitionsRecord,
) -> impl Iterator<Item = (&'a Arc<PartitionRegistration>, PartitionChangeRecord)> + 'a {
    changes_under(image, record, record_acceptance(image, record))
}

fn changes_under<'a>(
    image: &'a MetadataImage,
    record: &'a BrokerPartitionsRecord,
    acceptance: LeaderAcceptance<'a>,
) -> impl Iterator<Item = (&'a Arc<PartitionRegistration>, PartitionChangeRecord)> + 'a {
    image
        .topics_on_broker(record.broker_id)
        .flat_map(move |(topic, indexes)| {
            let shrink = shrink_election_of(image, record.unclean_default, &topic.name);
            topic.partitions_at(indexes).filter_map(move |(tp, p)| {
                Some((p, broker_change(p, tp, acceptance, record, shrink)?))
            })
        })
}

/// The changes of [`broker_changes_of`] alone.
pub fn broker_changes<'a>(
    image: &'a MetadataImage,
    record: &'a BrokerPartitionsRecord,
) -> impl Iterator<Item = PartitionChangeRecord> + 'a {
    broker_changes_of(image, record).map(|(_, change)| change)
}

/// A [`BrokerPartitionsRecord`] of `broker` over `scope`, or `None` when it would change no
/// partition. Decided on `image` as it stands before the record; a scope that hands the broker
/// leaderships follows its unfencing in the same result, so the broker counts as acceptable
/// although that record is not replayed yet. Costs O(partitions the broker hosts) at most; it
/// stops at the first change.
fn broker_record(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker: BrokerId,
    scope: BrokerScope,
) -> Option<MetadataRecord> {
    let record = BrokerPartitionsRecord {
        broker_id: broker,
        scope,
        unclean_default: config.unclean_leader_election_enable,
    };
    let acceptance = record_acceptance(image, &record);
    let acceptance = if record.scope.removes() {
        acceptance
    } else {
        acceptance.including(broker)
    };
    let changes_any = changes_under(image, &record, acceptance).next().is_some();
    changes_any.then_some(MetadataRecord::BrokerPartitions(record))
}

/// Removes `broker` from the ISR of every partition it hosts and moves its leaderships away.
/// Used when a broker is fenced, re-registers with a new incarnation, or is unregistered.
/// At most two records: the partitions it leads first (their clients wait), then the ISRs
/// it only follows in.
pub fn remove_broker_from_isrs(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker: BrokerId,
) -> Vec<MetadataRecord> {
    let (moves, shrinks) = isr_removals(image, config, broker);
    moves.into_iter().chain(shrinks).collect()
}

/// The first half of [`remove_broker_from_isrs`]: the partitions `broker` leads get another
/// leader and lose it from their ISR. A controlled shutdown writes this before its broker
/// may stop, and the rest when it stops.
pub fn remove_broker_as_leader(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker: BrokerId,
) -> Option<MetadataRecord> {
    broker_record(image, config, broker, BrokerScope::Led)
}

/// The changes that take `broker` out of every ISR: those of the partitions it leads (they
/// get another leader), and those of the others. The second is decided on `image` too: the
/// first changes no partition the second looks at, nor which brokers may lead.
pub fn isr_removals(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker: BrokerId,
) -> (Option<MetadataRecord>, Option<MetadataRecord>) {
    (
        broker_record(image, config, broker, BrokerScope::Led),
        broker_record(image, config, broker, BrokerScope::Followed),
    )
}

/// Moves leadership off `broker` where it leads, keeping it in every ISR: to another in-sync
/// replica that may lead and is not in `unheard`, else nobody (the partition waits,
/// leaderless, for an ISR member, and `broker` is elected when it is unfenced). Used when a
/// broker restarts with its log directory intact. Costs O(partitions the broker hosts).
pub fn move_leadership_off(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker: BrokerId,
    unheard: Vec<BrokerId>,
) -> Option<MetadataRecord> {
    let scope = if unheard.is_empty() {
        BrokerScope::Leadership
    } else {
        BrokerScope::LeadershipExcept(unheard)
    };
    broker_record(image, config, broker, scope)
}

/// The elections that follow `broker`'s unfencing, decided on `image` as it stands before the
/// unfencing record (which the caller writes first): the leaderless partitions it is a
/// replica of get a leader, and, when `config` has automatic leader balancing on, the
/// partitions where it is the preferred replica and in the ISR get it back as leader. At
/// most two records ([`BrokerScope::Leaderless`], [`BrokerScope::Preferred`]), however many
/// partitions change: a restart of every broker hands a million leaderships back in three
/// records where balancing passes wrote a thousand elections per entry. The two scopes cover
/// disjoint partitions (leaderless, led), so both are decided on the same image.
pub fn elect_for_unfenced_broker(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker: BrokerId,
) -> Vec<MetadataRecord> {
    let balancing = config.leader_balance_interval_ms > 0;
    [BrokerScope::Leaderless, BrokerScope::Preferred]
        .into_iter()
        .filter(|scope| balancing || *scope != BrokerScope::Preferred)
        .filter_map(|scope| broker_record(image, config, broker, scope))
        .collect()
}

/// ElectLeaders' election type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionType {
    /// Wire value 0.
    Preferred,
    /// Wire value 1.
    Unclean,
}

/// Per-topic, per-partition outcome of ElectLeaders: `None` is success.
pub type ElectLeadersReply = BTreeMap<String, BTreeMap<i32, Option<ApiError>>>;

/// ElectLeaders (KIP-460). `partitions = None` means every partition; then partitions that
/// need no election are left out of the reply, as Kafka does.
pub fn elect_leaders(
    image: &MetadataImage,
    election_type: ElectionType,
    partitions: Option<&[(String, i32)]>,
) -> ControllerResult<ElectLeadersReply> {
    let mut reply = ElectLeadersReply::new();
    let mut records = Vec::new();
    let all = partitions.is_none();
    let targets: Vec<(String, i32)> = match partitions {
        Some(list) => list.to_vec(),
        None => image
            .topics_by_name()
            .flat_map(|t| t.partitions.keys().map(move |p| (t.name.clone(), *p)))
            .collect(),
    };
    for (topic, partition) in targets {
        let outcome = match find_partition(image, &topic, partition) {
            None => Err(ApiError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("{topic}-{partition} does not exist"),
            )),
            Some(tp) => elect_one(image, tp, election_type),
        };
        match outcome {
            Ok(record) => {
                records.push(MetadataRecord::PartitionChange(record));
                reply.entry(topic).or_default().insert(partition, None);
            }
            Err(e) if all && e.code == ErrorCode::ElectionNotNeeded => {}
            Err(e) => {
                reply.entry(topic).or_default().insert(partition, Some(e));
            }
        }
    }
    ControllerResult::non_atomic(records, reply)
}

fn elect_one(
    image: &MetadataImage,
    tp: TopicIdPartition,
    election_type: ElectionType,
) -> Result<crate::record::PartitionChangeRecord, ApiError> {
    let p = image.partition(tp).expect("caller resolved the partition");
    let acceptance = LeaderAcceptance::of(image);
    match election_type {
        ElectionType::Preferred => {
            if p.leader == p.preferred_leader() {
                return Err(ApiError::new(
                    ErrorCode::ElectionNotNeeded,
                    "preferred leader already leads",
                ));
            }
            let change = PartitionChangeBuilder::new(tp, p, acceptance)
                .election(Election::Preferred)
                .build();
            match change {
                Some(r) if r.leader == Some(p.preferred_leader()) => Ok(r),
                _ => Err(ApiError::new(
                    ErrorCode::PreferredLeaderNotAvailable,
                    format!("preferred leader {} is not available", p.preferred_leader()),
                )),
            }
        }
        ElectionType::Unclean => {
            if !p.leader.is_none() {
                return Err(ApiError::new(
                    ErrorCode::ElectionNotNeeded,
                    "partition has a leader",
                ));
            }
            let change = PartitionChangeBuilder::new(tp, p, acceptance)
                .election(Election::Unclean)
                .build();
            match change {
                Some(r) if r.leader.is_some_and(|l| !l.is_none()) => Ok(r),
                _ => Err(ApiError::new(
                    ErrorCode::EligibleLeadersNotAvailable,
                    "no replica is available to lead",
                )),
            }
        }
    }
}

/// One preferred-leader balancing pass: moves leadership back to the preferred replica where
/// it is in the ISR and active, at most `MAX_ELECTIONS_PER_PASS` partitions. The reply is true
/// when more imbalanced partitions may remain (schedule another pass soon).
pub fn balance_partition_leaders(image: &MetadataImage) -> ControllerResult<bool> {
    let pass = balance_partition_leaders_after(image, None);
    ControllerResult::non_atomic(pass.records, pass.reply.is_some())
}

/// [`balance_partition_leaders`], looking first at the partitions after `after` and then
/// wrapping around: the reply is where the pass stopped at its bound (the next pass starts
/// there), `None` when it looked at every imbalanced partition. Passes that resume this way
/// look at each imbalanced partition once per sweep between them, where passes that each
/// start from the first would step over the same ineligible partitions (a preferred
/// replica not yet back in the ISR, or fenced) every time: at a million partitions after a
/// full restart, hundreds of passes over hundreds of thousands of them.
pub fn balance_partition_leaders_after(
    image: &MetadataImage,
    after: Option<TopicIdPartition>,
) -> ControllerResult<Option<TopicIdPartition>> {
    let acceptance = LeaderAcceptance::of(image);
    let mut records = Vec::new();
    let order: Box<dyn Iterator<Item = TopicIdPartition> + '_> = match after {
        Some(a) => Box::new(image.imbalanced_partitions_after(a)),
        None => Box::new(image.imbalanced_partitions()),
    };
    let mut last = None;
    for tp in order {
        let Some(p) = image.partition(tp) else {
            continue;
        };
        let preferred = p.preferred_leader();
        if !p.isr.contains(&preferred) || !acceptance.accepts(preferred) {
            continue;
        }
        if records.len() == MAX_ELECTIONS_PER_PASS {
            return ControllerResult::non_atomic(records, last);
        }
        let change = PartitionChangeBuilder::new(tp, p, acceptance)
            .election(Election::Preferred)
            .build();
        records.extend(change.map(MetadataRecord::PartitionChange));
        last = Some(tp);
    }
    ControllerResult::non_atomic(records, None)
}

/// True when `record`, already replayed onto `image`, leaves a partition that a balancing
/// pass would move to its preferred leader: the preferred replica is in the ISR, may lead,
/// and does not. The active controller then runs a pass soon instead of at the next periodic
/// one. An unfencing needs none: the records after it hand the broker back its preferred
/// leaderships ([`elect_for_unfenced_broker`]). O(1) per record.
pub fn enables_preferred_election(image: &MetadataImage, record: &MetadataRecord) -> bool {
    let MetadataRecord::PartitionChange(r) = record else {
        // A broker-wide record elects the first valid replica (the preferred one whenever it
        // could lead) or the preferred one itself: it never leaves one to balance.
        return false;
    };
    let Some(p) = image.partition(TopicIdPartition {
        topic_id: r.topic_id,
        partition: r.partition,
    }) else {
        return false;
    };
    let preferred = p.preferred_leader();
    p.leader != preferred
        && p.isr.contains(&preferred)
        && LeaderAcceptance::of(image).accepts(preferred)
}

/// One unclean-election pass over leaderless partitions whose topic allows unclean election,
/// at most `MAX_ELECTIONS_PER_PASS` elections. The reply is true when more may remain.
pub fn elect_unclean_leaders(
    image: &MetadataImage,
    config: &ControllerConfig,
) -> ControllerResult<bool> {
    let acceptance = LeaderAcceptance::of(image);
    let mut records = Vec::new();
    // The topic's setting is read once per topic, and a topic that does not allow unclean
    // election is stepped over whole: after a full restart most partitions may be
    // leaderless for a while, and this pass runs beside every balancing pass.
    let mut next = image.leaderless_partitions().next();
    while let Some(first) = next {
        let past_topic = TopicIdPartition {
            topic_id: first.topic_id,
            partition: i32::MAX,
        };
        if !unclean_election_enabled(image, config, topic_name(image, first)) {
            next = image.leaderless_partitions_after(past_topic).next();
            continue;
        }
        next = None;
        for tp in std::iter::once(first).chain(image.leaderless_partitions_after(first)) {
            if tp.topic_id != first.topic_id {
                next = Some(tp);
                break;
            }
            let Some(p) = image.partition(tp) else {
                continue;
            };
            let Some(change) = PartitionChangeBuilder::new(tp, p, acceptance)
                .election(Election::Unclean)
                .build()
            else {
                continue;
            };
            if records.len() == MAX_ELECTIONS_PER_PASS {
                return ControllerResult::non_atomic(records, true);
            }
            records.push(MetadataRecord::PartitionChange(change));
        }
    }
    ControllerResult::non_atomic(records, false)
}
