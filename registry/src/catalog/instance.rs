//! What readers see: instances, services and the snapshot of the catalog.

use std::sync::Arc;

use imbl::OrdMap;
use roster_api::{self as api, Health};

use crate::checks::{CheckState, LEASE_CHECK, Target};
use crate::model::InstanceSpec;

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
                notes: None,
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
                notes: def.notes.clone(),
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
            meta: spec.meta.to_map(),
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

/// How many instances are in each health state, counted by
/// [`Instance::health`] (by name, not by the order of `Health`'s variants).
///
/// ```
/// use roster_api::Health;
/// use roster_registry::catalog::HealthCounts;
/// let mut counts = HealthCounts::default();
/// counts.add(Health::Warning);
/// counts.add(Health::Critical);
/// counts.add(Health::Warning);
/// assert_eq!((counts.passing, counts.warning, counts.critical), (0, 2, 1));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthCounts {
    /// Passing instances.
    pub passing: usize,
    /// Instances in warning.
    pub warning: usize,
    /// Critical instances (maintenance included).
    pub critical: usize,
}

impl HealthCounts {
    /// Counts one instance of health `health`.
    pub fn add(&mut self, health: Health) {
        match health {
            Health::Passing => self.passing += 1,
            Health::Warning => self.warning += 1,
            Health::Critical => self.critical += 1,
        }
    }

    /// The count of `health`.
    pub fn get(&self, health: Health) -> usize {
        match health {
            Health::Passing => self.passing,
            Health::Warning => self.warning,
            Health::Critical => self.critical,
        }
    }

    /// The counts of `instances`.
    pub fn of<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Self {
        let mut counts = HealthCounts::default();
        for inst in instances {
            counts.add(inst.health());
        }
        counts
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
