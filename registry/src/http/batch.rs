//! `POST /v1/batch`: registrations, deregistrations, heartbeats and
//! maintenance changes of up to [`MAX_BATCH_OPS`] instances in one request,
//! applied as one catalog command ([`Command::Batch`]): one index, one store
//! write, one Raft entry, all or nothing.
//!
//! Every operation goes through the same checks as its single-instance
//! endpoint (names, [`InstanceSpec::from_request`] with the server's limits,
//! the maintenance reason), then through the token, then the catalog checks
//! the whole batch before it applies any of it. A refusal at any stage names
//! every refused operation by its position and field.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Json, body::Bytes};
use roster_api::{
    BatchMaintenance, BatchOp, BatchRegister, BatchRequest, BatchResponse, BatchResult,
    InstanceRef, ItemProblem, MAX_BATCH_OPS, RegisterRequest,
};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{PeerIp, from_value, parse_json};
use super::{ApiError, AppState, with_index};
use crate::acl::{Need, Principal};
use crate::catalog::{Command, Snapshot};
use crate::model::{InstanceId, InstanceSpec, Limits, ServiceName, validate_reason};

/// Largest batch body: room for a thousand ordinary registrations, and small
/// enough that a batch, as one Raft entry, stays far below the peers' limit.
pub(in crate::http) const BATCH_BODY_LIMIT: usize = 1 << 20;

/// A batch whose operations are read one by one, to find which are wrong.
#[derive(Deserialize)]
struct RawBatch {
    ops: Vec<Value>,
}

/// What an operation was, to say what it did.
#[derive(Clone, Copy)]
enum Kind {
    Register,
    Deregister,
    Heartbeat,
    Maintenance,
}

/// One validated operation.
struct Item {
    kind: Kind,
    service: ServiceName,
    id: InstanceId,
    cmd: Command,
}

pub(super) async fn batch(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    PeerIp(peer): PeerIp,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(BATCH_BODY_LIMIT)
        } else {
            ApiError::malformed(rej.body_text())
        }
    })?;
    let ops = decode(&body)?;
    let items = validate(ops, peer, &state.limits)?;
    authorize(&principal, &items)?;
    let targets: Vec<(Kind, ServiceName, InstanceId)> = items
        .iter()
        .map(|i| (i.kind, i.service.clone(), i.id.clone()))
        .collect();
    let cmd = Command::Batch {
        items: items.into_iter().map(|i| i.cmd).collect(),
    };
    let out = state.registry.write(cmd).await?;
    // A batch of registrations that each created its instance says so
    // without a search of the state per item (they showed in a batch's
    // profile): only registrations, as many new instances as items.
    let all_new = usize::try_from(out.created).is_ok_and(|n| n == targets.len())
        && targets
            .iter()
            .all(|(kind, ..)| matches!(kind, Kind::Register));
    let results = if all_new {
        vec![BatchResult::Created; targets.len()]
    } else {
        let snap = state.registry.snapshot();
        targets
            .iter()
            .map(|(kind, service, id)| result(&snap, *kind, service, id, out.changed, out.index))
            .collect()
    };
    Ok(with_index(
        out.index,
        Json(BatchResponse {
            index: out.index,
            results,
        }),
    ))
}

/// An operation read in one pass: serde reads a tagged enum ([`BatchOp`])
/// by buffering each item first, which was a tenth of a batch's CPU time in
/// a profile; this flat form reads it directly.
#[derive(Deserialize)]
struct FlatOp {
    op: String,
    service: String,
    id: String,
    #[serde(default)]
    instance: Option<RegisterRequest>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct FlatBatch {
    ops: Vec<FlatOp>,
}

impl FlatOp {
    /// The operation, if it is a complete one (`None` sends the body to the
    /// slow path, which names what is wrong).
    fn into_op(self) -> Option<BatchOp> {
        let FlatOp {
            op,
            service,
            id,
            instance,
            enabled,
            reason,
        } = self;
        Some(match op.as_str() {
            "register" => BatchOp::Register(BatchRegister {
                service,
                id,
                instance: instance?,
            }),
            "deregister" => BatchOp::Deregister(InstanceRef { service, id }),
            "heartbeat" => BatchOp::Heartbeat(InstanceRef { service, id }),
            "maintenance" => BatchOp::Maintenance(BatchMaintenance {
                service,
                id,
                enabled: enabled?,
                reason,
            }),
            _ => return None,
        })
    }
}

/// The operations of the body. Read whole first (the common case); only a
/// body that does not read is read again operation by operation, so that
/// the answer names every wrong one.
fn decode(body: &[u8]) -> Result<Vec<BatchOp>, ApiError> {
    if let Ok(flat) = parse_json::<FlatBatch>(body)
        && let Some(ops) = flat
            .ops
            .into_iter()
            .map(FlatOp::into_op)
            .collect::<Option<Vec<_>>>()
    {
        count(ops.len())?;
        return Ok(ops);
    }
    let whole = match parse_json::<BatchRequest>(body) {
        Ok(req) => {
            count(req.ops.len())?;
            return Ok(req.ops);
        }
        Err(e) => e,
    };
    let raw: RawBatch = parse_json(body)?;
    count(raw.ops.len())?;
    let errors: Vec<ItemProblem> = raw
        .ops
        .into_iter()
        .enumerate()
        .filter_map(|(i, op)| decode_op(op).err().map(|e| e.into_item(i)))
        .collect();
    if errors.is_empty() {
        return Err(whole);
    }
    Err(ApiError::batch(StatusCode::BAD_REQUEST, errors))
}

fn count(n: usize) -> Result<(), ApiError> {
    match n {
        0 => Err(ApiError::invalid(
            "ops",
            "a batch needs at least one operation",
        )),
        n if n > MAX_BATCH_OPS => Err(ApiError::invalid(
            "ops",
            format!("a batch holds at most {MAX_BATCH_OPS} operations, got {n}; split it"),
        )),
        _ => Ok(()),
    }
}

/// One operation, by its `op`.
fn decode_op(op: Value) -> Result<BatchOp, ApiError> {
    if !op.is_object() {
        return Err(ApiError::invalid(
            "",
            "each operation must be a JSON object",
        ));
    }
    let kind = match op.get("op") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "op",
                "op is required: register, deregister, heartbeat or maintenance",
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::invalid(
                "op",
                format!("expected a string, got {other}"),
            ));
        }
    };
    Ok(match kind.as_str() {
        "register" => BatchOp::Register(from_value(op)?),
        "deregister" => BatchOp::Deregister(from_value(op)?),
        "heartbeat" => BatchOp::Heartbeat(from_value(op)?),
        "maintenance" => BatchOp::Maintenance(from_value(op)?),
        other => {
            return Err(ApiError::invalid(
                "op",
                format!(
                    "unknown op {other:?}: expected register, deregister, heartbeat or maintenance"
                ),
            ));
        }
    })
}

