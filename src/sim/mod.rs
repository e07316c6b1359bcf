//! A simulation of the controller quorum in one process: three controllers (real openraft,
//! the real state machine and the real active-controller loop) and broker sessions, on
//! tokio's paused clock (virtual time runs as fast as the CPU allows), over a simulated
//! network ([`net`]) and simulated disks that lose unflushed writes on a crash ([`disk`]).
//!
//! A seed draws the fault schedule (crashes, restarts, pauses, partitions, message loss,
//! slow disks, full restarts), the network's delays and losses, and the client load. Clients
//! keep a ledger of what was acknowledged; after healing, and again after a full restart,
//! the run checks: every acknowledged write is there, nothing appears that was never
//! attempted, each committed offset lies between the last acknowledged and the last attempted,
//! every image passes the core's invariants, every controller has the same image at the same
//! offset, exactly one controller is active, and no controller stopped.
//!
//! Reproducibility: the schedule and the load follow the seed exactly; openraft's election
//! jitter and tokio's task order do not (they draw from OS-seeded generators), so a failing
//! seed usually, not always, fails again. The violations name what was seen.

pub mod disk;
pub mod net;

use crate::controller::Controller;
use crate::raft::network::Raft;
use crate::raft::state_machine::StateMachine;
use disk::SimDisk;
use kmeta_metadata::controller::cluster::{BrokerHeartbeatRequest, BrokerRegistrationRequest};
use kmeta_metadata::controller::offsets::{
    commit_offsets, OffsetCommitPartition, OffsetCommitRequest,
};
use kmeta_metadata::controller::replication::topics::{
    create_partitions, create_topics, CreatableTopic, CreatePartitionsTopic,
};
use kmeta_metadata::controller::{ControllerConfig, ControllerResult};
use kmeta_metadata::record::Endpoint;
use kmeta_metadata::{ApiError, BrokerEpoch, BrokerId, ErrorCode, LogOffset, MetadataImage};
use net::{NetParams, SimNet, SimNetFactory};
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Controllers in a simulation.
pub const CONTROLLERS: u64 = 3;
/// Brokers in a simulation.
pub const BROKERS: i32 = 3;
const CLUSTER_ID: &str = "simulated-cluster-id-0";

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Random faults from the seed.
    Random,
    /// Regression: every controller is killed and restarted at once while brokers' sessions
    /// are expiring and writes keep coming.
    FullRestart,
    /// Regression: the active controller pauses for about 1 s (twice the election timeout),
    /// repeatedly, under a steady write load.
    LeaderPause,
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// What to do.
    pub scenario: Scenario,
    /// Virtual ms of faults under load.
    pub fault_ms: u64,
    /// `controller.quorum.election.timeout.ms`.
    pub election_timeout_ms: u64,
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            scenario: Scenario::Random,
            fault_ms: 12_000,
            election_timeout_ms: 500,
            session_timeout_ms: 2_000,
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Writes acknowledged to clients and brokers.
    pub acknowledged: u64,
    /// Writes with an indeterminate outcome (NOT_CONTROLLER, timeout).
    pub indeterminate: u64,
    /// Faults injected, in order, with their virtual time.
    pub faults: Vec<String>,
    /// Every violated property; empty when the run passed.
    pub violations: Vec<String>,
    /// The committed log end at the end of the run.
    pub log_end: u64,
}

