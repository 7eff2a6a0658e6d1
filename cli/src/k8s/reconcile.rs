//! Applying desired instances to roster: only ever touching instances that
//! carry the ownership marker.

use std::collections::{BTreeMap, BTreeSet};

use roster_api::Instance;
use roster_client::{InstanceQuery, RosterClient};

use super::K8sError;
use super::mapping::{Desired, MANAGED_BY_KEY, MANAGED_BY_VALUE};

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Instances registered or re-registered.
    pub registered: usize,
    /// Instances deregistered.
    pub deregistered: usize,
    /// Operations that failed (the next full reconcile retries them).
    pub failed: usize,
}

/// Keeps roster in line with the desired instances; remembers what it
/// applied so that one Service's change costs only that Service's requests.
#[derive(Debug)]
pub struct Reconciler {
    client: RosterClient,
    /// What roster holds of ours, as far as we know, by instance id.
    applied: BTreeMap<String, Desired>,
}

/// Whether a stored instance already is what we want.
fn matches(inst: &Instance, want: &Desired) -> bool {
    let mut tags = inst.tags.clone();
    tags.sort();
    tags.dedup();
    inst.service == want.service
        && Some(&inst.address) == want.request.address.as_ref()
        && inst.port == want.request.port
        && tags == want.request.tags
        && inst.meta == want.request.meta
}

impl Reconciler {
    /// A reconciler that knows nothing yet: call [`Reconciler::full`] first.
    pub fn new(client: RosterClient) -> Reconciler {
        Reconciler {
            client,
            applied: BTreeMap::new(),
        }
    }

    /// Every instance in roster carrying our marker, by id.
    pub async fn owned(&self) -> Result<BTreeMap<String, Instance>, roster_client::Error> {
        let all = InstanceQuery {
            all: true,
            ..InstanceQuery::default()
        };
        let mut out = BTreeMap::new();
        for summary in self.client.services().await?.services {
            let list = match self.client.instances(&summary.name, &all).await {
                Ok(list) => list,
                // Removed between the two requests.
                Err(roster_client::Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for inst in list.instances {
                if inst.meta.get(MANAGED_BY_KEY).map(String::as_str) == Some(MANAGED_BY_VALUE) {
                    out.insert(inst.id.clone(), inst);
                }
            }
        }
        Ok(out)
    }

    /// Full reconcile: reads what roster holds of ours, registers what is
    /// missing or different, deregisters what is no longer desired.
    pub async fn full(&mut self, desired: Vec<Desired>) -> Result<Applied, K8sError> {
        let actual = self.owned().await?;
        let mut done = Applied::default();
        let mut applied = BTreeMap::new();
        let want: BTreeMap<String, Desired> =
            desired.into_iter().map(|d| (d.id.clone(), d)).collect();
        for (id, inst) in &actual {
            let keep = want.get(id).is_some_and(|d| d.service == inst.service);
            if keep {
                continue;
            }
            match self.client.deregister(&inst.service, id).await {
                Ok(()) => done.deregistered += 1,
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "sync-k8s: deregistration failed");
                    done.failed += 1;
                }
            }
        }
        for (id, want) in want {
            if actual.get(&id).is_some_and(|inst| matches(inst, &want)) {
                applied.insert(id, want);
                continue;
            }
            match self.register(&want).await {
                Ok(()) => {
                    done.registered += 1;
                    applied.insert(id, want);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "sync-k8s: registration failed");
                    done.failed += 1;
                }
            }
        }
        self.applied = applied;
        Ok(done)
    }

    /// Applies the desired instances of one Kubernetes Service (`owner` is
    /// `NAMESPACE/NAME`; `desired` is empty when it is gone or not synced).
    pub async fn service(&mut self, owner: &str, desired: Vec<Desired>) -> Applied {
        let mut done = Applied::default();
        let want: BTreeMap<String, Desired> =
            desired.into_iter().map(|d| (d.id.clone(), d)).collect();
        let stale: Vec<Desired> = self
            .applied
            .values()
            .filter(|d| d.owner() == owner)
            .filter(|d| want.get(&d.id).is_none_or(|w| w.service != d.service))
            .cloned()
            .collect();
        for old in stale {
            match self.client.deregister(&old.service, &old.id).await {
                Ok(()) => {
                    done.deregistered += 1;
                    self.applied.remove(&old.id);
                }
                Err(e) => {
                    tracing::warn!(instance = %old.id, error = %e, "sync-k8s: deregistration failed");
                    done.failed += 1;
                }
            }
        }
        for (id, want) in want {
            if self.applied.get(&id) == Some(&want) {
                continue;
            }
            match self.register(&want).await {
                Ok(()) => {
                    done.registered += 1;
                    self.applied.insert(id, want);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "sync-k8s: registration failed");
                    // Forget it, so the next attempt registers it again.
                    self.applied.remove(&id);
                    done.failed += 1;
                }
            }
        }
        done
    }

    /// Ids of the instances it believes roster holds.
    pub fn applied_ids(&self) -> BTreeSet<String> {
        self.applied.keys().cloned().collect()
    }

    async fn register(&self, want: &Desired) -> Result<(), roster_client::Error> {
        self.client
            .register(&want.service, &want.id, &want.request)
            .await
            .map(drop)
    }
}
