//! The fault-injection suite (`kmeta faults`): real `kmeta server` processes (3 controllers,
//! 3 brokers), each in a network namespace of its own ([`netns`]), under a client load through
//! the brokers, with faults drawn from a printed seed: `kill -9` (the active controller
//! included), SIGSTOP/SIGCONT for 0.5-5 s, a node cut off by a network partition, restarts,
//! and a full restart of every node. The load keeps a ledger of what was acknowledged (topics,
//! partition additions, offset commits, config changes); a NOT_CONTROLLER, a timeout or a lost
//! connection is indeterminate. After healing, and again after a final full restart, every
//! broker is checked: every acknowledged write is there and nothing never attempted; each
//! committed offset and config lies between the last acknowledged and the last attempted;
//! every leader is live and in its ISR; all brokers serve the same metadata; exactly one
//! active controller; every controller's image hash equal at the same offset; no node stopped.
//! Producers with acks=all write messages meanwhile ([`data`]); their checks are there.
//!
//! Every schedule is bounded in time, and everything it sets up (processes, namespaces,
//! firewall rules inside them, data directories) is removed when it ends, failed or not.

pub mod data;
pub mod netns;

use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::*;
use netns::Netns;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONTROLLERS: [u64; 3] = [101, 102, 103];
const BROKERS: [u64; 3] = [1, 2, 3];
const CONTROLLER_PORT: u16 = 9093;
const BROKER_PORT: u16 = 9092;
/// The brokers' SASL_SSL listener, where the clients go with `--secure`.
const SECURE_PORT: u16 = 9093;
/// The nodes' certificate's common name with `--secure` (their principal is
/// `User:CN=kmeta-node`, a super user).
const NODE_CN: &str = "kmeta-node";

/// The settings every node gets with `--secure`: mutual TLS on the controller listener and
/// the inter-broker listener (INTERNAL) with the node certificate, SASL_SSL for clients, and
/// the StandardAuthorizer with the nodes and the clients' user as super users.
fn secure_node_properties(dir: &Path) -> String {
    format!(
        "listener.security.protocol.map=CONTROLLER:SSL,INTERNAL:SSL,SASL_SSL:SASL_SSL\ninter.broker.listener.name=INTERNAL\nssl.keystore.location={}\nssl.truststore.location={}\nssl.endpoint.identification.algorithm=\nlistener.name.controller.ssl.client.auth=required\nlistener.name.internal.ssl.client.auth=required\nsasl.enabled.mechanisms=SCRAM-SHA-512\nauthorizer.class.name={}\nsuper.users=User:CN={NODE_CN};User:{}\n",
        dir.join("node.pem").display(),
        dir.join("ca.crt").display(),
        crate::config::STANDARD_AUTHORIZER,
        FAULT_USER.0,
    )
}

/// The clients' user with `--secure`.
const FAULT_USER: (&str, &str) = ("faults", "faults-secret");

/// With `--secure`: the client settings (SASL_SSL, the run's CA) for addresses on
/// [`SECURE_PORT`].
static CLIENT_SECURITY: std::sync::OnceLock<crate::kafka::connect::ClientSecurity> =
    std::sync::OnceLock::new();

/// With `--secure`: the nodes' TLS settings (the node certificate, the run's CA), for the
/// harness's own Raft status queries to the controllers.
static NODE_TLS: std::sync::OnceLock<crate::tls::SslConfig> = std::sync::OnceLock::new();

/// A connection to a node: secured when `addr` is a broker's SASL_SSL listener.
pub(crate) async fn connect(
    addr: &str,
    client_id: &str,
    timeout: Duration,
) -> std::io::Result<KafkaClient> {
    match CLIENT_SECURITY.get() {
        Some(security) if addr.ends_with(&format!(":{SECURE_PORT}")) => {
            KafkaClient::connect_with(addr, client_id, timeout, security).await
        }
        _ => KafkaClient::connect(addr, client_id, timeout).await,
    }
}

/// Makes the run's CA and the nodes' certificate in `dir` (checked by chain, not name: the
/// namespaces' addresses vary), the clients' settings and the harness's own TLS settings.
fn prepare_secure(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = crate::tls::ca::Authority::new("kmeta faults CA")?;
    ca.node(NODE_CN, &["localhost"])?
        .write(dir, "node")
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).map_err(|e| e.to_string())?;
    let node_tls: BTreeMap<String, String> = secure_node_properties(dir)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let node_tls =
        crate::tls::SslConfig::from_properties(&node_tls, "CONTROLLER").map_err(|e| e.0)?;
    let _ = NODE_TLS.set(node_tls);
    let props: BTreeMap<String, String> = [
        ("security.protocol", "SASL_SSL".to_string()),
        (
            "ssl.truststore.location",
            dir.join("ca.crt").display().to_string(),
        ),
        ("ssl.endpoint.identification.algorithm", String::new()),
        ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
        ("sasl.username", FAULT_USER.0.to_string()),
        ("sasl.password", FAULT_USER.1.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let security = crate::kafka::connect::ClientSecurity::from_properties(&props)?;
    let _ = CLIENT_SECURITY.set(security);
    Ok(())
}
const SESSION_TIMEOUT_MS: u64 = 3_000;
/// How long a client waits for an answer before it gives up (and closes the connection).
/// Longer than a broker's forwarding deadline (`FORWARD_TIMEOUT`, 30 s, Kafka's default
/// request.timeout.ms): once a client gives up, its write can no longer land.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);
/// Concurrent clients of the load, each with one request in flight.
const CLIENTS: u32 = 8;
/// Producers of the data-plane load (half of them idempotent).
const PRODUCERS: u32 = 4;
const ELECTION_TIMEOUT_MS: u64 = 500;
/// The load's `retention.ms` values count up from here, far above any default.
const RETENTION_BASE: i64 = 10_000_000_000;

/// Settings of a run of schedules.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// The `kmeta` binary to run as the nodes (this one, or another build to test).
    pub binary: PathBuf,
    /// Seconds of faults under load per schedule.
    pub fault_secs: u64,
    /// Where schedules keep their data (removed afterwards).
    pub dir: PathBuf,
    /// The clients (the workload and the checks) reach the brokers on SASL_SSL listeners
    /// (TLS 1.3, SCRAM-SHA-512); the nodes still talk to each other in plaintext.
    pub secure: bool,
}

