//! Cluster control: broker registration, the heartbeat state machine, session expiry,
//! controlled shutdown and unregistration (KIP-631 semantics).
//!
//! Heartbeats move a broker through FENCED → UNFENCED → CONTROLLED_SHUTDOWN → SHUTDOWN_NOW
//! (table in `reference/kraft-anchors.md` §1.3). Records are ordered so that the image keeps
//! its invariants after every single record: leadership moves away before a broker is marked
//! fenced or shutting down, and a broker is unfenced before it is elected.

use super::heartbeat::BrokerHeartbeatTracker;
use super::replication::election::{
    elect_for_unfenced_broker, isr_removals, move_leadership_off, remove_broker_as_leader,
    remove_broker_from_isrs,
};
use super::{ControllerConfig, ControllerResult, NextOffset};
use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::*;
use crate::types::*;

/// A BrokerRegistration request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerRegistrationRequest {
    /// The broker's `node.id`.
    pub broker_id: BrokerId,
    /// The cluster id the broker was formatted with.
    pub cluster_id: String,
    /// A UUID drawn at process start.
    pub incarnation_id: uuid::Uuid,
    /// Client listeners.
    pub listeners: Vec<Endpoint>,
    /// Supported features.
    pub features: Vec<FeatureRange>,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// The epoch of the incarnation that last registered from this broker's log directory,
    /// read from that directory (BrokerRegistration v3+ `PreviousBrokerEpoch`; `None` when
    /// unknown). The broker holds the directory's lock while it reads it, so a process that
    /// knows it proves the incarnation that got this epoch has stopped.
    pub previous_broker_epoch: Option<BrokerEpoch>,
    /// The broker vouches that its log directory holds everything the incarnation of
    /// `previous_broker_epoch` wrote: the machine has not restarted since (the page cache
    /// survived the process), so even unflushed appends are in its files. kmeta's tagged
    /// field 10000 of BrokerRegistrationRequest (`docs/PROTOCOL.md`).
    pub log_dir_intact: bool,
}

/// Registers a broker. A new incarnation gets epoch `next_offset` (the offset its record will
/// be written at) and starts fenced; the same incarnation re-registering keeps its epoch and
/// state. Refused: a wrong cluster id, or a new incarnation while the old one still has a
/// live session and the new one cannot show the old one's epoch (`previous_broker_epoch`):
/// a restart from the same log directory takes its registration back at once, a second
/// process configured with the same id is refused until the first one's session expires.
pub fn register_broker(
    image: &MetadataImage,
    config: &ControllerConfig,
    tracker: &BrokerHeartbeatTracker,
    request: &BrokerRegistrationRequest,
    next_offset: NextOffset,
    now_ms: u64,
) -> Result<ControllerResult<BrokerEpoch>, ApiError> {
    if request.cluster_id != config.cluster_id {
        return Err(ApiError::new(
            ErrorCode::InconsistentClusterId,
            format!(
                "Expected cluster ID {}, but got cluster ID {}",
                config.cluster_id, request.cluster_id
            ),
        ));
    }
    if request.broker_id.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "broker id must be non-negative",
        ));
    }
    if request.listeners.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a broker needs at least one listener",
        ));
    }
    let mut records = Vec::new();
    let (epoch, fenced, in_controlled_shutdown) = match image.broker(request.broker_id) {
        Some(old) if old.incarnation_id == request.incarnation_id => {
            (old.broker_epoch, old.fenced, old.in_controlled_shutdown)
        }
        Some(old) => {
            let restarted = request.previous_broker_epoch == Some(old.broker_epoch);
            if tracker.has_valid_session(image, old.broker_id, now_ms, config.session_timeout_ms)
                && !old.in_controlled_shutdown
                && !restarted
            {
                return Err(ApiError::new(
                    ErrorCode::DuplicateBrokerRegistration,
                    format!(
                        "Another broker is registered with that broker id. Its session expires in at most {} ms.",
                        config.session_timeout_ms
                    ),
                ));
            }
            if restarted && request.log_dir_intact {
                // The old incarnation is gone but its files hold all it wrote, so each replica
                // is as in sync as it was: it stays in its ISRs and fetches on from where it
                // stopped. Only its leadership moves (a fenced broker leads nothing); where no
                // other in-sync replica can take it, the partition waits for it, leaderless.
                // Not to a broker this controller has not heard from since it became active:
                // when every broker restarts at once, each registration would hand its
                // leadership to brokers about to register too, and the last would take all
                // of it away again (a million partitions moved three times).
                let unheard: Vec<BrokerId> = image
                    .brokers()
                    .filter(|b| b.broker_id != old.broker_id && !b.fenced)
                    .map(|b| b.broker_id)
                    .filter(|b| !tracker.heard(*b))
                    .collect();
                records.extend(move_leadership_off(image, config, old.broker_id, unheard));
            } else {
                // It may have lost unflushed data (unclean shutdown, or a machine restart):
                // take it out of every ISR first.
                records.extend(remove_broker_from_isrs(image, config, old.broker_id));
            }
            // The runtime writes a removal in an entry of its own (the ISR removals are safe
            // to land without the rest); the epoch is the offset of the entry that holds the
            // registration, so a broker is caught up with its own registration once its
            // image reaches its epoch.
            let entries = super::entries_before_next(&records);
            (BrokerEpoch(next_offset.0 + entries as i64), true, false)
        }
        None => (BrokerEpoch(next_offset.0), true, false),
    };
    records.push(MetadataRecord::RegisterBroker(RegisterBrokerRecord {
        broker_id: request.broker_id,
        incarnation_id: request.incarnation_id,
        broker_epoch: epoch,
        listeners: request.listeners.clone(),
        features: request.features.clone(),
        rack: request.rack.clone(),
        fenced,
        in_controlled_shutdown,
    }));
    Ok(ControllerResult::non_atomic(records, epoch))
}

