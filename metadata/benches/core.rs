//! Micro-benchmarks of the pure core (a harness, not tests). Run:
//!
//!     cargo bench -p kmeta-metadata --bench core
//!
//! Measures: creating 100,000 partitions (decisions + replay), fencing a broker that leads
//! 100,000 partitions, fencing a broker with 1,000 partitions inside that big cluster versus
//! alone (fencing must cost O(partitions it hosts)), and replaying 1,000,000 records (decoded,
//! and decode + replay). Each case runs several times; the table shows the median and the best.
//! Then the heap an image holds per partition (1,000,000 partitions, RF 3, topics of 1,000, as
//! `kmeta bench scale` creates them), counted by the allocator: every broker and controller
//! holds one such image, so it bounds their memory from below; and, on that image, the fence
//! of a broker leading a third of it (its leader moves replayed, and replayed into a broker's
//! delta). `cargo bench -p kmeta-metadata --bench core -- million` runs only these.

use kmeta_metadata::controller::cluster::{
    process_heartbeat, register_broker, BrokerHeartbeatRequest, BrokerRegistrationRequest,
};
use kmeta_metadata::controller::heartbeat::BrokerHeartbeatTracker;
use kmeta_metadata::controller::replication::election::{
    balance_partition_leaders, balance_partition_leaders_after, remove_broker_from_isrs,
};
use kmeta_metadata::controller::replication::topics::{create_topics, CreatableTopic};
use kmeta_metadata::controller::ControllerConfig;
use kmeta_metadata::delta::ImageDelta;
use kmeta_metadata::record::*;
use kmeta_metadata::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Cluster {
    image: MetadataImage,
    offset: i64,
    config: ControllerConfig,
    tracker: BrokerHeartbeatTracker,
    next_topic: u128,
}

impl Cluster {
    fn new(brokers: i32) -> Cluster {
        let mut c = Cluster {
            image: MetadataImage::new(),
            offset: 0,
            config: ControllerConfig {
                cluster_id: "bench".into(),
                ..ControllerConfig::default()
            },
            tracker: BrokerHeartbeatTracker::new(),
            next_topic: 1,
        };
        for id in 0..brokers {
            c.add_broker(id);
        }
        c
    }

    fn add_broker(&mut self, id: i32) {
        let req = BrokerRegistrationRequest {
            broker_id: BrokerId(id),
            cluster_id: "bench".into(),
            incarnation_id: uuid::Uuid::from_u128(id as u128 + 1),
            listeners: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "h".into(),
                port: 1,
                security_protocol: 0,
            }],
            features: vec![],
            rack: None,
            previous_broker_epoch: None,
            log_dir_intact: false,
        };
        let r = register_broker(
            &self.image,
            &self.config,
            &self.tracker,
            &req,
            LogOffset(self.offset),
            0,
        )
        .unwrap();
        self.apply(&r.records);
        let hb = BrokerHeartbeatRequest {
            broker_id: BrokerId(id),
            broker_epoch: self.image.broker(BrokerId(id)).unwrap().broker_epoch,
            current_metadata_offset: self.image.offset(),
            want_fence: false,
            want_shut_down: false,
        };
        let r = process_heartbeat(
            &self.image,
            &self.config,
            &mut self.tracker,
            &hb,
            LogOffset(self.offset),
            0,
        )
        .unwrap();
        self.apply(&r.records);
    }

    fn apply(&mut self, records: &[MetadataRecord]) {
        for r in records {
            self.image.replay(LogOffset(self.offset), r).unwrap();
        }
        self.offset += 1;
    }

    /// Creates topics of `per_topic` partitions until `total` partitions exist, each placed on
    /// `assignment` (or automatically when empty).
    fn create_partitions(
        &mut self,
        prefix: &str,
        total: usize,
        per_topic: i32,
        assignment: &[i32],
    ) {
        let topics = total / per_topic as usize;
        for t in 0..topics {
            self.next_topic += 1;
            let creatable = CreatableTopic {
                name: format!("{prefix}-{t}"),
                topic_id: uuid::Uuid::from_u128(self.next_topic << 64 | 0x5eed),
                num_partitions: if assignment.is_empty() { per_topic } else { -1 },
                replication_factor: if assignment.is_empty() { 3 } else { -1 },
                assignments: if assignment.is_empty() {
                    vec![]
                } else {
                    (0..per_topic)
                        .map(|p| (p, assignment.iter().map(|b| BrokerId(*b)).collect()))
                        .collect()
                },
                configs: vec![],
            };
            let r = create_topics(&self.image, &self.config, &[creatable], false);
            assert!(r.reply[0].error.is_none(), "{:?}", r.reply[0]);
            self.apply(&r.records);
        }
    }
}

