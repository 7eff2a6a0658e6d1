//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as PromRegistry;
use roster_api::Health;
use std::sync::atomic::AtomicU64;
use tokio::time::Instant;

use crate::catalog::{GuardStatus, HealthCounts, Snapshot};

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template, e.g. `/v1/services/{service}`, or `unmatched`.
    pub route: &'static str,
    /// Status code.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// A kind of watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    /// A blocking query (`?index=`).
    Blocking,
    /// A Server-Sent Events stream.
    Stream,
}

impl WatchKind {
    fn label(self) -> KindLabels {
        KindLabels {
            kind: match self {
                WatchKind::Blocking => "blocking",
                WatchKind::Stream => "stream",
            },
        }
    }
}

/// Counts an open watcher while it lives.
#[derive(Debug)]
pub struct WatcherGuard {
    gauge: Gauge,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// How a heartbeat ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatResult {
    /// Lease renewed on the fast path.
    Renewed,
    /// Lease had expired; health went back to passing.
    Revived,
    /// Instance unknown (404).
    Unknown,
}

/// All of roster's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram>,
    /// Each label set's counter and histogram, looked up in the families once
    /// (their maps hash with SipHash behind a lock, twice per request).
    request_handles:
        dashmap::DashMap<RequestLabels, (Counter, Histogram), foldhash::fast::RandomState>,
    /// Heartbeat counters by result (renewed, revived, unknown), looked up once:
    /// heartbeats are the hottest path.
    heartbeats: [Counter; 3],
    expirations: Counter,
    reaped: Counter,
    instances: Family<HealthLabels, Gauge>,
    services: Gauge,
    index: Gauge,
    watchers: Family<KindLabels, Gauge>,
    watch_events: Counter,
    watch_coalesced: Counter,
    check_runs: Family<CheckRunLabels, Counter>,
    checks_running: Gauge,
    checks_scheduled: Gauge,
    checks_waiting: Gauge,
    self_preservation: Gauge,
    guard_held: Gauge,
    guard_active_seconds: Gauge<f64, AtomicU64>,
    guard_oldest_hold: Gauge<f64, AtomicU64>,
    guard_max_hold: Gauge<f64, AtomicU64>,
    guard_drained_within: Gauge<f64, AtomicU64>,
    guard_drain: Gauge<f64, AtomicU64>,
    guard_released: Counter,
    /// The largest release total seen, so the counter moves by exact steps
    /// when two threads publish at once.
    guard_released_seen: AtomicU64,
    reaper_errors: Counter,
    dns_limited: Family<ResultLabels, Counter>,
    dns_stats: std::sync::OnceLock<roster_dns::DnsHandler>,
    dns_tcp_open: Gauge,
    dns_tcp_closed: Family<ResultLabels, Counter>,
    xds_streams: Family<KindLabels, Gauge>,
    xds_pushes: Family<KindLabels, Counter>,
    xds_nacks: Family<KindLabels, Counter>,
    xds_refused: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckRunLabels {
    kind: &'static str,
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = PromRegistry::with_prefix("roster");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let request_seconds = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            request_seconds.clone(),
        );
        let heartbeats = Family::<ResultLabels, Counter>::default();
        registry.register(
            "heartbeats",
            "Heartbeats received, by result",
            heartbeats.clone(),
        );
        let expirations = Counter::default();
        registry.register(
            "lease_expirations",
            "TTL leases that ran out",
            expirations.clone(),
        );
        let reaped = Counter::default();
        registry.register(
            "instances_reaped",
            "Instances removed after staying critical past deregister_critical_after",
            reaped.clone(),
        );
        let instances = Family::<HealthLabels, Gauge>::default();
        registry.register(
            "instances",
            "Registered instances by health",
            instances.clone(),
        );
        let services = Gauge::default();
        registry.register(
            "services",
            "Services with at least one instance",
            services.clone(),
        );
        let index = Gauge::default();
        registry.register("catalog_index", "Global catalog index", index.clone());
        let watchers = Family::<KindLabels, Gauge>::default();
        registry.register(
            "watchers",
            "Open watchers by kind (blocking query, event stream)",
            watchers.clone(),
        );
        for kind in [WatchKind::Blocking, WatchKind::Stream] {
            let _ = watchers.get_or_create(&kind.label());
        }
        let watch_events = Counter::default();
        registry.register(
            "watch_events",
            "Events sent on watch streams",
            watch_events.clone(),
        );
        let watch_coalesced = Counter::default();
        registry.register(
            "watch_coalesced",
            "Times a watch stream fell behind and was sent a fresh snapshot instead of the missed events",
            watch_coalesced.clone(),
        );
        let check_runs = Family::<CheckRunLabels, Counter>::default();
        registry.register(
            "check_runs",
            "Active health check runs by kind and raw result (before anti-flap thresholds)",
            check_runs.clone(),
        );
        let checks_running = Gauge::default();
        registry.register(
            "checks_running",
            "Health checks running now (bounded by the check concurrency)",
            checks_running.clone(),
        );
        let checks_scheduled = Gauge::default();
        registry.register(
            "checks_scheduled",
            "Active health checks the scheduler knows",
            checks_scheduled.clone(),
        );
        let checks_waiting = Gauge::default();
        registry.register(
            "checks_waiting",
            "Health checks due but waiting for a free slot",
            checks_waiting.clone(),
        );
        let self_preservation = Gauge::default();
        registry.register(
            "self_preservation_active",
            "1 while self-preservation holds overdue leases instead of expiring them",
            self_preservation.clone(),
        );
        let guard_held = Gauge::default();
        registry.register(
            "self_preservation_held_leases",
            "Overdue leases self-preservation holds now (their instances still show passing)",
            guard_held.clone(),
        );
        let guard_active_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "self_preservation_active_seconds",
            "How long self-preservation has been on (0 while off)",
            guard_active_seconds.clone(),
        );
        let guard_oldest_hold = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "self_preservation_oldest_hold_seconds",
            "How long the longest-held lease has been overdue (0 when none is held)",
            guard_oldest_hold.clone(),
        );
        let guard_max_hold = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "self_preservation_max_hold_seconds",
            "The longest self-preservation holds a lease past its deadline (or a removal past its time)",
            guard_max_hold.clone(),
        );
        let guard_drained_within = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "self_preservation_drained_within_seconds",
            "Time by which every lease held now is released at the latest",
            guard_drained_within.clone(),
        );
        let guard_drain = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "self_preservation_drain_per_minute",
            "Held leases released per minute, averaged over the renewal window",
            guard_drain.clone(),
        );
        let guard_released = Counter::default();
        registry.register(
            "self_preservation_released",
            "Held leases released: expired at their max hold, or when the guard let go while they were still silent",
            guard_released.clone(),
        );
        let reaper_errors = Counter::default();
        registry.register(
            "reaper_errors",
            "Ticks of the lease clock that failed (logged as errors)",
            reaper_errors.clone(),
        );
        let dns_limited = Family::<ResultLabels, Counter>::default();
        registry.register(
            "dns_rate_limited",
            "UDP DNS answers withheld by rate limiting: dropped, or sent truncated (slipped)",
            dns_limited.clone(),
        );
        let dns_tcp_open = Gauge::default();
        registry.register(
            "dns_tcp_connections",
            "DNS TCP connections open now",
            dns_tcp_open.clone(),
        );
        let dns_tcp_closed = Family::<ResultLabels, Counter>::default();
        registry.register(
            "dns_tcp_closed",
            "DNS TCP connections closed by the server: refused past the cap, idle, or not reading its answers (write_timeout)",
            dns_tcp_closed.clone(),
        );
        let xds_streams = Family::<KindLabels, Gauge>::default();
        registry.register(
            "xds_streams",
            "xDS streams open now, by protocol (sotw: state of the world, delta: incremental)",
            xds_streams.clone(),
        );
        let xds_pushes = Family::<KindLabels, Counter>::default();
        registry.register(
            "xds_responses",
            "xDS responses sent, by resource type (lds, rds, cds, eds)",
            xds_pushes.clone(),
        );
        let xds_nacks = Family::<KindLabels, Counter>::default();
        registry.register(
            "xds_nacks",
            "xDS responses a client rejected (NACK), by resource type; each is logged with the client's error",
            xds_nacks.clone(),
        );
        let xds_refused = Family::<ResultLabels, Counter>::default();
        registry.register(
            "xds_streams_refused",
            "xDS streams refused: full (past the stream limit), unauthenticated, or denied; connections: connections closed past the connection limit",
            xds_refused.clone(),
        );
        Metrics {
            xds_streams,
            xds_pushes,
            xds_nacks,
            xds_refused,
            dns_limited,
            dns_stats: std::sync::OnceLock::new(),
            dns_tcp_open,
            dns_tcp_closed,
            check_runs,
            checks_running,
            checks_scheduled,
            checks_waiting,
            self_preservation,
            guard_held,
            guard_active_seconds,
            guard_oldest_hold,
            guard_max_hold,
            guard_drained_within,
            guard_drain,
            guard_released,
            guard_released_seen: AtomicU64::new(0),
            reaper_errors,
            watchers,
            watch_events,
            watch_coalesced,
            registry,
            requests,
            request_seconds,
            request_handles: dashmap::DashMap::default(),
            heartbeats: ["renewed", "revived", "unknown"]
                .map(|result| heartbeats.get_or_create(&ResultLabels { result }).clone()),
            expirations,
            reaped,
            instances,
            services,
            index,
        }
    }

    /// Counts one HTTP request.
    pub fn observe_request(&self, labels: RequestLabels, seconds: f64) {
        if let Some(handles) = self.request_handles.get(&labels) {
            handles.0.inc();
            handles.1.observe(seconds);
            return;
        }
        // The families keep every label set seen, and so does this map: both
        // are bounded by the routes, methods and statuses.
        let counter = self.requests.get_or_create(&labels).clone();
        let histogram = self.request_seconds.get_or_create(&labels).clone();
        counter.inc();
        histogram.observe(seconds);
        self.request_handles.insert(labels, (counter, histogram));
    }

    /// Counts one heartbeat.
    pub fn heartbeat(&self, result: HeartbeatResult) {
        let at = match result {
            HeartbeatResult::Renewed => 0,
            HeartbeatResult::Revived => 1,
            HeartbeatResult::Unknown => 2,
        };
        self.heartbeats[at].inc();
    }

    /// Counts an open watcher until the guard is dropped.
    pub fn watcher(&self, kind: WatchKind) -> WatcherGuard {
        let gauge = self.watchers.get_or_create(&kind.label()).clone();
        gauge.inc();
        WatcherGuard { gauge }
    }

    /// Counts one event sent on a watch stream.
    pub fn watch_event(&self) {
        self.watch_events.inc();
    }

    /// Counts `n` events sent on watch streams.
    pub fn watch_events(&self, n: u64) {
        if n > 0 {
            self.watch_events.inc_by(n);
        }
    }

    /// Counts one coalesced snapshot sent to a lagging watcher.
    pub fn watch_coalesced(&self) {
        self.watch_coalesced.inc();
    }

    /// Reads DNS rate-limiting counters from `handler` when rendering.
    pub fn follow_dns(&self, handler: roster_dns::DnsHandler) {
        let _ = self.dns_stats.set(handler);
    }

    /// Counts one finished check run.
    pub fn check_run(&self, kind: &'static str, result: Health) {
        self.check_runs
            .get_or_create(&CheckRunLabels {
                kind,
                result: result.as_str(),
            })
            .inc();
    }

    /// The gauge of running checks.
    pub fn checks_running(&self) -> &Gauge {
        &self.checks_running
    }

    /// Sets the number of scheduled checks and of checks waiting for a slot.
    pub fn checks_scheduled(&self, scheduled: usize, waiting: usize) {
        self.checks_scheduled.set(scheduled as i64);
        self.checks_waiting.set(waiting as i64);
    }

    /// Sets the self-preservation metrics from the guard's status at `now`.
    pub fn self_preservation_status(&self, guard: &GuardStatus, now: Instant) {
        self.self_preservation.set(i64::from(guard.active));
        self.guard_held
            .set(i64::try_from(guard.held).unwrap_or(i64::MAX));
        self.guard_active_seconds.set(
            guard
                .since
                .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64()),
        );
        self.guard_oldest_hold
            .set(guard.oldest_hold(now).as_secs_f64());
        self.guard_max_hold.set(guard.max_hold.as_secs_f64());
        self.guard_drained_within
            .set(guard.drained_within(now).as_secs_f64());
        self.guard_drain.set(guard.drain_per_minute());
        let seen = self
            .guard_released_seen
            .fetch_max(guard.released_total, std::sync::atomic::Ordering::Relaxed);
        if guard.released_total > seen {
            self.guard_released.inc_by(guard.released_total - seen);
        }
    }

    /// Counts a failed tick of the lease clock.
    pub fn reaper_error(&self) {
        self.reaper_errors.inc();
    }

    /// Counts expirations and removals done by the reaper.
    pub fn reaper(&self, expired: u32, reaped: u32) {
        self.expirations.inc_by(u64::from(expired));
        self.reaped.inc_by(u64::from(reaped));
    }

    /// Renders all metrics, with catalog gauges taken from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let counts = HealthCounts::of(
            snap.services
                .values()
                .flat_map(|svc| svc.instances.values().map(|i| &**i)),
        );
        for health in [Health::Passing, Health::Warning, Health::Critical] {
            self.instances
                .get_or_create(&HealthLabels {
                    health: health.as_str(),
                })
                .set(i64::try_from(counts.get(health)).unwrap_or(i64::MAX));
        }
        self.services.set(snap.services.len() as i64);
        if let Some(handler) = self.dns_stats.get() {
            let stats = handler.rrl_stats();
            for (result, total) in [("dropped", stats.dropped), ("slipped", stats.slipped)] {
                let counter = self.dns_limited.get_or_create(&ResultLabels { result });
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            let tcp = handler.tcp_stats();
            self.dns_tcp_open
                .set(i64::try_from(tcp.open).unwrap_or(i64::MAX));
            for (result, total) in [
                ("refused", tcp.refused),
                ("idle", tcp.idle_closed),
                ("write_timeout", tcp.write_timeouts),
            ] {
                let counter = self.dns_tcp_closed.get_or_create(&ResultLabels { result });
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        self.index
            .set(i64::try_from(snap.index).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// xDS counters.
impl Metrics {
    /// An xDS stream of `protocol` (`sotw` or `delta`) opened (+1) or closed (-1).
    pub fn xds_stream(&self, protocol: &'static str, delta: i64) {
        self.xds_streams
            .get_or_create(&KindLabels { kind: protocol })
            .inc_by(delta);
    }

    /// The counter of responses of resource type `kind` sent, to keep and
    /// count on without looking it up by label each time.
    pub fn xds_push_counter(&self, kind: &'static str) -> Counter {
        self.xds_pushes.get_or_create(&KindLabels { kind }).clone()
    }

    /// A response of resource type `kind` rejected by a client.
    pub fn xds_nack(&self, kind: &'static str) {
        self.xds_nacks.get_or_create(&KindLabels { kind }).inc();
    }

    /// A stream refused, and why (`full`, `unauthenticated`, `denied`), or a
    /// connection past the limit (`connections`).
    pub fn xds_refused(&self, result: &'static str) {
        self.xds_refused
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
