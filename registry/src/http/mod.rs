//! The HTTP API: native `/v1` endpoints plus `/health`, `/ready` and `/metrics`.

mod batch;
mod bodies;
mod catalog_watch;
pub(crate) mod consul;
mod direct;
pub(crate) mod extract;
mod failover;
pub(crate) mod federation;
mod gate;
pub(crate) mod http2;
mod leases;
pub(crate) mod limits;
mod ops;
mod parse_errors;
mod problem;
mod prometheus;
mod raft;
pub mod serve;
mod services;
pub(crate) mod snapshot;
mod ui;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use direct::{Api, ApiFuture};
pub use extract::BODY_LIMIT;
use gate::{Gate, Group};
pub use ops::OPENAPI;
pub(crate) use problem::ApiError;

use crate::metrics::{Metrics, RequestLabels};
use crate::model::{Limits, PanicPolicy};
use crate::registry::Registry;

/// Everything the handlers share, behind one `Arc`: axum clones the state for
/// every layer and handler of every request, and one reference count is much
/// cheaper than a dozen (the per-request clones were 7-10 % of the CPU of a
/// heartbeat in bench/run.sh's profile).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The catalog.
    pub registry: Arc<Registry>,
    /// Validation limits.
    pub limits: Arc<Limits>,
    /// When healthy-only queries answer with every instance.
    pub panic: Arc<PanicPolicy>,
    /// Overload limits.
    pub limiter: Arc<limits::Limiter>,
    /// Tokens, when ACLs are on; `None` lets every call through.
    pub acl: Option<Arc<crate::acl::Tokens>>,
    /// The node and datacenter the Consul-compatible API reports.
    pub consul: Arc<consul::ConsulNode>,
    /// True once the catalog is loaded and writes are accepted.
    pub ready: Arc<AtomicBool>,
    /// Serialized instance lists, reused until their service changes.
    pub(crate) bodies: Arc<bodies::BodyCache>,
    /// Random per run of the server; part of every watch resume token, so a
    /// token from before a restart is never trusted.
    pub epoch: u64,
    /// `epoch` in hex, as every answer's `X-Roster-Epoch` carries it (made
    /// once: the header is on the heartbeat path).
    epoch_header: HeaderValue,
    /// Extra lease time after a restore.
    pub lease_grace: std::time::Duration,
    /// Cancelled when the server shuts down: ends blocking queries and
    /// catalog streams, so a graceful shutdown does not wait for them.
    /// Service event streams end when the registry closes its watches
    /// ([`Registry::close_watches`], which the server does at that moment).
    pub shutdown: CancellationToken,
    /// When this state was made: the start of the uptime `/health` reports.
    pub started: Instant,
    /// This node's cluster, when replicated.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The other datacenters, when federated.
    pub federation: Option<Arc<crate::federation::Federation>>,
}

impl AppState {
    /// State over `registry` with `config`'s settings, ready at once (an
    /// in-memory catalog has nothing to load); blocking queries end when
    /// `shutdown` is cancelled. Settings only known once the server is bound or clustered
    /// are given to the [`AppStateBuilder`] before [`AppStateBuilder::build`].
    pub fn builder(
        registry: Arc<Registry>,
        config: &crate::config::Config,
        shutdown: CancellationToken,
    ) -> AppStateBuilder {
        AppStateBuilder {
            shared: Shared {
                registry,
                limits: Arc::new(config.limits.clone()),
                panic: Arc::new(config.panic.clone()),
                acl: config.acl.clone().map(Arc::new),
                limiter: Arc::new(limits::Limiter::new(config.limits_http.clone())),
                consul: Arc::new(consul::ConsulNode::new(
                    &config.datacenter,
                    &config.node_name,
                    config.http_addr.ip(),
                    config.http_addr.port(),
                )),
                ready: Arc::new(AtomicBool::new(true)),
                bodies: Arc::default(),
                epoch: fastrand::u64(1..),
                epoch_header: HeaderValue::from_static("0"),
                lease_grace: config.lease_grace,
                shutdown,
                started: Instant::now(),
                cluster: None,
                federation: None,
            },
        }
    }

