//! ACLs (issue 15): with the StandardAuthorizer on, a user with no entries can do nothing,
//! a prefixed grant opens exactly the topics it names, and a revocation reaches every broker
//! within a second.

use crate::cluster::{kmeta_as, until, ProcessCluster};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kmeta::kafka::client::KafkaClient;
use kmeta::kafka::connect::ClientSecurity;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";

/// Three controllers and three brokers with the StandardAuthorizer; each broker has a
/// PLAINTEXT listener (replication between brokers, whose principal is User:ANONYMOUS and so
/// a super user here) and a SASL_PLAINTEXT one, where `admin` (a super user) and `alice` log
/// in. Returns the cluster and each broker's SASL address.
pub(crate) fn acl_cluster(extra: &str) -> (ProcessCluster, BTreeMap<u64, String>) {
    let ports: BTreeMap<u64, u16> = (1..=3)
        .map(|id| (id, crate::cluster::free_port()))
        .collect();
    let extra = format!(
        "authorizer.class.name={AUTHORIZER}\nsuper.users=User:admin;User:ANONYMOUS\nsasl.enabled.mechanisms=SCRAM-SHA-256\n{extra}"
    );
    let c = ProcessCluster::start_with(
        3,
        3,
        &extra,
        &|id, port| {
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{}",
                ports[&id]
            )
        },
        &[
            "--add-scram",
            "SCRAM-SHA-256=[name=admin,password=admin-secret]",
            "--add-scram",
            "SCRAM-SHA-256=[name=alice,password=alice-secret]",
        ],
    );
    crate::cluster::wait_for_brokers(&c, 3);
    let addrs: BTreeMap<u64, String> = ports
        .into_iter()
        .map(|(id, p)| (id, format!("127.0.0.1:{p}")))
        .collect();
    // The users come with the first active controller's bootstrap entry: wait until every
    // broker's image has them.
    let files = tempfile::tempdir().unwrap();
    let admin = command_config(files.path(), "admin");
    until(Duration::from_secs(30), "the users on every broker", || {
        addrs
            .values()
            .all(|a| kmeta_as(&admin, a, &["users", "list"]).1.contains("alice"))
            .then_some(())
    });
    (c, addrs)
}

fn login(user: &str) -> BTreeMap<String, String> {
    [
        ("security.protocol", "SASL_PLAINTEXT".to_string()),
        ("sasl.mechanism", "SCRAM-SHA-256".to_string()),
        ("sasl.username", user.to_string()),
        ("sasl.password", format!("{user}-secret")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn command_config(dir: &Path, user: &str) -> String {
    let path = dir.join(format!("{user}.properties"));
    let text: String = login(user)
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn listed_topics(config: &str, bootstrap: &str) -> Vec<String> {
    let (ok, out) = kmeta_as(config, bootstrap, &["topics", "list", "--output", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Runs a check.py scenario as alice over SASL_PLAINTEXT at `bootstrap`; its JSON line.
fn as_alice(bootstrap: &str, args: &[&str]) -> String {
    let login = [
        "--bootstrap",
        bootstrap,
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--user",
        "alice",
        "--password",
        "alice-secret",
    ];
    crate::cluster::client(&[args, &login[..]].concat())
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn client(addr: &str, user: &str) -> KafkaClient {
    let security = ClientSecurity::from_properties(&login(user)).unwrap();
    KafkaClient::connect_with(addr, "acl-test", Duration::from_secs(10), &security)
        .await
        .unwrap()
}

/// alice's OffsetCommit of partition 0 of each of `topics` in `group`, through the group's
/// coordinator: the FindCoordinator error if that fails, else each topic's error code.
async fn commit(
    addrs: &BTreeMap<u64, String>,
    group: &str,
    topics: &[&str],
) -> Result<Vec<i16>, i16> {
    let mut c = client(&addrs[&1], "alice").await;
    let found = c
        .send(
            &FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into())),
            3,
        )
        .await
        .unwrap();
    if found.error_code != 0 {
        return Err(found.error_code);
    }
    let mut coordinator = client(&addrs[&(found.node_id.0 as u64)], "alice").await;
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(vec![OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(7)])
                })
                .collect(),
        );
    let response = coordinator.send(&request, 8).await.unwrap();
    Ok(topics
        .iter()
        .map(|t| {
            response
                .topics
                .iter()
                .find(|r| r.name.0.as_str() == *t)
                .map_or(-1, |r| r.partitions[0].error_code)
        })
        .collect())
}

/// alice's CreateTopics (v7) of `topic` with one partition: its error, its config error,
/// the partition count answered and how many configs came back (`None`: none).
async fn create_as_alice(addr: &str, topic: &str) -> (i16, i16, i32, Option<usize>) {
    let mut c = client(addr, "alice").await;
    let response = c
        .send(
            &CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_num_partitions(1)
                    .with_replication_factor(3)]),
            7,
        )
        .await
        .unwrap();
    let t = &response.topics[0];
    (
        t.error_code,
        t.topic_config_error_code,
        t.num_partitions,
        t.configs.as_ref().map(Vec::len),
    )
}

/// The error alice's Metadata request for `topic` gets from the broker at `addr`.
async fn metadata_error(addr: &str, topic: &str) -> i16 {
    let mut c = client(addr, "alice").await;
    let response = c
        .send(
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))])),
            9,
        )
        .await
        .unwrap();
    response.topics[0].error_code
}

