//! Raft RPCs between controllers over TCP (kmeta-private encoding; `docs/PROTOCOL.md`).
//!
//! Each frame is `[length: u32 big-endian][postcard payload]`, at most `MAX_RAFT_FRAME_BYTES`.
//! A client keeps one connection per peer and sends one request at a time on it; every call
//! (connect, write, read) is bounded by [`rpc_deadline`]: Kafka's
//! `controller.quorum.request.timeout.ms`, longer for a large frame. Any failure drops the connection
//! and reports the peer `Unreachable`, so openraft backs off instead of spinning, and a dead
//! peer never wedges the leader. The server caps connections and closes a connection whose
//! frame is oversized or malformed, logging why.

use super::state_machine::{SnapshotData, StateMachine};
use super::types::{LogId, TypeConfig, Vote};
use crate::kafka::listener::{Limits, Service};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesOrdered};
use futures_util::{Stream, StreamExt};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;

/// The largest Raft frame accepted (a full snapshot travels in one frame).
pub const MAX_RAFT_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Kafka's default `controller.quorum.request.timeout.ms`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(2_000);

/// The time given to one Raft RPC whose request frame is `bytes` long: the request timeout,
/// plus a second for every 8 MiB the peer must receive, decode, append (or install) and fsync.
///
/// openraft offers every AppendEntries the heartbeat interval as its TTL (a tenth of the
/// election timeout: 100 ms at defaults, three quarters of it as the soft TTL) and every
/// snapshot 200 ms, whatever they carry. A fence at 1,000,000 partitions sends entries of
/// 10,000 records; on a loaded machine their round trip passed 150 ms, every attempt was
/// cut off and resent from the start, the followers never acknowledged, and the active
/// controller lost its lease (`docs/RAFT.md`). Kafka's quorum gives each request 2 s; a peer
/// that is gone is still noticed at once (a refused connection), and one that went silent
/// costs its own replication stream this long, never the quorum's.
pub fn rpc_deadline(request_timeout: Duration, bytes: usize) -> Duration {
    const BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
    request_timeout + Duration::from_millis(bytes as u64 * 1_000 / BYTES_PER_SECOND)
}

/// The first frame a Raft peer sends on a new connection. The `CONTROLLER` listener serves
/// both Raft and the Kafka protocol; a Kafka request can never start with it (its first two
/// bytes would be a negative API key).
pub const RAFT_HELLO: &[u8] = b"\xffkmeta-raft/1";

/// The openraft instance of a controller.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

#[derive(Serialize, Deserialize)]
enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    FullSnapshot {
        vote: Vote,
        meta: SnapshotMetaOf<TypeConfig>,
        data: SnapshotData,
    },
    Status,
}

/// What a controller says about itself (the private `Status` request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub node_id: u64,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// Its current Raft term.
    pub term: u64,
    /// Index of the last entry in its log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to its image.
    pub last_applied: Option<u64>,
    /// The canonical hash of its image, hex.
    pub image_hash: String,
}

#[derive(Serialize, Deserialize)]
enum Response {
    AppendEntries(Result<AppendEntriesResponse<TypeConfig>, String>),
    Vote(Result<VoteResponse<TypeConfig>, String>),
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    Status(NodeStatus),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_RAFT_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    // The same bytes as a Kafka frame's size for any frame under the cap.
    crate::kafka::wire::write_frame(w, payload).await
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(len, max_bytes)?;
    // Read into spare capacity: a zero-filled buffer would touch every page twice.
    let mut buf = Vec::with_capacity(len);
    r.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a frame",
        ));
    }
    Ok(Some(buf))
}

/// A frame's size from its 4-byte head, refused above `max_bytes`.
fn frame_len(head: [u8; 4], max_bytes: usize) -> io::Result<usize> {
    let len = u32::from_be_bytes(head) as usize;
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max_bytes}"),
        ));
    }
    Ok(len)
}

/// How many AppendEntries a replication stream sends ahead of their answers, and how many a
/// peer's connection hands to Raft before it has written their answers. Raft's order is kept:
/// one connection carries them, and the peer hands them to its Raft core in the order read.
pub const MAX_APPENDS_IN_FLIGHT: usize = 32;

