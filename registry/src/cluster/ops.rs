//! What travels in the log and between nodes: catalog commands in a wire form,
//! and their results. Made of the registry's own row types
//! ([`crate::rows`]), never of the HTTP API's, and pinned by the golden files
//! (`golden.rs`): a node of another version must read them.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::catalog::{CheckSource, Command, Instance, MAX_BATCH_ITEMS, Outcome};
use crate::model::{FieldError, InstanceId, InstanceSpec, Limits, ServiceName};
use crate::rows::{HealthRow, InstanceRow};

pub use super::wire_error::{ErrorWire, ItemErrorWire};

/// One log entry's payload: the writes the leader's proposer took together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The writes, in order.
    pub ops: Vec<Op>,
}

/// A catalog command as it is replicated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
// Fields named `service`, `id`, `check` and `output` are what they say; a
// doc line repeating the name would add nothing.
#[allow(missing_docs)]
pub enum Op {
    /// [`Command::Register`]; only the registration fields of the row count.
    Register {
        /// The registration.
        instance: InstanceRow,
    },
    /// [`Command::Deregister`].
    Deregister { service: String, id: String },
    /// [`Command::Heartbeat`] (slow path: the lease had expired).
    Heartbeat { service: String, id: String },
    /// [`Command::SetMaintenance`].
    SetMaintenance {
        service: String,
        id: String,
        /// Reason, `None` to leave maintenance.
        reason: Option<String>,
    },
    /// [`Command::SetCheck`].
    SetCheck {
        service: String,
        id: String,
        check: String,
        /// New status.
        status: HealthRow,
        output: String,
        /// Reported by the instance (TTL check) rather than probed.
        report: bool,
    },
    /// [`Command::ExpireLease`].
    ExpireLease {
        service: String,
        id: String,
        /// Registration the decision was about.
        create_index: u64,
    },
    /// [`Command::ExpireCheck`].
    ExpireCheck {
        service: String,
        id: String,
        check: String,
        output: String,
    },
    /// [`Command::Restore`] of a snapshot file (`PUT /v1/snapshot`).
    Restore {
        /// Index of the snapshot.
        index: u64,
        /// Its names index.
        names_index: u64,
        /// Its instances.
        instances: Vec<InstanceRow>,
        /// Grace every lease gets, in milliseconds.
        grace_ms: u64,
    },
    /// [`Command::Batch`]: its items, each a register, deregister,
    /// heartbeat, set_maintenance or expect op, applied as one change.
    Batch {
        /// The items, in order.
        ops: Vec<Op>,
    },
    /// [`Command::Expect`].
    Expect {
        service: String,
        id: String,
        /// `None`: registered; `Some(0)`: not registered; `Some(n)`: at
        /// modify index n.
        index: Option<u64>,
    },
    /// [`Command::Reap`].
    Reap {
        service: String,
        id: String,
        /// Registration the decision was about.
        create_index: u64,
        /// Check that ran out, `None` for the lease.
        check: Option<String>,
    },
}

/// Why an op (from the log, or forwarded by another node) makes no command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// A service name, instance id or check definition is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

fn names(service: &str, id: &str) -> Result<(ServiceName, InstanceId), OpError> {
    Ok((ServiceName::parse(service)?, InstanceId::parse(id)?))
}

/// Validates a registration as it travels between nodes with the rules and
/// limits of the HTTP API: a forwarded write gets no more trust than the
/// request it came from.
fn validate_row(row: &InstanceRow, limits: &Limits) -> Result<(), FieldError> {
    ServiceName::parse(&row.service)?;
    InstanceId::parse(&row.id)?;
    InstanceSpec::from_request(row.to_request(), None, limits).map(|_| ())
}

