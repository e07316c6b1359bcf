//! `kmeta server`: runs one node from its configuration.
//!
//! A controller opens its metadata log and image from `log.dirs`, serves Raft on its
//! `CONTROLLER` listener, and joins the quorum named by `controller.quorum.voters`. On an empty
//! log every voter initializes the cluster with that same voter set (openraft allows identical
//! initialization on several nodes; the vote picks one leader).

use crate::config::NodeConfig;
use crate::controller::kafka_api::ControllerService;
use crate::controller::Controller;
use crate::raft::log_store::LogStore;
use crate::raft::network::{serve, NetworkFactory, Raft};
use crate::raft::state_machine::StateMachine;
use kmeta_metadata::controller::ControllerConfig;
use openraft::{BasicNode, SnapshotPolicy};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Raft timing derived from Kafka's `controller.quorum.election.timeout.ms` (T): how long the
/// quorum goes without a leader before electing one.
///
/// openraft starts an election once a follower has heard nothing from the leader for its
/// leader lease (`election_timeout_max`) plus a randomized election timeout drawn from
/// `[election_timeout_min, election_timeout_max)`; the lease also makes a follower refuse
/// votes while it lasts, and makes a leader refuse writes once a quorum has not answered it
/// for that long (CheckQuorum). With T as `election_timeout_min` a `kill -9` of the active
/// controller left the survivors silent for 2.5–3 s (T + 1.5 T) before their first vote
/// request. So T is split: a lease of 0.6 T and a timeout drawn from [0.45 T, 0.6 T), an
/// election 1.05–1.2 T after the last heartbeat; the leader heartbeats every T / 10, six
/// times per lease, so a follower starts an election only after six heartbeats in a row did
/// not reach it. Snapshots are taken by [`snapshot_policy`] (Kafka's byte and age
/// triggers), not by openraft's count.
pub fn raft_timing(election_timeout_ms: u64) -> Result<Arc<openraft::Config>, String> {
    let lease = (election_timeout_ms * 3 / 5).max(20);
    let raft = openraft::Config {
        cluster_name: "kmeta".into(),
        heartbeat_interval: (election_timeout_ms / 10).max(5),
        election_timeout_min: (election_timeout_ms * 9 / 20).max(15),
        election_timeout_max: lease,
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 1_000,
        // Standard Raft: a restarted leader is a follower until it wins an election in a new
        // term. openraft's default restores it as leader of its old term at once, before it
        // has heard from anyone; its first proposals are then refused (CheckQuorum), and an
        // entry it appended but had not flushed before the crash may already sit, under the
        // same term and index, on a follower (docs/RAFT.md).
        enable_leader_restore: Some(false),
        // A controller whose data directory was lost (a replaced disk, a wiped node) comes
        // back with an empty log, below what the leader last knew it to hold. openraft's
        // leader, unless allowed to, never lowers what it believes a follower holds: it
        // answered the follower's conflicts by sending the same snapshot over and over, and
        // the follower never caught up (`quorum::a_wiped_controller_catches_up_by_snapshot`).
        // Allowed, it searches the follower's log again and catches it up (docs/RAFT.md).
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    raft.validate()
        .map(Arc::new)
        .map_err(|e| format!("controller.quorum.election.timeout.ms: {e}"))
}

/// The Raft configuration of a node.
pub fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>, String> {
    raft_timing(config.election_timeout_ms)
}

/// Takes a snapshot after `metadata.log.max.record.bytes.between.snapshots` bytes of new log
/// entries, or after `metadata.log.max.snapshot.interval.ms` with any new entry (0 disables
/// the age trigger), checking once a second. openraft then purges the log behind it.
///
/// Never after fewer new log bytes than the last snapshot's own size, though: a snapshot costs
/// CPU in proportion to the whole image, and once the image outgrew the byte trigger (37 MB at
/// 1,000,000 partitions against Kafka's default of 20 MB) every controller wrote one every few
/// seconds under load, seconds of CPU each, until the leader lost its lease. With this bound a
/// snapshot never costs more than the log it lets go, and a restart replays at most one
/// snapshot's worth of log after loading it.
pub async fn snapshot_policy(
    raft: Raft,
    log: LogStore,
    sm: StateMachine,
    max_bytes: u64,
    max_age_ms: u64,
) {
    let mut bytes_at_last = log.appended_bytes();
    let mut last_at = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let bytes = log.appended_bytes();
        let grown = bytes - bytes_at_last;
        let aged = max_age_ms > 0 && last_at.elapsed().as_millis() as u64 >= max_age_ms;
        let enough = max_bytes.max(sm.snapshot_bytes().unwrap_or(0) as u64);
        if grown >= enough || (aged && grown > 0) {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            tracing::info!(bytes_since_last = grown, "snapshot triggered");
            bytes_at_last = bytes;
            last_at = tokio::time::Instant::now();
        }
    }
}

