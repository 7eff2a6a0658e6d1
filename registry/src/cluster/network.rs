//! Raft messages between nodes: JSON over HTTP on each node's API port, under
//! `/v1/raft/`, with the cluster token.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;

/// Header naming the sending node, so a partition can be simulated on both sides.
pub const NODE_HEADER: &str = "x-roster-node";
/// Header carrying the cluster token.
pub const TOKEN_HEADER: &str = "x-roster-cluster-token";

/// Nodes this one pretends it cannot reach (tests of partitions).
pub type Cut = Arc<RwLock<HashSet<u64>>>;

/// When each peer last answered an append (or snapshot chunk) with success:
/// the leader's evidence that it reaches the peer. openraft's metrics say how
/// far a follower's log matches, not when it last answered.
#[derive(Clone, Debug, Default)]
pub struct Contacts(Arc<std::sync::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>>);

impl Contacts {
    /// Records a successful reply of `node` now.
    pub fn record(&self, node: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(node, tokio::time::Instant::now());
        }
    }

    /// Forgets every reply (a node that becomes leader starts afresh).
    pub fn clear(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }

    /// Time since `node` last answered with success; `None` when it never did.
    pub fn since(&self, node: u64) -> Option<Duration> {
        let m = self.0.lock().ok()?;
        m.get(&node).map(|t| t.elapsed())
    }
}

/// What every connection to a peer shares.
#[derive(Clone, Debug)]
pub struct Peers {
    /// HTTP client (connection pool shared by all peers).
    pub http: reqwest::Client,
    /// This node's id.
    pub me: u64,
    /// The cluster token.
    pub token: String,
    /// Last successful reply of each peer.
    pub contacts: Contacts,
    /// Simulated partition.
    pub cut: Cut,
}

impl Peers {
    /// A client for peer traffic. `timeout` bounds each request.
    pub fn new(me: u64, token: String, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Peers {
            http,
            me,
            token,
            contacts: Contacts::default(),
            cut: Cut::default(),
        })
    }

    /// Whether traffic to or from `node` is cut.
    pub fn is_cut(&self, node: u64) -> bool {
        self.cut.read().map(|c| c.contains(&node)).unwrap_or(false)
    }

    /// A request to a peer's API, with the node and token headers.
    pub fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(NODE_HEADER, self.me.to_string())
            .header(TOKEN_HEADER, &self.token)
    }
}

/// Base URL of a node's API from its advertised address.
pub fn base_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_owned()
    } else {
        format!("http://{addr}")
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        Connection {
            peers: self.clone(),
            target,
            base: base_url(&node.addr),
        }
    }
}

/// The sending side towards one peer.
#[derive(Debug)]
pub struct Connection {
    peers: Peers,
    target: u64,
    base: String,
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.peers.is_cut(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                "partitioned (test)",
            ))));
        }
        let resp = self
            .peers
            .request(
                reqwest::Method::POST,
                format!("{}/v1/raft/{path}", self.base),
            )
            .timeout(option.hard_ttl())
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                format!("{status}: {text}"),
            ))));
        }
        let result: Result<Resp, RaftError<u64, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let result = self.call("append", &rpc, &option).await;
        if result.is_ok() {
            self.peers.contacts.record(self.target);
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let result = self.call("snapshot", &rpc, &option).await;
        if result.is_ok() {
            self.peers.contacts.record(self.target);
        }
        result
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("vote", &rpc, &option).await
    }
}
