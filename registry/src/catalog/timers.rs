//! Time: expiring leases and TTL checks, removing instances critical for too
//! long, and the self-preservation guard that holds expiry back.

use roster_client::api::{self, Health};

use super::{Catalog, HOLD_RECHECK, Outcome, Timer, nanos};
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
