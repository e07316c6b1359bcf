//! The data-plane load of the fault suite: producers with acks=all (idempotent and not) on a
//! topic with replication factor 3 and `min.insync.replicas=2`, each keeping a ledger of what
//! was acknowledged at which offset. The checks: every acknowledged message is at its
//! offset; nothing appears that was never sent; an idempotent producer's message appears at
//! most once; a message acknowledged before another was sent precedes it; and every replica's log
//! file holds the same batches as the leader up to the high watermark.

use crate::broker::log::batch;
use crate::kafka::client::KafkaClient;
use crate::kafka::wire::sb;
use kafka_protocol::messages::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The topic the producers write.
pub const TOPIC: &str = "data";
/// Its partitions.
pub const PARTITIONS: i32 = 3;
/// How long a producer waits for an answer (the request's own timeout is 10 s).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the producers were told.
#[derive(Clone, Default)]
pub struct DataLedger {
    /// Every message value ever sent.
    pub attempted: BTreeSet<String>,
    /// Acknowledged values: (partition, offset).
    pub acked: BTreeMap<String, (i32, i64)>,
    /// Values sent by idempotent producers.
    pub idempotent: BTreeSet<String>,
    /// Produce requests acknowledged.
    pub acknowledged: u64,
    /// Produce requests with an unknown outcome.
    pub indeterminate: u64,
}

fn lock(l: &Mutex<DataLedger>) -> std::sync::MutexGuard<'_, DataLedger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the topic (retrying until a broker says it exists).
pub async fn create_topic(brokers: &[String]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for addr in brokers {
            let Ok(mut c) = super::connect(addr, "kmeta-faults", Duration::from_secs(5)).await
            else {
                continue;
            };
            let config = create_topics_request::CreatableTopicConfig::default()
                .with_name(sb("min.insync.replicas"))
                .with_value(Some(sb("2")));
            let r = CreateTopicsRequest::default()
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(sb(TOPIC)))
                    .with_num_partitions(PARTITIONS)
                    .with_replication_factor(3)
                    .with_configs(vec![config])])
                .with_timeout_ms(10_000);
            if let Ok(resp) = c.send(&r, 7).await {
                let code = resp.topics.first().map_or(-1, |t| t.error_code);
                if code == 0 || code == 36 {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("topic {TOPIC} could not be created"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The leader of `partition` and its leader epoch, asked of any broker.
pub async fn leader_of(brokers: &[String], partition: i32) -> Option<i32> {
    for addr in brokers {
        let Ok(mut c) = super::connect(addr, "kmeta-faults", Duration::from_secs(3)).await else {
            continue;
        };
        let r =
            MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(sb(TOPIC))))]));
        let Ok(meta) = c.send(&r, 12).await else {
            continue;
        };
        if let Some(p) = meta
            .topics
            .first()
            .and_then(|t| t.partitions.iter().find(|p| p.partition_index == partition))
        {
            if p.leader_id.0 > 0 {
                return Some(p.leader_id.0);
            }
        }
    }
    None
}

async fn init_producer_id(brokers: &[String]) -> Option<(i64, i16)> {
    for addr in brokers {
        let Ok(mut c) = super::connect(addr, "kmeta-faults", Duration::from_secs(3)).await else {
            continue;
        };
        let r = InitProducerIdRequest::default()
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        if let Ok(resp) = c.send(&r, 4).await {
            if resp.error_code == 0 {
                return Some((resp.producer_id.0, resp.producer_epoch));
            }
        }
    }
    None
}

