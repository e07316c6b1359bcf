//! A simulated network between the controllers of one simulation: every Raft RPC is a direct
//! call into the target's openraft instance, after a drawn delay each way; links can be cut
//! (partitions) and messages lost (before or after the target handled them): the caller then
//! hears nothing until its RPC times out, as over TCP. A crashed node refuses connections at
//! once. A paused node (SIGSTOP) neither sends nor answers: its outgoing messages wait until
//! it resumes, while its own timers keep running, so it wakes up to an expired leader lease.
//! Delays differ per message, so messages overtake each other.

use crate::raft::network::Raft;
use crate::raft::state_machine::SnapshotData;
use crate::raft::types::{TypeConfig, Vote};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotOf;
use openraft::{BasicNode, RaftNetworkV2};
use rand::rngs::StdRng;
use rand::RngExt;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How messages fare.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Probability that a message (request or response) is lost.
    pub loss: f64,
    /// Delay of each message, drawn uniformly up to this, ms.
    pub max_delay_ms: u64,
}

struct NetState {
    nodes: BTreeMap<u64, Raft>,
    paused: BTreeSet<u64>,
    cut: BTreeSet<(u64, u64)>,
    params: NetParams,
    rng: StdRng,
}

/// The network of one simulation. Cloning shares it.
#[derive(Clone)]
pub struct SimNet(Arc<Mutex<NetState>>);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SimNetError(String);

impl SimNet {
    /// A network with no nodes yet.
    pub fn new(params: NetParams, rng: StdRng) -> SimNet {
        SimNet(Arc::new(Mutex::new(NetState {
            nodes: BTreeMap::new(),
            paused: BTreeSet::new(),
            cut: BTreeSet::new(),
            params,
            rng,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id` answers RPCs through `raft`.
    pub fn attach(&self, id: u64, raft: Raft) {
        self.lock().nodes.insert(id, raft);
    }

    /// `id` crashed: connections to it are refused.
    pub fn detach(&self, id: u64) {
        let mut s = self.lock();
        s.nodes.remove(&id);
        s.paused.remove(&id);
    }

    /// `id` is paused (SIGSTOP) or resumed (SIGCONT).
    pub fn set_paused(&self, id: u64, paused: bool) {
        let mut s = self.lock();
        if paused {
            s.paused.insert(id);
        } else {
            s.paused.remove(&id);
        }
    }

    fn is_paused(&self, id: u64) -> bool {
        self.lock().paused.contains(&id)
    }

    /// Cuts every link between `node` and `others`, both ways.
    pub fn isolate(&self, node: u64, others: impl IntoIterator<Item = u64>) {
        let mut s = self.lock();
        for o in others {
            s.cut.insert((node, o));
            s.cut.insert((o, node));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Sets how messages fare from now on.
    pub fn set_params(&self, params: NetParams) {
        self.lock().params = params;
    }

    /// Draws one message's fate from `from` to `to`: its delay, or `None` if it is lost
    /// (the link is cut, the receiver is paused, or the message is dropped).
    fn leg(&self, from: u64, to: u64) -> Option<Duration> {
        let mut s = self.lock();
        if s.cut.contains(&(from, to)) || s.paused.contains(&to) {
            return None;
        }
        let loss = s.params.loss;
        if loss > 0.0 && s.rng.random_bool(loss) {
            return None;
        }
        let max = s.params.max_delay_ms;
        Some(Duration::from_millis(s.rng.random_range(0..=max)))
    }

    /// Waits while `id` is paused: a stopped process sends and reads nothing.
    pub async fn while_paused(&self, id: u64) {
        while self.is_paused(id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Carries a request to `to` and its response back, within `ttl`. A lost message is
    /// silence until `ttl`; a crashed node refuses at once.
    async fn call<T, F, Fut>(
        &self,
        from: u64,
        to: u64,
        ttl: Duration,
        f: F,
    ) -> Result<T, SimNetError>
    where
        F: FnOnce(Raft) -> Fut,
        Fut: Future<Output = T>,
    {
        let deadline = tokio::time::Instant::now() + ttl;
        let silence = || async move {
            tokio::time::sleep_until(deadline).await;
            Err(SimNetError(format!(
                "{from}->{to}: no answer within {ttl:?}"
            )))
        };
        self.while_paused(from).await;
        let Some(there) = self.leg(from, to) else {
            return silence().await;
        };
        tokio::time::sleep(there).await;
        let Some(raft) = self.lock().nodes.get(&to).cloned() else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Err(SimNetError(format!("{from}->{to}: connection refused")));
        };
        if self.is_paused(to) {
            return silence().await;
        }
        let response = f(raft).await;
        self.while_paused(to).await;
        let Some(back) = self.leg(to, from) else {
            return silence().await;
        };
        tokio::time::sleep(back).await;
        if !self.lock().nodes.contains_key(&to) {
            // It crashed before the answer left.
            return silence().await;
        }
        Ok(response)
    }
}

/// openraft's network factory for node `from`.
#[derive(Clone)]
pub struct SimNetFactory {
    /// The node whose RPCs this carries.
    pub from: u64,
    /// The simulation's network.
    pub net: SimNet,
    /// Each RPC's deadline, as the real network gives it (`network::rpc_deadline`; the
    /// simulation's messages are small).
    pub request_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for SimNetFactory {
    type Network = SimPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimPeer {
        SimPeer {
            from: self.from,
            to: target,
            net: self.net.clone(),
            ttl: self.request_timeout,
        }
    }
}

/// RPCs from one node to one peer.
pub struct SimPeer {
    from: u64,
    to: u64,
    net: SimNet,
    ttl: Duration,
}

fn unreachable(e: impl std::error::Error + 'static) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl SimPeer {
    async fn bounded<T>(
        &self,
        ttl: Duration,
        call: impl Future<Output = Result<T, SimNetError>>,
    ) -> Result<T, SimNetError> {
        match tokio::time::timeout(ttl + Duration::from_millis(1), call).await {
            Ok(r) => r,
            Err(_) => Err(SimNetError(format!(
                "{}->{}: no answer within {ttl:?}",
                self.from, self.to
            ))),
        }
    }
}

impl SimPeer {
    /// One RPC within its deadline; a lost message or an error answer is `Unreachable`.
    async fn rpc<T, E, F, Fut>(&self, f: F) -> Result<T, RPCError<TypeConfig>>
    where
        E: std::fmt::Display,
        F: FnOnce(Raft) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let call = self.net.call(self.from, self.to, self.ttl, f);
        match self.bounded(self.ttl, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(unreachable(SimNetError(e.to_string()))),
            Err(e) => Err(unreachable(e)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for SimPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(|r| async move { r.append_entries(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(|r| async move { r.vote(rpc).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(|r| async move { r.pre_vote(rpc).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let call = self.net.call(self.from, self.to, self.ttl, |r| async move {
            r.install_full_snapshot(vote, snapshot).await
        });
        let call = self.bounded(self.ttl, call);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = call => match r {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::new(&SimNetError(e.to_string())))),
                Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            },
        }
    }
}
