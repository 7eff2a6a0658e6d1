//! `/v1/services…` handlers.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use roster_api::{
    CheckUpdate, Health, MaintenanceRequest, RegisterRequest, ServiceInstances, ServiceList,
    ServiceSummary,
};

use super::extract::parse_json;
use super::extract::{JsonBody, PeerIp, QueryPairs};
use super::failover;
use super::federation::Forwarded;
use super::watch::{Blocking, wait_for_list, wait_for_service};
use super::{ApiError, AppState, instance_json, with_index};
use crate::catalog::{CheckSource, Command, HealthCounts};
use crate::checks::{LEASE_CHECK, validate_check_id};
use crate::model::{InstanceId, InstanceSpec, ServiceName, validate_reason};
use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue};

/// The instance, or the 404 that says it is not registered.
fn registered<'a>(
    snap: &'a crate::catalog::Snapshot,
    service: &ServiceName,
    id: &InstanceId,
) -> Result<&'a std::sync::Arc<crate::catalog::Instance>, ApiError> {
    snap.instance(service.as_str(), id.as_str()).ok_or_else(|| {
        ApiError::from(crate::catalog::CatalogError::NotFound {
            service: service.to_string(),
            id: id.to_string(),
        })
    })
}

/// The instance a write just changed, to answer with. It can be missing for
/// two reasons, and the answer says which, since the write itself is done: a
/// cluster follower that has not applied the leader's entry yet (503; retrying
/// the write is safe, every write is idempotent), or a later change that
/// removed it again (409).
fn written<'a>(
    snap: &'a crate::catalog::Snapshot,
    service: &ServiceName,
    id: &InstanceId,
    index: u64,
) -> Result<&'a std::sync::Arc<crate::catalog::Instance>, ApiError> {
    if let Some(inst) = snap.instance(service.as_str(), id.as_str()) {
        return Ok(inst);
    }
    if snap.index < index {
        return Err(ApiError::unavailable(format!(
            "the leader applied this write at index {index}, but this node is at {} and \
             has not caught up (is it cut off from the leader?); the write is done, and \
             sending it again is safe",
            snap.index
        ))
        .retry_after(1));
    }
    Err(ApiError::conflict(format!(
        "the write was applied at index {index}, and a later change removed instance \
         {id:?} of {service:?} again (catalog index {})",
        snap.index
    )))
}

fn names(service: &str, id: &str) -> Result<(ServiceName, InstanceId), ApiError> {
    Ok((ServiceName::parse(service)?, InstanceId::parse(id)?))
}

pub(super) async fn register(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    PeerIp(peer): PeerIp,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Response, ApiError> {
    register_with(state, &service, &id, peer, req).await
}

/// A registration from its parts: the route's handler, and what
/// `super::direct` calls for the same requests without the router.
pub(super) async fn register_with(
    state: AppState,
    service: &str,
    id: &str,
    peer: Option<std::net::IpAddr>,
    req: RegisterRequest,
) -> Result<Response, ApiError> {
    let (service, id) = names(service, id)?;
    let spec = InstanceSpec::from_request(req, peer, &state.limits)?;
    let out = state
        .registry
        .write(Command::Register {
            service: service.clone(),
            id: id.clone(),
            spec,
        })
        .await?;
    let inst = state
        .registry
        .with_current(|now| written(now, &service, &id, out.index).cloned())?;
    let created = out.changed && inst.create_index == out.index;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_index(out.index, instance_json(status, &inst)))
}

pub(super) async fn deregister(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, id) = names(&service, &id)?;
    let out = state
        .registry
        .write(Command::Deregister { service, id })
        .await?;
    Ok(with_index(out.index, StatusCode::NO_CONTENT))
}

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    heartbeat_with(&state, &service, &id).await
}

/// A heartbeat from its parts: the route's handler, and what
/// `super::direct` calls for the same requests without the router.
pub(super) async fn heartbeat_with(
    state: &AppState,
    service: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let (service, id) = names(service, id)?;
    let out = state.registry.heartbeat(&service, &id).await?;
    Ok(with_index(out.index, StatusCode::NO_CONTENT))
}

pub(super) async fn maintenance(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    JsonBody(req): JsonBody<MaintenanceRequest>,
) -> Result<Response, ApiError> {
    let (service, id) = names(&service, &id)?;
    let reason = validate_reason(req.reason)?;
    let out = state
        .registry
        .write(Command::SetMaintenance {
            service: service.clone(),
            id: id.clone(),
            reason: req.enabled.then_some(reason),
        })
        .await?;
    let inst = state
        .registry
        .with_current(|now| written(now, &service, &id, out.index).cloned())?;
    Ok(with_index(out.index, instance_json(StatusCode::OK, &inst)))
}

