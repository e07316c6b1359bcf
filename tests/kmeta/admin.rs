//! The operator commands (`kmeta topics|reassign|elect-leaders|quorum|brokers|metadata-shell`)
//! against real processes, checked through `--output json`.

use crate::cluster::{until, ProcessCluster, BIN};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Runs `kmeta ARGS --output json`; `(succeeded, parsed stdout or stderr text)`.
fn kmeta(args: &[&str]) -> Result<Value, String> {
    let out = Command::new(BIN)
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("{e}: {text}"))
}

fn ok(args: &[&str]) -> Value {
    kmeta(args).unwrap_or_else(|e| panic!("kmeta {args:?} failed: {e}"))
}

fn live_brokers(bootstrap: &str, n: usize) {
    // 60 s: a cluster starting on 2 busy cores can take a while to register its brokers.
    until(Duration::from_secs(60), "live brokers", || {
        let v = kmeta(&["brokers", "list", "--bootstrap-server", bootstrap]).ok()?;
        let active = v
            .as_array()?
            .iter()
            .filter(|b| b["state"] == "active")
            .count();
        (active == n).then_some(())
    });
}

#[test]
fn topic_election_broker_and_quorum_commands_report_the_cluster_as_it_is() {
    let mut c = ProcessCluster::start(3, 3, "");
    let b = c.bootstrap();
    live_brokers(&b, 3);
    let bs = ["--bootstrap-server", b.as_str()];
    let with = |args: &[&'static str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(bs.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let created = run(with(&[
        "topics",
        "create",
        "--topic",
        "orders",
        "--partitions",
        "4",
        "--replication-factor",
        "3",
    ]));
    assert_eq!(created["partitions"], 4);
    assert_eq!(
        run(with(&["topics", "list"])),
        serde_json::json!(["orders"])
    );
    run(with(&[
        "topics",
        "alter",
        "--topic",
        "orders",
        "--partitions",
        "6",
    ]));
    let described = run(with(&["topics", "describe", "--topic", "orders"]));
    let parts = described[0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 6);
    for p in parts {
        let replicas = p["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3);
        assert!(replicas.contains(&p["leader"]));
        assert!(p["isr"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| replicas.contains(b)));
    }
    // Topic configs: set, shown by describe, removed; an unknown key is refused.
    run(with(&[
        "topics",
        "alter",
        "--topic",
        "orders",
        "--config",
        "retention.ms=60000",
        "--config",
        "unclean.leader.election.enable=true",
    ]));
    let described = run(with(&["topics", "describe", "--topic", "orders"]));
    assert_eq!(
        described[0]["configs"]["retention.ms"], "60000",
        "{described}"
    );
    assert_eq!(
        described[0]["configs"]["unclean.leader.election.enable"],
        "true"
    );
    run(with(&[
        "topics",
        "alter",
        "--topic",
        "orders",
        "--delete-config",
        "retention.ms",
    ]));
    let described = run(with(&["topics", "describe", "--topic", "orders"]));
    assert!(
        described[0]["configs"].get("retention.ms").is_none(),
        "{described}"
    );
    let err = kmeta(
        &with(&[
            "topics",
            "alter",
            "--topic",
            "orders",
            "--config",
            "no.such.key=1",
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    )
    .unwrap_err();
    assert!(err.contains("no.such.key"), "{err}");

    let elected = run(with(&[
        "elect-leaders",
        "--election-type",
        "preferred",
        "--topic",
        "orders",
        "--partition",
        "0",
    ]));
    assert!(
        ["elected", "not needed"].contains(&elected[0]["outcome"].as_str().unwrap()),
        "{elected}"
    );

    let brokers = run(with(&["brokers", "list"]));
    let brokers = brokers.as_array().unwrap();
    assert_eq!(brokers.len(), 3);
    for br in brokers {
        assert_eq!(br["state"], "active");
        assert!(br["epoch"].as_i64().unwrap() > 0);
        assert!(
            br["last_heartbeat_ms_ago"].as_i64().unwrap() < 3_000,
            "{br}"
        );
    }

    // quorum describe names the true leader, before and after the leader is killed.
    let status = run(with(&["quorum", "describe", "--status"]));
    let leader = status["leader_id"].as_u64().unwrap();
    assert!(c.controllers.contains_key(&leader), "{status}");
    assert_eq!(status["current_voters"].as_array().unwrap().len(), 3);
    assert_eq!(status["current_observers"].as_array().unwrap().len(), 3);
    let replication = run(with(&["quorum", "describe", "--replication"]));
    assert_eq!(
        replication
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "Leader")
            .count(),
        1
    );
    c.kill(leader);
    let new_leader = until(
        Duration::from_secs(20),
        "a new leader named by quorum describe",
        || {
            let args = with(&["quorum", "describe", "--status"]);
            let s = kmeta(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok()?;
            let l = s["leader_id"].as_u64()?;
            (l != leader && c.controllers.contains_key(&l)).then_some(l)
        },
    );
    // The named leader is the one the controllers themselves agree on.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agreed = rt.block_on(async {
        let mut k = kmeta::kafka::client::KafkaClient::connect(
            &c.controller_addr(new_leader),
            "t",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        k.send(
            &kafka_protocol::messages::DescribeQuorumRequest::default(),
            0,
        )
        .await
        .unwrap()
        .topics[0]
            .partitions[0]
            .leader_id
            .0 as u64
    });
    assert_eq!(agreed, new_leader);

    run(with(&["topics", "delete", "--topic", "orders"]));
    assert_eq!(run(with(&["topics", "list"])), serde_json::json!([]));

    // Failures: one line, non-zero status.
    let err = kmeta(
        &with(&["topics", "describe", "--topic", "missing"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .unwrap_err();
    assert!(err.contains("missing") && !err.contains('\n'), "{err}");
    let err = kmeta(&["topics", "list", "--bootstrap-server", "127.0.0.1:1"]).unwrap_err();
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn a_kafka_format_reassignment_runs_to_completion_and_the_shell_reads_a_stopped_node() {
    let mut c = ProcessCluster::start(3, 4, "");
    let b = c.bootstrap();
    let dir = c.dir.path().to_path_buf();
    // Broker 4 is down while the topic is created, then comes back: a 3 -> 4 expansion.
    live_brokers(&b, 4);
    c.kill(4);
    let others = c.broker_addr(1);
    until(Duration::from_secs(30), "broker 4 fenced", || {
        let v = kmeta(&["brokers", "list", "--bootstrap-server", &others]).ok()?;
        let four = v.as_array()?.iter().find(|x| x["id"] == 4)?.clone();
        (four["state"] == "fenced").then_some(())
    });
    ok(&[
        "topics",
        "create",
        "--topic",
        "grow",
        "--partitions",
        "8",
        "--replication-factor",
        "3",
        "--bootstrap-server",
        &b,
    ]);
    c.spawn(4);
    live_brokers(&b, 4);

    // generate: a balanced plan moving only broker 4's share (24 replicas / 4 brokers = 6).
    let topics_file = dir.join("topics.json");
    std::fs::write(&topics_file, r#"{"version":1,"topics":[{"topic":"grow"}]}"#).unwrap();
    let plan = ok(&[
        "reassign",
        "generate",
        "--topics-to-move-json-file",
        topics_file.to_str().unwrap(),
        "--broker-list",
        "1,2,3,4",
        "--bootstrap-server",
        &b,
    ]);
    assert_eq!(plan["replicas_moved"], 6, "{plan}");
    let mut load = std::collections::BTreeMap::new();
    for p in plan["proposed"]["partitions"].as_array().unwrap() {
        for r in p["replicas"].as_array().unwrap() {
            *load.entry(r.as_i64().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        load.values().copied().collect::<Vec<i32>>(),
        vec![6, 6, 6, 6]
    );

    // execute --wait with that Kafka-format file, then verify.
    let plan_file = dir.join("plan.json");
    std::fs::write(&plan_file, plan["proposed"].to_string()).unwrap();
    let executed = ok(&[
        "reassign",
        "execute",
        "--reassignment-json-file",
        plan_file.to_str().unwrap(),
        "--wait",
        "--bootstrap-server",
        &b,
    ]);
    assert_eq!(executed["waited"], true);
    let verified = ok(&[
        "reassign",
        "verify",
        "--reassignment-json-file",
        plan_file.to_str().unwrap(),
        "--bootstrap-server",
        &b,
    ]);
    assert_eq!(verified["done"], true, "{verified}");
    assert_eq!(
        ok(&["reassign", "list", "--bootstrap-server", &b]),
        serde_json::json!([])
    );

    // Bad JSON names the line.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\n  \"version\": 1,\n  \"partitions\": [oops]\n}").unwrap();
    let err = kmeta(&[
        "reassign",
        "execute",
        "--reassignment-json-file",
        bad.to_str().unwrap(),
        "--bootstrap-server",
        &b,
    ])
    .unwrap_err();
    assert!(err.contains("line 3"), "{err}");

    // metadata-shell on a stopped controller's directory lists every topic.
    ok(&[
        "topics",
        "create",
        "--topic",
        "second",
        "--partitions",
        "1",
        "--replication-factor",
        "1",
        "--bootstrap-server",
        &b,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    c.kill(101);
    let shell = ok(&[
        "metadata-shell",
        "--dir",
        dir.join("data-101").to_str().unwrap(),
    ]);
    let names: Vec<&str> = shell["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["grow", "second"]);
    assert_eq!(shell["brokers"].as_array().unwrap().len(), 4);
    let dump = Command::new(BIN)
        .args([
            "metadata-shell",
            "--dir",
            dir.join("data-101").to_str().unwrap(),
            "--dump",
        ])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.lines()
            .any(|l| l.contains("Topic(") && l.contains("second")),
        "{dump}"
    );
    assert!(dump.lines().all(|l| l
        .split_whitespace()
        .next()
        .is_some_and(|o| o.parse::<u64>().is_ok())));
}

/// `GET /metrics` from node `port`: `name → value` for unlabeled samples.
fn scrape(port: u16) -> Option<std::collections::BTreeMap<String, f64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut out = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ')?;
        out.insert(name.to_string(), value.parse().ok()?);
    }
    Some(out)
}

#[test]
fn the_metrics_endpoint_serves_kraft_named_metrics_in_prometheus_text() {
    let c = ProcessCluster::start(3, 3, "");
    let b = c.bootstrap();
    live_brokers(&b, 3);
    ok(&[
        "topics",
        "create",
        "--topic",
        "m",
        "--partitions",
        "5",
        "--replication-factor",
        "2",
        "--bootstrap-server",
        &b,
    ]);
    let status = ok(&["quorum", "describe", "--status", "--bootstrap-server", &b]);
    let leader = status["leader_id"].as_u64().unwrap();
    let m = until(Duration::from_secs(10), "the leader's metrics", || {
        let m = scrape(c.metrics[&leader])?;
        (m.get("kmeta_GlobalPartitionCount") == Some(&5.0)).then_some(m)
    });
    assert_eq!(m["kmeta_ActiveControllerCount"], 1.0);
    assert_eq!(m["kmeta_ActiveBrokerCount"], 3.0);
    assert_eq!(m["kmeta_FencedBrokerCount"], 0.0);
    assert_eq!(m["kmeta_GlobalTopicCount"], 1.0);
    assert_eq!(m["kmeta_OfflinePartitionsCount"], 0.0);
    assert!(m["kmeta_LastAppliedRecordOffset"] > 0.0);
    assert!(m["kmeta_LastCommittedRecordOffset"] >= m["kmeta_LastAppliedRecordOffset"] - 1.0);
    assert!(m["kmeta_Elections_total"] >= 1.0, "{m:?}");
    assert!(m["kmeta_CommitLatencyMs_count"] >= 1.0);
    assert!(m["kmeta_EventQueueTimeMs_count"] >= 1.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("kmeta_BrokerHeartbeatAgeMs{broker=")),
        "{m:?}"
    );
    let follower = *c.controllers.keys().find(|id| **id != leader).unwrap();
    assert_eq!(
        scrape(c.metrics[&follower]).unwrap()["kmeta_ActiveControllerCount"],
        0.0
    );
    let broker = scrape(c.metrics[&1]).unwrap();
    assert_eq!(broker["kmeta_GlobalPartitionCount"], 5.0);
    assert_eq!(broker["kmeta_ActiveBrokerCount"], 3.0);
    // The data plane: 5 partitions x 2 replicas over 3 brokers, each led once.
    let brokers: Vec<_> = (1..=3)
        .map(|id| {
            until(Duration::from_secs(10), "broker metrics", || {
                let m = scrape(c.metrics[&id])?;
                (m.get("kmeta_UnderReplicatedPartitions") == Some(&0.0)).then_some(m)
            })
        })
        .collect();
    let sum = |k: &str| brokers.iter().map(|m| m[k]).sum::<f64>();
    assert_eq!(sum("kmeta_PartitionCount"), 10.0);
    assert_eq!(sum("kmeta_LeaderCount"), 5.0);
    assert_eq!(sum("kmeta_UnderMinIsrPartitionCount"), 0.0);
    assert!(brokers.iter().all(|m| m.contains_key("kmeta_LogSizeBytes")));
}
