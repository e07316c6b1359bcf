//! The metrics endpoint (`metrics.listener=http://host:port`): Prometheus text format at
//! `/metrics`, with KRaft's metric names where they exist (prefixed `kmeta_`).
//!
//! Gauges are read from the node's state at scrape time; the controller's histograms and
//! counters (event queue time, commit latency, elections) are recorded as things happen.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the active-controller loop records.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// Time a request waited in the controller's queue, ms.
    pub event_queue_time_ms: Histogram,
    /// Time from proposing an entry to its commit and apply, ms.
    pub commit_latency_ms: Histogram,
    /// Times this node became the active controller.
    pub elections: Counter,
    /// Times this node's active session renounced (leadership lost, or a proposal that did not
    /// land as predicted).
    pub renounces: Counter,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            event_queue_time_ms: Histogram::new(exponential_buckets(0.05, 2.0, 18)),
            commit_latency_ms: Histogram::new(exponential_buckets(0.1, 2.0, 18)),
            elections: Counter::default(),
            renounces: Counter::default(),
        }
    }
}

/// Gauges set at scrape time.
#[derive(Default)]
pub struct Gauges {
    /// ActiveControllerCount: 1 on the active controller.
    pub active_controller_count: Gauge,
    /// ActiveBrokerCount.
    pub active_broker_count: Gauge,
    /// FencedBrokerCount.
    pub fenced_broker_count: Gauge,
    /// GlobalTopicCount.
    pub global_topic_count: Gauge,
    /// GlobalPartitionCount.
    pub global_partition_count: Gauge,
    /// OfflinePartitionsCount: partitions without a leader.
    pub offline_partitions_count: Gauge,
    /// PreferredReplicaImbalanceCount.
    pub preferred_replica_imbalance_count: Gauge,
    /// Partitions whose ISR is smaller than their replica set, in this node's image (every
    /// partition, not only those led here; counted at scrape time).
    pub global_under_replicated_partition_count: Gauge,
    /// Partitions each registered broker leads, in this node's image.
    pub partition_leader_count: Family<Vec<(String, String)>, Gauge>,
    /// LastAppliedRecordOffset.
    pub last_applied_record_offset: Gauge,
    /// LastCommittedRecordOffset.
    pub last_committed_record_offset: Gauge,
    /// Milliseconds since each broker's last heartbeat (active controller only).
    pub broker_heartbeat_age_ms: Family<Vec<(String, String)>, Gauge>,
    /// Partitions hosted by this broker (Kafka's `PartitionCount`).
    pub partition_count: Gauge,
    /// Partitions this broker leads (`LeaderCount`).
    pub leader_count: Gauge,
    /// Led partitions whose ISR is smaller than their replica set.
    pub under_replicated_partitions: Gauge,
    /// Led partitions whose ISR is below `min.insync.replicas`.
    pub under_min_isr_partition_count: Gauge,
    /// Bytes of partition logs on this broker's disk.
    pub log_size_bytes: Gauge,
}

/// A node's registry: the gauges, and the controller's recorded metrics when it has one.
pub struct NodeMetrics {
    registry: Registry,
    /// The gauges to set before encoding.
    pub gauges: Gauges,
}

impl NodeMetrics {
    /// A registry with every gauge, plus `controller`'s metrics if given.
    pub fn new(controller: Option<&ControllerMetrics>) -> NodeMetrics {
        let mut registry = Registry::with_prefix("kmeta");
        let gauges = Gauges::default();
        let g = &gauges;
        registry.register(
            "ActiveControllerCount",
            "1 if this node is the active controller",
            g.active_controller_count.clone(),
        );
        registry.register(
            "ActiveBrokerCount",
            "Registered, unfenced brokers",
            g.active_broker_count.clone(),
        );
        registry.register(
            "FencedBrokerCount",
            "Registered, fenced brokers",
            g.fenced_broker_count.clone(),
        );
        registry.register("GlobalTopicCount", "Topics", g.global_topic_count.clone());
        registry.register(
            "GlobalPartitionCount",
            "Partitions",
            g.global_partition_count.clone(),
        );
        registry.register(
            "OfflinePartitionsCount",
            "Partitions without a leader",
            g.offline_partitions_count.clone(),
        );
        registry.register(
            "PreferredReplicaImbalanceCount",
            "Partitions not led by their preferred replica",
            g.preferred_replica_imbalance_count.clone(),
        );
        registry.register(
            "GlobalUnderReplicatedPartitionCount",
            "Partitions whose ISR is smaller than their replica set",
            g.global_under_replicated_partition_count.clone(),
        );
        registry.register(
            "PartitionLeaderCount",
            "Partitions each registered broker leads",
            g.partition_leader_count.clone(),
        );
        registry.register(
            "LastAppliedRecordOffset",
            "Last metadata offset applied to this node's image",
            g.last_applied_record_offset.clone(),
        );
        registry.register(
            "LastCommittedRecordOffset",
            "Last metadata offset known committed",
            g.last_committed_record_offset.clone(),
        );
        registry.register(
            "BrokerHeartbeatAgeMs",
            "Milliseconds since each broker's last heartbeat",
            g.broker_heartbeat_age_ms.clone(),
        );
        registry.register(
            "PartitionCount",
            "Partitions hosted by this broker",
            g.partition_count.clone(),
        );
        registry.register(
            "LeaderCount",
            "Partitions this broker leads",
            g.leader_count.clone(),
        );
        registry.register(
            "UnderReplicatedPartitions",
            "Partitions led here whose ISR is smaller than their replica set",
            g.under_replicated_partitions.clone(),
        );
        registry.register(
            "UnderMinIsrPartitionCount",
            "Partitions led here whose ISR is below min.insync.replicas",
            g.under_min_isr_partition_count.clone(),
        );
        registry.register(
            "LogSizeBytes",
            "Bytes of partition logs on this broker",
            g.log_size_bytes.clone(),
        );
        if let Some(c) = controller {
            registry.register(
                "EventQueueTimeMs",
                "Time requests wait in the controller queue",
                c.event_queue_time_ms.clone(),
            );
            registry.register(
                "CommitLatencyMs",
                "Time from proposal to commit and apply",
                c.commit_latency_ms.clone(),
            );
            registry.register(
                "Elections",
                "Times this node became the active controller",
                c.elections.clone(),
            );
            registry.register(
                "Renounces",
                "Times this node stopped being the active controller",
                c.renounces.clone(),
            );
        }
        NodeMetrics { registry, gauges }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String never fails");
        out
    }
}

/// Parses `metrics.listener` (`http://host:port`).
pub fn parse_listener(value: &str) -> Result<String, String> {
    let addr = value
        .strip_prefix("http://")
        .ok_or_else(|| format!("metrics.listener: {value:?} is not http://host:port"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("metrics.listener: {value:?} is not http://host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("metrics.listener: {value:?} has no valid port"))?;
    if host.is_empty() {
        return Err(format!("metrics.listener: {value:?} has no host"));
    }
    Ok(addr.to_string())
}

/// Serves `GET /metrics` on `listener` until `shutdown`; `render` produces the body.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&request);
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ")
            {
                ("200 OK", render())
            } else {
                ("404 Not Found", "only /metrics is served\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
