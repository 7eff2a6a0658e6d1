//! Time: expiring leases and TTL checks, removing instances critical for too
//! long, and the self-preservation guard that holds expiry back.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use roster_api::{self as api, Health};

use super::{Catalog, Command, HOLD_RECHECK, Outcome, Timer, nanos};
use crate::model::{InstanceId, ServiceName};

use crate::checks::{CheckState, Target};

/// The catalog's timers (lease deadlines, removals, TTL checks), in due
/// order. The timers one write arms share their due, so a tree ordered by
/// (due, kind, id) compared their ids as strings at every step of every
/// insert (6 % of a batch registration); between the kind and the id each
/// key carries a hash of the id, so that two timers of one due are told
/// apart by one integer compare, and the ids are compared only to find the
/// very timer that is removed. Only the order among timers of one due
/// changes, which nothing relies on: all are due together.
#[derive(Debug, Default)]
pub(super) struct Timers {
    set: BTreeSet<(u64, Timer, u32, Arc<str>)>,
}

// 32 bits of hash fill the key's padding after the kind: a key is no
// larger than without it (a million timers at start-up).
const _: () = assert!(std::mem::size_of::<(u64, Timer, u32, Arc<str>)>() == 32);

/// The id's place among timers of one due: fixed (not seeded per process)
/// so that the order is the same on every run; a crafted id gains nothing
/// by it, as equal hashes (also the few a million ids give by chance in 32
/// bits) only bring back the string compare.
fn spread(id: &str) -> u32 {
    (foldhash::fast::FixedState::default().hash_one(id) >> 32) as u32
}

impl Timers {
    pub(super) fn insert(&mut self, due: u64, kind: Timer, id: Arc<str>) {
        self.set.insert((due, kind, spread(&id), id));
    }

    pub(super) fn remove(&mut self, due: u64, kind: Timer, id: Arc<str>) {
        self.set.remove(&(due, kind, spread(&id), id));
    }

    /// The earliest due, if any timer is armed.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.set.first().map(|(due, ..)| *due)
    }

    /// Takes out the earliest timer if it is due by `now`.
    fn pop_due(&mut self, now: u64) -> Option<(u64, Timer, Arc<str>)> {
        if self.next_due()? > now {
            return None;
        }
        self.set
            .pop_first()
            .map(|(due, kind, _, id)| (due, kind, id))
    }

    /// Every timer, in due order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &Timer, &Arc<str>)> {
        self.set.iter().map(|(due, kind, _, id)| (due, kind, id))
    }

    pub(super) fn clear(&mut self) {
        self.set.clear();
    }

    /// Many timers at once (a restore): sorted and built in one pass, not
    /// inserted one by one.
    pub(super) fn from_list(list: Vec<(u64, Timer, Arc<str>)>) -> Self {
        Timers {
            set: list
                .into_iter()
                .map(|(due, kind, id)| (due, kind, spread(&id), id))
                .collect(),
        }
    }
}

impl Catalog {
    /// Rebuilds the soft state (lease deadlines and every timer) from the shared
    /// state, giving everything `grace` on top: what a node does when it becomes
    /// the leader, since its lease clock never saw the heartbeats. The shared
    /// state (instances, indexes) is not touched.
    pub fn rearm(&mut self, now: tokio::time::Instant, grace: std::time::Duration) {
        let now = self.clock(now);
        let grace = nanos(grace);
        let Catalog {
            state,
            records,
            timers,
            ..
        } = self;
        timers.clear();
        self.held.clear();
        self.guard_at = 0;
        self.expirations.clear();
        for svc in state.services.values() {
            for inst in svc.instances.values() {
                let Some(rec) = records.get_mut(&inst.id) else {
                    continue;
                };
                rec.lease_timer = None;
                rec.reap_timer = None;
                rec.check_timers.clear();
                rec.check_reaps.clear();
                rec.held = None;
                rec.hold_until = None;
                let from = now.saturating_add(grace);
                for (i, def) in inst.spec.checks.iter().enumerate() {
                    let pos = i as u16;
                    if let Target::Ttl { ttl } = def.target {
                        let due = from.saturating_add(nanos(ttl));
                        rec.check_timers.push((pos, due));
                        timers.insert(due, Timer::Check(pos), inst.id.clone());
                    }
                    if let Some(after) = def.deregister_critical_after
                        && inst.checks[i].status == Health::Critical
                    {
                        let due = from.saturating_add(nanos(after));
                        rec.check_reaps.push((pos, due));
                        timers.insert(due, Timer::CheckReap(pos), inst.id.clone());
                    }
                }
                let (Some(lease), Some(ttl)) = (&rec.lease, inst.spec.ttl) else {
                    continue;
                };
                if inst.lease == Some(Health::Critical) {
                    let _ = lease.try_expire(u64::MAX);
                    let due = from.saturating_add(nanos(inst.spec.deregister_critical_after));
                    rec.reap_timer = Some(due);
                    timers.insert(due, Timer::Reap, inst.id.clone());
                } else {
                    let due = from.saturating_add(nanos(ttl));
                    lease.revive(due);
                    rec.lease_timer = Some(due);
                    timers.insert(due, Timer::Lease, inst.id.clone());
                }
            }
        }
    }

