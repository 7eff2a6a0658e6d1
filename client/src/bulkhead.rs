//! The per-service bulkhead: a cap on requests in flight to one service.
//! (The per-endpoint cap is [`Endpoint::try_start`](crate::balance::Endpoint::try_start),
//! on the same counter balancers read.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A counter of requests in flight with an optional limit.
#[derive(Debug, Default)]
pub(crate) struct Bulkhead {
    limit: Option<usize>,
    in_flight: Arc<AtomicUsize>,
}

/// A place in a [`Bulkhead`], given back on drop.
#[derive(Debug)]
pub(crate) struct Permit(Arc<AtomicUsize>);

impl Bulkhead {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Bulkhead {
            limit,
            in_flight: Arc::default(),
        }
    }

    /// A permit if there is room; one atomic step, so callers racing for the
    /// last place never both get it.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        let limit = self.limit.unwrap_or(usize::MAX);
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Permit(self.in_flight.clone()))
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_up_to_the_limit_and_back_on_drop() {
        let b = Bulkhead::new(Some(2));
        let p1 = b.try_acquire().expect("first");
        let _p2 = b.try_acquire().expect("second");
        assert!(b.try_acquire().is_none(), "full");
        assert_eq!(b.in_flight(), 2);
        drop(p1);
        assert!(b.try_acquire().is_some());
        let unbounded = Bulkhead::new(None);
        let held: Vec<_> = (0..1000).filter_map(|_| unbounded.try_acquire()).collect();
        assert_eq!(held.len(), 1000);
    }
}
