//! A Kafka-protocol listener: accepts connections up to a cap, reads frames up to a size cap,
//! and answers requests one at a time per connection, in order (as Kafka does).
//!
//! A malformed or hostile frame closes that one connection with a logged reason; nothing a
//! client sends can stop the listener. A listener with TLS (`crate::tls`) runs each
//! connection's handshake in that connection's task; a client that fails it (no certificate
//! where one is required, plaintext on a TLS port) is closed and the others are served on.

use super::wire::{
    decode_request, read_frame, write_frame, write_frames, ApiSet, Rejected, Request,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// A connection's byte stream: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The half requests are read from.
    type Read: AsyncRead + Send + Unpin + 'static;
    /// The half answers are written to.
    type Write: AsyncWrite + Send + Unpin + 'static;

    /// The TCP socket under the stream.
    fn tcp(&self) -> &TcpStream;

    /// Splits the stream into halves that a reader and a writer task can own.
    fn split(self) -> (Self::Read, Self::Write);

    /// The principal of a client that presented a certificate (`User:CN=...`).
    fn tls_principal(&self) -> Option<String> {
        None
    }
}

impl Stream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn tcp(&self) -> &TcpStream {
        self
    }

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn tls_principal(&self) -> Option<String> {
        let certificate = self.get_ref().1.peer_certificates()?.first()?;
        crate::tls::principal::of_certificate(certificate)
    }
}

/// How a listener's connections are secured: TLS, SASL, both or neither.
#[derive(Clone, Default)]
pub struct Security {
    /// TLS, for SSL and SASL_SSL listeners.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// SASL, for SASL_PLAINTEXT and SASL_SSL listeners.
    pub sasl: Option<Arc<crate::sasl::SaslServer>>,
}

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// The largest request frame accepted.
    pub max_request_bytes: usize,
    /// A connection silent this long is closed (`connections.max.idle.ms`).
    pub idle_timeout: Duration,
    /// How long a connection that failed SASL authentication stays open after its refusal
    /// was written, unless the client closes it first
    /// (`connection.failed.authentication.delay.ms`).
    pub failed_authentication_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1_000,
            max_request_bytes: super::wire::DEFAULT_MAX_REQUEST_BYTES,
            idle_timeout: Duration::from_secs(600),
            failed_authentication_delay: Duration::from_millis(100),
        }
    }
}

/// Something that answers Kafka requests.
pub trait Service: Send + Sync + 'static {
    /// The APIs and versions served (and advertised by ApiVersions).
    fn apis(&self) -> &ApiSet;

    /// Answers one request with a response payload (header and body, no size prefix), or
    /// an empty payload for a request that gets no response. An error closes the connection.
    fn handle(&self, request: Request) -> impl Future<Output = Result<Bytes, String>> + Send;

    /// Whether `request` may be handled while earlier requests of its connection are still
    /// in flight. By default none may: a connection's requests are handled one at a time.
    fn pipelining(&self, _request: &Request) -> Pipelining {
        Pipelining::Barrier
    }
}

/// How a request may overlap the others of its connection. Answers are always written in
/// the order the requests came; this only says when a request may start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pipelining {
    /// Starts once every earlier request is answered; later ones wait for it.
    Barrier,
    /// May run beside earlier requests of other keys (never beside one of the same key, nor a
    /// barrier): its effects and theirs touch different state, so the order in which they
    /// land is not observable. An OffsetCommit's key is its group.
    Key(String),
    /// May run beside any earlier request but a barrier: its sender keeps the order of what
    /// it puts in flight together (a broker forwarding its clients' writes to the controller
    /// starts two that must land in order only one after the other).
    Unordered,
}

/// Requests of one connection handled at once, at most.
pub const MAX_PIPELINED: usize = 64;

/// What a request in flight holds of its connection's order.
enum Slot {
    Key(Pipelining),
    /// A reply written for a request that was not handled (an unsupported version): it
    /// waits for nothing but its turn to be written.
    Free,
}