/// A forwarded batch: at most [`MAX_BATCH_ITEMS`] items, each one of the
/// writes a batch may hold and valid as its own forwarded op would be.
fn validate_batch(ops: &[Op], limits: &Limits) -> Result<(), FieldError> {
    if ops.len() > MAX_BATCH_ITEMS {
        return Err(FieldError::new(
            "ops",
            format!("a batch holds at most {MAX_BATCH_ITEMS} operations"),
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Register { .. }
            | Op::Deregister { .. }
            | Op::Heartbeat { .. }
            | Op::SetMaintenance { .. }
            | Op::Expect { .. } => op
                .validate_forwarded(limits)
                .map_err(|e| FieldError::new(format!("ops[{i}].{}", e.field), e.detail))?,
            _ => {
                return Err(FieldError::new(
                    format!("ops[{i}].op"),
                    "a batch holds only register, deregister, heartbeat, set_maintenance and expect",
                ));
            }
        }
    }
    Ok(())
}

impl Op {
    /// Checks an op a follower forwarded to this node (the leader): only the
    /// writes a follower takes from its clients are accepted (expiry and
    /// removal are the leader's own decisions), each validated as the HTTP
    /// API would validate it.
    pub fn validate_forwarded(&self, limits: &Limits) -> Result<(), FieldError> {
        match self {
            Op::Register { instance } => validate_row(instance, limits),
            Op::Restore { instances, .. } => {
                for (i, row) in instances.iter().enumerate() {
                    validate_row(row, limits).map_err(|e| {
                        FieldError::new(format!("instances[{i}].{}", e.field), e.detail)
                    })?;
                }
                Ok(())
            }
            Op::SetMaintenance { reason, .. } => {
                crate::model::validate_reason(reason.clone()).map(|_| ())
            }
            Op::Batch { ops } => validate_batch(ops, limits),
            Op::Deregister { .. }
            | Op::Heartbeat { .. }
            | Op::SetCheck { .. }
            | Op::Expect { .. } => Ok(()),
            Op::ExpireLease { .. } | Op::ExpireCheck { .. } | Op::Reap { .. } => Err(
                FieldError::new("op", "expiry is decided by the leader, never forwarded"),
            ),
        }
    }

    /// The wire form of a command; `None` for the local-only ones (tick, restore).
    pub fn from_command(cmd: &Command) -> Option<Op> {
        let s = |n: &ServiceName| n.as_str().to_owned();
        let i = |n: &InstanceId| n.as_str().to_owned();
        Some(match cmd {
            Command::Register { service, id, spec } => {
                let inst = Instance {
                    id: id.as_arc().clone(),
                    service: service.as_arc().clone(),
                    spec: spec.clone(),
                    lease: None,
                    maintenance: None,
                    checks: spec
                        .checks
                        .iter()
                        .map(crate::checks::CheckState::initial)
                        .collect(),
                    create_index: 0,
                    modify_index: 0,
                };
                Op::Register {
                    instance: InstanceRow::from_instance(&inst),
                }
            }
            Command::Deregister { service, id } => Op::Deregister {
                service: s(service),
                id: i(id),
            },
            Command::Heartbeat { service, id } => Op::Heartbeat {
                service: s(service),
                id: i(id),
            },
            Command::SetMaintenance {
                service,
                id,
                reason,
            } => Op::SetMaintenance {
                service: s(service),
                id: i(id),
                reason: reason.clone(),
            },
            Command::SetCheck {
                service,
                id,
                check,
                status,
                output,
                source,
            } => Op::SetCheck {
                service: s(service),
                id: i(id),
                check: check.clone(),
                status: (*status).into(),
                output: output.clone(),
                report: *source == CheckSource::Report,
            },
            Command::ExpireLease {
                service,
                id,
                create_index,
            } => Op::ExpireLease {
                service: s(service),
                id: i(id),
                create_index: *create_index,
            },
            Command::ExpireCheck {
                service,
                id,
                check,
                output,
            } => Op::ExpireCheck {
                service: s(service),
                id: i(id),
                check: check.clone(),
                output: output.clone(),
            },
            Command::Reap {
                service,
                id,
                create_index,
                check,
            } => Op::Reap {
                service: s(service),
                id: i(id),
                create_index: *create_index,
                check: check.clone(),
            },
            Command::Restore {
                index,
                names_index,
                instances,
                grace,
                stamp: true,
            } => Op::Restore {
                index: *index,
                names_index: *names_index,
                instances: instances
                    .iter()
                    .map(|i| InstanceRow::from_instance(i))
                    .collect(),
                grace_ms: grace.as_millis() as u64,
            },
            Command::Batch { items } => Op::Batch {
                ops: items.iter().map(Op::from_command).collect::<Option<_>>()?,
            },
            Command::Expect { service, id, index } => Op::Expect {
                service: s(service),
                id: i(id),
                index: *index,
            },
            // Local only: the lease clock, and loading a node's own state.
            Command::Tick | Command::Restore { stamp: false, .. } => return None,
        })
    }

    /// Back to a catalog command. Names are validated again: an op may come
    /// from another node.
    pub fn into_command(self) -> Result<Command, OpError> {
        Ok(match self {
            Op::Register { instance } => {
                let (service, id) = names(&instance.service, &instance.id)?;
                let inst = instance.into_instance()?;
                Command::Register {
                    service,
                    id,
                    spec: inst.spec,
                }
            }
            Op::Deregister { service, id } => {
                let (service, id) = names(&service, &id)?;
                Command::Deregister { service, id }
            }
            Op::Heartbeat { service, id } => {
                let (service, id) = names(&service, &id)?;
                Command::Heartbeat { service, id }
            }
            Op::SetMaintenance {
                service,
                id,
                reason,
            } => {
                let (service, id) = names(&service, &id)?;
                Command::SetMaintenance {
                    service,
                    id,
                    reason,
                }
            }
            Op::SetCheck {
                service,
                id,
                check,
                status,
                output,
                report,
            } => {
                let (service, id) = names(&service, &id)?;
                Command::SetCheck {
                    service,
                    id,
                    check,
                    status: status.into(),
                    output,
                    source: if report {
                        CheckSource::Report
                    } else {
                        CheckSource::Probe
                    },
                }
            }
            Op::ExpireLease {
                service,
                id,
                create_index,
            } => {
                let (service, id) = names(&service, &id)?;
                Command::ExpireLease {
                    service,
                    id,
                    create_index,
                }
            }
            Op::ExpireCheck {
                service,
                id,
                check,
                output,
            } => {
                let (service, id) = names(&service, &id)?;
                Command::ExpireCheck {
                    service,
                    id,
                    check,
                    output,
                }
            }
            Op::Restore {
                index,
                names_index,
                instances,
                grace_ms,
            } => Command::Restore {
                index,
                names_index,
                instances: instances
                    .into_iter()
                    .map(|row| row.into_instance().map(Arc::new))
                    .collect::<Result<_, _>>()?,
                grace: std::time::Duration::from_millis(grace_ms),
                stamp: true,
            },
            Op::Batch { ops } => Command::Batch {
                items: ops
                    .into_iter()
                    .map(Op::into_command)
                    .collect::<Result<_, _>>()?,
            },
            Op::Expect { service, id, index } => {
                let (service, id) = names(&service, &id)?;
                Command::Expect { service, id, index }
            }
            Op::Reap {
                service,
                id,
                create_index,
                check,
            } => {
                let (service, id) = names(&service, &id)?;
                Command::Reap {
                    service,
                    id,
                    create_index,
                    check,
                }
            }
        })
    }
}

/// The result of one op.
pub type Applied = Result<OutcomeWire, ErrorWire>;

/// What a command did ([`Outcome`]), as it travels between nodes: the answer
/// to a forwarded write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "struct Outcome")]
pub struct OutcomeWire {
    /// Global index after the command.
    pub index: u64,
    /// Whether anything changed.
    pub changed: bool,
    /// Leases expired.
    pub expired: u32,
    /// Instances removed for being critical too long.
    pub reaped: u32,
    /// Leases overdue but held by self-preservation.
    pub held: u32,
}

impl From<Outcome> for OutcomeWire {
    fn from(o: Outcome) -> Self {
        let Outcome {
            index,
            changed,
            expired,
            reaped,
            held,
            created: _,
        } = o;
        OutcomeWire {
            index,
            changed,
            expired,
            reaped,
            held,
        }
    }
}

impl From<OutcomeWire> for Outcome {
    fn from(o: OutcomeWire) -> Self {
        let OutcomeWire {
            index,
            changed,
            expired,
            reaped,
            held,
        } = o;
        Outcome {
            index,
            changed,
            expired,
            reaped,
            held,
            created: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogError;
    use crate::http::ApiError;
    use crate::registry::{Unavailable, WriteError};
    use axum::http::StatusCode;

    #[test]
    fn catalog_errors_cross_the_wire_unchanged() {
        let errors = [
            CatalogError::NotFound {
                service: "web".into(),
                id: "a".into(),
            },
            CatalogError::Conflict {
                id: "a".into(),
                existing: "db".into(),
            },
            CatalogError::CheckNotFound {
                id: "a".into(),
                check: "c".into(),
            },
            CatalogError::WrongCheckKind("only TTL checks take reports".into()),
            CatalogError::Full {
                what: "instances per service",
                limit: 3,
            },
        ];
        for e in errors {
            let text = e.to_string();
            let wire = ErrorWire::from(&WriteError::Catalog(e));
            let json = serde_json::to_string(&wire).unwrap();
            let back: ErrorWire = serde_json::from_str(&json).unwrap();
            match WriteError::from(back) {
                WriteError::Catalog(c) => assert_eq!(c.to_string(), text),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reasons_of_unavailability_travel_as_their_text_and_stay_503() {
        let sent = WriteError::from(Unavailable::NoQuorum {
            timeout: std::time::Duration::from_secs(5),
        });
        let wire = ErrorWire::from(&sent);
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            serde_json::json!({"kind": "unavailable", "message": "no quorum confirmed the leader within 5s"})
        );
        let got = WriteError::from(wire);
        assert!(
            matches!(&got, WriteError::Unavailable(Unavailable::Remote { message }) if message.contains("no quorum")),
            "{got:?}"
        );
        let api = ApiError::from(got);
        assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.retry_after_secs(), Some(1));
    }

    #[test]
    fn removing_a_stranger_is_a_404_by_variant() {
        let api = ApiError::from(crate::cluster::ClusterError::NotAMember { id: 7 });
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
        assert_eq!(api.detail(), "node 7 is not a member");
        let api = ApiError::from(crate::cluster::ClusterError::NotLeader);
        assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
