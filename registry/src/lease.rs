//! TTL leases: the soft state that heartbeats renew.
//!
//! A lease is one `AtomicU64` holding its deadline (nanoseconds since the catalog's
//! epoch) plus an "expired" bit. A heartbeat renews it with a compare-and-swap
//! through a sharded map, without the catalog lock and without allocating; only a
//! heartbeat that finds the lease expired (health must flip back to passing) goes
//! through the catalog. The reaper expires a lease with a compare-and-swap too, so
//! a heartbeat racing the reaper either renews the lease before it expires or sees
//! it expired and takes the slow path: it is never lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;

const EXPIRED: u64 = 1 << 63;

/// One instance's lease.
#[derive(Debug)]
pub(crate) struct Lease {
    service: Arc<str>,
    ttl: u64,
    state: AtomicU64,
}

/// Result of a fast-path renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The deadline moved; nothing else changes.
    Renewed,
    /// The lease had already expired: the catalog must flip health back.
    Expired,
    /// No lease for that instance (unknown, other service, or no TTL).
    Missing,
}

impl Lease {
    /// A live lease for an instance of `service`, due at `deadline`.
    pub(crate) fn new(service: Arc<str>, ttl_nanos: u64, deadline: u64) -> Self {
        Lease {
            service,
            ttl: ttl_nanos,
            state: AtomicU64::new(deadline & !EXPIRED),
        }
    }

    /// Lease length in nanoseconds.
    pub(crate) fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Current deadline (nanoseconds since the epoch), expired or not.
    pub(crate) fn deadline(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !EXPIRED
    }

    /// Whether the lease has been expired by the reaper.
    pub(crate) fn is_expired(&self) -> bool {
        self.state.load(Ordering::Acquire) & EXPIRED != 0
    }

    /// Renews a live lease to `now + ttl`; fails on an expired one.
    fn renew(&self, now: u64) -> Renewal {
        let next = now.saturating_add(self.ttl) & !EXPIRED;
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & EXPIRED != 0 {
                return Renewal::Expired;
            }
            if cur >= next {
                return Renewal::Renewed;
            }
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Renewal::Renewed,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Sets a fresh, live deadline (catalog side, under its lock).
    pub(crate) fn revive(&self, deadline: u64) {
        self.state.store(deadline & !EXPIRED, Ordering::Release);
    }

    /// Expires the lease if its deadline is at or before `now`. On failure returns
    /// the deadline it was renewed to.
    pub(crate) fn try_expire(&self, now: u64) -> Result<(), u64> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & EXPIRED != 0 {
                return Ok(());
            }
            if cur > now {
                return Err(cur);
            }
            match self.state.compare_exchange_weak(
                cur,
                cur | EXPIRED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// All leases by instance id, shared by the catalog (which adds and removes them)
/// and the heartbeat fast path (which renews them).
///
/// The map sits behind an [`ArcSwap`] so that a restore can put a whole new
/// one in place: a million inserts into a map sized for them, on a thread of
/// their own, instead of into the shared one while it grows and rehashes
/// twenty times (about a third of a second at a million on start-up). A
/// heartbeat that renews a lease of the map being replaced is not kept, and
/// needs not be: a restore gives every lease a fresh deadline of at least one
/// TTL from its own time.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: ArcSwap<Leases>,
}

/// Hashed with foldhash (seeded per process): every heartbeat looks up here.
type Leases = DashMap<Arc<str>, Arc<Lease>, foldhash::fast::RandomState>;

impl LeaseTable {
    /// Renews the lease of instance `id` of `service` at `now`.
    pub fn renew(&self, service: &str, id: &str, now: u64) -> Renewal {
        match self.leases.load().get(id) {
            Some(lease) if &*lease.service == service => lease.renew(now),
            _ => Renewal::Missing,
        }
    }

    /// Adds or replaces a lease.
    pub(crate) fn insert(&self, id: Arc<str>, lease: Arc<Lease>) {
        self.leases.load().insert(id, lease);
    }

    /// Puts `leases` in place of every lease there is.
    pub(crate) fn replace_all(&self, leases: Vec<(Arc<str>, Arc<Lease>)>) {
        let map = Leases::with_capacity_and_hasher(leases.len(), Default::default());
        for (id, lease) in leases {
            map.insert(id, lease);
        }
        self.leases.store(Arc::new(map));
    }

    /// The lease of instance `id`, if it has one.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Lease>> {
        self.leases.load().get(id).map(|l| l.value().clone())
    }

    /// Removes a lease.
    pub(crate) fn remove(&self, id: &str) {
        self.leases.load().remove(id);
    }

    /// Number of leases.
    pub(crate) fn len(&self) -> usize {
        self.leases.load().len()
    }

    /// Whether there are no leases.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.leases.load().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_then_expire() {
        let lease = Lease::new("web".into(), 10, 10);
        assert_eq!(lease.renew(5), Renewal::Renewed);
        assert_eq!(lease.deadline(), 15);
        assert_eq!(lease.try_expire(14), Err(15));
        assert_eq!(lease.try_expire(15), Ok(()));
        assert!(lease.is_expired());
        assert_eq!(lease.renew(16), Renewal::Expired);
        lease.revive(26);
        assert_eq!(lease.renew(20), Renewal::Renewed);
        assert_eq!(lease.deadline(), 30);
    }

    #[test]
    fn renewal_never_moves_a_deadline_back() {
        let lease = Lease::new("web".into(), 10, 100);
        assert_eq!(lease.renew(50), Renewal::Renewed);
        assert_eq!(lease.deadline(), 100);
    }

    #[test]
    fn table_checks_the_service() {
        let table = LeaseTable::default();
        table.insert("a".into(), Arc::new(Lease::new("web".into(), 10, 10)));
        assert_eq!(table.renew("web", "a", 1), Renewal::Renewed);
        assert_eq!(table.renew("db", "a", 1), Renewal::Missing);
        assert_eq!(table.renew("web", "b", 1), Renewal::Missing);
    }

    #[test]
    fn replacing_all_leases_leaves_only_the_new_ones() {
        let table = LeaseTable::default();
        table.insert("a".into(), Arc::new(Lease::new("web".into(), 10, 10)));
        table.replace_all(vec![
            ("b".into(), Arc::new(Lease::new("web".into(), 10, 10))),
            ("c".into(), Arc::new(Lease::new("db".into(), 10, 10))),
        ]);
        assert_eq!(table.len(), 2);
        assert_eq!(table.renew("web", "a", 1), Renewal::Missing);
        assert_eq!(table.renew("web", "b", 1), Renewal::Renewed);
        assert_eq!(table.renew("db", "c", 1), Renewal::Renewed);
        table.remove("b");
        assert!(table.get("b").is_none() && table.get("c").is_some());
    }
}
