//! `kmeta bench quorum`: committed-write throughput and failover time of a 3-controller quorum
//! in this process (real TCP on 127.0.0.1, real fsync on the data directory's disk).
//!
//! Throughput: W concurrent writers each submit offset commits (one record per commit) to the
//! active controller for a fixed time; a commit counts once its reply arrives, i.e. once it is
//! fsynced on a majority and applied. Failover: while a writer commits in a loop, the active
//! controller is stopped abruptly (its tasks aborted, its Raft shut down); the time to the next
//! acknowledged commit on the new active controller is measured.

pub mod brokers;
pub mod compare;
pub mod failover;
pub mod produce;
pub mod scale;

use crate::controller::Controller;
use crate::local::LocalQuorum;
use kmeta_metadata::controller::cluster::{BrokerHeartbeatRequest, BrokerRegistrationRequest};
use kmeta_metadata::controller::offsets::{
    commit_offsets, OffsetCommitPartition, OffsetCommitRequest,
};
use kmeta_metadata::controller::replication::topics::{create_topics, CreatableTopic};
use kmeta_metadata::controller::ControllerConfig;
use kmeta_metadata::record::Endpoint;
use kmeta_metadata::{ApiError, BrokerId, ErrorCode, LogOffset};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Has the kernel kill the process `command` starts if the benchmark dies (Ctrl-C, a
/// timeout), so no server is left behind.
pub(crate) fn die_with_parent(command: &mut std::process::Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches nothing of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The `q` quantile of `sorted` (nearest rank, rounded), or `None` when it is empty.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(last as f64 * q).round() as usize])
}

async fn active(quorum: &LocalQuorum, within: Duration) -> Result<(u64, Controller), String> {
    quorum
        .active_controller(within)
        .await
        .ok_or_else(|| "no active controller".to_string())
}

fn commit_request(writer: usize, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: format!("bench-{writer}"),
        generation_id: -1,
        member_id: String::new(),
        coordinator: None,
        partitions: vec![OffsetCommitPartition {
            topic: "bench".into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        }],
    }
}

async fn commit(c: &Controller, writer: usize, offset: i64) -> Result<(), ApiError> {
    let req = commit_request(writer, offset);
    c.submit(move |ctx| Ok(commit_offsets(ctx.image, &req, ctx.wall_ms)))
        .await
        .map(|_| ())
}

async fn setup(quorum: &LocalQuorum) -> Result<Controller, String> {
    let (leader, c) = active(quorum, Duration::from_secs(10)).await?;
    let req = BrokerRegistrationRequest {
        broker_id: BrokerId(1),
        cluster_id: "bench".into(),
        incarnation_id: uuid::Uuid::new_v4(),
        listeners: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092,
            security_protocol: 0,
        }],
        features: vec![],
        rack: None,
        previous_broker_epoch: None,
        log_dir_intact: false,
    };
    let epoch = c.register_broker(req).await.map_err(|e| e.to_string())?;
    let applied = quorum.nodes[&leader].sm.last_applied_index().unwrap_or(0);
    c.heartbeat(BrokerHeartbeatRequest {
        broker_id: BrokerId(1),
        broker_epoch: epoch,
        current_metadata_offset: LogOffset(applied as i64),
        want_fence: false,
        want_shut_down: false,
    })
    .await
    .map_err(|e| e.to_string())?;
    let topic = CreatableTopic {
        name: "bench".into(),
        topic_id: uuid::Uuid::new_v4(),
        num_partitions: 1,
        replication_factor: 1,
        assignments: vec![],
        configs: vec![],
    };
    let reply = c
        .submit(move |ctx| Ok(create_topics(ctx.image, ctx.config, &[topic], false)))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = &reply[0].error {
        return Err(e.to_string());
    }
    Ok(c)
}

/// Runs the quorum benchmark; returns a Markdown report.
pub async fn quorum(
    writers: &[usize],
    seconds: u64,
    failovers: usize,
    dir: &Path,
) -> Result<String, String> {
    let config = ControllerConfig {
        cluster_id: "bench".into(),
        // Sessions never expire during the benchmark (the one broker does not heartbeat).
        session_timeout_ms: 3_600_000,
        ..ControllerConfig::default()
    };
    let mut quorum = LocalQuorum::start(3, dir, config)
        .await
        .map_err(|e| e.to_string())?;
    let c = setup(&quorum).await?;
    let mut report =
        String::from("| writers | committed records/s | records | seconds |\n|---|---|---|---|\n");
    for &w in writers {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let tasks: Vec<_> = (0..w)
            .map(|writer| {
                let c = c.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let mut i = 0i64;
                    while Instant::now() < deadline {
                        if commit(&c, writer, i).await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        report.push_str(&format!(
            "| {w} | {:.0} | {n} | {elapsed:.1} |\n",
            n as f64 / elapsed
        ));
    }
    report.push_str(
        "\n| failover | stop of active controller → next acknowledged write |\n|---|---|\n",
    );
    for round in 1..=failovers {
        let (leader, c) = active(&quorum, Duration::from_secs(10)).await?;
        commit(&c, 0, 0).await.map_err(|e| e.to_string())?;
        let stopped = Instant::now();
        quorum.stop_node(leader).await;
        let elapsed = loop {
            if let Ok((_, c)) = active(&quorum, Duration::from_secs(10)).await {
                match commit(&c, 0, round as i64).await {
                    Ok(()) => break stopped.elapsed(),
                    Err(e) if e.code == ErrorCode::NotController => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
            if stopped.elapsed() > Duration::from_secs(30) {
                return Err("no write acknowledged within 30 s of failover".into());
            }
        };
        report.push_str(&format!("| {round} | {} ms |\n", elapsed.as_millis()));
        quorum
            .restart_node(leader)
            .await
            .map_err(|e| e.to_string())?;
        // Let the restarted node catch up before the next round.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    quorum.stop().await;
    Ok(report)
}
