//! Round robin: each endpoint in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::rng::Rng;
use super::{Balancer, Endpoint};

/// Picks endpoints in turn (the default balancer).
///
/// Lock-free and allocation-free: one atomic add per pick. Weights and load
/// are ignored. Each balancer starts at a random position so many clients
/// started together do not all hit the first endpoint first.
#[derive(Debug)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at a random position.
    pub fn new() -> Self {
        RoundRobin::starting_at(Rng::new().next_u64() as usize)
    }

    /// A round robin whose first pick is `start % len` (for reproducible tests).
    pub fn starting_at(start: usize) -> Self {
        RoundRobin {
            cursor: AtomicUsize::new(start),
        }
    }
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin::new()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        Some(self.cursor.fetch_add(1, Ordering::Relaxed) % endpoints.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{counts, endpoints};
    use super::*;

    #[test]
    fn exact_equal_counts() {
        let eps = endpoints(3);
        assert_eq!(counts(&RoundRobin::new(), &eps, 300), vec![100, 100, 100]);
    }

    #[test]
    fn cycles_in_order() {
        let eps = endpoints(3);
        let rr = RoundRobin::starting_at(1);
        let order: Vec<_> = (0..6).map(|_| rr.pick(&eps).unwrap()).collect();
        assert_eq!(order, [1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn exact_counts_across_threads() {
        let eps = endpoints(4);
        let rr = RoundRobin::new();
        let per_thread: Vec<Vec<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| counts(&rr, &eps, 1000)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: Vec<usize> = (0..4)
            .map(|i| per_thread.iter().map(|c| c[i]).sum())
            .collect();
        assert_eq!(total, vec![1000; 4]);
    }
}
