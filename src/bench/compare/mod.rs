//! `kmeta bench compare`: kmeta against etcd and ZooKeeper on this machine, each as real
//! processes on 127.0.0.1 with fsync on, under the same closed-loop load (issue 14).
//!
//! - **Systems**: kmeta as 3 controllers and 3 brokers started from this binary (the clients
//!   talk to the brokers, as Kafka clients do); etcd as 3 members (Debian's `etcd`); ZooKeeper
//!   as 3 servers (Debian's `zookeeper`, run with `java`). Each at its defaults.
//! - **Load**: W workers, each with one request in flight, sharing C connections (C = min(W,
//!   `connections`)); connection i goes to member i mod 3. Requests on one connection are
//!   pipelined: a worker does not wait for another's answer before sending. A warm-up, then a
//!   measured window: a write counts when its acknowledgment arrives inside the window.
//! - **Workloads**: `update` — each worker overwrites its own key with a 100-byte value: an
//!   OffsetCommit of one partition with 100 bytes of metadata (to the group's coordinator,
//!   found with FindCoordinator), an etcd put, a ZooKeeper setData. `create` — each worker
//!   creates new things: a CreateTopics of one topic (1 partition, RF 3), a ZooKeeper create
//!   (100 bytes), an etcd put of a new key (100 bytes).
//! - **Checks**: after each run every acknowledged write is read back (an update's key holds
//!   the last acknowledged value or a later attempted one; every created thing exists); a
//!   missing one fails the benchmark.
//! - **Server CPU per write**: the user + system CPU time of the system's processes over the
//!   window (`/proc/<pid>/stat`), divided by the writes counted.

mod etcd;
mod kafka;
mod pipe;
mod zookeeper;

use super::percentile;
use super::scale::{self, Nodes, ScaleOptions};
use crate::kafka::wire::sb;
use etcd::Etcd;
use kafka::KafkaPipe;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request;
use kafka_protocol::messages::{
    CreateTopicsRequest, FindCoordinatorRequest, GroupId, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zookeeper::Zk;

/// Bytes of every value written.
const VALUE_BYTES: usize = 100;
/// The bound on any one request (a write not answered by then counts as failed).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A system under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// 3 controllers + 3 brokers; clients talk to the brokers.
    Kmeta,
    /// The same, clients on a SASL_SSL listener (TLS 1.3, SCRAM-SHA-256): what security
    /// costs.
    KmetaSaslSsl,
    /// 3 etcd members.
    Etcd,
    /// 3 ZooKeeper servers.
    ZooKeeper,
}

impl System {
    /// The system's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            System::Kmeta => "kmeta",
            System::KmetaSaslSsl => "kmeta-sasl-ssl",
            System::Etcd => "etcd",
            System::ZooKeeper => "zookeeper",
        }
    }

    /// Parses a name as [`System::name`] spells it.
    pub fn parse(s: &str) -> Result<System, String> {
        [
            System::Kmeta,
            System::KmetaSaslSsl,
            System::Etcd,
            System::ZooKeeper,
        ]
        .into_iter()
        .find(|x| x.name() == s)
        .ok_or_else(|| format!("unknown system {s:?} (kmeta, kmeta-sasl-ssl, etcd, zookeeper)"))
    }

    /// kmeta, secured or not.
    fn is_kmeta(self) -> bool {
        matches!(self, System::Kmeta | System::KmetaSaslSsl)
    }

    fn write_name(self, w: Workload) -> &'static str {
        match (self, w) {
            (System::Kmeta | System::KmetaSaslSsl, Workload::Update) => {
                "OffsetCommit of 1 partition"
            }
            (System::Kmeta | System::KmetaSaslSsl, Workload::Create) => {
                "CreateTopics of 1 topic (1 partition, RF 3)"
            }
            (System::Etcd, Workload::Update) => "put of the worker's key",
            (System::Etcd, Workload::Create) => "put of a new key",
            (System::ZooKeeper, Workload::Update) => "setData of the worker's znode",
            (System::ZooKeeper, Workload::Create) => "create of a new znode",
        }
    }
}

