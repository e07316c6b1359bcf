//! A kmeta broker: registers with the controllers and keeps a session by heartbeats, follows
//! the committed metadata log into its own image, and answers Kafka clients from that image.
//! Writes (admin requests, offset commits) are forwarded to the active controller; the reply
//! goes back once this broker's image includes the write, so a client sees its own write.
//!
//! Lifecycle, as a KRaft broker: register with a new incarnation id per process start; stay
//! fenced until the image has caught up with the registration; heartbeat every
//! `broker.heartbeat.interval.ms`; on shutdown ask for a controlled shutdown (leadership moves
//! away) and stop once the controller allows it.

pub mod api;
mod authz;
pub mod changes;
pub mod controllers;
pub mod coordinator;
mod data;
pub mod fetch_session;
pub mod fetcher;
pub mod follower;
pub mod group;
mod groups;
pub mod log;
pub mod partition;
pub mod partition_table;
pub mod producer_ids;
pub mod replica;
pub mod replicas;

use crate::kafka::listener::Limits;
use crate::kafka::wire::sb;
use arc_swap::ArcSwap;
use controllers::Controllers;
use kafka_protocol::messages::broker_registration_request::{Feature, Listener};
use kafka_protocol::messages::{BrokerHeartbeatRequest, BrokerId, BrokerRegistrationRequest};
use kmeta_metadata::delta::ImageDelta;
use kmeta_metadata::{ErrorCode, MetadataImage};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What a broker needs to run.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// The cluster id from `meta.properties`.
    pub cluster_id: String,
    /// `controller.quorum.voters`.
    pub voters: BTreeMap<u64, String>,
    /// The listener other brokers replicate from (`inter.broker.listener.name`); clients on
    /// it are told about this listener's endpoints.
    pub listener_name: String,
    /// The advertised host and port of that listener.
    pub advertised_host: String,
    /// The advertised port.
    pub advertised_port: u16,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval: Duration,
    /// `broker.session.timeout.ms` (bounds how long a controlled shutdown may take).
    pub session_timeout: Duration,
    /// Further client listeners, as advertised. Clients connecting to one
    /// are told each broker's endpoint on that listener (Kafka's rule).
    pub extra_listeners: Vec<AdvertisedListener>,
    /// Listener limits.
    pub limits: Limits,
    /// Partition logs and replication settings.
    pub data: replicas::DataConfig,
    /// Group coordinator settings.
    pub groups: group::GroupConfig,
    /// The authorizer (`authorizer.class.name`); `None` allows every request.
    pub authorizer: Option<Arc<kmeta_metadata::acl::Authorizer>>,
    /// TLS to the controllers, when their listener is SSL.
    pub controller_tls: Option<crate::tls::SslConfig>,
    /// TLS to the other brokers' inter-broker listener, when it is SSL.
    pub inter_broker_tls: Option<crate::tls::SslConfig>,
}

/// The image as published to request handlers.
pub struct Published {
    /// The image.
    pub image: MetadataImage,
    /// The last metadata offset it includes.
    pub offset: u64,
}

/// State shared by the broker's tasks and request handlers.
pub struct BrokerState {
    /// `node.id`.
    pub node_id: i32,
    /// The configuration.
    pub config: BrokerConfig,
    /// The controllers, for forwarded requests and AlterPartition (a pool of connections).
    pub controllers: Controllers,
    /// The controllers, for registration and heartbeats only: a connection of its own, so a
    /// heartbeat never queues behind slow forwarded writes.
    pub session: Controllers,
    /// The client id used towards controllers.
    pub client_id: String,
    /// The partitions hosted here.
    pub replicas: Arc<replicas::Replicas>,
    /// Ids for idempotent producers.
    pub producer_ids: producer_ids::ProducerIds,
    /// The consumer groups this broker coordinates.
    pub groups: coordinator::Coordinator,
    /// The fetch sessions of this broker's followers.
    pub fetch_sessions: fetch_session::FetchSessions,
    image: ArcSwap<Published>,
    /// What changed since the partitions last caught up with the image.
    delta: std::sync::Mutex<ImageDelta>,
    applied: watch::Sender<u64>,
    epoch: AtomicI64,
    fenced: AtomicBool,
    /// Turned true once, when the broker has registered and its image has caught up with its
    /// registration; no client request is answered before.
    serving: watch::Sender<bool>,
}

