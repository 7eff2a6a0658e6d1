//! Local copies of the watched Kubernetes objects, and which Services an
//! event touches.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::watcher;

use super::SyncSettings;
use super::mapping::{Desired, SERVICE_NAME_LABEL, desired_instances, object_key};

/// What an event means for roster.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Touched {
    Nothing,
    /// These Services (`NAMESPACE/NAME`) need recomputing.
    Services(BTreeSet<String>),
    /// A listing completed: reconcile everything.
    All,
}

/// The objects of one kind, keyed by `NAMESPACE/NAME`, replaced whole when a
/// (re)listing completes.
#[derive(Debug)]
struct Mirror<K> {
    objects: BTreeMap<String, K>,
    listing: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Mirror {
            objects: BTreeMap::new(),
            listing: None,
            synced: false,
        }
    }
}

enum Change<K> {
    Nothing,
    Applied(K),
    Deleted(K),
    Relisted,
}

impl<K: kube::Resource + Clone> Mirror<K> {
    fn apply(&mut self, ev: watcher::Result<watcher::Event<K>>, kind: &str) -> Change<K> {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(kind, error = %e, "sync-k8s: watch error; the watcher retries");
                return Change::Nothing;
            }
        };
        let key = |o: &K| object_key(o.meta().namespace.as_deref(), o.meta().name.as_deref());
        match ev {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                Change::Nothing
            }
            watcher::Event::InitApply(o) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&o), o);
                Change::Nothing
            }
            watcher::Event::InitDone => {
                self.objects = self.listing.take().unwrap_or_default();
                self.synced = true;
                tracing::debug!(kind, objects = self.objects.len(), "sync-k8s: listed");
                Change::Relisted
            }
            watcher::Event::Apply(o) => {
                self.objects.insert(key(&o), o.clone());
                Change::Applied(o)
            }
            watcher::Event::Delete(o) => {
                self.objects.remove(&key(&o));
                Change::Deleted(o)
            }
        }
    }
}

/// What the registrar knows of the cluster.
#[derive(Debug, Default)]
pub(super) struct World {
    services: Mirror<Service>,
    slices: Mirror<EndpointSlice>,
    namespaces: Mirror<Namespace>,
}

fn slice_owner(slice: &EndpointSlice) -> Option<String> {
    let name = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(object_key(slice.namespace().as_deref(), Some(name)))
}

impl World {
    /// Whether every kind has been listed once.
    pub(super) fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.namespaces.synced
    }

    pub(super) fn on_service(&mut self, ev: watcher::Result<watcher::Event<Service>>) -> Touched {
        match self.services.apply(ev, "Service") {
            Change::Nothing => Touched::Nothing,
            Change::Relisted => Touched::All,
            Change::Applied(s) | Change::Deleted(s) => Touched::Services(
                [object_key(
                    s.metadata.namespace.as_deref(),
                    s.metadata.name.as_deref(),
                )]
                .into(),
            ),
        }
    }

    pub(super) fn on_slice(
        &mut self,
        ev: watcher::Result<watcher::Event<EndpointSlice>>,
    ) -> Touched {
        match self.slices.apply(ev, "EndpointSlice") {
            Change::Nothing => Touched::Nothing,
            Change::Relisted => Touched::All,
            Change::Applied(s) | Change::Deleted(s) => {
                Touched::Services(slice_owner(&s).into_iter().collect())
            }
        }
    }

    pub(super) fn on_namespace(
        &mut self,
        ev: watcher::Result<watcher::Event<Namespace>>,
    ) -> Touched {
        match self.namespaces.apply(ev, "Namespace") {
            Change::Nothing => Touched::Nothing,
            Change::Relisted => Touched::All,
            Change::Applied(n) | Change::Deleted(n) => {
                let prefix = format!("{}/", n.name_any());
                Touched::Services(
                    self.services
                        .objects
                        .keys()
                        .filter(|k| k.starts_with(&prefix))
                        .cloned()
                        .collect(),
                )
            }
        }
    }

    /// The desired instances of one Service (none when it is gone).
    pub(super) fn desired_for(&self, key: &str, settings: &SyncSettings) -> Vec<Desired> {
        let slices: Vec<&EndpointSlice> = self
            .slices
            .objects
            .values()
            .filter(|s| slice_owner(s).as_deref() == Some(key))
            .collect();
        self.desired_with(key, &slices, settings)
    }

    fn desired_with(
        &self,
        key: &str,
        slices: &[&EndpointSlice],
        settings: &SyncSettings,
    ) -> Vec<Desired> {
        let Some(svc) = self.services.objects.get(key) else {
            return Vec::new();
        };
        let ns = svc
            .metadata
            .namespace
            .as_deref()
            .and_then(|n| self.namespaces.objects.get(&object_key(None, Some(n))));
        desired_instances(svc, slices, ns, settings)
    }

    /// The desired instances of every Service, grouping the slices by
    /// Service in one pass.
    pub(super) fn desired_all(&self, settings: &SyncSettings) -> Vec<Desired> {
        let mut by_owner: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in self.slices.objects.values() {
            if let Some(owner) = slice_owner(slice) {
                by_owner.entry(owner).or_default().push(slice);
            }
        }
        self.services
            .objects
            .keys()
            .flat_map(|k| {
                let slices = by_owner.get(k).map_or(&[][..], Vec::as_slice);
                self.desired_with(k, slices, settings)
            })
            .collect()
    }
}