/// What one schedule did and found.
#[derive(Clone, Debug, Default)]
pub struct ScheduleReport {
    /// The seed.
    pub seed: u64,
    /// Faults injected, with their time.
    pub faults: Vec<String>,
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Writes with an indeterminate outcome.
    pub indeterminate: u64,
    /// Messages produced with acks=all and acknowledged.
    pub messages: u64,
    /// Produce requests with an indeterminate outcome.
    pub messages_indeterminate: u64,
    /// Violated properties.
    pub violations: Vec<String>,
}

/// Runs schedules `first..first + count`, `jobs` clusters at a time. `Ok(summary)` when all
/// passed.
pub fn run_many(
    first: u64,
    count: u64,
    jobs: u64,
    options: &FaultOptions,
) -> Result<String, String> {
    Netns::remove_stale();
    if options.secure {
        prepare_secure(&options.dir.join("secure"))?;
    }
    let started = Instant::now();
    let options = options.clone();
    let reports = crate::sim::run_seeds(first, count, jobs, move |seed, slot| {
        let r = run_schedule(seed, slot as u8, &options);
        println!(
            "schedule {seed}: {} faults, {} acknowledged, {} indeterminate, {} messages acknowledged: {}",
            r.faults.len(),
            r.acknowledged,
            r.indeterminate,
            r.messages,
            if r.violations.is_empty() {
                "ok"
            } else {
                "VIOLATED"
            }
        );
        if !r.violations.is_empty() {
            crate::sim::print_details(&r.violations, &r.faults);
        }
        r
    });
    let failed: Vec<u64> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| r.seed)
        .collect();
    let count_of = |what: &str| {
        reports
            .iter()
            .flat_map(|r| &r.faults)
            .filter(|f| f.contains(what))
            .count()
    };
    let summary = format!(
        "{} schedules in {:.0} s: {} faults ({} kill -9 of the active controller, {} kill -9 of a partition leader, {} other kill -9, {} pauses ({} of a partition leader), {} partitions, {} full restarts), {} acknowledged writes, {} indeterminate, {} messages acknowledged (acks=all), {} indeterminate; {} schedules violated{}",
        reports.len(),
        started.elapsed().as_secs_f64(),
        reports.iter().map(|r| r.faults.len()).sum::<usize>(),
        count_of("kill -9 active controller"),
        count_of("kill -9 partition leader"),
        count_of("kill -9 ") - count_of("kill -9 active controller") - count_of("kill -9 partition leader"),
        count_of("SIGSTOP"),
        count_of("SIGSTOP partition leader"),
        count_of("partition"),
        count_of("full restart"),
        reports.iter().map(|r| r.acknowledged).sum::<u64>(),
        reports.iter().map(|r| r.indeterminate).sum::<u64>(),
        reports.iter().map(|r| r.messages).sum::<u64>(),
        reports.iter().map(|r| r.messages_indeterminate).sum::<u64>(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(": {failed:?}") }
    );
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// One schedule on a fresh cluster in namespace slot `slot`.
pub fn run_schedule(seed: u64, slot: u8, options: &FaultOptions) -> ScheduleReport {
    let dir = options.dir.join(format!("schedule-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = ScheduleReport {
        seed,
        ..ScheduleReport::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = (|| -> Result<(), String> {
        let secure = options.secure.then(|| options.dir.join("secure"));
        let mut cluster = Cluster::start(slot, &dir, &options.binary, secure.as_deref())?;
        let outcome = runtime.block_on(schedule(seed, &mut cluster, options, &mut report));
        cluster.stop();
        outcome
    })();
    if let Err(e) = result {
        report
            .violations
            .push(format!("the schedule could not run: {e}"));
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    if report.violations.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("  logs kept in {}", dir.display());
    }
    report
}

/// The nodes of one schedule.
struct Cluster {
    net: Netns,
    binary: PathBuf,
    dir: PathBuf,
    configs: BTreeMap<u64, PathBuf>,
    procs: BTreeMap<u64, Child>,
    /// Nodes stopped with SIGSTOP.
    stopped: BTreeSet<u64>,
    isolated: BTreeSet<u64>,
    /// Clients use the brokers' SASL_SSL listeners.
    secure: bool,
}

fn all_nodes() -> Vec<u64> {
    CONTROLLERS.iter().chain(BROKERS.iter()).copied().collect()
}

impl Cluster {
    /// Starts the nodes; with `secure` (the directory of the run's CA and broker
    /// certificate), brokers also serve SASL_SSL and the cluster has the clients' user.
    fn start(
        slot: u8,
        dir: &Path,
        binary: &Path,
        secure: Option<&Path>,
    ) -> Result<Cluster, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let net = Netns::create(slot, &all_nodes())?;
        let voters: Vec<String> = CONTROLLERS
            .iter()
            .map(|c| format!("{c}@{}:{CONTROLLER_PORT}", net.addr(*c)))
            .collect();
        let voters = voters.join(",");
        let mut configs = BTreeMap::new();
        for id in all_nodes() {
            let (role, listener) = if CONTROLLERS.contains(&id) {
                (
                    "controller",
                    format!("CONTROLLER://{}:{CONTROLLER_PORT}", net.addr(id)),
                )
            } else {
                let listeners = match secure {
                    None => format!("PLAINTEXT://{}:{BROKER_PORT}", net.addr(id)),
                    Some(_) => format!(
                        "INTERNAL://{a}:{BROKER_PORT},SASL_SSL://{a}:{SECURE_PORT}",
                        a = net.addr(id)
                    ),
                };
                ("broker", listeners)
            };
            let text = format!(
                "node.id={id}\nprocess.roles={role}\ncontroller.quorum.voters={voters}\nlisteners={listener}\nlog.dirs={}\ncontroller.quorum.election.timeout.ms={ELECTION_TIMEOUT_MS}\nbroker.heartbeat.interval.ms=500\nbroker.session.timeout.ms={SESSION_TIMEOUT_MS}\n{}",
                dir.join(format!("data-{id}")).display(),
                secure.map(secure_node_properties).unwrap_or_default(),
            );
            let path = dir.join(format!("node-{id}.properties"));
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            configs.insert(id, path);
        }
        let cluster_id = crate::random_cluster_id();
        for config in configs.values() {
            let out = Command::new(binary)
                .args(["storage", "format", "--config"])
                .arg(config)
                .args(["--cluster-id", &cluster_id])
                .args(match secure {
                    Some(_) => vec![
                        "--add-scram".to_string(),
                        format!(
                            "SCRAM-SHA-512=[name={},password={}]",
                            FAULT_USER.0, FAULT_USER.1
                        ),
                    ],
                    None => Vec::new(),
                })
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "storage format: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let mut cluster = Cluster {
            net,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            configs,
            procs: BTreeMap::new(),
            stopped: BTreeSet::new(),
            isolated: BTreeSet::new(),
            secure: secure.is_some(),
        };
        for id in all_nodes() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: u64) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.name(id)])
            .arg(&self.binary)
            .args(["server", "--config"])
            .arg(&self.configs[&id])
            .env("KMETA_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        // A node dies with the suite, even if the suite is killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning node {id}: {e}"))?;
        self.procs.insert(id, child);
        Ok(())
    }

    fn signal(&self, id: u64, sig: i32) {
        if let Some(c) = self.procs.get(&id) {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    fn kill(&mut self, id: u64) {
        if self.stopped.remove(&id) {
            self.signal(id, libc::SIGCONT);
        }
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pause(&mut self, id: u64) {
        if self.procs.contains_key(&id) && self.stopped.insert(id) {
            self.signal(id, libc::SIGSTOP);
        }
    }

    fn resume(&mut self, id: u64) {
        if self.stopped.remove(&id) {
            self.signal(id, libc::SIGCONT);
        }
    }

    fn isolate(&mut self, id: u64) -> Result<(), String> {
        if self.isolated.insert(id) {
            self.net.isolate(id)?;
        }
        Ok(())
    }

    fn heal(&mut self) -> Result<(), String> {
        for id in std::mem::take(&mut self.isolated) {
            self.net.heal(id)?;
        }
        for id in std::mem::take(&mut self.stopped) {
            self.signal(id, libc::SIGCONT);
        }
        for id in all_nodes() {
            if !self.procs.contains_key(&id) {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// Nodes whose process has exited on its own.
    fn exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (id, c) in self.procs.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                out.push((*id, status.to_string()));
            }
        }
        out
    }

    fn log_tail(&self, id: u64) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }

    fn full_restart(&mut self) -> Result<(), String> {
        for id in all_nodes() {
            self.kill(id);
        }
        for id in all_nodes() {
            self.spawn(id)?;
        }
        Ok(())
    }

    fn broker_addr(&self, id: u64) -> String {
        let port = if self.secure {
            SECURE_PORT
        } else {
            BROKER_PORT
        };
        format!("{}:{port}", self.net.addr(id))
    }

    fn controller_addr(&self, id: u64) -> String {
        format!("{}:{CONTROLLER_PORT}", self.net.addr(id))
    }

    fn stop(&mut self) {
        for id in all_nodes() {
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What clients were told.
#[derive(Default)]
struct Ledger {
    /// topic -> (acknowledged partitions, most partitions ever asked for)
    topics: BTreeMap<String, (Option<i32>, i32)>,
    /// (group, topic) -> (last acknowledged offset of partition 0, last attempted)
    offsets: BTreeMap<(String, String), (Option<i64>, i64)>,
    /// topic -> (last acknowledged retention.ms, last attempted)
    configs: BTreeMap<String, (Option<i64>, i64)>,
    /// Offsets and configs whose connection failed before an answer came. Such a write may
    /// still be on its way (in a killed broker's forward already read by a paused controller,
    /// say) and land after a later write of the same client was acknowledged, so it may be
    /// what is read at the end even when it is older than the acknowledged value: a write
    /// with no answer can take effect at any point after it was sent (linearizability's rule
    /// for an operation that never completed). Writes answered with an error land in order.
    abandoned_offsets: BTreeMap<(String, String), BTreeSet<i64>>,
    abandoned_configs: BTreeMap<String, BTreeSet<i64>>,
    acknowledged: u64,
    indeterminate: u64,
}

/// Whether `x` may be the value read at the end of one client's rising writes, given the
/// last acknowledged `acked`, the last attempted, and the writes that got no answer: the
/// acknowledged value, a later attempt, or an unanswered earlier one that landed late.
fn landable(x: i64, acked: i64, attempted: i64, abandoned: &BTreeSet<i64>) -> bool {
    (acked..=attempted).contains(&x) || abandoned.contains(&x)
}

/// Notes that the write of `value` to `key` got no answer (its connection failed).
fn abandoned<K: Ord>(
    ledger: &Mutex<Ledger>,
    writes: impl FnOnce(&mut Ledger) -> &mut BTreeMap<K, BTreeSet<i64>>,
    key: K,
    value: i64,
) {
    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    writes(&mut l).entry(key).or_default().insert(value);
}

/// Whether an error code is indeterminate for a write: the write may or may not commit.
fn indeterminate(code: i16) -> bool {
    // NOT_CONTROLLER, REQUEST_TIMED_OUT, UNKNOWN_SERVER_ERROR, COORDINATOR_NOT_AVAILABLE,
    // NOT_COORDINATOR, LEADER_NOT_AVAILABLE.
    matches!(code, 41 | 7 | -1 | 15 | 16 | 5)
}

/// A connection to the coordinator of `group`, found through `via` (offset commits and
/// fetches must go to it).
async fn coordinator_client(via: &mut KafkaClient, group: &str) -> Option<KafkaClient> {
    let (_, addr) = via.find_group_coordinator(group).await.ok()?;
    let mut c = connect(&addr, "kmeta-faults", Duration::from_secs(5))
        .await
        .ok()?;
    c.set_timeout(CLIENT_TIMEOUT);
    Some(c)
}

async fn client_for(addrs: &[String], rng: &Mutex<StdRng>) -> Option<KafkaClient> {
    let i = rng.lock().ok()?.random_range(0..addrs.len());
    let mut c = connect(&addrs[i], "kmeta-faults", Duration::from_secs(5))
        .await
        .ok()?;
    c.set_timeout(CLIENT_TIMEOUT);
    Some(c)
}

/// One client of the load: topics, partition additions, rising offsets and configs.
async fn load(
    id: u32,
    brokers: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let rng = Mutex::new(StdRng::seed_from_u64(seed ^ (id as u64) << 32));
    let group = format!("g{id}");
    let mut created = 0;
    let mut offset = 0i64;
    let mut retention = RETENTION_BASE;
    let mut client: Option<KafkaClient> = None;
    let mut coordinator: Option<KafkaClient> = None;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            client = client_for(&brokers, &rng).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let c = client.as_mut().expect("connected");
        let choice = rng.lock().map(|mut r| r.random_range(0..20)).unwrap_or(0);
        let acked_topics: Vec<(String, i32)> = {
            let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.topics
                .iter()
                .filter(|(n, _)| n.starts_with(&format!("c{id}-")))
                .filter_map(|(n, (a, _))| a.map(|a| (n.clone(), a)))
                .collect()
        };
        let mut acked_topics = acked_topics;
        acked_topics.sort_by_key(|(n, _)| {
            n.rsplit('-')
                .next()
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(0)
        });
        // Ok(Some(code)) a per-item answer; Ok(None) no answer (indeterminate).
        let outcome: Result<(), ()> = if choice < 3 || acked_topics.is_empty() {
            created += 1;
            let name = format!("c{id}-{created}");
            let partitions = 1 + (created % 3);
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .topics
                .insert(name.clone(), (None, partitions));
            let r = CreateTopicsRequest::default()
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(sb(name.clone())))
                    .with_num_partitions(partitions)
                    .with_replication_factor(3)])
                .with_timeout_ms(10_000);
            match c.send(&r, 7).await {
                Ok(resp) => {
                    let code = resp.topics.first().map_or(-1, |t| t.error_code);
                    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                    if code == 0 {
                        l.acknowledged += 1;
                        l.topics.get_mut(&name).expect("recorded").0 = Some(partitions);
                    } else if indeterminate(code) {
                        l.indeterminate += 1;
                    }
                    Ok(())
                }
                Err(_) => Err(()),
            }
        } else {
            // Mostly the newest topics: successive changes to one topic are where a decision
            // made on a write that never landed shows (a partition id skipped).
            let pick = rng
                .lock()
                .map(|mut r| {
                    let n = acked_topics.len();
                    if r.random_bool(0.8) {
                        n - 1 - r.random_range(0..n.min(2))
                    } else {
                        r.random_range(0..n)
                    }
                })
                .unwrap_or(0);
            let (name, acked) = acked_topics[pick].clone();
            match choice {
                3..=9 => {
                    let count = {
                        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                        let t = l.topics.get_mut(&name).expect("recorded");
                        t.1 = t.1.max(acked) + 1;
                        t.1
                    };
                    let r = CreatePartitionsRequest::default()
                        .with_topics(vec![
                            create_partitions_request::CreatePartitionsTopic::default()
                                .with_name(TopicName(sb(name.clone())))
                                .with_count(count),
                        ])
                        .with_timeout_ms(10_000);
                    match c.send(&r, 3).await {
                        Ok(resp) => {
                            let code = resp.results.first().map_or(-1, |t| t.error_code);
                            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                            if code == 0 {
                                l.acknowledged += 1;
                                let t = l.topics.get_mut(&name).expect("recorded");
                                t.0 = Some(t.0.unwrap_or(0).max(count));
                            } else if indeterminate(code) {
                                l.indeterminate += 1;
                            }
                            Ok(())
                        }
                        Err(_) => Err(()),
                    }
                }
                10..=15 => {
                    offset += 1;
                    let key = (group.clone(), name.clone());
                    {
                        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                        l.offsets.entry(key.clone()).or_insert((None, 0)).1 = offset;
                    }
                    let r = OffsetCommitRequest::default()
                        .with_group_id(GroupId(sb(group.clone())))
                        .with_topics(vec![
                            offset_commit_request::OffsetCommitRequestTopic::default()
                                .with_name(TopicName(sb(name.clone())))
                                .with_partitions(vec![
                                    offset_commit_request::OffsetCommitRequestPartition::default()
                                        .with_partition_index(0)
                                        .with_committed_offset(offset),
                                ]),
                        ]);
                    if coordinator.is_none() {
                        coordinator = coordinator_client(c, &group).await;
                    }
                    let sent = match coordinator.as_mut() {
                        Some(coord) => {
                            let sent = coord.send(&r, 8).await.ok();
                            if sent.is_none() {
                                abandoned(
                                    &ledger,
                                    |l| &mut l.abandoned_offsets,
                                    key.clone(),
                                    offset,
                                );
                            }
                            sent
                        }
                        None => None,
                    };
                    match sent {
                        Some(resp) => {
                            let code = resp
                                .topics
                                .first()
                                .and_then(|t| t.partitions.first())
                                .map_or(-1, |p| p.error_code);
                            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                            if code == 0 {
                                l.acknowledged += 1;
                                l.offsets.get_mut(&key).expect("recorded").0 = Some(offset);
                            } else if indeterminate(code) {
                                l.indeterminate += 1;
                            }
                            if code != 0 {
                                // The group may have moved: find its coordinator again.
                                coordinator = None;
                            }
                            Ok(())
                        }
                        None => {
                            coordinator = None;
                            ledger
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .indeterminate += 1;
                            Ok(())
                        }
                    }
                }
                _ => {
                    retention += 1;
                    {
                        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                        l.configs.entry(name.clone()).or_insert((None, 0)).1 = retention;
                    }
                    let cfg = incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(sb("retention.ms"))
                        .with_config_operation(0)
                        .with_value(Some(sb(retention.to_string())));
                    let res = incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(sb(name.clone()))
                        .with_configs(vec![cfg]);
                    let r = IncrementalAlterConfigsRequest::default().with_resources(vec![res]);
                    match c.send(&r, 1).await {
                        Ok(resp) => {
                            let code = resp.responses.first().map_or(-1, |t| t.error_code);
                            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                            if code == 0 {
                                l.acknowledged += 1;
                                l.configs.get_mut(&name).expect("recorded").0 = Some(retention);
                            } else if indeterminate(code) {
                                l.indeterminate += 1;
                            }
                            Ok(())
                        }
                        Err(_) => {
                            abandoned(
                                &ledger,
                                |l| &mut l.abandoned_configs,
                                name.clone(),
                                retention,
                            );
                            Err(())
                        }
                    }
                }
            }
        };
        if outcome.is_err() {
            // The connection failed: indeterminate; try another broker.
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .indeterminate += 1;
            client = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The controller every reachable controller names as leader, if they agree.
async fn active_controller(cluster: &Cluster) -> Option<u64> {
    let mut seen = BTreeSet::new();
    for id in CONTROLLERS {
        if cluster.stopped.contains(&id)
            || cluster.isolated.contains(&id)
            || !cluster.procs.contains_key(&id)
        {
            continue;
        }
        if let Ok(s) = crate::raft::network::query_status(
            &cluster.controller_addr(id),
            Duration::from_millis(500),
            NODE_TLS.get(),
        )
        .await
        {
            if let Some(l) = s.leader {
                seen.insert(l);
            }
        }
    }
    (seen.len() == 1).then(|| *seen.iter().next().expect("one"))
}

/// A fault every schedule must have found nothing to aim at (no active controller, no
/// partition leader) three times running: heals the partitions so that the cluster can elect
/// one. Without this a
/// schedule whose cuts left no quorum kept drawing random faults until a heal came up by
/// chance, and ran for many minutes (86 faults instead of about 12).
fn heal_when_stuck(
    cluster: &mut Cluster,
    kind: &str,
    stuck: &mut u32,
    faults: &mut Vec<String>,
    start: Instant,
) -> Result<(), String> {
    *stuck += 1;
    if *stuck < 3 || cluster.isolated.is_empty() {
        return Ok(());
    }
    *stuck = 0;
    for id in std::mem::take(&mut cluster.isolated) {
        cluster.net.heal(id)?;
    }
    faults.push(format!(
        "{} heal partitions (no target for {kind})",
        elapsed(start)
    ));
    Ok(())
}

fn elapsed(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

async fn schedule(
    seed: u64,
    cluster: &mut Cluster,
    options: &FaultOptions,
    report: &mut ScheduleReport,
) -> Result<(), String> {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let brokers: Vec<String> = BROKERS.iter().map(|b| cluster.broker_addr(*b)).collect();
    // Wait for a working cluster before the faults.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if check(cluster, &Ledger::default()).await.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err("the cluster never came up".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    data::create_topic(&brokers).await?;
    let data_ledger = Arc::new(Mutex::new(data::DataLedger::default()));
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(load(i, brokers.clone(), ledger.clone(), stop.clone(), seed)))
        .collect();
    for i in 0..PRODUCERS {
        clients.push(tokio::spawn(data::producer(
            i,
            i % 2 == 0,
            brokers.clone(),
            data_ledger.clone(),
            stop.clone(),
        )));
    }
    // The faults every schedule has, at random times, plus random ones in between.
    let end = Instant::now() + Duration::from_secs(options.fault_secs);
    let mut must = vec![
        "kill-active",
        "pause-active",
        "partition",
        "kill-leader",
        "pause-leader",
    ];
    let mut restarts: Vec<(Instant, u64)> = Vec::new();
    // Draws in a row of a fault every schedule must have that found no target.
    let mut stuck = 0;
    let mut resumes: Vec<(Instant, u64)> = Vec::new();
    let f =
        |what: String, faults: &mut Vec<String>| faults.push(format!("{} {what}", elapsed(start)));
    while Instant::now() < end || !must.is_empty() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..=3_000))).await;
        let now = Instant::now();
        for (at, id) in std::mem::take(&mut restarts) {
            if at <= now {
                cluster.spawn(id)?;
                f(format!("restart node {id}"), &mut report.faults);
            } else {
                restarts.push((at, id));
            }
        }
        for (at, id) in std::mem::take(&mut resumes) {
            if at <= now {
                cluster.resume(id);
                f(format!("SIGCONT node {id}"), &mut report.faults);
            } else {
                resumes.push((at, id));
            }
        }
        let kind = if !must.is_empty() && rng.random_bool(0.5) {
            let i = rng.random_range(0..must.len());
            must.remove(i)
        } else {
            [
                "kill-active",
                "pause-active",
                "partition",
                "kill",
                "pause",
                "heal",
                "full-restart",
                "kill-leader",
                "pause-leader",
            ][rng.random_range(0..9)]
        };
        let active = active_controller(cluster).await;
        // The broker leading a partition of the data topic.
        let leader = data::leader_of(&brokers, rng.random_range(0..data::PARTITIONS))
            .await
            .map(|b| b as u64);
        if active.is_some() && leader.is_some() {
            stuck = 0;
        }
        let nodes = all_nodes();
        let any = nodes[rng.random_range(0..nodes.len())];
        let for_ms = rng.random_range(500..=5_000);
        match kind {
            "kill-active" | "kill" | "kill-leader" => {
                let (target, label) = match (kind, active, leader) {
                    ("kill-active", Some(a), _) => (a, "active controller "),
                    ("kill-leader", _, Some(l)) => (l, "partition leader "),
                    ("kill-active" | "kill-leader", _, _) => {
                        must.push(kind);
                        heal_when_stuck(cluster, kind, &mut stuck, &mut report.faults, start)?;
                        continue;
                    }
                    _ => (any, "node "),
                };
                if !cluster.procs.contains_key(&target) {
                    if kind != "kill" {
                        must.push(kind);
                    }
                    continue;
                }
                cluster.kill(target);
                restarts.push((now + Duration::from_millis(for_ms), target));
                f(
                    format!("kill -9 {label}{target}, back in {for_ms} ms"),
                    &mut report.faults,
                );
            }
            "pause-active" | "pause" | "pause-leader" => {
                // A pause of the active controller of 1-1.5 s (2-3 election timeouts here), around
                // its leader lease: it may wake up still leader, but with an expired lease.
                let for_ms = if kind == "pause-active" {
                    rng.random_range(1_000..=1_500)
                } else {
                    for_ms
                };
                let target = match (kind, active, leader) {
                    ("pause-active", Some(a), _) => a,
                    ("pause-leader", _, Some(l)) => l,
                    ("pause-active" | "pause-leader", _, _) => {
                        must.push(kind);
                        heal_when_stuck(cluster, kind, &mut stuck, &mut report.faults, start)?;
                        continue;
                    }
                    _ => any,
                };
                if !cluster.procs.contains_key(&target) || cluster.stopped.contains(&target) {
                    if kind != "pause" {
                        must.push(kind);
                    }
                    continue;
                }
                cluster.pause(target);
                resumes.push((now + Duration::from_millis(for_ms), target));
                let label = match kind {
                    "pause-active" => "active controller ",
                    "pause-leader" => "partition leader ",
                    _ => "node ",
                };
                f(
                    format!("SIGSTOP {label}{target} for {for_ms} ms"),
                    &mut report.faults,
                );
            }
            "partition" => {
                cluster.isolate(any)?;
                f(format!("partition: node {any} cut off"), &mut report.faults);
            }
            "heal" => {
                for id in std::mem::take(&mut cluster.isolated) {
                    cluster.net.heal(id)?;
                }
                f("heal partitions".into(), &mut report.faults);
            }
            _ => {
                cluster.full_restart()?;
                restarts.clear();
                resumes.clear();
                f("full restart of every node".into(), &mut report.faults);
            }
        }
    }
    cluster.heal()?;
    f("heal everything".into(), &mut report.faults);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(CLIENT_TIMEOUT + Duration::from_secs(5), c).await;
    }
    settle_and_check(cluster, &ledger, &data_ledger, "after healing", report).await;
    cluster.full_restart()?;
    f(
        "final full restart of every node".into(),
        &mut report.faults,
    );
    settle_and_check(
        cluster,
        &ledger,
        &data_ledger,
        "after a full restart",
        report,
    )
    .await;
    let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    report.acknowledged = l.acknowledged;
    report.indeterminate = l.indeterminate;
    let d = data_ledger.lock().unwrap_or_else(|p| p.into_inner());
    report.messages = d.acknowledged;
    report.messages_indeterminate = d.indeterminate;
    Ok(())
}

