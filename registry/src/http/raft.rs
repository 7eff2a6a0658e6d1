//! Cluster endpoints: Raft messages and forwarded writes between nodes
//! (`/v1/raft/*`, cluster token), and the operator's view and membership
//! changes (`/v1/operator/raft*`, admin token when ACLs are on).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Deserialize;
use std::sync::Arc;

use super::gate::{Gate, Group};
use super::{ApiError, AppState};
use crate::catalog::Command;
use crate::cluster::ops::{ErrorWire, Op, OpError, OutcomeWire};
use crate::cluster::{Cluster, ForwardedHeartbeat, NodeInfo, TypeConfig};
use crate::model::{InstanceId, ServiceName};
use crate::registry::{Replication, Unavailable, WriteError};

/// Largest Raft message (append batches, snapshot chunks of up to 3 MiB).
const RAFT_BODY_LIMIT: usize = crate::cluster::PEER_BODY_LIMIT;

/// The cluster routes: Raft messages and forwarded writes for peers with the
/// cluster token, the operator's calls for admins. Both are there on a lone
/// node too, where they answer 404.
pub(super) fn groups() -> Vec<Group> {
    use super::gate::Access::{Admin, Peer};
    use super::gate::Style::{Consul, Native};
    let peer = Router::new()
        .route("/v1/raft/append", post(append))
        .route("/v1/raft/vote", post(vote))
        .route("/v1/raft/snapshot", post(snapshot))
        .route("/v1/raft/node", get(node))
        .route("/v1/raft/write", post(write))
        .route("/v1/raft/writes", post(writes))
        .route("/v1/raft/heartbeat", post(heartbeat))
        .route("/v1/raft/heartbeats", post(heartbeats))
        .route("/v1/raft/read-index", get(read_index))
        .route("/v1/raft/join", post(join))
        .route("/v1/raft/status", get(peer_status))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    let operator = Router::new()
        .route("/v1/operator/raft", get(status))
        .route("/v1/operator/raft/peers", post(add_peer))
        .route("/v1/operator/raft/peers/{id}", delete(remove_peer));
    vec![
        // Peers read plain-text refusals (Consul's style is plain text).
        Group::new(Gate::new(Peer, Consul).body_limit(RAFT_BODY_LIMIT), peer),
        Group::new(Gate::new(Admin, Native).before_ready(), operator),
    ]
}

fn cluster(state: &AppState) -> Result<Arc<Cluster>, ApiError> {
    state.cluster.clone().ok_or_else(|| {
        ApiError::not_found("this registry runs alone: start it with --bootstrap-expect or --join to form a cluster")
    })
}

/// Why a peer's message was refused (the cluster token is the gate's).
#[derive(Debug)]
enum Refused {
    NotClustered,
    /// A simulated partition (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    Partitioned,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NotClustered => {
                (StatusCode::NOT_FOUND, "this registry runs alone").into_response()
            }
            #[cfg(feature = "fault-injection")]
            Refused::Partitioned => {
                (StatusCode::SERVICE_UNAVAILABLE, crate::cluster::PARTITIONED).into_response()
            }
        }
    }
}

/// The cluster of a peer's message, with simulated partitions applied.
fn peer(state: &AppState, headers: &HeaderMap) -> Result<Arc<Cluster>, Refused> {
    let c = state.cluster.clone().ok_or(Refused::NotClustered)?;
    refuse_if_cut(&c, headers)?;
    Ok(c)
}

