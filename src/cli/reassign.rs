//! `kmeta reassign generate|execute|verify|list|cancel`, with the JSON files of Kafka's
//! `kafka-reassign-partitions.sh`:
//!
//! - topics to move: `{"version":1,"topics":[{"topic":"foo"}]}`
//! - a reassignment: `{"version":1,"partitions":[{"topic":"foo","partition":0,"replicas":[1,2,3]}]}`
//!   (`log_dirs`, if present, is accepted and ignored).

use super::{error_text, ids, print_json, print_table, sb, topic_name, Admin, Output};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, DescribeClusterRequest,
    ListPartitionReassignmentsRequest, TopicName,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// A topics-to-move file.
#[derive(Debug, Deserialize)]
pub struct TopicsToMove {
    /// The topics.
    pub topics: Vec<TopicEntry>,
}

/// One topic in a topics-to-move file.
#[derive(Debug, Deserialize)]
pub struct TopicEntry {
    /// Its name.
    pub topic: String,
}

/// A reassignment file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Reassignment {
    /// Always 1.
    pub version: i32,
    /// The partitions and their target replicas.
    pub partitions: Vec<PartitionMove>,
}

/// One partition of a reassignment file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PartitionMove {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The target replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// Kafka's per-replica log directories; kmeta ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dirs: Option<Vec<String>>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: bad JSON at line {} column {}: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// Parses `--broker-list 1,2,3`.
pub fn parse_broker_list(list: &str) -> Result<Vec<i32>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let id: i32 = item
            .parse()
            .map_err(|_| format!("--broker-list: {item:?} is not a broker id"))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    if out.is_empty() {
        return Err("--broker-list is empty".into());
    }
    Ok(out)
}

/// Proposes target replicas for `current` (partition → replicas) over `brokers`: every broker
/// ends within one replica of the others, as few replicas as possible move (each broker keeps
/// what it holds up to its share), and a partition's new replicas go to racks it does not use
/// yet when possible. Deterministic.
pub fn plan(
    current: &BTreeMap<(String, i32), Vec<i32>>,
    brokers: &[i32],
    racks: &BTreeMap<i32, Option<String>>,
) -> Result<BTreeMap<(String, i32), Vec<i32>>, String> {
    let n = brokers.len();
    let total: usize = current.values().map(Vec::len).sum();
    if let Some(((t, p), r)) = current.iter().find(|(_, r)| r.len() > n) {
        return Err(format!(
            "{t}-{p} has {} replicas but only {n} brokers were given",
            r.len()
        ));
    }
    let (floor, extra) = (total / n, total % n);
    // Brokers already holding the most get the `extra` larger shares: fewer moves.
    let mut held: BTreeMap<i32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
    for r in current.values().flatten() {
        if let Some(h) = held.get_mut(r) {
            *h += 1;
        }
    }
    let mut by_held: Vec<i32> = brokers.to_vec();
    by_held.sort_by_key(|b| (std::cmp::Reverse(held[b]), *b));
    let cap: BTreeMap<i32, usize> = by_held
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, floor + usize::from(i < extra)))
        .collect();
    // Start from the current assignment; replicas on brokers not in the list leave holes.
    let mut assign: BTreeMap<(String, i32), Vec<Option<i32>>> = current
        .iter()
        .map(|(tp, r)| {
            (
                tp.clone(),
                r.iter()
                    .map(|b| cap.contains_key(b).then_some(*b))
                    .collect(),
            )
        })
        .collect();
    let mut load: BTreeMap<i32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
    for b in assign.values().flatten().flatten() {
        *load.get_mut(b).expect("a listed broker") += 1;
    }
    let rack = |b: &i32| racks.get(b).cloned().flatten();
    // The best broker to take a slot in `slots` (other than position `skip`): below its share
    // first, then on a rack the partition does not use, then least loaded, then lowest id.
    let best = |slots: &[Option<i32>],
                skip: Option<usize>,
                load: &BTreeMap<i32, usize>,
                below_only: bool| {
        let others: Vec<i32> = slots
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .filter_map(|(_, b)| *b)
            .collect();
        let used: BTreeSet<Option<String>> = others.iter().map(rack).collect();
        brokers
            .iter()
            .filter(|b| {
                !others.contains(b) && slots.get(skip.unwrap_or(usize::MAX)) != Some(&Some(**b))
            })
            .filter(|b| !below_only || load[b] < cap[b])
            .min_by_key(|b| {
                let r = rack(b);
                (
                    load[b] >= cap[b],
                    r.is_some() && used.contains(&r),
                    load[b],
                    **b,
                )
            })
            .copied()
    };
    // Fill the holes.
    for (tp, slots) in assign.iter_mut() {
        for i in 0..slots.len() {
            if slots[i].is_none() {
                let pick = best(slots, Some(i), &load, false)
                    .ok_or_else(|| format!("no broker left for {}-{}", tp.0, tp.1))?;
                slots[i] = Some(pick);
                *load.get_mut(&pick).expect("a listed broker") += 1;
            }
        }
    }
    // Move replicas off brokers above their share, one at a time, to brokers below theirs:
    // every move removes one replica of excess, so the count of moves is the excess itself.
    // Followers move before leaders (the first replica is the preferred leader).
    while let Some(over) = brokers.iter().copied().find(|b| load[b] > cap[b]) {
        let mut moved = false;
        'search: for leader_pass in [false, true] {
            for slots in assign.values_mut() {
                let Some(pos) = slots.iter().position(|b| *b == Some(over)) else {
                    continue;
                };
                if (pos == 0) != leader_pass {
                    continue;
                }
                if let Some(to) = best(slots, Some(pos), &load, true) {
                    slots[pos] = Some(to);
                    *load.get_mut(&over).expect("listed") -= 1;
                    *load.get_mut(&to).expect("listed") += 1;
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            break;
        }
    }
    Ok(assign
        .into_iter()
        .map(|(tp, slots)| (tp, slots.into_iter().flatten().collect()))
        .collect())
}

