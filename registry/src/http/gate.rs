//! Route groups: every route belongs to exactly one [`Group`], and the group's
//! [`Gate`] decides who may call it, whether it waits for the catalog to load,
//! how large its body may be, and in which style it reports errors.
//!
//! Permissions come from the route, never from a table kept beside the router:
//! [`super::router`] builds the API only from groups, and the gate runs as the
//! group's `route_layer`, after routing, so it sees the decoded, validated path
//! parameters the handler will see. A write is authorized on the service name
//! the handler will write, not on the raw path.
//!
//! Order inside the gate, cheapest refusals first: path parameters decoded;
//! the caller's token checked against the group's access; readiness; the body's
//! declared size and encoding (so `Expect: 100-continue` is refused before the
//! client sends anything); the body read under its own short timeout; and only
//! then a concurrency slot. A client that trickles its body holds a connection,
//! never one of the slots everyone else needs.

use std::borrow::Cow;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tower::ServiceExt as _;

use super::federation::{Forwarded, forwarded, remote_datacenter};
use super::limits::{self, Slot};
use super::{ApiError, AppState};
use crate::acl::{Need, Principal};
use crate::model::ServiceName;

/// Who may call the routes of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone: probes, metrics, the API description, the console's files,
    /// Consul's `/v1/status/*`.
    Open,
    /// A token that may read the catalog.
    Read,
    /// A token that may write the service named by the route's `{service}`.
    Write,
    /// A token that may write some service; the handler checks which, from the
    /// body (Consul's agent endpoints name the service only there).
    AnyWrite,
    /// An admin token.
    Admin,
    /// Another node of the cluster, with the cluster token.
    Peer,
    /// Another datacenter, with the federation token.
    Federation,
}

/// How the routes of a group answer errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    /// RFC 9457 `application/problem+json`.
    Native,
    /// Plain text, as Consul answers.
    Consul,
}

/// What a group requires of every request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Gate {
    access: Access,
    style: Style,
    /// Largest body, in bytes.
    body_limit: usize,
    /// Refuse the routes' non-GET requests until the catalog is loaded.
    until_ready: bool,
}

impl Gate {
    /// A gate with the default body limit that lets requests in before the
    /// catalog is loaded only when they read.
    pub(super) const fn new(access: Access, style: Style) -> Gate {
        Gate {
            access,
            style,
            body_limit: super::BODY_LIMIT,
            until_ready: !matches!(access, Access::Open | Access::Peer | Access::Federation),
        }
    }

    /// The same gate letting every request in before the catalog is loaded
    /// (cluster membership is what makes a node ready).
    pub(super) const fn before_ready(mut self) -> Gate {
        self.until_ready = false;
        self
    }

    /// The same gate with another body limit.
    pub(super) const fn body_limit(mut self, bytes: usize) -> Gate {
        self.body_limit = bytes;
        self
    }
}

/// The gate of the catalog's read routes (also what `super::direct` puts
/// in front of the instance list it answers without the router).
pub(super) const READ: Gate = Gate::new(Access::Read, Style::Native);

/// The gate of the native write routes (also in front of the registrations
/// and heartbeats `super::direct` answers without the router).
pub(super) const WRITE: Gate = Gate::new(Access::Write, Style::Native);

/// Routes and the gate in front of them.
#[derive(Debug)]
pub(super) struct Group {
    gate: Gate,
    routes: Router<AppState>,
}

impl Group {
    /// `routes` behind `gate`.
    pub(super) fn new(gate: Gate, routes: Router<AppState>) -> Group {
        Group { gate, routes }
    }

    /// The routes with the gate applied to each of them.
    pub(super) fn seal(self, state: &AppState) -> Router<AppState> {
        self.routes.route_layer(GateLayer {
            state: state.clone(),
            gate: self.gate,
        })
    }
}