/// What each write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// Each worker overwrites its own key.
    Update,
    /// Each worker creates new things.
    Create,
}

impl Workload {
    /// The workload's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Update => "update",
            Workload::Create => "create",
        }
    }

    /// Parses a name as [`Workload::name`] spells it.
    pub fn parse(s: &str) -> Result<Workload, String> {
        [Workload::Update, Workload::Create]
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (update, create)"))
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The systems, each started, loaded and stopped in turn.
    pub systems: Vec<System>,
    /// The workloads, each run at every worker count.
    pub workloads: Vec<Workload>,
    /// Worker counts, one run per value.
    pub workers: Vec<usize>,
    /// The most connections the workers share.
    pub connections: usize,
    /// Load before the window.
    pub warmup: Duration,
    /// Unmeasured update load on each system right after it starts (zero for none).
    pub start_warmup: Duration,
    /// The window measured.
    pub window: Duration,
    /// Where the servers keep their data (removed at the end unless `keep`).
    pub data_dir: PathBuf,
    /// Keep the data directory and the servers' logs.
    pub keep: bool,
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct Row {
    /// The system.
    pub system: System,
    /// The workload.
    pub workload: Workload,
    /// Workers.
    pub workers: usize,
    /// Connections they shared.
    pub connections: usize,
    /// Writes acknowledged in the window, per second.
    pub writes_per_s: f64,
    /// Latency of those writes, p50 and p99, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The servers' CPU time over the window per write counted, µs.
    pub cpu_us_per_write: Option<f64>,
    /// kmeta only: the controllers' and the brokers' shares of `cpu_us_per_write`.
    pub controllers_brokers_us: Option<(f64, f64)>,
    /// Writes refused or unanswered over the whole run.
    pub failed: u64,
    /// Acknowledged writes read back (all of the run's, warm-up included).
    pub verified: usize,
}

/// The servers of one system.
enum Cluster {
    Kmeta(Nodes),
    Other(Servers),
}

/// etcd members or ZooKeeper servers: killed (and their data removed unless kept) on drop.
struct Servers {
    children: Vec<Child>,
    addrs: Vec<String>,
    dir: PathBuf,
    keep: bool,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    fn addrs(&self) -> Vec<String> {
        match self {
            Cluster::Kmeta(n) => scale::BROKERS.iter().map(|id| n.client_addr(*id)).collect(),
            Cluster::Other(s) => s.addrs.clone(),
        }
    }

    /// CPU ticks of every server process, and for kmeta those of the controllers and of the
    /// brokers apart.
    fn cpu_ticks(&self) -> Option<(u64, Option<(u64, u64)>)> {
        match self {
            Cluster::Kmeta(n) => {
                let sum =
                    |ids: &[u64]| -> Option<u64> { ids.iter().map(|id| n.cpu_ticks(*id)).sum() };
                let (c, b) = (sum(&scale::CONTROLLERS)?, sum(&scale::BROKERS)?);
                Some((c + b, Some((c, b))))
            }
            Cluster::Other(s) => Some((
                s.children
                    .iter()
                    .map(|c| scale::pid_cpu_ticks(c.id()))
                    .sum::<Option<u64>>()?,
                None,
            )),
        }
    }
}

fn spawn(mut command: Command, log: PathBuf) -> Result<Child, String> {
    let log = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    command
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    super::die_with_parent(&mut command);
    command
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", command.get_program()))
}

fn ports(n: usize) -> Result<Vec<u16>, String> {
    (0..n).map(|_| crate::free_ports(1)).collect()
}

fn start_etcd(dir: PathBuf, keep: bool) -> Result<Servers, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let client = ports(3)?;
    let peer = ports(3)?;
    let cluster: Vec<String> = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect();
    let mut servers = Servers {
        children: Vec::new(),
        addrs: client.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        dir: dir.clone(),
        keep,
    };
    for i in 0..3 {
        let mut c = Command::new("etcd");
        c.args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.join(format!("etcd-{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", client[i]),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", client[i]),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", peer[i]),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", peer[i]),
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "kmeta-bench",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]);
        servers
            .children
            .push(spawn(c, dir.join(format!("etcd-{i}.log")))?);
    }
    Ok(servers)
}