fn measure(name: &str, runs: usize, mut f: impl FnMut() -> Duration) {
    let mut times: Vec<Duration> = (0..runs).map(|_| f()).collect();
    times.sort();
    println!(
        "| {name} | {:.1} ms | {:.1} ms | {runs} |",
        times[runs / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );
}

fn fence_cost(cluster: &Cluster, broker: i32) -> Duration {
    let mut image = cluster.image.clone();
    let start = Instant::now();
    let records = remove_broker_from_isrs(&image, &cluster.config, BrokerId(broker));
    for r in &records {
        image.replay(LogOffset(cluster.offset), r).unwrap();
    }
    let elapsed = start.elapsed();
    assert!(!records.is_empty());
    std::hint::black_box(image);
    elapsed
}

/// What a broker does with a fence it reads from the log: replay the records into its delta
/// (the controller decided them).
fn fence_on_broker(cluster: &Cluster, broker: i32) -> Duration {
    let records = remove_broker_from_isrs(&cluster.image, &cluster.config, BrokerId(broker));
    let mut image = cluster.image.clone();
    let mut delta = ImageDelta::default();
    let start = Instant::now();
    for r in &records {
        delta
            .replay(&mut image, LogOffset(cluster.offset), r)
            .unwrap();
    }
    let elapsed = start.elapsed();
    assert!(delta.partitions.len() >= 100_000);
    std::hint::black_box((image, delta));
    elapsed
}

fn main() {
    println!("| case | median | best | runs |");
    println!("|---|---|---|---|");
    // `cargo bench -p kmeta-metadata --bench core -- million` runs the 1,000,000-partition
    // cases alone (for a profile of them).
    // `-- creates` runs the creation cases alone.
    if std::env::args().any(|a| a == "creates") {
        creates();
        return;
    }
    if !std::env::args().any(|a| a == "million") {
        small_cases();
        creates();
    }
    million();
}

/// Runs of each creation case: `KMETA_BENCH_RUNS`, 5 unless set (more for a profile).
fn runs() -> usize {
    std::env::var("KMETA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// A scattered 64-bit value for the `i`th thing (splitmix64): topic ids and names as random
/// as real ones, from no randomness.
fn scatter(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49eb_133c_e111);
    z ^ (z >> 31)
}

/// Creations as the cluster meets them under load (`kmeta bench compare --workloads create`):
/// topics of one partition, RF 3, random ids and names, decided 32 to an entry, and each
/// entry replayed onto a copy of the image the entry before left, which a reader still
/// holds (as a broker's published image is, and a controller's was), or in place: the cost
/// per topic with `present` topics already there. Topic ids random (`KMETA_BENCH_ORDERED_IDS=1`:
/// time first, as the controller makes them), topic names random.
fn creates() {
    // `KMETA_BENCH_ORDERED_IDS=1`: topic ids that grow with creation (a time prefix, as
    // UUIDv7), rather than random.
    let ordered = std::env::var("KMETA_BENCH_ORDERED_IDS").is_ok_and(|v| v == "1");
    for present in [100usize, 10_000, 100_000] {
        let mut c = Cluster::new(3);
        let mut n = 0u64;
        let entry = |c: &mut Cluster, n: &mut u64, topics: usize| {
            let creatable: Vec<CreatableTopic> = (0..topics)
                .map(|_| {
                    *n += 1;
                    let id = scatter(*n);
                    CreatableTopic {
                        name: format!("c-{:016x}", scatter(id)),
                        topic_id: if ordered {
                            uuid::Uuid::from_u64_pair(*n, id)
                        } else {
                            uuid::Uuid::from_u64_pair(id, scatter(id ^ 1))
                        },
                        num_partitions: 1,
                        replication_factor: 3,
                        assignments: vec![],
                        configs: vec![],
                    }
                })
                .collect();
            let r = create_topics(&c.image, &c.config, &creatable, false);
            assert!(r.reply.iter().all(|t| t.error.is_none()));
            r.records
        };
        while (n as usize) < present {
            let records = entry(&mut c, &mut n, 100.min(present));
            c.image.replay_batch(LogOffset(c.offset), &records).unwrap();
            c.offset += 1;
        }
        let entries: Vec<Vec<MetadataRecord>> = {
            let mut probe = c.image.clone();
            let mut out = Vec::new();
            for _ in 0..100 {
                let mut scratch = Cluster {
                    image: probe.clone(),
                    ..Cluster::new(0)
                };
                let records = entry(&mut scratch, &mut n, 32);
                probe.replay_batch(LogOffset(c.offset), &records).unwrap();
                out.push(records);
            }
            out
        };
        measure(
            &format!("create 3,200 topics (1 partition, RF 3), 32 an entry, with {present} present: replay each onto a held copy"),
            runs(),
            || {
                let mut image = c.image.clone();
                let mut held = Vec::new();
                let start = Instant::now();
                for records in &entries {
                    let mut next = image.clone();
                    next.replay_batch(LogOffset(c.offset), records).unwrap();
                    held.push(std::mem::replace(&mut image, next));
                    if held.len() > 1 {
                        held.remove(0);
                    }
                }
                let elapsed = start.elapsed();
                std::hint::black_box((image, held));
                elapsed
            },
        );
        measure(
            &format!("create 3,200 topics (1 partition, RF 3), 32 an entry, with {present} present: replay each in place"),
            runs(),
            || {
                // A copy that shares nothing, as one a process has long owned alone.
                let mut image = MetadataImage::new();
                image
                    .replay_batch(LogOffset(c.offset), &c.image.to_records())
                    .unwrap();
                let start = Instant::now();
                for records in &entries {
                    image.replay_batch(LogOffset(c.offset), records).unwrap();
                }
                let elapsed = start.elapsed();
                std::hint::black_box(image);
                elapsed
            },
        );
    }
}

fn small_cases() {
    measure(
        "create 100,000 partitions (20 topics x 5,000, RF 3, 6 brokers): decide + replay",
        5,
        || {
            let mut c = Cluster::new(6);
            let start = Instant::now();
            c.create_partitions("t", 100_000, 5_000, &[]);
            let elapsed = start.elapsed();
            assert_eq!(c.image.partition_count(), 100_000);
            elapsed
        },
    );

    let mut big = Cluster::new(8);
    big.create_partitions("led-by-0", 100_000, 5_000, &[0, 1, 2]);
    big.create_partitions("small", 1_000, 1_000, &[6, 7]);
    measure(
        "fence broker leading 100,000 partitions: decide + replay",
        5,
        || fence_cost(&big, 0),
    );
    measure(
        "fence broker leading 100,000 partitions, on a broker: replay into its delta",
        5,
        || fence_on_broker(&big, 0),
    );
    measure(
        "fence broker with 1,000 partitions, cluster of 101,000",
        9,
        || fence_cost(&big, 6),
    );
    let mut alone = Cluster::new(8);
    alone.create_partitions("small", 1_000, 1_000, &[6, 7]);
    measure(
        "fence broker with 1,000 partitions, cluster of 1,000",
        9,
        || fence_cost(&alone, 6),
    );

    // 1,000,000 records: ISR shrink/expand changes over 100,000 partitions plus offset commits.
    let mut base = Cluster::new(3);
    base.create_partitions("r", 100_000, 5_000, &[0, 1, 2]);
    let tps: Vec<TopicIdPartition> = base
        .image
        .topics_by_name()
        .flat_map(|t| {
            t.partitions.keys().map(move |p| TopicIdPartition {
                topic_id: t.id,
                partition: *p,
            })
        })
        .collect();
    let mut records = Vec::with_capacity(1_000_000);
    for i in 0..1_000_000usize {
        let tp = tps[i % tps.len()];
        let record = if i % 10 == 9 {
            MetadataRecord::OffsetCommit(OffsetCommitRecord {
                offsets: vec![CommittedOffset {
                    group_id: format!("g{}", i % 100),
                    topic_id: tp.topic_id,
                    partition: tp.partition,
                    offset: i as i64,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: 0,
                }],
            })
        } else {
            let round = i / tps.len();
            let isr = if round.is_multiple_of(2) {
                vec![BrokerId(0), BrokerId(1)]
            } else {
                vec![BrokerId(0), BrokerId(1), BrokerId(2)]
            };
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id: tp.topic_id,
                partition: tp.partition,
                isr: Some(isr.into()),
                ..Default::default()
            })
        };
        records.push(record);
    }
    let encoded: Vec<Vec<u8>> = records.iter().map(MetadataRecord::encode).collect();
    measure("replay 1,000,000 records (decoded)", 3, || {
        let mut image = base.image.clone();
        let start = Instant::now();
        for (i, r) in records.iter().enumerate() {
            image.replay(LogOffset(base.offset + i as i64), r).unwrap();
        }
        start.elapsed()
    });
    measure("decode + replay 1,000,000 records", 3, || {
        let mut image = base.image.clone();
        let start = Instant::now();
        for (i, bytes) in encoded.iter().enumerate() {
            let r = MetadataRecord::decode(bytes).unwrap();
            image.replay(LogOffset(base.offset + i as i64), &r).unwrap();
        }
        start.elapsed()
    });

    drop((records, encoded, base, big, alone));

    // Balancing after a full restart: 300,000 partitions led by another than their preferred
    // replica, the first 200,000 with that replica not yet back in the ISR; passes (at most
    // 1,000 elections each) until none is left to elect, each on the image of the last.
    let mut restart = Cluster::new(3);
    restart.create_partitions("p", 300_000, 1_000, &[0, 1, 2]);
    let mut moves = Vec::new();
    let mut topics: Vec<&_> = restart.image.topics_by_name().collect();
    topics.sort_by_key(|t| t.id); // the imbalanced set's order
    for (i, t) in topics.into_iter().enumerate() {
        for partition in t.partitions.keys() {
            moves.push(MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id: t.id,
                partition: *partition,
                leader: Some(BrokerId(1)),
                isr: (i < 200).then(|| BrokerList::from_slice(&[BrokerId(1), BrokerId(2)])),
                ..Default::default()
            }));
        }
    }
    restart.apply(&moves);
    drop(moves);
    let passes = |resume: bool| {
        let mut image = restart.image.clone();
        let mut from = None;
        let mut elected = 0;
        let start = Instant::now();
        loop {
            let (records, more) = if resume {
                let r = balance_partition_leaders_after(&image, from);
                from = r.reply;
                (r.records, r.reply.is_some())
            } else {
                let r = balance_partition_leaders(&image);
                (r.records, r.reply)
            };
            for r in &records {
                image.replay(LogOffset(restart.offset), r).unwrap();
            }
            elected += records.len();
            if !more {
                break;
            }
        }
        let elapsed = start.elapsed();
        assert_eq!(elected, 100_000);
        elapsed
    };
    measure(
        "balance 100,000 leaders behind 200,000 not eligible: passes each from the first",
        3,
        || passes(false),
    );
    measure(
        "balance 100,000 leaders behind 200,000 not eligible: passes resuming where the last stopped",
        3,
        || passes(true),
    );
}