impl<S> GateService<S> {
    /// `gate` in front of `inner`, a route's handler called without the
    /// router (`super::direct`), which finds the route itself; `route` is
    /// the template the router would have matched (the request's metrics
    /// label). No path parameters are decoded for it: a route whose gate
    /// authorizes by the path's service (a write) says where that is in the
    /// raw path with `service_of`, and may only be given paths whose raw
    /// text is what the router would decode (no `%` escapes). Without it a
    /// write gate would find no service and refuse every call, so that is
    /// refused here. Its handler finds no principal in the request (the
    /// direct handlers look for none).
    pub(super) fn direct(
        state: &AppState,
        gate: Gate,
        route: &'static str,
        service_of: Option<fn(&str) -> Option<&str>>,
        inner: S,
    ) -> Self {
        assert!(
            gate.access != Access::Write || service_of.is_some(),
            "a direct write route must say where its path names the service"
        );
        GateService {
            inner,
            state: state.clone(),
            gate,
            direct: Some(route),
            service_of,
        }
    }
}

static ROOT: LazyLock<Arc<Principal>> = LazyLock::new(|| Arc::new(Principal::root()));

/// The principal of a call another datacenter forwards without a caller's
/// token (failover polls): it may read, nothing else.
static FEDERATION: LazyLock<Arc<Principal>> = LazyLock::new(|| {
    Arc::new(Principal {
        name: "federation".into(),
        read: true,
        ..Principal::default()
    })
});

/// The principal of a call to an open route: allowed nothing beyond the route.
static NOBODY: LazyLock<Arc<Principal>> = LazyLock::new(|| {
    Arc::new(Principal {
        name: "anonymous".into(),
        ..Principal::default()
    })
});

/// A refusal in the group's style.
pub(super) fn refuse(style: Style, err: ApiError) -> Response {
    match style {
        Style::Native => err.into_response(),
        Style::Consul => {
            let status = err.status();
            let text = if status == StatusCode::UNAUTHORIZED {
                "ACL not found".to_owned()
            } else if status == StatusCode::FORBIDDEN {
                format!("Permission denied: {}", err.detail())
            } else {
                err.detail().to_owned()
            };
            let mut resp = (status, text).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            if let Some(after) = err.retry_after_secs() {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(after));
            }
            resp
        }
    }
}

/// The secret from `Authorization: Bearer …`, Consul's `X-Consul-Token`, or,
/// on Consul's paths only, `?token=` (what consul-api and Spring send). A
/// query token is never logged: request logs and metrics carry the route
/// template, not the query.
fn secret<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    style: Style,
) -> Option<Cow<'a, str>> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
            .map(Cow::Borrowed);
    }
    const CONSUL_TOKEN: HeaderName = HeaderName::from_static("x-consul-token");
    if let Some(t) = headers
        .get(CONSUL_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(Cow::Borrowed(t));
    }
    if style != Style::Consul {
        return None;
    }
    let raw = query?
        .split('&')
        .filter_map(|kv| kv.strip_prefix("token="))
        .find(|t| !t.is_empty())?;
    Some(query_token(raw))
}

/// A `?token=` value decoded as Consul decodes it (Go's `url.ParseQuery`:
/// `%XX`, and `+` as a space). Clients encode it: consul-api (Spring Cloud
/// Consul) runs it through `java.net.URLEncoder`, so a base64 secret's `+`, `/`
/// and `=` arrive as `%2B`, `%2F` and `%3D`. A value that does not decode to
/// UTF-8 still names a token (one that matches no secret: 403), never none
/// (which could fall to the anonymous policy).
fn query_token(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    // One pair, so no `&` or `=` of the value can split it differently.
    let pair = format!("t={raw}");
    match serde_urlencoded::from_str::<Vec<(String, String)>>(&pair) {
        Ok(mut decoded) if decoded.len() == 1 => Cow::Owned(decoded.remove(0).1),
        _ => Cow::Borrowed(raw),
    }
}

/// What a request to a route of `access` needs; `None` when anyone may call.
fn need(access: Access, method: &Method, service: Option<&str>) -> Result<Option<Need>, ApiError> {
    Ok(Some(match access {
        Access::Open | Access::Peer | Access::Federation => return Ok(None),
        Access::Read => Need::Read,
        Access::Admin => Need::Admin,
        Access::AnyWrite => Need::AnyWrite,
        // A write route's GET (an instance's own record) only reads.
        Access::Write if *method == Method::GET || *method == Method::HEAD => Need::Read,
        Access::Write => {
            let raw = service.ok_or_else(|| {
                // A write route without {service} is a bug in the router, and
                // it must fail closed.
                ApiError::forbidden(
                    StatusCode::FORBIDDEN,
                    "this route names no service to authorize".into(),
                )
            })?;
            Need::Write(ServiceName::parse(raw)?.as_str().to_owned())
        }
    }))
}