/// A BrokerHeartbeat request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerHeartbeatRequest {
    /// The broker.
    pub broker_id: BrokerId,
    /// Its epoch.
    pub broker_epoch: BrokerEpoch,
    /// The highest metadata offset it has applied.
    pub current_metadata_offset: LogOffset,
    /// True until the broker is ready to serve.
    pub want_fence: bool,
    /// True once the broker wants to stop.
    pub want_shut_down: bool,
}

/// The controller's view of a broker, per Kafka's `BrokerControlState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerControlState {
    /// Fenced: leads nothing, hidden from clients.
    Fenced,
    /// Serving.
    Unfenced,
    /// Moving leadership away before stopping.
    ControlledShutdown,
    /// May stop now.
    ShutdownNow,
}

/// A BrokerHeartbeat reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerHeartbeatReply {
    /// The broker's metadata has reached its own registration.
    pub is_caught_up: bool,
    /// The broker is fenced.
    pub is_fenced: bool,
    /// The broker may shut down now.
    pub should_shut_down: bool,
}

/// The next state of a broker, by Kafka's heartbeat state table.
pub fn next_broker_state(
    current: BrokerControlState,
    request: &BrokerHeartbeatRequest,
    registration_offset: LogOffset,
    leads_partitions: bool,
    shutdown_offset_reached: bool,
) -> BrokerControlState {
    use BrokerControlState::*;
    match current {
        Fenced | ShutdownNow => {
            if request.want_shut_down {
                ShutdownNow
            } else if !request.want_fence && request.current_metadata_offset >= registration_offset
            {
                Unfenced
            } else {
                Fenced
            }
        }
        Unfenced => {
            if request.want_fence {
                if request.want_shut_down {
                    ShutdownNow
                } else {
                    Fenced
                }
            } else if request.want_shut_down {
                if leads_partitions {
                    ControlledShutdown
                } else {
                    ShutdownNow
                }
            } else {
                Unfenced
            }
        }
        ControlledShutdown => {
            if !leads_partitions && shutdown_offset_reached {
                ShutdownNow
            } else {
                ControlledShutdown
            }
        }
    }
}

fn leads_any(image: &MetadataImage, broker: BrokerId) -> bool {
    image.leader_count(broker) > 0
}