#[test]
fn a_user_without_acls_is_refused_and_a_prefixed_grant_opens_exactly_its_topics() {
    let (c, addrs) = acl_cluster("");
    let files = tempfile::tempdir().unwrap();
    let admin = command_config(files.path(), "admin");
    let alice = command_config(files.path(), "alice");
    let sasl = addrs.values().cloned().collect::<Vec<_>>().join(",");
    for t in ["orders-eu", "payments"] {
        let (ok, out) = kmeta_as(
            &admin,
            &sasl,
            &["topics", "create", "--topic", t, "--partitions", "1"],
        );
        assert!(ok, "{out}");
    }
    assert_eq!(listed_topics(&admin, &sasl), ["orders-eu", "payments"]);

    // No entries: alice may not create, delete, see or commit anything.
    let (ok, out) = kmeta_as(&alice, &sasl, &["topics", "create", "--topic", "orders-us"]);
    assert!(!ok && out.contains("TopicAuthorizationFailed"), "{out}");
    let (ok, out) = kmeta_as(&alice, &sasl, &["topics", "delete", "--topic", "payments"]);
    assert!(!ok && out.contains("TopicAuthorizationFailed"), "{out}");
    assert!(listed_topics(&alice, &sasl).is_empty());
    assert_eq!(block_on(metadata_error(&addrs[&2], "payments")), 29);
    assert_eq!(block_on(commit(&addrs, "g-1", &["orders-eu"])), Err(30));
    let (ok, out) = kmeta_as(
        &alice,
        &sasl,
        &[
            "acls",
            "add",
            "--allow-principal",
            "User:alice",
            "--topic",
            "payments",
        ],
    );
    assert!(!ok && out.contains("ClusterAuthorizationFailed"), "{out}");
    let (ok, out) = kmeta_as(&alice, &sasl, &["acls", "list"]);
    assert!(!ok && out.contains("ClusterAuthorizationFailed"), "{out}");

    // Real clients, logged in as alice, see Kafka's authorization errors.
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        let out = as_alice(
            &sasl,
            &[
                "acl-refused",
                "--client",
                lib,
                "--topic",
                "payments",
                "--group",
                "alice-app",
            ],
        );
        println!("{out}");
    }

    // A prefixed grant on topics and one on groups.
    for args in [
        ["--topic", "orders-", "--operation", "All"],
        ["--group", "g-", "--operation", "Read"],
    ] {
        let (ok, out) = kmeta_as(
            &admin,
            &sasl,
            &[
                &["acls", "add", "--allow-principal", "User:alice"][..],
                &args[..],
                &["--resource-pattern-type", "prefixed"][..],
            ]
            .concat(),
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = kmeta_as(&admin, &sasl, &["acls", "list", "--output", "json"]);
    assert!(ok, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["acls"].as_array().unwrap().len(), 2, "{listed}");

    // Each broker has the grant from its own image: retry until the last one has it.
    until(Duration::from_secs(10), "the grant on every broker", || {
        let seen = addrs
            .values()
            .all(|a| block_on(metadata_error(a, "orders-eu")) == 0);
        seen.then_some(())
    });
    let (ok, out) = kmeta_as(
        &alice,
        &sasl,
        &[
            "topics",
            "create",
            "--topic",
            "orders-us",
            "--partitions",
            "1",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kmeta_as(
        &alice,
        &sasl,
        &["topics", "create", "--topic", "payments-2"],
    );
    assert!(!ok && out.contains("TopicAuthorizationFailed"), "{out}");
    assert_eq!(listed_topics(&alice, &sasl), ["orders-eu", "orders-us"]);
    let (ok, out) = kmeta_as(&alice, &sasl, &["topics", "delete", "--topic", "payments"]);
    assert!(!ok && out.contains("TopicAuthorizationFailed"), "{out}");
    // A commit of a granted and a refused topic: each answered for itself.
    assert_eq!(
        block_on(commit(&addrs, "g-1", &["orders-eu", "payments"])),
        Ok(vec![0, 29])
    );
    assert_eq!(block_on(commit(&addrs, "other", &["orders-eu"])), Err(30));
    let (ok, out) = kmeta_as(&alice, &sasl, &["topics", "delete", "--topic", "orders-us"]);
    assert!(ok, "{out}");

    // Allowed to create `cfg-` topics but not to describe their configs: the creation
    // stands, its configs are refused (topic_config_error_code), as in Kafka.
    let (ok, out) = kmeta_as(
        &admin,
        &sasl,
        &[
            "acls",
            "add",
            "--allow-principal",
            "User:alice",
            "--operation",
            "Create",
            "--topic",
            "cfg-",
            "--resource-pattern-type",
            "prefixed",
        ],
    );
    assert!(ok, "{out}");
    until(
        Duration::from_secs(10),
        "the Create grant on broker 1",
        || {
            let created = block_on(create_as_alice(&addrs[&1], "cfg-probe"));
            (created.0 == 0).then_some(())
        },
    );
    let (error, config_error, partitions, configs) =
        block_on(create_as_alice(&addrs[&1], "cfg-one"));
    assert_eq!(
        (error, config_error, partitions, configs),
        (0, 29, -1, None)
    );
    let (error, config_error, partitions, _) =
        block_on(create_as_alice(&addrs[&1], "orders-with-configs"));
    assert_eq!((error, config_error, partitions), (0, 0, 1));

    // Revoked: every broker refuses within a second of the removal's answer.
    let (ok, out) = kmeta_as(
        &admin,
        &sasl,
        &[
            "acls",
            "remove",
            "--allow-principal",
            "User:alice",
            "--topic",
            "orders-",
            "--resource-pattern-type",
            "prefixed",
        ],
    );
    let removed_at = Instant::now();
    assert!(ok, "{out}");
    let mut slowest = Duration::ZERO;
    block_on(async {
        for addr in addrs.values() {
            while metadata_error(addr, "orders-eu").await != 29 {
                assert!(
                    removed_at.elapsed() < Duration::from_secs(1),
                    "{addr} still lets alice describe orders-eu 1 s after the revocation"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            slowest = slowest.max(removed_at.elapsed());
        }
    });
    println!("revocation seen by every broker within {slowest:?}");
    assert!(listed_topics(&alice, &sasl).is_empty());
    let (ok, out) = kmeta_as(&admin, &sasl, &["acls", "list", "--output", "json"]);
    assert!(
        ok && out.contains("\"g-\"") && !out.contains("orders-"),
        "{out}"
    );

    // Granted a topic prefix, its groups and a look at the cluster, each real client
    // creates a topic, produces, consumes in a group and commits as alice.
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        let group = format!("{lib}-secure");
        let grants: [&[&str]; 3] = [
            &["--topic", "clients-", "--resource-pattern-type", "prefixed"],
            &["--group", &group, "--operation", "Read"],
            &["--cluster", "--operation", "Describe"],
        ];
        for grant in grants {
            let (ok, out) = kmeta_as(
                &admin,
                &sasl,
                &[
                    &["acls", "add", "--allow-principal", "User:alice"][..],
                    grant,
                ]
                .concat(),
            );
            assert!(ok, "{out}");
        }
    }
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        let topic = format!("clients-{lib}");
        let out = as_alice(
            &sasl,
            &[
                "secure", "--client", lib, "--topic", &topic, "--count", "20",
            ],
        );
        println!("{out}");
    }
    drop(c);
}
