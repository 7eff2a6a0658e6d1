//! The request path's endpoint choice against simulated backends on Tokio's
//! paused clock: a hang, a pause, a burst, a slow endpoint, over minutes of
//! traffic in milliseconds of test time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{EndpointSet, Pool, Router};
use crate::balance::{Endpoint, InFlight};
use crate::call::AttemptOutcome;
use crate::resilience::{OutlierConfig, ResilienceConfig};
use crate::{Discovery, RosterClient};

const TIMEOUT: Duration = Duration::from_secs(2);
/// A call slower than this is a slow call.
const SLOW: Duration = Duration::from_secs(1);

/// A pool for service `svc` with `config`. Its discovery handle is made on
/// a runtime that is gone by the time the test runs, so no background task
/// talks to the (absent) registry or moves the paused clock.
fn pool(config: ResilienceConfig) -> Arc<Pool> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pool = runtime.block_on(async {
            let client = RosterClient::new("http://127.0.0.1:1").unwrap();
            Router::builder(Discovery::new(client))
                .config(config)
                .build()
                .pool("svc")
        });
        drop(runtime);
        pool
    })
    .join()
    .unwrap()
}

fn snapshot(n: usize) -> EndpointSet {
    EndpointSet {
        instances: Arc::from(Vec::new()),
        endpoints: (0..n).map(|i| Endpoint::new(format!("e{i}"), 1)).collect(),
    }
}

/// When endpoint `i` answers a request that reaches it at `t`.
type Backends<'a> = dyn FnMut(usize, Instant) -> Instant + 'a;

#[derive(Debug, Default)]
struct Run {
    /// Each call's start and how long it took, first attempt to answer.
    calls: Vec<(Instant, Duration)>,
    /// When each endpoint got an attempt.
    arrivals: Vec<Vec<Instant>>,
    /// Whether endpoint 0 was ever ejected.
    ejected: bool,
}

impl Run {
    fn slow(&self) -> usize {
        self.calls.iter().filter(|(_, d)| *d > SLOW).count()
    }

    fn slow_from(&self, from: Instant) -> usize {
        self.calls
            .iter()
            .filter(|(at, d)| *at >= from && *d > SLOW)
            .count()
    }

    fn longest(&self) -> Duration {
        self.calls.iter().map(|(_, d)| *d).max().unwrap_or_default()
    }

    fn arrivals_between(&self, i: usize, from: Instant, to: Instant) -> usize {
        self.arrivals[i]
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }
}

struct Attempt {
    call: usize,
    index: usize,
    in_flight: InFlight,
    probe: bool,
    started: Instant,
    outcome: AttemptOutcome,
}

/// Sends a call at each of `starts` through `pool`'s endpoint choice to
/// `backends`, with the per-attempt timeout and one retry on a timeout, as
/// the middleware does, until `end`.
async fn simulate(
    pool: &Pool,
    n: usize,
    starts: impl IntoIterator<Item = Instant>,
    end: Instant,
    backends: &mut Backends<'_>,
) -> Run {
    let snapshot = snapshot(n);
    let ids: Vec<Arc<str>> = snapshot
        .endpoints
        .iter()
        .map(|e| e.id_arc().clone())
        .collect();
    let mut run = Run {
        arrivals: vec![Vec::new(); n],
        ..Run::default()
    };
    // Events by time: a call to start (attempt None) or an attempt ending.
    let mut events: BinaryHeap<Reverse<(Instant, usize, Option<usize>)>> = BinaryHeap::new();
    let mut seq = 0;
    for t in starts {
        events.push(Reverse((t, seq, None)));
        seq += 1;
    }
    let mut attempts: HashMap<usize, Attempt> = HashMap::new();
    let mut call_starts = Vec::new();
    let mut tried: HashMap<usize, Vec<Arc<str>>> = HashMap::new();
    while let Some(Reverse((at, _, attempt))) = events.pop() {
        if at > end {
            break;
        }
        let now = Instant::now();
        if at > now {
            tokio::time::advance(at - now).await;
        }
        let call = match attempt {
            None => {
                call_starts.push(at);
                call_starts.len() - 1
            }
            Some(a) => {
                let a = attempts.remove(&a).expect("pending");
                let id = ids[a.index].clone();
                pool.report(&id, a.in_flight, a.outcome, a.started, a.probe, n);
                if a.outcome == AttemptOutcome::Success {
                    run.calls
                        .push((call_starts[a.call], at - call_starts[a.call]));
                    continue;
                }
                let tried = tried.entry(a.call).or_default();
                tried.push(id);
                if tried.len() > 1 {
                    run.calls
                        .push((call_starts[a.call], at - call_starts[a.call]));
                    continue;
                }
                a.call
            }
        };
        let tried = tried.get(&call).cloned().unwrap_or_default();
        let pick = pool.pick(&snapshot, &tried, at).expect("an endpoint");
        run.arrivals[pick.index].push(at);
        let answer = backends(pick.index, at);
        let (done, outcome) = if answer <= at + TIMEOUT {
            (answer, AttemptOutcome::Success)
        } else {
            (at + TIMEOUT, AttemptOutcome::TimedOut)
        };
        attempts.insert(
            seq,
            Attempt {
                call,
                index: pick.index,
                in_flight: pick.in_flight,
                probe: pick.probe,
                started: at,
                outcome,
            },
        );
        events.push(Reverse((done, seq, Some(seq))));
        seq += 1;
        let detector = pool.outlier.as_ref().expect("outlier detection on");
        run.ejected |= detector.ejection(&ids[0]).is_some();
    }
    run
}

