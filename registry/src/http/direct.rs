//! The API as the server calls it: the router, and beside it the three
//! routes a registry answers most, found without it: the instance list
//! every client polls (`GET /v1/services/{service}`), the registration
//! every instance makes (`PUT /v1/services/{service}/instances/{id}`) and
//! its heartbeats (`PUT …/instances/{id}/heartbeat`).
//!
//! Routing costs a list read about a fifth of its instructions in roster's
//! own code, and a registration a tenth (matching, the matched template and
//! the path parameters stored in the request, extractors, a boxed handler
//! call): bench/RESULTS.md has the counts. [`Api::call`] recognises these
//! paths itself and hands them to the same gate (the group's,
//! [`gate::READ`] and [`gate::WRITE`]) and the same handler code
//! ([`services::list`], [`services::register_with`],
//! [`services::heartbeat_with`]) the router would have
//! used. Only paths whose raw text is the parameters (no `%` escapes, no
//! further segment) go this way; any other request, and every other route,
//! goes through the router. The write gate authorizes by the service the
//! path names, found by [`service_of`] in the raw path as the router would
//! have decoded it. Tests check that both ways give the same answers,
//! refusals included.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use roster_api::RegisterRequest;
use tower::ServiceExt as _;
use tower::util::Oneshot;

use super::extract::{PeerIp, QueryPairs, read_json};
use super::federation::Forwarded;
use super::gate::{self, GateFuture, GateService};
use super::{AppState, services};

/// The list route, which [`Api`] answers without the router.
pub(super) const LIST_ROUTE: &str = "/v1/services/{service}";
/// The instance route, whose PUT (a registration) [`Api`] answers without
/// the router.
pub(super) const INSTANCE_ROUTE: &str = "/v1/services/{service}/instances/{id}";
/// The instance route's heartbeat, which [`Api`] answers without the router.
pub(super) const HEARTBEAT_ROUTE: &str = "/v1/services/{service}/instances/{id}/heartbeat";
/// What precedes `{service}` in all three.
const PREFIX: &str = "/v1/services/";

/// The whole API as the HTTP server calls it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    /// The direct routes; `None` for a bare router ([`From<Router>`]).
    direct: Option<Direct>,
}

/// The routes answered without the router, each behind its group's gate.
#[derive(Clone)]
struct Direct {
    list: GateService<Handler>,
    register: GateService<Handler>,
    heartbeat: GateService<Handler>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

impl From<Router> for Api {
    /// A router alone, every request routed.
    fn from(router: Router) -> Api {
        Api {
            router,
            direct: None,
        }
    }
}

/// The future of one call to the [`Api`]: its answer.
pub struct ApiFuture(Either<GateFuture<HandlerFuture>, Oneshot<Router, Request>>);

impl std::fmt::Debug for ApiFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiFuture")
    }
}

impl Future for ApiFuture {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Either::Left(direct) => Pin::new(direct).poll(cx).map_ok(with_length),
            Either::Right(routed) => Pin::new(routed).poll(cx),
        }
    }
}

/// A handler's boxed future, as the router's own are.
type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Api {
    /// The API over `state`: [`super::router`] and the direct routes.
    pub fn new(state: AppState) -> Api {
        let list = Handler::new(&state, list);
        let register = Handler::new(&state, register);
        let heartbeat = Handler::new(&state, heartbeat);
        let direct = Direct {
            list: GateService::direct(&state, gate::READ, LIST_ROUTE, None, list),
            register: GateService::direct(
                &state,
                gate::WRITE,
                INSTANCE_ROUTE,
                Some(service_of),
                register,
            ),
            heartbeat: GateService::direct(
                &state,
                gate::WRITE,
                HEARTBEAT_ROUTE,
                Some(service_of),
                heartbeat,
            ),
        };
        Api {
            direct: Some(direct),
            router: super::router(state),
        }
    }

    /// Answers `req`.
    pub fn call(&self, req: Request) -> ApiFuture {
        let direct = self.direct.as_ref().and_then(|d| Some((d, route(&req)?)));
        ApiFuture(match direct {
            Some((d, Route::List)) => Either::Left(tower::Service::call(&mut d.list.clone(), req)),
            Some((d, Route::Register)) => {
                Either::Left(tower::Service::call(&mut d.register.clone(), req))
            }
            Some((d, Route::Heartbeat)) => {
                Either::Left(tower::Service::call(&mut d.heartbeat.clone(), req))
            }
            None => Either::Right(self.router.clone().oneshot(req)),
        })
    }
}

