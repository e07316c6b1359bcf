//! The data plane with real processes and real clients: produce with acks=all, read back, and
//! no acknowledged message lost when a partition leader is killed.

use crate::cluster::{client, ProcessCluster};
use kmeta::faults::data;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn wait_for_brokers(c: &ProcessCluster) {
    crate::cluster::until(Duration::from_secs(30), "three live brokers", || {
        let out = std::process::Command::new("kcat")
            .args(["-b", &c.bootstrap(), "-L", "-J", "-m", "5"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["brokers"].as_array()?.len() == 3).then_some(())
    });
}

#[test]
fn every_real_client_produces_with_acks_all_and_reads_back_what_it_wrote_in_order() {
    let c = ProcessCluster::start(3, 3, "");
    wait_for_brokers(&c);
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
    wait_for_brokers(&c);
    let brokers: Vec<String> = (1..=3).map(|id| c.broker_addr(id)).collect();
    let dirs: BTreeMap<i32, PathBuf> = (1..=3)
        .map(|id| (id, c.dir.path().join(format!("data-{id}"))))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(data::create_topic(&brokers)).unwrap();
    let ledger = Arc::new(Mutex::new(data::DataLedger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
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
    for round in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        let leader = rt
            .block_on(data::leader_of(&brokers, round % data::PARTITIONS))
            .expect("a leader");
        c.kill(leader as u64);
        std::thread::sleep(Duration::from_secs(5));
        c.spawn(leader as u64);
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        let _ = rt.block_on(p);
    }
    let l = ledger.lock().unwrap();
    assert!(
        l.acknowledged > 50,
        "only {} messages acknowledged",
        l.acknowledged
    );
    let start = Instant::now();
    loop {
        let violations = rt.block_on(data::check(&brokers, &dirs, &l));
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