/// Reads frames through a buffer, and cancel-safely: a [`FrameReader::fill`] dropped before it
/// finishes (the losing branch of a `select!`) has read nothing, so one task can wait on a
/// connection's next frame and on other work at once, with no task of its own for reading.
struct FrameReader {
    buf: BytesMut,
    max_bytes: usize,
}

impl FrameReader {
    const READ_BYTES: usize = 64 * 1024;

    fn new(max_bytes: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_bytes,
        }
    }

    /// A whole frame already read, if there is one.
    fn take(&mut self) -> io::Result<Option<Bytes>> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = frame_len(head.try_into().expect("4 bytes"), self.max_bytes)?;
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Reads what `r` has into the buffer, once; `Ok(0)` at the end of the stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(Self::READ_BYTES);
        }
        r.read_buf(&mut self.buf).await
    }

    /// The next frame; `Ok(None)` at a clean end of the stream between frames.
    async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(Some(frame));
            }
            if self.fill(r).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                ));
            }
        }
    }
}

/// Links that tests have cut or slowed: RPCs over a cut `(from, to)` link fail as unreachable,
/// RPCs over a slowed one take that much longer (a slow network, or a peer too loaded to
/// answer sooner). Empty in production; a test shares one between the nodes of an
/// in-process quorum.
#[derive(Clone, Debug, Default)]
pub struct LinkFaults(Arc<std::sync::Mutex<Links>>);

#[derive(Debug, Default)]
struct Links {
    cut: std::collections::BTreeSet<(u64, u64)>,
    delay: std::collections::BTreeMap<(u64, u64), Duration>,
    /// Delays of RPCs that carry entries or a snapshot only (a slow disk).
    write_delay: std::collections::BTreeMap<(u64, u64), Duration>,
}

impl LinkFaults {
    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts every link between `node` and each of `others`, both ways.
    pub fn isolate(&self, node: u64, others: impl IntoIterator<Item = u64>) {
        let mut links = self.links();
        links.cut.extend(both_ways(node, others));
    }

    /// Makes every RPC between `node` and each of `others`, both ways, take `delay` longer.
    pub fn slow_down(&self, node: u64, others: impl IntoIterator<Item = u64>, delay: Duration) {
        let mut links = self.links();
        links
            .delay
            .extend(both_ways(node, others).map(|l| (l, delay)));
    }

    /// Makes every RPC that carries entries or a snapshot between `node` and each of
    /// `others`, both ways, take `delay` longer; heartbeats and votes are not slowed (a slow
    /// disk rather than a slow network).
    pub fn slow_writes(&self, node: u64, others: impl IntoIterator<Item = u64>, delay: Duration) {
        let mut links = self.links();
        links
            .write_delay
            .extend(both_ways(node, others).map(|l| (l, delay)));
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut links = self.links();
        links.cut.clear();
        links.delay.clear();
        links.write_delay.clear();
    }

    fn blocked(&self, from: u64, to: u64) -> bool {
        self.links().cut.contains(&(from, to))
    }

    fn delay(&self, from: u64, to: u64, writes: bool) -> Duration {
        let links = self.links();
        let delay = links.delay.get(&(from, to)).copied().unwrap_or_default();
        let write_delay = links
            .write_delay
            .get(&(from, to))
            .copied()
            .unwrap_or_default();
        if writes {
            delay + write_delay
        } else {
            delay
        }
    }
}

/// The links `(node, other)` and `(other, node)` for each of `others`.
fn both_ways(node: u64, others: impl IntoIterator<Item = u64>) -> impl Iterator<Item = (u64, u64)> {
    others
        .into_iter()
        .flat_map(move |other| [(node, other), (other, node)])
}

/// Creates clients to peer controllers; nodes carry the peer's `host:port` as `addr`.
#[derive(Clone)]
pub struct NetworkFactory {
    node_id: u64,
    request_timeout: Duration,
    faults: LinkFaults,
    tls: Option<crate::tls::SslConfig>,
}

impl NetworkFactory {
    /// The network of node `node_id`; each RPC is given [`rpc_deadline`] of `request_timeout`.
    pub fn new(node_id: u64, request_timeout: Duration) -> Self {
        Self::with_faults(node_id, request_timeout, LinkFaults::default())
    }

