//! `kmeta bench produce`: the data plane. Three controllers and three brokers run in this
//! process; a topic with replication factor 3 and `min.insync.replicas=2` takes messages of
//! 1 KiB with acks=all:
//!
//! - **throughput**: N producer connections, each bound to one partition and its leader, send
//!   one batch of B messages per request and wait for the acknowledgement (the HW passed the
//!   batch: all three replicas have it).
//! - **produce latency**: request → acknowledgement, per request.
//! - **end-to-end latency**: a consumer per partition long-polls the leader; each batch
//!   carries its send time, so produce → consumed is measured per batch.
//! - **the disk**: the same run writes 256 MiB sequentially to the data directory and fsyncs,
//!   the rate a single copy could be written at.

use super::brokers::start_cluster;
use crate::broker::log::batch;
use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::*;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "produce-bench";

/// What `kmeta bench produce` measured.
#[derive(Debug)]
pub struct ProduceReport {
    /// Partitions, producers, messages per batch, message bytes.
    pub shape: (i32, usize, usize, usize),
    /// Messages acknowledged per second.
    pub messages_per_s: f64,
    /// Payload MB/s acknowledged (10^6 bytes).
    pub mb_per_s: f64,
    /// Produce request → acknowledgement: p50, p99, max (ms).
    pub produce_ms: (f64, f64, f64),
    /// Produce → consumed: p50, p99, max (ms), over this many batches.
    pub end_to_end_ms: (f64, f64, f64, usize),
    /// The disk's sequential write rate with an fsync at the end (MB/s).
    pub disk_mb_per_s: f64,
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| super::percentile(&v, q).unwrap_or(0.0);
    (at(0.5), at(0.99), at(1.0))
}

