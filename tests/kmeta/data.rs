//! The data plane with real processes and real clients: produce with acks=all, read back, and
//! no acknowledged message lost when a partition leader is killed.

use crate::cluster::{client, wait_for_three_brokers, ProcessCluster};
use kmeta::faults::data;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn every_real_client_produces_with_acks_all_and_reads_back_what_it_wrote_in_order() {
    let c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    let b = c.bootstrap();
    for client_name in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        let topic = format!("rt-{client_name}");
        client(&[
            "roundtrip",
            "--bootstrap",
            &b,
            "--topic",
            &topic,
            "--client",
            client_name,
        ]);
    }
    // With idempotence (kcat is librdkafka, as confluent-kafka is).
    for client_name in ["confluent", "kafka-python", "aiokafka"] {
        let topic = format!("rti-{client_name}");
        client(&[
            "roundtrip",
            "--bootstrap",
            &b,
            "--topic",
            &topic,
            "--client",
            client_name,
            "--idempotent",
        ]);
    }
}

#[test]
fn killing_partition_leaders_loses_no_acknowledged_message_and_replicas_converge() {
    let mut c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    let load = DataLoad::start(&c);
    let (rt, brokers) = (&load.rt, &load.brokers);
    for round in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        let leader = rt
            .block_on(data::leader_of(brokers, round % data::PARTITIONS))
            .expect("a leader");
        c.kill(leader as u64);
        std::thread::sleep(Duration::from_secs(5));
        c.spawn(leader as u64);
    }
    std::thread::sleep(Duration::from_secs(3));
    load.stop_and_check();
}

/// The fault suite's data load on a process cluster's brokers 1-3: the topic `data` (RF 3,
/// min ISR 2) and four acks=all producers, two of them idempotent.
struct DataLoad {
    rt: tokio::runtime::Runtime,
    brokers: Vec<String>,
    dirs: BTreeMap<i32, PathBuf>,
    ledger: Arc<Mutex<data::DataLedger>>,
    stop: Arc<AtomicBool>,
    producers: Vec<tokio::task::JoinHandle<()>>,
}

