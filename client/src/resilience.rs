//! Building blocks that keep a dead, failing or hung endpoint from costing
//! much: outlier ejection (failures in a row, and silence: [`StallConfig`])
//! and a retry budget, and the [`ResilienceConfig`] that the request path
//! ([`Router`](crate::Router)) applies with them. The building blocks take
//! the time as an argument (Tokio's clock in production), so tests run on a
//! paused clock.
//!
//! # A hung endpoint
//!
//! An endpoint that accepts connections but never answers (a stopped
//! process, a deadlock) is the costly case: every request sent to it waits
//! for its timeout. Timeouts count as failures, but under load many requests
//! go out before the first timeout fires, so failures in a row alone would
//! let `rate × timeout` requests wait. The router therefore watches each
//! endpoint's silence ([`Endpoint::silent_for`](crate::balance::Endpoint::silent_for)):
//! how long it has had requests in flight without answering any of them. A
//! silence longer than `max(min_silence, latency_multiple × latency peak)`
//! (250 ms and 4 × by default; the peak is a high percentile of the
//! endpoint's own latency) ejects it at the next pick, before the requests
//! already sent time out. So a hang costs the requests sent during that
//! silence (about `rate × 250 ms`) plus one probe per ejection, and
//! ejections double (30 s, 60 s, 120 s, ... up to 300 s), so the probes grow
//! with the logarithm of the hang's duration, not with it.
//!
//! What does not trip it: a burst (many requests in flight, but the
//! endpoint keeps answering some, so it is never silent for long), a slow
//! but live endpoint (its threshold grows with its latency peak), an
//! endpoint that never answered yet (no latency known: timeouts and failures
//! in a row judge it). A pause that ends (a garbage collection) ends the
//! ejection with the first successful late answer. The share of the pool
//! that may be ejected at once applies; a silent endpoint that cannot be
//! ejected is still passed over while others can take the request.
//!
//! Requests that legitimately wait long for their response headers (long
//! polls, with a [`ResilienceConfig::timeout`] raised to match) look like
//! silence when nothing else is in flight to the endpoint: send them through
//! a router whose [`OutlierConfig::stall`] is `None`.

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
    /// elsewhere; timeouts count as failures for outlier ejection, and a
    /// hung endpoint is ejected sooner for its silence
    /// ([`OutlierConfig::stall`]).
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
///
/// ```
/// use std::time::Duration;
/// use roster_client::resilience::{OutlierConfig, StallConfig};
///
/// let outlier = OutlierConfig::default();
/// assert_eq!(outlier.ejection_time(1), Duration::from_secs(30));
/// assert_eq!(outlier.ejection_time(3), Duration::from_secs(120));
/// assert_eq!(outlier.ejection_time(9), Duration::from_secs(300));
/// // A backend whose answers take up to a few seconds: judge silences later.
/// let patient = OutlierConfig {
///     stall: Some(StallConfig { min_silence: Duration::from_secs(1), ..Default::default() }),
///     ..Default::default()
/// };
/// # let _ = patient;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row (5xx except 501, timeouts, connection errors) that
    /// eject an endpoint (default 5).
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection (default 30 s); each ejection in a
    /// row doubles it ([`ejection_time`](OutlierConfig::ejection_time)).
    pub base_ejection: Duration,
    /// Longest ejection (default 300 s).
    pub max_ejection: Duration,
    /// Largest share of the pool that may be ejected at once (rounded down,
    /// default 0.5), so a failure of everything does not leave nothing to
    /// send to.
    pub max_ejected_share: f64,
    /// Ejects an endpoint that stopped answering before its requests time
    /// out; `None` leaves hung endpoints to timeouts and
    /// `consecutive_failures`.
    pub stall: Option<StallConfig>,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
            stall: Some(StallConfig::default()),
        }
    }
}

impl OutlierConfig {
    /// How long the `n`-th ejection in a row lasts: `base_ejection × 2^(n-1)`,
    /// at most `max_ejection`.
    pub fn ejection_time(&self, n: u32) -> Duration {
        let doubling = 2u32.saturating_pow(n.saturating_sub(1));
        self.base_ejection
            .saturating_mul(doubling)
            .min(self.max_ejection)
    }
}

