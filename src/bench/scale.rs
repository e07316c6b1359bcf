//! `kmeta bench scale --partitions N`: what a cluster costs as it grows (issue 13), on real
//! processes: 3 controllers and 3 brokers started from this binary (`kmeta server`) on
//! 127.0.0.1, each with its own data directory, at default settings except the ones named in
//! [`node_config`].
//!
//! The phases run in order on one cluster, and each prints its figure as soon as it is
//! measured; a phase that does not finish within its bound prints "not reached" and the next
//! one runs anyway. Every wait polls each broker's metrics endpoint (counts the broker reads
//! off its own image: partitions, leaderless, led by each broker, off their preferred
//! replica, under-replicated) until every broker shows the state waited for, then confirms it
//! with an all-topics Metadata request to every broker (the clients' view); the figure is the
//! time the metrics showed it, so it includes the time for every broker to show it, and an
//! all-topics Metadata (about 200 ms of a broker's CPU at 1,000,000 partitions) is not
//! asked over and over while the brokers work. Processes are killed and the data directory
//! removed at the end, whatever happens.

use super::percentile;
use crate::kafka::client::KafkaClient;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Partitions per topic (the shape: topics of 1,000 partitions).
pub const PARTITIONS_PER_TOPIC: usize = 1_000;
/// Topics per CreateTopics request.
pub const TOPICS_PER_REQUEST: usize = 9;
pub(super) const BROKERS: [u64; 3] = [1, 2, 3];
pub(super) const CONTROLLERS: [u64; 3] = [101, 102, 103];

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Partitions to create (RF 3).
    pub partitions: usize,
    /// Where the nodes keep their data (removed at the end).
    pub data_dir: PathBuf,
    /// `broker.session.timeout.ms` of the brokers and controllers.
    pub session_timeout_ms: u64,
    /// Changes timed for propagation.
    pub samples: usize,
    /// Keep the data directory (with each node's log) instead of removing it.
    pub keep: bool,
    /// The nodes' log filter (`KMETA_LOG`).
    pub node_log: String,
    /// Brokers also serve clients on a SASL_SSL listener (TLS 1.3, SCRAM-SHA-256, a CA made
    /// for the run), which [`Nodes::client_addr`] names; the nodes talk to each other over
    /// mutual TLS, and the StandardAuthorizer is on.
    pub secure: bool,
}

/// The benchmark's user on a secured cluster.
const BENCH_USER: (&str, &str) = ("bench", "bench-secret");

/// The client settings for the secured cluster started last (`ScaleOptions::secure`).
static BENCH_SECURITY: std::sync::Mutex<Option<crate::kafka::connect::ClientSecurity>> =
    std::sync::Mutex::new(None);

/// The client settings of the secured cluster started last.
pub fn bench_client_security() -> Result<crate::kafka::connect::ClientSecurity, String> {
    BENCH_SECURITY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| "no secured cluster was started".to_string())
}

/// One figure: its name and its value (`None`: not reached within its bound).
pub type Figure = (&'static str, Option<f64>);

/// The figures, in the order measured (times in ms, memory in MiB, sizes in bytes).
#[derive(Debug, Default)]
pub struct ScaleReport {
    /// Every figure.
    pub figures: Vec<Figure>,
}

impl ScaleReport {
    fn record(&mut self, name: &'static str, value: Option<f64>) {
        match value {
            Some(v) => println!("  {name}: {v:.1}"),
            None => println!("  {name}: not reached"),
        }
        // When, by the wall clock: the nodes' logs say what each was doing until then.
        println!("    recorded at {} UTC", time_of_day());
        self.figures.push((name, value));
    }

    /// The figures as one JSON object, for plotting.
    pub fn to_json(&self, partitions: usize) -> String {
        let mut map = serde_json::Map::new();
        map.insert("partitions".into(), partitions.into());
        for (name, v) in &self.figures {
            map.insert(
                (*name).into(),
                v.map_or(serde_json::Value::Null, |v| {
                    serde_json::Number::from_f64((v * 10.0).round() / 10.0)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number)
                }),
            );
        }
        serde_json::Value::Object(map).to_string()
    }
}