/// Runs one seed on a fresh paused-clock runtime.
pub fn run(seed: u64, options: &SimOptions) -> SimReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let dir = std::env::temp_dir().join(format!(
        "kmeta-sim-{}-{seed}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let report = runtime.block_on(async {
        let mut world = World::new(seed, options.clone(), dir.clone());
        world.run().await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// Runs seeds `first..first + count` on `jobs` threads, printing one line per seed (and the
/// faults of failing seeds). `Ok` with a summary when every seed passed, `Err` otherwise.
pub fn run_many(
    first: u64,
    count: u64,
    jobs: u64,
    options: &SimOptions,
    verbose: bool,
) -> Result<String, String> {
    let started = std::time::Instant::now();
    let scenario = options.scenario;
    let options = options.clone();
    let reports = run_seeds(first, count, jobs, move |seed, _| {
        let r = run(seed, &options);
        println!(
            "seed {seed}: {} faults, {} acknowledged, {} indeterminate, log end {}: {}",
            r.faults.len(),
            r.acknowledged,
            r.indeterminate,
            r.log_end,
            if r.violations.is_empty() {
                "ok"
            } else {
                "VIOLATED"
            }
        );
        if verbose || !r.violations.is_empty() {
            print_details(&r.violations, &r.faults);
        }
        r
    });
    let failed: Vec<u64> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| r.seed)
        .collect();
    let summary = format!(
        "{} seeds ({:?}) in {:.0} s: {} faults, {} acknowledged writes, {} indeterminate; {} seeds violated{}",
        reports.len(),
        scenario,
        started.elapsed().as_secs_f64(),
        reports.iter().map(|r| r.faults.len()).sum::<usize>(),
        reports.iter().map(|r| r.acknowledged).sum::<u64>(),
        reports.iter().map(|r| r.indeterminate).sum::<u64>(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {failed:?}")
        }
    );
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// Runs `run(seed, job)` for seeds `first..first + count` on `jobs` threads (`job` is the
/// thread's index, `0..jobs`); each thread takes the next seed when it is free. Every result,
/// in no particular order.
pub fn run_seeds<R: Send + 'static>(
    first: u64,
    count: u64,
    jobs: u64,
    run: impl Fn(u64, u64) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first));
    let run = Arc::new(run);
    let end = first + count;
    let threads: Vec<_> = (0..jobs)
        .map(|job| {
            let next = next.clone();
            let run = run.clone();
            std::thread::spawn(move || {
                let mut results = Vec::new();
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return results;
                    }
                    results.push(run(seed, job));
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("a seed's thread panicked"))
        .collect()
}

/// Prints a run's violations and faults, indented under its summary line.
pub fn print_details(violations: &[String], faults: &[String]) {
    for v in violations {
        println!("  violation: {v}");
    }
    for f in faults {
        println!("  fault {f}");
    }
}

/// What clients were told, per write.
#[derive(Default)]
struct Ledger {
    /// Per topic: partitions acknowledged (None: the creation was never acknowledged), and
    /// the most partitions ever asked for.
    topics: BTreeMap<String, (Option<i32>, i32)>,
    /// Per (group, topic, partition): last acknowledged offset, last attempted offset.
    offsets: BTreeMap<(String, String, i32), (Option<i64>, i64)>,
    /// ACL grants (principal, topic) attempted, and whether acknowledged.
    acls: BTreeMap<(String, String), bool>,
    acknowledged: u64,
    indeterminate: u64,
}

#[derive(Clone)]
struct Handles {
    id: u64,
    raft: Raft,
    sm: StateMachine,
    controller: Controller,
}

struct Node {
    handles: Handles,
    tasks: Vec<JoinHandle<()>>,
}

/// State shared with the load tasks.
struct Shared {
    nodes: Mutex<BTreeMap<u64, Handles>>,
    /// Requests to a paused controller wait until it resumes, as they would in its socket.
    net: SimNet,
    ledger: Mutex<Ledger>,
    rng: Mutex<StdRng>,
    /// Brokers that are down (they send nothing).
    brokers_down: Mutex<BTreeMap<i32, bool>>,
    stop_load: AtomicBool,
    stop_brokers: AtomicBool,
}

impl Shared {
    fn rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The controllers to try, the one that believes it leads first.
    fn candidates(&self) -> Vec<Handles> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Handles> = nodes.values().cloned().collect();
        all.sort_by_key(|h| {
            let m = h.raft.metrics().borrow_watched().clone();
            m.current_leader != Some(m.id)
        });
        all
    }

    /// Submits a decision to whichever controller is active; `None` when none answered
    /// within `timeout_ms` (the outcome is then indeterminate).
    async fn submit<T, F>(&self, timeout_ms: u64, decide: F) -> Option<Result<T, ApiError>>
    where
        T: Send + 'static,
        F: Fn(&mut crate::controller::Ctx<'_>) -> Result<ControllerResult<T>, ApiError>
            + Send
            + Sync
            + Clone
            + 'static,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        for h in self.candidates() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let d = decide.clone();
            let net = self.net.clone();
            let call = async move {
                net.while_paused(h.id).await;
                h.controller.submit(d).await
            };
            match tokio::time::timeout(left, call).await {
                Ok(Err(e)) if e.code == ErrorCode::NotController => continue,
                Ok(r) => return Some(r),
                Err(_) => return None,
            }
        }
        None
    }
}