/// A call every `every` from `from` until `to`.
fn every(every: Duration, from: Instant, to: Instant) -> impl Iterator<Item = Instant> {
    std::iter::successors(Some(from), move |t| Some(*t + every)).take_while(move |t| *t < to)
}

fn config(outlier: OutlierConfig) -> ResilienceConfig {
    ResilienceConfig {
        timeout: Some(TIMEOUT),
        outlier: Some(outlier),
        ..ResilienceConfig::default()
    }
}

const FAST: Duration = Duration::from_millis(5);

/// Backends that answer in [`FAST`], except the first, which answers nothing
/// it is sent between `from` and `until` before `until` (a hang, then a late
/// answer to everything it held).
fn first_hangs(from: Instant, until: Instant) -> impl FnMut(usize, Instant) -> Instant {
    move |i, t| {
        if i == 0 && t + FAST > from && t < until {
            until + FAST
        } else {
            t + FAST
        }
    }
}

/// 50 calls/s over three endpoints answering in 5 ms; endpoint 0 stops
/// answering for `hang` from t = 5 s (what it gets meanwhile it answers when
/// it wakes up, as a SIGSTOPped process does).
async fn hang_run(outlier: OutlierConfig, hang: Duration, tail: Duration) -> (Run, Instant) {
    let pool = pool(config(outlier));
    let t0 = Instant::now();
    let (from, until) = (
        t0 + Duration::from_secs(5),
        t0 + Duration::from_secs(5) + hang,
    );
    let end = until + tail;
    let mut backends = first_hangs(from, until);
    let run = simulate(
        &pool,
        3,
        every(Duration::from_millis(20), t0, end),
        end,
        &mut backends,
    )
    .await;
    (run, from)
}

#[tokio::test(start_paused = true)]
async fn a_hang_costs_a_few_slow_calls_whatever_its_length() {
    let defaults = OutlierConfig::default();
    let (short, from) = hang_run(defaults, Duration::from_secs(20), Duration::from_secs(20)).await;
    let (long, long_from) =
        hang_run(defaults, Duration::from_secs(600), Duration::from_secs(20)).await;
    let (old, _) = hang_run(
        OutlierConfig {
            stall: None,
            ..defaults
        },
        Duration::from_secs(20),
        Duration::from_secs(20),
    )
    .await;
    println!(
        "slow calls: 20 s hang {}, 600 s hang {}, 20 s without stall detection {}; longest {:?}",
        short.slow(),
        long.slow(),
        old.slow(),
        long.longest()
    );
    // About 250 ms of traffic to it (50/s / 3), and the call in flight.
    assert!(short.slow() <= 8, "{}", short.slow());
    assert!(
        short.slow() >= 1,
        "the requests sent before the silence was noticed wait"
    );
    // 30 times as long: one probe per ejection (30, 60, 120, 240 s).
    assert!(
        long.slow() <= short.slow() + 5,
        "{} then {}",
        short.slow(),
        long.slow()
    );
    // Past the first second, only probes reach it: one per ejection.
    let probes = long.arrivals_between(
        0,
        long_from + Duration::from_secs(1),
        long_from + Duration::from_secs(600),
    );
    assert!((1..=5).contains(&probes), "{probes} requests while hung");
    assert_eq!(
        long.slow_from(long_from + Duration::from_secs(1)),
        probes,
        "each probe is a slow call, nothing else is"
    );
    // Without it, every request of the first timeout waits (2 s × 50/s / 3).
    assert!(old.slow() >= 3 * short.slow(), "{}", old.slow());
    // No call waits for more than a timeout and a retry.
    assert!(long.longest() < TIMEOUT + Duration::from_millis(100));
    // Back in rotation once the hang is over (its ejection, 30 s, ended and
    // the probe answered).
    let after = short.arrivals_between(
        0,
        from + Duration::from_secs(31),
        from + Duration::from_secs(40),
    );
    assert!(after > 100, "{after} requests after the hang");
}