pub(super) async fn get_instance(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, id) = names(&service, &id)?;
    let snap = state.registry.snapshot();
    let inst = registered(&snap, &service, &id)?;
    Ok(with_index(
        inst.modify_index,
        instance_json(StatusCode::OK, inst),
    ))
}

pub(super) async fn list_services(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    if let Some(q) = Blocking::parse(&query)? {
        wait_for_list(&state, q).await;
    }
    let snap = state.registry.snapshot();
    let services = snap
        .services
        .iter()
        .map(|(name, svc)| {
            let mut counts = HealthCounts::default();
            let mut tags = BTreeSet::new();
            for inst in svc.instances.values() {
                counts.add(inst.health());
                tags.extend(inst.spec.tags.iter().cloned());
            }
            ServiceSummary {
                name: name.to_string(),
                instances: svc.instances.len(),
                passing: counts.passing,
                warning: counts.warning,
                critical: counts.critical,
                tags: tags.into_iter().collect(),
                modify_index: svc.modify_index,
            }
        })
        .collect();
    let index = snap.index;
    Ok(with_index(index, Json(ServiceList { index, services })))
}

pub(super) async fn list_instances(
    State(state): State<AppState>,
    Path(service): Path<String>,
    query: QueryPairs,
    forwarded: Option<axum::Extension<Forwarded>>,
) -> Result<Response, ApiError> {
    list(state, &service, query, forwarded.as_deref()).await
}