fn may_start(new: &Slot, in_flight: &VecDeque<Slot>) -> bool {
    match new {
        Slot::Free => true,
        Slot::Key(Pipelining::Barrier) => in_flight.is_empty(),
        Slot::Key(Pipelining::Key(k)) => in_flight.iter().all(|s| match s {
            Slot::Free | Slot::Key(Pipelining::Unordered) => true,
            Slot::Key(Pipelining::Barrier) => false,
            Slot::Key(Pipelining::Key(other)) => other != k,
        }),
        Slot::Key(Pipelining::Unordered) => in_flight
            .iter()
            .all(|s| !matches!(s, Slot::Key(Pipelining::Barrier))),
    }
}

/// Aborts a task when dropped (a connection's reader, when the connection's task ends or is
/// cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn answer<S: Service>(
    service: Arc<S>,
    request: Result<Request, Bytes>,
) -> Result<Bytes, String> {
    match request {
        Ok(request) => service.handle(request).await,
        Err(reply) => Ok(reply),
    }
}

/// Serves `service` on `listener` until `shutdown` resolves; open connections are closed then.
/// With `security.tls`, every connection runs inside TLS; with `security.sasl`, every
/// connection authenticates before its other requests are served.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    limits: Limits,
    security: Security,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = limits.max_connections, "connection limit reached: closing a new connection");
                    continue;
                };
                let service = service.clone();
                let Security { tls, sasl } = security.clone();
                connections.spawn(async move {
                    match tls {
                        None => serve_connection(stream, None, service, limits, sasl).await,
                        Some(tls) => {
                            if let Some(stream) = tls_handshake(&tls, stream, peer, limits).await {
                                serve_connection(stream, None, service, limits, sasl).await;
                            }
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
    // Every connection is cancelled at its next await. One inside a long synchronous step
    // (an all-topics Metadata answer at a million partitions takes a quarter of a second,
    // seconds on a saturated machine) is not waited for past a bound: a broker allowed to
    // stop waited 1.0-1.8 s here at 1M. As Kafka's socket server does, in-flight requests
    // are dropped, not finished; the cancelled tasks end on their own.
    connections.abort_all();
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(CONNECTIONS_DRAIN_BOUND, drained).await;
    connections.detach_all();
}

/// Runs the server side of a TLS handshake on a new connection, bounded by the idle timeout.
/// A client that fails it is logged, as Kafka logs a failed authentication, and closed.
pub async fn tls_handshake(
    tls: &crate::tls::ServerTls,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    limits: Limits,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    // The handshake's small messages must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(limits.idle_timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%peer, listener = %tls.config().listener, error = %e, "failed authentication (TLS handshake failed): closing connection");
            None
        }
        Err(_) => {
            tracing::info!(%peer, listener = %tls.config().listener, "TLS handshake not finished within connections.max.idle.ms: closing connection");
            None
        }
    }
}

/// How long a stopping listener waits for its cancelled connection tasks to end.
const CONNECTIONS_DRAIN_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

/// The read buffer of one connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Reads a connection's frames (`first`, already read, then the rest) and passes them on,
/// reading ahead of the requests in flight. Ends at the end of the stream, an error, the idle
/// timeout, or a frame whose client has already closed the connection.
async fn read_frames<R: AsyncRead + Unpin>(
    read: R,
    socket: RawFd,
    mut first: Option<Bytes>,
    frames: tokio::sync::mpsc::Sender<Bytes>,
    limits: Limits,
    peer: String,
) {
    // Frames are read through a buffer: a request's size and body (and often the next
    // request) come in one system call instead of two.
    let mut read = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, read);
    loop {
        let frame = match first.take() {
            Some(f) => f,
            None => match tokio::time::timeout(
                limits.idle_timeout,
                read_frame(&mut read, limits.max_request_bytes),
            )
            .await
            {
                Err(_) => {
                    tracing::debug!(%peer, "idle connection closed");
                    return;
                }
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "closing connection");
                    return;
                }
            },
        };
        // A client that gave up (timed out and closed) must not have its request acted on
        // later: a broker that was paused or cut off still finds the request in its socket,
        // with the client's FIN behind it. Acting on it could let a stale write land after
        // the client's next one.
        if closed_by_peer(socket) {
            tracing::info!(%peer, "dropping a request whose client closed the connection");
            return;
        }
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

