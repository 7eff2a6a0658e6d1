//! Raft messages between nodes: over HTTP on each node's API port, under
//! `/v1/raft/`, with the cluster token. Appends and snapshot chunks are
//! binary ([`super::binary_wire`]) to peers that read it, the rest JSON.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tls::PeerTls;
use super::{ClusterError, TypeConfig};

/// Largest message a node takes from a peer (append batches, snapshot
/// chunks of up to 3 MiB).
pub(crate) const PEER_BODY_LIMIT: usize = 16 << 20;

/// How long a peer that refused a binary message gets JSON before it is
/// offered binary again (it may have been upgraded meanwhile).
const JSON_FOR: Duration = Duration::from_secs(60);

/// Header naming the sending node (with the feature `fault-injection`, a
/// simulated partition refuses messages by it).
pub const NODE_HEADER: &str = "x-roster-node";
/// Header carrying the cluster token.
pub const TOKEN_HEADER: &str = "x-roster-cluster-token";

/// Nodes this one pretends it cannot reach, both ways: a simulated partition
/// for tests. Only with the cargo feature `fault-injection`, which release
/// builds leave off.
#[cfg(feature = "fault-injection")]
pub type Cut = Arc<std::sync::RwLock<std::collections::HashSet<u64>>>;

/// What a node answers, and what its sender sees, across a simulated
/// partition.
#[cfg(feature = "fault-injection")]
pub const PARTITIONED: &str = "partitioned (test)";

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
    /// HTTP client (connection pool shared by all peers); rebuilt when the
    /// peer certificate is reloaded, so new connections present the new one.
    http: Arc<ArcSwap<reqwest::Client>>,
    /// Peer TLS; `None` for plain HTTP.
    tls: Option<PeerTls>,
    /// Bound of each request.
    timeout: Duration,
    /// This node's id.
    pub me: u64,
    /// The cluster token.
    pub token: String,
    /// Last successful reply of each peer.
    pub contacts: Contacts,
    /// Peers that answered a binary message with 415 (an earlier version),
    /// and when: they get JSON for [`JSON_FOR`] after it.
    json_only: Arc<std::sync::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>>,
    /// Simulated partition: the nodes this one neither calls nor answers.
    #[cfg(feature = "fault-injection")]
    pub cut: Cut,
}

impl Peers {
    /// A client for peer traffic. `timeout` bounds each request.
    /// With `tls`, peers are called over HTTPS with this node's certificate
    /// as client identity and the peer CA alone as roots.
    pub fn new(
        me: u64,
        token: String,
        timeout: Duration,
        tls: Option<PeerTls>,
    ) -> Result<Self, ClusterError> {
        let http = Self::client(timeout, tls.as_ref())?;
        Ok(Peers {
            http: Arc::new(ArcSwap::from_pointee(http)),
            tls,
            timeout,
            me,
            token,
            contacts: Contacts::default(),
            json_only: Arc::default(),
            #[cfg(feature = "fault-injection")]
            cut: Cut::default(),
        })
    }

    fn client(timeout: Duration, tls: Option<&PeerTls>) -> Result<reqwest::Client, ClusterError> {
        Self::builder(timeout, tls)?
            .build()
            .map_err(ClusterError::Client)
    }

    fn builder(
        timeout: Duration,
        tls: Option<&PeerTls>,
    ) -> Result<reqwest::ClientBuilder, ClusterError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // Raft's calls are tuned (batched, pipelined) on HTTP/1.1
            // connections of their own; the API's HTTP/2 is not for them.
            .http1_only();
        if let Some(tls) = tls {
            builder = builder
                .tls_backend_preconfigured(tls.client_config().map_err(ClusterError::PeerTls)?)
                .https_only(true);
        }
        Ok(builder)
    }

    /// A request to `path` on the node at `addr`, one of the addresses the
    /// join target `target` (`host:port`) resolves to. Over TLS, when the
    /// target is a name, the node's certificate is checked against that name
    /// (a headless Service's pods are reached by IP but named in their
    /// certificates); otherwise against the address.
    pub fn request_via(
        &self,
        method: reqwest::Method,
        target: &str,
        addr: SocketAddr,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ClusterError> {
        let name = host_of(target).filter(|h| h.parse::<IpAddr>().is_err());
        match (&self.tls, name) {
            (Some(tls), Some(name)) => {
                let http = Self::builder(self.timeout, Some(tls))?
                    .resolve(name, addr)
                    .build()
                    .map_err(ClusterError::Client)?;
                Ok(http
                    .request(method, format!("https://{name}:{}{path}", addr.port()))
                    .header(NODE_HEADER, self.me.to_string())
                    .header(TOKEN_HEADER, &self.token))
            }
            _ => Ok(self.request(method, format!("{}{path}", self.url(&addr.to_string())))),
        }
    }

    /// Whether peer traffic goes over TLS.
    pub fn tls_on(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the peer certificate again and uses it for new connections;
    /// keeps the previous client if the files are broken.
    pub fn reload_tls(&self) {
        if self.tls.is_none() {
            return;
        }
        match Self::client(self.timeout, self.tls.as_ref()) {
            Ok(http) => {
                self.http.store(Arc::new(http));
                tracing::info!("peer TLS client reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "peer TLS client reload failed; still using the previous certificate");
            }
        }
    }

    /// Base URL of a peer's API from its advertised address: `https://` with
    /// peer TLS, `http://` without, unless the address has a scheme.
    pub fn url(&self, addr: &str) -> String {
        if self.tls.is_some() && !addr.contains("://") {
            format!("https://{}", addr.trim_end_matches('/'))
        } else {
            base_url(addr)
        }
    }

    /// Whether `node` is sent binary appends and snapshot chunks (it has not
    /// refused one lately).
    fn binary_messages(&self, node: u64) -> bool {
        let mut m = self.json_only.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&node) {
            Some(at) if at.elapsed() < JSON_FOR => false,
            Some(_) => {
                m.remove(&node);
                true
            }
            None => true,
        }
    }

    /// `node` refused a binary message: JSON ones for a while.
    fn refused_binary_messages(&self, node: u64) {
        let mut m = self.json_only.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(node, tokio::time::Instant::now());
    }

    /// Whether traffic to or from `node` is cut (a simulated partition).
    #[cfg(feature = "fault-injection")]
    pub fn is_cut(&self, node: u64) -> bool {
        self.cut.read().map(|c| c.contains(&node)).unwrap_or(false)
    }

    /// A request to a peer's API, with the node and token headers.
    pub fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http
            .load()
            .request(method, url)
            .header(NODE_HEADER, self.me.to_string())
            .header(TOKEN_HEADER, &self.token)
    }
}