impl BrokerState {
    /// New state for a broker that has not registered yet.
    pub fn new(config: BrokerConfig) -> Arc<BrokerState> {
        let client_id = format!("kmeta-broker-{}", config.node_id);
        Arc::new(BrokerState {
            node_id: config.node_id,
            controllers: Controllers::new(
                config.voters.clone(),
                client_id.clone(),
                controllers::CONTROLLER_CONNECTIONS,
                config.controller_tls.clone(),
            ),
            session: Controllers::new(
                config.voters.clone(),
                client_id.clone(),
                1,
                config.controller_tls.clone(),
            ),
            client_id,
            replicas: Arc::new(replicas::Replicas::new(config.node_id, config.data.clone())),
            producer_ids: producer_ids::ProducerIds::default(),
            groups: coordinator::Coordinator::new(config.groups),
            fetch_sessions: fetch_session::FetchSessions::default(),
            config,
            delta: std::sync::Mutex::new(ImageDelta::everything()),
            image: ArcSwap::from_pointee(Published {
                image: MetadataImage::new(),
                offset: 0,
            }),
            applied: watch::channel(0).0,
            epoch: AtomicI64::new(-1),
            fenced: AtomicBool::new(true),
            serving: watch::channel(false).0,
        })
    }

    /// The current image (a lock-free load).
    pub fn image(&self) -> Arc<Published> {
        self.image.load_full()
    }

    /// Publishes a new image that includes everything up to `offset`.
    ///
    /// `delta` is what changed since the last publish; it accumulates until
    /// [`BrokerState::take_changes`] takes it with the image it leads to.
    pub fn publish(&self, image: MetadataImage, offset: u64, delta: ImageDelta) {
        {
            let mut pending = self.delta.lock().unwrap_or_else(|p| p.into_inner());
            pending.merge(delta);
            self.image.store(Arc::new(Published { image, offset }));
        }
        self.applied.send_replace(offset);
    }

    /// The published image and everything that changed since the last call (all of it on the
    /// first call).
    pub fn take_changes(&self) -> (Arc<Published>, ImageDelta) {
        let mut pending = self.delta.lock().unwrap_or_else(|p| p.into_inner());
        (self.image.load_full(), std::mem::take(&mut *pending))
    }