/// Refuses a message from a node this one is cut off from by a simulated
/// partition.
#[cfg(feature = "fault-injection")]
fn refuse_if_cut(c: &Cluster, headers: &HeaderMap) -> Result<(), Refused> {
    let from = headers
        .get(crate::cluster::NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if from.is_some_and(|n| c.peers().is_cut(n)) {
        return Err(Refused::Partitioned);
    }
    Ok(())
}

/// Without the feature `fault-injection` there are no simulated partitions.
#[cfg(not(feature = "fault-injection"))]
fn refuse_if_cut(_: &Cluster, _: &HeaderMap) -> Result<(), Refused> {
    Ok(())
}

/// A message from a peer node (its cluster token checked by the gate),
/// simulated partitions applied.
struct Peer(Arc<Cluster>);

impl axum::extract::FromRequestParts<AppState> for Peer {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Refused> {
        peer(state, &parts.headers).map(Peer)
    }
}

/// The answer of a node asked to do what only the leader does.
fn not_leader() -> Response {
    reply(Err(Unavailable::NotLeader.into()))
}

/// An append from the leader: binary ([`crate::cluster::APPEND_CONTENT_TYPE`])
/// or, from a leader of an earlier version, JSON.
async fn append(Peer(c): Peer, headers: HeaderMap, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match either(
        &headers,
        &body,
        crate::cluster::APPEND_CONTENT_TYPE,
        crate::cluster::decode_append,
    ) {
        Ok(req) => req,
        Err(refused) => return refused.into_response(),
    };
    let result = c.raft().append_entries(req).await;
    if result.is_ok() {
        c.touch_leader();
    }
    Json(result).into_response()
}

/// A peer message read from `body`: with the content type `binary`, by
/// `decode`; as JSON otherwise. 400 when it does not read, 415 for another
/// content type.
fn either<T: serde::de::DeserializeOwned, E: std::fmt::Display>(
    headers: &HeaderMap,
    body: &[u8],
    binary: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, (StatusCode, String)> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = |e: String| (StatusCode::BAD_REQUEST, e);
    if content_type == binary {
        decode(body).map_err(|e| bad(e.to_string()))
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
    } else {
        Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected {binary} or application/json"),
        ))
    }
}

async fn vote(Peer(c): Peer, Json(req): Json<VoteRequest<u64>>) -> Response {
    let answer = c.raft().vote(req.clone()).await;
    if let Ok(resp) = &answer {
        c.refused_a_vote(&req, resp);
    }
    Json(answer).into_response()
}

/// A snapshot chunk from the leader: binary ([`crate::cluster::CHUNK_CONTENT_TYPE`])
/// or, from a leader of an earlier version, JSON.
async fn snapshot(Peer(c): Peer, headers: HeaderMap, body: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match either(
        &headers,
        &body,
        crate::cluster::CHUNK_CONTENT_TYPE,
        crate::cluster::decode_chunk,
    ) {
        Ok(req) => req,
        Err(refused) => return refused.into_response(),
    };
    let result = c.raft().install_snapshot(req).await;
    if result.is_ok() {
        c.touch_leader();
    }
    Json(result).into_response()
}

async fn node(Peer(c): Peer) -> Response {
    Json(c.info().await).into_response()
}

fn reply(result: Result<crate::catalog::Outcome, WriteError>) -> Response {
    let wire: Result<OutcomeWire, ErrorWire> =
        result.map(OutcomeWire::from).map_err(|e| (&e).into());
    Json(wire).into_response()
}

/// A forwarded op checked as the HTTP API would check it (a forwarded write
/// gets no more trust than the request it came from), made a command; or
/// the answer refusing it, with the status the single-write endpoint gives.
fn command_of(state: &AppState, op: Op) -> Result<Command, (StatusCode, ErrorWire)> {
    if let Err(e) = op.validate_forwarded(&state.limits) {
        return Err((
            StatusCode::BAD_REQUEST,
            ErrorWire::Invalid {
                message: format!("forwarded write refused: {e}"),
            },
        ));
    }
    match op.into_command() {
        Ok(cmd) => Ok(cmd),
        Err(OpError::Invalid(source)) => Err((
            StatusCode::OK,
            (&WriteError::from(Unavailable::BadForward {
                what: "write",
                source,
            }))
                .into(),
        )),
    }
}

/// A write forwarded by a follower. Taken only by the leader: a node that is
/// not the leader any more does not forward it again.
async fn write(State(state): State<AppState>, Peer(c): Peer, Json(op): Json<Op>) -> Response {
    if !c.is_leader() {
        return not_leader();
    }
    match command_of(&state, op) {
        Ok(cmd) => reply(state.registry.write(cmd).await),
        Err((status, refused)) => {
            (status, Json(Err::<OutcomeWire, ErrorWire>(refused))).into_response()
        }
    }
}

