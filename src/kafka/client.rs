//! A small Kafka-protocol client: one connection, one request at a time, a timeout on every
//! call. Brokers use it to talk to controllers; tests and admin commands use it too.

use super::wire::{read_frame, write_frame, MAX_RESPONSE_BYTES};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// One connection to a Kafka-protocol server.
pub struct KafkaClient {
    /// Read through a buffer (a response's size and body in one system call).
    stream: tokio::io::BufReader<TcpStream>,
    next_correlation: i32,
    client_id: StrBytes,
    timeout: Duration,
    addr: String,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A TCP connection to `addr` with Nagle off, made within `timeout`.
pub async fn connect_tcp(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A request's payload (header and body, no size prefix) at `version`.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> io::Result<BytesMut> {
    let api_key = ApiKey::try_from(R::KEY).map_err(|_| invalid("unknown api key"))?;
    let mut out = BytesMut::with_capacity(128);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()))
        .encode(&mut out, api_key.request_header_version(version))
        .map_err(invalid)?;
    request.encode(&mut out, version).map_err(invalid)?;
    Ok(out)
}

/// Decodes the answer to a request sent at `version` with `correlation_id`; an answer to
/// another request is an error.
pub fn decode_response<R: Request>(
    mut reply: Bytes,
    version: i16,
    correlation_id: i32,
) -> io::Result<R::Response> {
    let api_key = ApiKey::try_from(R::KEY).map_err(|_| invalid("unknown api key"))?;
    let header = ResponseHeader::decode(&mut reply, api_key.response_header_version(version))
        .map_err(invalid)?;
    if header.correlation_id != correlation_id {
        return Err(invalid(format!(
            "response for correlation id {} to request {correlation_id}",
            header.correlation_id
        )));
    }
    R::Response::decode(&mut reply, version).map_err(invalid)
}

impl KafkaClient {
    /// Connects to `addr`, waiting at most `timeout`; every later call has the same bound.
    pub async fn connect(addr: &str, client_id: &str, timeout: Duration) -> io::Result<Self> {
        let stream = connect_tcp(addr, timeout).await?;
        Ok(KafkaClient {
            stream: tokio::io::BufReader::new(stream),
            next_correlation: 1,
            client_id: StrBytes::from_string(client_id.to_string()),
            timeout,
            addr: addr.to_string(),
        })
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Changes the bound on later calls (a long-polling fetch waits longer than a heartbeat).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `request` at `version` and decodes its response.
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> io::Result<R::Response> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let out = encode_request(request, version, correlation_id, &self.client_id)?;
        let reply = self.exchange(&out).await?;
        decode_response::<R>(reply, version, correlation_id)
    }

    /// FindCoordinator (v3) of a consumer group: the coordinator's node id and `host:port`,
    /// or why there is none.
    pub async fn find_group_coordinator(&mut self, group: &str) -> Result<(i32, String), String> {
        let request = kafka_protocol::messages::FindCoordinatorRequest::default()
            .with_key(crate::kafka::wire::sb(group))
            .with_key_type(0);
        let r = self
            .send(&request, 3)
            .await
            .map_err(|e| format!("FindCoordinator at {}: {e}", self.addr))?;
        if r.error_code != 0 {
            return Err(format!(
                "no coordinator for group {group}: {}",
                crate::cli::error_text(r.error_code, r.error_message.as_ref())
            ));
        }
        Ok((r.node_id.0, format!("{}:{}", &*r.host, r.port)))
    }

    /// Sends one raw request payload (header included) and returns the raw response payload.
    pub async fn exchange(&mut self, payload: &[u8]) -> io::Result<Bytes> {
        let timeout = self.timeout;
        let addr = self.addr.clone();
        tokio::time::timeout(timeout, async {
            write_frame(&mut self.stream, payload).await?;
            read_frame(&mut self.stream, MAX_RESPONSE_BYTES)
                .await?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no reply from {addr}")))?
    }
}

/// A consumer's Fetch of one partition (sessionless, read_uncommitted, no epoch checks): what
/// kmeta's own tools (the benchmark, the fault suite's checks) read with.
pub fn consumer_fetch(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(super::wire::sb(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(-1)
                .with_last_fetched_epoch(-1)
                .with_partition_max_bytes(max_bytes / 2)])])
}

/// A Produce of one batch to one partition.
pub fn produce_one(
    topic: &str,
    partition: i32,
    acks: i16,
    timeout_ms: i32,
    records: Vec<u8>,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(super::wire::sb(topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records.into()))])])
}
