//! The running registry: the catalog behind a lock for writers, a published
//! snapshot for readers, the heartbeat fast path, and the reaper task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    Catalog, CatalogError, CatalogLimits, Command, GuardStatus, Instance, Outcome,
    SelfPreservation, Snapshot,
};
use crate::checks::CheckSpec;
use crate::lease::{LeaseTable, Renewal};
use crate::metrics::{HeartbeatResult, Metrics};
use crate::model::{InstanceId, ServiceName};
use crate::store::{Loaded, Store, StoreError, WriteBatch};

mod error;
#[cfg(test)]
mod group_tests;
use crate::watch::{CatalogFilter, CatalogSubscription, Hub, SnapshotPieces, Subscription};
pub use error::{Unavailable, WriteError};

/// Resolves once a change is on disk (or failed to get there).
type Durable = tokio::sync::oneshot::Receiver<Result<(), StoreError>>;

/// A write waiting for the replicated log, and where its result goes.
pub(crate) type Proposal = (
    Command,
    tokio::sync::oneshot::Sender<Result<Outcome, WriteError>>,
);

/// How a replicated registry gets its writes into the log (implemented by
/// [`crate::cluster`]).
pub(crate) trait Replication: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this node is the leader now: only the leader proposes, runs the
    /// lease clock and the active checks.
    fn is_leader(&self) -> bool;
    /// The queue of the leader's proposer. Writes are queued under the catalog
    /// lock, so they enter the log in the order the catalog saw them.
    fn proposals(&self) -> &tokio::sync::mpsc::UnboundedSender<Proposal>;
    /// Whether the leader heard from a majority within an election timeout: a
    /// leader cut off from its followers must not expire anything (the
    /// instances' heartbeats may be going to a newer leader).
    fn has_quorum(&self) -> bool;
    /// Sends a write to the leader (on a follower).
    fn forward(
        &self,
        cmd: Command,
    ) -> futures_util::future::BoxFuture<'static, Result<Outcome, WriteError>>;
    /// Sends a heartbeat to the leader (on a follower).
    fn forward_heartbeat(
        &self,
        service: ServiceName,
        id: InstanceId,
    ) -> futures_util::future::BoxFuture<'static, Result<Outcome, WriteError>>;
    /// How long a write may take to reach a majority: also how long a
    /// follower waits to apply its own forwarded write before answering.
    fn write_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// What the write lock protects: the catalog and the watch topics, so that
/// subscriptions and published changes are ordered with catalog changes.
#[derive(Debug)]
struct Core {
    catalog: Catalog,
    hub: Hub,
}

/// Shared handle to the catalog used by the HTTP API, the reaper, DNS and the cluster.
#[derive(Debug)]
pub struct Registry {
    core: Mutex<Core>,
    leases: Arc<LeaseTable>,
    snapshot: ArcSwap<Snapshot>,
    /// The catalog changed since `snapshot` was published: the next reader
    /// publishes it (see [`Registry::snapshot`]). Set and cleared under the
    /// lock.
    stale: AtomicBool,
    /// Somebody read `snapshot` since it was published: the next group of
    /// writes publishes at once rather than leaving it to a reader.
    read: AtomicBool,
    /// The catalog's index after the last group of writes, published or not.
    index: std::sync::atomic::AtomicU64,
    epoch: Instant,
    reaper_wake: Notify,
    metrics: Arc<Metrics>,
    store: OnceLock<Store>,
    changes: OnceLock<ChangeFeed>,
    preserving: AtomicBool,
    replication: OnceLock<std::sync::Weak<dyn Replication>>,
    /// Wakes the reaper when this node's leadership changes.
    leadership: Notify,
    /// Each service's part of a catalog stream's snapshot.
    snapshot_pieces: SnapshotPieces,
    /// Writes of a node alone waiting for their group (see
    /// [`Registry::write_alone`]).
    queued: Mutex<Vec<QueuedWrite>>,
    /// How many snapshots were published.
    #[cfg(test)]
    publications: std::sync::atomic::AtomicU64,
    /// How many groups of writes changed the catalog.
    #[cfg(test)]
    groups: std::sync::atomic::AtomicU64,
}