/// Body of `POST /v1/raft/writes`.
#[derive(Deserialize)]
struct Writes<T> {
    ops: Vec<T>,
}

/// Most ops one `POST /v1/raft/writes` may carry (a follower sends at most
/// [`crate::cluster::MAX_FORWARDED_OPS`]; the rest is headroom for a newer
/// one).
const MAX_WRITES: usize = 4 * crate::cluster::MAX_FORWARDED_OPS;

/// The answer to a batch of `n` forwarded `what` (writes or heartbeats) that
/// this node does not take: more than [`MAX_WRITES`] (413), or this node is
/// not the leader (each item answered "not leader", so the follower retries
/// each at the next leader).
fn refuse_batch(c: &Cluster, n: usize, what: &str) -> Option<Response> {
    if n > MAX_WRITES {
        return Some(
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("at most {MAX_WRITES} forwarded {what} in one request"),
            )
                .into_response(),
        );
    }
    if !c.is_leader() {
        let refused: Result<OutcomeWire, ErrorWire> =
            Err((&WriteError::from(Unavailable::NotLeader)).into());
        return Some(Json(vec![refused; n]).into_response());
    }
    None
}

/// Writes a follower forwarded together (`{"ops": [op, ...]}`): answered with
/// one result per op, in order, each what [`write`] would answer to that op
/// alone. The ops enter the proposer's queue together and in order, so they
/// share as few log entries (and fsyncs) as the load allows.
async fn writes(State(state): State<AppState>, Peer(c): Peer, body: Bytes) -> Response {
    let ops: Vec<Result<Op, ErrorWire>> = match serde_json::from_slice::<Writes<Op>>(&body) {
        Ok(w) => w.ops.into_iter().map(Ok).collect(),
        // One op this version does not read (a newer follower's) must not
        // sink the others: each decoded on its own, on this rare path only.
        Err(_) => match serde_json::from_slice::<Writes<serde_json::Value>>(&body) {
            Ok(w) => w
                .ops
                .into_iter()
                .map(|v| {
                    serde_json::from_value::<Op>(v).map_err(|e| ErrorWire::Invalid {
                        message: format!("forwarded write does not decode: {e}"),
                    })
                })
                .collect(),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"ops\": [...]}}: {e}"),
                )
                    .into_response();
            }
        },
    };
    if let Some(refused) = refuse_batch(&c, ops.len(), "writes") {
        return refused;
    }
    let state = &state;
    // join_all polls every write once before any finishes: each is checked
    // and queued for the proposer in order on that first poll.
    let answers: Vec<Result<OutcomeWire, ErrorWire>> =
        futures_util::future::join_all(ops.into_iter().map(|op| async move {
            let cmd = op.and_then(|op| command_of(state, op).map_err(|(_, e)| e))?;
            state
                .registry
                .write(cmd)
                .await
                .map(OutcomeWire::from)
                .map_err(|e| (&e).into())
        }))
        .await;
    Json(answers).into_response()
}

async fn heartbeat(
    State(state): State<AppState>,
    Peer(c): Peer,
    Json(hb): Json<ForwardedHeartbeat>,
) -> Response {
    if !c.is_leader() {
        return not_leader();
    }
    reply(renew(&state, hb).await)
}

/// A forwarded heartbeat, renewed here (the leader).
async fn renew(
    state: &AppState,
    hb: ForwardedHeartbeat,
) -> Result<crate::catalog::Outcome, WriteError> {
    let names = ServiceName::parse(&hb.service)
        .and_then(|service| Ok((service, InstanceId::parse(&hb.id)?)));
    let (service, id) = names.map_err(|source| Unavailable::BadForward {
        what: "heartbeat",
        source,
    })?;
    state.registry.heartbeat(&service, &id).await
}

