//! Consumer groups with real clients as black boxes: members share a topic's partitions,
//! rebalance when one joins or is killed, commit what they consume, and resume from the
//! committed offsets when the coordinator broker dies. `tests/clients/check.py group-member`
//! logs each member's assignments, and each batch before and after its synchronous commit.

use crate::cluster::{client, until, wait_for_three_brokers, ProcessCluster};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PARTITIONS: i32 = 6;
const BIN: &str = env!("CARGO_BIN_EXE_kmeta");

/// One `check.py group-member` process.
struct Member {
    child: Child,
    out: PathBuf,
}

impl Member {
    fn start(c: &ProcessCluster, client: &str, group: &str, topic: &str, name: &str) -> Member {
        Member::start_with(c, client, group, topic, name, &[])
    }

    /// With more `check.py group-member` arguments (`--instance`, `--assignor`).
    fn start_with(
        c: &ProcessCluster,
        client: &str,
        group: &str,
        topic: &str,
        name: &str,
        extra: &[&str],
    ) -> Member {
        let python = std::env::var("KMETA_PYTHON").expect("KMETA_PYTHON (scripts/test.sh sets it)");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/check.py");
        let out = c.dir.path().join(format!("{name}.jsonl"));
        // It stops by itself after --seconds; Drop kills it sooner.
        let child = Command::new(python)
            .arg(script)
            .args([
                "group-member",
                "--bootstrap",
                &c.bootstrap(),
                "--topic",
                topic,
                "--group",
                group,
                "--client",
                client,
                "--out",
                out.to_str().unwrap(),
                "--stop",
                stop_file(c).to_str().unwrap(),
                "--seconds",
                "160",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(c.dir.path().join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        Member { child, out }
    }

    fn log(&self) -> MemberLog {
        MemberLog::read(&self.out)
    }

    /// `kill -9`: no LeaveGroup is sent.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop_file(c: &ProcessCluster) -> PathBuf {
    c.dir.path().join("stop-members")
}

/// What one member logged.
#[derive(Default)]
struct MemberLog {
    assigned: BTreeSet<i32>,
    /// Each batch's values, and whether its commit succeeded (`None`: it never finished).
    batches: Vec<(Vec<String>, Option<bool>)>,
}

impl MemberLog {
    fn read(path: &Path) -> MemberLog {
        let mut log = MemberLog::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue; // a line cut short by kill -9
            };
            if let Some(a) = v["assigned"].as_array() {
                log.assigned = a
                    .iter()
                    .filter_map(|tp| tp[1].as_i64())
                    .map(|p| p as i32)
                    .collect();
            } else if let Some(b) = v["batch"].as_array() {
                let values = b
                    .iter()
                    .filter_map(|m| m[2].as_str().map(str::to_string))
                    .collect();
                log.batches.push((values, None));
            } else if let Some(ok) = v["committed"].as_bool() {
                if let Some(last) = log.batches.last_mut() {
                    last.1 = Some(ok);
                }
            }
        }
        log
    }
}

/// Values consumed by any of `logs`.
fn consumed(logs: &[MemberLog]) -> BTreeSet<String> {
    logs.iter()
        .flat_map(|l| l.batches.iter().flat_map(|(v, _)| v.iter().cloned()))
        .collect()
}

/// Every value in `0..n` was consumed, and none in two batches whose commits succeeded: a
/// message is consumed again only after a commit that failed or never ran (a killed member).
fn assert_consumed_once(logs: &[MemberLog], n: usize, what: &str) {
    let got = consumed(logs);
    let missing: Vec<usize> = (0..n).filter(|i| !got.contains(&i.to_string())).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} never consumed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let mut committed: BTreeMap<&str, usize> = BTreeMap::new();
    for l in logs {
        for (values, ok) in &l.batches {
            if *ok == Some(true) {
                for v in values {
                    *committed.entry(v).or_default() += 1;
                }
            }
        }
    }
    let twice: Vec<&&str> = committed
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, _)| v)
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: {} messages consumed and committed twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

/// The members' assignments split every partition among all of them, each with some.
fn split_among(members: &[&Member]) -> bool {
    let logs: Vec<MemberLog> = members.iter().map(|m| m.log()).collect();
    let mut all = BTreeSet::new();
    for l in &logs {
        if l.assigned.is_empty() || !l.assigned.is_disjoint(&all) {
            return false;
        }
        all.extend(l.assigned.iter().copied());
    }
    all.len() == PARTITIONS as usize
}

/// A topic of six partitions, RF 3.
fn create_topic(c: &ProcessCluster, topic: &str) {
    client(&[
        "create",
        "--bootstrap",
        &c.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        &PARTITIONS.to_string(),
        "--rf",
        "3",
    ]);
}