/// One producer: messages `p{id}-{n}` to partition `id % PARTITIONS`, one request in flight,
/// acks=all. An idempotent producer retries a message with its sequence number until it is
/// acknowledged; the other moves on to a new message after any failure.
pub async fn producer(
    id: u32,
    idempotent: bool,
    brokers: Vec<String>,
    ledger: Arc<Mutex<DataLedger>>,
    stop: Arc<AtomicBool>,
) {
    let partition = (id as i32) % PARTITIONS;
    let mut n = 0u64;
    let mut pid: Option<(i64, i16)> = None;
    let mut seq = 0i32;
    let mut pending: Option<String> = None;
    let mut conn: Option<KafkaClient> = None;
    while !stop.load(Ordering::SeqCst) {
        if idempotent && pid.is_none() {
            pid = init_producer_id(&brokers).await;
            seq = 0;
            if pid.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let value = match &pending {
            Some(v) => v.clone(),
            None => {
                n += 1;
                let v = format!("p{id}-{n}");
                let mut l = lock(&ledger);
                l.attempted.insert(v.clone());
                if idempotent {
                    l.idempotent.insert(v.clone());
                }
                v
            }
        };
        if conn.is_none() {
            let Some(leader) = leader_of(&brokers, partition).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                pending = idempotent.then_some(value);
                continue;
            };
            let addr = &brokers[(leader - 1) as usize % brokers.len()];
            match super::connect(addr, "kmeta-faults-producer", Duration::from_secs(3)).await {
                Ok(mut c) => {
                    c.set_timeout(PRODUCE_TIMEOUT);
                    conn = Some(c);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    pending = idempotent.then_some(value);
                    continue;
                }
            }
        }
        let producer = pid.map(|(p, e)| (p, e, seq));
        let records = batch::build(&[value.as_bytes()], crate::controller::wall_ms(), producer);
        let r = crate::kafka::client::produce_one(TOPIC, partition, -1, 10_000, records);
        let c = conn.as_mut().expect("connected");
        let answer = c.send(&r, 7).await;
        let (code, offset) = match &answer {
            Ok(resp) => resp
                .responses
                .first()
                .and_then(|t| t.partition_responses.first())
                .map_or((-1, -1), |p| (p.error_code, p.base_offset)),
            Err(_) => (-2, -1),
        };
        match code {
            0 => {
                let mut l = lock(&ledger);
                l.acked.insert(value, (partition, offset));
                l.acknowledged += 1;
                seq = seq.wrapping_add(1);
                pending = None;
            }
            // Out of order or fenced: this producer session is over; the message may or may
            // not be in the log.
            45 | 47 => {
                lock(&ledger).indeterminate += 1;
                pid = None;
                pending = None;
            }
            _ => {
                // A connection loss, a timeout, NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS...
                lock(&ledger).indeterminate += 1;
                if code < 0 || matches!(code, 6 | 74 | 75 | 5 | 3) {
                    conn = None;
                }
                pending = idempotent.then_some(value);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `(offset, value)` of every record in whole batches of `bytes`, up to `below`.
fn records(bytes: &[u8], below: i64) -> Result<Vec<(i64, String)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(h) = batch::BatchHeader::parse(&bytes[at..]) else {
            break;
        };
        if at + h.size() > bytes.len() {
            break;
        }
        if h.base_offset >= below {
            break;
        }
        let values = batch::values(&bytes[at..at + h.size()])
            .ok_or_else(|| format!("a malformed batch at offset {}", h.base_offset))?;
        for (i, v) in values.into_iter().enumerate() {
            let v = String::from_utf8_lossy(&v.unwrap_or_default()).to_string();
            out.push((h.base_offset + i as i64, v));
        }
        at += h.size();
    }
    Ok(out.into_iter().filter(|(o, _)| *o < below).collect())
}

/// Reads a partition from its leader as a consumer, from the start to the HW.
async fn read_partition(addr: &str, partition: i32) -> Result<(i64, Vec<(i64, String)>), String> {
    let mut c = super::connect(addr, "kmeta-faults-check", Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<(i64, String)> = Vec::new();
    let mut offset = 0i64;
    loop {
        let r = crate::kafka::client::consumer_fetch(TOPIC, partition, offset, 0, 0, 8 << 20);
        let resp = c.send(&r, 11).await.map_err(|e| e.to_string())?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or("an empty fetch response")?;
        if p.error_code != 0 {
            return Err(format!("fetch error {}", p.error_code));
        }
        let hw = p.high_watermark;
        let got = records(p.records.as_deref().unwrap_or(&[]), hw)?;
        let got: Vec<_> = got.into_iter().filter(|(o, _)| *o >= offset).collect();
        match got.last() {
            Some((last, _)) => {
                offset = last + 1;
                out.extend(got);
            }
            None => return Ok((hw, out)),
        }
        if offset >= hw {
            return Ok((hw, out));
        }
    }
}

/// The records below `below` in a replica's log files (`<log dir>/data-<partition>`).
fn read_replica_files(dir: &Path, below: i64) -> Result<Vec<(i64, String)>, String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        out.extend(records(&bytes, below)?);
    }
    Ok(out)
}

/// A producer's number `n` and name of a value `p{id}-{n}`.
fn numbered(value: &str) -> Option<(&str, u64)> {
    let (who, n) = value.rsplit_once('-')?;
    Some((who, n.parse().ok()?))
}

/// Kafka's ordering promise to a producer with one request in flight: a message acknowledged
/// before another was sent precedes it in the log. Nothing is promised about a message whose
/// send failed and was not retried: the request may still reach a broker later (the kernel
/// delivers a closed connection's unacknowledged bytes after a partition heals, or a paused
/// broker reads it on resuming) and be appended after messages sent since. The violations in
/// `log` (one partition's `(offset, value)`), given every acknowledged `(partition, offset)`.
fn order_violations(
    partition: i32,
    log: &[(i64, String)],
    acked: &BTreeMap<String, (i32, i64)>,
) -> Vec<String> {
    // Per producer: its acknowledged messages here by number, each with the greatest offset of
    // any acknowledged message numbered at or below it.
    let mut by_producer: BTreeMap<&str, BTreeMap<u64, (i64, &str)>> = BTreeMap::new();
    for (value, (p, offset)) in acked {
        if *p != partition {
            continue;
        }
        if let Some((who, n)) = numbered(value) {
            by_producer
                .entry(who)
                .or_default()
                .insert(n, (*offset, value));
        }
    }
    for acks in by_producer.values_mut() {
        let mut best: Option<(i64, &str)> = None;
        for at in acks.values_mut() {
            if best.is_none_or(|(b, _)| at.0 > b) {
                best = Some(*at);
            }
            *at = best.expect("set above");
        }
    }
    let mut v = Vec::new();
    for (offset, value) in log {
        let Some((who, n)) = numbered(value) else {
            continue;
        };
        let before = by_producer
            .get(who)
            .and_then(|p| p.range(..n).next_back())
            .map(|(_, b)| *b);
        if let Some((at, earlier)) = before {
            if at > *offset {
                v.push(format!(
                    "{value} at {TOPIC}-{partition}@{offset} precedes {earlier} (@{at}), acknowledged before it was sent"
                ));
            }
        }
    }
    v
}

/// Every data-plane property; the violations. `log_dirs` maps broker id to its `log.dirs`.
pub async fn check(
    brokers: &[String],
    log_dirs: &BTreeMap<i32, PathBuf>,
    ledger: &DataLedger,
) -> Vec<String> {
    let mut v = Vec::new();
    for partition in 0..PARTITIONS {
        let Some(leader) = leader_of(brokers, partition).await else {
            v.push(format!("{TOPIC}-{partition} has no leader"));
            continue;
        };
        let addr = &brokers[(leader - 1) as usize % brokers.len()];
        let (hw, log) = match read_partition(addr, partition).await {
            Ok(x) => x,
            Err(e) => {
                v.push(format!(
                    "{TOPIC}-{partition}: reading from leader {leader}: {e}"
                ));
                continue;
            }
        };
        let at: BTreeMap<i64, &String> = log.iter().map(|(o, s)| (*o, s)).collect();
        for (value, (p, offset)) in &ledger.acked {
            if *p != partition {
                continue;
            }
            match at.get(offset) {
                Some(found) if *found == value => {}
                found => v.push(format!(
                    "acknowledged {value} at {TOPIC}-{partition}@{offset} reads {found:?}"
                )),
            }
        }
        let mut seen = BTreeSet::new();
        for (offset, value) in &log {
            if !ledger.attempted.contains(value) {
                v.push(format!(
                    "{TOPIC}-{partition}@{offset} holds {value}, never sent"
                ));
            }
            if ledger.idempotent.contains(value) && !seen.insert(value.clone()) {
                v.push(format!(
                    "idempotent {value} appears twice ({TOPIC}-{partition}@{offset})"
                ));
            }
        }
        v.extend(order_violations(partition, &log, &ledger.acked));
        for (b, dir) in log_dirs {
            match read_replica_files(&dir.join(format!("{TOPIC}-{partition}")), hw) {
                Ok(replica) if replica == log => {}
                Ok(replica) => {
                    let diverge = replica
                        .iter()
                        .zip(log.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(replica.len().min(log.len()));
                    v.push(format!(
                        "broker {b}'s replica of {TOPIC}-{partition} differs from leader {leader}'s below the HW {hw}: {} vs {} records, first difference at index {diverge}",
                        replica.len(),
                        log.len()
                    ));
                }
                Err(e) => v.push(format!("broker {b}'s replica of {TOPIC}-{partition}: {e}")),
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(values: &[&str]) -> Vec<(i64, String)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, v.to_string()))
            .collect()
    }

    fn acked(values: &[(&str, i64)]) -> BTreeMap<String, (i32, i64)> {
        values
            .iter()
            .map(|(v, o)| (v.to_string(), (0, *o)))
            .collect()
    }

    #[test]
    fn a_failed_message_delivered_late_may_follow_later_messages() {
        // p1-2 failed (never acknowledged), then p1-3 was acknowledged; p1-2's request reached
        // the leader afterwards.
        let l = log(&["p1-1", "p1-3", "p1-2"]);
        assert!(order_violations(0, &l, &acked(&[("p1-1", 0), ("p1-3", 1)])).is_empty());
    }

    #[test]
    fn a_message_before_one_acknowledged_ahead_of_it_is_a_violation() {
        // p1-3 was sent only after p1-2 was acknowledged at offset 2: it cannot be at 1.
        let l = log(&["p1-1", "p1-3", "p1-2"]);
        let v = order_violations(0, &l, &acked(&[("p1-1", 0), ("p1-2", 2)]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("p1-3"), "{v:?}");
        // Acknowledged messages out of order are caught too, and other producers are apart.
        let l = log(&["p2-9", "p1-2", "p1-1"]);
        let v = order_violations(0, &l, &acked(&[("p1-1", 2), ("p1-2", 1), ("p2-9", 0)]));
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