/// The six processes.
pub(super) struct Nodes {
    dir: PathBuf,
    binary: PathBuf,
    cluster_id: String,
    ports: BTreeMap<u64, u16>,
    children: BTreeMap<u64, Child>,
    /// Each broker's `metrics.listener` port.
    metrics_ports: BTreeMap<u64, u16>,
    session_timeout_ms: u64,
    keep: bool,
    partitions: usize,
    node_log: String,
    /// The highest resident memory (`VmHWM`) each node reached, over all its processes so
    /// far: read before each kill and at the end.
    peak_rss_mib: BTreeMap<u64, f64>,
    /// Each broker's SASL_SSL port, on a secured cluster.
    secure_ports: BTreeMap<u64, u16>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The unit of `/proc/<pid>/stat`'s CPU times.
pub(super) fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU time process `pid` has used (user + system), in clock ticks.
pub(super) fn pid_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

impl Nodes {
    fn config_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.properties"))
    }

    fn data_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    /// The properties of node `id`: defaults, plus a snapshot after every `20 × N` bytes of
    /// records (at least 1 MiB: about one or two during the creation, at every N) and the
    /// session timeout asked for.
    fn node_config(&self, id: u64) -> String {
        let voters: Vec<String> = CONTROLLERS
            .iter()
            .map(|c| format!("{c}@127.0.0.1:{}", self.ports[c]))
            .collect();
        let secured = !self.secure_ports.is_empty();
        let (role, listener) = if CONTROLLERS.contains(&id) {
            ("controller", "CONTROLLER")
        } else if secured {
            ("broker", "INTERNAL")
        } else {
            ("broker", "PLAINTEXT")
        };
        let metrics = match self.metrics_ports.get(&id) {
            Some(port) => format!("metrics.listener=http://127.0.0.1:{port}\n"),
            None => String::new(),
        };
        let mut secure = match self.secure_ports.get(&id) {
            Some(port) => format!(
                ",SASL_SSL://127.0.0.1:{port}\ninter.broker.listener.name=INTERNAL\nsasl.enabled.mechanisms=SCRAM-SHA-256"
            ),
            None => String::new(),
        };
        // A secured cluster is secured throughout: mutual TLS between the nodes with a node
        // certificate, and the StandardAuthorizer (the nodes and the bench's user are its
        // super users), so every request pays for its authorization too.
        if secured {
            secure.push_str(&format!(
                "\nlistener.security.protocol.map=CONTROLLER:SSL,INTERNAL:SSL,SASL_SSL:SASL_SSL\nssl.keystore.location={}\nssl.truststore.location={}\nlistener.name.controller.ssl.client.auth=required\nlistener.name.internal.ssl.client.auth=required\nauthorizer.class.name={}\nsuper.users=User:CN=kmeta-node;User:{}",
                self.dir.join("node.pem").display(),
                self.dir.join("ca.crt").display(),
                crate::config::STANDARD_AUTHORIZER,
                BENCH_USER.0,
            ));
        }
        format!(
            "node.id={id}\nprocess.roles={role}\ncontroller.quorum.voters={}\nlisteners={listener}://127.0.0.1:{}{secure}\nlog.dirs={}\nbroker.session.timeout.ms={}\nmetadata.log.max.record.bytes.between.snapshots={}\n{metrics}",
            voters.join(","),
            self.ports[&id],
            self.data_path(id).display(),
            self.session_timeout_ms,
            (self.partitions * 20).max(1 << 20),
        )
    }

