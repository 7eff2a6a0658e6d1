//! Building blocks that keep a dead or slow endpoint from costing much: outlier
//! ejection and a retry budget, and the [`ResilienceConfig`] that the request
//! path ([`Router`](crate::Router)) applies with them. The building blocks take
//! the time as an argument (Tokio's clock in production), so tests run on a
//! paused clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::RetryConfig;

/// Everything the request path applies around each endpoint.
///
/// ```
/// use std::time::Duration;
/// use roster_client::resilience::{OutlierConfig, ResilienceConfig};
///
/// let config = ResilienceConfig {
///     timeout: Some(Duration::from_secs(2)),
///     max_in_flight_per_endpoint: Some(64),
///     outlier: Some(OutlierConfig { consecutive_failures: 3, ..Default::default() }),
///     ..Default::default()
/// };
/// assert_eq!(config.retry.max_retries, 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ResilienceConfig {
    /// Time limit of one attempt, up to the response headers (default 2 s):
    /// a hung endpoint costs a request this long, then the retry goes
    /// elsewhere; timeouts count as failures for outlier ejection.
    pub timeout: Option<Duration>,
    /// Time limit of one logical request, across all its attempts and the
    /// pauses between them (default 5 s): when it runs out the caller gets
    /// the last failure, or [`CallError::DeadlineExceeded`](crate::CallError).
    pub deadline: Option<Duration>,
    /// Outlier ejection; `None` turns it off.
    pub outlier: Option<OutlierConfig>,
    /// Bulkhead: most requests in flight to one endpoint (default 256); a
    /// full endpoint is skipped by balancing, and when all are full the
    /// request fails at once with
    /// [`CallError::EndpointsFull`](crate::CallError::EndpointsFull)
    /// ([`CallError::is_overloaded`](crate::CallError::is_overloaded)).
    pub max_in_flight_per_endpoint: Option<usize>,
    /// Bulkhead: most requests (with their retries) in flight to one service
    /// (default: no limit).
    pub max_in_flight_per_service: Option<usize>,
    /// Retries of failed idempotent requests.
    pub retry: RetryConfig,
    /// How long the first request to a service waits for discovery's first
    /// answer (default 5 s).
    pub discovery_timeout: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            timeout: Some(Duration::from_secs(2)),
            deadline: Some(Duration::from_secs(5)),
            outlier: Some(OutlierConfig::default()),
            max_in_flight_per_endpoint: Some(256),
            max_in_flight_per_service: None,
            retry: RetryConfig::default(),
            discovery_timeout: Duration::from_secs(5),
        }
    }
}

/// When to eject an endpoint, and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of the pool that may be ejected at once (rounded down),
    /// so a failure of everything does not leave nothing to send to.
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

/// Where an endpoint stands with the [`OutlierDetector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionState {
    /// Takes traffic.
    Active,
    /// Ejected until the given time.
    Ejected {
        /// End of the ejection.
        until: Instant,
        /// Ejections in a row, this one included.
        ejections: u32,
    },
    /// The ejection is over; the next request may probe it.
    ProbeDue,
    /// A probe is in flight; other requests keep away until it answers.
    Probing,
}

#[derive(Debug, Default)]
struct Record {
    consecutive: u32,
    ejections: u32,
    /// Set from an ejection until a request succeeds after it has ended.
    ejected_until: Option<Instant>,
    probing: bool,
}

impl Record {
    fn state(&self, now: Instant) -> EjectionState {
        match self.ejected_until {
            None => EjectionState::Active,
            Some(until) if until > now => EjectionState::Ejected {
                until,
                ejections: self.ejections,
            },
            Some(_) if self.probing => EjectionState::Probing,
            Some(_) => EjectionState::ProbeDue,
        }
    }
}

/// Ejects endpoints that keep failing (Envoy's consecutive-5xx detector): after
/// `consecutive_failures` failures in a row an endpoint gets no traffic for
/// `base_ejection × ejections` (capped). When that time is over, one request
/// probes it ([`OutlierDetector::try_probe`]); a success brings it back, a
/// failure ejects it again for longer.
#[derive(Debug, Default)]
pub struct OutlierDetector {
    config: OutlierConfig,
    records: Mutex<HashMap<String, Record>>,
    /// Records with an ejection, kept in step under the lock and read without
    /// it, so the request path skips all ejection work while nothing is out.
    out: AtomicUsize,
}

