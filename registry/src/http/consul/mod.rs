//! The Consul-compatible subset of the HTTP API, on the same port as the native
//! one, so Prometheus' `consul_sd`, Traefik's Consul catalog provider and Consul
//! client libraries work unchanged.
//!
//! Both APIs drive the same catalog commands. Their paths never collide: the
//! native API lives under `/v1/services`, `/v1/watch` and `/v1/snapshot`, the
//! Consul subset under `/v1/agent`, `/v1/catalog`, `/v1/health` and
//! `/v1/status`. Errors here are plain text, as Consul's are.

mod agent;
mod catalog;
pub mod decode;
mod filter;
mod txn;
pub mod view;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::AppState;
use super::extract::QueryPairs;
use super::gate::{Gate, Group};
use super::watch::Blocking;
use crate::catalog::CatalogError;
use crate::registry::WriteError;

pub use view::ConsulNode;

/// The Consul routes, by who may call them.
pub(in crate::http) fn groups() -> Vec<Group> {
    use super::gate::Access::{Admin, AnyWrite, Open, Read};
    use super::gate::Style::Consul;
    // As in Consul, the leader and peers are open: client libraries' health
    // indicators ask them without a token.
    let open = Router::new()
        .route("/v1/status/leader", get(catalog::leader))
        .route("/v1/status/peers", get(catalog::peers));
    let read = Router::new()
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{service}", get(catalog::service))
        .route("/v1/health/service/{service}", get(catalog::health_service))
        .route("/v1/health/checks/{service}", get(catalog::health_checks))
        .route("/v1/health/state/{state}", get(catalog::health_state));
    // The service is named in the body or only by instance id: the handlers
    // check the token's write patterns against it.
    let write = Router::new()
        .route("/v1/agent/service/register", put(agent::register))
        .route("/v1/agent/service/deregister/{id}", put(agent::deregister))
        .route("/v1/agent/check/update/{check_id}", put(agent::update))
        .route("/v1/agent/check/{verdict}/{check_id}", put(agent::verdict));
    let admin = Router::new().route(
        "/v1/agent/service/maintenance/{id}",
        put(agent::maintenance),
    );
    // A transaction may only read (`get`): the gate asks for a token that
    // reads, and the handler checks each operation's service against the
    // token (write for set, cas and deletes) before anything is applied.
    let txn = Router::new().route(
        "/v1/txn",
        put(txn::txn).layer(DefaultBodyLimit::max(super::batch::BATCH_BODY_LIMIT)),
    );
    vec![
        Group::new(Gate::new(Open, Consul), open),
        Group::new(Gate::new(Read, Consul), read),
        Group::new(Gate::new(AnyWrite, Consul), write),
        Group::new(Gate::new(Admin, Consul), admin),
        Group::new(
            Gate::new(Read, Consul).body_limit(super::batch::BATCH_BODY_LIMIT),
            txn,
        ),
    ]
}

/// A Consul-style error: a status and a plain-text message.
#[derive(Debug)]
pub struct ConsulError(StatusCode, String);

impl ConsulError {
    fn bad_request(msg: impl Into<String>) -> Self {
        ConsulError(StatusCode::BAD_REQUEST, msg.into())
    }

    fn not_found(msg: impl Into<String>) -> Self {
        ConsulError(StatusCode::NOT_FOUND, msg.into())
    }
}

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, self.1).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

impl From<super::ApiError> for ConsulError {
    fn from(e: super::ApiError) -> Self {
        ConsulError(e.status(), e.detail().to_owned())
    }
}

impl From<CatalogError> for ConsulError {
    fn from(e: CatalogError) -> Self {
        super::ApiError::from(e).into()
    }
}

impl From<WriteError> for ConsulError {
    fn from(e: WriteError) -> Self {
        super::ApiError::from(e).into()
    }
}

impl From<crate::model::FieldError> for ConsulError {
    fn from(e: crate::model::FieldError) -> Self {
        ConsulError::bad_request(format!("Invalid request: {e}"))
    }
}

/// Refuses a `?dc=` naming another datacenter, as a lone Consul datacenter does.
fn check_dc(state: &AppState, query: &QueryPairs) -> Result<(), ConsulError> {
    match query.all("dc").last() {
        Some(dc) if !dc.is_empty() && dc != state.consul.datacenter => Err(ConsulError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No path to datacenter".into(),
        )),
        _ => Ok(()),
    }
}

/// `?index=&wait=` in Consul's spelling (the same as ours).
fn blocking(query: &QueryPairs) -> Result<Option<Blocking>, ConsulError> {
    Blocking::parse(query).map_err(Into::into)
}

/// A JSON answer with Consul's consistency headers. The index is at least 1
/// and follows the catalog, so it never goes backwards.
fn reply(index: u64, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    let mut resp = (StatusCode::OK, bytes).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index.max(1)),
    );
    headers.insert(
        HeaderName::from_static("x-consul-knownleader"),
        HeaderValue::from_static("true"),
    );
    headers.insert(
        HeaderName::from_static("x-consul-lastcontact"),
        HeaderValue::from_static("0"),
    );
    resp
}
