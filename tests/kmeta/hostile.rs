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
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    exchange_on(s, addr, bytes)
}

/// Like [`exchange`], inside TLS (trusting `ca_pem`).
fn tls_exchange(addr: &str, ca_pem: &str, bytes: &[u8]) -> Vec<u8> {
    exchange_on(tls_stream(addr, ca_pem), addr, bytes)
}

/// A TLS connection to `addr`, trusting `ca_pem`, with a 3 s read timeout.
fn tls_stream(
    addr: &str,
    ca_pem: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_stream_as(addr, ca_pem, None)
}

/// [`tls_stream`], presenting `identity` (a PEM file with a key and certificate chain).
fn tls_stream_as(
    addr: &str,
    ca_pem: &str,
    identity: Option<&std::path::Path>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(kmeta::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path).unwrap();
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    rustls::StreamOwned::new(connection, s)
}

fn exchange_on(mut s: impl Read + Write, addr: &str, bytes: &[u8]) -> Vec<u8> {
    let _ = s.write_all(bytes);
    let _ = s.flush();
    let mut out = Vec::new();
    while read_more(&mut s, addr, &mut out) {
        // One whole frame is enough.
        if out.len() >= 4 {
            let len = i32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
            if out.len() >= 4 + len {
                break;
            }
        }
    }
    out
}

/// Reads what comes next into `out`; false once the server closed (a TLS peer may close
/// without its closing alert, or reset). Panics if it neither answers nor closes in time.
fn read_more(s: &mut impl Read, addr: &str, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            out.extend_from_slice(&buf[..n]);
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            false
        }
        Err(e) => panic!("{addr} neither answered nor closed the connection: {e}"),
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
    assert_survives_with(&|bytes| exchange(addr, bytes));
}