fn describe(need: &Need) -> String {
    match need {
        Need::Read => "read the catalog".to_owned(),
        Need::Write(s) => format!("write service {s:?}"),
        Need::AnyWrite => "write any service".to_owned(),
        Need::Admin => "administer the registry".to_owned(),
    }
}

/// The caller's principal, or the refusal.
fn principal(
    state: &AppState,
    gate: Gate,
    req: &Request,
    need: Result<Option<Need>, ApiError>,
) -> Result<Arc<Principal>, ApiError> {
    let Some(need) = need? else {
        // Open routes look at no token, so a stale one cannot break a probe.
        return Ok(NOBODY.clone());
    };
    let principal = match &state.acl {
        None => ROOT.clone(),
        Some(tokens) => match secret(req.headers(), req.uri().query(), gate.style) {
            // Another datacenter asking on its own behalf (a failover poll):
            // the federation token it proved is a read right.
            None if req.extensions().get::<Forwarded>().is_some() && need == Need::Read => {
                FEDERATION.clone()
            }
            // The anonymous policy, when the operator gave one, decides calls
            // without a token; a call it does not cover needs a token (401).
            None => match tokens.anonymous().filter(|anon| anon.allows(&need)) {
                Some(anon) => anon,
                None => {
                    return Err(ApiError::forbidden(
                        StatusCode::UNAUTHORIZED,
                        "a token is required: send Authorization: Bearer TOKEN".into(),
                    ));
                }
            },
            Some(secret) => tokens.lookup(&secret).ok_or_else(|| {
                ApiError::forbidden(StatusCode::FORBIDDEN, "unknown token".into())
            })?,
        },
    };
    if !principal.allows(&need) {
        return Err(ApiError::forbidden(
            StatusCode::FORBIDDEN,
            format!("token {:?} may not {}", principal.name, describe(&need)),
        ));
    }
    Ok(principal)
}

/// The cluster token of a peer request.
fn peer(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::not_found(
            "this registry runs alone: start it with --bootstrap-expect or --join to form a cluster",
        ));
    };
    if cluster.peers().tls_on()
        && req
            .extensions()
            .get::<crate::http::serve::PeerCertificate>()
            != Some(&crate::http::serve::PeerCertificate(true))
    {
        // The handshake let the client through (API clients may come
        // without a certificate), but only a peer's certificate opens the
        // peer routes.
        return Err(ApiError::forbidden(
            StatusCode::FORBIDDEN,
            "a peer certificate from the cluster's CA is required".into(),
        ));
    }
    let given = req
        .headers()
        .get(crate::cluster::TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if crate::acl::secrets_equal(given, cluster.peers().token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            StatusCode::FORBIDDEN,
            "cluster token required".into(),
        ))
    }
}

/// Whether the request carries a body at all: its headers say so, or the
/// body itself is not known to be empty. Not the headers alone: a body with
/// neither header (one built in process, or a framing that needs none) must
/// still be read under the gate's limit, as no other layer bounds it.
fn has_body(req: &Request) -> bool {
    use axum::body::HttpBody as _;
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
        || !req.body().is_end_stream()
}

