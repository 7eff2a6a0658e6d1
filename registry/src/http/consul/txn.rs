//! `PUT /v1/txn`: Consul's transactions, for the operations on services
//! (`Service` with the verbs `set`, `cas`, `get`, `delete`, `delete-cas`),
//! the way consul-k8s and other registrars write many instances at once.
//!
//! A transaction becomes one [`Command::Batch`]: the conditions of `cas`,
//! `delete-cas` and `get` are [`Command::Expect`] items checked together with
//! the writes, so the whole transaction applies or nothing does, as in
//! Consul. Roster has one node: a service operation's `Node` is accepted
//! and not checked. `KV`, `Node` and `Check` operations are refused by name.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::decode::{normalize, registration};
use super::view::agent_service;
use super::{ConsulError, check_dc, reply};
use crate::acl::{Need, Principal};
use crate::catalog::{CatalogError, Command, MAX_BATCH_ITEMS};
use crate::http::AppState;
use crate::http::extract::{PeerIp, QueryPairs};
use crate::model::{InstanceId, InstanceSpec, ServiceName};
use crate::registry::WriteError;

/// One failed operation: its position and why, as Consul's `Errors` say.
struct Failed {
    op: usize,
    what: String,
}

/// What one transaction operation asks, once decoded.
struct Planned {
    /// The catalog items it stands for (a condition and a write, or one).
    items: Vec<Command>,
    /// The instance to answer with in `Results` (`set`, `cas`, `get`).
    result: Option<(ServiceName, InstanceId)>,
    /// Whether it writes (a transaction of reads only writes nothing).
    writes: bool,
}