fn to_file(map: &BTreeMap<(String, i32), Vec<i32>>) -> Reassignment {
    Reassignment {
        version: 1,
        partitions: map
            .iter()
            .map(|((t, p), r)| PartitionMove {
                topic: t.clone(),
                partition: *p,
                replicas: r.clone(),
                log_dirs: None,
            })
            .collect(),
    }
}

/// `reassign generate`.
pub async fn generate(
    admin: &mut Admin,
    topics_file: &Path,
    broker_list: &str,
    output: Output,
) -> Result<(), String> {
    let wanted: TopicsToMove = read_json(topics_file)?;
    let brokers = parse_broker_list(broker_list)?;
    let names: Vec<String> = wanted.topics.iter().map(|t| t.topic.clone()).collect();
    let md = admin.metadata(Some(&names)).await?;
    let mut current = BTreeMap::new();
    for t in &md.topics {
        if t.error_code != 0 {
            return Err(format!(
                "{}: {}",
                topic_name(t),
                error_text(t.error_code, None)
            ));
        }
        for p in &t.partitions {
            current.insert(
                (topic_name(t), p.partition_index),
                p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(),
            );
        }
    }
    let cluster = admin
        .send(
            &DescribeClusterRequest::default().with_include_fenced_brokers(true),
            2,
        )
        .await?;
    let racks: BTreeMap<i32, Option<String>> = cluster
        .brokers
        .iter()
        .map(|b| (b.broker_id.0, b.rack.as_ref().map(|r| r.to_string())))
        .collect();
    if let Some(unknown) = brokers.iter().find(|b| !racks.contains_key(b)) {
        return Err(format!("--broker-list: broker {unknown} is not registered"));
    }
    let proposed = plan(&current, &brokers, &racks)?;
    let moved: usize = current
        .iter()
        .map(|(tp, r)| r.iter().filter(|b| !proposed[tp].contains(b)).count())
        .sum();
    let (cur, prop) = (to_file(&current), to_file(&proposed));
    match output {
        Output::Json => {
            print_json(&json!({"current": cur, "proposed": prop, "replicas_moved": moved}))
        }
        Output::Table => {
            println!("Current partition replica assignment");
            println!("{}", serde_json::to_string(&cur).expect("serializable"));
            println!();
            println!("Proposed partition reassignment configuration ({moved} replicas move)");
            println!("{}", serde_json::to_string(&prop).expect("serializable"));
        }
    }
    Ok(())
}