/// Answers requests on one connection, in the order they came. `first` is a frame already
/// read from it. A request starts when the service's [`Service::pipelining`] allows it beside
/// those in flight (by default only when none is), at most [`MAX_PIPELINED`] at once. With
/// `sasl`, the client authenticates first ([`authenticate`]).
pub async fn serve_connection<S: Service, T: Stream>(
    stream: T,
    first: Option<Bytes>,
    service: Arc<S>,
    limits: Limits,
    sasl: Option<Arc<crate::sasl::SaslServer>>,
) {
    use futures_util::{FutureExt, StreamExt};
    let tcp = stream.tcp();
    let _ = tcp.set_nodelay(true);
    // Valid while the stream lives, which its read half keeps alive in the reader task.
    let socket = tcp.as_raw_fd();
    let peer_addr = tcp.peer_addr().ok();
    let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    // SASL's principal, once authenticated, wins over a certificate's (as in Kafka).
    let tls_principal = stream.tls_principal();
    let client_host = peer_addr
        .map(|a| format!("/{}", a.ip()))
        .unwrap_or_default();
    let (read, mut write) = stream.split();
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Bytes>(MAX_PIPELINED);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(
        read,
        socket,
        first,
        frames_tx,
        limits,
        peer.clone(),
    )));
    let principal: Arc<str> = match &sasl {
        None => Arc::from(tls_principal.as_deref().unwrap_or(super::wire::ANONYMOUS)),
        Some(sasl) => {
            match authenticate(&mut frames, &mut write, service.as_ref(), sasl, &peer).await {
                Some(principal) => principal,
                None => {
                    linger_after_refusal(&mut frames, limits.failed_authentication_delay).await;
                    return;
                }
            }
        }
    };
    let mut running = futures_util::stream::FuturesOrdered::new();
    let mut slots: VecDeque<Slot> = VecDeque::new();
    let mut waiting: Option<(Slot, Result<Request, Bytes>)> = None;
    let mut reading = true;
    loop {
        if waiting
            .as_ref()
            .is_some_and(|(slot, _)| may_start(slot, &slots))
        {
            let (slot, request) = waiting.take().expect("checked above");
            slots.push_back(slot);
            running.push_back(answer(service.clone(), request));
        }
        if !reading && waiting.is_none() && running.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(reply) = running.next(), if !running.is_empty() => {
                slots.pop_front();
                let mut reply = Some(reply);
                let mut payloads = Vec::new();
                let mut failed = None;
                // The answers ready now, in order, go out together; a failed one closes the
                // connection after the answers before it.
                while let Some(r) = reply.take() {
                    match r {
                        // An empty payload is no response at all (Produce with acks=0).
                        Ok(payload) if payload.is_empty() => {}
                        Ok(payload) => payloads.push(payload),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(Some(next)) = running.next().now_or_never() {
                        slots.pop_front();
                        reply = Some(next);
                    }
                }
                let written = match payloads.as_slice() {
                    [] => Ok(()),
                    [one] => write_frame(&mut write, one).await,
                    many => write_frames(&mut write, many).await,
                };
                if let Some(e) = failed {
                    tracing::warn!(%peer, error = %e, "closing connection");
                    return;
                }
                if written.is_err() {
                    return;
                }
            }
            frame = frames.recv(), if reading && waiting.is_none() && slots.len() < MAX_PIPELINED => {
                let Some(frame) = frame else {
                    // The reader ended: answer what is in flight, then close.
                    reading = false;
                    continue;
                };
                waiting = Some(match decode_request(frame, service.apis()) {
                    Ok(request) if is_sasl(request.api_key) => {
                        // Authentication happens once, first, or not at all on this listener.
                        match illegal_sasl_state(&request) {
                            Ok(reply) => (Slot::Free, Err(reply)),
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "closing connection");
                                return;
                            }
                        }
                    }
                    Ok(mut request) => {
                        request.client_host.clone_from(&client_host);
                        request.principal = principal.clone();
                        (Slot::Key(service.pipelining(&request)), Ok(request))
                    }
                    Err(Rejected::Reply(payload)) => (Slot::Free, Err(payload)),
                    Err(Rejected::Close(reason)) => {
                        tracing::warn!(%peer, %reason, "closing connection");
                        return;
                    }
                });
            }
        }
    }
}

