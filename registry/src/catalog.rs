//! The catalog: a state machine driven by [`Command`]s.
//!
//! [`Catalog::apply`] is pure: no I/O, no clock, no randomness; time comes in as an
//! argument. Every command that changes anything bumps the global index exactly
//! once and stamps it as the `modify_index` of what it touched. The state lives in
//! persistent maps ([`imbl`]) so publishing a read snapshot after a write is an
//! O(1) clone: readers never wait for writers.
//!
//! Leases are tracked with one ordered timer set (`BTreeSet<(due, kind, id)>`):
//! each instance has at most one lease timer and one removal timer in it. A
//! heartbeat only moves the lease's atomic deadline; when a lease timer comes due,
//! [`Command::Tick`] either finds the lease renewed and re-arms the timer at the
//! new deadline (once per TTL at most, not once per heartbeat) or expires it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use imbl::OrdMap;
use roster_client::api::{self, Health};
use tokio::time::Instant;

use crate::checks::{CheckState, LEASE_CHECK, Target, truncate_output};
use crate::lease::{Lease, LeaseTable};
use crate::model::{InstanceId, InstanceSpec, ServiceName};

/// A write to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Register or replace an instance. Registering proves the instance alive, so it
    /// also renews its lease.
    Register {
        /// Service.
        service: ServiceName,
        /// Instance id (unique in the registry).
        id: InstanceId,
        /// Validated registration.
        spec: InstanceSpec,
    },
    /// Remove an instance.
    Deregister {
        /// Service.
        service: ServiceName,
        /// Instance id.
        id: InstanceId,
    },
    /// Renew an instance's lease.
    Heartbeat {
        /// Service.
        service: ServiceName,
        /// Instance id.
        id: InstanceId,
    },
    /// Enter (`Some(reason)`) or leave (`None`) maintenance.
    SetMaintenance {
        /// Service.
        service: ServiceName,
        /// Instance id.
        id: InstanceId,
        /// Reason while in maintenance.
        reason: Option<String>,
    },
    /// Record a result of one of an instance's checks.
    SetCheck {
        /// Service.
        service: ServiceName,
        /// Instance id.
        id: InstanceId,
        /// Check id.
        check: String,
        /// New status.
        status: Health,
        /// Output to show with it.
        output: String,
        /// Who reports it: the health checker (active checks only) or the
        /// instance itself (TTL checks only; this also restarts the check's TTL).
        source: CheckSource,
    },
    /// Expire overdue leases and remove instances critical for too long.
    Tick,
    /// Replace the whole catalog (start-up load, snapshot restore). Every lease
    /// gets `grace` on top of its TTL, and nothing is removed during the grace,
    /// so instances have time to heartbeat before anything expires.
    Restore {
        /// Index of the data; the catalog continues at or above it, never below
        /// its current index.
        index: u64,
        /// Index of the last change to the set of names.
        names_index: u64,
        /// The instances.
        instances: Vec<Instance>,
        /// Extra time for every lease.
        grace: Duration,
        /// Stamp every service and instance with the new index, so that watchers
        /// see the restore as a change (runtime restore); otherwise keep the
        /// stored indexes (start-up load).
        stamp: bool,
    },
}

/// Who reports a check result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckSource {
    /// The registry's health checker, for `http`, `tcp` and `grpc` checks.
    Probe,
    /// The instance, for `ttl` checks.
    Report,
}

/// Self-preservation settings: when more than `threshold` of the leased
/// instances expired within `window` or are overdue now, the catalog stops
/// expiring leases (the registry, not the instances, is probably cut off) until
/// the share falls back under the threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelfPreservation {
    /// Share of leased instances, 0–1; 0 turns the guard off.
    pub threshold: f64,
    /// How far back expirations count.
    pub window: Duration,
    /// The guard applies only with at least this many leased instances, so a
    /// small development setup still expires its leases.
    pub min_instances: usize,
}

impl Default for SelfPreservation {
    fn default() -> Self {
        SelfPreservation {
            threshold: 0.15,
            window: Duration::from_secs(60),
            min_instances: 10,
        }
    }
}

/// What a command did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Global index after the command.
    pub index: u64,
    /// Whether anything changed (and the index moved).
    pub changed: bool,
    /// Leases expired by this command.
    pub expired: u32,
    /// Instances removed for being critical too long.
    pub reaped: u32,
    /// Leases overdue but kept alive by self-preservation.
    pub held: u32,
}

/// Why a command was refused. Refused commands change nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// No such instance in that service.
    #[error("instance {id:?} of service {service:?} is not registered")]
    NotFound {
        /// Service.
        service: String,
        /// Instance id.
        id: String,
    },
    /// The id is taken by an instance of another service.
    #[error(
        "instance id {id:?} already belongs to service {existing:?}; ids are unique in the registry"
    )]
    Conflict {
        /// Instance id.
        id: String,
        /// The service that owns it.
        existing: String,
    },
    /// No check with that id on the instance.
    #[error("instance {id:?} has no check {check:?}")]
    CheckNotFound {
        /// Instance id.
        id: String,
        /// Check id.
        check: String,
    },
    /// The check cannot be updated that way.
    #[error("{0}")]
    WrongCheckKind(String),
    /// A capacity limit was reached.
    #[error("{what}: the limit is {limit}")]
    Full {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
}