    /// The network of node `node_id`, subject to injected link faults.
    pub fn with_faults(node_id: u64, request_timeout: Duration, faults: LinkFaults) -> Self {
        NetworkFactory {
            node_id,
            request_timeout,
            faults,
            tls: None,
        }
    }

    /// This network with its connections secured by `tls` (the controller listener's TLS
    /// settings, when it is SSL).
    pub fn with_tls(mut self, tls: Option<crate::tls::SslConfig>) -> Self {
        self.tls = tls;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            addr: node.addr.clone(),
            conn: None,
            request_timeout: self.request_timeout,
            link: Some((self.node_id, target, self.faults.clone())),
            tls: self.tls.clone(),
        }
    }
}

/// A connection to one peer (opened lazily, dropped on any error).
pub struct PeerClient {
    addr: String,
    /// Read through a buffer (a frame's size and body in one system call).
    conn: Option<PeerConnection>,
    /// See [`rpc_deadline`].
    request_timeout: Duration,
    link: Option<(u64, u64, LinkFaults)>,
    /// TLS to the peer's controller listener, when it is SSL.
    tls: Option<crate::tls::SslConfig>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NetError(String);

impl PeerClient {
    /// An error answer from the peer. The connection is dropped too: a peer that answers
    /// with errors may be a stopped node whose port has a new owner.
    fn remote_error(&mut self, msg: String) -> RPCError<TypeConfig> {
        self.conn = None;
        RPCError::Unreachable(Unreachable::new(&NetError(format!("remote: {msg}"))))
    }

    /// One request and its response within [`rpc_deadline`] of its encoded size.
    async fn call(&mut self, request: &Request) -> Result<Response, NetError> {
        let delay = self.injected_delay(request)?;
        let payload = postcard::to_allocvec(request).map_err(|e| NetError(e.to_string()))?;
        let ttl = rpc_deadline(self.request_timeout, payload.len());
        let exchange = async {
            // Only an injected fault delays an RPC. A zero sleep is not free: tokio's timer
            // rounds a deadline up to its next millisecond tick, and every AppendEntries
            // waited for it (1 ms per replication round trip; `docs/BENCHMARKS.md`).
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.exchange(&payload).await
        };
        let result = tokio::time::timeout(ttl, exchange).await;
        match result {
            Ok(Ok(bytes)) => postcard::from_bytes(&bytes).map_err(|e| {
                self.conn = None;
                NetError(format!("bad response from {}: {e}", self.addr))
            }),
            // A failed or abandoned exchange took its connection with it.
            Ok(Err(e)) => Err(NetError(format!("{}: {e}", self.addr))),
            Err(_) => Err(NetError(format!("{}: no answer within {ttl:?}", self.addr))),
        }
    }

    /// Writes a request and reads its response. The connection is taken out of the client
    /// while the request is on it and put back only once the response is read: a call
    /// abandoned midway (openraft drops a heartbeat that outlives its own timeout) closes the
    /// connection with it, so a later call never reads the abandoned call's response as its
    /// own.
    async fn exchange(&mut self, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        write_frame(&mut conn, payload).await?;
        let response = read_frame(&mut conn, MAX_RAFT_FRAME_BYTES)
            .await?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")
            })?;
        self.conn = Some(conn);
        Ok(response)
    }

    /// A new connection to the peer, introduced as Raft.
    async fn connect(&self) -> io::Result<PeerConnection> {
        let security = crate::kafka::connect::node_security(self.tls.as_ref())?;
        let mut stream =
            crate::kafka::connect::connect(&self.addr, self.request_timeout, &security).await?;
        write_frame(&mut stream, RAFT_HELLO).await?;
        Ok(tokio::io::BufReader::new(stream))
    }

    /// What a test injected into this link for `request`: an error if the link is cut (and
    /// the connection dropped), else how long the request is held before it is sent.
    fn injected_delay(&mut self, request: &Request) -> Result<Duration, NetError> {
        let Some((from, to, faults)) = &self.link else {
            return Ok(Duration::ZERO);
        };
        if faults.blocked(*from, *to) {
            self.conn = None;
            return Err(NetError(format!(
                "link {from}->{to} is cut (injected fault)"
            )));
        }
        let writes = match request {
            Request::AppendEntries(rpc) => !rpc.entries.is_empty(),
            Request::FullSnapshot { .. } => true,
            _ => false,
        };
        Ok(faults.delay(*from, *to, writes))
    }
}

