//! Real `kmeta server` processes: format, start, kill -9, restart.

use crate::cluster::free_port;
use kmeta::raft::network::{query_status, NodeStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kmeta");

/// The children by node id, and their log files. Kills every child on drop, so a failing
/// test leaves no process behind; a failing test also prints the end of each log.
struct Procs(BTreeMap<u64, Child>, Vec<PathBuf>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.0.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in &self.1 {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                eprintln!("--- the end of {} ---\n{tail}", log.display());
            }
        }
    }
}

/// Where a process started from `config` writes its log (each start appends to it).
fn log_of(config: &Path) -> PathBuf {
    config.with_extension("log")
}

fn write_config(dir: &Path, id: u64, ports: &BTreeMap<u64, u16>) -> PathBuf {
    let voters: Vec<String> = ports
        .iter()
        .map(|(i, p)| format!("{i}@127.0.0.1:{p}"))
        .collect();
    let path = dir.join(format!("node-{id}.properties"));
    let text = format!(
        "node.id={id}\nprocess.roles=controller\ncontroller.quorum.voters={}\nlisteners=CONTROLLER://127.0.0.1:{}\nlog.dirs={}\ncontroller.quorum.election.timeout.ms=300\n",
        voters.join(","),
        ports[&id],
        dir.join(format!("data-{id}")).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn kmeta(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn spawn(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_of(config))
        .unwrap();
    Command::new(BIN)
        .args(["server", "--config", config.to_str().unwrap()])
        .env("KMETA_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn statuses(ports: &BTreeMap<u64, u16>, ids: &[u64]) -> BTreeMap<u64, NodeStatus> {
    let mut out = BTreeMap::new();
    for id in ids {
        if let Ok(s) = query_status(
            &format!("127.0.0.1:{}", ports[id]),
            Duration::from_millis(500),
            None,
        )
        .await
        {
            out.insert(*id, s);
        }
    }
    out
}

/// Waits until every node in `ids` answers and all name the same leader (one of `ids`).
async fn agreed_leader(
    ports: &BTreeMap<u64, u16>,
    ids: &[u64],
    within: Duration,
) -> BTreeMap<u64, NodeStatus> {
    let start = Instant::now();
    loop {
        let s = statuses(ports, ids).await;
        if s.len() == ids.len() {
            let leaders: Vec<Option<u64>> = s.values().map(|n| n.leader).collect();
            if let Some(Some(l)) = leaders.first() {
                if ids.contains(l) && leaders.iter().all(|x| *x == Some(*l)) {
                    return s;
                }
            }
        }
        assert!(
            start.elapsed() < within,
            "no agreed leader among {ids:?} within {within:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controller_processes_survive_kill_9_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let ports: BTreeMap<u64, u16> = (1..=3).map(|id| (id, free_port())).collect();
    let configs: BTreeMap<u64, PathBuf> = ports
        .keys()
        .map(|id| (*id, write_config(dir.path(), *id, &ports)))
        .collect();

    // An unformatted directory is refused with advice.
    let out = kmeta(&["server", "--config", configs[&1].to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("storage format"),
        "{out:?}"
    );

    let cluster_id = String::from_utf8(kmeta(&["storage", "random-uuid"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(cluster_id.len(), 22);
    for config in configs.values() {
        let out = kmeta(&[
            "storage",
            "format",
            "--config",
            config.to_str().unwrap(),
            "--cluster-id",
            &cluster_id,
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    // Formatting for another cluster is refused.
    let out = kmeta(&[
        "storage",
        "format",
        "--config",
        configs[&1].to_str().unwrap(),
        "--cluster-id",
        "other",
    ]);
    assert!(!out.status.success());

    let mut procs = Procs(
        configs.iter().map(|(id, c)| (*id, spawn(c))).collect(),
        configs.values().map(|c| log_of(c)).collect(),
    );
    let all = [1, 2, 3];
    let first = agreed_leader(&ports, &all, Duration::from_secs(20)).await;
    let leader = first.values().next().unwrap().leader.unwrap();

    // kill -9 the leader: the other two elect a new one.
    let mut killed = procs.0.remove(&leader).unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let after = agreed_leader(&ports, &rest, Duration::from_secs(20)).await;
    assert_ne!(after.values().next().unwrap().leader, Some(leader));

    // The killed node restarts from its directory and rejoins; all agree on the log and image.
    procs.0.insert(leader, spawn(&configs[&leader]));
    converged(&ports, &all).await;
}

/// Waits until every node in `ids` agrees on the leader, has applied the same last entry (at
/// least one) and holds the same image.
async fn converged(ports: &BTreeMap<u64, u16>, ids: &[u64]) {
    let start = Instant::now();
    loop {
        let s = agreed_leader(ports, ids, Duration::from_secs(20)).await;
        let applied: Vec<_> = s
            .values()
            .map(|n| (n.last_applied, n.image_hash.clone()))
            .collect();
        if applied.windows(2).all(|w| w[0] == w[1]) && applied[0].0.is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nodes did not converge: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the broker at `addr` lists `n` live brokers in Metadata, at most `within`;
/// returns the connection that saw it.
async fn live_brokers(addr: &str, n: usize, within: Duration) -> kmeta::kafka::client::KafkaClient {
    use kafka_protocol::messages::MetadataRequest;
    let start = Instant::now();
    loop {
        if let Ok(mut k) =
            kmeta::kafka::client::KafkaClient::connect(addr, "test", Duration::from_secs(5)).await
        {
            if k.send(&MetadataRequest::default(), 12)
                .await
                .is_ok_and(|m| m.brokers.len() == n)
            {
                return k;
            }
        }
        assert!(
            start.elapsed() < within,
            "{addr} never listed {n} live brokers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 3's end-to-end durability check: writers keep creating topics through a broker while
/// the active controller is killed with SIGKILL and restarted; every acknowledged create is
/// there afterwards, and all controllers converge on one image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_the_active_controller() {
    use crate::cluster::ProcessCluster;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{
        CreateTopicsRequest, DescribeQuorumRequest, MetadataRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use kmeta::kafka::client::KafkaClient;

    let mut c = ProcessCluster::start(3, 1, "");
    let broker = c.broker_addr(1);
    // Wait for the broker to be registered and unfenced (it is then listed in Metadata).
    live_brokers(&broker, 1, Duration::from_secs(30)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let broker = broker.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{n}");
                n += 1;
                let Ok(mut k) =
                    KafkaClient::connect(&broker, "writer", Duration::from_secs(40)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let req =
                    CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.clone())))
                        .with_num_partitions(1)
                        .with_replication_factor(1)]);
                if let Ok(r) = k.send(&req, 7).await {
                    if r.topics.first().is_some_and(|t| t.error_code == 0) {
                        acked.push(name);
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut k = KafkaClient::connect(&c.controller_addr(101), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let quorum = k.send(&DescribeQuorumRequest::default(), 0).await.unwrap();
    let leader = quorum.topics[0].partitions[0].leader_id.0 as u64;
    assert!(c.controllers.contains_key(&leader), "leader {leader}");
    c.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.spawn(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 20,
        "too few writes acknowledged: {}",
        acked.len()
    );

    // Every acknowledged topic exists (the broker's image includes a write before replying).
    let mut k = KafkaClient::connect(&broker, "test", Duration::from_secs(5))
        .await
        .unwrap();
    let md = k
        .send(&MetadataRequest::default().with_topics(None), 12)
        .await
        .unwrap();
    let names: std::collections::BTreeSet<String> = md
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );

    // All three controllers converge, the restarted one included.
    let ids: Vec<u64> = c.controllers.keys().copied().collect();
    converged(&c.controllers, &ids).await;
    eprintln!("{} acknowledged creates, none lost", acked.len());
}

/// `process.roles=broker,controller`: one process is a one-voter quorum and a broker; it
/// serves clients and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_broker_and_controller_node_serves_clients_and_stops_on_sigterm() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let (broker, controller) = (free_port(), free_port());
    let config = dir.path().join("node.properties");
    std::fs::write(
        &config,
        format!(
            "node.id=1\nprocess.roles=broker,controller\ncontroller.quorum.voters=1@127.0.0.1:{controller}\nlisteners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}\nlog.dirs={}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let id = String::from_utf8(kmeta(&["storage", "random-uuid"]).stdout).unwrap();
    let out = kmeta(&[
        "storage",
        "format",
        "--config",
        config.to_str().unwrap(),
        "--cluster-id",
        id.trim(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut procs = Procs(
        [(1, spawn(&config))].into_iter().collect(),
        vec![log_of(&config)],
    );
    let addr = format!("127.0.0.1:{broker}");
    let mut client = live_brokers(&addr, 1, Duration::from_secs(20)).await;
    let created = client
        .send(
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("combined")))
                .with_num_partitions(2)
                .with_replication_factor(1)]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);
    let md = client
        .send(&MetadataRequest::default().with_topics(None), 12)
        .await
        .unwrap();
    assert_eq!(md.topics.len(), 1);
    assert_eq!(md.topics[0].partitions.len(), 2);

    let mut child = procs.0.remove(&1).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the node did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// What one broker shows: every partition of a topic as `(leader, replicas, isr)`, and the
/// epoch of every active broker (DescribeCluster's kmeta extension).
type BrokerView = (Vec<(i32, Vec<i32>, Vec<i32>)>, BTreeMap<i32, i64>);

/// What every broker shows of `topic` and of the active brokers; empty if one cannot answer.
async fn cluster_seen(c: &crate::cluster::ProcessCluster, topic: &str) -> Vec<BrokerView> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{DescribeClusterRequest, MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kmeta::broker::api::BROKER_EPOCH_TAG;
    let mut seen = Vec::new();
    for id in c.brokers.keys() {
        let Ok(mut k) = kmeta::kafka::client::KafkaClient::connect(
            &c.broker_addr(*id),
            "test",
            Duration::from_secs(2),
        )
        .await
        else {
            return Vec::new();
        };
        let request =
            MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        let (Ok(md), Ok(cluster)) = (
            k.send(&request, 12).await,
            k.send(&DescribeClusterRequest::default(), 0).await,
        ) else {
            return Vec::new();
        };
        let mut parts: Vec<(i32, Vec<i32>, Vec<i32>)> = md
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| {
                (
                    p.leader_id.0,
                    p.replica_nodes.iter().map(|b| b.0).collect(),
                    p.isr_nodes.iter().map(|b| b.0).collect(),
                )
            })
            .collect();
        parts.sort_by_key(|p| p.1.clone());
        let epochs = cluster
            .brokers
            .iter()
            .filter(|b| !b.is_fenced)
            .map(|b| {
                let epoch = b
                    .unknown_tagged_fields
                    .get(&BROKER_EPOCH_TAG)
                    .and_then(|v| v.as_ref().try_into().ok())
                    .map_or(-1, i64::from_be_bytes);
                (b.broker_id.0, epoch)
            })
            .collect();
        seen.push((parts, epochs));
    }
    seen
}

/// True when every broker shows every one of `n` partitions led by its preferred replica
/// with all replicas in sync, and all brokers active with epochs outside `old_epochs`.
fn balanced(seen: &[BrokerView], n: usize, brokers: usize, old_epochs: &[i64]) -> bool {
    seen.len() == brokers
        && seen.iter().all(|(parts, epochs)| {
            epochs.len() == brokers
                && epochs.values().all(|e| !old_epochs.contains(e))
                && parts.len() == n
                && parts.iter().all(|(leader, replicas, isr)| {
                    Some(leader) == replicas.first() && isr.len() == replicas.len()
                })
        })
}

/// Issue 13: after `kill -9` of all six processes, each restarted broker takes its
/// registration back at once, though its old session (30 s here) has not expired, and
/// leadership returns to the preferred replicas without waiting for the periodic balancing
/// pass (5 minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_restart_brokers_register_at_once_and_leadership_comes_back_balanced() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let mut c = crate::cluster::ProcessCluster::start(3, 3, "broker.session.timeout.ms=30000\n");
    let mut k = live_brokers(&c.broker_addr(1), 3, Duration::from_secs(30)).await;
    let created = k
        .send(
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("balanced")))
                .with_num_partitions(6)
                .with_replication_factor(3)]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    let start = Instant::now();
    let old_epochs: Vec<i64> = loop {
        let seen = cluster_seen(&c, "balanced").await;
        if balanced(&seen, 6, 3, &[]) {
            break seen[0].1.values().copied().collect();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never balanced at the start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    c.restart_all();
    let start = Instant::now();
    loop {
        let seen = cluster_seen(&c, "balanced").await;
        if balanced(&seen, 6, 3, &old_epochs) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "20 s after the full restart (sessions of 30 s): {seen:?}\nbroker 1: {}",
            c.log_tail(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "full restart: three new registrations and every partition led by its preferred replica on every broker after {:?}",
        start.elapsed()
    );
}

/// Issue 13: a broker answers no client before it has registered and caught up with its
/// registration; requests sent earlier wait on the open connection and are answered then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_answers_no_client_until_it_has_registered() {
    use kafka_protocol::messages::MetadataRequest;
    use kmeta::kafka::client::KafkaClient;

    let mut c = crate::cluster::ProcessCluster::start(3, 1, "");
    live_brokers(&c.broker_addr(1), 1, Duration::from_secs(30)).await;
    let controllers: Vec<u64> = c.controllers.keys().copied().collect();
    for id in &controllers {
        c.kill(*id);
    }
    c.kill(1);
    c.spawn(1);
    // No controller: the broker cannot register. Its port opens, but nothing is answered.
    let start = Instant::now();
    let mut k = loop {
        match KafkaClient::connect(&c.broker_addr(1), "test", Duration::from_secs(30)).await {
            Ok(k) => break k,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the broker never listened: {e}"),
        }
    };
    let asked = tokio::spawn(async move {
        k.send(&MetadataRequest::default().with_topics(None), 12)
            .await
            .map(|md| md.brokers.len())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !asked.is_finished(),
        "the broker answered before it registered: {:?}",
        asked.await
    );
    for id in &controllers {
        c.spawn(*id);
    }
    // Answered once registered and caught up (it may still be fenced for a heartbeat, and
    // then lists no live broker, as a Kafka broker does between the two).
    tokio::time::timeout(Duration::from_secs(25), asked)
        .await
        .expect("answered once registered")
        .unwrap()
        .expect("the waiting request is answered on its connection");
    assert!(c.log_contains(1, "serving clients"));
}

/// Issue 13: a broker restarted while following more partitions from one leader than one
/// fetch request can name (15,000 here, with the leaders' `socket.request.max.bytes` at
/// 500,000) opens its fetch session over several requests, and rejoins every ISR. Its first
/// fetch used to name every partition at once, a frame over the leader's limit: the leader
/// closed the connection on every try and the broker never rejoined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_following_more_partitions_than_one_fetch_holds_rejoins_every_isr() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    const TOPICS: usize = 4;
    const PARTITIONS: i32 = 7_500;
    let mut c = crate::cluster::ProcessCluster::start(
        1,
        2,
        "socket.request.max.bytes=500000\nbroker.session.timeout.ms=3000\n",
    );
    let mut k = live_brokers(&c.broker_addr(1), 2, Duration::from_secs(30)).await;
    for t in 0..TOPICS {
        let created = k
            .send(
                &CreateTopicsRequest::default()
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(format!("wide-{t}"))))
                        .with_num_partitions(PARTITIONS)
                        .with_replication_factor(2)])
                    .with_timeout_ms(60_000),
                7,
            )
            .await
            .unwrap();
        assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    }
    let total = TOPICS * PARTITIONS as usize;
    let addr = c.broker_addr(1);
    whole_isrs(&addr, total, 2, "after creation").await;
    // Broker 2 stops; once its session expires the controller takes it out of every ISR.
    c.kill(2);
    whole_isrs(&addr, total, 1, "after broker 2's session expired").await;
    c.spawn(2);
    let took = whole_isrs(&addr, total, 2, "after broker 2's restart").await;
    assert!(
        !c.log_contains(1, "the limit is"),
        "a fetch request over the frame limit"
    );
    eprintln!("broker 2 back in all {total} ISRs after {took:?}");
}

/// Waits until the broker at `addr` lists `total` partitions of the topics `wide-*`, each with
/// `isr` replicas in its ISR; how long that took.
async fn whole_isrs(addr: &str, total: usize, isr: usize, what: &str) -> Duration {
    use kafka_protocol::messages::MetadataRequest;
    let start = Instant::now();
    loop {
        let mut seen = None;
        if let Ok(mut k) =
            kmeta::kafka::client::KafkaClient::connect(addr, "test", Duration::from_secs(5)).await
        {
            if let Ok(md) = k
                .send(&MetadataRequest::default().with_topics(None), 12)
                .await
            {
                let isrs: Vec<usize> = md
                    .topics
                    .iter()
                    .filter(|t| t.name.as_ref().is_some_and(|n| n.0.starts_with("wide-")))
                    .flat_map(|t| t.partitions.iter().map(|p| p.isr_nodes.len()))
                    .collect();
                seen = Some((isrs.len(), isrs.iter().filter(|n| **n == isr).count()));
            }
        }
        if seen == Some((total, total)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what}: after 90 s, (partitions, with {isr} in the ISR) = {seen:?} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