fn is_sasl(key: kafka_protocol::messages::ApiKey) -> bool {
    use kafka_protocol::messages::ApiKey;
    matches!(key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
}

/// The answer to a SaslHandshake or SaslAuthenticate where none is expected (Kafka's
/// ILLEGAL_SASL_STATE).
fn illegal_sasl_state(request: &Request) -> Result<Bytes, String> {
    use kafka_protocol::messages::{ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse};
    const ILLEGAL_SASL_STATE: i16 = 34;
    let why = "SASL authentication is not expected on this connection now";
    let response: ResponseKind =
        if request.api_key == kafka_protocol::messages::ApiKey::SaslHandshake {
            SaslHandshakeResponse::default()
                .with_error_code(ILLEGAL_SASL_STATE)
                .into()
        } else {
            SaslAuthenticateResponse::default()
                .with_error_code(ILLEGAL_SASL_STATE)
                .with_error_message(Some(super::wire::sb(why)))
                .into()
        };
    super::wire::encode_response(
        request.header.correlation_id,
        request.api_key,
        request.version,
        &response,
    )
}

/// Kafka's message for a failed SASL authentication.
fn authentication_failed(mechanism: &str) -> String {
    format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}")
}

/// What follows an answer during authentication.
enum Then {
    /// Read the client's next request.
    Continue,
    /// The client is this principal.
    Authenticated(Arc<str>),
    /// Close the connection once the answer is written.
    Close,
}

/// Runs a connection's SASL authentication: ApiVersions, SaslHandshake (v1) and
/// SaslAuthenticate are answered, one at a time; any other request, a failed exchange or a
/// closed connection ends it. Returns the authenticated principal (`User:<name>`).
async fn authenticate<S: Service, W: AsyncWrite + Unpin>(
    frames: &mut tokio::sync::mpsc::Receiver<Bytes>,
    write: &mut W,
    service: &S,
    sasl: &crate::sasl::SaslServer,
    peer: &str,
) -> Option<Arc<str>> {
    use super::wire::sb;
    use kafka_protocol::messages::{
        RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
    };
    const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    const SASL_AUTHENTICATION_FAILED: i16 = 58;
    let mut exchange: Option<crate::sasl::Exchange> = None;
    // After a SaslHandshake v0, the exchange's tokens come as bare frames, outside Kafka's
    // request framing, and a failure can only close the connection.
    let mut bare_tokens = false;
    loop {
        let frame = frames.recv().await?;
        if bare_tokens {
            let x = exchange.as_mut()?;
            let mechanism = x.mechanism();
            match sasl.step(x, &frame) {
                Ok(crate::sasl::scram::Step::Continue(bytes)) => {
                    write_frame(write, &bytes).await.ok()?;
                }
                Ok(crate::sasl::scram::Step::Authenticated { user, reply }) => {
                    // Even an empty one (PLAIN's): the client waits for the frame.
                    write_frame(write, &reply).await.ok()?;
                    return Some(Arc::from(format!("User:{user}")));
                }
                Err(crate::sasl::scram::Failed(why)) => {
                    tracing::info!(%peer, mechanism, reason = %why, "failed authentication");
                    return None;
                }
            }
            continue;
        }
        let request = match decode_request(frame, service.apis()) {
            Ok(r) => r,
            Err(Rejected::Reply(reply)) => {
                write_frame(write, &reply).await.ok()?;
                continue;
            }
            Err(Rejected::Close(reason)) => {
                tracing::warn!(%peer, %reason, "closing connection");
                return None;
            }
        };
        if matches!(request.body, RequestKind::ApiVersions(_)) {
            match service.handle(request).await {
                Ok(reply) => {
                    write_frame(write, &reply).await.ok()?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing connection");
                    return None;
                }
            }
        }
        let encode = |response: ResponseKind| {
            super::wire::encode_response(
                request.header.correlation_id,
                request.api_key,
                request.version,
                &response,
            )
        };
        let (reply, then) = match &request.body {
            // One handshake per connection.
            RequestKind::SaslHandshake(_) if exchange.is_some() => {
                (illegal_sasl_state(&request), Then::Close)
            }
            RequestKind::SaslHandshake(h) => {
                let names = sasl.mechanism_names();
                let response = SaslHandshakeResponse::default()
                    .with_mechanisms(names.iter().map(|n| sb(*n)).collect());
                match sasl.start(&h.mechanism) {
                    Some(x) => {
                        exchange = Some(x);
                        bare_tokens = request.version == 0;
                        (encode(response.into()), Then::Continue)
                    }
                    None => {
                        tracing::info!(%peer, mechanism = %&*h.mechanism, "failed authentication: SASL mechanism not enabled");
                        (
                            encode(response.with_error_code(UNSUPPORTED_SASL_MECHANISM).into()),
                            Then::Close,
                        )
                    }
                }
            }
            RequestKind::SaslAuthenticate(a) => match exchange.as_mut() {
                None => (illegal_sasl_state(&request), Then::Close),
                Some(x) => {
                    let mechanism = x.mechanism();
                    match sasl.step(x, &a.auth_bytes) {
                        Ok(crate::sasl::scram::Step::Continue(bytes)) => (
                            encode(
                                SaslAuthenticateResponse::default()
                                    .with_auth_bytes(bytes.into())
                                    .into(),
                            ),
                            Then::Continue,
                        ),
                        Ok(crate::sasl::scram::Step::Authenticated { user, reply }) => {
                            tracing::debug!(%peer, %user, mechanism, "authenticated");
                            (
                                encode(
                                    SaslAuthenticateResponse::default()
                                        .with_auth_bytes(reply.into())
                                        .into(),
                                ),
                                Then::Authenticated(Arc::from(format!("User:{user}"))),
                            )
                        }
                        Err(crate::sasl::scram::Failed(why)) => {
                            tracing::info!(%peer, mechanism, reason = %why, "failed authentication");
                            (
                                encode(
                                    SaslAuthenticateResponse::default()
                                        .with_error_code(SASL_AUTHENTICATION_FAILED)
                                        .with_error_message(Some(sb(authentication_failed(
                                            mechanism,
                                        ))))
                                        .into(),
                                ),
                                Then::Close,
                            )
                        }
                    }
                }
            },
            _ => {
                tracing::warn!(%peer, api = ?request.api_key, "closing connection: a request before SASL authentication");
                return None;
            }
        };
        match reply {
            Ok(bytes) => write_frame(write, &bytes).await.ok()?,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
                return None;
            }
        }
        match then {
            Then::Continue => {}
            Then::Authenticated(principal) => return Some(principal),
            Then::Close => return None,
        }
    }
}

