//! Why a write failed, as it travels between nodes: the answer to a
//! forwarded write and the result of each op in a log entry.

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogError, ItemError};
use crate::registry::{Unavailable, WriteError};

/// Why a write failed, as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Fields named `service`, `id`, `check` and `output` are what they say; a
// doc line repeating the name would add nothing.
#[allow(missing_docs)]
pub enum ErrorWire {
    /// [`CatalogError::NotFound`].
    NotFound { service: String, id: String },
    /// [`CatalogError::Conflict`].
    Conflict { id: String, existing: String },
    /// [`CatalogError::CheckNotFound`].
    CheckNotFound { id: String, check: String },
    /// [`CatalogError::WrongCheckKind`].
    WrongCheckKind { message: String },
    /// [`CatalogError::Full`].
    Full {
        /// Which limit.
        what: String,
        /// Its value.
        limit: usize,
    },
    /// [`CatalogError::IndexTooHigh`].
    IndexTooHigh {
        /// The index asked for.
        index: u64,
        /// The bound.
        max: u64,
    },
    /// [`CatalogError::IndexExhausted`].
    IndexExhausted,
    /// [`CatalogError::Unexpected`].
    Unexpected {
        service: String,
        id: String,
        /// The condition.
        expected: Option<u64>,
        /// The instance's modify index, if registered.
        actual: Option<u64>,
    },
    /// [`CatalogError::Batch`].
    Batch {
        /// The failing items.
        errors: Vec<ItemErrorWire>,
    },
    /// [`CatalogError::NotInBatch`].
    NotInBatch {
        /// What it was.
        what: String,
    },
    /// An op that does not decode (a node of another version).
    Invalid { message: String },
    /// [`WriteError::Unavailable`].
    Unavailable { message: String },
}

impl From<&CatalogError> for ErrorWire {
    fn from(e: &CatalogError) -> Self {
        match e {
            CatalogError::NotFound { service, id } => ErrorWire::NotFound {
                service: service.clone(),
                id: id.clone(),
            },
            CatalogError::Conflict { id, existing } => ErrorWire::Conflict {
                id: id.clone(),
                existing: existing.clone(),
            },
            CatalogError::CheckNotFound { id, check } => ErrorWire::CheckNotFound {
                id: id.clone(),
                check: check.clone(),
            },
            CatalogError::WrongCheckKind(message) => ErrorWire::WrongCheckKind {
                message: message.clone(),
            },
            CatalogError::Full { what, limit } => ErrorWire::Full {
                what: (*what).to_owned(),
                limit: *limit,
            },
            CatalogError::IndexTooHigh { index, max } => ErrorWire::IndexTooHigh {
                index: *index,
                max: *max,
            },
            CatalogError::IndexExhausted => ErrorWire::IndexExhausted,
            CatalogError::Unexpected {
                service,
                id,
                expected,
                actual,
            } => ErrorWire::Unexpected {
                service: service.clone(),
                id: id.clone(),
                expected: *expected,
                actual: *actual,
            },
            CatalogError::Batch { errors } => ErrorWire::Batch {
                errors: errors
                    .iter()
                    .map(|e| ItemErrorWire {
                        index: e.index,
                        error: (&e.error).into(),
                    })
                    .collect(),
            },
            CatalogError::NotInBatch { kind } => ErrorWire::NotInBatch {
                what: (*kind).to_owned(),
            },
        }
    }
}

impl From<&WriteError> for ErrorWire {
    fn from(e: &WriteError) -> Self {
        match e {
            WriteError::Catalog(c) => c.into(),
            WriteError::Store(e) => ErrorWire::Unavailable {
                message: e.to_string(),
            },
            WriteError::Unavailable(e) => ErrorWire::Unavailable {
                message: e.to_string(),
            },
        }
    }
}

impl From<ErrorWire> for WriteError {
    fn from(e: ErrorWire) -> Self {
        match CatalogError::try_from(e) {
            Ok(c) => WriteError::Catalog(c),
            // Another node's reasons arrive as text: kept as they are.
            Err(message) => Unavailable::Remote { message }.into(),
        }
    }
}

impl TryFrom<ErrorWire> for CatalogError {
    /// The text of a reason that is not the catalog's.
    type Error = String;

    fn try_from(e: ErrorWire) -> Result<Self, String> {
        Ok(match e {
            ErrorWire::NotFound { service, id } => CatalogError::NotFound { service, id },
            ErrorWire::Conflict { id, existing } => CatalogError::Conflict { id, existing },
            ErrorWire::CheckNotFound { id, check } => CatalogError::CheckNotFound { id, check },
            ErrorWire::WrongCheckKind { message } => CatalogError::WrongCheckKind(message),
            ErrorWire::Full { what, limit } => CatalogError::Full {
                // The catalog names its limits with static strings; keep the
                // known ones, and do not leak memory for others.
                what: match what.as_str() {
                    "instances per service" => "instances per service",
                    "instances in the registry" => "instances in the registry",
                    "operations in a batch" => "operations in a batch",
                    _ => "capacity",
                },
                limit,
            },
            ErrorWire::IndexTooHigh { index, max } => CatalogError::IndexTooHigh { index, max },
            ErrorWire::IndexExhausted => CatalogError::IndexExhausted,
            ErrorWire::Unexpected {
                service,
                id,
                expected,
                actual,
            } => CatalogError::Unexpected {
                service,
                id,
                expected,
                actual,
            },
            ErrorWire::Batch { errors } => CatalogError::Batch {
                errors: errors
                    .into_iter()
                    .map(|e| {
                        // An item's reason that is not the catalog's (it
                        // never is one) still names the item.
                        let error = CatalogError::try_from(e.error)
                            .unwrap_or_else(CatalogError::WrongCheckKind);
                        ItemError {
                            index: e.index,
                            error,
                        }
                    })
                    .collect(),
            },
            ErrorWire::NotInBatch { what } => CatalogError::NotInBatch {
                kind: match what.as_str() {
                    "register" => "register",
                    "deregister" => "deregister",
                    "heartbeat" => "heartbeat",
                    "maintenance" => "maintenance",
                    "expect" => "expect",
                    "a check result" => "a check result",
                    "a batch" => "a batch",
                    _ => "another command",
                },
            },
            ErrorWire::Invalid { message } | ErrorWire::Unavailable { message } => {
                return Err(message);
            }
        })
    }
}

/// One failing item of a batch ([`ItemError`]), as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemErrorWire {
    /// Its position in the batch.
    pub index: usize,
    /// Why it fails.
    pub error: ErrorWire,
}
