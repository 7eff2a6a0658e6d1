//! [`Command::Batch`]: many instance writes as one change, all or nothing.
//!
//! The catalog's bookkeeping (records, timers, leases) is not persistent, so
//! a batch is not applied and then rolled back: every item is checked first,
//! against the catalog as the items before it would leave it, and only a
//! batch whose every item would succeed is applied. The only ways the write
//! commands fail are known in advance (an instance that is not there, an id
//! another service owns, a capacity limit, a condition), which is what makes
//! that check complete.

use super::{Catalog, CatalogError, Command, FastMap};
use crate::model::{InstanceId, ServiceName};

/// Most items in one [`Command::Batch`].
pub const MAX_BATCH_ITEMS: usize = 1000;

/// One failing item of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemError {
    /// Its position in the batch, from 0.
    pub index: usize,
    /// Why it would fail.
    pub error: CatalogError,
}

/// The text of [`CatalogError::Batch`]: every failing item, then the verdict.
pub(super) fn batch_text(errors: &[ItemError]) -> String {
    let items: Vec<String> = errors
        .iter()
        .map(|e| format!("item {}: {}", e.index, e.error))
        .collect();
    format!("{}; nothing of the batch was applied", items.join("; "))
}

/// The text of [`CatalogError::Unexpected`] after the instance's name.
pub(super) fn expect_text(expected: Option<u64>, actual: Option<u64>) -> String {
    let is = match actual {
        None => "is not registered".to_owned(),
        Some(u64::MAX) => "is written earlier in the same batch".to_owned(),
        Some(n) => format!("has modify index {n}"),
    };
    match expected {
        None => format!("{is}, but must be registered"),
        Some(0) => format!("{is}, but must not be registered"),
        Some(n) => format!("{is}, but must have modify index {n}"),
    }
}

/// The owner of an id as the items checked so far leave it: the service,
/// or `None` once removed, and whether an item of the batch wrote it.
#[derive(Clone, Copy)]
struct Seen<'a> {
    owner: Option<&'a str>,
    written: bool,
}

impl Catalog {
    /// Checks every item, then applies them all with index `next`.
    pub(super) fn apply_batch(
        &mut self,
        items: Vec<Command>,
        now: u64,
        next: u64,
    ) -> Result<bool, CatalogError> {
        self.check_batch(&items)?;
        let mut changed = false;
        for (index, item) in items.into_iter().enumerate() {
            let applied = match item {
                Command::Register { service, id, spec } => {
                    self.register(service, id, spec, now, next)
                }
                Command::Deregister { service, id } => match self.find(&service, &id) {
                    Ok(_) => {
                        self.remove(id.as_arc(), next);
                        Ok(true)
                    }
                    // Checked: the instance is not registered at all.
                    Err(_) => Ok(false),
                },
                Command::Heartbeat { service, id } => self
                    .find(&service, &id)
                    .map(|_| self.renew(id.as_arc(), now, next)),
                Command::SetMaintenance {
                    service,
                    id,
                    reason,
                } => self.set_maintenance(&service, &id, reason, next),
                Command::Expect { .. } => Ok(false),
                other => Err(CatalogError::NotInBatch { kind: kind(&other) }),
            };
            match applied {
                Ok(c) => changed |= c,
                // `check_batch` covers every way an item fails: this is a bug.
                // Going on keeps every node of a cluster in step (they all
                // get here alike), where stopping would leave half a batch.
                Err(error) => {
                    debug_assert!(false, "item {index} failed after its check: {error}");
                    tracing::error!(index, %error, "a batch item failed after its check; the rest is applied");
                }
            }
        }
        Ok(changed)
    }