    fn format(&self, id: u64) -> Result<(), String> {
        std::fs::write(self.config_path(id), self.node_config(id))
            .map_err(|e| format!("writing the config of node {id}: {e}"))?;
        let out = Command::new(&self.binary)
            .args(["storage", "format", "--config"])
            .arg(self.config_path(id))
            .args(["--cluster-id", &self.cluster_id])
            .args(if self.secure_ports.is_empty() {
                Vec::new()
            } else {
                vec![
                    "--add-scram".to_string(),
                    format!(
                        "SCRAM-SHA-256=[name={},password={}]",
                        BENCH_USER.0, BENCH_USER.1
                    ),
                ]
            })
            .output()
            .map_err(|e| format!("kmeta storage format: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "formatting node {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    pub(super) fn start(o: &ScaleOptions) -> Result<Nodes, String> {
        let _ = std::fs::remove_dir_all(&o.data_dir);
        std::fs::create_dir_all(&o.data_dir)
            .map_err(|e| format!("creating {}: {e}", o.data_dir.display()))?;
        let mut ports = BTreeMap::new();
        for id in CONTROLLERS.iter().chain(&BROKERS) {
            ports.insert(*id, crate::free_ports(1)?);
        }
        let mut metrics_ports = BTreeMap::new();
        for id in BROKERS {
            metrics_ports.insert(id, crate::free_ports(1)?);
        }
        let mut secure_ports = BTreeMap::new();
        if o.secure {
            for id in BROKERS {
                secure_ports.insert(id, crate::free_ports(1)?);
            }
            let ca = crate::tls::ca::Authority::new("kmeta bench CA")?;
            ca.node("kmeta-node", &["127.0.0.1", "localhost"])?
                .write(&o.data_dir, "node")
                .map_err(|e| format!("writing the bench certificates: {e}"))?;
            let ca_path = o.data_dir.join("ca.crt");
            std::fs::write(&ca_path, ca.cert_pem()).map_err(|e| e.to_string())?;
            let props: std::collections::BTreeMap<String, String> = [
                ("security.protocol", "SASL_SSL".to_string()),
                ("ssl.truststore.location", ca_path.display().to_string()),
                ("sasl.mechanism", "SCRAM-SHA-256".to_string()),
                ("sasl.username", BENCH_USER.0.to_string()),
                ("sasl.password", BENCH_USER.1.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            *BENCH_SECURITY.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                crate::kafka::connect::ClientSecurity::from_properties(&props)?,
            );
        }
        let mut nodes = Nodes {
            dir: o.data_dir.clone(),
            binary: std::env::current_exe().map_err(|e| format!("this binary: {e}"))?,
            cluster_id: crate::random_cluster_id(),
            ports,
            children: BTreeMap::new(),
            metrics_ports,
            session_timeout_ms: o.session_timeout_ms,
            keep: o.keep,
            partitions: o.partitions,
            node_log: o.node_log.clone(),
            peak_rss_mib: BTreeMap::new(),
            secure_ports,
        };
        for id in CONTROLLERS.iter().chain(&BROKERS) {
            nodes.format(*id)?;
            nodes.spawn(*id)?;
        }
        Ok(nodes)
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    pub(super) fn spawn(&mut self, id: u64) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_err(|e| format!("log of node {id}: {e}"))?;
        // `KMETA_BENCH_WRAP=ID:PROGRAM ARGS...` starts node ID under a profiler, e.g.
        // `KMETA_BENCH_WRAP='1:heaptrack -o /tmp/broker-1'`. The bench's kills then reach the
        // profiler, which may not pass them on: wrap a node the phases measured do not kill
        // (broker 1 lives until the full restart), and stop the run before that.
        let wrap = std::env::var("KMETA_BENCH_WRAP").ok().and_then(|w| {
            let (node, program) = w.split_once(':')?;
            (node.trim().parse::<u64>().ok()? == id).then(|| program.to_string())
        });
        let mut words = wrap.as_deref().unwrap_or_default().split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("server")
            .arg("--config")
            .arg(self.config_path(id))
            .env("KMETA_LOG", &self.node_log)
            .stdout(Stdio::null())
            .stderr(log);
        super::die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("starting node {id}: {e}"))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Notes node `id`'s peak resident memory so far (its process's `VmHWM`).
    fn note_peak(&mut self, id: u64) {
        if let Some(mib) = self.status_mib(id, "VmHWM:") {
            let peak = self.peak_rss_mib.entry(id).or_insert(0.0);
            *peak = peak.max(mib);
        }
    }

    /// The highest peak of any of `ids` (after noting each one's current process).
    fn peak_of(&mut self, ids: &[u64]) -> Option<f64> {
        for id in ids {
            self.note_peak(*id);
        }
        ids.iter()
            .filter_map(|id| self.peak_rss_mib.get(id).copied())
            .reduce(f64::max)
    }

    pub(super) fn kill(&mut self, id: u64) {
        self.note_peak(id);
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to `id`; the time until it exited, if it did within `within`.
    async fn terminate(&mut self, id: u64, within: Duration) -> Option<Duration> {
        self.note_peak(id);
        let mut child = self.children.remove(&id)?;
        let start = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        while start.elapsed() < within {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// CPU time node `id` has used (user + system), in clock ticks.
    pub(super) fn cpu_ticks(&self, id: u64) -> Option<u64> {
        pid_cpu_ticks(self.children.get(&id)?.id())
    }

    /// Each node's process id and CPU ticks, to print what a phase cost each one.
    fn cpu_snapshot(&self) -> BTreeMap<u64, (u32, u64)> {
        self.children
            .iter()
            .filter_map(|(id, c)| Some((*id, (c.id(), self.cpu_ticks(*id)?))))
            .collect()
    }

    /// Prints the CPU seconds each node used since `before` (a node started since counts
    /// from its start).
    fn print_cpu(&self, phase: &str, before: &BTreeMap<u64, (u32, u64)>) {
        let hz = clock_ticks_per_second();
        let parts: Vec<String> = self
            .cpu_snapshot()
            .into_iter()
            .map(|(id, (pid, ticks))| {
                let from = before
                    .get(&id)
                    .filter(|(p, _)| *p == pid)
                    .map_or(0, |(_, t)| *t);
                format!("{id}={:.1}", ticks.saturating_sub(from) as f64 / hz)
            })
            .collect();
        println!("    cpu s during {phase}: {}", parts.join(" "));
        self.print_peaks(phase);
    }

    /// Prints each process's peak resident memory so far (VmHWM, since its start), so a run
    /// shows which phase raised a node's peak.
    fn print_peaks(&self, phase: &str) {
        let peaks: Vec<String> = self
            .children
            .keys()
            .filter_map(|id| Some(format!("{id}={:.0}", self.status_mib(*id, "VmHWM:")?)))
            .collect();
        println!("    peak MiB after {phase}: {}", peaks.join(" "));
    }

    fn rss_mib(&self, id: u64) -> Option<f64> {
        self.status_mib(id, "VmRSS:")
    }

    /// A memory figure of node `id`'s `/proc/<pid>/status`, in MiB.
    fn status_mib(&self, id: u64, field: &str) -> Option<f64> {
        let pid = self.children.get(&id)?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    fn metrics_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.metrics_ports[&id])
    }

    pub(super) fn addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[&id])
    }

    /// Where clients reach broker `id`: its SASL_SSL listener on a secured cluster, else
    /// [`Nodes::addr`].
    pub(super) fn client_addr(&self, id: u64) -> String {
        match self.secure_ports.get(&id) {
            Some(port) => format!("127.0.0.1:{port}"),
            None => self.addr(id),
        }
    }

    /// When a controller logged that `broker`'s session expired (wall-clock ms), newest.
    fn fenced_at_ms(&self, broker: u64) -> Option<i64> {
        CONTROLLERS
            .iter()
            .flat_map(|id| {
                std::fs::read_to_string(self.log_path(*id))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.contains("broker session expired")
                            && l.contains(&format!("broker={broker} "))
                    })
                    .filter_map(|l| {
                        let at = l.find("wall_ms=")? + "wall_ms=".len();
                        l[at..].split_whitespace().next()?.parse::<i64>().ok()
                    })
                    .collect::<Vec<_>>()
            })
            .max()
    }

    /// The newest "snapshot written" line of any controller: `(bytes, ms)`.
    fn last_snapshot(&self) -> Option<(f64, f64)> {
        let mut best: Option<(String, f64, f64)> = None;
        for id in CONTROLLERS {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("snapshot written")) {
                let field = |key: &str| -> Option<f64> {
                    let at = line.find(&format!("{key}="))? + key.len() + 1;
                    line[at..].split_whitespace().next()?.parse().ok()
                };
                let stamp = line.split_whitespace().next().unwrap_or("").to_string();
                if let (Some(bytes), Some(ms)) = (field("bytes"), field("ms")) {
                    if best.as_ref().is_none_or(|(s, _, _)| *s < stamp) {
                        best = Some((stamp, bytes, ms));
                    }
                }
            }
        }
        best.map(|(_, b, ms)| (b, ms))
    }
}

/// What one broker shows of the whole cluster (all-topics Metadata).
#[derive(Debug, Default, Clone)]
pub(super) struct Survey {
    partitions: usize,
    leaderless: usize,
    /// Partitions whose leader is not their first replica.
    imbalanced: usize,
    /// Partitions with fewer in-sync replicas than replicas.
    under_replicated: usize,
    led_by: BTreeMap<i32, usize>,
    pub(super) live_brokers: usize,
}

impl Survey {
    /// All three brokers live, every partition led by its preferred replica, every ISR whole.
    fn balanced(&self) -> bool {
        self.live_brokers == 3 && self.imbalanced == 0 && self.under_replicated == 0
    }
}

fn survey_of(md: &MetadataResponse) -> Survey {
    let mut s = Survey {
        live_brokers: md.brokers.len(),
        ..Survey::default()
    };
    for p in md.topics.iter().flat_map(|t| t.partitions.iter()) {
        s.partitions += 1;
        if p.leader_id.0 < 0 {
            s.leaderless += 1;
        } else {
            *s.led_by.entry(p.leader_id.0).or_default() += 1;
        }
        if p.replica_nodes.first() != Some(&p.leader_id) {
            s.imbalanced += 1;
        }
        if p.isr_nodes.len() < p.replica_nodes.len() {
            s.under_replicated += 1;
        }
    }
    s
}

async fn connect(addr: &str) -> Option<KafkaClient> {
    KafkaClient::connect(addr, "kmeta-bench-scale", Duration::from_secs(120))
        .await
        .ok()
}

async fn survey(addr: &str) -> Option<Survey> {
    let mut k = connect(addr).await?;
    let md = k
        .send(&MetadataRequest::default().with_topics(None), 12)
        .await
        .ok()?;
    Some(survey_of(&md))
}

/// [`survey`] of broker `id` where its clients reach it (on a secured cluster, its SASL_SSL
/// listener, logged in as the bench's user).
async fn survey_as_client(nodes: &Nodes, id: u64) -> Option<Survey> {
    if !nodes.secure_ports.contains_key(&id) {
        return survey(&nodes.addr(id)).await;
    }
    let security = bench_client_security().ok()?;
    let mut k = KafkaClient::connect_with(
        &nodes.client_addr(id),
        "kmeta-bench-scale",
        Duration::from_secs(120),
        &security,
    )
    .await
    .ok()?;
    let md = k
        .send(&MetadataRequest::default().with_topics(None), 12)
        .await
        .ok()?;
    Some(survey_of(&md))
}

/// A broker's survey from its metrics endpoint: the same counts, read off the same image,
/// at a fraction of an all-topics Metadata's cost.
async fn survey_metrics(addr: &str) -> Option<Survey> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .ok()??;
    survey_of_metrics(&body)
}