/// One instance as readers see it. Immutable: changes replace the `Arc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Id.
    pub id: Arc<str>,
    /// Service.
    pub service: Arc<str>,
    /// Registration.
    pub spec: InstanceSpec,
    /// Status of the TTL lease check; `None` without a TTL.
    pub lease: Option<Health>,
    /// Reason, while in maintenance.
    pub maintenance: Option<String>,
    /// State of each of `spec.checks`, in the same order.
    pub checks: Vec<CheckState>,
    /// Index of the first registration.
    pub create_index: u64,
    /// Index of the last change.
    pub modify_index: u64,
}

impl Instance {
    /// Aggregate health: the worst check; maintenance counts as critical.
    pub fn health(&self) -> Health {
        if self.maintenance.is_some() {
            return Health::Critical;
        }
        self.checks
            .iter()
            .map(|c| c.status)
            .fold(self.lease.unwrap_or(Health::Passing), Ord::max)
    }

    /// The wire form of this instance's checks: the lease first, then the rest
    /// in registration order.
    pub fn checks_api(&self) -> Vec<api::Check> {
        let spec = &self.spec;
        let mut out = Vec::with_capacity(spec.checks.len() + 1);
        if let (Some(status), Some(ttl)) = (self.lease, spec.ttl) {
            out.push(api::Check {
                id: LEASE_CHECK.into(),
                kind: api::CheckKind::Ttl,
                status,
                output: if status == Health::Critical {
                    format!(
                        "TTL expired: no heartbeat within {}",
                        api::duration::format(ttl)
                    )
                } else {
                    "lease renewed".into()
                },
                name: Some("lease".into()),
                target: None,
                interval: None,
                timeout: None,
                ttl: Some(ttl),
            });
        }
        for (def, state) in spec.checks.iter().zip(&self.checks) {
            let active = def.is_active();
            out.push(api::Check {
                id: def.id.to_string(),
                kind: def.kind(),
                status: state.status,
                output: state.output.clone(),
                name: def.name.clone(),
                target: def.target_text(),
                interval: active.then_some(def.interval),
                timeout: active.then_some(def.timeout),
                ttl: match def.target {
                    Target::Ttl { ttl } => Some(ttl),
                    _ => None,
                },
            });
        }
        out
    }

    /// The wire form of this instance.
    pub fn to_api(&self) -> api::Instance {
        let spec = &self.spec;
        let checks = self.checks_api();
        api::Instance {
            id: self.id.to_string(),
            service: self.service.to_string(),
            address: spec.address.clone(),
            port: spec.port,
            tags: spec.tags.clone(),
            meta: spec.meta.clone(),
            weights: spec.weights,
            health: self.health(),
            checks,
            maintenance: self.maintenance.as_ref().map(|reason| api::Maintenance {
                reason: reason.clone(),
            }),
            ttl: spec.ttl,
            deregister_critical_after: spec.deregister_critical_after,
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// A service and its instances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Index of the last change to the service.
    pub modify_index: u64,
    /// Instances by id.
    pub instances: OrdMap<Arc<str>, Arc<Instance>>,
}

/// A consistent, cheaply cloned view of the whole catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Global index.
    pub index: u64,
    /// Index of the last change to the set of service names (a service appeared
    /// or disappeared): the index of every service that has no instances.
    pub names_index: u64,
    /// Services by name; a service exists while it has instances.
    pub services: OrdMap<Arc<str>, ServiceState>,
}

impl Snapshot {
    /// Looks up one instance.
    pub fn instance(&self, service: &str, id: &str) -> Option<&Arc<Instance>> {
        self.services.get(service)?.instances.get(id)
    }

    /// Index of a service's data: its last change, or for a service without
    /// instances the last change to the set of names.
    pub fn service_index(&self, service: &str) -> u64 {
        self.services
            .get(service)
            .map_or(self.names_index, |s| s.modify_index)
    }

    /// Total number of instances.
    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Lease,
    Reap,
    /// A TTL check, by its position in the spec.
    Check(u16),
    /// Removal of an instance whose check has been critical for the check's
    /// `deregister_critical_after`.
    CheckReap(u16),
}

#[derive(Debug, Default)]
struct Record {
    service: Arc<str>,
    lease: Option<Arc<Lease>>,
    lease_timer: Option<u64>,
    reap_timer: Option<u64>,
    /// Deadlines of the TTL checks: (position in the spec, due).
    check_timers: Vec<(u16, u64)>,
    /// Removal deadlines of critical checks with `deregister_critical_after`.
    check_reaps: Vec<(u16, u64)>,
    /// The lease is overdue and held by self-preservation.
    held: bool,
}

/// Capacity limits enforced by the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogLimits {
    /// Most instances in one service.
    pub max_instances_per_service: usize,
    /// Most instances in the registry.
    pub max_instances: usize,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            max_instances_per_service: 10_000,
            max_instances: 200_000,
        }
    }
}

/// The catalog state machine.
#[derive(Debug)]
pub struct Catalog {
    epoch: Instant,
    state: Snapshot,
    records: HashMap<Arc<str>, Record>,
    timers: BTreeSet<(u64, Timer, Arc<str>)>,
    leases: Arc<LeaseTable>,
    limits: CatalogLimits,
    touched: Vec<Arc<str>>,
    changed: Vec<Arc<str>>,
    preservation: SelfPreservation,
    /// Instances by the ids of their TTL checks, for APIs that address a check
    /// by its id alone (Consul's).
    ttl_index: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// The time of the command being applied.
    now: u64,
    /// Records with `held` set.
    held: usize,
    /// Times of recent lease expirations, oldest first.
    expirations: std::collections::VecDeque<u64>,
    preserving: bool,
}

