//! The registry as the DNS front end sees it: a [`roster_dns::ServiceView`] over
//! the published snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use roster_api::{Health, Weights};
use roster_dns::{InstanceRecord, Remote, ServiceRecords, ServiceView};

use crate::catalog::{Instance, ServiceState};
use crate::federation::Federation;
use crate::federation::failover::Slot;
use crate::registry::Registry;

/// Answers DNS lookups from [`Registry::snapshot`], without taking the catalog lock.
///
/// The records of a service are built once per change of the service (its
/// `modify_index`) and shared by every query until the next change. Entries of
/// services that no longer exist are dropped when the set of names changes.
#[derive(Debug)]
pub(crate) struct RegistryView {
    registry: Arc<Registry>,
    cache: DashMap<Arc<str>, Arc<ServiceRecords>>,
    /// `names_index` of the snapshot the cache was last pruned against.
    pruned: AtomicU64,
    /// Other datacenters: names with a datacenter label, and failover.
    federation: Option<Arc<Federation>>,
}

impl RegistryView {
    /// A view of `registry`.
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        RegistryView {
            registry,
            cache: DashMap::new(),
            pruned: AtomicU64::new(0),
            federation: None,
        }
    }

    /// The same view answering for other datacenters too, and failing over
    /// to them.
    pub(crate) fn federated(mut self, federation: Option<Arc<Federation>>) -> Self {
        self.federation = federation;
        self
    }

    /// The failover records of `name` when it has no healthy local instance
    /// and a datacenter on its list has some: the local endpoints (none
    /// healthy, so instance names still answer) and the remote healthy ones,
    /// each with `datacenter=NAME` in its TXT record.
    fn failover(&self, name: &str, local: Option<&ServiceState>) -> Option<Arc<ServiceRecords>> {
        let failover = self.federation.as_ref()?.failover();
        if failover.targets(name).is_empty()
            || local.is_some_and(|st| {
                st.instances
                    .values()
                    .any(|i| i.health() != Health::Critical)
            })
        {
            return None;
        }
        let remote = failover.resolve_now(name)?;
        failover.served(&remote.datacenter);
        let mut endpoints: Vec<InstanceRecord> = local
            .map(|st| st.instances.values().map(|i| endpoint(i)).collect())
            .unwrap_or_default();
        endpoints.extend(
            remote
                .instances
                .iter()
                .map(|i| remote_endpoint(i, &remote.datacenter)),
        );
        let index = remote.failover_index(local.map_or(0, |st| st.modify_index));
        Some(Arc::new(ServiceRecords { index, endpoints }))
    }

    /// Builds (or reuses) the records of one service.
    fn records(&self, name: &Arc<str>, state: &ServiceState) -> Arc<ServiceRecords> {
        if let Some(hit) = self.cache.get(name.as_ref())
            && hit.index == state.modify_index
        {
            return hit.clone();
        }
        let fresh = Arc::new(ServiceRecords {
            index: state.modify_index,
            endpoints: state.instances.values().map(|i| endpoint(i)).collect(),
        });
        // A query working on an older snapshot must not replace newer records.
        self.cache
            .entry(name.clone())
            .and_modify(|cached| {
                if cached.index < fresh.index {
                    *cached = fresh.clone();
                }
            })
            .or_insert_with(|| fresh.clone());
        fresh
    }
}

impl ServiceView for RegistryView {
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>> {
        let snapshot = self.registry.snapshot();
        if self.pruned.swap(snapshot.names_index, Ordering::Relaxed) != snapshot.names_index {
            self.cache
                .retain(|service, _| snapshot.services.contains_key(service));
        }
        let local = snapshot.services.get_key_value(name);
        if let Some(records) = self.failover(name, local.map(|(_, st)| st)) {
            return Some(records);
        }
        let (name, state) = local?;
        Some(self.records(name, state))
    }

    fn index(&self) -> u64 {
        self.registry.snapshot().index
    }

    fn remote_service(&self, datacenter: &str, name: &str) -> Remote {
        let Some(federation) = &self.federation else {
            return Remote::UnknownDatacenter;
        };
        if datacenter == federation.local() {
            return self
                .service(name)
                .map_or(Remote::NoService, Remote::Records);
        }
        match federation.failover().remote_now(datacenter, name) {
            None => Remote::UnknownDatacenter,
            Some(Slot::Cold | Slot::Down(_)) => Remote::Unavailable,
            // Only healthy instances cross: an empty answer is NODATA.
            Some(Slot::Ready(answer)) => Remote::Records(Arc::new(ServiceRecords {
                index: answer.version,
                endpoints: answer
                    .instances
                    .iter()
                    .map(|i| remote_endpoint(i, datacenter))
                    .collect(),
            })),
        }
    }
}

/// The DNS form of an instance of another datacenter.
fn remote_endpoint(instance: &roster_api::Instance, datacenter: &str) -> InstanceRecord {
    let (healthy, weight) = health_weight(instance.health, instance.weights);
    let mut meta = instance.meta.clone();
    meta.insert("datacenter".into(), datacenter.to_owned());
    InstanceRecord {
        id: crate::model::dns_instance_label(&instance.id).into_owned(),
        address: instance.address.clone(),
        port: instance.port,
        tags: instance.tags.clone(),
        meta,
        weight,
        healthy,
    }
}