/// Every operation checked as its own endpoint checks it.
fn validate(
    ops: Vec<BatchOp>,
    peer: Option<std::net::IpAddr>,
    limits: &Limits,
) -> Result<Vec<Item>, ApiError> {
    let mut items = Vec::with_capacity(ops.len());
    let mut errors = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        match item(op, peer, limits) {
            Ok(item) => items.push(item),
            Err(e) => errors.push(e.into_item(i)),
        }
    }
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(ApiError::batch(StatusCode::BAD_REQUEST, errors))
    }
}

fn item(op: BatchOp, peer: Option<std::net::IpAddr>, limits: &Limits) -> Result<Item, ApiError> {
    let service = ServiceName::parse(op.service())?;
    let id = InstanceId::parse(op.id())?;
    let (kind, cmd) = match op {
        BatchOp::Register(r) => {
            let spec = InstanceSpec::from_request(r.instance, peer, limits)
                .map_err(|e| ApiError::invalid(format!("instance.{}", e.field), e.detail))?;
            (
                Kind::Register,
                Command::Register {
                    service: service.clone(),
                    id: id.clone(),
                    spec,
                },
            )
        }
        BatchOp::Deregister(_) => (
            Kind::Deregister,
            Command::Deregister {
                service: service.clone(),
                id: id.clone(),
            },
        ),
        BatchOp::Heartbeat(_) => (
            Kind::Heartbeat,
            Command::Heartbeat {
                service: service.clone(),
                id: id.clone(),
            },
        ),
        BatchOp::Maintenance(m) => {
            let reason = validate_reason(m.reason)?;
            (
                Kind::Maintenance,
                Command::SetMaintenance {
                    service: service.clone(),
                    id: id.clone(),
                    reason: m.enabled.then_some(reason),
                },
            )
        }
    };
    Ok(Item {
        kind,
        service,
        id,
        cmd,
    })
}

/// The token must allow every operation, on its decoded, validated service
/// name: writes of the service, and the admin permission for maintenance (as
/// the single-instance endpoints require).
fn authorize(principal: &Principal, items: &[Item]) -> Result<(), ApiError> {
    let errors: Vec<ItemProblem> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let need = match item.kind {
                Kind::Maintenance => Need::Admin,
                _ => Need::Write(item.service.as_str().to_owned()),
            };
            // The words only for a refusal: formatting them for every
            // allowed item showed in a batch's profile.
            let what = || match item.kind {
                Kind::Maintenance => "administer the registry".to_owned(),
                _ => format!("write service {:?}", item.service.as_str()),
            };
            (!principal.allows(&need)).then(|| ItemProblem {
                index: i,
                status: StatusCode::FORBIDDEN.as_u16(),
                detail: format!("token {:?} may not {}", principal.name, what()),
                field: Some(format!("ops[{i}].service")),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::batch(StatusCode::FORBIDDEN, errors))
    }
}

/// What an operation of the applied batch did, read from the state after it.
fn result(
    snap: &Snapshot,
    kind: Kind,
    service: &ServiceName,
    id: &InstanceId,
    changed: bool,
    index: u64,
) -> BatchResult {
    let inst = snap.instance(service.as_str(), id.as_str());
    let stamped = changed && inst.is_some_and(|i| i.modify_index == index);
    match kind {
        Kind::Register if changed && inst.is_some_and(|i| i.create_index == index) => {
            BatchResult::Created
        }
        // Registered, then removed by a later change: it was written.
        Kind::Register | Kind::Maintenance if stamped || inst.is_none() => BatchResult::Updated,
        Kind::Register | Kind::Maintenance => BatchResult::Unchanged,
        Kind::Deregister => BatchResult::Removed,
        Kind::Heartbeat => BatchResult::Renewed,
    }
}