/// Keeps a connection that failed authentication open for `delay`, or until its client
/// closes it, reading and dropping whatever it sends, as Kafka delays the close
/// (`connection.failed.authentication.delay.ms`). A client that reads its socket until it
/// would block, and drops what it read when the end of the stream came in the same pass
/// (kafka-python 3.0), would otherwise lose the refusal when it arrives together with the
/// close, and see only "socket disconnected". The delay also slows a client that retries
/// passwords.
async fn linger_after_refusal(frames: &mut tokio::sync::mpsc::Receiver<Bytes>, delay: Duration) {
    let _ = tokio::time::timeout(delay, async { while frames.recv().await.is_some() {} }).await;
}

/// Whether the peer has already closed its side (its FIN has arrived, or it reset the
/// connection), whatever is still unread before that: the socket's TCP state, not a peek at
/// its data, so that a TLS client's closing alert in front of its FIN does not hide it.
fn closed_by_peer(socket: RawFd) -> bool {
    // Linux's TCP states (include/net/tcp_states.h).
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    // SAFETY: an all-zero tcp_info is a valid value of this plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info`, a local of that size, on a
    // socket the caller's stream keeps open.
    let rc = unsafe {
        libc::getsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    rc == 0 && matches!(info.tcpi_state, TCP_CLOSE | TCP_CLOSE_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::client::KafkaClient;
    use crate::kafka::wire::encode_response;
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ResponseKind};
    use kafka_protocol::protocol::Message;

    /// An ApiVersions answer to `request`.
    fn versions_answer(apis: &ApiSet, request: &Request) -> Result<Bytes, String> {
        let response: ResponseKind = apis.api_versions_response().into();
        encode_response(
            request.header.correlation_id,
            request.api_key,
            request.version,
            &response,
        )
    }

    struct Versions(ApiSet);

    impl Service for Versions {
        fn apis(&self) -> &ApiSet {
            &self.0
        }

        async fn handle(&self, request: Request) -> Result<Bytes, String> {
            versions_answer(&self.0, &request)
        }
    }

    /// Answers after blocking its thread for two seconds, as a long synchronous step (an
    /// all-topics Metadata answer at a million partitions) does.
    struct Stuck {
        apis: ApiSet,
        entered: Arc<tokio::sync::Notify>,
    }

    impl Service for Stuck {
        fn apis(&self) -> &ApiSet {
            &self.apis
        }

        async fn handle(&self, request: Request) -> Result<Bytes, String> {
            self.entered.notify_one();
            std::thread::sleep(Duration::from_secs(2));
            versions_answer(&self.apis, &request)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_listener_does_not_wait_for_a_request_stuck_in_synchronous_work() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let entered = Arc::new(tokio::sync::Notify::new());
        let service = Arc::new(Stuck {
            apis: ApiSet::new(vec![(ApiKey::ApiVersions, ApiVersionsRequest::VERSIONS)]),
            entered: entered.clone(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            service,
            Limits::default(),
            Security::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let mut client = KafkaClient::connect(&addr, "stuck", Duration::from_secs(5))
            .await
            .unwrap();
        let request = tokio::spawn(async move {
            let _ = client.send(&ApiVersionsRequest::default(), 3).await;
        });
        entered.notified().await;
        let asked = std::time::Instant::now();
        stop.send(()).unwrap();
        served.await.unwrap();
        // The request blocks its thread for 2 s; the listener stops at its 100 ms bound.
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "the listener waited {:?} for a request in flight",
            asked.elapsed()
        );
        request.abort();
    }

    /// Answers ApiVersions after a pause, recording how many requests ran at once; a
    /// request's client id is its pipelining key ("barrier" for a barrier).
    struct Overlapping {
        apis: ApiSet,
        running: std::sync::Mutex<Vec<String>>,
        most_at_once: std::sync::atomic::AtomicUsize,
        violations: std::sync::Mutex<Vec<String>>,
    }

    impl Service for Overlapping {
        fn apis(&self) -> &ApiSet {
            &self.apis
        }

        fn pipelining(&self, request: &Request) -> Pipelining {
            match request.header.client_id.as_deref() {
                Some("barrier") | None => Pipelining::Barrier,
                Some("any") => Pipelining::Unordered,
                Some(k) => Pipelining::Key(k.to_string()),
            }
        }

        async fn handle(&self, request: Request) -> Result<Bytes, String> {
            let key = request
                .header
                .client_id
                .as_deref()
                .unwrap_or("")
                .to_string();
            {
                let mut running = self.running.lock().unwrap();
                if running
                    .iter()
                    .any(|k| (*k == key && key != "any") || k == "barrier")
                    || (key == "barrier" && !running.is_empty())
                {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("{key} started beside {running:?}"));
                }
                running.push(key.clone());
                self.most_at_once
                    .fetch_max(running.len(), std::sync::atomic::Ordering::SeqCst);
            }
            // Later requests finish sooner, so answers complete out of order.
            let pause = 40 - (request.header.correlation_id as u64 % 8) * 5;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            {
                let mut running = self.running.lock().unwrap();
                let at = running.iter().position(|k| *k == key).unwrap();
                running.remove(at);
            }
            versions_answer(&self.apis, &request)
        }
    }

    /// Requests of different keys run at once on one connection; one key's never overlap,
    /// a barrier runs alone; and the answers come back in the order the requests were sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_overlap_by_key_and_are_answered_in_order() {
        let keys = [
            "a", "b", "a", "c", "d", "barrier", "a", "b", "e", "f", "barrier", "g",
        ];
        let most = send_keyed_and_check_order(&keys).await;
        assert!(most >= 3, "requests of different keys never ran at once");
    }

    /// Unordered requests (a broker's forwarded writes at the controller) run beside each
    /// other and beside keyed ones, never beside a barrier; answers keep the order sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unordered_requests_overlap_all_but_a_barrier_and_are_answered_in_order() {
        let keys = [
            "any", "any", "any", "a", "any", "barrier", "any", "any", "a", "any", "barrier", "any",
        ];
        let most = send_keyed_and_check_order(&keys).await;
        assert!(most >= 4, "unordered requests never ran at once");
    }

    /// Sends one request per key, back to back on one connection, and checks every answer
    /// comes in order and no request started beside one it must not overlap. Returns the
    /// most that ran at once.
    async fn send_keyed_and_check_order(keys: &[&'static str]) -> usize {
        use kafka_protocol::protocol::StrBytes;
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(Overlapping {
            apis: ApiSet::new(vec![(ApiKey::ApiVersions, ApiVersionsRequest::VERSIONS)]),
            running: Default::default(),
            most_at_once: Default::default(),
            violations: Default::default(),
        });
        tokio::spawn(serve(
            listener,
            service.clone(),
            Limits::default(),
            Security::default(),
            std::future::pending(),
        ));
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let frame = crate::kafka::client::encode_request(
                &ApiVersionsRequest::default(),
                0,
                i as i32 + 1,
                &StrBytes::from_static_str(key),
            )
            .unwrap();
            crate::kafka::wire::put_frame(&mut out, &frame);
        }
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&out).await.unwrap();
        for i in 0..keys.len() {
            let answer = read_frame(&mut stream, 1 << 20).await.unwrap().unwrap();
            crate::kafka::client::decode_response::<ApiVersionsRequest>(answer, 0, i as i32 + 1)
                .expect("answers out of order");
        }
        assert_eq!(
            service.violations.lock().unwrap().clone(),
            Vec::<String>::new()
        );
        service
            .most_at_once
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fails a request whose client id is "fail" at once; answers the others after 100 ms.
    struct FailsOne(ApiSet);

    impl Service for FailsOne {
        fn apis(&self) -> &ApiSet {
            &self.0
        }

        fn pipelining(&self, _: &Request) -> Pipelining {
            Pipelining::Unordered
        }

        async fn handle(&self, request: Request) -> Result<Bytes, String> {
            if request.header.client_id.as_deref() == Some("fail") {
                return Err("this request fails".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            versions_answer(&self.0, &request)
        }
    }

    /// A request that fails closes its connection, but the answers to the requests before
    /// it still go out, even when the failure is ready by the time they are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_before_a_failed_request_are_sent_before_the_connection_closes() {
        use kafka_protocol::protocol::StrBytes;
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(FailsOne(ApiSet::new(vec![(
            ApiKey::ApiVersions,
            ApiVersionsRequest::VERSIONS,
        )])));
        tokio::spawn(serve(
            listener,
            service,
            Limits::default(),
            Security::default(),
            std::future::pending(),
        ));
        let mut out = Vec::new();
        for (correlation, client_id) in [(1, "ok"), (2, "fail")] {
            let frame = crate::kafka::client::encode_request(
                &ApiVersionsRequest::default(),
                0,
                correlation,
                &StrBytes::from_static_str(client_id),
            )
            .unwrap();
            crate::kafka::wire::put_frame(&mut out, &frame);
        }
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&out).await.unwrap();
        let answer = read_frame(&mut stream, 1 << 20)
            .await
            .unwrap()
            .expect("the first request's answer");
        crate::kafka::client::decode_response::<ApiVersionsRequest>(answer, 0, 1).unwrap();
        assert!(read_frame(&mut stream, 1 << 20)
            .await
            .is_ok_and(|f| f.is_none()));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_the_rest_keep_working() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let service = Arc::new(Versions(ApiSet::new(vec![(
            ApiKey::ApiVersions,
            ApiVersionsRequest::VERSIONS,
        )])));
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        tokio::spawn(serve(
            listener,
            service,
            limits,
            Security::default(),
            std::future::pending(),
        ));
        let timeout = Duration::from_secs(5);
        let mut a = KafkaClient::connect(&addr, "a", timeout).await.unwrap();
        let mut b = KafkaClient::connect(&addr, "b", timeout).await.unwrap();
        a.send(&ApiVersionsRequest::default(), 3).await.unwrap();
        b.send(&ApiVersionsRequest::default(), 3).await.unwrap();
        let mut c = KafkaClient::connect(&addr, "c", timeout).await.unwrap();
        assert!(c.send(&ApiVersionsRequest::default(), 3).await.is_err());
        // The two admitted connections still work; once one closes, a new one is admitted.
        a.send(&ApiVersionsRequest::default(), 0).await.unwrap();
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = KafkaClient::connect(&addr, "d", timeout).await.unwrap();
        d.send(&ApiVersionsRequest::default(), 3).await.unwrap();
    }
}