/// When an endpoint's silence (requests in flight, none answered; see
/// [`Endpoint::silent_for`](crate::balance::Endpoint::silent_for)) counts as
/// a stall that ejects it: longer than `min_silence` and than
/// `latency_multiple` times its latency peak (a high percentile of its own
/// latency). An endpoint that never answered has no latency to judge by and
/// never stalls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StallConfig {
    /// Shortest silence that counts (default 250 ms): below it, jitter and
    /// short pauses of a healthy endpoint.
    pub min_silence: Duration,
    /// Silence, in multiples of the endpoint's latency peak, that counts
    /// (default 4).
    pub latency_multiple: u32,
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig {
            min_silence: Duration::from_millis(250),
            latency_multiple: 4,
        }
    }
}

impl StallConfig {
    /// The silence that counts for an endpoint whose latency peak is `peak`.
    pub fn threshold(&self, peak: Duration) -> Duration {
        self.min_silence
            .max(peak.saturating_mul(self.latency_multiple))
    }

    /// How long `endpoint` has been silent, when that is a stall at `now`.
    pub fn stalled(&self, endpoint: &crate::balance::Endpoint, now: Instant) -> Option<Duration> {
        let peak = endpoint.latency_peak()?;
        let silence = endpoint.silent_for(now)?;
        (silence > self.threshold(peak)).then_some(silence)
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
    /// The current ejection is for silence: a late success ends it.
    stalled: bool,
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

/// Ejects endpoints that keep failing (Envoy's consecutive-5xx detector) or
/// fell silent: after `consecutive_failures` failures in a row
/// ([`record`](OutlierDetector::record)), or a stall
/// ([`eject_stalled`](OutlierDetector::eject_stalled)), an endpoint gets no
/// traffic for [`OutlierConfig::ejection_time`] (doubling with each ejection
/// in a row). When that time is over, one request probes it
/// ([`OutlierDetector::try_probe`]) while the others keep away; a success
/// brings it back, a failure ejects it again for twice as long. A success
/// of a request sent before a stall ejection ends that ejection at once:
/// the endpoint was paused, not hung.
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
        let mut state = record.state(now);
        if matches!(state, EjectionState::Ejected { .. }) {
            if !(success && record.stalled) {
                // A late answer to a request sent before the ejection says
                // nothing about the endpoint now.
                return false;
            }
            // Ejected for silence, and a request sent before answered after
            // all: it was a pause, not a hang.
            tracing::info!(endpoint = %id, "a silent endpoint answered: back in the pool");
            record.ejected_until = None;
            record.ejections -= 1;
            record.stalled = false;
            self.out.store(out, Ordering::Relaxed);
            state = EjectionState::Active;
        }
        let probed = matches!(state, EjectionState::ProbeDue | EjectionState::Probing);
        record.probing = false;
        record.stalled = false;
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
        let room = out < self.room(pool_size);
        if !probed && (record.consecutive < self.config.consecutive_failures || !room) {
            return false;
        }
        self.eject(record, false, now);
        self.out.store(out + 1, Ordering::Relaxed);
        true
    }

    fn eject(&self, record: &mut Record, stalled: bool, now: Instant) {
        record.ejections += 1;
        record.ejected_until = Some(now + self.config.ejection_time(record.ejections));
        record.consecutive = 0;
        record.stalled = stalled;
    }

    /// Ejects `id`, in a pool of `pool_size` endpoints, because it has gone
    /// silent ([`StallConfig::stalled`]), when it takes ordinary traffic and
    /// the ejected share leaves room. Returns true when it ejected it.
    pub fn eject_stalled(&self, id: &str, pool_size: usize, now: Instant) -> bool {
        let mut records = self.records();
        let out = records
            .iter()
            .filter(|(other, r)| other.as_str() != id && r.ejected_until.is_some())
            .count();
        if out >= self.room(pool_size) {
            return false;
        }
        let record = records.entry(id.to_owned()).or_default();
        if record.state(now) != EjectionState::Active {
            return false;
        }
        self.eject(record, true, now);
        self.out.store(out + 1, Ordering::Relaxed);
        true
    }