/// Reads the whole body before the request takes a slot: within `timeout`
/// (408 otherwise), at most `limit` bytes (413, at once when the declared
/// length says so).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Body, ApiError> {
    if let Some(enc) = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        && !enc.is_empty()
        && enc != "identity"
    {
        return Err(ApiError::unsupported_encoding(&enc));
    }
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n > limit as u64 => return Err(ApiError::too_large(limit)),
            Some(_) => {}
            None => return Err(ApiError::invalid("Content-Length", "not a number")),
        }
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::body_timeout(timeout)),
        Ok(Ok(collected)) => Ok(Body::from(collected.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
        Ok(Err(e)) => Err(ApiError::malformed(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// The gate as a tower layer over each route of its group.
#[derive(Clone)]
struct GateLayer {
    state: AppState,
    gate: Gate,
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService {
            inner,
            state: self.state.clone(),
            gate: self.gate,
            direct: None,
            service_of: None,
        }
    }
}

/// The gate itself, and what every routed request goes through besides
/// ([`super::Front`]: limits, metrics, the cluster's headers).
///
/// A service of its own rather than an `async fn` middleware: the checks run
/// in `call`, before any future exists, and a request that needs nothing to
/// wait on but its handler (nearly every read) gets a small future that
/// polls the handler's and arms the request deadline only if the handler
/// does not finish at once. As a middleware, every request boxed a future
/// of about 4 KB (the rare paths' states included) and set a timer.
#[derive(Clone)]
pub(super) struct GateService<S> {
    inner: S,
    state: AppState,
    gate: Gate,
    /// The route's template when the request comes without the router
    /// ([`GateService::direct`]); `None` behind the router, which leaves
    /// the template and the path parameters in the request.
    direct: Option<&'static str>,
    /// Where a direct route's `{service}` is in its path.
    service_of: Option<fn(&str) -> Option<&str>>,
}

impl<S> tower::Service<Request> for GateService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (state, gate) = (&self.state, self.gate);
        let front = super::Front::begin(state, &req, self.direct);
        if let Some(refused) = limits::refusal(state, &req) {
            return GateFuture::done(front.end(state, refused));
        }
        let routed = self.direct.is_none();
        let (req, slot, caller) = match admit(state, gate, req, routed, self.service_of) {
            Ok(Admit::In(req, slot, caller)) => (req, slot, caller),
            Ok(Admit::AfterBody(req, caller)) => {
                let waits = Waits::Body(req, caller);
                return GateFuture::slow(state, gate, front, waits, self.inner.clone());
            }
            Err(e) => return GateFuture::done(front.end(state, refuse(gate.style, e))),
        };
        match next_step(state, gate, &front, &req, caller.as_deref()) {
            Ok(Next::Handler) => GateFuture::Run(Some(Running {
                handler: self.inner.call(req),
                deadline: None,
                end: End {
                    front,
                    state: state.clone(),
                    slot,
                },
            })),
            Ok(next) => {
                let waits = Waits::Admitted(req, slot, next);
                GateFuture::slow(state, gate, front, waits, self.inner.clone())
            }
            Err(e) => GateFuture::done(front.end(state, refuse(gate.style, e))),
        }
    }
}

/// Where an admitted request goes next.
enum Next {
    /// Its handler, at once.
    Handler,
    /// Its handler, once the leader's read index is reached (`?consistent`
    /// on a cluster node).
    Barrier(Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send>>),
    /// Another datacenter (`?dc=`).
    Forward(Arc<crate::federation::RemoteDc>),
}

/// Decides [`Next`] for an admitted request, without waiting for anything.
fn next_step(
    state: &AppState,
    gate: Gate,
    front: &super::Front,
    req: &Request,
    caller: Option<&Principal>,
) -> Result<Next, ApiError> {
    Ok(
        match remote_datacenter(state, gate.access, gate.style, req, caller)? {
            Some(dc) => Next::Forward(dc),
            None => match front.barrier(state, req) {
                Some(barrier) => Next::Barrier(Box::pin(barrier)),
                None => Next::Handler,
            },
        },
    )
}

/// What a request waits on before (or instead of) its handler: the rare
/// paths, run as one boxed future.
enum Waits {
    /// Its body, read in whole before it takes a slot.
    Body(Request, Caller),
    /// Admitted, holding its slot, going to a barrier or another datacenter.
    Admitted(Request, Slot, Next),
}

/// The future of a gated request.
pub(super) enum GateFuture<F> {
    /// Answered by the gate itself.
    Done(Option<Response>),
    /// The handler runs.
    Run(Option<Running<F>>),
    /// A rare path.
    Slow(Pin<Box<dyn Future<Output = Response> + Send>>),
}

/// A handler's future and what its answer is finished with.
pub(super) struct Running<F> {
    handler: F,
    /// The request deadline, armed the first time the handler waits.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    end: End,
}

/// What an answer is finished with once the handler gives it.
pub(super) struct End {
    front: super::Front,
    state: AppState,
    slot: Slot,
}

impl End {
    fn finish(self, resp: Response) -> Response {
        let resp = hold_while_streaming(self.slot, resp);
        self.front.end(&self.state, resp)
    }
}

impl<F> GateFuture<F> {
    fn done(resp: Response) -> Self {
        GateFuture::Done(Some(resp))
    }

    fn slow<S>(state: &AppState, gate: Gate, front: super::Front, waits: Waits, inner: S) -> Self
    where
        S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        GateFuture::Slow(Box::pin(slow(state.clone(), gate, front, waits, inner)))
    }
}