async fn settle_and_check(
    cluster: &mut Cluster,
    ledger: &Mutex<Ledger>,
    data_ledger: &Mutex<data::DataLedger>,
    phase: &str,
    report: &mut ScheduleReport,
) {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let snapshot = {
            let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            Ledger {
                topics: l.topics.clone(),
                offsets: l.offsets.clone(),
                configs: l.configs.clone(),
                abandoned_offsets: l.abandoned_offsets.clone(),
                abandoned_configs: l.abandoned_configs.clone(),
                ..Ledger::default()
            }
        };
        last = check(cluster, &snapshot).await;
        if last.is_empty() {
            let brokers: Vec<String> = BROKERS.iter().map(|b| cluster.broker_addr(*b)).collect();
            let dirs: BTreeMap<i32, PathBuf> = BROKERS
                .iter()
                .map(|b| (*b as i32, cluster.dir.join(format!("data-{b}"))))
                .collect();
            let d = data_ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            last = data::check(&brokers, &dirs, &d).await;
            if last.is_empty() {
                break;
            }
        }
    }
    for (id, status) in cluster.exited() {
        last.push(format!(
            "node {id} exited ({status}): {}",
            cluster.log_tail(id)
        ));
    }
    report
        .violations
        .extend(last.into_iter().map(|v| format!("{phase}: {v}")));
}