/// The host of a `host:port` (or URL) target, without brackets.
fn host_of(target: &str) -> Option<&str> {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let (host, _port) = rest.rsplit_once(':')?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
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
            base: self.url(&node.addr),
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
        #[cfg(feature = "fault-injection")]
        if self.peers.is_cut(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                PARTITIONED,
            ))));
        }
        let body = match serde_json::to_vec(body) {
            Ok(bytes) => bytes,
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        self.post(path, body, option).await
    }

    /// Sends an encoded JSON message and reads the answer.
    async fn post<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let resp = self.send(path, body, "application/json", option).await?;
        Self::answer(resp, self.target).await
    }

    /// Posts `body` as `content_type`.
    async fn send<E>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
        option: &RPCOption,
    ) -> Result<reqwest::Response, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error,
    {
        self.peers
            .request(
                reqwest::Method::POST,
                format!("{}/v1/raft/{path}", self.base),
            )
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })
    }

    /// Reads a peer's answer.
    async fn answer<Resp, E>(
        resp: reqwest::Response,
        target: u64,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
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
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    /// Sends an append, binary unless the peer refused binary lately (then
    /// JSON).
    async fn append(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let binary = self.peers.binary_messages(self.target);
        let body = if binary {
            super::binary_wire::encode(rpc)
        } else {
            json(rpc)?
        };
        // The peer refuses bodies over PEER_BODY_LIMIT, and would refuse the
        // same append on every retry: ask openraft for fewer entries instead
        // (entries carry batch writes, so a lagging follower's catch-up can
        // be large). One entry alone is bounded by the proposer.
        if body.len() > PEER_BODY_LIMIT && rpc.entries.len() > 1 {
            let fewer = (rpc.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fewer),
            ));
        }
        let content_type = binary.then_some(super::binary_wire::CONTENT_TYPE);
        self.either("append", body, content_type, || json(rpc), option)
            .await
    }

    /// Posts `body`, binary of `content_type` or JSON when that is `None`;
    /// a 415 to a binary one (a peer of an earlier version) is answered by
    /// sending the JSON `json` gives at once, and the peer gets JSON for a
    /// while.
    async fn either<Resp, E>(
        &self,
        path: &'static str,
        body: Vec<u8>,
        content_type: Option<&'static str>,
        json: impl FnOnce() -> Result<Vec<u8>, RPCError<u64, BasicNode, RaftError<u64, E>>>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let resp = self
            .send(
                path,
                body,
                content_type.unwrap_or("application/json"),
                option,
            )
            .await?;
        if content_type.is_some() && resp.status() == reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE {
            tracing::info!(
                peer = self.target,
                path,
                "a peer does not read binary Raft messages (an earlier version?): sending it JSON"
            );
            self.peers.refused_binary_messages(self.target);
            let resp = self.send(path, json()?, "application/json", option).await?;
            return Self::answer(resp, self.target).await;
        }
        Self::answer(resp, self.target).await
    }
}

/// `value` as JSON, or the error openraft expects.
fn json<T: Serialize, E: std::error::Error>(
    value: &T,
) -> Result<Vec<u8>, RPCError<u64, BasicNode, RaftError<u64, E>>> {
    serde_json::to_vec(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        #[cfg(feature = "fault-injection")]
        if self.peers.is_cut(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                PARTITIONED,
            ))));
        }
        let result = self.append(&rpc, &option).await;
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
        let binary = self.peers.binary_messages(self.target);
        let body = if binary {
            super::binary_wire::encode_chunk(&rpc)
        } else {
            json(&rpc)?
        };
        let content_type = binary.then_some(super::binary_wire::CHUNK_CONTENT_TYPE);
        let result = self
            .either("snapshot", body, content_type, || json(&rpc), &option)
            .await;
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