    fn metrics(&self) -> &Metrics {
        self.registry.metrics()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The one way to make an [`AppState`]: [`AppState::builder`], then what
/// the server learns while it starts.
#[derive(Debug)]
pub struct AppStateBuilder {
    shared: Shared,
}

impl AppStateBuilder {
    /// The address the Consul-compatible API reports for this node.
    pub(crate) fn address(mut self, addr: std::net::SocketAddr) -> Self {
        let node = &self.shared.consul;
        self.shared.consul = Arc::new(consul::ConsulNode::new(
            &node.datacenter,
            &node.name,
            addr.ip(),
            addr.port(),
        ));
        self
    }

    /// The readiness flag the server's loader or cluster node sets.
    pub(crate) fn ready(mut self, ready: Arc<AtomicBool>) -> Self {
        self.shared.ready = ready;
        self
    }

    /// This node's cluster, when replicated.
    pub(crate) fn cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.shared.cluster = cluster;
        self
    }

    /// The other datacenters, when federated.
    pub(crate) fn federation(
        mut self,
        federation: Option<Arc<crate::federation::Federation>>,
    ) -> Self {
        self.shared.federation = federation;
        self
    }

    /// The state, ready to share.
    pub fn build(mut self) -> AppState {
        self.shared.epoch_header = HeaderValue::from_str(&format!("{:x}", self.shared.epoch))
            .expect("hex digits make a header value");
        AppState(Arc::new(self.shared))
    }
}

/// Builds the whole API from its route groups. Each group carries its own
/// gate (permission, readiness, body limit, error style: `gate.rs`); a route
/// that is in no group is not in the router.
///
/// No router-wide layer: each would wrap every route in one more boxed
/// service per request. Body sizes are the gates' (each reads a request's
/// body whole, under its group's limit, before the handler runs; routes
/// whose limit is over axum's default of 2 MiB carry their own
/// `DefaultBodyLimit`).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for group in groups() {
        router = router.merge(group.seal(&state));
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(state)
}

/// Every route of the API, by who may call it.
fn groups() -> Vec<Group> {
    use gate::Access::{Admin, AnyWrite, Federation, Open};
    use gate::Style::Native;
    let instance = direct::INSTANCE_ROUTE;
    let open = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(ops::openapi))
        // The console's own files; its data calls go through the API's gates.
        .route("/", get(ui::to_ui))
        .route("/ui", get(ui::to_ui))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css));
    let read = Router::new()
        .route("/v1/services", get(services::list_services))
        .route(direct::LIST_ROUTE, get(services::list_instances))
        .route("/v1/services/{service}/watch", get(watch::watch_service))
        .route("/v1/services/{service}/leases", get(leases::service_leases))
        .route("/v1/watch", get(watch::watch_many))
        .route("/v1/catalog/watch", get(catalog_watch::watch_catalog))
        .route("/v1/catalog/changes", get(catalog_watch::catalog_changes))
        .route("/v1/prometheus/targets", get(prometheus::targets))
        .route("/v1/datacenters", get(federation::datacenters))
        .route(instance, get(services::get_instance))
        .route(&format!("{instance}/checks"), get(services::get_checks));
    let write = Router::new()
        .route(
            instance,
            put(services::register).delete(services::deregister),
        )
        .route(direct::HEARTBEAT_ROUTE, put(services::heartbeat))
        .route(
            &format!("{instance}/checks/{{check_id}}/{{status}}"),
            put(services::update_check),
        );
    // A batch names its services in the body, not the path: the gate lets in
    // a token that may write some service, and the handler authorizes every
    // operation on its decoded, validated name before anything is applied.
    let batch = Router::new().route(
        "/v1/batch",
        post(batch::batch).layer(DefaultBodyLimit::max(batch::BATCH_BODY_LIMIT)),
    );
    let admin = Router::new()
        .route(
            &format!("{instance}/maintenance"),
            put(services::maintenance),
        )
        .route(
            "/v1/snapshot",
            get(snapshot::save)
                .put(snapshot::restore)
                .layer(DefaultBodyLimit::max(snapshot::SNAPSHOT_LIMIT)),
        );
    let mut groups = vec![
        Group::new(Gate::new(Open, Native), open),
        Group::new(gate::READ, read),
        Group::new(gate::WRITE, write),
        Group::new(
            Gate::new(AnyWrite, Native).body_limit(batch::BATCH_BODY_LIMIT),
            batch,
        ),
        Group::new(
            Gate::new(Admin, Native).body_limit(snapshot::SNAPSHOT_LIMIT),
            admin,
        ),
    ];
    // Other datacenters' probes, with the federation token.
    groups.push(Group::new(
        Gate::new(Federation, Native),
        Router::new().route("/v1/federation/ping", get(federation::ping)),
    ));
    groups.extend(consul::groups());
    groups.extend(raft::groups());
    groups
}

