//! `/v1/agent/…`: registration, checks and maintenance through the one agent
//! the registry pretends to be.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use roster_api::Health;
use serde_json::{Map, Value, json};

use super::decode::{normalize, registration};
use super::view::{agent_service, checks as consul_checks};
use super::{ConsulError, check_dc, reply};
use crate::acl::{Need, Principal};
use crate::catalog::{CheckSource, Command};
use crate::http::AppState;
use crate::http::extract::{PeerIp, QueryPairs};
use crate::model::{InstanceId, InstanceSpec, ServiceName, validate_reason};

fn parse_body(body: &[u8]) -> Result<Value, ConsulError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map(normalize)
        .map_err(|e| ConsulError::bad_request(format!("Request decode failed: {e}")))
}

pub(super) async fn agent_self(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    check_dc(&state, &query)?;
    let node = &state.consul;
    let body = json!({
        "Config": {
            "Datacenter": node.datacenter,
            "PrimaryDatacenter": node.datacenter,
            "NodeName": node.name,
            "NodeID": node.id,
            "Server": true,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
            "Product": "roster",
        },
        "Member": {
            "Name": node.name,
            "Addr": node.address,
            "Port": 8301,
            "Tags": { "dc": node.datacenter, "role": "consul", "id": node.id },
            "Status": 1,
        },
        "Meta": {},
    });
    Ok(reply(state.registry.snapshot().index, &body))
}

pub(super) async fn services(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    check_dc(&state, &query)?;
    let snap = state.registry.snapshot();
    let map: Map<String, Value> = snap
        .services
        .values()
        .flat_map(|svc| svc.instances.values())
        .map(|inst| (inst.id.to_string(), agent_service(inst, &state.consul)))
        .collect();
    Ok(reply(snap.index, &map))
}

pub(super) async fn checks(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    check_dc(&state, &query)?;
    let snap = state.registry.snapshot();
    let mut map = Map::new();
    for inst in snap
        .services
        .values()
        .flat_map(|svc| svc.instances.values())
    {
        for check in consul_checks(inst, &state.consul) {
            let id = check["CheckID"].as_str().unwrap_or_default().to_owned();
            map.insert(id, check);
        }
    }
    Ok(reply(snap.index, &map))
}

pub(super) async fn register(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    PeerIp(peer): PeerIp,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ConsulError> {
    let body = body.map_err(body_error)?;
    let reg = registration(parse_body(&body)?)
        .map_err(|e| ConsulError::bad_request(format!("Request decode failed: {e}")))?;
    let service = ServiceName::parse(&reg.name)
        .map_err(|e| ConsulError::bad_request(format!("Invalid service name: {}", e.detail)))?;
    let id = InstanceId::parse(&reg.id)
        .map_err(|e| ConsulError::bad_request(format!("Invalid service ID: {}", e.detail)))?;
    may_write(&principal, &service)?;
    let spec = InstanceSpec::from_request(reg.request, peer, &state.limits)?;
    let out = state
        .registry
        .write(Command::Register { service, id, spec })
        .await?;
    Ok(reply(out.index, &Value::Null).map_empty())
}

pub(super) async fn deregister(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, ConsulError> {
    let inst = state.registry.instance_by_id(&id).ok_or_else(|| {
        ConsulError::not_found(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        ))
    })?;
    let service = ServiceName::parse(&inst.service)?;
    may_write(&principal, &service)?;
    let out = state
        .registry
        .write(Command::Deregister {
            service,
            id: InstanceId::parse(&inst.id)?,
        })
        .await?;
    Ok(reply(out.index, &Value::Null).map_empty())
}

pub(super) async fn maintenance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    // Go's strconv.ParseBool, as Consul reads it (py-consul sends "True").
    let enable = match query.all("enable").last() {
        None => return Err(ConsulError::bad_request("Missing value for enable")),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(other) => {
            return Err(ConsulError::bad_request(format!(
                "Invalid value for enable: {other:?}"
            )));
        }
    };
    let inst = state
        .registry
        .instance_by_id(&id)
        .ok_or_else(|| ConsulError::not_found(format!("Unknown service ID {id:?}")))?;
    let reason = query.all("reason").last().map(str::to_owned);
    let reason = validate_reason(reason)?;
    let out = state
        .registry
        .write(Command::SetMaintenance {
            service: ServiceName::parse(&inst.service)?,
            id: InstanceId::parse(&inst.id)?,
            reason: enable.then_some(reason),
        })
        .await?;
    Ok(reply(out.index, &Value::Null).map_empty())
}