/// The classpath of Debian's ZooKeeper (its jar's manifest names the libraries it needs).
const ZOOKEEPER_CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";

fn start_zookeeper(dir: PathBuf, keep: bool) -> Result<Servers, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let client = ports(3)?;
    let quorum = ports(6)?;
    let mut servers = Servers {
        children: Vec::new(),
        addrs: client.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        dir: dir.clone(),
        keep,
    };
    let members: String = (0..3)
        .map(|i| {
            format!(
                "server.{}=127.0.0.1:{}:{}\n",
                i + 1,
                quorum[2 * i],
                quorum[2 * i + 1]
            )
        })
        .collect();
    for (i, port) in client.iter().enumerate() {
        let data = dir.join(format!("zk-{}", i + 1));
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        std::fs::write(data.join("myid"), format!("{}\n", i + 1)).map_err(|e| e.to_string())?;
        let cfg = dir.join(format!("zk-{}.cfg", i + 1));
        std::fs::write(
            &cfg,
            format!(
                "tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nadmin.enableServer=false\n{members}",
                data.display(),
                port
            ),
        )
        .map_err(|e| e.to_string())?;
        let classpath =
            std::env::var("KMETA_ZOOKEEPER_CLASSPATH").unwrap_or(ZOOKEEPER_CLASSPATH.into());
        let mut c = Command::new("java");
        c.args(["-cp", &classpath])
            .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&cfg);
        servers
            .children
            .push(spawn(c, dir.join(format!("zk-{}.log", i + 1)))?);
    }
    Ok(servers)
}

/// One client connection.
#[derive(Clone)]
enum Conn {
    Kafka(Arc<KafkaPipe>),
    Etcd(Etcd),
    Zk(Arc<Zk>),
}

async fn connect(system: System, addr: &str) -> Result<Conn, String> {
    let e = |e: std::io::Error| format!("{} at {addr}: {e}", system.name());
    Ok(match system {
        System::Kmeta => Conn::Kafka(Arc::new(
            KafkaPipe::connect(addr, CALL_TIMEOUT).await.map_err(e)?,
        )),
        System::KmetaSaslSsl => Conn::Kafka(Arc::new(
            KafkaPipe::connect_secure(addr, CALL_TIMEOUT, &scale::bench_client_security()?)
                .await
                .map_err(e)?,
        )),
        System::Etcd => Conn::Etcd(Etcd::connect(addr, CALL_TIMEOUT).await.map_err(e)?),
        System::ZooKeeper => Conn::Zk(Arc::new(Zk::connect(addr, CALL_TIMEOUT).await.map_err(e)?)),
    })
}