    pub(super) fn tick(&mut self, now: u64, next: u64, out: &mut Outcome) -> bool {
        let mut changed = false;
        let hold = self.should_hold(now);
        let recheck = now.saturating_add(nanos(HOLD_RECHECK));
        while let Some((due, kind, id)) = self.timers.pop_due(now) {
            // Whether the guard holds this timer back, and until when.
            let held_until = match kind {
                Timer::Lease | Timer::Check(_) => None,
                Timer::Reap | Timer::CheckReap(_) if hold => {
                    Some(self.hold_until(&id, due)).filter(|until| now < *until)
                }
                Timer::Reap | Timer::CheckReap(_) => None,
            };
            let rec = self
                .records
                .get_mut(&id)
                .expect("timers belong to known instances");
            match kind {
                Timer::Lease => {
                    rec.lease_timer = None;
                    let lease = rec.lease.clone().expect("lease timer without a lease");
                    let deadline = lease.deadline();
                    // When the guard lets go, a lease it held gets one more
                    // ttl to be renewed: once the registry's network is back,
                    // the instances it could not hear need a heartbeat period
                    // to reach it, and the majority coming back first must
                    // not expire the stragglers.
                    let linger = self.guard_off_at.saturating_add(lease.ttl());
                    let lingers = !hold && rec.held.is_some() && now < linger;
                    if (hold || lingers) && deadline <= now && !lease.is_expired() {
                        let until = self.hold_until(&id, deadline);
                        if now < until {
                            // Overdue, but too many are: keep it alive and look
                            // again soon, never past its budget.
                            let rec = self.records.get_mut(&id).expect("known instance");
                            if rec.held.is_none() {
                                rec.held = Some(deadline);
                                self.held.insert((deadline, id.clone()));
                            }
                            let at = recheck.min(until);
                            let at = if lingers { at.min(linger) } else { at };
                            rec.lease_timer = Some(at);
                            self.timers.insert(at, Timer::Lease, id);
                            out.held += 1;
                            continue;
                        }
                    }
                    let rec = self.records.get_mut(&id).expect("known instance");
                    let was_held = rec.held.take();
                    if let Some(d) = was_held {
                        self.held.remove(&(d, id.clone()));
                    }
                    if let Err(renewed) = lease.try_expire(now) {
                        // Renewed: alive, so a later silence is held afresh.
                        let rec = self.records.get_mut(&id).expect("known instance");
                        rec.hold_until = None;
                        rec.lease_timer = Some(renewed);
                        self.timers.insert(renewed, Timer::Lease, id);
                        continue;
                    }
                    if was_held.is_some() {
                        self.released.push_back(now);
                        self.released_total += 1;
                    } else {
                        self.expirations.push_back(now);
                    }
                    let rec = &self.records[&id];
                    if let Some(effects) = &mut self.effects {
                        let inst = &self.state.services[&rec.service].instances[&id];
                        effects.push(Command::ExpireLease {
                            service: ServiceName::trusted(rec.service.clone()),
                            id: InstanceId::trusted(id.clone()),
                            create_index: inst.create_index,
                        });
                        out.expired += 1;
                        continue;
                    }
                    // Count the critical time from the moment the lease ran out
                    // (or was released by self-preservation).
                    let from = if was_held.is_some() { now } else { deadline };
                    let reap_at = from.saturating_add(crate::clock::nanos(
                        self.state.services[&rec.service].instances[&id]
                            .spec
                            .deregister_critical_after,
                    ));
                    let service = rec.service.clone();
                    let rec = self.records.get_mut(&id).expect("known instance");
                    rec.reap_timer = Some(reap_at);
                    self.timers.insert(reap_at, Timer::Reap, id.clone());
                    let mut inst = (*self.state.services[&service].instances[&id]).clone();
                    inst.lease = Some(Health::Critical);
                    self.put(inst, next);
                    out.expired += 1;
                    changed = true;
                }
                Timer::Reap if held_until.is_some() => {
                    let at = held_until.map_or(recheck, |u| recheck.min(u));
                    rec.reap_timer = Some(at);
                    self.timers.insert(at, Timer::Reap, id);
                }
                Timer::Reap => {
                    rec.reap_timer = None;
                    if let Some(effects) = &mut self.effects {
                        let inst = &self.state.services[&rec.service].instances[&id];
                        effects.push(Command::Reap {
                            service: ServiceName::trusted(rec.service.clone()),
                            id: InstanceId::trusted(id.clone()),
                            create_index: inst.create_index,
                            check: None,
                        });
                        out.reaped += 1;
                        continue;
                    }
                    self.remove(&id, next);
                    out.reaped += 1;
                    changed = true;
                }
                Timer::CheckReap(pos) if held_until.is_some() => {
                    let at = held_until.map_or(recheck, |u| recheck.min(u));
                    for slot in rec.check_reaps.iter_mut().filter(|(i, _)| *i == pos) {
                        slot.1 = at;
                    }
                    self.timers.insert(at, Timer::CheckReap(pos), id);
                }
                Timer::CheckReap(pos) => {
                    rec.check_reaps.retain(|(i, _)| *i != pos);
                    if let Some(effects) = &mut self.effects {
                        let inst = &self.state.services[&rec.service].instances[&id];
                        effects.push(Command::Reap {
                            service: ServiceName::trusted(rec.service.clone()),
                            id: InstanceId::trusted(id.clone()),
                            create_index: inst.create_index,
                            check: Some(inst.spec.checks[usize::from(pos)].id.to_string()),
                        });
                        out.reaped += 1;
                        continue;
                    }
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
                    if let Some(effects) = &mut self.effects {
                        if state.status != Health::Critical || state.output != output {
                            effects.push(Command::ExpireCheck {
                                service: ServiceName::trusted(service),
                                id: InstanceId::trusted(id),
                                check: current.spec.checks[p].id.to_string(),
                                output,
                            });
                        }
                        continue;
                    }
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
