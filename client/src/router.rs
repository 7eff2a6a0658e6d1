//! The request path's shared state: per service, the endpoints discovery
//! knows, their balancer, outlier detector, retry budget and bulkheads.
//!
//! [`Router::call`] starts one logical request; the returned
//! [`Call`] picks an endpoint per attempt and decides on retries. The
//! [middleware](crate::RosterMiddleware) drives it for `reqwest`; other
//! transports can drive it the same way.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::Instance;
use crate::balance::{Balancer, Endpoint, InFlight, RoundRobin};
use crate::bulkhead::Bulkhead;
use crate::call::{AttemptOutcome, Call};
use crate::error::CallError;
use crate::resilience::{EjectionState, OutlierDetector, ResilienceConfig, RetryBudget};
use crate::{Discovery, ServiceHandle};

/// The catalog's service names, once listed.
type Names = Option<Arc<HashSet<String>>>;

type MakeBalancer = Arc<dyn Fn() -> Box<dyn Balancer> + Send + Sync>;

/// Balancing and resilience for requests to services found through
/// [`Discovery`]. Cheap to clone; clones share all state.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use roster_client::balance::WeightedRoundRobin;
/// use roster_client::{Discovery, AttemptOutcome, RosterClient, Router};
///
/// let discovery = Discovery::new(RosterClient::new("http://127.0.0.1:8500")?);
/// let router = Router::builder(discovery).balancer(WeightedRoundRobin::new).build();
/// // Any transport: ask for an endpoint, send, report how it went.
/// let mut call = router.call("db", true).await?;
/// loop {
///     let attempt = call.next_attempt().await?;
///     let ok = send_somehow(attempt.address(), attempt.port()).await;
///     let outcome = if ok { AttemptOutcome::Success } else { AttemptOutcome::Failed };
///     if !call.finish(attempt, outcome) {
///         break;
///     }
/// }
/// # Ok(()) }
/// # async fn send_somehow(_: &str, _: u16) -> bool { true }
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    discovery: Discovery,
    config: ResilienceConfig,
    make_balancer: MakeBalancer,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    idle_timeout: Duration,
    /// When idle pools were last looked for.
    last_sweep: Mutex<Instant>,
    /// The catalog's service names, kept by a blocking-query task started on
    /// first need.
    names: OnceLock<(watch::Receiver<Names>, JoinHandle<()>)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((_, task)) = self.names.get() {
            task.abort();
        }
    }
}