    /// How many endpoints of a pool of `pool_size` may be out at once.
    fn room(&self, pool_size: usize) -> usize {
        (self.config.max_ejected_share * pool_size as f64).floor() as usize
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
            stall: Some(StallConfig::default()),
        })
    }

    #[test]
    fn ejections_double_up_to_the_cap() {
        let c = OutlierConfig::default();
        let times: Vec<u64> = (1..=6).map(|n| c.ejection_time(n).as_secs()).collect();
        assert_eq!(times, [30, 60, 120, 240, 300, 300]);
        assert_eq!(c.ejection_time(u32::MAX), c.max_ejection);
    }

    #[test]
    fn a_stall_ejects_at_once_and_a_late_success_ends_it() {
        let d = detector();
        let t0 = Instant::now();
        assert!(d.eject_stalled("a", 4, t0));
        assert!(!d.eject_stalled("a", 4, t0), "already out");
        assert!(matches!(
            d.state("a", t0),
            EjectionState::Ejected { ejections: 1, .. }
        ));
        assert_eq!(d.out_count(), 1);
        // A request sent before the ejection times out: nothing changes.
        assert!(!d.record("a", false, 4, t0 + Duration::from_millis(100)));
        assert!(!d.available("a", t0 + Duration::from_millis(100)));
        // Another one answers after all: a pause, not a hang.
        let t1 = t0 + Duration::from_millis(300);
        assert!(!d.record("a", true, 4, t1));
        assert!(d.available("a", t1));
        assert_eq!((d.ejection("a"), d.out_count()), (None, 0));
        // The next stall starts from the base time again.
        assert!(d.eject_stalled("a", 4, t1));
        assert_eq!(d.ejection("a"), Some((t1 + Duration::from_secs(10), 1)));
    }

    #[test]
    fn a_stall_without_an_answer_runs_its_course_with_one_probe_at_a_time() {
        let d = detector();
        let t0 = Instant::now();
        assert!(d.eject_stalled("a", 4, t0));
        let t1 = t0 + Duration::from_secs(10);
        assert!(d.try_probe("a", t1));
        assert!(!d.try_probe("a", t1), "one probe at a time");
        // The probe times out: ejected twice as long, no longer for silence,
        // so a late success of an old request does not end it.
        let t2 = t1 + Duration::from_secs(2);
        assert!(d.record("a", false, 4, t2));
        assert_eq!(d.ejection("a"), Some((t2 + Duration::from_secs(20), 2)));
        assert!(!d.record("a", true, 4, t2 + Duration::from_secs(1)));
        assert!(!d.available("a", t2 + Duration::from_secs(1)));
        // A good probe brings it back.
        let t3 = t2 + Duration::from_secs(20);
        assert!(d.try_probe("a", t3));
        assert!(!d.record("a", true, 4, t3));
        assert!(d.available("a", t3));
    }

    #[test]
    fn stalls_keep_to_the_ejected_share() {
        let d = detector();
        let t0 = Instant::now();
        assert!(d.eject_stalled("a", 3, t0));
        assert!(!d.eject_stalled("b", 3, t0), "half of three is one");
        for _ in 0..3 {
            d.record("c", false, 3, t0);
        }
        assert!(d.available("c", t0), "failures in a row keep to it too");
        assert!(d.eject_stalled("b", 4, t0), "two of four");
    }

    #[test]
    fn the_stall_threshold_follows_the_latency_peak_with_a_floor() {
        let s = StallConfig::default();
        assert_eq!(
            s.threshold(Duration::from_millis(3)),
            Duration::from_millis(250)
        );
        assert_eq!(
            s.threshold(Duration::from_millis(400)),
            Duration::from_millis(1600)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_silence_past_the_threshold_of_an_endpoint_that_answered_is_a_stall() {
        use crate::balance::Endpoint;
        let s = StallConfig::default();
        let e = Endpoint::new("a", 1);
        // Never answered: no latency to judge by.
        let first = e.start();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.stalled(&e, Instant::now()), None);
        first.finish(Duration::from_millis(100));
        // Peak 100 ms: silence counts past 400 ms.
        let _waiting = e.start();
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(s.stalled(&e, Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            s.stalled(&e, Instant::now()),
            Some(Duration::from_millis(401))
        );
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
