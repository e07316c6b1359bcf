//! The active controller: one event loop on the Raft leader that feeds the pure core.
//!
//! Requests arrive as jobs on a bounded queue. While this node leads, each job is decided
//! against the *speculative* image (the committed image plus every record proposed but not yet
//! committed), its records are replayed onto that image at once, and its reply is parked until
//! the Raft entry holding them is applied. The loop drains whatever jobs are queued (up to a
//! bound) into one Raft entry, so many small writes such as offset commits share one entry and
//! one fsync. Proposals carry the leader id they were decided under; a proposal from a deposed
//! leader is refused by openraft.
//!
//! The speculative image is always the committed image plus exactly the proposals that will
//! land, in order. Each entry carries a [`Stamp`]: its session and the offset it was decided
//! for. Every replica's state machine applies a stamped entry only where its session predicted
//! it, right after the session's previous entry ([`crate::raft::types::ProposalChain`]); a
//! proposal that outlives a refused predecessor commits as a no-op everywhere.
//!
//! The loop **renounces** (KRaft's `renounce`) when it stops leading, when its term changes,
//! when a proposal is refused, fails, lands at another offset than predicted or is not
//! admitted, and when a decision's records would not replay on the speculative image: every
//! parked reply fails with NOT_CONTROLLER (indeterminate: an entry already appended may still
//! commit) and the speculative state is dropped. It becomes active again, in a new session,
//! only once it leads and the committed image has applied the whole log (so the new session
//! starts from the real log end), and it then counts every unfenced broker as just heard from.
//!
//! Heartbeats refresh the session tracker directly, before queueing, so a busy loop never
//! delays the contact time of a live broker, and a heartbeat waiting for its answer keeps
//! the session live (`Controller::heartbeat`). A timer fences one
//! expired broker per tick.

mod authz;
pub mod kafka_api;

use crate::raft::network::Raft;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{MetadataBatch, Proposal, SessionId, Stamp, TypeConfig};
use kmeta_metadata::controller::cluster::{
    fence_stale_broker, process_heartbeat, register_broker, BrokerHeartbeatReply,
    BrokerHeartbeatRequest, BrokerRegistrationRequest,
};
use kmeta_metadata::controller::heartbeat::BrokerHeartbeatTracker;
use kmeta_metadata::controller::replication::election::{
    balance_partition_leaders_after, elect_unclean_leaders, enables_preferred_election,
};
use kmeta_metadata::controller::{
    ends_entry, ControllerConfig, ControllerResult, MAX_RECORDS_PER_BATCH,
};
use kmeta_metadata::{ApiError, BrokerEpoch, ErrorCode, LogOffset, MetadataImage, MetadataRecord};
use openraft::async_runtime::WatchReceiver;
use openraft::impls::ProgressResponder;
use openraft::type_config::alias::CommittedLeaderIdOf;
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
// Tokio's clock, so a simulation on paused time drives sessions too.
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Jobs waiting for the loop, at most.
pub const MAX_QUEUED_JOBS: usize = 4_096;
/// Jobs folded into one Raft entry, at most.
pub const MAX_JOBS_PER_ENTRY: usize = 512;
/// Entries proposed but not yet applied, at most. Under load the loop waits for one to apply
/// while jobs pile up in the queue, and those then share the next entry (batching without a
/// fixed linger: at low load nothing waits).
pub const MAX_ENTRIES_IN_FLIGHT: usize = 4;
/// How often expired sessions are checked.
pub const FENCE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long after a write lets a preferred replica lead again (it rejoined the ISR) the loop
/// runs a leader-balancing pass, instead of waiting for the periodic one. Writes within this
/// time share one pass. A pass that stops at its bound of elections is followed at once by
/// the next.
pub const BALANCE_SOON: Duration = Duration::from_millis(500);

/// What a decision sees.
pub struct Ctx<'a> {
    /// The speculative image.
    pub image: &'a MetadataImage,
    /// Controller settings.
    pub config: &'a ControllerConfig,
    /// Broker sessions.
    pub tracker: &'a mut BrokerHeartbeatTracker,
    /// The offset this decision's records will be written at.
    pub next_offset: LogOffset,
    /// Monotonic milliseconds (for sessions).
    pub now_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch (for commit timestamps).
    pub wall_ms: i64,
}