impl Catalog {
    /// An empty catalog. `epoch` is the origin of the lease clock; pass the current
    /// time.
    pub fn new(epoch: Instant, limits: CatalogLimits) -> Self {
        Catalog {
            epoch,
            // The empty catalog is at index 1, so no state ever has index 0: a
            // client passing 0 in a blocking query means "I have nothing yet".
            state: Snapshot {
                index: 1,
                names_index: 1,
                services: OrdMap::new(),
            },
            records: HashMap::new(),
            timers: BTreeSet::new(),
            leases: Arc::new(LeaseTable::default()),
            limits,
            touched: Vec::new(),
            changed: Vec::new(),
            preservation: SelfPreservation::default(),
            ttl_index: HashMap::new(),
            now: 0,
            held: 0,
            expirations: std::collections::VecDeque::new(),
            preserving: false,
        }
    }

    /// Changes the self-preservation settings.
    pub fn set_self_preservation(&mut self, settings: SelfPreservation) {
        self.preservation = settings;
    }

    /// Instances that have a TTL check with this id.
    pub fn instances_with_ttl_check(&self, check: &str) -> &[Arc<str>] {
        self.ttl_index.get(check).map_or(&[], Vec::as_slice)
    }

    /// Whether self-preservation is holding overdue leases right now.
    pub fn self_preservation_active(&self) -> bool {
        self.preserving
    }

    /// The lease table, for the heartbeat fast path.
    pub fn leases(&self) -> &Arc<LeaseTable> {
        &self.leases
    }

    /// The current state.
    pub fn snapshot(&self) -> &Snapshot {
        &self.state
    }