/// A connection to a peer, read through a buffer (a frame's size and body in one system call).
type PeerConnection = tokio::io::BufReader<crate::kafka::connect::ClientStream>;

/// An AppendEntries on the connection whose answer has not been read.
struct SentAppend {
    prev: Option<LogId>,
    last: Option<LogId>,
    deadline: tokio::time::Instant,
}

/// One replication stream's AppendEntries to a peer, pipelined: each is sent as openraft makes
/// it, up to [`MAX_APPENDS_IN_FLIGHT`] ahead of their answers, which are read in the order
/// sent (a peer answers a connection's requests in order). Each answer is due within
/// [`rpc_deadline`] of its request's size from when it was sent. Any failure ends the stream
/// and drops the connection; so does a stream dropped midway (openraft ends a session early),
/// so no later call reads an answer meant for this one. A stream that ends with every answer
/// read hands the connection back to its client.
struct AppendPipeline<'a, S> {
    client: &'a mut PeerClient,
    input: S,
    input_done: bool,
    conn: Option<PeerConnection>,
    frames: FrameReader,
    sent: VecDeque<SentAppend>,
    ended: bool,
}

type AppendAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl<S> AppendPipeline<'_, S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    async fn next(&mut self) -> Option<AppendAnswer> {
        if self.ended {
            return None;
        }
        loop {
            if !self.sent.is_empty() {
                match self.frames.take() {
                    Ok(Some(frame)) => return Some(self.answer(&frame)),
                    Ok(None) => {}
                    Err(e) => return Some(self.fail(e.to_string())),
                }
            } else if self.input_done {
                self.ended = true;
                if self.frames.buf.is_empty() {
                    self.client.conn = self.conn.take();
                }
                return None;
            }
            let sending = !self.input_done && self.sent.len() < MAX_APPENDS_IN_FLIGHT;
            let deadline = self.sent.front().map(|s| s.deadline);
            let Self {
                input,
                conn,
                frames,
                ..
            } = self;
            let read = async {
                match conn.as_mut() {
                    Some(conn) if deadline.is_some() => frames.fill(conn).await,
                    _ => std::future::pending().await,
                }
            };
            let late = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                read = read => match read {
                    Ok(0) => return Some(self.fail("the peer closed the connection".into())),
                    Ok(_) => {}
                    Err(e) => return Some(self.fail(e.to_string())),
                },
                _ = late => return Some(self.fail("no answer in time".into())),
                request = input.next(), if sending => match request {
                    None => self.input_done = true,
                    Some(request) => {
                        if let Err(e) = self.send(request).await {
                            return Some(self.fail(e));
                        }
                    }
                },
            }
        }
    }

    async fn send(&mut self, request: AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
        let prev = request.prev_log_id;
        let last = request.entries.last().map(|e| e.log_id).or(prev);
        let request = Request::AppendEntries(request);
        let delay = self.client.injected_delay(&request).map_err(|e| e.0)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let payload = postcard::to_allocvec(&request).map_err(|e| e.to_string())?;
        let ttl = rpc_deadline(self.client.request_timeout, payload.len());
        let deadline = tokio::time::Instant::now() + ttl;
        let write = async {
            if self.conn.is_none() {
                self.conn = Some(self.client.connect().await?);
            }
            let conn = self.conn.as_mut().expect("connected above");
            write_frame(conn, &payload).await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("not sent within {ttl:?}")),
        }
        self.sent.push_back(SentAppend {
            prev,
            last,
            deadline,
        });
        Ok(())
    }

    fn answer(&mut self, frame: &[u8]) -> AppendAnswer {
        let sent = self
            .sent
            .pop_front()
            .expect("answers are read only while requests await them");
        match postcard::from_bytes::<Response>(frame) {
            Ok(Response::AppendEntries(Ok(response))) => {
                // A partial success, a conflict or a higher vote ends the stream (openraft
                // then decides what to send); answers to what was sent after it are dropped
                // with the connection.
                let partial = matches!(&response, AppendEntriesResponse::PartialSuccess(m) if *m != sent.last);
                let result = response.into_stream_result(sent.prev, sent.last);
                if partial || result.is_err() {
                    self.end();
                }
                Ok(result)
            }
            Ok(Response::AppendEntries(Err(m))) => {
                self.end();
                Err(self.client.remote_error(m))
            }
            Ok(_) => {
                self.end();
                Err(self.client.remote_error("mismatched response".into()))
            }
            Err(e) => self.fail(format!("bad response: {e}")),
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.conn = None;
    }

    fn fail(&mut self, why: String) -> AppendAnswer {
        self.end();
        Err(unreachable(NetError(format!(
            "{}: {why}",
            self.client.addr
        ))))
    }
}