/// Every property, checked once; the violations.
async fn check(cluster: &mut Cluster, ledger: &Ledger) -> Vec<String> {
    let mut v = Vec::new();
    // Controllers: one leader, the same image at the same offset.
    let mut statuses = BTreeMap::new();
    for id in CONTROLLERS {
        match crate::raft::network::query_status(
            &cluster.controller_addr(id),
            Duration::from_secs(2),
            NODE_TLS.get(),
        )
        .await
        {
            Ok(s) => {
                statuses.insert(id, s);
            }
            Err(e) => v.push(format!("controller {id} does not answer: {e}")),
        }
    }
    let leaders: BTreeSet<Option<u64>> = statuses.values().map(|s| s.leader).collect();
    if leaders.len() != 1 || leaders.contains(&None) {
        v.push(format!("controllers name leaders {leaders:?}, not one"));
    }
    let views: BTreeSet<(Option<u64>, String)> = statuses
        .values()
        .map(|s| (s.last_applied, s.image_hash.clone()))
        .collect();
    if views.len() != 1 {
        v.push(format!("controllers hold different images: {views:?}"));
    }
    // Brokers: each serves every acknowledged write, and all serve the same view.
    let mut broker_views = BTreeMap::new();
    let mut offsets_checked = 0;
    for b in BROKERS {
        match broker_view(&cluster.broker_addr(b), ledger).await {
            Ok((view, problems, checked)) => {
                v.extend(problems.into_iter().map(|p| format!("broker {b}: {p}")));
                broker_views.insert(b, view);
                offsets_checked += checked;
            }
            Err(e) => v.push(format!("broker {b}: {e}")),
        }
    }
    let distinct: BTreeSet<&String> = broker_views.values().collect();
    if distinct.len() > 1 {
        v.push("brokers serve different metadata".to_string());
    }
    if offsets_checked != ledger.offsets.len() {
        v.push(format!(
            "{offsets_checked} of {} committed offsets were read at their group's coordinator",
            ledger.offsets.len()
        ));
    }
    v
}

