//! Building blocks that keep a dead or slow endpoint from costing much: outlier
//! ejection and a retry budget. Both take the time as an argument (Tokio's clock
//! in production), so tests run on a paused clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When to eject an endpoint, and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of the pool that may be ejected at once, so a failure of
    /// everything does not leave nothing to send to.
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// Ejects endpoints that keep failing (Envoy's consecutive-5xx detector): after
/// `consecutive_failures` failures in a row an endpoint gets no traffic for
/// `base_ejection × ejections` (capped), then comes back; one failure of the
/// first request after an ejection ejects it again for longer.
#[derive(Debug, Default)]
pub struct OutlierDetector {
    config: OutlierConfig,
    records: Mutex<HashMap<String, Record>>,
}

impl OutlierDetector {
    /// A detector with `config`.
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config,
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Records the outcome of a request to `id` in a pool of `pool_size` endpoints.
    /// Returns true when this outcome ejected the endpoint.
    pub fn record(&self, id: &str, success: bool, pool_size: usize, now: Instant) -> bool {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let ejected_now = records
            .values()
            .filter(|r| r.ejected_until.is_some_and(|t| t > now))
            .count();
        let record = records.entry(id.to_owned()).or_default();
        if success {
            record.consecutive = 0;
            if record.ejected_until.is_some_and(|t| t <= now) {
                // Its probe went through: it is back, and the next ejection
                // starts from the base again.
                record.ejected_until = None;
                record.ejections = 0;
            }
            return false;
        }
        record.consecutive += 1;
        let probing = record.ejected_until.is_some_and(|t| t <= now);
        let due = probing || record.consecutive >= self.config.consecutive_failures;
        let room = (ejected_now as f64) < self.config.max_ejected_share * pool_size as f64;
        if !due || record.ejected_until.is_some_and(|t| t > now) || !room {
            return false;
        }
        record.ejections += 1;
        let time = self
            .config
            .base_ejection
            .saturating_mul(record.ejections)
            .min(self.config.max_ejection);
        record.ejected_until = Some(now + time);
        record.consecutive = 0;
        true
    }

    /// Whether `id` may take traffic now (never ejected, or its ejection is over).
    pub fn available(&self, id: &str, now: Instant) -> bool {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .get(id)
            .and_then(|r| r.ejected_until)
            .is_none_or(|t| t <= now)
    }
}

/// Limits retries to a share of the requests plus a small floor (Finagle's and
/// gRPC's retry budget), counted over a sliding window, so that retries cannot
/// multiply the load on a failing service.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: u32,
    window: Duration,
    buckets: Mutex<Vec<(Instant, u32, u32)>>,
}

impl Default for RetryBudget {
    /// Retries up to 20 % of requests plus 10 per second, over 10 seconds.
    fn default() -> Self {
        RetryBudget::new(0.2, 10, Duration::from_secs(10))
    }
}

impl RetryBudget {
    /// Retries may be `ratio` of the requests plus `floor_per_sec` per second of
    /// `window`.
    pub fn new(ratio: f64, floor_per_sec: u32, window: Duration) -> Self {
        RetryBudget {
            ratio,
            floor_per_sec,
            window,
            buckets: Mutex::new(Vec::new()),
        }
    }

    fn bucket<'a>(
        &self,
        buckets: &'a mut Vec<(Instant, u32, u32)>,
        now: Instant,
    ) -> &'a mut (Instant, u32, u32) {
        buckets.retain(|(start, _, _)| now.saturating_duration_since(*start) < self.window);
        let second = Duration::from_secs(1);
        if buckets
            .last()
            .is_none_or(|(start, _, _)| now.saturating_duration_since(*start) >= second)
        {
            buckets.push((now, 0, 0));
        }
        buckets.last_mut().expect("just pushed")
    }

    /// Counts a first attempt.
    pub fn request(&self, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.bucket(&mut buckets, now).1 += 1;
    }

    /// Asks for a retry; counts it when granted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.bucket(&mut buckets, now);
        let (requests, retries) = buckets.iter().fold((0u64, 0u64), |(q, r), (_, bq, br)| {
            (q + u64::from(*bq), r + u64::from(*br))
        });
        let allowed = self.ratio * requests as f64
            + f64::from(self.floor_per_sec) * self.window.as_secs_f64();
        if (retries as f64) < allowed {
            self.bucket(&mut buckets, now).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> OutlierDetector {
        OutlierDetector::new(OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_share: 0.5,
        })
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times() {
        let d = detector();
        let t0 = Instant::now();
        assert!(!d.record("a", false, 4, t0));
        assert!(!d.record("a", false, 4, t0));
        assert!(d.available("a", t0));
        assert!(d.record("a", false, 4, t0), "third failure in a row ejects");
        assert!(!d.available("a", t0 + Duration::from_secs(9)));
        assert!(
            d.available("a", t0 + Duration::from_secs(10)),
            "back for a probe"
        );
        // The probe fails: ejected again, twice as long.
        let t1 = t0 + Duration::from_secs(10);
        assert!(d.record("a", false, 4, t1));
        assert!(!d.available("a", t1 + Duration::from_secs(19)));
        assert!(d.available("a", t1 + Duration::from_secs(20)));
        // Third ejection is capped at 25 s.
        let t2 = t1 + Duration::from_secs(20);
        assert!(d.record("a", false, 4, t2));
        assert!(!d.available("a", t2 + Duration::from_secs(24)));
        assert!(d.available("a", t2 + Duration::from_secs(25)));
        // A successful probe resets it.
        let t3 = t2 + Duration::from_secs(25);
        assert!(!d.record("a", true, 4, t3));
        assert!(d.available("a", t3));
        for _ in 0..3 {
            d.record("a", false, 4, t3);
        }
        assert!(
            d.available("a", t3 + Duration::from_secs(10)),
            "back to the base time"
        );
    }

    #[test]
    fn a_success_breaks_the_run() {
        let d = detector();
        let t0 = Instant::now();
        for _ in 0..10 {
            d.record("a", false, 4, t0);
            d.record("a", false, 4, t0);
            d.record("a", true, 4, t0);
        }
        assert!(d.available("a", t0));
    }

    #[test]
    fn never_more_than_the_share_of_the_pool() {
        let d = detector();
        let t0 = Instant::now();
        let mut ejected = 0;
        for id in ["a", "b", "c", "d"] {
            for _ in 0..3 {
                if d.record(id, false, 4, t0) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "half of four");
        let available = ["a", "b", "c", "d"]
            .iter()
            .filter(|id| d.available(id, t0))
            .count();
        assert_eq!(available, 2);
    }

    #[test]
    fn retries_stay_within_the_budget() {
        let budget = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        let t0 = Instant::now();
        // 1,000 requests in one second, every one failing and asking to retry.
        let mut granted = 0;
        for _ in 0..1000 {
            budget.request(t0);
            if budget.try_retry(t0) {
                granted += 1;
            }
        }
        // 20 % of 1,000 plus a floor of 1/s over 10 s.
        assert_eq!(granted, 210);
        // Ten seconds later the window has moved on: the budget is back.
        let later = t0 + Duration::from_secs(11);
        assert!(budget.try_retry(later));
    }

    #[test]
    fn the_floor_allows_retries_at_low_traffic() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        let t0 = Instant::now();
        let granted = (0..200).filter(|_| budget.try_retry(t0)).count();
        assert_eq!(
            granted, 100,
            "10 per second over a 10 s window, no requests needed"
        );
    }
}