/// Reads a [`Survey`] from Prometheus text; `None` when a count is missing.
fn survey_of_metrics(text: &str) -> Option<Survey> {
    let mut s = Survey::default();
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value as usize;
        match name {
            "kmeta_GlobalPartitionCount" => s.partitions = value,
            "kmeta_OfflinePartitionsCount" => s.leaderless = value,
            "kmeta_PreferredReplicaImbalanceCount" => s.imbalanced = value,
            "kmeta_GlobalUnderReplicatedPartitionCount" => s.under_replicated = value,
            "kmeta_ActiveBrokerCount" => s.live_brokers = value,
            _ => {
                if let Some(broker) = name
                    .strip_prefix("kmeta_PartitionLeaderCount{broker=\"")
                    .and_then(|rest| rest.strip_suffix("\"}"))
                    .and_then(|b| b.parse::<i32>().ok())
                {
                    if value > 0 {
                        s.led_by.insert(broker, value);
                    }
                }
                continue;
            }
        }
        seen += 1;
    }
    (seen == 5).then_some(s)
}

/// Polls every broker in `on` until `done` holds for each one's survey, at most `within`;
/// the time it took. The polls read the brokers' metrics; once every one shows `done`, an
/// all-topics Metadata to each confirms it (else polling goes on), and the time the metrics
/// showed it is returned. Between rounds it waits as long as the round took (at least
/// 20 ms), so the benchmark never takes more than about half a core from what it measures.
pub(super) async fn until_all(
    nodes: &Nodes,
    on: &[u64],
    within: Duration,
    done: impl Fn(&Survey) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        let mut all = true;
        for id in on {
            if !survey_metrics(&nodes.metrics_addr(*id))
                .await
                .is_some_and(|s| done(&s))
            {
                all = false;
                break;
            }
        }
        if all {
            let seen = start.elapsed();
            let mut confirmed = true;
            for id in on {
                if !survey_as_client(nodes, *id).await.is_some_and(|s| done(&s)) {
                    confirmed = false;
                    break;
                }
            }
            if confirmed {
                return Some(seen);
            }
        }
        // A fixed short pause: the metrics endpoint costs a broker next to nothing, and a
        // pause as long as the last round (which a busy broker stretches) made the figures as
        // coarse as the rounds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// A topic of `partitions` partitions, RF 3.
pub(super) fn creatable(name: String, partitions: usize) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name)))
        .with_num_partitions(partitions as i32)
        .with_replication_factor(3)
}