struct World {
    seed: u64,
    options: SimOptions,
    dir: PathBuf,
    disks: BTreeMap<u64, SimDisk>,
    nodes: BTreeMap<u64, Node>,
    net: SimNet,
    shared: Arc<Shared>,
    raft_config: Arc<openraft::Config>,
    controller_config: ControllerConfig,
    faults: Vec<String>,
    violations: Vec<String>,
    load: Vec<JoinHandle<()>>,
    brokers: Vec<JoinHandle<()>>,
    /// Fault draws, independent of the load's draws.
    rng: StdRng,
}

fn at() -> String {
    // Virtual ms since the runtime started (paused clocks start at the same instant).
    format!("{:>6}ms", START.with(|s| s.elapsed().as_millis()))
}

thread_local! {
    static START: tokio::time::Instant = tokio::time::Instant::now();
}

impl World {
    fn new(seed: u64, options: SimOptions, dir: PathBuf) -> World {
        START.with(|_| {});
        let mut rng = StdRng::seed_from_u64(seed);
        let net = SimNet::new(
            NetParams {
                loss: 0.0,
                max_delay_ms: 2,
            },
            StdRng::seed_from_u64(rng.random()),
        );
        let base = crate::server::raft_timing(options.election_timeout_ms).expect("valid timing");
        let raft_config = Arc::new(openraft::Config {
            // Purge soon after a snapshot, so lagging nodes install snapshots.
            max_in_snapshot_log_to_keep: 16,
            ..(*base).clone()
        });
        let controller_config = ControllerConfig {
            cluster_id: CLUSTER_ID.to_string(),
            default_num_partitions: 1,
            default_replication_factor: 3,
            session_timeout_ms: options.session_timeout_ms,
            unclean_leader_election_enable: false,
            leader_balance_interval_ms: 1_000,
        };
        let shared = Arc::new(Shared {
            nodes: Mutex::new(BTreeMap::new()),
            net: net.clone(),
            ledger: Mutex::new(Ledger::default()),
            rng: Mutex::new(StdRng::seed_from_u64(rng.random())),
            brokers_down: Mutex::new(BTreeMap::new()),
            stop_load: AtomicBool::new(false),
            stop_brokers: AtomicBool::new(false),
        });
        World {
            seed,
            options,
            dir,
            disks: (1..=CONTROLLERS).map(|i| (i, SimDisk::default())).collect(),
            nodes: BTreeMap::new(),
            net,
            shared,
            raft_config,
            controller_config,
            faults: Vec::new(),
            violations: Vec::new(),
            load: Vec::new(),
            brokers: Vec::new(),
            rng,
        }
    }

    fn fault(&mut self, what: String) {
        tracing::info!(seed = self.seed, "{what}");
        self.faults.push(format!("{} {what}", at()));
    }