fn assert_survives_with(exchange: &dyn Fn(&[u8]) -> Vec<u8>) {
    for (what, bytes) in hostile_frames() {
        let reply = exchange(&bytes);
        // An error reply (a whole frame) or a closed connection; never a hang.
        if !reply.is_empty() {
            assert!(reply.len() >= 8, "{what}: a partial reply {reply:?}");
        }
    }
    // ApiVersions at a version from the future: a v0 reply with UNSUPPORTED_VERSION (35).
    let reply = exchange(&frame(&[header(18, 99), vec![0]].concat()));
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

/// The same frames inside TLS, on an SSL listener and on a SASL_SSL one (where they come
/// before authentication), and malformed SASL exchanges: each gets an error or a closed
/// connection, and the broker serves real clients after.
#[test]
fn hostile_frames_and_sasl_messages_never_stop_a_tls_or_sasl_listener() {
    let files = tempfile::tempdir().unwrap();
    let ca = crate::security::authority(files.path()).cert_pem();
    let (ssl, sasl) = (crate::cluster::free_port(), crate::cluster::free_port());
    let extra = format!(
        "ssl.keystore.location={}",
        files.path().join("server.pem").display()
    );
    let c = ProcessCluster::start_with(
        3,
        1,
        &extra,
        &|_, port| {
            format!("listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl}")
        },
        &[
            "--add-scram",
            "SCRAM-SHA-256=[name=alice,password=alice-secret]",
        ],
    );
    let b = c.bootstrap();
    until(Duration::from_secs(30), "a live broker", || {
        try_client(&["kcat", "--bootstrap", &b, "--brokers", "1"])
            .0
            .then_some(())
    });
    let ssl_addr = format!("127.0.0.1:{ssl}");
    let sasl_addr = format!("127.0.0.1:{sasl}");
    assert_survives_with(&|bytes| tls_exchange(&ssl_addr, &ca, bytes));
    assert_survives_with(&|bytes| tls_exchange(&sasl_addr, &ca, bytes));
    // Before authentication, a request other than ApiVersions and SASL closes the
    // connection unanswered.
    let metadata = frame(&[header(3, 12), vec![0, 0, 0, 0, 0, 0, 0]].concat());
    assert!(tls_exchange(&sasl_addr, &ca, &metadata).is_empty());
    // Malformed SASL: a SaslAuthenticate before the handshake (ILLEGAL_SASL_STATE, 34),
    // garbage and oversized tokens after it (SASL_AUTHENTICATION_FAILED, 58).
    let handshake = |mechanism: &str| {
        let mut h = header(17, 1);
        h.extend_from_slice(&(mechanism.len() as i16).to_be_bytes());
        h.extend_from_slice(mechanism.as_bytes());
        frame(&h)
    };
    let authenticate = |token: &[u8]| {
        let mut a = header(36, 0);
        a.extend_from_slice(&(token.len() as i32).to_be_bytes());
        a.extend_from_slice(token);
        frame(&a)
    };
    let error_of =
        |reply: &[u8], at: usize| i16::from_be_bytes(reply[at..at + 2].try_into().unwrap());
    let reply = tls_exchange(&sasl_addr, &ca, &authenticate(b"n,,n=alice,r=x"));
    assert_eq!(error_of(&reply, 8), 34, "{reply:?}");
    // An unknown mechanism: UNSUPPORTED_SASL_MECHANISM (33).
    let reply = tls_exchange(&sasl_addr, &ca, &handshake("GSSAPI"));
    assert_eq!(error_of(&reply, 8), 33, "{reply:?}");
    for token in [&b"garbage"[..], &[0xff; 3], &vec![b'n'; 100_000]] {
        // The handshake's answer, then the failed authentication's.
        let bytes = [handshake("SCRAM-SHA-256"), authenticate(token)].concat();
        let reply = tls_exchange_frames(&sasl_addr, &ca, &bytes, 2);
        assert_eq!(reply.len(), 2, "{token:?}: {reply:?}");
        assert_eq!(error_of(&reply[1], 4), 58, "{:?}", reply[1]);
    }
    // Real clients still get in.
    client(&[
        "secure",
        "--client",
        "confluent",
        "--bootstrap",
        &sasl_addr,
        "--topic",
        "after-sasl-attack",
        "--count",
        "5",
        "--security-protocol",
        "SASL_SSL",
        "--ssl-ca",
        &files.path().join("ca.crt").display().to_string(),
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--user",
        "alice",
        "--password",
        "alice-secret",
        "--rf",
        "1",
        "--brokers",
        "1",
    ]);
}

/// Sends `bytes` inside TLS and reads up to `n` whole answer frames (payloads without sizes)
/// before the server closes.
fn tls_exchange_frames(addr: &str, ca_pem: &str, bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut raw = tls_exchange_all(addr, ca_pem, bytes);
    let mut frames = Vec::new();
    while frames.len() < n && raw.len() >= 4 {
        let len = i32::from_be_bytes(raw[..4].try_into().unwrap()) as usize;
        if raw.len() < 4 + len {
            break;
        }
        frames.push(raw[4..4 + len].to_vec());
        raw.drain(..4 + len);
    }
    frames
}

/// Everything the server sends back until it closes.
fn tls_exchange_all(addr: &str, ca_pem: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = tls_stream(addr, ca_pem);
    let _ = s.write_all(bytes);
    let _ = s.flush();
    let mut out = Vec::new();
    while read_more(&mut s, addr, &mut out) {}
    out
}

/// A controller listener behind mutual TLS (the nodes' own connections): the hostile frames
/// inside TLS from a trusted node, a Raft hello followed by garbage, and the same frames in
/// plaintext (refused at the handshake) never stop a controller; the quorum serves after.
#[test]
fn hostile_frames_never_stop_a_controller_behind_mutual_tls() {
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    let ca = kmeta::tls::ca::Authority::new("kmeta test CA").unwrap();
    std::fs::write(f.join("ca.crt"), ca.cert_pem()).unwrap();
    let node = ca
        .node("kmeta-node", &["127.0.0.1", "localhost"])
        .unwrap()
        .write(f, "node")
        .unwrap();
    let extra = format!(
        "listener.security.protocol.map=CONTROLLER:SSL,SSL:SSL\nssl.keystore.location={}\nssl.truststore.location={}\nssl.client.auth=required\nauthorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\nsuper.users=User:CN=kmeta-node\n",
        node.display(),
        f.join("ca.crt").display()
    );
    let c = ProcessCluster::start_with(
        3,
        1,
        &extra,
        &|_, port| format!("listeners=SSL://127.0.0.1:{port}\ninter.broker.listener.name=SSL"),
        &[],
    );
    let ca_pem = ca.cert_pem();
    for id in c.controllers.keys() {
        let addr = c.controller_addr(*id);
        until(Duration::from_secs(30), "the controller listening", || {
            TcpStream::connect(&addr).ok().map(drop)
        });
    }
    let as_node = |addr: &str, bytes: &[u8]| {
        exchange_on(tls_stream_as(addr, &ca_pem, Some(&node)), addr, bytes)
    };
    for id in c.controllers.keys() {
        let addr = c.controller_addr(*id);
        assert_survives_with(&|bytes| as_node(&addr, bytes));
        // Plaintext on the TLS port: the handshake fails, the connection closes with at
        // most a TLS alert (record type 21), never a Kafka answer.
        for (what, bytes) in hostile_frames() {
            let reply = exchange(&addr, &bytes);
            assert!(reply.is_empty() || reply[0] == 21, "{what}: {reply:?}");
        }
        // A Raft hello, then frames that are not Raft requests: the connection closes.
        let hello = frame(kmeta::raft::network::RAFT_HELLO);
        for garbage in [&b"\x00\x01\x02"[..], &[0xff; 64], &vec![7; 10_000]] {
            let reply = as_node(&addr, &[hello.clone(), frame(garbage)].concat());
            assert!(reply.is_empty(), "{reply:?}");
        }
    }
    // The quorum still serves: every controller answers DescribeQuorum over TLS, and the
    // broker registers through it.
    let security = crate::cluster::ssl_client(&f.join("ca.crt"), &node);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for id in c.controllers.keys() {
            let mut k = KafkaClient::connect_with(
                &c.controller_addr(*id),
                "test",
                Duration::from_secs(5),
                &security,
            )
            .await
            .unwrap();
            let quorum = k.send(&DescribeQuorumRequest::default(), 2).await.unwrap();
            assert_eq!(quorum.topics[0].partitions[0].current_voters.len(), 3);
        }
        let start = std::time::Instant::now();
        loop {
            let mut k = KafkaClient::connect_with(
                &c.broker_addr(1),
                "test",
                Duration::from_secs(5),
                &security,
            )
            .await
            .unwrap();
            let md = k.send(&MetadataRequest::default(), 12).await.unwrap();
            if md.brokers.len() == 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the broker never registered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