impl OutlierDetector {
    /// A detector with `config`.
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config,
            records: Mutex::new(HashMap::new()),
            out: AtomicUsize::new(0),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the outcome of a request to `id` in a pool of `pool_size` endpoints.
    /// Returns true when this outcome ejected the endpoint.
    pub fn record(&self, id: &str, success: bool, pool_size: usize, now: Instant) -> bool {
        let mut records = self.records();
        if success && !records.contains_key(id) {
            // Endpoints that never failed need no record.
            return false;
        }
        // Endpoints out of the pool: ejected, or waiting for a good probe.
        let out = records
            .iter()
            .filter(|(other, r)| other.as_str() != id && r.ejected_until.is_some())
            .count();
        let record = records.entry(id.to_owned()).or_default();
        let state = record.state(now);
        if matches!(state, EjectionState::Ejected { .. }) {
            // A late answer to a request sent before the ejection says
            // nothing about the endpoint now.
            return false;
        }
        let probed = matches!(state, EjectionState::ProbeDue | EjectionState::Probing);
        record.probing = false;
        if success {
            record.consecutive = 0;
            if probed {
                // The next ejection starts from the base time again.
                record.ejected_until = None;
                record.ejections = 0;
                self.out.store(out, Ordering::Relaxed);
            }
            return false;
        }
        record.consecutive += 1;
        // A failed probe re-ejects whatever the share: it never rejoined the pool.
        let room = out < (self.config.max_ejected_share * pool_size as f64).floor() as usize;
        if !probed && (record.consecutive < self.config.consecutive_failures || !room) {
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
        self.out.store(out + 1, Ordering::Relaxed);
        true
    }

    /// How many endpoints are out of the pool (ejected, or waiting for a
    /// successful probe). Lock-free.
    pub fn out_count(&self) -> usize {
        self.out.load(Ordering::Relaxed)
    }

    /// Whether `id` takes ordinary traffic: never ejected, or back after a
    /// successful probe.
    pub fn available(&self, id: &str, now: Instant) -> bool {
        self.state(id, now) == EjectionState::Active
    }

    /// Where `id` stands now.
    pub fn state(&self, id: &str, now: Instant) -> EjectionState {
        self.records()
            .get(id)
            .map_or(EjectionState::Active, |r| r.state(now))
    }

    /// The end of `id`'s current or last ejection and the ejections in a
    /// row, until a successful probe brings it back (then `None`). Unlike
    /// [`state`](OutlierDetector::state) this does not depend on the time.
    pub fn ejection(&self, id: &str) -> Option<(Instant, u32)> {
        let records = self.records();
        let r = records.get(id)?;
        Some((r.ejected_until?, r.ejections))
    }

    /// Claims the probe of `id` when its ejection is over and no probe is out.
    /// The caller must report the probe's outcome with
    /// [`record`](OutlierDetector::record), or give it up with
    /// [`cancel_probe`](OutlierDetector::cancel_probe).
    pub fn try_probe(&self, id: &str, now: Instant) -> bool {
        let mut records = self.records();
        match records.get_mut(id) {
            Some(r) if r.state(now) == EjectionState::ProbeDue => {
                r.probing = true;
                true
            }
            _ => false,
        }
    }

    /// Gives up a probe claimed with [`try_probe`](OutlierDetector::try_probe)
    /// without an outcome (the request was cancelled), so another one can go.
    pub fn cancel_probe(&self, id: &str) {
        if let Some(r) = self.records().get_mut(id) {
            r.probing = false;
        }
    }

    /// Forgets endpoints for which `keep` is false (they left the pool).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        let mut records = self.records();
        records.retain(|id, _| keep(id));
        let out = records
            .values()
            .filter(|r| r.ejected_until.is_some())
            .count();
        self.out.store(out, Ordering::Relaxed);
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
            !d.try_probe("a", t0 + Duration::from_secs(9)),
            "still ejected"
        );
        // Time is over: one probe may go, and only one.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(d.state("a", t1), EjectionState::ProbeDue);
        assert!(
            !d.available("a", t1),
            "no ordinary traffic before the probe"
        );
        assert!(d.try_probe("a", t1));
        assert!(!d.try_probe("a", t1), "one probe at a time");
        // The probe fails: ejected again, twice as long.
        assert!(d.record("a", false, 4, t1));
        assert_eq!(d.ejection("a"), Some((t1 + Duration::from_secs(20), 2)));
        assert!(!d.try_probe("a", t1 + Duration::from_secs(19)));
        let t2 = t1 + Duration::from_secs(20);
        assert!(d.try_probe("a", t2));
        // Third ejection is capped at 25 s.
        assert!(d.record("a", false, 4, t2));
        assert!(matches!(
            d.state("a", t2),
            EjectionState::Ejected { ejections: 3, .. }
        ));
        assert!(!d.try_probe("a", t2 + Duration::from_secs(24)));
        // A successful probe brings it back and resets the ejection time.
        let t3 = t2 + Duration::from_secs(25);
        assert!(d.try_probe("a", t3));
        assert!(!d.record("a", true, 4, t3));
        assert!(d.available("a", t3));
        assert_eq!((d.ejection("a"), d.out_count()), (None, 0));
        for _ in 0..3 {
            d.record("a", false, 4, t3);
        }
        assert!(
            d.try_probe("a", t3 + Duration::from_secs(10)),
            "back to the base time"
        );
    }

    #[test]
    fn a_cancelled_probe_lets_another_go() {
        let d = detector();
        let t0 = Instant::now();
        for _ in 0..3 {
            d.record("a", false, 4, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert!(d.try_probe("a", t1));
        assert_eq!(d.state("a", t1), EjectionState::Probing);
        d.cancel_probe("a");
        assert!(d.try_probe("a", t1));
    }

    #[test]
    fn late_answers_and_departed_endpoints() {
        let d = detector();
        let t0 = Instant::now();
        for _ in 0..3 {
            d.record("a", false, 4, t0);
        }
        // A success of a request sent before the ejection does not end it.
        assert!(!d.record("a", true, 4, t0 + Duration::from_secs(1)));
        assert!(!d.available("a", t0 + Duration::from_secs(1)));
        assert_eq!(d.out_count(), 1);
        d.retain(|id| id != "a");
        assert!(d.available("a", t0), "forgotten when it left the pool");
        assert_eq!(d.out_count(), 0);
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
        // Half of three rounds down to one.
        let d = detector();
        let ejected = ["a", "b", "c"]
            .iter()
            .filter(|id| (0..3).any(|_| d.record(id, false, 3, t0)))
            .count();
        assert_eq!(ejected, 1);
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
