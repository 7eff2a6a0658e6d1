//! Power of two choices: the less loaded of two random endpoints.

use tokio::time::Instant;

use super::rng::Rng;
use super::{Balancer, Endpoint};

/// What [`PowerOfTwoChoices`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cost {
    /// Requests in flight only (least-loaded).
    InFlight,
    /// Peak-EWMA latency × (in flight + 1), as linkerd and Finagle do. An
    /// endpoint without a latency sample costs 0 while idle (so new endpoints
    /// get tried) and more than any measured one while it has requests in
    /// flight (so they get one probe at a time, not a stampede).
    #[default]
    PeakEwma,
}

/// Picks two distinct endpoints at random and sends to the cheaper one by
/// [`Cost`] (peak EWMA by default), which keeps traffic off slow or
/// overloaded endpoints without the herding of "always the least loaded".
///
/// Lock-free and allocation-free: two atomic adds and two loads per pick.
/// Load comes from the [`InFlight`](super::InFlight) guards callers take with
/// [`Endpoint::start`]; weights are ignored.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    rng: Rng,
    cost: Cost,
}

impl PowerOfTwoChoices {
    /// Compares peak-EWMA cost.
    pub fn new() -> Self {
        PowerOfTwoChoices::with_cost(Cost::PeakEwma)
    }

    /// Compares the given cost.
    pub fn with_cost(cost: Cost) -> Self {
        PowerOfTwoChoices {
            rng: Rng::new(),
            cost,
        }
    }

    /// The same with a fixed random seed (reproducible picks, for tests).
    pub fn with_seed(cost: Cost, seed: u64) -> Self {
        PowerOfTwoChoices {
            rng: Rng::with_seed(seed),
            cost,
        }
    }
}

impl Default for PowerOfTwoChoices {
    fn default() -> Self {
        PowerOfTwoChoices::new()
    }
}

impl Balancer for PowerOfTwoChoices {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        let n = endpoints.len();
        match n {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let a = self.rng.below(n);
        let mut b = self.rng.below(n - 1);
        if b >= a {
            b += 1;
        }
        let (cost_a, cost_b) = match self.cost {
            // Reading the clock costs more than the rest of the pick, and only
            // the latency estimate needs it.
            Cost::InFlight => (
                endpoints[a].in_flight() as f64,
                endpoints[b].in_flight() as f64,
            ),
            Cost::PeakEwma => {
                let now = Instant::now();
                (
                    endpoints[a].cost(self.cost, now),
                    endpoints[b].cost(self.cost, now),
                )
            }
        };
        // `a` is random, so ties are broken at random.
        Some(if cost_b < cost_a { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{counts, endpoints};
    use super::*;

    #[test]
    fn avoids_an_endpoint_with_many_in_flight() {
        for cost in [Cost::PeakEwma, Cost::InFlight] {
            let eps = endpoints(3);
            let _held: Vec<_> = (0..100).map(|_| eps[1].start()).collect();
            let p2c = PowerOfTwoChoices::with_seed(cost, 3);
            // Whichever pair is drawn, the busy one loses to an idle one.
            let c = counts(&p2c, &eps, 1_000);
            assert_eq!(c[1], 0, "{cost:?}: {c:?}");
            assert_eq!(c[0] + c[2], 1_000);
            assert!(c[0] > 350 && c[2] > 350, "{cost:?}: idle ones share: {c:?}");
        }
    }

    #[test]
    fn draws_two_distinct_endpoints() {
        // With two endpoints the pair is always both of them, so the busier
        // one is never picked.
        let eps = endpoints(2);
        let _held = eps[0].start();
        let c = counts(&PowerOfTwoChoices::with_cost(Cost::InFlight), &eps, 500);
        assert_eq!(c, vec![0, 500]);
    }

    #[test]
    fn prefers_low_latency_after_finish() {
        let eps = endpoints(3);
        eps[0].start().finish(Duration::from_millis(100));
        eps[1].start().finish(Duration::from_millis(1));
        eps[2].start().finish(Duration::from_millis(1));
        let p2c = PowerOfTwoChoices::with_seed(Cost::PeakEwma, 11);
        let c = counts(&p2c, &eps, 1_000);
        assert_eq!(c[0], 0, "the slow endpoint loses every pair: {c:?}");

        // One fast among slow ones wins every pair it is drawn in (2/3 of them).
        let eps = endpoints(3);
        eps[0].start().finish(Duration::from_millis(50));
        eps[1].start().finish(Duration::from_millis(2));
        eps[2].start().finish(Duration::from_millis(50));
        let c = counts(&p2c, &eps, 3_000);
        assert!((1_800..=2_200).contains(&c[1]), "{c:?}");
    }

    #[test]
    fn latency_weighs_against_in_flight() {
        // 1ms with 9 in flight (cost 10ms) still beats 20ms idle (cost 20ms);
        // with 29 in flight (cost 30ms) it loses.
        let eps = endpoints(2);
        eps[0].start().finish(Duration::from_millis(1));
        eps[1].start().finish(Duration::from_millis(20));
        let p2c = PowerOfTwoChoices::new();
        let mut held: Vec<_> = (0..9).map(|_| eps[0].start()).collect();
        assert_eq!(counts(&p2c, &eps, 100), vec![100, 0]);
        held.extend((0..20).map(|_| eps[0].start()));
        assert_eq!(counts(&p2c, &eps, 100), vec![0, 100]);
    }

    #[test]
    fn untried_endpoint_gets_probed_then_penalised() {
        let eps = endpoints(2);
        eps[0].start().finish(Duration::from_millis(5));
        let p2c = PowerOfTwoChoices::new();
        // Idle and unmeasured: cheapest, so it gets tried.
        assert_eq!(p2c.pick(&eps), Some(1));
        // While its probe is in flight, the measured endpoint wins.
        let _probe = eps[1].start();
        assert_eq!(p2c.pick(&eps), Some(0));
    }
}
