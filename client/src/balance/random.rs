//! Uniform random choice.

use super::rng::Rng;
use super::{Balancer, Endpoint};

/// Picks an endpoint uniformly at random, ignoring weights and load.
///
/// Lock-free and allocation-free: one atomic add per pick.
#[derive(Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// A random balancer seeded from std's random hash keys.
    pub fn new() -> Self {
        Random { rng: Rng::new() }
    }

    /// A random balancer with a fixed seed (reproducible picks, for tests).
    pub fn with_seed(seed: u64) -> Self {
        Random {
            rng: Rng::with_seed(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

impl Balancer for Random {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        match endpoints.len() {
            0 => None,
            n => Some(self.rng.below(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{counts, endpoints};
    use super::*;

    #[test]
    fn covers_all_and_roughly_uniform() {
        let eps = endpoints(5);
        for seed in [1, 42, 0xDEAD_BEEF] {
            let c = counts(&Random::with_seed(seed), &eps, 30_000);
            for (i, &n) in c.iter().enumerate() {
                // Expected 6,000 each; 20% is more than 10 standard deviations.
                assert!((4_800..=7_200).contains(&n), "seed {seed}: {c:?} at {i}");
            }
        }
    }

    #[test]
    fn same_seed_same_picks() {
        let eps = endpoints(7);
        let (a, b) = (Random::with_seed(9), Random::with_seed(9));
        for _ in 0..100 {
            assert_eq!(a.pick(&eps), b.pick(&eps));
        }
    }
}
