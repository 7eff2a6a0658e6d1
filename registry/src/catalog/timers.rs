//! Time: expiring leases and TTL checks, removing instances critical for too
//! long, and the self-preservation guard that holds expiry back.

use roster_api::{self as api, Health};

use super::{Catalog, Command, HOLD_RECHECK, Outcome, Timer, nanos};
use crate::model::{InstanceId, ServiceName};

/// How long a self-preservation decision is reused by ticks that expire or
/// remove something.
const GUARD_REFRESH: std::time::Duration = std::time::Duration::from_millis(100);
use crate::checks::{CheckState, Target};

impl Catalog {
    /// Decides, before a tick expires anything, whether self-preservation holds
    /// overdue leases.
    pub(super) fn should_hold(&mut self, now: u64) -> bool {
        let p = self.preservation;
        let total = self.leases.len();
        if p.threshold <= 0.0 || total < p.min_instances.max(1) {
            self.preserving = false;
            return false;
        }
        // Only a tick that would expire or remove something needs a fresh
        // decision; others reuse it for a while (the count below walks the
        // leases due soon, so it is not done on every tick).
        let mut acts = false;
        for (due, kind, id) in &self.timers {
            if *due > now {
                break;
            }
            acts |= match kind {
                Timer::Lease => self.records[id]
                    .lease
                    .as_ref()
                    .is_some_and(|l| !l.is_expired() && l.deadline() <= now),
                Timer::Reap | Timer::CheckReap(_) => true,
                Timer::Check(_) => false,
            };
        }
        let age = now.saturating_sub(self.guard_at);
        let fresh = if acts { GUARD_REFRESH } else { HOLD_RECHECK };
        if self.guard_at != 0 && age < nanos(fresh) {
            return self.preserving;
        }
        self.guard_at = now.max(1);
        let since = now.saturating_sub(nanos(p.window));
        while self.expirations.front().is_some_and(|t| *t < since) {
            self.expirations.pop_front();
        }
        // Late leases: not renewed for two thirds of their TTL (a client
        // heartbeating every ttl/3 has missed two beats). When the registry is
        // cut off, every silent lease turns late within one heartbeat period, so
        // counting them trips the guard before the first of them expires, even
        // though their deadlines are spread out. A lease timer is never later
        // than its lease's deadline, so the leases due within the window are
        // all among the timers due within it.
        let horizon = now.saturating_add(nanos(p.window));
        let mut late = 0usize;
        for (due, kind, id) in &self.timers {
            if *due > horizon {
                break;
            }
            if *kind != Timer::Lease {
                continue;
            }
            if let Some(lease) = &self.records[id].lease
                && !lease.is_expired()
                && lease.deadline() < now.saturating_add(lease.ttl() / 3)
            {
                late += 1;
            }
        }
        let share = (self.expirations.len() + late) as f64 / total as f64;
        self.preserving = share > p.threshold;
        self.preserving
    }

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
                rec.held = false;
                let from = now.saturating_add(grace);
                for (i, def) in inst.spec.checks.iter().enumerate() {
                    let pos = i as u16;
                    if let Target::Ttl { ttl } = def.target {
                        let due = from.saturating_add(nanos(ttl));
                        rec.check_timers.push((pos, due));
                        timers.insert((due, Timer::Check(pos), inst.id.clone()));
                    }
                    if let Some(after) = def.deregister_critical_after
                        && inst.checks[i].status == Health::Critical
                    {
                        let due = from.saturating_add(nanos(after));
                        rec.check_reaps.push((pos, due));
                        timers.insert((due, Timer::CheckReap(pos), inst.id.clone()));
                    }
                }
                let (Some(lease), Some(ttl)) = (&rec.lease, inst.spec.ttl) else {
                    continue;
                };
                if inst.lease == Some(Health::Critical) {
                    let _ = lease.try_expire(u64::MAX);
                    let due = from.saturating_add(nanos(inst.spec.deregister_critical_after));
                    rec.reap_timer = Some(due);
                    timers.insert((due, Timer::Reap, inst.id.clone()));
                } else {
                    let due = from.saturating_add(nanos(ttl));
                    lease.revive(due);
                    rec.lease_timer = Some(due);
                    timers.insert((due, Timer::Lease, inst.id.clone()));
                }
            }
        }
    }

    pub(super) fn tick(&mut self, now: u64, next: u64, out: &mut Outcome) -> bool {
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
                        rec.held = true;
                        rec.lease_timer = Some(recheck);
                        self.timers.insert((recheck, Timer::Lease, id));
                        out.held += 1;
                        continue;
                    }
                    let was_held = std::mem::take(&mut rec.held);
                    if let Err(renewed) = lease.try_expire(now) {
                        rec.lease_timer = Some(renewed);
                        self.timers.insert((renewed, Timer::Lease, id));
                        continue;
                    }
                    self.expirations.push_back(now);
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
                Timer::CheckReap(pos) if hold => {
                    for slot in rec.check_reaps.iter_mut().filter(|(i, _)| *i == pos) {
                        slot.1 = recheck;
                    }
                    self.timers.insert((recheck, Timer::CheckReap(pos), id));
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