/// A direct route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `GET` [`LIST_ROUTE`].
    List,
    /// `PUT` [`INSTANCE_ROUTE`].
    Register,
    /// `PUT` [`HEARTBEAT_ROUTE`].
    Heartbeat,
}

/// The direct route the router would take `req` to with the path's own
/// text as its parameters, if any: a GET of `/v1/services/NAME`, a PUT of
/// `/v1/services/NAME/instances/ID` or of `…/instances/ID/heartbeat`.
/// Anything else is left to the router.
fn route(req: &Request) -> Option<Route> {
    let params = params(req.uri().path())?;
    match (req.method(), params.id, params.heartbeat) {
        (&Method::GET, None, _) => Some(Route::List),
        (&Method::PUT, Some(_), false) => Some(Route::Register),
        (&Method::PUT, Some(_), true) => Some(Route::Heartbeat),
        _ => None,
    }
}

/// The parameters of a direct route's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Params<'a> {
    service: &'a str,
    id: Option<&'a str>,
    /// The path ends in `/heartbeat` after the id.
    heartbeat: bool,
}

/// `NAME` and `ID` of `/v1/services/NAME`, `/v1/services/NAME/instances/ID`
/// or `…/instances/ID/heartbeat`, each not empty and with neither a `/` nor
/// a `%` escape (which the router decodes: a path with one goes through
/// the router).
fn params(path: &str) -> Option<Params<'_>> {
    let rest = path.strip_prefix(PREFIX)?;
    let (service, id, heartbeat) = match rest.split_once('/') {
        None => (rest, None, false),
        Some((name, tail)) => {
            let tail = tail.strip_prefix("instances/")?;
            match tail.split_once('/') {
                None => (name, Some(tail), false),
                Some((id, "heartbeat")) => (name, Some(id), true),
                Some(_) => return None,
            }
        }
    };
    // Bytes, not chars: both are ASCII (a `char` pattern decodes UTF-8).
    let plain = |s: &str| !s.is_empty() && !s.bytes().any(|b| b == b'/' || b == b'%');
    (plain(service) && id.is_none_or(plain)).then_some(Params {
        service,
        id,
        heartbeat,
    })
}

/// The `{service}` of a direct route's path, for the write gate to
/// authorize; the same text the router would decode (the path has no `%`).
fn service_of(path: &str) -> Option<&str> {
    params(path).map(|p| p.service)
}

/// The `{service}` and `{id}` of a direct instance route's path (empty
/// when it has none, which [`route`] does not let through).
fn names_of(path: &str) -> (&str, &str) {
    match params(path) {
        Some(Params {
            service,
            id: Some(id),
            ..
        }) => (service, id),
        _ => ("", ""),
    }
}

/// A direct route's handler as a service: the route handler's own code,
/// given the state and the request (the router's handlers are services
/// too, behind its gates).
#[derive(Clone)]
struct Handler {
    state: AppState,
    run: fn(AppState, Request) -> HandlerFuture,
}

impl Handler {
    fn new(state: &AppState, run: fn(AppState, Request) -> HandlerFuture) -> Handler {
        Handler {
            state: state.clone(),
            run,
        }
    }
}

impl tower::Service<Request> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> HandlerFuture {
        (self.run)(self.state.clone(), req)
    }
}

/// [`LIST_ROUTE`]: in the order the route's extractors run, the query,
/// then the name (which the handler parses).
fn list(state: AppState, req: Request) -> HandlerFuture {
    Box::pin(async move {
        let (parts, _) = req.into_parts();
        let name = service_of(parts.uri.path()).unwrap_or("");
        let resp = match QueryPairs::parse(parts.uri.query()) {
            Ok(query) => {
                let forwarded = parts.extensions.get::<Forwarded>();
                services::list(state, name, query, forwarded).await
            }
            Err(e) => Err(e),
        };
        Ok(resp.into_response())
    })
}

