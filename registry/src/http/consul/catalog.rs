//! `/v1/catalog/…`, `/v1/health/…` and `/v1/status/…`: reads, with blocking
//! queries on the same watch machinery as the native API.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use roster_api::Health;
use serde_json::{Map, Value, json};

use super::filter::Filter;
use super::view::{agent_service, catalog_service, checks as consul_checks, service_tags};
use super::{ConsulError, blocking, check_dc, reply};
use crate::catalog::{Instance, Snapshot};
use crate::http::AppState;
use crate::http::extract::QueryPairs;
use crate::http::failover::{current, failover_for, mark};
use crate::http::federation::Forwarded;
use crate::http::watch::{wait_for_list, wait_for_service};
use crate::model::ServiceName;

pub(super) async fn leader(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    check_dc(&state, &query)?;
    let index = state.registry.snapshot().index;
    Ok(match &state.cluster {
        // Consul answers "" while there is no leader.
        Some(c) => {
            let status = c.status();
            let addr = status
                .members
                .iter()
                .find(|m| m.leader)
                .map(|m| m.addr.clone())
                .unwrap_or_default();
            reply(index, &addr)
        }
        None => reply(index, &state.consul.server),
    })
}

pub(super) async fn peers(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    check_dc(&state, &query)?;
    let index = state.registry.snapshot().index;
    Ok(match &state.cluster {
        Some(c) => {
            let voters: Vec<String> = c
                .status()
                .members
                .into_iter()
                .filter(|m| m.voter)
                .map(|m| m.addr)
                .collect();
            reply(index, &voters)
        }
        None => reply(index, &[&state.consul.server]),
    })
}

/// Names of the datacenters, the local one first, then the federated ones
/// by round-trip time (as Consul sorts them).
pub(super) async fn datacenters(State(state): State<AppState>) -> Response {
    let names: Vec<String> = match &state.federation {
        Some(f) => f.status().into_iter().map(|d| d.name).collect(),
        None => vec![state.consul.datacenter.clone()],
    };
    reply(state.registry.snapshot().index, &names)
}

/// Waits on the global index when the query asks to, then returns the snapshot.
async fn list_snapshot(state: &AppState, query: &QueryPairs) -> Result<Arc<Snapshot>, ConsulError> {
    check_dc(state, query)?;
    if let Some(q) = blocking(query)? {
        wait_for_list(state, q).await;
    }
    Ok(state.registry.snapshot())
}

/// Waits on one service when the query asks to; returns the snapshot and the
/// service's index.
async fn service_snapshot(
    state: &AppState,
    service: &str,
    query: &QueryPairs,
) -> Result<(Arc<Snapshot>, Option<ServiceName>), ConsulError> {
    check_dc(state, query)?;
    // A name roster cannot hold has no instances: an empty answer, as Consul
    // gives for an unknown service.
    let name = ServiceName::parse(service).ok();
    if let Some(q) = blocking(query)? {
        match &name {
            Some(name) => wait_for_service(state, name, q).await,
            None => wait_for_list(state, q).await,
        }
    }
    Ok((state.registry.snapshot(), name))
}

pub(super) async fn nodes(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    let snap = list_snapshot(&state, &query).await?;
    Ok(reply(snap.index, &[state.consul.node_json(snap.index)]))
}

pub(super) async fn services(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    let snap = list_snapshot(&state, &query).await?;
    let map: Map<String, Value> = snap
        .services
        .iter()
        .map(|(name, svc)| {
            let tags = service_tags(svc.instances.values().map(|i| &**i));
            (name.to_string(), json!(tags))
        })
        .collect();
    Ok(reply(snap.index, &map))
}

