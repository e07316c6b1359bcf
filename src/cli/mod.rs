//! Operator commands: Kafka-protocol requests to `--bootstrap-server`, printed as a table or,
//! with `--output json`, as JSON. Every failure is one line and a non-zero exit status.

pub mod acls;
pub mod brokers;
pub mod elect;
pub mod groups;
pub mod metadata_shell;
pub mod quorum;
pub mod reassign;
pub mod topics;
pub mod users;

use crate::kafka::client::KafkaClient;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use std::time::Duration;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// The timeout of every admin request.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one reachable broker of `--bootstrap-server`.
pub struct Admin {
    client: KafkaClient,
    security: crate::kafka::connect::ClientSecurity,
}

impl Admin {
    /// Connects to the first reachable address of a comma-separated list.
    pub async fn connect(bootstrap: &str) -> Result<Admin, String> {
        Self::connect_with(bootstrap, &Default::default()).await
    }

    /// Connects to the first reachable address of a comma-separated list, secured as
    /// `security` says (`--command-config`).
    pub async fn connect_with(
        bootstrap: &str,
        security: &crate::kafka::connect::ClientSecurity,
    ) -> Result<Admin, String> {
        let mut last = String::from("no address given");
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match KafkaClient::connect_with(addr, "kmeta-admin", ADMIN_TIMEOUT, security).await {
                Ok(client) => {
                    return Ok(Admin {
                        client,
                        security: security.clone(),
                    })
                }
                // A refused login is not a reason to try another broker.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(format!("{addr}: {e}"))
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(format!("cannot reach the cluster at {bootstrap} ({last})"))
    }

    /// Another connection, to `addr`, secured as this one is.
    pub async fn connect_like(&self, addr: &str) -> Result<Admin, String> {
        Self::connect_with(addr, &self.security).await
    }

    /// Sends one request.
    pub async fn send<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, String> {
        self.client
            .send(request, version)
            .await
            .map_err(|e| format!("{}: {e}", self.client.addr()))
    }

    /// The coordinator of `group`: its node id and `host:port`.
    pub async fn group_coordinator(&mut self, group: &str) -> Result<(i32, String), String> {
        self.client.find_group_coordinator(group).await
    }

    /// Metadata for `topics` (all when `None`).
    pub async fn metadata(
        &mut self,
        topics: Option<&[String]>,
    ) -> Result<MetadataResponse, String> {
        let request = MetadataRequest::default().with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(sb(t))))
                })
                .collect()
        }));
        self.send(&request, 12).await
    }
}

pub use crate::kafka::wire::sb;

/// The name of a Metadata topic.
pub fn topic_name(t: &MetadataResponseTopic) -> String {
    t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default()
}

/// A Kafka error code as text.
pub fn error_text(code: i16, message: Option<&StrBytes>) -> String {
    let name = kafka_protocol::ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error {code}"));
    match message {
        Some(m) if !m.is_empty() => format!("{name}: {}", &**m),
        _ => name,
    }
}

/// Prints rows as aligned columns under `header`.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON value on one line.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// `[1, 2, 3]` → `"1,2,3"`.
pub fn ids(list: &[i32]) -> String {
    list.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
