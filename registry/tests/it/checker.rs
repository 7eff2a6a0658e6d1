//! The health check scheduler on tokio's paused clock, with a fake prober that
//! records what runs when: exact assertions on concurrency and spreading that a
//! real network would make noisy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roster_client::api::{CheckDefinition, Health, RegisterRequest};
use roster_registry::catalog::{CatalogLimits, Command};
use roster_registry::checks::checker::{Checker, CheckerConfig};
use roster_registry::checks::probe::{ProbeFuture, ProbeResult, Prober};
use roster_registry::checks::{CheckSpec, Target};
use roster_registry::metrics::Metrics;
use roster_registry::model::{InstanceId, InstanceSpec, Limits, ServiceName};
use roster_registry::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a probe of the fake does.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Never finishes (the scheduler's timeout ends it).
    Hang,
    /// Finishes at once with this result.
    Answer(Health),
}

#[derive(Debug, Default)]
struct Record {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Start times of every run, by target URL.
    starts: Mutex<HashMap<String, Vec<Instant>>>,
}

#[derive(Debug)]
struct Fake {
    behaviour: Behaviour,
    record: Arc<Record>,
}

/// Decrements the in-flight count when the probe ends or is dropped.
struct InFlight(Arc<Record>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Prober for Fake {
    fn probe(&self, spec: &CheckSpec) -> ProbeFuture {
        let Target::Http { url, .. } = &spec.target else {
            panic!("the fake only probes http checks");
        };
        let url = url.clone();
        let record = self.record.clone();
        let behaviour = self.behaviour;
        Box::pin(async move {
            let now = record.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            record.max_in_flight.fetch_max(now, Ordering::SeqCst);
            record
                .starts
                .lock()
                .unwrap()
                .entry(url)
                .or_default()
                .push(Instant::now());
            let _guard = InFlight(record);
            match behaviour {
                Behaviour::Hang => std::future::pending().await,
                Behaviour::Answer(status) => ProbeResult {
                    status,
                    output: "fake".into(),
                },
            }
        })
    }
}

struct Harness {
    registry: Arc<Registry>,
    record: Arc<Record>,
    cancel: CancellationToken,
}

impl Harness {
    fn start(behaviour: Behaviour, config: CheckerConfig) -> Harness {
        let registry = Arc::new(Registry::new(
            CatalogLimits::default(),
            Arc::new(Metrics::new()),
        ));
        let record = Arc::new(Record::default());
        let prober = Arc::new(Fake {
            behaviour,
            record: record.clone(),
        });
        let cancel = CancellationToken::new();
        let changes = registry.feed_changes().expect("first feed");
        let checker = Checker::new(registry.clone(), prober, config);
        tokio::spawn(checker.run(changes, cancel.clone()));
        Harness {
            registry,
            record,
            cancel,
        }
    }

    fn register(&self, id: &str, interval: Duration, timeout: Duration) {
        let req = RegisterRequest {
            address: Some("10.0.0.1".into()),
            port: 80,
            checks: vec![CheckDefinition {
                http: Some(format!("http://10.0.0.1/{id}")),
                interval: Some(interval),
                timeout: Some(timeout),
                initial_status: Some(Health::Passing),
                ..Default::default()
            }],
            ..Default::default()
        };
        let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
        self.registry
            .apply(Command::Register {
                service: ServiceName::parse("web").unwrap(),
                id: InstanceId::parse(id).unwrap(),
                spec,
            })
            .unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn hanging_checks_never_exceed_the_cap_and_all_get_their_turn() {
    const CAP: usize = 64;
    const N: usize = 2000;
    let h = Harness::start(
        Behaviour::Hang,
        CheckerConfig {
            concurrency: CAP,
            ..CheckerConfig::default()
        },
    );
    for i in 0..N {
        h.register(
            &format!("i{i}"),
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
    }
    // 2,000 runs of 2 s through 64 slots take 62.5 s of (virtual) time.
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert_eq!(h.record.max_in_flight.load(Ordering::SeqCst), CAP);
    let starts = h.record.starts.lock().unwrap();
    assert_eq!(starts.len(), N, "every check ran");
    let snap = h.registry.snapshot();
    let critical = snap.services["web"]
        .instances
        .values()
        .filter(|i| i.health() == Health::Critical)
        .count();
    assert_eq!(critical, N, "every hanging check timed out");
    let inst = snap.instance("web", "i7").unwrap();
    assert_eq!(inst.checks[0].output, "timed out after 2s");
    // A check never overlaps itself: its runs are at least its timeout apart.
    for runs in starts.values() {
        for pair in runs.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs(2));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn first_runs_are_spread_and_then_keep_their_interval() {
    let h = Harness::start(
        Behaviour::Answer(Health::Passing),
        CheckerConfig {
            concurrency: 1000,
            first_run_jitter: Duration::from_secs(1),
        },
    );
    let t0 = Instant::now();
    for i in 0..500 {
        h.register(
            &format!("i{i}"),
            Duration::from_secs(5),
            Duration::from_secs(1),
        );
    }
    tokio::time::sleep(Duration::from_millis(11_500)).await;
    let starts = h.record.starts.lock().unwrap();
    assert_eq!(starts.len(), 500);
    let mut firsts: Vec<Duration> = starts.values().map(|r| r[0] - t0).collect();
    firsts.sort();
    assert!(firsts.last().unwrap() <= &Duration::from_secs(1));
    // Spread over the second, not bunched: every tenth of it has some.
    for tenth in 0..10 {
        let lo = Duration::from_millis(tenth * 100);
        let hi = lo + Duration::from_millis(100);
        assert!(
            firsts.iter().any(|d| *d >= lo && *d < hi),
            "no first run in [{lo:?}, {hi:?})"
        );
    }
    // Then every interval: three runs each by 11.5 s.
    for runs in starts.values() {
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[1] - runs[0], Duration::from_secs(5));
    }
    // 1 + 500 registrations, then one write per instance for its first result
    // (same status, new output); the identical second and third wrote nothing.
    assert_eq!(h.registry.snapshot().index, 1001);
}

#[tokio::test(start_paused = true)]
async fn removed_instances_stop_being_checked() {
    let h = Harness::start(
        Behaviour::Answer(Health::Critical),
        CheckerConfig::default(),
    );
    h.register("a", Duration::from_secs(1), Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs = h.record.starts.lock().unwrap()["http://10.0.0.1/a"].len();
    assert!(runs >= 2);
    assert_eq!(
        h.registry.snapshot().instance("web", "a").unwrap().health(),
        Health::Critical
    );
    h.registry
        .apply(Command::Deregister {
            service: ServiceName::parse("web").unwrap(),
            id: InstanceId::parse("a").unwrap(),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        h.record.starts.lock().unwrap()["http://10.0.0.1/a"].len(),
        runs,
        "no run after deregistration"
    );
}