async fn alter(
    admin: &mut Admin,
    moves: &[PartitionMove],
    cancel: bool,
) -> Result<Vec<(String, i32, String)>, String> {
    let mut topics: BTreeMap<String, Vec<ReassignablePartition>> = BTreeMap::new();
    for m in moves {
        topics.entry(m.topic.clone()).or_default().push(
            ReassignablePartition::default()
                .with_partition_index(m.partition)
                .with_replicas(
                    (!cancel).then(|| m.replicas.iter().map(|b| BrokerId(*b)).collect()),
                ),
        );
    }
    let r = admin
        .send(
            &AlterPartitionReassignmentsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            ReassignableTopic::default()
                                .with_name(TopicName(sb(&t)))
                                .with_partitions(ps)
                        })
                        .collect(),
                ),
            0,
        )
        .await?;
    if r.error_code != 0 {
        return Err(error_text(r.error_code, r.error_message.as_ref()));
    }
    let mut failures = Vec::new();
    for t in &r.responses {
        for p in &t.partitions {
            if p.error_code != 0 {
                failures.push((
                    t.name.0.to_string(),
                    p.partition_index,
                    error_text(p.error_code, p.error_message.as_ref()),
                ));
            }
        }
    }
    Ok(failures)
}

async fn ongoing(
    admin: &mut Admin,
) -> Result<BTreeMap<(String, i32), (Vec<i32>, Vec<i32>, Vec<i32>)>, String> {
    let r = admin
        .send(
            &ListPartitionReassignmentsRequest::default().with_topics(None),
            0,
        )
        .await?;
    if r.error_code != 0 {
        return Err(error_text(r.error_code, r.error_message.as_ref()));
    }
    let mut out = BTreeMap::new();
    for t in &r.topics {
        for p in &t.partitions {
            let v = |l: &Vec<BrokerId>| l.iter().map(|b| b.0).collect::<Vec<_>>();
            out.insert(
                (t.name.0.to_string(), p.partition_index),
                (
                    v(&p.replicas),
                    v(&p.adding_replicas),
                    v(&p.removing_replicas),
                ),
            );
        }
    }
    Ok(out)
}

