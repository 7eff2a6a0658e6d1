//! A tiny lock-free random source for balancers (no dependency needed).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 over an atomic counter: each draw is one `fetch_add`, so
/// concurrent callers never contend on a lock or retry a CAS, and never get
/// the same value (unlike a shared xorshift state updated without a CAS).
#[derive(Debug)]
pub(crate) struct Rng {
    state: AtomicU64,
}

impl Rng {
    /// A generator seeded from std's per-process random hash keys.
    pub(crate) fn new() -> Self {
        // `RandomState::new()` gives different keys on every call.
        Rng::with_seed(RandomState::new().hash_one(0x5EED_u64))
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        Rng {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (`n > 0`), by multiply-shift (Lemire): no
    /// division, bias below 2^-32 for any realistic `n`.
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_in_range() {
        let (a, b) = (Rng::with_seed(7), Rng::with_seed(7));
        for n in 1..1000 {
            let x = a.below(n);
            assert_eq!(x, b.below(n));
            assert!(x < n);
        }
        assert_ne!(Rng::new().next_u64(), Rng::new().next_u64());
    }
}