/// Releases a reply: with the offset at which its effects are visible in the committed log,
/// or with the error that stopped it.
type Finish = Box<dyn FnOnce(Result<u64, ApiError>) + Send>;

struct Decided {
    records: Vec<MetadataRecord>,
    /// False when the records may be split over several entries (`ControllerResult::atomic`).
    atomic: bool,
    /// The reply is released with the entry holding this many records of the result
    /// (`ControllerResult::reply_after`); all of them when `None`.
    reply_after: Option<usize>,
    finish: Finish,
}

type Job = Box<dyn FnOnce(&mut Ctx<'_>) -> Decided + Send>;

tokio::task_local! {
    /// The deadline of the request being served (wall-clock ms since the Unix epoch), set for
    /// forwarded requests (`kafka_api::ENVELOPE_DEADLINE_TAG`). A decision submitted under it
    /// is refused with REQUEST_TIMED_OUT if the loop reaches it later.
    pub static WRITE_DEADLINE_MS: i64;
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn not_controller() -> ApiError {
    ApiError::new(ErrorCode::NotController, "this controller is not active")
}

/// A handle to submit requests to the controller loop of this node.
#[derive(Clone)]
pub struct Controller {
    jobs: mpsc::Sender<Job>,
    metrics: crate::metrics::ControllerMetrics,
    tracker: Arc<Mutex<BrokerHeartbeatTracker>>,
    clock: Instant,
    /// Whether the loop is active (it leads and has applied the whole log).
    active: Arc<std::sync::atomic::AtomicBool>,
}

impl Controller {
    /// Starts the loop for this node.
    pub fn start(
        node_id: u64,
        raft: Raft,
        sm: StateMachine,
        config: ControllerConfig,
    ) -> (Controller, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_JOBS);
        // Unbounded, yet bounded in practice: one message per failed entry, and at most
        // MAX_ENTRIES_IN_FLIGHT entries are in flight.
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Mutex::new(BrokerHeartbeatTracker::new()));
        let clock = Instant::now();
        let metrics = crate::metrics::ControllerMetrics::default();
        let active = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let event_loop = EventLoop {
            active_flag: active.clone(),
            metrics: metrics.clone(),
            node_id,
            raft,
            sm,
            config,
            tracker: tracker.clone(),
            clock,
            active: None,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_ENTRIES_IN_FLIGHT)),
            failures: failures_tx,
            next_nonce: uuid::Uuid::new_v4().as_u64_pair().0,
            balance_soon: None,
            balance_from: Arc::default(),
        };
        let task = tokio::spawn(event_loop.run(rx, failures_rx));
        (
            Controller {
                jobs: tx,
                metrics,
                tracker,
                clock,
                active,
            },
            task,
        )
    }

    /// Whether this node is the active controller now: it leads and has applied the whole
    /// log, so its decisions are not refused as NOT_CONTROLLER (a new leader is not active
    /// until it has applied what the old one committed).
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// The loop's recorded metrics (queue time, commit latency, elections).
    pub fn metrics(&self) -> &crate::metrics::ControllerMetrics {
        &self.metrics
    }

    /// Decides `decide` on the active controller and returns its reply once its records have
    /// committed (at once for a decision with no records). NOT_CONTROLLER when this node is
    /// not (or stops being) the active controller.
    pub async fn submit<T, F>(&self, decide: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Result<ControllerResult<T>, ApiError> + Send + 'static,
    {
        self.submit_at(decide).await.map(|(reply, _)| reply)
    }

    /// Like [`Controller::submit`], also returning the metadata offset a reader must have
    /// applied to see the decision's effects (its entry's offset, or for a decision with no
    /// records the last offset proposed before it).
    pub async fn submit_at<T, F>(&self, decide: F) -> Result<(T, u64), ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Result<ControllerResult<T>, ApiError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let queued = Instant::now();
        let queue_time = self.metrics.event_queue_time_ms.clone();
        let deadline_ms = WRITE_DEADLINE_MS.try_with(|d| *d).ok();
        let job: Job = Box::new(move |ctx| {
            queue_time.observe(queued.elapsed().as_secs_f64() * 1000.0);
            let expired = deadline_ms.filter(|d| ctx.wall_ms > *d);
            let decided = match expired {
                Some(d) => Err(ApiError::new(
                    ErrorCode::RequestTimedOut,
                    format!("the request's deadline passed {} ms ago", ctx.wall_ms - d),
                )),
                None => decide(ctx),
            };
            match decided {
                Err(e) => {
                    let _ = tx.send(Err(e));
                    Decided {
                        records: Vec::new(),
                        atomic: true,
                        reply_after: None,
                        finish: Box::new(|_| {}),
                    }
                }
                Ok(result) => {
                    let reply = result.reply;
                    Decided {
                        records: result.records,
                        atomic: result.atomic,
                        reply_after: result.reply_after,
                        finish: Box::new(move |outcome| {
                            let _ = tx.send(outcome.map(|offset| (reply, offset)));
                        }),
                    }
                }
            }
        });
        self.jobs.send(job).await.map_err(|_| not_controller())?;
        rx.await.unwrap_or_else(|_| Err(not_controller()))
    }

    /// BrokerRegistration: the broker's epoch once its registration has committed.
    pub async fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> Result<BrokerEpoch, ApiError> {
        self.submit(move |ctx| {
            register_broker(
                ctx.image,
                ctx.config,
                ctx.tracker,
                &request,
                ctx.next_offset,
                ctx.now_ms,
            )
        })
        .await
    }

    /// Every broker session this node tracks: `(broker, ms since its last heartbeat, the
    /// metadata offset it last reported)`. Meaningful on the active controller.
    pub fn broker_contacts(&self) -> Vec<(kmeta_metadata::BrokerId, u64, LogOffset)> {
        let now = self.now_ms();
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        tracker
            .contacts()
            .map(|(b, c)| (b, now.saturating_sub(c.last_contact_ms), c.metadata_offset))
            .collect()
    }

    /// Notes that `broker` has applied the metadata log up to `offset` (it fetches from the
    /// next one), so a controlled shutdown waiting for every broker to see its leader moves
    /// completes without waiting for their next heartbeats.
    pub fn note_broker_applied(&self, broker: kmeta_metadata::BrokerId, offset: LogOffset) {
        self.tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note_applied(broker, offset);
    }

    /// A broker heartbeat: the session is refreshed at once, off the write path; the state
    /// machine step (fence, unfence, shutdown) goes through the loop.
    ///
    /// Until it is answered, the broker's session stays live (`heartbeat_received`): the
    /// broker sends its next heartbeat only after this answer, which can wait behind a loop
    /// that is busy, or for records to commit. The answer, or this call being dropped, counts
    /// as a contact then.
    pub async fn heartbeat(
        &self,
        request: BrokerHeartbeatRequest,
    ) -> Result<BrokerHeartbeatReply, ApiError> {
        let now = self.now_ms();
        let broker = request.broker_id;
        self.tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat_received(broker, now, request.current_metadata_offset);
        let _answered = Answered {
            controller: self,
            broker,
        };
        self.submit(move |ctx| {
            process_heartbeat(
                ctx.image,
                ctx.config,
                ctx.tracker,
                &request,
                ctx.next_offset,
                ctx.now_ms,
            )
        })
        .await
    }
}

