//! The `kmeta` command line.

use clap::{Parser, Subcommand};
use kmeta::config::NodeConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kmeta",
    version,
    about = "A KIP-500-style Kafka metadata controller quorum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text for people, json for log pipelines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Command {
    /// Run one node (controller, broker, or both) from a config file.
    Server {
        /// The node's properties file.
        #[arg(long)]
        config: PathBuf,
        /// Override a config key: key=value (repeatable).
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Storage tools.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Run a whole local cluster in one process (3 controllers + 3 brokers by default).
    Dev {
        /// Controllers (node ids 3001, 3002, ...).
        #[arg(long, default_value_t = 3)]
        controllers: u64,
        /// Brokers (node ids 1, 2, ...).
        #[arg(long, default_value_t = 3)]
        brokers: u64,
        /// Host to listen on and advertise.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// First broker port (brokers on P, P+1, ...).
        #[arg(long, default_value_t = 9092)]
        broker_port: u16,
        /// First controller port (controllers on Q, Q+1, ...).
        #[arg(long, default_value_t = 9192)]
        controller_port: u16,
        /// Data directory, kept across runs (default: a fresh temporary one, removed at exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A config setting for every node, key=value (repeatable).
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Also serve clients on SASL_SSL listeners from port S (S, S+1, ...), with a CA,
        /// certificates and an `admin` user made for the cluster; prints the client settings.
        #[arg(long, value_name = "S", num_args = 0..=1, default_missing_value = "9392")]
        secure: Option<u16>,
    },
    /// Create, list, describe, delete and alter topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Partition reassignment with kafka-reassign-partitions.sh's JSON files.
    Reassign {
        #[command(subcommand)]
        command: ReassignCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Elect partition leaders.
    ElectLeaders {
        /// preferred or unclean.
        #[arg(long, value_parser = ["preferred", "unclean"])]
        election_type: String,
        /// Every partition of every topic.
        #[arg(long, conflicts_with_all = ["topic", "partition"])]
        all_topic_partitions: bool,
        /// One topic (every partition unless --partition).
        #[arg(long, required_unless_present = "all_topic_partitions")]
        topic: Option<String>,
        /// One partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The controller quorum, like kafka-metadata-quorum.sh.
    Quorum {
        #[command(subcommand)]
        command: QuorumCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The brokers.
    Brokers {
        #[command(subcommand)]
        command: BrokersCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// SCRAM users (SASL credentials), like kafka-configs.sh --entity-type users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Access control entries (ACLs), like kafka-acls.sh.
    Acls {
        #[command(subcommand)]
        command: AclsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Consumer groups, like kafka-consumer-groups.sh.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read a stopped node's metadata snapshot and log offline.
    MetadataShell {
        /// The node's log directory (its log.dirs).
        #[arg(long)]
        dir: PathBuf,
        /// Print every record with its offset.
        #[arg(long)]
        dump: bool,
        /// table or json.
        #[arg(long, value_enum, default_value = "table")]
        output: kmeta::cli::Output,
    },
    /// The deterministic-schedule simulation of the quorum (docs/FAULTS.md): runs seeds, each
    /// a fault schedule under load on a virtual clock, and checks that nothing acknowledged
    /// was lost. Exits non-zero if any seed found a violation.
    Sim {
        /// Seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed (seeds run from it upwards).
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// random, full-restart or leader-pause.
        #[arg(long, default_value = "random")]
        scenario: String,
        /// Virtual ms of faults under load per seed.
        #[arg(long, default_value_t = 12_000)]
        fault_ms: u64,
        /// Seeds run at once (threads).
        #[arg(long, default_value_t = 2)]
        jobs: u64,
        /// Print every seed's faults, not only failing ones.
        #[arg(long)]
        verbose: bool,
    },
    /// The fault-injection suite (docs/FAULTS.md): real processes of this binary (3
    /// controllers, 3 brokers) in network namespaces, under load, with kill -9, SIGSTOP,
    /// partitions and full restarts from a seed; checks that nothing acknowledged was lost.
    /// Needs root (network namespaces). Exits non-zero if any schedule found a violation.
    Faults {
        /// Schedules to run.
        #[arg(long, default_value_t = 10)]
        schedules: u64,
        /// The first seed (schedules run from it upwards).
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Seconds of faults under load per schedule.
        #[arg(long, default_value_t = 12)]
        seconds: u64,
        /// Clusters run at once.
        #[arg(long, default_value_t = 2)]
        jobs: u64,
        /// Where schedules keep their data (a failing schedule's logs stay there).
        #[arg(long, default_value = "target/faults")]
        data_dir: PathBuf,
        /// The kmeta binary to run as the nodes (default: this one), e.g. an older build.
        #[arg(long)]
        node_binary: Option<PathBuf>,
        /// The workload and the checks reach the brokers on SASL_SSL listeners (TLS 1.3,
        /// SCRAM-SHA-512, a CA made for the run).
        #[arg(long)]
        secure: bool,
    },
    /// Benchmarks (results in docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// A broker to talk to (host:port, comma-separated for several).
    #[arg(long, global = true, default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    /// table or json.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: kmeta::cli::Output,
    /// Client security settings, as Kafka's tools take them: a properties file with
    /// security.protocol, ssl.truststore.location, ssl.keystore.location, sasl.mechanism,
    /// sasl.jaas.config (docs/SECURITY.md).
    #[arg(long, global = true)]
    command_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create a topic.
    Create {
        #[arg(long)]
        topic: String,
        /// Partitions (default: the cluster's num.partitions).
        #[arg(long, default_value_t = -1)]
        partitions: i32,
        /// Replicas per partition (default: the cluster's default.replication.factor).
        #[arg(long, default_value_t = -1)]
        replication_factor: i16,
        /// A topic config, key=value (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Each partition's leader, replicas, ISR and any reassignment in flight.
    Describe {
        /// One topic (default: all).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Delete a topic.
    Delete {
        #[arg(long)]
        topic: String,
    },
    /// Add partitions to a topic and change its configs.
    Alter {
        #[arg(long)]
        topic: String,
        /// The new partition count.
        #[arg(long)]
        partitions: Option<i32>,
        /// Set a topic config, key=value (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Remove a topic config, back to its default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ReassignCommand {
    /// Propose a balanced plan for moving topics onto a broker list.
    Generate {
        #[arg(long)]
        topics_to_move_json_file: PathBuf,
        /// Target brokers, e.g. 1,2,3,4.
        #[arg(long)]
        broker_list: String,
    },
    /// Start a reassignment from a reassignment file.
    Execute {
        #[arg(long)]
        reassignment_json_file: PathBuf,
        /// Show progress until every partition is done.
        #[arg(long)]
        wait: bool,
    },
    /// Report each partition of a reassignment file.
    Verify {
        #[arg(long)]
        reassignment_json_file: PathBuf,
    },
    /// Reassignments in flight.
    List,
    /// Cancel the reassignments of a file's partitions.
    Cancel {
        #[arg(long)]
        reassignment_json_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuorumCommand {
    /// Describe the quorum.
    Describe {
        /// Leader, epoch, high watermark, voters and observers.
        #[arg(long, conflicts_with = "replication")]
        status: bool,
        /// Every replica's log end offset, lag and timestamps.
        #[arg(long)]
        replication: bool,
    },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// Every group, with its state and coordinator.
    List,
    /// Members, and per partition the committed offset, log end offset and lag.
    Describe {
        #[arg(long)]
        group: String,
    },
    /// Delete a group without members, and its committed offsets.
    Delete {
        #[arg(long)]
        group: String,
    },
    /// Move a group's committed offsets (the group must have no members). A dry run unless
    /// --execute.
    ResetOffsets {
        #[arg(long)]
        group: String,
        /// A topic, or topic:0,2 for some partitions (repeatable).
        #[arg(long, required_unless_present = "all_topics")]
        topic: Vec<String>,
        /// Every partition the group has committed.
        #[arg(long)]
        all_topics: bool,
        /// To the log start.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset (clamped into the log).
        #[arg(long, group = "to", allow_negative_numbers = true)]
        to_offset: Option<i64>,
        /// By this many from the committed offset (clamped into the log).
        #[arg(long, group = "to", allow_negative_numbers = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets (default: print the plan only).
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Set a user's password (its SCRAM credentials; PLAIN checks against them too).
    Add {
        /// The user name (the principal is User:NAME).
        #[arg(long)]
        user: String,
        /// The password; `-` reads one line from standard input (kept out of `ps`).
        #[arg(long)]
        password: String,
        /// SCRAM-SHA-256, SCRAM-SHA-512 or all.
        #[arg(long, default_value = "all")]
        mechanism: String,
        /// PBKDF2 iterations (Kafka accepts 4096 to 16384).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Remove a user's credentials.
    Remove {
        /// The user name.
        #[arg(long)]
        user: String,
        /// SCRAM-SHA-256, SCRAM-SHA-512 or all.
        #[arg(long, default_value = "all")]
        mechanism: String,
    },
    /// Users with credentials, their mechanisms and iteration counts.
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum AclsCommand {
    /// Allow or deny principals operations on a topic, a group or the cluster.
    Add(AclArgs),
    /// Remove the entries that match (on a resource, of a principal, of an operation).
    Remove(AclArgs),
    /// List the entries that match (every entry by default).
    List(AclArgs),
}

#[derive(clap::Args)]
struct AclArgs {
    /// A principal to allow (User:alice, or User:* for everyone); repeatable.
    #[arg(long)]
    allow_principal: Vec<String>,
    /// A principal to deny; repeatable. A deny wins over every allow.
    #[arg(long)]
    deny_principal: Vec<String>,
    /// The client address the entry is for (default: any, `*`).
    #[arg(long)]
    host: Option<String>,
    /// Read, Write, Create, Delete, Alter, Describe, ClusterAction, DescribeConfigs,
    /// AlterConfigs, IdempotentWrite or All (add's default); repeatable.
    #[arg(long)]
    operation: Vec<String>,
    /// A topic (`*` for every topic).
    #[arg(long)]
    topic: Option<String>,
    /// A consumer group (`*` for every group).
    #[arg(long)]
    group: Option<String>,
    /// The cluster.
    #[arg(long)]
    cluster: bool,
    /// literal (add's default) or prefixed; list and remove also take any (their default)
    /// and match.
    #[arg(long)]
    resource_pattern_type: Option<String>,
}

impl AclArgs {
    fn split(self) -> (kmeta::cli::acls::Resource, kmeta::cli::acls::Entry) {
        (
            kmeta::cli::acls::Resource {
                topic: self.topic,
                group: self.group,
                cluster: self.cluster,
                pattern_type: self.resource_pattern_type,
            },
            kmeta::cli::acls::Entry {
                allow_principals: self.allow_principal,
                deny_principals: self.deny_principal,
                host: self.host,
                operations: self.operation,
            },
        )
    }
}

/// `--password -` reads the password from standard input.
fn password_arg(password: String) -> Result<String, String> {
    if password != "-" {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[derive(Subcommand)]
enum BrokersCommand {
    /// Every broker: endpoint, rack, state, epoch, last heartbeat.
    List,
}

/// Runs an admin command against `--bootstrap-server`.
fn admin_command<F>(args: AdminArgs, f: F) -> ExitCode
where
    F: for<'a> FnOnce(
        &'a mut kmeta::cli::Admin,
        kmeta::cli::Output,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), String>> + 'a>,
    >,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let security = match &args.command_config {
            None => Default::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("--command-config: cannot read {}: {e}", path.display())
                })?;
                let props = kmeta::config::parse_properties(&text)
                    .map_err(|e| format!("--command-config {}: {e}", path.display()))?;
                kmeta::kafka::connect::ClientSecurity::from_properties(&props)
                    .map_err(|e| format!("--command-config {}: {e}", path.display()))?
            }
        };
        let mut admin = kmeta::cli::Admin::connect_with(&args.bootstrap_server, &security).await?;
        f(&mut admin, args.output).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Committed-write throughput and failover time of 3 controllers in this process.
    Quorum {
        /// Concurrent writers, one run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
        writers: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Failovers to measure.
        #[arg(long, default_value_t = 3)]
        failovers: usize,
        /// Where the controllers keep their data (must be a real disk for fsync to count).
        #[arg(long, default_value = "target/bench-quorum")]
        data_dir: PathBuf,
    },
    /// Messages/s and MB/s with acks=all on RF 3 (min ISR 2), produce and end-to-end
    /// latency, and the disk's own sequential write rate, against 3 controllers and 3
    /// brokers in this process.
    Produce {
        /// Seconds measured (after one second of warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Producer connections (each bound to one partition, one request in flight).
        #[arg(long, default_value_t = 12)]
        producers: usize,
        /// Messages per batch (one batch per request).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Bytes per message (at least 8).
        #[arg(long, default_value_t = 1024)]
        message_bytes: usize,
        /// Where the brokers and controllers keep their data (a real disk).
        #[arg(long, default_value = "target/bench-produce")]
        data_dir: PathBuf,
    },
    /// What a cluster costs as it grows, on real processes (3 controllers + 3 brokers from
    /// this binary): create time, memory, snapshots, Metadata latency, one change's
    /// propagation, controlled shutdown, kill -9 of a broker, a wiped broker, controller
    /// restart, full restart.
    Scale {
        /// Partitions (RF 3), one run per value.
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        partitions: Vec<usize>,
        /// `broker.session.timeout.ms`.
        #[arg(long, default_value_t = 9000)]
        session_timeout_ms: u64,
        /// Changes timed for propagation.
        #[arg(long, default_value_t = 100)]
        samples: usize,
        /// Append each run's figures as a JSON line to this file (for bench/plot-scale.py).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Where the nodes keep their data (removed at the end unless --keep).
        #[arg(long, default_value = "target/bench-scale")]
        data_dir: PathBuf,
        /// Keep the data directory and the nodes' logs (node-ID.log) after the run.
        #[arg(long)]
        keep: bool,
        /// The nodes' log filter (their KMETA_LOG), e.g. "info,kmeta::broker::replica=debug".
        #[arg(long, default_value = "info,openraft=warn")]
        node_log: String,
    },
    /// kmeta against etcd and ZooKeeper, side by side on this machine: each as 3 real
    /// processes (kmeta: 3 controllers + 3 brokers) under the same closed-loop load; writes/s,
    /// latency and server CPU per write, every acknowledged write read back. Needs `etcd`
    /// and Debian's `zookeeper` (bench/compare.sh installs them).
    Compare {
        /// The systems, in the order run: kmeta, kmeta-sasl-ssl (clients on a SASL_SSL
        /// listener), etcd, zookeeper.
        #[arg(long, value_delimiter = ',', default_value = "kmeta,etcd,zookeeper")]
        systems: Vec<String>,
        /// The workloads: update (OffsetCommit / put / setData of the worker's own key),
        /// create (CreateTopics / put of a new key / create).
        #[arg(long, value_delimiter = ',', default_value = "update,create")]
        workloads: Vec<String>,
        /// Workers (one request in flight each), one run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        workers: Vec<usize>,
        /// The most connections the workers share, spread over the 3 members.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds of load before the window.
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// Seconds of unmeasured update load on each system right after it starts, before
        /// its first run (a JVM's ZooKeeper runs its first seconds slower while it compiles);
        /// 0 for none.
        #[arg(long, default_value_t = 30)]
        start_warmup: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 12)]
        seconds: u64,
        /// Append each run's figures as a JSON line to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Where the servers keep their data (removed at the end unless --keep).
        #[arg(long, default_value = "target/bench-compare")]
        data_dir: PathBuf,
        /// Keep the data directory and the servers' logs after the run.
        #[arg(long)]
        keep: bool,
    },
    /// `kill -9` of the active controller → the next acknowledged write through a broker, on
    /// real processes (3 controllers + 3 brokers from this binary) at default settings.
    Failover {
        /// Failovers measured.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Where the nodes keep their data (removed at the end unless --keep).
        #[arg(long, default_value = "target/bench-failover")]
        data_dir: PathBuf,
        /// Keep the data directory and the nodes' logs (node-ID.log) after the run.
        #[arg(long)]
        keep: bool,
    },
    /// Offset commits/s through brokers, commit-to-every-broker latency, and Metadata
    /// requests/s, against 3 controllers and 3 brokers in this process.
    Brokers {
        /// Concurrent client connections, one run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        connections: Vec<usize>,
        /// Partitions per OffsetCommit request.
        #[arg(long, default_value_t = 64)]
        partitions_per_commit: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Commits timed for propagation.
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// Where the controllers keep their data.
        #[arg(long, default_value = "target/bench-brokers")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Print a new random cluster id.
    RandomUuid,
    /// Prepare a node's log directory for a cluster.
    Format {
        /// The node's properties file.
        #[arg(long)]
        config: PathBuf,
        /// The cluster id (from `kmeta storage random-uuid`).
        #[arg(long)]
        cluster_id: String,
        /// Succeed if the directory is already formatted for this cluster and node.
        #[arg(long)]
        ignore_formatted: bool,
        /// Override a config key: key=value (repeatable).
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// A SCRAM user the new cluster starts with, as kafka-storage format takes it:
        /// 'SCRAM-SHA-256=[name=admin,password=admin-secret]' (iterations=N optional;
        /// repeatable). Written by the first active controller; give it to every controller.
        #[arg(long, value_name = "MECHANISM=[name=..,password=..]")]
        add_scram: Vec<String>,
    },
}

/// The runtime of the long-running commands (server, dev, benchmarks), with the process's
/// memory settings (`kmeta::alloc::tune`).
fn server_runtime() -> tokio::runtime::Runtime {
    runtime_with_workers(None)
}

/// [`server_runtime`] with `workers` worker threads (default: one per CPU).
fn runtime_with_workers(workers: Option<usize>) -> tokio::runtime::Runtime {
    kmeta::alloc::tune();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .on_thread_park(kmeta::alloc::on_idle)
        .build()
        .expect("tokio runtime")
}

/// The runtime of `kmeta server`. A controller alone runs one worker thread; a broker (or a
/// combined node) one per CPU.
///
/// A controller's write path is a chain of tasks (listener → decision → openraft's core →
/// log store → replication → state machine → reply), each woken by the one before. With two
/// workers, a wake-up often lands on the other, parked, thread: a futex wake, and in a
/// virtual machine an inter-processor interrupt to a halted CPU (`perf sched latency`: 78 µs
/// mean wait between a wake-up and the run, about 8 per write). One thread runs the chain
/// without those hand-offs; the log's flush thread still runs beside it, and long
/// synchronous work (`cpu_bound`) still hands the worker's other tasks to a new thread.
/// Interleaved rounds of `kmeta bench compare` (docs/BENCHMARKS.md, change 23): OffsetCommits
/// +10% at 1 worker with 14% less CPU each, the rest within the spread; `bench scale` at
/// 100,000 partitions unchanged.
/// Brokers do the heavy work of a creation (replay, hosting, fetchers) and keep both.
fn node_runtime(roles: &kmeta::config::Roles) -> tokio::runtime::Runtime {
    runtime_with_workers((!roles.broker).then_some(1))
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("kmeta: {message}");
    ExitCode::from(1)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMETA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    match cli.command {
        Command::Storage {
            command: StorageCommand::RandomUuid,
        } => {
            println!("{}", kmeta::random_cluster_id());
            ExitCode::SUCCESS
        }
        Command::Storage {
            command:
                StorageCommand::Format {
                    config,
                    cluster_id,
                    ignore_formatted,
                    overrides,
                    add_scram,
                },
        } => {
            let config = match NodeConfig::load(&config, &overrides) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let bootstrap: Result<Vec<_>, String> = add_scram
                .iter()
                .map(|spec| {
                    kmeta::sasl::parse_add_scram(spec)
                        .map(kmeta_metadata::MetadataRecord::UserScramCredential)
                })
                .collect();
            let bootstrap = match bootstrap {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            match kmeta::storage::format(&config, &cluster_id, ignore_formatted, &bootstrap) {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Server { config, overrides } => {
            init_logging();
            let config = match NodeConfig::load(&config, &overrides) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let runtime = node_runtime(&config.roles);
            match runtime.block_on(kmeta::server::run(config, shutdown_signal())) {
                // Everything has stopped and nothing is left unwritten (partition logs and
                // the Raft log write straight to their files, logging straight to stderr):
                // the process ends here instead of freeing its state piece by piece, which for
                // a broker of 1,000,000 partitions took 7 s after its controlled shutdown.
                Ok(()) => std::process::exit(0),
                Err(e) => fail(e),
            }
        }
        Command::Faults {
            schedules,
            first_seed,
            seconds,
            jobs,
            data_dir,
            node_binary,
            secure,
        } => {
            let binary = match node_binary.map_or_else(std::env::current_exe, Ok) {
                Ok(b) => b,
                Err(e) => return fail(format!("cannot find this binary: {e}")),
            };
            let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
            let options = kmeta::faults::FaultOptions {
                binary,
                fault_secs: seconds,
                dir: data_dir,
                secure,
            };
            match kmeta::faults::run_many(first_seed, schedules, jobs.max(1), &options) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(summary) => fail(summary),
            }
        }
        Command::Sim {
            seeds,
            first_seed,
            scenario,
            fault_ms,
            jobs,
            verbose,
        } => {
            // Quiet unless asked (KMETA_LOG): thousands of runs log a lot.
            if std::env::var_os("KMETA_LOG").is_some() {
                init_logging();
            }
            let scenario = match scenario.as_str() {
                "random" => kmeta::sim::Scenario::Random,
                "full-restart" => kmeta::sim::Scenario::FullRestart,
                "leader-pause" => kmeta::sim::Scenario::LeaderPause,
                other => {
                    return fail(format!(
                        "--scenario: {other} is not one of random, full-restart, leader-pause"
                    ))
                }
            };
            let options = kmeta::sim::SimOptions {
                scenario,
                fault_ms,
                ..kmeta::sim::SimOptions::default()
            };
            match kmeta::sim::run_many(first_seed, seeds, jobs.max(1), &options, verbose) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(summary) => fail(summary),
            }
        }
        Command::Bench {
            command:
                BenchCommand::Quorum {
                    writers,
                    seconds,
                    failovers,
                    data_dir,
                },
        } => {
            init_logging();
            let _ = std::fs::remove_dir_all(&data_dir);
            let runtime = server_runtime();
            let result = runtime.block_on(kmeta::bench::quorum(
                &writers, seconds, failovers, &data_dir,
            ));
            let _ = std::fs::remove_dir_all(&data_dir);
            match result {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bench {
            command:
                BenchCommand::Brokers {
                    connections,
                    partitions_per_commit,
                    seconds,
                    samples,
                    data_dir,
                },
        } => {
            init_logging();
            let _ = std::fs::remove_dir_all(&data_dir);
            let runtime = server_runtime();
            let result = runtime.block_on(kmeta::bench::brokers::brokers(
                &data_dir,
                seconds,
                &connections,
                partitions_per_commit,
                samples,
            ));
            let _ = std::fs::remove_dir_all(&data_dir);
            match result {
                Ok(r) => {
                    println!("offset commits through brokers (OffsetCommit of {partitions_per_commit} partitions, spread over 3 brokers):");
                    for (c, _, rate) in &r.commits {
                        println!("  {c:>5} connections: {rate:>10.0} offsets/s");
                    }
                    let (p50, p99, max, n) = r.propagation_ms;
                    println!("commit -> every broker's image ({n} commits): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
                    println!("Metadata requests on one broker (all topics, 64 partitions):");
                    for (c, rate) in &r.metadata {
                        println!("  {c:>5} connections: {rate:>10.0} requests/s");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bench {
            command:
                BenchCommand::Scale {
                    partitions,
                    session_timeout_ms,
                    samples,
                    json,
                    data_dir,
                    keep,
                    node_log,
                },
        } => {
            init_logging();
            let runtime = server_runtime();
            for n in partitions {
                println!("bench scale: {n} partitions, 3 controllers + 3 brokers as processes");
                let options = kmeta::bench::scale::ScaleOptions {
                    partitions: n,
                    data_dir: data_dir.clone(),
                    session_timeout_ms,
                    samples,
                    keep,
                    node_log: node_log.clone(),
                    secure: false,
                };
                match runtime.block_on(kmeta::bench::scale::scale(&options)) {
                    Ok(report) => {
                        if let Some(path) = &json {
                            if let Err(e) =
                                kmeta::bench::scale::append_json(path, &report.to_json(n))
                            {
                                return fail(e);
                            }
                        }
                    }
                    Err(e) => return fail(e),
                }
            }
            ExitCode::SUCCESS
        }
        Command::Bench {
            command:
                BenchCommand::Failover {
                    trials,
                    data_dir,
                    keep,
                },
        } => {
            init_logging();
            if trials == 0 {
                return fail("--trials must be at least 1".to_string());
            }
            println!("bench failover: kill -9 of the active controller, {trials} trials, 3 controllers + 3 brokers as processes");
            let runtime = server_runtime();
            match runtime.block_on(kmeta::bench::failover::failover(trials, data_dir, keep)) {
                Ok(mut times) => {
                    let (p50, p99, max) = kmeta::bench::failover::summary(&mut times);
                    println!("kill -9 of the active controller → next acknowledged write ({} trials): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms", times.len());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bench {
            command:
                BenchCommand::Compare {
                    systems,
                    workloads,
                    workers,
                    connections,
                    warmup,
                    start_warmup,
                    seconds,
                    json,
                    data_dir,
                    keep,
                },
        } => {
            init_logging();
            use kmeta::bench::compare::{self, System, Workload};
            let parsed = systems
                .iter()
                .map(|s| System::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|s| {
                    let w = workloads
                        .iter()
                        .map(|w| Workload::parse(w))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((s, w))
                });
            let (systems, workloads) = match parsed {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            if workers.contains(&0) || connections == 0 || seconds == 0 {
                return fail(
                    "--workers, --connections and --seconds must be at least 1".to_string(),
                );
            }
            let options = compare::CompareOptions {
                systems,
                workloads,
                workers,
                connections,
                warmup: std::time::Duration::from_secs(warmup),
                start_warmup: std::time::Duration::from_secs(start_warmup),
                window: std::time::Duration::from_secs(seconds),
                data_dir,
                keep,
            };
            let runtime = server_runtime();
            match runtime.block_on(compare::compare(&options)) {
                Ok(rows) => {
                    println!("{}", compare::report(&rows));
                    if let Some(path) = &json {
                        for r in &rows {
                            if let Err(e) =
                                kmeta::bench::scale::append_json(path, &compare::to_json(r))
                            {
                                return fail(e);
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bench {
            command:
                BenchCommand::Produce {
                    seconds,
                    partitions,
                    producers,
                    batch,
                    message_bytes,
                    data_dir,
                },
        } => {
            init_logging();
            if message_bytes < 8 || batch == 0 || partitions < 1 || producers == 0 {
                return fail("--message-bytes must be at least 8; --batch, --partitions and --producers at least 1".to_string());
            }
            let _ = std::fs::remove_dir_all(&data_dir);
            let runtime = server_runtime();
            let result = runtime.block_on(kmeta::bench::produce::produce(
                &data_dir,
                seconds,
                partitions,
                producers,
                batch,
                message_bytes,
            ));
            let _ = std::fs::remove_dir_all(&data_dir);
            match result {
                Ok(r) => {
                    let (p, n, b, m) = r.shape;
                    println!("produce with acks=all, replication factor 3, min.insync.replicas=2: {p} partitions, {n} producers, batches of {b} x {m} B");
                    println!("  {:>10.0} messages/s  {:>8.1} MB/s acknowledged (x3 replicas written: {:.1} MB/s)", r.messages_per_s, r.mb_per_s, r.mb_per_s * 3.0);
                    let (p50, p99, max) = r.produce_ms;
                    println!(
                        "  produce -> ack:      p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
                    );
                    let (p50, p99, max, k) = r.end_to_end_ms;
                    println!("  produce -> consumed: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({k} batches)");
                    println!(
                        "  the disk, sequential 1 MiB writes + fsync: {:.0} MB/s",
                        r.disk_mb_per_s
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Topics { command, admin } => admin_command(admin, move |a, out| {
            Box::pin(async move {
                use kmeta::cli::topics;
                match command {
                    TopicsCommand::Create {
                        topic,
                        partitions,
                        replication_factor,
                        configs,
                    } => {
                        topics::create(a, &topic, partitions, replication_factor, &configs, out)
                            .await
                    }
                    TopicsCommand::List => topics::list(a, out).await,
                    TopicsCommand::Describe { topic } => {
                        topics::describe(a, topic.as_deref(), out).await
                    }
                    TopicsCommand::Delete { topic } => topics::delete(a, &topic, out).await,
                    TopicsCommand::Alter {
                        topic,
                        partitions,
                        configs,
                        delete_configs,
                    } => topics::alter(a, &topic, partitions, &configs, &delete_configs, out).await,
                }
            })
        }),
        Command::Reassign { command, admin } => admin_command(admin, move |a, out| {
            Box::pin(async move {
                use kmeta::cli::reassign;
                match command {
                    ReassignCommand::Generate {
                        topics_to_move_json_file,
                        broker_list,
                    } => reassign::generate(a, &topics_to_move_json_file, &broker_list, out).await,
                    ReassignCommand::Execute {
                        reassignment_json_file,
                        wait,
                    } => reassign::execute(a, &reassignment_json_file, wait, out).await,
                    ReassignCommand::Verify {
                        reassignment_json_file,
                    } => reassign::verify(a, &reassignment_json_file, out).await,
                    ReassignCommand::List => reassign::list(a, out).await,
                    ReassignCommand::Cancel {
                        reassignment_json_file,
                    } => reassign::cancel(a, &reassignment_json_file, out).await,
                }
            })
        }),
        Command::ElectLeaders {
            election_type,
            all_topic_partitions: _,
            topic,
            partition,
            admin,
        } => admin_command(admin, move |a, out| {
            Box::pin(async move {
                kmeta::cli::elect::elect(
                    a,
                    election_type == "unclean",
                    topic.as_deref(),
                    partition,
                    out,
                )
                .await
            })
        }),
        Command::Quorum {
            command:
                QuorumCommand::Describe {
                    status: _,
                    replication,
                },
            admin,
        } => admin_command(admin, move |a, out| {
            Box::pin(async move { kmeta::cli::quorum::describe(a, replication, out).await })
        }),
        Command::Brokers {
            command: BrokersCommand::List,
            admin,
        } => admin_command(admin, move |a, out| {
            Box::pin(async move { kmeta::cli::brokers::list(a, out).await })
        }),
        Command::Users { command, admin } => admin_command(admin, move |a, out| {
            Box::pin(async move {
                use kmeta::cli::users;
                match command {
                    UsersCommand::Add {
                        user,
                        password,
                        mechanism,
                        iterations,
                    } => {
                        let password = password_arg(password)?;
                        let mechanisms = users::mechanisms(&mechanism)?;
                        users::add(a, &user, &password, &mechanisms, iterations, out).await
                    }
                    UsersCommand::Remove { user, mechanism } => {
                        users::remove(a, &user, &users::mechanisms(&mechanism)?, out).await
                    }
                    UsersCommand::List { user } => users::list(a, user.as_deref(), out).await,
                }
            })
        }),
        Command::Acls { command, admin } => admin_command(admin, move |a, out| {
            Box::pin(async move {
                use kmeta::cli::acls;
                match command {
                    AclsCommand::Add(args) => {
                        let (resource, entry) = args.split();
                        acls::add(a, &resource, &entry, out).await
                    }
                    AclsCommand::Remove(args) => {
                        let (resource, entry) = args.split();
                        acls::remove(a, &resource, &entry, out).await
                    }
                    AclsCommand::List(args) => {
                        let (resource, entry) = args.split();
                        acls::list(a, &resource, &entry, out).await
                    }
                }
            })
        }),
        Command::Groups { command, admin } => admin_command(admin, move |a, out| {
            Box::pin(async move {
                use kmeta::cli::groups;
                match command {
                    GroupsCommand::List => groups::list(a, out).await,
                    GroupsCommand::Describe { group } => groups::describe(a, &group, out).await,
                    GroupsCommand::Delete { group } => groups::delete(a, &group, out).await,
                    GroupsCommand::ResetOffsets {
                        group,
                        topic,
                        all_topics,
                        to_earliest,
                        to_latest,
                        to_offset,
                        shift_by,
                        execute,
                    } => {
                        let to = match (to_earliest, to_latest, to_offset, shift_by) {
                            (true, _, _, _) => groups::ResetTo::Earliest,
                            (_, true, _, _) => groups::ResetTo::Latest,
                            (_, _, Some(o), _) => groups::ResetTo::Offset(o),
                            (_, _, _, Some(d)) => groups::ResetTo::Shift(d),
                            _ => {
                                return Err("say where to: --to-earliest, --to-latest, \
                                    --to-offset N or --shift-by N"
                                    .into())
                            }
                        };
                        groups::reset_offsets(a, &group, &topic, all_topics, to, execute, out).await
                    }
                }
            })
        }),
        Command::MetadataShell { dir, dump, output } => {
            match kmeta::cli::metadata_shell::run(&dir, dump, output) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Dev {
            controllers,
            brokers,
            host,
            broker_port,
            controller_port,
            data_dir,
            overrides,
            secure,
        } => {
            init_logging();
            let runtime = server_runtime();
            let options = kmeta::dev::DevOptions {
                controllers,
                brokers,
                host,
                broker_port,
                controller_port,
                data_dir,
                overrides,
                secure,
            };
            match runtime.block_on(kmeta::dev::run(options, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}