/// The instances of a service that pass `?tag=` (all of them) and `?filter=`.
fn selected<'a>(
    snap: &'a Snapshot,
    name: Option<&ServiceName>,
    query: &QueryPairs,
    node: &str,
) -> Result<(u64, Vec<&'a Arc<Instance>>), ConsulError> {
    let filter = match query.all("filter").last() {
        Some(expr) if !expr.trim().is_empty() => Some(Filter::parse(expr).map_err(|e| {
            ConsulError::bad_request(format!(
                "Failed to create boolean expression evaluator: {e}"
            ))
        })?),
        _ => None,
    };
    let Some(name) = name else {
        return Ok((snap.names_index, Vec::new()));
    };
    let tags: Vec<&str> = query.all("tag").collect();
    let index = snap.service_index(name.as_str());
    let instances = snap
        .services
        .get(name.as_str())
        .map(|svc| {
            svc.instances
                .values()
                .filter(|i| tags.iter().all(|t| i.spec.tags.iter().any(|x| x == t)))
                .filter(|i| filter.as_ref().is_none_or(|f| f.matches(i, node)))
                .collect()
        })
        .unwrap_or_default();
    Ok((index, instances))
}

pub(super) async fn service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    let (snap, name) = service_snapshot(&state, &service, &query).await?;
    let (index, instances) = selected(&snap, name.as_ref(), &query, &state.consul.name)?;
    let rows: Vec<Value> = instances
        .iter()
        .map(|i| catalog_service(i, &state.consul))
        .collect();
    Ok(reply(index, &rows))
}

pub(super) async fn health_service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: QueryPairs,
    forwarded: Option<axum::Extension<Forwarded>>,
) -> Result<Response, ConsulError> {
    let passing = query.flag("passing")?.unwrap_or(false);
    // `?passing` is Consul's healthy-only answer: it fails over.
    let name = ServiceName::parse(&service).ok();
    let failover = match (&name, passing) {
        (Some(name), true) => {
            check_dc(&state, &query)?;
            failover_for(&state, name.as_str(), forwarded.as_deref()).map(|f| (name, f))
        }
        _ => None,
    };
    if let Some((name, failover)) = failover {
        if let Some(q) = blocking(&query)? {
            crate::http::failover::wait(&state, name, q, &failover).await;
        }
        if let (index, Some(remote)) = current(&state, name.as_str(), &failover).await {
            failover.served(&remote.datacenter);
            let tags: Vec<&str> = query.all("tag").collect();
            let rows: Vec<Value> = remote
                .instances
                .iter()
                .filter(|i| i.health == Health::Passing)
                .filter(|i| tags.iter().all(|t| i.tags.iter().any(|x| x == t)))
                .map(|i| super::view::remote_health_row(i, &remote.datacenter))
                .collect();
            let mut resp = reply(index, &rows);
            mark(&mut resp, &remote.datacenter);
            return Ok(resp);
        }
    }
    let (snap, name) = service_snapshot(&state, &service, &query).await?;
    let (index, instances) = selected(&snap, name.as_ref(), &query, &state.consul.name)?;
    let node = state.consul.node_json(snap.index);
    // `?passing` keeps only instances whose checks all pass (Consul's rule:
    // warning is filtered out too).
    let rows: Vec<Value> = instances
        .iter()
        .filter(|i| !passing || i.health() == Health::Passing)
        .map(|i| {
            json!({
                "Node": node,
                "Service": agent_service(i, &state.consul),
                "Checks": consul_checks(i, &state.consul),
            })
        })
        .collect();
    Ok(reply(index, &rows))
}

pub(super) async fn health_checks(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    let (snap, name) = service_snapshot(&state, &service, &query).await?;
    let (index, instances) = selected(&snap, name.as_ref(), &query, &state.consul.name)?;
    let rows: Vec<Value> = instances
        .iter()
        .flat_map(|i| consul_checks(i, &state.consul))
        .collect();
    Ok(reply(index, &rows))
}

pub(super) async fn health_state(
    State(state): State<AppState>,
    Path(wanted): Path<String>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    let want = match wanted.as_str() {
        "any" => None,
        "passing" => Some("passing"),
        "warning" => Some("warning"),
        "critical" => Some("critical"),
        other => {
            return Err(ConsulError::bad_request(format!(
                "Invalid state: {other:?}; use any, passing, warning or critical"
            )));
        }
    };
    let snap = list_snapshot(&state, &query).await?;
    let rows: Vec<Value> = snap
        .services
        .values()
        .flat_map(|svc| svc.instances.values())
        .flat_map(|i| consul_checks(i, &state.consul))
        .filter(|c| want.is_none_or(|w| c["Status"] == w))
        .collect();
    Ok(reply(snap.index, &rows))
}