/// Waits until a write through every member succeeds (the cluster has a leader and every
/// member serves).
async fn until_serving(system: System, cluster: &Cluster) -> Result<(), String> {
    let start = Instant::now();
    for addr in cluster.addrs() {
        loop {
            let ok = match connect(system, &addr).await {
                Ok(Conn::Etcd(c)) => c.put(b"bench/ready", b"1").await.is_ok(),
                Ok(Conn::Zk(c)) => matches!(
                    c.create("/ready", b"1").await,
                    Ok(0 | zookeeper::NODE_EXISTS)
                ),
                Ok(Conn::Kafka(_)) => true,
                Err(_) => false,
            };
            if ok {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "{} at {addr} did not serve within 60 s",
                    system.name()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if let Cluster::Kmeta(nodes) = cluster {
        scale::until_all(nodes, &scale::BROKERS, Duration::from_secs(60), |s| {
            s.live_brokers == 3
        })
        .await
        .ok_or("the brokers never all registered")?;
    }
    Ok(())
}

fn value(seq: u64) -> String {
    format!("{seq:0>width$}", width = VALUE_BYTES)
}

/// The topic every OffsetCommit names.
const TOPIC: &str = "bench";

/// Where worker `w` writes in the update workload: a key, a znode, or a group (one its
/// connection's broker coordinates: commits go to the coordinator).
async fn update_target(
    system: System,
    conn: &Conn,
    broker: i32,
    run: usize,
    w: usize,
) -> Result<String, String> {
    match conn {
        Conn::Etcd(_) => Ok(format!("bench/u/{run}/{w}")),
        Conn::Zk(z) => {
            let path = format!("/u-{run}-{w}");
            match z.create(&path, value(0).as_bytes()).await {
                Ok(0 | zookeeper::NODE_EXISTS) => Ok(path),
                other => Err(format!("{}: creating {path}: {other:?}", system.name())),
            }
        }
        Conn::Kafka(k) => {
            for n in 0..10_000 {
                let group = format!("bench-{run}-{w}-{n}");
                let r = k
                    .send(
                        &FindCoordinatorRequest::default()
                            .with_key(sb(group.as_str()))
                            .with_key_type(0),
                        3,
                    )
                    .await
                    .map_err(|e| format!("FindCoordinator: {e}"))?;
                if r.error_code == 0 && r.node_id.0 == broker {
                    return Ok(group);
                }
            }
            Err(format!("no group coordinated by broker {broker}"))
        }
    }
}

/// One write; `Ok(true)` when acknowledged as done.
async fn write(conn: &Conn, workload: Workload, target: &str, seq: u64) -> bool {
    let v = value(seq);
    match (conn, workload) {
        (Conn::Etcd(c), Workload::Update) => c.put(target.as_bytes(), v.as_bytes()).await.is_ok(),
        (Conn::Etcd(c), Workload::Create) => c
            .put(format!("{target}/{seq}").as_bytes(), v.as_bytes())
            .await
            .is_ok(),
        (Conn::Zk(c), Workload::Update) => matches!(c.set_data(target, v.as_bytes()).await, Ok(0)),
        (Conn::Zk(c), Workload::Create) => matches!(
            c.create(&format!("{target}-{seq}"), v.as_bytes()).await,
            Ok(0)
        ),
        (Conn::Kafka(k), Workload::Update) => {
            let r = OffsetCommitRequest::default()
                .with_group_id(GroupId(sb(target)))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(sb(TOPIC)))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(seq as i64)
                        .with_committed_metadata(Some(sb(v)))])]);
            k.send(&r, 8).await.is_ok_and(|r| {
                r.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .all(|p| p.error_code == 0)
            })
        }
        (Conn::Kafka(k), Workload::Create) => {
            let r = CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![scale::creatable(format!("{target}-{seq}"), 1)]);
            k.send(&r, 7)
                .await
                .is_ok_and(|r| r.topics.iter().all(|t| t.error_code == 0))
        }
    }
}

/// What one worker did.
#[derive(Default)]
struct Done {
    /// Acknowledged in the window.
    in_window: u64,
    latencies_ms: Vec<f64>,
    failed: u64,
    /// Sequence numbers acknowledged (create: each names a thing that must exist).
    acked: Vec<u64>,
    /// The last sequence number attempted.
    attempted: u64,
}