/// A broker's metadata, canonically printed, every ledger property it breaks, and how many
/// committed offsets it checked (those of the groups it coordinates).
async fn broker_view(addr: &str, ledger: &Ledger) -> Result<(String, Vec<String>, usize), String> {
    let mut c = connect(addr, "kmeta-faults-check", Duration::from_secs(3))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let meta = c
        .send(&MetadataRequest::default().with_topics(None), 12)
        .await
        .map_err(|e| format!("Metadata: {e}"))?;
    let mut problems = Vec::new();
    let live: BTreeSet<i32> = meta.brokers.iter().map(|b| b.node_id.0).collect();
    if live.len() != BROKERS.len() {
        problems.push(format!("live brokers {live:?}"));
    }
    let mut view = String::new();
    let mut topics = BTreeMap::new();
    for t in &meta.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        let mut parts: Vec<(i32, i32, Vec<i32>)> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    p.leader_id.0,
                    p.isr_nodes.iter().map(|b| b.0).collect(),
                )
            })
            .collect();
        parts.sort();
        for (p, leader, isr) in &parts {
            if *leader < 0 {
                problems.push(format!("{name}-{p} has no leader"));
            } else if !live.contains(leader) || !isr.contains(leader) {
                problems.push(format!(
                    "{name}-{p} is led by {leader}, live {live:?}, ISR {isr:?}"
                ));
            }
        }
        view.push_str(&format!("{name}:{parts:?};"));
        topics.insert(name, parts.iter().map(|p| p.0).collect::<Vec<i32>>());
    }
    for (name, (acked, attempted)) in &ledger.topics {
        match topics.get(name) {
            None if acked.is_some() => {
                problems.push(format!("acknowledged topic {name} is missing"))
            }
            None => {}
            Some(ids) => {
                let n = ids.len() as i32;
                if *ids != (0..n).collect::<Vec<_>>() {
                    problems.push(format!("topic {name} has partitions {ids:?}"));
                }
                if acked.is_some_and(|a| n < a) {
                    problems.push(format!(
                        "topic {name} acknowledged at {} partitions has {n}",
                        acked.unwrap_or(0)
                    ));
                }
                if n > *attempted {
                    problems.push(format!(
                        "topic {name} has {n} partitions, more than the {attempted} asked for"
                    ));
                }
            }
        }
    }
    for name in topics.keys() {
        if !ledger.topics.contains_key(name) && name != data::TOPIC {
            problems.push(format!("topic {name} was never asked for"));
        }
    }
    let mut checked = 0;
    let nothing = BTreeSet::new();
    for ((group, topic), (acked, attempted)) in &ledger.offsets {
        let abandoned = ledger
            .abandoned_offsets
            .get(&(group.clone(), topic.clone()))
            .unwrap_or(&nothing);
        // Offsets are read where Kafka serves them: at the group's coordinator. Each broker
        // checks the groups it coordinates (every broker agrees on which, above).
        match c.find_group_coordinator(group).await {
            Err(e) => {
                problems.push(e);
                continue;
            }
            Ok((_, at)) if at != addr => continue,
            Ok(_) => {}
        }
        checked += 1;
        let r = OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(sb(group.clone())))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopics::default()
                        .with_name(TopicName(sb(topic.clone())))
                        .with_partition_indexes(vec![0]),
                ])),
        ]);
        let resp = c
            .send(&r, 8)
            .await
            .map_err(|e| format!("OffsetFetch: {e}"))?;
        let committed = resp
            .groups
            .first()
            .and_then(|g| g.topics.first())
            .and_then(|t| t.partitions.first())
            .map(|p| p.committed_offset)
            .filter(|o| *o >= 0);
        match (committed, acked) {
            (None, Some(a)) => problems.push(format!(
                "offset {group}/{topic}-0 acknowledged at {a} is missing"
            )),
            (Some(o), Some(a)) if !landable(o, *a, *attempted, abandoned) => {
                problems.push(format!(
                    "offset {group}/{topic}-0 is {o}, outside [{a}, {attempted}] \
                     and not among the unanswered {abandoned:?}"
                ))
            }
            (Some(o), None) if o > *attempted => {
                problems.push(format!("offset {group}/{topic}-0 is {o}, never attempted"))
            }
            _ => {}
        }
    }
    for (topic, (acked, attempted)) in &ledger.configs {
        let abandoned = ledger.abandoned_configs.get(topic).unwrap_or(&nothing);
        let res = describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(sb(topic.clone()))
            .with_configuration_keys(Some(vec![sb("retention.ms")]));
        let resp = c
            .send(
                &DescribeConfigsRequest::default().with_resources(vec![res]),
                4,
            )
            .await
            .map_err(|e| format!("DescribeConfigs: {e}"))?;
        let value: Option<i64> = resp
            .results
            .first()
            .and_then(|r| r.configs.iter().find(|c| c.name.as_str() == "retention.ms"))
            .and_then(|c| c.value.as_ref())
            .and_then(|v| v.parse().ok());
        let in_range = |x: i64| match acked {
            Some(a) => landable(x, *a, *attempted, abandoned),
            None => x <= *attempted,
        };
        // The load's values start above RETENTION_BASE; anything else is the default.
        match value {
            Some(x) if x > RETENTION_BASE && !in_range(x) => problems.push(format!(
                "config {topic} retention.ms is {x}, outside [{acked:?}, {attempted}] \
                 and not among the unanswered {abandoned:?}"
            )),
            Some(x) if x > RETENTION_BASE => {}
            _ if acked.is_some() => problems.push(format!(
                "config {topic} retention.ms acknowledged at {acked:?} reads {value:?}"
            )),
            _ => {}
        }
    }
    Ok((view, problems, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_may_show_a_late_unanswered_write_but_never_an_older_answered_one() {
        let abandoned = BTreeSet::from([5]);
        // The acknowledged value and anything attempted after it.
        assert!(landable(7, 7, 9, &abandoned));
        assert!(landable(9, 7, 9, &abandoned));
        // An earlier write with no answer may land after the acknowledged one.
        assert!(landable(5, 7, 9, &abandoned));
        // An earlier write that was answered (or never sent) may not: that is a lost write.
        assert!(!landable(6, 7, 9, &abandoned));
        // Nothing beyond what was attempted.
        assert!(!landable(10, 7, 9, &abandoned));
    }
}
