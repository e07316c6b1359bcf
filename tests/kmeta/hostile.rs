//! Hostile input against both Kafka listeners (a broker's and a controller's): every bad
//! frame gets an error reply or a closed connection, and the process keeps serving.

use crate::cluster::{client, try_client, until, ProcessCluster};
use kafka_protocol::messages::{DescribeQuorumRequest, MetadataRequest};
use kmeta::kafka::client::KafkaClient;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends raw bytes and returns what comes back before the server closes or goes quiet.
fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One whole frame is enough.
                if out.len() >= 4 {
                    let len = i32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
                    if out.len() >= 4 + len {
                        return out;
                    }
                }
            }
            Err(e) => panic!("{addr} neither answered nor closed the connection: {e}"),
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    kmeta::kafka::wire::put_frame(&mut f, payload);
    f
}

/// A request header v1: api key, version, correlation id 7, null client id.
fn header(key: i16, version: i16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&key.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&7i32.to_be_bytes());
    h.extend_from_slice(&(-1i16).to_be_bytes());
    h
}

fn hostile_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut cases = vec![
        ("a frame of 2 bytes", frame(&[0, 3])),
        ("an empty frame", frame(&[])),
        ("a negative length", (-5i32).to_be_bytes().to_vec()),
        ("a 2 GiB length", i32::MAX.to_be_bytes().to_vec()),
        ("an unknown API key", frame(&header(999, 0))),
        ("an unsupported Metadata version", frame(&header(3, 99))),
        (
            "a truncated Metadata body",
            frame(&[header(3, 4), vec![0, 0]].concat()),
        ),
    ];
    // Metadata v4 claiming i32::MAX topics in a 4-byte body (the crate pre-allocates).
    cases.push((
        "an array count of i32::MAX",
        frame(&[header(3, 4), i32::MAX.to_be_bytes().to_vec()].concat()),
    ));
    // Metadata v12 (flexible): header v2 with empty tagged fields, then a compact array
    // whose varint count is 2^32 - 1.
    let mut flexible = header(3, 12);
    flexible.push(0);
    flexible.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    cases.push(("a compact array count of u32::MAX", frame(&flexible)));
    // CreateTopics v7 with a nested array bomb inside one topic.
    let mut nested = header(19, 7);
    nested.push(0);
    nested.push(2); // one topic
    nested.push(2); // name "t"
    nested.push(b't');
    nested.extend_from_slice(&1i32.to_be_bytes());
    nested.extend_from_slice(&1i16.to_be_bytes());
    nested.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // assignments count
    cases.push(("a nested array bomb", frame(&nested)));
    // Deterministic pseudo-random garbage.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..40 {
        let len = 4 + (i * 7) % 60;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        cases.push(("random bytes", frame(&body)));
    }
    cases
}

fn assert_survives(addr: &str) {
    for (what, bytes) in hostile_frames() {
        let reply = exchange(addr, &bytes);
        // An error reply (a whole frame) or a closed connection; never a hang.
        if !reply.is_empty() {
            assert!(reply.len() >= 8, "{what}: a partial reply {reply:?}");
        }
    }
    // ApiVersions at a version from the future: a v0 reply with UNSUPPORTED_VERSION (35).
    let reply = exchange(addr, &frame(&[header(18, 99), vec![0]].concat()));
    assert!(reply.len() >= 10, "{reply:?}");
    assert_eq!(i32::from_be_bytes(reply[4..8].try_into().unwrap()), 7);
    assert_eq!(i16::from_be_bytes(reply[8..10].try_into().unwrap()), 35);
}

#[test]
fn hostile_frames_never_stop_a_broker_or_a_controller() {
    let c = ProcessCluster::start(3, 1, "");
    let b = c.bootstrap();
    until(Duration::from_secs(30), "a live broker", || {
        try_client(&["kcat", "--bootstrap", &b, "--brokers", "1"])
            .0
            .then_some(())
    });
    assert_survives(&c.broker_addr(1));
    for id in c.controllers.keys() {
        assert_survives(&c.controller_addr(*id));
    }
    // Both still serve valid clients.
    client(&[
        "create",
        "--bootstrap",
        &b,
        "--topic",
        "after-attack",
        "--rf",
        "1",
    ]);
    client(&[
        "kcat",
        "--bootstrap",
        &b,
        "--brokers",
        "1",
        "--topic",
        "after-attack",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for id in c.controllers.keys() {
            let mut k =
                KafkaClient::connect(&c.controller_addr(*id), "test", Duration::from_secs(5))
                    .await
                    .unwrap();
            let quorum = k.send(&DescribeQuorumRequest::default(), 2).await.unwrap();
            assert_eq!(quorum.topics[0].partitions[0].current_voters.len(), 3);
        }
        let mut k = KafkaClient::connect(&c.broker_addr(1), "test", Duration::from_secs(5))
            .await
            .unwrap();
        let md = k.send(&MetadataRequest::default(), 12).await.unwrap();
        assert_eq!(md.brokers.len(), 1);
    });
}