/// Consul-compatible paths answer errors in Consul's plain text.
pub(super) fn is_consul(path: &str) -> bool {
    ["/v1/agent/", "/v1/catalog/", "/v1/health/", "/v1/status/"]
        .iter()
        .any(|p| path.starts_with(p))
        || path == "/v1/txn"
}

/// What every request goes through besides its group's gate, which calls
/// these (and so do the two fallbacks below, for requests no route takes).
/// One middleware per route rather than a layer per concern: each layer costs
/// a boxed future, a clone of the inner service and moves of the request per
/// call (bench/src/bin/router_overhead.rs measures the stack).
pub(super) struct Front {
    start: Instant,
    method: &'static str,
    route: &'static str,
    /// The cluster's freshness headers go on this answer.
    fresh: bool,
}

impl Front {
    /// Notes the request before anything runs.
    /// `route` is the route's template when the request did not come
    /// through the router (which leaves it in the request).
    pub(super) fn begin(state: &AppState, req: &Request, route: Option<&'static str>) -> Front {
        let path = req.uri().path();
        Front {
            start: Instant::now(),
            method: static_method(req.method()),
            route: route.unwrap_or_else(|| {
                req.extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", |p| static_route(p.as_str()))
            }),
            fresh: state.cluster.is_some()
                && path.starts_with("/v1/")
                && !path.starts_with("/v1/raft/"),
        }
    }

    /// On a cluster node, a `?consistent` read waits for the leader's read
    /// index (503 when no leader confirms it) before its handler runs.
    pub(super) fn barrier(
        &self,
        state: &AppState,
        req: &Request,
    ) -> Option<impl Future<Output = Result<(), ApiError>> + Send + 'static> {
        let consistent = self.fresh
            && req.method() == Method::GET
            && req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|kv| kv.split('=').next() == Some("consistent"))
            });
        let cluster = state.cluster.clone().filter(|_| consistent)?;
        Some(async move { cluster.read_barrier().await.map_err(ApiError::from) })
    }

    /// Finishes the answer: the cluster's freshness headers, `X-Roster-Epoch`,
    /// and the request counted and timed by route template and status.
    pub(super) fn end(self, state: &AppState, mut resp: Response) -> Response {
        if self.fresh
            && let Some(cluster) = &state.cluster
        {
            freshness(cluster, &mut resp);
        }
        // The run of this node, as in watch event ids: a client tells a restarted
        // (or another) registry from the one it knew before any event arrives.
        // A proxied answer of another datacenter keeps that registry's epoch:
        // its resume tokens are that run's.
        const EPOCH: HeaderName = HeaderName::from_static("x-roster-epoch");
        resp.headers_mut()
            .entry(EPOCH)
            .or_insert_with(|| state.epoch_header.clone());
        let labels = RequestLabels {
            method: self.method,
            route: self.route,
            status: resp.status().as_u16(),
        };
        state
            .metrics()
            .observe_request(labels, self.start.elapsed().as_secs_f64());
        resp
    }
}

