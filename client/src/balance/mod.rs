//! Load balancers: choose which instance of a service gets the next request.
//!
//! Every balancer implements [`Balancer`] and picks an index into a slice of
//! [`Endpoint`]s. An endpoint carries what balancing needs (id, weight) and
//! shared load state (requests in flight, a peak-EWMA latency estimate, a
//! latency peak, when it last answered) that callers feed through the
//! [`InFlight`] guard returned by [`Endpoint::start`].
//!
//! | Balancer | Uses | Hot path |
//! |---|---|---|
//! | [`RoundRobin`] (default) | order | one atomic add |
//! | [`Random`] | nothing | one atomic add |
//! | [`WeightedRoundRobin`] | [`Endpoint::weight`] | a short `Mutex`, allocates only when the set changes |
//! | [`PowerOfTwoChoices`] | in-flight, peak EWMA | two atomic adds, two loads |
//!
//! ```
//! use std::time::Duration;
//! use roster_client::balance::{Balancer, Endpoint, PowerOfTwoChoices};
//!
//! let endpoints = vec![Endpoint::new("web-1", 1), Endpoint::new("web-2", 1)];
//! let balancer = PowerOfTwoChoices::new();
//! let i = balancer.pick(&endpoints).expect("non-empty");
//! let request = endpoints[i].start(); // counts as in flight until dropped
//! // ... send the request to endpoints[i] ...
//! request.finish(Duration::from_millis(3)); // feeds the latency estimate
//! assert_eq!(endpoints[i].in_flight(), 0);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{Health, Instance};

mod p2c;
mod random;
mod rng;
mod round_robin;
mod weighted;

pub use p2c::{Cost, PowerOfTwoChoices};
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::WeightedRoundRobin;

/// Chooses an endpoint for the next request.
pub trait Balancer: Send + Sync {
    /// Picks an endpoint index among `endpoints` (non-empty), or None if empty.
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize>;
}

impl<B: Balancer + ?Sized> Balancer for Arc<B> {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        (**self).pick(endpoints)
    }
}

impl<B: Balancer + ?Sized> Balancer for Box<B> {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        (**self).pick(endpoints)
    }
}

/// How fast the peak-EWMA latency estimate forgets: after this long without
/// samples it has decayed to 1/e of its value (linkerd's default).
pub const PEAK_EWMA_DECAY: Duration = Duration::from_secs(10);

/// One balancing target: an id, a weight and load state shared by its clones.
///
/// Cloning is cheap (two `Arc`s) and clones share the in-flight counter and
/// latency estimate, so a balancer, the request path and the discovery cache
/// all see the same load.
#[derive(Clone, Debug)]
pub struct Endpoint {
    id: Arc<str>,
    weight: u32,
    load: Arc<LoadState>,
}

impl Endpoint {
    /// A new endpoint with fresh load state.
    pub fn new(id: impl Into<Arc<str>>, weight: u32) -> Self {
        Endpoint {
            id: id.into(),
            weight,
            load: Arc::new(LoadState::new()),
        }
    }

    /// An endpoint for a registry instance, weighted by [`instance_weight`].
    pub fn from_instance(instance: &Instance) -> Self {
        Endpoint::new(instance.id.as_str(), instance_weight(instance))
    }

    /// The same endpoint (same id, same shared load state) with another weight:
    /// use it when an instance's weight or health changes so its in-flight
    /// count and latency estimate carry over.
    pub fn with_weight(&self, weight: u32) -> Self {
        Endpoint {
            id: self.id.clone(),
            weight,
            load: self.load.clone(),
        }
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The balancing weight (0 means "send nothing" to weighted balancers).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// The current peak-EWMA latency estimate, or `None` before the first
    /// [`InFlight::finish`].
    pub fn peak_ewma(&self) -> Option<Duration> {
        self.load
            .estimate_us(self.load.now_ms(Instant::now()))
            .map(|us| Duration::from_nanos((us * 1000.0) as u64))
    }

    /// A high percentile of the endpoint's latency (a peak that falls back
    /// by 1/64 of the gap with each lower sample, never with time alone), or
    /// `None` before the first [`InFlight::finish`]. Unlike
    /// [`peak_ewma`](Endpoint::peak_ewma) it does not fade while the endpoint
    /// is idle or silent, so it can judge a silence.
    pub fn latency_peak(&self) -> Option<Duration> {
        match self.load.peak_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }

    /// How long the endpoint has been silent while working: with requests
    /// in flight, the time since it last answered anything (or since the
    /// oldest of them started, when none was in flight before); `None` with
    /// nothing in flight. A slow but live endpoint keeps answering some of
    /// its requests, so its silence stays short however many are queued; a
    /// hung one's grows from its first unanswered request.
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        // The start of a request marks the time before it counts, so a
        // count seen here comes with the mark of its first request.
        if self.load.in_flight.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self.load.progress.load(Ordering::Acquire);
        let now = self.load.now_ms64(now);
        Some(Duration::from_millis(now.saturating_sub(since)))
    }

