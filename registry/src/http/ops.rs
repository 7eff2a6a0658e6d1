//! Operational endpoints: liveness, readiness, metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};

/// The OpenAPI 3.1 description of the native API.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub(super) async fn health(State(state): State<AppState>) -> Response {
    let snap = state.registry.snapshot();
    let preserving = state.registry.self_preservation_active();
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "index": snap.index,
        "services": snap.services.len(),
        "instances": snap.instance_count(),
        "self_preservation": preserving,
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    // Still 200: the process is alive and serving; the warning is for operators.
    if preserving {
        body["warnings"] = json!([
            "self-preservation is on: too many leases ran out at once, so none expire until heartbeats come back; check the registry's network"
        ]);
    }
    Json(body).into_response()
}

pub(super) async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError::unavailable("the catalog is still loading").into_response()
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics().render(&state.registry.snapshot());
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub(super) async fn openapi() -> Response {
    let mut resp = OPENAPI.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