fn million() {
    let before = HELD.load(Ordering::Relaxed);
    let mut c = Cluster::new(3);
    c.create_partitions("scale", 1_000_000, 1_000, &[]);
    let held = HELD.load(Ordering::Relaxed) - before;
    println!(
        "| image heap per partition (1,000,000 partitions, RF 3, 3 brokers) | {} B | | 1 |",
        held / 1_000_000
    );

    // The `kill -9` of a broker leading a third of a million partitions, as `kmeta bench
    // scale` runs it: the leader moves, replayed on a controller and noted + replayed on a
    // broker.
    let moves = remove_broker_from_isrs(&c.image, &c.config, BrokerId(0))
        .into_iter()
        .next()
        .expect("broker 0 leads");
    measure(
        "fence broker leading 333,000 of 1,000,000 partitions: replay the leader moves",
        3,
        || {
            let mut image = c.image.clone();
            let start = Instant::now();
            image.replay(LogOffset(c.offset), &moves).unwrap();
            let elapsed = start.elapsed();
            std::hint::black_box(image);
            elapsed
        },
    );
    measure(
        "fence broker leading 333,000 of 1,000,000 partitions: replay the leader moves into a broker's delta",
        3,
        || {
            let mut image = c.image.clone();
            let mut delta = ImageDelta::default();
            let start = Instant::now();
            delta.replay(&mut image, LogOffset(c.offset), &moves).unwrap();
            let elapsed = start.elapsed();
            std::hint::black_box((image, delta));
            elapsed
        },
    );
}