    /// Converts an instant to the lease clock (nanoseconds since the epoch).
    pub fn clock(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX >> 1)
    }

    /// When the next timer comes due, if any: the time to run [`Command::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers
            .first()
            .map(|(due, _, _)| self.epoch + Duration::from_nanos(*due))
    }

    /// Services changed by the last [`Catalog::apply`], each once, in name order.
    pub fn touched(&self) -> &[Arc<str>] {
        &self.touched
    }

    /// Instances changed or removed by the last [`Catalog::apply`], each once.
    pub fn changed(&self) -> &[Arc<str>] {
        &self.changed
    }

    /// Looks up an instance by id alone.
    pub fn instance_by_id(&self, id: &str) -> Option<&Arc<Instance>> {
        let rec = self.records.get(id)?;
        self.state.instance(&rec.service, id)
    }

    /// Applies `cmd` at time `now`.
    pub fn apply(&mut self, cmd: Command, now: Instant) -> Result<Outcome, CatalogError> {
        self.touched.clear();
        self.changed.clear();
        let now = self.clock(now);
        self.now = now;
        let next = self.state.index + 1;
        let mut out = Outcome {
            index: self.state.index,
            ..Outcome::default()
        };
        out.changed = match cmd {
            Command::Register { service, id, spec } => {
                self.register(service, id, spec, now, next)?
            }
            Command::Deregister { service, id } => {
                self.find(&service, &id)?;
                self.remove(id.as_arc(), next);
                true
            }
            Command::Heartbeat { service, id } => {
                self.find(&service, &id)?;
                self.renew(id.as_arc(), now, next)
            }
            Command::SetMaintenance {
                service,
                id,
                reason,
            } => {
                let current = self.find(&service, &id)?;
                if current.maintenance == reason {
                    false
                } else {
                    let mut inst = (*current).clone();
                    inst.maintenance = reason;
                    self.put(inst, next);
                    true
                }
            }
            Command::SetCheck {
                service,
                id,
                check,
                status,
                output,
                source,
            } => self.set_check(&service, &id, &check, status, output, source, now, next)?,
            Command::Tick => self.tick(now, next, &mut out),
            Command::Restore {
                index,
                names_index,
                instances,
                grace,
                stamp,
            } => {
                let target = index.max(if stamp { next } else { self.state.index });
                self.restore(target, names_index, instances, now, grace, stamp);
                self.state.index = target;
                out.index = target;
                self.touched.sort_unstable();
                self.touched.dedup();
                out.changed = true;
                return Ok(out);
            }
        };
        if out.changed {
            self.state.index = next;
            out.index = next;
            self.touched.sort_unstable();
            self.touched.dedup();
            self.changed.sort_unstable();
            self.changed.dedup();
        }
        Ok(out)
    }

    fn find(&self, service: &ServiceName, id: &InstanceId) -> Result<Arc<Instance>, CatalogError> {
        self.state
            .instance(service.as_str(), id.as_str())
            .cloned()
            .ok_or_else(|| CatalogError::NotFound {
                service: service.to_string(),
                id: id.to_string(),
            })
    }

    fn register(
        &mut self,
        service: ServiceName,
        id: InstanceId,
        spec: InstanceSpec,
        now: u64,
        next: u64,
    ) -> Result<bool, CatalogError> {
        let existing = match self.records.get(id.as_str()) {
            Some(rec) if rec.service != *service.as_arc() => {
                return Err(CatalogError::Conflict {
                    id: id.to_string(),
                    existing: rec.service.to_string(),
                });
            }
            Some(_) => self.state.instance(service.as_str(), id.as_str()).cloned(),
            None => {
                let in_service = self
                    .state
                    .services
                    .get(service.as_str())
                    .map_or(0, |s| s.instances.len());
                if in_service >= self.limits.max_instances_per_service {
                    return Err(CatalogError::Full {
                        what: "instances per service",
                        limit: self.limits.max_instances_per_service,
                    });
                }
                if self.records.len() >= self.limits.max_instances {
                    return Err(CatalogError::Full {
                        what: "instances in the registry",
                        limit: self.limits.max_instances,
                    });
                }
                None
            }
        };
        if let Some(current) = existing {
            if current.spec == spec {
                // Same registration again: it is a heartbeat, nothing more.
                return Ok(self.renew(id.as_arc(), now, next));
            }
            let mut inst = (*current).clone();
            // Keep the results (and TTL deadlines) of checks that did not
            // change, so editing tags does not send a healthy instance back to
            // critical, nor extend a TTL check the instance stopped reporting.
            let carried: Vec<Option<usize>> = spec
                .checks
                .iter()
                .map(|def| current.spec.checks.iter().position(|old| old == def))
                .collect();
            inst.checks = spec
                .checks
                .iter()
                .zip(&carried)
                .map(|(def, old)| {
                    old.map_or_else(|| CheckState::initial(def), |i| current.checks[i].clone())
                })
                .collect();
            let old_due: HashMap<usize, u64> = self.records[id.as_str()]
                .check_timers
                .iter()
                .map(|(i, due)| (usize::from(*i), *due))
                .collect();
            inst.spec = spec;
            self.cancel_checks(id.as_arc());
            // Check positions may have moved: their removal timers start over.
            let rec = self
                .records
                .get_mut(id.as_str())
                .expect("record of a known instance");
            for (i, due) in rec.check_reaps.drain(..) {
                self.timers
                    .remove(&(due, Timer::CheckReap(i), id.as_arc().clone()));
            }
            for (i, def) in inst.spec.checks.iter().enumerate() {
                let Target::Ttl { ttl } = def.target else {
                    continue;
                };
                let due = match carried[i] {
                    // Its timer already fired: it is critical and stays so.
                    Some(j) => match old_due.get(&j) {
                        Some(due) => *due,
                        None => continue,
                    },
                    None => now.saturating_add(nanos(ttl)),
                };
                self.records
                    .get_mut(id.as_str())
                    .expect("record of a known instance")
                    .check_timers
                    .push((i as u16, due));
                self.timers
                    .insert((due, Timer::Check(i as u16), inst.id.clone()));
            }
            let rec = self
                .records
                .get_mut(id.as_str())
                .expect("record of a known instance");
            if std::mem::take(&mut rec.held) {
                self.held -= 1;
            }
            let old_lease = rec.lease.take();
            let old_timer = rec.lease_timer.take();
            if let Some(due) = old_timer {
                self.timers
                    .remove(&(due, Timer::Lease, id.as_arc().clone()));
            }
            if old_lease.is_some() {
                self.leases.remove(id.as_str());
            }
            inst.lease = None;
            self.cancel_reap(id.as_arc());
            self.arm_lease(&mut inst, now);
            self.put(inst, next);
            return Ok(true);
        }
        let spec_checks = spec.checks.clone();
        let mut inst = Instance {
            id: id.as_arc().clone(),
            service: service.as_arc().clone(),
            spec,
            lease: None,
            maintenance: None,
            checks: spec_checks_initial(&spec_checks),
            create_index: next,
            modify_index: next,
        };
        self.records.insert(
            inst.id.clone(),
            Record {
                service: inst.service.clone(),
                ..Record::default()
            },
        );
        self.arm_lease(&mut inst, now);
        self.arm_checks(&inst, now);
        self.put(inst, next);
        Ok(true)
    }

    fn restore(
        &mut self,
        index: u64,
        names_index: u64,
        instances: Vec<Instance>,
        now: u64,
        grace: Duration,
        stamp: bool,
    ) {
        self.touched.extend(self.state.services.keys().cloned());
        self.changed.extend(self.records.keys().cloned());
        for (id, rec) in self.records.drain() {
            if rec.lease.is_some() {
                self.leases.remove(&id);
            }
        }
        self.timers.clear();
        self.held = 0;
        self.ttl_index.clear();
        self.state.services = OrdMap::new();
        let grace = nanos(grace);
        for mut inst in instances {
            if stamp {
                inst.modify_index = index;
                inst.create_index = inst.create_index.min(index);
            }
            let mut rec = Record {
                service: inst.service.clone(),
                ..Record::default()
            };
            if inst.checks.len() != inst.spec.checks.len() {
                inst.checks = spec_checks_initial(&inst.spec.checks);
            }
            for (i, def) in inst.spec.checks.iter().enumerate() {
                if let Target::Ttl { ttl } = def.target {
                    let due = now.saturating_add(grace).saturating_add(nanos(ttl));
                    rec.check_timers.push((i as u16, due));
                    self.timers
                        .insert((due, Timer::Check(i as u16), inst.id.clone()));
                }
                if let Some(after) = def.deregister_critical_after
                    && inst.checks[i].status == Health::Critical
                {
                    let due = now.saturating_add(grace).saturating_add(nanos(after));
                    rec.check_reaps.push((i as u16, due));
                    self.timers
                        .insert((due, Timer::CheckReap(i as u16), inst.id.clone()));
                }
            }
            self.index_ttl(&inst);
            if let Some(ttl) = inst.spec.ttl {
                let ttl = nanos(ttl);
                let deadline = now.saturating_add(ttl).saturating_add(grace);
                let lease = Arc::new(Lease::new(inst.service.clone(), ttl, deadline));
                if inst.lease == Some(Health::Critical) {
                    // Expired before: stays critical, but is not removed before
                    // the grace is over.
                    let _ = lease.try_expire(deadline);
                    let reap_at = now
                        .saturating_add(grace)
                        .saturating_add(nanos(inst.spec.deregister_critical_after));
                    rec.reap_timer = Some(reap_at);
                    self.timers.insert((reap_at, Timer::Reap, inst.id.clone()));
                } else {
                    inst.lease = Some(Health::Passing);
                    rec.lease_timer = Some(deadline);
                    self.timers
                        .insert((deadline, Timer::Lease, inst.id.clone()));
                }
                self.leases.insert(inst.id.clone(), lease.clone());
                rec.lease = Some(lease);
            } else {
                inst.lease = None;
            }
            self.touched.push(inst.service.clone());
            self.changed.push(inst.id.clone());
            self.records.insert(inst.id.clone(), rec);
            let svc = self.state.services.entry(inst.service.clone()).or_default();
            svc.modify_index = if stamp {
                index
            } else {
                svc.modify_index.max(inst.modify_index)
            };
            svc.instances.insert(inst.id.clone(), Arc::new(inst));
        }
        self.state.names_index = if stamp {
            index
        } else {
            names_index.clamp(1, index)
        };
        self.changed.sort_unstable();
        self.changed.dedup();
    }

    /// Gives `inst` a fresh live lease if its spec has a TTL.
    fn arm_lease(&mut self, inst: &mut Instance, now: u64) {
        let Some(ttl) = inst.spec.ttl else { return };
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX >> 2);
        let deadline = now.saturating_add(ttl);
        let lease = Arc::new(Lease::new(inst.service.clone(), ttl, deadline));
        self.leases.insert(inst.id.clone(), lease.clone());
        self.timers
            .insert((deadline, Timer::Lease, inst.id.clone()));
        let rec = self.records.get_mut(&inst.id).expect("record exists");
        rec.lease = Some(lease);
        rec.lease_timer = Some(deadline);
        inst.lease = Some(Health::Passing);
    }

    /// Arms the timers of `inst`'s TTL checks, due one TTL after `now`.
    fn arm_checks(&mut self, inst: &Instance, now: u64) {
        let rec = self.records.get_mut(&inst.id).expect("record exists");
        for (i, def) in inst.spec.checks.iter().enumerate() {
            if let Target::Ttl { ttl } = def.target {
                let due = now.saturating_add(nanos(ttl));
                rec.check_timers.push((i as u16, due));
                self.timers
                    .insert((due, Timer::Check(i as u16), inst.id.clone()));
            }
        }
    }

    fn index_ttl(&mut self, inst: &Instance) {
        for def in inst.spec.checks.iter() {
            if matches!(def.target, Target::Ttl { .. }) {
                self.ttl_index
                    .entry(def.id.clone())
                    .or_default()
                    .push(inst.id.clone());
            }
        }
    }

    fn unindex_ttl(&mut self, inst: &Instance) {
        for def in inst.spec.checks.iter() {
            if let Some(ids) = self.ttl_index.get_mut(&def.id) {
                ids.retain(|i| *i != inst.id);
                if ids.is_empty() {
                    self.ttl_index.remove(&def.id);
                }
            }
        }
    }

    /// Arms a removal timer for each check of `inst` that is critical and has a
    /// `deregister_critical_after`, and cancels those of checks no longer
    /// critical. A timer already running keeps its deadline.
    fn sync_check_reaps(&mut self, inst: &Instance) {
        let Some(rec) = self.records.get_mut(&inst.id) else {
            return;
        };
        let mut wanted: Vec<(u16, Duration)> = Vec::new();
        for (i, (def, state)) in inst.spec.checks.iter().zip(&inst.checks).enumerate() {
            if let Some(after) = def.deregister_critical_after
                && state.status == Health::Critical
            {
                wanted.push((i as u16, after));
            }
        }
        let timers = &mut self.timers;
        rec.check_reaps.retain(|(i, due)| {
            let keep = wanted.iter().any(|(w, _)| w == i);
            if !keep {
                timers.remove(&(*due, Timer::CheckReap(*i), inst.id.clone()));
            }
            keep
        });
        for (i, after) in wanted {
            if rec.check_reaps.iter().all(|(r, _)| *r != i) {
                let due = self.now.saturating_add(nanos(after));
                rec.check_reaps.push((i, due));
                timers.insert((due, Timer::CheckReap(i), inst.id.clone()));
            }
        }
    }

    fn cancel_checks(&mut self, id: &Arc<str>) {
        if let Some(rec) = self.records.get_mut(id) {
            for (i, due) in rec.check_timers.drain(..) {
                self.timers.remove(&(due, Timer::Check(i), id.clone()));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn set_check(
        &mut self,
        service: &ServiceName,
        id: &InstanceId,
        check: &str,
        status: Health,
        output: String,
        source: CheckSource,
        now: u64,
        next: u64,
    ) -> Result<bool, CatalogError> {
        let current = self.find(service, id)?;
        let Some(pos) = current.spec.checks.iter().position(|c| &*c.id == check) else {
            return Err(CatalogError::CheckNotFound {
                id: id.to_string(),
                check: check.to_owned(),
            });
        };
        let def = &current.spec.checks[pos];
        match (source, &def.target) {
            (CheckSource::Report, Target::Ttl { ttl }) => {
                let due = now.saturating_add(nanos(*ttl));
                let key = pos as u16;
                let rec = self
                    .records
                    .get_mut(id.as_str())
                    .expect("record of a known instance");
                match rec.check_timers.iter_mut().find(|(i, _)| *i == key) {
                    Some(slot) => {
                        self.timers
                            .remove(&(slot.1, Timer::Check(key), current.id.clone()));
                        slot.1 = due;
                    }
                    None => rec.check_timers.push((key, due)),
                }
                self.timers
                    .insert((due, Timer::Check(key), current.id.clone()));
            }
            (CheckSource::Probe, target) if def.is_active() => {
                let _ = target;
            }
            (CheckSource::Report, _) => {
                return Err(CatalogError::WrongCheckKind(format!(
                    "check {check:?} is a {} check run by the registry; only ttl checks take pass, warn and fail",
                    def.kind().as_str()
                )));
            }
            (CheckSource::Probe, _) => {
                return Err(CatalogError::WrongCheckKind(format!(
                    "check {check:?} is a ttl check: the instance reports it"
                )));
            }
        }
        let output = truncate_output(output);
        let state = &current.checks[pos];
        if state.status == status && state.output == output {
            return Ok(false);
        }
        let mut inst = (*current).clone();
        inst.checks[pos] = CheckState { status, output };
        self.put(inst, next);
        Ok(true)
    }

    /// Decides, before a tick expires anything, whether self-preservation holds
    /// overdue leases.
    fn should_hold(&mut self, now: u64) -> bool {
        let p = self.preservation;
        let total = self.leases.len();
        if p.threshold <= 0.0 || total < p.min_instances.max(1) {
            self.preserving = false;
            return false;
        }
        let since = now.saturating_sub(nanos(p.window));
        while self.expirations.front().is_some_and(|t| *t < since) {
            self.expirations.pop_front();
        }
        let mut overdue_due = 0usize;
        let mut held_due = 0usize;
        for (due, kind, id) in &self.timers {
            if *due > now {
                break;
            }
            if *kind != Timer::Lease {
                continue;
            }
            let rec = &self.records[id];
            if rec.held {
                held_due += 1;
            }
            if let Some(lease) = &rec.lease
                && !lease.is_expired()
                && lease.deadline() <= now
            {
                overdue_due += 1;
            }
        }
        let overdue = overdue_due + (self.held - held_due);
        let share = (self.expirations.len() + overdue) as f64 / total as f64;
        self.preserving = share > p.threshold;
        self.preserving
    }

    /// Renews a lease under the catalog lock; flips an expired lease back to passing.
    fn renew(&mut self, id: &Arc<str>, now: u64, next: u64) -> bool {
        let rec = self
            .records
            .get_mut(id)
            .expect("record of a known instance");
        let Some(lease) = rec.lease.clone() else {
            return false;
        };
        let deadline = now.saturating_add(lease.ttl()).max(lease.deadline());
        let was_expired = lease.is_expired();
        lease.revive(deadline);
        if rec.lease_timer.is_none() {
            rec.lease_timer = Some(deadline);
            self.timers.insert((deadline, Timer::Lease, id.clone()));
        }
        if !was_expired {
            return false;
        }
        self.cancel_reap(id);
        let service = self.records[id].service.clone();
        let mut inst = (*self.state.services[&service].instances[id]).clone();
        inst.lease = Some(Health::Passing);
        self.put(inst, next);
        true
    }

    fn cancel_reap(&mut self, id: &Arc<str>) {
        if let Some(rec) = self.records.get_mut(id)
            && let Some(due) = rec.reap_timer.take()
        {
            self.timers.remove(&(due, Timer::Reap, id.clone()));
        }
    }

    /// Stores a changed instance and stamps the index on it and its service.
    fn put(&mut self, mut inst: Instance, index: u64) {
        let old = self.state.instance(&inst.service, &inst.id).cloned();
        if old
            .as_ref()
            .is_none_or(|o| !Arc::ptr_eq(&o.spec.checks, &inst.spec.checks))
        {
            if let Some(old) = &old {
                self.unindex_ttl(old);
            }
            self.index_ttl(&inst);
        }
        self.sync_check_reaps(&inst);
        inst.modify_index = index;
        self.touched.push(inst.service.clone());
        self.changed.push(inst.id.clone());
        if !self.state.services.contains_key(&inst.service) {
            self.state.names_index = index;
        }
        let svc = self.state.services.entry(inst.service.clone()).or_default();
        svc.modify_index = index;
        svc.instances.insert(inst.id.clone(), Arc::new(inst));
    }

    fn remove(&mut self, id: &Arc<str>, index: u64) {
        let Some(rec) = self.records.remove(id) else {
            return;
        };
        if let Some(inst) = self.state.instance(&rec.service, id).cloned() {
            self.unindex_ttl(&inst);
        }
        for (i, due) in &rec.check_reaps {
            self.timers
                .remove(&(*due, Timer::CheckReap(*i), id.clone()));
        }
        self.changed.push(id.clone());
        if rec.held {
            self.held -= 1;
        }
        for (i, due) in &rec.check_timers {
            self.timers.remove(&(*due, Timer::Check(*i), id.clone()));
        }
        if let Some(due) = rec.lease_timer {
            self.timers.remove(&(due, Timer::Lease, id.clone()));
        }
        if let Some(due) = rec.reap_timer {
            self.timers.remove(&(due, Timer::Reap, id.clone()));
        }
        if rec.lease.is_some() {
            self.leases.remove(id);
        }
        if let Some(svc) = self.state.services.get_mut(&rec.service) {
            svc.instances.remove(id);
            svc.modify_index = index;
            if svc.instances.is_empty() {
                self.state.services.remove(&rec.service);
                self.state.names_index = index;
            }
        }
        self.touched.push(rec.service);
    }

    fn tick(&mut self, now: u64, next: u64, out: &mut Outcome) -> bool {
        let mut changed = false;
        let hold = self.should_hold(now);
        let recheck = now.saturating_add(nanos(HOLD_RECHECK));
        while let Some((due, kind, id)) = self.timers.first().cloned() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, kind, id.clone()));
            let rec = self
                .records
                .get_mut(&id)
                .expect("timers belong to known instances");
            match kind {
                Timer::Lease => {
                    rec.lease_timer = None;
                    let lease = rec.lease.clone().expect("lease timer without a lease");
                    let deadline = lease.deadline();
                    if hold && deadline <= now {
                        // Overdue, but too many are: keep it alive and look again soon.
                        if !rec.held {
                            rec.held = true;
                            self.held += 1;
                        }
                        rec.lease_timer = Some(recheck);
                        self.timers.insert((recheck, Timer::Lease, id));
                        out.held += 1;
                        continue;
                    }
                    let was_held = std::mem::take(&mut rec.held);
                    if was_held {
                        self.held -= 1;
                    }
                    if let Err(renewed) = lease.try_expire(now) {
                        rec.lease_timer = Some(renewed);
                        self.timers.insert((renewed, Timer::Lease, id));
                        continue;
                    }
                    self.expirations.push_back(now);
                    // Count the critical time from the moment the lease ran out
                    // (or was released by self-preservation).
                    let from = if was_held { now } else { deadline };
                    let reap_at = from.saturating_add(
                        u64::try_from(
                            self.state.services[&rec.service].instances[&id]
                                .spec
                                .deregister_critical_after
                                .as_nanos(),
                        )
                        .unwrap_or(u64::MAX >> 2),
                    );
                    rec.reap_timer = Some(reap_at);
                    let service = rec.service.clone();
                    self.timers.insert((reap_at, Timer::Reap, id.clone()));
                    let mut inst = (*self.state.services[&service].instances[&id]).clone();
                    inst.lease = Some(Health::Critical);
                    self.put(inst, next);
                    out.expired += 1;
                    changed = true;
                }
                Timer::Reap if hold => {
                    rec.reap_timer = Some(recheck);
                    self.timers.insert((recheck, Timer::Reap, id));
                }
                Timer::Reap => {
                    rec.reap_timer = None;
                    self.remove(&id, next);
                    out.reaped += 1;
                    changed = true;
                }
                Timer::CheckReap(pos) if hold => {
                    for slot in rec.check_reaps.iter_mut().filter(|(i, _)| *i == pos) {
                        slot.1 = recheck;
                    }
                    self.timers.insert((recheck, Timer::CheckReap(pos), id));
                }
                Timer::CheckReap(pos) => {
                    rec.check_reaps.retain(|(i, _)| *i != pos);
                    self.remove(&id, next);
                    out.reaped += 1;
                    changed = true;
                }
                Timer::Check(pos) => {
                    rec.check_timers.retain(|(i, _)| *i != pos);
                    let service = rec.service.clone();
                    let current = self.state.services[&service].instances[&id].clone();
                    let p = usize::from(pos);
                    let Target::Ttl { ttl } = current.spec.checks[p].target else {
                        continue;
                    };
                    let output = format!(
                        "TTL expired: no update within {}",
                        api::duration::format(ttl)
                    );
                    let state = &current.checks[p];
                    if state.status != Health::Critical || state.output != output {
                        let mut inst = (*current).clone();
                        inst.checks[p] = CheckState {
                            status: Health::Critical,
                            output,
                        };
                        // A late tick must not give the instance extra time:
                        // its removal clock starts when the TTL ran out.
                        let tick_time = std::mem::replace(&mut self.now, due);
                        self.put(inst, next);
                        self.now = tick_time;
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

/// How often self-preservation looks again at a lease it holds.
const HOLD_RECHECK: Duration = Duration::from_secs(1);

fn spec_checks_initial(checks: &[crate::checks::CheckSpec]) -> Vec<CheckState> {
    checks.iter().map(CheckState::initial).collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Limits;
    use roster_client::api::RegisterRequest;

    fn spec(ttl: Option<u64>) -> InstanceSpec {
        let req = RegisterRequest {
            address: Some("10.0.0.1".into()),
            port: 80,
            ttl: ttl.map(Duration::from_secs),
            deregister_critical_after: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        InstanceSpec::from_request(req, None, &Limits::default()).unwrap()
    }

    fn reg(svc: &str, id: &str, ttl: Option<u64>) -> Command {
        Command::Register {
            service: ServiceName::parse(svc).unwrap(),
            id: InstanceId::parse(id).unwrap(),
            spec: spec(ttl),
        }
    }

    #[test]
    fn lease_expires_then_instance_is_reaped() {
        let t0 = Instant::now();
        let mut c = Catalog::new(t0, CatalogLimits::default());
        let out = c.apply(reg("web", "a", Some(10)), t0).unwrap();
        assert_eq!(out.index, 2, "the empty catalog is at index 1");
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
        let out = c.apply(Command::Tick, t0 + Duration::from_secs(9)).unwrap();
        assert!(!out.changed);
        let out = c
            .apply(Command::Tick, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!((out.changed, out.expired, out.index), (true, 1, 3));
        assert_eq!(
            c.snapshot().instance("web", "a").unwrap().health(),
            Health::Critical
        );
        let out = c
            .apply(Command::Tick, t0 + Duration::from_secs(70))
            .unwrap();
        assert_eq!(out.reaped, 1);
        assert!(c.snapshot().services.is_empty());
        assert!(c.leases().is_empty());
        assert!(c.next_deadline().is_none());
    }

    #[test]
    fn id_belongs_to_one_service() {
        let t0 = Instant::now();
        let mut c = Catalog::new(t0, CatalogLimits::default());
        c.apply(reg("web", "a", None), t0).unwrap();
        let err = c.apply(reg("db", "a", None), t0).unwrap_err();
        assert!(matches!(err, CatalogError::Conflict { .. }));
        assert_eq!(c.snapshot().index, 2);
    }

    #[test]
    fn limits_are_enforced() {
        let t0 = Instant::now();
        let limits = CatalogLimits {
            max_instances_per_service: 2,
            max_instances: 3,
        };
        let mut c = Catalog::new(t0, limits);
        c.apply(reg("web", "a", None), t0).unwrap();
        c.apply(reg("web", "b", None), t0).unwrap();
        assert!(matches!(
            c.apply(reg("web", "c", None), t0),
            Err(CatalogError::Full { .. })
        ));
        c.apply(reg("db", "d", None), t0).unwrap();
        assert!(matches!(
            c.apply(reg("db", "e", None), t0),
            Err(CatalogError::Full { .. })
        ));
        // Replacing an existing instance is not blocked by the limit.
        c.apply(reg("web", "a", Some(5)), t0).unwrap();
    }

    #[test]
    fn maintenance_is_critical_but_not_reaped() {
        let t0 = Instant::now();
        let mut c = Catalog::new(t0, CatalogLimits::default());
        c.apply(reg("web", "a", None), t0).unwrap();
        let maint = |reason: Option<&str>| Command::SetMaintenance {
            service: ServiceName::parse("web").unwrap(),
            id: InstanceId::parse("a").unwrap(),
            reason: reason.map(Into::into),
        };
        assert!(c.apply(maint(Some("deploy")), t0).unwrap().changed);
        assert!(!c.apply(maint(Some("deploy")), t0).unwrap().changed);
        assert_eq!(
            c.snapshot().instance("web", "a").unwrap().health(),
            Health::Critical
        );
        c.apply(Command::Tick, t0 + Duration::from_secs(3600))
            .unwrap();
        assert!(c.snapshot().instance("web", "a").is_some());
        assert!(c.apply(maint(None), t0).unwrap().changed);
        assert_eq!(
            c.snapshot().instance("web", "a").unwrap().health(),
            Health::Passing
        );
    }

    fn reg_with_app_check(id: &str, dereg: u64) -> Command {
        let req: RegisterRequest = serde_json::from_value(serde_json::json!({
            "address": "10.0.0.1", "port": 80,
            "checks": [{"id": "app", "ttl": "10s", "deregister_critical_after": format!("{dereg}s")}]
        }))
        .unwrap();
        Command::Register {
            service: ServiceName::parse("web").unwrap(),
            id: InstanceId::parse(id).unwrap(),
            spec: InstanceSpec::from_request(req, None, &Limits::default()).unwrap(),
        }
    }

    fn report(id: &str, status: Health) -> Command {
        Command::SetCheck {
            service: ServiceName::parse("web").unwrap(),
            id: InstanceId::parse(id).unwrap(),
            check: "app".into(),
            status,
            output: String::new(),
            source: CheckSource::Report,
        }
    }

    #[test]
    fn a_check_critical_past_its_deregister_time_removes_the_instance() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Catalog::new(t0, CatalogLimits::default());
        c.apply(reg_with_app_check("a", 30), t0).unwrap();
        c.apply(reg_with_app_check("b", 30), t0).unwrap();
        assert_eq!(c.instances_with_ttl_check("app").len(), 2);
        // Both start critical: the removal clock runs from registration, and
        // stops with the first pass.
        c.apply(report("a", Health::Passing), at(5)).unwrap();
        c.apply(report("b", Health::Passing), at(5)).unwrap();
        c.apply(report("b", Health::Passing), at(12)).unwrap();
        // a falls silent: critical at 15, removed 30 s later. b fails at 20
        // (removal due at 50), still fails at 29, recovers at 38.
        c.apply(Command::Tick, at(15)).unwrap();
        c.apply(report("b", Health::Critical), at(20)).unwrap();
        c.apply(report("b", Health::Critical), at(29)).unwrap();
        c.apply(report("b", Health::Passing), at(38)).unwrap();
        c.apply(Command::Tick, at(44)).unwrap();
        assert!(c.snapshot().instance("web", "a").is_some());
        let out = c.apply(Command::Tick, at(46)).unwrap();
        assert_eq!(out.reaped, 1);
        assert!(c.snapshot().instance("web", "a").is_none());
        assert_eq!(c.instances_with_ttl_check("app"), [Arc::from("b")]);
        c.apply(Command::Tick, at(55)).unwrap();
        assert!(
            c.snapshot().instance("web", "b").is_some(),
            "b recovered in time"
        );
        // Without its checks, b leaves the index.
        c.apply(reg("web", "b", None), at(56)).unwrap();
        assert!(c.instances_with_ttl_check("app").is_empty());
    }
}
