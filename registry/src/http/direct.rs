//! The API as the server calls it: the router, and beside it the one route
//! every client polls, `GET /v1/services/{service}`, found without it.
//!
//! Routing costs a list read about a fifth of its instructions in roster's
//! own code (matching, the matched template and the path parameters stored
//! in the request, extractors, a boxed handler call): bench/RESULTS.md has
//! the count. The instance list is the read a registry answers most, so
//! [`Api::call`] recognises its paths itself and hands them to the same gate
//! (the read group's, [`gate::READ`]) and the same handler code
//! ([`services::list`]) the router would have used. Only paths whose raw text
//! is the parameter (no `%` escapes, no further segment) go this way; any
//! other request, and every other route, goes through the router. Tests
//! check that both ways give the same answers, refusals included.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower::ServiceExt as _;
use tower::util::Oneshot;

use super::extract::QueryPairs;
use super::federation::Forwarded;
use super::gate::{self, GateFuture, GateService};
use super::{AppState, services};

/// The route [`Api`] answers without the router.
pub(super) const LIST_ROUTE: &str = "/v1/services/{service}";
/// What precedes its parameter.
const LIST_PREFIX: &str = "/v1/services/";

/// The whole API as the HTTP server calls it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    /// The direct list route; `None` for a bare router ([`From<Router>`]).
    list: Option<GateService<ListInstances>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("direct_list", &self.list.is_some())
            .finish_non_exhaustive()
    }
}

impl From<Router> for Api {
    /// A router alone, every request routed.
    fn from(router: Router) -> Api {
        Api { router, list: None }
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
    /// The API over `state`: [`super::router`] and the direct list route.
    pub fn new(state: AppState) -> Api {
        let list = ListInstances {
            state: state.clone(),
        };
        Api {
            list: Some(GateService::direct(&state, gate::READ, LIST_ROUTE, list)),
            router: super::router(state),
        }
    }

    /// Answers `req`.
    pub fn call(&self, req: Request) -> ApiFuture {
        if let Some(list) = &self.list
            && is_list(&req)
        {
            let mut list = list.clone();
            return ApiFuture(Either::Left(tower::Service::call(&mut list, req)));
        }
        ApiFuture(Either::Right(self.router.clone().oneshot(req)))
    }
}

/// Whether the router would take `req` to [`LIST_ROUTE`] with the path's
/// own text as `{service}`: a GET of `/v1/services/NAME` where `NAME` is
/// not empty and has neither a `/` nor a `%` escape (which the router
/// decodes). Anything else is left to the router.
fn is_list(req: &Request) -> bool {
    req.method() == Method::GET
        && req
            .uri()
            .path()
            .strip_prefix(LIST_PREFIX)
            .is_some_and(|name| !name.is_empty() && !name.contains(['/', '%']))
}

/// [`LIST_ROUTE`]'s handler as a service of its own.
#[derive(Clone)]
struct ListInstances {
    state: AppState,
}

impl tower::Service<Request> for ListInstances {
    type Response = Response;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> HandlerFuture {
        let state = self.state.clone();
        Box::pin(async move {
            let (parts, _) = req.into_parts();
            let name = parts.uri.path().strip_prefix(LIST_PREFIX).unwrap_or("");
            // In the order the route's extractors run: the query, then the
            // name (which the handler parses).
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
    use axum::http::StatusCode;

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

    async fn answer(resp: Response) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
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

    /// Every answer the direct route gives is the router's, byte for byte:
    /// lists, filters, bad names and queries, blocking queries, another
    /// datacenter, and with ACLs on every kind of token and none.
    #[tokio::test]
    async fn the_direct_route_answers_as_the_router_does() {
        let tokens = format!(
            "[[tokens]]\nname = \"reader\"\nsecret = \"{READER}\"\npolicies = [\"read\"]\n\
             [[tokens]]\nname = \"writer\"\nsecret = \"{WRITER}\"\npolicies = [\"write:web\"]\n"
        );
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
            let auths = [
                None,
                Some(format!("Bearer {READER}")),
                Some(format!("Bearer {WRITER}")),
                Some("Bearer not-a-token-at-all".to_owned()),
                Some("Basic abc".to_owned()),
            ];
            let mut direct_calls = 0;
            for path in paths {
                assert!(is_list(&Request::get(path).body(Body::empty()).unwrap()));
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
            let text = state.registry.metrics().render(&state.registry.snapshot());
            let counted: u64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("roster_http_requests_total{")
                        && l.contains("route=\"/v1/services/{service}\"")
                        && l.contains("method=\"GET\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum();
            assert_eq!(counted, 2 * direct_calls, "acl {}", acl.is_some());
        }
    }

    fn state_router(api: &Api) -> Router {
        api.router.clone()
    }

    #[test]
    fn only_plain_list_paths_go_direct() {
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        assert!(is_list(&get("/v1/services/web")));
        assert!(is_list(&get("/v1/services/web?all&tag=a")));
        for path in [
            "/v1/services",
            "/v1/services/",
            "/v1/services/web/",
            "/v1/services/web/watch",
            "/v1/services/w%65b",
            "/v1/services//web",
            "/v1/servicesweb",
            "/V1/services/web",
        ] {
            assert!(!is_list(&get(path)), "{path}");
        }
        let head = Request::head("/v1/services/web")
            .body(Body::empty())
            .unwrap();
        assert!(!is_list(&head), "HEAD is the router's");
    }

    #[test]
    #[should_panic(expected = "cannot authorize by its path's service")]
    fn a_direct_route_cannot_sit_behind_a_write_gate() {
        let state = state(None);
        let list = ListInstances {
            state: state.clone(),
        };
        let write = gate::Gate::new(gate::Access::Write, gate::Style::Native);
        let _ = GateService::direct(&state, write, LIST_ROUTE, list);
    }
}