fn unreachable(e: NetError) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&e))
}

/// Every RPC is bounded by [`rpc_deadline`], not by openraft's `RPCOption` (the heartbeat
/// interval, whatever the payload).
impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(&Request::AppendEntries(rpc))
            .await
            .map_err(unreachable)?
        {
            Response::AppendEntries(r) => r.map_err(|m| self.remote_error(m)),
            _ => Err(self.remote_error("mismatched response".into())),
        }
    }

    /// Pipelined: see [`AppendPipeline`]. openraft's default sends one request and waits for
    /// its answer before the next, so an entry proposed while an AppendEntries (or a
    /// commit-only one) was out waited for that round trip first.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendAnswer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let conn = self.conn.take();
        let pipeline = AppendPipeline {
            client: self,
            input,
            input_done: false,
            conn,
            frames: FrameReader::new(MAX_RAFT_FRAME_BYTES),
            sent: VecDeque::new(),
            ended: false,
        };
        let answers = futures_util::stream::unfold(pipeline, |mut p| async move {
            let answer = p.next().await?;
            Some((answer, p))
        });
        Box::pin(async move { Ok(answers.boxed()) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&Request::Vote(rpc)).await.map_err(unreachable)? {
            Response::Vote(r) => r.map_err(|m| self.remote_error(m)),
            _ => Err(self.remote_error("mismatched response".into())),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(&Request::PreVote(rpc))
            .await
            .map_err(unreachable)?
        {
            Response::Vote(r) => r.map_err(|m| self.remote_error(m)),
            _ => Err(self.remote_error("mismatched response".into())),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = Request::FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let call = self.call(&request);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = call => match result {
                Ok(Response::Snapshot(Ok(r))) => Ok(r),
                Ok(Response::Snapshot(Err(msg))) | Err(NetError(msg)) => {
                    self.conn = None;
                    Err(StreamingError::Unreachable(Unreachable::new(&NetError(msg))))
                }
                Ok(_) => Err(StreamingError::Unreachable(Unreachable::new(&NetError("mismatched response".into())))),
            },
        }
    }
}

/// Serves the `CONTROLLER` listener until `shutdown` resolves (or this future is dropped):
/// Raft RPCs from peers (connections that open with [`RAFT_HELLO`]) and the Kafka protocol
/// (every other connection) through `kafka`. The connection tasks belong to the server: when
/// it stops, they stop, so no connection keeps answering for a stopped node.
pub async fn serve<S: Service>(
    listener: TcpListener,
    raft: Raft,
    sm: StateMachine,
    kafka: Arc<S>,
    limits: Limits,
    security: NodeListenerSecurity,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%e, "controller listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= limits.max_connections {
            tracing::warn!(%peer, max = limits.max_connections, "connection limit reached: closing a new connection");
            continue;
        }
        let raft = raft.clone();
        let sm = sm.clone();
        let kafka = kafka.clone();
        let security = security.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            match &security.tls {
                None => route(stream, peer, raft, sm, kafka, limits, &security).await,
                Some(tls) => {
                    let accepted =
                        crate::kafka::listener::tls_handshake(tls, stream, peer, limits).await;
                    if let Some(stream) = accepted {
                        route(stream, peer, raft, sm, kafka, limits, &security).await;
                    }
                }
            }
        });
    }
}