impl DataLoad {
    fn start(c: &ProcessCluster) -> DataLoad {
        let brokers: Vec<String> = (1..=3).map(|id| c.broker_addr(id)).collect();
        let dirs = (1..=3)
            .map(|id| (id, c.dir.path().join(format!("data-{id}"))))
            .collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(data::create_topic(&brokers)).unwrap();
        let ledger = Arc::new(Mutex::new(data::DataLedger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let producers = (0..4)
            .map(|i| {
                rt.spawn(data::producer(
                    i,
                    i % 2 == 0,
                    brokers.clone(),
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        DataLoad {
            rt,
            brokers,
            dirs,
            ledger,
            stop,
            producers,
        }
    }

    /// Stops the producers, then waits (at most 60 s) until every check of the fault suite
    /// passes: nothing acknowledged lost, no duplicate, order kept, replicas equal below
    /// the high watermark.
    fn stop_and_check(self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.producers {
            let _ = self.rt.block_on(p);
        }
        let l = self.ledger.lock().unwrap();
        assert!(
            l.acknowledged > 50,
            "only {} messages acknowledged",
            l.acknowledged
        );
        let start = Instant::now();
        loop {
            let violations = self.rt.block_on(data::check(&self.brokers, &self.dirs, &l));
            if violations.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} violations, the first: {:?}",
                violations.len(),
                &violations[..violations.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Produces `batches` batches of 64 x 1 KiB to `topic`-0 on its leader with acks=all; returns
/// the messages acknowledged.
/// Produces `batches` batches of 64 records of 1 KiB (acks=all, not idempotent) to partition
/// 0 of `topic`, each record's value starting with its sequence number in 16 ASCII digits.
/// Returns the records acknowledged and the batches sent again after NOT_LEADER_OR_FOLLOWER:
/// such a batch may have been appended and replicated before leadership moved (the error
/// answers the wait for the HW), so the log may hold it twice, as Kafka's would for a
/// producer that is not idempotent.
async fn fill(brokers: &[String], topic: &str, batches: usize) -> (usize, usize) {
    use kafka_protocol::messages::*;
    use kmeta::kafka::client::KafkaClient;
    use kmeta::kafka::wire::sb;
    let body = vec![b'm'; 1024];
    let mut acked = 0;
    let mut resent = 0;
    let mut conn: Option<KafkaClient> = None;
    let mut sent = 0;
    while sent < batches {
        if conn.is_none() {
            for addr in brokers {
                let Ok(mut c) = KafkaClient::connect(addr, "fill", Duration::from_secs(10)).await
                else {
                    continue;
                };
                let meta = c
                    .send(
                        &MetadataRequest::default().with_topics(Some(vec![
                            metadata_request::MetadataRequestTopic::default()
                                .with_name(Some(TopicName(sb(topic)))),
                        ])),
                        12,
                    )
                    .await
                    .unwrap();
                let leader = meta.topics[0].partitions[0].leader_id.0;
                if leader > 0 {
                    conn = KafkaClient::connect(
                        &brokers[(leader - 1) as usize],
                        "fill",
                        Duration::from_secs(30),
                    )
                    .await
                    .ok();
                    break;
                }
            }
            continue;
        }
        let mut values: Vec<Vec<u8>> = Vec::new();
        for i in 0..64 {
            let mut v = body.clone();
            v[..16].copy_from_slice(format!("{:016}", sent * 64 + i).as_bytes());
            values.push(v);
        }
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let records = kmeta::broker::log::batch::build(&refs, kmeta::controller::wall_ms(), None);
        let r = kmeta::kafka::client::produce_one(topic, 0, -1, 30_000, records);
        let code = conn
            .as_mut()
            .unwrap()
            .send(&r, 9)
            .await
            .map(|resp| resp.responses[0].partition_responses[0].error_code)
            .unwrap_or(-1);
        if code == kmeta_metadata::ErrorCode::NotLeaderOrFollower.code() {
            // Leadership moved (the controller moves it back to the preferred replica once
            // that one is in sync): find the leader and send again.
            conn = None;
            resent += 1;
            continue;
        }
        assert_eq!(code, 0, "produce failed");
        acked += 64;
        sent += 1;
    }
    (acked, resent)
}

#[test]
fn a_reassignment_copies_100_mb_to_new_brokers_before_it_completes() {
    let c = ProcessCluster::start(3, 4, "");
    crate::cluster::until(Duration::from_secs(30), "four live brokers", || {
        let out = std::process::Command::new("kcat")
            .args(["-b", &c.bootstrap(), "-L", "-J", "-m", "5"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["brokers"].as_array()?.len() == 4).then_some(())
    });
    let brokers: Vec<String> = (1..=4).map(|id| c.broker_addr(id)).collect();
    let b = c.bootstrap();
    let kmeta = |args: &[&str]| {
        let out = std::process::Command::new(crate::cluster::BIN)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kmeta {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let plan = c.dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"version":1,"partitions":[{"topic":"big","partition":0,"replicas":[1,2]}]}"#,
    )
    .unwrap();
    kmeta(&[
        "topics",
        "create",
        "--topic",
        "big",
        "--partitions",
        "1",
        "--replication-factor",
        "2",
        "--bootstrap-server",
        &b,
    ]);
    kmeta(&[
        "reassign",
        "execute",
        "--reassignment-json-file",
        plan.to_str().unwrap(),
        "--wait",
        "--bootstrap-server",
        &b,
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 1,600 batches of 64 KiB: 100 MiB.
    let (acked, resent) = rt.block_on(fill(&brokers, "big", 1_600));
    assert_eq!(acked, 102_400);
    std::fs::write(
        &plan,
        r#"{"version":1,"partitions":[{"topic":"big","partition":0,"replicas":[3,4]}]}"#,
    )
    .unwrap();
    kmeta(&[
        "reassign",
        "execute",
        "--reassignment-json-file",
        plan.to_str().unwrap(),
        "--wait",
        "--bootstrap-server",
        &b,
    ]);
    // The new replicas hold every byte, and the old ones let go of theirs.
    let size = |id: u64| -> u64 {
        std::fs::read_dir(c.dir.path().join(format!("data-{id}/big-0")))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| e.metadata().unwrap().len())
                    .sum()
            })
            .unwrap_or(0)
    };
    crate::cluster::until(Duration::from_secs(30), "the old replicas deleted", || {
        (size(1) == 0 && size(2) == 0).then_some(())
    });
    assert!(size(3) > 100 << 20, "broker 3 holds {} bytes", size(3));
    assert_eq!(size(3), size(4));
    // And a consumer reads all of it from the new leader.
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            "kcat",
            "-b",
            &b,
            "-C",
            "-t",
            "big",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o %s\n",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every offset once, in order; every acknowledged record there; nothing more than the
    // resent batches may have added.
    let mut offsets: Vec<i64> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (offset, value) = line.split_once(' ').expect("offset and value");
        offsets.push(offset.parse().unwrap());
        seen.insert(value[..16].parse::<usize>().unwrap());
    }
    assert!(
        offsets.iter().enumerate().all(|(i, o)| *o == i as i64),
        "offsets not contiguous from 0"
    );
    assert_eq!(seen.len(), 102_400, "every acknowledged record is read");
    assert_eq!(seen.last(), Some(&102_399));
    assert!(
        offsets.len() <= 102_400 + 64 * resent,
        "{} records for {resent} resent batches",
        offsets.len()
    );
}

#[test]
fn real_idempotent_producers_lose_and_duplicate_nothing_when_the_leader_is_killed() {
    let mut c = ProcessCluster::start(3, 3, "");
    let b = c.bootstrap();
    let python = std::env::var("KMETA_PYTHON").expect("KMETA_PYTHON (scripts/test.sh sets it)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/check.py");
    for client_name in ["confluent", "kafka-python"] {
        // Each round starts with all three brokers unfenced: the previous round's killed
        // leader must have registered again before an RF 3 topic can be placed.
        wait_for_three_brokers(&c);
        let topic = format!("failover-{client_name}");
        client(&[
            "create",
            "--bootstrap",
            &b,
            "--topic",
            &topic,
            "--partitions",
            "1",
            "--rf",
            "3",
        ]);
        let out = c.dir.path().join(format!("{client_name}.json"));
        let mut producer = std::process::Command::new("timeout")
            .arg("150")
            .arg(&python)
            .arg(script)
            .args([
                "produce-stream",
                "--bootstrap",
                &b,
                "--topic",
                &topic,
                "--client",
                client_name,
                "--count",
                "3000",
                "--idempotent",
                "--out",
                out.to_str().unwrap(),
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let leader = {
            let out = std::process::Command::new("kcat")
                .args(["-b", &b, "-L", "-J", "-t", &topic])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["topics"][0]["partitions"][0]["leader"].as_u64().unwrap()
        };
        c.kill(leader);
        std::thread::sleep(Duration::from_secs(4));
        c.spawn(leader);
        assert!(
            producer.wait().unwrap().success(),
            "{client_name} producer failed"
        );
        client(&[
            "verify-read",
            "--bootstrap",
            &b,
            "--topic",
            &topic,
            "--idempotent",
            "--out",
            out.to_str().unwrap(),
        ]);
    }
}

#[test]
fn a_topic_deleted_while_a_broker_was_down_leaves_nothing_on_its_disk() {
    let mut c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    let b = c.bootstrap();
    client(&[
        "roundtrip",
        "--bootstrap",
        &b,
        "--topic",
        "gone",
        "--client",
        "kcat",
        "--count",
        "30",
    ]);
    let root = c.dir.path().to_path_buf();
    let dir = |id: u64| root.join(format!("data-{id}/gone-0"));
    assert!(dir(3).exists());
    c.kill(3);
    let out = std::process::Command::new(crate::cluster::BIN)
        .args([
            "topics",
            "delete",
            "--topic",
            "gone",
            "--bootstrap-server",
            &b,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    crate::cluster::until(
        Duration::from_secs(20),
        "the live brokers' copies deleted",
        || (!dir(1).exists() && !dir(2).exists()).then_some(()),
    );
    assert!(dir(3).exists(), "broker 3 was down and still has its copy");
    c.spawn(3);
    crate::cluster::until(
        Duration::from_secs(30),
        "broker 3's stray copy deleted",
        || (!dir(3).exists()).then_some(()),
    );
}

/// Issue 13: a follower fetches in an incremental session (KIP-227). The first fetch opens it
/// and is answered in full; a later fetch naming nothing is answered with only the partitions
/// that have something new; a wrong epoch or an unknown session is refused with Kafka's
/// errors. (The test plays broker 3, killed, as the follower.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_session_names_only_what_changed_both_ways() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::*;
    use kmeta::kafka::client::KafkaClient;
    use kmeta::kafka::wire::sb;
    use kmeta_metadata::ErrorCode;

    let mut c = ProcessCluster::start(3, 3, "");
    let b1 = c.broker_addr(1);
    let mut k = loop {
        if let Ok(mut k) = KafkaClient::connect(&b1, "test", Duration::from_secs(10)).await {
            if k.send(&MetadataRequest::default(), 12)
                .await
                .is_ok_and(|m| m.brokers.len() == 3)
            {
                break k;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let created = k
        .send(
            &CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(sb("quiet")))
                    .with_num_partitions(30)
                    .with_replication_factor(3),
            ]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);
    c.kill(3);
    // The partitions broker 1 leads, once every broker agrees.
    let led: Vec<i32> = loop {
        let md = k
            .send(&MetadataRequest::default().with_topics(None), 12)
            .await
            .unwrap();
        let parts = &md.topics[0].partitions;
        if parts.len() == 30
            && parts
                .iter()
                .all(|p| p.leader_id.0 == 1 || p.leader_id.0 == 2)
        {
            break parts
                .iter()
                .filter(|p| p.leader_id.0 == 1)
                .map(|p| p.partition_index)
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(led.len() >= 2, "broker 1 leads {led:?}");
    let fetch = |id: i32, epoch: i32, partitions: &[i32], wait_ms: i32| {
        FetchRequest::default()
            .with_replica_id(BrokerId(3))
            .with_max_wait_ms(wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(if partitions.is_empty() {
                Vec::new()
            } else {
                vec![FetchTopic::default()
                    .with_topic(TopicName(sb("quiet")))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(0)
                                    .with_current_leader_epoch(-1)
                                    .with_last_fetched_epoch(-1)
                                    .with_partition_max_bytes(1 << 20)
                            })
                            .collect(),
                    )]
            })
    };
    let count = |r: &FetchResponse| {
        r.responses
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>()
    };
    let mut f = KafkaClient::connect(&b1, "follower", Duration::from_secs(10))
        .await
        .unwrap();

    let opened = f.send(&fetch(0, 0, &led, 0), 12).await.unwrap();
    assert_eq!(opened.error_code, 0);
    assert!(opened.session_id > 0, "no session was opened: {opened:?}");
    assert_eq!(
        count(&opened),
        led.len(),
        "the opening answer is a full one"
    );
    let id = opened.session_id;

    let quiet = f.send(&fetch(id, 1, &[], 0), 12).await.unwrap();
    assert_eq!((quiet.error_code, quiet.session_id), (0, id));
    assert_eq!(
        count(&quiet),
        0,
        "nothing changed, nothing named: {quiet:?}"
    );

    // One message on one partition: only that one comes back, with its records.
    let mut p = KafkaClient::connect(&b1, "producer", Duration::from_secs(10))
        .await
        .unwrap();
    /// Writes one message to partition `partition` of "quiet"; its error code.
    async fn produce(p: &mut KafkaClient, partition: i32, value: &[u8]) -> i16 {
        let records =
            kmeta::broker::log::batch::build(&[value], kmeta::controller::wall_ms(), None);
        let produced = p
            .send(
                &kmeta::kafka::client::produce_one("quiet", partition, 1, 10_000, records),
                9,
            )
            .await
            .unwrap();
        produced.responses[0].partition_responses[0].error_code
    }
    assert_eq!(produce(&mut p, led[0], b"m").await, 0);
    let news = f.send(&fetch(id, 2, &[], 2_000), 12).await.unwrap();
    assert_eq!(news.error_code, 0);
    let named: Vec<i32> = news
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| p.partition_index)
        .collect();
    assert_eq!(named, vec![led[0]], "{news:?}");
    let part = &news.responses[0].partitions[0];
    assert!(part.records.as_ref().is_some_and(|r| !r.is_empty()));

    let wrong = f.send(&fetch(id, 7, &[], 0), 12).await.unwrap();
    assert_eq!(wrong.error_code, ErrorCode::InvalidFetchSessionEpoch.code());
    let gone = f.send(&fetch(id, 3, &[], 0), 12).await.unwrap();
    assert_eq!(gone.error_code, ErrorCode::FetchSessionIdNotFound.code());

    // A fetch that waits is woken by every change on the broker; a partition it has read is
    // not read again until it changes, but what it had to say is still answered: an opening
    // fetch waiting through another partition's writes is answered in full.
    let named = &led[2..];
    assert!(!named.is_empty(), "broker 1 leads {led:?}");
    let opening = fetch(0, 0, named, 1_500);
    let waiting = tokio::spawn(async move { f.send(&opening, 12).await });
    for n in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(produce(&mut p, led[1], b"w").await, 0, "write {n}");
    }
    let full = waiting.await.unwrap().unwrap();
    assert_eq!(full.error_code, 0);
    assert_eq!(count(&full), named.len(), "{full:?}");
}

/// Issue 13: a broker `kill -9`ed and restarted in the same boot of the machine (its files
/// hold all it wrote, unflushed appends included) keeps its place in every ISR: it is never
/// seen out of one, its leadership moves and comes back, and nothing acknowledged is lost.
/// On the build before, the re-registration took it out of every ISR and it rejoined them
/// one AlterPartition at a time.
#[test]
fn a_broker_restarted_in_the_same_boot_stays_in_every_isr_and_loses_nothing_acknowledged() {
    use kafka_protocol::messages::MetadataRequest;
    let mut c = ProcessCluster::start(1, 3, "broker.session.timeout.ms=30000\n");
    wait_for_three_brokers(&c);
    let load = DataLoad::start(&c);
    let (rt, brokers) = (&load.rt, &load.brokers);
    // The ISRs of the topic as broker 1 shows them, once all are whole.
    let isrs = |rt: &tokio::runtime::Runtime| -> Option<Vec<Vec<i32>>> {
        rt.block_on(async {
            let mut k = kmeta::kafka::client::KafkaClient::connect(
                &brokers[0],
                "test",
                Duration::from_secs(2),
            )
            .await
            .ok()?;
            let md = k
                .send(&MetadataRequest::default().with_topics(None), 12)
                .await
                .ok()?;
            let t = md
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == data::TOPIC))?;
            Some(
                t.partitions
                    .iter()
                    .map(|p| p.isr_nodes.iter().map(|b| b.0).collect())
                    .collect(),
            )
        })
    };
    let start = Instant::now();
    while !isrs(rt).is_some_and(|all| all.iter().all(|isr| isr.len() == 3)) {
        assert!(start.elapsed() < Duration::from_secs(30), "never whole");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    // A partition leader other than broker 1 (which is asked), so leadership moves too.
    let victim = (0..data::PARTITIONS)
        .filter_map(|p| rt.block_on(data::leader_of(brokers, p)))
        .find(|l| *l != 1)
        .unwrap_or(2);
    c.kill(victim as u64);
    c.spawn(victim as u64);
    // For 10 s after the restart it is in every ISR, in every answer.
    let start = Instant::now();
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(all) = isrs(rt) {
            answers += 1;
            for (p, isr) in all.iter().enumerate() {
                assert!(
                    isr.contains(&victim),
                    "broker {victim} out of partition {p}'s ISR {isr:?} {:?} after its restart\n{}",
                    start.elapsed(),
                    c.log_tail(victim as u64)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answers > 20, "only {answers} answers");
    assert!(
        c.log_contains(victim as u64, "registered"),
        "the restarted broker never registered"
    );
    std::thread::sleep(Duration::from_secs(2));
    load.stop_and_check();
}