/// Reads back what a worker was acknowledged; a problem found, if any.
async fn check(
    conn: &Conn,
    workload: Workload,
    target: &str,
    done: &Done,
    topics: &HashSet<String>,
) -> Result<usize, String> {
    let lost = |what: String| Err(format!("acknowledged but not read back: {what}"));
    match workload {
        Workload::Update => {
            let Some(&last) = done.acked.last() else {
                return Ok(0);
            };
            let read: Option<u64> = match conn {
                Conn::Etcd(c) => c
                    .get(target.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()),
                Conn::Zk(c) => c
                    .get_data(target)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok()
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()),
                Conn::Kafka(k) => {
                    let r = OffsetFetchRequest::default().with_groups(vec![
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(GroupId(sb(target)))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopics::default()
                                    .with_name(TopicName(sb(TOPIC)))
                                    .with_partition_indexes(vec![0]),
                            ])),
                    ]);
                    let r = k.send(&r, 8).await.map_err(|e| e.to_string())?;
                    r.groups
                        .first()
                        .and_then(|g| g.topics.first())
                        .and_then(|t| t.partitions.first())
                        .filter(|p| p.committed_offset >= 0)
                        .map(|p| p.committed_offset as u64)
                }
            };
            match read {
                Some(v) if v >= last && v <= done.attempted => Ok(1),
                other => lost(format!(
                    "{target} holds {other:?}, last acknowledged {last}"
                )),
            }
        }
        Workload::Create => {
            for seq in &done.acked {
                let name = format!("{target}-{seq}");
                let there = match conn {
                    Conn::Etcd(c) => c
                        .get(format!("{target}/{seq}").as_bytes())
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some(),
                    Conn::Zk(c) => c.get_data(&name).await.map_err(|e| e.to_string())?.is_ok(),
                    Conn::Kafka(_) => topics.contains(&name),
                };
                if !there {
                    return lost(name);
                }
            }
            Ok(done.acked.len())
        }
    }
}

/// One run: `workers` workers on `system` for the warm-up and the window.
async fn run(
    system: System,
    cluster: &Cluster,
    workload: Workload,
    workers: usize,
    run: usize,
    o: &CompareOptions,
) -> Result<Row, String> {
    let addrs = cluster.addrs();
    let nconn = workers.min(o.connections).max(1);
    let mut conns = Vec::new();
    for i in 0..nconn {
        conns.push(connect(system, &addrs[i % addrs.len()]).await?);
    }
    // Targets, found before the clock starts.
    let mut targets = Vec::new();
    for w in 0..workers {
        let c = w % nconn;
        let broker = scale::BROKERS[c % scale::BROKERS.len()] as i32;
        targets.push(match workload {
            Workload::Update => update_target(system, &conns[c], broker, run, w).await?,
            Workload::Create => match system {
                System::Etcd => format!("bench/c/{run}/{w}"),
                System::ZooKeeper => format!("/c-{run}-{w}"),
                System::Kmeta | System::KmetaSaslSsl => format!("c-{run}-{w}"),
            },
        });
    }
    let start = Instant::now();
    let window_start = start + o.warmup;
    let window_end = window_start + o.window;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (w, target) in targets.iter().enumerate() {
        let conn = conns[w % nconn].clone();
        let target = target.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut d = Done::default();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                d.attempted = seq;
                let t0 = Instant::now();
                let ok = write(&conn, workload, &target, seq).await;
                let t1 = Instant::now();
                if ok {
                    d.acked.push(seq);
                    if t1 >= window_start && t1 < window_end {
                        d.in_window += 1;
                        d.latencies_ms.push((t1 - t0).as_secs_f64() * 1000.0);
                    }
                } else {
                    d.failed += 1;
                }
            }
            d
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let cpu0 = cluster.cpu_ticks();
    tokio::time::sleep_until(window_end.into()).await;
    let cpu1 = cluster.cpu_ticks();
    stop.store(true, Ordering::Relaxed);
    let mut dones = Vec::new();
    for t in tasks {
        dones.push(t.await.map_err(|e| e.to_string())?);
    }
    // Read back.
    // kmeta's topics are read back from each broker that acknowledged them: a broker answers
    // a CreateTopics once its own image holds the topic (read-your-writes), and another
    // broker may be a few milliseconds behind it.
    let mut topics_at: Vec<HashSet<String>> = Vec::new();
    if workload == Workload::Create {
        for conn in conns.iter().take(addrs.len()) {
            if let Conn::Kafka(k) = conn {
                let md = k
                    .send(&MetadataRequest::default().with_topics(None), 12)
                    .await
                    .map_err(|e| format!("Metadata: {e}"))?;
                topics_at.push(
                    md.topics
                        .iter()
                        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                        .collect(),
                );
            }
        }
    }
    let none = HashSet::new();
    let mut verified = 0;
    for (w, d) in dones.iter().enumerate() {
        let c = w % nconn;
        let topics = topics_at.get(c % addrs.len()).unwrap_or(&none);
        verified += check(&conns[c], workload, &targets[w], d, topics).await?;
    }
    let n: u64 = dones.iter().map(|d| d.in_window).sum();
    let mut lat: Vec<f64> = dones
        .iter()
        .flat_map(|d| d.latencies_ms.iter().copied())
        .collect();
    lat.sort_by(f64::total_cmp);
    let hz = scale::clock_ticks_per_second();
    let per_write = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .filter(|_| n > 0)
            .map(|(a, b)| b.saturating_sub(a) as f64 / hz * 1e6 / n as f64)
    };
    Ok(Row {
        system,
        workload,
        workers,
        connections: nconn,
        writes_per_s: n as f64 / o.window.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5).unwrap_or(0.0),
        p99_ms: percentile(&lat, 0.99).unwrap_or(0.0),
        cpu_us_per_write: per_write(cpu0.map(|c| c.0), cpu1.map(|c| c.0)),
        controllers_brokers_us: cpu0.and_then(|c| c.1).zip(cpu1.and_then(|c| c.1)).and_then(
            |((c0, b0), (c1, b1))| {
                Some((
                    per_write(Some(c0), Some(c1))?,
                    per_write(Some(b0), Some(b1))?,
                ))
            },
        ),
        failed: dones.iter().map(|d| d.failed).sum(),
        verified,
    })
}