/// The DNS form of an instance: healthy unless critical (maintenance counts as
/// critical), weighted by its weight for the current health.
pub(crate) fn endpoint(instance: &Instance) -> InstanceRecord {
    let spec = &instance.spec;
    let (healthy, weight) = health_weight(instance.health(), spec.weights);
    InstanceRecord {
        id: crate::model::dns_instance_label(&instance.id).into_owned(),
        address: spec.address.clone(),
        port: spec.port,
        tags: spec.tags.clone(),
        meta: spec.meta.to_map(),
        weight,
        healthy,
    }
}

/// Whether an instance of this health is served, and its SRV weight: passing and
/// warning instances are served with the weight for their health, critical ones
/// (maintenance included) are not.
pub fn health_weight(health: Health, weights: Weights) -> (bool, u16) {
    let clamp = |w: u32| u16::try_from(w).unwrap_or(u16::MAX);
    match health {
        Health::Passing => (true, clamp(weights.passing)),
        Health::Warning => (true, clamp(weights.warning)),
        Health::Critical => (false, 0),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use roster_api::Weights;

    use super::*;
    use crate::catalog::{CatalogLimits, Command};
    use crate::metrics::Metrics;
    use crate::model::{InstanceId, InstanceSpec, ServiceName};

    fn spec(address: &str, weights: Weights) -> InstanceSpec {
        InstanceSpec {
            address: address.into(),
            port: 8080,
            tags: vec!["v2".into()],
            meta: BTreeMap::from([("zone".into(), "eu-1".into())]).into(),
            weights,
            ttl: None,
            deregister_critical_after: Duration::from_secs(60),
            checks: Arc::new([]),
        }
    }

    fn instance(lease: Option<Health>, maintenance: Option<&str>) -> Instance {
        Instance {
            id: "web-1".into(),
            service: "web".into(),
            spec: spec(
                "10.0.0.1",
                Weights {
                    passing: 70_000,
                    warning: 3,
                },
            ),
            lease,
            maintenance: maintenance.map(Into::into),
            checks: Vec::new(),
            create_index: 1,
            modify_index: 1,
        }
    }

    #[test]
    fn health_picks_the_weight() {
        let passing = endpoint(&instance(None, None));
        assert!(passing.healthy);
        assert_eq!(passing.weight, u16::MAX, "clamped");
        assert_eq!(passing.id, "web-1");
        assert_eq!(passing.address, "10.0.0.1");
        assert_eq!(passing.port, 8080);
        assert_eq!(passing.tags, ["v2"]);
        assert_eq!(passing.meta["zone"], "eu-1");
        let warning = endpoint(&instance(Some(Health::Warning), None));
        assert!(warning.healthy);
        assert_eq!(warning.weight, 3);
        let critical = endpoint(&instance(Some(Health::Critical), None));
        assert!(!critical.healthy);
        assert_eq!(critical.weight, 0);
        let maintenance = endpoint(&instance(None, Some("disk")));
        assert!(!maintenance.healthy);
        assert_eq!(maintenance.weight, 0);
    }

    fn register(registry: &Registry, service: &str, id: &str, address: &str) -> u64 {
        registry
            .apply(Command::Register {
                service: ServiceName::parse(service).unwrap(),
                id: InstanceId::parse(id).unwrap(),
                spec: spec(address, Weights::default()),
            })
            .unwrap()
            .index
    }

    #[test]
    fn records_are_cached_by_index_and_refreshed_on_change() {
        let registry = Arc::new(Registry::new(
            CatalogLimits::default(),
            Arc::new(Metrics::new()),
        ));
        let view = RegistryView::new(registry.clone());
        assert!(view.service("web").is_none());

        let index = register(&registry, "web", "web-1", "10.0.0.1");
        assert_eq!(view.index(), index, "the SOA serial follows the catalog");
        let first = view.service("web").unwrap();
        assert_eq!(first.index, index);
        assert_eq!(first.endpoints.len(), 1);
        assert!(
            Arc::ptr_eq(&first, &view.service("web").unwrap()),
            "unchanged service: the same records"
        );

        // Another service changing leaves this one's records alone.
        register(&registry, "db", "db-1", "10.0.1.1");
        assert!(Arc::ptr_eq(&first, &view.service("web").unwrap()));

        let index = register(&registry, "web", "web-2", "10.0.0.2");
        let second = view.service("web").unwrap();
        assert_eq!(second.index, index);
        assert_eq!(second.endpoints.len(), 2);

        registry
            .apply(Command::SetMaintenance {
                service: ServiceName::parse("web").unwrap(),
                id: InstanceId::parse("web-2").unwrap(),
                reason: Some("disk".into()),
            })
            .unwrap();
        let third = view.service("web").unwrap();
        let web2 = third.endpoints.iter().find(|e| e.id == "web-2").unwrap();
        assert!(!web2.healthy);

        for id in ["web-1", "web-2"] {
            registry
                .apply(Command::Deregister {
                    service: ServiceName::parse("web").unwrap(),
                    id: InstanceId::parse(id).unwrap(),
                })
                .unwrap();
        }
        assert!(view.service("web").is_none(), "gone with its last instance");
        assert!(view.service("db").is_some());
        assert!(!view.cache.contains_key("web"), "pruned from the cache");
    }
}
