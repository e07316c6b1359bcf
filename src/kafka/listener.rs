//! A Kafka-protocol listener: accepts connections up to a cap, reads frames up to a size cap,
//! and answers requests one at a time per connection, in order (as Kafka does).
//!
//! A malformed or hostile frame closes that one connection with a logged reason; nothing a
//! client sends can stop the listener.

use super::wire::{decode_request, read_frame, write_frame, ApiSet, Rejected, Request};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// The largest request frame accepted.
    pub max_request_bytes: usize,
    /// A connection silent this long is closed (`connections.max.idle.ms`).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1_000,
            max_request_bytes: super::wire::DEFAULT_MAX_REQUEST_BYTES,
            idle_timeout: Duration::from_secs(600),
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
}

/// Serves `service` on `listener` until `shutdown` resolves; open connections are closed then.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    limits: Limits,
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
                connections.spawn(async move {
                    serve_connection(stream, None, service, limits).await;
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

/// How long a stopping listener waits for its cancelled connection tasks to end.
const CONNECTIONS_DRAIN_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

/// The read buffer of one connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Answers requests on one connection. `first` is a frame already read from it.
pub async fn serve_connection<S: Service>(
    stream: TcpStream,
    mut first: Option<Bytes>,
    service: Arc<S>,
    limits: Limits,
) {
    let _ = stream.set_nodelay(true);
    let peer_addr = stream.peer_addr().ok();
    // Frames are read through a buffer: a request's size and body (and often the next
    // request) come in one system call instead of two. Writes pass straight through.
    let mut stream = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    let client_host = peer_addr
        .map(|a| format!("/{}", a.ip()))
        .unwrap_or_default();
    loop {
        let frame = match first.take() {
            Some(f) => f,
            None => match tokio::time::timeout(
                limits.idle_timeout,
                read_frame(&mut stream, limits.max_request_bytes),
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
        if closed_by_peer(stream.get_ref()) {
            tracing::info!(%peer, "dropping a request whose client closed the connection");
            return;
        }
        let decoded = decode_request(frame, service.apis()).map(|mut request| {
            request.client_host.clone_from(&client_host);
            request
        });
        let reply = match decoded {
            Ok(request) => match service.handle(request).await {
                Ok(payload) => payload,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing connection");
                    return;
                }
            },
            Err(Rejected::Reply(payload)) => payload,
            Err(Rejected::Close(reason)) => {
                tracing::warn!(%peer, %reason, "closing connection");
                return;
            }
        };
        // An empty payload is no response at all (Produce with acks=0).
        if reply.is_empty() {
            continue;
        }
        if write_frame(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// Whether the peer has already closed its side (a FIN is waiting), without reading data.
fn closed_by_peer(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    // SAFETY: a one-byte peek into a local buffer on a socket this function borrows.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::client::KafkaClient;
    use crate::kafka::wire::encode_response;
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ResponseKind};
    use kafka_protocol::protocol::Message;

    struct Versions(ApiSet);

    impl Service for Versions {
        fn apis(&self) -> &ApiSet {
            &self.0
        }

        async fn handle(&self, request: Request) -> Result<Bytes, String> {
            let response: ResponseKind = self.0.api_versions_response().into();
            encode_response(
                request.header.correlation_id,
                request.api_key,
                request.version,
                &response,
            )
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
            let response: ResponseKind = self.apis.api_versions_response().into();
            encode_response(
                request.header.correlation_id,
                request.api_key,
                request.version,
                &response,
            )
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
        let served = tokio::spawn(serve(listener, service, Limits::default(), async {
            let _ = stopped.await;
        }));
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
        tokio::spawn(serve(listener, service, limits, std::future::pending()));
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