async fn start(system: System, o: &CompareOptions) -> Result<Cluster, String> {
    let dir = o.data_dir.join(system.name());
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = match system {
        System::Kmeta | System::KmetaSaslSsl => Cluster::Kmeta(Nodes::start(&ScaleOptions {
            partitions: 1,
            data_dir: dir,
            session_timeout_ms: 9_000,
            samples: 0,
            keep: o.keep,
            node_log: "info,openraft=warn".into(),
            secure: system == System::KmetaSaslSsl,
        })?),
        System::Etcd => Cluster::Other(start_etcd(dir, o.keep)?),
        System::ZooKeeper => Cluster::Other(start_zookeeper(dir, o.keep)?),
    };
    until_serving(system, &cluster).await?;
    if system.is_kmeta() {
        let Conn::Kafka(k) = connect(system, &cluster.addrs()[0]).await? else {
            unreachable!("kmeta connections are Kafka connections")
        };
        let r = k
            .send(
                &CreateTopicsRequest::default()
                    .with_topics(vec![scale::creatable(TOPIC.to_string(), 1)]),
                7,
            )
            .await
            .map_err(|e| format!("CreateTopics: {e}"))?;
        if r.topics.iter().any(|t| t.error_code != 0) {
            return Err(format!("creating the topic {TOPIC}: {r:?}"));
        }
        // Let every broker see it before commits name it.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(cluster)
}

/// Runs every system, workload and worker count; the rows in the order run.
pub async fn compare(o: &CompareOptions) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut run_no = 0;
    for &system in &o.systems {
        println!("starting {}", system.name());
        let cluster = start(system, o).await?;
        if !o.start_warmup.is_zero() {
            // Every system gets the same unmeasured load before its first run. Without it
            // ZooKeeper's first run (its JVM still compiling) did 30% fewer writes at 1
            // worker, at 1.7 times the CPU per write, than the same run just after; after
            // 10 s of this it was still 5-10% short, after 30 s within the noise.
            let warm = CompareOptions {
                warmup: o.start_warmup,
                window: Duration::from_secs(1),
                ..o.clone()
            };
            let workers = o.connections.max(1);
            // Its figures are not reported; its writes are still read back.
            run(system, &cluster, Workload::Update, workers, 0, &warm).await?;
            println!(
                "  warmed up: {} {}, {workers} workers for {} s, unmeasured",
                system.name(),
                Workload::Update.name(),
                (warm.warmup + warm.window).as_secs(),
            );
        }
        for &workload in &o.workloads {
            for &w in &o.workers {
                run_no += 1;
                let row = run(system, &cluster, workload, w, run_no, o).await?;
                println!(
                    "  {} {} ({}), {w} workers on {} connections: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {} µs/write{}, {} failed, {} read back",
                    system.name(),
                    workload.name(),
                    system.write_name(workload),
                    row.connections,
                    row.writes_per_s,
                    row.p50_ms,
                    row.p99_ms,
                    row.cpu_us_per_write.map_or("?".into(), |c| format!("{c:.0}")),
                    row.controllers_brokers_us.map_or(String::new(), |(c, b)| format!(
                        " (controllers {c:.0}, brokers {b:.0})"
                    )),
                    row.failed,
                    row.verified,
                );
                rows.push(row);
            }
        }
        drop(cluster);
    }
    if !o.keep {
        let _ = std::fs::remove_dir_all(&o.data_dir);
    }
    Ok(rows)
}

