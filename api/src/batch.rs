//! Batch writes: `POST /v1/batch` registers, deregisters, heartbeats and
//! sets maintenance on many instances in one request, all or nothing.

use serde::{Deserialize, Serialize};

use crate::RegisterRequest;

/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1000;

/// Body of `POST /v1/batch`.
///
/// ```
/// use roster_api::{BatchOp, BatchRequest, RegisterRequest};
/// let batch = BatchRequest {
///     ops: vec![
///         BatchOp::register("web", "web-1", RegisterRequest { port: 8080, ..Default::default() }),
///         BatchOp::deregister("web", "web-0"),
///     ],
/// };
/// let json = serde_json::to_value(&batch).unwrap();
/// assert_eq!(json["ops"][0]["op"], "register");
/// assert_eq!(json["ops"][0]["instance"]["port"], 8080);
/// assert_eq!(json["ops"][1], serde_json::json!({"op": "deregister", "service": "web", "id": "web-0"}));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The operations, applied in order (1 to [`MAX_BATCH_OPS`]).
    pub ops: Vec<BatchOp>,
}

/// One operation of a batch, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BatchOp {
    /// Register or replace an instance (as `PUT /v1/services/{service}/instances/{id}`).
    Register(BatchRegister),
    /// Remove an instance; one that is not registered is no error, so a
    /// batch sent again after a lost answer does the same.
    Deregister(InstanceRef),
    /// Renew an instance's lease.
    Heartbeat(InstanceRef),
    /// Put an instance in maintenance or take it out (as
    /// `PUT …/maintenance`; needs the admin permission when ACLs are on).
    Maintenance(BatchMaintenance),
}

/// An instance, by service and id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
}

/// `op: register` of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRegister {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// The registration.
    pub instance: RegisterRequest,
}

/// `op: maintenance` of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMaintenance {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// In maintenance (`true`) or not.
    pub enabled: bool,
    /// Why, while in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BatchOp {
    /// A registration.
    pub fn register(service: &str, id: &str, instance: RegisterRequest) -> Self {
        BatchOp::Register(BatchRegister {
            service: service.to_owned(),
            id: id.to_owned(),
            instance,
        })
    }

    /// A deregistration.
    pub fn deregister(service: &str, id: &str) -> Self {
        BatchOp::Deregister(InstanceRef {
            service: service.to_owned(),
            id: id.to_owned(),
        })
    }

    /// A heartbeat.
    pub fn heartbeat(service: &str, id: &str) -> Self {
        BatchOp::Heartbeat(InstanceRef {
            service: service.to_owned(),
            id: id.to_owned(),
        })
    }

    /// Maintenance on (`Some(reason)`) or off (`None`).
    pub fn maintenance(service: &str, id: &str, reason: Option<String>) -> Self {
        BatchOp::Maintenance(BatchMaintenance {
            service: service.to_owned(),
            id: id.to_owned(),
            enabled: reason.is_some(),
            reason,
        })
    }

    /// The service the operation writes.
    pub fn service(&self) -> &str {
        match self {
            BatchOp::Register(r) => &r.service,
            BatchOp::Deregister(r) | BatchOp::Heartbeat(r) => &r.service,
            BatchOp::Maintenance(m) => &m.service,
        }
    }

    /// The instance the operation writes.
    pub fn id(&self) -> &str {
        match self {
            BatchOp::Register(r) => &r.id,
            BatchOp::Deregister(r) | BatchOp::Heartbeat(r) => &r.id,
            BatchOp::Maintenance(m) => &m.id,
        }
    }
}

/// Answer of `POST /v1/batch` when it was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// Catalog index of the batch (also in `X-Roster-Index`): everything it
    /// changed carries this modify index.
    pub index: u64,
    /// What each operation did, in the order of the request.
    #[serde(default)]
    pub results: Vec<BatchResult>,
}

/// What one operation of an applied batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchResult {
    /// A new instance was registered.
    Created,
    /// The instance changed (a new registration, or maintenance on or off).
    Updated,
    /// Nothing changed (the same registration again renews its lease).
    Unchanged,
    /// The instance is not registered any more (or was not before).
    Removed,
    /// The lease was renewed.
    Renewed,
    /// A result this client does not know (a newer registry).
    #[serde(other)]
    Other,
}

/// One refused operation of a batch, in [`crate::Problem::errors`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemProblem {
    /// Position of the operation in the batch, from 0.
    pub index: usize,
    /// The status the operation alone would have got (400, 403, 404, 409).
    #[serde(default)]
    pub status: u16,
    /// What is wrong with it.
    #[serde(default)]
    pub detail: String,
    /// The offending field, from the batch's root (`ops[3].instance.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