    /// Every item's verdict, each seeing the items before it applied.
    fn check_batch(&self, items: &[Command]) -> Result<(), CatalogError> {
        if items.len() > MAX_BATCH_ITEMS {
            return Err(CatalogError::Full {
                what: "operations in a batch",
                limit: MAX_BATCH_ITEMS,
            });
        }
        let mut seen: FastMap<&str, Seen<'_>> =
            FastMap::with_capacity_and_hasher(items.len(), Default::default());
        let mut room = Room::default();
        let mut errors = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let verdict = match item {
                Command::Register { service, id, .. } => {
                    let now = self.seen(&seen, id);
                    match now.owner {
                        Some(owner) if owner != service.as_str() => Err(CatalogError::Conflict {
                            id: id.to_string(),
                            existing: owner.to_owned(),
                        }),
                        Some(_) => Ok(()),
                        None => self.take_room(service.as_str(), &mut room),
                    }
                    .map(|()| {
                        seen.insert(
                            id.as_str(),
                            Seen {
                                owner: Some(service.as_str()),
                                written: true,
                            },
                        );
                    })
                }
                Command::Deregister { service, id } => match self.seen(&seen, id).owner {
                    None => Ok(()),
                    Some(owner) if owner != service.as_str() => Err(not_found(service, id)),
                    Some(_) => {
                        room.tally(self, service.as_str()).removed += 1;
                        room.removed += 1;
                        seen.insert(
                            id.as_str(),
                            Seen {
                                owner: None,
                                written: true,
                            },
                        );
                        Ok(())
                    }
                },
                Command::Heartbeat { service, id }
                | Command::SetMaintenance { service, id, .. } => {
                    if self.seen(&seen, id).owner == Some(service.as_str()) {
                        Ok(())
                    } else {
                        Err(not_found(service, id))
                    }
                }
                Command::Expect { service, id, index } => {
                    let now = self.seen(&seen, id);
                    let here = now.owner == Some(service.as_str());
                    let actual = match (here, now.written) {
                        (false, _) => None,
                        (true, true) => Some(u64::MAX),
                        (true, false) => self
                            .state
                            .instance(service.as_str(), id.as_str())
                            .map(|i| i.modify_index),
                    };
                    let holds = match index {
                        None => here,
                        Some(0) => !here,
                        Some(n) => actual == Some(*n),
                    };
                    if holds {
                        Ok(())
                    } else {
                        Err(CatalogError::Unexpected {
                            service: service.to_string(),
                            id: id.to_string(),
                            expected: *index,
                            actual,
                        })
                    }
                }
                other => Err(CatalogError::NotInBatch { kind: kind(other) }),
            };
            if let Err(error) = verdict {
                errors.push(ItemError { index, error });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CatalogError::Batch { errors })
        }
    }

    /// Who owns `id` once the items checked so far are applied.
    fn seen<'a>(&'a self, seen: &FastMap<&'a str, Seen<'a>>, id: &'a InstanceId) -> Seen<'a> {
        seen.get(id.as_str()).copied().unwrap_or_else(|| Seen {
            owner: self.records.get(id.as_str()).map(|r| &*r.service),
            written: false,
        })
    }

    /// Whether one more instance fits in `service` and in the registry, after
    /// the batch's earlier additions and removals; if so, it is counted.
    fn take_room<'a>(&self, service: &'a str, room: &mut Room<'a>) -> Result<(), CatalogError> {
        let total = (self.records.len() + room.added).saturating_sub(room.removed);
        let tally = room.tally(self, service);
        if (tally.before + tally.added).saturating_sub(tally.removed)
            >= self.limits.max_instances_per_service
        {
            return Err(CatalogError::Full {
                what: "instances per service",
                limit: self.limits.max_instances_per_service,
            });
        }
        if total >= self.limits.max_instances {
            return Err(CatalogError::Full {
                what: "instances in the registry",
                limit: self.limits.max_instances,
            });
        }
        tally.added += 1;
        room.added += 1;
        Ok(())
    }

    /// [`Command::SetMaintenance`].
    pub(super) fn set_maintenance(
        &mut self,
        service: &ServiceName,
        id: &InstanceId,
        reason: Option<String>,
        next: u64,
    ) -> Result<bool, CatalogError> {
        let current = self.find(service, id)?;
        if current.maintenance == reason {
            return Ok(false);
        }
        let mut inst = (*current).clone();
        inst.maintenance = reason;
        self.put_known(inst, next, Some(current), false);
        Ok(true)
    }

    /// [`Command::Expect`] alone.
    pub(super) fn check_expect(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        index: Option<u64>,
    ) -> Result<(), CatalogError> {
        let item = Command::Expect {
            service: service.clone(),
            id: id.clone(),
            index,
        };
        self.check_batch(std::slice::from_ref(&item))
            .map_err(|e| match e {
                CatalogError::Batch { mut errors } if errors.len() == 1 => errors.remove(0).error,
                e => e,
            })
    }
}

/// The instances a batch's items checked so far add and remove, per service
/// and in all (kept as running totals: summing the per-service counts for
/// every item made a batch over many services quadratic).
#[derive(Default)]
struct Room<'a> {
    services: FastMap<&'a str, Tally>,
    added: usize,
    removed: usize,
}

/// One service's count before the batch, and what the batch's items
/// checked so far add to it and take from it.
#[derive(Clone, Copy, Default)]
struct Tally {
    before: usize,
    added: usize,
    removed: usize,
}

impl<'a> Room<'a> {
    /// The tally of `service`, its count before the batch looked up once
    /// (not for every item: a search of the ordered service map).
    fn tally(&mut self, catalog: &Catalog, service: &'a str) -> &mut Tally {
        self.services.entry(service).or_insert_with(|| Tally {
            before: catalog
                .state
                .services
                .get(service)
                .map_or(0, |s| s.instances.len()),
            ..Tally::default()
        })
    }
}

fn not_found(service: &ServiceName, id: &InstanceId) -> CatalogError {
    CatalogError::NotFound {
        service: service.to_string(),
        id: id.to_string(),
    }
}

/// A command's name, for [`CatalogError::NotInBatch`].
fn kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::Register { .. } => "register",
        Command::Deregister { .. } => "deregister",
        Command::Heartbeat { .. } => "heartbeat",
        Command::SetMaintenance { .. } => "maintenance",
        Command::Expect { .. } => "expect",
        Command::SetCheck { .. } => "a check result",
        Command::Batch { .. } => "a batch",
        Command::Tick => "a tick",
        Command::ExpireLease { .. } | Command::ExpireCheck { .. } | Command::Reap { .. } => {
            "an expiry"
        }
        Command::Restore { .. } => "a restore",
    }
}