/// How the controller listener is secured: TLS (for SSL), and the authorizer that decides
/// who may open a Raft connection (CLUSTER_ACTION on the cluster, as Kafka asks of a
/// controller's peers).
#[derive(Clone, Default)]
pub struct NodeListenerSecurity {
    /// TLS, when the controller listener is SSL.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The authorizer, if one is configured.
    pub authorizer: Option<Arc<kmeta_metadata::acl::Authorizer>>,
}

/// Reads a connection's first frame and serves it as Raft (it opens with [`RAFT_HELLO`]) or
/// as the Kafka protocol.
async fn route<S: Service, T: crate::kafka::listener::Stream>(
    mut stream: T,
    peer: std::net::SocketAddr,
    raft: Raft,
    sm: StateMachine,
    kafka: Arc<S>,
    limits: Limits,
    security: &NodeListenerSecurity,
) {
    let first = tokio::time::timeout(
        limits.idle_timeout,
        crate::kafka::wire::read_frame(&mut stream, limits.max_request_bytes),
    )
    .await;
    match first {
        Ok(Ok(Some(frame))) if frame.as_ref() == RAFT_HELLO => {
            if let Some(authorizer) = &security.authorizer {
                let principal = stream
                    .tls_principal()
                    .unwrap_or_else(|| crate::kafka::wire::ANONYMOUS.to_string());
                let allowed = authorizer.authorize(
                    &sm.image(),
                    &principal,
                    &peer.ip().to_string(),
                    kmeta_metadata::record::AclOperation::ClusterAction,
                    kmeta_metadata::record::AclResourceType::Cluster,
                    kmeta_metadata::acl::CLUSTER_NAME,
                );
                if !allowed {
                    tracing::warn!(%peer, %principal, "refusing a Raft connection: the principal may not do CLUSTER_ACTION on the cluster");
                    return;
                }
            }
            if let Err(e) = serve_connection(stream, raft, sm).await {
                tracing::debug!(%peer, %e, "raft connection closed");
            }
        }
        Ok(Ok(Some(frame))) => {
            crate::kafka::listener::serve_connection(stream, Some(frame), kafka, limits, None).await
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "closing connection"),
        Err(_) => tracing::debug!(%peer, "idle connection closed"),
    }
}

/// The leader this node knows, or `None` once its Raft has stopped on a fatal error: a
/// stopped node's metrics are a frozen view and must never make it claim to lead.
pub fn known_leader(m: &openraft::RaftMetrics<TypeConfig>) -> Option<u64> {
    m.running_state.as_ref().ok().and(m.current_leader)
}

fn status(raft: &Raft, sm: &StateMachine) -> NodeStatus {
    use openraft::async_runtime::WatchReceiver;
    let m = raft.metrics().borrow_watched().clone();
    NodeStatus {
        node_id: m.id,
        leader: known_leader(&m),
        term: m.current_term,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|l| l.index()),
        image_hash: sm.image().canonical_hash_hex(),
    }
}

/// Asks the controller at `addr` for its status (bounded by `timeout`), over TLS with `tls`
/// (the controller listener's settings) when it is SSL.
pub async fn query_status(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::SslConfig>,
) -> io::Result<NodeStatus> {
    let mut client = PeerClient {
        addr: addr.to_string(),
        conn: None,
        request_timeout: timeout,
        link: None,
        tls: tls.cloned(),
    };
    match client.call(&Request::Status).await {
        Ok(Response::Status(s)) => Ok(s),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "mismatched response",
        )),
        Err(e) => Err(io::Error::other(e.0)),
    }
}