/// Creates `topics` through the broker at `addr`; any refusal is an error.
pub(super) async fn create(addr: &str, topics: Vec<CreatableTopic>) -> Result<(), String> {
    let mut k = connect(addr)
        .await
        .ok_or_else(|| format!("cannot connect to {addr}"))?;
    // NOT_CONTROLLER (a controller election under way) is retried, as admin clients do;
    // a topic created by an attempt that was answered late is not an error on the next.
    let mut topics = topics;
    for attempt in 0.. {
        let r = k
            .send(
                &CreateTopicsRequest::default().with_topics(topics.clone()),
                7,
            )
            .await
            .map_err(|e| format!("CreateTopics: {e}"))?;
        let mut retry = Vec::new();
        for t in &r.topics {
            match t.error_code {
                0 => {}
                36 if attempt > 0 => {} // TOPIC_ALREADY_EXISTS: an earlier attempt's.
                41 if attempt < 250 => {
                    if let Some(c) = topics.iter().find(|c| c.name == t.name) {
                        retry.push(c.clone());
                    }
                }
                code => {
                    return Err(format!(
                        "CreateTopics of {}: error {code} {:?}",
                        t.name.0, t.error_message
                    ))
                }
            }
        }
        if retry.is_empty() {
            break;
        }
        topics = retry;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs every phase and returns the figures.
pub async fn scale(o: &ScaleOptions) -> Result<ScaleReport, String> {
    let n = o.partitions.max(1);
    let mut nodes = Nodes::start(o)?;
    let mut report = ScaleReport::default();
    // Bounds that grow with N (the slow figures are what is measured; these only stop a run
    // that is stuck).
    let bound = Duration::from_secs(60 + (n / 5_000) as u64);
    let session = Duration::from_millis(o.session_timeout_ms);
    let b1 = nodes.addr(1);
    until_all(&nodes, &BROKERS, Duration::from_secs(60), |s| {
        s.live_brokers == 3
    })
    .await
    .ok_or("the brokers never all registered")?;

    // Create.
    println!("creating {n} partitions (RF 3, topics of {PARTITIONS_PER_TOPIC}, {TOPICS_PER_REQUEST} topics per CreateTopics)");
    let mut topics = Vec::new();
    let mut left = n;
    while left > 0 {
        let p = left.min(PARTITIONS_PER_TOPIC);
        topics.push(creatable(format!("scale-{}", topics.len()), p));
        left -= p;
    }
    let start = Instant::now();
    for chunk in topics.chunks(TOPICS_PER_REQUEST) {
        create(&b1, chunk.to_vec()).await?;
    }
    report.record("create_ms", ms(Some(start.elapsed())));
    let visible = until_all(&nodes, &BROKERS, bound, |s| s.partitions == n).await;
    report.record(
        "create_visible_on_every_broker_ms",
        ms(visible.map(|_| start.elapsed())),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Idle CPU: the six processes with nothing asked of them, over 5 s.
    let all: Vec<u64> = CONTROLLERS.iter().chain(&BROKERS).copied().collect();
    let ticks = |nodes: &Nodes| -> Option<u64> { all.iter().map(|id| nodes.cpu_ticks(*id)).sum() };
    let before = ticks(&nodes);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hz = clock_ticks_per_second();
    report.record(
        "idle_cpu_percent_of_a_core",
        before
            .zip(ticks(&nodes))
            .map(|(a, b)| (b - a) as f64 / hz / 5.0 * 100.0),
    );

    // Memory.
    let rss = |nodes: &Nodes, ids: &[u64]| {
        ids.iter()
            .filter_map(|id| nodes.rss_mib(*id))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    report.record("controller_rss_max_mib", rss(&nodes, &CONTROLLERS));
    report.record("broker_rss_max_mib", rss(&nodes, &BROKERS));
    nodes.print_peaks("create");
    let snapshot = nodes.last_snapshot();
    report.record("snapshot_bytes", snapshot.map(|s| s.0));
    report.record("snapshot_write_ms", snapshot.map(|s| s.1));

    // All-topics Metadata on one broker.
    let mut times = Vec::new();
    if let Some(mut k) = connect(&b1).await {
        for _ in 0..5 {
            let t = Instant::now();
            if k.send(&MetadataRequest::default().with_topics(None), 12)
                .await
                .is_ok()
            {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    report.record("all_topics_metadata_ms_p50", percentile(&times, 0.5));

    // One change's propagation: a 1-partition topic created through broker 1, until every
    // broker shows it.
    let mut times = Vec::new();
    let mut clients = Vec::new();
    for id in BROKERS {
        if let Some(k) = connect(&nodes.addr(id)).await {
            clients.push(k);
        }
    }
    for i in 0..o.samples {
        let name = format!("probe-{i}");
        let t = Instant::now();
        if create(&b1, vec![creatable(name.clone(), 1)]).await.is_err() {
            continue;
        }
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name))))]));
        let mut seen = 0;
        'poll: while t.elapsed() < Duration::from_secs(10) {
            seen = 0;
            for k in clients.iter_mut() {
                match k.send(&request, 12).await {
                    Ok(md) if md.topics.iter().all(|t| t.error_code == 0) => seen += 1,
                    _ => continue 'poll,
                }
            }
            break;
        }
        if seen == clients.len() {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(clients);
    let total = n + o.samples;
    times.sort_by(f64::total_cmp);
    report.record("propagation_ms_p50", percentile(&times, 0.5));
    report.record("propagation_ms_p99", percentile(&times, 0.99));
    report.record("propagation_ms_max", times.last().copied());

    let balanced = |s: &Survey| s.partitions == total && s.balanced();
    until_all(&nodes, &BROKERS, bound, balanced).await;

    // Controlled shutdown of broker 2 (it leads about a third).
    let cpu_before = nodes.cpu_snapshot();
    let exit = nodes.terminate(2, bound).await;
    report.record("controlled_shutdown_exit_ms", ms(exit));
    let re_led = until_all(&nodes, &[1, 3], bound, |s| {
        s.leaderless == 0 && !s.led_by.contains_key(&2)
    })
    .await;
    report.record("controlled_shutdown_all_re_led_after_exit_ms", ms(re_led));
    nodes.print_cpu("controlled shutdown", &cpu_before);
    let cpu_before = nodes.cpu_snapshot();
    nodes.spawn(2)?;
    let start = Instant::now();
    let back = until_all(&nodes, &BROKERS, bound, |s| {
        s.live_brokers == 3 && s.under_replicated == 0
    })
    .await;
    report.record("restarted_broker_in_every_isr_ms", ms(back));
    let bal = until_all(&nodes, &BROKERS, bound, balanced).await;
    report.record(
        "restarted_broker_balanced_ms",
        ms(bal.map(|_| start.elapsed())),
    );
    nodes.print_cpu("restarted broker", &cpu_before);

    // kill -9 of broker 3.
    let cpu_before = nodes.cpu_snapshot();
    nodes.kill(3);
    let polled_from = crate::controller::wall_ms();
    let re_led = until_all(&nodes, &[1, 2], bound + session, |s| {
        s.leaderless == 0 && !s.led_by.contains_key(&3)
    })
    .await;
    // From the moment the active controller saw the session expire (its log's wall clock) to
    // the poll that saw every broker re-led (not the end of the Metadata requests that then
    // confirm it, which take long on brokers still busy with the ISR removals).
    let re_led_at = re_led.map(|seen| polled_from + seen.as_millis() as i64);
    report.record(
        "kill_9_all_re_led_after_session_expiry_ms",
        re_led_at
            .zip(nodes.fenced_at_ms(3))
            .map(|(at, fenced)| (at - fenced) as f64),
    );
    nodes.print_cpu("kill -9", &cpu_before);
    // It comes back wiped: an empty log directory, formatted again.
    let _ = std::fs::remove_dir_all(nodes.data_path(3));
    nodes.format(3)?;
    let start_wiped = Instant::now();
    nodes.spawn(3)?;
    let caught_up = until_all(&nodes, &[3], bound, |s| {
        s.live_brokers == 3 && s.partitions == total
    })
    .await;
    report.record("wiped_broker_caught_up_ms", ms(caught_up));
    let bal = until_all(&nodes, &BROKERS, bound, balanced).await;
    report.record(
        "wiped_broker_balanced_ms",
        ms(bal.map(|_| start_wiped.elapsed())),
    );
    nodes.print_peaks("wiped broker");

    // Controller restart: kill -9 of all three, started again; until a write is acknowledged.
    for id in CONTROLLERS {
        nodes.kill(id);
    }
    let start = Instant::now();
    for id in CONTROLLERS {
        nodes.spawn(id)?;
    }
    let mut served = None;
    let mut i = 0;
    while start.elapsed() < bound {
        i += 1;
        if create(&b1, vec![creatable(format!("after-restart-{i}"), 1)])
            .await
            .is_ok()
        {
            served = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.record("controller_restart_to_write_ms", ms(served));
    // A create refused by a failing-over controller may still have committed: at least.
    let total = total + usize::from(served.is_some());
    let balanced = |s: &Survey| s.partitions >= total && s.balanced();
    until_all(&nodes, &BROKERS, bound, balanced).await;
    nodes.print_peaks("controller restart");

    // Full restart: kill -9 of all six, all started again.
    for id in CONTROLLERS.iter().chain(&BROKERS) {
        nodes.kill(*id);
    }
    let start = Instant::now();
    for id in CONTROLLERS.iter().chain(&BROKERS) {
        nodes.spawn(*id)?;
    }
    let cpu_before = nodes.cpu_snapshot();
    let bal = until_all(&nodes, &BROKERS, bound, balanced).await;
    report.record(
        "full_restart_led_and_balanced_ms",
        ms(bal.map(|_| start.elapsed())),
    );
    nodes.print_cpu("full restart", &cpu_before);
    // The most any process held at any point of the run (restarts and catch-up included).
    report.record("controller_rss_peak_mib", nodes.peak_of(&CONTROLLERS));
    report.record("broker_rss_peak_mib", nodes.peak_of(&BROKERS));
    Ok(report)
}

/// Appends `line` to `path` (for collecting runs at several N).
pub fn append_json(path: &Path, line: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

/// The UTC time of day now, `HH:MM:SS.mmm`, as the nodes' log lines give it.
fn time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}