/// `GET /v1/services/{service}` from its parts: the route's handler, and
/// what `super::direct` calls for the same requests without the router.
pub(super) async fn list(
    state: AppState,
    service: &str,
    query: QueryPairs,
    forwarded: Option<&Forwarded>,
) -> Result<Response, ApiError> {
    let service = ServiceName::parse(service)?;
    let all = query.flag("all")?.unwrap_or(false) || !query.flag("healthy")?.unwrap_or(true);
    let tags: Vec<&str> = query.all("tag").collect();
    // Only healthy-only answers fail over.
    let failover = if all {
        None
    } else {
        failover::failover_for(&state, service.as_str(), forwarded)
    };
    // The waits and the remote answer are boxed: most reads need neither,
    // and inline they would make every read's future as large as theirs, a
    // size copied each time the layers above create and box it.
    if let Some(q) = Blocking::parse(&query)? {
        match &failover {
            Some(f) => Box::pin(failover::wait(&state, &service, q, f)).await,
            None => Box::pin(wait_for_service(&state, &service, q)).await,
        }
    }
    if let Some(f) = &failover
        && let (index, Some(remote)) =
            Box::pin(failover::current(&state, service.as_str(), f)).await
    {
        f.served(&remote.datacenter);
        let instances = remote
            .instances
            .iter()
            .filter(|i| tags.iter().all(|t| i.tags.iter().any(|x| x == t)))
            .cloned()
            .collect();
        let mut resp = with_index(
            index,
            Json(ServiceInstances {
                service: service.to_string(),
                index,
                instances,
                panic: false,
                datacenter: Some(remote.datacenter.clone()),
            }),
        );
        failover::mark(&mut resp, &remote.datacenter);
        return Ok(resp);
    }
    let snap = state.registry.snapshot();
    // An unknown service is an empty one: watchers of a service that has no
    // instances yet get an answer, not an error.
    let index = snap.service_index(service.as_str());
    // Counting the healthy instances costs a walk of the service; only a
    // service with a panic threshold needs it.
    let panic = !all
        && state.panic.threshold(service.as_str()) > 0.0
        && snap.services.get(service.as_str()).is_some_and(|svc| {
            let healthy = svc
                .instances
                .values()
                .filter(|i| i.health() != Health::Critical)
                .count();
            state
                .panic
                .in_panic(service.as_str(), healthy, svc.instances.len())
        });
    let all = all || panic;
    let cacheable = !panic && tags.is_empty() && snap.services.contains_key(service.as_str());
    if cacheable && let Some(cached) = state.bodies.get(service.as_str(), all, index) {
        let mut resp = json_bytes(cached.body);
        const INDEX: HeaderName = HeaderName::from_static(roster_api::INDEX_HEADER);
        resp.headers_mut().insert(INDEX, cached.index);
        return Ok(resp);
    }
    let instances = match snap.services.get(service.as_str()) {
        Some(svc) => svc
            .instances
            .values()
            .filter(|i| all || i.health() != Health::Critical)
            .filter(|i| tags.iter().all(|t| i.spec.tags.iter().any(|x| x == t)))
            .map(|i| i.to_api())
            .collect(),
        None => Vec::new(),
    };
    if cacheable {
        let body = ServiceInstances {
            service: service.to_string(),
            index,
            instances,
            panic: false,
            datacenter: None,
        };
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("instances serialize"));
        state
            .bodies
            .put(&snap, service.as_arc(), all, index, bytes.clone());
        return Ok(with_index(index, json_bytes(bytes)));
    }
    let mut resp = with_index(
        index,
        Json(ServiceInstances {
            service: service.to_string(),
            index,
            instances,
            panic,
            datacenter: None,
        }),
    );
    if panic {
        resp.headers_mut().insert(
            HeaderName::from_static(PANIC_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// Header set on instance lists answered in panic mode.
const PANIC_HEADER: &str = "x-roster-panic";

pub(super) async fn get_checks(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, id) = names(&service, &id)?;
    let snap = state.registry.snapshot();
    let inst = registered(&snap, &service, &id)?;
    Ok(with_index(inst.modify_index, Json(inst.checks_api())))
}

/// `PUT …/checks/{check_id}/{pass|warn|fail}`: the instance reports a TTL check.
pub(super) async fn update_check(
    State(state): State<AppState>,
    Path((service, id, check, verdict)): Path<(String, String, String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(super::BODY_LIMIT)
        } else {
            ApiError::malformed(rej.body_text())
        }
    })?;
    let (service, id) = names(&service, &id)?;
    validate_check_id(&check).map_err(|e| ApiError::invalid("check_id", e.detail))?;
    let status = match verdict.as_str() {
        "pass" => Health::Passing,
        "warn" => Health::Warning,
        "fail" => Health::Critical,
        other => {
            return Err(ApiError::invalid(
                "status",
                format!("expected pass, warn or fail, got {other:?}"),
            ));
        }
    };
    // The body is optional: an empty one means no output.
    let update: CheckUpdate = if body.iter().all(u8::is_ascii_whitespace) {
        CheckUpdate::default()
    } else {
        parse_json(&body)?
    };
    let output = update.output.unwrap_or_default();
    if output.len() > crate::checks::MAX_OUTPUT {
        return Err(ApiError::invalid(
            "output",
            format!("output is at most {} bytes", crate::checks::MAX_OUTPUT),
        ));
    }
    if check == LEASE_CHECK {
        // The lease takes only good news: a failing instance should say so with a
        // ttl check of its own, or go into maintenance.
        if status != Health::Passing {
            return Err(ApiError::invalid(
                "check_id",
                "the lease check \"ttl\" only takes pass (a heartbeat); report failures with a ttl check of your own or use maintenance",
            ));
        }
        let out = state.registry.heartbeat(&service, &id).await?;
        return Ok(with_index(out.index, StatusCode::NO_CONTENT));
    }
    let out = state
        .registry
        .write(Command::SetCheck {
            service,
            id,
            check,
            status,
            output,
            source: CheckSource::Report,
        })
        .await?;
    Ok(with_index(out.index, StatusCode::NO_CONTENT))
}

/// A response with a ready JSON body.
fn json_bytes(body: Bytes) -> Response {
    super::json_body(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, CatalogLimits, Command};
    use crate::model::{InstanceSpec, Limits};

    #[test]
    fn a_done_write_whose_instance_is_missing_says_why() {
        let now = tokio::time::Instant::now();
        let mut catalog = Catalog::new(now, CatalogLimits::default());
        let (service, id) = names("web", "web-1").unwrap();
        let req = roster_api::RegisterRequest {
            address: Some("10.0.0.1".into()),
            port: 80,
            ..Default::default()
        };
        let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
        let out = catalog
            .apply(
                Command::Register {
                    service: service.clone(),
                    id: id.clone(),
                    spec,
                },
                now,
            )
            .unwrap();
        assert!(written(catalog.snapshot(), &service, &id, out.index).is_ok());
        // A follower behind the leader's index: 503, and it says the write is done.
        let (other, _) = names("api", "api-1").unwrap();
        let lag = written(catalog.snapshot(), &other, &id, out.index + 5).unwrap_err();
        assert_eq!(lag.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            lag.detail().contains("the write is done"),
            "{}",
            lag.detail()
        );
        // Removed by a later change: 409.
        catalog
            .apply(
                Command::Deregister {
                    service: service.clone(),
                    id: id.clone(),
                },
                now,
            )
            .unwrap();
        let gone = written(catalog.snapshot(), &service, &id, out.index).unwrap_err();
        assert_eq!(gone.status(), StatusCode::CONFLICT);
    }
}