/// Notes, when dropped, that a heartbeat of `broker` has its answer (or is given up on).
struct Answered<'a> {
    controller: &'a Controller,
    broker: kmeta_metadata::BrokerId,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        let now = self.controller.now_ms();
        self.controller
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat_answered(self.broker, now);
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// State held only while this node is the active controller: one session.
struct Active {
    leader_id: CommittedLeaderIdOf<TypeConfig>,
    session: SessionId,
    /// One past the committed log the session started from.
    first_offset: u64,
    /// The speculative image: the committed image plus every proposal of this session.
    image: MetadataImage,
    /// The speculative image as of the last proposal: what the next one's records start from.
    proposed: MetadataImage,
    /// The offset the next proposal will be decided for.
    next_offset: u64,
    /// Turned true when the session renounces; every parked reply then fails.
    renounced: watch::Sender<bool>,
    /// The outcome of the session's last proposal, once known: a decision without records
    /// was still decided on the speculative image, so its reply waits for it (as Kafka's
    /// controller waits for the last written offset before answering a read it made).
    last_proposed: Option<watch::Receiver<Option<Result<u64, ApiError>>>>,
}

/// A proposal of session `.0` did not land as predicted, for reason `.1`.
type Failure = (SessionId, String);

struct EventLoop {
    /// Shared with [`Controller::is_active`].
    active_flag: Arc<std::sync::atomic::AtomicBool>,
    metrics: crate::metrics::ControllerMetrics,
    node_id: u64,
    raft: Raft,
    sm: StateMachine,
    config: ControllerConfig,
    tracker: Arc<Mutex<BrokerHeartbeatTracker>>,
    clock: Instant,
    active: Option<Active>,
    in_flight: Arc<tokio::sync::Semaphore>,
    failures: mpsc::UnboundedSender<Failure>,
    next_nonce: u64,
    /// When the next leader-balancing pass runs ahead of the periodic one.
    balance_soon: Option<Instant>,
    /// Where the last balancing pass stopped at its bound of elections (the next one starts
    /// there), `None` when it looked at every imbalanced partition.
    balance_from: Arc<Mutex<Option<kmeta_metadata::TopicIdPartition>>>,
}

