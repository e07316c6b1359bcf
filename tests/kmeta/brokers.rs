//! Brokers in this process against an in-process quorum.

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{CreateTopicsRequest, GroupId, OffsetCommitRequest, TopicName};
use kmeta::broker::{BrokerConfig, BrokerHandle};
use kmeta::kafka::client::KafkaClient;
use kmeta::kafka::listener::Limits;
use kmeta::kafka::wire::sb;
use kmeta::local::LocalQuorum;
use kmeta_metadata::controller::ControllerConfig;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Broker 1 of `quorum`'s cluster `cluster_id` on `port`, heartbeating every
/// `heartbeat_ms` with a session of `session_ms`, its data under `dir`.
fn broker_one(
    cluster_id: &str,
    quorum: &LocalQuorum,
    port: u16,
    heartbeat_ms: u64,
    session_ms: u64,
    dir: &std::path::Path,
) -> BrokerConfig {
    BrokerConfig {
        node_id: 1,
        cluster_id: cluster_id.into(),
        voters: quorum.addrs.clone(),
        listener_name: "PLAINTEXT".into(),
        advertised_host: "127.0.0.1".into(),
        advertised_port: port,
        rack: None,
        heartbeat_interval: Duration::from_millis(heartbeat_ms),
        session_timeout: Duration::from_millis(session_ms),
        limits: Limits::default(),
        extra_listeners: Vec::new(),
        data: kmeta::broker::replicas::DataConfig::new(dir.join("broker-1")),
        groups: kmeta::broker::group::GroupConfig::default(),
        authorizer: None,
        controller_tls: None,
        inter_broker_tls: None,
    }
}

