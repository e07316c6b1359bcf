//! TLS between kmeta's own nodes and their authentication (issue 15): Raft between the
//! controllers, brokers to the controllers and brokers to each other over mutual TLS; a
//! broker without a trusted certificate, with a certificate the authorizer does not let act
//! for the cluster, with another cluster's id, or with a live broker's id is refused and
//! changes nothing.

use crate::cluster::{kmeta_as, until, ProcessCluster, BIN};
use kmeta::tls::ca::Authority;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";

/// The registered brokers, with " (fenced)" after one that is not active.
fn registered_brokers(config: &Path, bootstrap: &str) -> Vec<String> {
    let (ok, out) = kmeta_as(config, bootstrap, &["brokers", "list", "--output", "json"]);
    if !ok {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut ids: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| match b["state"].as_str() {
                    Some("active") => b["id"].to_string(),
                    other => format!("{} ({})", b["id"], other.unwrap_or("?")),
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// A broker process beside the cluster's: broker 1's configuration with `node_id`, a fresh
/// port, a data directory and files named after `slot` (two processes may claim one id),
/// and `keystore` as its certificate; formatted with `cluster_id`. Returns the child and its
/// log file.
fn extra_broker(
    c: &ProcessCluster,
    node_id: u64,
    slot: u64,
    keystore: &Path,
    cluster_id: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let dir = c.dir.path();
    let base = std::fs::read_to_string(dir.join("node-1.properties")).unwrap();
    let port = crate::cluster::free_port();
    let data = dir.join(format!("data-{slot}"));
    let text: String = base
        .lines()
        .map(|l| {
            if l.starts_with("node.id=") {
                format!("node.id={node_id}")
            } else if l.starts_with("log.dirs=") {
                format!("log.dirs={}", data.display())
            } else if l.starts_with("listeners=") {
                format!("listeners=SSL://127.0.0.1:{port}")
            } else if l.starts_with("ssl.keystore.location=") {
                format!("ssl.keystore.location={}", keystore.display())
            } else if l.starts_with("metrics.listener=") {
                String::new()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let config = dir.join(format!("node-{slot}.properties"));
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["storage", "format", "--config"])
        .arg(&config)
        .args(["--cluster-id", cluster_id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = dir.join(format!("node-{slot}.log"));
    let child = Command::new(BIN)
        .arg("server")
        .arg("--config")
        .arg(&config)
        .env("KMETA_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

fn cluster_id(c: &ProcessCluster) -> String {
    let meta = std::fs::read_to_string(c.dir.path().join("data-1/meta.properties")).unwrap();
    meta.lines()
        .find_map(|l| l.strip_prefix("cluster.id="))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn nodes_talk_over_mutual_tls_and_a_broker_that_cannot_prove_itself_is_refused() {
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    let ca = Authority::new("kmeta test CA").unwrap();
    std::fs::write(f.join("ca.crt"), ca.cert_pem()).unwrap();
    let hosts = ["127.0.0.1", "localhost"];
    let node = ca
        .node("kmeta-node", &hosts)
        .unwrap()
        .write(f, "node")
        .unwrap();
    // Trusted, but not a principal the cluster lets act for it.
    let alice = ca.node("alice", &hosts).unwrap().write(f, "alice").unwrap();
    // Signed by a CA no node trusts.
    let other = Authority::new("another CA").unwrap();
    let stranger = other
        .node("kmeta-node", &hosts)
        .unwrap()
        .write(f, "stranger")
        .unwrap();
    let extra = format!(
        "listener.security.protocol.map=CONTROLLER:SSL,SSL:SSL\nssl.keystore.location={}\nssl.truststore.location={}\nssl.client.auth=required\nauthorizer.class.name={AUTHORIZER}\nsuper.users=User:CN=kmeta-node\n",
        node.display(),
        f.join("ca.crt").display()
    );
    let c = ProcessCluster::start_with(
        3,
        3,
        &extra,
        &|_, port| format!("listeners=SSL://127.0.0.1:{port}\ninter.broker.listener.name=SSL"),
        &[],
    );
    // The operator's commands log in with the node certificate (a super user).
    let admin = f.join("admin.properties");
    std::fs::write(
        &admin,
        format!(
            "security.protocol=SSL\nssl.truststore.location={}\nssl.keystore.location={}\n",
            f.join("ca.crt").display(),
            node.display()
        ),
    )
    .unwrap();
    let bootstrap = c.bootstrap();
    until(
        Duration::from_secs(60),
        "three brokers registered over TLS",
        || (registered_brokers(&admin, &bootstrap) == ["1", "2", "3"]).then_some(()),
    );
    // Replication between brokers runs over TLS too: acks=all needs every replica.
    let (ok, out) = kmeta_as(
        &admin,
        &bootstrap,
        &[
            "topics",
            "create",
            "--topic",
            "tls",
            "--partitions",
            "2",
            "--replication-factor",
            "3",
        ],
    );
    assert!(ok, "{out}");
    let out = crate::cluster::client(&[
        "secure",
        "--client",
        "confluent",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "tls-clients",
        "--count",
        "30",
        "--security-protocol",
        "SSL",
        "--ssl-ca",
        &f.join("ca.crt").display().to_string(),
        "--ssl-cert",
        &f.join("node.crt").display().to_string(),
        "--ssl-key",
        &f.join("node.key").display().to_string(),
    ]);
    println!("{out}");

    // Impostors: each started, given time to try, and stopped; none is ever registered.
    let id = cluster_id(&c);
    let other_id = "MkU3OEVBNTcwNTJENDM2Qg";
    let impostors = [
        (
            4,
            stranger.clone(),
            id.clone(),
            "a certificate from an untrusted CA",
        ),
        (
            5,
            alice.clone(),
            id.clone(),
            "a trusted certificate of User:CN=alice",
        ),
        (
            6,
            node.clone(),
            other_id.to_string(),
            "another cluster's id",
        ),
        (1, node.clone(), id.clone(), "a live broker's id"),
    ];
    let handshakes_failed = || {
        (101..=103)
            .map(|cid| {
                std::fs::read_to_string(c.dir.path().join(format!("node-{cid}.log")))
                    .unwrap_or_default()
                    .matches("failed authentication")
                    .count()
            })
            .sum::<usize>()
    };
    for (node_id, keystore, cluster, what) in impostors {
        let slot = if node_id == 1 { 11 } else { node_id };
        let failed_before = handshakes_failed();
        let (mut child, log) = extra_broker(&c, node_id, slot, &keystore, &cluster);
        let expected: &[&str] = match slot {
            // The controllers refuse the handshake; the broker never gets an answer.
            4 => &[],
            5 => &["CLUSTER_AUTHORIZATION_FAILED"],
            6 => &["INCONSISTENT_CLUSTER_ID"],
            _ => &["error_code=101"],
        };
        until(Duration::from_secs(30), what, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let seen = if expected.is_empty() {
                handshakes_failed() > failed_before && text.contains("registration refused (TLS")
            } else {
                expected.iter().all(|e| text.contains(e))
            };
            seen.then_some(())
        });
        assert_eq!(
            registered_brokers(&admin, &bootstrap),
            ["1", "2", "3"],
            "the broker with {what} changed the registrations"
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("registered"), "{what}: {text}");
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        (101..=103).any(|id| c.log_contains(id, "principal=User:CN=alice")),
        "no controller logged refusing User:CN=alice"
    );
    // Raft is served only to principals allowed CLUSTER_ACTION: with alice's trusted
    // certificate the controller closes the connection after the Raft hello; with a node's
    // it waits for the first RPC.
    let raft_stays_open = |keystore: &Path| {
        let security = crate::cluster::ssl_client(&f.join("ca.crt"), keystore);
        let addr = c.controller_addr(101);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut s =
                    kmeta::kafka::connect::connect(&addr, Duration::from_secs(5), &security)
                        .await
                        .unwrap();
                kmeta::raft::network::write_frame(&mut s, kmeta::raft::network::RAFT_HELLO)
                    .await
                    .unwrap();
                let read = kmeta::raft::network::read_frame(&mut s, 1 << 20);
                tokio::time::timeout(Duration::from_millis(500), read)
                    .await
                    .is_err()
            })
    };
    assert!(
        raft_stays_open(&node),
        "a node's Raft connection was closed"
    );
    assert!(
        !raft_stays_open(&alice),
        "alice's Raft connection stayed open"
    );
    assert!(c.log_contains(101, "refusing a Raft connection"));
    // The cluster still serves.
    let (ok, out) = kmeta_as(
        &admin,
        &bootstrap,
        &["topics", "describe", "--topic", "tls"],
    );
    assert!(ok, "{out}");
    drop(c);
}
