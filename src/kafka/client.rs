//! A small Kafka-protocol client: one connection, one request at a time, a timeout on every
//! call. Brokers use it to talk to controllers; tests and admin commands use it too.

use super::wire::{put_frame, read_frame, write_frame, MAX_RESPONSE_BYTES};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// One connection to a Kafka-protocol server.
pub struct KafkaClient {
    /// Read through a buffer (a response's size and body in one system call).
    stream: tokio::io::BufReader<super::connect::ClientStream>,
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
        Ok(Self::over(
            super::connect::ClientStream::Plain(stream),
            addr,
            client_id,
            timeout,
        ))
    }

    /// Connects to `addr` secured as `security` says (TLS, SASL), waiting at most `timeout`.
    pub async fn connect_with(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        security: &super::connect::ClientSecurity,
    ) -> io::Result<Self> {
        let stream = super::connect::connect(addr, timeout, security).await?;
        Ok(Self::over(stream, addr, client_id, timeout))
    }

    fn over(
        stream: super::connect::ClientStream,
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Self {
        KafkaClient {
            stream: tokio::io::BufReader::new(stream),
            next_correlation: 1,
            client_id: StrBytes::from_string(client_id.to_string()),
            timeout,
            addr: addr.to_string(),
        }
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

/// A request waiting for its answer on a [`PipelinedClient`].
type Waiting = tokio::sync::oneshot::Sender<io::Result<Bytes>>;

/// One connection to a Kafka-protocol server carrying many requests at once: each call sends
/// its request as soon as the connection's writer gets to it (requests queued together go
/// out in one system call) and gets the answer with its correlation id, whichever order the
/// server answers in. Brokers forward writes to the active controller on a few of these, so
/// the controller reads many requests per system call and batches them into one entry.
///
/// The connection dies on the first error or timeout of any call: every call in flight on it
/// then fails (its callers retry elsewhere) and [`PipelinedClient::is_dead`] turns true.
pub struct PipelinedClient {
    addr: String,
    client_id: StrBytes,
    next_correlation: std::sync::atomic::AtomicI32,
    requests: tokio::sync::mpsc::UnboundedSender<(i32, BytesMut, Waiting)>,
    shared: std::sync::Arc<Pipeline>,
}

/// What a [`PipelinedClient`] shares with its reader and writer tasks.
struct Pipeline {
    waiting: std::sync::Mutex<std::collections::HashMap<i32, Waiting>>,
    dead: std::sync::atomic::AtomicBool,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pipeline {
    /// Ends the connection: its tasks stop, and every call waiting on it fails.
    fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Drop for PipelinedClient {
    fn drop(&mut self) {
        self.shared.kill();
    }
}

/// Requests one writer pass sends at most (one buffer, one system call).
const PIPELINE_WRITE_BATCH: usize = 256;

impl PipelinedClient {
    /// Connects to `addr` within `timeout`.
    pub async fn connect(addr: &str, client_id: &str, timeout: Duration) -> io::Result<Self> {
        Self::connect_with(addr, client_id, timeout, &Default::default()).await
    }

    /// Connects to `addr` within `timeout`, secured as `security` says.
    pub async fn connect_with(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        security: &super::connect::ClientSecurity,
    ) -> io::Result<Self> {
        use super::connect::ClientStream;
        use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
        type Halves = (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        );
        let (read, mut write): Halves =
            match super::connect::connect(addr, timeout, security).await? {
                // Plain TCP splits without a lock between the halves.
                ClientStream::Plain(tcp) => {
                    let (r, w) = tcp.into_split();
                    (Box::new(r), Box::new(w))
                }
                tls => {
                    let (r, w) = tokio::io::split(tls);
                    (Box::new(r), Box::new(w))
                }
            };
        let shared = std::sync::Arc::new(Pipeline {
            waiting: std::sync::Mutex::new(std::collections::HashMap::new()),
            dead: std::sync::atomic::AtomicBool::new(false),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let (requests, mut queued) =
            tokio::sync::mpsc::unbounded_channel::<(i32, BytesMut, Waiting)>();
        let writer_shared = shared.clone();
        let writer = tokio::spawn(async move {
            let mut out = BytesMut::new();
            while let Some(first) = queued.recv().await {
                let mut batch = vec![first];
                while batch.len() < PIPELINE_WRITE_BATCH {
                    match queued.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                out.clear();
                {
                    let mut waiting = writer_shared
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    for (correlation, payload, reply) in batch {
                        put_frame(&mut out, &payload);
                        waiting.insert(correlation, reply);
                    }
                }
                if write.write_all(&out).await.is_err() {
                    writer_shared.kill();
                    return;
                }
            }
        });
        let reader_shared = shared.clone();
        let reader = tokio::spawn(async move {
            let mut read = tokio::io::BufReader::new(read);
            loop {
                let frame = match read_frame(&mut read, MAX_RESPONSE_BYTES).await {
                    Ok(Some(frame)) if frame.len() >= 4 => frame,
                    _ => {
                        reader_shared.kill();
                        return;
                    }
                };
                let correlation = i32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
                let reply = reader_shared
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&correlation);
                // A caller that gave up (timed out, dropped) has no one waiting.
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(frame));
                }
            }
        });
        shared
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([writer, reader]);
        Ok(PipelinedClient {
            addr: addr.to_string(),
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation: std::sync::atomic::AtomicI32::new(1),
            requests,
            shared,
        })
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True once the connection has failed (or a call on it timed out).
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends the connection; calls in flight on it fail.
    pub fn kill(&self) {
        self.shared.kill();
    }

    /// Sends `request` at `version` and decodes its answer, waiting at most `timeout` (after
    /// which the connection is killed: a server that does not answer one request in time is
    /// not trusted with the others).
    pub async fn send<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> io::Result<R::Response> {
        let closed = || {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the connection to {} failed", self.addr),
            )
        };
        if self.is_dead() {
            return Err(closed());
        }
        let correlation = self
            .next_correlation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            & i32::MAX;
        let payload = encode_request(request, version, correlation, &self.client_id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((correlation, payload, tx))
            .map_err(|_| closed())?;
        let reply = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply from {}", self.addr),
                ));
            }
            Ok(Err(_)) => return Err(closed()),
            Ok(Ok(reply)) => reply?,
        };
        decode_response::<R>(reply, version, correlation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseHeader};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A server that reads `n` requests, then answers them in reverse order, each answer
    /// naming the request's correlation id in its error code.
    async fn reversing_server(n: usize) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut ids = Vec::new();
            for _ in 0..n {
                let frame = read_frame(&mut stream, 1 << 20).await.unwrap().unwrap();
                // Request header v1: api key, version, then the correlation id.
                ids.push(i32::from_be_bytes(frame[4..8].try_into().unwrap()));
            }
            for id in ids.into_iter().rev() {
                let mut out = BytesMut::new();
                ResponseHeader::default()
                    .with_correlation_id(id)
                    .encode(&mut out, 0)
                    .unwrap();
                ApiVersionsResponse::default()
                    .with_error_code(id as i16)
                    .encode(&mut out, 0)
                    .unwrap();
                write_frame(&mut stream, &out).await.unwrap();
            }
            // Then the connection breaks.
            let _ = stream.shutdown().await;
        });
        (addr, task)
    }

    /// Starts `n` ApiVersions calls on `client` at once, each bounded by `timeout`.
    fn spawn_calls(
        client: &std::sync::Arc<PipelinedClient>,
        n: usize,
        timeout: Duration,
    ) -> Vec<tokio::task::JoinHandle<io::Result<ApiVersionsResponse>>> {
        (0..n)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .send(&ApiVersionsRequest::default(), 0, timeout)
                        .await
                })
            })
            .collect()
    }

    /// Calls in flight together on one connection each get their own answer, whatever
    /// order the server answers in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_pipelined_call_gets_its_own_answer_in_any_order() {
        let (addr, server) = reversing_server(20).await;
        let client = std::sync::Arc::new(
            PipelinedClient::connect(&addr, "t", Duration::from_secs(5))
                .await
                .unwrap(),
        );
        let calls = spawn_calls(&client, 20, Duration::from_secs(5));
        let mut codes = Vec::new();
        for call in calls {
            codes.push(call.await.unwrap().expect("answered").error_code);
        }
        codes.sort_unstable();
        assert_eq!(codes, (1..=20).collect::<Vec<i16>>());
        server.await.unwrap();
    }

    /// When the connection breaks, every call waiting on it fails at once (its caller
    /// retries elsewhere), and later calls fail without waiting for the timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_pipelined_connection_fails_every_call_waiting_on_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            for _ in 0..5 {
                read_frame(&mut stream, 1 << 20).await.unwrap().unwrap();
            }
            // Five requests read, none answered: the server goes away.
        });
        let client = std::sync::Arc::new(
            PipelinedClient::connect(&addr, "t", Duration::from_secs(5))
                .await
                .unwrap(),
        );
        let started = std::time::Instant::now();
        let calls = spawn_calls(&client, 5, Duration::from_secs(30));
        for call in calls {
            assert!(call.await.unwrap().is_err());
        }
        server.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the timeout"
        );
        assert!(client.is_dead());
        assert!(client
            .send(&ApiVersionsRequest::default(), 0, Duration::from_secs(30))
            .await
            .is_err());
    }
}
