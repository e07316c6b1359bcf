//! A broker's way to the active controller: a few pipelined connections to whichever
//! controller leads, found through DescribeQuorum and re-found on NOT_CONTROLLER or a broken
//! connection. Forwarded writes (offset commits and admin requests from many clients) are
//! all in flight at once on them: requests queued together go out in one system call, and
//! the controller decides them together and shares Raft entries among them.

use crate::kafka::client::{KafkaClient, PipelinedClient};
use kafka_protocol::messages::DescribeQuorumRequest;
use kafka_protocol::protocol::Request;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Pipelined connections to the active controller. Each carries any number of requests at
/// once (the controller handles up to `MAX_PIPELINED` of a connection together); a few
/// spread the work over the controller's runtime threads.
pub const CONTROLLER_CONNECTIONS: usize = 4;
/// The bound on one controller call (a forwarded write waits for its commit).
pub const CONTROLLER_CALL_TIMEOUT: Duration = Duration::from_secs(15);

const UNKNOWN: u64 = u64::MAX;

/// The controllers a broker talks to.
pub struct Controllers {
    voters: BTreeMap<u64, String>,
    client_id: String,
    /// TLS to the controller listener, if it is SSL.
    tls: Option<crate::tls::SslConfig>,
    leader: AtomicU64,
    slots: Vec<Mutex<Option<Arc<PipelinedClient>>>>,
    next: AtomicUsize,
    /// Held while asking the controllers who leads: callers that lost the leader together
    /// (every forwarded write in flight when it died) ask once, not once each.
    finding: Mutex<()>,
}

impl Controllers {
    /// Controllers at `voters` (`id → host:port`), over at most `connections` connections,
    /// secured with `tls` when the controller listener is SSL.
    pub fn new(
        voters: BTreeMap<u64, String>,
        client_id: String,
        connections: usize,
        tls: Option<crate::tls::SslConfig>,
    ) -> Self {
        Controllers {
            voters,
            client_id,
            tls,
            leader: AtomicU64::new(UNKNOWN),
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            finding: Mutex::new(()),
        }
    }

    /// How connections to the controllers are secured (certificates read afresh).
    pub fn security(&self) -> io::Result<crate::kafka::connect::ClientSecurity> {
        crate::kafka::connect::node_security(self.tls.as_ref())
    }

    /// A client connection to the controller at `addr`.
    pub async fn connect(&self, addr: &str, timeout: Duration) -> io::Result<KafkaClient> {
        KafkaClient::connect_with(addr, &self.client_id, timeout, &self.security()?).await
    }

    /// The address of the controller believed to lead, finding it if unknown.
    pub async fn leader_addr(&self) -> io::Result<String> {
        if let Some(addr) = self.voters.get(&self.leader.load(Ordering::Relaxed)) {
            return Ok(addr.clone());
        }
        self.find_leader().await
    }

    /// Records a leader learned elsewhere (a Fetch response names it).
    pub fn set_leader(&self, id: Option<u64>) {
        self.leader.store(id.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    /// Forgets the leader (after NOT_CONTROLLER or a broken connection).
    pub fn forget_leader(&self) {
        self.leader.store(UNKNOWN, Ordering::Relaxed);
    }

    /// Asks each controller in turn who leads (or takes the answer of a caller that asked
    /// while this one waited).
    pub async fn find_leader(&self) -> io::Result<String> {
        let unknown_before = self.leader.load(Ordering::Relaxed) == UNKNOWN;
        let _one_at_a_time = self.finding.lock().await;
        if unknown_before {
            if let Some(addr) = self.voters.get(&self.leader.load(Ordering::Relaxed)) {
                return Ok(addr.clone());
            }
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no controller answered");
        for addr in self.voters.values() {
            let asked = async {
                let mut c = self.connect(addr, Duration::from_secs(2)).await?;
                c.send(&DescribeQuorumRequest::default(), 0).await
            };
            match asked.await {
                Ok(r)
                    if r.error_code
                        == kmeta_metadata::ErrorCode::ClusterAuthorizationFailed.code() =>
                {
                    last = io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("the controller at {addr} refuses this broker (CLUSTER_AUTHORIZATION_FAILED): its principal needs Describe and ClusterAction on the cluster (super.users)"),
                    );
                }
                Ok(r) => {
                    let leader = r
                        .topics
                        .first()
                        .and_then(|t| t.partitions.first())
                        .map_or(-1, |p| p.leader_id.0);
                    if leader >= 0 {
                        if let Some(a) = self.voters.get(&(leader as u64)) {
                            self.leader.store(leader as u64, Ordering::Relaxed);
                            return Ok(a.clone());
                        }
                    }
                    last =
                        io::Error::new(io::ErrorKind::NotFound, format!("{addr} knows no leader"));
                }
                Err(e) => last = e,
            }
        }
        if crate::kafka::connect::is_refusal(&last) {
            // Kept a refusal (PermissionDenied), whatever the error's own kind.
            last = io::Error::new(io::ErrorKind::PermissionDenied, last.to_string());
        }
        Err(last)
    }

    /// Sends one request to the active controller on a pooled connection. A connection or
    /// protocol failure drops that connection and forgets the leader; the caller retries.
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> io::Result<R::Response> {
        let addr = self.leader_addr().await?;
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let client = {
            let mut slot = slot.lock().await;
            match slot.as_ref() {
                Some(c) if !c.is_dead() && c.addr() == addr => c.clone(),
                _ => {
                    let connected = match self.security() {
                        Ok(security) => {
                            PipelinedClient::connect_with(
                                &addr,
                                &self.client_id,
                                CONTROLLER_CALL_TIMEOUT,
                                &security,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    match connected {
                        Ok(c) => {
                            let c = Arc::new(c);
                            *slot = Some(c.clone());
                            c
                        }
                        Err(e) => {
                            *slot = None;
                            self.forget_leader();
                            return Err(e);
                        }
                    }
                }
            }
        };
        match client.send(request, version, CONTROLLER_CALL_TIMEOUT).await {
            Ok(r) => Ok(r),
            Err(e) => {
                client.kill();
                // The other pooled connections to that controller are most likely dead too
                // (it stopped or restarted): drop them now, or each would cost a failed
                // attempt and a caller's backoff in turn.
                for other in &self.slots {
                    if let Ok(mut c) = other.try_lock() {
                        if c.as_ref().is_some_and(|c| c.addr() == addr) {
                            if let Some(c) = c.take() {
                                c.kill();
                            }
                        }
                    }
                }
                self.forget_leader();
                Err(e)
            }
        }
    }
}
