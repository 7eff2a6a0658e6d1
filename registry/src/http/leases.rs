//! `GET /v1/services/{service}/leases`: how long ago each leased instance of a
//! service last renewed its lease. Heartbeats move only an atomic deadline and
//! never reach the catalog, so instance reads cannot show this; the web console
//! polls it to show the time since each instance's last heartbeat.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use roster_api::duration;
use serde_json::json;

use super::{ApiError, AppState, with_index};
use crate::model::ServiceName;

pub(super) async fn service_leases(
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    let service = ServiceName::parse(&service)?;
    // The index first: a lease listed is at least as new as the index said.
    let index = state.registry.snapshot().service_index(service.as_str());
    let leases: Vec<_> = state
        .registry
        .lease_ages(service.as_str())
        .into_iter()
        .map(|(id, ttl, ago, expired)| {
            json!({
                "id": id,
                "ttl": duration::format(Duration::from_nanos(ttl)),
                "renewed_ago_ms": ago / 1_000_000,
                "expired": expired,
            })
        })
        .collect();
    Ok(with_index(
        index,
        Json(json!({ "index": index, "leases": leases })),
    ))
}