impl<F> Future for GateFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            GateFuture::Done(resp) => Poll::Ready(Ok(resp.take().expect("polled after done"))),
            GateFuture::Slow(fut) => fut.as_mut().poll(cx).map(Ok),
            GateFuture::Run(running) => {
                let run = running.as_mut().expect("polled after done");
                if let Poll::Ready(Ok(resp)) = Pin::new(&mut run.handler).poll(cx) {
                    let end = running.take().expect("running").end;
                    return Poll::Ready(Ok(end.finish(resp)));
                }
                if matches!(run.end.slot, Slot::Watcher(_)) {
                    // A watch runs as long as it is told to wait: no deadline.
                    return Poll::Pending;
                }
                let timeout = run.end.state.limiter.config().request_timeout;
                let deadline = run.deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(run.end.front.start + timeout))
                });
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Dropping the handler's future cancels the handler.
                let end = running.take().expect("running").end;
                Poll::Ready(Ok(end.finish(too_long())))
            }
        }
    }
}

/// A gated request's rare paths, from what it waits on to its answer.
async fn slow<S>(
    state: AppState,
    gate: Gate,
    front: super::Front,
    waits: Waits,
    inner: S,
) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let admitted = match waits {
        Waits::Admitted(req, slot, next) => Ok((req, slot, next)),
        Waits::Body(req, caller) => match admit_body(&state, gate, req).await {
            Ok((req, slot)) => next_step(&state, gate, &front, &req, caller.as_deref())
                .map(|next| (req, slot, next)),
            Err(e) => Err(e),
        },
    };
    let resp = match admitted {
        Err(e) => refuse(gate.style, e),
        Ok((req, slot, next)) => {
            let handler = |req| async move {
                match inner.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            };
            match next {
                Next::Handler => run(&state, slot, handler(req)).await,
                Next::Barrier(barrier) => match barrier.await {
                    Ok(()) => run(&state, slot, handler(req)).await,
                    Err(e) => refuse(gate.style, e),
                },
                Next::Forward(dc) => {
                    let forward = super::federation::forward(state.clone(), dc, gate.style, req);
                    run(&state, slot, forward).await
                }
            }
        }
    };
    front.end(&state, resp)
}

/// Whom the gate let in: the caller's principal, `None` on the routes that
/// take none (peers, other datacenters).
type Caller = Option<Arc<Principal>>;

/// What the gate decided before any body arrived.
enum Admit {
    /// Let in, holding this slot.
    In(Request, Slot, Caller),
    /// Every check passed but the body's: read it, then take a slot.
    AfterBody(Request, Caller),
}

/// Everything the gate checks before the body arrives, without waiting for
/// anything: path parameters (of a `routed` request; a direct one's
/// `{service}` is found by `service_of`), token, readiness, the watchers' cap.
fn admit(
    state: &AppState,
    gate: Gate,
    req: Request,
    routed: bool,
    service_of: Option<fn(&str) -> Option<&str>>,
) -> Result<Admit, ApiError> {
    if !routed {
        let service = service_of.and_then(|of| of(req.uri().path()));
        let need = need(gate.access, req.method(), service);
        return admit_parts(state, gate, req, need, false);
    }
    let (mut parts, body) = req.into_parts();
    // axum percent-decodes path parameters when it routes; one whose escapes
    // are not UTF-8 is refused here with a problem document (the handler's
    // `Path` extractor would answer plain text). The values are shared, not
    // copied. The extraction only reads what the router left in the
    // request, so it is ready at once; were it ever not, the request is
    // refused rather than let through unchecked.
    let params = RawPathParams::from_request_parts(&mut parts, state)
        .now_or_never()
        .unwrap_or_else(|| {
            Err(axum::extract::rejection::RawPathParamsRejection::from(
                axum::extract::rejection::MissingPathParams::default(),
            ))
        })
        .map_err(|e| {
            ApiError::invalid(
                "path",
                format!("the path does not decode: {}", e.body_text()),
            )
        })?;
    let service = params
        .iter()
        .find_map(|(k, v)| (k == "service").then_some(v));
    let need = need(gate.access, &parts.method, service);
    admit_parts(state, gate, Request::from_parts(parts, body), need, true)
}