fn produce(c: &ProcessCluster, topic: &str, from: usize, count: usize) {
    client(&[
        "produce-spread",
        "--bootstrap",
        &c.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        &PARTITIONS.to_string(),
        "--offset",
        &from.to_string(),
        "--count",
        &count.to_string(),
    ]);
}

/// `kmeta groups describe --output json`.
fn describe(c: &ProcessCluster, group: &str) -> Option<Value> {
    let out = Command::new(BIN)
        .args([
            "groups",
            "describe",
            "--group",
            group,
            "--output",
            "json",
            "--bootstrap-server",
        ])
        .arg(c.bootstrap())
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn total_lag(v: &Value) -> Option<i64> {
    v["partitions"]
        .as_array()?
        .iter()
        .map(|p| p["lag"].as_i64())
        .sum()
}

#[test]
fn each_client_shares_partitions_rebalances_on_join_and_on_kill_and_consumes_each_message_once() {
    let c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    let clients = ["confluent", "kafka-python", "aiokafka"];
    for name in clients {
        let topic = format!("orders-{name}");
        create_topic(&c, &topic);
        produce(&c, &topic, 0, 300);
    }
    // Two members per client, each client its own group and topic, all at once.
    let mut members: BTreeMap<&str, Vec<Member>> = BTreeMap::new();
    for name in clients {
        let (group, topic) = (format!("g-{name}"), format!("orders-{name}"));
        let list = (0..2)
            .map(|i| Member::start(&c, name, &group, &topic, &format!("{name}-{i}")))
            .collect();
        members.insert(name, list);
    }
    let logs = |ms: &Vec<Member>| ms.iter().map(|m| m.log()).collect::<Vec<_>>();
    for name in clients {
        let ms = &members[name];
        until(
            Duration::from_secs(60),
            &format!("{name}: two members split the partitions"),
            || split_among(&ms.iter().collect::<Vec<_>>()).then_some(()),
        );
        until(
            Duration::from_secs(60),
            &format!("{name}: 300 consumed"),
            || (consumed(&logs(ms)).len() >= 300).then_some(()),
        );
    }
    // A third member joins: the partitions spread over three.
    for name in clients {
        let (group, topic) = (format!("g-{name}"), format!("orders-{name}"));
        let third = Member::start(&c, name, &group, &topic, &format!("{name}-2"));
        members.get_mut(name).unwrap().push(third);
    }
    for name in clients {
        let ms = &members[name];
        until(
            Duration::from_secs(60),
            &format!("{name}: three members split the partitions"),
            || split_among(&ms.iter().collect::<Vec<_>>()).then_some(()),
        );
        produce(&c, &format!("orders-{name}"), 300, 300);
    }
    for name in clients {
        let ms = &members[name];
        until(
            Duration::from_secs(60),
            &format!("{name}: 600 consumed"),
            || (consumed(&logs(ms)).len() >= 600).then_some(()),
        );
    }
    // kill -9 of one member: after its session timeout (6 s) the other two take its partitions.
    for name in clients {
        members.get_mut(name).unwrap()[1].kill();
    }
    for name in clients {
        let ms = &members[name];
        until(
            Duration::from_secs(60),
            &format!("{name}: the survivors split the partitions"),
            || split_among(&[&ms[0], &ms[2]]).then_some(()),
        );
        produce(&c, &format!("orders-{name}"), 600, 300);
    }
    for name in clients {
        let ms = &members[name];
        until(
            Duration::from_secs(60),
            &format!("{name}: 900 consumed"),
            || (consumed(&logs(ms)).len() >= 900).then_some(()),
        );
        assert_consumed_once(&logs(ms), 900, name);
        // Every consumed message is committed: no lag.
        until(Duration::from_secs(30), &format!("{name}: lag 0"), || {
            let v = describe(&c, &format!("g-{name}"))?;
            (total_lag(&v)? == 0 && v["members"] == 2).then_some(())
        });
    }
    // The members leave; what is produced next is exactly the lag shown.
    std::fs::write(stop_file(&c), "").unwrap();
    for name in clients {
        for m in members.get_mut(name).unwrap() {
            let _ = m.child.wait();
        }
        produce(&c, &format!("orders-{name}"), 900, 120);
        let v = until(Duration::from_secs(30), &format!("{name}: lag 120"), || {
            let v = describe(&c, &format!("g-{name}"))?;
            (total_lag(&v)? == 120).then_some(v)
        });
        assert_eq!(v["state"], "Empty", "{v}");
        for p in v["partitions"].as_array().unwrap() {
            assert_eq!(p["lag"], 20, "{v}");
            assert_eq!(
                p["log_end_offset"].as_i64().unwrap() - p["current_offset"].as_i64().unwrap(),
                20,
                "{v}"
            );
        }
    }
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then wait for the exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A kcat `-G` balanced consumer printing `partition offset value` lines.
fn kcat_member(c: &ProcessCluster, group: &str, topic: &str, name: &str) -> Proc {
    Proc(
        Command::new("kcat")
            .args(["-b", &c.bootstrap(), "-G", group, topic])
            // The start offset only where the group has none: kcat's `-o` in balanced mode
            // rewinds every newly assigned partition, and a member stopped just after a
            // rebalance then commits the rewound position.
            .args([
                "-u",
                "-f",
                "%p %o %s\n",
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "auto.offset.reset=earliest",
            ])
            .stdout(std::fs::File::create(c.dir.path().join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(c.dir.path().join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The partitions kcat `name` was last assigned, from its "rebalanced ... assigned:" lines
/// (a revocation empties them).
fn kcat_assigned(c: &ProcessCluster, name: &str) -> BTreeSet<i32> {
    let text =
        std::fs::read_to_string(c.dir.path().join(format!("{name}.err"))).unwrap_or_default();
    let mut now = BTreeSet::new();
    for line in text.lines().filter(|l| l.contains("rebalanced")) {
        now.clear();
        if let Some((_, list)) = line.split_once("assigned:") {
            now = list
                .split(',')
                .filter_map(|tp| {
                    tp.trim()
                        .split_once('[')?
                        .1
                        .trim_end_matches(']')
                        .parse()
                        .ok()
                })
                .collect();
        }
    }
    now
}

fn kcat_values(c: &ProcessCluster, names: &[&str]) -> BTreeSet<String> {
    names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(c.dir.path().join(format!("{n}.out")))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn kcat_split(c: &ProcessCluster, names: &[&str]) -> bool {
    let mut all = BTreeSet::new();
    for n in names {
        let a = kcat_assigned(c, n);
        if a.is_empty() || !a.is_disjoint(&all) {
            return false;
        }
        all.extend(a);
    }
    all.len() == PARTITIONS as usize
}

#[test]
fn kcat_balanced_consumers_share_partitions_rebalance_and_commit() {
    let c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    let (group, topic) = ("g-kcat", "orders-kcat");
    create_topic(&c, topic);
    produce(&c, topic, 0, 300);
    let mut a = kcat_member(&c, group, topic, "kcat-0");
    let b = kcat_member(&c, group, topic, "kcat-1");
    until(
        Duration::from_secs(60),
        "two kcat members split the partitions",
        || kcat_split(&c, &["kcat-0", "kcat-1"]).then_some(()),
    );
    until(Duration::from_secs(60), "300 consumed", || {
        (kcat_values(&c, &["kcat-0", "kcat-1"]).len() >= 300).then_some(())
    });
    let mut third = kcat_member(&c, group, topic, "kcat-2");
    until(
        Duration::from_secs(60),
        "three kcat members split the partitions",
        || kcat_split(&c, &["kcat-0", "kcat-1", "kcat-2"]).then_some(()),
    );
    // kill -9 of one: its partitions move to the others after its session timeout.
    drop(b);
    produce(&c, topic, 300, 300);
    until(
        Duration::from_secs(60),
        "the survivors split the partitions",
        || kcat_split(&c, &["kcat-0", "kcat-2"]).then_some(()),
    );
    until(Duration::from_secs(60), "600 consumed", || {
        (kcat_values(&c, &["kcat-0", "kcat-1", "kcat-2"]).len() >= 600).then_some(())
    });
    // kcat commits as it goes (auto-commit) and when it stops: nothing is left to consume.
    a.terminate();
    third.terminate();
    let start = std::time::Instant::now();
    loop {
        let v = describe(&c, group);
        if v.as_ref().and_then(total_lag) == Some(0) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let tail = |n: &str| {
                let t = std::fs::read_to_string(c.dir.path().join(format!("{n}.err")))
                    .unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            };
            let id = *c.controllers.keys().next().unwrap();
            let dump = Command::new(BIN)
                .args(["metadata-shell", "--dump", "--dir"])
                .arg(c.dir.path().join(format!("data-{id}")))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let commits: Vec<&str> = dump
                .lines()
                .filter(|l| l.contains("g-kcat") && l.contains("offset: 1,"))
                .collect();
            eprintln!("offset records of partition 0:\n{}", commits.join("\n"));
            panic!(
                "no lag 0 30 s after the members stopped: {v:?}\nkcat-0:\n{}\nkcat-2:\n{}\nbroker logs:\n{}\n{}\n{}",
                tail("kcat-0"),
                tail("kcat-2"),
                c.log_tail(1),
                c.log_tail(2),
                c.log_tail(3)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn killing_the_coordinator_moves_the_group_and_consumption_resumes_from_committed_offsets() {
    let mut c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    let (group, topic) = ("g-failover", "orders-failover");
    create_topic(&c, topic);
    produce(&c, topic, 0, 300);
    let members = [
        Member::start(&c, "confluent", group, topic, "failover-0"),
        Member::start(&c, "confluent", group, topic, "failover-1"),
    ];
    let logs = || members.iter().map(|m| m.log()).collect::<Vec<_>>();
    until(
        Duration::from_secs(60),
        "300 consumed and committed",
        || {
            let v = describe(&c, group)?;
            (consumed(&logs()).len() >= 300 && total_lag(&v)? == 0).then_some(())
        },
    );
    let before = describe(&c, group).unwrap();
    let coordinator = before["coordinator"].as_u64().unwrap();
    c.kill(coordinator);
    // The group moves to a live broker, which has the committed offsets.
    let after = until(Duration::from_secs(60), "a new coordinator", || {
        let v = describe(&c, group)?;
        (v["coordinator"].as_u64()? != coordinator).then_some(v)
    });
    for p in after["partitions"].as_array().unwrap() {
        assert!(
            p["current_offset"].as_i64().unwrap() >= 50,
            "committed offsets lost: {after}"
        );
    }
    produce(&c, topic, 300, 300);
    until(Duration::from_secs(90), "600 consumed", || {
        (consumed(&logs()).len() >= 600).then_some(())
    });
    // Consumption resumed from the committed offsets: nothing committed twice.
    assert_consumed_once(&logs(), 600, "failover");
    until(
        Duration::from_secs(30),
        "lag 0 at the new coordinator",
        || {
            let v = describe(&c, group)?;
            (total_lag(&v)? == 0 && v["members"] == 2).then_some(())
        },
    );
}

/// How many rebalances reached a confluent member (its on_assign callbacks).
fn rebalances(m: &Member) -> usize {
    std::fs::read_to_string(&m.out)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"rebalanced\""))
        .count()
}

#[test]
fn a_restarted_static_member_gets_its_partitions_back_without_a_rebalance_and_cooperative_members_share(
) {
    let c = ProcessCluster::start(3, 3, "");
    wait_for_three_brokers(&c);
    for topic in ["orders-static", "orders-coop"] {
        create_topic(&c, topic);
        produce(&c, topic, 0, 300);
    }
    let (group, topic) = ("g-static", "orders-static");
    let a = Member::start_with(
        &c,
        "confluent",
        group,
        topic,
        "static-0",
        &["--instance", "inst-0"],
    );
    let mut b = Member::start_with(
        &c,
        "confluent",
        group,
        topic,
        "static-1",
        &["--instance", "inst-1"],
    );
    let coop = ["--assignor", "cooperative-sticky"];
    let mut cooperative = vec![
        Member::start_with(&c, "confluent", "g-coop", "orders-coop", "coop-0", &coop),
        Member::start_with(&c, "confluent", "g-coop", "orders-coop", "coop-1", &coop),
    ];
    until(
        Duration::from_secs(60),
        "two static members split the partitions",
        || split_among(&[&a, &b]).then_some(()),
    );
    until(Duration::from_secs(60), "300 consumed", || {
        (consumed(&[a.log(), b.log()]).len() >= 300).then_some(())
    });
    // kill -9 and restart with the same group.instance.id, within the session timeout: it
    // takes its old member's place, and the group does not rebalance.
    let held = b.log().assigned;
    let before = rebalances(&a);
    b.kill();
    let b2 = Member::start_with(
        &c,
        "confluent",
        group,
        topic,
        "static-1b",
        &["--instance", "inst-1"],
    );
    until(
        Duration::from_secs(30),
        "the restarted static member's old partitions",
        || (b2.log().assigned == held).then_some(()),
    );
    produce(&c, topic, 300, 300);
    until(Duration::from_secs(60), "600 consumed", || {
        (consumed(&[a.log(), b.log(), b2.log()]).len() >= 600).then_some(())
    });
    assert!(before > 0, "on_assign is logged");
    assert_eq!(rebalances(&a), before, "the other member was rebalanced");
    assert_consumed_once(&[a.log(), b.log(), b2.log()], 600, "static");
    // cooperative-sticky: a third member joins and the partitions spread over three.
    until(
        Duration::from_secs(60),
        "two cooperative members split the partitions",
        || split_among(&cooperative.iter().collect::<Vec<_>>()).then_some(()),
    );
    cooperative.push(Member::start_with(
        &c,
        "confluent",
        "g-coop",
        "orders-coop",
        "coop-2",
        &coop,
    ));
    until(
        Duration::from_secs(60),
        "three cooperative members split the partitions",
        || split_among(&cooperative.iter().collect::<Vec<_>>()).then_some(()),
    );
    produce(&c, "orders-coop", 300, 300);
    let logs = || cooperative.iter().map(|m| m.log()).collect::<Vec<_>>();
    until(Duration::from_secs(60), "600 consumed", || {
        (consumed(&logs()).len() >= 600).then_some(())
    });
    assert_consumed_once(&logs(), 600, "cooperative");
}