/// The rows as Markdown tables, a workload each, with kmeta's ratio to each other system at
/// the same worker count.
pub fn report(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut by: BTreeMap<(Workload, usize, System), &Row> = BTreeMap::new();
    for r in rows {
        by.insert((r.workload, r.workers, r.system), r);
    }
    let workloads: std::collections::BTreeSet<Workload> = rows.iter().map(|r| r.workload).collect();
    for workload in workloads {
        out.push_str(&format!(
            "\n{} workload\n\n| system (write) | workers | connections | writes/s | p50 ms | p99 ms | server CPU µs/write | kmeta ÷ this | failed | read back |\n|---|---|---|---|---|---|---|---|---|---|\n",
            workload.name()
        ));
        for r in rows.iter().filter(|r| r.workload == workload) {
            let ratio = by
                .get(&(workload, r.workers, System::Kmeta))
                .filter(|_| r.system != System::Kmeta)
                .map_or("—".to_string(), |k| {
                    format!("{:.2}", k.writes_per_s / r.writes_per_s.max(1e-9))
                });
            out.push_str(&format!(
                "| {} ({}) | {} | {} | {:.0} | {:.2} | {:.2} | {} | {ratio} | {} | {} |\n",
                r.system.name(),
                r.system.write_name(workload),
                r.workers,
                r.connections,
                r.writes_per_s,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us_per_write.map_or("?".into(), |c| format!("{c:.0}")),
                r.failed,
                r.verified,
            ));
        }
    }
    out
}

/// One row as a JSON object.
pub fn to_json(r: &Row) -> String {
    serde_json::json!({
        "system": r.system.name(),
        "workload": r.workload.name(),
        "workers": r.workers,
        "connections": r.connections,
        "writes_per_s": (r.writes_per_s * 10.0).round() / 10.0,
        "p50_ms": r.p50_ms,
        "p99_ms": r.p99_ms,
        "cpu_us_per_write": r.cpu_us_per_write,
        "controllers_cpu_us_per_write": r.controllers_brokers_us.map(|c| c.0),
        "brokers_cpu_us_per_write": r.controllers_brokers_us.map(|c| c.1),
        "failed": r.failed,
        "read_back": r.verified,
    })
    .to_string()
}
