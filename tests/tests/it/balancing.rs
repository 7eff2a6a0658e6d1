//! The client's request path end to end: a real registry, real axum backends on
//! 127.0.0.1:0 and the `reqwest` middleware resolving `http://web/...`. Every
//! assertion is on counts the backends kept or on what the router reports,
//! never on how long something took.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use roster_client::EndpointStats;
use roster_client::api::{RegisterRequest, Weights};
use roster_client::balance::{Balancer, RoundRobin, WeightedRoundRobin};
use roster_client::reqwest_middleware::ClientWithMiddleware;
use roster_client::resilience::{EjectionState, OutlierConfig, ResilienceConfig};
use roster_client::{
    CallError, Change, Discovery, Idempotent, RetryConfig, RosterClient, RosterMiddleware, Router,
    ServiceDiscover,
};
use roster_tests::TestRegistry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// Turns a hang into a failure; never reached when things work.
const GUARD: Duration = Duration::from_secs(30);

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// An axum server that counts the requests it got and answers 200, 500, or
/// never, as the test tells it.
struct Backend {
    id: &'static str,
    addr: SocketAddr,
    state: Arc<BackendState>,
    hits: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

struct BackendState {
    id: &'static str,
    mode: AtomicU8,
    hits: watch::Sender<usize>,
    /// When each request arrived.
    arrivals: Mutex<Vec<Instant>>,
}

async fn serve(State(state): State<Arc<BackendState>>, uri: Uri) -> (StatusCode, String) {
    state.arrivals.lock().unwrap().push(Instant::now());
    state.hits.send_modify(|n| *n += 1);
    match state.mode.load(Ordering::SeqCst) {
        OK => (StatusCode::OK, format!("{} {uri}", state.id)),
        FAIL => (StatusCode::INTERNAL_SERVER_ERROR, state.id.to_owned()),
        _ => std::future::pending().await,
    }
}

impl Backend {
    async fn start(id: &'static str) -> Backend {
        let (hits, rx) = watch::channel(0);
        let state = Arc::new(BackendState {
            id,
            mode: AtomicU8::new(OK),
            hits,
            arrivals: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Backend {
            id,
            addr,
            state,
            hits: rx,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until the backend has received `n` requests in all.
    async fn wait_hits(&self, n: usize) {
        let mut rx = self.hits.clone();
        timeout(GUARD, rx.wait_for(|h| *h >= n))
            .await
            .unwrap_or_else(|_| panic!("{} never got {n} requests", self.id))
            .unwrap();
    }

    /// When its `n`-th request (1-based) arrived.
    fn arrival(&self, n: usize) -> Instant {
        self.state.arrivals.lock().unwrap()[n - 1]
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registry, backends registered as instances of `web`, and a middleware
/// client whose router uses `config` and `balancer`.
struct Fixture {
    registry: TestRegistry,
    client: RosterClient,
    backends: Vec<Backend>,
    router: Router,
    http: ClientWithMiddleware,
}

impl Fixture {
    async fn start<B: Balancer + 'static>(
        weights: &[(&'static str, u32)],
        config: ResilienceConfig,
        balancer: impl Fn() -> B + Send + Sync + 'static,
    ) -> Fixture {
        let registry = TestRegistry::start().await;
        let client = RosterClient::new(registry.url()).unwrap();
        let mut backends = Vec::new();
        for &(id, weight) in weights {
            let backend = Backend::start(id).await;
            let request = RegisterRequest {
                address: Some("127.0.0.1".into()),
                port: backend.addr.port(),
                weights: Weights {
                    passing: weight,
                    warning: 1,
                },
                ..Default::default()
            };
            client.register("web", id, &request).await.unwrap();
            backends.push(backend);
        }
        let router = Router::builder(Discovery::new(client.clone()))
            .config(config)
            .balancer(balancer)
            .build();
        let http = RosterMiddleware::new(router.clone()).client(reqwest::Client::new());
        let fixture = Fixture {
            registry,
            client,
            backends,
            router,
            http,
        };
        fixture.until_instances(weights.len()).await;
        fixture
    }

    /// Waits on discovery's change stream until `web` has `n` healthy instances.
    async fn until_instances(&self, n: usize) {
        // The handle keeps discovery's watch running while we wait.
        let handle = self.router.discovery().service("web");
        let mut changes = handle.changes();
        timeout(
            GUARD,
            changes.wait_for(|s| s.index > 0 && s.healthy.len() == n),
        )
        .await
        .unwrap_or_else(|_| panic!("discovery never saw {n} instances"))
        .unwrap();
    }

    fn backend(&self, id: &str) -> &Backend {
        self.backends.iter().find(|b| b.id == id).unwrap()
    }

    fn hits(&self) -> Vec<usize> {
        self.backends.iter().map(Backend::hits).collect()
    }

    fn total_hits(&self) -> usize {
        self.hits().iter().sum()
    }

    async fn get(&self) -> StatusCode {
        let resp = timeout(GUARD, self.http.get("http://web/hello?x=1").send());
        resp.await.unwrap().unwrap().status()
    }

    /// GETs `n` times in a row; returns how many answered 200.
    async fn get_n(&self, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            ok += usize::from(self.get().await == StatusCode::OK);
        }
        ok
    }

    fn stats(&self, id: &str) -> EndpointStats {
        let endpoints = self.router.endpoints("web");
        endpoints.into_iter().find(|e| e.id == id).expect("known")
    }
}

/// A configuration without retries, ejection or timeouts, for tests that
/// turn on only what they look at.
fn plain() -> ResilienceConfig {
    ResilienceConfig {
        timeout: None,
        deadline: None,
        outlier: None,
        max_in_flight_per_endpoint: None,
        max_in_flight_per_service: None,
        retry: RetryConfig {
            max_retries: 0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn fast_retries(max_retries: u32) -> RetryConfig {
    RetryConfig {
        max_retries,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        ..Default::default()
    }
}

fn error_of(result: Result<reqwest::Response, roster_client::reqwest_middleware::Error>) -> String {
    let error = result.expect_err("the request should fail");
    let call = CallError::from_middleware(&error).expect("a router error");
    format!("{call:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_keeps_path_and_query() {
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], plain(), RoundRobin::new).await;
    let body = f.http.get("http://web/hello?x=1").send().await.unwrap();
    let text = body.text().await.unwrap();
    assert!(text.ends_with(" /hello?x=1"), "path and query kept: {text}");
    assert_eq!(f.get_n(299).await, 299);
    assert_eq!(f.hits(), [100, 100, 100]);
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_in_proportion() {
    let weights = [("a", 3), ("b", 2), ("c", 1)];
    let f = Fixture::start(&weights, plain(), WeightedRoundRobin::new).await;
    // 100 full cycles of total weight 6.
    assert_eq!(f.get_n(600).await, 600);
    assert_eq!(f.hits(), [300, 200, 100]);
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_until_its_probe_succeeds() {
    let config = ResilienceConfig {
        outlier: Some(OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(300),
            max_ejection: Duration::from_secs(10),
            max_ejected_share: 0.5,
            ..OutlierConfig::default()
        }),
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], config, RoundRobin::new).await;
    let b = f.backend("b");
    assert_eq!(f.get_n(30).await, 30);
    assert_eq!(b.hits(), 10);

    // b starts failing: its third failure in a row ejects it.
    b.set(FAIL);
    let mut sent = 0;
    while f.stats("b").ejections == 0 {
        f.get().await;
        sent += 1;
        assert!(sent < 100, "b was never ejected");
    }
    assert_eq!(b.hits(), 13, "exactly three failures eject");
    let until = f.stats("b").ejected_until.expect("ejected");

    // Until its probe, every request goes elsewhere and succeeds (with no
    // retries configured, a request to b would answer 500), and the probe
    // comes only once the ejection is over.
    while b.hits() == 13 {
        if f.get().await != StatusCode::OK {
            assert_eq!(b.hits(), 14, "only b's probe may fail");
        }
        // Pacing only: the loop ends on b's counter, not on time.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b.arrival(14) >= until, "the probe came after the ejection");
    // The probe failed: ejected again, for twice as long.
    let stats = f.stats("b");
    assert_eq!(stats.ejections, 2);
    let until = stats.ejected_until.expect("ejected again");
    assert!(until >= b.arrival(14) + Duration::from_millis(600));

    // b recovers; its next probe succeeds and it takes its share again.
    b.set(OK);
    while b.hits() == 14 {
        assert_eq!(f.get().await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b.arrival(15) >= until);
    let stats = f.stats("b");
    assert_eq!(
        (stats.ejection, stats.ejections),
        (EjectionState::Active, 0)
    );
    let before = f.hits();
    assert_eq!(f.get_n(30).await, 30);
    let after = f.hits();
    let served: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(served, [10, 10, 10]);
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_instance_stops_receiving_traffic_after_the_watch_event() {
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], plain(), RoundRobin::new).await;
    assert_eq!(f.get_n(30).await, 30);
    assert_eq!(f.hits(), [10, 10, 10]);
    let handle = f.router.discovery().service("web");
    let mut changes = handle.changes();
    f.client.deregister("web", "c").await.unwrap();
    timeout(
        GUARD,
        changes.wait_for(|s| s.healthy.iter().all(|i| i.id != "c")),
    )
    .await
    .expect("the watch event arrives")
    .unwrap();
    assert_eq!(f.get_n(100).await, 100);
    assert_eq!(f.hits(), [60, 60, 10]);
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_every_backend_fails() {
    let (ratio, floor, window) = (0.2, 1, Duration::from_secs(60));
    let config = ResilienceConfig {
        retry: RetryConfig {
            budget_ratio: ratio,
            budget_floor_per_sec: floor,
            budget_window: window,
            ..fast_retries(2)
        },
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], config, RoundRobin::new).await;
    for b in &f.backends {
        b.set(FAIL);
    }
    let n = 200;
    assert_eq!(f.get_n(n).await, 0);
    let attempts = f.total_hits();
    let budget = n as f64 * ratio + f64::from(floor) * window.as_secs_f64();
    // Without the budget, two retries each would make 600 attempts.
    assert!(attempts as f64 <= n as f64 + budget, "{attempts} attempts");
    assert!(
        attempts as f64 >= n as f64 + budget - 2.0,
        "the budget is used, not more: {attempts} attempts"
    );
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_but_get_and_marked_requests_are() {
    let config = ResilienceConfig {
        retry: fast_retries(2),
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], config, RoundRobin::new).await;
    for b in &f.backends {
        b.set(FAIL);
    }
    let post = f.http.post("http://web/orders").body("{}").send().await;
    assert_eq!(post.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(f.total_hits(), 1, "POST: one attempt");

    let before = f.hits();
    assert_eq!(f.get().await, StatusCode::INTERNAL_SERVER_ERROR);
    let each: Vec<usize> = f.hits().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        each,
        [1, 1, 1],
        "GET: two retries, each on another endpoint"
    );

    let marked = f
        .http
        .post("http://web/orders")
        .body("{}")
        .with_extension(Idempotent);
    assert_eq!(
        marked.send().await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(f.total_hits(), 7, "a POST marked idempotent is retried");

    // A retry that succeeds hides the failure from the caller.
    f.backends.iter().for_each(|b| b.set(OK));
    f.backend("a").set(FAIL);
    f.backend("b").set(FAIL);
    assert_eq!(f.get_n(3).await, 3);
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_times_out_and_only_the_get_is_retried() {
    let config = ResilienceConfig {
        // Long enough for b to answer on a loaded machine; a never answers.
        timeout: Some(Duration::from_millis(1500)),
        retry: fast_retries(1),
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1)], config, || RoundRobin::starting_at(0)).await;
    f.backend("a").set(HANG);
    // First pick is a (it hangs, times out), the retry goes to b.
    assert_eq!(f.get().await, StatusCode::OK);
    assert_eq!(f.hits(), [1, 1]);
    // The cursor is back on a: a POST times out there and is not retried.
    let post = f.http.post("http://web/orders").body("{}").send().await;
    let error = error_of(post);
    assert!(
        error.starts_with("Timeout") && error.contains("endpoint: \"a\""),
        "{error}"
    );
    assert_eq!(f.hits(), [2, 1]);
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkheads_fail_fast_while_endpoints_are_saturated() {
    let config = ResilienceConfig {
        max_in_flight_per_endpoint: Some(2),
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1)], config, || RoundRobin::starting_at(0)).await;
    let (a, b) = (f.backend("a"), f.backend("b"));
    a.set(HANG);
    let hang = |http: &ClientWithMiddleware| {
        let request = http.get("http://web/slow");
        tokio::spawn(async move { request.send().await })
    };
    // Round robin from a: a hangs, b answers, a hangs. a is now full.
    let mut hanging = vec![hang(&f.http)];
    a.wait_hits(1).await;
    assert_eq!(f.get().await, StatusCode::OK);
    hanging.push(hang(&f.http));
    a.wait_hits(2).await;

    // A full endpoint is skipped before balancing: b takes everything.
    assert_eq!(f.get_n(10).await, 10);
    assert_eq!((a.hits(), b.hits()), (2, 11));

    // Both full: the next request fails at once, without reaching anyone.
    b.set(HANG);
    hanging.push(hang(&f.http));
    hanging.push(hang(&f.http));
    b.wait_hits(13).await;
    let error = error_of(f.http.get("http://web/").send().await);
    assert!(error.starts_with("EndpointsFull"), "{error}");
    assert_eq!((a.hits(), b.hits()), (2, 13));
    assert_eq!(f.router.in_flight("web"), 4);

    // The service bulkhead: one request at a time to web.
    let one_at_a_time = ResilienceConfig {
        max_in_flight_per_service: Some(1),
        ..plain()
    };
    let router = Router::builder(Discovery::new(f.client.clone()))
        .config(one_at_a_time)
        .build();
    let http = RosterMiddleware::new(router).client(reqwest::Client::new());
    hanging.push(hang(&http));
    tokio::select! {
        () = a.wait_hits(3) => {}
        () = b.wait_hits(14) => {}
    }
    let error = error_of(http.get("http://web/").send().await);
    assert!(error.starts_with("ServiceFull"), "{error}");
    assert_eq!(a.hits() + b.hits(), 16);
    for task in hanging {
        task.abort();
    }
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_discover_follows_registrations() {
    let f = Fixture::start(&[("a", 1), ("b", 1)], plain(), RoundRobin::new).await;
    let handle = f.router.discovery().service("web");
    let mut discover = ServiceDiscover::new(handle, |instance| instance.port);
    let mut next = async || {
        let change = timeout(GUARD, discover.next_change())
            .await
            .expect("a change");
        match change.expect("discovery runs") {
            Change::Insert(id, port) => format!("+{id}:{port}"),
            Change::Remove(id) => format!("-{id}"),
        }
    };
    let (pa, pb) = (f.backend("a").addr.port(), f.backend("b").addr.port());
    assert_eq!(next().await, format!("+a:{pa}"));
    assert_eq!(next().await, format!("+b:{pb}"));
    f.client.deregister("web", "a").await.unwrap();
    assert_eq!(next().await, "-a");
    let request = RegisterRequest {
        address: Some("127.0.0.1".into()),
        port: 4242,
        ..Default::default()
    };
    f.client.register("web", "z", &request).await.unwrap();
    assert_eq!(next().await, "+z:4242");
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_catalog_services_are_rewritten_and_idle_pools_are_released() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let web = Backend::start("web-1").await;
    let request = RegisterRequest {
        address: Some(web.addr.ip().to_string()),
        port: web.addr.port(),
        ..Default::default()
    };
    client.register("web", "web-1", &request).await.unwrap();
    let discovery = Discovery::new(client.clone());
    let router = Router::builder(discovery.clone())
        .idle_timeout(Duration::from_millis(300))
        .build();
    let http = RosterMiddleware::new(router.clone()).client(reqwest::Client::new());

    // A dotless host that is no service goes out as it is (and fails to
    // resolve here): no routing error, no pool, no watch.
    let err = http.get("http://not-a-service/").send().await.unwrap_err();
    assert!(
        CallError::from_middleware(&err).is_none(),
        "routed as a service: {err}"
    );
    assert!(
        matches!(err, roster_client::reqwest_middleware::Error::Reqwest(_)),
        "{err}"
    );
    for i in 0..20 {
        let _ = http.get(format!("http://host-{i}/")).send().await;
    }
    assert_eq!(router.pools(), 0, "non-services leave no pool");
    assert_eq!(discovery.watched(), 0, "and no watch stream");

    // A registered service is rewritten.
    let body = http
        .get("http://web/x")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "web-1 /x");
    assert_eq!((router.pools(), discovery.watched()), (1, 1));
    // A service registered later is found too: the list is followed.
    client.register("api", "api-1", &request).await.unwrap();
    let found = timeout(GUARD, async {
        loop {
            if router.is_service("api").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "api never listed");

    // Unused for longer than the idle timeout: released, watch closed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(router.pools(), 0, "the idle pool is released");
    assert_eq!(discovery.watched(), 0, "with its watch stream");
    let body = http
        .get("http://web/y")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "web-1 /y", "and built again on the next request");
    web.task.abort();
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_costs_a_bounded_number_of_slow_calls() {
    let defaults = ResilienceConfig::default();
    assert_eq!(defaults.timeout, Some(Duration::from_secs(2)));
    assert_eq!(defaults.deadline, Some(Duration::from_secs(5)));
    let attempt = Duration::from_millis(300);
    let config = ResilienceConfig {
        timeout: Some(attempt),
        outlier: Some(OutlierConfig::default()),
        retry: fast_retries(1),
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], config, || {
        RoundRobin::starting_at(0)
    })
    .await;
    f.backend("a").set(HANG);
    let mut slow = 0;
    let mut longest = Duration::ZERO;
    for _ in 0..60 {
        let started = Instant::now();
        assert_eq!(f.get().await, StatusCode::OK, "the retry answers");
        let took = started.elapsed();
        longest = longest.max(took);
        if took >= attempt {
            slow += 1;
        }
    }
    println!("hung endpoint: {slow} slow calls of 60, longest {longest:?}");
    // Timeouts count toward ejection: 5 in a row eject it, whatever the
    // duration of the hang.
    assert!(slow <= 5, "{slow} slow calls");
    assert!(
        longest < attempt * 2 + Duration::from_millis(700),
        "{longest:?}"
    );
    assert!(matches!(
        f.stats("a").ejection,
        EjectionState::Ejected { .. }
    ));
    f.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deadline_bounds_all_its_attempts() {
    let config = ResilienceConfig {
        timeout: Some(Duration::from_millis(400)),
        deadline: Some(Duration::from_millis(600)),
        retry: fast_retries(2),
        ..plain()
    };
    let f = Fixture::start(&[("a", 1), ("b", 1), ("c", 1)], config, || {
        RoundRobin::starting_at(0)
    })
    .await;
    f.backends.iter().for_each(|b| b.set(HANG));
    let started = Instant::now();
    let error = error_of(f.http.get("http://web/").send().await);
    let took = started.elapsed();
    assert!(error.starts_with("Timeout"), "{error}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1200),
        "{took:?}: two attempts, the second cut to the deadline"
    );
    assert_eq!(f.total_hits(), 2, "no third attempt past the deadline");
    f.registry.stop().await;
}
