//! Applying desired instances to roster: only ever touching instances that
//! carry the ownership marker.

use std::collections::{BTreeMap, BTreeSet};

use roster_api::{BatchOp, Instance};
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
        let gone: Vec<BatchOp> = actual
            .iter()
            .filter(|(id, inst)| want.get(*id).is_none_or(|d| d.service != inst.service))
            .map(|(id, inst)| BatchOp::deregister(&inst.service, id))
            .collect();
        for (op, result) in gone.iter().zip(self.client.batch_each(&gone).await) {
            match result {
                Ok(()) => done.deregistered += 1,
                Err(e) => {
                    tracing::warn!(instance = %op.id(), error = %e, "sync-k8s: deregistration failed");
                    done.failed += 1;
                }
            }
        }
        let mut changed = Vec::new();
        for (id, want) in want {
            if actual.get(&id).is_some_and(|inst| matches(inst, &want)) {
                applied.insert(id, want);
            } else {
                changed.push(want);
            }
        }
        for (want, result) in changed.iter().zip(self.register_all(&changed).await) {
            match result {
                Ok(()) => {
                    done.registered += 1;
                    applied.insert(want.id.clone(), want.clone());
                }
                Err(e) => {
                    tracing::warn!(instance = %want.id, error = %e, "sync-k8s: registration failed");
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
        let ops: Vec<BatchOp> = stale
            .iter()
            .map(|old| BatchOp::deregister(&old.service, &old.id))
            .collect();
        for (old, result) in stale.iter().zip(self.client.batch_each(&ops).await) {
            match result {
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
        let changed: Vec<Desired> = want
            .into_values()
            .filter(|want| self.applied.get(&want.id) != Some(want))
            .collect();
        for (want, result) in changed.iter().zip(self.register_all(&changed).await) {
            match result {
                Ok(()) => {
                    done.registered += 1;
                    self.applied.insert(want.id.clone(), want.clone());
                }
                Err(e) => {
                    tracing::warn!(instance = %want.id, error = %e, "sync-k8s: registration failed");
                    // Forget it, so the next attempt registers it again.
                    self.applied.remove(&want.id);
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

    /// Registers `wants`, each succeeding or failing on its own, in as few
    /// requests as the registry allows.
    async fn register_all(&self, wants: &[Desired]) -> Vec<Result<(), roster_client::Error>> {
        let ops: Vec<BatchOp> = wants
            .iter()
            .map(|w| BatchOp::register(&w.service, &w.id, w.request.clone()))
            .collect();
        self.client.batch_each(&ops).await
    }
}
