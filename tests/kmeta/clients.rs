//! Real Kafka clients (kcat, confluent-kafka, kafka-python, aiokafka) against a cluster of
//! real `kmeta server` processes: 3 controllers and 3 brokers.

use crate::cluster::{client, try_client, until, wait_for_brokers, ProcessCluster};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn json(text: &str) -> Value {
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Each partition's `(leader, replicas, isr)`, by partition index.
type PartitionView = BTreeMap<String, (i64, Vec<i64>, Vec<i64>)>;

/// `{partition: (leader, replicas, isr)}` of `topic`, and the live brokers, as
/// confluent-kafka's metadata shows them.
fn leaders(bootstrap: &str, topic: &str) -> Option<(Vec<i64>, PartitionView)> {
    let (ok, out) = try_client(&["leaders", "--bootstrap", bootstrap, "--topic", topic]);
    if !ok {
        return None;
    }
    let v = json(&out);
    let ids = |x: &Value| -> Vec<i64> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_i64().unwrap())
            .collect()
    };
    let brokers = ids(&v["brokers"]);
    let parts = v["leaders"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, l)| {
            (
                p.clone(),
                (
                    l.as_i64().unwrap(),
                    ids(&v["replicas"][p]),
                    ids(&v["isr"][p]),
                ),
            )
        })
        .collect();
    Some((brokers, parts))
}

/// Three controllers and three live brokers (`extra` config on every node) with `topic`
/// created (6 partitions, RF 3); returns the cluster, its bootstrap list and the topic's
/// partitions as a client first sees them.
fn cluster_with_topic(extra: &str, topic: &str) -> (ProcessCluster, String, PartitionView) {
    let c = ProcessCluster::start(3, 3, extra);
    wait_for_brokers(&c, 3);
    let b = c.bootstrap();
    client(&[
        "create",
        "--bootstrap",
        &b,
        "--topic",
        topic,
        "--partitions",
        "6",
        "--rf",
        "3",
    ]);
    let (_, parts) = until(Duration::from_secs(10), "the topic's leaders", || {
        leaders(&b, topic)
    });
    (c, b, parts)
}