    /// Waits until the image includes `offset`, at most `timeout`. True if it does.
    pub async fn wait_for_offset(&self, offset: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|o| *o >= offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A watch of the last offset the published image includes.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// This broker's epoch, or -1 before it has registered.
    pub fn broker_epoch(&self) -> i64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// True while the controller keeps this broker fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Waits until the broker answers clients: it has registered and its image has caught
    /// up with its registration (Kafka's brokers enable request processing at the same
    /// point). Until then an image replayed from an old log would answer with long-gone
    /// leaders.
    pub async fn wait_until_serving(&self) {
        let mut rx = self.serving.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Opens the broker to clients once it has registered and its image includes the
/// registration (the offset of its epoch).
async fn serve_when_caught_up(state: Arc<BrokerState>) {
    loop {
        let epoch = state.broker_epoch();
        if epoch >= 0
            && state
                .wait_for_offset(epoch as u64, Duration::from_millis(100))
                .await
        {
            tracing::info!(
                broker = state.node_id,
                epoch,
                "caught up with the registration: serving clients"
            );
            state.serving.send_replace(true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The longest wait between registration attempts: a refused or unanswered registration is
/// cheap to repeat, and a quorum that has just elected a leader should not wait on it.
const REGISTRATION_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// BrokerRegistration v3: the first with `PreviousBrokerEpoch`.
const REGISTRATION_VERSION: i16 = 3;

/// The log directory's lock file (Kafka's name): held by the running broker process.
const LOCK_FILE: &str = ".lock";
/// The epoch of the last registration made from this log directory.
const EPOCH_FILE: &str = "broker.epoch";

/// Takes the log directory's exclusive lock, held until the returned file is dropped (the
/// process ends, or the broker stops). A second process on the same directory is refused:
/// two brokers appending to the same partition files would corrupt them, and the lock is what
/// lets a restart prove to the controller that the previous process is gone (`broker.epoch`).
pub fn lock_log_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "log directory {} is in use by another process",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// What this log directory recorded of its last registration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PreviousRegistration {
    epoch: i64,
    /// The machine's boot id when it registered (`None` in a file written before kmeta
    /// recorded it, or where the system has none).
    boot_id: Option<String>,
}

/// This boot of the machine (Linux's `/proc/sys/kernel/random/boot_id`), if known.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The registration this log directory last recorded, if any.
fn read_previous_registration(dir: &std::path::Path) -> Option<PreviousRegistration> {
    let text = std::fs::read_to_string(dir.join(EPOCH_FILE)).ok()?;
    let mut lines = text.lines();
    let epoch = lines
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|e: &i64| *e >= 0)?;
    let boot_id = lines
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    Some(PreviousRegistration { epoch, boot_id })
}

/// True when the files of `dir` hold all that the incarnation of `previous` wrote: it ran in
/// this boot of the machine, so whatever it appended without an fsync is still in the page
/// cache and seen by reads (a process killed mid-append leaves at most a torn last batch,
/// which recovery cuts and which it never reported to a leader). After a machine restart
/// unflushed appends may be gone, and the replica must leave its ISRs.
fn log_dir_intact(previous: &PreviousRegistration, boot: Option<&str>) -> bool {
    previous.boot_id.is_some() && previous.boot_id.as_deref() == boot
}

/// Records `epoch` (and this boot) as this log directory's registration (written aside, then
/// renamed, so a crash leaves the old record or the new one).
fn write_epoch(dir: &std::path::Path, epoch: i64, boot: Option<&str>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        let text = match boot {
            Some(b) => format!("{epoch}\n{b}\n"),
            None => format!("{epoch}\n"),
        };
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(EPOCH_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Registers, proving a restart with the epoch the previous process of this log directory
/// registered with (and, in the same boot of the machine, that its files are intact), and
/// records the new epoch there once registered.
async fn register(state: &BrokerState, incarnation: uuid::Uuid) -> i64 {
    let dir = &state.config.data.log_dir;
    let previous = read_previous_registration(dir);
    let boot = boot_id();
    let intact = previous
        .as_ref()
        .is_some_and(|p| log_dir_intact(p, boot.as_deref()));
    let epoch = register_once(state, incarnation, previous.map(|p| p.epoch), intact).await;
    if let Err(e) = write_epoch(dir, epoch, boot.as_deref()) {
        // Without it the next restart waits for this session to expire; nothing else.
        tracing::warn!(error = %e, dir = %dir.display(), "cannot record the broker epoch");
    }
    epoch
}

async fn register_once(
    state: &BrokerState,
    incarnation: uuid::Uuid,
    previous: Option<i64>,
    log_dir_intact: bool,
) -> i64 {
    let c = &state.config;
    let mut request = BrokerRegistrationRequest::default()
        .with_previous_broker_epoch(previous.unwrap_or(-1))
        .with_broker_id(BrokerId(c.node_id))
        .with_cluster_id(sb(&c.cluster_id))
        .with_incarnation_id(incarnation)
        .with_listeners(
            std::iter::once((
                &c.listener_name,
                &c.advertised_host,
                c.advertised_port,
                if c.inter_broker_tls.is_some() {
                    crate::tls::SecurityProtocol::Ssl
                } else {
                    crate::tls::SecurityProtocol::Plaintext
                },
            ))
            .chain(
                c.extra_listeners
                    .iter()
                    .map(|l| (&l.name, &l.host, l.port, l.protocol)),
            )
            .map(|(name, host, port, protocol)| {
                Listener::default()
                    .with_name(sb(name))
                    .with_host(sb(host))
                    .with_port(port)
                    .with_security_protocol(protocol.id())
            })
            .collect(),
        )
        .with_features(vec![Feature::default()
            .with_name(sb("metadata.version"))
            .with_min_supported_version(1)
            .with_max_supported_version(1)])
        .with_rack(c.rack.as_deref().map(sb));
    if log_dir_intact {
        request.unknown_tagged_fields.insert(
            crate::controller::kafka_api::LOG_DIR_INTACT_TAG,
            bytes::Bytes::from_static(&[1]),
        );
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = state.session.send(&request, REGISTRATION_VERSION).await;
        match outcome {
            Ok(r) if r.error_code == 0 => {
                tracing::info!(broker = c.node_id, epoch = r.broker_epoch, "registered");
                return r.broker_epoch;
            }
            Ok(r) if r.error_code == ErrorCode::NotController.code() => {
                state.session.forget_leader();
                tracing::debug!("registration reached a standby controller; retrying");
            }
            Ok(r) if r.error_code == ErrorCode::InconsistentClusterId.code() => {
                tracing::error!(
                    cluster_id = %c.cluster_id,
                    "the controllers belong to another cluster (INCONSISTENT_CLUSTER_ID); retrying"
                );
            }
            Ok(r) if r.error_code == ErrorCode::ClusterAuthorizationFailed.code() => {
                tracing::error!(
                    "the controllers refuse this broker (CLUSTER_AUTHORIZATION_FAILED): its principal needs ClusterAction on the cluster (super.users); retrying"
                );
            }
            Ok(r) => tracing::info!(error_code = r.error_code, "registration refused; retrying"),
            Err(e) if crate::kafka::connect::is_refusal(&e) => {
                tracing::error!(error = %e, "registration refused (TLS or authorization); retrying")
            }
            Err(e) => tracing::debug!(error = %e, "registration failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REGISTRATION_BACKOFF_MAX);
    }
}

/// Heartbeats until `stop` is set and the controller allows the shutdown (or the session
/// timeout has passed since asking). Re-registers when the controller no longer knows this
/// incarnation.
async fn keep_session(state: Arc<BrokerState>, stop: watch::Receiver<bool>) {
    let incarnation = uuid::Uuid::new_v4();
    let mut epoch = register(&state, incarnation).await;
    state.epoch.store(epoch, Ordering::Relaxed);
    let mut shutdown_asked: Option<tokio::time::Instant> = None;
    let mut stop = stop;
    loop {
        let stopping = *stop.borrow();
        if stopping && shutdown_asked.is_none() {
            tracing::info!("asking the controller for a controlled shutdown");
            shutdown_asked = Some(tokio::time::Instant::now());
        }
        let applied = state.image().offset as i64;
        let request = BrokerHeartbeatRequest::default()
            .with_broker_id(BrokerId(state.node_id))
            .with_broker_epoch(epoch)
            .with_current_metadata_offset(applied)
            .with_want_fence(applied < epoch)
            .with_want_shut_down(stopping);
        match state.session.send(&request, 1).await {
            Ok(r) if r.error_code == 0 => {
                if state.fenced.swap(r.is_fenced, Ordering::Relaxed) != r.is_fenced {
                    tracing::info!(fenced = r.is_fenced, "fencing state changed");
                }
                if stopping && r.should_shut_down {
                    tracing::info!("controlled shutdown granted");
                    return;
                }
            }
            Ok(r) if r.error_code == ErrorCode::NotController.code() => {
                state.session.forget_leader();
            }
            Ok(r)
                if r.error_code == ErrorCode::StaleBrokerEpoch.code()
                    || r.error_code == ErrorCode::BrokerIdNotRegistered.code() =>
            {
                tracing::warn!(
                    error_code = r.error_code,
                    "the controller lost this registration; registering again"
                );
                state.fenced.store(true, Ordering::Relaxed);
                epoch = register(&state, incarnation).await;
                state.epoch.store(epoch, Ordering::Relaxed);
                continue;
            }
            Ok(r) => tracing::debug!(error_code = r.error_code, "heartbeat refused"),
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
        if let Some(at) = shutdown_asked {
            if at.elapsed() > state.config.session_timeout {
                tracing::warn!("controlled shutdown not granted in time; stopping anyway");
                return;
            }
        }
        let interval = if stopping || applied < epoch {
            // Catching up or shutting down: report progress sooner.
            state
                .config
                .heartbeat_interval
                .min(Duration::from_millis(250))
        } else {
            state.config.heartbeat_interval
        };
        // Caught up with its registration, a fenced broker asks to be unfenced at once, not
        // at the next tick.
        let caught_up = state.wait_for_offset(epoch.max(0) as u64, interval);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
            true = caught_up, if applied < epoch => {}
        }
    }
}

/// Runs [`keep_session`] on a thread of its own with a runtime of its own, as a Kafka broker's
/// lifecycle manager has its own event thread, and returns what resolves when it ends.
///
/// A broker's runtime workers can be busy for seconds at a time: at 1,000,000 partitions,
/// hosting what a newly unfenced broker leads and follows took both of them for about ten
/// seconds, no heartbeat left, and the controller fenced live brokers (five times in one run
/// of `kmeta bench scale`), moving every leadership it had just taken. Its own thread and
/// reactor (its connections to the controllers are made there) keep the session whatever
/// the rest of the broker is doing. Dropping `cancel`'s sender ends the thread.
fn spawn_session_thread(
    state: Arc<BrokerState>,
    stop: watch::Receiver<bool>,
) -> Result<
    (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ),
    String,
> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("the broker's session runtime: {e}"))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("kmeta-session-{}", state.node_id))
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = keep_session(state, stop) => {}
                    _ = cancel_rx => {}
                }
            });
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("the broker's session thread: {e}"))?;
    Ok((done_rx, cancel_tx))
}

/// Runs a broker on `listener` until `shutdown` resolves, then shuts down in a controlled way.
pub async fn run(
    config: BrokerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    run_with(BrokerState::new(config), listener, Vec::new(), shutdown).await
}

/// A broker running in this process (`kmeta dev`, benchmarks, tests).
pub struct BrokerHandle {
    /// Its state (image, epoch, fencing).
    pub state: Arc<BrokerState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl BrokerHandle {
    /// Starts a broker on `listener`.
    pub fn spawn(config: BrokerConfig, listener: TcpListener) -> BrokerHandle {
        let state = BrokerState::new(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_with(state.clone(), listener, Vec::new(), async {
            let _ = stopped.await;
        }));
        BrokerHandle { state, stop, task }
    }

    /// Controlled shutdown; returns when the broker has stopped.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| e.to_string())?
    }
}

/// Keeps the hosted partitions in line with each published image, and a replica fetcher
/// running for every leader followed.
///
/// Nothing is applied before the broker's image has caught up once (the controller unfenced
/// it): while a restarted broker replays the metadata log, its image passes through old
/// states in which it may lead partitions in long-gone epochs. Acting on those would accept
/// writes in a dead epoch and rewrite the epoch cache (KRaft's metadata loader also publishes
/// nothing before it reaches the high watermark).
async fn host_partitions(state: Arc<BrokerState>) {
    let mut applied = state.subscribe_applied();
    while state.is_fenced() {
        let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
    }
    state.replicas.remove_strays(&state.image().image);
    loop {
        // Work in proportion to what changed: only the partitions the new records touched.
        let (published, delta) = state.take_changes();
        let timer = crate::WorkTimer::start();
        let large = delta.all || delta.partitions.len() >= 10_000;
        let leaders = if large {
            crate::cpu_bound(|| state.replicas.apply_delta(&published.image, &delta))
        } else {
            state.replicas.apply_delta(&published.image, &delta)
        };
        if large {
            tracing::info!(
                offset = published.offset,
                partitions = delta.partitions.len(),
                all = delta.all,
                apply_ms = timer.wall_ms(),
                apply_cpu_ms = timer.cpu_ms(),
                "applied a large change to the hosted partitions"
            );
        }
        if delta.all {
            state.replicas.ask_every_isr();
        } else {
            // A broker that became eligible may join the ISRs of partitions led here, though
            // no partition record says so and no follower fetch would note it.
            for b in &delta.brokers {
                if published.image.is_active_broker(*b) {
                    state.replicas.ask_isrs_hosting(&published.image, *b);
                }
            }
        }
        fetcher::ensure(&state, leaders);
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Drives the group coordinator: session timers and rebalance deadlines, and dropping the
/// groups the latest image gives to another broker.
async fn run_coordinator(state: Arc<BrokerState>) {
    let mut tick = tokio::time::interval(coordinator::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let published = state.image();
        let me = kmeta_metadata::BrokerId(state.node_id);
        state
            .groups
            .tick(|g| published.image.group_coordinator(g) == Some(me));
    }
}

/// Where clients reach one of a broker's further listeners, registered with the controllers.
#[derive(Clone, Debug)]
pub struct AdvertisedListener {
    /// The listener's name.
    pub name: String,
    /// The advertised host.
    pub host: String,
    /// The advertised port.
    pub port: u16,
    /// Its security protocol.
    pub protocol: crate::tls::SecurityProtocol,
}

/// One of a broker's further client listeners, bound.
pub struct BoundListener {
    /// The listener's name.
    pub name: String,
    /// Its socket.
    pub listener: TcpListener,
    /// Its TLS, for SSL and SASL_SSL listeners.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Its SASL mechanisms, for SASL_PLAINTEXT and SASL_SSL listeners.
    pub sasl: Option<Vec<crate::sasl::Mechanism>>,
}

/// A broker checks SASL credentials against its metadata image.
struct ImageCredentials(Arc<BrokerState>);

impl crate::sasl::Credentials for ImageCredentials {
    fn scram(
        &self,
        user: &str,
        mechanism: kmeta_metadata::record::ScramMechanism,
    ) -> Option<kmeta_metadata::record::UserScramCredentialRecord> {
        self.0
            .image()
            .image
            .scram_credential(user, mechanism)
            .cloned()
    }
}

/// Runs the broker whose state is `state` (see [`run`]) on its inter-broker `listener` and
/// the `extra` client listeners.
pub async fn run_with(
    state: Arc<BrokerState>,
    listener: TcpListener,
    extra: Vec<BoundListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let _lock = lock_log_dir(&state.config.data.log_dir)?;
    let follower = tokio::spawn(follower::run(state.clone()));
    let gate = tokio::spawn(serve_when_caught_up(state.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (session, _cancel_session) = spawn_session_thread(state.clone(), stop_rx)?;
    let hosting = tokio::spawn(host_partitions(state.clone()));
    let isr = tokio::spawn(replica::run(state.clone()));
    let retention = tokio::spawn(state.replicas.clone().retention_loop());
    let groups = tokio::spawn(run_coordinator(state.clone()));
    let (server_stop_tx, server_stop_rx) = watch::channel(false);
    let limits = state.config.limits;
    let mut servers = Vec::new();
    let main_name = state.config.listener_name.clone();
    // The inter-broker listener is PLAINTEXT or SSL (its TLS also secures this broker's
    // replica fetches from the others).
    let main = BoundListener {
        name: main_name,
        listener,
        tls: match &state.config.inter_broker_tls {
            Some(ssl) => Some(crate::tls::ServerTls::load(ssl.clone())?),
            None => None,
        },
        sasl: None,
    };
    for l in std::iter::once(main).chain(extra) {
        let service = Arc::new(api::BrokerService::new(state.clone(), l.name));
        let mut stop = server_stop_rx.clone();
        servers.push(tokio::spawn(crate::kafka::listener::serve(
            l.listener,
            service,
            limits,
            crate::kafka::listener::Security {
                tls: l.tls,
                sasl: l.sasl.map(|mechanisms| {
                    Arc::new(crate::sasl::SaslServer::new(
                        mechanisms,
                        Arc::new(ImageCredentials(state.clone())),
                    ))
                }),
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    tracing::info!(broker = state.node_id, "broker started");
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = session.await;
    let stopping = std::time::Instant::now();
    let _ = server_stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    tracing::info!(
        listeners_ms = stopping.elapsed().as_millis() as u64,
        "broker stopped serving"
    );
    gate.abort();
    isr.abort();
    retention.abort();
    groups.abort();
    hosting.abort();
    follower.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_directory_counts_as_intact_only_in_the_boot_that_recorded_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_previous_registration(dir.path()), None);
        write_epoch(dir.path(), 41, Some("boot-a")).unwrap();
        let previous = read_previous_registration(dir.path()).unwrap();
        assert_eq!(previous.epoch, 41);
        assert!(log_dir_intact(&previous, Some("boot-a")));
        // The machine restarted: unflushed appends may be gone.
        assert!(!log_dir_intact(&previous, Some("boot-b")));
        assert!(!log_dir_intact(&previous, None));
        // A record without a boot id (an older kmeta, or no boot id here) proves nothing.
        write_epoch(dir.path(), 42, None).unwrap();
        let previous = read_previous_registration(dir.path()).unwrap();
        assert_eq!((previous.epoch, previous.boot_id.clone()), (42, None));
        assert!(!log_dir_intact(&previous, None));
        std::fs::write(dir.path().join(EPOCH_FILE), "43\n").unwrap();
        let previous = read_previous_registration(dir.path()).unwrap();
        assert!(!log_dir_intact(&previous, Some("boot-a")));
        // This machine has one.
        assert!(boot_id().is_some());
    }
}