/// A write waiting for its group, and where its result goes.
type QueuedWrite = (
    Command,
    tokio::sync::oneshot::Sender<Result<(Outcome, Option<Durable>), CatalogError>>,
);

/// Applies the queued writes when dropped (see [`Registry::write_alone`]).
struct ApplyQueued<'a>(&'a Registry);

impl Drop for ApplyQueued<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Dropped by a panic: answer the queued writers with an error
            // rather than apply (a second panic here would abort).
            self.0
                .queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            return;
        }
        self.0.apply_queued();
    }
}

/// The most instances a group of writes applied under one hold of the
/// catalog lock writes (by [`Command::weight`]; a group has at least one
/// write, whatever its weight).
const MAX_GROUP: usize = 1024;

/// How many of `cmds`, from the first, make the next group.
fn group_len<'a>(cmds: impl Iterator<Item = &'a Command>) -> usize {
    let (mut n, mut weight) = (0, 0);
    for cmd in cmds {
        weight += cmd.weight();
        if n > 0 && weight > MAX_GROUP {
            break;
        }
        n += 1;
    }
    n
}

/// What the health checker is told of a change.
#[derive(Debug)]
pub enum Change {
    /// One instance changed: its state now, `None` when it is gone.
    One(Arc<str>, Option<Arc<Instance>>),
    /// The whole catalog was replaced (a start-up from disk, a restore, a
    /// Raft snapshot): every instance that has an active check now. Only
    /// those concern the checker, so a million instances without one cost a
    /// walk over the catalog, not a million messages.
    All(Vec<(Arc<str>, Arc<Instance>)>),
}

impl Change {
    /// [`Change::All`] for the instances of `snap`.
    fn all(snap: &Snapshot) -> Change {
        Change::All(
            snap.services
                .values()
                .flat_map(|s| s.instances.iter())
                .filter(|(_, inst)| inst.spec.checks.iter().any(CheckSpec::is_active))
                .map(|(id, inst)| (id.clone(), inst.clone()))
                .collect(),
        )
    }
}

/// Sends every change to the health checker.
type ChangeFeed = tokio::sync::mpsc::UnboundedSender<Change>;

/// Receives every change, see [`Registry::feed_changes`].
pub(crate) type ChangeReceiver = tokio::sync::mpsc::UnboundedReceiver<Change>;

#[cfg(test)]
impl Registry {
    /// For tests: how many receivers follow `service`'s changes.
    pub(crate) fn watchers_of(&self, service: &str) -> usize {
        self.lock().hub.receivers_of(service)
    }

    /// For tests: registers `id` under `service` at 10.0.0.1:80, without a
    /// TTL or checks.
    pub(crate) fn register_plain(&self, service: &str, id: &str) {
        self.apply(Command::Register {
            service: ServiceName::parse(service).unwrap(),
            id: InstanceId::parse(id).unwrap(),
            spec: crate::model::InstanceSpec {
                address: "10.0.0.1".into(),
                port: 80,
                tags: vec![],
                meta: Default::default(),
                weights: roster_api::Weights::default(),
                ttl: None,
                deregister_critical_after: Duration::from_secs(60),
                checks: Arc::new([]),
            },
        })
        .unwrap();
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: CatalogLimits, metrics: Arc<Metrics>) -> Self {
        let epoch = Instant::now();
        let catalog = Catalog::new(epoch, limits);
        Registry {
            leases: catalog.leases().clone(),
            snapshot: ArcSwap::from_pointee(catalog.snapshot().clone()),
            stale: AtomicBool::new(false),
            read: AtomicBool::new(false),
            index: catalog.snapshot().index.into(),
            core: Mutex::new(Core {
                catalog,
                hub: Hub::default(),
            }),
            epoch,
            reaper_wake: Notify::new(),
            metrics,
            store: OnceLock::new(),
            changes: OnceLock::new(),
            preserving: AtomicBool::new(false),
            replication: OnceLock::new(),
            leadership: Notify::new(),
            snapshot_pieces: SnapshotPieces::default(),
            queued: Mutex::new(Vec::new()),
            #[cfg(test)]
            publications: Default::default(),
            #[cfg(test)]
            groups: Default::default(),
        }
    }

