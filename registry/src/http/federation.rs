//! The federation's HTTP side: `GET /v1/datacenters`, the probe endpoint
//! other datacenters call, and the proxy that answers a `?dc=` naming
//! another datacenter with that datacenter's answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::gate::{Access, Style, refuse};
use super::{ApiError, AppState};
use crate::acl::Principal;
use crate::federation::{FederationError, RemoteDc};

/// Set on a request forwarded by another datacenter (its name): answered
/// from the local catalog alone and never forwarded again.
#[derive(Clone, Debug)]
pub(crate) struct Forwarded(pub String);

/// Largest body of a proxied answer that is not a stream.
const MAX_PROXIED: usize = 32 << 20;
/// A proxied event stream that sends nothing (not even the keep-alive
/// comment the remote sends every 15 s) for this long is ended.
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Request headers passed on to the other datacenter.
const REQUEST_HEADERS: [&str; 5] = [
    "authorization",
    "x-consul-token",
    "accept",
    "last-event-id",
    "content-type",
];
/// Answer headers passed back.
const ANSWER_HEADERS: [&str; 10] = [
    "content-type",
    "cache-control",
    "retry-after",
    "x-roster-index",
    "x-roster-epoch",
    "x-roster-panic",
    "x-consul-index",
    "x-consul-knownleader",
    "x-consul-lastcontact",
    "x-roster-knownleader",
];

/// `GET /v1/datacenters`: this datacenter first, then the federated ones by
/// round-trip time, with their state and circuit.
pub(super) async fn datacenters(State(state): State<AppState>) -> Response {
    let list = match &state.federation {
        Some(f) => f.status(),
        None => vec![crate::federation::local_dc(&state.consul.datacenter)],
    };
    Json(list).into_response()
}

/// `GET /v1/federation/ping`: what a prober of another datacenter checks.
pub(super) async fn ping(State(state): State<AppState>) -> Response {
    Json(json!({
        "datacenter": state.consul.datacenter,
        "node": state.consul.name,
        "index": state.registry.snapshot().index,
    }))
    .into_response()
}