/// [`INSTANCE_ROUTE`]'s PUT, a registration: in the order the route's
/// extractors run, the body, then the names (which the handler parses);
/// the connection's address is the default address.
fn register(state: AppState, req: Request) -> HandlerFuture {
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let (name, id) = names_of(parts.uri.path());
        let PeerIp(peer) = PeerIp::of(&parts.extensions);
        let resp = match read_json::<RegisterRequest>(body).await {
            Ok(req) => services::register_with(state, name, id, peer, req).await,
            Err(e) => Err(e),
        };
        Ok(resp.into_response())
    })
}

/// [`HEARTBEAT_ROUTE`].
fn heartbeat(state: AppState, req: Request) -> HandlerFuture {
    Box::pin(async move {
        let (name, id) = names_of(req.uri().path());
        let resp = services::heartbeat_with(&state, name, id).await;
        Ok(resp.into_response())
    })
}

/// The answer with the `Content-Length` the router gives an answer once
/// its gate is through: the body's length when known (not a stream's),
/// unless already set.
fn with_length(mut resp: Response) -> Response {
    use axum::body::HttpBody as _;
    use axum::http::{HeaderValue, header};
    if let Some(len) = resp.body().size_hint().exact()
        && !resp.headers().contains_key(header::CONTENT_LENGTH)
    {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::StatusCode;
    use std::net::SocketAddr;

    fn state(acl: Option<&str>) -> AppState {
        let mut config = crate::config::Config::default();
        if let Some(toml) = acl {
            config.acl = Some(crate::acl::Tokens::parse(toml).unwrap());
        }
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let registry = std::sync::Arc::new(crate::registry::Registry::new(config.catalog, metrics));
        AppState::builder(
            registry,
            &config,
            tokio_util::sync::CancellationToken::new(),
        )
        .build()
    }

    /// An answer's status, headers (sorted) and body.
    type Answer = (StatusCode, Vec<(String, String)>, Vec<u8>);

    async fn answer(resp: Response) -> Answer {
        let status = resp.status();
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        headers.sort();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    const READER: &str = "reader-secret-0123456789";
    const WRITER: &str = "writer-secret-0123456789";

    /// A reader and a writer of `web`.
    fn tokens() -> String {
        format!(
            "[[tokens]]\nname = \"reader\"\nsecret = \"{READER}\"\npolicies = [\"read\"]\n\
             [[tokens]]\nname = \"writer\"\nsecret = \"{WRITER}\"\npolicies = [\"write:web\"]\n"
        )
    }

    /// No token, the writer's, the reader's, an unknown one.
    fn auths() -> [Option<String>; 4] {
        [
            None,
            Some(format!("Bearer {WRITER}")),
            Some(format!("Bearer {READER}")),
            Some("Bearer not-a-token-at-all".to_owned()),
        ]
    }

    /// Requests counted under `route`'s template and `method`.
    fn counted(state: &AppState, method: &str, route: &str) -> u64 {
        let text = state.registry.metrics().render(&state.registry.snapshot());
        text.lines()
            .filter(|l| {
                l.starts_with("roster_http_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("method=\"{method}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Every answer the direct route gives is the router's, byte for byte:
    /// lists, filters, bad names and queries, blocking queries, another
    /// datacenter, and with ACLs on every kind of token and none.
    #[tokio::test]
    async fn the_direct_route_answers_as_the_router_does() {
        let tokens = tokens();
        for acl in [None, Some(tokens.as_str())] {
            let state = state(acl);
            let api = Api::new(state.clone());
            for i in 1..=3 {
                let put = Request::put(format!("/v1/services/web/instances/w{i}"))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {WRITER}"))
                    .body(Body::from(format!(
                        r#"{{"address":"10.0.0.{i}","port":80,"tags":["v{i}"]}}"#
                    )))
                    .unwrap();
                let resp = api.call(put).await.unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED, "acl {}", acl.is_some());
            }
            let paths = [
                "/v1/services/web",
                "/v1/services/WEB",
                "/v1/services/nosuch",
                "/v1/services/bad_name!",
                "/v1/services/web?all",
                "/v1/services/web?healthy=false",
                "/v1/services/web?tag=v2",
                "/v1/services/web?all=maybe",
                "/v1/services/web?index=0",
                "/v1/services/web?index=99&wait=5ms",
                "/v1/services/web?index=abc",
                "/v1/services/web?dc=elsewhere",
                "/v1/services/web?consistent",
                "/v1/services/web?q=%zz",
                "/v1/services/web?",
            ];
            let mut auths = auths().to_vec();
            auths.push(Some("Basic abc".to_owned()));
            let mut direct_calls = 0;
            for path in paths {
                let get = Request::get(path).body(Body::empty()).unwrap();
                assert_eq!(route(&get), Some(Route::List));
                for auth in &auths {
                    let req = || {
                        let mut req = Request::get(path);
                        if let Some(auth) = auth {
                            req = req.header("authorization", auth);
                        }
                        req.body(Body::empty()).unwrap()
                    };
                    let routed = answer(state_router(&api).oneshot(req()).await.unwrap()).await;
                    let direct = answer(api.call(req()).await.unwrap()).await;
                    direct_calls += 1;
                    assert_eq!(
                        direct,
                        routed,
                        "{path} with {auth:?}, acl {}",
                        acl.is_some()
                    );
                }
            }
            // A GET with a body reads it under the gate's limit either way.
            let big = || {
                Request::get("/v1/services/web")
                    .header("authorization", format!("Bearer {READER}"))
                    .body(Body::from(vec![b'x'; crate::http::BODY_LIMIT + 1]))
                    .unwrap()
            };
            let routed = answer(state_router(&api).oneshot(big()).await.unwrap()).await;
            let direct = answer(api.call(big()).await.unwrap()).await;
            direct_calls += 1;
            assert_eq!(routed.0, StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(direct, routed);

            // Counted under the route's template, as routed requests are.
            let counted = counted(&state, "GET", LIST_ROUTE);
            assert_eq!(counted, 2 * direct_calls, "acl {}", acl.is_some());
        }
    }

    fn state_router(api: &Api) -> Router {
        api.router.clone()
    }

    /// `req` through `routed`'s router and `direct`'s direct route (two
    /// registries, two epochs: answered without the epoch header, which
    /// each must have).
    async fn both_ways(routed: &Api, direct: &Api, req: impl Fn() -> Request) -> (Answer, Answer) {
        let mut answers = [
            answer(state_router(routed).oneshot(req()).await.unwrap()).await,
            answer(direct.call(req()).await.unwrap()).await,
        ];
        for (_, headers, _) in &mut answers {
            let before = headers.len();
            headers.retain(|(k, _)| k != "x-roster-epoch");
            assert_eq!(headers.len(), before - 1, "an epoch header");
        }
        let [routed, direct] = answers;
        (routed, direct)
    }

    /// Registrations: the same answers and the same catalog either way, for
    /// every shape of name, body and token, with ACLs off and on. Two
    /// registries take the same requests in the same order, one through the
    /// router and one direct (a registration changes what the next one
    /// answers, so one registry cannot take both).
    #[tokio::test]
    async fn the_direct_registration_answers_as_the_router_does() {
        let tokens = tokens();
        let long_id = format!("/v1/services/web/instances/{}", "i".repeat(300));
        let paths = [
            "/v1/services/web/instances/w1",
            "/v1/services/WEB/instances/w2",
            "/v1/services/Web/instances/w1",
            "/v1/services/db/instances/d1",
            "/v1/services/bad_name!/instances/x1",
            "/v1/services/web/instances/bad!id",
            long_id.as_str(),
            "/v1/services/web/instances/w3?dc=elsewhere",
            "/v1/services/web/instances/w4?consistent",
        ];
        let oversized = format!(
            r#"{{"port":80,"meta":{{"k":"{}"}}}}"#,
            "v".repeat(crate::http::BODY_LIMIT)
        );
        let bodies = [
            r#"{"address":"10.0.0.1","port":80,"ttl":"30s","tags":["a"],"meta":{"k":"v"}}"#,
            oversized.as_str(),
            r#"{"address":"10.0.0.2","port":80}"#,
            r#"{"port":80}"#,
            r#"{"address":"10.0.0.1","port":0}"#,
            r#"{"address":"10.0.0.1","port":"eighty"}"#,
            r#"["10.0.0.1",80]"#,
            "{not json",
            "",
        ];
        let auths = auths();
        for acl in [None, Some(tokens.as_str())] {
            let (routed_state, direct_state) = (state(acl), state(acl));
            let routed_api = Api::new(routed_state.clone());
            let direct_api = Api::new(direct_state.clone());
            let mut calls = 0;
            for path in paths {
                let put = Request::put(path).body(Body::empty()).unwrap();
                assert_eq!(route(&put), Some(Route::Register), "{path}");
                for body in bodies {
                    for auth in &auths {
                        let req = || {
                            let mut req = Request::put(path)
                                .header("content-type", "application/json")
                                .extension(ConnectInfo(SocketAddr::from(([10, 1, 2, 3], 4000))));
                            if let Some(auth) = auth {
                                req = req.header("authorization", auth);
                            }
                            req.body(Body::from(body.to_owned())).unwrap()
                        };
                        let (routed, direct) = both_ways(&routed_api, &direct_api, req).await;
                        calls += 1;
                        if body.len() > crate::http::BODY_LIMIT && acl.is_none() && path == paths[0]
                        {
                            assert_eq!(routed.0, StatusCode::PAYLOAD_TOO_LARGE);
                        }
                        assert_eq!(
                            direct,
                            routed,
                            "PUT {path} {:.80} with {auth:?}, acl {}",
                            body,
                            acl.is_some()
                        );
                    }
                }
            }
            let (a, b) = (
                routed_state.registry.snapshot(),
                direct_state.registry.snapshot(),
            );
            assert_eq!(a.index, b.index);
            assert!(a.index > 0, "some registrations were taken");
            let names: Vec<_> = a.services.keys().collect();
            assert_eq!(names, b.services.keys().collect::<Vec<_>>());
            for (name, svc) in a.services.iter() {
                let other = &b.services[name];
                let ids: Vec<_> = svc.instances.keys().collect();
                assert_eq!(ids, other.instances.keys().collect::<Vec<_>>());
                for (id, inst) in svc.instances.iter() {
                    assert_eq!(inst.to_api(), other.instances[id].to_api());
                }
            }
            // Counted under the route's template, as routed requests are.
            let counted = counted(&direct_state, "PUT", INSTANCE_ROUTE);
            assert_eq!(counted, calls, "acl {}", acl.is_some());
        }
    }

    /// Heartbeats: the same answers either way (known and unknown
    /// instances, names in other cases, bad names, tokens of every kind, a
    /// body over the limit), into two registries with the same instances.
    #[tokio::test]
    async fn the_direct_heartbeat_answers_as_the_router_does() {
        let tokens = tokens();
        let paths = [
            "/v1/services/web/instances/w1/heartbeat",
            "/v1/services/WEB/instances/w1/heartbeat",
            "/v1/services/web/instances/nosuch/heartbeat",
            "/v1/services/db/instances/w1/heartbeat",
            "/v1/services/bad_name!/instances/w1/heartbeat",
            "/v1/services/web/instances/bad!id/heartbeat",
            "/v1/services/web/instances/w1/heartbeat?dc=elsewhere",
        ];
        let oversized = "x".repeat(crate::http::BODY_LIMIT + 1);
        let auths = auths();
        for acl in [None, Some(tokens.as_str())] {
            let (routed_state, direct_state) = (state(acl), state(acl));
            let routed_api = Api::new(routed_state.clone());
            let direct_api = Api::new(direct_state.clone());
            for api in [&routed_api, &direct_api] {
                let put = Request::put("/v1/services/web/instances/w1")
                    .header("authorization", format!("Bearer {WRITER}"))
                    .body(Body::from(
                        r#"{"address":"10.0.0.1","port":80,"ttl":"30s"}"#,
                    ))
                    .unwrap();
                let resp = state_router(api).oneshot(put).await.unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
            }
            let mut statuses = Vec::new();
            for path in paths {
                let put = Request::put(path).body(Body::empty()).unwrap();
                assert_eq!(route(&put), Some(Route::Heartbeat), "{path}");
                for body in ["", oversized.as_str()] {
                    for auth in &auths {
                        let req = || {
                            let mut req = Request::put(path);
                            if let Some(auth) = auth {
                                req = req.header("authorization", auth);
                            }
                            req.body(Body::from(body.to_owned())).unwrap()
                        };
                        let (routed, direct) = both_ways(&routed_api, &direct_api, req).await;
                        assert_eq!(
                            direct,
                            routed,
                            "PUT {path} ({} bytes) with {auth:?}, acl {}",
                            body.len(),
                            acl.is_some()
                        );
                        statuses.push(routed.0.as_u16());
                    }
                }
            }
            // The matrix reached the handler and its refusals, not only the gate's.
            for status in [204, 404, 400, 413] {
                assert!(statuses.contains(&status), "{status} in {statuses:?}");
            }
            if acl.is_some() {
                assert!(statuses.contains(&401) && statuses.contains(&403));
            }
            let counted = counted(&direct_state, "PUT", HEARTBEAT_ROUTE);
            assert_eq!(counted, statuses.len() as u64, "acl {}", acl.is_some());
            let (a, b) = (
                routed_state.registry.snapshot(),
                direct_state.registry.snapshot(),
            );
            assert_eq!(a.index, b.index);
        }
    }

    #[test]
    fn only_plain_paths_go_direct() {
        let req = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            route(&req(Method::GET, "/v1/services/web")),
            Some(Route::List)
        );
        assert_eq!(
            route(&req(Method::GET, "/v1/services/web?all&tag=a")),
            Some(Route::List)
        );
        assert_eq!(
            route(&req(Method::PUT, "/v1/services/web/instances/w1")),
            Some(Route::Register)
        );
        for path in [
            "/v1/services",
            "/v1/services/",
            "/v1/services/web/",
            "/v1/services/web/watch",
            "/v1/services/w%65b",
            "/v1/services//web",
            "/v1/servicesweb",
            "/V1/services/web",
            "/v1/services/web/instances/",
            "/v1/services/web/instances/w1/",
            "/v1/services/web/instances/w1/heartbeat/",
            "/v1/services/web/instances/w1/heartbeats",
            "/v1/services/web/instances/w1/checks",
            "/v1/services/web/instances//heartbeat",
            "/v1/services/web/instances/w%31/heartbeat",
            "/v1/services/web/instances/w%31",
            "/v1/services/w%65b/instances/w1",
            "/v1/services/web/instance/w1",
            "/v1/services/web/instancesw1",
        ] {
            for method in [Method::GET, Method::PUT] {
                let taken = route(&req(method.clone(), path));
                assert_eq!(taken, None, "{method} {path}");
            }
        }
        // Other methods are the router's.
        for (method, path) in [
            (Method::HEAD, "/v1/services/web"),
            (Method::PUT, "/v1/services/web"),
            (Method::GET, "/v1/services/web/instances/w1"),
            (Method::DELETE, "/v1/services/web/instances/w1"),
            (Method::POST, "/v1/services/web/instances/w1"),
            (Method::GET, "/v1/services/web/instances/w1/heartbeat"),
            (Method::DELETE, "/v1/services/web/instances/w1/heartbeat"),
        ] {
            assert_eq!(route(&req(method.clone(), path)), None, "{method} {path}");
        }
        assert_eq!(
            route(&req(Method::PUT, "/v1/services/web/instances/w1/heartbeat")),
            Some(Route::Heartbeat)
        );
        assert_eq!(service_of("/v1/services/Web/instances/w1"), Some("Web"));
        assert_eq!(
            names_of("/v1/services/Web/instances/w1/heartbeat"),
            ("Web", "w1")
        );
    }

    #[test]
    #[should_panic(expected = "must say where its path names the service")]
    fn a_direct_write_route_must_say_where_its_service_is() {
        let state = state(None);
        let handler = Handler::new(&state, register);
        let _ = GateService::direct(&state, gate::WRITE, INSTANCE_ROUTE, None, handler);
    }
}
