//! `kmeta metadata-shell --dir LOGDIR [--dump]`: reads a stopped node's snapshot and log
//! offline and prints its brokers, topics and partitions (or, with `--dump`, every record with
//! its offset). The node's files are copied first and only the copy is opened, so the tool
//! never writes to the node's directory.

use super::{ids, print_json, print_table, Output};
use crate::raft::segment_log::SegmentLog;
use crate::raft::state_file::read_checked;
use crate::raft::state_machine::{apply_proposal, StateMachine};
use crate::raft::types::{Entry, LogId};
use kmeta_metadata::{MetadataImage, MetadataRecord};
use openraft::EntryPayload;
use serde_json::json;
use std::path::{Path, PathBuf};

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The image and records read from a node's metadata directory.
pub struct Offline {
    /// The image after every committed entry.
    pub image: MetadataImage,
    /// Every record with its offset: the snapshot's first, then the log's.
    pub records: Vec<(u64, MetadataRecord)>,
    /// The last offset included.
    pub offset: u64,
}

/// Reads the metadata under `dir` (a node's `log.dirs` directory or its metadata directory).
pub fn read(dir: &Path) -> Result<Offline, String> {
    let meta = if dir.join("__cluster_metadata-0").is_dir() {
        dir.join("__cluster_metadata-0")
    } else {
        dir.to_path_buf()
    };
    if !meta.join("sm").is_dir() && !meta.join("log").is_dir() {
        return Err(format!(
            "{} holds no kmeta metadata log (expected __cluster_metadata-0/)",
            dir.display()
        ));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let copy: PathBuf =
        std::env::temp_dir().join(format!("kmeta-shell-{}-{nanos}", std::process::id()));
    let result = (|| {
        copy_dir(&meta, &copy).map_err(|e| format!("copying {}: {e}", meta.display()))?;
        let sm = StateMachine::open(&copy.join("sm")).map_err(|e| format!("snapshot: {e}"))?;
        let (mut image, mut chain) = sm.image_and_chain();
        let snapshot_offset = sm.last_applied_index();
        let mut records = Vec::new();
        if let Some(at) = snapshot_offset {
            image.for_each_record(|r| records.push((at, r)));
        }
        let log = SegmentLog::open_read_only(copy.join("log").join("log"))
            .map_err(|e| format!("log: {e}"))?;
        // Entries past the committed point may not have committed: stop there.
        let committed = read_checked(&copy.join("log").join("raft-committed"))
            .ok()
            .flatten()
            .and_then(|b| postcard::from_bytes::<Option<LogId>>(&b).ok())
            .flatten()
            .map(|l| l.index());
        let first = snapshot_offset.map_or(0, |s| s + 1);
        let last = committed.or(log.last_index()).unwrap_or(0);
        let mut offset = snapshot_offset.unwrap_or(0);
        for index in first..=last {
            let Some(bytes) = log.get(index) else {
                continue;
            };
            let entry: Entry =
                postcard::from_bytes(&bytes).map_err(|e| format!("entry {index}: {e}"))?;
            match entry.payload {
                EntryPayload::Normal(proposal) => {
                    let admitted = apply_proposal(&mut image, &mut chain, index, &proposal)
                        .map_err(|e| format!("entry {index} does not replay: {e}"))?;
                    if admitted {
                        records.extend(
                            proposal
                                .batch
                                .into_records()
                                .into_iter()
                                .map(|r| (index, r)),
                        );
                    }
                }
                _ => chain.skip(),
            }
            offset = index;
        }
        Ok(Offline {
            image,
            records,
            offset,
        })
    })();
    let _ = std::fs::remove_dir_all(&copy);
    result
}

/// Runs the command.
pub fn run(dir: &Path, dump: bool, output: Output) -> Result<(), String> {
    let offline = read(dir)?;
    if dump {
        match output {
            Output::Json => {
                for (offset, r) in &offline.records {
                    print_json(&json!({"offset": offset, "record": format!("{r:?}")}));
                }
            }
            Output::Table => {
                for (offset, r) in &offline.records {
                    println!("{offset:>8}  {r:?}");
                }
            }
        }
        return Ok(());
    }
    let image = &offline.image;
    let brokers: Vec<_> = image
        .brokers()
        .map(|b| {
            let endpoints: Vec<String> = b
                .listeners
                .iter()
                .map(|l| format!("{}://{}:{}", l.name, l.host, l.port))
                .collect();
            let state = if b.in_controlled_shutdown {
                "controlled shutdown"
            } else if b.fenced {
                "fenced"
            } else {
                "active"
            };
            (
                b.broker_id.0,
                endpoints.join(","),
                b.rack.clone(),
                state,
                b.broker_epoch.0,
            )
        })
        .collect();
    let mut partitions = Vec::new();
    for t in image.topics_by_name() {
        for (p, reg) in t.partitions.iter() {
            let r: Vec<i32> = reg.replicas.iter().map(|b| b.0).collect();
            let isr: Vec<i32> = reg.isr.iter().map(|b| b.0).collect();
            partitions.push((
                t.name.clone(),
                t.id,
                *p,
                reg.leader.0,
                r,
                isr,
                reg.leader_epoch.0,
                reg.partition_epoch.0,
            ));
        }
    }
    match output {
        Output::Json => print_json(&json!({
            "offset": offline.offset,
            "brokers": brokers.iter().map(|(id, e, rack, state, epoch)| json!({"id": id, "endpoints": e, "rack": rack, "state": state, "epoch": epoch})).collect::<Vec<_>>(),
            "topics": image.topics_by_name().map(|t| json!({"name": t.name, "id": t.id.to_string(), "partitions": t.partitions.len()})).collect::<Vec<_>>(),
            "partitions": partitions.iter().map(|(t, _, p, l, r, isr, le, pe)| json!({"topic": t, "partition": p, "leader": l, "replicas": r, "isr": isr, "leader_epoch": le, "partition_epoch": pe})).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!("Metadata up to offset {}", offline.offset);
            println!();
            print_table(
                &["BROKER", "ENDPOINTS", "RACK", "STATE", "EPOCH"],
                &brokers
                    .iter()
                    .map(|(id, e, rack, state, epoch)| {
                        vec![
                            id.to_string(),
                            e.clone(),
                            rack.clone().unwrap_or_else(|| "-".into()),
                            state.to_string(),
                            epoch.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            println!();
            print_table(
                &[
                    "TOPIC",
                    "ID",
                    "PARTITION",
                    "LEADER",
                    "REPLICAS",
                    "ISR",
                    "LEADER EPOCH",
                    "PARTITION EPOCH",
                ],
                &partitions
                    .iter()
                    .map(|(t, id, p, l, r, isr, le, pe)| {
                        vec![
                            t.clone(),
                            id.to_string(),
                            p.to_string(),
                            l.to_string(),
                            ids(r),
                            ids(isr),
                            le.to_string(),
                            pe.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}