    /// Marks a request as started; it counts as in flight until the returned
    /// guard is dropped or [finished](InFlight::finish).
    pub fn start(&self) -> InFlight {
        self.load.mark_if_idle();
        self.load.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            load: self.load.clone(),
        }
    }

    /// Like [`Endpoint::start`], but only while fewer than `limit` requests
    /// are in flight: the per-endpoint bulkhead. The check and the increment
    /// are one atomic step, so concurrent callers never overshoot `limit`.
    ///
    /// ```
    /// let e = roster_client::balance::Endpoint::new("web-1", 1);
    /// let first = e.try_start(1).expect("room for one");
    /// assert!(e.try_start(1).is_none(), "full");
    /// drop(first);
    /// assert!(e.try_start(1).is_some());
    /// ```
    pub fn try_start(&self, limit: usize) -> Option<InFlight> {
        self.load.mark_if_idle();
        self.load
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight {
            load: self.load.clone(),
        })
    }

    /// Whether two endpoints share load state (one is a clone or a
    /// re-weighting of the other).
    pub fn same_load(&self, other: &Endpoint) -> bool {
        Arc::ptr_eq(&self.load, &other.load)
    }

    pub(crate) fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The power-of-two-choices cost at `now`.
    pub(crate) fn cost(&self, cost: Cost, now: Instant) -> f64 {
        self.load.cost(cost, now)
    }
}

/// The weight an instance gets for its current health: `weights.passing` when
/// passing, `weights.warning` in warning, 0 when critical.
pub fn instance_weight(instance: &Instance) -> u32 {
    match instance.health {
        Health::Passing => instance.weights.passing,
        Health::Warning => instance.weights.warning,
        Health::Critical => 0,
    }
}

/// A request in flight to an [`Endpoint`]: [`finish`](InFlight::finish) ends
/// it with a latency sample (a success), [`answered`](InFlight::answered)
/// with an answer that is no sample (an error status, a refused or broken
/// connection), and dropping it ends it with no answer at all (a timeout, a
/// cancellation), which leaves the endpoint's silence running.
#[derive(Debug)]
#[must_use = "the request stops counting as in flight as soon as the guard is dropped"]
pub struct InFlight {
    load: Arc<LoadState>,
}

impl InFlight {
    /// Ends the request and records `latency` into the endpoint's peak EWMA
    /// and latency peak; the endpoint answered.
    pub fn finish(self, latency: Duration) {
        let now = Instant::now();
        self.load
            .observe(latency_us(latency), self.load.now_ms(now));
        self.load.mark(now);
    }