    async fn start_node(&mut self, id: u64, slow_disk: bool) {
        let mut fsync_rng = StdRng::seed_from_u64(self.rng.random());
        let (log, flusher) = self.disks[&id].open(move || {
            if slow_disk {
                fsync_rng.random_range(5..=60)
            } else {
                fsync_rng.random_range(0..=2)
            }
        });
        let sm = StateMachine::open(&self.dir.join(format!("sm-{id}"))).expect("state machine");
        let raft = Raft::new(
            id,
            self.raft_config.clone(),
            SimNetFactory {
                from: id,
                net: self.net.clone(),
                request_timeout: crate::raft::network::DEFAULT_REQUEST_TIMEOUT,
            },
            log,
            sm.clone(),
        )
        .await;
        let raft = match raft {
            Ok(raft) => raft,
            Err(e) => {
                self.violations
                    .push(format!("{} controller {id} cannot restart: {e}", at()));
                flusher.abort();
                return;
            }
        };
        let (controller, task) =
            Controller::start(id, raft.clone(), sm.clone(), self.controller_config.clone());
        let handles = Handles {
            id,
            raft: raft.clone(),
            sm,
            controller,
        };
        self.net.attach(id, raft);
        self.shared
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, handles.clone());
        self.nodes.insert(
            id,
            Node {
                handles,
                tasks: vec![task, flusher],
            },
        );
    }

    /// `kill -9`: the node stops at once; its disk keeps what it had flushed.
    async fn crash(&mut self, id: u64) {
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        self.net.detach(id);
        self.shared
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        for t in &node.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), node.handles.raft.shutdown()).await;
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.values().find_map(|n| {
            let m = n.handles.raft.metrics().borrow_watched().clone();
            (m.current_leader == Some(m.id) && m.running_state.is_ok()).then_some(m.id)
        })
    }

    async fn run(&mut self) -> SimReport {
        for id in 1..=CONTROLLERS {
            self.start_node(id, false).await;
        }
        let members: BTreeMap<u64, BasicNode> = (1..=CONTROLLERS)
            .map(|id| (id, BasicNode::default()))
            .collect();
        let _ = self.nodes[&1].handles.raft.initialize(members).await;
        tokio::time::sleep(Duration::from_millis(3 * self.options.election_timeout_ms)).await;
        for b in 1..=BROKERS {
            let shared = self.shared.clone();
            let session = self.options.session_timeout_ms;
            self.brokers
                .push(tokio::spawn(broker_session(shared, BrokerId(b), session)));
        }
        for c in 0..3u32 {
            self.load.push(tokio::spawn(client(self.shared.clone(), c)));
        }
        match self.options.scenario {
            Scenario::Random => self.random_faults().await,
            Scenario::FullRestart => self.full_restart_case().await,
            Scenario::LeaderPause => self.leader_pause_case().await,
        }
        self.heal().await;
        self.shared.stop_load.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.load) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.settle_and_check("after healing").await;
        self.fault("full restart of every controller".into());
        for id in 1..=CONTROLLERS {
            self.crash(id).await;
        }
        for id in 1..=CONTROLLERS {
            self.start_node(id, false).await;
        }
        self.settle_and_check("after a full restart").await;
        self.shared.stop_brokers.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.brokers) {
            t.abort();
        }
        let log_end = self
            .leader()
            .and_then(|l| self.nodes[&l].handles.sm.last_applied_index())
            .unwrap_or(0);
        for id in 1..=CONTROLLERS {
            self.crash(id).await;
        }
        let ledger = self.shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
        SimReport {
            seed: self.seed,
            acknowledged: ledger.acknowledged,
            indeterminate: ledger.indeterminate,
            faults: std::mem::take(&mut self.faults),
            violations: std::mem::take(&mut self.violations),
            log_end,
        }
    }

    async fn random_faults(&mut self) {
        let end = tokio::time::Instant::now() + Duration::from_millis(self.options.fault_ms);
        let mut paused: BTreeMap<u64, tokio::time::Instant> = BTreeMap::new();
        let mut down: BTreeMap<u64, tokio::time::Instant> = BTreeMap::new();
        while tokio::time::Instant::now() < end {
            let wait = self.rng.random_range(200..=1_500);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let now = tokio::time::Instant::now();
            // Bring back what is due.
            for (id, until) in paused.clone() {
                if until <= now {
                    paused.remove(&id);
                    self.net.set_paused(id, false);
                    self.fault(format!("resume controller {id}"));
                }
            }
            for (id, until) in down.clone() {
                if until <= now {
                    down.remove(&id);
                    let slow = self.rng.random_bool(0.2);
                    self.start_node(id, slow).await;
                    self.fault(format!(
                        "restart controller {id}{}",
                        if slow { " on a slow disk" } else { "" }
                    ));
                }
            }
            let target = match self.rng.random_range(0..3) {
                0 => self.leader().unwrap_or(1),
                _ => self.rng.random_range(1..=CONTROLLERS),
            };
            let for_ms = self.rng.random_range(500..=3_000);
            match self.rng.random_range(0..100) {
                0..=24 if !down.contains_key(&target) => {
                    self.crash(target).await;
                    paused.remove(&target);
                    down.insert(target, now + Duration::from_millis(for_ms));
                    self.fault(format!("kill -9 controller {target} for {for_ms}ms"));
                }
                25..=44 if !down.contains_key(&target) && !paused.contains_key(&target) => {
                    self.net.set_paused(target, true);
                    paused.insert(target, now + Duration::from_millis(for_ms));
                    self.fault(format!("pause controller {target} for {for_ms}ms"));
                }
                45..=59 => {
                    let others: Vec<u64> = (1..=CONTROLLERS).filter(|o| *o != target).collect();
                    self.net.isolate(target, others);
                    self.fault(format!("partition controller {target} away"));
                }
                60..=69 => {
                    self.net.heal();
                    self.fault("heal partitions".into());
                }
                70..=77 => {
                    let loss = [0.0, 0.05, 0.2][self.rng.random_range(0..3)];
                    let max_delay_ms = [2, 20, 150][self.rng.random_range(0..3)];
                    self.net.set_params(NetParams { loss, max_delay_ms });
                    self.fault(format!(
                        "messages: loss {loss}, delay up to {max_delay_ms}ms"
                    ));
                }
                78..=85 => {
                    let b = self.rng.random_range(1..=BROKERS);
                    let mut downs = self
                        .shared
                        .brokers_down
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let now_down = !downs.get(&b).copied().unwrap_or(false);
                    downs.insert(b, now_down);
                    drop(downs);
                    self.fault(format!(
                        "broker {b} {}",
                        if now_down { "killed" } else { "restarted" }
                    ));
                }
                86..=91 => {
                    self.fault("full restart of every controller".into());
                    for id in 1..=CONTROLLERS {
                        self.crash(id).await;
                    }
                    paused.clear();
                    down.clear();
                    let gap = self.rng.random_range(0..=500);
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                    for id in 1..=CONTROLLERS {
                        self.start_node(id, false).await;
                    }
                }
                92..=99 if self.rng.random_bool(0.5) => {
                    if let Some(n) = self.nodes.get(&target) {
                        let _ = n.handles.raft.trigger().snapshot().await;
                        self.fault(format!("snapshot on controller {target}"));
                    }
                }
                _ => {}
            }
        }
    }

    /// Every controller is killed and restarted at once; brokers' sessions expire meanwhile.
    async fn full_restart_case(&mut self) {
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        for round in 0..3 {
            // A broker goes silent, so its session expires around the restart.
            let b = (round % BROKERS) + 1;
            self.shared
                .brokers_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(b, true);
            self.fault(format!("broker {b} killed"));
            tokio::time::sleep(Duration::from_millis(self.options.session_timeout_ms / 2)).await;
            self.fault("full restart of every controller".into());
            for id in 1..=CONTROLLERS {
                self.crash(id).await;
            }
            for id in 1..=CONTROLLERS {
                self.start_node(id, false).await;
            }
            tokio::time::sleep(Duration::from_millis(3 * self.options.session_timeout_ms)).await;
            self.shared
                .brokers_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(b, false);
            self.fault(format!("broker {b} restarted"));
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
    }

    /// The active controller stalls for about two election timeouts, five times.
    async fn leader_pause_case(&mut self) {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        for _ in 0..5 {
            let Some(l) = self.leader() else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let pause_ms = 2 * self.options.election_timeout_ms;
            self.net.set_paused(l, true);
            self.fault(format!("pause controller {l} for {pause_ms}ms"));
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            self.net.set_paused(l, false);
            self.fault(format!("resume controller {l}"));
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
    }

    async fn heal(&mut self) {
        self.net.heal();
        self.net.set_params(NetParams {
            loss: 0.0,
            max_delay_ms: 2,
        });
        for id in 1..=CONTROLLERS {
            self.net.set_paused(id, false);
            if !self.nodes.contains_key(&id) {
                self.start_node(id, false).await;
            }
        }
        self.shared
            .brokers_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.fault("heal everything".into());
    }

    /// Lets the cluster settle, then checks every property.
    async fn settle_and_check(&mut self, phase: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut converged = None;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(c) = self.converged().await {
                converged = Some(c);
                break;
            }
        }
        let stopped: Vec<u64> = self
            .nodes
            .values()
            .filter_map(|n| {
                let m = n.handles.raft.metrics().borrow_watched().clone();
                m.running_state.is_err().then_some(m.id)
            })
            .collect();
        if !stopped.is_empty() {
            self.violations.push(format!(
                "{phase}: controllers stopped on a fatal error: {stopped:?}"
            ));
        }
        let Some((image, active)) = converged else {
            let status: Vec<String> = self
                .nodes
                .values()
                .map(|n| {
                    let m = n.handles.raft.metrics().borrow_watched().clone();
                    format!(
                        "{}: leader {:?} term {} log {:?} applied {:?} hash {}",
                        m.id,
                        m.current_leader,
                        m.current_term,
                        m.last_log_index,
                        m.last_applied.map(|l| l.index()),
                        &n.handles.sm.image().canonical_hash_hex()[..12],
                    )
                })
                .collect();
            self.violations.push(format!(
                "{phase}: the controllers never agreed on one active controller and one image within 30 s: {}",
                status.join("; ")
            ));
            return;
        };
        if active != 1 {
            self.violations
                .push(format!("{phase}: {active} active controllers, not one"));
        }
        for v in kmeta_metadata::invariants::check(&image) {
            self.violations
                .push(format!("{phase}: image invariant: {v}"));
        }
        let ledger = self.shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
        self.violations.extend(
            check_ledger(&ledger, &image)
                .into_iter()
                .map(|v| format!("{phase}: {v}")),
        );
    }

    /// `(the image, how many controllers are active)` once every controller has applied the
    /// same log end to the same image and one of them is active.
    async fn converged(&self) -> Option<(MetadataImage, usize)> {
        let leader = self.leader()?;
        let end = self.nodes[&leader]
            .handles
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index;
        let mut hashes = Vec::new();
        for n in self.nodes.values() {
            let m = n.handles.raft.metrics().borrow_watched().clone();
            if m.last_applied.map(|l| l.index()) != end || m.last_log_index != end {
                return None;
            }
            hashes.push(n.handles.sm.image().canonical_hash());
        }
        if self.nodes.len() as u64 != CONTROLLERS || hashes.windows(2).any(|w| w[0] != w[1]) {
            return None;
        }
        let mut active = 0;
        for n in self.nodes.values() {
            let probe = n
                .handles
                .controller
                .submit(|_| Ok(ControllerResult::reply_only(())));
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                active += 1;
            }
        }
        if active == 0 {
            return None;
        }
        Some((self.nodes[&leader].handles.sm.image(), active))
    }
}