#[tokio::test(start_paused = true)]
async fn a_pause_ejects_until_the_first_late_answer() {
    // Endpoint 0 pauses for 600 ms at t = 5 s (a garbage collection).
    let pool = pool(config(OutlierConfig::default()));
    let t0 = Instant::now();
    let (from, until) = (
        t0 + Duration::from_secs(5),
        t0 + Duration::from_millis(5600),
    );
    let end = t0 + Duration::from_secs(10);
    let mut backends = first_hangs(from, until);
    let run = simulate(
        &pool,
        3,
        every(Duration::from_millis(20), t0, end),
        end,
        &mut backends,
    )
    .await;
    assert!(run.ejected, "a silence of 250 ms ejects it");
    // Taken back with the first late answer, not after 30 s.
    let back = run.arrivals_between(0, until + Duration::from_millis(50), end);
    assert!(back > 50, "{back} requests after the pause");
    // It got nothing between noticing the silence and the answer.
    let during = run.arrivals_between(0, from + Duration::from_millis(350), until);
    assert_eq!(during, 0);
    assert_eq!(run.slow(), 0, "nothing waited for a timeout");
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_not_a_silence() {
    // Each endpoint answers one request at a time, 5 ms each.
    let pool = pool(config(OutlierConfig::default()));
    let t0 = Instant::now();
    let mut free = [t0; 3];
    let mut backends = |i: usize, t: Instant| {
        free[i] = free[i].max(t) + FAST;
        free[i]
    };
    // Steady traffic, then 600 calls within 200 ms: queues of 200 per
    // endpoint, a second to drain, answers every 5 ms all along.
    let burst_at = t0 + Duration::from_secs(5);
    let starts = every(Duration::from_millis(50), t0, burst_at)
        .chain(every(
            Duration::from_micros(333),
            burst_at,
            burst_at + Duration::from_millis(200),
        ))
        .chain(every(
            Duration::from_millis(50),
            burst_at + Duration::from_secs(2),
            t0 + Duration::from_secs(10),
        ));
    let end = t0 + Duration::from_secs(10);
    let run = simulate(&pool, 3, starts, end, &mut backends).await;
    assert!(!run.ejected);
    let shares: Vec<usize> = run.arrivals.iter().map(Vec::len).collect();
    let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
    assert!(max - min <= 1, "round robin undisturbed: {shares:?}");
    assert!(
        run.longest() > Duration::from_millis(700),
        "the queues were long"
    );
    assert_eq!(
        run.calls.iter().filter(|(_, d)| *d >= TIMEOUT).count(),
        0,
        "nothing timed out"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_not_ejected_and_keeps_its_share() {
    // Endpoint 0 answers in 700 ms, the others in 5 ms; 10 calls/s, so it
    // has one or two requests in flight at a time.
    let pool = pool(config(OutlierConfig::default()));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(60);
    let mut backends = |i: usize, t: Instant| {
        if i == 0 {
            t + Duration::from_millis(700)
        } else {
            t + FAST
        }
    };
    let run = simulate(
        &pool,
        3,
        every(Duration::from_millis(100), t0, end),
        end,
        &mut backends,
    )
    .await;
    assert!(!run.ejected);
    let shares: Vec<usize> = run.arrivals.iter().map(Vec::len).collect();
    assert!(shares[0] >= 199, "{shares:?}");
    assert_eq!(run.slow(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_latency_step_costs_at_most_one_short_ejection() {
    // Endpoint 0 goes from 5 ms to 400 ms at t = 5 s, with little traffic
    // (2 calls/s): its first slow answer comes after a silence longer than
    // 250 ms, which ejects it until that answer; from then on its latency
    // peak (400 ms) sets its threshold (1.6 s) and it stays.
    let pool = pool(config(OutlierConfig::default()));
    let t0 = Instant::now();
    let step = t0 + Duration::from_secs(5);
    let end = t0 + Duration::from_secs(60);
    let mut backends = |i: usize, t: Instant| {
        if i == 0 && t >= step {
            t + Duration::from_millis(400)
        } else {
            t + FAST
        }
    };
    let run = simulate(
        &pool,
        3,
        every(Duration::from_millis(150), t0, end),
        end,
        &mut backends,
    )
    .await;
    assert!(run.ejected, "the first slow answer came after a silence");
    let shares: Vec<usize> = run.arrivals.iter().map(Vec::len).collect();
    let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
    assert!(max - min <= 3, "not out for 30 s: {shares:?}");
    assert_eq!(run.slow(), 0);
    let detector = pool.outlier.as_ref().unwrap();
    assert_eq!(detector.ejection("e0"), None, "not ejected at the end");
}