/// Processes a heartbeat: refreshes the session, then moves the broker through the state
/// machine. `next_offset` is where this decision's first record would be written.
pub fn process_heartbeat(
    image: &MetadataImage,
    config: &ControllerConfig,
    tracker: &mut BrokerHeartbeatTracker,
    request: &BrokerHeartbeatRequest,
    next_offset: NextOffset,
    now_ms: u64,
) -> Result<ControllerResult<BrokerHeartbeatReply>, ApiError> {
    let broker = match image.broker(request.broker_id) {
        Some(b) if b.broker_epoch == request.broker_epoch => b,
        Some(b) => {
            return Err(ApiError::new(
                ErrorCode::StaleBrokerEpoch,
                format!(
                    "Expected broker epoch {}, but got broker epoch {}",
                    b.broker_epoch, request.broker_epoch
                ),
            ))
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::StaleBrokerEpoch,
                format!("Broker {} is not registered.", request.broker_id),
            ))
        }
    };
    tracker.touch(request.broker_id, now_ms, request.current_metadata_offset);
    tracker.mark_heard(request.broker_id);
    let id = broker.broker_id;
    let current = if broker.fenced {
        BrokerControlState::Fenced
    } else if broker.in_controlled_shutdown {
        BrokerControlState::ControlledShutdown
    } else {
        BrokerControlState::Unfenced
    };
    let registration_offset = LogOffset(broker.broker_epoch.0);
    let leads = leads_any(image, id);
    if current == BrokerControlState::ControlledShutdown {
        // A controller that became active after the broker entered controlled shutdown has
        // no offset for it (the tracker lives in the active controller's memory), and KRaft
        // sets one on the next heartbeat: the image this is decided on holds the mark and
        // every move written so far, so the shutdown waits for every broker to reach its
        // last entry. A kept offset is not moved.
        tracker.set_controlled_shutdown_offset(id, LogOffset(next_offset.0 - 1));
    }
    let shutdown_offset_reached = tracker
        .contact(id)
        .and_then(|c| c.controlled_shutdown_offset)
        .is_some_and(|offset| {
            tracker
                .lowest_active_offset(image)
                .is_none_or(|low| low >= offset)
        });
    let next = next_broker_state(
        current,
        request,
        registration_offset,
        leads,
        shutdown_offset_reached,
    );
    let change = |fenced: Option<bool>, shutdown: Option<bool>| {
        MetadataRecord::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
            broker_id: id,
            broker_epoch: broker.broker_epoch,
            fenced,
            in_controlled_shutdown: shutdown,
        })
    };
    let mut records = Vec::new();
    // Set where the reply need not wait for all the records.
    let mut reply_after = None;
    use BrokerControlState::*;
    match (current, next) {
        (Fenced, Unfenced) => {
            records.push(change(Some(false), None));
            records.extend(elect_for_unfenced_broker(image, config, id));
        }
        (Unfenced, Fenced) => {
            records.extend(remove_broker_from_isrs(image, config, id));
            records.push(change(Some(true), None));
        }
        (Unfenced, ShutdownNow) | (ControlledShutdown, ShutdownNow) => {
            // It may stop once it leads nothing (after a controlled shutdown every broker has
            // seen that already; a broker that asks to be fenced and stop moves its
            // leadership now) and it is fenced. It leaves the ISRs it follows in after that
            // (the reply does not wait for them): until each removal lands, that partition's
            // leader waits for it, as for a slow follower, and if a failover loses the rest,
            // the leaders take it out after `replica.lag.time.max.ms`.
            let (moves, shrinks) = isr_removals(image, config, id);
            records.extend(moves);
            let shutting_down = (current == ControlledShutdown).then_some(false);
            records.push(change(Some(true), shutting_down));
            reply_after = Some(records.len());
            records.extend(shrinks);
        }
        (Unfenced, ControlledShutdown) => {
            // Leadership moves first, then the mark; the ISRs it follows in are left when it
            // stops, so the shutdown waits for its leader moves alone.
            records.extend(remove_broker_as_leader(image, config, id));
            records.push(change(None, Some(true)));
            // The runtime writes the removal in an entry of its own: the shutdown may
            // complete once every broker has the entry with the mark.
            let entries = super::entries_before_next(&records[..records.len() - 1]);
            tracker.set_controlled_shutdown_offset(id, LogOffset(next_offset.0 + entries as i64));
        }
        (ControlledShutdown, ControlledShutdown) if leads => {
            // Leadership may have been stuck on this broker (sole ISR member); try again.
            records.extend(remove_broker_as_leader(image, config, id));
        }
        _ => {}
    }
    let reply = BrokerHeartbeatReply {
        is_caught_up: request.current_metadata_offset >= registration_offset,
        is_fenced: matches!(next, Fenced | ShutdownNow),
        should_shut_down: next == ShutdownNow,
    };
    let result = ControllerResult::non_atomic(records, reply);
    Ok(match reply_after {
        Some(n) => result.reply_after(n),
        None => result,
    })
}

/// Fences the stalest broker whose session expired, if any: one broker per call, so the
/// effect of each fencing is visible before the next. The reply names the fenced broker.
pub fn fence_stale_broker(
    image: &MetadataImage,
    config: &ControllerConfig,
    tracker: &BrokerHeartbeatTracker,
    now_ms: u64,
) -> ControllerResult<Option<BrokerId>> {
    let Some(id) = tracker.find_stale_broker(image, now_ms, config.session_timeout_ms) else {
        return ControllerResult::reply_only(None);
    };
    let broker = image
        .broker(id)
        .expect("tracker only returns registered brokers");
    let mut records = remove_broker_from_isrs(image, config, id);
    records.push(MetadataRecord::BrokerRegistrationChange(
        BrokerRegistrationChangeRecord {
            broker_id: id,
            broker_epoch: broker.broker_epoch,
            fenced: Some(true),
            in_controlled_shutdown: broker.in_controlled_shutdown.then_some(false),
        },
    ));
    ControllerResult::non_atomic(records, Some(id))
}

/// UnregisterBroker: takes the broker out of every ISR, then removes its registration.
pub fn unregister_broker(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker_id: BrokerId,
) -> Result<ControllerResult<()>, ApiError> {
    let broker = image.broker(broker_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BrokerIdNotRegistered,
            format!("Broker ID {broker_id} is not currently registered"),
        )
    })?;
    let mut records = remove_broker_from_isrs(image, config, broker_id);
    records.push(MetadataRecord::UnregisterBroker(UnregisterBrokerRecord {
        broker_id,
        broker_epoch: broker.broker_epoch,
    }));
    Ok(ControllerResult::non_atomic(records, ()))
}