impl EventLoop {
    async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut failures: mpsc::UnboundedReceiver<Failure>,
    ) {
        // Every metric moves on each append, commit and acknowledgement; the loop needs them
        // only while this node leads and is not active yet (it becomes active once the log is
        // applied). Otherwise it waits on the server's (state, vote, leader) alone: watching
        // every metric woke each controller's loop several times per write to learn nothing.
        let mut metrics = self.raft.metrics();
        let mut server = self.raft.server_metrics();
        let mut ticker = tokio::time::interval(FENCE_CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let balance_every = Duration::from_millis(self.config.leader_balance_interval_ms.max(1));
        let mut balancer =
            tokio::time::interval_at(tokio::time::Instant::now() + balance_every, balance_every);
        balancer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = jobs.recv() => {
                    let Some(job) = job else { return };
                    // Wait while the pipeline is full; meanwhile more jobs queue up.
                    drop(self.in_flight.clone().acquire_owned().await.expect("semaphore never closes"));
                    let mut batch = vec![job];
                    while batch.len() < MAX_JOBS_PER_ENTRY {
                        match jobs.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    self.refresh_leadership().await;
                    self.run_jobs(batch).await;
                }
                _ = ticker.tick() => {
                    self.refresh_leadership().await;
                    self.fence_expired().await;
                }
                _ = balancer.tick(), if self.config.leader_balance_interval_ms > 0 => {
                    self.refresh_leadership().await;
                    self.balance_leaders().await;
                }
                _ = sleep_until_some(self.balance_soon) => {
                    self.balance_soon = None;
                    self.refresh_leadership().await;
                    self.balance_leaders().await;
                }
                Some((session, why)) = failures.recv() => {
                    if self.active.as_ref().is_some_and(|a| a.session == session) {
                        self.renounce(&why);
                    }
                    self.refresh_leadership().await;
                }
                changed = metrics.changed(), if self.active.is_none() && self.leads(&server) => {
                    if changed.is_err() {
                        return;
                    }
                    self.refresh_leadership().await;
                }
                changed = server.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.refresh_leadership().await;
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Whether the server's metrics say this node leads.
    fn leads(
        &self,
        server: &openraft::type_config::alias::WatchReceiverOf<
            TypeConfig,
            openraft::metrics::RaftServerMetrics<TypeConfig>,
        >,
    ) -> bool {
        let m = server.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// Ends the session: parked replies fail with NOT_CONTROLLER, the speculative state is
    /// dropped. A new session starts only from the committed image of the whole log.
    fn renounce(&mut self, why: &str) {
        if let Some(active) = self.active.take() {
            tracing::warn!(
                node_id = self.node_id,
                term = active.session.term,
                next_offset = active.next_offset,
                why,
                "renouncing: no longer the active controller"
            );
            self.metrics.renounces.inc();
            self.active_flag
                .store(false, std::sync::atomic::Ordering::Release);
            active.renounced.send_replace(true);
            self.sm.forget_expected();
        }
    }

    /// Becomes active once this node leads and its image has applied the whole log; stops
    /// being active the moment it does not lead, or leads in another term.
    async fn refresh_leadership(&mut self) {
        let m = self.raft.metrics().borrow_watched().clone();
        let leads = m.state == ServerState::Leader && m.current_leader == Some(self.node_id);
        let leader = self
            .raft
            .as_leader()
            .ok()
            .filter(|_| leads && m.running_state.is_ok());
        let Some(leader) = leader else {
            self.renounce("not the Raft leader");
            return;
        };
        let leader_id = leader.to_committed_leader_id();
        if let Some(active) = &self.active {
            if active.leader_id == leader_id {
                return;
            }
            self.renounce("the Raft term changed");
        }
        let caught_up =
            m.last_applied.map(|l| l.index()) == m.last_log_index && m.last_log_index.is_some();
        if !caught_up {
            return;
        }
        // The state machine's own view: it must have applied exactly the log's end.
        let (image, _) = self.sm.image_and_chain();
        if self.sm.last_applied_index() != m.last_log_index {
            return;
        }
        let now = self.now_ms();
        self.tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seed_on_activation(&image, now);
        let next_offset = m.last_log_index.unwrap_or(0) + 1;
        let session = SessionId {
            term: m.current_term,
            node: self.node_id,
            nonce: self.next_nonce,
        };
        self.next_nonce = self.next_nonce.wrapping_add(1);
        tracing::info!(
            node_id = self.node_id,
            term = m.current_term,
            next_offset,
            "active controller"
        );
        self.metrics.elections.inc();
        self.active_flag
            .store(true, std::sync::atomic::Ordering::Release);
        self.active = Some(Active {
            leader_id,
            session,
            first_offset: next_offset,
            proposed: image.clone(),
            image,
            next_offset,
            renounced: watch::channel(false).0,
            last_proposed: None,
        });
    }

    async fn run_jobs(&mut self, batch: Vec<Job>) {
        if self.active.is_none() {
            // Dropping a job drops its reply sender: the submitter sees NOT_CONTROLLER.
            drop(batch);
            return;
        }
        let now_ms = self.clock.elapsed().as_millis() as u64;
        let wall_ms = wall_ms();
        let mut records = Vec::new();
        let mut finishes: Vec<Finish> = Vec::new();
        for job in batch {
            let Some(active) = self.active.as_ref() else {
                drop(job);
                continue;
            };
            let offset = active.next_offset;
            let decided = {
                let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                let mut ctx = Ctx {
                    image: &active.image,
                    config: &self.config,
                    tracker: &mut tracker,
                    next_offset: LogOffset(offset as i64),
                    now_ms,
                    wall_ms,
                };
                job(&mut ctx)
            };
            if decided.records.is_empty() {
                // Decided on what this session proposed: answered once that has committed,
                // never on records that may yet be lost.
                if !records.is_empty() {
                    finishes.push(decided.finish);
                } else {
                    match active.last_proposed.clone() {
                        Some(mut outcome) if outcome.borrow().is_none() => {
                            tokio::spawn(async move {
                                let result = match outcome.wait_for(Option::is_some).await {
                                    Ok(o) => o.clone().expect("waited for Some"),
                                    Err(_) => Err(not_controller()),
                                };
                                (decided.finish)(result);
                            });
                        }
                        _ => (decided.finish)(Ok(offset.saturating_sub(1))),
                    }
                }
                continue;
            }
            // A non-atomic result (fencing, controlled shutdown, unregistration, elections)
            // is written as a sequence of bounded entries, each a prefix of its records that
            // leaves the image consistent; the reply waits for the last. An atomic one is one
            // entry (it was bounded when decided).
            let Decided {
                records: result,
                atomic,
                reply_after,
                finish,
            } = decided;
            let mut finish = Some(finish);
            // Records of this result not yet placed in an entry before the reply's entry.
            let mut before_reply = reply_after.unwrap_or(usize::MAX);
            // Taken from the front one chunk at a time: splitting the rest off each time
            // would copy what remains once per chunk (quadratic in a million-record fence).
            let chunk_len = if atomic {
                result.len()
            } else {
                MAX_RECORDS_PER_BATCH
            };
            let mut rest = result.into_iter().peekable();
            while rest.peek().is_some() {
                // A non-atomic chunk also ends after a record that ends its entry (a broker's
                // removal from its partitions): that entry is proposed before the rest is
                // decided onto the speculative image.
                // It also ends where the reply is released (`reply_after`): what the reply
                // waits for is proposed before the rest is replayed (a broker allowed to stop
                // is not kept waiting while its removal from a million ISRs is decided).
                let mut chunk: Vec<MetadataRecord> = Vec::new();
                let mut ends = false;
                let limit = if !atomic && before_reply > 0 {
                    chunk_len.min(before_reply)
                } else {
                    chunk_len
                };
                while !ends && chunk.len() < limit {
                    let Some(r) = rest.next() else { break };
                    ends = !atomic && ends_entry(&r);
                    chunk.push(r);
                }
                if records.len() + chunk.len() > MAX_RECORDS_PER_BATCH && !records.is_empty() {
                    // This entry is full: propose it; these records start the next one.
                    // They were decided on the same speculative image, which the next entry
                    // extends; an offset they carry (a broker epoch) is then the previous
                    // entry's, still unique and growing.
                    self.propose(std::mem::take(&mut records), std::mem::take(&mut finishes))
                        .await;
                }
                // Assert both sides: the records must replay on the speculative image, with
                // the same checks every replica's replay makes, before they are proposed.
                let Some(active) = self.active.as_mut() else {
                    if let Some(f) = finish.take() {
                        f(Err(not_controller()));
                    }
                    break;
                };
                let at = LogOffset(active.next_offset as i64);
                // Replayed in place: a replay that fails ends the session (below), and the
                // speculative image goes with it. (Onto a copy, every decision's inserts
                // copied their paths through each map they touched, the copy sharing every
                // node with the image it replaced; in place, only the first decision after a
                // proposal does, the image then sharing its nodes with the proposed one.)
                let next = &mut active.image;
                let mut replay = || next.replay_batch(at, &chunk);
                let replayed = if crate::heavy_to_replay(&chunk) {
                    let timer = crate::WorkTimer::start();
                    let replayed = crate::cpu_bound(replay);
                    tracing::info!(
                        offset = at.0,
                        records = chunk.len(),
                        replay_ms = timer.wall_ms(),
                        replay_cpu_ms = timer.cpu_ms(),
                        "replayed a large decision onto the speculative image"
                    );
                    replayed
                } else {
                    replay()
                };
                match replayed {
                    Ok(()) => {
                        if self.balance_soon.is_none()
                            && self.config.leader_balance_interval_ms > 0
                            && chunk
                                .iter()
                                .any(|r| enables_preferred_election(&active.image, r))
                        {
                            self.balance_soon = Some(Instant::now() + BALANCE_SOON);
                        }
                        let reply_reached = before_reply > 0 && before_reply <= chunk.len();
                        before_reply = before_reply.saturating_sub(chunk.len());
                        records.extend(chunk);
                        if rest.peek().is_none() || before_reply == 0 {
                            finishes.extend(finish.take());
                        }
                        if (ends || (reply_reached && !atomic)) && rest.peek().is_some() {
                            self.propose(
                                std::mem::take(&mut records),
                                std::mem::take(&mut finishes),
                            )
                            .await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(%e, "a decision produced records that do not replay on the speculative image");
                        if let Some(f) = finish.take() {
                            f(Err(not_controller()));
                        }
                        finishes.into_iter().for_each(|f| f(Err(not_controller())));
                        finishes = Vec::new();
                        records.clear();
                        self.renounce("a decision produced records that do not replay");
                        break;
                    }
                }
            }
        }
        if !records.is_empty() {
            self.propose(records, finishes).await;
        }
    }

    /// Proposes one entry of the session's speculative records (already replayed onto the
    /// speculative image), stamped with the offset they were decided for; its replies are
    /// released when it is applied. A proposal that is refused, commits elsewhere, or is not
    /// admitted reports a failure, and the loop renounces.
    async fn propose(&mut self, records: Vec<MetadataRecord>, finishes: Vec<Finish>) {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        let Some(active) = self.active.as_mut() else {
            finishes.into_iter().for_each(|f| f(Err(not_controller())));
            return;
        };
        let predicted = active.next_offset;
        let session = active.session;
        let stamp = Stamp {
            session,
            first_offset: active.first_offset,
            offset: predicted,
        };
        let mut renounced = active.renounced.subscribe();
        // The state machine takes the image these records made instead of replaying them.
        let base = std::mem::replace(&mut active.proposed, active.image.clone());
        self.sm.expect(stamp, base, active.image.clone());
        let (outcome_tx, outcome_rx) = watch::channel(None);
        active.last_proposed = Some(outcome_rx);
        let (responder, committed, applied) = ProgressResponder::new();
        let proposed_at = Instant::now();
        let large = crate::heavy_to_replay(&records);
        let commit_latency = self.metrics.commit_latency_ms.clone();
        let written = self
            .raft
            .write(Proposal {
                stamp: Some(stamp),
                batch: MetadataBatch::new(records),
            })
            .with_leader(active.leader_id)
            .responder(responder)
            .await;
        active.next_offset += 1;
        if let Err(e) = written {
            tracing::error!(%e, "raft stopped");
            finishes.into_iter().for_each(|f| f(Err(not_controller())));
            self.renounce("raft stopped");
            return;
        }
        let failures = self.failures.clone();
        tokio::spawn(async move {
            let fail = |why: String| {
                let _ = failures.send((session, why));
            };
            let outcome = tokio::select! {
                biased;
                outcome = async {
                    match committed.await {
                        Ok(log_id) if log_id.index() != predicted => {
                            fail(format!("entry predicted at {predicted} committed at {}", log_id.index()));
                        }
                        Ok(_) if large => {
                            let commit_ms = proposed_at.elapsed().as_millis() as u64;
                            tracing::info!(offset = predicted, commit_ms, "a large entry committed");
                        }
                        Ok(_) => {}
                        Err(_) => fail(format!("entry predicted at {predicted} was refused")),
                    }
                    match applied.await {
                        Ok(Ok(a)) if a.data.admitted => {
                            commit_latency.observe(proposed_at.elapsed().as_secs_f64() * 1000.0);
                            Ok(a.data.offset)
                        }
                        Ok(Ok(a)) => {
                            fail(format!("entry predicted at {predicted} committed as a no-op at {}", a.data.offset));
                            Err(not_controller())
                        }
                        Ok(Err(e)) => {
                            fail(format!("entry predicted at {predicted} failed: {e}"));
                            Err(not_controller())
                        }
                        Err(_) => {
                            fail(format!("entry predicted at {predicted} was dropped"));
                            Err(not_controller())
                        }
                    }
                } => outcome,
                _ = renounced.wait_for(|r| *r) => Err(not_controller()),
            };
            let _ = outcome_tx.send(Some(outcome.clone()));
            for f in finishes {
                f(outcome.clone());
            }
            drop(permit);
        });
    }

    /// The periodic passes of KRaft's controller: move leadership back to preferred replicas,
    /// and elect unclean leaders where a topic allows it. At most 1,000 elections each.
    async fn balance_leaders(&mut self) {
        if self.active.is_none() {
            return;
        }
        // Two jobs: the second is decided against the image that includes the first's records.
        let from = self.balance_from.clone();
        let balance: Job = Box::new(move |ctx| {
            let mut from = from.lock().unwrap_or_else(|p| p.into_inner());
            let result = balance_partition_leaders_after(ctx.image, *from);
            *from = result.reply;
            if !result.records.is_empty() {
                tracing::info!(
                    elections = result.records.len(),
                    "preferred leader balancing"
                );
            }
            Decided {
                records: result.records,
                atomic: result.atomic,
                reply_after: None,
                finish: Box::new(|_| {}),
            }
        });
        let unclean: Job = Box::new(|ctx| {
            let result = elect_unclean_leaders(ctx.image, ctx.config);
            Decided {
                records: result.records,
                atomic: result.atomic,
                reply_after: None,
                finish: Box::new(|_| {}),
            }
        });
        self.run_jobs(vec![balance, unclean]).await;
        let stopped_at_bound = self
            .balance_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if stopped_at_bound {
            // More partitions wait: the next pass at once (it is decided on the image that
            // includes this one; the bound on entries in flight paces the passes).
            self.balance_soon = Some(Instant::now());
        }
    }

    async fn fence_expired(&mut self) {
        if self.active.is_none() {
            return;
        }
        let job: Job = Box::new(|ctx| {
            let result = fence_stale_broker(ctx.image, ctx.config, ctx.tracker, ctx.now_ms);
            if let Some(b) = result.reply {
                tracing::info!(broker = %b, wall_ms = ctx.wall_ms, "broker session expired: fencing");
                ctx.tracker.remove(b);
            }
            Decided {
                records: result.records,
                atomic: result.atomic,
                reply_after: None,
                finish: Box::new(|_| {}),
            }
        });
        self.run_jobs(vec![job]).await;
    }
}