/// The error of a failed call, as an API error.
pub(crate) fn remote_error(e: &FederationError) -> ApiError {
    match e {
        FederationError::CircuitOpen { retry_secs, .. } => {
            ApiError::remote(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                .retry_after(*retry_secs)
        }
        FederationError::Overloaded { .. } | FederationError::Unreachable { .. } => {
            ApiError::remote(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(1)
        }
        FederationError::Timeout { .. } => {
            ApiError::remote(StatusCode::GATEWAY_TIMEOUT, e.to_string())
        }
        _ => ApiError::remote(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// How long to wait for the head of the answer to `req`: a blocking query
/// is held by the remote for its `wait` (plus jitter), anything else is
/// bounded by the federation timeout.
fn head_within(req: &Request, timeout: Duration) -> Duration {
    let query = req.uri().query().unwrap_or("");
    let blocking = req.method() == axum::http::Method::GET
        && query.split('&').any(|kv| kv.starts_with("index="));
    if !blocking {
        return timeout;
    }
    let wait = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("wait="))
        .next_back()
        .and_then(|w| roster_api::duration::parse(w).ok())
        .unwrap_or(super::watch::DEFAULT_WAIT)
        .min(super::watch::MAX_WAIT);
    wait + wait / 8 + timeout
}

/// Answers `req` with datacenter `dc`'s answer to it: the same method, path
/// and query (the remote sees `?dc=` naming itself and answers locally), the
/// caller's token, and the federation token. Event streams and blocking
/// queries are proxied as they come; the answer says which datacenter it is
/// from in `X-Roster-Datacenter`.
pub(super) async fn forward(
    state: AppState,
    dc: Arc<RemoteDc>,
    style: Style,
    req: Request,
) -> Response {
    let Some(federation) = state.federation.clone() else {
        return refuse(style, ApiError::unknown_datacenter(&dc.name, &[]));
    };
    let stream = super::limits::is_watch(&req);
    let within = head_within(&req, federation.timeout());
    let (parts, body) = req.into_parts();
    let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
        body,
        super::BODY_LIMIT,
    ))
    .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(style, ApiError::too_large(super::BODY_LIMIT)),
    };
    let mut headers = federation.call_headers();
    for name in REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(name)
            && let Ok(v) = reqwest::header::HeaderValue::from_bytes(v.as_bytes())
        {
            headers.insert(name, v);
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = match reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) {
        Ok(m) => m,
        Err(_) => return refuse(style, ApiError::invalid("method", "not forwardable")),
    };
    let sent = dc
        .send(federation.http(), method, &path, headers, body, within)
        .await;
    let (resp, permit) = match sent {
        Ok(r) => r,
        Err(e) => return refuse(style, remote_error(&e)),
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out_headers = axum::http::HeaderMap::new();
    for name in ANSWER_HEADERS {
        if let Some(v) = resp.headers().get(name)
            && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
        {
            out_headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&dc.name) {
        out_headers.insert(HeaderName::from_static(roster_api::DATACENTER_HEADER), v);
    }
    let body = if stream && status.is_success() {
        // Chunks are passed on as they come; the permit (one of the
        // datacenter's in-flight calls) is held until the stream ends.
        let chunks =
            futures_util::stream::unfold((resp, permit), |(mut resp, permit)| async move {
                match tokio::time::timeout(STREAM_IDLE, resp.chunk()).await {
                    Ok(Ok(Some(chunk))) => Some((Ok::<_, std::io::Error>(chunk), (resp, permit))),
                    _ => None,
                }
            });
        Body::from_stream(chunks)
    } else {
        let read = tokio::time::timeout(
            federation.timeout(),
            crate::federation::read_body(resp, MAX_PROXIED),
        )
        .await;
        drop(permit);
        match read {
            Ok(Ok(bytes)) => Body::from(bytes),
            Ok(Err(detail)) => {
                let e = FederationError::Garbage {
                    dc: dc.name.clone(),
                    detail,
                };
                return refuse(style, remote_error(&e));
            }
            Err(_) => {
                let e = FederationError::Timeout {
                    dc: dc.name.clone(),
                    timeout: federation.timeout(),
                };
                return refuse(style, remote_error(&e));
            }
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    if !out.headers().contains_key(header::CONTENT_TYPE) {
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    out
}

/// A call another datacenter forwarded: it must carry the federation token
/// (401 without, 403 with a wrong one, 403 on a node that takes no forwarded
/// calls). `None` for an ordinary call.
pub(super) fn forwarded(state: &AppState, req: &Request) -> Result<Option<Forwarded>, ApiError> {
    let headers = req.headers();
    // Header names made once, not parsed from text on every request.
    const TOKEN: HeaderName = HeaderName::from_static(crate::federation::TOKEN_HEADER);
    const FROM: HeaderName = HeaderName::from_static(crate::federation::FORWARDED_HEADER);
    let token = headers.get(TOKEN);
    let from = headers.get(FROM);
    if token.is_none() && from.is_none() {
        return Ok(None);
    }
    let Some(federation) = &state.federation else {
        return Err(ApiError::forbidden(
            StatusCode::FORBIDDEN,
            "this node takes no calls from other datacenters (it has no --federation-token)".into(),
        ));
    };
    let Some(token) = token else {
        return Err(ApiError::forbidden(
            StatusCode::UNAUTHORIZED,
            "a call forwarded by another datacenter needs the federation token".into(),
        ));
    };
    if !federation.token_matches(token.as_bytes()) {
        return Err(ApiError::forbidden(
            StatusCode::FORBIDDEN,
            "wrong federation token".into(),
        ));
    }
    let from = from
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    Ok(Some(Forwarded(from)))
}

/// The other datacenter `?dc=` names, when it names one: `None` for none,
/// an empty one or this datacenter. Only configured datacenters are ever
/// called; a forwarded call is never forwarded again (a loop of
/// misconfigured datacenters ends at the second hop); with ACLs the token
/// needs a `dc:` policy for it. Routes without a token (open, peer) ignore
/// `?dc=`, and so do admin routes: snapshots and maintenance stay local.
pub(super) fn remote_datacenter(
    state: &AppState,
    access: Access,
    style: Style,
    req: &Request,
    caller: Option<&Principal>,
) -> Result<Option<Arc<crate::federation::RemoteDc>>, ApiError> {
    if !matches!(access, Access::Read | Access::Write | Access::AnyWrite) {
        return Ok(None);
    }
    let Some(dc) = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.strip_prefix("dc="))
            .next_back()
    }) else {
        return Ok(None);
    };
    if dc.is_empty() || dc == state.consul.datacenter {
        return Ok(None);
    }
    if let Some(Forwarded(from)) = req.extensions().get::<Forwarded>() {
        return Err(ApiError::remote(
            StatusCode::LOOP_DETECTED,
            format!(
                "datacenter {from:?} forwarded a call naming datacenter {dc:?} to this one ({:?}): forwarded calls are never forwarded again; check --federate in {from:?}",
                state.consul.datacenter
            ),
        ));
    }
    let remote = state.federation.as_ref().and_then(|f| f.remote(dc));
    let Some(remote) = remote else {
        if style == Style::Consul {
            // What Consul answers for a datacenter it has no path to.
            return Err(ApiError::remote(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter",
            ));
        }
        let known = state
            .federation
            .as_ref()
            .map(|f| f.names())
            .unwrap_or_else(|| vec![state.consul.datacenter.as_str()]);
        let shown: String = dc.chars().take(128).collect();
        return Err(ApiError::unknown_datacenter(&shown, &known));
    };
    let allowed = caller.is_some_and(|p| p.allows_datacenter(&remote.name));
    if !allowed {
        let name = caller.map_or("anonymous".to_owned(), |p| p.name.clone());
        return Err(ApiError::forbidden(
            StatusCode::FORBIDDEN,
            format!(
                "token {name:?} may not call datacenter {:?} (it needs a dc: policy matching it)",
                remote.name
            ),
        ));
    }
    Ok(Some(remote.clone()))
}