    /// Sets the self-preservation guard (before the registry is shared).
    pub fn set_self_preservation(&self, settings: SelfPreservation) {
        self.lock().catalog.set_self_preservation(settings);
    }

    /// Looks up an instance by id alone (ids are unique in the registry).
    pub(crate) fn instance_by_id(&self, id: &str) -> Option<Arc<Instance>> {
        self.lock().catalog.instance_by_id(id).cloned()
    }

    /// The instances (service, id) that have a TTL check with this id.
    pub(crate) fn find_ttl_check(&self, check: &str) -> Vec<(Arc<str>, Arc<str>)> {
        let core = self.lock();
        core.catalog
            .instances_with_ttl_check(check)
            .iter()
            .filter_map(|id| core.catalog.instance_by_id(id))
            .map(|inst| (inst.service.clone(), inst.id.clone()))
            .collect()
    }

    /// The leases of a service's instances, for operators: `(id, ttl, time since
    /// the last renewal, expired)`, times in nanoseconds, in instance id order.
    /// A lease's deadline is its last renewal plus its ttl, so the renewal time is
    /// read back from the deadline (a restore's grace makes it look fresh).
    pub(crate) fn lease_ages(&self, service: &str) -> Vec<(Arc<str>, u64, u64, bool)> {
        let now = crate::clock::since(self.epoch, Instant::now());
        let snap = self.snapshot();
        let Some(svc) = snap.services.get(service) else {
            return Vec::new();
        };
        svc.instances
            .keys()
            .filter_map(|id| {
                let lease = self.leases.get(id)?;
                let renewed = lease.deadline().saturating_sub(lease.ttl());
                Some((
                    id.clone(),
                    lease.ttl(),
                    now.saturating_sub(renewed),
                    lease.is_expired(),
                ))
            })
            .collect()
    }

    /// Whether self-preservation is holding overdue leases now.
    pub fn self_preservation_active(&self) -> bool {
        self.preserving.load(Ordering::Relaxed)
    }

    /// What self-preservation is doing now: how many leases it holds, since
    /// when, and how fast they drain. In a cluster, only the leader's guard
    /// acts; a follower's is inactive.
    pub fn self_preservation(&self) -> GuardStatus {
        self.lock().catalog.guard_status()
    }