async fn serve_connection<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: T,
    raft: Raft,
    sm: StateMachine,
) -> io::Result<()> {
    // AppendEntries are handed to Raft as they are read, before the answers to those ahead
    // of them (a leader pipelines them: `AppendPipeline`), up to MAX_APPENDS_IN_FLIGHT;
    // answers are written in the order the requests came. Each append reaches the Raft core
    // before the next frame is read (the answers are polled first), so the core sees them in
    // the order sent. Any other request waits for the appends before it.
    let mut frames = FrameReader::new(MAX_RAFT_FRAME_BYTES);
    let mut appends = FuturesOrdered::new();
    loop {
        let request = tokio::select! {
            biased;
            Some(answer) = appends.next() => {
                write_response(&mut stream, &answer).await?;
                continue;
            }
            frame = frames.next(&mut stream), if appends.len() < MAX_APPENDS_IN_FLIGHT => {
                let Some(frame) = frame? else { return Ok(()) };
                postcard::from_bytes::<Request>(&frame).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed raft request: {e}"),
                    )
                })?
            }
        };
        if let Request::AppendEntries(rpc) = request {
            let raft = raft.clone();
            appends.push_back(async move {
                Response::AppendEntries(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
            });
            continue;
        }
        while let Some(answer) = appends.next().await {
            write_response(&mut stream, &answer).await?;
        }
        let response = match request {
            Request::AppendEntries(_) => unreachable!("handed to Raft above"),
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
            Request::PreVote(rpc) => {
                Response::Vote(raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
            }
            Request::FullSnapshot { vote, meta, data } => {
                let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
                    meta,
                    snapshot: data,
                };
                Response::Snapshot(
                    raft.install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| e.to_string()),
                )
            }
            Request::Status => Response::Status(status(&raft, &sm)),
        };
        write_response(&mut stream, &response).await?;
    }
}