/// [`admit`] once what the route needs is known from the path's
/// `{service}` (its error, a name that does not parse, is reported where
/// the token is checked, after the federation headers). A `routed`
/// request's handler finds the caller's principal in the request's
/// extensions; a direct route's handler does not look for it, and the
/// gate's own later checks take it from [`Caller`].
fn admit_parts(
    state: &AppState,
    gate: Gate,
    mut req: Request,
    need: Result<Option<Need>, ApiError>,
    routed: bool,
) -> Result<Admit, ApiError> {
    if let Some(forwarded) = forwarded(state, &req)? {
        req.extensions_mut().insert(forwarded);
    }
    let caller = if gate.access == Access::Federation {
        if req.extensions().get::<Forwarded>().is_none() {
            return Err(ApiError::forbidden(
                StatusCode::UNAUTHORIZED,
                "the federation token is required".into(),
            ));
        }
        None
    } else if gate.access == Access::Peer {
        peer(state, &req)?;
        None
    } else {
        let principal = principal(state, gate, &req, need)?;
        if routed {
            req.extensions_mut().insert(principal.clone());
        }
        Some(principal)
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if gate.until_ready && !reads && !state.is_ready() {
        return Err(ApiError::unavailable(
            "the catalog is still loading; retry shortly",
        ));
    }
    if limits::is_watch(&req) {
        let slot = state.limiter.watcher()?;
        return Ok(Admit::In(req, slot, caller));
    }
    if has_body(&req) {
        return Ok(Admit::AfterBody(req, caller));
    }
    Ok(Admit::In(req, slot(state, gate)?, caller))
}

/// The rest of [`admit`] for a request with a body: the body read in whole
/// (under its own deadline and size limit), then a slot.
async fn admit_body(
    state: &AppState,
    gate: Gate,
    req: Request,
) -> Result<(Request, Slot), ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(
        &parts.headers,
        body,
        gate.body_limit,
        state.limiter.config().body_timeout,
    )
    .await?;
    Ok((Request::from_parts(parts, body), slot(state, gate)?))
}

/// A request's concurrency slot, taken once its body is in.
fn slot(state: &AppState, gate: Gate) -> Result<Slot, ApiError> {
    match gate.access {
        // Probes and peers are cheap or few, and must get through an overload:
        // a starved Raft heartbeat would start an election.
        Access::Open | Access::Peer | Access::Federation => Ok(Slot::Free),
        _ => state.limiter.request(),
    }
}

/// Runs the handler holding `slot`: a watcher's slot for as long as its body
/// streams, a request's under the request deadline.
async fn run(state: &AppState, slot: Slot, handler: impl Future<Output = Response>) -> Response {
    if matches!(slot, Slot::Watcher(_)) {
        return hold_while_streaming(slot, handler.await);
    }
    let deadline = state.limiter.config().request_timeout;
    let resp = tokio::time::timeout(deadline, handler).await;
    drop(slot);
    resp.unwrap_or_else(|_| too_long())
}

/// The answer to a request past its deadline.
fn too_long() -> Response {
    ApiError::unavailable("the request took too long; retry shortly")
        .retry_after(1)
        .into_response()
}