/// Writes `mb` MiB to a file in `dir` in 1 MiB writes, fsyncs, and returns MB/s.
fn disk_rate(dir: &Path, mb: usize) -> Result<f64, String> {
    let path = dir.join("disk-rate.tmp");
    let chunk = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    for _ in 0..mb {
        f.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok((mb as f64 * (1 << 20) as f64) / secs / 1e6)
}

async fn leaders(addr: &str, partitions: i32) -> Result<Vec<i32>, String> {
    let mut c = KafkaClient::connect(addr, "kmeta-bench", Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .send(
                &MetadataRequest::default()
                    .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                    )
                    .with_name(Some(TopicName(sb(TOPIC))))])),
                12,
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(t) = r.topics.first() {
            let mut l: Vec<(i32, i32)> = t
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.leader_id.0))
                .collect();
            l.sort();
            if l.len() == partitions as usize
                && l.iter().all(|(_, b)| *b > 0)
                && t.partitions.iter().all(|p| p.isr_nodes.len() == 3)
            {
                return Ok(l.into_iter().map(|(_, b)| b).collect());
            }
        }
        if Instant::now() > deadline {
            return Err("the benchmark topic never got leaders and full ISRs".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the benchmark with its data under `dir`.
pub async fn produce(
    dir: &Path,
    seconds: u64,
    partitions: i32,
    producers: usize,
    batch_messages: usize,
    message_bytes: usize,
) -> Result<ProduceReport, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let disk_mb_per_s = disk_rate(dir, 256)?;
    let (quorum, brokers) = start_cluster(dir).await?;
    let addrs: Vec<String> = brokers.iter().map(|(a, _)| a.clone()).collect();
    let mut admin = KafkaClient::connect(&addrs[0], "kmeta-bench", Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let created = admin
        .send(
            &CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(sb(TOPIC)))
                    .with_num_partitions(partitions)
                    .with_replication_factor(3)
                    .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                        .with_name(sb("min.insync.replicas"))
                        .with_value(Some(sb("2")))]),
            ]),
            7,
        )
        .await
        .map_err(|e| e.to_string())?;
    if created.topics.first().map_or(-1, |t| t.error_code) != 0 {
        return Err(format!("creating the topic: {created:?}"));
    }
    let leader_of = leaders(&addrs[0], partitions).await?;
    let addr_of = |broker: i32| addrs[(broker - 1) as usize].clone();
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let produce_lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let e2e_lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut tasks = Vec::new();
    // Consumers: one per partition, from the start.
    for p in 0..partitions {
        let (addr, stop, e2e) = (
            addr_of(leader_of[p as usize]),
            stop.clone(),
            e2e_lat.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut c =
                KafkaClient::connect(&addr, "kmeta-bench-consumer", Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
            let mut offset = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let r = crate::kafka::client::consumer_fetch(TOPIC, p, offset, 500, 1, 16 << 20);
                let resp = c.send(&r, 11).await.map_err(|e| e.to_string())?;
                let now = origin.elapsed().as_secs_f64() * 1e3;
                let Some(pd) = resp.responses.first().and_then(|t| t.partitions.first()) else {
                    continue;
                };
                let bytes = pd.records.as_deref().unwrap_or(&[]);
                let Ok(parts) = batch::split(bytes) else {
                    continue;
                };
                let mut samples = Vec::new();
                for (at, h) in parts {
                    if h.base_offset < offset {
                        continue;
                    }
                    offset = h.next_offset();
                    if let Some(Some(v)) =
                        batch::values(&bytes[at..at + h.size()]).and_then(|v| v.into_iter().next())
                    {
                        if v.len() >= 8 {
                            let sent = f64::from_bits(u64::from_be_bytes(
                                v[..8].try_into().expect("8 bytes"),
                            ));
                            samples.push(now - sent);
                        }
                    }
                }
                e2e.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(samples);
            }
            Ok::<(), String>(())
        }));
    }
    for i in 0..producers {
        let p = (i % partitions as usize) as i32;
        let addr = addr_of(leader_of[p as usize]);
        let (stop, acked, lat) = (stop.clone(), acked.clone(), produce_lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut c =
                KafkaClient::connect(&addr, "kmeta-bench-producer", Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
            let body = vec![b'x'; message_bytes];
            while !stop.load(Ordering::Relaxed) {
                let sent = origin.elapsed().as_secs_f64() * 1e3;
                let mut first = body.clone();
                first[..8].copy_from_slice(&sent.to_bits().to_be_bytes());
                let mut values: Vec<&[u8]> = vec![&first];
                values.extend(std::iter::repeat_n(body.as_slice(), batch_messages - 1));
                let records = batch::build(&values, crate::controller::wall_ms(), None);
                let r = crate::kafka::client::produce_one(TOPIC, p, -1, 30_000, records);
                let resp = c.send(&r, 9).await.map_err(|e| e.to_string())?;
                let code = resp
                    .responses
                    .first()
                    .and_then(|t| t.partition_responses.first())
                    .map_or(-1, |p| p.error_code);
                if code != 0 {
                    return Err(format!("produce failed with error {code}"));
                }
                let done = origin.elapsed().as_secs_f64() * 1e3;
                if !stop.load(Ordering::Relaxed) {
                    acked.fetch_add(batch_messages as u64, Ordering::Relaxed);
                    lat.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(done - sent);
                }
            }
            Ok::<(), String>(())
        }));
    }
    // A second of warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = acked.load(Ordering::Relaxed);
    produce_lat
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    e2e_lat.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = acked.load(Ordering::Relaxed) - before;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let produce_ms = percentiles(std::mem::take(
        &mut *produce_lat.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    let e2e = std::mem::take(&mut *e2e_lat.lock().unwrap_or_else(|p| p.into_inner()));
    let samples = e2e.len();
    let (a, b, c) = percentiles(e2e);
    for (_, b) in brokers {
        let _ = tokio::time::timeout(Duration::from_secs(10), b.shutdown()).await;
    }
    quorum.stop().await;
    Ok(ProduceReport {
        shape: (partitions, producers, batch_messages, message_bytes),
        messages_per_s: n as f64 / secs,
        mb_per_s: n as f64 * message_bytes as f64 / secs / 1e6,
        produce_ms,
        end_to_end_ms: (a, b, c, samples),
        disk_mb_per_s,
    })
}