/// Heartbeats a follower forwarded together (`{"ops": [heartbeat, ...]}`):
/// one result per heartbeat, in order, each what [`heartbeat`] would answer
/// to it alone. Most renew a lease with one atomic step; one whose lease ran
/// out goes through the log, without holding up the others.
async fn heartbeats(State(state): State<AppState>, Peer(c): Peer, body: Bytes) -> Response {
    let hbs = match serde_json::from_slice::<Writes<ForwardedHeartbeat>>(&body) {
        Ok(w) => w.ops,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"ops\": [{{\"service\": ..., \"id\": ...}}, ...]}}: {e}"),
            )
                .into_response();
        }
    };
    if let Some(refused) = refuse_batch(&c, hbs.len(), "heartbeats") {
        return refused;
    }
    let state = &state;
    let answers: Vec<Result<OutcomeWire, ErrorWire>> =
        futures_util::future::join_all(hbs.into_iter().map(|hb| async move {
            renew(state, hb)
                .await
                .map(OutcomeWire::from)
                .map_err(|e| (&e).into())
        }))
        .await;
    Json(answers).into_response()
}

async fn read_index(Peer(c): Peer) -> Response {
    let r: Result<u64, ErrorWire> = c.read_index().await.map_err(|e| (&e).into());
    Json(r).into_response()
}

/// A new node asks to be taken in; followers pass it on to the leader.
async fn join(Peer(c): Peer, Json(info): Json<NodeInfo>) -> Response {
    if c.is_leader() {
        return match c.add_node(info.id, info.addr).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        };
    }
    proxy(&c, reqwest::Method::POST, "/v1/raft/join", Some(&info)).await
}

/// Passes an operator or join call on to the leader and relays its answer.
async fn proxy<T: serde::Serialize>(
    c: &Cluster,
    method: reqwest::Method,
    path: &str,
    body: Option<&T>,
) -> Response {
    let mut req = match c.to_leader(method, path) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Some(b) = body {
        req = req.json(b);
    }
    match req.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ctype = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
            let body = match resp.bytes().await {
                Ok(b) => b,
                // The leader's status with no body would pass for its answer.
                Err(e) => {
                    return ApiError::from(WriteError::from(Unavailable::LeaderAnswer {
                        source: e,
                    }))
                    .into_response();
                }
            };
            let mut out = (status, body).into_response();
            if let Some(ct) =
                ctype.and_then(|v| axum::http::HeaderValue::from_bytes(v.as_bytes()).ok())
            {
                out.headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(source) => ApiError::from(WriteError::from(Unavailable::LeaderUnreachable { source }))
            .into_response(),
    }
}

/// This node's view; on a follower, with the leader's view of each member.
async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(cluster(&state)?.status_with_leader_view().await).into_response())
}

/// This node's own view, for a follower asking its leader (no proxying on).
async fn peer_status(Peer(c): Peer) -> Response {
    Json(c.status()).into_response()
}

/// Body of `POST /v1/operator/raft/peers`.
#[derive(Debug, Deserialize, serde::Serialize)]
struct AddPeer {
    /// `host:port` of the node's API.
    addr: String,
}

async fn add_peer(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c = cluster(&state)?;
    let req: AddPeer = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid("addr", format!("expected {{\"addr\": \"host:port\"}}: {e}"))
    })?;
    if req.addr.trim().is_empty() {
        return Err(ApiError::invalid("addr", "the node's address is empty"));
    }
    if !c.is_leader() {
        return Ok(proxy(
            &c,
            reqwest::Method::POST,
            "/v1/operator/raft/peers",
            Some(&req),
        )
        .await);
    }
    match c.add_peer(req.addr.trim()).await {
        Ok(member) => Ok(Json(member).into_response()),
        Err(e) => Err(ApiError::from(e)),
    }
}

async fn remove_peer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = cluster(&state)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::invalid("id", format!("node ids are numbers: {id:?}")))?;
    if !c.is_leader() {
        return Ok(proxy::<()>(
            &c,
            reqwest::Method::DELETE,
            &format!("/v1/operator/raft/peers/{id}"),
            None,
        )
        .await);
    }
    match c.remove_peer(id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(ApiError::from(e)),
    }
}
