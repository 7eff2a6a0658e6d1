//! The commands that change instances: register, report a check, renew, put
//! and remove, with the bookkeeping of leases, TTL-check timers and removal
//! timers that goes with them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imbl::OrdMap;
use roster_api::Health;

use super::{
    Catalog, CatalogError, CheckSource, FastMap, Instance, Record, ServiceState, Timer, nanos,
    spec_checks_initial,
};
use crate::checks::{CheckState, Target, truncate_output};
use crate::lease::{Lease, LeaseTable};
use crate::model::{InstanceId, InstanceSpec, ServiceName};

impl Catalog {
    pub(super) fn register(
        &mut self,
        service: ServiceName,
        id: InstanceId,
        spec: InstanceSpec,
        now: u64,
        next: u64,
    ) -> Result<bool, CatalogError> {
        // For a new instance, the catalog's own copy of its service's name,
        // found by the search that counts the service's instances: a million
        // instances of a hundred services share a hundred names, not a
        // million copies (the record and the lease share it too).
        let mut name = None;
        let existing = match self.records.get(id.as_str()) {
            Some(rec) if rec.service != *service.as_arc() => {
                return Err(CatalogError::Conflict {
                    id: id.to_string(),
                    existing: rec.service.to_string(),
                });
            }
            Some(_) => self.state.instance(service.as_str(), id.as_str()).cloned(),
            None => {
                let known = self.state.services.get_key_value(service.as_str());
                let in_service = known.map_or(0, |(_, s)| s.instances.len());
                name = known.map(|(name, _)| name.clone());
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
                    .remove(due, Timer::CheckReap(i), id.as_arc().clone());
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
                    .insert(due, Timer::Check(i as u16), inst.id.clone());
            }
            let rec = self
                .records
                .get_mut(id.as_str())
                .expect("record of a known instance");
            if let Some(d) = rec.held.take() {
                self.held.remove(&(d, id.as_arc().clone()));
            }
            rec.hold_until = None;
            let old_lease = rec.lease.take();
            let old_timer = rec.lease_timer.take();
            if let Some(due) = old_timer {
                self.timers.remove(due, Timer::Lease, id.as_arc().clone());
            }
            if old_lease.is_some() {
                self.leases.remove(id.as_str());
            }
            inst.lease = None;
            self.cancel_reap(id.as_arc());
            self.arm_lease(&mut inst, now);
            self.put_known(inst, next, Some(current), false);
            return Ok(true);
        }
        let spec_checks = spec.checks.clone();
        // The count's search found the catalog's copy of the name, unless
        // the service is new.
        let new_name = name.is_none();
        let mut inst = Instance {
            id: id.as_arc().clone(),
            service: name.unwrap_or_else(|| service.as_arc().clone()),
            spec,
            lease: None,
            maintenance: None,
            checks: spec_checks_initial(&spec_checks),
            create_index: next,
            modify_index: next,
        };
        self.records.insert(
            inst.id.clone(),
            Box::new(Record {
                service: inst.service.clone(),
                ..Record::default()
            }),
        );
        self.arm_lease(&mut inst, now);
        self.arm_checks(&inst, now);
        self.put_known(inst, next, None, new_name);
        self.created += 1;
        Ok(true)
    }