/// Every acknowledged write is in `image`; nothing is there that was never attempted.
fn check_ledger(ledger: &Ledger, image: &MetadataImage) -> Vec<String> {
    let mut v = Vec::new();
    for (name, (acked, attempted)) in &ledger.topics {
        let Some(topic) = image.topic_by_name(name) else {
            if acked.is_some() {
                v.push(format!("acknowledged topic {name} is missing"));
            }
            continue;
        };
        let ids: Vec<i32> = topic.partitions.keys().copied().collect();
        let n = ids.len() as i32;
        if ids != (0..n).collect::<Vec<_>>() {
            v.push(format!("topic {name} has partitions {ids:?}, not 0..{n}"));
        }
        if let Some(a) = acked {
            if n < *a {
                v.push(format!(
                    "topic {name} acknowledged at {a} partitions has {n}"
                ));
            }
        }
        if n > *attempted {
            v.push(format!(
                "topic {name} has {n} partitions, more than the {attempted} ever asked for"
            ));
        }
    }
    for name in image.topics_by_name().map(|t| t.name.clone()) {
        if !ledger.topics.contains_key(&name) {
            v.push(format!("topic {name} was never asked for"));
        }
    }
    for ((principal, topic), acked) in &ledger.acls {
        let present = image
            .acls_on(
                kmeta_metadata::record::AclResourceType::Topic,
                kmeta_metadata::record::AclPatternType::Literal,
                topic,
            )
            .any(|a| &a.principal == principal);
        if *acked && !present {
            v.push(format!(
                "acknowledged ACL of {principal} on topic {topic} is missing"
            ));
        }
    }
    for a in image.acls() {
        if !ledger
            .acls
            .contains_key(&(a.principal.clone(), a.resource_name.clone()))
        {
            v.push(format!(
                "ACL of {} on {} was never asked for",
                a.principal, a.resource_name
            ));
        }
    }
    for ((group, topic, partition), (acked, attempted)) in &ledger.offsets {
        let committed = image.topic_id(topic).and_then(|id| {
            image.group_offsets(group).and_then(|o| {
                o.get(&kmeta_metadata::TopicIdPartition {
                    topic_id: id,
                    partition: *partition,
                })
                .map(|o| o.offset)
            })
        });
        match (committed, acked) {
            (None, Some(a)) => v.push(format!(
                "offset of {group}/{topic}-{partition} acknowledged at {a} is missing"
            )),
            (Some(c), Some(a)) if c < *a || c > *attempted => v.push(format!(
                "offset of {group}/{topic}-{partition} is {c}, outside [{a}, {attempted}]"
            )),
            (Some(c), None) if c > *attempted => v.push(format!(
                "offset of {group}/{topic}-{partition} is {c}, beyond the last attempted {attempted}"
            )),
            _ => {}
        }
    }
    v
}