/// `reassign execute [--wait]`.
pub async fn execute(
    admin: &mut Admin,
    file: &Path,
    wait: bool,
    output: Output,
) -> Result<(), String> {
    let plan: Reassignment = read_json(file)?;
    if plan.partitions.is_empty() {
        return Err(format!("{}: no partitions to reassign", file.display()));
    }
    let failures = alter(admin, &plan.partitions, false).await?;
    if !failures.is_empty() {
        let text: Vec<String> = failures
            .iter()
            .map(|(t, p, e)| format!("{t}-{p}: {e}"))
            .collect();
        return Err(format!("reassignment refused: {}", text.join("; ")));
    }
    if output == Output::Table {
        println!(
            "Started the reassignment of {} partitions.",
            plan.partitions.len()
        );
    }
    if wait {
        let total = plan.partitions.len();
        let start = Instant::now();
        loop {
            let now = ongoing(admin).await?;
            let left = plan
                .partitions
                .iter()
                .filter(|m| now.contains_key(&(m.topic.clone(), m.partition)))
                .count();
            let done = total - left;
            if output == Output::Table {
                let width = 30;
                let filled = done * width / total;
                eprint!(
                    "\r[{}{}] {done}/{total} partitions done",
                    "#".repeat(filled),
                    "-".repeat(width - filled)
                );
                let _ = std::io::stderr().flush();
            }
            if left == 0 {
                if output == Output::Table {
                    eprintln!();
                }
                break;
            }
            if start.elapsed() > Duration::from_secs(600) {
                return Err(format!(
                    "{left} of {total} partitions still moving after 10 minutes"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if output == Output::Json {
        print_json(&json!({"started": plan.partitions.len(), "waited": wait}));
    } else if wait {
        println!(
            "Reassignment of {} partitions completed.",
            plan.partitions.len()
        );
    }
    Ok(())
}

/// `reassign verify`: per partition, done, still moving, or not as the file says.
pub async fn verify(admin: &mut Admin, file: &Path, output: Output) -> Result<(), String> {
    let plan: Reassignment = read_json(file)?;
    let now = ongoing(admin).await?;
    let names: Vec<String> = plan
        .partitions
        .iter()
        .map(|m| m.topic.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let md = admin.metadata(Some(&names)).await?;
    let mut replicas: BTreeMap<(String, i32), Vec<i32>> = BTreeMap::new();
    for t in &md.topics {
        for p in &t.partitions {
            replicas.insert(
                (topic_name(t), p.partition_index),
                p.replica_nodes.iter().map(|b| b.0).collect(),
            );
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut all_done = true;
    for m in &plan.partitions {
        let key = (m.topic.clone(), m.partition);
        let state = if now.contains_key(&key) {
            all_done = false;
            "in progress"
        } else if replicas.get(&key) == Some(&m.replicas) {
            "completed"
        } else {
            all_done = false;
            "not as requested"
        };
        rows.push(vec![
            m.topic.clone(),
            m.partition.to_string(),
            ids(&m.replicas),
            state.to_string(),
        ]);
        out.push(json!({"topic": m.topic, "partition": m.partition, "target": m.replicas, "state": state}));
    }
    match output {
        Output::Json => print_json(&json!({"partitions": out, "done": all_done})),
        Output::Table => print_table(&["TOPIC", "PARTITION", "TARGET", "STATE"], &rows),
    }
    Ok(())
}

/// `reassign list`: reassignments in flight.
pub async fn list(admin: &mut Admin, output: Output) -> Result<(), String> {
    let now = ongoing(admin).await?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for ((t, p), (replicas, adding, removing)) in &now {
        rows.push(vec![
            t.clone(),
            p.to_string(),
            ids(replicas),
            ids(adding),
            ids(removing),
        ]);
        out.push(json!({"topic": t, "partition": p, "replicas": replicas, "adding": adding, "removing": removing}));
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(
            &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
            &rows,
        ),
    }
    Ok(())
}

/// `reassign cancel`: cancels the reassignments of the file's partitions.
pub async fn cancel(admin: &mut Admin, file: &Path, output: Output) -> Result<(), String> {
    let plan: Reassignment = read_json(file)?;
    let failures = alter(admin, &plan.partitions, true).await?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for m in &plan.partitions {
        let failure = failures
            .iter()
            .find(|(t, p, _)| *t == m.topic && *p == m.partition);
        let state = failure.map_or("cancelled".to_string(), |f| f.2.clone());
        rows.push(vec![
            m.topic.clone(),
            m.partition.to_string(),
            state.clone(),
        ]);
        out.push(json!({"topic": m.topic, "partition": m.partition, "outcome": state}));
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(&["TOPIC", "PARTITION", "OUTCOME"], &rows),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(brokers: &[i32], partitions: i32, rf: usize) -> BTreeMap<(String, i32), Vec<i32>> {
        (0..partitions)
            .map(|p| {
                let r = (0..rf)
                    .map(|i| brokers[(p as usize + i) % brokers.len()])
                    .collect();
                (("t".to_string(), p), r)
            })
            .collect()
    }

    fn loads(plan: &BTreeMap<(String, i32), Vec<i32>>) -> BTreeMap<i32, usize> {
        let mut l = BTreeMap::new();
        for r in plan.values().flatten() {
            *l.entry(*r).or_default() += 1;
        }
        l
    }

    #[test]
    fn expanding_from_three_to_four_brokers_moves_only_what_balance_needs() {
        let now = current(&[1, 2, 3], 8, 3); // 24 replicas, 8 per broker
        let racks = BTreeMap::new();
        let plan = plan(&now, &[1, 2, 3, 4], &racks).unwrap();
        let l = loads(&plan);
        assert_eq!(l.values().copied().collect::<Vec<_>>(), vec![6, 6, 6, 6]);
        let moved: usize = now
            .iter()
            .map(|(tp, r)| r.iter().filter(|b| !plan[tp].contains(b)).count())
            .sum();
        assert_eq!(moved, 6, "broker 4's share, and nothing else");
        for r in plan.values() {
            let set: BTreeSet<_> = r.iter().collect();
            assert_eq!(set.len(), r.len(), "no broker twice in {r:?}");
        }
    }

    #[test]
    fn an_uneven_total_ends_within_one_replica_and_racks_stay_apart() {
        let now = current(&[1, 2], 5, 2); // 10 replicas
        let racks: BTreeMap<i32, Option<String>> = [
            (1, Some("a".into())),
            (2, Some("b".into())),
            (3, Some("a".into())),
            (4, Some("b".into())),
        ]
        .into_iter()
        .collect();
        let plan = plan(&now, &[1, 2, 3, 4], &racks).unwrap();
        let l = loads(&plan);
        let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
        assert!(max - min <= 1, "{l:?}");
        for r in plan.values() {
            let rs: BTreeSet<_> = r.iter().map(|b| racks[b].clone()).collect();
            assert_eq!(rs.len(), 2, "replicas {r:?} share a rack");
        }
    }

    #[test]
    fn too_few_brokers_for_the_replication_factor_is_an_error() {
        assert!(plan(&current(&[1, 2, 3], 2, 3), &[1, 2], &BTreeMap::new()).is_err());
    }
}