    pub(super) fn restore(
        &mut self,
        index: u64,
        names_index: u64,
        instances: Vec<Arc<Instance>>,
        now: u64,
        grace: Duration,
        stamp: bool,
    ) {
        self.touched.extend(self.state.services.keys().cloned());
        self.changed.extend(self.records.keys().cloned());
        // Ids repeat only if the catalog had instances or the list repeats
        // one; otherwise the million of a start-up need no sort.
        let mut repeats = !self.changed.is_empty();
        // The leases go with them: `fill` puts a new table in place.
        self.records.clear();
        self.timers.clear();
        // Every timer of the restore, put into the set at once at the end:
        // sorted and built in one pass, not a million inserts into a tree
        // whose keys (mostly one deadline) differ only by their ids.
        let mut timers = Vec::new();
        self.held.clear();
        self.guard_at = 0;
        self.ttl_index.clear();
        self.state.services = OrdMap::new();
        let grace = nanos(grace);
        let count = instances.len();
        // Grown once, not doubled (and rehashed) twenty times on the way to a million.
        self.records.reserve(count);
        // The loop below does each instance's own bookkeeping; the three big
        // structures (records, leases, each service's ordered map) are filled
        // afterwards, two of them beside each other (see `fill`).
        let mut records = Vec::with_capacity(count);
        let mut leases = Vec::new();
        // Each service's instances, gathered by one name lookup (none for a
        // run of one service's instances) instead of three tree searches each.
        let mut slots: FastMap<Arc<str>, usize> = FastMap::default();
        let mut groups: Vec<Group> = Vec::new();
        let mut last = usize::MAX;
        let mut actively = 0;
        for mut shared in instances {
            let inst = Arc::make_mut(&mut shared);
            if groups.get(last).is_none_or(|g| g.name != inst.service) {
                last = *slots.entry(inst.service.clone()).or_insert_with(|| {
                    groups.push(Group {
                        name: inst.service.clone(),
                        modify_index: 0,
                        members: Vec::new(),
                    });
                    groups.len() - 1
                });
            }
            let group = &mut groups[last];
            inst.service = group.name.clone();
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
                    timers.push((due, Timer::Check(i as u16), inst.id.clone()));
                }
                if let Some(after) = def.deregister_critical_after
                    && inst.checks[i].status == Health::Critical
                {
                    let due = now.saturating_add(grace).saturating_add(nanos(after));
                    rec.check_reaps.push((i as u16, due));
                    timers.push((due, Timer::CheckReap(i as u16), inst.id.clone()));
                }
            }
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
                    timers.push((reap_at, Timer::Reap, inst.id.clone()));
                } else {
                    inst.lease = Some(Health::Passing);
                    rec.lease_timer = Some(deadline);
                    timers.push((deadline, Timer::Lease, inst.id.clone()));
                }
                leases.push((inst.id.clone(), lease.clone()));
                rec.lease = Some(lease);
            } else {
                inst.lease = None;
            }
            group.modify_index = if stamp {
                index
            } else {
                group.modify_index.max(inst.modify_index)
            };
            self.changed.push(inst.id.clone());
            records.push((inst.id.clone(), Box::new(rec)));
            actively += usize::from(actively_checked(inst));
            self.index_ttl(&shared);
            groups[last].members.push((shared.id.clone(), shared));
        }
        // Each service once (the services before the restore are in
        // already), not a million times to sort and dedup.
        self.touched.extend(groups.iter().map(|g| g.name.clone()));
        let repeated = fill(
            &mut self.records,
            &self.leases,
            &mut self.state.services,
            &mut self.timers,
            Filling {
                records,
                leases,
                groups,
                timers,
            },
        );
        repeats |= repeated;
        self.actively_checked = if repeated {
            // Counted twice for an id listed twice: count what is kept.
            self.state
                .services
                .values()
                .flat_map(|s| s.instances.values())
                .filter(|i| actively_checked(i))
                .count()
        } else {
            actively
        };
        self.state.names_index = if stamp {
            index
        } else {
            names_index.clamp(1, index)
        };
        if repeats {
            self.changed.sort_unstable();
            self.changed.dedup();
        }
    }

    /// Gives `inst` a fresh live lease if its spec has a TTL.
    pub(super) fn arm_lease(&mut self, inst: &mut Instance, now: u64) {
        let Some(ttl) = inst.spec.ttl else { return };
        let ttl = crate::clock::nanos(ttl);
        let deadline = now.saturating_add(ttl);
        let lease = Arc::new(Lease::new(inst.service.clone(), ttl, deadline));
        self.leases.insert(inst.id.clone(), lease.clone());
        self.timers.insert(deadline, Timer::Lease, inst.id.clone());
        let rec = self.records.get_mut(&inst.id).expect("record exists");
        rec.lease = Some(lease);
        rec.lease_timer = Some(deadline);
        inst.lease = Some(Health::Passing);
    }

    /// Arms the timers of `inst`'s TTL checks, due one TTL after `now`.
    pub(super) fn arm_checks(&mut self, inst: &Instance, now: u64) {
        let rec = self.records.get_mut(&inst.id).expect("record exists");
        for (i, def) in inst.spec.checks.iter().enumerate() {
            if let Target::Ttl { ttl } = def.target {
                let due = now.saturating_add(nanos(ttl));
                rec.check_timers.push((i as u16, due));
                self.timers
                    .insert(due, Timer::Check(i as u16), inst.id.clone());
            }
        }
    }

    pub(super) fn index_ttl(&mut self, inst: &Instance) {
        for def in inst.spec.checks.iter() {
            if matches!(def.target, Target::Ttl { .. }) {
                self.ttl_index
                    .entry(def.id.clone())
                    .or_default()
                    .push(inst.id.clone());
            }
        }
    }

    pub(super) fn unindex_ttl(&mut self, inst: &Instance) {
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
    pub(super) fn sync_check_reaps(&mut self, inst: &Instance) {
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
                timers.remove(*due, Timer::CheckReap(*i), inst.id.clone());
            }
            keep
        });
        for (i, after) in wanted {
            if rec.check_reaps.iter().all(|(r, _)| *r != i) {
                let due = self.now.saturating_add(nanos(after));
                rec.check_reaps.push((i, due));
                timers.insert(due, Timer::CheckReap(i), inst.id.clone());
            }
        }
    }

    pub(super) fn cancel_checks(&mut self, id: &Arc<str>) {
        if let Some(rec) = self.records.get_mut(id) {
            for (i, due) in rec.check_timers.drain(..) {
                self.timers.remove(due, Timer::Check(i), id.clone());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_check(
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
                            .remove(slot.1, Timer::Check(key), current.id.clone());
                        slot.1 = due;
                    }
                    None => rec.check_timers.push((key, due)),
                }
                self.timers
                    .insert(due, Timer::Check(key), current.id.clone());
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
        self.put_known(inst, next, Some(current), false);
        Ok(true)
    }

    /// Renews a lease under the catalog lock; flips an expired lease back to passing.
    pub(super) fn renew(&mut self, id: &Arc<str>, now: u64, next: u64) -> bool {
        let rec = self
            .records
            .get_mut(id)
            .expect("record of a known instance");
        let Some(lease) = rec.lease.clone() else {
            return false;
        };
        let deadline = now.saturating_add(lease.ttl()).max(lease.deadline());
        // Replicated, the state every node shares decides, not the soft lease
        // (the leader may have marked it expired before its decision was
        // replicated, or the decision may have been dropped).
        let was_expired = if self.effects.is_some() {
            let service = &self.records[id].service;
            self.state.services[service].instances[id].lease == Some(Health::Critical)
        } else {
            lease.is_expired()
        };
        let rec = self
            .records
            .get_mut(id)
            .expect("record of a known instance");
        lease.revive(deadline);
        // Proven alive: a later silence starts a fresh hold budget.
        if let Some(d) = rec.held.take() {
            self.held.remove(&(d, id.clone()));
        }
        rec.hold_until = None;
        if rec.lease_timer.is_none() {
            rec.lease_timer = Some(deadline);
            self.timers.insert(deadline, Timer::Lease, id.clone());
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

    /// Applies a replicated lease expiry: the lease is marked expired here too
    /// (so a later heartbeat revives it on every node alike) and the removal
    /// clock starts now.
    pub(super) fn expire_lease(&mut self, current: Arc<Instance>, now: u64, next: u64) -> bool {
        let id = current.id.clone();
        let rec = self
            .records
            .get_mut(&id)
            .expect("record of a known instance");
        let Some(lease) = rec.lease.clone() else {
            return false;
        };
        let _ = lease.try_expire(u64::MAX);
        if let Some(d) = rec.held.take() {
            self.held.remove(&(d, id.clone()));
        }
        if let Some(due) = rec.lease_timer.take() {
            self.timers.remove(due, Timer::Lease, id.clone());
        }
        if rec.reap_timer.is_none() {
            let reap_at = now.saturating_add(nanos(current.spec.deregister_critical_after));
            rec.reap_timer = Some(reap_at);
            self.timers.insert(reap_at, Timer::Reap, id);
        }
        let mut inst = (*current).clone();
        inst.lease = Some(Health::Critical);
        self.put_known(inst, next, Some(current), false);
        true
    }

    /// Applies a replicated TTL-check expiry.
    pub(super) fn expire_check(
        &mut self,
        current: Arc<Instance>,
        check: &str,
        output: String,
        next: u64,
    ) -> bool {
        let Some(p) = current.spec.checks.iter().position(|d| &*d.id == check) else {
            return false;
        };
        let state = &current.checks[p];
        if state.status == Health::Critical && state.output == output {
            return false;
        }
        if let Some(rec) = self.records.get_mut(&current.id)
            && let Some(at) = rec
                .check_timers
                .iter()
                .position(|(i, _)| usize::from(*i) == p)
        {
            let (i, due) = rec.check_timers.remove(at);
            self.timers.remove(due, Timer::Check(i), current.id.clone());
        }
        let mut inst = (*current).clone();
        inst.checks[p] = CheckState {
            status: Health::Critical,
            output,
        };
        self.put_known(inst, next, Some(current), false);
        true
    }

    pub(super) fn cancel_reap(&mut self, id: &Arc<str>) {
        if let Some(rec) = self.records.get_mut(id)
            && let Some(due) = rec.reap_timer.take()
        {
            self.timers.remove(due, Timer::Reap, id.clone());
        }
    }

    /// Stores a changed instance and stamps the index on it and its service.
    pub(super) fn put(&mut self, inst: Instance, index: u64) {
        // One search of the services for both questions (the names are
        // compared as strings, a good part of a registration's time).
        let service = self.state.services.get(&inst.service);
        let new_name = service.is_none();
        let old = service.and_then(|s| s.instances.get(&inst.id)).cloned();
        self.put_known(inst, index, old, new_name);
    }

    /// [`put`](Self::put) for a caller that already knows the instance's
    /// current version (`old`) and whether its service is new: a new
    /// instance's registration has searched for both already, and these
    /// ordered-map searches, string compares all the way down, were a
    /// good part of its time.
    pub(super) fn put_known(
        &mut self,
        mut inst: Instance,
        index: u64,
        old: Option<Arc<Instance>>,
        new_name: bool,
    ) {
        self.actively_checked += usize::from(actively_checked(&inst));
        // Saturating: a miscount errs towards telling the checker too much.
        self.actively_checked = self.actively_checked.saturating_sub(
            old.as_deref()
                .map_or(0, |o| usize::from(actively_checked(o))),
        );
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
        if inst.health() == Health::Passing
            && let Some(rec) = self.records.get_mut(&inst.id)
        {
            // Nothing of it is overdue or critical: a later hold starts afresh.
            rec.hold_until = None;
        }
        inst.modify_index = index;
        self.touched.push(inst.service.clone());
        self.changed.push(inst.id.clone());
        if new_name {
            self.state.names_index = index;
        }
        let svc = self.state.services.entry(inst.service.clone()).or_default();
        svc.modify_index = index;
        svc.instances.insert(inst.id.clone(), Arc::new(inst));
    }

    pub(super) fn remove(&mut self, id: &Arc<str>, index: u64) {
        let Some(rec) = self.records.remove(id) else {
            return;
        };
        if let Some(inst) = self.state.instance(&rec.service, id).cloned() {
            self.unindex_ttl(&inst);
            self.actively_checked = self
                .actively_checked
                .saturating_sub(usize::from(actively_checked(&inst)));
        }
        for (i, due) in &rec.check_reaps {
            self.timers.remove(*due, Timer::CheckReap(*i), id.clone());
        }
        self.changed.push(id.clone());
        for (i, due) in &rec.check_timers {
            self.timers.remove(*due, Timer::Check(*i), id.clone());
        }
        if let Some(due) = rec.lease_timer {
            self.timers.remove(due, Timer::Lease, id.clone());
        }
        if let Some(due) = rec.reap_timer {
            self.timers.remove(due, Timer::Reap, id.clone());
        }
        if rec.lease.is_some() {
            self.leases.remove(id);
        }
        if let Some(d) = rec.held {
            self.held.remove(&(d, id.clone()));
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
}

/// Whether `inst` has a check the registry runs itself.
fn actively_checked(inst: &Instance) -> bool {
    inst.spec.checks.iter().any(|c| c.is_active())
}

/// One service's instances gathered by a restore.
struct Group {
    name: Arc<str>,
    modify_index: u64,
    members: Vec<(Arc<str>, Arc<Instance>)>,
}

/// What a restore puts into the catalog's structures once each instance's
/// bookkeeping is done.
struct Filling {
    records: Vec<(Arc<str>, Box<Record>)>,
    leases: Vec<(Arc<str>, Arc<Lease>)>,
    groups: Vec<Group>,
    timers: Vec<(u64, Timer, Arc<str>)>,
}

/// Below this many instances a restore fills everything on its own thread.
pub(super) const PARALLEL_RESTORE: usize = 10_000;

/// Puts a restore's `filling` into the (emptied) catalog structures, and its
/// leases in place of every lease; `true` when an id came twice. At start-up
/// these inserts are most of the work (a million hash inserts for the
/// records, as many for the leases, and the ordered maps), so for a large
/// restore the leases and the timers are filled on a second thread while this
/// one does the records and services.
fn fill(
    records: &mut FastMap<Arc<str>, Box<Record>>,
    leases: &LeaseTable,
    services: &mut OrdMap<Arc<str>, ServiceState>,
    timers: &mut super::timers::Timers,
    filling: Filling,
) -> bool {
    let Filling {
        records: new_records,
        leases: new_leases,
        groups,
        timers: new_timers,
    } = filling;
    let count = new_records.len();
    let side = move || {
        leases.replace_all(new_leases);
        // Sorted once and built in one pass, not a million inserts into a
        // tree whose keys (mostly one deadline) differ only by their ids.
        super::timers::Timers::from_list(new_timers)
    };
    let main = |records: &mut FastMap<Arc<str>, Box<Record>>,
                services: &mut OrdMap<Arc<str>, ServiceState>| {
        let before = records.len();
        records.extend(new_records);
        for group in groups {
            services.insert(
                group.name,
                ServiceState {
                    modify_index: group.modify_index,
                    instances: group.members.into_iter().collect(),
                },
            );
        }
        records.len() != before + count
    };
    let repeated = if count >= PARALLEL_RESTORE {
        std::thread::scope(|scope| {
            let other = scope.spawn(side);
            let repeated = main(records, services);
            match other.join() {
                Ok(built) => *timers = built,
                Err(panic) => std::panic::resume_unwind(panic),
            }
            repeated
        })
    } else {
        *timers = side();
        main(records, services)
    };
    if repeated {
        // An id that came twice under two services: the later one won in the
        // records (and the leases); the earlier service must not keep it.
        let names: Vec<Arc<str>> = services.keys().cloned().collect();
        for name in names {
            let state = services.get_mut(&name).expect("listed above");
            let stale: Vec<Arc<str>> = state
                .instances
                .keys()
                .filter(|id| records.get(&**id).is_none_or(|r| r.service != name))
                .cloned()
                .collect();
            for id in stale {
                state.instances.remove(&id);
            }
            if state.instances.is_empty() {
                services.remove(&name);
            }
        }
    }
    repeated
}