/// The answer, holding a watcher's slot until its body has streamed to its
/// end (any other slot is let go now).
fn hold_while_streaming(slot: Slot, resp: Response) -> Response {
    match slot {
        Slot::Watcher(permit) => resp.map(|body| {
            Body::new(super::serve::Holding {
                body,
                _held: permit,
            })
        }),
        _ => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    /// A router of one group of read routes: `/fast` answers at once,
    /// `/slow` never does, `/slow/watch` streams for as long as it runs.
    fn slow_routes(timeout: Duration) -> (Router, AppState) {
        use axum::routing::get;
        let mut config = crate::config::Config::default();
        config.limits_http.request_timeout = timeout;
        config.limits_http.max_requests = 1;
        config.limits_http.max_watchers = 1;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let registry = Arc::new(crate::registry::Registry::new(config.catalog, metrics));
        let state = AppState::builder(
            registry,
            &config,
            tokio_util::sync::CancellationToken::new(),
        )
        .build();
        let routes = Router::new()
            .route("/fast", get(|| async { "fast" }))
            .route("/slow", get(std::future::pending::<&'static str>))
            .route(
                "/slow/watch",
                get(|| async {
                    let events = futures_util::stream::unfold(0u32, |n| async move {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Some((Ok::<_, Infallible>(format!("{n}\n")), n + 1))
                    });
                    Body::from_stream(events)
                }),
            );
        let group = Group::new(Gate::new(Access::Read, Style::Native), routes);
        (group.seal(&state).with_state(state.clone()), state)
    }

    async fn get(app: &Router, path: &str) -> Response {
        let req = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_the_request_deadline_is_answered_503_and_a_watch_is_not_cut() {
        let timeout = Duration::from_secs(30);
        let (app, _state) = slow_routes(timeout);
        let resp = get(&app, "/fast").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers().contains_key("x-roster-epoch"),
            "finished by the front"
        );

        let start = tokio::time::Instant::now();
        let resp = get(&app, "/slow").await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            start.elapsed(),
            timeout,
            "the deadline runs from the request's start"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("took too long"));
        // Its slot (the only one) was let go with it.
        assert_eq!(get(&app, "/fast").await.status(), StatusCode::OK);

        // A watch holds its slot and streams past the request deadline.
        let resp = get(&app, "/slow/watch").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        for n in 0..5 {
            let chunk = body.next().await.unwrap().unwrap();
            assert_eq!(chunk, format!("{n}\n"));
        }
        assert!(start.elapsed() >= timeout * 2);
        // The only watcher slot is held while the body streams, and let go
        // with it.
        let second = get(&app, "/slow/watch").await;
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(body);
        assert_eq!(get(&app, "/slow/watch").await.status(), StatusCode::OK);
    }

    #[test]
    fn secrets_from_headers_and_consul_query() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(secret(&h, None, Style::Native).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(secret(&h, None, Style::Native), None);
        let mut h = HeaderMap::new();
        h.insert("x-consul-token", "xyz".parse().unwrap());
        assert_eq!(secret(&h, None, Style::Native).as_deref(), Some("xyz"));
        let none = HeaderMap::new();
        let q = Some("index=3&token=qqq");
        assert_eq!(secret(&none, q, Style::Consul).as_deref(), Some("qqq"));
        assert_eq!(
            secret(&none, q, Style::Native),
            None,
            "native: headers only"
        );
    }

    #[test]
    fn query_tokens_are_decoded_as_consul_decodes_them() {
        let none = HeaderMap::new();
        let token = |q: &str| secret(&none, Some(q), Style::Consul).map(Cow::into_owned);
        // java.net.URLEncoder's encoding of a base64 secret (consul-api, Spring).
        assert_eq!(
            token("passing=true&token=k3%2BVq%2F8x%3D%3D").as_deref(),
            Some("k3+Vq/8x==")
        );
        assert_eq!(
            token("token=abc-DEF_123.x").as_deref(),
            Some("abc-DEF_123.x")
        );
        // `+` is a space, as in Go's url.ParseQuery: no secret holds one.
        assert_eq!(token("token=a+b").as_deref(), Some("a b"));
        // Not UTF-8 once decoded, or a broken escape: still a token (an
        // unknown one), never "no token".
        assert!(token("token=%FF%FE").is_some_and(|t| !t.is_empty()));
        assert_eq!(token("token=%2").as_deref(), Some("%2"));
        assert_eq!(token("token=&index=2"), None);
    }

    #[test]
    fn write_routes_authorize_the_decoded_name() {
        let put = Method::PUT;
        assert_eq!(
            need(Access::Write, &put, Some("Web")).unwrap(),
            Some(Need::Write("web".into()))
        );
        assert!(need(Access::Write, &put, Some(&"x".repeat(2000))).is_err());
        assert!(need(Access::Write, &put, None).is_err());
        assert_eq!(
            need(Access::Write, &Method::GET, Some("web")).unwrap(),
            Some(Need::Read)
        );
        assert_eq!(need(Access::Open, &put, None).unwrap(), None);
    }
}