pub(in crate::http) async fn txn(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    PeerIp(peer): PeerIp,
    query: QueryPairs,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ConsulError> {
    check_dc(&state, &query)?;
    let body = body.map_err(|e| ConsulError(e.status(), format!("Failed to read body: {e}")))?;
    let ops = match serde_json::from_slice::<Value>(&body).map(normalize) {
        Ok(Value::Array(ops)) => ops,
        Ok(_) => {
            return Err(ConsulError::bad_request(
                "Failed to parse body: expected a JSON array of operations",
            ));
        }
        Err(e) => {
            return Err(ConsulError::bad_request(format!(
                "Failed to parse body: {e}"
            )));
        }
    };
    if ops.len() > MAX_BATCH_ITEMS {
        return Err(ConsulError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_BATCH_ITEMS})",
                ops.len()
            ),
        ));
    }
    let mut plans = Vec::with_capacity(ops.len());
    let mut failed = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        match plan(&state, &principal, peer, op) {
            Ok(p) => plans.push(p),
            Err(what) => failed.push(Failed { op: i, what }),
        }
    }
    if !failed.is_empty() {
        return Ok(rolled_back(failed));
    }
    // Which operation each catalog item came from, to name it in `Errors`.
    let mut op_of_item = Vec::new();
    let mut items = Vec::new();
    let mut results = Vec::new();
    let writes = plans.iter().any(|p| p.writes);
    for (i, p) in plans.into_iter().enumerate() {
        op_of_item.extend(std::iter::repeat_n(i, p.items.len()));
        items.extend(p.items);
        results.extend(p.result);
    }
    let index = if writes {
        match state.registry.write(Command::Batch { items }).await {
            Ok(out) => out.index,
            Err(WriteError::Catalog(CatalogError::Batch { errors })) => {
                let mut failed: Vec<Failed> = errors
                    .into_iter()
                    .map(|e| Failed {
                        op: op_of_item.get(e.index).copied().unwrap_or(e.index),
                        what: e.error.to_string(),
                    })
                    .collect();
                // A `cas` is two items: its operation is named once.
                failed.dedup_by_key(|f| f.op);
                return Ok(rolled_back(failed));
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        // Reads only: answered from this node's catalog, as Consul's
        // read-only fast path does, checked as the items would be.
        let snap = state.registry.snapshot();
        let failed: Vec<Failed> = items
            .iter()
            .zip(&op_of_item)
            .filter_map(|(item, op)| match item {
                Command::Expect { service, id, .. }
                    if snap.instance(service.as_str(), id.as_str()).is_none() =>
                {
                    Some(Failed {
                        op: *op,
                        what: CatalogError::NotFound {
                            service: service.to_string(),
                            id: id.to_string(),
                        }
                        .to_string(),
                    })
                }
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            return Ok(rolled_back(failed));
        }
        snap.index
    };
    let snap = state.registry.snapshot();
    let results: Vec<Value> = results
        .iter()
        .filter_map(|(service, id)| snap.instance(service.as_str(), id.as_str()))
        .map(|inst| json!({ "Service": agent_service(inst, &state.consul) }))
        .collect();
    Ok(reply(index, &json!({ "Results": results, "Errors": null })))
}

/// Consul's answer to a transaction that was rolled back: 409 and `Errors`.
fn rolled_back(failed: Vec<Failed>) -> Response {
    let errors: Vec<Value> = failed
        .into_iter()
        .map(|f| json!({ "OpIndex": f.op, "What": f.what }))
        .collect();
    let body = serde_json::to_vec(&json!({ "Results": null, "Errors": errors }))
        .expect("JSON values serialize");
    let mut resp = (StatusCode::CONFLICT, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Decodes one operation (keys normalized) and checks the token for it.
fn plan(
    state: &AppState,
    principal: &Principal,
    peer: Option<std::net::IpAddr>,
    op: Value,
) -> Result<Planned, String> {
    let Value::Object(op) = op else {
        return Err("each operation must be a JSON object".into());
    };
    if op.len() != 1 {
        return Err("each operation must hold exactly one of KV, Node, Service or Check".into());
    }
    let (kind, body) = op.into_iter().next().expect("one entry");
    let Value::Object(body) = body else {
        return Err(format!("{kind}: expected an object"));
    };
    match kind.as_str() {
        "service" => {}
        "kv" => return Err("KV operations are not supported: roster is a service registry and has no key/value store".into()),
        "node" => return Err("Node operations are not supported: roster has one node".into()),
        "check" => return Err("Check operations are not supported: register checks with the service (PUT /v1/agent/service/register)".into()),
        other => return Err(format!("unknown operation type {other:?}")),
    }
    let verb = match body.get("verb") {
        Some(Value::String(v)) => v.clone(),
        _ => return Err("Service: Verb is required".into()),
    };
    let service = match body.get("service") {
        Some(Value::Object(s)) => s.clone(),
        _ => return Err("Service: the Service object is required".into()),
    };
    match verb.as_str() {
        "set" | "cas" => set(state, principal, peer, service, verb == "cas"),
        "get" | "delete" | "delete-cas" => by_id(state, principal, &service, &verb),
        other => Err(format!(
            "unknown Service verb {other:?} (roster takes set, cas, get, delete and delete-cas)"
        )),
    }
}

/// `set` and `cas`: a registration, for `cas` only at its `ModifyIndex`
/// (0: only if not registered yet).
fn set(
    state: &AppState,
    principal: &Principal,
    peer: Option<std::net::IpAddr>,
    mut service: Map<String, Value>,
    cas: bool,
) -> Result<Planned, String> {
    let index = modify_index(&service)?;
    // The catalog's Service object names the service `Service`; the agent's
    // registration, which decodes the rest alike, calls it `Name`.
    if let Some(name) = service.remove("service") {
        service.entry("name").or_insert(name);
    }
    let reg = registration(Value::Object(service)).map_err(|e| format!("Service.{e}"))?;
    let name =
        ServiceName::parse(&reg.name).map_err(|e| format!("Invalid service name: {}", e.detail))?;
    let id = InstanceId::parse(&reg.id).map_err(|e| format!("Invalid service ID: {}", e.detail))?;
    may(principal, &Need::Write(name.to_string()), "write", &name)?;
    let spec = InstanceSpec::from_request(reg.request, peer, &state.limits)
        .map_err(|e| format!("Invalid service: {e}"))?;
    let mut items = Vec::with_capacity(2);
    if cas {
        items.push(Command::Expect {
            service: name.clone(),
            id: id.clone(),
            index: Some(index.unwrap_or(0)),
        });
    }
    items.push(Command::Register {
        service: name.clone(),
        id: id.clone(),
        spec,
    });
    Ok(Planned {
        items,
        result: Some((name, id)),
        writes: true,
    })
}

/// `get`, `delete` and `delete-cas`: by the instance's `ID`, its service
/// named by `Service` or found by the id.
fn by_id(
    state: &AppState,
    principal: &Principal,
    service: &Map<String, Value>,
    verb: &str,
) -> Result<Planned, String> {
    let id = match service.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err("Service: ID is required".into()),
    };
    let id = InstanceId::parse(&id).map_err(|e| format!("Invalid service ID: {}", e.detail))?;
    let named = match service.get("service") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let found = named.or_else(|| {
        state
            .registry
            .instance_by_id(id.as_str())
            .map(|inst| inst.service.to_string())
    });
    let Some(name) = found else {
        // Consul deletes what is not there without complaint.
        return match verb {
            "delete" => Ok(Planned {
                items: Vec::new(),
                result: None,
                writes: false,
            }),
            _ => Err(format!("service {:?} does not exist", id.as_str())),
        };
    };
    let name =
        ServiceName::parse(&name).map_err(|e| format!("Invalid service name: {}", e.detail))?;
    let expect = |index| Command::Expect {
        service: name.clone(),
        id: id.clone(),
        index,
    };
    Ok(match verb {
        "get" => {
            may(principal, &Need::Read, "read", &name)?;
            Planned {
                items: vec![expect(None)],
                result: Some((name, id)),
                writes: false,
            }
        }
        _ => {
            may(principal, &Need::Write(name.to_string()), "write", &name)?;
            let mut items = Vec::with_capacity(2);
            if verb == "delete-cas" {
                items.push(expect(Some(modify_index(service)?.unwrap_or(0))));
            }
            items.push(Command::Deregister {
                service: name.clone(),
                id: id.clone(),
            });
            Planned {
                items,
                result: None,
                writes: true,
            }
        }
    })
}

fn modify_index(service: &Map<String, Value>) -> Result<Option<u64>, String> {
    match service.get("modifyindex") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!("Service.ModifyIndex: expected a non-negative integer, got {v}")
        }),
    }
}

/// Consul's words for an operation the token may not do.
fn may(
    principal: &Principal,
    need: &Need,
    what: &str,
    service: &ServiceName,
) -> Result<(), String> {
    if principal.allows(need) {
        Ok(())
    } else {
        Err(format!(
            "Permission denied: token {:?} may not {what} service {:?}",
            principal.name,
            service.as_str()
        ))
    }
}