/// One broker's session: registers (a new incarnation after every restart), heartbeats at a
/// quarter of the session timeout, reporting the metadata offset of the controller it talks to.
async fn broker_session(shared: Arc<Shared>, id: BrokerId, session_timeout_ms: u64) {
    let mut epoch: Option<BrokerEpoch> = None;
    let mut incarnation = uuid::Uuid::from_u128(shared.rng(|r| r.random()));
    let mut was_down = false;
    while !shared.stop_brokers.load(Ordering::SeqCst) {
        let down = shared
            .brokers_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.0)
            .copied()
            .unwrap_or(false);
        if down {
            was_down = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if was_down {
            // A restarted process: a new incarnation registers afresh.
            was_down = false;
            epoch = None;
            incarnation = uuid::Uuid::from_u128(shared.rng(|r| r.random()));
        }
        for h in shared.candidates() {
            if tokio::time::timeout(Duration::from_millis(1_000), shared.net.while_paused(h.id))
                .await
                .is_err()
            {
                break;
            }
            let offset =
                h.sm.last_applied_index()
                    .map_or(LogOffset::NONE, |i| LogOffset(i as i64));
            match epoch {
                None => {
                    let request = BrokerRegistrationRequest {
                        broker_id: id,
                        cluster_id: CLUSTER_ID.to_string(),
                        incarnation_id: incarnation,
                        listeners: vec![Endpoint {
                            name: "PLAINTEXT".into(),
                            host: "127.0.0.1".into(),
                            port: 9092 + id.0 as u16,
                            security_protocol: 0,
                        }],
                        features: Vec::new(),
                        rack: None,
                        previous_broker_epoch: None,
                        log_dir_intact: false,
                    };
                    let r = tokio::time::timeout(
                        Duration::from_millis(1_000),
                        h.controller.register_broker(request),
                    )
                    .await;
                    match r {
                        Ok(Ok(e)) => {
                            epoch = Some(e);
                            break;
                        }
                        Ok(Err(e)) if e.code == ErrorCode::NotController => continue,
                        _ => break,
                    }
                }
                Some(e) => {
                    let request = BrokerHeartbeatRequest {
                        broker_id: id,
                        broker_epoch: e,
                        current_metadata_offset: offset,
                        want_fence: false,
                        want_shut_down: false,
                    };
                    let r = tokio::time::timeout(
                        Duration::from_millis(1_000),
                        h.controller.heartbeat(request),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) if e.code == ErrorCode::NotController => continue,
                        Ok(Err(_)) => {
                            // Stale epoch or unknown broker (fenced and dropped): register again.
                            epoch = None;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(session_timeout_ms / 4)).await;
    }
}

/// One client: creates topics, adds partitions, commits rising offsets for its own group,
/// and records every outcome in the ledger.
async fn client(shared: Arc<Shared>, id: u32) {
    let group = format!("group-{id}");
    let mut created = 0u32;
    let mut next_offset: BTreeMap<String, i64> = BTreeMap::new();
    let mut backoff = false;
    while !shared.stop_load.load(Ordering::SeqCst) {
        // After an indeterminate outcome a client backs off, as Kafka clients do.
        let pause = shared.rng(|r| r.random_range(0..=40)) + if backoff { 100 } else { 0 };
        backoff = false;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let choice = shared.rng(|r| r.random_range(0..10));
        let known: Vec<(String, i32)> = {
            let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger
                .topics
                .iter()
                .filter_map(|(n, (a, _))| a.map(|a| (n.clone(), a)))
                .collect()
        };
        if choice < 3 || known.is_empty() {
            created += 1;
            let name = format!("t{id}-{created}");
            let partitions = shared.rng(|r| r.random_range(1..=3));
            let rf = shared.rng(|r| r.random_range(1..=3));
            let topic_id = uuid::Uuid::from_u128(shared.rng(|r| r.random()));
            shared
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .topics
                .insert(name.clone(), (None, partitions));
            let topic = CreatableTopic {
                name: name.clone(),
                topic_id,
                num_partitions: partitions,
                replication_factor: rf,
                assignments: Vec::new(),
                configs: Vec::new(),
            };
            let outcome = shared
                .submit(2_000, move |ctx| {
                    Ok(create_topics(
                        ctx.image,
                        ctx.config,
                        std::slice::from_ref(&topic),
                        false,
                    ))
                })
                .await;
            let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Some(Ok(results)) if results.iter().all(|r| r.error.is_none()) => {
                    ledger.acknowledged += 1;
                    if let Some(t) = ledger.topics.get_mut(&name) {
                        t.0 = Some(partitions);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    ledger.indeterminate += 1;
                    backoff = true;
                }
            }
        } else {
            let (name, acked) = known[shared.rng(|r| r.random_range(0..known.len()))].clone();
            if choice < 6 {
                let count = {
                    let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    let t = ledger.topics.get_mut(&name).expect("known topic");
                    let count = t.1.max(acked) + 1;
                    t.1 = count;
                    count
                };
                let topic = CreatePartitionsTopic {
                    name: name.clone(),
                    count,
                    assignments: None,
                };
                let outcome = shared
                    .submit(2_000, move |ctx| {
                        Ok(create_partitions(
                            ctx.image,
                            std::slice::from_ref(&topic),
                            false,
                        ))
                    })
                    .await;
                let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Some(Ok(results)) if results.iter().all(|(_, e)| e.is_none()) => {
                        ledger.acknowledged += 1;
                        if let Some(t) = ledger.topics.get_mut(&name) {
                            t.0 = Some(t.0.unwrap_or(0).max(count));
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        ledger.indeterminate += 1;
                        backoff = true;
                    }
                }
            } else if choice == 9 {
                // An ACL: this client's principal may read the topic.
                let principal = format!("User:c{id}");
                let acl = kmeta_metadata::record::AccessControlEntryRecord {
                    id: uuid::Uuid::from_u128(shared.rng(|r| r.random())),
                    resource_type: kmeta_metadata::record::AclResourceType::Topic,
                    resource_name: name.clone(),
                    pattern_type: kmeta_metadata::record::AclPatternType::Literal,
                    principal: principal.clone(),
                    host: "*".into(),
                    operation: kmeta_metadata::record::AclOperation::Read,
                    permission: kmeta_metadata::record::AclPermission::Allow,
                };
                let key = (principal, name.clone());
                shared
                    .ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .acls
                    .entry(key.clone())
                    .or_insert(false);
                let outcome = shared
                    .submit(2_000, move |ctx| {
                        let (records, outcomes) = kmeta_metadata::controller::acls::create_acls(
                            ctx.image,
                            std::slice::from_ref(&acl),
                        );
                        Ok(ControllerResult::atomic(records, outcomes))
                    })
                    .await;
                let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Some(Ok(results)) if results.iter().all(Option::is_none) => {
                        ledger.acknowledged += 1;
                        ledger.acls.insert(key, true);
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        ledger.indeterminate += 1;
                        backoff = true;
                    }
                }
            } else {
                let offset = {
                    let o = next_offset.entry(name.clone()).or_insert(0);
                    *o += 1;
                    *o
                };
                let key = (group.clone(), name.clone(), 0);
                shared
                    .ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .offsets
                    .entry(key.clone())
                    .or_insert((None, 0))
                    .1 = offset;
                let request = OffsetCommitRequest {
                    group_id: group.clone(),
                    generation_id: -1,
                    member_id: String::new(),
                    coordinator: None,
                    partitions: vec![OffsetCommitPartition {
                        topic: name.clone(),
                        partition: 0,
                        offset,
                        leader_epoch: -1,
                        metadata: String::new(),
                    }],
                };
                let outcome = shared
                    .submit(2_000, move |ctx| {
                        Ok(commit_offsets(ctx.image, &request, ctx.wall_ms))
                    })
                    .await;
                let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Some(Ok(reply)) if reply.values().all(|e| e.is_none()) => {
                        ledger.acknowledged += 1;
                        if let Some(o) = ledger.offsets.get_mut(&key) {
                            o.0 = Some(offset);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        ledger.indeterminate += 1;
                        backoff = true;
                    }
                }
            }
        }
    }
}