    /// Ends the request without a latency sample, but as an answer: the
    /// endpoint is not silent (a failure status, a refused or reset
    /// connection).
    pub fn answered(self) {
        self.load.mark(Instant::now());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cost of an endpoint whose latency is still unknown while it has requests in
/// flight (as Finagle does): untried endpoints get one probe, not a stampede.
const PENALTY_US: f64 = 1e12;

/// Load shared by all clones of an [`Endpoint`].
#[derive(Debug)]
struct LoadState {
    in_flight: AtomicUsize,
    /// Peak EWMA, packed so a sample updates estimate and timestamp together:
    /// high 32 bits are milliseconds since `epoch` at the last update
    /// (wrapping, about 49 days), low 32 bits the estimate in microseconds
    /// (saturating at about 71 minutes); 0 means no sample yet.
    ewma: AtomicU64,
    /// The latency peak in microseconds (see [`Endpoint::latency_peak`]);
    /// 0 means no sample yet.
    peak_us: AtomicU32,
    /// Milliseconds since `epoch` of the last answer, or of the start of a
    /// request when none was in flight: what silence is measured from.
    progress: AtomicU64,
    epoch: Instant,
}

/// A lower latency sample pulls the latency peak down by this share of the
/// gap: it tracks roughly the 97th-99th percentile of steady latency.
const PEAK_FALL: u32 = 64;

impl LoadState {
    fn new() -> Self {
        LoadState {
            in_flight: AtomicUsize::new(0),
            ewma: AtomicU64::new(0),
            peak_us: AtomicU32::new(0),
            progress: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms64(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Notes a sign of life at `now`.
    fn mark(&self, now: Instant) {
        self.progress
            .fetch_max(self.now_ms64(now), Ordering::AcqRel);
    }

    /// Before a request starts: with nothing in flight, silence starts now.
    fn mark_if_idle(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.mark(Instant::now());
        }
    }

    fn now_ms(&self, now: Instant) -> u32 {
        // Wrapping on purpose: only differences of timestamps are used.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// The estimate in microseconds decayed to `now_ms`, if there is one.
    fn estimate_us(&self, now_ms: u32) -> Option<f64> {
        let (stamp, rtt) = unpack(self.ewma.load(Ordering::Relaxed));
        (rtt != 0).then(|| rtt as f64 * decay(now_ms.wrapping_sub(stamp)))
    }

    /// Records a latency sample: a sample above the estimate replaces it
    /// (the "peak"), a lower one is blended in by the time since the last
    /// update, so the estimate falls back slowly after a spike.
    fn observe(&self, sample_us: u32, now_ms: u32) {
        let _ = self
            .ewma
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |raw| {
                let (stamp, rtt) = unpack(raw);
                let next = if rtt == 0 || sample_us > rtt {
                    sample_us
                } else {
                    let d = decay(now_ms.wrapping_sub(stamp));
                    let blended = rtt as f64 * d + sample_us as f64 * (1.0 - d);
                    (blended.round() as u32).max(1)
                };
                Some(pack(now_ms, next))
            });
        let _ = self
            .peak_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |peak| {
                Some(if sample_us >= peak {
                    sample_us
                } else {
                    peak - (peak - sample_us) / PEAK_FALL
                })
            });
    }

    fn cost(&self, cost: Cost, now: Instant) -> f64 {
        let pending = self.in_flight.load(Ordering::Relaxed) as f64;
        match cost {
            Cost::InFlight => pending,
            Cost::PeakEwma => match self.estimate_us(self.now_ms(now)) {
                Some(rtt) => rtt * (pending + 1.0),
                None if pending == 0.0 => 0.0,
                None => PENALTY_US + pending,
            },
        }
    }
}

fn decay(elapsed_ms: u32) -> f64 {
    (-(elapsed_ms as f64) / PEAK_EWMA_DECAY.as_millis() as f64).exp()
}

fn pack(stamp_ms: u32, rtt_us: u32) -> u64 {
    (u64::from(stamp_ms) << 32) | u64::from(rtt_us)
}

fn unpack(raw: u64) -> (u32, u32) {
    ((raw >> 32) as u32, raw as u32)
}

fn latency_us(latency: Duration) -> u32 {
    latency.as_micros().clamp(1, u128::from(u32::MAX)) as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` endpoints named a, b, c, ... with weight 1.
    pub(crate) fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(((b'a' + i as u8) as char).to_string(), 1))
            .collect()
    }

    /// How often each index was picked over `picks` picks.
    pub(crate) fn counts(b: &dyn Balancer, endpoints: &[Endpoint], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            counts[b.pick(endpoints).expect("non-empty")] += 1;
        }
        counts
    }

    fn all_balancers() -> Vec<Box<dyn Balancer>> {
        vec![
            Box::new(RoundRobin::new()),
            Box::new(Random::new()),
            Box::new(WeightedRoundRobin::new()),
            Box::new(PowerOfTwoChoices::new()),
            Box::new(PowerOfTwoChoices::with_cost(Cost::InFlight)),
        ]
    }

    #[test]
    fn empty_is_none_and_single_is_zero() {
        for b in all_balancers() {
            assert_eq!(b.pick(&[]), None);
            let one = endpoints(1);
            for _ in 0..100 {
                assert_eq!(b.pick(&one), Some(0));
            }
        }
        // A lone endpoint is picked even with weight 0 or a heavy load.
        let one = vec![Endpoint::new("x", 0)];
        let _guards: Vec<_> = (0..10).map(|_| one[0].start()).collect();
        for b in all_balancers() {
            assert_eq!(b.pick(&one), Some(0));
        }
    }

    #[test]
    fn picks_stay_in_range_for_every_size() {
        // Property-style: every balancer returns a valid index for sizes 1..=17,
        // whatever the weights and load.
        for b in all_balancers() {
            for n in 1..=17 {
                let eps: Vec<_> = (0..n)
                    .map(|i| Endpoint::new(format!("e{i}"), (i % 4) as u32))
                    .collect();
                let _guard = eps[n / 2].start();
                for _ in 0..50 {
                    let i = b.pick(&eps).expect("non-empty");
                    assert!(i < n, "picked {i} of {n}");
                }
            }
        }
    }

    #[test]
    fn in_flight_guard_counts_and_finish_records() {
        let e = Endpoint::new("a", 1);
        let shared = e.clone();
        assert_eq!(e.peak_ewma(), None);
        let g1 = e.start();
        let g2 = shared.start();
        assert_eq!(e.in_flight(), 2);
        drop(g1);
        assert_eq!(shared.in_flight(), 1);
        g2.finish(Duration::from_millis(20));
        assert_eq!(e.in_flight(), 0);
        let est = e.peak_ewma().expect("a sample was recorded");
        assert!(
            est <= Duration::from_millis(20) && est > Duration::from_millis(10),
            "{est:?}"
        );
        // with_weight shares the load state.
        let reweighted = e.with_weight(7);
        let _g = reweighted.start();
        assert_eq!((reweighted.weight(), e.in_flight()), (7, 1));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_with_time() {
        let load = LoadState::new();
        load.observe(10_000, 0);
        assert_eq!(load.estimate_us(0), Some(10_000.0));
        // A higher sample replaces the estimate at once.
        load.observe(100_000, 5);
        assert_eq!(load.estimate_us(5), Some(100_000.0));
        // A lower sample right after barely moves it ...
        load.observe(1_000, 6);
        let est = load.estimate_us(6).unwrap();
        assert!(est > 99_000.0, "{est}");
        // ... and without samples it decays to 1/e after PEAK_EWMA_DECAY.
        let tau = PEAK_EWMA_DECAY.as_millis() as u32;
        let later = load.estimate_us(6 + tau).unwrap();
        assert!((later - est / std::f64::consts::E).abs() < 1.0, "{later}");
        // A low sample after a long quiet period mostly replaces it.
        load.observe(1_000, 6 + 10 * tau);
        let est = load.estimate_us(6 + 10 * tau).unwrap();
        assert!((1_000.0..1_010.0).contains(&est), "{est}");
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_runs_on_tokios_clock() {
        let e = Endpoint::new("a", 1);
        e.start().finish(Duration::from_millis(100));
        assert_eq!(e.peak_ewma(), Some(Duration::from_millis(100)));
        // Only the paused clock moves: the estimate decays to 1/e of itself.
        tokio::time::advance(PEAK_EWMA_DECAY).await;
        let est = e.peak_ewma().unwrap().as_secs_f64() * 1000.0;
        assert!((est - 100.0 / std::f64::consts::E).abs() < 0.1, "{est}");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_runs_from_the_first_request_until_any_answer() {
        let step = Duration::from_millis(100);
        let e = Endpoint::new("a", 1);
        assert_eq!(e.silent_for(Instant::now()), None, "nothing in flight");
        tokio::time::advance(step).await;
        let first = e.start();
        tokio::time::advance(step).await;
        let second = e.try_start(10).unwrap();
        tokio::time::advance(step).await;
        // Measured from the first request, not the newest.
        assert_eq!(e.silent_for(Instant::now()), Some(2 * step));
        // A timeout (a drop) is no answer: the silence goes on.
        drop(first);
        tokio::time::advance(step).await;
        assert_eq!(e.silent_for(Instant::now()), Some(3 * step));
        let third = e.start();
        // An error answer is one.
        second.answered();
        assert_eq!(e.silent_for(Instant::now()), Some(Duration::ZERO));
        tokio::time::advance(step).await;
        assert_eq!(e.silent_for(Instant::now()), Some(step));
        third.finish(step);
        assert_eq!(e.silent_for(Instant::now()), None);
        // After a quiet spell, the next request starts a new silence.
        tokio::time::advance(10 * step).await;
        let _fourth = e.start();
        assert_eq!(e.silent_for(Instant::now()), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_peak_jumps_up_and_falls_per_sample_not_with_time() {
        let e = Endpoint::new("a", 1);
        assert_eq!(e.latency_peak(), None);
        e.start().finish(Duration::from_millis(100));
        e.start().finish(Duration::from_millis(10));
        let after_one = e.latency_peak().unwrap();
        assert!(
            after_one < Duration::from_millis(100) && after_one > Duration::from_millis(98),
            "{after_one:?}"
        );
        // An idle hour changes nothing (the peak EWMA would have faded).
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(e.latency_peak(), Some(after_one));
        // 64 lower samples close about two thirds of the gap.
        for _ in 0..64 {
            e.start().finish(Duration::from_millis(10));
        }
        let later = e.latency_peak().unwrap().as_secs_f64() * 1000.0;
        assert!((40.0..45.0).contains(&later), "{later}");
        e.start().finish(Duration::from_millis(500));
        assert_eq!(e.latency_peak(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn weight_follows_health() {
        let mut inst: Instance = serde_json::from_value(serde_json::json!({
            "id": "web-1", "service": "web", "address": "10.0.0.1", "port": 80,
            "weights": {"passing": 5, "warning": 2}, "health": "passing",
            "deregister_critical_after": "1m", "create_index": 1, "modify_index": 1
        }))
        .unwrap();
        let e = Endpoint::from_instance(&inst);
        assert_eq!((e.id(), e.weight()), ("web-1", 5));
        inst.health = Health::Warning;
        assert_eq!(Endpoint::from_instance(&inst).weight(), 2);
        inst.health = Health::Critical;
        assert_eq!(Endpoint::from_instance(&inst).weight(), 0);
    }
}