/// `PUT /v1/agent/check/{pass|warn|fail}/{check_id}?note=…`.
pub(super) async fn verdict(
    state: State<AppState>,
    principal: Extension<Arc<Principal>>,
    Path((verdict, check)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Response, ConsulError> {
    let status = match verdict.as_str() {
        "pass" => Health::Passing,
        "warn" => Health::Warning,
        "fail" => Health::Critical,
        other => {
            return Err(ConsulError::not_found(format!(
                "Unknown check action {other:?}: use pass, warn, fail or update"
            )));
        }
    };
    let note = query.all("note").last().unwrap_or("").to_owned();
    report(state, principal, Path(check), status, note).await
}

/// `PUT /v1/agent/check/update/{check_id}` with `{"Status": …, "Output": …}`.
pub(super) async fn update(
    state: State<AppState>,
    principal: Extension<Arc<Principal>>,
    check: Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ConsulError> {
    let body = body.map_err(body_error)?;
    let Value::Object(map) = parse_body(&body)? else {
        return Err(ConsulError::bad_request(
            "Request decode failed: expected an object",
        ));
    };
    let status = match map.get("status").and_then(Value::as_str) {
        Some("passing") => Health::Passing,
        Some("warning") => Health::Warning,
        Some("critical") => Health::Critical,
        other => {
            return Err(ConsulError::bad_request(format!(
                "Invalid check status: {:?}",
                other.unwrap_or("")
            )));
        }
    };
    let output = map
        .get("output")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    report(state, principal, check, status, output).await
}

async fn report(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(check): Path<String>,
    status: Health,
    output: String,
) -> Result<Response, ConsulError> {
    if output.len() > crate::checks::MAX_OUTPUT {
        return Err(ConsulError::bad_request(format!(
            "Output is at most {} bytes",
            crate::checks::MAX_OUTPUT
        )));
    }
    let owners = state.registry.find_ttl_check(&check);
    let (service, id) = match owners.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ConsulError::not_found(format!(
                "Unknown check ID {check:?}. Ensure that the check ID is passed, not the check name."
            )));
        }
        _ => {
            return Err(ConsulError::bad_request(format!(
                "Check ID {check:?} belongs to {} instances; give checks unique ids to update them through the Consul API, or use the native API",
                owners.len()
            )));
        }
    };
    let service = ServiceName::parse(&service)?;
    may_write(&principal, &service)?;
    let out = state
        .registry
        .write(Command::SetCheck {
            service,
            id: InstanceId::parse(&id)?,
            check,
            status,
            output,
            source: CheckSource::Report,
        })
        .await?;
    Ok(reply(out.index, &Value::Null).map_empty())
}

/// A body that could not be read: too large (413, as the native API) or broken.
fn body_error(e: axum::extract::rejection::BytesRejection) -> ConsulError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ConsulError(
            e.status(),
            format!(
                "Request body too large: at most {} bytes",
                crate::http::BODY_LIMIT
            ),
        )
    } else {
        ConsulError::bad_request(format!("Request decode failed: {e}"))
    }
}

/// Checks a write the ACL gate could not judge from the path alone.
fn may_write(principal: &Principal, service: &ServiceName) -> Result<(), ConsulError> {
    if principal.allows(&Need::Write(service.to_string())) {
        Ok(())
    } else {
        Err(ConsulError(
            axum::http::StatusCode::FORBIDDEN,
            format!(
                "Permission denied: token {:?} may not write service {:?}",
                principal.name,
                service.as_str()
            ),
        ))
    }
}

/// Consul answers writes with an empty 200 body.
trait MapEmpty {
    fn map_empty(self) -> Response;
}

impl MapEmpty for Response {
    fn map_empty(self) -> Response {
        let (mut parts, _) = self.into_parts();
        parts.headers.remove(axum::http::header::CONTENT_TYPE);
        Response::from_parts(parts, axum::body::Body::empty())
    }
}