/// Default time after which a service's pool that no request used is
/// released (Discovery keeps following its service on its catalog stream
/// while another handle of it lives).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Follows the catalog's service list with blocking queries.
async fn follow_names(client: crate::RosterClient, tx: watch::Sender<Names>) {
    let mut index = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client
            .services_blocking(index, Duration::from_secs(300))
            .await
        {
            Ok(list) => {
                backoff = Duration::from_millis(100);
                index = list.index;
                let names: HashSet<String> = list.services.into_iter().map(|s| s.name).collect();
                tx.send_replace(Some(Arc::new(names)));
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the catalog's services");
                // An unreachable registry: answer the waiting requests (their
                // hosts pass through) rather than hold them.
                tx.send_if_modified(|n| {
                    let first = n.is_none();
                    if first {
                        *n = Some(Arc::default());
                    }
                    first
                });
                index = 0;
                tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Router`].
pub struct RouterBuilder {
    discovery: Discovery,
    config: ResilienceConfig,
    make_balancer: MakeBalancer,
    idle_timeout: Duration,
}

impl fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RouterBuilder {
    /// Timeouts, outlier ejection, bulkheads and retries (defaults otherwise).
    pub fn config(mut self, config: ResilienceConfig) -> Self {
        self.config = config;
        self
    }

    /// Makes each service's balancer (default [`RoundRobin::new`]). Called
    /// once per service, so stateful balancers keep per-service state.
    pub fn balancer<B, F>(mut self, make: F) -> Self
    where
        B: Balancer + 'static,
        F: Fn() -> B + Send + Sync + 'static,
    {
        self.make_balancer = Arc::new(move || Box::new(make()));
        self
    }

    /// Releases a service's pool (balancer state, ejections, and its watch
    /// stream unless another router shares it) when no request used it for
    /// `idle` (default 5 minutes). The next request builds it again.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        Router {
            inner: Arc::new(Inner {
                discovery: self.discovery,
                config: self.config,
                make_balancer: self.make_balancer,
                pools: Mutex::new(HashMap::new()),
                idle_timeout: self.idle_timeout,
                last_sweep: Mutex::new(Instant::now()),
                names: OnceLock::new(),
            }),
        }
    }
}

/// One endpoint as the router sees it, for dashboards and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStats {
    /// Instance id.
    pub id: String,
    /// Address requests go to.
    pub address: String,
    /// Port requests go to.
    pub port: u16,
    /// Balancing weight.
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: usize,
    /// Outlier ejection state now.
    pub ejection: EjectionState,
    /// End of the current or last ejection, until a successful probe
    /// brings the endpoint back.
    pub ejected_until: Option<Instant>,
    /// Ejections in a row (0 when never ejected or back).
    pub ejections: u32,
    /// How long it has had requests in flight without answering any
    /// ([`Endpoint::silent_for`]); `None` with nothing in flight.
    pub silent_for: Option<Duration>,
    /// A high percentile of its latency ([`Endpoint::latency_peak`]); `None`
    /// before its first success.
    pub latency_peak: Option<Duration>,
}

impl Router {
    /// A router with the default configuration and round robin.
    pub fn new(discovery: Discovery) -> Router {
        Router::builder(discovery).build()
    }

    /// A builder starting from the defaults.
    pub fn builder(discovery: Discovery) -> RouterBuilder {
        RouterBuilder {
            discovery,
            config: ResilienceConfig::default(),
            make_balancer: Arc::new(|| Box::new(RoundRobin::new())),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// The discovery the router resolves services with.
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// The configuration.
    pub fn config(&self) -> &ResilienceConfig {
        &self.inner.config
    }

    /// Starts one logical request to `service`; `idempotent` allows retries
    /// after failures that may have reached the endpoint. Waits for
    /// discovery's first answer on a service's first use. Fails fast with
    /// [`CallError::ServiceFull`] when the service bulkhead is full.
    pub async fn call(&self, service: &str, idempotent: bool) -> Result<Call, CallError> {
        let pool = self.pool(service);
        if pool.handle.instances().is_err() {
            let ready =
                tokio::time::timeout(self.inner.config.discovery_timeout, pool.handle.ready())
                    .await;
            if let Ok(Err(source)) = ready {
                return Err(pool.discovery_error(source));
            }
        }
        let Some(permit) = pool.bulkhead.try_acquire() else {
            return Err(CallError::ServiceFull {
                service: pool.service.clone(),
                limit: pool.bulkhead.limit().unwrap_or(usize::MAX),
            });
        };
        pool.budget.request(Instant::now());
        Ok(Call::new(pool, idempotent, permit))
    }

    /// The endpoints of `service` with their load and ejection state; empty
    /// for a service no request went to yet.
    pub fn endpoints(&self, service: &str) -> Vec<EndpointStats> {
        let pool = self.lock_pools().get(service).cloned();
        let Some(pool) = pool else {
            return Vec::new();
        };
        let Ok(snapshot) = pool.snapshot() else {
            return Vec::new();
        };
        let now = Instant::now();
        snapshot
            .endpoints
            .iter()
            .zip(&snapshot.instances[..])
            .map(|(e, i)| {
                let detector = pool.outlier.as_ref();
                let ejection = detector.and_then(|d| d.ejection(e.id()));
                EndpointStats {
                    id: i.id.clone(),
                    address: i.address.clone(),
                    port: i.port,
                    weight: e.weight(),
                    in_flight: e.in_flight(),
                    ejection: detector.map_or(EjectionState::Active, |d| d.state(e.id(), now)),
                    ejected_until: ejection.map(|(until, _)| until),
                    ejections: ejection.map_or(0, |(_, n)| n),
                    silent_for: e.silent_for(now),
                    latency_peak: e.latency_peak(),
                }
            })
            .collect()
    }

    /// Whether `name` is a service of the catalog (or one this router already
    /// sends to). The catalog's service list is fetched once and then
    /// followed with blocking queries; the first call waits for it (up to the
    /// discovery timeout). With the registry unreachable and no list yet,
    /// only services with a pool count.
    pub async fn is_service(&self, name: &str) -> bool {
        if self.lock_pools().contains_key(name) {
            return true;
        }
        let (names, _) = self.inner.names.get_or_init(|| {
            let (tx, rx) = watch::channel(None);
            let client = self.inner.discovery.client().clone();
            (rx, tokio::spawn(follow_names(client, tx)))
        });
        let mut names = names.clone();
        let list = tokio::time::timeout(
            self.inner.config.discovery_timeout,
            names.wait_for(Option::is_some),
        )
        .await;
        match list {
            Ok(Ok(list)) => list.as_ref().is_some_and(|n| n.contains(name)),
            _ => false,
        }
    }

    /// Services with a pool now (used within the idle timeout).
    pub fn pools(&self) -> usize {
        self.sweep(Instant::now(), true);
        self.lock_pools().len()
    }

    /// Releases pools idle for longer than the idle timeout, at most every
    /// few seconds unless `now_please`.
    fn sweep(&self, now: Instant, now_please: bool) {
        let idle = self.inner.idle_timeout;
        {
            let mut last = self
                .inner
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !now_please
                && now.saturating_duration_since(*last) < idle.min(Duration::from_secs(10))
            {
                return;
            }
            *last = now;
        }
        self.lock_pools().retain(|service, pool| {
            // A pool in use elsewhere (a call in flight) stays.
            let keep = Arc::strong_count(pool) > 1
                || now.saturating_duration_since(pool.last_used()) < idle;
            if !keep {
                tracing::debug!(%service, "releasing an idle pool");
            }
            keep
        });
    }

    /// Requests (with their retries) in flight to `service`.
    pub fn in_flight(&self, service: &str) -> usize {
        self.lock_pools()
            .get(service)
            .map_or(0, |p| p.bulkhead.in_flight())
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pool>>> {
        self.inner
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pool(&self, service: &str) -> Arc<Pool> {
        let now = Instant::now();
        self.sweep(now, false);
        let mut pools = self.lock_pools();
        if let Some(pool) = pools.get(service) {
            pool.touch(now);
            return pool.clone();
        }
        let config = &self.inner.config;
        let retry = &config.retry;
        let pool = Arc::new(Pool {
            service: service.to_owned(),
            handle: self.inner.discovery.service(service),
            balancer: (self.inner.make_balancer)(),
            outlier: config.outlier.map(OutlierDetector::new),
            budget: RetryBudget::new(
                retry.budget_ratio,
                retry.budget_floor_per_sec,
                retry.budget_window,
            ),
            bulkhead: Bulkhead::new(config.max_in_flight_per_service),
            endpoint_limit: config.max_in_flight_per_endpoint,
            config: config.clone(),
            snapshot: Mutex::new(Arc::new(EndpointSet::empty())),
            created: now,
            used: AtomicU64::new(0),
        });
        pools.insert(service.to_owned(), pool.clone());
        pool
    }
}

/// The endpoint set of one discovery state.
pub(crate) struct EndpointSet {
    /// The discovery state it was built from, compared by pointer.
    instances: Arc<[Instance]>,
    /// One per instance, in the same order.
    pub(crate) endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    fn empty() -> Self {
        EndpointSet {
            instances: Arc::from(Vec::new()),
            endpoints: Vec::new(),
        }
    }

    pub(crate) fn instance(&self, i: usize) -> &Instance {
        &self.instances[i]
    }
}

/// What was picked for one attempt.
pub(crate) struct Pick {
    pub(crate) index: usize,
    pub(crate) in_flight: InFlight,
    pub(crate) probe: bool,
}

/// Per-service state.
pub(crate) struct Pool {
    pub(crate) service: String,
    handle: ServiceHandle,
    balancer: Box<dyn Balancer>,
    pub(crate) outlier: Option<OutlierDetector>,
    pub(crate) budget: RetryBudget,
    bulkhead: Bulkhead,
    endpoint_limit: Option<usize>,
    pub(crate) config: ResilienceConfig,
    snapshot: Mutex<Arc<EndpointSet>>,
    created: Instant,
    /// Milliseconds from `created` to the last use.
    used: AtomicU64,
}

impl Pool {
    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.created).as_millis() as u64;
        self.used.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_used(&self) -> Instant {
        self.created + Duration::from_millis(self.used.load(Ordering::Relaxed))
    }

    pub(crate) fn discovery_error(&self, source: crate::Error) -> CallError {
        CallError::Discovery {
            service: self.service.clone(),
            source: Box::new(source),
        }
    }

    /// The endpoints of discovery's current state, rebuilt only when that
    /// state changed. Endpoints that stay keep their load state, so
    /// in-flight counts and latency estimates survive membership changes.
    pub(crate) fn snapshot(&self) -> Result<Arc<EndpointSet>, CallError> {
        let instances = self
            .handle
            .instances()
            .map_err(|e| self.discovery_error(e))?;
        let mut current = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&current.instances, &instances) {
            return Ok(current.clone());
        }
        let old: HashMap<&str, &Endpoint> = current.endpoints.iter().map(|e| (e.id(), e)).collect();
        let endpoints = instances
            .iter()
            .map(|i| {
                let fresh = Endpoint::from_instance(i);
                match old.get(i.id.as_str()) {
                    Some(e) => e.with_weight(fresh.weight()),
                    None => fresh,
                }
            })
            .collect();
        if let Some(d) = &self.outlier {
            d.retain(|id| instances.iter().any(|i| i.id == id));
        }
        let next = Arc::new(EndpointSet {
            instances,
            endpoints,
        });
        *current = next.clone();
        Ok(next)
    }

    fn limit(&self) -> usize {
        self.endpoint_limit.unwrap_or(usize::MAX)
    }

    /// Whether a retry would find an endpoint: one not tried yet and not
    /// ejected (the bulkhead is checked when the retry picks).
    pub(crate) fn has_untried(
        &self,
        snapshot: &EndpointSet,
        tried: &[Arc<str>],
        now: Instant,
    ) -> bool {
        snapshot.endpoints.iter().any(|e| {
            !was_tried(tried, e)
                && self.outlier.as_ref().is_none_or(|d| {
                    matches!(
                        d.state(e.id(), now),
                        EjectionState::Active | EjectionState::ProbeDue
                    )
                })
        })
    }

    /// Picks the endpoint of the next attempt among those not in `tried`:
    /// an endpoint due for its probe first, otherwise the balancer's choice
    /// among the endpoints neither ejected, silent nor full. A silent
    /// endpoint ([`StallConfig`](crate::resilience::StallConfig)) is ejected
    /// here, or passed over when the ejected share is used up (unless no
    /// other endpoint is left).
    pub(crate) fn pick(
        &self,
        snapshot: &EndpointSet,
        tried: &[Arc<str>],
        now: Instant,
    ) -> Result<Pick, CallError> {
        let endpoints = &snapshot.endpoints;
        if endpoints.is_empty() {
            return Err(self.no_endpoints());
        }
        let limit = self.limit();
        let detector = self.outlier.as_ref();
        let stall = self.config.outlier.and_then(|o| o.stall);
        let stalled = |e: &Endpoint| stall.and_then(|s| s.stalled(e, now));
        // The hot path: nothing to filter, so the balancer sees the shared
        // slice and nothing is allocated.
        if tried.is_empty()
            && detector.is_none_or(|d| d.out_count() == 0)
            && endpoints
                .iter()
                .all(|e| e.in_flight() < limit && stalled(e).is_none())
        {
            let index = self
                .balancer
                .pick(endpoints)
                .ok_or_else(|| self.no_endpoints())?;
            let in_flight = endpoints[index]
                .try_start(limit)
                .ok_or_else(|| self.full())?;
            return Ok(Pick {
                index,
                in_flight,
                probe: false,
            });
        }
        let mut eligible = Vec::with_capacity(endpoints.len());
        // Silent endpoints that could not be ejected: the last resort.
        let mut silent = Vec::new();
        let mut full = 0;
        for (i, e) in endpoints.iter().enumerate() {
            if was_tried(tried, e) {
                continue;
            }
            let state = detector.map_or(EjectionState::Active, |d| d.state(e.id(), now));
            match state {
                EjectionState::Ejected { .. } | EjectionState::Probing => continue,
                EjectionState::ProbeDue => {
                    // Probes go first, so a recovered endpoint comes back
                    // as soon as its time is over, whatever the balancer.
                    let d = detector.expect("only detectors give ejection states");
                    if let Some(in_flight) = e.try_start(limit)
                        && d.try_probe(e.id(), now)
                    {
                        tracing::debug!(service = %self.service, endpoint = %e.id(), "probing an ejected endpoint");
                        return Ok(Pick {
                            index: i,
                            in_flight,
                            probe: true,
                        });
                    }
                    continue;
                }
                EjectionState::Active => {}
            }
            if e.in_flight() >= limit {
                full += 1;
                continue;
            }
            if let Some(silence) = stalled(e) {
                if detector.is_some_and(|d| d.eject_stalled(e.id(), endpoints.len(), now)) {
                    tracing::warn!(
                        service = %self.service,
                        endpoint = %e.id(),
                        ?silence,
                        in_flight = e.in_flight(),
                        "endpoint ejected: no answer while requests were in flight"
                    );
                } else {
                    silent.push(i);
                }
                continue;
            }
            eligible.push(i);
        }
        if eligible.is_empty() {
            eligible = silent;
        }
        if eligible.is_empty() {
            return Err(if full > 0 {
                self.full()
            } else {
                self.no_endpoints()
            });
        }
        let subset: Vec<Endpoint> = eligible.iter().map(|&i| endpoints[i].clone()).collect();
        let chosen = self
            .balancer
            .pick(&subset)
            .ok_or_else(|| self.no_endpoints())?;
        let index = eligible[chosen];
        let in_flight = endpoints[index]
            .try_start(limit)
            .ok_or_else(|| self.full())?;
        Ok(Pick {
            index,
            in_flight,
            probe: false,
        })
    }

    /// Records how an attempt on `id` (in a pool of `pool_size`), started
    /// at `started`, went: its latency or answer for the endpoint's load
    /// state, its success or failure for the outlier detector.
    pub(crate) fn report(
        &self,
        id: &str,
        in_flight: InFlight,
        outcome: AttemptOutcome,
        started: Instant,
        probe: bool,
        pool_size: usize,
    ) {
        let now = Instant::now();
        let success = outcome == AttemptOutcome::Success;
        match outcome {
            AttemptOutcome::Success => in_flight.finish(now.saturating_duration_since(started)),
            AttemptOutcome::Failed | AttemptOutcome::NotSent => in_flight.answered(),
            // No answer: the endpoint's silence goes on.
            AttemptOutcome::TimedOut => drop(in_flight),
        }
        if let Some(d) = &self.outlier {
            if d.record(id, success, pool_size, now) {
                tracing::warn!(service = %self.service, endpoint = %id, ?outcome, "endpoint ejected after failures");
            } else if probe && success {
                tracing::info!(service = %self.service, endpoint = %id, "ejected endpoint is back");
            }
        }
    }

    fn no_endpoints(&self) -> CallError {
        CallError::NoEndpoints {
            service: self.service.clone(),
        }
    }

    fn full(&self) -> CallError {
        CallError::EndpointsFull {
            service: self.service.clone(),
            limit: self.limit(),
        }
    }
}

fn was_tried(tried: &[Arc<str>], e: &Endpoint) -> bool {
    tried.iter().any(|t| **t == *e.id())
}

#[cfg(test)]
mod tests;