/// Runs the node until `shutdown` resolves: its controller, its broker, or both.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let meta = crate::storage::check_formatted(&config)?;
    for key in &config.unknown_keys {
        tracing::warn!(key = %key, "unknown config key ignored");
    }
    // Bind every listener first, so a taken port fails the start.
    let broker = if config.roles.broker {
        Some(broker_setup(&config, &meta.cluster_id).await?)
    } else {
        None
    };
    let controller = if config.roles.controller {
        Some(start_controller(&config, &meta.cluster_id).await?)
    } else {
        None
    };
    let broker = broker.map(|(c, l)| (crate::broker::BrokerState::new(c), l));
    let metrics = match &config.metrics_listener {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("metrics.listener: cannot bind {addr}: {e}"))?;
            let render = metrics_render(
                config.node_id,
                controller
                    .as_ref()
                    .map(|c| (c.raft.clone(), c.sm.clone(), c.controller.clone())),
                broker.as_ref().map(|(s, _)| s.clone()),
            );
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(crate::metrics::serve(listener, render, async {
                let _ = rx.await;
            }));
            tracing::info!(%addr, "metrics endpoint");
            Some((tx, task))
        }
        None => None,
    };
    // A fatal Raft error (a committed record that does not replay, a failed fsync) stops the
    // whole node loudly: it must never keep serving a frozen view.
    let fatal = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let raft = controller.as_ref().map(|c| c.raft.clone());
        let fatal = fatal.clone();
        async move {
            let stopped = async {
                match raft {
                    Some(raft) => raft_stopped(raft).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown => {}
                why = stopped => {
                    tracing::error!(why = %why, "the metadata log stopped on a fatal error: stopping the node");
                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
        }
    };
    // The broker's state is never freed: the process ends once this returns, and freeing a
    // million partitions' state piece by piece (on whichever task dropped it last) held up
    // the exit of a broker by seconds after its controlled shutdown was granted.
    let never_freed = broker.as_ref().map(|(state, _)| state.clone());
    match broker {
        Some((state, (listener, extra))) => {
            crate::broker::run_with(state, listener, extra, stop).await?;
        }
        None => stop.await,
    }
    if let Some(c) = controller {
        c.stop().await?;
    }
    if let Some((tx, _task)) = metrics {
        // Not awaited: the process ends once this returns (the listener with it), and the
        // task may wait for a runtime worker still busy replaying a large change.
        let _ = tx.send(());
    }
    tracing::info!("node stopped");
    std::mem::forget(never_freed);
    let why = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
    match why {
        Some(why) => Err(format!("the metadata log stopped on a fatal error: {why}")),
        None => Ok(()),
    }
}

/// Resolves when this node's Raft has stopped on a fatal error, with the reason.
///
/// It waits on the server metrics (state, vote, leader), which change at elections, not on
/// the full metrics, which openraft sends after every batch of its commands: a task waiting
/// on those woke several times per entry. The core sets the full metrics' running state to
/// its error and then drops every metrics sender as its task ends, so the server metrics'
/// channel closing is the signal, and the full metrics then hold the reason.
pub async fn raft_stopped(raft: Raft) -> String {
    use openraft::async_runtime::WatchReceiver;
    let mut server = raft.server_metrics();
    loop {
        if let Err(e) = &raft.metrics().borrow_watched().running_state {
            return e.to_string();
        }
        if server.changed().await.is_err() {
            return match &raft.metrics().borrow_watched().running_state {
                Err(e) => e.to_string(),
                Ok(()) => "raft stopped".to_string(),
            };
        }
    }
}

/// What `/metrics` shows for this node: its controller's view when it has one (the committed
/// image, Raft offsets, sessions), else its broker's image.
fn metrics_render(
    node_id: u64,
    controller: Option<(Raft, StateMachine, Controller)>,
    broker: Option<std::sync::Arc<crate::broker::BrokerState>>,
) -> std::sync::Arc<dyn Fn() -> String + Send + Sync> {
    use openraft::async_runtime::WatchReceiver;
    std::sync::Arc::new(move || {
        let m = crate::metrics::NodeMetrics::new(controller.as_ref().map(|(_, _, c)| c.metrics()));
        let g = &m.gauges;
        let (image, applied, committed) = match (&controller, &broker) {
            (Some((raft, sm, c)), _) => {
                let rm = raft.metrics().borrow_watched().clone();
                if crate::raft::network::known_leader(&rm) == Some(node_id) {
                    g.active_controller_count.set(1);
                    for (b, age, _) in c.broker_contacts() {
                        g.broker_heartbeat_age_ms
                            .get_or_create(&vec![("broker".to_string(), b.0.to_string())])
                            .set(age as i64);
                    }
                }
                let committed = rm.cluster_committed.map_or(-1, |l| l.index() as i64);
                (
                    sm.image(),
                    sm.last_applied_index().map_or(-1, |i| i as i64),
                    committed,
                )
            }
            (None, Some(state)) => {
                let published = state.image();
                let offset = published.offset as i64;
                (published.image.clone(), offset, offset)
            }
            (None, None) => (kmeta_metadata::MetadataImage::new(), -1, -1),
        };
        g.active_broker_count
            .set(image.brokers().filter(|b| b.is_active()).count() as i64);
        g.fenced_broker_count
            .set(image.brokers().filter(|b| b.fenced).count() as i64);
        g.global_topic_count.set(image.topic_count() as i64);
        g.global_partition_count.set(image.partition_count() as i64);
        g.offline_partitions_count
            .set(image.leaderless_count() as i64);
        g.preferred_replica_imbalance_count
            .set(image.imbalanced_count() as i64);
        g.global_under_replicated_partition_count
            .set(image.under_replicated_count() as i64);
        for b in image.brokers() {
            g.partition_leader_count
                .get_or_create(&vec![("broker".to_string(), b.broker_id.0.to_string())])
                .set(image.leader_count(b.broker_id) as i64);
        }
        g.last_applied_record_offset.set(applied);
        g.last_committed_record_offset.set(committed);
        if let Some(state) = &broker {
            // Kept in step by each partition as it changes: no scan of what is hosted.
            let t = state.replicas.change_log.totals.now();
            g.partition_count.set(t.hosted);
            g.leader_count.set(t.leading);
            g.under_replicated_partitions.set(t.under_replicated);
            g.under_min_isr_partition_count.set(t.under_min_isr);
            g.log_size_bytes.set(t.log_bytes);
        }
        m.encode()
    })
}

/// A broker's bound listeners: the inter-broker one, and further client listeners.
type BrokerListeners = (TcpListener, Vec<crate::broker::BoundListener>);

async fn broker_setup(
    config: &NodeConfig,
    cluster_id: &str,
) -> Result<(crate::broker::BrokerConfig, BrokerListeners), String> {
    let name = &config.broker_listener_name;
    let bind = config.listener(name).ok_or_else(|| {
        format!("listeners: a broker needs a {name}:// listener (inter.broker.listener.name)")
    })?;
    let advertised = config
        .advertised_listeners
        .iter()
        .find(|l| &l.name == name)
        .unwrap_or(bind);
    let listener = TcpListener::bind(bind.addr())
        .await
        .map_err(|e| format!("listeners: cannot bind {}: {e}", bind.addr()))?;
    // Every other non-controller listener serves clients too, each advertising its own
    // endpoints (an internal listener for replication, an external one for clients).
    let mut extra = Vec::new();
    let mut extra_listeners = Vec::new();
    for l in &config.listeners {
        if &l.name == name || l.name == config.controller_listener_name {
            continue;
        }
        let advertised = config
            .advertised_listeners
            .iter()
            .find(|a| a.name == l.name)
            .unwrap_or(l);
        let security = config
            .security
            .get(&l.name)
            .expect("validated: every listener has a security protocol");
        let tls = match &security.ssl {
            Some(ssl) => Some(crate::tls::ServerTls::load(ssl.clone())?),
            None => None,
        };
        let bound = TcpListener::bind(l.addr())
            .await
            .map_err(|e| format!("listeners: cannot bind {}: {e}", l.addr()))?;
        extra.push(crate::broker::BoundListener {
            name: l.name.clone(),
            listener: bound,
            tls,
            sasl: security.sasl.clone(),
        });
        extra_listeners.push(crate::broker::AdvertisedListener {
            name: l.name.clone(),
            host: advertised.host.clone(),
            port: advertised.port,
            protocol: security.protocol,
        });
    }
    let node_id = i32::try_from(config.node_id)
        .map_err(|_| format!("node.id: {} is too large for a broker id", config.node_id))?;
    Ok((
        crate::broker::BrokerConfig {
            node_id,
            cluster_id: cluster_id.to_string(),
            voters: config.voters.clone(),
            listener_name: name.clone(),
            advertised_host: advertised.host.clone(),
            advertised_port: advertised.port,
            rack: config.rack.clone(),
            heartbeat_interval: std::time::Duration::from_millis(config.heartbeat_interval_ms),
            session_timeout: std::time::Duration::from_millis(config.session_timeout_ms),
            limits: config.listener_limits(),
            data: config.data.clone(),
            groups: config.groups,
            authorizer: config.authorizer.clone().map(Arc::new),
            controller_tls: config.controller_tls.clone(),
            inter_broker_tls: config.inter_broker_tls.clone(),
            extra_listeners,
        },
        (listener, extra),
    ))
}

/// A running controller.
struct RunningController {
    raft: Raft,
    sm: StateMachine,
    controller: Controller,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningController {
    async fn stop(self) -> Result<(), String> {
        let _ = self.stop_tx.send(());
        let _ = self.server.await;
        for t in self.tasks {
            t.abort();
        }
        self.raft
            .shutdown()
            .await
            .map_err(|e| format!("raft shutdown: {e}"))
    }
}

async fn start_controller(
    config: &NodeConfig,
    cluster_id: &str,
) -> Result<RunningController, String> {
    let listener_cfg = config
        .listener(&config.controller_listener_name)
        .expect("validated: controllers have a controller listener");
    let listener = TcpListener::bind(listener_cfg.addr())
        .await
        .map_err(|e| format!("listeners: cannot bind {}: {e}", listener_cfg.addr()))?;
    let dir = config.metadata_dir();
    let log = LogStore::open(&dir.join("log"))
        .map_err(|e| format!("metadata log in {}: {e}", dir.display()))?;
    let sm = StateMachine::open(&dir.join("sm"))
        .map_err(|e| format!("metadata image in {}: {e}", dir.display()))?;
    let raft = Raft::new(
        config.node_id,
        raft_config(config)?,
        NetworkFactory::new(
            config.node_id,
            std::time::Duration::from_millis(config.request_timeout_ms),
        )
        .with_tls(config.controller_tls.clone()),
        log.clone(),
        sm.clone(),
    )
    .await
    .map_err(|e| format!("raft failed to start: {e}"))?;
    tracing::info!(
        node_id = config.node_id,
        cluster_id = %cluster_id,
        listener = %listener_cfg.addr(),
        "controller started"
    );
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| format!("raft: {e}"))?;
    if !initialized {
        let voters: BTreeMap<u64, BasicNode> = config
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        if let Err(e) = raft.initialize(voters).await {
            tracing::info!(%e, "quorum already initialized elsewhere");
        }
    }
    let snapshots = tokio::spawn(snapshot_policy(
        raft.clone(),
        log,
        sm.clone(),
        config.snapshot_bytes,
        config.snapshot_interval_ms,
    ));
    let controller_config = ControllerConfig {
        cluster_id: cluster_id.to_string(),
        default_num_partitions: config.num_partitions,
        default_replication_factor: config.default_replication_factor,
        session_timeout_ms: config.session_timeout_ms,
        unclean_leader_election_enable: config.unclean_leader_election_enable,
        leader_balance_interval_ms: config.leader_balance_interval_ms,
    };
    // The active-controller loop runs on every controller and acts only while it leads.
    let (controller, controller_task) =
        Controller::start(config.node_id, raft.clone(), sm.clone(), controller_config);
    let authorizer = config.authorizer.clone().map(Arc::new);
    let kafka = Arc::new(
        ControllerService::new(config.node_id, controller.clone(), raft.clone(), sm.clone())
            .with_authorizer(authorizer.clone()),
    );
    let tls = match config
        .security
        .get(&config.controller_listener_name)
        .and_then(|s| s.ssl.clone())
    {
        Some(ssl) => Some(crate::tls::ServerTls::load(ssl)?),
        None => None,
    };
    let security = crate::raft::network::NodeListenerSecurity { tls, authorizer };
    let bootstrap = crate::storage::read_bootstrap(&config.log_dir)?;
    let bootstrap = tokio::spawn(write_bootstrap(controller.clone(), sm.clone(), bootstrap));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        raft.clone(),
        sm.clone(),
        kafka,
        config.listener_limits(),
        security,
        async {
            let _ = stop_rx.await;
        },
    ));
    Ok(RunningController {
        raft,
        sm,
        controller,
        stop_tx,
        server,
        tasks: vec![snapshots, controller_task, bootstrap],
    })
}

/// Writes this controller's bootstrap records (`kmeta storage format --add-scram`) once it
/// is active, unless the log already has them (another controller wrote them first); ends
/// once the image shows them written.
async fn write_bootstrap(
    controller: Controller,
    sm: StateMachine,
    records: Vec<kmeta_metadata::MetadataRecord>,
) {
    use kmeta_metadata::controller::scram::{bootstrap, BOOTSTRAP_FEATURE};
    if records.is_empty() {
        return;
    }
    loop {
        if sm.image().features().contains_key(BOOTSTRAP_FEATURE) {
            return;
        }
        let records = records.clone();
        let written = controller
            .submit(move |ctx| {
                let records = bootstrap(ctx.image, &records)?;
                Ok(kmeta_metadata::controller::ControllerResult::atomic(
                    records,
                    (),
                ))
            })
            .await;
        match written {
            Ok(()) => {
                tracing::info!("bootstrap records written");
                return;
            }
            // Not the active controller (yet): another may write them, or this one later.
            Err(e) if e.code == kmeta_metadata::ErrorCode::NotController => {}
            Err(e) => {
                tracing::error!(error = %e, "bootstrap records refused");
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