/// The bootstrap list of every broker but `victim`.
fn survivors(c: &ProcessCluster, victim: i64) -> String {
    c.brokers
        .keys()
        .filter(|id| **id != victim as u64)
        .map(|id| c.broker_addr(*id))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn real_clients_list_create_describe_delete_commit_elect_and_reassign() {
    let c = ProcessCluster::start(3, 3, "");
    wait_for_brokers(&c, 3);
    let b = c.bootstrap();
    client(&["confluent", "--bootstrap", &b, "--topic", "confluent-topic"]);
    client(&[
        "kafka-python",
        "--bootstrap",
        &b,
        "--topic",
        "kafka-python-topic",
    ]);
    client(&["aiokafka", "--bootstrap", &b, "--topic", "aiokafka-topic"]);
    client(&["create", "--bootstrap", &b, "--topic", "listed"]);
    let listed = json(&client(&["kcat", "--bootstrap", &b, "--topic", "listed"]));
    assert_eq!(listed["brokers"], serde_json::json!([1, 2, 3]));
    // The scenarios deleted their topics; only `listed` is left.
    assert_eq!(listed["topics"], serde_json::json!(["listed"]));
}

#[test]
fn a_killed_broker_loses_every_leadership_within_the_session_timeout() {
    let (mut c, _, before) = cluster_with_topic("", "ha");
    let victim = before.values().next().unwrap().0;
    let led: Vec<String> = before
        .iter()
        .filter(|(_, v)| v.0 == victim)
        .map(|(p, _)| p.clone())
        .collect();
    assert!(!led.is_empty());

    c.kill(victim as u64);
    let killed_at = Instant::now();
    let survivors = survivors(&c, victim);
    // Session timeout 3 s, plus a margin for the check interval and the clients' round trips.
    let (brokers, after) = until(
        Duration::from_secs(8),
        "new leaders for every partition the killed broker led",
        || {
            let (brokers, parts) = leaders(&survivors, "ha")?;
            let moved = !brokers.contains(&victim)
                && parts.values().all(|(l, _, isr)| {
                    *l >= 0 && *l != victim && isr.contains(l) && !isr.contains(&victim)
                });
            moved.then_some((brokers, parts))
        },
    );
    let elapsed = killed_at.elapsed();
    assert_eq!(brokers.len(), 2);
    for p in &led {
        let (leader, _, isr) = &after[p];
        assert!(
            before[p].2.contains(leader),
            "partition {p}: new leader {leader} was not in the ISR {:?}",
            before[p].2
        );
        assert!(!isr.contains(&victim));
    }
    eprintln!("leadership moved {elapsed:?} after kill -9");
}

#[test]
fn stopping_and_starting_every_process_keeps_topics_assignments_and_offsets() {
    let mut c = ProcessCluster::start(3, 3, "");
    wait_for_brokers(&c, 3);
    let b = c.bootstrap();
    client(&[
        "create",
        "--bootstrap",
        &b,
        "--topic",
        "durable",
        "--partitions",
        "4",
        "--rf",
        "2",
    ]);
    client(&[
        "commit",
        "--bootstrap",
        &b,
        "--topic",
        "durable",
        "--group",
        "durable-group",
        "--offset",
        "77",
    ]);
    let (_, before) = until(Duration::from_secs(10), "the topic's leaders", || {
        leaders(&b, "durable")
    });

    c.restart_all();
    wait_for_brokers(&c, 3);
    let (_, after) = until(Duration::from_secs(20), "the topic after a restart", || {
        leaders(&b, "durable")
    });
    assert_eq!(after.len(), 4);
    for (p, (_, replicas, _)) in &before {
        assert_eq!(&after[p].1, replicas, "partition {p} kept its replicas");
    }
    let committed = json(&client(&[
        "committed",
        "--bootstrap",
        &b,
        "--topic",
        "durable",
        "--group",
        "durable-group",
    ]));
    assert_eq!(committed["offset"], 77);
}

#[test]
fn sigterm_moves_a_brokers_leaderships_away_before_it_exits() {
    let (mut c, _, before) = cluster_with_topic("", "graceful");
    let victim = before.values().next().unwrap().0;
    assert!(
        c.terminate(victim as u64, Duration::from_secs(10)),
        "broker {victim} did not exit after SIGTERM:\n{}",
        c.log_tail(victim as u64)
    );
    let survivors = survivors(&c, victim);
    // Leadership had moved before the process exited: the survivors show it at once, well
    // before the 3 s session would have expired.
    let (_, after) = leaders(&survivors, "graceful").expect("metadata from the survivors");
    for (p, (leader, _, _)) in &after {
        assert_ne!(
            *leader, victim,
            "partition {p} is still led by the stopped broker"
        );
        assert!(*leader >= 0, "partition {p} has no leader");
    }
}

#[test]
fn a_broker_behind_the_controllers_kept_log_catches_up_from_a_snapshot() {
    // Snapshots every second while the log grows; after a full restart the controllers keep
    // only the entries after their snapshots, so restarted brokers (which start empty) must
    // load a snapshot first.
    let mut c = ProcessCluster::start(
        3,
        1,
        "metadata.log.max.record.bytes.between.snapshots=1\nmetadata.log.max.snapshot.interval.ms=1000",
    );
    wait_for_brokers(&c, 1);
    let b = c.bootstrap();
    client(&[
        "create",
        "--bootstrap",
        &b,
        "--topic",
        "snap",
        "--partitions",
        "3",
        "--rf",
        "1",
    ]);
    client(&[
        "commit",
        "--bootstrap",
        &b,
        "--topic",
        "snap",
        "--group",
        "snap-group",
        "--offset",
        "5",
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    c.restart_all();
    wait_for_brokers(&c, 1);
    let (_, parts) = until(Duration::from_secs(20), "the topic after a restart", || {
        leaders(&b, "snap")
    });
    assert_eq!(parts.len(), 3);
    let committed = json(&client(&[
        "committed",
        "--bootstrap",
        &b,
        "--topic",
        "snap",
        "--group",
        "snap-group",
    ]));
    assert_eq!(committed["offset"], 5);
    assert!(
        c.log_contains(1, "loaded a metadata snapshot"),
        "the broker did not load a snapshot:\n{}",
        c.log_tail(1)
    );
}

#[test]
fn a_restarted_broker_gets_its_preferred_leaderships_back() {
    let (mut c, b, before) =
        cluster_with_topic("leader.imbalance.check.interval.seconds=1", "balanced");
    for (p, (leader, replicas, _)) in &before {
        assert_eq!(
            *leader, replicas[0],
            "partition {p} starts on its preferred leader"
        );
    }
    let victim = before.values().next().unwrap().0;
    c.kill(victim as u64);
    let survivors = survivors(&c, victim);
    until(
        Duration::from_secs(10),
        "leadership to leave the killed broker",
        || {
            let (_, parts) = leaders(&survivors, "balanced")?;
            parts
                .values()
                .all(|(l, _, _)| *l != victim && *l >= 0)
                .then_some(())
        },
    );
    c.spawn(victim as u64);
    wait_for_brokers(&c, 3);
    // The broker rejoins the ISRs (its partition leaders add it) and the periodic balancing
    // pass moves leadership back to it.
    until(
        Duration::from_secs(15),
        "preferred leaders restored",
        || {
            let (_, parts) = leaders(&b, "balanced")?;
            parts
                .values()
                .all(|(l, replicas, _)| *l == replicas[0])
                .then_some(())
        },
    );
}