/// Waits until the broker is unfenced (at most 20 s).
async fn until_unfenced(state: &kmeta::broker::BrokerState) {
    let start = Instant::now();
    while state.is_fenced() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the broker never unfenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forwarded_commits_never_fences_the_broker_carrying_it() {
    let dir = tempfile::tempdir().unwrap();
    // A short session: a heartbeat stuck behind the flood for a second would fence the broker.
    let config = ControllerConfig {
        cluster_id: "flood".into(),
        session_timeout_ms: 1_500,
        ..ControllerConfig::default()
    };
    let quorum = LocalQuorum::start(3, dir.path(), config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let port = listener.local_addr().unwrap().port();
    let config = broker_one("flood", &quorum, port, 300, 1_500, dir.path());
    let broker = BrokerHandle::spawn(config, listener);
    let state = broker.state.clone();
    until_unfenced(&state).await;
    let mut admin = KafkaClient::connect(&addr, "t", Duration::from_secs(10))
        .await
        .unwrap();
    let created = admin
        .send(
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(sb("flood")))
                .with_num_partitions(32)
                .with_replication_factor(1)]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);
    let epoch = state.broker_epoch();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..64 {
        let (addr, stop, done) = (addr.clone(), stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut c = KafkaClient::connect(&addr, "w", Duration::from_secs(30))
                .await
                .unwrap();
            let mut offset = 0;
            while !stop.load(Ordering::Relaxed) {
                offset += 1;
                let request = OffsetCommitRequest::default()
                    .with_group_id(GroupId(sb(format!("g{w}"))))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(TopicName(sb("flood")))
                        .with_partitions(
                            (0..32)
                                .map(|p| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                })
                                .collect(),
                        )]);
                c.send(&request, 9).await.unwrap();
                done.fetch_add(32, Ordering::Relaxed);
            }
        }));
    }
    // Five session timeouts of flood; the broker must stay unfenced with the same epoch.
    let flood = Instant::now();
    while flood.elapsed() < Duration::from_millis(7_500) {
        assert!(
            !state.is_fenced(),
            "fenced after {:?} of flood",
            flood.elapsed()
        );
        let image = state.image();
        let me = image.image.broker(kmeta_metadata::BrokerId(1)).unwrap();
        assert!(
            me.is_active(),
            "the image shows broker 1 inactive during the flood"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(
        state.broker_epoch(),
        epoch,
        "the broker had to register again"
    );
    assert!(
        done.load(Ordering::Relaxed) > 10_000,
        "too little load: {}",
        done.load(Ordering::Relaxed)
    );
    broker.shutdown().await.unwrap();
    quorum.stop().await;
}

/// A broker's heartbeats do not depend on its runtime: with every worker of the runtime the
/// broker runs on busy for three session timeouts (as hosting a million partitions kept
/// them for about ten seconds), the controllers never fence it and it keeps its epoch.
/// Before the heartbeats had a thread of their own, it was fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_runtime_is_busy_for_seconds_keeps_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let session_timeout_ms = 1_000;
    let config = ControllerConfig {
        cluster_id: "busy".into(),
        session_timeout_ms,
        ..ControllerConfig::default()
    };
    let quorum = LocalQuorum::start(3, dir.path(), config).await.unwrap();
    // The broker on a runtime of its own, with one worker the test can stall.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let broker = {
        let _in_runtime = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let config = broker_one("busy", &quorum, port, 200, session_timeout_ms, dir.path());
        BrokerHandle::spawn(config, listener)
    };
    let state = broker.state.clone();
    until_unfenced(&state).await;
    let epoch = state.broker_epoch();
    // Every worker of the broker's runtime busy for three session timeouts.
    let stall = Duration::from_millis(3 * session_timeout_ms);
    runtime.spawn(async move { std::thread::sleep(stall) });
    let watched = Instant::now();
    while watched.elapsed() < stall + Duration::from_millis(session_timeout_ms) {
        let leader = quorum.leader(Duration::from_secs(5)).await.unwrap();
        let image = quorum.nodes[&leader].sm.image();
        let me = image.broker(kmeta_metadata::BrokerId(1)).unwrap();
        assert!(
            !me.fenced,
            "the controllers fenced the broker {:?} into the stall",
            watched.elapsed()
        );
        assert_eq!(me.broker_epoch.0, epoch, "the broker had to register again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.shutdown().await.unwrap();
    runtime.shutdown_background();
    quorum.stop().await;
}

/// One request frame (size, header, body) for a raw connection.
fn frame<R: kafka_protocol::protocol::Request>(
    request: &R,
    version: i16,
    correlation: i32,
) -> Vec<u8> {
    let body =
        kmeta::kafka::client::encode_request(request, version, correlation, &sb("pipelined"))
            .unwrap();
    let mut out = Vec::new();
    kmeta::kafka::wire::put_frame(&mut out, &body);
    out
}

/// The answer to the request sent at `version` with `correlation`, read off `stream`; an
/// answer to another request fails the test.
async fn answer<R: kafka_protocol::protocol::Request>(
    stream: &mut tokio::net::TcpStream,
    version: i16,
    correlation: i32,
) -> R::Response {
    let payload = kmeta::kafka::wire::read_frame(stream, 1 << 24)
        .await
        .unwrap()
        .unwrap();
    kmeta::kafka::client::decode_response::<R>(payload, version, correlation)
        .expect("answers out of order")
}

/// Requests sent back to back on one connection (commits and creations may overlap inside
/// the broker) keep Kafka's order where a client can see it: a second CreateTopics of the
/// same name finds the first's topic, a group's later commit wins, and a read after them
/// sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_on_one_connection_land_in_the_order_sent() {
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::{MetadataRequest, OffsetFetchRequest};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = ControllerConfig {
        cluster_id: "pipelined".into(),
        ..ControllerConfig::default()
    };
    let quorum = LocalQuorum::start(3, dir.path(), config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let port = listener.local_addr().unwrap().port();
    let broker = BrokerHandle::spawn(
        broker_one("pipelined", &quorum, port, 300, 6_000, dir.path()),
        listener,
    );
    until_unfenced(&broker.state).await;
    let create = |name: &str| {
        CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(sb(name)))
                .with_num_partitions(1)
                .with_replication_factor(1)])
    };
    let commit = |group: &str, offset: i64| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(sb(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(sb("p")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])])
    };
    let fetch = |group: &str| {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(sb(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(TopicName(sb("p")))
                .with_partition_indexes(vec![0])]))])
    };
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The topic the commits name, first on its own.
    stream.write_all(&frame(&create("p"), 7, 1)).await.unwrap();
    assert_eq!(
        answer::<CreateTopicsRequest>(&mut stream, 7, 1)
            .await
            .topics[0]
            .error_code,
        0
    );
    for round in 0..20i64 {
        let c = 100 * (round as i32 + 1);
        let t = format!("t{round}");
        let mut out = Vec::new();
        out.extend(frame(&create(&t), 7, c));
        out.extend(frame(&create(&t), 7, c + 1));
        out.extend(frame(&commit("g1", 10 * round + 1), 8, c + 2));
        out.extend(frame(&commit("g2", 10 * round + 5), 8, c + 3));
        out.extend(frame(&commit("g1", 10 * round + 2), 8, c + 4));
        out.extend(frame(&create(&format!("u{round}")), 7, c + 5));
        out.extend(frame(&fetch("g1"), 8, c + 6));
        out.extend(frame(
            &MetadataRequest::default().with_topics(None),
            12,
            c + 7,
        ));
        stream.write_all(&out).await.unwrap();
        let first = answer::<CreateTopicsRequest>(&mut stream, 7, c).await;
        let second = answer::<CreateTopicsRequest>(&mut stream, 7, c + 1).await;
        assert_eq!(first.topics[0].error_code, 0, "round {round}");
        assert_eq!(
            second.topics[0].error_code, 36,
            "round {round}: TOPIC_ALREADY_EXISTS"
        );
        for k in 2..=4 {
            let r = answer::<OffsetCommitRequest>(&mut stream, 8, c + k).await;
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "round {round}");
        }
        let u = answer::<CreateTopicsRequest>(&mut stream, 7, c + 5).await;
        assert_eq!(u.topics[0].error_code, 0);
        let fetched = answer::<OffsetFetchRequest>(&mut stream, 8, c + 6).await;
        assert_eq!(
            fetched.groups[0].topics[0].partitions[0].committed_offset,
            10 * round + 2,
            "round {round}: g1's later commit wins"
        );
        let md = answer::<MetadataRequest>(&mut stream, 12, c + 7).await;
        for name in [t.clone(), format!("u{round}")] {
            assert!(
                md.topics
                    .iter()
                    .any(|x| x.name.as_ref().map(|n| &*n.0) == Some(name.as_str())),
                "round {round}: {name} missing from a Metadata sent after its creation"
            );
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), broker.shutdown()).await;
    quorum.stop().await;
}