/// A request for a path no route serves.
async fn no_route(State(state): State<AppState>, req: Request) -> Response {
    let front = Front::begin(&state, &req, None);
    let resp = limits::refusal(&state, &req)
        .unwrap_or_else(|| ApiError::no_route(req.uri().path()).into_response());
    front.end(&state, resp)
}

/// A request with a method the path's routes do not take.
async fn no_method(State(state): State<AppState>, req: Request) -> Response {
    let front = Front::begin(&state, &req, None);
    let resp = limits::refusal(&state, &req).unwrap_or_else(|| {
        ApiError::method_not_allowed(req.method().as_str(), req.uri().path()).into_response()
    });
    front.end(&state, resp)
}

/// The method as a label without allocating (other methods share one label).
fn static_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// A route template as a `'static` label. The templates are the router's own,
/// a fixed set of a few dozen strings, each kept once for the process's life;
/// labelling requests with them then costs no allocation.
fn static_route(route: &str) -> &'static str {
    static ROUTES: std::sync::OnceLock<dashmap::DashMap<String, &'static str>> =
        std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(r) = routes.get(route) {
        return *r;
    }
    *routes
        .entry(route.to_owned())
        .or_insert_with(|| Box::leak(route.to_owned().into_boxed_str()))
}

/// `X-Roster-LastContact` of a node that has never heard from a leader: far
/// beyond any real silence (142,000 years), yet under 2^53, so JavaScript and
/// other JSON readers that parse numbers as doubles still read it exactly.
const NEVER_CONTACTED_MS: u64 = u64::MAX >> 12;

/// On a cluster node every API answer says whether the node knows a leader
/// and how long ago it heard from it, so callers can tell a stale read
/// (`X-Roster-KnownLeader`, `X-Roster-LastContact` in ms, and the same in
/// Consul's headers on its paths); `?consistent` reads wait for the leader's
/// read index first ([`Front::barrier`]).
fn freshness(cluster: &crate::cluster::Cluster, resp: &mut Response) {
    let (known, contact) = cluster.freshness();
    let known = if known { "true" } else { "false" };
    let contact = contact.unwrap_or(NEVER_CONTACTED_MS);
    let headers = resp.headers_mut();
    for (k, v) in [
        ("x-roster-knownleader", HeaderValue::from_static(known)),
        ("x-roster-lastcontact", HeaderValue::from(contact)),
    ] {
        headers.insert(HeaderName::from_static(k), v);
    }
    if headers.contains_key(HeaderName::from_static("x-consul-knownleader")) {
        headers.insert(
            HeaderName::from_static("x-consul-knownleader"),
            HeaderValue::from_static(known),
        );
        headers.insert(
            HeaderName::from_static("x-consul-lastcontact"),
            HeaderValue::from(contact),
        );
    }
}

/// One instance as a JSON response, written straight from the catalog's
/// form ([`crate::catalog::Instance::write_json`]: no copy into the wire
/// type) into a buffer sized for a typical instance (axum's `Json` starts
/// at 128 bytes and grows, copying as it goes; an instance is ~330 bytes).
fn instance_json(status: axum::http::StatusCode, inst: &crate::catalog::Instance) -> Response {
    let mut body = Vec::with_capacity(512);
    inst.write_json(&mut body);
    json_body(status, body)
}

/// A response with a JSON body already written. Built directly: the
/// `IntoResponse` of bytes sets a content type of its own first, one more
/// header insert per answer.
fn json_body(status: axum::http::StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Adds `X-Roster-Index` to a response.
fn with_index(index: u64, resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.headers_mut().insert(
        HeaderName::from_static(roster_api::INDEX_HEADER),
        HeaderValue::from(index),
    );
    resp
}