#[cfg(test)]
mod tests {
    use super::host_of;

    /// An append over the peers' body limit is not sent (it would be refused
    /// every time): openraft is asked for half the entries.
    #[tokio::test]
    async fn an_append_over_the_body_limit_asks_for_fewer_entries() {
        use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
        use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

        use super::super::ops::{Batch, Op};
        use super::{PEER_BODY_LIMIT, Peers};

        let entry = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                ops: vec![Op::Heartbeat {
                    service: "web".into(),
                    // Each entry is over a third of the limit.
                    id: "x".repeat(PEER_BODY_LIMIT / 3 + 1),
                }],
            }),
        };
        let mut peers =
            Peers::new(1, "token".into(), std::time::Duration::from_secs(1), None).expect("peers");
        // Nothing listens there: an append that were sent would fail otherwise.
        let mut conn = peers
            .new_client(
                2,
                &BasicNode {
                    addr: "127.0.0.1:9".into(),
                },
            )
            .await;
        let rpc = openraft::raft::AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=4).map(entry).collect(),
            leader_commit: None,
        };
        let option = RPCOption::new(std::time::Duration::from_secs(1));
        match conn.append_entries(rpc, option).await {
            Err(openraft::error::RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 2),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }

    /// Appends go binary; a peer of an earlier version answers that with
    /// 415 and gets the same append as JSON at once, and JSON from then on.
    #[tokio::test]
    async fn appends_are_binary_and_fall_back_to_json_for_an_older_peer() {
        use std::sync::{Arc, Mutex};

        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
        use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
        use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

        use super::super::binary_wire;
        use super::super::ops::{Batch, Op};
        use super::Peers;

        /// A peer that reads binary appends (`new`) or only JSON ones, and
        /// notes each content type and entry count it got.
        async fn peer(new: bool) -> (String, Arc<Mutex<Vec<(String, usize)>>>) {
            let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
            let log = seen.clone();
            let app = axum::Router::new().route(
                "/v1/raft/append",
                axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let log = log.clone();
                    async move {
                        let ct = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let entries = if ct == binary_wire::CONTENT_TYPE && new {
                            binary_wire::decode(&body).expect("decodes").entries.len()
                        } else if ct == "application/json" {
                            serde_json::from_slice::<
                                    AppendEntriesRequest<super::super::TypeConfig>,
                                >(&body)
                                .expect("JSON append")
                                .entries
                                .len()
                        } else {
                            log.lock().unwrap().push((ct, 0));
                            return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
                        };
                        log.lock().unwrap().push((ct, entries));
                        let ok: Result<
                            AppendEntriesResponse<u64>,
                            openraft::error::RaftError<u64>,
                        > = Ok(AppendEntriesResponse::Success);
                        axum::Json(ok).into_response()
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move { axum::serve(listener, app).await });
            (addr, seen)
        }
        let rpc = || AppendEntriesRequest::<super::super::TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=3)
                .map(|i| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: EntryPayload::Normal(Batch {
                        ops: vec![Op::Heartbeat {
                            service: "web".into(),
                            id: format!("web-{i}"),
                        }],
                    }),
                })
                .collect(),
            leader_commit: None,
        };
        let option = || RPCOption::new(std::time::Duration::from_secs(5));
        let mut peers =
            Peers::new(1, "token".into(), std::time::Duration::from_secs(5), None).expect("peers");

        let (addr, seen) = peer(true).await;
        let mut conn = peers.new_client(2, &BasicNode { addr }).await;
        for _ in 0..2 {
            conn.append_entries(rpc(), option())
                .await
                .expect("appended");
        }
        let binary = (binary_wire::CONTENT_TYPE.to_owned(), 3);
        assert_eq!(*seen.lock().unwrap(), vec![binary.clone(), binary]);

        let (addr, seen) = peer(false).await;
        let mut conn = peers.new_client(3, &BasicNode { addr }).await;
        for _ in 0..2 {
            conn.append_entries(rpc(), option())
                .await
                .expect("appended");
        }
        let json = ("application/json".to_owned(), 3);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (binary_wire::CONTENT_TYPE.to_owned(), 0),
                json.clone(),
                json
            ],
            "refused once, then JSON"
        );
    }

    #[test]
    fn the_host_of_a_join_target() {
        assert_eq!(host_of("roster-0.roster:8500"), Some("roster-0.roster"));
        assert_eq!(host_of("https://roster:8500/"), Some("roster"));
        assert_eq!(host_of("10.0.0.1:8500"), Some("10.0.0.1"));
        assert_eq!(host_of("[::1]:8500"), Some("::1"));
        assert_eq!(host_of("roster"), None);
    }
}