    /// Every instance in the catalog now, followed by every later change, for
    /// the one consumer that follows the whole catalog (the health checker).
    /// Returns `None` if it was called before.
    pub fn feed_changes(&self) -> Option<ChangeReceiver> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let core = self.lock();
        let _ = tx.send(Change::all(core.catalog.snapshot()));
        self.changes.set(tx).ok()?;
        drop(core);
        Some(rx)
    }

    /// The metrics this registry reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The catalog's state, including every write answered so far.
    ///
    /// Readers share a published copy and do not wait for writers, except
    /// the first reader after a run of writes that nobody read: writes
    /// publish their state only when somebody read the one before (see
    /// `Registry::apply_group`), and otherwise leave it to the next reader,
    /// which takes the lock once to publish it. A copy that nobody holds is
    /// what lets the catalog's persistent maps change in place: a published
    /// one makes the next write copy every tree node it shares with it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        if self.stale.load(Ordering::Acquire) {
            let core = self.lock();
            if self.stale.load(Ordering::Relaxed) {
                self.publish(&core.catalog);
            }
        }
        // Written only when it changes: readers on many cores do not pass
        // the cache line around.
        if !self.read.load(Ordering::Relaxed) {
            self.read.store(true, Ordering::Relaxed);
        }
        self.snapshot.load_full()
    }

    /// Publishes the catalog's state for readers. Under the lock.
    fn publish(&self, catalog: &Catalog) {
        self.snapshot.store(Arc::new(catalog.snapshot().clone()));
        self.stale.store(false, Ordering::Release);
        #[cfg(test)]
        self.publications.fetch_add(1, Ordering::Relaxed);
    }

    /// The catalog's index after the last write (what a heartbeat that
    /// changed nothing answers), without publishing the state.
    pub(crate) fn index(&self) -> u64 {
        self.index.load(Ordering::Acquire)
    }

    /// Runs `f` on the catalog's current state under the lock, without
    /// publishing it: how a writer reads back what it wrote (the answer to a
    /// registration) without making the next write copy the tree.
    pub(crate) fn with_current<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(self.lock().catalog.snapshot())
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The catalog is only mutated inside `apply`, which does not panic halfway on
        // valid states; a poisoned lock still holds a consistent catalog.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every service watch stream (the server is shutting down): see
    /// `Hub::close`.
    pub fn close_watches(&self) {
        self.lock().hub.close();
    }

    /// Subscribes to the changes of one service (which need not exist yet).
    pub fn subscribe(&self, service: &ServiceName) -> Subscription {
        let mut core = self.lock();
        let Core { catalog, hub } = &mut *core;
        hub.subscribe(catalog.snapshot(), service.as_arc())
    }

    /// Subscribes to the catalog feed: every change as a delta (see
    /// [`Hub::subscribe_catalog`] for `resume`).
    pub(crate) fn subscribe_catalog(&self, resume: Option<u64>) -> CatalogSubscription {
        let mut core = self.lock();
        let Core { catalog, hub } = &mut *core;
        hub.subscribe_catalog(catalog.snapshot(), resume)
    }

    /// The state of every service in `snap` that passes `filter`, as a catalog
    /// stream's `snapshot` event: put together from each service's JSON, which
    /// is serialized once per change of the service, not once per stream.
    pub(crate) fn catalog_snapshot_json(&self, snap: &Snapshot, filter: &CatalogFilter) -> String {
        self.snapshot_pieces.snapshot_json(snap, filter)
    }

    /// A receiver of the global index, which moves on every change.
    pub(crate) fn subscribe_list(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock().hub.subscribe_list()
    }

    /// Loads what a store held at start-up, then writes every later change to it.
    /// Leases get `grace` on top of their TTL.
    pub(crate) fn attach_store(&self, store: Store, loaded: Loaded, grace: Duration) {
        let cmd = Command::Restore {
            index: loaded.index,
            names_index: loaded.names_index,
            instances: loaded.instances,
            grace,
            stamp: false,
        };
        // The data came from the store: nothing to write back.
        let _ = self.apply_inner(cmd, false);
        if self.store.set(store).is_err() {
            tracing::error!("a store was already attached; keeping the first");
        }
    }

    /// Makes this registry one node of a replicated cluster: writes go through
    /// `replication`, ticks only decide (see [`Catalog::set_replicated`]), and the
    /// lease clock runs only while this node leads.
    pub(crate) fn attach_replication(&self, replication: std::sync::Weak<dyn Replication>) {
        self.lock().catalog.set_replicated();
        if self.replication.set(replication).is_err() {
            tracing::error!("replication was already attached; keeping the first");
        }
    }

    /// Switches the catalog to replicated mode before anything is applied.
    pub fn set_replicated(&self) {
        self.lock().catalog.set_replicated();
    }

    fn replication(&self) -> Option<Arc<dyn Replication>> {
        self.replication.get().and_then(std::sync::Weak::upgrade)
    }

    /// Whether this registry is one node of a cluster.
    pub(crate) fn is_replicated(&self) -> bool {
        self.replication.get().is_some()
    }

    /// Whether this node runs the lease clock and the active checks: always
    /// alone, only while leading in a cluster.
    pub(crate) fn is_leading(&self) -> bool {
        match self.replication.get() {
            None => true,
            Some(r) => r.upgrade().is_some_and(|r| r.is_leader()),
        }
    }

    /// Called by the cluster when this node gains or loses leadership. A new
    /// leader re-arms every lease at now + ttl + `grace` (its followers' soft
    /// lease clocks never saw the heartbeats), so a failover expires nothing
    /// that is alive.
    pub(crate) fn leadership_changed(&self, leading: bool, grace: Duration) {
        if leading {
            self.lock().catalog.rearm(Instant::now(), grace);
        }
        self.leadership.notify_one();
        self.reaper_wake.notify_one();
    }

    /// Waits, at most `limit`, until this node's catalog reaches `index`.
    async fn wait_for_index(&self, index: u64, limit: Duration) {
        let mut rx = self.subscribe_list();
        let _ = tokio::time::timeout(limit, async {
            while *rx.borrow_and_update() < index {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Applies commands that came out of the replicated log (every node, in
    /// log order), in groups (see [`Registry::apply_group`]): one publication
    /// per group rather than per command. Nothing goes to the store: the log
    /// is the durable copy.
    pub(crate) fn apply_committed_all(
        &self,
        cmds: Vec<Command>,
    ) -> Vec<Result<Outcome, CatalogError>> {
        let mut results = Vec::with_capacity(cmds.len());
        let mut cmds = cmds;
        while !cmds.is_empty() {
            let n = group_len(cmds.iter());
            let group = self.apply_group(cmds.drain(..n), false, |_| {});
            results.extend(group.into_iter().map(|r| r.map(|(out, _)| out)));
        }
        results
    }

    /// Replaces the catalog with a replicated snapshot, stamped so watchers see it.
    /// `service_indexes` are the services' own modify indexes (a removal bumps
    /// a service's index beyond its instances'), so they match the leader's.
    pub(crate) fn install(
        &self,
        index: u64,
        names_index: u64,
        instances: Vec<Arc<Instance>>,
        grace: Duration,
        service_indexes: &std::collections::BTreeMap<String, u64>,
    ) {
        let _ = self.apply_with(
            Command::Restore {
                index,
                names_index,
                instances,
                grace,
                stamp: false,
            },
            false,
            |catalog| catalog.set_service_indexes(service_indexes),
        );
    }

    /// Applies a command and waits until the change is on disk (at once without a
    /// store), or, replicated, until the log has it on a majority and it is
    /// applied here. What HTTP writers call before they answer.
    pub(crate) async fn write(&self, cmd: Command) -> Result<Outcome, WriteError> {
        if let Some(rep) = self.replication.get() {
            let Some(rep) = rep.upgrade() else {
                return Err(Unavailable::ShuttingDown.into());
            };
            if !rep.is_leader() {
                let out = rep.forward(cmd).await?;
                // Read your writes on this node too: the caller reads back what
                // it wrote, from this node's catalog. A node that cannot apply
                // a committed entry within the write timeout is cut off from
                // the leader; the write is done all the same, and the handler
                // says so (see `http::services::written`).
                self.wait_for_index(out.index, rep.write_timeout()).await;
                return Ok(out);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            {
                let _order = self.lock();
                rep.proposals()
                    .send((cmd, tx))
                    .map_err(|_| Unavailable::ProposerStopped)?;
            }
            return rx.await.map_err(|_| Unavailable::ProposerStopped)?;
        }
        let (out, durable) = self.write_alone(cmd).await?;
        if let Some(durable) = durable {
            durable.await.map_err(|_| StoreError::Stopped)??;
        }
        Ok(out)
    }

    /// Reports a result this node decided on its own (a probe's verdict) without
    /// waiting for it: applied at once and queued for the store when alone;
    /// on a cluster leader proposed to the log, so every node applies it when
    /// it commits (applying it here first would put this node ahead of the
    /// log). A follower has nothing to report: only the leader probes.
    pub(crate) fn report(&self, cmd: Command) -> Result<(), CatalogError> {
        if self.replication.get().is_none() {
            return self.apply(cmd).map(|_| ());
        }
        if let Some(rep) = self.replication()
            && rep.is_leader()
        {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let _order = self.lock();
            let _ = rep.proposals().send((cmd, tx));
        }
        Ok(())
    }

    /// Applies a command now and publishes the new state. A change is queued for
    /// the store but not waited for (the reaper's way).
    pub fn apply(&self, cmd: Command) -> Result<Outcome, CatalogError> {
        self.apply_inner(cmd, true).map(|(out, _)| out)
    }

    fn apply_inner(
        &self,
        cmd: Command,
        persist: bool,
    ) -> Result<(Outcome, Option<Durable>), CatalogError> {
        self.apply_with(cmd, persist, |_| {})
    }

    /// [`Registry::apply_inner`], with `after` run on the catalog before the
    /// change is published.
    fn apply_with(
        &self,
        cmd: Command,
        persist: bool,
        after: impl FnOnce(&mut Catalog),
    ) -> Result<(Outcome, Option<Durable>), CatalogError> {
        self.apply_group(std::iter::once(cmd), persist, after)
            .pop()
            .expect("one result per command")
    }

    /// Applies `cmds` in order under one hold of the lock, each as its own
    /// change (its own index, store batch and result), and publishes one
    /// snapshot for all of them: readers and watchers see the state after
    /// the last, and the catalog's persistent maps copy each node they share
    /// with the published snapshot once per group rather than once per
    /// command. When nobody read the last published snapshot, the group
    /// leaves the publication to the next reader (see [`Registry::snapshot`]);
    /// watchers are told at once either way. `after` runs on the catalog
    /// before the publication.
    fn apply_group(
        &self,
        cmds: impl Iterator<Item = Command>,
        persist: bool,
        after: impl FnOnce(&mut Catalog),
    ) -> Vec<Result<(Outcome, Option<Durable>), CatalogError>> {
        let mut core = self.lock();
        let Core { catalog, hub } = &mut *core;
        let before = catalog.next_deadline();
        let mut results = Vec::with_capacity(cmds.size_hint().0);
        // What the group changed, for the one publication. The catalog's own
        // lists hold the last applied command's until the next `apply`
        // clears them: they are copied out only when another command comes,
        // so a lone write (most groups) is published from them directly.
        let (mut touched, mut changed, mut applied) = (Vec::new(), Vec::new(), 0usize);
        let mut unsaved = false;
        for cmd in cmds {
            if std::mem::take(&mut unsaved) {
                touched.extend_from_slice(catalog.touched());
                changed.extend_from_slice(catalog.changed());
            }
            let replace_all = matches!(cmd, Command::Restore { .. });
            let probed_before = catalog.has_active_checks();
            let out = match catalog.apply(cmd, Instant::now()) {
                Ok(out) => out,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let mut durable = None;
            if out.changed {
                applied += 1;
                unsaved = true;
                let snap = catalog.snapshot();
                if persist && let Some(store) = self.store.get() {
                    // Queued under the lock, so batches reach the store in index order.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let changes = if replace_all {
                        snap.services
                            .values()
                            .flat_map(|s| s.instances.iter())
                            .map(|(id, inst)| (id.clone(), Some(inst.clone())))
                            .collect()
                    } else {
                        catalog
                            .changed()
                            .iter()
                            .map(|id| (id.clone(), catalog.instance_by_id(id).cloned()))
                            .collect()
                    };
                    store.submit(WriteBatch {
                        index: snap.index,
                        names_index: snap.names_index,
                        replace_all,
                        changes,
                        done: Some(tx),
                    });
                    durable = Some(rx);
                }
                if let Some(feed) = self.changes.get() {
                    if replace_all {
                        let _ = feed.send(Change::all(snap));
                    } else if probed_before || catalog.has_active_checks() {
                        // (Otherwise no instance had an active check before or
                        // after: the checker holds nothing this change touches.)
                        for id in catalog.changed() {
                            let inst = catalog.instance_by_id(id).cloned();
                            let _ = feed.send(Change::One(id.clone(), inst));
                        }
                    }
                }
            }
            results.push(Ok((out, durable)));
        }
        after(catalog);
        if applied > 0 {
            let (touched, changed): (&[Arc<str>], &[Arc<str>]) = if applied == 1 && unsaved {
                // The one applied command was the last: its lists are intact.
                (catalog.touched(), catalog.changed())
            } else {
                if unsaved {
                    touched.extend_from_slice(catalog.touched());
                    changed.extend_from_slice(catalog.changed());
                }
                crate::catalog::dedup_names(&mut touched);
                crate::catalog::dedup_names(&mut changed);
                (&touched, &changed)
            };
            let snap = catalog.snapshot();
            self.index.store(snap.index, Ordering::Release);
            #[cfg(test)]
            self.groups.fetch_add(1, Ordering::Relaxed);
            if self.read.swap(false, Ordering::Relaxed) {
                self.publish(catalog);
            } else {
                self.stale.store(true, Ordering::Release);
            }
            hub.publish(snap, touched, changed);
        }
        let guard = catalog.guard_status();
        let after = catalog.next_deadline();
        drop(core);
        if let Some(after) = after
            && before.is_none_or(|b| after < b)
        {
            self.reaper_wake.notify_one();
        }
        for (out, _) in results.iter().flatten() {
            if out.expired > 0 || out.reaped > 0 {
                self.metrics.reaper(out.expired, out.reaped);
            }
            self.report_guard(out, &guard);
        }
        results
    }

    /// Applies a write of this node alone (no cluster) together with the
    /// writes that queue behind it meanwhile. The first writer of a group
    /// yields once before it applies: the requests that are ready to run
    /// (other connections' writes) reach this point and queue, and the group
    /// is applied by [`Registry::apply_group`] with one publication. Under
    /// load that turns a copy of the catalog's shared tree nodes, a snapshot
    /// and a watcher wake-up per write into one per group; alone, a write
    /// waits for one yield.
    async fn write_alone(&self, cmd: Command) -> Result<(Outcome, Option<Durable>), WriteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut queue = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            queue.push((cmd, tx));
            queue.len() == 1
        };
        if first {
            // Applies the group when dropped: also when this request is
            // dropped while it yields, so the writes behind it are not
            // stranded.
            let applier = ApplyQueued(self);
            tokio::task::yield_now().await;
            drop(applier);
        }
        match rx.await {
            Ok(result) => Ok(result?),
            // The applier panicked before it applied the group.
            Err(_) => Err(Unavailable::GroupLost.into()),
        }
    }

    /// Applies every queued write (see [`Registry::write_alone`]), at most
    /// [`MAX_GROUP`] instances' worth to a publication, so that the lock is
    /// let go and readers see progress between groups however many writers
    /// queue.
    fn apply_queued(&self) {
        loop {
            let group: Vec<QueuedWrite> = {
                let mut queue = self.queued.lock().unwrap_or_else(|p| p.into_inner());
                let n = group_len(queue.iter().map(|(cmd, _)| cmd));
                queue.drain(..n).collect()
            };
            if group.is_empty() {
                return;
            }
            let (cmds, answers): (Vec<Command>, Vec<_>) = group.into_iter().unzip();
            let results = self.apply_group(cmds.into_iter(), true, |_| {});
            for (answer, result) in answers.into_iter().zip(results) {
                // A writer that went away meanwhile: its write is applied all
                // the same, as one whose answer was lost on the way.
                let _ = answer.send(result);
            }
        }
    }

    /// Publishes the self-preservation guard after a command: the metrics, and
    /// one log line each time it turns on or off. Every path that ticks (alone
    /// and as a cluster's leader) goes through here.
    fn report_guard(&self, out: &Outcome, guard: &GuardStatus) {
        self.metrics.self_preservation_status(guard, Instant::now());
        let preserving = guard.active;
        if self.preserving.swap(preserving, Ordering::Relaxed) == preserving {
            return;
        }
        if preserving {
            tracing::warn!(
                held = out.held,
                max_hold_secs = guard.max_hold.as_secs_f64(),
                "self-preservation on: too many leases ran out at once, so overdue leases are held (for at most max_hold past their deadlines) until heartbeats come back (is the registry cut off from its instances?)"
            );
        } else {
            tracing::warn!(
                released_total = guard.released_total,
                "self-preservation off: leases expire again"
            );
        }
    }

    /// Renews an instance's lease. The common case touches one atomic and takes no
    /// catalog lock; an expired lease goes through the catalog to flip health back.
    pub async fn heartbeat(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Outcome, WriteError> {
        if let Some(rep) = self.replication()
            && !rep.is_leader()
        {
            return rep.forward_heartbeat(service.clone(), id.clone()).await;
        }
        let now = crate::clock::since(self.epoch, Instant::now());
        if self.leases.renew(service.as_str(), id.as_str(), now) == Renewal::Renewed {
            self.metrics.heartbeat(HeartbeatResult::Renewed);
            return Ok(Outcome {
                index: self.index(),
                ..Outcome::default()
            });
        }
        let result = self
            .write(Command::Heartbeat {
                service: service.clone(),
                id: id.clone(),
            })
            .await;
        self.metrics.heartbeat(match &result {
            Ok(out) if out.changed => HeartbeatResult::Revived,
            Ok(_) => HeartbeatResult::Renewed,
            Err(_) => HeartbeatResult::Unknown,
        });
        result
    }

    /// Expires leases and removes long-critical instances as their deadlines come,
    /// until `cancel` fires. One task serves every lease: it sleeps until the
    /// earliest deadline and is woken early only when an earlier one appears.
    pub async fn run_reaper(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            if !self.is_leading() {
                // A follower's lease clock never saw the heartbeats: it waits.
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = self.leadership.notified() => continue,
                }
            }
            let next = self.lock().catalog.next_deadline();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.reaper_wake.notified() => {}
                () = self.leadership.notified() => {}
                () = due => {
                    if self.is_replicated() {
                        if !self.tick_replicated() {
                            // No quorum: look again shortly rather than spin on
                            // the timers that stay due.
                            tokio::select! {
                                () = cancel.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                            }
                        }
                    } else {
                        match self.apply(Command::Tick) {
                            Ok(out) if out.expired > 0 || out.reaped > 0 => {
                                tracing::info!(expired = out.expired, reaped = out.reaped, index = out.index, "leases expired");
                            }
                            Ok(_) => {}
                            Err(e) => {
                                self.metrics.reaper_error();
                                tracing::error!(error = %e, "the lease clock's tick failed");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A leader's tick: decides what ran out and queues the effects for the log,
    /// under the catalog lock so they are ordered with the writes around them.
    fn tick_replicated(&self) -> bool {
        let Some(rep) = self.replication() else {
            return false;
        };
        if !rep.has_quorum() {
            return false;
        }
        let mut core = self.lock();
        let out = match core.catalog.apply(Command::Tick, Instant::now()) {
            Ok(out) => out,
            Err(e) => {
                drop(core);
                self.metrics.reaper_error();
                tracing::error!(error = %e, "the lease clock's tick failed");
                return true;
            }
        };
        let effects = core.catalog.take_effects();
        let guard = core.catalog.guard_status();
        for cmd in effects {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let _ = rep.proposals().send((cmd, tx));
        }
        drop(core);
        if out.expired > 0 || out.reaped > 0 {
            tracing::info!(
                expired = out.expired,
                reaped = out.reaped,
                "leases ran out; replicating"
            );
        }
        // Expirations are counted when the log applies them, on every node.
        self.report_guard(&out, &guard);
        true
    }
}