async fn write_response<W: AsyncWrite + Unpin>(w: &mut W, response: &Response) -> io::Result<()> {
    let bytes = postcard::to_allocvec(response).map_err(|e| io::Error::other(e.to_string()))?;
    write_frame(w, &bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::raft::VoteResponse;

    fn vote_request(term: u64) -> Request {
        Request::Vote(VoteRequest::new(Vote::new(term, 1), None))
    }

    fn answered_term(response: Response) -> u64 {
        match response {
            Response::Vote(Ok(r)) => r.vote.leader_id().term,
            _ => panic!("not a vote response"),
        }
    }

    /// A peer that answers each vote request with its term, taking 300 ms over the first.
    async fn slow_first_peer() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut stream, _)) = listener.accept().await {
                let _hello = read_frame(&mut stream, MAX_RAFT_FRAME_BYTES).await;
                while let Ok(Some(frame)) = read_frame(&mut stream, MAX_RAFT_FRAME_BYTES).await {
                    let Ok(Request::Vote(rpc)) = postcard::from_bytes(&frame) else {
                        return;
                    };
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let answer = Response::Vote(Ok(VoteResponse::new(rpc.vote, None, true)));
                    let bytes = postcard::to_allocvec(&answer).unwrap();
                    if write_frame(&mut stream, &bytes).await.is_err() {
                        break;
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_call_abandoned_midway_never_hands_its_response_to_the_next_call() {
        let mut client = PeerClient {
            addr: slow_first_peer().await,
            conn: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            link: None,
            tls: None,
        };
        // openraft gives up on a heartbeat after its own timeout by dropping the call.
        let abandoned =
            tokio::time::timeout(Duration::from_millis(50), client.call(&vote_request(1))).await;
        assert!(
            abandoned.is_err(),
            "the first call outlives its caller's timeout"
        );
        let response = client.call(&vote_request(2)).await.unwrap();
        assert_eq!(
            answered_term(response),
            2,
            "the second call reads its own answer"
        );
    }

    fn append(index: u64) -> AppendEntriesRequest<TypeConfig> {
        use openraft::testing::log_id;
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: (index > 1).then(|| log_id::<TypeConfig>(1, 1, index - 1)),
            leader_commit: None,
            entries: vec![super::super::types::Entry {
                log_id: log_id::<TypeConfig>(1, 1, index),
                payload: openraft::EntryPayload::Blank,
            }],
        }
    }

    fn client_of(addr: String, request_timeout: Duration) -> PeerClient {
        PeerClient {
            addr,
            conn: None,
            request_timeout,
            link: None,
            tls: None,
        }
    }

    /// A peer that reads `ahead` AppendEntries on a connection before it answers any, then
    /// answers each in order; it counts its connections and answers a vote with its term.
    async fn peer_reading_ahead(ahead: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _hello = read_frame(&mut stream, MAX_RAFT_FRAME_BYTES).await;
                    let mut held = Vec::new();
                    while let Ok(Some(frame)) = read_frame(&mut stream, MAX_RAFT_FRAME_BYTES).await
                    {
                        let answers = match postcard::from_bytes(&frame).unwrap() {
                            Request::AppendEntries(_) => {
                                held.push(Response::AppendEntries(Ok(
                                    AppendEntriesResponse::Success,
                                )));
                                if held.len() < ahead {
                                    continue;
                                }
                                std::mem::take(&mut held)
                            }
                            Request::Vote(rpc) => {
                                vec![Response::Vote(Ok(VoteResponse::new(rpc.vote, None, true)))]
                            }
                            _ => return,
                        };
                        for answer in answers {
                            let bytes = postcard::to_allocvec(&answer).unwrap();
                            if write_frame(&mut stream, &bytes).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    #[tokio::test]
    async fn a_replication_stream_sends_appends_ahead_of_their_answers_and_pairs_answers_in_order()
    {
        use openraft::testing::log_id;
        // The peer answers nothing until it holds three appends: one request at a time
        // (openraft's default) would wait for the first answer forever.
        let (addr, connections) = peer_reading_ahead(3).await;
        let mut client = client_of(addr, DEFAULT_REQUEST_TIMEOUT);
        let input = futures_util::stream::iter([append(1), append(2), append(3)]);
        let answers = tokio::time::timeout(Duration::from_secs(5), async {
            let stream = client
                .stream_append(input, RPCOption::new(Duration::from_millis(100)))
                .await
                .unwrap();
            stream.collect::<Vec<_>>().await
        })
        .await
        .expect("three appends answered only together are all answered");
        let matched: Vec<_> = answers
            .into_iter()
            .map(|a| a.expect("no RPC error").expect("no append error"))
            .collect();
        assert_eq!(
            matched,
            (1..=3)
                .map(|i| Some(log_id::<TypeConfig>(1, 1, i)))
                .collect::<Vec<_>>(),
            "each answer acknowledges its own request, in the order sent"
        );
        // A stream that read every answer hands its connection to the next call.
        let vote = client.call(&vote_request(7)).await.unwrap();
        assert_eq!(answered_term(vote), 7);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_replication_stream_dropped_with_answers_due_takes_its_connection_with_it() {
        // The peer answers two appends together; the stream is dropped after sending both and
        // before reading either.
        let (addr, connections) = peer_reading_ahead(2).await;
        let mut client = client_of(addr, DEFAULT_REQUEST_TIMEOUT);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rx = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        }));
        tx.send(append(1)).unwrap();
        {
            let mut stream = client
                .stream_append(rx, RPCOption::new(Duration::from_millis(100)))
                .await
                .unwrap();
            // Sent, not answered (the peer waits for a second append): give up on it.
            let first = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            assert!(first.is_err(), "the peer holds its answer");
            tx.send(append(2)).unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        }
        // Both answers are now on the old connection; a vote must read its own.
        let vote = client.call(&vote_request(9)).await.unwrap();
        assert_eq!(answered_term(vote), 9, "the vote reads its own answer");
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_append_left_unanswered_fails_its_stream_within_the_deadline() {
        let (addr, _) = peer_reading_ahead(usize::MAX).await;
        let mut client = client_of(addr, Duration::from_millis(300));
        let input = futures_util::stream::iter([append(1)]).chain(futures_util::stream::pending());
        let started = std::time::Instant::now();
        let mut stream = client
            .stream_append(Box::pin(input), RPCOption::new(Duration::from_millis(100)))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream gives up by itself");
        assert!(
            matches!(answer, Some(Err(RPCError::Unreachable(_)))),
            "an unanswered append is an unreachable peer: {answer:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(stream.next().await.is_none(), "a failed stream ends");
    }

    #[test]
    fn a_large_frame_is_given_more_time_than_an_empty_one() {
        let base = DEFAULT_REQUEST_TIMEOUT;
        assert_eq!(rpc_deadline(base, 0), base);
        assert_eq!(rpc_deadline(base, 80 << 20), base + Duration::from_secs(10));
    }
}
