//! Self-preservation: the guard that holds lease expiry back when so many
//! instances fall silent at once that the registry is more likely cut off
//! than they are dead, and the bounds on how long it may hold.

use std::time::Duration;

use tokio::time::Instant;

use super::{Catalog, HOLD_RECHECK, Timer, nanos};

/// How long a self-preservation decision is reused by ticks that expire or
/// remove something.
const GUARD_REFRESH: Duration = Duration::from_millis(100);

/// Self-preservation settings: when more than `threshold` of the leased
/// instances expired within `window` or are overdue now, the catalog holds
/// overdue leases instead of expiring them (the registry, not the instances, is
/// probably cut off), but never for more than `max_hold` past a lease's
/// deadline: a registry-side outage shorter than that expires nothing, and a
/// real departure is expired `max_hold` after its deadline at the latest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelfPreservation {
    /// Share of leased instances, 0–1; 0 turns the guard off.
    pub threshold: f64,
    /// How far back expirations count.
    pub window: Duration,
    /// The guard applies only with at least this many leased instances, so a
    /// small development setup still expires its leases.
    pub min_instances: usize,
    /// The longest the guard holds anything back: a held lease expires at most
    /// this long after its deadline, and a held removal happens at most this
    /// long after it was due (both counted from the first hold of the instance,
    /// so holds never add up).
    pub max_hold: Duration,
}

impl Default for SelfPreservation {
    fn default() -> Self {
        SelfPreservation {
            threshold: 0.15,
            window: Duration::from_secs(60),
            min_instances: 10,
            max_hold: Duration::from_secs(120),
        }
    }
}

/// What the self-preservation guard is doing, for `/health`, `/metrics` and
/// the console.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GuardStatus {
    /// Whether the guard holds overdue leases now.
    pub active: bool,
    /// When it turned on (while active).
    pub since: Option<Instant>,
    /// Leases overdue and held now (their instances still show passing).
    pub held: usize,
    /// Deadline of the longest-held lease.
    pub oldest_deadline: Option<Instant>,
    /// Deadline of the most recently held lease: every lease held now is
    /// released by this plus `max_hold`.
    pub newest_deadline: Option<Instant>,
    /// The settings' `max_hold`.
    pub max_hold: Duration,
    /// The settings' `window`.
    pub window: Duration,
    /// Held leases released so far (expired at their `max_hold`, or when the
    /// guard let go while they were still silent).
    pub released_total: u64,
    /// Held leases released within the last `window`: the drain rate.
    pub released_recent: usize,
}

impl GuardStatus {
    /// How long the longest-held lease has been overdue at `now`.
    pub fn oldest_hold(&self, now: Instant) -> Duration {
        self.oldest_deadline
            .map_or(Duration::ZERO, |d| now.saturating_duration_since(d))
    }

    /// Time left at `now` until every lease held now is released at the
    /// latest (zero when nothing is held).
    pub fn drained_within(&self, now: Instant) -> Duration {
        self.newest_deadline.map_or(Duration::ZERO, |d| {
            (d + self.max_hold).saturating_duration_since(now)
        })
    }

    /// Held leases released per minute, averaged over the last window.
    pub fn drain_per_minute(&self) -> f64 {
        let window = self.window.as_secs_f64().max(1e-3);
        self.released_recent as f64 * 60.0 / window
    }
}

impl Catalog {
    /// What the self-preservation guard is doing, as of the last command.
    pub fn guard_status(&self) -> GuardStatus {
        let at = |t: u64| self.epoch + Duration::from_nanos(t);
        let since = self.now.saturating_sub(nanos(self.preservation.window));
        GuardStatus {
            active: self.preserving,
            since: (self.preserving && self.guard_since != 0).then(|| at(self.guard_since)),
            held: self.held.len(),
            oldest_deadline: self.held.first().map(|(d, _)| at(*d)),
            newest_deadline: self.held.last().map(|(d, _)| at(*d)),
            max_hold: self.preservation.max_hold,
            window: self.preservation.window,
            released_total: self.released_total,
            released_recent: self.released.len() - self.released.partition_point(|t| *t < since),
        }
    }

    /// Decides, before a tick expires anything, whether self-preservation holds
    /// overdue leases.
    pub(super) fn should_hold(&mut self, now: u64) -> bool {
        let p = self.preservation;
        let total = self.leases.len();
        if p.threshold <= 0.0 || total < p.min_instances.max(1) {
            self.set_preserving(false, now);
            return false;
        }
        // Only a tick that would expire or remove something needs a fresh
        // decision; others reuse it for a while (the count below walks the
        // leases due soon, so it is not done on every tick).
        let mut acts = false;
        for (due, kind, id) in self.timers.iter() {
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
        while self.released.front().is_some_and(|t| *t < since) {
            self.released.pop_front();
        }
        // Late leases: not renewed for two thirds of their TTL (a client
        // heartbeating every ttl/3 has missed two beats). When the registry is
        // cut off, every silent lease turns late within one heartbeat period, so
        // counting them trips the guard before the first of them expires, even
        // though their deadlines are spread out. A lease timer is never later
        // than its lease's deadline, so the leases due within the window are
        // all among the timers due within it. A held lease is late while it is
        // held; once released (expired at its `max_hold`) it counts nowhere,
        // so a real departure stops keeping the guard on when it has drained.
        let horizon = now.saturating_add(nanos(p.window));
        let mut late = 0usize;
        for (due, kind, id) in self.timers.iter() {
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
        self.set_preserving(share > p.threshold, now);
        self.preserving
    }

    fn set_preserving(&mut self, on: bool, now: u64) {
        if on && !self.preserving {
            self.guard_since = now.max(1);
        } else if !on && self.preserving {
            self.guard_since = 0;
            self.guard_off_at = now;
        }
        self.preserving = on;
    }

    /// The end of `id`'s hold budget: set by its first hold, at `due` plus
    /// `max_hold`, and kept until the instance proves alive, so one silence
    /// is held at most `max_hold` in all (a held lease's removal is not held
    /// again).
    pub(super) fn hold_until(&mut self, id: &str, due: u64) -> u64 {
        let max_hold = nanos(self.preservation.max_hold);
        let rec = self
            .records
            .get_mut(id)
            .expect("timers belong to known instances");
        *rec.hold_until.get_or_insert(due.saturating_add(max_hold))
    }
}
